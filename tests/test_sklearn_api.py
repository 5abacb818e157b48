"""scikit-learn's own contract checks, and the basic API on every estimator."""

import pytest
from sklearn.base import clone
from sklearn.utils.estimator_checks import parametrize_with_checks

from skpadim import BackboneFeatures, PatchGaussian, PatchPCA, RandomFeatureSelector, make_padim


@parametrize_with_checks(
    [
        RandomFeatureSelector(n_features=1, random_state=0),
        RandomFeatureSelector(n_features=None),
        # sklearn's checks count flagged *training* samples, its definition of
        # contamination; the default leave-one-out calibration targets new samples instead
        # (tested in test_gaussian.py).
        PatchGaussian(calibration="in-sample"),
        PatchGaussian(calibration="in-sample", storage_dtype="float16", batch_size=3),
        PatchPCA(n_components=1),
    ]
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


ESTIMATORS = [
    BackboneFeatures(backbone="efficientnet_lite0", weights=None, crop=None),
    RandomFeatureSelector(5),
    PatchPCA(10),
    PatchGaussian(reg_covar=0.1),
    make_padim("R18-Rd100", weights=None, random_state=3),
]


@pytest.mark.parametrize("estimator", ESTIMATORS, ids=lambda e: type(e).__name__)
def test_clone_get_params_set_params(estimator):
    params = estimator.get_params()
    copy = clone(estimator)
    assert copy is not estimator
    assert repr(copy.get_params()) == repr(params)
    name = sorted(k for k in params if "__" not in k and k != "steps")[0]
    copy.set_params(**{name: params[name]})
    assert repr(copy.get_params()) == repr(params)


def test_pipeline_parameters_reach_the_steps():
    pipe = make_padim(weights=None)
    pipe.set_params(randomfeatureselector__n_features=7, patchgaussian__reg_covar=0.5)
    assert pipe[1].n_features == 7 and pipe[2].reg_covar == 0.5
