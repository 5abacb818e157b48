"""Packed storage of symmetric and upper-triangular matrices: the upper triangle, row-major.

A position's scatter matrix is symmetric and its precision factor upper triangular, so
either is fully described by the ``d (d + 1) / 2`` entries on and above the diagonal.
Keeping only those halves the largest buffer of a fit (the sums of
:class:`~skpadim.detectors.PatchMoments`) and the size of a saved model (its factors). The
functions here pack and unpack stacks of such matrices, laid out ``(n_positions, d, d)`` and
``(n_positions, d (d + 1) / 2)``, and multiply packed symmetric matrices by vectors without
unpacking them.
"""

import torch

__all__ = ["pack_upper", "unpack_symmetric", "unpack_upper"]


def _triu(d, device=None):
    """Row and column indices of the upper triangle of a ``d x d`` matrix, row-major."""
    return torch.triu_indices(d, d, device=device).unbind(0)


def pack_upper(M):
    """Keep the upper triangles of a stack of matrices: (p, d, d) -> (p, d(d+1)/2).

    Examples
    --------
    >>> import torch
    >>> from skpadim.detectors import pack_upper, unpack_symmetric
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
    >>> from skpadim.detectors import unpack_symmetric
    >>> unpack_symmetric(torch.tensor([[1.0, 2.0, 3.0]]), 2).tolist()
    [[[1.0, 2.0], [2.0, 3.0]]]
    """
    return _unpack(packed, d, symmetric=True, dtype=dtype)


def unpack_upper(packed, d, dtype=None):
    """Inverse of :func:`pack_upper` for upper-triangular matrices (zeros below).

    Examples
    --------
    >>> import torch
    >>> from skpadim.detectors import unpack_upper
    >>> unpack_upper(torch.tensor([[1.0, 2.0, 3.0]]), 2).tolist()
    [[[1.0, 2.0], [0.0, 3.0]]]
    """
    return _unpack(packed, d, symmetric=False, dtype=dtype)


def _packed_matvec(packed, v, rows, cols):
    """``M v`` for a stack of symmetric ``M`` kept as upper triangles, without unpacking."""
    out = torch.zeros_like(v)
    out.index_add_(1, rows, packed * v[:, cols])
    off = rows != cols
    out.index_add_(1, cols[off], packed[:, off] * v[:, rows[off]])
    return out
