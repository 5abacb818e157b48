"""The paper's geometry: resize, then centre crop, and the way back for anomaly maps.

PaDiM resizes every image to one size (256 x 256 for MVTec AD) and crops its centre
(224 x 224) before the backbone sees it; :func:`resize_and_crop` does both.
Masks go through :func:`transform_masks`, the same geometry as the images, so metrics
compare like with like. The way back, from anomaly maps to the user's own images, is
:func:`restore_geometry`: it undoes the crop and the resize, so that a map lies over
the original image pixel for pixel (with the border the crop removed marked unknown).
"""

import os
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from .._torch import from_numpy
from ..exceptions import InvalidImageError
from ._image_files import _is_path_list, read_image

__all__ = [
    "resize_and_crop",
    "transform_masks",
    "restore_geometry",
    "uncrop_maps",
]

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


def _pair(size, name):
    if size is None:
        return None
    if isinstance(size, Integral):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise InvalidImageError(f"{name} must be a positive int or (height, width), got {size}")
    return size


def resize_and_crop(images, resize=None, crop=None, interpolation="bicubic"):
    """Resize to ``resize`` then center-crop to ``crop``, as the PaDiM paper preprocesses.

    Parameters
    ----------
    images : torch.Tensor of shape (n, c, H, W)
        Float images in [0, 1] (or masks as float).
    resize : int, (int, int) or None, default=None
        Target size; an int gives a square, as the paper resizes MVTec AD to 256x256.
        None keeps the size.
    crop : int, (int, int) or None, default=None
        Center crop applied after resizing; None keeps everything.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        Resampling filter. Bicubic and bilinear are antialiased when shrinking, like PIL;
        bicubic output is clipped back to [0, 1].

    Returns
    -------
    images : torch.Tensor of shape (n, c, h, w)
        ``(h, w)`` is ``crop``, else ``resize``, else the input size.

    Raises
    ------
    InvalidImageError
        If ``interpolation`` is unknown, a size is not positive, or ``crop`` is larger than
        the resized image.

    Examples
    --------
    >>> import torch
    >>> from skpadim.features import resize_and_crop
    >>> images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    >>> tuple(resize_and_crop(images, resize=36, crop=32).shape)
    (2, 3, 32, 32)
    >>> tuple(resize_and_crop(images, resize=(24, 32)).shape)
    (2, 3, 24, 32)
    >>> grid = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> resize_and_crop(grid, crop=2).tolist()                  # the central 2 x 2
    [[[[5.0, 6.0], [9.0, 10.0]]]]
    """
    if interpolation not in _INTERPOLATIONS:
        raise InvalidImageError(
            f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}"
        )
    resize, crop = _pair(resize, "resize"), _pair(crop, "crop")
    if resize is not None and tuple(images.shape[-2:]) != resize:
        images = _resample(images, resize, interpolation)
        if interpolation == "bicubic":  # its overshoot leaves [0, 1]
            images = images.clamp_(0, 1)
    if crop is not None:
        h, w = images.shape[-2:]
        ch, cw = crop
        if ch > h or cw > w:
            raise InvalidImageError(
                f"crop {crop} is larger than the (resized) image {(h, w)}; lower crop or raise "
                "resize"
            )
        top, left = _center_crop_offset((h, w), crop)
        images = images[..., top : top + ch, left : left + cw]
    return images


def transform_masks(masks, resize=None, crop=None):
    """Bring ground-truth masks through the same resize and crop as the images.

    Masks are resampled with nearest-neighbour interpolation, so they stay binary and a defect
    keeps its place relative to the image content.

    Parameters
    ----------
    masks : array-like of shape (n, H, W) or list of mask file paths
        Non-zero marks a defective pixel.
    resize, crop : int, (int, int) or None
        The values given to the feature extractor (``BackboneFeatures.resize`` and ``crop``).

    Returns
    -------
    masks : ndarray of shape (n, h, w), dtype bool

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.features import transform_masks
    >>> masks = np.zeros((1, 512, 512), dtype=bool)
    >>> masks[0, 200:300, 200:300] = True
    >>> transform_masks(masks, resize=256, crop=224).shape
    (1, 224, 224)
    """
    if _is_path_list(masks):
        # Any non-black pixel is defect, in whichever channel (palette masks read as RGB).
        out = [transform_masks(read_image(p).any(axis=-1)[None], resize, crop)[0]
               for p in masks]
        sizes = {m.shape for m in out}
        if len(sizes) > 1:
            raise InvalidImageError(
                f"mask files come out at different sizes {sorted(sizes)} (e.g. "
                f"{os.fspath(masks[0])!r}: {out[0].shape}); set resize so they share one"
            )
        return np.stack(out)
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise InvalidImageError(f"masks must have shape (n, H, W), got {masks.shape}")
    t = from_numpy(masks, dtype=np.float32)[:, None]
    t = resize_and_crop(t, resize, crop, interpolation="nearest")
    return t[:, 0].numpy() > 0.5


