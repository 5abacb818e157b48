"""Anomaly maps brought back to the user's image geometry: the inverse of resize-then-crop.

The references are computed another way: the crop offsets by :func:`resize_and_crop` itself,
the unknown border from the continuous geometry of the resize (pixel centres), masks through
:func:`transform_masks`, integer upscaling by ``np.kron``.
"""

import numpy as np
import pytest
import torch
from PIL import Image

from skpadim.exceptions import InvalidImageError
from skpadim.preprocessing import (
    image_sizes,
    restore_geometry,
    resize_and_crop,
    transform_masks,
)


def _crop_like_the_models(restored, resize, crop, interpolation="bilinear"):
    """``resize_and_crop`` applied to restored maps (n, H, W), as a model sees an image."""
    t = torch.from_numpy(np.ascontiguousarray(restored))[:, None]
    return resize_and_crop(t, resize, crop, interpolation)[:, 0].numpy()


def _smooth_map(shape, seed=0):
    """A slowly varying map in [0, 1]: interpolation reproduces it closely."""
    rng = np.random.RandomState(seed)
    y, x = np.meshgrid(np.linspace(0, 1, shape[0]), np.linspace(0, 1, shape[1]), indexing="ij")
    a, b, c = rng.uniform(0.5, 2.0, 3)
    return (0.5 + 0.25 * np.sin(a * np.pi * x + b) * np.cos(c * np.pi * y)).astype(np.float32)


def test_paper_geometry_marks_exactly_the_removed_border_unknown():
    maps = np.ones((2, 224, 224), dtype=np.float32)
    restored = restore_geometry(maps, 256, resize=256, crop=224)
    assert restored.shape == (2, 256, 256) and restored.dtype == np.float32
    border = np.ones((256, 256), dtype=bool)
    border[16:240, 16:240] = False  # (256 - 224) // 2 = 16 on every side
    assert (np.isnan(restored) == border).all()
    assert np.isnan(restored).mean() == pytest.approx(1 - 224**2 / 256**2, abs=0)
    assert (restored[:, ~border] == 1).all()


def test_unknown_border_scales_with_the_resize():
    # 512 -> 256 -> crop 224: the crop spans canvas pixels 16..239, original pixels 32..479.
    restored = restore_geometry(np.ones((224, 224)), (512, 512), resize=256, crop=224)
    known = ~np.isnan(restored)
    expected = np.zeros((512, 512), dtype=bool)
    expected[32:480, 32:480] = True
    assert (known == expected).all()
    assert np.isnan(restored).mean() == pytest.approx(1 - 224**2 / 256**2, abs=0)


@pytest.mark.parametrize("original, crop", [
    ((256, 256), (224, 224)),
    ((257, 255), (224, 223)),  # odd differences: the offset rounds down
    ((31, 40), (30, 17)),
    ((9, 9), (2, 8)),
    ((64, 48), (64, 48)),  # nothing cropped
])
@pytest.mark.parametrize("fill", ["nan", "nearest", -1.0])
def test_restore_then_crop_gives_back_the_map_exactly_without_resizing(original, crop, fill):
    rng = np.random.RandomState(0)
    maps = rng.rand(3, *crop).astype(np.float32)
    restored = restore_geometry(maps, original, resize=original, crop=crop, fill=fill)
    assert restored.shape == (3, *original)
    np.testing.assert_array_equal(_crop_like_the_models(restored, original, crop), maps)
    # resize=None means the same when the map is at the crop's size.
    np.testing.assert_array_equal(
        restore_geometry(maps, original, crop=crop, fill=fill), restored)


@pytest.mark.parametrize("original, resize, crop", [
    ((300, 200), 256, 224),  # non-square original, square network input
    ((512, 512), 256, 224),
    ((181, 243), (97, 131), (81, 120)),  # odd everything
])
def test_restore_then_crop_gives_back_the_map_to_interpolation_accuracy(original, resize, crop):
    crop_hw = (crop, crop) if np.isscalar(crop) else crop
    maps = _smooth_map(crop_hw)[None]
    restored = restore_geometry(maps, original, resize, crop, fill="nearest")
    assert restored.shape == (1, *original)
    back = _crop_like_the_models(restored, resize, crop)
    # Two bilinear resamplings of a smooth map: off by far less than its 0.5 range.
    np.testing.assert_allclose(back, maps, atol=0.02)
    assert np.abs(back - maps).mean() < 0.005


def test_non_square_original_has_its_unknown_border_where_the_crop_cut():
    restored = restore_geometry(np.ones((224, 224)), (300, 200), resize=256, crop=224)
    known = ~np.isnan(restored)
    rows, cols = np.flatnonzero(known.any(axis=1)), np.flatnonzero(known.any(axis=0))
    # The known region is a rectangle...
    assert (known == np.outer(known.any(axis=1), known.any(axis=0))).all()
    # ...whose edges are the crop's edges (canvas pixels 16 and 240) scaled to the original
    # (300 / 256 vertically, 200 / 256 horizontally): known are the pixels whose centres
    # lie inside (a centre exactly on an edge may go either way).
    for found, size in [(rows, 300), (cols, 200)]:
        start, stop = 16 * size / 256, 240 * size / 256
        centres = np.arange(size) + 0.5
        inside = np.flatnonzero((centres > start) & (centres < stop))
        on_edge = np.flatnonzero(np.isclose(centres, start) | np.isclose(centres, stop))
        assert set(inside) <= set(found) <= set(inside) | set(on_edge)


def test_fill_modes_differ_only_on_the_border():
    rng = np.random.RandomState(1)
    maps = rng.rand(2, 56, 56).astype(np.float32) * 10
    args = ((300, 200), 256, 224)
    unknown = restore_geometry(maps, *args, fill="nan")
    edge = restore_geometry(maps, *args, fill="nearest")
    constant = restore_geometry(maps, *args, fill=-5.0)
    border = np.isnan(unknown)
    assert border.any() and (border == border[:1]).all()  # the same border for each map
    assert not np.isnan(edge).any()
    # No value from the border leaks into a known pixel: the three agree there exactly.
    np.testing.assert_array_equal(unknown[~border], edge[~border])
    np.testing.assert_array_equal(constant[~border], edge[~border])
    assert (constant[border] == -5.0).all()


def test_nearest_fill_extends_the_edge_values():
    maps = np.arange(12, dtype=np.float32).reshape(1, 3, 4)
    out = restore_geometry(maps, (7, 9), crop=(3, 4), fill="nearest")[0]
    top, left = (7 - 3) // 2, (9 - 4) // 2
    np.testing.assert_array_equal(out[top:top + 3, left:left + 4], maps[0])
    # np.pad's "edge" mode is the independent reference for extending edge values.
    np.testing.assert_array_equal(
        out, np.pad(maps[0], ((top, 7 - 3 - top), (left, 9 - 4 - left)), mode="edge"))


def test_without_resize_or_crop_only_the_map_size_is_scaled():
    rng = np.random.RandomState(2)
    maps = rng.rand(2, 5, 7).astype(np.float32)
    np.testing.assert_array_equal(restore_geometry(maps, (5, 7)), maps)
    # An integer factor with nearest interpolation repeats each value: np.kron does too.
    up = restore_geometry(maps, (15, 21), interpolation="nearest")
    np.testing.assert_array_equal(up, np.stack([np.kron(m, np.ones((3, 3))) for m in maps]))
    flat = restore_geometry(np.full((4, 4), 2.5), (9, 13), interpolation="bicubic")
    np.testing.assert_allclose(flat, 2.5, rtol=1e-6)


