"""PatchPCA against sklearn's PCA on the same patch vectors."""

import joblib
import numpy as np
import pytest
from sklearn.decomposition import PCA

from skpadim import PatchPCA


def test_matches_sklearn_pca_on_pooled_patch_vectors(feature_maps):
    ours = PatchPCA(n_components=3).fit(feature_maps)
    rows = feature_maps.transpose(0, 2, 3, 1).reshape(-1, feature_maps.shape[1])
    theirs = PCA(n_components=3, svd_solver="full").fit(rows.astype(np.float64))
    np.testing.assert_allclose(ours.explained_variance_, theirs.explained_variance_, rtol=1e-6)
    np.testing.assert_allclose(np.abs(ours.components_), np.abs(theirs.components_), atol=1e-6)
    out = ours.transform(feature_maps)
    assert out.shape == (40, 3, 3, 4)
    expected = theirs.transform(rows) * np.sign(np.sum(ours.components_ * theirs.components_,
                                                       axis=1))
    np.testing.assert_allclose(out.transpose(0, 2, 3, 1).reshape(-1, 3), expected, atol=1e-4)


def test_partial_fit_equals_fit_and_survives_saving(feature_maps, tmp_path):
    full = PatchPCA(n_components=4).fit(feature_maps)
    part = PatchPCA(n_components=4).partial_fit(feature_maps[:15])
    joblib.dump(part, tmp_path / "pca.joblib")
    part = joblib.load(tmp_path / "pca.joblib").partial_fit(feature_maps[15:])
    np.testing.assert_allclose(part.components_, full.components_, atol=1e-8)
    assert part.n_samples_seen_ == 40 * 12


def test_too_many_components_is_explained(feature_maps):
    with pytest.raises(ValueError, match="exceeds the 6 channels"):
        PatchPCA(n_components=7).fit(feature_maps)
