"""The ROC and PRO curves of test sets, drawn as ``roc.png`` and ``pro.png``.

:func:`plot_curves` draws the image and pixel ROC curves and MVTec AD's PRO curve up to a
false positive rate, per set (or per defect type when there is one set), and marks the
model's operating points where its thresholds are given. Curve plots need matplotlib
(``pip install "skpadim[demo]"``); the rest of the report needs only numpy, scipy and
Pillow.
"""

import os

import numpy as np

from ..io._atomic import atomic_savefig
from . import _metrics as metrics
from ._scored import _image_auroc, _pixel_metrics

__all__ = ["plot_curves"]


def _curve_groups(sets):
    """The curves to draw: per set when there are several, else per defect type too."""
    if len(sets) == 1:
        (name, scored), = sets.items()
        return [(name if group == "all" else group, subset, group == "all")
                for group, subset in scored.groups()]
    return [(name, scored, True) for name, scored in sets.items()]


def _pro_points(masks, maps, max_fpr, n_points=400):
    """The PRO curve on an even FPR grid up to ``max_fpr``: a few hundred points to draw."""
    fpr, pro, _ = metrics.pro_curve(masks, maps)
    grid = np.linspace(0, max_fpr, n_points)
    return grid, np.interp(grid, fpr, pro)


def _roc_point(truth, scores, threshold):
    """``(fpr, tpr)`` when everything scoring above ``threshold`` is flagged, as ``predict``
    and ``map > pixel_threshold`` flag."""
    truth = np.asarray(truth, dtype=bool).ravel()
    flagged = np.asarray(scores).ravel() > threshold
    return float(flagged[~truth].mean()), float(flagged[truth].mean())


def _pro_point(masks, maps, threshold):
    """``(fpr, pro)`` of the pixels above ``threshold``: the PRO curve's point there."""
    regions, sizes = metrics._label_regions(np.asarray(masks, dtype=bool))
    flagged = np.asarray(maps) > threshold
    fpr = flagged[regions == 0].mean()
    overlap = np.bincount(regions[flagged], minlength=len(sizes))[1:] / sizes[1:]
    return float(fpr), float(overlap.mean())


def _threshold_of(thresholds, name, kind):
    """``thresholds[name][kind]`` as a float, or None where not given."""
    value = (thresholds or {}).get(name, {}).get(kind)
    return None if value is None else float(value)


def _mark(ax, point, threshold, line, what, y_name):
    """An operating point: a dot in its curve's colour, the threshold beside it, a legend
    entry with its coordinates."""
    x, y = point
    ax.plot([x], [y], "o", color=line.get_color(), markeredgecolor="black", markersize=7,
            label=f"{what} {threshold:.3g}: FPR {x:.3f}, {y_name} {y:.3f}")
    ax.annotate(f"{threshold:.3g}", (x, y), xytext=(6, -12), textcoords="offset points",
                fontsize="small", annotation_clip=True)


def plot_curves(sets, out_dir, max_fpr=0.3, *, thresholds=None):
    """Draw ``roc.png`` (image and pixel ROC) and ``pro.png`` (PRO up to ``max_fpr``).

    With one set, each defect type (against all normal images) gets its own thin curve
    beside the overall one; with several, each set gets one curve. Curves a set cannot define
    (no normal images, no masks) are left out.

    Operating points, when thresholds are given, are marked on the main curves (each set's
    overall curve) with a dot, the threshold written beside it and a legend entry giving
    the point's coordinates: the image threshold on the image ROC, the pixel threshold on
    the pixel ROC and on the PRO curve. A threshold flags what scores above it, as
    ``predict`` does. A point beyond the PRO plot's ``max_fpr`` keeps its legend entry.

    Parameters
    ----------
    sets : dict of str to ScoredSet
        Named test sets; pixel curves need their maps and masks.
    out_dir : str or path-like
        Created if needed.
    max_fpr : float, default=0.3
        False positive rate up to which the PRO curve is drawn and integrated.
    thresholds : dict of str to dict, or None, default=None
        Operating points per set name: ``{"image": t, "pixel": t}``, the image threshold
        (``-offset_`` of the model) and the pixel threshold; either may be missing or None.
        Sets not named get no mark.

    Returns
    -------
    paths : list of str
        The plot files written.

    Raises
    ------
    ImportError
        If matplotlib is not installed.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skpadim.evaluation import ScoredSet, plot_curves
    >>> masks = np.zeros((4, 8, 8), dtype=bool)
    >>> masks[2:, 2:5, 2:5] = True                                   # two defective images
    >>> maps = np.random.RandomState(0).rand(4, 8, 8) + masks
    >>> scored = ScoredSet(np.array([0, 0, 1, 1]), maps.max(axis=(1, 2)),
    ...                    np.array(["good", "good", "crack", "crack"]), maps, masks)
    >>> paths = plot_curves({"bottle": scored}, tempfile.mkdtemp())
    >>> [os.path.basename(path) for path in paths]
    ['roc.png', 'pro.png']
    >>> marked = {"bottle": {"image": 1.5, "pixel": 1.0}}          # operating points
    >>> paths = plot_curves({"bottle": scored}, tempfile.mkdtemp(), thresholds=marked)
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            'curve plots need matplotlib; install it with pip install "skpadim[demo]"'
        ) from exc
    from sklearn.metrics import roc_curve

    os.makedirs(out_dir, exist_ok=True)
    groups = _curve_groups(sets)
    # (pixel AUROC, PRO) of each curve, computed once for both figures' legends.
    pixel = [_pixel_metrics(scored, max_fpr) for _, scored, _ in groups]

    # Figure objects with their own canvas, not pyplot: no global backend is switched and no
    # figure is left open in a user's session.
    roc = Figure(figsize=(10, 4.6))
    FigureCanvasAgg(roc)
    ax_image, ax_pixel = roc.subplots(1, 2)
    for (label, scored, main), (pixel_auroc, _) in zip(groups, pixel):
        style = {"lw": 2.0} if main else {"lw": 1.0, "ls": "--"}
        image_t = _threshold_of(thresholds, label, "image") if main else None
        pixel_t = _threshold_of(thresholds, label, "pixel") if main else None
        auroc = _image_auroc(scored)
        if auroc is not None:
            fpr, tpr, _ = roc_curve(np.asarray(scored.labels).astype(bool), scored.scores)
            line, = ax_image.plot(fpr, tpr, label=f"{label} ({auroc:.3f})", **style)
            if image_t is not None:
                _mark(ax_image, _roc_point(scored.labels, scored.scores, image_t), image_t,
                      line, "image threshold", "TPR")
        if pixel_auroc is not None:
            fpr, tpr, _ = roc_curve(np.asarray(scored.masks, dtype=bool).ravel(),
                                    np.asarray(scored.maps).ravel())
            line, = ax_pixel.plot(fpr, tpr, label=f"{label} ({pixel_auroc:.3f})", **style)
            if pixel_t is not None:
                _mark(ax_pixel, _roc_point(scored.masks, scored.maps, pixel_t), pixel_t,
                      line, "pixel threshold", "TPR")
    for ax, title in [(ax_image, "Image ROC"), (ax_pixel, "Pixel ROC")]:
        _decorate(ax, title, "false positive rate", "true positive rate", (0, 1))
    roc.tight_layout()
    roc_path = os.path.join(out_dir, "roc.png")
    atomic_savefig(roc, roc_path, dpi=100)

    pro = Figure(figsize=(5.2, 4.6))
    FigureCanvasAgg(pro)
    ax = pro.subplots()
    for (label, scored, main), (_, score) in zip(groups, pixel):
        if score is not None:
            masks = np.asarray(scored.masks, dtype=bool)
            x, y = _pro_points(masks, scored.maps, max_fpr)
            style = {"lw": 2.0} if main else {"lw": 1.0, "ls": "--"}
            line, = ax.plot(x, y, label=f"{label} ({score:.3f})", **style)
            pixel_t = _threshold_of(thresholds, label, "pixel") if main else None
            if pixel_t is not None:
                _mark(ax, _pro_point(masks, scored.maps, pixel_t), pixel_t, line,
                      "pixel threshold", "PRO")
    _decorate(ax, f"PRO curve (area up to FPR {max_fpr:g})", "false positive rate",
              "per-region overlap", (0, max_fpr))
    pro.tight_layout()
    pro_path = os.path.join(out_dir, "pro.png")
    atomic_savefig(pro, pro_path, dpi=100)
    return [roc_path, pro_path]


def _decorate(ax, title, xlabel, ylabel, xlim):
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_xlim(*xlim)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    if ax.get_lines():
        ax.legend(loc="lower right", fontsize="small", title="curve (area)")
    else:
        ax.text(0.5, 0.5, "not defined for this data", ha="center", transform=ax.transAxes)
