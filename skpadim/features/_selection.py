"""PaDiM's random dimensionality reduction ("Rd"): keep a fixed random subset of channels."""

from numbers import Integral

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, _fit_context
from .._validation import validate_feature_maps
from .._versioning import VersionedStateMixin
from ..exceptions import InvalidImageError
from ._tile_samples import TileSamples

__all__ = ["RandomFeatureSelector"]


class RandomFeatureSelector(VersionedStateMixin, TransformerMixin, BaseEstimator):
    """Keep ``n_features`` channels drawn at random once, or exactly the ones given.

    The paper finds that a random subset of the embedding channels (100 of ResNet18's 448,
    550 of Wide ResNet-50-2's 1792) localises anomalies as well as all of them and better
    than PCA, at a fraction of the cost. The draw happens in ``fit`` from ``random_state``
    and is stored in ``feature_indices_``.

    Parameters
    ----------
    n_features : int or None, default=100
        Number of channels to keep; None keeps all of them (in their original order).
        Ignored when ``feature_indices`` is given.
    feature_indices : array-like of int or None, default=None
        Exact channels to keep, in this order (for instance those of an anomalib model).
    random_state : int, RandomState instance or None, default=None
        Seeds the draw.

    Attributes
    ----------
    feature_indices_ : ndarray of shape (n_selected,)
        Kept channels, in output order (drawn ones are sorted ascending).
    n_features_in_ : int
        Channels (or features, for 2-D input) seen in ``fit``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import RandomFeatureSelector
    >>> X = np.random.RandomState(0).normal(size=(3, 448, 8, 8))
    >>> selector = RandomFeatureSelector(n_features=100, random_state=0).fit(X)
    >>> selector.transform(X).shape
    (3, 100, 8, 8)
    >>> RandomFeatureSelector(feature_indices=[5, 2]).fit_transform(X).shape
    (3, 2, 8, 8)
    """

    _parameter_constraints = {
        "n_features": [None, Interval(Integral, 1, None, closed="left")],
        "feature_indices": [None, "array-like"],
        "random_state": ["random_state"],
    }

    def __init__(self, n_features=100, feature_indices=None, random_state=None):
        self.n_features = n_features
        self.feature_indices = feature_indices
        self.random_state = random_state

    def _validate(self, X, reset):
        return validate_feature_maps(self, X, reset=reset, dtype="numeric")

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Draw (or check) the channels to keep.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Only the number of channels is used.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : RandomFeatureSelector
            The fitted transformer.

        Raises
        ------
        InvalidImageError
            If ``n_features`` exceeds the channels of ``X``, or ``feature_indices`` are not
            distinct channels of ``X``.
        """
        X = self._validate(X, reset=True)
        d = X.shape[1]
        if self.feature_indices is not None:
            idx = np.asarray(self.feature_indices)
            if idx.ndim != 1 or idx.size == 0 or not np.issubdtype(idx.dtype, np.integer):
                raise InvalidImageError(
                    f"feature_indices must be a non-empty 1-D list of ints, got {idx!r}"
                )
            if idx.min() < 0 or idx.max() >= d or len(np.unique(idx)) != idx.size:
                raise InvalidImageError(
                    f"feature_indices must be distinct channels in [0, {d}), got values in "
                    f"[{idx.min()}, {idx.max()}]"
                )
            self.feature_indices_ = idx.astype(np.intp)
        elif self.n_features is None:
            self.feature_indices_ = np.arange(d)
        else:
            if self.n_features > d:
                # sklearn's check_fit2d_1feature asks for the words "1 feature(s)"; feature
                # maps are better described by their channels.
                what = f"{d} feature(s)" if X.ndim == 2 else f"{d} channels"
                raise InvalidImageError(
                    f"n_features={self.n_features} exceeds the {what} of the input; "
                    f"choose n_features <= {d}, or None to keep them all"
                )
            rng = check_random_state(self.random_state)
            self.feature_indices_ = np.sort(rng.choice(d, self.n_features, replace=False))
        return self

    def transform(self, X):
        """Keep the selected channels.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)

        Returns
        -------
        X_selected : ndarray of shape (n_samples, n_selected, h, w) or (n_samples, n_selected)
        """
        check_is_fitted(self)
        if isinstance(X, TileSamples):  # computed lazily: this step joins the chain
            return X.then(self)
        X = self._validate(X, reset=False)
        return X[:, self.feature_indices_]

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags
