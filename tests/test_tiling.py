"""Tiled feature extraction: tile geometry, stitching, and its effect on features and maps."""

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import make_pipeline
from torch import nn

import skpadim
from skpadim import BackboneFeatures, PatchGaussian, RandomFeatureSelector
from skpadim.exceptions import ConfigurationError
from skpadim.features._tiling import (
    auto_overlap,
    forward_tiled,
    kept_spans,
    layer_strides,
    output_shapes,
    tile_spans,
)


def _textures(n, size, seed, contrast=128):
    """Smooth random texture, as conftest's ``tiny_images``, at ``size`` x ``size``: 4x4
    blocks of colours within ``contrast`` of mid-grey, plus pixel noise."""
    gen = np.random.RandomState(seed)
    images = gen.uniform(128 - contrast, 128 + contrast, (n, size // 4, size // 4, 3))
    images = images.repeat(4, axis=1).repeat(4, axis=2)
    images += gen.normal(0, 12, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def _as_tensor(images):
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255


def _features(**params):
    return BackboneFeatures(weights=None, resize=None, crop=None, random_state=0, **params)


# ---------------------------------------------------------------------------- geometry
@pytest.mark.parametrize("length, tile, overlap, align, expected", [
    (224, 96, 32, 16, [(0, 96), (64, 160), (128, 224)]),
    (96, 96, 32, 16, [(0, 96)]),
    (50, 96, 32, 16, [(0, 50)]),
    (100, 96, 32, 16, [(0, 100)]),  # 4 px more than a tile: one tile, 4 < align
    (100, 64, 16, 16, [(0, 68), (32, 100)]),
    (10, 4, 2, 1, [(0, 4), (2, 6), (4, 8), (6, 10)]),
])
def test_tile_spans_examples(length, tile, overlap, align, expected):
    assert tile_spans(length, tile, overlap, align) == expected


def test_tile_spans_properties_on_random_geometries():
    gen = np.random.RandomState(0)
    for _ in range(3000):
        align = int(2 ** gen.randint(0, 6))
        tile = int(gen.randint(align, 40 * align))
        overlap = int(gen.randint(0, tile - align + 1))
        length = int(gen.randint(1, 12 * tile))
        spans = tile_spans(length, tile, overlap, align)
        starts, stops = np.array(spans).T
        sizes = stops - starts
        assert starts[0] == 0 and stops[-1] == length
        assert (starts % align == 0).all()
        assert (np.diff(starts) > 0).all()  # no tile repeats another
        if length <= tile:
            assert spans == [(0, length)]
        else:  # one size for all, at most align - 1 more than asked, same length mod align
            assert (sizes == sizes[0]).all() and tile <= sizes[0] < tile + align
            assert (length - sizes[0]) % align == 0
        assert (stops[:-1] - starts[1:] >= overlap).all()  # overlaps, so also coverage
        # Even spread: the steps differ by at most one cell of the grid.
        if len(spans) > 2:
            assert np.ptp(np.diff(starts)) <= align
        kept = kept_spans(spans, align)
        lo, hi = np.array(kept).T
        assert lo[0] == 0 and hi[-1] == length and (lo[1:] == hi[:-1]).all()
        assert (lo < hi).all() and (lo >= starts).all() and (hi <= stops).all()
        assert (lo[1:] % align == 0).all()
        # Each cut is the middle of its overlap, to the nearest multiple of align.
        assert (np.abs(lo[1:] - (stops[:-1] + starts[1:]) / 2) <= align / 2).all()


@pytest.mark.parametrize("args, match", [
    ((100, 32, 32, 16), "smaller than the tile"),
    ((100, 32, 20, 16), "tile - overlap must be at least 16"),
    ((100, 0, 0, 16), "tile must be an int >= 1"),
    ((100, 32, -1, 16), "overlap must be an int >= 0"),
    ((100, 32, 8, 0), "align must be an int >= 1"),
    ((100.0, 32, 8, 4), "length must be an int"),
])
def test_tile_spans_refuses_impossible_tilings(args, match):
    with pytest.raises(ConfigurationError, match=match):
        tile_spans(*args)


def test_auto_overlap_is_eight_coarse_cells_at_most_half_a_tile():
    assert auto_overlap(512, 16) == (128, 128)
    assert auto_overlap((96, 1000), 16) == (48, 128)
    assert auto_overlap(512, 32) == (256, 256)
    for tile in range(16, 600):
        (overlap, _) = auto_overlap(tile, 16)
        assert overlap % 16 == 0 and tile - overlap >= 16 and overlap <= tile / 2


def test_layer_strides_and_shapes_match_a_real_forward():
    trunk = BackboneFeatures(backbone="efficientnet_lite0", weights=None).fit().module_
    assert layer_strides(trunk) == [4, 8, 16]
    with torch.inference_mode():
        real = [tuple(o.shape[1:]) for o in trunk(torch.zeros(1, 3, 100, 75))]
    assert output_shapes(trunk, (3, 100, 75)) == real


def test_layer_strides_refuses_a_grid_that_is_no_fraction_of_the_image():
    with pytest.raises(ConfigurationError, match="cannot be computed in tiles"):
        layer_strides(nn.Conv2d(3, 2, 3, stride=3), probe=64)


# ---------------------------------------------------------------------------- stitching
class _TwoScales(nn.Module):
    """Two 3x3 convolutions of stride 2, both tapped: a small receptive field (7 px)."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.b = nn.Conv2d(4, 5, 3, stride=2, padding=1)

    def forward(self, x):
        a = torch.relu(self.a(x))
        return [a, self.b(a)]


@pytest.mark.parametrize("size", [(96, 128), (90, 131), (37, 200)])
@pytest.mark.parametrize("batch_size", [None, 5, 1000])
def test_forward_tiled_equals_the_whole_forward_when_overlaps_exceed_the_receptive_field(
    size, batch_size,
):
    torch.manual_seed(0)
    net = _TwoScales()
    x = torch.rand(2, 3, *size)
    with torch.inference_mode():
        whole = net(x)
        tiled = forward_tiled(x, net, tile=(24, 32), overlap=16, strides=[2, 4],
                              batch_size=batch_size)
    for w, t in zip(whole, tiled):
        assert t.shape == w.shape
        torch.testing.assert_close(t, w, rtol=0, atol=1e-5)


def test_tiles_keep_lite0s_size_dependent_padding_on_the_image_grid():
    # Lite0 pads like TensorFlow's "SAME": the padding before depends on the input's size
    # mod the stride, at every stride-2 layer. Tiles whose length is the image's modulo 16
    # (tile_spans' rule) sample the image's grid: the stride-4 layer, whose receptive
    # field the 24-px margins hold, is the untiled one. Tiles of exactly 96 px on a 200 x
    # 250 image would be shifted by a pixel: 0.8 of the largest feature off.
    trunk = BackboneFeatures("efficientnet_lite0", weights=None, random_state=0).fit().module_
    x = torch.rand(1, 3, 200, 250, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole, tiled = trunk(x), forward_tiled(x, trunk, 96, 48, layer_strides(trunk))
    assert [t.shape for t in tiled] == [w.shape for w in whole]
    torch.testing.assert_close(tiled[0], whole[0], rtol=0, atol=1e-5 * whole[0].abs().max())


def test_forward_tiled_refuses_outputs_off_the_strides_grid():
    conv = nn.Conv2d(3, 2, 3, stride=2, padding=1)
    with pytest.raises(ConfigurationError, match="not on the grid"), torch.inference_mode():
        forward_tiled(torch.rand(1, 3, 64, 64), conv, tile=32, overlap=8, strides=1)
    with pytest.raises(ConfigurationError, match="divide each other"):
        forward_tiled(torch.rand(1, 3, 64, 64), conv, tile=32, overlap=8, strides=[4, 6])


# ---------------------------------------------------------------------------- BackboneFeatures
@pytest.mark.parametrize("tile", [96, (96, 128), 500])
def test_an_image_that_fits_in_one_tile_gives_the_untiled_features_bit_for_bit(tile):
    images = _textures(3, 96, seed=1)[:, :, :96]
    expected = _features().fit(images).transform(images)
    got = _features(tile=tile).fit(images).transform(images)
    np.testing.assert_array_equal(got, expected)


def _cut_distance(length, spans, kept, stride):
    """Per cell along one axis: pixels from its centre to the nearest border of the tile
    it was kept from that is not an image border."""
    centres = (np.arange(-(-length // stride)) + 0.5) * stride
    out = np.full(centres.shape, np.inf)
    for (start, stop), (lo, hi) in zip(spans, kept):
        mine = (centres >= lo) & (centres < hi)
        near = np.full(centres.shape, np.inf)
        if start > 0:
            near = np.minimum(near, centres - start)
        if stop < length:
            near = np.minimum(near, stop - centres)
        out[mine] = near[mine]
    return out


def test_tiled_features_match_untiled_ones_away_from_tile_cuts():
    images = _textures(2, 224, seed=2)[:, :160]  # 160 x 224: 3 x 4 tiles of 96
    # crop (a no-op here) fixes the size, which gives feature_shape_ to check.
    untiled = BackboneFeatures(weights=None, resize=None, crop=(160, 224), random_state=0)
    tiled = clone(untiled).set_params(tile=96)
    untiled.fit(images), tiled.fit(images)
    expected, got = untiled.transform(images), tiled.transform(images)
    assert got.shape == expected.shape == (2, *tiled.feature_shape_)
    # Error per cell against its distance to the cut tile border the receptive field met.
    rows, cols = [tile_spans(n, 96, 48, 16) for n in (160, 224)]
    distance = np.minimum.outer(_cut_distance(160, rows, kept_spans(rows, 16), 4),
                                _cut_distance(224, cols, kept_spans(cols, 16), 4))
    error = np.abs(got - expected).mean(axis=(0, 1)) / np.abs(expected).mean()
    # Measured (random ResNet18, whose layer3 sees 105 px either side): mean relative
    # error 0.24 at 18-22 px from a cut, 0.13 at 34-46, 0.045 at 50-62, 0.012 (max 0.030)
    # at 66-78 and 0.003 beyond. Pretrained Lite0 decays alike (0.23, 0.17, 0.09, 0.05).
    far, near = error[distance >= 64], error[distance < 32]
    assert far.size and far.max() < 0.05
    assert near.mean() > 5 * far.mean()  # the cuts are where tiling shows, if anywhere


def test_each_stitched_cell_is_copied_from_exactly_one_tile_never_averaged():
    images = _as_tensor(_textures(1, 224, seed=3)[:, :160])
    trunk = _features(tile=96).fit(images).module_
    strides = layer_strides(trunk)
    with torch.inference_mode():
        stitched = forward_tiled(images, trunk, 96, 48, strides)
        rows, cols = [tile_spans(n, 96, 48, 16) for n in (160, 224)]
        differs = []
        for (r0, r1), (kr0, kr1) in zip(rows, kept_spans(rows, 16)):
            for (c0, c1), (kc0, kc1) in zip(cols, kept_spans(cols, 16)):
                own = trunk(images[:, :, r0:r1, c0:c1])
                for whole, part, s in zip(stitched, own, strides):
                    kept = whole[..., kr0 // s : -(-kr1 // s), kc0 // s : -(-kc1 // s)]
                    mine = part[..., (kr0 - r0) // s : -(-(kr1 - r0) // s),
                                (kc0 - c0) // s : -(-(kc1 - c0) // s)]
                    assert torch.equal(kept, mine)
                    # The overlap beyond the cut belongs to the neighbour, and differs.
                    if c1 < 224:
                        theirs = whole[..., kr0 // s : -(-kr1 // s),
                                       kc1 // s : c1 // s]
                        ours = part[..., (kr0 - r0) // s : -(-(kr1 - r0) // s),
                                    (kc1 - c0) // s : (c1 - c0) // s]
                        differs.append(not torch.equal(theirs, ours))
    assert differs and all(differs)


def _blob(image, top, left, size=6):
    image = image.copy()
    image[top : top + size, left : left + size] = 10
    return image


def test_a_defect_across_a_tile_cut_scores_like_one_inside_a_tile():
    # Low contrast, so that a dark 6x6 blob stands out (2-3x the map's background).
    train, tests = _textures(20, 192, seed=4, contrast=16), _textures(4, 192, 5, 16)
    tiled = make_pipeline(_features(tile=96), RandomFeatureSelector(30, random_state=0),
                          PatchGaussian()).fit(train)
    untiled = clone(tiled).set_params(backbonefeatures__tile=None).fit(train)
    # Tiles of 96 at 0, 48, 96 (overlap 48) on both axes: cuts at 80 and 128. One blob on
    # the corner where four tiles' kept parts meet, one in the centre tile's kept part.
    blobs = {"across": (77, 77), "inside": (101, 101)}
    images = np.stack([_blob(t, *at) for t in tests for at in blobs.values()])
    maps = [skpadim.anomaly_maps(pipe, images) for pipe in (tiled, untiled)]
    windows = [(slice(r - 13, r + 19), slice(c - 13, c + 19)) for r, c in blobs.values()]
    peaks = [[m[k][windows[k % 2]].max() for k in range(len(m))] for m in maps]
    # The same blob scores differently at different places even untiled (the Gaussians
    # differ per position: up to 20% here), so each score is taken relative to the
    # untiled model's at the same place, where no cut exists.
    relative = (np.array(peaks[0]) / np.array(peaks[1])).reshape(len(tests), 2).mean(axis=0)
    # Measured: across 0.978, inside 0.964 of the untiled scores, a ratio of 1.015
    # (1.04-1.05 with three other seeds).
    assert abs(relative[0] / relative[1] - 1) < 0.10
    assert np.abs(relative - 1).max() < 0.10


def test_tiled_model_save_load_clone_and_params(tmp_path):
    images = _textures(6, 128, seed=6)
    pipe = make_pipeline(_features(tile=(64, 96), tile_overlap=32),
                         RandomFeatureSelector(n_features=20, random_state=0),
                         PatchGaussian()).fit(images)
    path = tmp_path / "tiled.skpadim"
    skpadim.save(pipe, path)
    loaded = skpadim.load(path)
    assert loaded[0].get_params()["tile"] == (64, 96)
    np.testing.assert_array_equal(skpadim.anomaly_maps(loaded, images[:2]),
                                  skpadim.anomaly_maps(pipe, images[:2]))
    params = clone(pipe[0]).get_params()
    assert params["tile"] == (64, 96) and params["tile_overlap"] == 32


@pytest.mark.parametrize("params, match", [
    ({"tile": 8}, "tile - overlap must be at least 16"),
    ({"tile": 96, "tile_overlap": 90}, "tile - overlap must be at least 16"),
    ({"tile": (96, 96, 96)}, "tile must be an int or"),
    ({"tile": "big"}, "tile"),
])
def test_impossible_tilings_fail_at_fit_with_what_to_change(params, match):
    with pytest.raises(ValueError, match=match):
        _features(**params).fit()


def test_export_onnx_refuses_a_model_that_runs_in_tiles(tmp_path):
    pytest.importorskip("onnx")
    images = _textures(4, 128, seed=7)
    pipe = make_pipeline(_features(tile=64), RandomFeatureSelector(n_features=10, random_state=0),
                         PatchGaussian()).fit(images)
    # 128 px in tiles of 64 overlapping by 32: 3 x 3 tiles; 70 x 64 px would be one tile.
    assert pipe[0]._tile_grid((128, 128)) == (3, 3) and pipe[0]._tile_grid((70, 64)) == (1, 1)
    with pytest.raises(ConfigurationError, match="tiled models cannot be exported.*tile=None"):
        skpadim.export_onnx(pipe, tmp_path / "tiled.onnx")


def test_make_padim_and_the_command_line_pass_the_tile_on(tmp_path):
    import subprocess
    import sys

    from PIL import Image

    from skpadim import make_padim

    pipe = make_padim("resnet18", weights=None, resize=None, tile=96, tile_overlap=32)
    assert (pipe[0].tile, pipe[0].tile_overlap) == (96, 32)
    assert make_padim("resnet18", weights=None)[0].tile is None
    Image.new("RGB", (40, 40)).save(tmp_path / "a.png")
    Image.new("RGB", (40, 40)).save(tmp_path / "b.png")
    proc = subprocess.run([sys.executable, "-m", "skpadim.cli", "fit", tmp_path, "--model",
                           tmp_path / "m.safetensors", "--method", "spade", "--tile", "64",
                           "--weights", "none"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "--tile and --positions apply to PaDiM only" in proc.stderr
