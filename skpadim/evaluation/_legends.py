"""The legend of overlays and panels: caption, colour bar, titles and PNG text chunks.

:func:`caption_text` writes an image's score, verdict and threshold on one line; the helpers
here draw it, the tiles' titles and the colour bar (the heat range with the thresholds
marked) as bands of pixels, :data:`TEXT_COLOUR` on :data:`TEXT_BACKGROUND`, and gather the
same facts for the PNG's text chunks. Text is drawn with Pillow's built-in font
(``ImageFont.load_default()``), so no font file and no network are needed.
"""

import numpy as np

from ..io._results import verdict as _verdict
from ._overlay import _heat_colours

__all__ = ["caption_text", "TEXT_BACKGROUND", "TEXT_COLOUR", "COLORBAR_WIDTH"]

#: Background of captions, titles and the colour bar's strip (RGB, 0..255).
TEXT_BACKGROUND = (24, 24, 24)
#: Colour of the text, ticks and threshold mark drawn on :data:`TEXT_BACKGROUND`.
TEXT_COLOUR = (255, 255, 255)
#: Width in pixels of the strip that holds the colour bar, its ticks and their labels.
COLORBAR_WIDTH = 96


def _font():
    from PIL import ImageFont

    # Pillow's built-in font: present in every install, so pictures render offline.
    return ImageFont.load_default()


def _line_height(font):
    """Rows per line of text: the font's full height (ascenders to descenders) and a gap."""
    return font.getbbox("Ag|")[3] + 3


def _text_band(lines, width, font):
    """Lines of text on a band of :data:`TEXT_BACKGROUND`, uint8 (h, width, 3)."""
    from PIL import Image, ImageDraw

    step = _line_height(font)
    band = Image.new("RGB", (width, 4 + step * len(lines)), TEXT_BACKGROUND)
    draw = ImageDraw.Draw(band)
    for i, line in enumerate(lines):
        draw.text((4, 2 + i * step), line, font=font, fill=TEXT_COLOUR)
    return np.asarray(band)


def caption_text(score=None, threshold=None, *, anomalous=None):
    """The caption of an overlay or panel: ``"score 3.21 | ANOMALOUS | threshold 2.5"``.

    Parts that are None are left out. Numbers are written with 4 significant digits; an
    anomalous verdict is written ``ANOMALOUS`` so that it catches the eye, a normal one
    ``normal``. When ``anomalous`` is None but the score and the threshold are known, the
    verdict follows :func:`skpadim.io.verdict` (anomalous when the score is above the
    threshold).

    Parameters
    ----------
    score : float or None, default=None
        The image's anomaly score.
    threshold : float or None, default=None
        The image threshold.
    anomalous : bool or None, default=None
        The verdict, e.g. ``predict(X) == -1``; None derives it from score and threshold.

    Returns
    -------
    caption : str

    Examples
    --------
    >>> from skpadim.evaluation import caption_text
    >>> caption_text(3.2146, threshold=2.5)
    'score 3.215 | ANOMALOUS | threshold 2.5'
    >>> caption_text(1.0, anomalous=False)
    'score 1 | normal'
    """
    return " | ".join(_caption_parts(score, threshold, anomalous))


def _verdict_of(score, threshold, anomalous):
    """``"anomalous"``/``"normal"`` as given, else as ``predict`` decides; None if unknown."""
    if anomalous is not None:
        return "anomalous" if anomalous else "normal"
    if score is not None and threshold is not None:
        return _verdict(score, threshold)
    return None


def _caption_parts(score, threshold, anomalous):
    verdict = _verdict_of(score, threshold, anomalous)
    parts = []
    if score is not None:
        parts.append(f"score {float(score):.4g}")
    if verdict is not None:
        parts.append("ANOMALOUS" if verdict == "anomalous" else verdict)
    if threshold is not None:
        parts.append(f"threshold {float(threshold):.4g}")
    return parts


def _caption(parts, width, font):
    """The caption band: the parts on one line, or greedily on several if it is too narrow."""
    lines = []
    for part in parts:
        joined = f"{lines[-1]} | {part}" if lines else part
        if lines and font.getlength(joined) + 8 <= width:
            lines[-1] = joined
        else:
            lines.append(part)
    return _text_band(lines, width, font)


def _add_caption(pixels, caption, score, threshold, anomalous, font):
    """``pixels`` with the caption band under them, if asked for (None: if scored)."""
    parts = _caption_parts(score, threshold, anomalous)
    if (score is not None if caption is None else caption) and parts:
        pixels = np.concatenate([pixels, _caption(parts, pixels.shape[1], font)], axis=0)
    return pixels


def _colorbar(height, vmin, vmax, thresholds, font):
    """The colour bar strip, uint8 (height, COLORBAR_WIDTH, 3).

    A vertical bar of the heat colours, ``vmax`` at the top and ``vmin`` at the bottom, with
    ticks and labels at both ends and in the middle. Each of ``thresholds``, ``(name,
    value)`` pairs with value None for none, gets a white triangle left of the bar at its
    value (clamped to the bar's ends) and a label ``"<name> <value>"``; the range labels it
    would overlap are left out, and a second threshold's label moves a line away from the
    first's.
    """
    from PIL import Image, ImageDraw

    bar_left, bar_width = 12, 12
    top, bottom = 8, height - 9  # the bar's first and last rows
    pixels = np.full((height, COLORBAR_WIDTH, 3), TEXT_BACKGROUND, dtype=np.uint8)
    if bottom - top < 2:
        return pixels
    heat = np.linspace(1, 0, bottom - top + 1)
    pixels[top:bottom + 1, bar_left:bar_left + bar_width] = np.rint(
        _heat_colours(heat) * 255).astype(np.uint8)[:, None]
    strip = Image.fromarray(pixels)
    draw = ImageDraw.Draw(strip)
    span = max(vmax - vmin, 1e-12)

    def row(value):
        return int(round(bottom - np.clip((value - vmin) / span, 0, 1) * (bottom - top)))

    near = _line_height(font)
    placed = []  # (tick row, label row, text)

    def free(y):
        return top - 2 <= y <= bottom + 2 and all(abs(y - p) >= near for _, p, _ in placed)

    for name, value in thresholds:
        if value is None:
            continue
        y = row(value)
        draw.polygon([(bar_left - 8, y - 4), (bar_left - 8, y + 4), (bar_left - 1, y)],
                     fill=TEXT_COLOUR)
        label_y = next((c for c in (y, y + near, y - near) if free(c)), y)
        placed.append((y, label_y, f"{name} {value:.3g}"))
    for value in (vmax, (vmin + vmax) / 2, vmin):
        if free(row(value)):
            placed.append((row(value), row(value), f"{value:.3g}"))
    x = bar_left + bar_width
    for y, label_y, label in placed:
        draw.line([(x, y), (x + 3, label_y)], fill=TEXT_COLOUR)
        draw.text((x + 5, label_y), label, font=font, fill=TEXT_COLOUR, anchor="lm")
    return np.asarray(strip)


def _legend_facts(vmin, vmax, scale, score, threshold, pixel_threshold, anomalous, text):
    """The PNG text chunks of an overlay or panel."""
    verdict = _verdict_of(score, threshold, anomalous)
    facts = {"heat_vmin": f"{vmin:.6g}", "heat_vmax": f"{vmax:.6g}", "scale": str(scale)}
    for key, value in [("anomaly_score", score), ("image_threshold", threshold),
                       ("pixel_threshold", pixel_threshold)]:
        if value is not None:
            facts[key] = f"{float(value):.6g}"
    if verdict is not None:
        facts["verdict"] = verdict
    return {**facts, **(text or {})}
