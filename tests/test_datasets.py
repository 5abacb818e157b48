"""Tests of skpadim.datasets on tiny data set trees written to tmp_path."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from skpadim.datasets import (
    DEFECT_TYPES,
    MVTEC_CATEGORIES,
    MVTEC_OBJECTS,
    MVTEC_TEXTURES,
    load_demo,
    load_folder,
    load_mvtec,
    load_stc,
    make_rd_mvtec,
    make_texture_defects,
    read_masks,
)
from skpadim.exceptions import DatasetError
from skpadim.preprocessing import read_image, resize_and_crop

H, W = 6, 8  # a size that is not square, so height and width cannot be swapped unnoticed


def write_image(path, array=None, size=(H, W)):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if array is None:
        array = np.full((*size, 3), 128, dtype=np.uint8)
    Image.fromarray(array).save(path)
    return path


def write_mask(path, box, size=(H, W)):
    """A 0/255 mask with the rectangle ``box`` = (top, bottom, left, right) set."""
    mask = np.zeros(size, dtype=np.uint8)
    top, bottom, left, right = box
    mask[top:bottom, left:right] = 255
    return write_image(path, mask)


# --- MVTec AD -------------------------------------------------------------------------------

MASK_BOXES = {"broken": [(0, 2, 0, 2), (1, 4, 2, 7)], "crack": [(3, 6, 0, 8)]}


@pytest.fixture
def mvtec_root(tmp_path):
    """bottle with 3 training, 2 normal and 3 anomalous test images; carpet with one each."""
    root = tmp_path / "mvtec"
    bottle = root / "bottle"
    for i in (0, 1, 10):  # 10 after 1 in natural order, before it in plain string order
        write_image(bottle / "train" / "good" / f"{i}.png")
    for i in range(2):
        write_image(bottle / "test" / "good" / f"{i:03d}.png")
    for defect, boxes in MASK_BOXES.items():
        for i, box in enumerate(boxes):
            write_image(bottle / "test" / defect / f"{i:03d}.png")
            write_mask(bottle / "ground_truth" / defect / f"{i:03d}_mask.png", box)
    write_image(root / "carpet" / "train" / "good" / "000.png")
    write_image(root / "carpet" / "test" / "good" / "000.png")
    (root / "carpet" / "readme.txt").write_text("not an image folder")
    return root


def test_load_mvtec_lists_paths_labels_and_defect_types(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle")
    bottle = mvtec_root / "bottle"
    assert data.train_images == [str(bottle / "train" / "good" / f"{i}.png") for i in (0, 1, 10)]
    assert data.test_images == [
        str(bottle / "test" / d / f"{i:03d}.png")
        for d, n in [("good", 2), ("broken", 2), ("crack", 1)]
        for i in range(n)
    ]
    np.testing.assert_array_equal(data.test_labels, [0, 0, 1, 1, 1])
    assert data.test_labels.dtype.kind == "i"
    assert list(data.test_defect_types) == ["good", "good", "broken", "broken", "crack"]
    assert (data.name, data.category, data.kind) == ("mvtec_ad", "bottle", "object")
    assert (data.resize, data.crop) == (256, 224)


def test_load_mvtec_pairs_each_defect_image_with_its_mask(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle")
    assert data.test_masks[:2] == [None, None]
    for image, mask in zip(data.test_images[2:], data.test_masks[2:]):
        image, mask = Path(image), Path(mask)
        assert mask == mvtec_root / "bottle" / "ground_truth" / image.parent.name / (
            image.stem + "_mask.png"
        )


def test_read_masks_returns_drawn_masks_at_native_resolution(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle")
    masks = read_masks(data.test_masks, data.test_images)
    assert masks.shape == (5, H, W) and masks.dtype == bool
    assert not masks[:2].any()
    boxes = MASK_BOXES["broken"] + MASK_BOXES["crack"]
    for mask, (top, bottom, left, right) in zip(masks[2:], boxes):
        expected = np.zeros((H, W), dtype=bool)
        expected[top:bottom, left:right] = True
        np.testing.assert_array_equal(mask, expected)


def test_load_mvtec_without_category_loads_every_category_present(mvtec_root):
    data = load_mvtec(mvtec_root)
    assert list(data) == ["bottle", "carpet"]  # in MVTEC_CATEGORIES order
    assert data["carpet"].kind == "texture"
    np.testing.assert_array_equal(data["carpet"].test_labels, [0])


def test_mvtec_category_constants():
    assert len(MVTEC_CATEGORIES) == 15
    assert set(MVTEC_TEXTURES) == {"carpet", "grid", "leather", "tile", "wood"}
    assert sorted(MVTEC_TEXTURES + MVTEC_OBJECTS) == sorted(MVTEC_CATEGORIES)


def _remove(path):
    os.remove(path)
    return path


def _empty_train(root):
    for path in (root / "bottle" / "train" / "good").iterdir():
        path.unlink()


@pytest.mark.parametrize(
    "damage, subfolder, category, named, words",
    [
        (None, "absent", "bottle", "absent", "root folder not found"),
        (None, "", "bottel", "bottel", "categories present: bottle, carpet"),
        (None, "", "grid", "grid", "not found"),
        (_empty_train, "", "bottle", "bottle/train/good", "holds no image"),
        (lambda r: _remove(r / "bottle/ground_truth/crack/000_mask.png"), "", "bottle",
         "bottle/test/crack/000.png", "has no mask"),
        (lambda r: _remove(r / "bottle/test/broken/001.png"), "", "bottle",
         "bottle/ground_truth/broken/001_mask.png", "has no image"),
        (lambda r: write_mask(r / "bottle/ground_truth/scratch/000_mask.png", (0, 1, 0, 1)), "",
         "bottle", "bottle/ground_truth/scratch/000_mask.png", "has no image"),
        (lambda r: os.rename(r / "bottle/ground_truth/crack/000_mask.png",
                             r / "bottle/ground_truth/crack/000.png"), "", "bottle",
         "bottle/ground_truth/crack/000.png", "has no image"),
    ],
    ids=["missing-root", "unknown-category", "missing-category", "empty-train",
         "image-without-mask", "mask-without-image", "mask-folder-without-images",
         "mask-without-suffix"],
)
def test_load_mvtec_errors_name_the_offending_path(mvtec_root, damage, subfolder, category,
                                                   named, words):
    if damage is not None:
        damage(mvtec_root)
    with pytest.raises(DatasetError, match=words) as info:
        load_mvtec(mvtec_root / subfolder, category)
    assert str(mvtec_root / named) in str(info.value)


# --- read_masks and read_image --------------------------------------------------------------


def test_read_masks_none_gives_an_empty_mask_of_the_image_size(tmp_path):
    image = write_image(tmp_path / "a.jpg", size=(5, 9))
    masks = read_masks([None], [image])
    assert masks.shape == (1, 5, 9) and not masks.any()


def test_read_masks_rejects_a_mask_of_another_size(tmp_path):
    image = write_image(tmp_path / "a.png")
    mask = write_mask(tmp_path / "a_mask.png", (0, 1, 0, 1), size=(H + 1, W))
    with pytest.raises(DatasetError, match="must have its image's size") as info:
        read_masks([mask], [image])
    assert str(mask) in str(info.value) and str(image) in str(info.value)


def test_read_masks_rejects_images_of_different_sizes(tmp_path):
    small, large = write_image(tmp_path / "s.png"), write_image(tmp_path / "l.png", size=(9, 9))
    with pytest.raises(DatasetError, match="groups of equal size") as info:
        read_masks([None, None], [small, large])
    assert str(large) in str(info.value)


def test_truncated_files_raise_dataset_errors_naming_them(tmp_path):
    image = write_image(tmp_path / "a.png", np.random.RandomState(0).randint(0, 256, (64, 64, 3),
                                                                             dtype=np.uint8))
    cut = tmp_path / "cut.png"
    cut.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    with pytest.raises(DatasetError, match="cut.png") as info:
        read_image(cut)
    assert str(cut) in str(info.value)
    with pytest.raises(DatasetError) as info:
        read_masks([cut], [image])
    assert str(cut) in str(info.value)


def test_read_masks_names_a_missing_mask_file(tmp_path):
    image = write_image(tmp_path / "a.png")
    with pytest.raises(DatasetError, match="not found") as info:
        read_masks([tmp_path / "gone.png"], [image])
    assert str(tmp_path / "gone.png") in str(info.value)


# --- ShanghaiTech Campus --------------------------------------------------------------------


@pytest.fixture
def stc_root(tmp_path):
    """Training videos of 5 and 3 frames, two test videos of 6 and 2 frames with masks."""
    root = tmp_path / "shanghaitech"
    for video, n in [("01_001", 5), ("02_001", 3)]:
        for i in range(n):
            write_image(root / "training" / "frames" / video / f"{i:03d}.jpg")
    rng = np.random.RandomState(0)
    for video, n in [("01_0014", 6), ("02_0128", 2)]:
        for i in range(n):
            write_image(root / "testing" / "frames" / video / f"{i:03d}.jpg")
        pixel = (rng.rand(n, H, W) < 0.3) * np.arange(n)[:, None, None] % 2  # odd frames
        for kind, array in [("pixel", pixel.astype(np.uint8)), ("frame", pixel.any(axis=(1, 2)))]:
            (root / "testing" / f"test_{kind}_mask").mkdir(parents=True, exist_ok=True)
            np.save(root / "testing" / f"test_{kind}_mask" / f"{video}.npy", array)
    return root


def test_load_stc_lists_frames_with_labels_and_mask_references(stc_root):
    data = load_stc(stc_root)
    frames = stc_root / "training" / "frames"
    assert data.train_images == [str(frames / "01_001" / f"{i:03d}.jpg") for i in range(5)] + [
        str(frames / "02_001" / f"{i:03d}.jpg") for i in range(3)
    ]
    assert len(data.test_images) == 8
    np.testing.assert_array_equal(data.test_labels, [0, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(data.test_frame_indices, [0, 1, 2, 3, 4, 5, 0, 1])
    assert list(data.test_videos) == ["01_0014"] * 6 + ["02_0128"] * 2
    assert set(data.test_defect_types) == {"good", "anomaly"}
    pixel_dir = stc_root / "testing" / "test_pixel_mask"
    assert data.test_masks[3] == (str(pixel_dir / "01_0014.npy"), 3)
    assert (data.resize, data.crop) == (256, None)


def test_read_masks_reads_stc_frames_from_the_npy_arrays(stc_root):
    data = load_stc(stc_root)
    masks = read_masks(data.test_masks, data.test_images)
    pixel_dir = stc_root / "testing" / "test_pixel_mask"
    expected = np.concatenate([np.load(pixel_dir / f"{v}.npy") for v in ("01_0014", "02_0128")])
    np.testing.assert_array_equal(masks, expected != 0)
    np.testing.assert_array_equal(masks.any(axis=(1, 2)), data.test_labels == 1)


def test_load_stc_frame_step_keeps_every_nth_frame_of_each_video(stc_root):
    data = load_stc(stc_root, frame_step=2)
    assert [Path(p).name for p in data.train_images] == ["000.jpg", "002.jpg", "004.jpg",
                                                         "000.jpg", "002.jpg"]
    np.testing.assert_array_equal(data.test_frame_indices, [0, 2, 4, 0])
    np.testing.assert_array_equal(data.test_labels, [0, 0, 0, 0])
    assert [m[1] for m in data.test_masks] == [0, 2, 4, 0]


def test_load_stc_scenes_selects_videos(stc_root):
    data = load_stc(stc_root, scenes=["02"])
    assert set(data.train_videos) == {"02_001"} and set(data.test_videos) == {"02_0128"}
    with pytest.raises(DatasetError, match="scenes present"):
        load_stc(stc_root, scenes=[7])


@pytest.mark.parametrize("frame_step", [0, -1, 1.5, True])
def test_load_stc_rejects_a_bad_frame_step(stc_root, frame_step):
    with pytest.raises(ValueError, match="frame_step"):
        load_stc(stc_root, frame_step=frame_step)


def test_load_stc_explains_how_to_extract_training_videos(stc_root):
    frames = stc_root / "training" / "frames"
    frames.rename(stc_root / "elsewhere")
    (stc_root / "training" / "videos").mkdir()
    (stc_root / "training" / "videos" / "01_001.avi").write_bytes(b"")
    with pytest.raises(DatasetError, match="ffmpeg") as info:
        load_stc(stc_root)
    assert str(frames) in str(info.value)


def test_load_stc_names_a_mask_file_whose_frame_count_differs(stc_root):
    pixel = stc_root / "testing" / "test_pixel_mask" / "02_0128.npy"
    np.save(pixel, np.zeros((3, H, W), dtype=np.uint8))
    with pytest.raises(DatasetError, match="covers 3 frames") as info:
        load_stc(stc_root)
    assert str(pixel) in str(info.value)


def test_load_stc_names_a_missing_mask_file(stc_root):
    label = _remove(stc_root / "testing" / "test_frame_mask" / "01_0014.npy")
    with pytest.raises(DatasetError, match="not found") as info:
        load_stc(stc_root)
    assert str(label) in str(info.value)


# --- load_folder ----------------------------------------------------------------------------


@pytest.fixture
def folder_root(tmp_path):
    root = tmp_path / "widgets"
    for name in ["a.png", "b.jpg"]:
        write_image(root / "good" / name)
    write_image(root / "test" / "good" / "c.png")
    write_image(root / "test" / "dent" / "d1.png")
    write_image(root / "test" / "dent" / "d2.jpg")
    write_image(root / "test" / "scuff" / "s.png")
    write_mask(root / "masks" / "dent" / "d1.png", (0, 1, 0, 1))  # both naming styles
    write_mask(root / "masks" / "dent" / "d2_mask.png", (0, 2, 0, 2))
    write_mask(root / "masks" / "scuff" / "s_mask.png", (0, 3, 0, 3))
    (root / "masks" / "dent" / ".DS_Store").write_bytes(b"ignored")
    return root


def test_load_folder_lists_images_labels_and_masks(folder_root):
    data = load_folder(folder_root)
    assert data.name == "widgets"
    assert [Path(p).name for p in data.train_images] == ["a.png", "b.jpg"]
    assert [Path(p).name for p in data.test_images] == ["c.png", "d1.png", "d2.jpg", "s.png"]
    np.testing.assert_array_equal(data.test_labels, [0, 1, 1, 1])
    assert list(data.test_defect_types) == ["good", "dent", "dent", "scuff"]
    assert [m and Path(m).name for m in data.test_masks] == [None, "d1.png", "d2_mask.png",
                                                             "s_mask.png"]
    masks = read_masks(data.test_masks, data.test_images)
    np.testing.assert_array_equal(masks.sum(axis=(1, 2)), [0, 1, 4, 9])


def test_load_folder_without_masks_has_image_labels_only(folder_root):
    os.rename(folder_root / "masks", folder_root.parent / "put_away")
    data = load_folder(folder_root)
    assert data.test_masks is None
    np.testing.assert_array_equal(data.test_labels, [0, 1, 1, 1])


def test_load_folder_without_test_folder_has_an_empty_test_set(tmp_path):
    write_image(tmp_path / "good" / "a.png")
    data = load_folder(tmp_path)
    assert data.test_images == [] and data.test_labels.shape == (0,)
    assert data.test_masks is None


def test_load_folder_names_a_root_that_is_a_file(folder_root):
    with pytest.raises(DatasetError, match="is not a folder") as info:
        load_folder(folder_root / "good" / "a.png")
    assert str(folder_root / "good" / "a.png") in str(info.value)


@pytest.mark.parametrize(
    "damage, named, words",
    [
        (lambda r: os.rename(r / "good", r / "normal"), "good", "not found"),
        (lambda r: _remove(r / "masks/scuff/s_mask.png"), "test/scuff/s.png", "has no mask"),
        (lambda r: _remove(r / "test/dent/d2.jpg"), "masks/dent/d2_mask.png", "has no image"),
        (lambda r: write_mask(r / "masks/good/c.png", (0, 1, 0, 1)), "masks/good/c.png",
         "need no mask"),
        (lambda r: write_mask(r / "masks/dent/d1_mask.png", (0, 1, 0, 1)), "test/dent/d1.png",
         "several masks"),
        (lambda r: write_image(r / "test/loose.png"), "test/loose.png", "loose"),
    ],
    ids=["missing-good", "image-without-mask", "mask-without-image", "mask-for-normal-image",
         "two-masks", "loose-test-image"],
)
def test_load_folder_errors_name_the_offending_path(folder_root, damage, named, words):
    damage(folder_root)
    with pytest.raises(DatasetError, match=words) as info:
        load_folder(folder_root)
    assert str(folder_root / named) in str(info.value)


# --- make_rd_mvtec --------------------------------------------------------------------------


@pytest.fixture
def squares():
    """Four 64x64 black images with a bright 16x16 square near the centre, and their masks."""
    images = np.zeros((4, 64, 64, 3), dtype=np.uint8)
    masks = np.zeros((4, 64, 64), dtype=bool)
    for i, (top, left) in enumerate([(20, 20), (24, 28), (28, 22), (26, 26)]):
        images[i, top : top + 16, left : left + 16] = 255
        masks[i, top : top + 16, left : left + 16] = True
    return images, masks


def test_make_rd_mvtec_is_deterministic_for_a_seed_and_differs_across_seeds(squares):
    first = make_rd_mvtec(*squares, resize=64, crop=48, random_state=3)
    again = make_rd_mvtec(*squares, resize=64, crop=48, random_state=3)
    other = make_rd_mvtec(*squares, resize=64, crop=48, random_state=4)
    np.testing.assert_array_equal(first[0], again[0])
    np.testing.assert_array_equal(first[1], again[1])
    assert not np.array_equal(first[0], other[0])
    assert first[0].shape == (4, 48, 48, 3) and first[0].dtype == np.uint8
    assert first[1].shape == (4, 48, 48) and first[1].dtype == bool


def test_make_rd_mvtec_masks_follow_their_images(squares):
    for seed in range(5):
        images, masks = make_rd_mvtec(*squares, max_angle=10, resize=80, crop=64,
                                      random_state=seed)
        bright = images.mean(axis=-1) > 127
        for b, m in zip(bright, masks):
            # The squares stay inside the crop, and rotation keeps their 20x20 area.
            assert 0.9 * 400 < m.sum() < 1.1 * 400
            assert (b & m).sum() / (b | m).sum() > 0.9  # intersection over union


def test_make_rd_mvtec_without_rotation_or_shift_is_a_plain_resize(squares):
    images, masks = make_rd_mvtec(squares[0], max_angle=0, resize=32, crop=32)
    assert masks is None
    expected = resize_and_crop(torch.from_numpy(squares[0]).permute(0, 3, 1, 2) / 255.0, 32)
    expected = (expected.permute(0, 2, 3, 1) * 255).round().byte().numpy()
    np.testing.assert_array_equal(images, expected)


def test_make_rd_mvtec_reads_paths_and_loader_mask_references(mvtec_root):
    data = load_mvtec(mvtec_root, "bottle")
    from_paths = make_rd_mvtec(data.test_images, data.test_masks, resize=16, crop=12)
    arrays = np.stack([read_image(p) for p in data.test_images])
    from_arrays = make_rd_mvtec(arrays, read_masks(data.test_masks, data.test_images),
                                resize=16, crop=12)
    np.testing.assert_array_equal(from_paths[0], from_arrays[0])
    np.testing.assert_array_equal(from_paths[1], from_arrays[1])


# --- the texture demo set -------------------------------------------------------------------

SMALL = dict(n_train=6, n_test=12, size=64)


@pytest.fixture
def skimage_data():
    return pytest.importorskip("skimage.data")


def test_make_texture_defects_is_deterministic_with_documented_shapes(skimage_data):
    a = make_texture_defects("gravel", random_state=1, **SMALL)
    b = make_texture_defects("gravel", random_state=1, **SMALL)
    for key in ["train_images", "test_images", "test_labels", "test_masks", "test_defect_types"]:
        np.testing.assert_array_equal(a[key], b[key])
    assert a.train_images.shape == (6, 64, 64, 3) and a.train_images.dtype == np.uint8
    assert a.test_images.shape == (12, 64, 64, 3) and a.test_images.dtype == np.uint8
    assert a.test_masks.shape == (12, 64, 64) and a.test_masks.dtype == bool
    assert a.test_labels.sum() == 6 and a.texture == "gravel"
    c = make_texture_defects("gravel", random_state=2, **SMALL)
    assert not np.array_equal(a.test_images, c.test_images)


@pytest.mark.parametrize("texture", ["brick", "grass", "gravel"])
def test_texture_train_and_test_crops_come_from_disjoint_halves_of_the_photo(texture,
                                                                           skimage_data):
    data = make_texture_defects(texture, anomaly_ratio=0, **SMALL)
    photo = getattr(skimage_data, texture)()
    assert (data.train_origins[:, 0] + 64 <= 256).all()
    assert (data.test_origins[:, 0] >= 256).all()
    # The origins are true: each crop is the photo there, in all three channels.
    for images, origins in [(data.train_images, data.train_origins),
                            (data.test_images, data.test_origins)]:
        for image, (r, c) in zip(images, origins):
            for channel in range(3):
                np.testing.assert_array_equal(image[..., channel], photo[r : r + 64, c : c + 64])


def test_texture_labels_masks_and_defect_types_agree(skimage_data):
    data = make_texture_defects("brick", n_test=40, size=96, random_state=0)
    anomalous = data.test_labels == 1
    np.testing.assert_array_equal(data.test_masks.any(axis=(1, 2)), anomalous)
    np.testing.assert_array_equal(data.test_defect_types == "good", ~anomalous)
    assert anomalous.sum() == 20
    assert set(data.test_defect_types[anomalous]) == set(DEFECT_TYPES)


@pytest.mark.parametrize("texture", ["brick", "grass", "gravel"])
def test_texture_masks_are_exactly_the_painted_pixels(texture, skimage_data):
    kwargs = dict(n_test=24, size=128, random_state=5)
    data = make_texture_defects(texture, **kwargs)
    clean = make_texture_defects(texture, anomaly_ratio=0, **kwargs).test_images
    changed = (data.test_images != clean).any(axis=-1)
    # Outside the masks every pixel keeps its value...
    assert not (changed & ~data.test_masks).any()
    difference = np.abs(data.test_images.astype(int) - clean).max(axis=-1)
    for i in np.flatnonzero(data.test_labels):
        inside = data.test_masks[i]
        # ...inside, all but the rare pixel the paint already matched change, and visibly.
        assert changed[i][inside].mean() > 0.95, data.test_defect_types[i]
        assert difference[i][inside].mean() > 10, data.test_defect_types[i]


def test_texture_defect_types_and_anomaly_ratio_are_honoured(skimage_data):
    data = make_texture_defects("grass", defect_types=["hole"], anomaly_ratio=0.25, **SMALL)
    assert list(np.unique(data.test_defect_types)) == ["good", "hole"]
    assert data.test_labels.sum() == 3
    with pytest.raises(ValueError, match="defect_types"):
        make_texture_defects(defect_types=["dent"], **SMALL)
    with pytest.raises(ValueError, match="texture"):
        make_texture_defects("marble", **SMALL)


def test_load_demo_gives_each_texture_its_own_defects(skimage_data):
    demo = load_demo(n_train=2, n_test=4, size=32)
    assert list(demo) == ["brick", "grass", "gravel"]
    assert not np.array_equal(demo["brick"].test_masks, demo["grass"].test_masks)
    assert all(d.texture == name for name, d in demo.items())


def test_texture_demo_without_scikit_image_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "skimage", None)  # makes "import skimage" fail
    with pytest.raises(ImportError, match=r"skpadim\[demo\]"):
        make_texture_defects(**SMALL)
