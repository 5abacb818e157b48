"""Decision thresholds: chosen on labelled validation images, carried by the model.

A fitted detector flags an image when its anomaly score is **strictly above** the image
threshold (``image_threshold_``, which is ``-offset_``), and a pixel when its anomaly-map
value is strictly above the pixel threshold (``pixel_threshold_``). Both start from the
``contamination`` rule at the end of ``fit``; the functions here choose better ones from
labelled validation images, and ``set_thresholds`` stores them in the model, so that
:func:`skpadim.save` and :func:`skpadim.export_onnx` carry them along.

- :func:`f1_optimal_threshold`: the image threshold of best F1, exactly, under skpadim's
  strict rule;
- :func:`adaptive_threshold`: anomalib's ``F1AdaptiveThreshold`` value (rule
  ``score >= t``), for comparison with anomalib;
- :func:`normalize_scores`: scores or maps mapped to [0, 1), with 0.5 at the threshold;
- :func:`tune_thresholds`: one pass of a model over validation images, then both
  thresholds set on it.

The pixel threshold of best F1 is chosen on a :class:`PixelHistogram`
(:mod:`skpadim.evaluation._pixel_histogram`), filled batch by batch.

See :doc:`/guide/thresholds` for when to use which.
"""

import math
from numbers import Real

import numpy as np
from sklearn.metrics import precision_recall_curve

from .._labels import as_anomaly_labels
from ..exceptions import ConfigurationError, InvalidImageError
from ._pixel_histogram import PixelHistogram, _best_cut, _check_both

__all__ = [
    "f1_optimal_threshold",
    "adaptive_threshold",
    "normalize_scores",
    "tune_thresholds",
]

# anomalib adds this to the denominator of its F1 (2PR / (P + R + eps)); it only matters
# when two thresholds have exactly the same F1, but "anomalib's value" includes its ties.
_ANOMALIB_F1_EPS = 1e-10


# ---------------------------------------------------------------------------- validation
def _float_dtype(array):
    """The dtype thresholds are computed in: the scores' own float type (the detectors
    compare in it), float64 for integer or boolean scores."""
    return array.dtype if np.issubdtype(array.dtype, np.floating) else np.dtype(np.float64)


def _labels_and_scores(y_true, scores):
    is_anomalous = as_anomaly_labels(y_true)
    scores = np.asarray(scores)
    scores = scores.astype(_float_dtype(scores), copy=False)
    if scores.shape != is_anomalous.shape:
        raise InvalidImageError(
            f"scores must have shape {is_anomalous.shape}, one per image of y_true, got "
            f"{scores.shape}"
        )
    bad = int(np.count_nonzero(~np.isfinite(scores)))
    if bad:
        raise InvalidImageError(
            f"{bad} of the {scores.size} scores are NaN or infinite; check the model that "
            "made them"
        )
    _check_both(int(np.count_nonzero(is_anomalous)), is_anomalous.size, "y_true", "image")
    return is_anomalous, scores


def _finite(value, name):
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigurationError(f"{name} must be a finite float, got {value!r}")
    return float(value)


# ---------------------------------------------------------------------------- image level
def _between(lo, hi, dtype):
    """The midpoint of ``lo < hi`` in ``dtype``, or ``lo`` itself when the midpoint rounds
    onto ``hi`` (neighbouring floats): always ``lo <= t < hi``, so ``s > t`` flags ``hi``
    and not ``lo`` in ``dtype``'s own comparisons."""
    t = dtype.type(float(lo) / 2 + float(hi) / 2)
    return t if lo <= t < hi else dtype.type(lo)


