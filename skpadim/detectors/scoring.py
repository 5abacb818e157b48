"""From patch distances to anomaly maps to image scores, shared by every detector.

PaDiM, SPADE and the VAE differ in how they measure a patch's distance to normality; they agree
on what happens next, and this module is that common part:

1. :func:`upsample_maps` brings the coarse patch-grid distances to the image resolution
   (the paper uses bicubic interpolation);
2. :func:`gaussian_smooth` blurs them with a Gaussian filter (sigma = 4 in the paper);
3. :func:`image_scores` reduces each map to one number (the paper takes the maximum).

:func:`anomaly_maps` chains 1 and 2. A model of tiles (``make_padim(positions="tile")``)
upsamples each tile's distances to the tile's pixels, pastes them into one map per image
with :func:`stitch_tile_maps`, and then blurs the whole map. Every function takes numpy arrays or torch tensors of shape
``(n, h, w)`` and returns float32 numpy arrays; higher always means more anomalous.
"""

import functools

import numpy as np
import scipy.ndimage
import torch
import torch.nn.functional as F

from .._torch import from_numpy
from ..exceptions import InvalidImageError

__all__ = [
    "INTERPOLATIONS",
    "BORDER_MODES",
    "upsample_maps",
    "gaussian_smooth",
    "anomaly_maps",
    "image_scores",
    "stitch_tile_maps",
]

#: Interpolation modes :func:`upsample_maps` accepts.
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
#: Border modes in :mod:`scipy.ndimage`'s vocabulary. ``"reflect"`` (d c b a | a b c d) is what
#: the PaDiM authors' code gets from ``scipy.ndimage.gaussian_filter``; anomalib's torch blur
#: pads with torch's "reflect", which is scipy's ``"mirror"`` (d c b | a b c d).
BORDER_MODES = ("reflect", "mirror", "nearest", "constant", "wrap")


def _as_tensor(maps):
    t = maps if isinstance(maps, torch.Tensor) else from_numpy(maps)
    t = t.detach().to("cpu", torch.float32)
    if t.ndim != 3:
        raise InvalidImageError(f"maps must have shape (n, h, w), got {tuple(t.shape)}")
    return t


def _size(size):
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    return tuple(int(s) for s in size)


def upsample_maps(maps, size, interpolation="bicubic"):
    """Resize patch-grid maps to the image resolution.

    Parameters
    ----------
    maps : array-like or torch.Tensor of shape (n, h, w)
        Patch-level anomaly values.
    size : int or (int, int)
        Output (height, width); an int gives a square.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        The paper resizes maps bicubically; anomalib uses bilinear. Corners are not aligned
        (``align_corners=False``), so each patch value sits at its receptive field's centre.

    Returns
    -------
    maps : ndarray of shape (n, H, W), dtype float32

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.detectors.scoring import upsample_maps
    >>> upsample_maps(np.ones((2, 4, 4)), 16).shape
    (2, 16, 16)
    """
    _check_options(interpolation=interpolation)
    t = _as_tensor(maps)
    size = _size(size)
    if tuple(t.shape[-2:]) == size:
        return t.numpy().copy()
    return _resize(t[:, None], size, interpolation)[:, 0].numpy()


def _check_options(interpolation=None, mode=None):
    if interpolation is not None and interpolation not in INTERPOLATIONS:
        raise InvalidImageError(
            f"interpolation must be one of {INTERPOLATIONS}, got {interpolation!r}"
        )
    if mode is not None and mode not in BORDER_MODES:
        raise InvalidImageError(f"mode must be one of {BORDER_MODES}, got {mode!r}")


def _resize(t, size, interpolation):
    """torch's resize of (n, c, h, w) ``t``, corners not aligned; "nearest" rounds to the
    nearest source pixel ("nearest-exact"), so each patch value sits at its centre."""
    if interpolation == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")
    return F.interpolate(t, size=size, mode=interpolation, align_corners=False)


def gaussian_smooth(maps, sigma=4.0, truncate=4.0, mode="reflect", cval=0.0):
    """Blur each map with a 2-D Gaussian filter (:func:`scipy.ndimage.gaussian_filter`).

    Parameters
    ----------
    maps : array-like or torch.Tensor of shape (n, H, W)
        Anomaly maps.
    sigma : float, default=4.0
        Standard deviation in pixels (the paper's value). 0 disables the filter.
    truncate : float, default=4.0
        The kernel reaches ``int(truncate * sigma + 0.5)`` pixels each side (a 33-tap kernel for
        the defaults, as in scipy and anomalib).
    mode : {"reflect", "mirror", "nearest", "constant", "wrap"}, default="reflect"
        Border handling, named as in :mod:`scipy.ndimage`.
    cval : float, default=0.0
        Fill value for ``mode="constant"``.

    Returns
    -------
    maps : ndarray of shape (n, H, W), dtype float32

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.detectors.scoring import gaussian_smooth
    >>> spike = np.zeros((1, 9, 9)); spike[0, 4, 4] = 1.0
    >>> out = gaussian_smooth(spike, sigma=1.0)
    >>> bool(out[0, 4, 4] < 1.0), round(float(out.sum()), 5)
    (True, 1.0)
    """
    _check_options(mode=mode)
    maps = _as_tensor(maps).numpy()
    if sigma == 0:
        return maps.copy()
    # sigma 0 along the first axis: each map is filtered on its own.
    return scipy.ndimage.gaussian_filter(
        maps, sigma=(0, sigma, sigma), truncate=truncate, mode=mode, cval=cval
    )


def anomaly_maps(
    distances, size, interpolation="bicubic", sigma=4.0, truncate=4.0, mode="reflect"
):
    """Patch distances to smoothed anomaly maps at image resolution (upsample, then blur).

    Parameters
    ----------
    distances : array-like or torch.Tensor of shape (n, h, w)
        Patch-level distances to normality, higher = more anomalous.
    size : int or (int, int)
        Output resolution, normally the size of the image the network saw.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        See :func:`upsample_maps`.
    sigma, truncate, mode
        See :func:`gaussian_smooth`.

    Returns
    -------
    maps : ndarray of shape (n, H, W), dtype float32

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.detectors.scoring import anomaly_maps, image_scores
    >>> d = np.zeros((1, 8, 8)); d[0, 2, 5] = 10.0
    >>> maps = anomaly_maps(d, 32)
    >>> maps.shape, np.unravel_index(maps[0].argmax(), maps[0].shape)
    ((1, 32, 32), (np.int64(10), np.int64(21)))
    """
    t = _as_tensor(distances)
    size = _size(size)
    if tuple(t.shape[-2:]) == size:  # nothing to upsample: the separable filter is cheaper
        return gaussian_smooth(t, sigma=sigma, truncate=truncate, mode=mode)
    # Resizing and filtering are both linear and act on rows and columns separately, so the
    # two steps are one matrix per axis: maps = M_h @ distances @ M_w^T. Two small matrix
    # products per map replace a full-resolution filter pass (several times faster), and
    # give what upsample_maps followed by gaussian_smooth gives, to float32 rounding.
    rows = _axis_operator(t.shape[1], size[0], interpolation, float(sigma), float(truncate), mode)
    cols = _axis_operator(t.shape[2], size[1], interpolation, float(sigma), float(truncate), mode)
    return (rows @ t @ cols.T).numpy()


@functools.lru_cache(maxsize=64)
def _axis_operator(n_in, n_out, interpolation, sigma, truncate, mode):
    """``(n_out, n_in)`` float32 matrix of 1-D resizing to ``n_out`` followed by the 1-D
    Gaussian filter, obtained by passing each unit vector through both steps."""
    _check_options(interpolation=interpolation, mode=mode)
    impulses = torch.eye(n_in, dtype=torch.float64)[:, None, None, :]  # (n_in, 1, 1, n_in)
    # A 2-D resize of 1-pixel-high images is the 1-D resize of torch's 2-D kernels.
    resized = _resize(impulses, (1, n_out), interpolation)[:, 0, 0, :]
    operator = resized.numpy().T  # (n_out, n_in): column i is the response to impulse i
    if sigma > 0:
        operator = scipy.ndimage.gaussian_filter1d(
            operator, sigma, axis=0, truncate=truncate, mode=mode
        )
    return torch.from_numpy(np.ascontiguousarray(operator, dtype=np.float32))


def image_scores(maps):
    """Image-level anomaly scores: the maximum of each map, as in the paper.

    Parameters
    ----------
    maps : array-like or torch.Tensor of shape (n, H, W)

    Returns
    -------
    scores : ndarray of shape (n,), dtype float32

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.detectors.scoring import image_scores
    >>> image_scores(np.arange(8.0).reshape(2, 2, 2)).tolist()
    [3.0, 7.0]
    """
    t = _as_tensor(maps)
    return t.reshape(t.shape[0], -1).amax(dim=1).numpy()


def stitch_tile_maps(tile_maps, placements, size, out=None):
    """One map of an image from the maps of its overlapping tiles, at the image's resolution.

    Each tile contributes only the pixels of its ``kept`` span (closer to its own centre
    than to a neighbour's, see :func:`~skpadim.features.kept_spans`), so every pixel comes
    from exactly one tile: where the backbone's receptive field was cut, at a tile's
    shared border, the neighbour's value is used instead. Values are copied, not averaged.

    Parameters
    ----------
    tile_maps : array-like of shape (m, h_t, w_t)
        Each tile's map at its own pixel resolution.
    placements : sequence of (tile, kept)
        Per tile, ``tile = ((r0, r1), (c0, c1))``: its pixel spans in the image, and
        ``kept``: the spans it contributes, inside ``tile``.
    size : (int, int)
        ``(H, W)`` of the image; the kept spans must cover it.
    out : ndarray of shape (H, W) or None, default=None
        A map to paste into and return, for an image whose tiles come a chunk at a time;
        whether the tiles cover the image is then not checked.

    Returns
    -------
    map : ndarray of shape (H, W), dtype float32

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.detectors.scoring import stitch_tile_maps
    >>> tiles = np.stack([np.zeros((4, 4)), np.ones((4, 4))])     # two 4x4 tiles of a 4x6 image
    >>> placements = [(((0, 4), (0, 4)), ((0, 4), (0, 3))),
    ...               (((0, 4), (2, 6)), ((0, 4), (3, 6)))]
    >>> stitch_tile_maps(tiles, placements, (4, 6))[0].tolist()
    [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]
    """
    tile_maps = _as_tensor(tile_maps).numpy()
    check = out is None
    if check:
        out = np.full(tuple(size), np.nan, dtype=np.float32)
    for part, (((r0, _), (c0, _)), ((kr0, kr1), (kc0, kc1))) in zip(tile_maps, placements):
        out[kr0:kr1, kc0:kc1] = part[kr0 - r0 : kr1 - r0, kc0 - c0 : kc1 - c0]
    if check and np.isnan(out).any():
        raise InvalidImageError(
            f"the kept spans of {len(tile_maps)} tiles do not cover the {tuple(size)} image; "
            "compute them with kept_spans from tiles that cover it"
        )
    return out
