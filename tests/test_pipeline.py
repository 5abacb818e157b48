"""The PaDiM pipeline end to end: construction, maps, batching, model selection, saving."""

import subprocess
import sys

import joblib
import numpy as np
import pytest
import torch
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline

from reference_padim import ReferencePadim
from skpadim import (
    BackboneFeatures,
    NormalOnlyKFold,
    PatchGaussian,
    PatchPCA,
    RandomFeatureSelector,
    anomaly_maps,
    fit_in_batches,
    make_padim,
)
from skpadim.exceptions import SkpadimError
from skpadim.metrics import image_auroc_scorer

SMALL = dict(weights=None, resize=64, crop=56, random_state=0, device="cpu")


@pytest.fixture(scope="module")
def pipe(tiny_images):
    return make_padim("resnet18", n_features=30, **SMALL).fit(tiny_images)


def test_make_padim_is_the_three_steps_spelled_out(tiny_images, pipe):
    by_hand = make_pipeline(
        BackboneFeatures(backbone="resnet18", **SMALL),
        RandomFeatureSelector(n_features=30, random_state=0),
        PatchGaussian(map_size=56),
    ).fit(tiny_images)
    np.testing.assert_array_equal(by_hand.score_samples(tiny_images),
                                  pipe.score_samples(tiny_images))
    np.testing.assert_array_equal(by_hand.predict(tiny_images), pipe.predict(tiny_images))


def test_pipeline_outputs(tiny_images, pipe):
    scores = pipe.score_samples(tiny_images[:4])
    maps = anomaly_maps(pipe, tiny_images[:4], batch_size=3)
    assert scores.shape == (4,) and maps.shape == (4, 56, 56)
    np.testing.assert_allclose(-scores, maps.max(axis=(1, 2)), rtol=1e-6)
    assert set(pipe.predict(tiny_images)) <= {-1, 1}
    np.testing.assert_allclose(anomaly_maps(pipe[-1], pipe[:-1].transform(tiny_images[:4])),
                               maps, rtol=1e-5)


@pytest.mark.parametrize("config, backbone, n", [
    ("R18-Rd100", "resnet18", 100), ("PaDiM-WR50-Rd550", "wide_resnet50_2", 550),
    ("EfficientNet-B5", "efficientnet_b5", None), ("resnet18", "resnet18", 100),
    ("efficientnet_lite0", "efficientnet_lite0", 100),
])
def test_paper_configurations_by_name(config, backbone, n):
    pipe = make_padim(config, weights=None)
    assert pipe[0].backbone == backbone and pipe[1].n_features == n
    # A configuration takes the paper's 224 crop; a backbone by name sees the whole 256.
    assert pipe[2].map_size == (224 if config != backbone else 256)
    assert pipe[2].reg_covar == 0.01 and pipe[2].sigma == 4.0


def test_unknown_configuration_lists_the_valid_ones():
    with pytest.raises(SkpadimError, match="R18-Rd100"):
        make_padim("R34-Rd100")


def test_fit_in_batches_equals_fit(tiny_images, pipe):
    streamed = make_padim("resnet18", n_features=30, **SMALL)
    fit_in_batches(streamed, tiny_images, batch_size=5)
    np.testing.assert_allclose(streamed.score_samples(tiny_images),
                               pipe.score_samples(tiny_images), rtol=1e-5)
    assert streamed[-1].offset_ == pytest.approx(pipe[-1].offset_, rel=1e-5)


def test_fit_in_batches_fits_a_pca_step_on_every_image(tiny_images):
    def pca_pipeline():
        return make_pipeline(BackboneFeatures(backbone="resnet18", **SMALL),
                             PatchPCA(n_components=8), PatchGaussian())

    whole = pca_pipeline().fit(tiny_images)
    streamed = fit_in_batches(pca_pipeline(), tiny_images, batch_size=5)
    assert streamed[1].n_samples_seen_ == whole[1].n_samples_seen_
    np.testing.assert_allclose(np.abs(streamed[1].components_), np.abs(whole[1].components_),
                               atol=1e-5)
    np.testing.assert_allclose(streamed.score_samples(tiny_images),
                               whole.score_samples(tiny_images), rtol=1e-4)
    # A second call starts over rather than adding the images again.
    fit_in_batches(streamed, tiny_images, batch_size=5)
    assert streamed[1].n_samples_seen_ == whole[1].n_samples_seen_