def f1_optimal_threshold(y_true, scores):
    """The threshold of best F1 for the rule "anomalous iff score > t", skpadim's rule.

    Every way of splitting the samples by a threshold is tried: between two consecutive
    distinct scores (the candidate is their midpoint) and below the lowest score (everything
    flagged; the candidate lies half the first gap below it). F1 is computed exactly from
    cumulative counts after one sort, in O(n log n). Among equal best F1 the largest
    threshold wins: the fewest alarms.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, H, W)
        Image labels, 1 (or True) anomalous and 0 normal (sklearn's -1/+1 outlier labels
        work too), or ground-truth masks, where an image is anomalous when any pixel is set.
        Both classes must occur.
    scores : array-like of shape (n_samples,)
        Anomaly scores, higher = more anomalous (``-score_samples``); finite.

    Returns
    -------
    threshold : float
        A value of the scores' float type (float32 scores: a float32 value), so that the
        detectors' own comparisons in that type flag exactly the samples it was chosen for.

    Raises
    ------
    InvalidImageError
        If a class is missing, the lengths differ, or a score is NaN or infinite.

    See Also
    --------
    adaptive_threshold : anomalib's value, for the rule ``score >= t``.
    tune_thresholds : Choose it on validation images and set it on a model.

    Examples
    --------
    >>> from skpadim.evaluation import f1_optimal_threshold
    >>> f1_optimal_threshold([0, 0, 1, 0, 1], [0.1, 0.2, 0.6, 0.7, 0.9])
    0.4
    >>> f1_optimal_threshold([0, 1, 1], [0.25, 0.5, 0.75])  # midway between 0.25 and 0.5
    0.375
    """
    is_anomalous, scores = _labels_and_scores(y_true, scores)
    values, group = np.unique(scores, return_inverse=True)
    defect = np.bincount(group[is_anomalous], minlength=len(values))
    normal = np.bincount(group[~is_anomalous], minlength=len(values))
    k, _ = _best_cut(normal, defect)
    dtype = scores.dtype
    if k > 0:
        return float(_between(values[k - 1], values[k], dtype))
    gap = values[1] - values[0] if len(values) > 1 else max(abs(float(values[0])), 1.0)
    t = dtype.type(float(values[0]) - float(gap) / 2)
    if not t < values[0]:  # the half gap vanished in rounding
        t = np.nextafter(values[0], dtype.type(-np.inf))
    return float(t)


def adaptive_threshold(y_true, scores):
    """anomalib's ``F1AdaptiveThreshold`` value: best F1 for the rule "anomalous iff
    score >= t".

    The threshold is the score at which ``2 P R / (P + R + 1e-10)`` peaks along
    scikit-learn's :func:`~sklearn.metrics.precision_recall_curve` (precision ``P`` and
    recall ``R`` of flagging every score ``>= t``), the first peak in ascending order of
    ``t``, as anomalib computes it. It is always one of the scores.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,) or (n_samples, H, W)
        Image labels or masks, as for :func:`f1_optimal_threshold`.
    scores : array-like of shape (n_samples,)
        Anomaly scores, higher = more anomalous; finite.

    Returns
    -------
    threshold : float
        The adaptive threshold ``t_a``, one of the scores.

    See Also
    --------
    f1_optimal_threshold : The same choice for skpadim's strict rule.

    Notes
    -----
    Both functions choose among the same splits of the sorted scores (every split between
    two distinct scores, and flagging everything), by the same F1; they differ in the rule
    and in ties. anomalib flags ``score >= t_a``; skpadim flags ``score > t``. Set on a
    skpadim model as it is, ``t_a`` would **not** flag the images scored exactly ``t_a``
    (at least one validation image), so it is not the threshold it was chosen to be:
    :func:`tune_thresholds` with ``image="adaptive"`` sets the largest float below
    ``t_a`` (in the scores' type) instead, which flags exactly what anomalib flags. When
    one split has the best F1, :func:`f1_optimal_threshold` flags the same images, with a
    threshold between ``t_a`` and the next lower distinct score (their midpoint), or below
    all scores when ``t_a`` is the lowest. When several splits tie, anomalib takes the one
    with the most alarms (its ``1e-10`` slightly favours larger ``P + R``, then the
    lowest threshold), :func:`f1_optimal_threshold` the one with the fewest.

    Examples
    --------
    >>> from skpadim.evaluation import adaptive_threshold, f1_optimal_threshold
    >>> y, scores = [0, 0, 0, 1, 1], [2.3, 1.6, 2.6, 7.9, 3.3]
    >>> adaptive_threshold(y, scores)        # anomalib flags scores >= 3.3
    3.3
    >>> f1_optimal_threshold(y, scores)      # skpadim flags scores > 2.95: the same images
    2.95
    """
    is_anomalous, scores = _labels_and_scores(y_true, scores)
    precision, recall, thresholds = precision_recall_curve(is_anomalous, scores)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = 2 * precision * recall / (precision + recall + _ANOMALIB_F1_EPS)
    # The last point (precision 1, recall 0) has no threshold and an F1 of 0.
    f1 = np.nan_to_num(f1[: len(thresholds)], nan=0.0)
    return float(thresholds[int(np.argmax(f1))])


