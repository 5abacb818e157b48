"""PaDiM and SPADE as pipelines: the paper's configurations and the builders.

:func:`~skpadim.make_padim` and :func:`~skpadim.make_spade` return a
:class:`~skpadim.StreamingPipeline`: a scikit-learn ``Pipeline`` whose ``fit`` and scoring
methods move ``batch_size`` images at a time through every step, so memory does not grow
with the number of images and each image goes through the backbone once.
:func:`~skpadim.inspect_images` returns maps, scores and labels of the same images from one
pass; :func:`~skpadim.iter_inspect_images` yields them batch by batch, for test sets of any
size.

The builders and the paper's settings are defined here; the machinery that moves the
batches is in ``_streaming`` (the pipeline and its fit) and ``_batches`` (maps and scores),
whose public names this module re-exports.
"""

import torch

from ._batches import Inspection, anomaly_maps, inspect_images, iter_inspect_images
from ._streaming import StreamingPipeline, _make_streaming_pipeline, fit_in_batches
from .detectors._gaussian import PatchGaussian
from .detectors._spade import SPADE, SPADE_LAYERS
from .exceptions import ConfigurationError
from .features._extraction import BackboneFeatures
from .features._selection import RandomFeatureSelector
from .features.backbones import BACKBONES, build_trunk

__all__ = [
    "PAPER_CONFIGS",
    "PRESETS",
    "StreamingPipeline",
    "Inspection",
    "make_padim",
    "make_spade",
    "anomaly_maps",
    "inspect_images",
    "iter_inspect_images",
    "fit_in_batches",
]

#: The paper's named configurations: backbone and number of randomly kept channels
#: (None keeps all). "Lite0-Rd100" is skpadim's small offline configuration.
PAPER_CONFIGS = {
    "R18-Rd100": ("resnet18", 100),
    "WR50-Rd550": ("wide_resnet50_2", 550),
    "EfficientNet-B5": ("efficientnet_b5", None),
    "Lite0-Rd100": ("efficientnet_lite0", 100),
}
_DEFAULT_N_FEATURES = {backbone: n for backbone, n in PAPER_CONFIGS.values()}

#: The tile of ``make_padim(positions="tile")`` when none is given, in pixels: a 64 x 64
#: patch grid for the built-in backbones (4,096 Gaussians; 0.33 GB of moments and factors
#: with 100 features), large enough for the deepest tapped layer's receptive field to
#: see mostly image rather than padding at the tile's kept centre.
DEFAULT_SHARED_TILE = 256

#: What :func:`make_padim`'s ``preset`` sets, for every argument left at ``"auto"``.
#:
#: - ``"full-view"``: the default for a backbone given by name: the paper's settings without
#:   its centre crop, so that every pixel of the image is inspected (256 x 256, bicubic).
#: - ``"paper"``: the PaDiM paper (256 -> center crop 224, bicubic resize and map
#:   upsampling, ``reg_covar=0.01``, scipy's ``gaussian_filter`` border ``"reflect"``, the
#:   PaDiM authors' code).
#: - ``"anomalib"``: anomalib's ``Padim`` (images at the data's size, no crop, bilinear map
#:   upsampling, 0.01 + 1e-5 on the diagonal, a 33-tap blur (sigma 4) padded with torch's
#:   ``"reflect"``, which is scipy's ``"mirror"``).
PRESETS = {
    "full-view": dict(resize=256, crop=None, interpolation="bicubic", map_interpolation=None,
                      reg_covar=0.01, mode="reflect"),
    "paper": dict(resize=256, crop=224, interpolation="bicubic", map_interpolation=None,
                  reg_covar=0.01, mode="reflect"),
    "anomalib": dict(resize=None, crop=None, interpolation="bilinear",
                     map_interpolation="bilinear", reg_covar=0.01001, mode="mirror"),
}


def _config_name(backbone):
    """The paper configuration ``backbone`` names ("PaDiM-R18-Rd100", ...), or None."""
    return {k.lower(): k for k in PAPER_CONFIGS}.get(backbone.lower().removeprefix("padim-"))


def _config(backbone, n_features):
    key = _config_name(backbone)
    if key is not None:
        config_backbone, config_n = PAPER_CONFIGS[key]
        return config_backbone, config_n if n_features == "auto" else n_features
    if backbone not in _DEFAULT_N_FEATURES:
        raise ConfigurationError(
            f"unknown backbone or configuration {backbone!r}; choose a backbone "
            f"({', '.join(_DEFAULT_N_FEATURES)}) or a configuration ({', '.join(PAPER_CONFIGS)})"
        )
    return backbone, _DEFAULT_N_FEATURES[backbone] if n_features == "auto" else n_features


def _preset(preset, **given):
    if preset not in PRESETS:
        raise ConfigurationError(
            f"unknown preset {preset!r}; choose 'auto' or one of "
            f"{', '.join(map(repr, PRESETS))}"
        )
    values = {k: (PRESETS[preset][k] if v == "auto" else v) for k, v in given.items()}
    if values["map_interpolation"] is None:
        values["map_interpolation"] = values["interpolation"]
    return values


def make_padim(
    backbone="resnet18",
    n_features="auto",
    *,
    preset="auto",
    layers=None,
    weights="DEFAULT",
    resize="auto",
    crop="auto",
    positions="image",
    tile=None,
    tile_overlap="auto",
    interpolation="auto",
    map_interpolation="auto",
    feature_indices=None,
    reg_covar="auto",
    covariance="empirical",
    covariance_block=1,
    contamination=0.01,
    calibration_size="auto",
    sigma=4.0,
    mode="auto",
    storage_dtype="float32",
    batch_size=32,
    memory_limit=None,
    device="auto",
    verbose=False,
    random_state=None,
):
    """Build PaDiM as a scikit-learn Pipeline: features, random selection, Gaussians.

    The result is a :class:`StreamingPipeline` of :class:`BackboneFeatures`,
    :class:`RandomFeatureSelector` and :class:`PatchGaussian` with the paper's settings:
    ``fit``, ``score_samples``, ``predict``, ``decision_function``, :meth:`anomaly_maps
    <StreamingPipeline.anomaly_maps>` and :meth:`inspect <StreamingPipeline.inspect>` move
    ``batch_size`` images at a time through it, so memory stays flat in the number of
    images, and everything sklearn does with a Pipeline (``clone``, ``set_params``,
    ``GridSearchCV``, ``joblib.dump``) works on it.

    Parameters
    ----------
    backbone : str, default="resnet18"
        A backbone name ("resnet18", "wide_resnet50_2", "efficientnet_b5",
        "efficientnet_lite0") or one of the paper's configurations by name: "R18-Rd100",
        "WR50-Rd550", "EfficientNet-B5" (a "PaDiM-" prefix is allowed), or "Lite0-Rd100".
    n_features : int, None or "auto", default="auto"
        Channels kept by the random selection; "auto" takes the paper's value for the
        backbone (100 for ResNet18, 550 for Wide ResNet-50-2, all for EfficientNet-B5,
        100 for Lite0); None keeps all. Ignored when ``feature_indices`` is given.
    preset : {"auto", "full-view", "paper", "anomalib"}, default="auto"
        Fills every argument left at "auto" (see :data:`PRESETS`). "auto" is "paper" when
        ``backbone`` names one of the paper's configurations, and "full-view" otherwise:
        the paper's settings without its centre crop, which discards 23% of the image's
        area (the border, where a defect would go unseen). "paper" reproduces the paper's
        256 -> 224 geometry, for its tables and MVTec AD. "anomalib" reproduces
        anomalib's ``Padim`` maps: no resize or crop (images at the data's size), bilinear
        map upsampling, ``reg_covar=0.01001`` (anomalib adds 0.01 and then 1e-5 to the
        diagonal) and its blur's border, torch's "reflect" (scipy's "mirror"). Pass
        anomalib's channel indices as ``feature_indices`` to get its maps exactly.
    layers, weights, verbose
        Passed to :class:`BackboneFeatures`.
    batch_size : int, default=32
        Images the pipeline moves through its steps at a time, and the Gaussians' batch.
        The backbone's own forward batch is :class:`BackboneFeatures`' "auto" (8 images
        on the CPU, 32 on a GPU; ``backbonefeatures__batch_size`` sets it).
    resize, crop : int, (int, int), None or "auto", default="auto"
        Passed to :class:`BackboneFeatures` (full-view: 256 and None; paper: 256 and 224;
        anomalib: None and None).
    positions : {"image", "tile"}, default="image"
        What the Gaussians model (see the user guide's "High-resolution images").
        "image": one Gaussian per position of the whole image's patch grid, the paper's
        model, for aligned objects (a part always in the same place); its memory grows
        with the image's area. "tile": one Gaussian per position of a ``tile``, shared by
        every tile of every image, for stationary surfaces (textures, webs, sheets,
        painted or rolled goods): every tile of every training image is a sample, images
        of any size (at least a tile) are inspected at their native resolution by
        default (``resize`` and ``crop`` "auto" mean None), and memory does not depend
        on the image's size. The image threshold then flags ``contamination`` of images,
        not of tiles (see :class:`~skpadim.PatchGaussian`'s
        ``samples_per_image_``).
    tile, tile_overlap : int, (int, int) or None, and "auto", int or (int, int)
        Passed to :class:`BackboneFeatures`. With ``positions="image"``: run the backbone
        on overlapping tiles of this size, stitched on the whole image's grid, so that
        large images (``resize=None``) are inspected at their own resolution with the
        backbone's memory bounded by the tile; the Gaussians still model every position
        of the whole image. With ``positions="tile"``: the tile the Gaussians model (None
        means 256 px), cut at native resolution with at least ``tile_overlap`` pixels
        shared by neighbours ("auto": 64 px for the default layers); each pixel's value
        comes from the tile whose centre is nearest.
    interpolation : {"bicubic", "bilinear", "nearest", "auto"}, default="auto"
        How images are resized (paper: "bicubic"; anomalib: "bilinear").
    map_interpolation : {"bicubic", "bilinear", "nearest", "auto"}, default="auto"
        How distance maps are upsampled to the image size (paper: as ``interpolation``;
        anomalib: "bilinear").
    feature_indices : array-like of int or None, default=None
        Exact channels to keep, in this order (for instance an anomalib model's ``idx``).
    reg_covar : float or "auto", default="auto"
        Added to every covariance's diagonal (paper: 0.01; anomalib: 0.01001).
    covariance : {"empirical", "oas", "ledoit-wolf"}, default="empirical"
        Per-position covariance estimate, passed to :class:`PatchGaussian`: the paper's
        sample covariance, or a shrinkage estimate (OAS, Ledoit-Wolf) whose intensity is
        estimated from the data; ``reg_covar`` is added on top.
    covariance_block : int, default=1
        Passed to :class:`PatchGaussian`: covariances shared by blocks of ``k x k``
        neighbouring positions, means kept per position. The memory knob of
        ``positions="image"`` at high resolution: the covariances' memory divided by
        ``k**2``, each estimated from ``k**2`` times the samples (better conditioned with
        few training images).
    mode : {"reflect", "mirror", "nearest", "constant", "wrap", "auto"}, default="auto"
        Border of the maps' Gaussian filter, in **scipy.ndimage's** names: "reflect" repeats
        the edge pixel (d c b a | a b c d; the paper), "mirror" does not (d c b | a b c d;
        what torch and numpy call "reflect", anomalib's).
    device : str, default="auto"
        Where the backbone and the Gaussians compute ("auto": CUDA when available).
    contamination, calibration_size, sigma, storage_dtype
        Passed to :class:`PatchGaussian`.
    memory_limit : int, str or None, default=None
        Passed to :class:`StreamingPipeline`: a fit whose estimated peak memory
        (:func:`~skpadim.estimate_memory`) exceeds it, such as ``"6GB"``, is refused before
        the backbone runs, with settings that would fit.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel draw (and the weights when ``weights=None``).

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``backbonefeatures``, ``randomfeatureselector`` and ``patchgaussian``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import make_padim, anomaly_maps
    >>> rng = np.random.RandomState(0)
    >>> train = rng.randint(0, 256, (8, 72, 72, 3), dtype=np.uint8)
    >>> pipe = make_padim("resnet18", n_features=20, weights=None, resize=72, crop=64,
    ...                   random_state=0).fit(train)
    >>> pipe.score_samples(train[:2]).shape
    (2,)
    >>> anomaly_maps(pipe, train[:2]).shape
    (2, 64, 64)
    >>> anomalib_like = make_padim("resnet18", preset="anomalib", weights=None)
    >>> anomalib_like[0].resize, anomalib_like[-1].interpolation, anomalib_like[-1].mode
    (None, 'bilinear', 'mirror')
    """
    if positions not in ("image", "tile"):
        raise ConfigurationError(
            f"positions must be 'image' (a Gaussian per position of the whole image) or "
            f"'tile' (a Gaussian per position of a tile, shared by all tiles), got {positions!r}"
        )
    shared = positions == "tile"
    if shared:
        # Native resolution: the tiles, not a resize, bound the memory.
        tile = DEFAULT_SHARED_TILE if tile is None else tile
        resize, crop = (None if v == "auto" else v for v in (resize, crop))
    if preset == "auto":
        preset = "paper" if _config_name(backbone) else "full-view"
    backbone, n_features = _config(backbone, n_features)
    settings = _preset(preset, resize=resize, crop=crop, interpolation=interpolation,
                       map_interpolation=map_interpolation, reg_covar=reg_covar, mode=mode)
    features = BackboneFeatures(
        backbone=backbone, layers=layers, weights=weights, resize=settings["resize"],
        crop=settings["crop"], interpolation=settings["interpolation"],
        device=device, verbose=verbose, random_state=random_state, tile=tile,
        tile_overlap=tile_overlap, stitch=not shared,
    )
    crop, resize = settings["crop"], settings["resize"]
    map_size = tile if shared else crop if crop is not None else resize
    return _make_streaming_pipeline(
        features,
        RandomFeatureSelector(n_features=n_features, feature_indices=feature_indices,
                              random_state=random_state),
        PatchGaussian(
            reg_covar=settings["reg_covar"], covariance=covariance,
            covariance_block=covariance_block, contamination=contamination,
            calibration_size=calibration_size, batch_size=batch_size, map_size=map_size,
            interpolation=settings["map_interpolation"], sigma=sigma, mode=settings["mode"],
            storage_dtype=storage_dtype, device=device,
        ),
        batch_size=batch_size,
        memory_limit=memory_limit,
    )


def _probe_layers(backbone, layers, size=224):
    """Channels of each tapped layer and its stride relative to the first, without weights."""
    with torch.device("meta"):
        trunk = build_trunk(backbone, layers, weights=None)
        outputs = trunk(torch.zeros(1, 3, size, size))
    first = outputs[0].shape[-1]
    channels = [int(o.shape[1]) for o in outputs]
    strides = [max(1, round(first / o.shape[-1])) for o in outputs]
    return channels, strides


def make_spade(
    backbone="wide_resnet50_2",
    *,
    layers=None,
    weights="DEFAULT",
    resize=256,
    crop=224,
    interpolation="bicubic",
    n_neighbors=50,
    kappa=1,
    calibration="leave-one-out",
    contamination=0.01,
    sigma=4.0,
    mode="reflect",
    storage_dtype="float32",
    chunk_size=4096,
    batch_size=32,
    device="auto",
    verbose=False,
    random_state=None,
):
    """Build SPADE as a scikit-learn Pipeline: backbone features, then nearest neighbours.

    The result is a :class:`~skpadim.StreamingPipeline` of ``BackboneFeatures(layers=...)``
    and ``SPADE(layer_channels=..., layer_strides=...)`` with the layers, channel split and
    strides filled in for ``backbone``, so the pipeline behaves as the paper describes; its
    ``fit`` and scoring methods move ``batch_size`` images at a time through it (the
    gallery itself grows with the training set, see :class:`SPADE`'s memory note).

    Parameters
    ----------
    backbone : str, default="wide_resnet50_2"
        The paper uses Wide ResNet-50-2 (torchvision downloads its weights on first use);
        "efficientnet_lite0" runs offline from the ``skpadim[lite0]`` extra; "resnet18" and
        "efficientnet_b5" work too.
    layers : list of str or None, default=None
        Layers to tap, the image-level layer last; None for
        :data:`~skpadim.detectors.SPADE_LAYERS` (ResNets:
        layer1-3 for pixels and layer4 for images, as in the paper; Lite0: stages 2, 3, 5
        and the head).
    weights, resize, crop, interpolation, device, verbose, random_state
        Passed to :class:`~skpadim.BackboneFeatures` (``interpolation`` and ``device`` to
        :class:`~skpadim.SPADE` too).
    batch_size : int, default=32
        Images the pipeline moves through its steps at a time (the backbone's forward
        batch is :class:`~skpadim.BackboneFeatures`' "auto").
    n_neighbors, kappa, calibration, contamination, sigma, mode, storage_dtype, chunk_size
        Passed to :class:`~skpadim.SPADE`.

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``backbonefeatures`` and ``spade``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import anomaly_maps, make_spade
    >>> rng = np.random.RandomState(0)
    >>> train = rng.randint(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    >>> pipe = make_spade("resnet18", weights=None, resize=64, crop=None, n_neighbors=3,
    ...                   random_state=0).fit(train)
    >>> pipe[-1].layer_channels, pipe[-1].layer_strides
    ([64, 128, 256, 512], [1, 2, 4, 8])
    >>> pipe.score_samples(train[:2]).shape, anomaly_maps(pipe, train[:2]).shape
    ((2,), (2, 64, 64))
    """
    if backbone not in BACKBONES:
        raise ConfigurationError(
            f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    layers = list(SPADE_LAYERS[backbone] if layers is None else layers)
    channels, strides = _probe_layers(backbone, layers)
    features = BackboneFeatures(
        backbone=backbone, layers=layers, weights=weights, resize=resize, crop=crop,
        interpolation=interpolation, upsample="nearest",
        device=device, verbose=verbose, random_state=random_state,
    )
    return _make_streaming_pipeline(
        features,
        SPADE(
            n_neighbors=n_neighbors, kappa=kappa, layer_channels=channels,
            layer_strides=strides, calibration=calibration, chunk_size=chunk_size,
            storage_dtype=storage_dtype, contamination=contamination,
            map_size=crop if crop is not None else resize, interpolation=interpolation,
            sigma=sigma, mode=mode, device=device,
        ),
        batch_size=batch_size,
    )
