"""Writing evaluation reports: the metrics of test sets as JSON and Markdown, with plots.

The functions here take what a model produced on test sets (:class:`ScoredSet`: image
scores, anomaly maps) and the ground truth, and write it down; they fit nothing. They serve
the ``skpadim`` command line (``evaluate``, ``score`` and ``demo``) and can be used on their
own: :func:`build_report` gathers :func:`set_metrics` of several sets and their means, and
:func:`write_report` writes them as ``metrics.json`` and ``metrics.md`` together with
``roc.png`` and ``pro.png`` (:func:`plot_curves`). Pictures of single images are written by
:func:`save_overlay` and :func:`save_panel`; per-image data files (score tables, maps,
masks) are in :mod:`skpadim.io`.

Every file is written atomically (a temporary file beside it, then a rename): a run that
fails or is killed half-way leaves the previous report's files whole, never truncated.
"""

import json
import os

import numpy as np

from ..io._atomic import atomic_write
from ._curves import plot_curves
from ._scored import operating_metrics, set_metrics

__all__ = ["build_report", "metrics_markdown", "write_metrics", "write_report"]


_METRICS = ("image_auroc", "pixel_auroc", "pro")


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
    >>> from skpadim.evaluation import ScoredSet, build_report
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
    >>> from skpadim.evaluation import ScoredSet, build_report, metrics_markdown
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
    >>> from skpadim.evaluation import ScoredSet, build_report, write_metrics
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
    >>> from skpadim.evaluation import ScoredSet, write_report
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
