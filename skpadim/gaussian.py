"""PaDiM's normality model: one multivariate Gaussian per patch position.

The maths lives in plain functions over torch tensors laid out positions-first,
``(n_positions, n_samples, n_features)``:

- :class:`PatchMoments` accumulates per-position sums in float64, one batch at a time, so fitting
  never holds more than one batch of embeddings (memory does not grow with the training set);
- :func:`precision_cholesky` turns covariances into Cholesky factors of the precision matrices,
  by Cholesky decomposition and triangular solves (never an explicit inverse);
- :func:`mahalanobis` measures distances with those factors.

:class:`PatchGaussian` is the thin scikit-learn estimator around them.
"""

from numbers import Integral, Real
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from ._compat import Interval, StrOptions, _fit_context
from ._detector import MAP_PARAMETER_CONSTRAINTS, AnomalyMapMixin
from ._torch import from_numpy, resolve_device
from ._validation import validate_feature_maps
from .exceptions import InvalidImageError

__all__ = [
    "PatchMoments",
    "precision_cholesky",
    "mahalanobis",
    "leave_one_out_distances",
    "PatchGaussian",
]


class PatchMoments(NamedTuple):
    """Running first and second moments of patch embeddings, per position, in float64.

    Sums are taken around a fixed ``shift`` (the first batch's mean) rather than around zero,
    so ``scatter`` does not lose digits to cancellation when features have large means.

    Attributes
    ----------
    count : int
        Number of samples seen.
    shift : torch.Tensor of shape (n_positions, n_features)
        Reference point the sums are taken around.
    sum : torch.Tensor of shape (n_positions, n_features)
        Sum of ``x - shift``.
    sum_sq : torch.Tensor of shape (n_positions, n_features, n_features)
        Sum of the outer products ``(x - shift)(x - shift)^T``.

    Examples
    --------
    >>> import torch
    >>> from skpadim.gaussian import PatchMoments
    >>> X = torch.randn(3, 10, 2, dtype=torch.float64,
    ...                 generator=torch.Generator().manual_seed(0))  # 3 positions, 10 samples
    >>> moments = PatchMoments.empty(X[:, :4].mean(dim=1))
    >>> moments = moments.update(X[:, :4]).update(X[:, 4:])          # two batches
    >>> moments.count
    10
    >>> bool(torch.allclose(moments.mean, X.mean(dim=1)))
    True
    >>> bool(torch.allclose(moments.covariance()[0], torch.cov(X[0].T)))
    True
    """

    count: int
    shift: torch.Tensor
    sum: torch.Tensor
    sum_sq: torch.Tensor

    @classmethod
    def empty(cls, shift):
        """Moments of no samples, to be summed around ``shift`` (positions, features)."""
        shift = shift.to(torch.float64)
        p, d = shift.shape
        zeros = dict(dtype=torch.float64, device=shift.device)
        return cls(0, shift, torch.zeros(p, d, **zeros), torch.zeros(p, d, d, **zeros))

    @classmethod
    def from_mean_covariance(cls, count, mean, covariance):
        """Moments that reproduce a known mean and (unregularised, n-1) covariance."""
        mean = mean.to(torch.float64)
        return cls(count, mean, torch.zeros_like(mean), covariance.to(torch.float64) * (count - 1))

    def update(self, X):
        """Add a batch ``X`` of shape (n_positions, batch, n_features); returns new moments.

        The sums are updated in place (``baddbmm_``), so no second (positions, d, d) buffer is
        ever allocated: this is what keeps fitting's memory flat.
        """
        centred = X.to(torch.float64) - self.shift[:, None, :]
        self.sum.add_(centred.sum(dim=1))
        self.sum_sq.baddbmm_(centred.transpose(1, 2), centred)
        return self._replace(count=self.count + X.shape[1])

    @property
    def mean(self):
        """Per-position mean, float64 (n_positions, n_features)."""
        return self.shift + self.sum / self.count

    def covariance(self, positions=slice(None)):
        """Sample covariance (divided by n - 1), float64, for a slice of positions."""
        s = self.sum[positions]
        outer = s[:, :, None] * s[:, None, :] / self.count
        return (self.sum_sq[positions] - outer) / (self.count - 1)