# ---------------------------------------------------------------------------- normalising
def normalize_scores(scores, threshold):
    r"""Map anomaly scores (or map values) to [0, 1), with 0.5 exactly at the threshold.

    .. math::

       s' = \frac{\max(s, 0)}{\max(s, 0) + t}, \qquad t > 0,

    computed as :math:`1 - t / (\max(s, 0) + t)`, which rounding keeps non-decreasing.
    :math:`s' = 0.5` exactly at :math:`s = t`, :math:`s' > 0.5` exactly when :math:`s > t`
    (the values within rounding of 0.5 are set to the right side of it), and :math:`s'`
    increases strictly with :math:`s \ge 0` (up to rounding: float32 reaches 1 near
    :math:`s = 10^7 t`); negative scores map to 0. It needs nothing but the threshold.

    Parameters
    ----------
    scores : array-like
        Anomaly scores or maps, higher = more anomalous, of any shape.
    threshold : float
        The threshold the scores are judged by (``image_threshold_`` for scores,
        ``pixel_threshold_`` for maps); > 0.

    Returns
    -------
    normalized : ndarray of the shape of ``scores``
        float32 for float32 (or float16) input, float64 otherwise.

    Raises
    ------
    ValueError
        If ``threshold`` is not a finite positive float.

    Notes
    -----
    anomalib normalises by min and max instead: ``(s - t) / (max - min) + 0.5``, clipped to
    [0, 1], with ``min`` and ``max`` the extreme scores of the validation set. That puts
    0.5 at the threshold too, but needs those statistics stored with the model, and clips
    every score beyond them. The ratio here has no fitted statistic, is defined for any
    score, and keeps their order everywhere above 0.

    Examples
    --------
    >>> from skpadim.evaluation import normalize_scores
    >>> normalize_scores([0.0, 1.0, 2.0, 6.0, -3.0], threshold=2.0).round(4).tolist()
    [0.0, 0.3333, 0.5, 0.75, 0.0]
    """
    if isinstance(threshold, bool) or not isinstance(threshold, Real) or not (
            math.isfinite(threshold) and threshold > 0):
        raise ConfigurationError(
            f"threshold must be a finite float > 0, got {threshold!r}; s / (s + t) needs a "
            "positive threshold (shift scores that can be negative first)"
        )
    scores = np.asarray(scores)
    dtype = np.float32 if scores.dtype in (np.float16, np.float32) else np.float64
    s = np.maximum(scores.astype(dtype), 0)
    t = dtype(threshold)
    out = 1 - t / (s + t)
    # Within rounding of 0.5, put each value on its side of the threshold (as compared in
    # the scores' type, as the detectors compare).
    half = dtype(0.5)
    return np.where(scores > threshold, np.maximum(out, np.nextafter(half, dtype(1))),
                    np.minimum(out, half))


# ---------------------------------------------------------------------------- tuning
def _options(value, name, options):
    if value is None or value in options:
        return value
    return _finite(value, f"{name} (one of {', '.join(map(repr, options))}, a float or None)")