def uncrop_maps(maps, resize, crop, fill):
    """Maps of a model that crops, put back into its resized view, ``fill`` on the border.

    The inverse of the crop alone, without resampling: a map of the crop's size lands at
    the crop's place in a canvas of the resize's size. Evaluation uses it to count the
    border the model never saw: filled with a score below every threshold, its defect
    pixels count as missed instead of disappearing from the metrics.

    Parameters
    ----------
    maps : ndarray of shape (n, crop_h, crop_w)
        Anomaly maps in the model's geometry.
    resize, crop : int or (int, int)
        The model's resize and crop (``BackboneFeatures.resize`` and ``crop``).
    fill : float
        The value of the border.

    Returns
    -------
    maps : ndarray of shape (n, resize_h, resize_w)

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.features import uncrop_maps
    >>> view = uncrop_maps(np.ones((1, 2, 2)), resize=4, crop=2, fill=0.0)
    >>> view[0].astype(int).tolist()
    [[0, 0, 0, 0], [0, 1, 1, 0], [0, 1, 1, 0], [0, 0, 0, 0]]
    """
    maps = np.asarray(maps)
    size, crop = _pair(resize, "resize"), _pair(crop, "crop")
    if maps.ndim != 3 or tuple(maps.shape[1:]) != crop:
        raise InvalidImageError(f"maps must have shape (n, {crop[0]}, {crop[1]}), the crop's "
                                f"size, got {maps.shape}")
    top, left = _center_crop_offset(size, crop)
    out = np.full((len(maps), *size), fill, dtype=maps.dtype)
    out[:, top : top + crop[0], left : left + crop[1]] = maps
    return out


def _center_crop_offset(size, crop):
    """Top-left corner of the center crop of ``crop`` in ``size``: where
    :func:`resize_and_crop` crops, and :func:`restore_geometry` puts maps back."""
    (h, w), (ch, cw) = size, crop
    return (h - ch) // 2, (w - cw) // 2


