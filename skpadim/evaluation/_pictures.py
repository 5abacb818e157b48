"""Pictures of single images: overlay and panel, written as self-describing PNG files.

:func:`save_overlay` writes :func:`overlay_image` upscaled, optionally with a colour bar and
a caption (score, verdict, threshold) drawn in; :func:`save_panel` puts image, anomaly map,
predicted mask and ground truth side by side. The legend's facts also go into the PNG's text
chunks. Every file is written atomically (a temporary file beside it, then a rename): a run
that fails or is killed half-way leaves no truncated picture.
"""

import math
import os

import numpy as np

from ..exceptions import InvalidImageError
from ..io._atomic import atomic_path
from ._legends import TEXT_BACKGROUND, _add_caption, _colorbar, _font, _legend_facts, _text_band
from ._overlay import _as_rgb, overlay_image

__all__ = ["save_overlay", "save_panel", "PANEL_GAP"]

#: Pixels between the tiles of a panel.
PANEL_GAP = 4


def _save_png(path, pixels, facts):
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    info = PngInfo()
    for key, value in facts.items():
        info.add_text(str(key), str(value))
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(np.ascontiguousarray(pixels)).save(tmp, format="PNG", pnginfo=info)
    return path


def _upscale_for(shape, min_size):
    return max(1, math.ceil(min_size / min(shape)))


def save_overlay(path, image, anomaly_map, mask=None, *, vmin, vmax, min_size=256, text=None,
                 colorbar=False, caption=None, score=None, threshold=None,
                 pixel_threshold=None, anomalous=None, mark_image_threshold=True):
    """Write :func:`overlay_image` as a PNG file, upscaled to at least ``min_size`` pixels.

    Optionally with a legend drawn into the pixels, in Pillow's built-in font, white on
    :data:`TEXT_BACKGROUND`:

    - a colour bar right of the overlay (``colorbar=True``): the heat colours at full
      opacity from ``vmin`` (bottom) to ``vmax`` (top), with labelled ticks at both ends
      and the middle, and a white triangle with a label (``image 2.5``, ``pixel 1.8``) at
      each threshold given. (In the overlay the colour is blended over the image, more
      opaque the hotter.);
    - a caption below, by default when ``score`` is given: the text of
      :func:`caption_text`, e.g. ``score 3.215 | ANOMALOUS | threshold 2.5``, on as many
      lines as the width needs.

    Without these options the file is the overlay alone, as before; with them it grows by
    :data:`COLORBAR_WIDTH` pixels to the right and by the caption's lines at the bottom. The
    same facts go into PNG text chunks: ``anomaly_score``, ``verdict`` (``anomalous`` or
    ``normal``), ``image_threshold`` and ``pixel_threshold``, beside ``heat_vmin``,
    ``heat_vmax`` and ``scale``.

    Parameters
    ----------
    path : str or path-like
        The PNG file; its folder is created if needed.
    image : ndarray
        As in :func:`overlay_image`.
    anomaly_map : ndarray of shape (H, W)
        As in :func:`overlay_image`; NaN pixels are hatched grey.
    mask : ndarray of shape (H, W) or None, default=None
        As in :func:`overlay_image`.
    vmin, vmax : float
        As in :func:`overlay_image`.
    min_size : int, default=256
        Images smaller than this (on their short side) are upscaled by an integer factor.
    text : dict or None, default=None
        Key-value pairs (source, label, ...) stored as PNG text chunks, next to the heat
        range, so the file describes itself; they win over the chunks above.
    colorbar : bool, default=False
        Draw the colour bar.
    caption : bool or None, default=None
        Draw the caption; None draws it when ``score`` is given.
    score : float or None, default=None
        The image's anomaly score.
    threshold : float or None, default=None
        The image threshold (``image_threshold_``): written in the caption and marked on
        the colour bar.
    pixel_threshold : float or None, default=None
        The pixel threshold that draws predicted masks (``pixel_threshold_``, the ``vmax``
        of :func:`heat_range`): marked on the colour bar.
    anomalous : bool or None, default=None
        The verdict, e.g. ``predict(X) == -1``; None derives it from ``score`` and
        ``threshold`` (:func:`skpadim.io.verdict`).
    mark_image_threshold : bool, default=True
        Mark the image threshold on the colour bar, which is in map units: right for
        detectors whose image score is the map's maximum (PaDiM, the VAE), not for SPADE,
        whose image score is another distance.

    Returns
    -------
    path : str
        The file written.

    See Also
    --------
    save_panel : Image, map, predicted mask and ground truth side by side.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim.evaluation import COLORBAR_WIDTH, save_overlay
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "overlays", "part.png")
    >>> _ = save_overlay(path, np.zeros((32, 32, 3), dtype=np.uint8), np.ones((32, 32)),
    ...                  vmin=0.5, vmax=1.0, text={"source": "part.png"})
    >>> with Image.open(path) as png:                                # upscaled 8 x to 256
    ...     png.size, png.text["heat_vmax"], png.text["source"]
    ((256, 256), '1', 'part.png')
    >>> path = save_overlay(os.path.join(folder, "legend.png"),
    ...                     np.zeros((32, 32, 3), dtype=np.uint8), np.ones((32, 32)),
    ...                     vmin=0.5, vmax=1.0, colorbar=True, score=1.2, threshold=1.0)
    >>> with Image.open(path) as png:                     # wider by the bar, taller by text
    ...     png.size[0] == 256 + COLORBAR_WIDTH, png.size[1] > 256, png.text["verdict"]
    (True, True, 'anomalous')
    """
    scale = _upscale_for(np.shape(anomaly_map), min_size)
    overlay = overlay_image(image, anomaly_map, mask, vmin=vmin, vmax=vmax, scale=scale)
    marks = [("image", threshold if mark_image_threshold else None),
             ("pixel", pixel_threshold)]
    font = _font()
    if colorbar:
        bar = _colorbar(overlay.shape[0], vmin, vmax, marks, font)
        overlay = np.concatenate([overlay, bar], axis=1)
    overlay = _add_caption(overlay, caption, score, threshold, anomalous, font)
    facts = _legend_facts(vmin, vmax, scale, score, threshold, pixel_threshold, anomalous,
                          text)
    return _save_png(path, overlay, facts)


