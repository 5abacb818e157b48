"""Thresholds chosen on validation images, and carried by the model (skpadim.thresholds)."""

import copy

import numpy as np
import pytest
from sklearn.exceptions import NotFittedError
from sklearn.metrics import confusion_matrix, f1_score, precision_recall_curve
from sklearn.metrics import precision_score, recall_score

import skpadim
from skpadim import PatchGaussian, SPADE, anomaly_maps, make_padim
from skpadim.exceptions import InvalidImageError
from skpadim.metrics import pixel_threshold_metrics, threshold_metrics
from skpadim.thresholds import (
    PixelHistogram,
    adaptive_threshold,
    f1_optimal_threshold,
    normalize_scores,
    pixel_f1_optimal_threshold,
    tune_thresholds,
)


# ---------------------------------------------------------------------------- helpers
def _labelled_scores(seed, n=40, dtype=np.float64):
    """Scores with many ties, labels that lean towards the high scores."""
    gen = np.random.RandomState(seed)
    scores = (gen.randint(0, 12, n) / 4).astype(dtype)
    y = (gen.uniform(size=n) < scores / 3).astype(int)
    y[:2] = [0, 1]  # both classes
    return y, scores


def _brute_force_strict(y, scores):
    """Largest candidate of best F1 (midpoints, and half a gap below the minimum) for
    "score > t", each judged by sklearn's f1_score."""
    values = np.unique(scores.astype(np.float64))
    candidates = [values[0] - (values[1] - values[0]) / 2]
    candidates += list((values[:-1] + values[1:]) / 2)
    f1 = [f1_score(y, scores > t, zero_division=0) for t in candidates]
    best = max(f1)
    return max(t for t, f in zip(candidates, f1) if f == best), best


def _positive_grid_edges(lo, hi):
    """Every float32 in [lo, hi] (lo > 0) whose 12 lowest bits are zero, and the one below:
    the edges of PixelHistogram's grid, built from the bit patterns directly."""
    first = (int(np.float32(lo).view(np.uint32)) >> 12 << 12) - 4096
    last = (int(np.float32(hi).view(np.uint32)) >> 12 << 12) + 4096
    return np.arange(first, last + 1, 4096, dtype=np.uint32).view(np.float32)


def _pixel_data(seed, n=6, size=12):
    gen = np.random.RandomState(seed)
    masks = gen.uniform(size=(n, size, size)) < 0.2
    maps = (1 + 0.2 * gen.uniform(size=masks.shape) + 0.05 * masks).astype(np.float32)
    maps[0, :3] = maps[0, 0, 0]  # ties across classes
    return masks, maps


# ---------------------------------------------------------------------------- image level
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("seed", range(5))
def test_f1_optimal_threshold_equals_a_brute_force_search(seed, dtype):
    y, scores = _labelled_scores(seed, dtype=dtype)
    threshold = f1_optimal_threshold(y, scores)
    expected, best = _brute_force_strict(y, scores)
    assert threshold == pytest.approx(expected, rel=1e-6)
    assert f1_score(y, scores > threshold) == best
    assert np.array_equal(scores > threshold, scores > expected)


def test_f1_optimal_threshold_can_flag_everything():
    threshold = f1_optimal_threshold([1, 1, 0], [1.0, 2.0, 3.0])
    assert threshold < 1.0
    # adjacent floats: the midpoint rounds onto one of them, yet the split is kept
    lo = np.float32(1.0)
    hi = np.nextafter(lo, np.float32(2))
    t = f1_optimal_threshold([0, 1], np.array([lo, hi]))
    assert (np.array([lo, hi]) > t).tolist() == [False, True]


@pytest.mark.parametrize("y, scores, message", [
    ([0, 0, 0], [0.1, 0.2, 0.3], "no anomalous image"),
    ([1, 1], [0.1, 0.2], "no normal image"),
    ([0, 1, 1], [0.1, 0.2], "shape"),
    ([0, 1], [0.1, np.nan], "NaN"),
])
def test_f1_optimal_threshold_refuses_what_it_cannot_judge(y, scores, message):
    with pytest.raises(InvalidImageError, match=message):
        f1_optimal_threshold(y, scores)
    with pytest.raises(InvalidImageError, match=message):
        adaptive_threshold(y, scores)


