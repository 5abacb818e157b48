"""Anomaly detection metrics: image ROC AUC, pixel ROC AUC and per-region overlap (PRO),
and how a chosen threshold does (precision, recall, F1, confusion matrix).

Every score and map here reads "higher = more anomalous", as PaDiM's distances do. Image
labels may be 0/1 with 1 anomalous, -1/+1 with -1 anomalous, booleans, or ``(n, H, W)``
ground-truth masks. Pixel metrics compare masks and
maps of the same shape; bring masks to the maps' resolution with
:func:`skpadim.features.transform_masks`.

PRO follows the MVTec AD evaluation code: ground-truth regions are the 8-connected components
of each mask, and the curve has one point per distinct score. The scorers of
:mod:`skpadim.evaluation._scorers` plug these metrics into
:class:`~sklearn.model_selection.GridSearchCV` and friends.

:func:`threshold_metrics` and :func:`pixel_threshold_metrics` judge one threshold, with
skpadim's rule: anomalous iff the score (or map value) is strictly above it.
:mod:`skpadim.evaluation` chooses thresholds.
"""

from numbers import Real

import numpy as np
from scipy import ndimage
from sklearn.metrics import roc_auc_score

from .._labels import as_anomaly_labels
from ..exceptions import ConfigurationError, InvalidImageError

__all__ = [
    "image_auroc",
    "pixel_auroc",
    "pro_curve",
    "pro_score",
    "threshold_metrics",
    "pixel_threshold_metrics",
]


def _check_both_classes(is_anomalous, name, unit):
    """Raise unless ``is_anomalous`` holds both True and False."""
    n_anomalous = np.count_nonzero(is_anomalous)
    if n_anomalous == 0 or n_anomalous == is_anomalous.size:
        missing = "normal" if n_anomalous else "anomalous"
        raise InvalidImageError(
            f"{name} hold no {missing} {unit} among {is_anomalous.size}: ROC AUC needs "
            f"both normal and anomalous {unit}s; evaluate on a test set that holds both"
        )


def _check_mask_shapes(masks, maps):
    """Raise unless masks and maps (arrays) are both ``(n, H, W)`` and of one shape."""
    if masks.ndim != 3:
        raise InvalidImageError(
            f"masks must have shape (n, H, W), got {masks.shape}; for image labels use "
            "image_auroc or image_auroc_scorer instead"
        )
    if masks.shape != maps.shape:
        raise InvalidImageError(
            f"masks have shape {masks.shape} but anomaly maps have shape {maps.shape}; "
            "bring the masks to the maps' resolution with "
            "skpadim.features.transform_masks(masks, resize, crop), using the resize "
            "and crop the images went through"
        )


def _check_masks_and_maps(masks, maps):
    """Return masks as bool and maps as float64, both ``(n, H, W)`` and of one shape."""
    masks = np.asarray(masks)
    maps = np.asarray(maps, dtype=np.float64)
    _check_mask_shapes(masks, maps)
    if not np.isfinite(maps).all():
        raise InvalidImageError(
            "anomaly maps contain NaN or infinite values; check the model that made them"
        )
    return masks.astype(bool), maps


def _check_max_fpr(max_fpr):
    # bool is a Real to Python, but max_fpr=True is surely a mistake.
    if isinstance(max_fpr, bool) or not isinstance(max_fpr, Real) or not 0 < max_fpr <= 1:
        raise ValueError(
            f"max_fpr must be a float in (0, 1], got {max_fpr!r}; MVTec AD reports PRO "
            "up to max_fpr=0.3"
        )


def image_auroc(y_true, scores):
    """Area under the ROC curve of image-level anomaly scores.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, H, W)
        Image labels (0/1 with 1 anomalous, -1/+1 with -1 anomalous, or booleans with True
        anomalous) or ground-truth masks, where an image is anomalous when any pixel is set.
    scores : array-like of shape (n_samples,)
        Anomaly scores, higher = more anomalous.

    Returns
    -------
    auroc : float
        1.0 when every anomalous image scores above every normal one, 0.5 for chance.

    Examples
    --------
    >>> from skpadim.evaluation import image_auroc
    >>> image_auroc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
    0.75
    >>> image_auroc([1, 1, -1, -1], [0.1, 0.4, 0.35, 0.8])
    0.75
    """
    is_anomalous = as_anomaly_labels(y_true)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.shape != is_anomalous.shape:
        raise InvalidImageError(
            f"scores must have shape {is_anomalous.shape}, one per image of y_true, got "
            f"{scores.shape}"
        )
    _check_both_classes(is_anomalous, "y_true", "image")
    return float(roc_auc_score(is_anomalous, scores))