def test_a_map_at_map_size_lands_where_the_crop_was():
    # A detector's map at 56 x 56 covers the same 224 x 224 crop as one at 224 x 224.
    maps = _smooth_map((224, 224))[None]
    small = torch.nn.functional.interpolate(
        torch.from_numpy(maps)[:, None], size=(56, 56), mode="bilinear", antialias=True,
        align_corners=False)[:, 0].numpy()
    full = restore_geometry(maps, (256, 256), 256, 224)
    coarse = restore_geometry(small, (256, 256), 256, 224)
    assert (np.isnan(full) == np.isnan(coarse)).all()
    known = ~np.isnan(full)
    np.testing.assert_allclose(coarse[known], full[known], atol=0.02)


@pytest.mark.parametrize("map_size", [None, 56])
def test_a_mask_drawn_on_the_original_lines_up_with_the_restored_map(map_size):
    # The defect as the user drew it, on a 300 x 200 image.
    mask = np.zeros((1, 300, 200), dtype=bool)
    mask[0, 120:200, 60:110] = True
    # A map that finds exactly that defect, in the network's geometry (transform_masks
    # brings the mask there), optionally at a detector's coarser map size.
    maps = transform_masks(mask, resize=256, crop=224).astype(np.float32)
    if map_size is not None:
        maps = torch.nn.functional.interpolate(
            torch.from_numpy(maps)[:, None], size=(map_size, map_size), mode="area")[:, 0]
        maps = maps.numpy()
    restored = restore_geometry(maps, (300, 200), resize=256, crop=224)
    found = np.nan_to_num(restored[0]) > 0.5
    iou = (found & mask[0]).sum() / (found | mask[0]).sum()
    assert iou > (0.95 if map_size is None else 0.85)
    centre = np.argwhere(found).mean(axis=0)
    np.testing.assert_allclose(centre, np.argwhere(mask[0]).mean(axis=0), atol=1.0)


def test_one_2d_map_gives_one_2d_map():
    amap = _smooth_map((224, 224))
    out = restore_geometry(amap, (300, 200), 256, 224)
    assert out.shape == (300, 200)
    np.testing.assert_array_equal(out, restore_geometry(amap[None], (300, 200), 256,
                                                              224)[0])


@pytest.mark.parametrize("kwargs, message", [
    ({"resize": 200, "crop": 224}, "larger than the"),
    ({"fill": "zero"}, "fill must be"),
    ({"fill": True}, "fill must be"),
    ({"interpolation": "area"}, "interpolation must be"),
])
def test_bad_arguments_are_refused_with_what_to_do(kwargs, message):
    with pytest.raises(InvalidImageError, match=message):
        restore_geometry(np.ones((1, 8, 8)), (16, 16), **kwargs)


def test_maps_with_nan_or_the_wrong_shape_are_refused():
    with pytest.raises(InvalidImageError, match="NaN"):
        restore_geometry(np.full((8, 8), np.nan), (16, 16))
    with pytest.raises(InvalidImageError, match="shape"):
        restore_geometry(np.ones((1, 1, 8, 8)), (16, 16))


def test_image_sizes_read_array_shapes_and_file_headers(tmp_path):
    assert image_sizes(np.zeros((3, 20, 30), dtype=np.uint8)) == [(20, 30)] * 3
    assert image_sizes(np.zeros((2, 20, 30, 1), dtype=np.uint16)) == [(20, 30)] * 2
    assert image_sizes(np.zeros((1, 1, 20, 30), dtype=np.float32)) == [(20, 30)]
    assert image_sizes([np.zeros((20, 30, 3), dtype=np.uint8)] * 2) == [(20, 30)] * 2
    paths = []
    for i, (w, h) in enumerate([(64, 48), (200, 300), (7, 5)]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.new("RGB", (w, h)).save(paths[-1])
    assert image_sizes(paths) == [(48, 64), (300, 200), (5, 7)]
    assert image_sizes(np.array(paths)) == [(48, 64), (300, 200), (5, 7)]
    with pytest.raises(InvalidImageError, match="ambiguous"):
        image_sizes(np.zeros((20, 30, 3), dtype=np.uint8))
    with pytest.raises(InvalidImageError, match="no images"):
        image_sizes([])