@pytest.mark.parametrize("seed", range(5))
def test_adaptive_threshold_equals_the_peak_of_sklearns_precision_recall_curve(seed):
    y, scores = _labelled_scores(seed)
    precision, recall, thresholds = precision_recall_curve(y, scores)
    f1 = 2 * precision * recall / (precision + recall + 1e-10)
    assert adaptive_threshold(y, scores) == thresholds[np.argmax(f1[:-1])]


@pytest.mark.parametrize("seed", range(5))
def test_adaptive_and_strict_thresholds_reach_the_same_best_f1(seed):
    y, scores = _labelled_scores(seed)
    best = max(f1_score(y, scores >= t) for t in np.unique(scores))
    t_a = adaptive_threshold(y, scores)
    assert f1_score(y, scores >= t_a) == pytest.approx(best, abs=1e-9)
    assert f1_score(y, scores > f1_optimal_threshold(y, scores)) == pytest.approx(best)
    # under skpadim's strict rule, t_a itself loses the images scored exactly t_a
    assert (scores == t_a).any() and not (scores > t_a)[scores == t_a].any()


def test_adaptive_threshold_matches_anomalibs_documented_example():
    assert adaptive_threshold([0, 0, 0, 1, 1], [2.3, 1.6, 2.6, 7.9, 3.3]) == 3.3


# ---------------------------------------------------------------------------- pixel level
@pytest.mark.parametrize("seed", range(3))
def test_pixel_histogram_optimum_equals_a_brute_force_over_the_grid_edges(seed):
    masks, maps = _pixel_data(seed)
    threshold, f1 = PixelHistogram().update(masks, maps).f1_optimal_threshold()
    edges = _positive_grid_edges(maps.min(), maps.max())
    truth = masks.ravel()
    values = maps.ravel()
    scores = []
    for edge in edges:
        above = values > edge
        tp = np.count_nonzero(above & truth)
        scores.append(2 * tp / (np.count_nonzero(above) + truth.sum()))
    best = max(scores)
    expected = max(e for e, s in zip(edges, scores) if s == best)
    assert threshold == expected
    assert f1 == pytest.approx(best, rel=1e-12)
    assert f1 == pytest.approx(f1_score(truth, values > threshold), rel=1e-12)
    # the edge lies on the grid: a float32 with its 12 lowest bits zero
    assert int(np.float32(threshold).view(np.uint32)) & 0xFFF == 0


def test_pixel_histogram_merged_halves_equal_one_pass():
    masks, maps = _pixel_data(3)
    one = PixelHistogram().update(masks, maps)
    a = PixelHistogram().update(masks[:2], maps[:2])
    b = PixelHistogram().update(masks[2:4], maps[2:4]).update(masks[4:], maps[4:])
    merged = a.merge(b)
    assert np.array_equal(merged.counts, one.counts)
    assert merged.f1_optimal_threshold() == one.f1_optimal_threshold()
    assert (one.n_defect, one.n_normal) == (masks.sum(), (~masks).sum())
    assert pixel_f1_optimal_threshold(masks, maps, chunk_size=4) == one.f1_optimal_threshold()[0]


def test_pixel_histogram_orders_negative_values_too():
    masks = np.array([[[0, 0, 1, 1, 0]]])
    maps = np.array([[[-3.0, -1.0, -0.5, 2.0, -2.0]]], dtype=np.float32)
    threshold, f1 = PixelHistogram().update(masks, maps).f1_optimal_threshold()
    assert f1 == 1.0 and -1.0 <= threshold < -0.5


def test_pixel_histogram_refuses_bad_input():
    hist = PixelHistogram()
    with pytest.raises(InvalidImageError, match="transform_masks"):
        hist.update(np.zeros((1, 2, 2)), np.zeros((1, 3, 3)))
    with pytest.raises(InvalidImageError, match="NaN"):
        hist.update(np.zeros((1, 1, 2)), np.array([[[0.0, np.nan]]]))
    hist.update(np.zeros((1, 2, 2)), np.ones((1, 2, 2)))
    with pytest.raises(InvalidImageError, match="no anomalous pixel"):
        hist.f1_optimal_threshold()


# ---------------------------------------------------------------------------- normalising
def test_normalize_scores_is_half_at_the_threshold_and_increasing():
    t = 2.5
    grid = np.r_[0.0, np.linspace(0.01, 100, 1000)]
    assert (np.diff(normalize_scores(grid, t)) > 0).all()
    # neighbours of t: within rounding, but each on its side of 0.5
    s = np.sort(np.r_[grid, t, np.nextafter(t, 0), np.nextafter(t, 9)])
    out = normalize_scores(s, t)
    assert out[s == t] == 0.5
    assert (np.diff(out) >= 0).all()
    assert ((out > 0.5) == (s > t)).all()
    assert ((0 <= out) & (out < 1)).all()
    np.testing.assert_allclose(out, s / (s + t), rtol=1e-12)
    assert normalize_scores([-4.0, 0.0], t).tolist() == [0.0, 0.0]
    assert normalize_scores(np.float32([1, 2]), 1.0).dtype == np.float32


@pytest.mark.parametrize("threshold", [0.0, -1.0, np.nan, np.inf, True, "1"])
def test_normalize_scores_needs_a_positive_threshold(threshold):
    with pytest.raises(ValueError, match="threshold"):
        normalize_scores([1.0], threshold)


# ---------------------------------------------------------------------------- metrics
@pytest.mark.parametrize("seed", range(3))
def test_threshold_metrics_agree_with_sklearn(seed):
    y, scores = _labelled_scores(seed)
    for t in (-1.0, 0.7, 1.5, 10.0):
        m = threshold_metrics(y, scores, t)
        pred = scores > t
        assert m["precision"] == precision_score(y, pred, zero_division=0)
        assert m["recall"] == recall_score(y, pred, zero_division=0)
        assert m["f1"] == pytest.approx(f1_score(y, pred, zero_division=0), rel=1e-15)
        assert np.array_equal(m["confusion_matrix"], confusion_matrix(y, pred, labels=[0, 1]))
        assert (m["tn"], m["fp"], m["fn"], m["tp"]) == tuple(m["confusion_matrix"].ravel())


def test_threshold_metrics_give_zero_without_alarms():
    m = threshold_metrics([0, 1, 0], [0.1, 0.2, 0.3], 5.0)
    assert (m["precision"], m["recall"], m["f1"], m["fp"], m["fn"]) == (0.0, 0.0, 0.0, 0, 1)
    m = threshold_metrics([0, 0], [0.1, 0.2], 5.0)  # nothing to find, nothing flagged
    assert (m["precision"], m["recall"], m["f1"], m["tn"]) == (0.0, 0.0, 0.0, 2)


def test_pixel_threshold_metrics_agree_with_sklearn():
    masks, maps = _pixel_data(1, n=20)
    t = 1.1
    m = pixel_threshold_metrics(masks.astype(np.uint8), maps, t)
    truth, pred = masks.ravel(), maps.ravel() > t
    assert m["precision"] == precision_score(truth, pred)
    assert m["recall"] == recall_score(truth, pred)
    assert np.array_equal(m["confusion_matrix"], confusion_matrix(truth, pred))
    with pytest.raises(ValueError, match="finite"):
        pixel_threshold_metrics(masks, maps, np.nan)


# ---------------------------------------------------------------------------- detectors
@pytest.fixture(scope="module")
def images():
    gen = np.random.RandomState(0)
    train = gen.randint(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    valid = gen.randint(0, 256, (12, 32, 32, 3), dtype=np.uint8)
    masks = np.zeros((12, 32, 32), dtype=bool)
    for i, (r, c) in zip(range(6, 12), [(2, 3), (10, 12), (20, 5), (4, 20), (16, 16), (8, 8)]):
        size = 4 + i % 4
        valid[i, r : r + size, c : c + size] = 255
        masks[i, r : r + size, c : c + size] = True
    y = masks.any(axis=(1, 2)).astype(int)
    return train, valid, masks, y


@pytest.fixture(scope="module")
def fitted_padim(images):
    pipe = make_padim("resnet18", n_features=10, weights=None, resize=None, crop=None,
                      random_state=0)
    return pipe.fit(images[0])


@pytest.fixture
def padim(fitted_padim):
    return copy.deepcopy(fitted_padim)


def test_tune_thresholds_sets_the_brute_force_image_threshold(padim, images):
    _, valid, _, y = images
    scores = -padim.score_samples(valid)
    expected, _ = _brute_force_strict(y, scores)
    assert tune_thresholds(padim, valid, y, pixel=None, batch_size=5) is padim
    assert padim[-1].image_threshold_ == pytest.approx(expected, rel=1e-6)
    t = padim[-1].image_threshold_
    assert np.array_equal(padim.predict(valid), np.where(scores > t, -1, 1))
    assert np.array_equal(scores > t, scores > expected)


def test_tune_thresholds_adaptive_flags_what_anomalib_flags(padim, images):
    _, valid, _, y = images
    scores = -padim.score_samples(valid)
    tune_thresholds(padim, valid, y, image="adaptive", pixel=None)
    t_a = adaptive_threshold(y, scores)
    assert np.array_equal(padim.predict(valid) == -1, scores >= t_a)


def test_tune_thresholds_pixel_threshold_equals_the_in_memory_one(padim, images):
    _, valid, masks, _ = images
    maps = anomaly_maps(padim, valid)
    offset = padim[-1].offset_
    tune_thresholds(padim, valid, masks=masks, image=None, batch_size=5)
    assert padim[-1].pixel_threshold_ == pixel_f1_optimal_threshold(masks, maps)
    assert padim[-1].offset_ == offset  # image=None keeps the image threshold


def test_tune_thresholds_reads_image_labels_from_the_masks(padim, images):
    _, valid, masks, y = images
    scores = -padim.score_samples(valid)
    tune_thresholds(padim, valid, masks=masks, pixel=None, batch_size=5)
    assert padim[-1].image_threshold_ == f1_optimal_threshold(y, scores)


def test_tune_thresholds_takes_fixed_values_and_keeps_pixels_without_masks(padim, images):
    _, valid, _, y = images
    before = padim[-1].pixel_threshold_
    tune_thresholds(padim, valid, y, image=3.5)
    assert padim[-1].image_threshold_ == 3.5
    assert padim[-1].pixel_threshold_ == 3.5 != before  # the default follows the image's
    tune_thresholds(padim, valid, image=None, pixel=7.0)
    assert (padim[-1].image_threshold_, padim[-1].pixel_threshold_) == (3.5, 7.0)


def test_tune_thresholds_refuses_what_it_cannot_use(padim, images):
    _, valid, masks, y = images
    with pytest.raises(InvalidImageError, match="pass y"):
        tune_thresholds(padim, valid)
    with pytest.raises(InvalidImageError, match="masks"):
        tune_thresholds(padim, valid, masks=masks[:3])
    with pytest.raises(ValueError, match="image"):
        tune_thresholds(padim, valid, y, image="f2")
    with pytest.raises(ValueError, match="pixel"):
        tune_thresholds(padim, valid, y, pixel="adaptive")


def test_padim_default_pixel_threshold_is_the_image_threshold(padim):
    detector = padim[-1]
    assert detector.pixel_threshold_ == detector.image_threshold_ == -detector.offset_
    padim.set_thresholds(image=2.0)
    assert detector.pixel_threshold_ == 2.0
    assert padim.set_thresholds(pixel=5.0) is padim
    assert (detector.image_threshold_, detector.pixel_threshold_) == (2.0, 5.0)


def test_a_refit_returns_to_the_contamination_thresholds():
    X = np.random.RandomState(0).normal(size=(30, 4))
    model = PatchGaussian().fit(X)
    default = model.image_threshold_
    model.set_thresholds(image=1.0, pixel=2.0).fit(X)
    assert model.image_threshold_ == default == model.pixel_threshold_


@pytest.mark.parametrize("value", [np.nan, np.inf, "1", True])
def test_set_thresholds_refuses_values_that_are_not_finite_floats(value):
    model = PatchGaussian().fit(np.random.RandomState(0).normal(size=(20, 3)))
    with pytest.raises(ValueError, match="finite"):
        model.set_thresholds(image=value)
    with pytest.raises(ValueError, match="finite"):
        model.set_thresholds(image=1.0, pixel=value)
    assert model.image_threshold_ != 1.0  # nothing was set
    with pytest.raises(NotFittedError):
        PatchGaussian().set_thresholds(image=1.0)


@pytest.fixture(scope="module")
def spade_maps():
    gen = np.random.RandomState(0)
    return gen.normal(size=(12, 6, 8, 8)).astype(np.float32)


def _spade(**kwargs):
    return SPADE(n_neighbors=3, layer_channels=[2, 2, 2], layer_strides=[1, 2, 4],
                 contamination=0.25, device="cpu", **kwargs)


def test_spade_default_pixel_threshold_comes_from_leave_one_out_maps(spade_maps):
    X = spade_maps
    model = _spade().fit(X)
    # each training image scored by a model fitted without it
    maxima = np.array([
        _spade().fit(np.delete(X, i, axis=0)).anomaly_maps(X[i : i + 1]).max()
        for i in range(len(X))
    ])
    threshold = model.pixel_threshold_
    assert np.isfinite(threshold)
    assert threshold == pytest.approx(np.percentile(maxima, 75), rel=1e-5)
    assert np.mean(maxima > threshold) == pytest.approx(0.25)
    assert threshold != model.image_threshold_  # SPADE's image score is not the map max


def test_spade_pixel_threshold_uses_a_bounded_sample(spade_maps, monkeypatch):
    from skpadim.detectors import _spade as spade_module

    monkeypatch.setattr(spade_module, "PIXEL_CALIBRATION_IMAGES", 5)
    model = _spade(calibration="in-sample").fit(spade_maps)
    assert len(model._leave_one_out_map_maxima()) == 5
    assert model.pixel_threshold_ > 0  # leave-one-out even with in-sample calibration


# ---------------------------------------------------------------------------- persistence
def test_set_thresholds_survive_save_and_load(padim, images, tmp_path):
    valid = images[1]
    padim.set_thresholds(image=2.5, pixel=4.25)
    loaded = skpadim.load(skpadim.save(padim, tmp_path / "padim.safetensors"))
    assert (loaded[-1].image_threshold_, loaded[-1].pixel_threshold_) == (2.5, 4.25)
    assert np.array_equal(loaded.predict(valid), padim.predict(valid))


def test_a_model_saved_without_a_pixel_threshold_loads_with_the_default(padim, tmp_path):
    padim.set_thresholds(image=2.5)
    del padim[-1].__dict__["_pixel_threshold"]  # as files written before it existed
    loaded = skpadim.load(skpadim.save(padim, tmp_path / "old.safetensors"))
    assert loaded[-1].pixel_threshold_ == loaded[-1].image_threshold_ == 2.5


def test_spade_without_its_stored_default_computes_it_again(spade_maps, tmp_path):
    model = _spade().fit(spade_maps)
    expected = model.pixel_threshold_
    assert skpadim.load(skpadim.save(model, tmp_path / "s.safetensors")).pixel_threshold_ \
        == expected
    for name in ("_pixel_threshold", "_pixel_default", "_grid"):
        del model.__dict__[name]
    loaded = skpadim.load(skpadim.save(model, tmp_path / "old.safetensors"))
    assert loaded.pixel_threshold_ == pytest.approx(expected, rel=1e-6)


def test_onnx_metadata_carries_the_pixel_threshold(padim, tmp_path):
    pytest.importorskip("onnxscript")
    onnx = pytest.importorskip("onnx")
    from skpadim.export import export_onnx

    padim.set_thresholds(image=2.5, pixel=4.25)
    path = tmp_path / "padim.onnx"
    export_onnx(padim, path)
    meta = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert (float(meta["threshold"]), float(meta["pixel_threshold"])) == (2.5, 4.25)
    pytest.importorskip("onnxruntime")  # OnnxModel runs the file with it
    from skpadim.export import OnnxModel

    model = OnnxModel(path, intra_op_num_threads=1)
    assert (model.threshold, model.pixel_threshold) == (2.5, 4.25)