def precision_cholesky(covariance, reg_covar=0.0):
    """Cholesky factors of the precision matrices of a stack of covariances.

    Returns ``U``, upper triangular, with ``inv(covariance + reg_covar * I) = U @ U.T`` (the
    layout of ``precisions_cholesky_`` of :class:`sklearn.mixture.GaussianMixture`). Computed as
    ``U = inv(L).T`` for ``L = cholesky(covariance)`` by a triangular solve.

    Parameters
    ----------
    covariance : torch.Tensor of shape (n_positions, d, d)
        Symmetric positive semi-definite matrices.
    reg_covar : float, default=0.0
        Added to the diagonal first (the paper's epsilon is 0.01).

    Returns
    -------
    precision_cholesky : torch.Tensor of shape (n_positions, d, d)
        Upper-triangular factors ``U``, in the dtype and on the device of ``covariance``.

    Raises
    ------
    InvalidImageError
        If a regularised covariance is not positive definite.

    Examples
    --------
    >>> import torch
    >>> from skpadim.gaussian import precision_cholesky
    >>> cov = torch.tensor([[[4.0, 2.0], [2.0, 3.0]]], dtype=torch.float64)
    >>> U = precision_cholesky(cov)
    >>> bool(torch.allclose(U @ U.mT, torch.linalg.inv(cov))), bool(torch.equal(U, U.triu()))
    (True, True)
    >>> singular = torch.diag(torch.tensor([3.0, 0.0]))[None]
    >>> precision_cholesky(singular, reg_covar=1.0).tolist()      # inv(diag(4, 1)) = U U^T
    [[[0.5, 0.0], [0.0, 1.0]]]
    """
    d = covariance.shape[-1]
    eye = torch.eye(d, dtype=covariance.dtype, device=covariance.device)
    chol, info = torch.linalg.cholesky_ex(covariance + reg_covar * eye)
    if int(info.max()) > 0:
        raise InvalidImageError(
            f"a covariance matrix is not positive definite even with reg_covar={reg_covar}; "
            "increase reg_covar or use fewer features than training images"
        )
    inv_chol = torch.linalg.solve_triangular(chol, eye.expand_as(chol), upper=False)
    return inv_chol.transpose(-1, -2)


def mahalanobis(X, mean, prec_chol):
    """Mahalanobis distances ``sqrt((x - mean)^T P (x - mean))`` with ``P = U U^T``.

    Parameters
    ----------
    X : torch.Tensor of shape (n_positions, n_samples, d)
        Samples, positions first.
    mean : torch.Tensor of shape (n_positions, d)
        Each position's mean.
    prec_chol : torch.Tensor of shape (n_positions, d, d)
        Upper-triangular Cholesky factors of the precisions, from :func:`precision_cholesky`.

    Returns
    -------
    distances : torch.Tensor of shape (n_positions, n_samples)
        Distances (not squared) of each sample to its position's Gaussian.

    Examples
    --------
    >>> import torch
    >>> from skpadim.gaussian import mahalanobis, precision_cholesky
    >>> U = precision_cholesky(torch.diag(torch.tensor([4.0, 1.0]))[None])  # std 2 and 1
    >>> X = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [6.0, 4.0]]])             # 1 position
    >>> mahalanobis(X, torch.zeros(1, 2), U).tolist()
    [[1.0, 3.0, 5.0]]
    """
    # Centre into a (n_samples, n_positions, d) buffer. From feature maps (X is then a
    # permuted view of (n, d, positions)) that is one transpose per image, about three times
    # cheaper than gathering a positions-first copy; bmm then reads the positions-first view
    # of the buffer at full speed, since the rows of each position's matrix are contiguous.
    n_positions, n_samples, d = X.shape
    centred = torch.empty(n_samples, n_positions, d, dtype=X.dtype, device=X.device)
    torch.sub(X.transpose(0, 1), mean, out=centred)
    y = torch.bmm(centred.transpose(0, 1), prec_chol)
    return torch.linalg.vector_norm(y, dim=-1)


