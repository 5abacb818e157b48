"""Images in, patch-embedding maps out: the first step of a PaDiM or SPADE pipeline."""

import os
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from . import backbones, preprocessing
from ._compat import Interval, StrOptions, _fit_context
from ._torch import ImageModuleMixin, resolve_device, torch_seed
from .exceptions import InvalidImageError

__all__ = ["BackboneFeatures", "concat_layers"]

_UPSAMPLE = ("nearest", "bilinear", "bicubic")


def concat_layers(feature_maps, upsample="nearest"):
    """Concatenate layer outputs on the grid of the first one (PaDiM's patch embedding).

    Parameters
    ----------
    feature_maps : list of torch.Tensor of shape (n, c_k, h_k, w_k)
        Outputs of the tapped layers; the first sets the grid.
    upsample : {"nearest", "bilinear", "bicubic"}, default="nearest"
        How coarser layers are brought to that grid. "nearest" gives every fine patch the
        feature of the coarse patch containing it, as the paper's code and anomalib do.

    Returns
    -------
    embedding : torch.Tensor of shape (n, sum(c_k), h_0, w_0)

    Examples
    --------
    >>> import torch
    >>> from skpadim.features import concat_layers
    >>> maps = [torch.zeros(1, 4, 8, 8), torch.ones(1, 2, 4, 4)]
    >>> concat_layers(maps).shape
    torch.Size([1, 6, 8, 8])
    """
    size = feature_maps[0].shape[-2:]
    out = [feature_maps[0]]
    for fmap in feature_maps[1:]:
        if fmap.shape[-2:] != size:
            kwargs = {} if upsample == "nearest" else {"align_corners": False}
            fmap = F.interpolate(fmap, size=size, mode=upsample, **kwargs)
        out.append(fmap)
    return torch.cat(out, dim=1)