def _resample(t, size, interpolation):
    """``t`` (n, c, h, w) resampled to ``size``, antialiased when shrinking (bilinear and
    bicubic, like PIL); unclipped: :func:`resize_and_crop` clips images to [0, 1] itself,
    and anomaly maps are not confined to it."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if interpolation == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")
    return F.interpolate(t, size=size, mode=interpolation, align_corners=False, antialias=True)


def _fill_value(fill):
    """``fill`` as a float, or None for ``"nearest"``."""
    if isinstance(fill, str):
        if fill == "nan":
            return float("nan")
        if fill == "nearest":
            return None
    elif isinstance(fill, (int, float, np.integer, np.floating)) and not isinstance(fill, bool):
        return float(fill)
    raise InvalidImageError(
        f"fill must be 'nan' (unknown), 'nearest' (edge values extended) or a number, got "
        f"{fill!r}"
    )


def restore_geometry(maps, image_size, resize=None, crop=None, *, fill="nan",
                     interpolation="bilinear"):
    """Bring anomaly maps back to the images' own geometry: undo the crop, then the resize.

    The inverse of :func:`resize_and_crop` for maps. A model resizes an image of size
    ``image_size`` to ``resize``, center-crops it to ``crop``, and returns a map that covers
    the crop (at the crop's size, or at the detector's ``map_size``). This function

    1. resamples the map to the crop's size;
    2. places it in a canvas of the resized size at the crop's offset
       (``((h - ch) // 2, (w - cw) // 2)``, the offset :func:`resize_and_crop` crops at,
       odd differences included); the border the crop removed is unknown;
    3. resamples the canvas to ``image_size``.

    The map then lies over the original image pixel for pixel, as a mask drawn on the
    original image does before :func:`skpadim.features.transform_masks` moves it to
    the maps' geometry.

    Unknown values never leak into known pixels: the border is first filled with the
    map's edge values and the canvas resampled; a validity mask (1 inside the crop, 0 on
    the border) is resampled beside it, and the output pixels where it falls below 0.5,
    those whose centre lies outside the crop region, are unknown and receive ``fill``.

    Parameters
    ----------
    maps : array-like of shape (n, h, w) or (h, w)
        Anomaly maps of images that share one original size; any ``(h, w)``, as long as
        the map covers the crop region. Values must be finite.
    image_size : int or (int, int)
        The images' original ``(height, width)``, e.g. from :func:`image_sizes`.
    resize, crop : int, (int, int) or None, default=None
        The values the model's features used (``BackboneFeatures.resize`` and ``crop``).
        With both None the maps are only resampled to ``image_size``.
    fill : {"nan", "nearest"} or float, default="nan"
        The value of the pixels the crop removed: ``"nan"`` marks them unknown (NaN);
        ``"nearest"`` extends the map's edge values outwards, for a map without holes;
        a number fills them with that number.
    interpolation : {"bilinear", "bicubic", "nearest"}, default="bilinear"
        Resampling filter of both steps; bilinear and bicubic are antialiased when
        shrinking, as in :func:`resize_and_crop`, but not clipped.

    Returns
    -------
    maps : ndarray of shape (n, H, W) or (H, W), dtype float32
        The maps in the original geometry ``image_size``; 2-D when ``maps`` was.

    Raises
    ------
    InvalidImageError
        If ``maps`` is not 2-D or 3-D or holds NaN or infinite values, a size is not
        positive, ``crop`` is larger than the resized image, or ``fill`` or
        ``interpolation`` is unknown.

    See Also
    --------
    transform_masks : The forward direction, for ground-truth masks.

    Examples
    --------
    The paper's geometry: 256 x 256 images, resized to 256 and cropped to 224. The map comes
    back at 256 x 256 with the 16-pixel border the crop removed marked unknown:

    >>> import numpy as np
    >>> from skpadim.features import restore_geometry
    >>> maps = np.ones((1, 224, 224), dtype=np.float32)
    >>> restored = restore_geometry(maps, (256, 256), resize=256, crop=224)
    >>> restored.shape, float(np.isnan(restored).mean()) == 1 - 224**2 / 256**2
    ((1, 256, 256), True)
    >>> np.flatnonzero(~np.isnan(restored[0, 128]))[[0, -1]].tolist()   # columns 16..239
    [16, 239]

    A 2-D map, a non-square original, and the border filled with the edge values:

    >>> amap = np.arange(16, dtype=np.float32).reshape(4, 4)
    >>> out = restore_geometry(amap, (6, 6), crop=4, fill="nearest",
    ...                              interpolation="nearest")
    >>> out[0].tolist(), out.shape
    ([0.0, 0.0, 1.0, 2.0, 3.0, 3.0], (6, 6))
    >>> restore_geometry(np.zeros((56, 56)), (300, 200), resize=256, crop=224).shape
    (300, 200)
    """
    if interpolation not in _INTERPOLATIONS:
        raise InvalidImageError(
            f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}"
        )
    value = _fill_value(fill)
    maps = np.asarray(maps, dtype=np.float32)
    single = maps.ndim == 2
    if single:
        maps = maps[None]
    if maps.ndim != 3 or 0 in maps.shape:
        raise InvalidImageError(
            f"maps must have shape (n, h, w) or (h, w), got {maps.shape}"
        )
    if not np.isfinite(maps).all():
        # Interpolation would spread a NaN over its neighbours; the border is the only
        # unknown region this function knows how to keep apart.
        raise InvalidImageError(
            "maps contain NaN or infinite values; pass the maps a model returned (finite), "
            "before any restoring"
        )
    original = _pair(image_size, "image_size")
    canvas = _pair(resize, "resize") or original
    crop = _pair(crop, "crop") or canvas
    if crop[0] > canvas[0] or crop[1] > canvas[1]:
        raise InvalidImageError(
            f"crop {crop} is larger than the (resized) image {canvas}; pass the resize and "
            "crop the model used"
        )
    top, left = _center_crop_offset(canvas, crop)
    # (left, right, top, bottom): F.pad's order for the last two axes.
    border = (left, canvas[1] - crop[1] - left, top, canvas[0] - crop[0] - top)

    t = _resample(from_numpy(maps)[:, None], crop, interpolation)
    out = _resample(F.pad(t, border, mode="replicate"), original, interpolation)[:, 0]
    if value is not None and any(border):
        valid = F.pad(torch.ones(1, 1, *crop), border)  # zeros on the border
        known = _resample(valid, original, interpolation)[0, 0] >= 0.5
        out[:, ~known] = value
    out = out.numpy()
    return out[0] if single else out