def leave_one_out_distances(distances, n_samples):
    """Distances of training samples to the model fitted without them, in closed form.

    A sample's distance to a Gaussian fitted on it is optimistic; refitting without it is
    what a new sample would see. For the sample covariance of ``n`` points, with ``r`` the
    squared in-sample distance, the leave-one-out squared distance is
    ``n**2 (n - 2) r / ((n - 1) ((n - 1)**2 - n r))`` (Sherman-Morrison on the rank-one
    downdate of the scatter matrix). Exact without regularisation; with ``reg_covar`` it
    neglects a relative change of ``1 / (n - 1)`` in the regulariser.

    Parameters
    ----------
    distances : ndarray
        In-sample Mahalanobis distances (not squared), any shape.
    n_samples : int
        Number of samples the model was fitted on; fewer than 3 returns ``distances``.

    Returns
    -------
    distances : ndarray
        Leave-one-out distances, same shape.

    Examples
    --------
    A Gaussian refitted without the first sample is as far from it as the closed form says:

    >>> import numpy as np
    >>> from skpadim.gaussian import leave_one_out_distances
    >>> X = np.random.RandomState(0).normal(size=(20, 3))
    >>> def distance(x, data):
    ...     diff = x - data.mean(axis=0)
    ...     return np.sqrt(diff @ np.linalg.solve(np.cov(data.T), diff))
    >>> in_sample = np.array([distance(x, X) for x in X])
    >>> loo = leave_one_out_distances(in_sample, n_samples=20)
    >>> bool(np.isclose(loo[0], distance(X[0], X[1:]))), bool((loo > in_sample).all())
    (True, True)
    """
    n = n_samples
    if n < 3:
        return distances
    r = np.square(distances, dtype=np.float64)
    # s = n r / (n - 1)**2 reaches 1 only for a sample that alone spans a direction (fewer
    # samples than dimensions, no regulariser); capping keeps such distances large but finite.
    s = np.minimum(n * r / (n - 1) ** 2, 1 - 1e-6)
    return np.sqrt(n**2 * (n - 2) * r / ((n - 1) ** 3 * (1 - s))).astype(distances.dtype)


def _pack_upper(U):
    """Keep the upper triangles of a stack of matrices: (p, d, d) -> (p, d(d+1)/2)."""
    rows, cols = torch.triu_indices(U.shape[-1], U.shape[-1])
    return U[:, rows, cols]


def _unpack_upper(packed, d, dtype):
    rows, cols = torch.triu_indices(d, d)
    U = torch.zeros(packed.shape[0], d, d, dtype=dtype)
    U[:, rows, cols] = packed.to(dtype)
    return U


