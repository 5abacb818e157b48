"""Writing evaluation reports: metrics as JSON and Markdown, curve plots, anomaly-map overlays.

The functions here take what a model produced on a test set (image scores, anomaly maps) and
the ground truth, and write it down; they fit nothing. They serve the ``skpadim`` command line
(``evaluate``, ``score`` and ``demo``) and can be used on their own:

- :class:`ScoredSet` holds one test set: labels, scores, defect types, and optionally maps
  and masks at the maps' resolution;
- :func:`set_metrics` computes image AUROC, pixel AUROC and PRO overall and per defect type;
  :func:`write_report` writes them as ``metrics.json`` and ``metrics.md`` together with
  ``roc.png`` and ``pro.png``;
- :func:`overlay_image` and :func:`save_overlay` paint an anomaly map over its image,
  optionally with a colour bar and a caption (score, verdict, threshold) drawn in;
- :func:`save_panel` puts image, anomaly map, predicted mask and ground truth side by side.

Overlay colours follow one fixed range per model (:func:`heat_range`), not each map's own
minimum and maximum, so the same colour means the same distance in every overlay of a model
and a normal image does not light up just because its map is normalised to its own peak.
Unknown map pixels (NaN, such as the border that
:func:`skpadim.preprocessing.restore_geometry` marks where the crop cut) are drawn as a
diagonal grey hatch, which no heat colour resembles.

Text in pictures is drawn with Pillow's built-in font (``ImageFont.load_default()``), so no
font file and no network are needed; the same facts are stored in the PNG's text chunks.
Per-image data files (score tables, maps, masks) are in :mod:`skpadim.outputs`.

Every file is written atomically (a temporary file beside it, then a rename): a run that
fails or is killed half-way leaves the previous report's files whole, never truncated.

Curve plots need matplotlib (``pip install "skpadim[demo]"``); everything else needs only
numpy, scipy and Pillow.
"""

import json
import math
import os
from typing import NamedTuple, Optional

import numpy as np
from scipy import ndimage

from . import _metrics as metrics
from ..io._atomic import atomic_path, atomic_savefig, atomic_write
from ..exceptions import InvalidImageError
from ..io._outputs import verdict as _verdict

__all__ = [
    "ScoredSet",
    "set_metrics",
    "build_report",
    "operating_metrics",
    "metrics_markdown",
    "write_metrics",
    "plot_curves",
    "write_report",
    "heat_range",
    "overlay_image",
    "caption_text",
    "save_overlay",
    "save_panel",
    "select_for_overlays",
    "HEAT_COLOURS",
    "CONTOUR_COLOUR",
    "UNKNOWN_COLOURS",
    "HATCH_WIDTH",
    "TEXT_BACKGROUND",
    "TEXT_COLOUR",
    "COLORBAR_WIDTH",
    "PANEL_GAP",
]

#: Colour stops of the overlay heat, from the low to the high end of the range (RGB in [0, 1]).
HEAT_COLOURS = np.array([[1.0, 0.9, 0.0], [1.0, 0.5, 0.0], [0.85, 0.0, 0.0]])
#: Colour of the ground-truth contour: cyan stands out against the yellow-to-red heat and
#: against grey textures.
CONTOUR_COLOUR = np.array([0.0, 1.0, 1.0])
#: The two greys of the diagonal hatch that marks unknown (NaN) map pixels (RGB in [0, 1]).
UNKNOWN_COLOURS = np.array([[0.62, 0.62, 0.62], [0.38, 0.38, 0.38]])
#: Width in pixels of the hatch's stripes, measured along a row.
HATCH_WIDTH = 4
#: Background of captions, titles and the colour bar's strip (RGB, 0..255).
TEXT_BACKGROUND = (24, 24, 24)
#: Colour of the text, ticks and threshold mark drawn on :data:`TEXT_BACKGROUND`.
TEXT_COLOUR = (255, 255, 255)
#: Width in pixels of the strip that holds the colour bar, its ticks and their labels.
COLORBAR_WIDTH = 96
#: Pixels between the tiles of a panel.
PANEL_GAP = 4


