"""Images in, patch-embedding maps out: the first step of a PaDiM or SPADE pipeline."""

import os
import threading
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils.validation import check_is_fitted
from tqdm.auto import tqdm

from .._compat import Interval, StrOptions, _fit_context
from .._torch import ImageModuleMixin, resolve_device, torch_seed
from .._versioning import VersionedStateMixin
from ..exceptions import ConfigurationError, InvalidImageError
from . import backbones
from ._geometry import _INTERPOLATIONS, _pair
from ._images import as_image_batches, n_images
from ._tile_samples import TileSamples, _shared_plan
from ._tiling import _pair as _tile_pair
from ._tiling import (
    auto_overlap,
    forward_tiled,
    layer_strides,
    output_shapes,
    tile_spans,
)

__all__ = ["BackboneFeatures", "concat_layers"]

_UPSAMPLE = ("nearest", "bilinear", "bicubic")
_STRIDES_LOCK = threading.Lock()


def concat_layers(feature_maps, upsample="nearest", channels=None):
    """Concatenate layer outputs on the grid of the first one (PaDiM's patch embedding).

    Parameters
    ----------
    feature_maps : list of torch.Tensor of shape (n, c_k, h_k, w_k)
        Outputs of the tapped layers; the first sets the grid.
    upsample : {"nearest", "bilinear", "bicubic"}, default="nearest"
        How coarser layers are brought to that grid. "nearest" gives every fine patch the
        feature of the coarse patch containing it, as the paper's code and anomalib do.
    channels : array-like of int or None, default=None
        Channels of the concatenation to return, in this order; None returns all. Equal to
        selecting them afterwards, without ever holding the unselected ones (a random
        selection of 100 of ResNet18's 448 channels needs a quarter of the memory).

    Returns
    -------
    embedding : torch.Tensor of shape (n, sum(c_k), h_0, w_0) or (n, len(channels), h_0, w_0)

    Examples
    --------
    >>> import torch
    >>> from skpadim.features import concat_layers
    >>> maps = [torch.zeros(1, 4, 8, 8), torch.ones(1, 2, 4, 4)]
    >>> concat_layers(maps).shape
    torch.Size([1, 6, 8, 8])
    >>> concat_layers(maps, channels=[5, 0]).shape, bool(torch.equal(
    ...     concat_layers(maps, channels=[5, 0]), concat_layers(maps)[:, [5, 0]]))
    (torch.Size([1, 2, 8, 8]), True)
    """
    first = feature_maps[0]
    n, (h, w) = first.shape[0], first.shape[-2:]
    bounds = np.cumsum([0] + [f.shape[1] for f in feature_maps])
    if channels is None:
        channels = np.arange(bounds[-1])
    channels = np.asarray(channels, dtype=np.int64)
    out = torch.empty(n, len(channels), h, w, dtype=first.dtype, device=first.device)
    layer_of = np.searchsorted(bounds, channels, side="right") - 1
    for k, fmap in enumerate(feature_maps):
        where = np.flatnonzero(layer_of == k)
        if where.size == 0:
            continue
        local = channels[where] - bounds[k]
        if local.size != fmap.shape[1] or (local != np.arange(fmap.shape[1])).any():
            fmap = fmap.index_select(1, torch.from_numpy(local).to(fmap.device))
        if (where == np.arange(where[0], where[0] + where.size)).all():
            _upsample_into(out[:, where[0] : where[0] + where.size], fmap, upsample)
        else:
            up = torch.empty(n, where.size, h, w, dtype=out.dtype, device=out.device)
            _upsample_into(up, fmap, upsample)
            out.index_copy_(1, torch.from_numpy(where).to(out.device), up)
    return out


