"""Cross-validation for anomaly detectors, which must train on normal samples only."""

from numbers import Integral

import numpy as np
from sklearn.model_selection import BaseCrossValidator, StratifiedKFold

from .._labels import as_anomaly_labels
from ..exceptions import InvalidImageError

__all__ = ["NormalOnlyKFold"]


class NormalOnlyKFold(BaseCrossValidator):
    """K-fold splits whose training folds hold only normal samples.

    Normal and anomalous samples are each spread over ``n_splits`` test folds (stratified,
    so every test fold holds both kinds and image AUROC is defined); each training fold is
    the normal samples outside its test fold, and anomalies are never trained on. Every
    sample is in exactly one test fold, so ``cross_val_predict`` works too.

    Parameters
    ----------
    n_splits : int, default=5
        Number of folds, at least 2.
    shuffle : bool, default=False
        Shuffle within each class before splitting.
    random_state : int, RandomState instance or None, default=None
        Seeds the shuffle.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import NormalOnlyKFold
    >>> y = np.array([0, 0, 0, 0, 0, 0, 1, 1])          # 1 = anomalous
    >>> for train, test in NormalOnlyKFold(n_splits=2).split(np.zeros(8), y):
    ...     print(train, test)
    [3 4 5] [0 1 2 6]
    [0 1 2] [3 4 5 7]
    """

    def __init__(self, n_splits=5, shuffle=False, random_state=None):
        if not isinstance(n_splits, Integral) or n_splits < 2:
            raise ValueError(f"n_splits must be an int >= 2, got {n_splits!r}")
        self.n_splits = n_splits
        self.shuffle = shuffle
        self.random_state = random_state

    def split(self, X, y, groups=None):
        """Yield ``(train, test)`` index arrays; ``train`` holds normal samples only.

        Parameters
        ----------
        X : array-like or list
            Samples; only their number is used.
        y : array-like of shape (n_samples,) or (n_samples, H, W)
            Image labels (1 or -1 = anomalous, see :func:`skpadim.evaluation.image_auroc`) or
            ground-truth masks (an image with any defective pixel is anomalous).
        groups : Ignored
            Not used, present for API consistency.

        Yields
        ------
        train : ndarray
        test : ndarray
        """
        anomalous = as_anomaly_labels(y)
        if len(anomalous) != len(X):
            raise InvalidImageError(f"{len(X)} samples but {len(anomalous)} labels")
        counts = np.bincount(anomalous.astype(int), minlength=2)
        if counts.min() < self.n_splits:
            raise InvalidImageError(
                f"need at least n_splits={self.n_splits} normal and anomalous samples each, "
                f"got {counts[0]} normal and {counts[1]} anomalous"
            )
        folds = StratifiedKFold(self.n_splits, shuffle=self.shuffle,
                                random_state=self.random_state)
        for _, test in folds.split(np.zeros(len(anomalous)), anomalous):
            in_test = np.zeros(len(anomalous), dtype=bool)
            in_test[test] = True
            yield np.flatnonzero(~in_test & ~anomalous), test

    def get_n_splits(self, X=None, y=None, groups=None):
        """Number of splits, ``n_splits``."""
        return self.n_splits
