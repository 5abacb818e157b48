"""Covariances shared by blocks of neighbouring patch positions: the layout and its maths.

A Gaussian per position costs ``n_positions x d^2`` of memory, twice: the float64 scatter
matrices of the fit (:class:`~skpadim.detectors.PatchMoments`) and the float32 precision
factors of the model. At full image resolution (ResNet18, 100 features, 2048 x 2048 input:
a 512 x 512 grid) that is 10.6 GB and 5.3 GB (packed). With ``covariance_block=k``
(:class:`~skpadim.PatchGaussian`), the positions of each ``k x k`` block of the grid share
one covariance, and both buffers shrink by ``k^2``; every position keeps its own mean.

The shared covariance is the *pooled within-position* covariance: each position's samples
are centred on that position's own mean, so the block's covariance does not mix the
positions' mean differences into it,

.. math:: \\Sigma_b = \\frac{\\sum_{p \\in b} \\sum_i (x_{pi} - \\mu_p)(x_{pi} - \\mu_p)^T}
          {\\sum_{p \\in b} (n - 1)}.

Summed around per-position shifts ``s_p`` (as the moments are), the numerator is
``sum_{p in b} [Q_p - n m_p m_p^T]`` with ``Q_p = sum_i (x - s_p)(x - s_p)^T`` and
``m_p = mean_p - s_p``: the moments keep ``sum_{p in b} Q_p`` per block and the sums
``n m_p`` per position, and the correction is summed per block when the covariances are
made. Blocks tile the grid from the top-left, numbered row-major; where ``k`` does not
divide the grid, the blocks of the last row and column are smaller.

Per-block work reads a padded table of each block's positions (:func:`block_members`), so
that no per-position ``d x d`` array is ever formed, only a chunk of blocks' worth.
"""

import torch

from ..exceptions import ConfigurationError
from ._packed import pack_upper, unpack_symmetric

__all__ = ["block_index", "block_members"]