class PatchGaussian(AnomalyMapMixin, BaseEstimator):
    """PaDiM's normality model: a Gaussian per patch position, scored by Mahalanobis distance.

    For every position ``(i, j)`` of the feature grid, ``fit`` estimates the mean and the
    sample covariance (divided by ``n - 1``) of the training embeddings, adds ``reg_covar``
    to the diagonal, and keeps the Cholesky factor of the precision matrix. A test patch's
    anomaly is its Mahalanobis distance to its position's Gaussian; distances are upsampled to
    ``map_size``, Gaussian-filtered, and the image score is the maximum of the map.

    Fitting streams over ``batch_size`` samples at a time and accumulates float64 sums, so
    memory does not grow with the number of training images, and :meth:`partial_fit` continues
    a fit with more images, giving the same model as one ``fit`` on all of them.

    With 2-D input ``(n_samples, n_features)`` the grid is a single position and this is a
    plain regularised Mahalanobis outlier detector.

    Parameters
    ----------
    reg_covar : float, default=0.01
        Added to the diagonal of each covariance (the paper's epsilon).
    contamination : float, default=0.01
        Fraction of normal images the threshold ``offset_`` flags as anomalous; see
        ``calibration`` for which scores it is taken from.
    calibration : {"leave-one-out", "in-sample"}, default="leave-one-out"
        Scores the threshold is computed from. "leave-one-out" scores each training image
        by the model fitted without it (in closed form, see
        :func:`~skpadim.gaussian.leave_one_out_distances`), which estimates how new normal images score, so
        about ``contamination`` of them are flagged. "in-sample" uses the fitted model's own
        scores of the training images, sklearn's convention (exactly ``contamination`` of
        the training images are flagged), which is optimistic: in-sample distances are
        small, and with 100 dimensions and a few hundred images many new normal images
        would be flagged.
    batch_size : int, default=32
        Samples processed at once in ``fit`` and when scoring. Results do not depend on it.
    map_size : int, (int, int) or None, default=None
        Size of the anomaly maps, normally the size of the image the network saw. None
        means four times the patch grid, which is the input size for every built-in backbone
        (their first tapped layer has stride 4); :func:`skpadim.make_padim` sets it
        explicitly.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        How distance maps are upsampled (the paper: bicubic; anomalib: bilinear).
    sigma : float, default=4.0
        Standard deviation of the Gaussian filter on the maps, in map pixels. 0 disables it.
    truncate : float, default=4.0
        Filter radius in standard deviations.
    mode : {"reflect", "mirror", "nearest", "constant", "wrap"}, default="reflect"
        Border mode of the filter, in scipy.ndimage's names (anomalib's is "mirror").
    storage_dtype : {"float32", "float16"}, default="float32"
        Precision in which the Cholesky factors are stored. float16 halves the fitted model's
        size at a small cost in accuracy (see ``benchmarks/bench_padim.py``).
    device : str, default="auto"
        Where moments are accumulated and distances computed: "auto" uses CUDA when
        available, else the CPU. Results come back as CPU arrays and the fitted model is
        stored on the CPU, so it loads anywhere.

    Attributes
    ----------
    n_features_in_ : int
        Number of channels (or features for 2-D input) seen in ``fit``.
    grid_shape_ : tuple of int
        ``(h, w)`` of the feature maps; ``(1, 1)`` for 2-D input.
    n_samples_seen_ : int
        Number of training samples the model is built from.
    mean_ : ndarray of shape (h * w, n_features_in_), dtype float32
        Per-position means, positions in row-major order.
    precisions_cholesky_ : ndarray of shape (h * w, n_features_in_, n_features_in_)
        Upper-triangular Cholesky factors of the precision matrices (inverse regularised
        covariances), as in :class:`sklearn.mixture.GaussianMixture`. Stored packed; this
        attribute unpacks them.
    covariances_ : ndarray of shape (h * w, n_features_in_, n_features_in_)
        Regularised covariances, recomputed from ``precisions_cholesky_`` on access.
    offset_ : float
        Threshold on ``score_samples``; ``decision_function = score_samples - offset_``.

    See Also
    --------
    make_padim : The paper's whole pipeline in one call.
    sklearn.covariance.EmpiricalCovariance : The 1x1-grid case without regularisation.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import PatchGaussian
    >>> rng = np.random.RandomState(0)
    >>> train = rng.normal(size=(50, 8, 4, 4)).astype(np.float32)   # 50 maps, 8 channels
    >>> test = rng.normal(size=(2, 8, 4, 4)).astype(np.float32)
    >>> test[1, :, 1, 2] += 6                                        # one odd patch
    >>> model = PatchGaussian().fit(train)
    >>> model.patch_distances(test).shape
    (2, 4, 4)
    >>> model.anomaly_maps(test).shape                               # 4 x the grid
    (2, 16, 16)
    >>> model.predict(test)
    array([ 1, -1])
    """

    _parameter_constraints = {
        "reg_covar": [Interval(Real, 0, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "storage_dtype": [StrOptions({"float32", "float16"})],
        "calibration": [StrOptions({"leave-one-out", "in-sample"})],
        "device": [str, torch.device],
        **MAP_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        reg_covar=0.01,
        contamination=0.01,
        calibration="leave-one-out",
        batch_size=32,
        map_size=None,
        interpolation="bicubic",
        sigma=4.0,
        truncate=4.0,
        mode="reflect",
        storage_dtype="float32",
        device="auto",
    ):
        self.reg_covar = reg_covar
        self.contamination = contamination
        self.calibration = calibration
        self.batch_size = batch_size
        self.map_size = map_size
        self.interpolation = interpolation
        self.sigma = sigma
        self.truncate = truncate
        self.mode = mode
        self.storage_dtype = storage_dtype
        self.device = device

    # ------------------------------------------------------------------ input handling
    def _validate(self, X, reset):
        X = validate_feature_maps(self, X, reset=reset, dtype=[np.float64, np.float32],
                                  ensure_min_samples=2 if reset else 1)
        shape = (1, 1) if X.ndim == 2 else X.shape[2:]
        if not reset and ((X.ndim == 2) != self._flat_ or shape != self.grid_shape_):
            raise InvalidImageError(
                f"feature maps of shape {X.shape[1:]} differ from the "
                f"{(self.n_features_in_, *self.grid_shape_)} seen in fit; score images "
                "preprocessed like the training images (same resize/crop and layers)"
            )
        return X, shape

    @staticmethod
    def _positions_first(X):
        """(n, d, h, w) or (n, d) numpy -> (h*w, n, d) torch, no copy where possible."""
        t = from_numpy(X)
        if t.ndim == 2:
            return t[None]
        n, d = t.shape[:2]
        return t.reshape(n, d, -1).permute(2, 0, 1)

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Estimate the per-position Gaussians from normal training samples.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps of normal images (at least 2).
        y : array-like of shape (n_samples,) or (n_samples, H, W), default=None
            Optional image labels (1 or -1 = anomalous) or masks: anomalous samples are
            left out, so a labelled set can be passed whole (as GridSearchCV's refit does).

        Returns
        -------
        self : PatchGaussian
            The fitted estimator.
        """
        self._reset()
        self._check_map_size()
        X, _ = self._validate(X, reset=True)
        X = self._normal_samples(X, y)
        self._accumulate(X)
        self._set_offset(self._training_scores(X))
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Add more normal samples to the model (or start one).

        The resulting Gaussians equal those of a single ``fit`` on all samples seen (up to
        floating-point rounding). ``offset_`` is re-estimated from the scores of this call's
        samples, since earlier samples are not kept.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps of normal images.
        y : array-like of shape (n_samples,) or (n_samples, H, W), default=None
            Optional labels or masks; anomalous samples are left out, as in ``fit``.

        Returns
        -------
        self : PatchGaussian
            The updated estimator.
        """
        first = not hasattr(self, "n_samples_seen_")
        if first:
            self._check_map_size()
        X, _ = self._validate(X, reset=first)
        X = self._normal_samples(X, y, min_samples=2 if first else 1)
        self._accumulate(X)
        self._set_offset(self._training_scores(X))
        return self

    def _training_scores(self, X):
        """``score_samples`` of training samples, as ``calibration`` asks, to set ``offset_``."""
        distances = self.patch_distances(X)
        if self.calibration == "leave-one-out":
            distances = leave_one_out_distances(distances, self.n_samples_seen_)
        return -self._distances_to_scores(distances)

    def _reset(self):
        """Forget what was learnt, so that the next partial_fit starts a new model."""
        for attr in ("_moments", "n_samples_seen_"):
            self.__dict__.pop(attr, None)

    def _accumulate(self, X):
        moments = self.__dict__.get("_moments")
        device = resolve_device(self.device)
        if moments is None and hasattr(self, "n_samples_seen_"):
            moments = self._moments_from_fitted()
        if moments is not None and moments.sum.device != device:
            moments = PatchMoments(*(t.to(device) if torch.is_tensor(t) else t for t in moments))
        for start in range(0, X.shape[0], self.batch_size):
            batch = self._positions_first(X[start : start + self.batch_size]).to(device)
            if moments is None:
                moments = PatchMoments.empty(batch.to(torch.float64).mean(dim=1))
            moments = moments.update(batch)
        # Kept for partial_fit, on the CPU: a GPU's memory goes to scoring.
        self._moments = PatchMoments(*(t.cpu() if torch.is_tensor(t) else t for t in moments))
        self._flat_ = X.ndim == 2
        self.grid_shape_ = (1, 1) if X.ndim == 2 else tuple(X.shape[2:])
        self.n_samples_seen_ = moments.count
        self._finalize(moments)

    def _finalize(self, moments, chunk=256):
        """Regularise, factorise and store the model (chunks bound the float64 temporaries)."""
        dtype = torch.float16 if self.storage_dtype == "float16" else torch.float32
        packed = []
        for start in range(0, moments.sum.shape[0], chunk):
            cov = moments.covariance(slice(start, start + chunk))
            packed.append(_pack_upper(precision_cholesky(cov, self.reg_covar)).to(dtype).cpu())
        self.mean_ = moments.mean.to(torch.float32).cpu().numpy()
        self._packed_chol = torch.cat(packed)
        if not torch.isfinite(self._packed_chol).all():
            raise InvalidImageError(
                f"the precision factors overflow {self.storage_dtype} (features with very "
                f"small variance and reg_covar={self.reg_covar}); use storage_dtype='float32' "
                "or a larger reg_covar"
            )
        self.reg_covar_ = float(self.reg_covar)
        self.__dict__.pop("_chol_cache", None)

    def _moments_from_fitted(self):
        """Rebuild the sums from a model restored from disk, where they are not saved."""
        U = torch.from_numpy(self.precisions_cholesky_).to(torch.float64)
        cov = self._covariances(U)
        eye = torch.eye(cov.shape[-1], dtype=torch.float64)
        return PatchMoments.from_mean_covariance(
            self.n_samples_seen_, torch.from_numpy(self.mean_), cov - self.reg_covar_ * eye
        )

    # ------------------------------------------------------------------ fitted state
    @property
    def precisions_cholesky_(self):
        check_is_fitted(self, "mean_")
        return self._chol(torch.float32).numpy().copy()

    @property
    def covariances_(self):
        check_is_fitted(self, "mean_")
        U = torch.from_numpy(self.precisions_cholesky_).to(torch.float64)
        return self._covariances(U).numpy()

    @staticmethod
    def _covariances(U):
        # covariance = inv(U U^T) = V V^T with V = inv(U^T), a triangular solve.
        eye = torch.eye(U.shape[-1], dtype=U.dtype).expand_as(U)
        V = torch.linalg.solve_triangular(U.transpose(-1, -2), eye, upper=False)
        return V @ V.transpose(-1, -2)

    def _chol(self, dtype, device="cpu"):
        """Unpacked factors; cached in memory (not on disk) since scoring reads them often."""
        cache = self.__dict__.get("_chol_cache")
        if cache is None or cache.dtype != dtype or cache.device != torch.device(device):
            cache = _unpack_upper(self._packed_chol, self.mean_.shape[1], dtype).to(device)
            self._chol_cache = cache
        return cache

    def __getstate__(self):
        state = self.__dict__.copy()
        # The float64 sums (8x the packed factors) and the unpacked cache are rebuilt on
        # demand; leaving them out is what keeps saved models small.
        state.pop("_moments", None)
        state.pop("_chol_cache", None)
        return state

    # ------------------------------------------------------------------ scoring
    def _patch_distances(self, X):
        X, shape = self._validate(X, reset=False)
        # 2-D input is one position: float64 costs nothing there and keeps sklearn's
        # batch-invariance checks exact.
        dtype = torch.float64 if X.ndim == 2 else torch.float32
        device = resolve_device(self.device)
        mean = torch.from_numpy(self.mean_).to(device, dtype)
        chol = self._chol(dtype, device)
        out = []
        with torch.inference_mode():
            for start in range(0, X.shape[0], self.batch_size):
                batch = self._positions_first(X[start : start + self.batch_size])
                out.append(mahalanobis(batch.to(device, dtype), mean, chol).T.cpu())
        d = torch.cat(out).numpy()
        return d[:, 0] if X.ndim == 2 else d.reshape(X.shape[0], *shape)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags
