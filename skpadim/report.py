"""Writing evaluation reports: metrics as JSON and Markdown, curve plots, anomaly-map overlays.

The functions here take what a model produced on a test set (image scores, anomaly maps) and
the ground truth, and write it down; they fit nothing. They serve the ``skpadim`` command line
(``evaluate``, ``score`` and ``demo``) and can be used on their own:

- :class:`ScoredSet` holds one test set: labels, scores, defect types, and optionally maps
  and masks at the maps' resolution;
- :func:`set_metrics` computes image AUROC, pixel AUROC and PRO overall and per defect type;
  :func:`write_report` writes them as ``metrics.json`` and ``metrics.md`` together with
  ``roc.png`` and ``pro.png``;
- :func:`overlay_image` and :func:`save_overlay` paint an anomaly map over its image.

Overlay colours follow one fixed range per model (:func:`heat_range`), not each map's own
minimum and maximum, so the same colour means the same distance in every overlay of a model
and a normal image does not light up just because its map is normalised to its own peak.

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

from . import metrics
from ._atomic import atomic_path, atomic_savefig, atomic_write
from .exceptions import InvalidImageError

__all__ = [
    "ScoredSet",
    "set_metrics",
    "build_report",
    "metrics_markdown",
    "write_metrics",
    "plot_curves",
    "write_report",
    "heat_range",
    "overlay_image",
    "save_overlay",
    "select_for_overlays",
]

#: Colour stops of the overlay heat, from the low to the high end of the range (RGB in [0, 1]).
HEAT_COLOURS = np.array([[1.0, 0.9, 0.0], [1.0, 0.5, 0.0], [0.85, 0.0, 0.0]])
#: Colour of the ground-truth contour: cyan stands out against the yellow-to-red heat and
#: against grey textures.
CONTOUR_COLOUR = np.array([0.0, 1.0, 1.0])


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


def build_report(sets, max_fpr=0.3, info=None):
    """Metrics of several test sets and, when there are several, their means.

    Parameters
    ----------
    sets : dict of str to ScoredSet
        Named test sets (MVTec categories, demo textures, ...).
    max_fpr : float, default=0.3
        As in :func:`set_metrics`.
    info : dict or None, default=None
        Free-form description (model, data) copied into the report.

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
    from . import __version__

    report = {
        "skpadim_version": __version__,
        "max_fpr": max_fpr,
        "info": dict(info or {}),
        "sets": {name: set_metrics(scored, max_fpr) for name, scored in sets.items()},
    }
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


