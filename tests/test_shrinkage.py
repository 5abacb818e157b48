"""Shrinkage covariances (OAS, Ledoit-Wolf) per patch position, against scikit-learn's."""

import numpy as np
import pytest
import torch
from sklearn.covariance import OAS, LedoitWolf
from sklearn.utils.estimator_checks import parametrize_with_checks

from skpadim import PatchGaussian, make_padim
from skpadim.exceptions import InvalidImageError
from skpadim.gaussian import PatchMoments
from skpadim.shrinkage import (
    covariance_traces,
    ledoit_wolf_shrinkage,
    oas_shrinkage,
    shrunk_covariance,
)

SKLEARN = {"oas": OAS, "ledoit-wolf": LedoitWolf}


# In-sample calibration: sklearn's checks count flagged training samples (see
# test_sklearn_api.py).
@parametrize_with_checks([PatchGaussian(covariance="oas", calibration="in-sample"),
                          PatchGaussian(covariance="ledoit-wolf", calibration="in-sample",
                                        reg_covar=0)])
def test_shrunk_gaussians_pass_sklearn_checks(estimator, check):
    check(estimator)


def _positions(rng, n_positions=6, n=15, d=8):
    """Positions-first samples with per-position scales and means far from zero."""
    scale = rng.uniform(0.5, 3, size=(n_positions, 1, d))
    return rng.normal(size=(n_positions, n, d)) * scale + rng.normal(size=(n_positions, 1, d)) * 20


