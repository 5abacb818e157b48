"""PatchGaussian(covariance_block=k): covariances shared by k x k blocks of positions, against
independent computations (numpy loops, sklearn's EmpiricalCovariance, refits without each
image), through partial_fit, merged moments, model files, ONNX and Dask."""

import joblib
import numpy as np
import pytest
import torch
from sklearn.covariance import EmpiricalCovariance
from sklearn.utils.estimator_checks import parametrize_with_checks

import skpadim
from skpadim import PatchGaussian
from skpadim.detectors import PatchMoments, mahalanobis
from skpadim.detectors._blocks import block_index
from skpadim.exceptions import ConfigurationError, InvalidImageError


def _maps(n=24, d=4, h=5, w=7, seed=0):
    """Feature maps whose positions differ in mean and covariance."""
    gen = np.random.RandomState(seed)
    mix = gen.normal(size=(h * w, d, d)) + 2 * np.eye(d)
    z = gen.normal(size=(n, h * w, d))
    X = np.einsum("npd,pde->npe", z, mix) + gen.normal(size=(h * w, d)) * 5
    return X.reshape(n, h, w, d).transpose(0, 3, 1, 2).astype(np.float32)


def _blocks_of(h, w, k):
    """{block number: [(i, j), ...]}, blocks row-major from the top-left, by plain loops."""
    per_row = -(-w // k)
    out = {}
    for i in range(h):
        for j in range(w):
            out.setdefault((i // k) * per_row + j // k, []).append((i, j))
    return out


def _brute_force(X, k, reg):
    """Pooled within-position covariances (+ reg) per block and each position's mean,
    with sklearn's EmpiricalCovariance on the block's samples, each centred on its own
    position's mean."""
    n, d, h, w = X.shape
    X = X.astype(np.float64)
    covariances = []
    for _, positions in sorted(_blocks_of(h, w, k).items()):
        centred = np.concatenate([X[:, :, i, j] - X[:, :, i, j].mean(axis=0)
                                  for i, j in positions])
        biased = EmpiricalCovariance(assume_centered=True).fit(centred).covariance_
        dof = len(positions) * (n - 1)
        covariances.append(biased * len(centred) / dof + reg * np.eye(d))
    return X.mean(axis=0).reshape(d, h * w).T, np.array(covariances)


def _brute_distances(X, Y, k, reg):
    h, w = X.shape[2:]
    means, covariances = _brute_force(X, k, reg)
    out = np.zeros((len(Y), h, w))
    for b, positions in _blocks_of(h, w, k).items():
        precision = np.linalg.inv(covariances[b])
        for i, j in positions:
            z = Y[:, :, i, j].astype(np.float64) - means[i * w + j]
            out[:, i, j] = np.sqrt(np.einsum("ni,ij,nj->n", z, precision, z))
    return out


def test_block_of_one_is_the_per_position_model_to_the_bit():
    X = _maps()
    default, ones = PatchGaussian().fit(X), PatchGaussian(covariance_block=1).fit(X)
    np.testing.assert_array_equal(ones.precisions_cholesky_, default.precisions_cholesky_)
    np.testing.assert_array_equal(ones.score_samples(X), default.score_samples(X))
    assert ones.offset_ == default.offset_ and ones._moments.block_index is None
    np.testing.assert_array_equal(ones.block_index_, np.arange(35))


@pytest.mark.parametrize("grid, k", [((4, 4), 2), ((5, 7), 3), ((5, 7), 2), ((3, 3), 4)],
                         ids=["divisible", "uneven-3", "uneven-2", "larger-than-grid"])
def test_pooled_covariances_and_distances_match_brute_force(grid, k):
    X, Y = _maps(h=grid[0], w=grid[1]), _maps(n=5, h=grid[0], w=grid[1], seed=1)
    model = PatchGaussian(covariance_block=k, reg_covar=0.05).fit(X)
    means, covariances = _brute_force(X, k, 0.05)
    n_blocks = -(-grid[0] // k) * -(-grid[1] // k)
    assert model.precisions_cholesky_.shape == (n_blocks, 4, 4)
    assert model.block_index_.max() + 1 == n_blocks
    np.testing.assert_allclose(model.mean_, means, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(model.covariances_, covariances, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(model.patch_distances(Y), _brute_distances(X, Y, k, 0.05),
                               rtol=1e-4)


def test_block_index_tiles_the_grid_from_the_top_left():
    expected = np.zeros((5, 7), dtype=np.int64)
    for b, positions in _blocks_of(5, 7, 3).items():
        for i, j in positions:
            expected[i, j] = b
    model = PatchGaussian(covariance_block=3).fit(_maps())
    np.testing.assert_array_equal(model.block_index_.reshape(5, 7), expected)


def test_partial_fit_merged_moments_and_from_moments_equal_one_fit():
    X = _maps()
    one = PatchGaussian(covariance_block=2).fit(X)
    parts = PatchGaussian(covariance_block=2)
    for chunk in np.array_split(X, [3, 4, 15]):
        parts.partial_fit(chunk)
    np.testing.assert_allclose(parts.precisions_cholesky_, one.precisions_cholesky_,
                               rtol=1e-5, atol=1e-5)
    assert parts.offset_ == pytest.approx(one.offset_, rel=1e-5)

    t = PatchGaussian._positions_first(X)
    blocks = block_index((5, 7), 2)
    # Two workers whose shifts differ a lot: the merge moves one's sums to the other's.
    a = PatchMoments.empty(t[:, :9].mean(dim=1, dtype=torch.float64), blocks).update(t[:, :9])
    b = PatchMoments.empty(t[:, 9:].mean(dim=1, dtype=torch.float64) + 1e3, blocks)
    merged = a.merge(b.update(t[:, 9:]))
    np.testing.assert_allclose(merged.covariance().numpy(), one._moments.covariance().numpy(),
                               rtol=1e-9, atol=1e-9)
    model = PatchGaussian.from_moments(merged, (5, 7), X, covariance_block=2)
    np.testing.assert_allclose(model.precisions_cholesky_, one.precisions_cholesky_,
                               rtol=1e-5, atol=1e-5)
    assert model.offset_ == pytest.approx(one.offset_, rel=1e-5)
    # Per-position moments are pooled into the model's blocks.
    per_position = PatchMoments.empty(t.mean(dim=1, dtype=torch.float64)).update(t)
    pooled = PatchGaussian.from_moments(per_position, (5, 7), covariance_block=2)
    np.testing.assert_allclose(pooled.precisions_cholesky_, one.precisions_cholesky_,
                               rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigurationError, match="other blocks"):
        PatchGaussian.from_moments(merged, (5, 7), covariance_block=3)
    with pytest.raises(InvalidImageError, match="different blocks"):
        a.merge(PatchMoments.empty(t.mean(dim=1, dtype=torch.float64)).update(t))


def test_leave_one_out_scores_match_refitting_without_each_image():
    X = _maps(n=14, d=3, h=3, w=3)
    model = PatchGaussian(covariance_block=2, reg_covar=0.0).fit(X)
    loo = model._patch_distances(X, loo_samples=len(X))
    for i in range(len(X)):
        rest = PatchGaussian(covariance_block=2, reg_covar=0.0).fit(np.delete(X, i, axis=0))
        np.testing.assert_allclose(loo[i], rest.patch_distances(X[i : i + 1])[0], rtol=1e-4)
    # The threshold is taken from those scores.
    scores = -model._distances_to_scores(loo)
    assert model.offset_ == pytest.approx(np.percentile(scores, 1), rel=1e-6)


def test_public_mahalanobis_with_block_index_uses_each_blocks_factor():
    gen = torch.Generator().manual_seed(0)
    X, mean = torch.randn(6, 3, 4, generator=gen), torch.randn(6, 4, generator=gen)
    factors = torch.linalg.cholesky(torch.eye(4) + 0.1 * torch.ones(4, 4)).mT[None] * \
        torch.tensor([1.0, 2.0])[:, None, None]
    blocks = torch.tensor([0, 1, 1, 0, 1, 0])
    expected = mahalanobis(X, mean, factors[blocks])
    torch.testing.assert_close(mahalanobis(X, mean, factors, block_index=blocks), expected)


def test_memory_of_sums_and_factors_drops_by_the_block_area():
    X = _maps(h=8, w=8)
    sizes = {}
    for k in (1, 2, 4):
        model = PatchGaussian(covariance_block=k).fit(X)
        moments = model._moments
        assert moments.shift.shape == moments.sum.shape == (64, 4)  # means stay per position
        sizes[k] = (moments.sum_sq.nbytes, model._chol_cpu.nbytes,
                    model.__getstate__()["_packed_chol"].nbytes)
    for k in (2, 4):
        assert [s * k * k for s in sizes[k]] == list(sizes[1])


def test_model_files_and_pickles_round_trip(tmp_path):
    X, Y = _maps(), _maps(n=4, seed=2)
    model = PatchGaussian(covariance_block=3).fit(X)
    expected = model.anomaly_maps(Y)
    joblib.dump(model, tmp_path / "m.joblib")
    for restored in (joblib.load(tmp_path / "m.joblib"),
                     skpadim.load(skpadim.save(model, tmp_path / "m.safetensors"))):
        assert restored.covariance_block_ == 3
        np.testing.assert_array_equal(restored.anomaly_maps(Y), expected)
        # partial_fit continues the fit from the stored factors.
        restored.partial_fit(Y)
        both = PatchGaussian(covariance_block=3).fit(np.concatenate([X, Y]))
        np.testing.assert_allclose(restored.patch_distances(Y), both.patch_distances(Y),
                                   rtol=1e-3)


def test_shrinkage_and_changed_blocks_are_refused_with_what_to_change():
    X = _maps()
    for covariance in ("oas", "ledoit-wolf"):
        with pytest.raises(ConfigurationError, match="covariance='empirical'.*covariance_bl"):
            PatchGaussian(covariance=covariance, covariance_block=2).fit(X)
    model = PatchGaussian(covariance_block=2).partial_fit(X)
    with pytest.raises(ConfigurationError, match="changed from 2 to 3"):
        model.set_params(covariance_block=3).partial_fit(X)
    with pytest.raises(ConfigurationError, match="cannot be combined"):
        model.set_params(covariance_block=2, covariance="oas").score_samples(X)


def test_two_d_input_is_one_block():
    X = np.random.RandomState(0).normal(size=(30, 3))
    model, single = PatchGaussian(covariance_block=4).fit(X), PatchGaussian().fit(X)
    np.testing.assert_allclose(model.score_samples(X), single.score_samples(X), rtol=1e-6)
    # The block leave-one-out form is the per-position one for a block of one position.
    assert model.offset_ == pytest.approx(single.offset_, rel=1e-6)


def _padim_images(n, seed):
    gen = np.random.RandomState(seed)
    base = gen.randint(60, 200, (n, 8, 8, 1)).repeat(4, axis=1).repeat(4, axis=2).repeat(3, 3)
    return np.clip(base + gen.normal(0, 8, base.shape), 0, 255).astype(np.uint8)


def _padim(k):
    pipe = skpadim.make_padim("resnet18", n_features=6, weights=None, resize=None, crop=None,
                              random_state=0)
    return pipe.set_params(patchgaussian__covariance_block=k)


def test_onnx_export_gives_the_same_maps(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from skpadim.io import OnnxModel, export_onnx

    train, test = _padim_images(6, 0), _padim_images(3, 1)
    pipe = _padim(3).fit(train)  # the 8 x 8 grid is cut into 3 + 3 + 2 by 3 + 3 + 2
    assert pipe[-1].grid_shape_ == (8, 8) and pipe[-1].precisions_cholesky_.shape[0] == 9
    expected = skpadim.inspect_images(pipe, test)
    got = OnnxModel(export_onnx(pipe, tmp_path / "m.onnx")[0]).inspect(test, batch_size=2)
    error = np.abs(got.maps - expected.maps).max() / np.abs(expected.maps).max()
    assert error <= 1e-4, error
    np.testing.assert_array_equal(got.labels, expected.labels)


def test_dask_fit_equals_a_local_fit():
    distributed = pytest.importorskip("distributed")
    skd = pytest.importorskip("skpadim.dask")
    images = _padim_images(9, 0)
    local = skpadim.fit_in_batches(_padim(2), images)
    with distributed.LocalCluster(n_workers=1, processes=False,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster) as client:
        remote = skd.fit(_padim(2), images, client, partition_size=4)
    g, w = remote[-1], local[-1]
    assert g._moments.block_index is not None and g.covariance_block_ == 2
    np.testing.assert_allclose(g.precisions_cholesky_, w.precisions_cholesky_, rtol=1e-5,
                               atol=1e-6)
    assert g.offset_ == pytest.approx(w.offset_, rel=1e-5)


def test_block_moments_are_stored_and_older_moments_without_blocks_still_load(tmp_path):
    from skpadim.io._decode import _Decoder

    t = PatchGaussian._positions_first(_maps())
    moments = PatchMoments.empty(t.mean(dim=1, dtype=torch.float64),
                                 block_index((5, 7), 2)).update(t)
    holder = skpadim.RandomFeatureSelector(n_features=1).fit(np.ones((2, 3)))
    holder.moments_ = moments
    loaded = skpadim.load(skpadim.save(holder, tmp_path / "h.safetensors")).moments_
    torch.testing.assert_close(loaded.covariance(), moments.covariance())
    # A file written before block_index existed names only the first six fields.
    tensors = {"sum": torch.zeros(2, 3)}
    reader = type("Reader", (), {"keys": lambda self: list(tensors),
                                 "get_tensor": lambda self, name: tensors[name]})()
    node = {"$type": "namedtuple", "class": "skpadim.gaussian.PatchMoments", "items": {
        "count": 4, "shift": {"$type": "tensor", "tensor": "sum", "dtype": "float32",
                              "shape": [2, 3]},
        "sum": None, "sum_sq": None, "sum_quartic": None, "sum_cubic": None}}
    old = _Decoder(reader, "old.safetensors", {}).decode(node, "moments_")
    assert old.count == 4 and old.block_index is None


# In-sample calibration, as in test_sklearn_api: sklearn checks that exactly contamination of
# the training samples are flagged, which leave-one-out scores are not meant to do.
@parametrize_with_checks([PatchGaussian(calibration="in-sample", covariance_block=2),
                          PatchGaussian(calibration="in-sample", covariance_block=3, batch_size=3)])
def test_sklearn_contract_holds_with_blocks(estimator, check):
    check(estimator)
