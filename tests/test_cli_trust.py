"""The ``skpadim`` command trusts no model file: it writes and reads the safe format, refuses
pickles unless told, checks its outputs before long work, and never leaves a half-written
file behind.

The data are a tiny tree of 32x32 PNGs in the folder layout; the backbone is a randomly
initialised ResNet18 (``--weights none``), so nothing is downloaded.
"""

import json
import os
import pathlib
import subprocess
import sys

import joblib
import numpy as np
import pytest
from PIL import Image

import skpadim
from skpadim import persistence
from skpadim.cli import EXIT_BACKBONE, EXIT_DATA, EXIT_MODEL_FILE, EXIT_OK, main

FIT = ["--backbone", "resnet18", "--weights", "none", "--n-features", "10", "--resize", "32",
       "--crop", "none", "--batch-size", "4", "--quiet"]


def _save_png(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """good/ (6 training images), test/good/ and test/spot/ (2 each), masks/spot/."""
    root = tmp_path_factory.mktemp("trust") / "parts"
    rng = np.random.RandomState(0)
    for folder, n in [("good", 6), ("test/good", 2), ("test/spot", 2)]:
        for i in range(n):
            image = rng.randint(60, 200, (32, 32, 3)).astype(np.uint8)
            if folder == "test/spot":
                image[10:20, 10:20] = 255
                mask = np.zeros((32, 32), np.uint8)
                mask[10:20, 10:20] = 255
                _save_png(root / "masks" / "spot" / f"{i:03d}.png", mask)
            _save_png(root / folder / f"{i:03d}.png", image)
    return root


@pytest.fixture(scope="module")
def model_file(tree, tmp_path_factory):
    path = tmp_path_factory.mktemp("model") / "parts.safetensors"
    assert main(["fit", str(tree), "--model", str(path), *FIT]) == EXIT_OK
    return path


class _Payload:
    """Unpickling this creates ``marker``: the code a malicious model file would run."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "skpadim.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=600)


def test_fit_writes_the_safe_format_that_score_reads(tree, model_file, tmp_path, capsys):
    assert persistence.file_format(model_file) == "safetensors"
    model = skpadim.load(model_file)
    out = tmp_path / "scores"
    assert main(["score", str(model_file), str(tree / "test" / "spot"), "--out", str(out),
                 "--quiet"]) == EXIT_OK
    rows = (out / "scores.csv").read_text().splitlines()
    paths = sorted(str(p) for p in (tree / "test" / "spot").iterdir())
    scores = [float(row.split(",")[1]) for row in rows[1:]]
    np.testing.assert_allclose(scores, -model.score_samples(paths), rtol=1e-5)
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_a_malicious_pickle_runs_neither_in_score_nor_in_evaluate(tree, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.joblib"
    joblib.dump(_Payload(marker), evil)
    for command in (["score", evil, tree / "test" / "good"], ["evaluate", evil, tree]):
        proc = _cli(*command, "--out", tmp_path / "out", "--quiet")
        assert proc.returncode == EXIT_MODEL_FILE, proc.stderr
        assert "is a pickle file" in proc.stderr and "would run any code" in proc.stderr
        assert "--allow-pickle" in proc.stderr and "Traceback" not in proc.stderr
        assert not marker.exists()
    with pytest.raises(skpadim.exceptions.ModelFileError):
        skpadim.load(evil)
    assert not marker.exists()


def test_allow_pickle_scores_a_genuine_joblib_model(tree, model_file, tmp_path, capsys):
    joblib.dump(skpadim.load(model_file), tmp_path / "model.joblib")
    out = tmp_path / "out"
    argv = ["score", str(tmp_path / "model.joblib"), str(tree / "test" / "good"), "--out",
            str(out), "--no-overlays", "--quiet"]
    assert main(argv) == EXIT_MODEL_FILE
    assert main(argv + ["--allow-pickle"]) == EXIT_OK
    assert len((out / "scores.csv").read_text().splitlines()) == 3
    assert main(["evaluate", *argv[1:2], str(tree), "--out", str(tmp_path / "report"),
                 "--overlays", "0", "--allow-pickle", "--quiet"]) == EXIT_OK
    capsys.readouterr()


def test_allow_pickle_is_documented_as_running_code(capsys):
    for command in ("score", "evaluate"):
        assert main([command, "--help"]) == EXIT_OK
        help_text = " ".join(capsys.readouterr().out.split())
        assert "--allow-pickle" in help_text
        assert "runs the file's code; only for files you trust" in help_text


def test_a_failing_score_leaves_the_previous_scores_whole(tree, model_file, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    for name in ("000.png", "001.png"):
        (images / name).write_bytes((tree / "test" / "good" / name).read_bytes())
    out = tmp_path / "out"
    argv = ["score", str(model_file), str(images), "--out", str(out), "--batch-size", "1",
            "--quiet"]
    assert main(argv) == EXIT_OK
    before = (out / "scores.csv").read_bytes()
    # The third image is corrupt: the first two are scored and written before it fails.
    (images / "002.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 64)
    assert main(argv) == EXIT_DATA
    assert "002.png" in capsys.readouterr().err
    assert (out / "scores.csv").read_bytes() == before
    assert not [name for name in os.listdir(out) if name.endswith(".tmp")]


def test_fit_checks_the_model_folder_before_any_backbone_work(tree, tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    # A missing weights file would fail with EXIT_BACKBONE if the backbone came first.
    code = main(["fit", str(tree), "--model", str(blocker / "m.safetensors"),
                 *FIT, "--weights", str(tmp_path / "missing.pth")])
    err = capsys.readouterr().err
    assert code == EXIT_MODEL_FILE, err
    assert "cannot write model file" in err and str(blocker) in err
    code = main(["fit", str(tree), "--model", str(tmp_path), *FIT])  # a folder
    assert code == EXIT_MODEL_FILE and "is a folder" in capsys.readouterr().err


def test_fit_checks_every_training_image_before_any_backbone_work(tree, tmp_path, capsys):
    import shutil

    root = shutil.copytree(tree, tmp_path / "parts")
    (root / "good" / "005.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really an image")
    code = main(["fit", str(root), "--model", str(tmp_path / "m.safetensors"),
                 *FIT, "--weights", str(tmp_path / "missing.pth")])
    err = capsys.readouterr().err
    assert code == EXIT_DATA, err
    assert "005.png" in err and not (tmp_path / "m.safetensors").exists()
    assert code != EXIT_BACKBONE


def test_a_model_missing_attributes_is_a_model_file_error(tree, model_file, tmp_path, capsys):
    """A file from another skpadim version whose detector lacks what this one needs."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(model_file, framework="pt") as f:
        document = json.loads(f.metadata()[persistence.METADATA_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    document["versions"]["skpadim"] = "0.0.1"
    steps = document["model"]["params"]["steps"]
    detector = steps[-1]["items"][1]["state"]
    for key in [k for k, v in detector.items()
                if isinstance(v, dict) and v.get("$type") in ("ndarray", "tensor")]:
        del tensors[detector.pop(key)["tensor"]]
    old = tmp_path / "old.safetensors"
    save_file(tensors, old, metadata={persistence.METADATA_KEY: json.dumps(document)})

    code = main(["score", str(old), str(tree / "test" / "good"), "--out",
                 str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert code == EXIT_MODEL_FILE, err
    assert "written by skpadim 0.0.1" in err and "cannot be used by this skpadim" in err
    assert "bug" not in err and "Traceback" not in err
