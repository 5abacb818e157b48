"""PCA over patch embeddings: the reduction the PaDiM paper compares random selection with."""

from numbers import Integral

import numpy as np
import torch
from sklearn.base import (
    BaseEstimator,
    ClassNamePrefixFeaturesOutMixin,
    TransformerMixin,
)
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, _fit_context
from .._torch import from_numpy
from .._validation import validate_feature_maps
from .._versioning import VersionedStateMixin
from ..exceptions import InvalidImageError
from ._tile_samples import TileSamples

__all__ = ["PatchPCA"]


def _patch_rows(X):
    """(n, d, h, w) or (n, d) -> (n * h * w, d): every patch embedding is one row."""
    t = from_numpy(X)
    if t.ndim == 2:
        return t
    return t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])


class PatchPCA(VersionedStateMixin, ClassNamePrefixFeaturesOutMixin, TransformerMixin,
               BaseEstimator):
    """Project every patch embedding on the principal axes of the training embeddings.

    One projection is learnt from all patch vectors of all training images (every position
    pooled) and applied at every position, which is the paper's "PCA 100/200" reduction
    (Table II): feature maps ``(n, C, h, w)`` become ``(n, n_components, h, w)``. Statistics
    are accumulated in float64 one batch at a time, and ``partial_fit`` adds more images.
    With 2-D input it is an ordinary PCA (without whitening) of the rows.

    Parameters
    ----------
    n_components : int, default=100
        Number of principal axes kept (the paper: 100 or 200 of ResNet18's 448).
    batch_size : int, default=32
        Samples accumulated at once.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features_in_)
        Principal axes, by decreasing explained variance; signs follow sklearn's
        convention (largest absolute loading of each axis positive).
    explained_variance_ : ndarray of shape (n_components,)
        Variance of the patch embeddings along each axis (divided by ``n - 1``).
    mean_ : ndarray of shape (n_features_in_,)
        Mean patch embedding.
    n_samples_seen_ : int
        Number of patch vectors (samples x positions) seen.
    n_features_in_ : int
        Channels of the input.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import PatchPCA
    >>> X = np.random.RandomState(0).normal(size=(10, 448, 7, 7))
    >>> PatchPCA(n_components=100).fit_transform(X).shape
    (10, 100, 7, 7)
    """

    _parameter_constraints = {
        "n_components": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, n_components=100, batch_size=32):
        self.n_components = n_components
        self.batch_size = batch_size

    def _validate(self, X, reset):
        return validate_feature_maps(self, X, reset=reset, dtype=[np.float64, np.float32])

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Learn the principal axes of the patch embeddings.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps of training images.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : PatchPCA
            The fitted transformer.
        """
        self.__dict__.pop("_sums", None)
        return self._accumulate(self._validate(X, reset=True))

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Add more training images; equals one ``fit`` on all of them.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps of training images.
        y : Ignored
            Not used, present for API consistency.

        Returns
        -------
        self : PatchPCA
            The updated transformer.
        """
        first = "_sums" not in self.__dict__
        return self._accumulate(self._validate(X, reset=first))

    def _accumulate(self, X):
        d = X.shape[1]
        if self.n_components > d:
            raise InvalidImageError(
                f"n_components={self.n_components} exceeds the {d} channels of the input"
            )
        count, total, outer = self.__dict__.get(
            "_sums", (0, torch.zeros(d, dtype=torch.float64),
                      torch.zeros(d, d, dtype=torch.float64)))
        for start in range(0, X.shape[0], self.batch_size):
            rows = _patch_rows(X[start : start + self.batch_size]).to(torch.float64)
            count += rows.shape[0]
            total += rows.sum(dim=0)
            outer.addmm_(rows.T, rows)
        if count < 2:
            raise InvalidImageError(
                f"PCA needs at least 2 patch vectors, got n_samples={count}; fit on more images"
            )
        self._sums = (count, total, outer)
        mean = total / count
        cov = (outer - count * torch.outer(mean, mean)) / (count - 1)
        values, vectors = torch.linalg.eigh(cov)  # ascending
        order = torch.argsort(values, descending=True)[: self.n_components]
        components = vectors[:, order].T
        # sklearn's sign convention, so results do not flip between runs or platforms.
        signs = torch.sign(components[torch.arange(len(order)), components.abs().argmax(dim=1)])
        self.components_ = (components * signs[:, None]).numpy()
        self.explained_variance_ = values[order].clamp(min=0).numpy()
        self.mean_ = mean.numpy()
        self.n_samples_seen_ = count
        self._n_features_out = self.n_components
        return self

    def transform(self, X):
        """Project every patch embedding.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components, h, w) or (n_samples, n_components)
        """
        check_is_fitted(self)
        if isinstance(X, TileSamples):  # computed lazily: this step joins the chain
            return X.then(self)
        X = self._validate(X, reset=False)
        rows = _patch_rows(X).to(torch.float64) - torch.from_numpy(self.mean_)
        out = (rows @ torch.from_numpy(self.components_).T).to(
            torch.float32 if X.dtype == np.float32 else torch.float64).numpy()
        if X.ndim == 2:
            return out
        n, _, h, w = X.shape
        return out.reshape(n, h, w, -1).transpose(0, 3, 1, 2)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags
