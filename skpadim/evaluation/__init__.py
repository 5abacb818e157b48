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
- the whole image, the pixels a model does not look at included
  (:func:`evaluation_view`);
- reports: metrics files, ROC and PRO curves, and the overlay and panel pictures
  (:func:`write_report`, :func:`save_overlay`, :func:`save_panel`).
"""

from typing import TYPE_CHECKING

from .._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "._metrics": ["image_auroc", "pixel_auroc", "pro_curve", "pro_score", "threshold_metrics",
                  "pixel_threshold_metrics"],
    "._scorers": ["image_auroc_scorer", "pixel_auroc_scorer", "pro_scorer", "make_pro_scorer"],
    "._thresholds": ["f1_optimal_threshold", "adaptive_threshold", "tune_thresholds",
                     "normalize_scores"],
    "._pixel_histogram": ["PixelHistogram", "pixel_f1_optimal_threshold"],
    "._model_selection": ["NormalOnlyKFold"],
    "._scored": ["ScoredSet", "set_metrics", "operating_metrics", "select_for_overlays"],
    "._report": ["build_report", "write_report", "write_metrics", "metrics_markdown"],
    "._curves": ["plot_curves"],
    "._overlay": ["heat_range", "overlay_image", "HEAT_COLOURS", "UNKNOWN_COLOURS",
                  "CONTOUR_COLOUR", "HATCH_WIDTH"],
    "._legends": ["caption_text", "TEXT_COLOUR", "TEXT_BACKGROUND", "COLORBAR_WIDTH"],
    "._pictures": ["save_overlay", "save_panel", "PANEL_GAP"],
    "._view": ["evaluation_view", "EvaluationView"],
})

if TYPE_CHECKING:  # what static tools and IDEs see
    from ._curves import plot_curves
    from ._legends import COLORBAR_WIDTH, TEXT_BACKGROUND, TEXT_COLOUR, caption_text
    from ._metrics import (
        image_auroc,
        pixel_auroc,
        pixel_threshold_metrics,
        pro_curve,
        pro_score,
        threshold_metrics,
    )
    from ._model_selection import NormalOnlyKFold
    from ._overlay import (
        CONTOUR_COLOUR,
        HATCH_WIDTH,
        HEAT_COLOURS,
        UNKNOWN_COLOURS,
        heat_range,
        overlay_image,
    )
    from ._pictures import PANEL_GAP, save_overlay, save_panel
    from ._pixel_histogram import PixelHistogram, pixel_f1_optimal_threshold
    from ._report import build_report, metrics_markdown, write_metrics, write_report
    from ._scored import ScoredSet, operating_metrics, select_for_overlays, set_metrics
    from ._scorers import image_auroc_scorer, make_pro_scorer, pixel_auroc_scorer, pro_scorer
    from ._thresholds import (
        adaptive_threshold,
        f1_optimal_threshold,
        normalize_scores,
        tune_thresholds,
    )
    from ._view import EvaluationView, evaluation_view