def test_normal_only_folds_never_train_on_anomalies():
    y = np.array([0] * 10 + [1] * 4)
    seen = []
    for train, test in NormalOnlyKFold(n_splits=2, shuffle=True, random_state=0).split(y, y):
        assert (y[train] == 0).all() and (y[test] == 1).any() and (y[test] == 0).any()
        seen.extend(test)
    assert sorted(seen) == list(range(14))


def test_normal_only_folds_need_enough_of_each_kind():
    with pytest.raises(ValueError, match="at least n_splits=3"):
        list(NormalOnlyKFold(3).split(np.zeros(6), [0, 0, 0, 0, 1, 1]))


def test_grid_search_over_selection_and_regulariser(tiny_images):
    images = tiny_images.copy()
    labels = np.zeros(len(images), int)
    images[8:, 20:40, 20:40] = 255  # a white square: obvious anomalies
    labels[8:] = 1
    search = GridSearchCV(
        make_padim("resnet18", **SMALL),
        {"randomfeatureselector__n_features": [10, 40],
         "patchgaussian__reg_covar": [0.01, 1.0]},
        scoring=image_auroc_scorer,
        cv=NormalOnlyKFold(n_splits=2),
    ).fit(images, labels)
    assert len(search.cv_results_["params"]) == 4
    assert search.best_score_ > 0.9
    # The refit on the whole labelled set trains on its normal images only.
    assert search.best_estimator_[-1].n_samples_seen_ == 8


def test_joblib_round_trip_needs_neither_network_nor_the_weights_file(
    tiny_images, resnet18_weights, tmp_path
):
    weights = tmp_path / "r18.pth"
    weights.write_bytes(resnet18_weights.read_bytes())
    pipe = make_padim("resnet18", n_features=30, weights=str(weights), resize=64, crop=56,
                      random_state=0, device="cpu").fit(tiny_images)
    joblib.dump(pipe, tmp_path / "padim.joblib")
    weights.unlink()
    np.save(tmp_path / "images.npy", tiny_images)
    np.save(tmp_path / "expected.npy", pipe.score_samples(tiny_images))
    # A fresh interpreter where any socket use fails: loading and scoring must not need one.
    script = f"""
import socket, numpy as np, joblib
def no_network(*a, **k):
    raise RuntimeError("network access attempted")
socket.socket.connect = no_network
pipe = joblib.load({str(tmp_path / 'padim.joblib')!r})
scores = pipe.score_samples(np.load({str(tmp_path / 'images.npy')!r}))
assert np.array_equal(scores, np.load({str(tmp_path / 'expected.npy')!r})), "scores changed"
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_reproduces_anomalib_maps(tiny_images, resnet18_weights):
    """anomalib's recipe (FACTS.md section 3) with the same weights and channels."""
    idx = np.random.RandomState(0).permutation(448)[:50]  # anomalib's unsorted order
    reference = ReferencePadim(torch.load(resnet18_weights, weights_only=True), idx,
                               image_size=64).fit(tiny_images[:10])
    pipe = make_padim("resnet18", weights=str(resnet18_weights), resize=64, crop=None,
                      interpolation="bilinear", mode="mirror", reg_covar=0.01001,
                      device="cpu")
    pipe.set_params(randomfeatureselector__feature_indices=idx).fit(tiny_images[:10])
    ours = anomaly_maps(pipe, tiny_images[10:])
    theirs = reference.anomaly_maps(tiny_images[10:])
    np.testing.assert_allclose(ours, theirs, rtol=1e-3, atol=1e-3 * theirs.max())
    np.testing.assert_allclose(-pipe.score_samples(tiny_images[10:]), theirs.max(axis=(1, 2)),
                               rtol=1e-3)