def _moments(X, batches=1):
    t = torch.from_numpy(X)
    moments = PatchMoments.empty(t[:, : max(2, len(X[0]) // batches)].mean(dim=1))
    for part in torch.tensor_split(t, batches, dim=1):
        moments = moments.update(part)
    return moments


def _intensity(method, moments):
    n, d = moments.count, moments.n_features
    trace, trace_sq = covariance_traces(moments.covariance(ddof=0))
    if method == "oas":
        return oas_shrinkage(n, trace, trace_sq, d)
    return ledoit_wolf_shrinkage(n, trace, trace_sq, moments.centred_fourth_moment(), d)


@pytest.mark.parametrize("method", ["oas", "ledoit-wolf"])
@pytest.mark.parametrize("n", [5, 15, 200])                 # fewer and more samples than d
def test_intensity_and_covariance_per_position_equal_sklearn(rng, method, n):
    X = _positions(rng, n=n)
    moments = _moments(X, batches=3)
    rho = _intensity(method, moments)
    shrunk = shrunk_covariance(moments.covariance(ddof=0), rho)
    for p, x in enumerate(X):
        reference = SKLEARN[method](assume_centered=False).fit(x)
        assert rho[p].item() == pytest.approx(reference.shrinkage_, abs=1e-10)
        np.testing.assert_allclose(shrunk[p].numpy(), reference.covariance_, rtol=1e-10,
                                   atol=1e-10)


@pytest.mark.parametrize("method", ["oas", "ledoit-wolf"])
def test_one_feature_is_not_shrunk_as_in_sklearn(rng, method):
    X = _positions(rng, d=1)
    rho = _intensity(method, _moments(X))
    assert torch.equal(rho, torch.zeros_like(rho))
    assert SKLEARN[method]().fit(X[0]).shrinkage_ == 0


def test_centred_fourth_moment_equals_direct_sum(rng):
    X = _positions(rng, n=30)
    Z = X - X.mean(axis=1, keepdims=True)
    expected = (np.square(Z).sum(axis=2) ** 2).sum(axis=1)
    np.testing.assert_allclose(_moments(X, batches=4).centred_fourth_moment().numpy(), expected,
                               rtol=1e-12)


def test_merged_fourth_moments_equal_one_pass(worker_moments):
    X, one, a, b = (worker_moments.X, worker_moments.one, worker_moments.a, worker_moments.b)
    merged = a.merge(b)
    Y = X - merged.shift[:, None, :]          # the fields themselves, around the merged shift
    norm_sq = Y.square().sum(dim=2)
    torch.testing.assert_close(merged.sum_quartic, norm_sq.square().sum(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(merged.sum_cubic, (norm_sq[..., None] * Y).sum(dim=1),
                               rtol=1e-10, atol=1e-6)
    for m in (merged, b.merge(a)):
        torch.testing.assert_close(m.centred_fourth_moment(), one.centred_fourth_moment(),
                                   rtol=1e-10, atol=0)


def test_merging_with_empty_moments_copies_the_fourth_moments(rng):
    X = torch.from_numpy(rng.normal(size=(2, 10, 3)))
    full = PatchMoments.empty(X.mean(dim=1)).update(X)
    for merged in (full.merge(PatchMoments.empty(X.mean(dim=1))),
                   PatchMoments.empty(X.mean(dim=1)).merge(full)):
        assert torch.equal(merged.sum_quartic, full.sum_quartic)
        assert merged.sum_quartic is not full.sum_quartic


def test_moments_without_fourth_moments_refuse_ledoit_wolf(rng):
    X = torch.from_numpy(rng.normal(size=(2, 10, 3)))
    known = PatchMoments.from_mean_covariance(10, X.mean(dim=1),
                                              torch.stack([torch.cov(x.T) for x in X]))
    assert not known.has_fourth_moments and not known.update(X).has_fourth_moments
    old_style = PatchMoments(*PatchMoments.empty(X.mean(dim=1)).update(X)[:4])
    assert not old_style.merge(PatchMoments.empty(X.mean(dim=1)).update(X)).has_fourth_moments
    with pytest.raises(InvalidImageError, match="covariance='oas'"):
        known.centred_fourth_moment()


@pytest.mark.parametrize("method", ["oas", "ledoit-wolf"])
def test_flat_input_distances_equal_sklearn_mahalanobis(rng, method):
    X = rng.normal(size=(12, 5)) * [1, 2, 3, 0.5, 1] + 7
    test = rng.normal(size=(4, 5)) * 3
    model = PatchGaussian(covariance=method, reg_covar=0).fit(X)
    reference = SKLEARN[method]().fit(X)
    # sklearn's mahalanobis is squared; both use the shrunk covariance of S divided by n (no
    # n / (n - 1) factor). The tolerance is the float32 in which the factors are stored.
    np.testing.assert_allclose(model.patch_distances(test) ** 2, reference.mahalanobis(test),
                               rtol=1e-6)
    np.testing.assert_allclose(model.covariances_[0], reference.covariance_, rtol=1e-5)
    assert model.shrinkage_[0] == pytest.approx(reference.shrinkage_, abs=1e-10)


@pytest.mark.parametrize("method", ["oas", "ledoit-wolf"])
def test_streamed_and_merged_fits_equal_one_fit(feature_maps, method):
    one = PatchGaussian(covariance=method, reg_covar=0).fit(feature_maps)
    streamed = PatchGaussian(covariance=method, reg_covar=0)
    for part in np.array_split(feature_maps, 4):
        streamed.partial_fit(part)

    def moments(part):
        t = torch.from_numpy(part).reshape(len(part), part.shape[1], -1).permute(2, 0, 1)
        return PatchMoments.empty(t.mean(dim=1, dtype=torch.float64)).update(t)

    merged = PatchGaussian.from_moments(
        moments(feature_maps[:13]).merge(moments(feature_maps[13:])),
        grid_shape=feature_maps.shape[2:], calibration_samples=feature_maps,
        covariance=method, reg_covar=0)
    assert np.all(one.shrinkage_ > 0)
    for model in (streamed, merged):
        np.testing.assert_allclose(model.shrinkage_, one.shrinkage_, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(model.score_samples(feature_maps),
                                   one.score_samples(feature_maps), rtol=1e-5)
        assert model.offset_ == pytest.approx(one.offset_, rel=1e-5)


@pytest.mark.parametrize("method", ["oas", "ledoit-wolf"])
def test_fewer_samples_than_features_need_no_reg_covar(rng, method):
    X = rng.normal(size=(4, 10, 2, 2)).astype(np.float32)        # n = 4 < d = 10
    with pytest.raises(InvalidImageError, match="not positive definite"):
        PatchGaussian(reg_covar=0).fit(X)
    model = PatchGaussian(covariance=method, reg_covar=0).fit(X)
    assert np.all(np.isfinite(model.patch_distances(X)))
    assert np.all(np.linalg.eigvalsh(model.covariances_) > 0)


def test_partial_fit_after_reload_undoes_oas_shrinkage(feature_maps):
    one = PatchGaussian(covariance="oas").fit(feature_maps)
    first = PatchGaussian(covariance="oas").fit(feature_maps[:25])
    first.__dict__.pop("_moments")                                 # as after loading
    first.partial_fit(feature_maps[25:])
    np.testing.assert_allclose(first.shrinkage_, one.shrinkage_, rtol=1e-4)
    np.testing.assert_allclose(first.score_samples(feature_maps),
                               one.score_samples(feature_maps), rtol=1e-4)
    lw = PatchGaussian(covariance="ledoit-wolf").fit(feature_maps[:25])
    lw.__dict__.pop("_moments")
    with pytest.raises(InvalidImageError, match="fourth moments"):
        lw.partial_fit(feature_maps[25:]).score_samples(feature_maps)


def test_empirical_default_is_unchanged(feature_maps):
    model = PatchGaussian().fit(feature_maps)
    assert model.covariance == "empirical"
    np.testing.assert_array_equal(model.shrinkage_, 0)


def test_unknown_covariance_is_refused(feature_maps):
    with pytest.raises(ValueError, match="covariance"):
        PatchGaussian(covariance="shrunk").fit(feature_maps)


def test_make_padim_passes_the_covariance_option():
    assert make_padim("resnet18", weights=None, covariance="oas")[-1].covariance == "oas"
    assert make_padim("resnet18", weights=None)[-1].covariance == "empirical"
    for name in ("R18-Rd100", "WR50-Rd550", "EfficientNet-B5", "Lite0-Rd100"):
        assert make_padim(name, weights=None)[-1].covariance == "empirical"