def tune_thresholds(model, X, y=None, masks=None, *, image="f1", pixel="f1", batch_size=32):
    """Choose a model's image and pixel thresholds on labelled validation images; set them.

    The model goes over ``X`` once, ``batch_size`` images at a time
    (:func:`skpadim.iter_inspect_images`): image scores are kept (one float per image),
    and each batch's maps are counted into a :class:`PixelHistogram` with its masks and
    dropped, so memory does not grow with the number of images. The thresholds are then
    set with ``set_thresholds``, so that ``predict``, saved files and ONNX exports use them.

    Parameters
    ----------
    model : Pipeline or detector
        A fitted pipeline ending in a skpadim detector (:func:`~skpadim.make_padim`,
        :func:`~skpadim.make_spade`), or a detector; changed in place.
    X : array-like or list of paths
        Validation images, in any form the model accepts.
    y : array-like of shape (n_samples,), default=None
        Image labels, 1 (or True) anomalous; None takes them from ``masks`` (an image is
        anomalous when its mask has a pixel set).
    masks : array-like of shape (n_samples, H, W), default=None
        Ground-truth masks at the maps' resolution (see
        :func:`skpadim.features.transform_masks`), indexed like ``X``; only
        ``masks[start:stop]`` of one batch is read at a time, so a memory map works.
    image : {"f1", "adaptive"}, float or None, default="f1"
        "f1": :func:`f1_optimal_threshold` of the scores; "adaptive": anomalib's
        :func:`adaptive_threshold` ``t_a``, set as the largest float below it, so that
        the model flags what anomalib flags (``score >= t_a``); a float: that threshold,
        in anomaly-score units; None: keep the model's.
    pixel : {"f1"}, float or None, default="f1"
        "f1": :func:`pixel_f1_optimal_threshold` of the maps, when ``masks`` are given
        (without masks the pixel threshold is kept); a float: that threshold, in map
        units; None: keep the model's.
    batch_size : int, default=32
        Images per batch.

    Returns
    -------
    model : Pipeline or detector
        The model, its thresholds set.

    Raises
    ------
    InvalidImageError
        If labels are needed and neither ``y`` nor ``masks`` is given, if a class is
        missing, or if lengths or shapes do not match.

    See Also
    --------
    skpadim.evaluation.threshold_metrics : How a threshold does on a test set.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import make_padim
    >>> from skpadim.evaluation import tune_thresholds
    >>> rng = np.random.RandomState(0)
    >>> train = rng.randint(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    >>> pipe = make_padim("resnet18", n_features=10, weights=None, resize=None, crop=None,
    ...                   random_state=0).fit(train)
    >>> valid = rng.randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> masks = np.zeros((6, 32, 32), dtype=bool)
    >>> valid[3:, 8:16, 8:16] = 255                     # three images with a white square
    >>> masks[3:, 8:16, 8:16] = True
    >>> pipe = tune_thresholds(pipe, valid, masks=masks)
    >>> pipe.predict(valid).tolist()
    [1, 1, 1, -1, -1, -1]
    >>> bool(pipe[-1].pixel_threshold_ != pipe[-1].image_threshold_)
    True
    """
    from .._batches import _split, iter_inspect_images
    from ..features._images import n_images

    image = _options(image, "image", ("f1", "adaptive"))
    pixel = _options(pixel, "pixel", ("f1",))
    n = n_images(X)
    if masks is not None and len(masks) != n:
        raise InvalidImageError(f"{n} images but {len(masks)} masks; give one mask per image")
    wants_labels = isinstance(image, str)
    if wants_labels and y is None and masks is None:
        raise InvalidImageError(
            f"image={image!r} chooses the threshold from labelled images: pass y (1 = "
            "anomalous) or masks, or a fixed image threshold"
        )
    hist = PixelHistogram() if pixel == "f1" and masks is not None else None
    scores, labels = [], []
    if wants_labels or hist is not None:
        for start, part in iter_inspect_images(model, X, batch_size):
            scores.append(part.anomaly_scores)
            if masks is not None:
                batch = np.asarray(masks[start : start + len(part.maps)])
                if hist is not None:
                    hist.update(batch, part.maps)
                labels.append(batch.reshape(len(batch), -1).any(axis=1))
    if wants_labels:
        scores = np.concatenate(scores)
        y_true = np.concatenate(labels) if y is None else y
        if image == "f1":
            image = f1_optimal_threshold(y_true, scores)
        else:
            t = np.asarray(adaptive_threshold(y_true, scores), dtype=_float_dtype(scores))
            image = float(np.nextafter(t, t.dtype.type(-np.inf)))
    pixel = hist.f1_optimal_threshold()[0] if hist is not None else (
        None if pixel == "f1" else pixel)
    target = model if hasattr(model, "set_thresholds") else _split(model)[1]
    target.set_thresholds(image=image, pixel=pixel)
    return model