def block_index(grid_shape, block):
    """The block of each position of a row-major ``(h, w)`` grid, for ``block x block`` tiles.

    Parameters
    ----------
    grid_shape : (int, int)
        ``(h, w)`` of the feature grid.
    block : int
        Side of the blocks; the last row and column of blocks are cut by the grid's edge.

    Returns
    -------
    block_index : torch.Tensor of shape (h * w,), dtype int64
        Blocks numbered row-major over the ``ceil(h / block) x ceil(w / block)`` blocks.

    Examples
    --------
    >>> from skpadim.detectors._blocks import block_index
    >>> block_index((3, 5), 2).reshape(3, 5).tolist()
    [[0, 0, 1, 1, 2], [0, 0, 1, 1, 2], [3, 3, 4, 4, 5]]
    """
    h, w = (int(g) for g in grid_shape)
    rows = torch.arange(h) // block
    cols = torch.arange(w) // block
    return (rows[:, None] * -(-w // block) + cols[None, :]).reshape(-1)


def block_members(block_index):
    """The positions of each block, as a table padded with -1.

    Parameters
    ----------
    block_index : torch.Tensor of shape (n_positions,), dtype int64
        The block of each position; every block from 0 to the largest must hold a position.

    Returns
    -------
    members : torch.Tensor of shape (n_blocks, largest block size), dtype int64
        Row ``b`` lists block ``b``'s positions in increasing order, then -1s.

    Examples
    --------
    >>> from skpadim.detectors._blocks import block_index, block_members
    >>> block_members(block_index((3, 3), 2)).tolist()
    [[0, 1, 3, 4], [2, 5, -1, -1], [6, 7, -1, -1], [8, -1, -1, -1]]
    """
    sizes = torch.bincount(block_index)
    order = torch.argsort(block_index, stable=True)
    blocks = block_index[order]
    rank = torch.arange(order.numel(), device=order.device) - (sizes.cumsum(0) - sizes)[blocks]
    members = torch.full((sizes.numel(), int(sizes.max())), -1, dtype=torch.int64,
                         device=block_index.device)
    members[blocks, rank] = order
    return members


def _gather(values, members):
    """``values`` (n_positions, ...) as (n_blocks, size, ...) by ``members``, zeros in padding."""
    flat = members.reshape(-1)
    rows = values.index_select(0, flat.clamp(min=0))
    rows = rows.masked_fill((flat < 0).view(-1, *[1] * (values.ndim - 1)), 0)
    return rows.view(*members.shape, *values.shape[1:])


def _block_outer(a, b, members):
    """``sum_{p in block} a_p b_p^T`` for each row of ``members``: (n_blocks, d, d)."""
    return torch.bmm(_gather(a, members).transpose(1, 2), _gather(b, members))


def pooled_covariance(sum_sq, sums, count, members, ddof=1):
    """Pooled within-position covariances of some blocks, from their moments.

    ``sum_sq`` holds those blocks' packed scatter around the per-position shifts,
    ``sums`` every position's sum of ``x - shift`` and ``members`` those blocks' rows of
    :func:`block_members`. Divided by ``sum_{p in b} (n - ddof)``.
    """
    own = _block_outer(sums, sums, members) / count
    scatter = unpack_symmetric(sum_sq, sums.shape[1]) - own
    sizes = (members >= 0).sum(dim=1).to(scatter.dtype)
    return scatter / (sizes * (count - ddof))[:, None, None]


def moved_block_scatter(o_sq, o_sum, delta, n, members, chunk=64):
    """Another set's block scatter ``o_sq``, moved from its shifts to this set's.

    ``o_sq`` sums ``n`` samples around ``other.shift``; ``delta = other.shift - shift`` and
    ``o_sum`` are per position. The result sums the same samples around ``shift``.

    Per position the scatter moves by ``delta o^T + o delta^T + n delta delta^T`` (``o`` the
    position's sum); a block's by the sum of its positions' moves, formed a chunk of blocks
    at a time.
    """
    moved = o_sq.clone()
    for a in range(0, members.shape[0], chunk):
        rows = members[a : a + chunk]
        cross = _block_outer(delta, o_sum, rows)
        moved[a : a + chunk] += pack_upper(cross + cross.transpose(1, 2)
                                           + n * _block_outer(delta, delta, rows))
    return moved


def pool_scatter(sum_sq, block_index):
    """Per-position packed scatter (n_positions, D) summed into blocks (n_blocks, D)."""
    n_blocks = int(block_index.max()) + 1
    pooled = torch.zeros(n_blocks, sum_sq.shape[1], dtype=sum_sq.dtype, device=sum_sq.device)
    return pooled.index_add_(0, block_index.to(sum_sq.device), sum_sq)


def block_mahalanobis(X, mean, prec_chol, members, block_bytes=1 << 23, loo_samples=None):
    """:func:`~skpadim.detectors.mahalanobis` with one factor per block of positions.

    The samples of a block's positions are gathered and multiplied by the block's factor in
    one product, so no per-position factor is formed; blocks are processed in chunks whose
    centred samples fit ``block_bytes``.

    With ``loo_samples=n`` (the number of training samples), ``X`` are training samples and
    their leave-one-out distances come back instead (see :func:`_leave_one_out`).
    """
    n_positions, n_samples, d = X.shape
    members = members.to(X.device)
    out = torch.empty(n_positions, n_samples, dtype=X.dtype, device=X.device)
    n_blocks, size = members.shape
    step = max(1, block_bytes // max(1, size * n_samples * d * X.element_size()))
    for a in range(0, n_blocks, step):
        rows = members[a : a + step]
        flat = rows.reshape(-1)
        valid = flat >= 0
        positions = flat.clamp(min=0)
        centred = X.index_select(0, positions) - mean.index_select(0, positions)[:, None, :]
        y = torch.bmm(centred.view(rows.shape[0], size * n_samples, d), prec_chol[a : a + step])
        if loo_samples is None:
            distances = torch.linalg.vector_norm(y, dim=-1).view(-1, n_samples)
        else:
            y = y.view(rows.shape[0], size, n_samples, d).masked_fill(~valid.view(
                rows.shape[0], size, 1, 1), 0)
            distances = _leave_one_out(y, loo_samples, valid.view(rows.shape).sum(dim=1))
            distances = distances.reshape(-1, n_samples).to(X.dtype)
        out[flat[valid]] = distances[valid]
    return out


def _leave_one_out(y, n, sizes):
    """Leave-one-out distances of training samples to pooled covariances, in closed form.

    Leaving an image out removes one sample from each of the ``m`` positions of a block:
    a rank-``m`` downdate of the block's scatter ``W`` (with ``nu = m (n - 1)`` degrees of
    freedom, ``C = W / nu``), and each position's mean moves, ``x - mean`` growing by
    ``c = n / (n - 1)``. With ``y_q = U^T (x_q - mean_q)`` the whitened residuals of the
    image at the block's positions (``U`` the precision factor) and ``G = Y Y^T / nu``
    (``m x m``), Woodbury's identity gives the squared distance at position ``p`` as
    ``c^2 (nu - m) [G (I - c G)^-1]_pp``: for ``m = 1`` exactly
    :func:`~skpadim.detectors.leave_one_out_distances`' formula, and, like it, exact
    without regularisation and neglecting the regulariser's relative change otherwise.

    Parameters
    ----------
    y : torch.Tensor of shape (n_blocks, size, n_images, d)
        Whitened residuals, zeros at padding positions.
    n : int
        Number of training samples; fewer than 3 gives the in-sample distances.
    sizes : torch.Tensor of shape (n_blocks,)
        Positions of each block (``m``).

    Returns
    -------
    distances : torch.Tensor of shape (n_blocks, size, n_images)
    """
    if n < 3:
        return torch.linalg.vector_norm(y, dim=-1)
    c = n / (n - 1)
    nu = (sizes * (n - 1)).to(torch.float64)[:, None, None, None]
    y = y.transpose(1, 2).to(torch.float64)                     # (blocks, images, size, d)
    gram = y @ y.transpose(-1, -2) / nu
    lam, vectors = torch.linalg.eigh(gram)
    # c lam reaches 1 only for an image that alone spans a direction (fewer samples than
    # dimensions, no regulariser); capping keeps such distances large but finite, as the
    # per-position formula does.
    lam = lam.clamp(min=0, max=(1 - 1e-6) / c)
    diagonal = (vectors.square() * (lam / (1 - c * lam))[..., None, :]).sum(dim=-1)
    squared = c**2 * (nu[..., 0] - sizes[:, None, None]) * diagonal  # (blocks, images, size)
    return squared.sqrt().transpose(1, 2)


def refuse_shrinkage(covariance, block=None):
    """Raise for shrinkage with shared covariances (``block`` > 1, or None: moments already
    pooled by blocks), which is not implemented for them."""
    if (block is None or block > 1) and covariance != "empirical":
        setting = "covariance_block > 1" if block is None else f"covariance_block={block}"
        # OAS and Ledoit-Wolf intensities are derived for n i.i.d. samples around one mean;
        # a pooled covariance has k^2 means and k^2 (n - 1) degrees of freedom, and
        # Ledoit-Wolf's fourth moments would need each position's scatter, which blocks
        # exist not to keep. Pooling k^2 positions is itself a regulariser.
        raise ConfigurationError(
            f"covariance={covariance!r} cannot be combined with {setting}: "
            "shrinkage is estimated per position and blocks pool positions. Use "
            "covariance='empirical' with covariance_block (pooling k x k positions already "
            "multiplies the samples per covariance by k^2), or covariance_block=1"
        )
