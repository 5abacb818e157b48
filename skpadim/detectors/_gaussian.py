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

from .._compat import Interval, StrOptions, _fit_context
from ._base import MAP_PARAMETER_CONSTRAINTS, AnomalyMapMixin
from ._calibration import SystematicSample
from .._torch import from_numpy, resolve_device
from .._validation import validate_feature_maps
from .._versioning import VersionedStateMixin
from ..exceptions import InvalidImageError
from ._shrinkage import covariance_traces, ledoit_wolf_shrinkage, oas_shrinkage, shrunk_covariance

__all__ = [
    "PatchMoments",
    "pack_upper",
    "unpack_symmetric",
    "unpack_upper",
    "precision_cholesky",
    "mahalanobis",
    "leave_one_out_distances",
    "PatchGaussian",
]


def _triu(d, device=None):
    """Row and column indices of the upper triangle of a ``d x d`` matrix, row-major."""
    return torch.triu_indices(d, d, device=device).unbind(0)


def pack_upper(M):
    """Keep the upper triangles of a stack of matrices: (p, d, d) -> (p, d(d+1)/2).

    Examples
    --------
    >>> import torch
    >>> from skpadim.gaussian import pack_upper, unpack_symmetric
    >>> M = torch.tensor([[[1.0, 2.0], [2.0, 3.0]]])
    >>> pack_upper(M).tolist()
    [[1.0, 2.0, 3.0]]
    >>> bool(torch.equal(unpack_symmetric(pack_upper(M), 2), M))
    True
    """
    d = M.shape[-1]
    flat = M.reshape(M.shape[0], d * d)
    rows, cols = _triu(d, M.device)
    return flat.index_select(1, rows * d + cols)


def _unpack(packed, d, symmetric, dtype=None):
    dtype = packed.dtype if dtype is None else dtype
    rows, cols = _triu(d, packed.device)
    out = torch.zeros(packed.shape[0], d * d, dtype=dtype, device=packed.device)
    out[:, rows * d + cols] = packed.to(dtype)
    if symmetric:
        out[:, cols * d + rows] = packed.to(dtype)
    return out.view(packed.shape[0], d, d)


def unpack_symmetric(packed, d, dtype=None):
    """Inverse of :func:`pack_upper` for symmetric matrices: (p, d(d+1)/2) -> (p, d, d).

    Examples
    --------
    >>> import torch
    >>> from skpadim.gaussian import unpack_symmetric
    >>> unpack_symmetric(torch.tensor([[1.0, 2.0, 3.0]]), 2).tolist()
    [[[1.0, 2.0], [2.0, 3.0]]]
    """
    return _unpack(packed, d, symmetric=True, dtype=dtype)


def unpack_upper(packed, d, dtype=None):
    """Inverse of :func:`pack_upper` for upper-triangular matrices (zeros below).

    Examples
    --------
    >>> import torch
    >>> from skpadim.gaussian import unpack_upper
    >>> unpack_upper(torch.tensor([[1.0, 2.0, 3.0]]), 2).tolist()
    [[[1.0, 2.0], [0.0, 3.0]]]
    """
    return _unpack(packed, d, symmetric=False, dtype=dtype)


