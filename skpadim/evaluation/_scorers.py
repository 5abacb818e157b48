"""Scikit-learn scorers: the image and pixel ROC AUC and the PRO score of a fitted model.

Each scorer has the signature ``scorer(estimator, X, y) -> float`` that
:class:`~sklearn.model_selection.GridSearchCV` and friends call: it makes the model's anomaly
scores (``-score_samples``) or anomaly maps (:func:`skpadim.anomaly_maps`) for ``X``, and
compares them with the labels or masks ``y`` by the metric of
:mod:`skpadim.evaluation._metrics` that it is named after.
"""

from functools import partial

import numpy as np

from ._metrics import _check_max_fpr, image_auroc, pixel_auroc, pro_score

__all__ = ["image_auroc_scorer", "pixel_auroc_scorer", "pro_scorer", "make_pro_scorer"]


def image_auroc_scorer(estimator, X, y):
    """Image ROC AUC of a fitted outlier detector, as a scikit-learn scorer.

    The anomaly scores are ``-estimator.score_samples(X)``, since scikit-learn's
    ``score_samples`` is higher for more normal samples.

    Parameters
    ----------
    estimator : object
        Fitted estimator or pipeline with ``score_samples``.
    X : array-like or list of str
        Test images, in any form ``estimator`` accepts.
    y : array-like of shape (n_samples,) or (n_samples, H, W)
        Image labels or ground-truth masks, as for :func:`image_auroc`.

    Returns
    -------
    auroc : float

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.covariance import EllipticEnvelope
    >>> from skpadim.evaluation import image_auroc_scorer
    >>> rng = np.random.RandomState(0)
    >>> detector = EllipticEnvelope(random_state=0).fit(rng.normal(size=(50, 2)))
    >>> X = np.r_[rng.normal(size=(5, 2)), rng.normal(loc=8, size=(5, 2))]
    >>> image_auroc_scorer(detector, X, [0] * 5 + [1] * 5)
    1.0
    """
    return image_auroc(y, -np.asarray(estimator.score_samples(X)))


def _anomaly_maps(estimator, X):
    # Imported here, not at the top: the pipeline module sits above the estimators, and
    # the metrics must stay importable without it.
    from ..pipeline import anomaly_maps

    return anomaly_maps(estimator, X)


def pixel_auroc_scorer(estimator, X, y):
    """Pixel ROC AUC of a fitted model's anomaly maps, as a scikit-learn scorer.

    Parameters
    ----------
    estimator : object
        Fitted pipeline or estimator that :func:`skpadim.anomaly_maps` accepts.
    X : array-like or list of str
        Test images, in any form ``estimator`` accepts.
    y : array-like of shape (n_samples, H, W)
        Ground-truth masks at the resolution of the anomaly maps.

    Returns
    -------
    auroc : float

    See Also
    --------
    pixel_auroc : The metric on masks and maps.

    Examples
    --------
    Fitting needs a backbone, so those lines are not run here:

    >>> from sklearn.model_selection import GridSearchCV
    >>> from skpadim.evaluation import pixel_auroc_scorer, pro_scorer
    >>> scoring = {"pixel_auroc": pixel_auroc_scorer, "pro": pro_scorer}
    >>> search = GridSearchCV(model, param_grid, scoring=scoring, refit="pro")  # doctest: +SKIP
    >>> search.fit(images, masks)  # doctest: +SKIP
    """
    return pixel_auroc(y, _anomaly_maps(estimator, X))


def pro_scorer(estimator, X, y, *, max_fpr=0.3):
    """PRO score of a fitted model's anomaly maps, as a scikit-learn scorer.

    Parameters
    ----------
    estimator : object
        Fitted pipeline or estimator that :func:`skpadim.anomaly_maps` accepts.
    X : array-like or list of str
        Test images, in any form ``estimator`` accepts.
    y : array-like of shape (n_samples, H, W)
        Ground-truth masks at the resolution of the anomaly maps.
    max_fpr : float, default=0.3
        Upper limit of the false positive rate; :func:`make_pro_scorer` fixes another.

    Returns
    -------
    score : float

    See Also
    --------
    pro_score : The metric on masks and maps.

    Examples
    --------
    Fitting needs a backbone, so those lines are not run here:

    >>> from sklearn.model_selection import GridSearchCV
    >>> from skpadim.evaluation import pro_scorer
    >>> search = GridSearchCV(model, param_grid, scoring=pro_scorer)  # doctest: +SKIP
    >>> search.fit(images, masks)  # doctest: +SKIP
    """
    return pro_score(y, _anomaly_maps(estimator, X), max_fpr=max_fpr)


def make_pro_scorer(max_fpr=0.3):
    """Make a PRO scorer with another limit of the false positive rate.

    Parameters
    ----------
    max_fpr : float, default=0.3
        Upper limit of the false positive rate, in (0, 1].

    Returns
    -------
    scorer : callable
        ``scorer(estimator, X, y) -> float``, :func:`pro_scorer` with ``max_fpr`` fixed.
        It pickles, so it works with ``n_jobs``.

    Examples
    --------
    >>> from skpadim.evaluation import make_pro_scorer
    >>> scorer = make_pro_scorer(max_fpr=0.05)
    >>> scorer.keywords
    {'max_fpr': 0.05}
    """
    _check_max_fpr(max_fpr)
    return partial(pro_scorer, max_fpr=max_fpr)