def _mask_tile(mask, scale):
    """A mask as a tile: white (255) where non-zero and not NaN, black elsewhere."""
    mask = np.asarray(mask)
    if mask.dtype.kind == "f":
        mask = np.nan_to_num(mask, nan=0.0)
    tile = np.where(mask != 0, 255, 0).astype(np.uint8)
    tile = tile.repeat(scale, axis=0).repeat(scale, axis=1)
    return np.repeat(tile[..., None], 3, axis=-1)


def save_panel(path, image, anomaly_map, predicted_mask, ground_truth=None, *, vmin, vmax,
               score=None, threshold=None, pixel_threshold=None, anomalous=None,
               caption=None, min_size=256, text=None, mark_image_threshold=True):
    """Write image | anomaly map | predicted mask | ground truth side by side, as a PNG.

    The tiles, each upscaled by the same integer factor so that its short side reaches
    ``min_size``, are, from left to right:

    1. the image;
    2. the anomaly map painted over it, as :func:`overlay_image` paints it (unknown pixels
       hatched grey), followed by its colour bar (see :func:`save_overlay`), with the
       thresholds given marked;
    3. the predicted mask: white where the model flags a defect, black elsewhere;
    4. the ground-truth mask, in the same colours, when given.

    A title over each tile names it; a caption under the tiles (by default when ``score``
    is given) gives score, verdict and threshold, as :func:`caption_text` writes them, and
    the PNG text chunks hold them as :func:`save_overlay`'s do. Tiles are
    :data:`PANEL_GAP` pixels apart, so the panel is ``n * W * scale + (n - 1) * PANEL_GAP +
    COLORBAR_WIDTH`` pixels wide for ``n`` = 3 or 4 tiles.

    Parameters
    ----------
    path : str or path-like
        The PNG file; its folder is created if needed.
    image : ndarray
        The image as the map sees it, in any form :func:`overlay_image` takes.
    anomaly_map : ndarray of shape (H, W)
        Its anomaly map; NaN marks unknown pixels.
    predicted_mask : ndarray of shape (H, W)
        The defect the model predicts, normally ``anomaly_map > pixel_threshold``;
        non-zero is defect, NaN is not.
    ground_truth : ndarray of shape (H, W) or None, default=None
        The true defect, if known; non-zero is defect.
    vmin, vmax : float
        The heat range, normally :func:`heat_range` of the model.
    score, threshold, pixel_threshold, anomalous, caption, mark_image_threshold : optional
        As in :func:`save_overlay`: the caption, the thresholds' marks, the text chunks.
    min_size : int, default=256
        Short side, in pixels, that each tile reaches by integer upscaling.
    text : dict or None, default=None
        Further PNG text chunks, as in :func:`save_overlay`.

    Returns
    -------
    path : str
        The file written.

    Raises
    ------
    InvalidImageError
        If the map, the masks and the image differ in size.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim.evaluation import COLORBAR_WIDTH, PANEL_GAP, save_panel
    >>> image = np.full((64, 64, 3), 120, dtype=np.uint8)
    >>> amap = np.zeros((64, 64))
    >>> amap[20:30, 20:30] = 2.0
    >>> truth = np.zeros((64, 64), dtype=bool)
    >>> truth[18:30, 20:32] = True
    >>> path = save_panel(os.path.join(tempfile.mkdtemp(), "panel.png"), image, amap,
    ...                   amap > 1.0, truth, vmin=0.5, vmax=1.0, score=2.0, threshold=1.0)
    >>> with Image.open(path) as png:                         # 4 tiles of 256 (4 x 64)
    ...     png.size[0] == 4 * 256 + 3 * PANEL_GAP + COLORBAR_WIDTH, png.text["verdict"]
    (True, 'anomalous')
    """
    rgb = _as_rgb(image)
    shape = rgb.shape[:2]
    named = [("anomaly map", anomaly_map), ("predicted mask", predicted_mask),
             ("ground truth", ground_truth)]
    for name, array in named:
        if array is not None and np.shape(array) != shape:
            raise InvalidImageError(
                f"{name} of shape {np.shape(array)} does not match the image's size {shape}; "
                "pass image, map and masks in one geometry (see "
                "skpadim.features.restore_geometry and transform_masks)"
            )
    scale = _upscale_for(shape, min_size)
    font = _font()
    heat = overlay_image(rgb, anomaly_map, vmin=vmin, vmax=vmax, scale=scale)
    tiles = [
        ("image", np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)
         .repeat(scale, axis=0).repeat(scale, axis=1)),
        ("anomaly map", np.concatenate(
            [heat, _colorbar(heat.shape[0], vmin, vmax,
                             [("image", threshold if mark_image_threshold else None),
                              ("pixel", pixel_threshold)], font)],
            axis=1)),
        ("predicted mask", _mask_tile(predicted_mask, scale)),
    ]
    if ground_truth is not None:
        tiles.append(("ground truth", _mask_tile(ground_truth, scale)))
    gap = np.full((heat.shape[0], PANEL_GAP, 3), TEXT_BACKGROUND, dtype=np.uint8)
    columns = []
    for title, tile in tiles:
        columns += [("", gap), (title, tile)] if columns else [(title, tile)]
    titles = np.concatenate([_text_band([title], tile.shape[1], font)
                             for title, tile in columns], axis=1)
    body = np.concatenate([tile for _, tile in columns], axis=1)
    panel = np.concatenate([titles, body], axis=0)
    panel = _add_caption(panel, caption, score, threshold, anomalous, font)
    facts = _legend_facts(vmin, vmax, scale, score, threshold, pixel_threshold, anomalous,
                          text)
    facts.setdefault("tiles", ", ".join(title for title, _ in tiles))
    return _save_png(path, panel, facts)