def pixel_auroc(masks, maps):
    """Area under the ROC curve of all pixels of all images, pooled.

    Parameters
    ----------
    masks : array-like of shape (n_samples, H, W)
        Ground truth; non-zero marks a defective pixel.
    maps : array-like of shape (n_samples, H, W)
        Anomaly maps at the masks' resolution, higher = more anomalous.

    Returns
    -------
    auroc : float

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import pixel_auroc
    >>> masks = np.array([[[0, 1], [1, 0]]])
    >>> pixel_auroc(masks, [[[0.1, 0.9], [0.8, 0.2]]])
    1.0
    >>> pixel_auroc(masks, [[[0.1, 0.9], [0.15, 0.2]]])
    0.75
    """
    masks, maps = _check_masks_and_maps(masks, maps)
    _check_both_classes(masks, "masks", "pixel")
    return float(roc_auc_score(masks.ravel(), maps.ravel()))


def _label_regions(masks):
    """Number the defect regions of all images; return the labels and each label's size.

    Regions are the 8-connected components of each image's mask. Label 0 marks normal
    pixels, so ``sizes[0]`` counts them and ``len(sizes) - 1`` regions follow.
    """
    # Connected within an image's plane only: one call labels the whole stack, and
    # numbers the regions of all images consecutively.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = True
    regions, _ = ndimage.label(masks, structure=structure)
    return regions, np.bincount(regions.ravel(), minlength=1)


def pro_curve(masks, maps):
    """Per-region overlap against false positive rate, one point per distinct score.

    At threshold ``t`` a pixel is flagged when its score is ``>= t``. The false positive
    rate is the fraction of all normal pixels of all images that are flagged; the
    per-region overlap (PRO) is the mean, over every defect region of every image, of the
    fraction of the region that is flagged. Regions are the 8-connected components of each
    mask, so a small defect weighs as much as a large one. This is the curve of the MVTec AD
    evaluation code.

    Parameters
    ----------
    masks : array-like of shape (n_samples, H, W)
        Ground truth; non-zero marks a defective pixel. Images without a defect contribute
        normal pixels only.
    maps : array-like of shape (n_samples, H, W)
        Anomaly maps at the masks' resolution, higher = more anomalous.

    Returns
    -------
    fpr : ndarray of shape (n_thresholds + 1,)
        False positive rates, non-decreasing, from 0 to 1.
    pro : ndarray of shape (n_thresholds + 1,)
        Per-region overlaps, non-decreasing, from 0 to 1.
    thresholds : ndarray of shape (n_thresholds + 1,)
        The distinct scores in decreasing order, after ``inf`` for the point (0, 0).

    See Also
    --------
    pro_score : Normalised area under this curve.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import pro_curve
    >>> masks = np.array([[[1, 1], [0, 0]]])
    >>> fpr, pro, thresholds = pro_curve(masks, [[[0.9, 0.8], [0.3, 0.3]]])
    >>> fpr
    array([0., 0., 0., 1.])
    >>> pro
    array([0. , 0.5, 1. , 1. ])
    >>> thresholds
    array([inf, 0.9, 0.8, 0.3])
    """
    masks, maps = _check_masks_and_maps(masks, maps)
    regions, sizes = _label_regions(masks)
    n_normal, n_regions = sizes[0], len(sizes) - 1
    if n_normal == 0:
        raise InvalidImageError(
            "masks mark every pixel as defective; PRO needs normal pixels to count false "
            "positives"
        )
    if n_regions == 0:
        raise InvalidImageError(
            "masks contain no defective pixel; PRO needs at least one defect region"
        )

    order = np.argsort(maps, axis=None)[::-1]
    scores = maps.ravel()[order]
    region_of = regions.ravel()[order]
    # Integer counts keep the false positive rate exact, so its last value is exactly 1.
    fpr = np.cumsum(region_of == 0) / n_normal
    # A flagged pixel adds 1 / (its region's size) to the summed overlaps of all regions.
    overlap_gain = np.r_[0.0, 1.0 / sizes[1:]]
    pro = np.cumsum(overlap_gain[region_of]) / n_regions
    # Tied pixels are flagged together: keep the point after the last of each tie.
    last_of_tie = np.append(scores[1:] != scores[:-1], True)
    fpr = np.minimum(fpr[last_of_tie], 1.0)
    pro = np.minimum(pro[last_of_tie], 1.0)
    thresholds = scores[last_of_tie]
    return np.r_[0.0, fpr], np.r_[0.0, pro], np.r_[np.inf, thresholds]


def _area_up_to(x, y, x_max):
    """Trapezoid area under the curve ``(x, y)`` from ``x[0]`` to exactly ``x_max``.

    ``x`` is non-decreasing and ends at or beyond ``x_max``; ``y`` at ``x_max`` is
    interpolated linearly between the neighbouring points.
    """
    n_within = np.searchsorted(x, x_max, side="right")
    x_in, y_in = x[:n_within], y[:n_within]
    if x_in[-1] < x_max:
        x0, x1 = x[n_within - 1], x[n_within]
        y0, y1 = y[n_within - 1], y[n_within]
        y_at_max = y0 + (y1 - y0) * (x_max - x0) / (x1 - x0)
        x_in, y_in = np.append(x_in, x_max), np.append(y_in, y_at_max)
    return float(np.sum(np.diff(x_in) * (y_in[1:] + y_in[:-1]) / 2))


def pro_score(masks, maps, max_fpr=0.3):
    """Normalised area under the PRO curve up to a false positive rate ``max_fpr``.

    The area under :func:`pro_curve` from FPR 0 to exactly ``max_fpr`` (trapezoid rule, the
    PRO at ``max_fpr`` interpolated linearly), divided by ``max_fpr`` so that a perfect
    detector scores 1. This is the PRO metric of the MVTec AD evaluation code, not the
    variant that samples a fixed number of thresholds.

    Parameters
    ----------
    masks : array-like of shape (n_samples, H, W)
        Ground truth; non-zero marks a defective pixel.
    maps : array-like of shape (n_samples, H, W)
        Anomaly maps at the masks' resolution, higher = more anomalous.
    max_fpr : float, default=0.3
        Upper limit of the false positive rate, in (0, 1]. MVTec AD reports 0.3.

    Returns
    -------
    score : float
        In [0, 1], higher is better.

    See Also
    --------
    pro_curve : The curve this integrates.

    Examples
    --------
    The map finds half of the defect before any false alarm, and the other half only after
    every normal pixel, so the PRO is 0.5 at every false positive rate up to 1:

    >>> import numpy as np
    >>> from skpadim.evaluation import pro_score
    >>> masks = np.zeros((1, 3, 4), dtype=bool)
    >>> masks[0, 0, :2] = True
    >>> maps = np.full((1, 3, 4), 0.5)
    >>> maps[0, 0, :2] = [1.0, 0.0]
    >>> pro_score(masks, maps)
    0.5
    >>> pro_score(masks, masks.astype(float))
    1.0
    """
    _check_max_fpr(max_fpr)
    fpr, pro, _ = pro_curve(masks, maps)
    return _area_up_to(fpr, pro, max_fpr) / max_fpr


# ---------------------------------------------------------------------------- thresholds
def _check_threshold(threshold):
    if (isinstance(threshold, bool) or not isinstance(threshold, Real)
            or not np.isfinite(threshold)):
        raise ConfigurationError(f"threshold must be a finite float, got {threshold!r}")
    return threshold


def _as_float(values):
    """The values in their own float type (the detectors compare in it), float64 for ints."""
    values = np.asarray(values)
    return values if np.issubdtype(values.dtype, np.floating) else values.astype(np.float64)


def _metrics_from_counts(threshold, tp, fp, tn, fn):
    # No alarms (or nothing to find) gives 0, not NaN: sklearn's zero_division=0, so that
    # the numbers of a threshold above every score still average and compare.
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0
    return {
        "threshold": float(threshold),
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "tp": int(tp),
        "fp": int(fp),
        "tn": int(tn),
        "fn": int(fn),
        "confusion_matrix": np.array([[tn, fp], [fn, tp]], dtype=np.int64),
    }