class ScoredSet(NamedTuple):
    """One test set as a model scored it.

    Attributes
    ----------
    labels : ndarray of shape (n,)
        1 (or True) for anomalous images, 0 for normal ones.
    scores : ndarray of shape (n,)
        Image anomaly scores, higher = more anomalous.
    defect_types : ndarray of shape (n,), str
        Each image's defect type; normal images' type is ignored ("good" by convention).
    maps : ndarray of shape (n, H, W) or None
        Anomaly maps; needed for pixel metrics.
    masks : ndarray of shape (n, H, W) or None
        Ground-truth masks at the maps' resolution (see
        :func:`skpadim.preprocessing.transform_masks`); None when the data set has none.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.report import ScoredSet
    >>> scored = ScoredSet(labels=np.array([0, 1, 1]), scores=np.array([0.2, 0.9, 0.4]),
    ...                    defect_types=np.array(["good", "crack", "hole"]))
    >>> [(name, group.labels.tolist()) for name, group in scored.groups()]
    [('all', [0, 1, 1]), ('crack', [0, 1]), ('hole', [0, 1])]
    >>> scored.subset(scored.labels == 1).scores.tolist()
    [0.9, 0.4]
    """

    labels: np.ndarray
    scores: np.ndarray
    defect_types: np.ndarray
    maps: Optional[np.ndarray] = None
    masks: Optional[np.ndarray] = None

    def subset(self, keep):
        """The images where the boolean ``keep`` is True."""
        return ScoredSet(
            *(None if field is None else np.asarray(field)[keep] for field in self)
        )

    def groups(self):
        """``(name, subset)`` pairs: all images, then each defect type with every normal image.

        A defect type is judged against all normal test images, as the MVTec AD papers report
        per-category results.
        """
        labels = np.asarray(self.labels).astype(bool)
        types = np.asarray(self.defect_types)
        out = [("all", self)]
        for defect in dict.fromkeys(types[labels]):  # first-appearance order, no duplicates
            out.append((str(defect), self.subset(~labels | (types == defect))))
        return out


def _image_auroc(scored):
    labels = np.asarray(scored.labels).astype(bool)
    if labels.all() or not labels.any():
        return None
    return metrics.image_auroc(labels, scored.scores)


def _pixel_metrics(scored, max_fpr):
    if scored.masks is None or scored.maps is None:
        return None, None
    masks = np.asarray(scored.masks, dtype=bool)
    if masks.all() or not masks.any():
        return None, None
    return metrics.pixel_auroc(masks, scored.maps), metrics.pro_score(
        masks, scored.maps, max_fpr=max_fpr
    )


def _group_metrics(scored, max_fpr):
    labels = np.asarray(scored.labels).astype(bool)
    pixel_auroc, pro = _pixel_metrics(scored, max_fpr)
    return {
        "n_normal": int((~labels).sum()),
        "n_anomalous": int(labels.sum()),
        "image_auroc": _image_auroc(scored),
        "pixel_auroc": pixel_auroc,
        "pro": pro,
    }


def set_metrics(scored, max_fpr=0.3):
    """Image AUROC, pixel AUROC and PRO of one test set, overall and per defect type.

    Parameters
    ----------
    scored : ScoredSet
        The test set with its scores (and maps and masks for the pixel metrics).
    max_fpr : float, default=0.3
        False positive rate up to which PRO is integrated (MVTec AD's 0.3).

    Returns
    -------
    result : dict
        ``{"overall": m, "defect_types": {type: m, ...}}`` where each ``m`` holds
        ``n_normal``, ``n_anomalous``, ``image_auroc``, ``pixel_auroc`` and ``pro``. A metric
        is None when it is undefined: image AUROC without normal or without anomalous images,
        pixel metrics without masks.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.report import ScoredSet, set_metrics
    >>> scored = ScoredSet(labels=np.array([0, 0, 1, 1]), scores=np.array([1., 2., 3., 1.5]),
    ...                    defect_types=np.array(["good", "good", "crack", "hole"]))
    >>> result = set_metrics(scored)
    >>> result["overall"]["image_auroc"], result["defect_types"]["hole"]["image_auroc"]
    (0.75, 0.5)
    """
    groups = scored.groups()
    return {
        "overall": _group_metrics(groups[0][1], max_fpr),
        "defect_types": {name: _group_metrics(group, max_fpr) for name, group in groups[1:]},
    }


_METRICS = ("image_auroc", "pixel_auroc", "pro")


def operating_metrics(scored, image_threshold=None, pixel_threshold=None):
    """What a set's verdicts and masks are worth at given thresholds, and the best ones.

    Parameters
    ----------
    scored : ScoredSet
        The test set with its scores (and maps and masks for the pixel level).
    image_threshold, pixel_threshold : float or None, default=None
        The model's thresholds (``image_threshold_``, ``pixel_threshold_``); None skips
        that level.

    Returns
    -------
    metrics : dict
        ``image_threshold``: :func:`skpadim.metrics.threshold_metrics` at the image
        threshold; ``image_f1_optimal``: the same at this set's F1-optimal threshold
        (:func:`skpadim.thresholds.f1_optimal_threshold`); ``pixel_threshold`` and
        ``pixel_f1_optimal`` likewise over pixels, when the set has maps and masks. An
        entry is None where it is undefined (one class missing). Confusion matrices are
        lists ``[[tn, fp], [fn, tp]]``, so the result is JSON as it is.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.report import ScoredSet, operating_metrics
    >>> scored = ScoredSet(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.3, 0.9]),
    ...                    np.array(["good", "good", "crack", "crack"]))
    >>> m = operating_metrics(scored, image_threshold=0.35)
    >>> m["image_threshold"]["f1"], m["image_threshold"]["confusion_matrix"]
    (0.5, [[1, 1], [1, 1]])
    >>> m["image_f1_optimal"]["threshold"], m["image_f1_optimal"]["f1"]
    (0.2, 0.8)
    """
    from ._thresholds import f1_optimal_threshold, pixel_f1_optimal_threshold

    def jsonable(m):
        return {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in m.items()}

    labels = np.asarray(scored.labels).astype(bool)
    both = labels.any() and not labels.all()
    out = {}
    if image_threshold is not None:
        out["image_threshold"] = jsonable(metrics.threshold_metrics(
            labels, scored.scores, image_threshold))
        out["image_f1_optimal"] = (jsonable(metrics.threshold_metrics(
            labels, scored.scores, f1_optimal_threshold(labels, scored.scores)))
            if both else None)
    if pixel_threshold is not None and scored.maps is not None and scored.masks is not None:
        masks = np.asarray(scored.masks).astype(bool)
        out["pixel_threshold"] = jsonable(metrics.pixel_threshold_metrics(
            masks, scored.maps, pixel_threshold))
        pixels_both = masks.any() and not masks.all()
        out["pixel_f1_optimal"] = (jsonable(metrics.pixel_threshold_metrics(
            masks, scored.maps, pixel_f1_optimal_threshold(masks, scored.maps)))
            if pixels_both else None)
    return out


def build_report(sets, max_fpr=0.3, info=None, *, thresholds=None):
    """Metrics of several test sets and, when there are several, their means.

    Parameters
    ----------
    sets : dict of str to ScoredSet
        Named test sets (MVTec categories, demo textures, ...).
    max_fpr : float, default=0.3
        As in :func:`set_metrics`.
    info : dict or None, default=None
        Free-form description (model, data) copied into the report.
    thresholds : dict of str to dict, or None, default=None
        Per set, ``{"image": t, "pixel": t}``, the model's thresholds: each set's overall
        metrics then add :func:`operating_metrics` at them.

    Returns
    -------
    report : dict
        ``{"skpadim_version", "max_fpr", "info", "sets": {name: set_metrics(...)}}``, plus
        ``"mean"``: each metric averaged over the sets where it is defined, when there are
        two sets or more.

    See Also
    --------
    write_report : Compute the report and write it to a folder.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.report import ScoredSet, build_report
    >>> a = ScoredSet(np.array([0, 0, 1]), np.array([0.1, 0.3, 0.5]),
    ...               np.array(["good", "good", "crack"]))
    >>> b = ScoredSet(np.array([0, 1, 1]), np.array([0.2, 0.1, 0.6]),
    ...               np.array(["good", "hole", "hole"]))
    >>> report = build_report({"a": a, "b": b}, info={"model": "example"})
    >>> [report["sets"][name]["overall"]["image_auroc"] for name in ("a", "b")]
    [1.0, 0.5]
    >>> report["mean"]["image_auroc"], report["mean"]["pixel_auroc"]   # no masks: no pixels
    (0.75, None)
    """
    from .. import __version__

    report = {
        "skpadim_version": __version__,
        "max_fpr": max_fpr,
        "info": dict(info or {}),
        "sets": {name: set_metrics(scored, max_fpr) for name, scored in sets.items()},
    }
    for name, given in (thresholds or {}).items():
        report["sets"][name]["overall"].update(operating_metrics(
            sets[name], given.get("image"), given.get("pixel")))
    if len(sets) > 1:
        report["mean"] = {}
        for key in _METRICS:
            values = [s["overall"][key] for s in report["sets"].values()
                      if s["overall"][key] is not None]
            report["mean"][key] = float(np.mean(values)) if values else None
    return report


