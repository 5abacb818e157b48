"""PatchGaussian's numbers against independent computations."""

import joblib
import numpy as np
import pytest
from sklearn.covariance import EmpiricalCovariance

from skpadim import PatchGaussian
from skpadim.exceptions import InvalidImageError, SkpadimWarning
from skpadim.gaussian import leave_one_out_distances


def brute_force(X, Y, reg):
    """Per-position mean, covariance and distances with a plain numpy loop."""
    n, d, h, w = X.shape
    means, covs, dist = [], [], np.zeros((len(Y), h, w))
    for i in range(h):
        for j in range(w):
            x = X[:, :, i, j].astype(np.float64)
            mu = x.mean(axis=0)
            cov = np.cov(x, rowvar=False) + reg * np.eye(d)
            inv = np.linalg.inv(cov)
            for k in range(len(Y)):
                z = Y[k, :, i, j] - mu
                dist[k, i, j] = np.sqrt(z @ inv @ z)
            means.append(mu)
            covs.append(cov)
    return np.array(means), np.array(covs), dist


def test_mean_covariance_and_distances_match_a_brute_force_loop(feature_maps):
    X, Y = feature_maps[:30], feature_maps[30:]
    model = PatchGaussian(reg_covar=0.05).fit(X)
    means, covs, dist = brute_force(X, Y, 0.05)
    np.testing.assert_allclose(model.mean_, means, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.covariances_, covs, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.patch_distances(Y), dist, rtol=1e-4)
    assert model.grid_shape_ == (3, 4) and model.n_samples_seen_ == 30


def test_precision_cholesky_factors_the_inverse_covariance(feature_maps):
    model = PatchGaussian().fit(feature_maps)
    U = model.precisions_cholesky_.astype(np.float64)
    assert np.allclose(np.tril(U[0], -1), 0)  # upper triangular, as GaussianMixture's
    np.testing.assert_allclose(U @ U.transpose(0, 2, 1), np.linalg.inv(model.covariances_),
                               rtol=1e-3, atol=1e-4)


def test_two_d_input_is_sklearns_mahalanobis(rng):
    X = rng.normal(size=(60, 5)) @ rng.normal(size=(5, 5)) + 3
    Y = rng.normal(size=(10, 5))
    ours = PatchGaussian(reg_covar=0.0).fit(X).patch_distances(Y) ** 2
    # EmpiricalCovariance divides by n, PaDiM by n - 1.
    theirs = EmpiricalCovariance().fit(X).mahalanobis(Y) * (len(X) - 1) / len(X)
    np.testing.assert_allclose(ours, theirs, rtol=1e-5)


def test_regulariser_is_added_to_the_diagonal(rng):
    X = rng.normal(size=(30, 4))
    Y = rng.normal(size=(5, 4))
    cov = np.cov(X, rowvar=False) + 0.3 * np.eye(4)
    z = Y - X.mean(axis=0)
    expected = np.sqrt(np.einsum("ni,ij,nj->n", z, np.linalg.inv(cov), z))
    np.testing.assert_allclose(PatchGaussian(reg_covar=0.3).fit(X).patch_distances(Y),
                               expected, rtol=1e-5)