def _upsample_into(target, fmap, upsample):
    """Write ``fmap`` brought to ``target``'s grid into ``target``."""
    (h, w), (fh, fw) = target.shape[-2:], fmap.shape[-2:]
    if (fh, fw) == (h, w):
        target.copy_(fmap)
    elif upsample == "nearest" and h % fh == 0 and w % fw == 0:
        # An integer-factor nearest upsampling is a broadcast: written straight into the
        # output, it needs no full-size temporary (the largest one of a forward pass).
        n, c = fmap.shape[:2]
        target.view(n, c, fh, h // fh, fw, w // fw).copy_(fmap[:, :, :, None, :, None])
    else:
        kwargs = {} if upsample == "nearest" else {"align_corners": False}
        target.copy_(F.interpolate(fmap, size=(h, w), mode=upsample, **kwargs))


def _forward(module, images, plan, batch_size):
    """The tapped layers' outputs for ``images``: whole, or tiled by ``plan``."""
    if plan is None:
        return module(images)
    return forward_tiled(images, module, *plan, batch_size=batch_size)


class BackboneFeatures(VersionedStateMixin, ImageModuleMixin, TransformerMixin, BaseEstimator):
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
        Layers to tap (see :mod:`skpadim.features.backbones`); None for the paper's: layer1-3 of the
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
    batch_size : int or "auto", default="auto"
        Images per forward pass (with ``tile``, tiles per forward pass, at least one tile
        of each image of a batch). "auto": 8 on the CPU, where small batches run faster
        (they stay in cache) and need a quarter of the activation memory of 32; 32 on a
        GPU. Results do not depend on it.
    device : str, default="auto"
        "auto" uses CUDA when available, else the CPU; or any torch device string.
    verbose : bool, default=False
        Show a progress bar while transforming.
    random_state : int, RandomState instance or None, default=None
        Seeds the random initialisation when ``weights`` is None.
    tile : int, (int, int) or None, default=None
        Run the backbone on overlapping tiles of this size (in pixels of the image as it
        reaches the network, after resize and crop) and stitch their features into one
        map on the whole image's grid; None runs it on whole images. When to use: images
        inspected at native resolution (2048x2048, 8000x2000, with ``resize=None,
        crop=None``) whose whole-image activations would not fit in memory; the
        activation memory then depends on ``tile`` and ``batch_size``, not on the
        image. Tiles of 512 px or more keep the recomputed overlaps cheap (1.6x the
        untiled pixels on a 2048x2048 image). Tiles start on the grid of the coarsest
        tapped layer and keep only the cells nearer their centre than a neighbour's (see
        :func:`~skpadim.features.forward_tiled`); an image that fits in one tile gives
        exactly the untiled features.
    tile_overlap : "auto", int or (int, int), default="auto"
        Least overlap of neighbouring tiles, in pixels; each tile drops half of it at a
        shared border, where its receptive field was cut. "auto": 8 times the coarsest
        stride (128 px for the default layers), at most half the tile (rounded down to
        that stride). With it, 256-px tiles of 512x512 images give features within 0.4%
        of the untiled ones on average and 3% at worst (random ResNet18; pretrained
        Lite0: 1.7% and 8%, next to the cuts), and image scores within 0.1%. With
        ``stitch=False``, "auto" is half as much (4 cells of the coarsest layer, 64 px).
    stitch : bool, default=True
        With ``tile``: True stitches the tiles' features into one map per image, for a
        detector with one Gaussian per position of the whole image. False hands the tiles
        on as samples of their own (a lazy :class:`~skpadim.features.TileSamples`, which
        only :class:`~skpadim.StreamingPipeline` and the detectors consume): all tiles
        have exactly ``tile`` pixels, images of any size of at least a tile are accepted,
        and the detector models one tile's positions, shared by every tile of every image
        (``make_padim(positions="tile")``). For stationary surfaces (textures, webs,
        sheets): the model's memory does not depend on the image's size.

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
    input_size_ : tuple of int or None
        Without ``resize`` and ``crop``: ``(H, W)`` of the images given to ``fit``, which
        every later image must share (checked before the backbone runs). None otherwise, or
        when ``fit`` saw no images.

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
        "interpolation": [StrOptions(set(_INTERPOLATIONS))],
        "mean": [None, tuple, list],
        "std": [None, tuple, list],
        "upsample": [StrOptions(set(_UPSAMPLE))],
        "batch_size": [StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        "verbose": ["boolean"],
        "random_state": ["random_state"],
        "tile": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "tile_overlap": [StrOptions({"auto"}), Interval(Integral, 0, None, closed="left"),
                         tuple, list],
        "stitch": ["boolean"],
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
        batch_size="auto",
        device="auto",
        verbose=False,
        random_state=None,
        tile=None,
        tile_overlap="auto",
        stitch=True,
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
        self.tile = tile
        self.tile_overlap = tile_overlap
        self.stitch = stitch

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X=None, y=None):
        """Build the truncated network; the images themselves are only checked.

        Parameters
        ----------
        X : array-like or list of paths, optional
            Images (see :mod:`skpadim.features` for the accepted forms). The backbone
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
        self.input_size_ = None
        if not self.stitch and self.tile is None:
            raise ConfigurationError(
                "stitch=False hands tiles on as samples, so it needs a tile size: set tile "
                "(for instance tile=256) or leave stitch=True"
            )
        if X is not None:
            # Fails early on bad input; without resize and crop, later images must have
            # the size of these.
            first = next(as_image_batches(
                X[:1], 1, self.resize, self.crop, self.interpolation))
            if self.resize is None and self.crop is None and self.stitch:
                self.input_size_ = tuple(first.shape[-2:])
        trunk = backbones.build_trunk(
            self.backbone, self.layers, self.weights, seed=torch_seed(self.random_state)
        )
        trunk.mean.copy_(torch.tensor(mean).view(1, -1, 1, 1))
        trunk.std.copy_(torch.tensor(std).view(1, -1, 1, 1))
        self.module_ = trunk
        self._tile_plan()  # a tiling that cannot work fails here, not on the first image
        self.image_size_ = _pair(self.crop or self.resize, "crop")
        if not self.stitch:
            # Every sample is a tile, whatever the image's size.
            self.image_size_ = self._shared_tile_plan()[0]
        # Shapes only, on the meta device: no activations, however large the images
        # (tiled or not, the maps are on the whole image's grid). Without a fixed input
        # size only the channel counts are needed, which any size gives.
        shapes = output_shapes(trunk, (3, *(self.image_size_ or (64, 64))))
        self.layer_channels_ = [int(shape[0]) for shape in shapes]
        self.n_channels_ = sum(self.layer_channels_)
        self.feature_shape_ = (
            (self.n_channels_, *shapes[0][-2:]) if self.image_size_ else None
        )
        return self

    def _tile_plan(self):
        """``(tile, overlap, strides)`` for :func:`forward_tiled`, or None without tiling."""
        if self.tile is None:
            return None
        # Read from the network (on the meta device, so it costs nothing), not a table.
        strides = self._layer_strides()
        align = max(strides)
        tile = _tile_pair(self.tile, "tile", 1)
        overlap = (auto_overlap(tile, align) if self.tile_overlap == "auto"
                   else _tile_pair(self.tile_overlap, "tile_overlap", 0))
        for t, o in zip(tile, overlap):
            if t - o < align:
                raise ConfigurationError(
                    f"tile={self.tile} with tile_overlap={self.tile_overlap} leaves tiles "
                    f"that cannot advance on the {align}-px grid of the coarsest tapped "
                    f"layer: tile - overlap must be at least {align}; enlarge tile or "
                    "lower tile_overlap"
                )
        return tile, overlap, strides

    def _shared_tile_plan(self):
        """``(tile, overlap)`` in pixels of the tiles handed on as samples (``stitch=False``)."""
        return _shared_plan(self.tile, self.tile_overlap, max(self._layer_strides()))

    def _layer_strides(self):
        """:func:`layer_strides` of ``module_``, computed once per network.

        Computing them swaps the network's parameters for meta tensors for a moment, so
        threads sharing this step (a Dask worker's) must not do it while another runs the
        network: it is done once, under a lock, and kept (not saved).
        """
        cached = self.__dict__.get("_strides")
        if cached is None or cached[0] is not self.module_:
            with _STRIDES_LOCK:
                cached = self.__dict__.get("_strides")
                if cached is None or cached[0] is not self.module_:
                    cached = self._strides = (self.module_, layer_strides(self.module_))
        return cached[1]

    def _tile_runtime(self):
        """``(device, module, tiles per forward pass)`` for :class:`TileSamples`."""
        check_is_fitted(self)
        device = resolve_device(self.device)
        return device, self._inference_module(device), self._batch_size(device)

    def _tile_features(self, module, tiles, channels=None):
        """Feature maps of a batch of tiles, each run as an image of its own (numpy)."""
        with torch.inference_mode():
            return concat_layers(module(tiles), self.upsample, channels).cpu().numpy()

    def _tile_grid(self, size):
        """``(rows, columns)`` of tiles an image reaching the network at ``size`` runs in."""
        if self.tile is None:
            return (1, 1)
        tile, overlap, strides = self._tile_plan()
        return tuple(len(tile_spans(s, t, o, max(strides)))
                     for s, t, o in zip(size, tile, overlap))

    def _batch_size(self, device):
        if self.batch_size != "auto":
            return self.batch_size
        return 8 if device.type == "cpu" else 32

    def _batches(self, X, batch_size):
        return as_image_batches(
            X, batch_size, self.resize, self.crop, self.interpolation
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
        return self._transform(X)

    def _transform(self, X, channels=None):
        """``transform``, keeping only ``channels`` of the output (see :func:`concat_layers`)."""
        check_is_fitted(self)
        if not self.__dict__.get("stitch", True):
            return TileSamples(self, X, channels)
        device = resolve_device(self.device)
        module = self._inference_module(device)
        batch_size = self._batch_size(device)
        n = n_images(X)
        plan = self._tile_plan()
        out = None
        # One forward pass needs no progress bar; longer work shows one.
        with torch.inference_mode(), tqdm(
            total=n, disable=not self.verbose or n <= batch_size, desc="features",
            unit="img", leave=False,
        ) as bar:
            for batch in self._batches(X, batch_size):
                self._check_size(batch)
                fmap = concat_layers(_forward(module, batch.to(device), plan, batch_size),
                                     self.upsample, channels)
                fmap = fmap.cpu().numpy()
                if out is None:
                    if len(fmap) == n:
                        return fmap
                    # Filled in place: a list of batches and a concatenation would hold
                    # every feature map twice.
                    out = np.empty((n, *fmap.shape[1:]), dtype=fmap.dtype)
                    done = 0
                if fmap.shape[1:] != out.shape[1:]:
                    raise InvalidImageError(
                        f"images gave feature maps of different sizes "
                        f"{sorted({fmap.shape[1:], out.shape[1:]})}; set resize (and crop) "
                        "so every image reaches the network at the same size"
                    )
                out[done : done + len(fmap)] = fmap
                done += len(fmap)
                bar.update(len(batch))
        return out

    def _inference_module(self, device):
        """``module_`` with its batch norms folded into the convolutions (faster, the same
        features to float rounding), built once per device and kept in memory, not saved."""
        cached = self.__dict__.get("_folded")
        if cached is None or cached[0] != device or cached[1] is not self.module_:
            cached = (device, self.module_, backbones.fold_batch_norm(self.module_.to(device)))
            self._folded = cached
        return cached[2]

    def __getstate__(self):
        state = dict(super().__getstate__())
        state.pop("_folded", None)
        state.pop("_strides", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        # Pickles from before tiling lack its parameters; they ran untiled.
        self.__dict__.setdefault("tile", None)
        self.__dict__.setdefault("tile_overlap", "auto")
        self.__dict__.setdefault("stitch", True)

    def _check_size(self, batch):
        """Images must reach the network at the size seen in fit: checked on the input,
        before the backbone runs on it."""
        expected = self.__dict__.get("image_size_") or self.__dict__.get("input_size_")
        size = tuple(batch.shape[-2:])
        if expected is not None and size != tuple(expected):
            raise InvalidImageError(
                f"images reach the network at {size}, not the {tuple(expected)} seen in fit; "
                "resize them like the training images, or set resize (and crop)"
            )