def _fmt(value):
    return "n/a" if value is None else f"{value:.3f}"


def metrics_markdown(report, per_type=True):
    """The metrics of :func:`build_report` as a Markdown table.

    Parameters
    ----------
    report : dict
        From :func:`build_report`.
    per_type : bool, default=True
        Add a row per defect type under each set's overall row.

    Returns
    -------
    table : str
        One row per set (and defect type), then the means when the report has them;
        undefined metrics read ``n/a``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.report import ScoredSet, build_report, metrics_markdown
    >>> scored = ScoredSet(np.array([0, 0, 1]), np.array([0.1, 0.3, 0.5]),
    ...                    np.array(["good", "good", "crack"]))
    >>> print(metrics_markdown(build_report({"bottle": scored}), per_type=False))
    | set | defect type | normal | anomalous | image AUROC | pixel AUROC | PRO (FPR <= 0.3) |
    |---|---|---|---|---|---|---|
    | bottle | all | 2 | 1 | 1.000 | n/a | n/a |
    """
    header = (
        f"| set | defect type | normal | anomalous | image AUROC | pixel AUROC | "
        f"PRO (FPR <= {report['max_fpr']:g}) |"
    )
    lines = [header, "|" + "---|" * 7]
    for name, result in report["sets"].items():
        rows = [("all", result["overall"])]
        if per_type:
            rows += list(result["defect_types"].items())
        for defect, m in rows:
            lines.append(
                f"| {name} | {defect} | {m['n_normal']} | {m['n_anomalous']} | "
                + " | ".join(_fmt(m[key]) for key in _METRICS) + " |"
            )
    if "mean" in report:
        lines.append("| **mean** | all | | | "
                     + " | ".join(_fmt(report["mean"][key]) for key in _METRICS) + " |")
    operating = [(name, level, result["overall"].get(f"{level}_threshold"),
                  result["overall"].get(f"{level}_f1_optimal"))
                 for name, result in report["sets"].items() for level in ("image", "pixel")
                 if result["overall"].get(f"{level}_threshold")]
    if operating:
        lines += ["", "| set | level | threshold | precision | recall | F1 | TN FP FN TP | "
                      "F1-optimal threshold (F1) |", "|" + "---|" * 8]
        for name, level, m, best in operating:
            (tn, fp), (fn, tp) = m["confusion_matrix"]
            best_text = "n/a" if best is None else f"{best['threshold']:.4g} ({best['f1']:.3f})"
            lines.append(f"| {name} | {level} | {m['threshold']:.4g} | {m['precision']:.3f} | "
                         f"{m['recall']:.3f} | {m['f1']:.3f} | {tn} {fp} {fn} {tp} | "
                         f"{best_text} |")
    return "\n".join(lines)


def write_metrics(report, out_dir):
    """Write ``metrics.json`` and ``metrics.md`` into ``out_dir`` (created if needed).

    Parameters
    ----------
    report : dict
        From :func:`build_report`.
    out_dir : str or path-like
        The report folder; files already there are overwritten.

    Returns
    -------
    paths : list of str
        The two files written.

    Examples
    --------
    >>> import json, os, tempfile
    >>> import numpy as np
    >>> from skpadim.report import ScoredSet, build_report, write_metrics
    >>> scored = ScoredSet(np.array([0, 0, 1]), np.array([0.1, 0.3, 0.5]),
    ...                    np.array(["good", "good", "crack"]))
    >>> paths = write_metrics(build_report({"bottle": scored}), tempfile.mkdtemp())
    >>> [os.path.basename(path) for path in paths]
    ['metrics.json', 'metrics.md']
    >>> with open(paths[0]) as f:
    ...     json.load(f)["sets"]["bottle"]["overall"]["image_auroc"]
    1.0
    """
    os.makedirs(out_dir, exist_ok=True)
    json_path = os.path.join(out_dir, "metrics.json")
    md_path = os.path.join(out_dir, "metrics.md")
    with atomic_write(json_path, "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2)
        f.write("\n")
    lines = ["# skpadim evaluation", ""]
    lines += [f"- {key}: {value}" for key, value in report["info"].items()]
    lines += [
        f"- skpadim {report['skpadim_version']}",
        "",
        "Each defect type is scored against all normal test images; `n/a` marks a metric "
        "the data cannot define (no normal images, or no masks).",
        "",
        metrics_markdown(report),
        "",
    ]
    with atomic_write(md_path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines))
    return [json_path, md_path]