def test_partial_fit_equals_fit(feature_maps):
    full = PatchGaussian().fit(feature_maps)
    parts = PatchGaussian()
    for chunk in np.array_split(feature_maps, [7, 8, 25]):
        parts.partial_fit(chunk)
    assert parts.n_samples_seen_ == len(feature_maps)
    np.testing.assert_allclose(parts.mean_, full.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(parts.precisions_cholesky_, full.precisions_cholesky_,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(parts.patch_distances(feature_maps),
                               full.patch_distances(feature_maps), rtol=1e-5)


@pytest.mark.parametrize("batch_size", [1, 3, 16, 1000])
def test_batch_size_does_not_change_results(feature_maps, batch_size):
    reference = PatchGaussian(batch_size=40).fit(feature_maps)
    model = PatchGaussian(batch_size=batch_size).fit(feature_maps)
    np.testing.assert_allclose(model.precisions_cholesky_, reference.precisions_cholesky_,
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(model.score_samples(feature_maps),
                               reference.score_samples(feature_maps), rtol=1e-5)
    assert model.offset_ == pytest.approx(reference.offset_, rel=1e-5)


def test_partial_fit_continues_after_a_round_trip_to_disk(feature_maps, tmp_path):
    model = PatchGaussian().fit(feature_maps[:20])
    joblib.dump(model, tmp_path / "m.joblib")
    restored = joblib.load(tmp_path / "m.joblib")
    restored.partial_fit(feature_maps[20:])
    full = PatchGaussian().fit(feature_maps)
    np.testing.assert_allclose(restored.patch_distances(feature_maps),
                               full.patch_distances(feature_maps), rtol=1e-3)


def test_saved_model_keeps_only_packed_factors(feature_maps, tmp_path):
    model = PatchGaussian().fit(feature_maps)
    joblib.dump(model, tmp_path / "m.joblib")
    restored = joblib.load(tmp_path / "m.joblib")
    assert "_moments" not in restored.__dict__ and "_chol_cache" not in restored.__dict__
    np.testing.assert_array_equal(restored.score_samples(feature_maps),
                                  model.score_samples(feature_maps))


def test_float16_storage_halves_factors_and_stays_close(feature_maps):
    full = PatchGaussian().fit(feature_maps)
    half = PatchGaussian(storage_dtype="float16").fit(feature_maps)
    saved = half.__getstate__()["_packed_chol"]
    assert saved.element_size() == 2 and saved.shape == (12, 6 * 7 // 2)  # packed halves
    np.testing.assert_allclose(half.patch_distances(feature_maps),
                               full.patch_distances(feature_maps), rtol=5e-3)


def test_leave_one_out_distances_match_refitting_without_each_sample(rng):
    X = rng.normal(size=(25, 3)) @ rng.normal(size=(3, 3))
    model = PatchGaussian(reg_covar=0.0).fit(X)
    loo = leave_one_out_distances(model.patch_distances(X), len(X))
    for i in range(len(X)):
        rest = np.delete(X, i, axis=0)
        z = X[i] - rest.mean(axis=0)
        expected = np.sqrt(z @ np.linalg.inv(np.cov(rest, rowvar=False)) @ z)
        assert loo[i] == pytest.approx(expected, rel=1e-4)


def test_threshold_flags_about_contamination_of_new_normal_samples(rng):
    mix = rng.normal(size=(8, 8))
    train = rng.normal(size=(300, 8)) @ mix
    new = rng.normal(size=(4000, 8)) @ mix
    model = PatchGaussian(contamination=0.05).fit(train)
    flagged = np.mean(model.predict(new) == -1)
    assert 0.02 < flagged < 0.10
    assert set(np.unique(model.predict(new))) == {-1, 1}
    np.testing.assert_allclose(model.decision_function(new),
                               model.score_samples(new) - model.offset_)


def test_in_sample_calibration_flags_contamination_of_the_training_set(rng):
    train = rng.normal(size=(200, 4))
    model = PatchGaussian(contamination=0.1, calibration="in-sample").fit(train)
    assert np.sum(model.predict(train) == -1) == 20


def test_labelled_anomalies_are_left_out_of_training(feature_maps):
    y = np.zeros(len(feature_maps), int)
    y[:5] = 1
    np.testing.assert_array_equal(
        PatchGaussian().fit(feature_maps, y).mean_, PatchGaussian().fit(feature_maps[5:]).mean_
    )
    masks = np.zeros((len(feature_maps), 4, 4), bool)
    masks[:5, 1, 1] = True
    assert PatchGaussian().fit(feature_maps, masks).n_samples_seen_ == len(feature_maps) - 5


def test_sklearn_plus_minus_one_labels_work_in_normal_only_folds(rng):
    from sklearn.model_selection import cross_val_score

    from skpadim import NormalOnlyKFold
    from skpadim.metrics import image_auroc

    X = np.r_[rng.normal(size=(30, 3)), rng.normal(4, 1, size=(6, 3))]
    y = np.r_[np.ones(30, int), -np.ones(6, int)]  # sklearn's convention: -1 = anomalous
    # Each training fold holds only +1 labels: all normal, not "all anomalous".
    np.testing.assert_array_equal(PatchGaussian().fit(X[:30], y[:30]).mean_,
                                  PatchGaussian().fit(X[:30]).mean_)
    scores = cross_val_score(PatchGaussian(), X, y, cv=NormalOnlyKFold(3),
                             scoring=lambda est, X, y: image_auroc(y == -1, -est.score_samples(X)))
    assert scores.min() > 0.9


def test_too_few_normal_samples_after_dropping_labelled_ones_is_explained(feature_maps):
    y = np.ones(len(feature_maps), int)
    y[0] = 0
    with pytest.raises(InvalidImageError, match="at least 2 normal samples, got 1 after "
                                                "leaving out the 39 that y marks anomalous"):
        PatchGaussian().fit(feature_maps, y)


def test_y_that_is_not_anomaly_labels_is_ignored_with_a_warning(feature_maps):
    with pytest.warns(SkpadimWarning, match="y ignored"):
        model = PatchGaussian().fit(feature_maps, np.arange(len(feature_maps)) % 3)
    assert model.n_samples_seen_ == len(feature_maps)


def test_maps_and_scores_follow_the_paper(feature_maps):
    model = PatchGaussian(map_size=(24, 32)).fit(feature_maps)
    maps = model.anomaly_maps(feature_maps[:3])
    assert maps.shape == (3, 24, 32) and maps.dtype == np.float32
    np.testing.assert_allclose(model.anomaly_scores(feature_maps[:3]), maps.max(axis=(1, 2)))
    np.testing.assert_allclose(model.score_samples(feature_maps[:3]), -maps.max(axis=(1, 2)))


def test_default_map_size_is_four_times_the_grid(feature_maps):
    assert PatchGaussian().fit(feature_maps).anomaly_maps(feature_maps[:1]).shape == (1, 12, 16)


@pytest.mark.parametrize(
    "bad, message",
    [
        (np.zeros((1, 4, 2, 2), np.float32), "minimum of 2"),
        (np.full((5, 4, 2, 2), np.nan, np.float32), "NaN"),
        (np.zeros((5, 4, 2), np.float32), "feature maps"),
    ],
)
def test_bad_training_input_gets_a_clear_error(bad, message):
    with pytest.raises(ValueError, match=message):
        PatchGaussian().fit(bad)


def test_feature_maps_of_another_shape_are_refused(feature_maps):
    model = PatchGaussian().fit(feature_maps)
    with pytest.raises(InvalidImageError, match="differ from"):
        model.score_samples(feature_maps[:, :, :2])
    with pytest.raises(ValueError, match="features"):
        model.score_samples(feature_maps[:, :4])
    with pytest.raises(InvalidImageError, match="differ from"):
        model.score_samples(feature_maps[:, :, 0, 0])


def test_anomaly_maps_need_spatial_input(rng):
    model = PatchGaussian().fit(rng.normal(size=(10, 3)))
    with pytest.raises(InvalidImageError, match="spatial"):
        model.anomaly_maps(rng.normal(size=(2, 3)))


def test_singular_covariance_without_regulariser_says_what_to_do(rng):
    X = rng.normal(size=(3, 6))  # fewer samples than features
    with pytest.raises(InvalidImageError, match="increase reg_covar"):
        PatchGaussian(reg_covar=0.0).fit(X)


@pytest.mark.parametrize("map_size", [(0, 4), (10.7, 4), ("a", 4), (8, 8, 8)])
def test_a_bad_map_size_fails_in_fit(feature_maps, map_size):
    with pytest.raises(InvalidImageError, match="map_size must be a positive int"):
        PatchGaussian(map_size=map_size).fit(feature_maps)
    with pytest.raises(InvalidImageError, match="map_size must be a positive int"):
        PatchGaussian(map_size=map_size).partial_fit(feature_maps)