class BackboneFeatures(ImageModuleMixin, TransformerMixin, BaseEstimator):
    """Patch embeddings from a pretrained CNN: images to ``(n, C, h, w)`` feature maps.

    Images are resized and center-cropped as in the paper, normalised for the backbone, and
    run through the network up to the deepest requested layer; the outputs of the requested
    layers are brought to the grid of the first one and concatenated along channels.

    Parameters
    ----------
    backbone : str, default="resnet18"
        "resnet18", "wide_resnet50_2", "efficientnet_b5" (torchvision) or
        "efficientnet_lite0" (weights from the optional ``skpadim[lite0]`` extra).
    layers : list of str or None, default=None
        Layers to tap (see :mod:`skpadim.backbones`); None for the paper's: layer1-3 of the
        ResNets, blocks 7, 20 and 26 of EfficientNet-B5, stages 2, 3 and 5 of Lite0.
    weights : str, path-like or None, default="DEFAULT"
        torchvision weights name such as "DEFAULT" or "IMAGENET1K_V1" (torchvision downloads
        them on first use), a path to a state-dict file (for machines without network), or
        None for random initialisation from ``random_state``. The fitted transformer keeps
        the weights it uses, so a saved pipeline needs no download.
    resize : int, (int, int) or None, default=256
        Images are first resized to this size (an int gives a square).
    crop : int, (int, int) or None, default=224
        Then center-cropped to this size; None skips cropping (anomalib, STC).
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        Resampling filter of the resize (the paper: bicubic; anomalib: bilinear).
    mean, std : sequence of 3 floats or None, default=None
        Input normalisation; None uses the backbone's (ImageNet's, or Lite0's own).
    upsample : {"nearest", "bilinear", "bicubic"}, default="nearest"
        How coarser layers are upsampled to the first layer's grid.
    batch_size : int, default=32
        Images per forward pass.
    device : str, default="auto"
        "auto" uses CUDA when available, else the CPU; or any torch device string.
    verbose : bool, default=False
        Show a progress bar while transforming.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation when ``weights`` is None.

    Attributes
    ----------
    module_ : FeatureTrunk
        The truncated network, in eval mode, without gradients.
    layer_channels_ : list of int
        Channels contributed by each layer, in ``layers`` order.
    n_channels_ : int
        Total channels of the output, ``sum(layer_channels_)``.
    image_size_ : tuple of int or None
        ``(H, W)`` of the images the network sees (after resize and crop); None when both
        are None and input sizes may vary.
    feature_shape_ : tuple of int or None
        ``(C, h, w)`` of each output sample for ``image_size_``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import BackboneFeatures
    >>> images = np.random.RandomState(0).randint(0, 256, (2, 80, 80, 3), dtype=np.uint8)
    >>> features = BackboneFeatures(weights=None, resize=72, crop=64, random_state=0)
    >>> features.fit_transform(images).shape
    (2, 448, 16, 16)
    """

    _parameter_constraints = {
        "backbone": [StrOptions(set(backbones.BACKBONES))],
        "layers": [None, list, tuple],
        "weights": [None, str, os.PathLike],
        "resize": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "crop": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "interpolation": [StrOptions(set(preprocessing._INTERPOLATIONS))],
        "mean": [None, tuple, list],
        "std": [None, tuple, list],
        "upsample": [StrOptions(set(_UPSAMPLE))],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "verbose": ["boolean"],
        "random_state": ["random_state"],
    }

    def __init__(
        self,
        backbone="resnet18",
        layers=None,
        weights="DEFAULT",
        resize=256,
        crop=224,
        interpolation="bicubic",
        mean=None,
        std=None,
        upsample="nearest",
        batch_size=32,
        device="auto",
        verbose=False,
        random_state=None,
    ):
        self.backbone = backbone
        self.layers = layers
        self.weights = weights
        self.resize = resize
        self.crop = crop
        self.interpolation = interpolation
        self.mean = mean
        self.std = std
        self.upsample = upsample
        self.batch_size = batch_size
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Build the truncated network; the images themselves are only checked.

        Parameters
        ----------
        X : array-like or list of paths, optional
            Images (see :mod:`skpadim.preprocessing` for the accepted forms). The backbone
            is pretrained, so nothing is learnt from them.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : BackboneFeatures
            The fitted transformer.
        """
        default_mean, default_std = backbones.normalisation(self.backbone)
        mean = default_mean if self.mean is None else tuple(self.mean)
        std = default_std if self.std is None else tuple(self.std)
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise InvalidImageError(
                f"mean and std need 3 values each (std > 0), got mean={mean}, std={std}"
            )
        if X is not None:
            next(preprocessing.as_image_batches(X[:1], 1))  # fail early on bad input
        trunk = backbones.build_trunk(
            self.backbone, self.layers, self.weights, seed=torch_seed(self.random_state)
        )
        trunk.mean.copy_(torch.tensor(mean).view(1, -1, 1, 1))
        trunk.std.copy_(torch.tensor(std).view(1, -1, 1, 1))
        self.module_ = trunk
        self.image_size_ = preprocessing._pair(self.crop or self.resize, "crop")
        # Without a fixed input size only the channel counts are needed: the smallest input
        # every backbone's stride-32 layers still map to a grid (2x2) gives them cheaply.
        probe = self.image_size_ or (64, 64)
        with torch.inference_mode():
            outputs = trunk(torch.zeros(1, 3, *probe))
        self.layer_channels_ = [int(o.shape[1]) for o in outputs]
        self.n_channels_ = sum(self.layer_channels_)
        self.feature_shape_ = (
            (self.n_channels_, *outputs[0].shape[-2:]) if self.image_size_ else None
        )
        return self

    def _batches(self, X):
        return preprocessing.as_image_batches(
            X, self.batch_size, self.resize, self.crop, self.interpolation
        )

    def transform(self, X):
        """Compute patch-embedding maps.

        Parameters
        ----------
        X : array-like or list of paths
            uint8 ``(n, H, W, 3)`` or ``(n, H, W)``, float ``(n, 3, H, W)`` in [0, 1], or a
            list of image file paths.

        Returns
        -------
        features : ndarray of shape (n, n_channels_, h, w), dtype float32
        """
        check_is_fitted(self)
        device = resolve_device(self.device)
        module = self.module_.to(device)
        n = preprocessing.n_images(X)
        out = []
        with torch.inference_mode(), tqdm(
            total=n, disable=not self.verbose, desc="features", unit="img"
        ) as bar:
            for batch in self._batches(X):
                fmap = concat_layers(module(batch.to(device)), self.upsample)
                out.append(fmap.cpu().numpy())
                bar.update(len(batch))
        shapes = {o.shape[1:] for o in out}
        if len(shapes) > 1:
            raise InvalidImageError(
                f"images gave feature maps of different sizes {sorted(shapes)}; set resize "
                "(and crop) so every image reaches the network at the same size"
            )
        return np.concatenate(out)