class PatchMoments(NamedTuple):
    """Running first and second moments of patch embeddings, per position, in float64.

    Sums are taken around a fixed ``shift`` (the first batch's mean, rounded to float32)
    rather than around zero, so ``scatter`` does not lose digits to cancellation when
    features have large means. Only the upper triangle of each position's scatter matrix is
    kept (it is symmetric), which halves the largest buffer of a fit.

    Moments are *mergeable*: :meth:`merge` combines the moments of two disjoint sets of
    samples, whatever their shifts, into exactly the moments of their union (the pairwise
    update of Chan, Golub and LeVeque). That is what makes ``partial_fit``, streaming and
    distributed fits one computation: each worker updates its own moments, a reduction
    merges them, and the factors are computed once at the end
    (:meth:`skpadim.PatchGaussian.from_moments`). In Ray or Spark, use ``merge`` as the
    combine function of a tree aggregation; moments pickle as plain tensors.

    Attributes
    ----------
    count : int
        Number of samples seen.
    shift : torch.Tensor of shape (n_positions, n_features)
        Reference point the sums are taken around.
    sum : torch.Tensor of shape (n_positions, n_features)
        Sum of ``x - shift``.
    sum_sq : torch.Tensor of shape (n_positions, n_features * (n_features + 1) // 2)
        Upper triangles (row-major, :func:`pack_upper`) of the sums of the outer products
        ``(x - shift)(x - shift)^T``.
    sum_quartic : torch.Tensor of shape (n_positions,) or None
        Sum of ``||x - shift||^4``; None where unknown (:meth:`from_mean_covariance`).
    sum_cubic : torch.Tensor of shape (n_positions, n_features) or None
        Sum of ``||x - shift||^2 (x - shift)``; None where unknown.

    Notes
    -----
    ``sum_quartic`` and ``sum_cubic`` are what Ledoit-Wolf shrinkage needs on top of the
    first two moments (:meth:`centred_fourth_moment`). They cost ``n_positions *
    (n_features + 1)`` float64 more, about ``2 / n_features`` of ``sum_sq`` (2.5 MB for 100
    features on a 56x56 grid, next to its 127 MB).

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
    >>> a = PatchMoments.empty(X[:, :6].mean(dim=1)).update(X[:, :6])   # two workers
    >>> b = PatchMoments.empty(X[:, 6:].mean(dim=1)).update(X[:, 6:])
    >>> bool(torch.allclose(a.merge(b).covariance(), moments.covariance()))
    True
    """

    count: int
    shift: torch.Tensor
    sum: torch.Tensor
    sum_sq: torch.Tensor
    # Defaults keep moments built from the first four fields (older code) valid; they then
    # lack the fourth moments, which only Ledoit-Wolf shrinkage asks for.
    sum_quartic: torch.Tensor = None
    sum_cubic: torch.Tensor = None

    @classmethod
    def empty(cls, shift):
        """Moments of no samples, to be summed around ``shift`` (positions, features)."""
        # Rounded to float32 so that float32 features minus the shift are computed exactly
        # in float32 (see update).
        shift = shift.to(torch.float32).to(torch.float64)
        p, d = shift.shape
        zeros = dict(dtype=torch.float64, device=shift.device)
        return cls(0, shift, torch.zeros(p, d, **zeros),
                   torch.zeros(p, d * (d + 1) // 2, **zeros),
                   torch.zeros(p, **zeros), torch.zeros(p, d, **zeros))

    @classmethod
    def from_mean_covariance(cls, count, mean, covariance):
        """Moments that reproduce a known mean and (unregularised, n-1) covariance.

        The fourth moments are unknown (``sum_quartic`` and ``sum_cubic`` are None), and stay
        so through :meth:`update` and :meth:`merge`.
        """
        mean = mean.to(torch.float64)
        scatter = pack_upper(covariance.to(torch.float64) * (count - 1))
        return cls(count, mean, torch.zeros_like(mean), scatter)

    @property
    def has_fourth_moments(self):
        """Whether ``sum_quartic`` and ``sum_cubic`` are known."""
        return self.sum_quartic is not None and self.sum_cubic is not None

    def _copy(self):
        return self._replace(**{f: getattr(self, f).clone() for f in self._fields[2:]
                                if getattr(self, f) is not None})

    @property
    def n_features(self):
        return self.shift.shape[1]

    def update(self, X, chunk_bytes=1 << 23):
        """Add a batch ``X`` of shape (n_positions, batch, n_features); returns new moments.

        The sums are updated in place, a block of positions at a time, so the temporaries
        stay within about ``chunk_bytes`` whatever the number of positions: this is what
        keeps fitting's memory flat. Products are formed and summed in float64: with fewer
        samples than dimensions the covariances are ill-conditioned, and float32 products
        would cost the factors digits.
        """
        p, b, d = X.shape
        work = torch.float64
        rows, cols = _triu(d, X.device)
        flat = rows * d + cols
        step = max(1, chunk_bytes // max(1, (d * d + b * d) * 8))
        for a in range(0, p, step):
            centred = (X[a : a + step].to(work) - self.shift[a : a + step, None, :].to(work))
            self.sum[a : a + step] += centred.sum(dim=1, dtype=torch.float64)
            scatter = torch.bmm(centred.transpose(1, 2), centred)
            self.sum_sq[a : a + step] += scatter.reshape(-1, d * d).index_select(1, flat)
            if self.has_fourth_moments:
                norm_sq = centred.square().sum(dim=2)
                self.sum_quartic[a : a + step] += norm_sq.square().sum(dim=1)
                self.sum_cubic[a : a + step] += torch.bmm(norm_sq[:, None, :], centred)[:, 0]
        return self._replace(count=self.count + b)

    def merge(self, other):
        """Moments of the union of two disjoint sample sets (exact, any two shifts).

        ``other``'s sums are moved to this shift (for ``delta = other.shift - shift``:
        ``sum + n delta`` and ``sum_sq + delta sum^T + sum delta^T + n delta delta^T``;
        likewise, expanding ``||y + delta||^2 = ||y||^2 + 2 y.delta + ||delta||^2``, the
        fourth moments) and added. Returns new moments; neither operand is modified. The
        fourth moments of the result are known only where both operands' are.
        """
        if self.shift.shape != other.shift.shape:
            raise InvalidImageError(
                f"cannot merge moments of {tuple(other.shift.shape)} (positions, features) "
                f"into {tuple(self.shift.shape)}; both must come from the same pipeline and "
                "image size"
            )
        if other.count == 0:
            return self._copy()
        if self.count == 0:
            return other._copy()
        device = self.sum.device
        o_sum, o_sq = other.sum.to(device), other.sum_sq.to(device)
        delta = other.shift.to(device) - self.shift
        n = other.count
        rows, cols = _triu(self.n_features, device)
        moved_sq = (o_sq + delta[:, rows] * o_sum[:, cols] + o_sum[:, rows] * delta[:, cols]
                    + n * delta[:, rows] * delta[:, cols])
        quartic = cubic = None
        if self.has_fourth_moments and other.has_fourth_moments:
            # Over other's samples, y = x - other.shift, y' = y + delta, e = ||delta||^2:
            # ||y'||^4 = (||y||^2 + 2 y.delta + e)^2 and ||y'||^2 y' = (...)(y + delta).
            o_quartic, o_cubic = other.sum_quartic.to(device), other.sum_cubic.to(device)
            q_delta = _packed_matvec(o_sq, delta, rows, cols)          # sum (y.delta) y
            trace_q = o_sq[:, rows == cols].sum(dim=1)                # sum ||y||^2
            e = delta.square().sum(dim=1)
            d_sum = (delta * o_sum).sum(dim=1)                        # sum y.delta
            quartic = self.sum_quartic + (
                o_quartic + 4 * (delta * o_cubic).sum(dim=1) + 4 * (delta * q_delta).sum(dim=1)
                + 2 * e * trace_q + 4 * e * d_sum + n * e.square())
            cubic = self.sum_cubic + (
                o_cubic + 2 * q_delta + e[:, None] * o_sum
                + (trace_q + 2 * d_sum + n * e)[:, None] * delta)
        return PatchMoments(self.count + n, self.shift, self.sum + o_sum + n * delta,
                            self.sum_sq + moved_sq, quartic, cubic)

    @property
    def mean(self):
        """Per-position mean, float64 (n_positions, n_features)."""
        return self.shift + self.sum / self.count

    def covariance(self, positions=slice(None), ddof=1):
        """Sample covariance (divided by ``n - ddof``), float64, for a slice of positions.

        ``ddof=0`` gives the maximum-likelihood covariance, the one shrinkage estimators
        shrink (:mod:`skpadim.shrinkage`).
        """
        s = self.sum[positions]
        outer = s[:, :, None] * s[:, None, :] / self.count
        scatter = unpack_symmetric(self.sum_sq[positions], self.n_features)
        return (scatter - outer) / (self.count - ddof)

    def centred_fourth_moment(self, positions=slice(None)):
        """``sum_i ||x_i - mean||^4`` per position, float64, for a slice of positions.

        With ``y = x - shift``, ``m = mean - shift`` and ``Q = sum y y^T``, the square of
        ``||x - mean||^2 = ||y||^2 - 2 y.m + ||m||^2`` sums (using ``sum y = n m``) to
        ``sum_quartic - 4 m.sum_cubic + 4 m^T Q m + 2 ||m||^2 tr(Q) - 3 n ||m||^4``. This is
        what Ledoit-Wolf shrinkage needs (:func:`skpadim.shrinkage.ledoit_wolf_shrinkage`).

        Raises
        ------
        InvalidImageError
            If the fourth moments are unknown (moments from :meth:`from_mean_covariance`).
        """
        if not self.has_fourth_moments:
            raise InvalidImageError(
                "these moments lack the fourth moments Ledoit-Wolf shrinkage needs (they were "
                "rebuilt from a mean and a covariance, as for a model loaded from disk); refit "
                "on the images, or use covariance='oas' or 'empirical'"
            )
        n = self.count
        m = self.sum[positions] / n
        Q = unpack_symmetric(self.sum_sq[positions], self.n_features)
        m_sq = m.square().sum(dim=1)
        return (self.sum_quartic[positions] - 4 * (m * self.sum_cubic[positions]).sum(dim=1)
                + 4 * torch.einsum("pi,pij,pj->p", m, Q, m)
                + 2 * m_sq * Q.diagonal(dim1=1, dim2=2).sum(dim=1) - 3 * n * m_sq.square())


def _packed_matvec(packed, v, rows, cols):
    """``M v`` for a stack of symmetric ``M`` kept as upper triangles, without unpacking."""
    out = torch.zeros_like(v)
    out.index_add_(1, rows, packed * v[:, cols])
    off = rows != cols
    out.index_add_(1, cols[off], packed[:, off] * v[:, rows[off]])
    return out


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


def mahalanobis(X, mean, prec_chol, block_bytes=1 << 23):
    """Mahalanobis distances ``sqrt((x - mean)^T P (x - mean))`` with ``P = U U^T``.

    Parameters
    ----------
    X : torch.Tensor of shape (n_positions, n_samples, d)
        Samples, positions first.
    mean : torch.Tensor of shape (n_positions, d)
        Each position's mean.
    prec_chol : torch.Tensor of shape (n_positions, d, d)
        Upper-triangular Cholesky factors of the precisions, from :func:`precision_cholesky`.
    block_bytes : int, default=8 MiB
        Size of the temporaries; positions are processed in blocks that fit it.

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
    # Blocks of positions bound the two temporaries (centred values and their products) to
    # a few MB whatever the batch, at no cost in speed: each block's bmm is still large.
    n_positions, n_samples, d = X.shape
    out = torch.empty(n_positions, n_samples, dtype=X.dtype, device=X.device)
    step = max(1, block_bytes // max(1, n_samples * d * X.element_size()))
    for a in range(0, n_positions, step):
        b = min(a + step, n_positions)
        centred = torch.empty(n_samples, b - a, d, dtype=X.dtype, device=X.device)
        torch.sub(X[a:b].transpose(0, 1), mean[a:b], out=centred)
        y = torch.bmm(centred.transpose(0, 1), prec_chol[a:b])
        out[a:b] = torch.linalg.vector_norm(y, dim=-1)
    return out


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


class PatchGaussian(VersionedStateMixin, AnomalyMapMixin, BaseEstimator):
    """PaDiM's normality model: a Gaussian per patch position, scored by Mahalanobis distance.

    For every position ``(i, j)`` of the feature grid, ``fit`` estimates the mean and the
    sample covariance (divided by ``n - 1``) of the training embeddings, or a shrinkage
    estimate of it (see ``covariance``), adds ``reg_covar`` to the diagonal, and keeps the
    Cholesky factor of the precision matrix. A test patch's
    anomaly is its Mahalanobis distance to its position's Gaussian; distances are upsampled to
    ``map_size``, Gaussian-filtered, and the image score is the maximum of the map.

    Fitting streams over ``batch_size`` samples at a time and accumulates float64 sums
    (:class:`~skpadim.gaussian.PatchMoments`), so memory does not grow with the number of training images, and
    :meth:`partial_fit` continues a fit with more images, giving the same model as one
    ``fit`` on all of them. The factors are computed once, when the fit ends or, after
    ``partial_fit``, when the model is first used.

    **Threshold without a second pass.** ``offset_`` is a percentile of training scores
    under the finished model, so the samples scored must still be at hand when the fit
    ends. The model keeps an evenly spread, deterministic sample of at most
    ``calibration_size`` training samples (every k-th one, k doubling as the stream grows;
    all of them up to ``calibration_size``) and scores those: no training image is sent
    through the backbone twice, and memory stays bounded.

    With 2-D input ``(n_samples, n_features)`` the grid is a single position and this is a
    plain regularised Mahalanobis outlier detector.

    Parameters
    ----------
    reg_covar : float, default=0.01
        Added to the diagonal of each covariance (the paper's epsilon), after any shrinkage.
        0 is allowed where the covariances are positive definite, which shrinkage ensures
        even with fewer training samples than features.
    covariance : {"empirical", "oas", "ledoit-wolf"}, default="empirical"
        Covariance estimate per position. "empirical" is the paper's: the sample covariance,
        divided by ``n - 1``. "oas" and "ledoit-wolf" are the shrunk covariances of
        :class:`sklearn.covariance.OAS` and :class:`sklearn.covariance.LedoitWolf`
        (``assume_centered=False``) exactly: ``(1 - rho) S + rho tr(S) / d I`` with ``S``
        the maximum-likelihood covariance (divided by ``n``) and a per-position intensity
        ``rho`` estimated from the data (:mod:`skpadim.shrinkage`). Both are computed from
        the streamed moments, so ``partial_fit`` and merged moments give the same model as
        one ``fit``; "ledoit-wolf" also needs fourth moments, which a model loaded from disk
        no longer has (continuing such a fit with ``partial_fit`` raises). See the user
        guide's "Shrinkage covariance" for when it helps.
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
        would be flagged. The closed form is exact for the unregularised sample covariance;
        with ``reg_covar`` and, more so, with shrinkage (whose intensity would also change
        without the sample) it is an approximation.
    calibration_size : int, "auto" or None, default="auto"
        Most training samples kept to set ``offset_`` (see above); they are dropped when the
        model is saved. With at most this many training samples, all of them are scored,
        exactly as a second pass over the data would; beyond it, between
        ``calibration_size / 2`` and ``calibration_size`` evenly spaced ones are. Each costs
        one feature map of memory (1.25 MB for 100 channels on a 56x56 grid). "auto" keeps
        as many as fit in 64 MB, and at least 64; None keeps every training sample (memory
        then grows with the training set).
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
    shrinkage_ : ndarray of shape (h * w,), dtype float64
        Per-position shrinkage intensity ``rho`` (zeros for ``covariance="empirical"``).
    precisions_cholesky_ : ndarray of shape (h * w, n_features_in_, n_features_in_)
        Upper-triangular Cholesky factors of the precision matrices (inverse regularised
        covariances), as in :class:`sklearn.mixture.GaussianMixture`, rounded to
        ``storage_dtype``. Saved packed (upper triangles only).
    covariances_ : ndarray of shape (h * w, n_features_in_, n_features_in_)
        Regularised (and shrunk) covariances, recomputed from ``precisions_cholesky_`` on
        access.
    offset_ : float
        Threshold on ``score_samples``; ``decision_function = score_samples - offset_``.
    image_threshold_ : float
        ``-offset_``: images with ``anomaly_scores`` above it are anomalous.
    pixel_threshold_ : float
        Map values above it mark defect pixels: ``image_threshold_`` unless set otherwise
        with ``set_thresholds`` (an image's score is its map's maximum, so a pixel above it
        alone flags its image).

    See Also
    --------
    make_padim : The paper's whole pipeline in one call.
    sklearn.covariance.EmpiricalCovariance : The 1x1-grid case without regularisation.
    sklearn.covariance.OAS : The 1x1-grid case of ``covariance="oas", reg_covar=0``.

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
    >>> few = rng.normal(size=(5, 8)).astype(np.float32)           # 5 samples, 8 features
    >>> shrunk = PatchGaussian(covariance="oas", reg_covar=0).fit(few)
    >>> bool(0 < shrunk.shrinkage_[0] < 1)
    True
    """

    _parameter_constraints = {
        "reg_covar": [Interval(Real, 0, None, closed="left")],
        "covariance": [StrOptions({"empirical", "oas", "ledoit-wolf"})],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "storage_dtype": [StrOptions({"float32", "float16"})],
        "calibration": [StrOptions({"leave-one-out", "in-sample"})],
        "calibration_size": [None, StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        **MAP_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        reg_covar=0.01,
        covariance="empirical",
        contamination=0.01,
        calibration="leave-one-out",
        calibration_size="auto",
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
        self.covariance = covariance
        self.contamination = contamination
        self.calibration = calibration
        self.calibration_size = calibration_size
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
        self._finish()
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Add more normal samples to the model (or start one).

        Only the running sums are updated (and, for the threshold, a bounded sample of the
        training samples is kept, see ``calibration_size``); the Cholesky factors and
        ``offset_`` are computed once, when the model is next used. The resulting model
        equals a single ``fit`` on all samples seen, up to floating-point rounding.

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
        self._unfinished = True
        return self

    @classmethod
    def from_moments(cls, moments, grid_shape=None, calibration_samples=None, **params):
        """A fitted model from accumulated (for instance merged) moments.

        See :class:`~skpadim.gaussian.PatchMoments`.

        Parameters
        ----------
        moments : PatchMoments
            Sums over ``moments.count`` (at least 2) training samples.
        grid_shape : (int, int) or None, default=None
            ``(h, w)`` of the feature maps the positions come from, row-major; None for
            2-D feature vectors (a single position).
        calibration_samples : ndarray of shape (m, n_features, h, w) or (m, n_features)
            Training samples whose scores set ``offset_`` (for instance the union of each
            worker's sample). None leaves the threshold unset.
        **params
            Estimator parameters (``reg_covar``, ``contamination``, ...).

        Returns
        -------
        model : PatchGaussian
            Fitted, as ``fit`` on the same samples would be.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skpadim import PatchGaussian
        >>> from skpadim.gaussian import PatchMoments
        >>> X = np.random.RandomState(0).normal(size=(30, 4)).astype(np.float32)
        >>> def moments(part):
        ...     t = torch.from_numpy(part)[None]           # one position, positions first
        ...     return PatchMoments.empty(t.mean(dim=1)).update(t)
        >>> merged = moments(X[:10]).merge(moments(X[10:]))
        >>> model = PatchGaussian.from_moments(merged, calibration_samples=X)
        >>> bool(np.allclose(model.score_samples(X), PatchGaussian().fit(X).score_samples(X)))
        True
        """
        model = cls(**params)
        model._validate_params()
        model._check_map_size()
        if moments.count < 2:
            raise InvalidImageError(f"fitting needs at least 2 samples, got {moments.count}")
        flat = grid_shape is None
        model._flat_ = flat
        model.grid_shape_ = (1, 1) if flat else tuple(int(g) for g in grid_shape)
        if moments.shift.shape[0] != model.grid_shape_[0] * model.grid_shape_[1]:
            raise InvalidImageError(
                f"moments hold {moments.shift.shape[0]} positions, not the "
                f"{model.grid_shape_[0] * model.grid_shape_[1]} of grid_shape={grid_shape}"
            )
        model.n_features_in_ = moments.n_features
        model._moments = PatchMoments(*(t.cpu() if torch.is_tensor(t) else t for t in moments))
        model.n_samples_seen_ = moments.count
        model.reg_covar_ = float(model.reg_covar)
        if calibration_samples is not None:
            calibration_samples = np.asarray(calibration_samples)
            model._calibration = model._new_calibration_sample(calibration_samples[0].nbytes)
            model._calibration.add(calibration_samples)
        model._finish()
        return model

    def _training_scores(self, X):
        """``score_samples`` of training samples, as ``calibration`` asks, to set ``offset_``."""
        distances = self._patch_distances(X)
        if self.calibration == "leave-one-out":
            distances = leave_one_out_distances(distances, self.n_samples_seen_)
        return -self._distances_to_scores(distances)

    def _new_calibration_sample(self, sample_bytes, budget=1 << 26):
        capacity = self.calibration_size
        if capacity == "auto":
            capacity = max(64, budget // max(1, sample_bytes))
        return SystematicSample(capacity)

    def _reset(self):
        """Forget what was learnt, so that the next partial_fit starts a new model."""
        for attr in ("_moments", "_calibration", "n_samples_seen_", "_unfinished"):
            self.__dict__.pop(attr, None)

    def _accumulate(self, X):
        moments = self.__dict__.get("_moments")
        device = resolve_device(self.device)
        if moments is None and hasattr(self, "n_samples_seen_"):
            moments = self._moments_from_fitted()
        if moments is not None and moments.sum.device != device:
            moments = PatchMoments(*(t.to(device) if torch.is_tensor(t) else t for t in moments))
        calibration = self.__dict__.get("_calibration")
        if calibration is None:
            calibration = self._calibration = self._new_calibration_sample(X[0].nbytes)
        for start in range(0, X.shape[0], self.batch_size):
            part = X[start : start + self.batch_size]
            batch = self._positions_first(part).to(device)
            if moments is None:
                moments = PatchMoments.empty(batch.mean(dim=1, dtype=torch.float64))
            moments = moments.update(batch)
            calibration.add(part)
        # Kept for partial_fit, on the CPU: a GPU's memory goes to scoring.
        self._moments = PatchMoments(*(t.cpu() if torch.is_tensor(t) else t for t in moments))
        self._flat_ = X.ndim == 2
        self.grid_shape_ = (1, 1) if X.ndim == 2 else tuple(X.shape[2:])
        self.n_samples_seen_ = moments.count
        self.reg_covar_ = float(self.reg_covar)

    def _finish(self, chunk=64):
        """Factorise (once, however many partial_fit calls came before) and calibrate.

        Positions are factorised in chunks, which bounds the float64 temporaries; shrinkage
        is applied per chunk, vectorised over its positions. The factors are rounded to
        ``storage_dtype`` (what a saved model keeps) and held as float32 matrices ready for
        scoring.
        """
        moments = self._moments
        storage = torch.float16 if self.storage_dtype == "float16" else torch.float32
        mean = moments.mean
        # Sums propagate NaN and inf; isfinite on the whole buffer would allocate its size.
        if not torch.isfinite(mean.sum()) or not torch.isfinite(moments.sum_sq.sum()):
            raise InvalidImageError(
                "the fitted means or covariances hold NaN or infinite values (features too "
                "large for float32?); check the images and the steps before this one"
            )
        chol = torch.empty(mean.shape[0], mean.shape[1], mean.shape[1], dtype=torch.float32)
        shrinkage = torch.zeros(mean.shape[0], dtype=torch.float64)
        finite = True
        for start in range(0, mean.shape[0], chunk):
            cov, rho = self._estimate_covariance(moments, slice(start, start + chunk))
            shrinkage[start : start + chunk] = rho.cpu()
            factors = precision_cholesky(cov, self.reg_covar_).cpu().to(storage)
            finite = finite and bool(torch.isfinite(factors).all())
            chol[start : start + chunk] = factors
        if not finite:
            raise InvalidImageError(
                f"the precision factors overflow {self.storage_dtype} (features with very "
                f"small variance and reg_covar={self.reg_covar_}); use storage_dtype='float32' "
                "or a larger reg_covar"
            )
        self._mean = mean.to(torch.float32).cpu().numpy()
        self._shrinkage = shrinkage.numpy()
        # What the stored factors are of, for _moments_from_fitted (set_params may change
        # the parameter afterwards).
        self._shrunk = self.covariance != "empirical"
        self._chol_cpu = chol
        self.__dict__.pop("_chol_cache", None)
        self._unfinished = False
        calibration = self.__dict__.get("_calibration")
        if calibration is not None and len(calibration):
            self._set_offset(np.concatenate([
                self._training_scores(part) for part in calibration.chunks(self.batch_size)
            ]))

    def _estimate_covariance(self, moments, positions):
        """Covariances (before ``reg_covar``) and shrinkage intensities of some positions."""
        if self.covariance == "empirical":
            cov = moments.covariance(positions)
            return cov, torch.zeros(cov.shape[0], dtype=cov.dtype, device=cov.device)
        # sklearn shrinks the maximum-likelihood covariance (divided by n); PaDiM then uses
        # that shrunk matrix itself, so the 1x1-grid case is exactly sklearn's estimator.
        n, d = moments.count, moments.n_features
        cov = moments.covariance(positions, ddof=0)
        trace, trace_sq = covariance_traces(cov)
        if self.covariance == "oas":
            rho = oas_shrinkage(n, trace, trace_sq, d)
        else:  # "ledoit-wolf" (fit and from_moments validate the parameter)
            rho = ledoit_wolf_shrinkage(n, trace, trace_sq,
                                        moments.centred_fourth_moment(positions), d)
        return shrunk_covariance(cov, rho), rho

    def _moments_from_fitted(self):
        """Rebuild the sums from a model restored from disk, where they are not saved."""
        U = torch.from_numpy(self.precisions_cholesky_).to(torch.float64)
        cov = self._covariances(U)
        d = cov.shape[-1]
        eye = torch.eye(d, dtype=torch.float64)
        cov = cov - self.reg_covar_ * eye
        n = self.n_samples_seen_
        # Models saved before shrinkage existed have no such flag: they did not shrink.
        if self.__dict__.get("_shrunk", False):
            rho = torch.from_numpy(self.shrinkage_)
            if bool((rho >= 1).any()):
                raise InvalidImageError(
                    "cannot continue this fit: a position was shrunk with intensity 1, which "
                    "loses its sample covariance; refit on all images instead"
                )
            # Undo (1 - rho) S + rho tr(S) / d I (the trace is kept), then rescale the
            # maximum-likelihood S to the n - 1 covariance the moments reproduce.
            target = cov.diagonal(dim1=1, dim2=2).sum(dim=1) / d
            ml = (cov - (rho * target)[:, None, None] * eye) / (1 - rho)[:, None, None]
            cov = ml * n / (n - 1)
        return PatchMoments.from_mean_covariance(n, torch.from_numpy(self.mean_), cov)

    # ------------------------------------------------------------------ fitted state
    @property
    def mean_(self):
        self._ensure_finished()
        try:
            return self.__dict__["_mean"]
        except KeyError:
            raise AttributeError("mean_ is set by fit") from None

    @property
    def shrinkage_(self):
        self._ensure_finished()
        check_is_fitted(self, "mean_")
        return np.asarray(self.__dict__.get("_shrinkage", np.zeros(len(self._mean)))).copy()

    @property
    def precisions_cholesky_(self):
        self._ensure_finished()
        check_is_fitted(self, "mean_")
        return self._chol_cpu.numpy().copy()

    @property
    def covariances_(self):
        U = torch.from_numpy(self.precisions_cholesky_).to(torch.float64)
        return self._covariances(U).numpy()

    @property
    def calibration_samples_(self):
        """The training samples ``offset_`` was computed from (see ``calibration_size``)."""
        calibration = self.__dict__.get("_calibration")
        if calibration is None or not len(calibration):
            raise AttributeError("calibration_samples_ are kept only until the model is saved")
        return calibration.array()

    @staticmethod
    def _covariances(U):
        # covariance = inv(U U^T) = V V^T with V = inv(U^T), a triangular solve.
        eye = torch.eye(U.shape[-1], dtype=U.dtype).expand_as(U)
        V = torch.linalg.solve_triangular(U.transpose(-1, -2), eye, upper=False)
        return V @ V.transpose(-1, -2)

    def _chol(self, dtype, device="cpu"):
        """The factors as ``dtype`` on ``device``; copies other than the float32 CPU one are
        cached in memory (never saved), since scoring reads them often."""
        chol = self._chol_cpu
        if chol.dtype == dtype and chol.device == torch.device(device):
            return chol
        cache = self.__dict__.get("_chol_cache")
        if cache is None or cache.dtype != dtype or cache.device != torch.device(device):
            cache = self._chol_cache = chol.to(device, dtype)
        return cache

    def __getstate__(self):
        self._ensure_finished()
        # A copy: object.__getstate__ may hand back the instance's own __dict__.
        state = dict(super().__getstate__())
        # The float64 sums (several times the factors), the calibration sample and any
        # device copy are not part of the model; the factors are saved packed, in
        # storage_dtype, which is what keeps model files small.
        for key in ("_moments", "_calibration", "_chol_cache", "_unfinished"):
            state.pop(key, None)
        chol = state.pop("_chol_cpu", None)
        if chol is not None:
            storage = torch.float16 if self.storage_dtype == "float16" else torch.float32
            state["_packed_chol"] = pack_upper(chol).to(storage)
        return state

    def __setstate__(self, state):
        state = dict(state)
        packed = state.pop("_packed_chol", None)
        super().__setstate__(state)
        if packed is not None:
            d = self.mean_.shape[1]
            self._chol_cpu = unpack_upper(torch.as_tensor(packed), d, torch.float32)

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