def threshold_metrics(y_true, scores, threshold):
    """Precision, recall, F1 and confusion matrix of "anomalous iff score > threshold".

    The rule is skpadim's: strictly above. Scores are compared in their own float type
    (float32 scores with the threshold rounded to float32), as the detectors compare.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, H, W)
        Image labels (0/1 with 1 anomalous, -1/+1 with -1 anomalous, or booleans with True
        anomalous) or ground-truth masks, where an image is anomalous when any pixel is set.
    scores : array-like of shape (n_samples,)
        Anomaly scores, higher = more anomalous; finite.
    threshold : float
        For instance a model's ``image_threshold_``.

    Returns
    -------
    metrics : dict
        ``threshold``, ``precision``, ``recall``, ``f1`` (floats); ``tp``, ``fp``, ``tn``,
        ``fn`` (ints, anomalous = positive); ``confusion_matrix``, int64 ``[[tn, fp],
        [fn, tp]]`` as :func:`sklearn.metrics.confusion_matrix` lays it out. Without
        alarms precision is 0 (not NaN), without anomalous samples recall is 0, and F1 is 0
        when both are: scikit-learn's ``zero_division=0``.

    See Also
    --------
    skpadim.evaluation.f1_optimal_threshold : The threshold that maximises ``f1``.
    pixel_threshold_metrics : The same over pixels.

    Examples
    --------
    >>> from skpadim.evaluation import threshold_metrics
    >>> m = threshold_metrics([0, 0, 1, 1], [0.1, 0.5, 0.5, 0.9], threshold=0.5)
    >>> m["precision"], m["recall"], m["f1"]
    (1.0, 0.5, 0.6666666666666666)
    >>> m["confusion_matrix"].tolist()
    [[2, 0], [1, 1]]
    >>> threshold_metrics([0, 1], [0.1, 0.2], threshold=1.0)["precision"]   # no alarm
    0.0
    """
    is_anomalous = as_anomaly_labels(y_true)
    scores = _as_float(scores)
    threshold = _check_threshold(threshold)
    if scores.shape != is_anomalous.shape:
        raise InvalidImageError(
            f"scores must have shape {is_anomalous.shape}, one per image of y_true, got "
            f"{scores.shape}"
        )
    if not np.isfinite(scores).all():
        raise InvalidImageError(
            "scores contain NaN or infinite values; check the model that made them"
        )
    flagged = scores > threshold
    n_anomalous = int(np.count_nonzero(is_anomalous))
    tp = int(np.count_nonzero(flagged & is_anomalous))
    fp = int(np.count_nonzero(flagged)) - tp
    fn = n_anomalous - tp
    return _metrics_from_counts(threshold, tp, fp, scores.size - n_anomalous - fp, fn)


def pixel_threshold_metrics(masks, maps, threshold):
    """Precision, recall, F1 and confusion matrix of "defect iff map value > threshold",
    over all pixels of all images.

    Images are counted a few at a time, so the only temporaries are boolean arrays of a
    few images (the maps are not copied, nor the masks when they are boolean).

    Parameters
    ----------
    masks : array-like of shape (n_samples, H, W)
        Ground truth; non-zero marks a defect pixel.
    maps : array-like of shape (n_samples, H, W)
        Anomaly maps at the masks' resolution, finite; compared in their own float type.
    threshold : float
        For instance a model's ``pixel_threshold_``.

    Returns
    -------
    metrics : dict
        As :func:`threshold_metrics` returns, counting pixels (defect = positive), with
        the same zero-division rule.

    See Also
    --------
    skpadim.evaluation.pixel_f1_optimal_threshold : The threshold that maximises ``f1``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import pixel_threshold_metrics
    >>> masks = np.array([[[0, 1], [1, 0]]])
    >>> m = pixel_threshold_metrics(masks, [[[0.1, 0.9], [0.3, 0.4]]], threshold=0.35)
    >>> m["tp"], m["fp"], m["tn"], m["fn"], m["f1"]
    (1, 1, 1, 1, 0.5)
    """
    masks, maps = np.asarray(masks), _as_float(maps)
    _check_mask_shapes(masks, maps)
    threshold = _check_threshold(threshold)
    tp = flagged = defect = 0
    step = 16
    for start in range(0, len(maps), step):
        part = maps[start : start + step]
        if not np.isfinite(part).all():
            raise InvalidImageError(
                "anomaly maps contain NaN or infinite values; check the model that made them"
            )
        truth = masks[start : start + step]
        truth = truth if truth.dtype == bool else truth != 0
        above = part > threshold
        flagged += int(np.count_nonzero(above))
        defect += int(np.count_nonzero(truth))
        tp += int(np.count_nonzero(np.logical_and(above, truth, out=above)))
    fp, fn = flagged - tp, defect - tp
    return _metrics_from_counts(threshold, tp, fp, maps.size - defect - fp, fn)

