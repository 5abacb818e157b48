"""Painting an anomaly map over its image: the heat range, its colours, the unknown pixels.

:func:`overlay_image` paints a map over its image and outlines the ground truth. Overlay
colours follow one fixed range per model (:func:`heat_range`), not each map's own minimum
and maximum, so the same colour means the same distance in every overlay of a model and a
normal image does not light up just because its map is normalised to its own peak.
Unknown map pixels (NaN, such as the border that
:func:`skpadim.features.restore_geometry` marks where the crop cut) are drawn as a
diagonal grey hatch, which no heat colour resembles.
"""

import numpy as np
from scipy import ndimage

from ..exceptions import InvalidImageError

__all__ = ["heat_range", "overlay_image", "HEAT_COLOURS", "CONTOUR_COLOUR", "UNKNOWN_COLOURS",
           "HATCH_WIDTH"]

#: Colour stops of the overlay heat, from the low to the high end of the range (RGB in [0, 1]).
HEAT_COLOURS = np.array([[1.0, 0.9, 0.0], [1.0, 0.5, 0.0], [0.85, 0.0, 0.0]])
#: Colour of the ground-truth contour: cyan stands out against the yellow-to-red heat and
#: against grey textures.
CONTOUR_COLOUR = np.array([0.0, 1.0, 1.0])
#: The two greys of the diagonal hatch that marks unknown (NaN) map pixels (RGB in [0, 1]).
UNKNOWN_COLOURS = np.array([[0.62, 0.62, 0.62], [0.38, 0.38, 0.38]])
#: Width in pixels of the hatch's stripes, measured along a row.
HATCH_WIDTH = 4


def heat_range(model, low=0.5):
    """The fixed range ``(vmin, vmax)`` in which overlays colour a model's anomaly maps.

    ``vmax`` is the model's pixel threshold (``pixel_threshold_`` of the final detector):
    the map value above which a pixel is a defect pixel. For PaDiM and the VAE it is, unless
    set otherwise, the image threshold, the map maximum at which ``predict`` flags an image,
    so a pixel at full heat is on its own enough to flag its image. ``vmin`` is
    ``low * vmax``: distances below it get no colour.
    With PaDiM, normal pixels lie around half the threshold, so normal areas stay nearly
    clear and defects stand out. The range depends on the model only, so overlays of one
    model compare with each other.

    Parameters
    ----------
    model : Pipeline or detector
        A fitted pipeline whose last step (or a fitted detector) has ``pixel_threshold_``
        (or, for other detectors, ``offset_``).
    low : float, default=0.5
        Lower end of the range as a fraction of the threshold, in [0, 1).

    Returns
    -------
    vmin, vmax : float
        The heat range; ``vmax`` is 1 when the threshold is not positive.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import PatchGaussian
    >>> from skpadim.evaluation import heat_range
    >>> X = np.random.RandomState(0).normal(size=(20, 4, 2, 2))
    >>> model = PatchGaussian().fit(X)
    >>> vmin, vmax = heat_range(model)
    >>> bool(np.isclose(vmax, model.pixel_threshold_)), bool(np.isclose(vmin, vmax / 2))
    (True, True)
    """
    final = model[-1] if hasattr(model, "steps") else model
    threshold = float(getattr(final, "pixel_threshold_", -final.offset_))
    if not threshold > 0:
        # Distances are non-negative; a threshold at zero only comes from a degenerate fit.
        threshold = 1.0
    return low * threshold, threshold


def _as_rgb(image):
    """uint8 / uint16 (H, W[, 3]) or float (3, H, W) / (H, W, 3) in [0, 1] -> float (H, W, 3)."""
    image = np.asarray(image)
    if image.dtype in (np.uint8, np.uint16):
        image = image.astype(np.float32) / np.iinfo(image.dtype).max
    image = np.asarray(image, dtype=np.float32)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = image.transpose(1, 2, 0)
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 3):
        raise InvalidImageError(
            f"an overlay needs one image (H, W), (H, W, 3) or (3, H, W), got {image.shape}"
        )
    return np.broadcast_to(image, image.shape[:2] + (3,))


def _heat_colours(heat):
    """Piecewise-linear colours of :data:`HEAT_COLOURS` for heat in [0, 1]."""
    stops = np.linspace(0, 1, len(HEAT_COLOURS))
    return np.stack([np.interp(heat, stops, HEAT_COLOURS[:, c]) for c in range(3)], axis=-1)


def _hatch(unknown):
    """Diagonal stripes of :data:`UNKNOWN_COLOURS` at the True pixels of ``unknown``: float
    RGB, one row per pixel (only those pixels: a full-size grid would cost a large image
    gigabytes)."""
    rows, cols = np.nonzero(unknown)
    return UNKNOWN_COLOURS[((rows + cols) // HATCH_WIDTH) % 2]


def overlay_image(image, anomaly_map, mask=None, *, vmin, vmax, max_alpha=0.65, scale=1):
    """Paint an anomaly map over its image; outline the ground truth.

    The map is scaled to heat ``(map - vmin) / (vmax - vmin)``, clipped to [0, 1], and
    coloured from yellow (low) through orange to red (high); the paint's opacity grows with
    the heat up to ``max_alpha``, so areas below ``vmin`` show the image untouched. Unknown
    map pixels (NaN) are covered by a diagonal hatch of two greys (:data:`UNKNOWN_COLOURS`,
    stripes :data:`HATCH_WIDTH` pixels wide at the output resolution), so they cannot be
    taken for cold ones. The mask's outline is drawn just outside the defect in cyan,
    leaving the defect's own pixels visible.

    Parameters
    ----------
    image : ndarray
        The image as the network saw it (after resize and crop): uint8 ``(H, W, 3)`` or
        ``(H, W)``, or float ``(3, H, W)`` or ``(H, W, 3)`` in [0, 1].
    anomaly_map : ndarray of shape (H, W)
        The image's anomaly map, at the image's resolution; NaN marks unknown pixels.
    mask : ndarray of shape (H, W) or None, default=None
        Ground truth at the same resolution.
    vmin, vmax : float
        The heat range, normally :func:`heat_range` of the model.
    max_alpha : float, default=0.65
        Opacity of the paint at full heat.
    scale : int, default=1
        Integer upscaling (nearest neighbour) of the result, so small images stay legible; the
        outline is drawn at the upscaled resolution.

    Returns
    -------
    overlay : ndarray of shape (H * scale, W * scale, 3), dtype uint8
        The painted RGB image.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import overlay_image
    >>> image = np.full((4, 4, 3), 128, dtype=np.uint8)              # grey
    >>> anomaly_map = np.zeros((4, 4))
    >>> anomaly_map[0, 0] = 1.0                                      # full heat
    >>> mask = np.zeros((4, 4), dtype=bool)
    >>> mask[3, 3] = True
    >>> out = overlay_image(image, anomaly_map, mask, vmin=0.5, vmax=1.0, scale=2)
    >>> out.shape, out.dtype
    ((8, 8, 3), dtype('uint8'))
    >>> out[0, 0].tolist()                                           # red paint over grey
    [186, 45, 45]
    >>> out[5, 6].tolist(), out[6, 6].tolist()       # the outline; the defect itself stays
    ([0, 255, 255], [128, 128, 128])
    >>> anomaly_map[:, 0] = np.nan                                   # unknown: hatched
    >>> out = overlay_image(image, anomaly_map, vmin=0.5, vmax=1.0, scale=4)
    >>> sorted(set(out[:, :4, 0].ravel().tolist()))                  # two grey stripes
    [97, 158]
    """
    rgb = _as_rgb(image)
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if anomaly_map.shape != rgb.shape[:2]:
        raise InvalidImageError(
            f"anomaly map of shape {anomaly_map.shape} does not match image of size "
            f"{rgb.shape[:2]}; pass the image as the network saw it (after resize and crop)"
        )
    if mask is not None and np.shape(mask) != anomaly_map.shape:
        raise InvalidImageError(
            f"mask of shape {np.shape(mask)} does not match anomaly map {anomaly_map.shape}; "
            "bring it to the map's resolution with skpadim.features.transform_masks"
        )
    unknown = np.isnan(anomaly_map)
    heat = np.clip((np.where(unknown, vmin, anomaly_map) - vmin) / max(vmax - vmin, 1e-12),
                   0, 1)
    alpha = (max_alpha * heat)[..., None]
    out = (1 - alpha) * rgb + alpha * _heat_colours(heat)
    scale = int(scale)
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
        unknown = unknown.repeat(scale, axis=0).repeat(scale, axis=1)
    if unknown.any():
        out[unknown] = _hatch(unknown)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if scale > 1:
            mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
        width = max(1, scale // 2)
        outline = ndimage.binary_dilation(mask, iterations=width) & ~mask
        out[outline] = CONTOUR_COLOUR
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)
