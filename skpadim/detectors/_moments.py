"""Streamed, mergeable moments of patch embeddings, per position, and their covariances.

Fitting a Gaussian per patch position needs only a few sums over the training samples: their
count, their sum and the sum of their outer products (and, for Ledoit-Wolf shrinkage, two
fourth-moment sums). :class:`PatchMoments` keeps those sums in float64, adds one batch at a
time (memory does not grow with the training set) and merges the sums of disjoint sample
sets exactly, which is what makes ``partial_fit``, streamed and distributed fits one
computation. The covariances, empirical or shrunk (:mod:`skpadim.detectors`), are computed
from the sums, a slice of positions at a time. Moments can also keep one scatter per block
of neighbouring positions, for covariances shared by blocks (``_blocks``).
"""

from typing import NamedTuple

import torch

from ..exceptions import InvalidImageError
from ._blocks import block_members, moved_block_scatter, pooled_covariance, refuse_shrinkage
from ._packed import _packed_matvec, _triu, pack_upper, unpack_symmetric
from ._shrinkage import covariance_traces, ledoit_wolf_shrinkage, oas_shrinkage, shrunk_covariance

__all__ = ["PatchMoments"]


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
    block_index : torch.Tensor of shape (n_positions,) or None
        For covariances shared by blocks of positions: the block of each position
        (``block_index``). ``sum_sq`` then holds one row per
        block, ``(n_blocks, n_features * (n_features + 1) // 2)``, the sum over the block's
        positions of their outer products, each around its own position's shift; the
        fourth moments are not kept. None (the default): one row per position.

    Notes
    -----
    Block moments merge as exactly as per-position ones: moving a set's sums to another
    shift changes each position's outer products by terms of that position's sum and shift,
    which are summed over the block (``_blocks``).

    ``sum_quartic`` and ``sum_cubic`` are what Ledoit-Wolf shrinkage needs on top of the
    first two moments (:meth:`centred_fourth_moment`). They cost ``n_positions *
    (n_features + 1)`` float64 more, about ``2 / n_features`` of ``sum_sq`` (2.5 MB for 100
    features on a 56x56 grid, next to its 127 MB).

    Examples
    --------
    >>> import torch
    >>> from skpadim.detectors import PatchMoments
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
    # Last, with a default: moments of per-position covariances are built as before.
    block_index: torch.Tensor = None

    @classmethod
    def empty(cls, shift, block_index=None):
        """Moments of no samples, to be summed around ``shift`` (positions, features); with
        ``block_index`` (see the attribute), scatter sums per block of positions."""
        # Rounded to float32 so that float32 features minus the shift are computed exactly
        # in float32 (see update).
        shift = shift.to(torch.float32).to(torch.float64)
        p, d = shift.shape
        zeros = dict(dtype=torch.float64, device=shift.device)
        if block_index is not None:
            block_index = block_index.to(shift.device)
            n_blocks = int(block_index.max()) + 1
            return cls(0, shift, torch.zeros(p, d, **zeros),
                       torch.zeros(n_blocks, d * (d + 1) // 2, **zeros),
                       block_index=block_index)
        return cls(0, shift, torch.zeros(p, d, **zeros),
                   torch.zeros(p, d * (d + 1) // 2, **zeros),
                   torch.zeros(p, **zeros), torch.zeros(p, d, **zeros))

    @classmethod
    def from_mean_covariance(cls, count, mean, covariance, block_index=None):
        """Moments that reproduce a known mean and (unregularised, n-1) covariance.

        With ``block_index``, ``covariance`` holds one pooled covariance per block. The
        fourth moments are unknown (``sum_quartic`` and ``sum_cubic`` are None), and stay
        so through :meth:`update` and :meth:`merge`.
        """
        mean = mean.to(torch.float64)
        dof = count - 1
        if block_index is not None:
            sizes = torch.bincount(block_index).to(torch.float64)
            dof = (sizes * dof)[:, None, None]
        scatter = pack_upper(covariance.to(torch.float64) * dof)
        return cls(count, mean, torch.zeros_like(mean), scatter, block_index=block_index)

    def block_members(self):
        """``block_members`` of ``block_index`` (None if
        per position): the positions of each block, padded with -1."""
        return None if self.block_index is None else block_members(self.block_index)

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
            packed = scatter.reshape(-1, d * d).index_select(1, flat)
            if self.block_index is None:
                self.sum_sq[a : a + step] += packed
            else:  # each position's products go to its block's row
                self.sum_sq.index_add_(0, self.block_index[a : a + step], packed)
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
        if not _same_blocks(self.block_index, other.block_index):
            raise InvalidImageError(
                "cannot merge moments whose positions are pooled in different blocks; "
                "accumulate both with the same covariance_block"
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
        if self.block_index is None:
            moved_sq = (o_sq + delta[:, rows] * o_sum[:, cols] + o_sum[:, rows] * delta[:, cols]
                        + n * delta[:, rows] * delta[:, cols])
        else:
            moved_sq = moved_block_scatter(o_sq, o_sum, delta, n, self.block_members())
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
                            self.sum_sq + moved_sq, quartic, cubic, self.block_index)

    @property
    def mean(self):
        """Per-position mean, float64 (n_positions, n_features)."""
        return self.shift + self.sum / self.count

    def covariance(self, positions=slice(None), ddof=1, members=None):
        """Sample covariance (divided by ``n - ddof``), float64, for a slice of positions.

        ``ddof=0`` gives the maximum-likelihood covariance, the one shrinkage estimators
        shrink (:mod:`skpadim.detectors`). Block moments give the pooled covariances of a
        slice of blocks (divided by ``sum_{p in b} (n - ddof)``); ``members``, their
        :meth:`block_members`, saves recomputing it for each slice.
        """
        if self.block_index is not None:
            members = self.block_members() if members is None else members
            return pooled_covariance(self.sum_sq[positions], self.sum, self.count,
                                     members[positions].to(self.sum.device), ddof)
        s = self.sum[positions]
        outer = s[:, :, None] * s[:, None, :] / self.count
        scatter = unpack_symmetric(self.sum_sq[positions], self.n_features)
        return (scatter - outer) / (self.count - ddof)

    def centred_fourth_moment(self, positions=slice(None)):
        """``sum_i ||x_i - mean||^4`` per position, float64, for a slice of positions.

        With ``y = x - shift``, ``m = mean - shift`` and ``Q = sum y y^T``, the square of
        ``||x - mean||^2 = ||y||^2 - 2 y.m + ||m||^2`` sums (using ``sum y = n m``) to
        ``sum_quartic - 4 m.sum_cubic + 4 m^T Q m + 2 ||m||^2 tr(Q) - 3 n ||m||^4``. This is
        what Ledoit-Wolf shrinkage needs (:func:`skpadim.detectors.ledoit_wolf_shrinkage`).

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


def _moments_on(moments, device):
    """``moments`` with their tensors moved to ``device`` (the count stays as it is)."""
    return PatchMoments(*(t.to(device) if torch.is_tensor(t) else t for t in moments))


def _same_blocks(a, b):
    if a is None or b is None:
        return a is None and b is None
    return a.shape == b.shape and bool(torch.equal(a.cpu(), b.cpu()))


def _estimate_covariance(moments, positions, method, members=None):
    """Covariances (before ``reg_covar``) and shrinkage intensities of some positions.

    ``method`` is :class:`~skpadim.PatchGaussian`'s ``covariance``: "empirical", "oas" or
    "ledoit-wolf". Block moments (``members``: their :meth:`PatchMoments.block_members`)
    give pooled covariances of a slice of blocks, and are not shrunk.
    """
    if moments.block_index is not None:
        refuse_shrinkage(method)
    if method == "empirical":
        cov = moments.covariance(positions, members=members)
        return cov, torch.zeros(cov.shape[0], dtype=cov.dtype, device=cov.device)
    # sklearn shrinks the maximum-likelihood covariance (divided by n); PaDiM then uses
    # that shrunk matrix itself, so the 1x1-grid case is exactly sklearn's estimator.
    n, d = moments.count, moments.n_features
    cov = moments.covariance(positions, ddof=0)
    trace, trace_sq = covariance_traces(cov)
    if method == "oas":
        rho = oas_shrinkage(n, trace, trace_sq, d)
    else:  # "ledoit-wolf" (fit and from_moments validate the parameter)
        rho = ledoit_wolf_shrinkage(n, trace, trace_sq,
                                    moments.centred_fourth_moment(positions), d)
    return shrunk_covariance(cov, rho), rho