def plot_curves(sets, out_dir, max_fpr=0.3):
    """Draw ``roc.png`` (image and pixel ROC) and ``pro.png`` (PRO up to ``max_fpr``).

    With one set, each defect type (against all normal images) gets its own thin curve
    beside the overall one; with several, each set gets one curve. Curves a set cannot define
    (no normal images, no masks) are left out.

    Parameters
    ----------
    sets : dict of str to ScoredSet
        Named test sets; pixel curves need their maps and masks.
    out_dir : str or path-like
        Created if needed.
    max_fpr : float, default=0.3
        False positive rate up to which the PRO curve is drawn and integrated.

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
        auroc = _image_auroc(scored)
        if auroc is not None:
            fpr, tpr, _ = roc_curve(np.asarray(scored.labels).astype(bool), scored.scores)
            ax_image.plot(fpr, tpr, label=f"{label} ({auroc:.3f})", **style)
        if pixel_auroc is not None:
            fpr, tpr, _ = roc_curve(np.asarray(scored.masks, dtype=bool).ravel(),
                                    np.asarray(scored.maps).ravel())
            ax_pixel.plot(fpr, tpr, label=f"{label} ({pixel_auroc:.3f})", **style)
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
            x, y = _pro_points(np.asarray(scored.masks, dtype=bool), scored.maps, max_fpr)
            style = {"lw": 2.0} if main else {"lw": 1.0, "ls": "--"}
            ax.plot(x, y, label=f"{label} ({score:.3f})", **style)
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


def write_report(out_dir, sets, max_fpr=0.3, info=None, plots=True):
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
    report = build_report(sets, max_fpr=max_fpr, info=info)
    write_metrics(report, out_dir)
    if plots:
        plot_curves(sets, out_dir, max_fpr=max_fpr)
    return report


# ---------------------------------------------------------------------------- overlays
def heat_range(model, low=0.5):
    """The fixed range ``(vmin, vmax)`` in which overlays colour a model's anomaly maps.

    ``vmax`` is the model's image threshold: the map maximum at which ``predict`` flags an
    image (``-offset_`` of the final detector). A pixel at full heat is thus, on its own,
    enough to flag its image. ``vmin`` is ``low * vmax``: distances below it get no colour.
    With PaDiM, normal pixels lie around half the threshold, so normal areas stay nearly
    clear and defects stand out. The range depends on the model only, so overlays of one
    model compare with each other.

    Parameters
    ----------
    model : Pipeline or detector
        A fitted pipeline whose last step (or a fitted detector) has ``offset_``.
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
    >>> bool(np.isclose(vmax, -model.offset_)), bool(np.isclose(vmin, vmax / 2))
    (True, True)
    """
    final = model[-1] if hasattr(model, "steps") else model
    threshold = -float(final.offset_)
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


def overlay_image(image, anomaly_map, mask=None, *, vmin, vmax, max_alpha=0.65, scale=1):
    """Paint an anomaly map over its image; outline the ground truth.

    The map is scaled to heat ``(map - vmin) / (vmax - vmin)``, clipped to [0, 1], and
    coloured from yellow (low) through orange to red (high); the paint's opacity grows with
    the heat up to ``max_alpha``, so areas below ``vmin`` show the image untouched. The mask's
    outline is drawn just outside the defect in cyan, leaving the defect's own pixels visible.

    Parameters
    ----------
    image : ndarray
        The image as the network saw it (after resize and crop): uint8 ``(H, W, 3)`` or
        ``(H, W)``, or float ``(3, H, W)`` or ``(H, W, 3)`` in [0, 1].
    anomaly_map : ndarray of shape (H, W)
        The image's anomaly map, at the image's resolution.
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
    heat = np.clip((anomaly_map - vmin) / max(vmax - vmin, 1e-12), 0, 1)
    alpha = (max_alpha * heat)[..., None]
    out = (1 - alpha) * rgb + alpha * _heat_colours(heat)
    scale = int(scale)
    if scale > 1:
        out = out.repeat(scale, axis=0).repeat(scale, axis=1)
    if mask is not None:
        mask = np.asarray(mask, dtype=bool)
        if scale > 1:
            mask = mask.repeat(scale, axis=0).repeat(scale, axis=1)
        width = max(1, scale // 2)
        outline = ndimage.binary_dilation(mask, iterations=width) & ~mask
        out[outline] = CONTOUR_COLOUR
    return np.rint(np.clip(out, 0, 1) * 255).astype(np.uint8)


def save_overlay(path, image, anomaly_map, mask=None, *, vmin, vmax, min_size=256, text=None):
    """Write :func:`overlay_image` as a PNG file, upscaled to at least ``min_size`` pixels.

    Parameters
    ----------
    path : str or path-like
        The PNG file; its folder is created if needed.
    image : ndarray
        As in :func:`overlay_image`.
    anomaly_map : ndarray of shape (H, W)
        As in :func:`overlay_image`.
    mask : ndarray of shape (H, W) or None, default=None
        As in :func:`overlay_image`.
    vmin, vmax : float
        As in :func:`overlay_image`.
    min_size : int, default=256
        Images smaller than this (on their short side) are upscaled by an integer factor.
    text : dict or None, default=None
        Key-value pairs (score, label, ...) stored as PNG text chunks, next to the heat
        range, so the file describes itself.

    Returns
    -------
    path : str
        The file written.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim.report import save_overlay
    >>> path = os.path.join(tempfile.mkdtemp(), "overlays", "part.png")
    >>> _ = save_overlay(path, np.zeros((32, 32, 3), dtype=np.uint8), np.ones((32, 32)),
    ...                  vmin=0.5, vmax=1.0, text={"anomaly_score": "1"})
    >>> with Image.open(path) as png:                                # upscaled 8 x to 256
    ...     png.size, png.text["heat_vmax"], png.text["anomaly_score"]
    ((256, 256), '1', '1')
    """
    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    side = min(np.shape(anomaly_map))
    scale = max(1, math.ceil(min_size / side))
    overlay = overlay_image(image, anomaly_map, mask, vmin=vmin, vmax=vmax, scale=scale)
    info = PngInfo()
    for key, value in {"heat_vmin": f"{vmin:.6g}", "heat_vmax": f"{vmax:.6g}",
                       "scale": str(scale), **(text or {})}.items():
        info.add_text(str(key), str(value))
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(overlay).save(tmp, format="PNG", pnginfo=info)
    return path


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
