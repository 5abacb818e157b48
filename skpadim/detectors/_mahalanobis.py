"""Distances to a Gaussian by the Cholesky factors of its precision, per patch position.

A position's Gaussian is kept as ``U``, the upper-triangular Cholesky factor of its
precision matrix (``inv(covariance) = U U^T``, the layout of
:class:`sklearn.mixture.GaussianMixture`), so that a Mahalanobis distance is one
matrix product and a norm, and no matrix is ever inverted explicitly:

- :func:`precision_cholesky` turns covariances into those factors, by Cholesky
  decomposition and a triangular solve;
- :func:`mahalanobis` measures distances with them;
- :func:`leave_one_out_distances` corrects the distances of training samples to what the
  model fitted without each of them would give, in closed form.

All take torch tensors laid out positions-first, ``(n_positions, n_samples, n_features)``,
except the last, which works on the distances themselves.
"""

import numpy as np
import torch
from scipy.linalg import lapack

from ..exceptions import InvalidImageError
from ._blocks import block_mahalanobis, block_members

__all__ = ["precision_cholesky", "mahalanobis", "leave_one_out_distances"]


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
    >>> from skpadim.detectors import precision_cholesky
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
    return _triangular_inverse(chol).transpose(-1, -2)


def _triangular_inverse(lower):
    """``inv(L)`` for a stack of lower-triangular matrices.

    On the CPU, LAPACK's ``trtri`` per matrix: this torch build's batched
    ``solve_triangular`` runs 40 times slower than it on stacks of 100 x 100 factors, which
    made it most of a high-resolution fit (65,536 positions at 1024 x 1024).
    """
    if lower.device.type != "cpu" or lower.dtype not in (torch.float32, torch.float64):
        eye = torch.eye(lower.shape[-1], dtype=lower.dtype, device=lower.device)
        return torch.linalg.solve_triangular(lower, eye.expand_as(lower), upper=False)
    trtri = lapack.dtrtri if lower.dtype == torch.float64 else lapack.strtri
    out = torch.empty_like(lower)
    target = out.numpy()
    for k, matrix in enumerate(lower.numpy()):
        inverse, info = trtri(matrix, lower=1)
        if info != 0:  # a zero on the diagonal; cholesky_ex has already refused those
            raise InvalidImageError("a covariance's Cholesky factor is singular")
        target[k] = np.tril(inverse)
    target += 0.0  # -0.0 (from zero products) to 0.0, as a triangular solve gives
    return out


def mahalanobis(X, mean, prec_chol, block_bytes=1 << 23, block_index=None):
    """Mahalanobis distances ``sqrt((x - mean)^T P (x - mean))`` with ``P = U U^T``.

    Positions may share factors (``block_index``): each position is then measured with its
    block's factor, and the samples of a block are multiplied by it at once, so that no
    per-position factor is ever formed.

    Parameters
    ----------
    X : torch.Tensor of shape (n_positions, n_samples, d)
        Samples, positions first.
    mean : torch.Tensor of shape (n_positions, d)
        Each position's mean.
    prec_chol : torch.Tensor of shape (n_positions, d, d) or (n_blocks, d, d)
        Upper-triangular Cholesky factors of the precisions, from :func:`precision_cholesky`:
        one per position, or one per block with ``block_index``.
    block_bytes : int, default=8 MiB
        Size of the temporaries; positions are processed in blocks that fit it.
    block_index : torch.Tensor of shape (n_positions,) or None, default=None
        The block (row of ``prec_chol``) of each position; None: one factor per position.

    Returns
    -------
    distances : torch.Tensor of shape (n_positions, n_samples)
        Distances (not squared) of each sample to its position's Gaussian.

    Examples
    --------
    >>> import torch
    >>> from skpadim.detectors import mahalanobis, precision_cholesky
    >>> U = precision_cholesky(torch.diag(torch.tensor([4.0, 1.0]))[None])  # std 2 and 1
    >>> X = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [6.0, 4.0]]])             # 1 position
    >>> mahalanobis(X, torch.zeros(1, 2), U).tolist()
    [[1.0, 3.0, 5.0]]
    >>> two = torch.cat([X, X + 1])                          # 2 positions, one shared factor
    >>> mahalanobis(two, torch.ones(2, 2) * torch.tensor([[0.0], [1.0]]), U,
    ...             block_index=torch.tensor([0, 0])).tolist()
    [[1.0, 3.0, 5.0], [1.0, 3.0, 5.0]]
    """
    if block_index is not None:
        return block_mahalanobis(X, mean, prec_chol, block_members(block_index), block_bytes)
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

    For covariances shared by blocks of positions (:class:`~skpadim.PatchGaussian`'s
    ``covariance_block``), leaving an image out removes a sample from every position of
    the block, which the distances alone do not tell; :class:`~skpadim.PatchGaussian`
    computes that case from the whitened residuals instead (the same downdate, of rank the
    block's size).

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
    >>> from skpadim.detectors import leave_one_out_distances
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


def _covariances_from_factors(U):
    """The covariances ``inv(U U^T)`` of a stack of precision factors (the inverse of
    :func:`precision_cholesky`, regulariser included)."""
    # covariance = inv(U U^T) = V V^T with V = inv(U^T), a triangular solve.
    eye = torch.eye(U.shape[-1], dtype=U.dtype).expand_as(U)
    V = torch.linalg.solve_triangular(U.transpose(-1, -2), eye, upper=False)
    return V @ V.transpose(-1, -2)
