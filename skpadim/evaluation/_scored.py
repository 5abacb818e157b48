"""One test set as a model scored it, and what can be read off it.

:class:`ScoredSet` holds the set: labels, scores, defect types, and optionally maps and
masks at the maps' resolution. :func:`set_metrics` computes image AUROC, pixel AUROC and PRO
overall and per defect type, :func:`operating_metrics` what the set's verdicts and masks are
worth at the model's thresholds, and :func:`select_for_overlays` picks the images worth a
picture. They take what a model produced and fit nothing;
:func:`skpadim.evaluation.build_report` gathers their results for several sets.
"""

from typing import NamedTuple, Optional

import numpy as np

from . import _metrics as metrics

__all__ = ["ScoredSet", "set_metrics", "operating_metrics", "select_for_overlays"]


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
        :func:`skpadim.features.transform_masks`); None when the data set has none.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import ScoredSet
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
    >>> from skpadim.evaluation import ScoredSet, set_metrics
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
        ``image_threshold``: :func:`skpadim.evaluation.threshold_metrics` at the image
        threshold; ``image_f1_optimal``: the same at this set's F1-optimal threshold
        (:func:`skpadim.evaluation.f1_optimal_threshold`); ``pixel_threshold`` and
        ``pixel_f1_optimal`` likewise over pixels, when the set has maps and masks. An
        entry is None where it is undefined (one class missing). Confusion matrices are
        lists ``[[tn, fp], [fn, tp]]``, so the result is JSON as it is.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import ScoredSet, operating_metrics
    >>> scored = ScoredSet(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.3, 0.9]),
    ...                    np.array(["good", "good", "crack", "crack"]))
    >>> m = operating_metrics(scored, image_threshold=0.35)
    >>> m["image_threshold"]["f1"], m["image_threshold"]["confusion_matrix"]
    (0.5, [[1, 1], [1, 1]])
    >>> m["image_f1_optimal"]["threshold"], m["image_f1_optimal"]["f1"]
    (0.2, 0.8)
    """
    from ._pixel_histogram import pixel_f1_optimal_threshold
    from ._thresholds import f1_optimal_threshold

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
    >>> from skpadim.evaluation import ScoredSet, select_for_overlays
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