# ---------------------------------------------------------------------------- curve plots
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
    >>> from skpadim.report import ScoredSet, plot_curves
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


def write_report(out_dir, sets, max_fpr=0.3, info=None, plots=True, *, thresholds=None):
    """Compute the metrics of ``sets`` and write ``metrics.json``, ``metrics.md`` and plots.

    Parameters
    ----------
    out_dir : str or path-like
        The report folder, created if needed.
    sets : dict of str to ScoredSet
        Named test sets.
    max_fpr : float, default=0.3
        As in :func:`set_metrics`.
    info : dict or None, default=None
        Description copied into the report.
    plots : bool, default=True
        Also draw ``roc.png`` and ``pro.png`` (needs matplotlib).
    thresholds : dict of str to dict, or None, default=None
        The model's thresholds per set, ``{"image": t, "pixel": t}``: the metrics at
        them are added (:func:`build_report`) and the operating points marked on the plots
        (:func:`plot_curves`).

    Returns
    -------
    report : dict
        As :func:`build_report` returns it.

    See Also
    --------
    write_metrics, plot_curves : The two halves, on their own.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skpadim.report import ScoredSet, write_report
    >>> scored = ScoredSet(np.array([0, 0, 1]), np.array([0.1, 0.3, 0.5]),
    ...                    np.array(["good", "good", "crack"]))
    >>> out = tempfile.mkdtemp()
    >>> report = write_report(out, {"bottle": scored}, info={"model": "example"}, plots=False)
    >>> report["sets"]["bottle"]["overall"]["image_auroc"], sorted(os.listdir(out))
    (1.0, ['metrics.json', 'metrics.md'])
    """
    report = build_report(sets, max_fpr=max_fpr, info=info, thresholds=thresholds)
    write_metrics(report, out_dir)
    if plots:
        plot_curves(sets, out_dir, max_fpr=max_fpr, thresholds=thresholds)
    return report


# ---------------------------------------------------------------------------- overlays
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
    >>> from skpadim.report import heat_range
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
    >>> from skpadim.report import overlay_image
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
            "bring it to the map's resolution with skpadim.preprocessing.transform_masks"
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


# ---------------------------------------------------------------------------- legends
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
    verdict follows :func:`skpadim.outputs.verdict` (anomalous when the score is above the
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
    >>> from skpadim.report import caption_text
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
        ``threshold`` (:func:`skpadim.outputs.verdict`).
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
    >>> from skpadim.report import COLORBAR_WIDTH, save_overlay
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


def _add_caption(pixels, caption, score, threshold, anomalous, font):
    """``pixels`` with the caption band under them, if asked for (None: if scored)."""
    parts = _caption_parts(score, threshold, anomalous)
    if (score is not None if caption is None else caption) and parts:
        pixels = np.concatenate([pixels, _caption(parts, pixels.shape[1], font)], axis=0)
    return pixels


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
    >>> from skpadim.report import COLORBAR_WIDTH, PANEL_GAP, save_panel
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
                "skpadim.preprocessing.restore_geometry and transform_masks)"
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


def select_for_overlays(scored, per_type=2):
    """Indices of the test images worth looking at: per defect type, the highest scores.

    For every defect type, the ``per_type`` anomalous images the model scores highest; and the
    ``per_type`` highest-scoring normal images, which are the likeliest false alarms.

    Parameters
    ----------
    scored : ScoredSet
        The test set with its scores.
    per_type : int, default=2
        Images chosen per defect type and among normal images.

    Returns
    -------
    indices : list of int
        Normal images first, then defect types in order of first appearance; within each,
        highest score first.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.report import ScoredSet, select_for_overlays
    >>> scored = ScoredSet(np.array([0, 0, 0, 1, 1, 1]),
    ...                    np.array([0.1, 0.5, 0.3, 0.9, 0.2, 0.7]),
    ...                    np.array(["good", "good", "good", "crack", "hole", "crack"]))
    >>> select_for_overlays(scored, per_type=1)
    [1, 3, 4]
    """
    labels = np.asarray(scored.labels).astype(bool)
    types = np.asarray(scored.defect_types)
    scores = np.asarray(scored.scores)
    chosen = []
    groups = [~labels] + [labels & (types == t) for t in dict.fromkeys(types[labels])]
    for members in groups:
        idx = np.flatnonzero(members)
        chosen += idx[np.argsort(-scores[idx], kind="stable")[:per_type]].tolist()
    return chosen
