"""How well a model does, and where to draw its line: metrics, thresholds, model
selection and reports.

- metrics of the paper: :func:`image_auroc`, :func:`pixel_auroc` and MVTec AD's
  :func:`pro_score` (with its curve), as functions and as ``GridSearchCV`` scorers;
  precision, recall, F1 and the confusion matrix at a threshold
  (:func:`threshold_metrics`, :func:`pixel_threshold_metrics`);
- thresholds: F1-optimal (:func:`f1_optimal_threshold`, streamed over pixels with
  :class:`PixelHistogram`), anomalib's adaptive one, tuning a fitted model on labelled
  validation images (:func:`tune_thresholds`) and normalised scores;
- model selection on normal-only training sets: :class:`~skpadim.NormalOnlyKFold`;
- reports: metrics files, ROC and PRO curves, and the overlay and panel pictures
  (:func:`write_report`, :func:`save_overlay`, :func:`save_panel`).
"""

from typing import TYPE_CHECKING

from .._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "._metrics": ["image_auroc", "pixel_auroc", "pro_curve", "pro_score", "image_auroc_scorer",
                  "pixel_auroc_scorer", "pro_scorer", "make_pro_scorer", "threshold_metrics",
                  "pixel_threshold_metrics"],
    "._thresholds": ["f1_optimal_threshold", "pixel_f1_optimal_threshold", "PixelHistogram",
                     "adaptive_threshold", "tune_thresholds", "normalize_scores"],
    "._model_selection": ["NormalOnlyKFold"],
    "._report": ["ScoredSet", "build_report", "write_report", "set_metrics", "operating_metrics",
                 "write_metrics", "metrics_markdown", "plot_curves", "select_for_overlays",
                 "heat_range", "overlay_image", "caption_text", "save_overlay", "save_panel",
                 "HEAT_COLOURS", "UNKNOWN_COLOURS", "CONTOUR_COLOUR", "TEXT_COLOUR",
                 "TEXT_BACKGROUND", "COLORBAR_WIDTH", "HATCH_WIDTH", "PANEL_GAP"],
})

if TYPE_CHECKING:  # what static tools and IDEs see
    from ._metrics import (image_auroc, image_auroc_scorer, make_pro_scorer, pixel_auroc,
                           pixel_auroc_scorer, pixel_threshold_metrics, pro_curve, pro_score,
                           pro_scorer, threshold_metrics)
    from ._model_selection import NormalOnlyKFold
    from ._report import (COLORBAR_WIDTH, CONTOUR_COLOUR, HATCH_WIDTH, HEAT_COLOURS, PANEL_GAP,
                          TEXT_BACKGROUND, TEXT_COLOUR, UNKNOWN_COLOURS, ScoredSet, build_report,
                          caption_text, heat_range, metrics_markdown, operating_metrics,
                          overlay_image, plot_curves, save_overlay, save_panel,
                          select_for_overlays, set_metrics, write_metrics, write_report)
    from ._thresholds import (PixelHistogram, adaptive_threshold, f1_optimal_threshold,
                              normalize_scores, pixel_f1_optimal_threshold, tune_thresholds)
