"""Exact nearest neighbours by Euclidean distance, over torch tensors, in blocks of bounded size.

The search SPADE runs at both of its levels. :func:`nearest_neighbors` finds any number of
neighbours of each query, among all gallery vectors or selected rows, optionally leaving one
candidate out per query; ``_nearest_one`` is the faster search for the single nearest row of
a dense gallery (SPADE's default ``kappa=1``). Both rank candidates by ``|g|^2 - 2 q.g``,
one matrix product per block, and measure the winners from the differences ``q - g``, so
the distances are exact even for near-duplicates; memory stays bounded whatever the gallery
size.
"""

import torch

from .._torch import resolve_device
from ..exceptions import ConfigurationError

__all__ = ["nearest_neighbors"]


def _select_rows(gallery, rows, start, stop):
    if rows is None:
        return gallery[start:stop]
    return gallery.index_select(0, rows[start:stop])


def _chunk_smallest(d2, k):
    """The ``k`` smallest entries of each row of ``d2`` and their column positions."""
    if k == 1:
        values, positions = d2.min(dim=1, keepdim=True)
        return values, positions
    return torch.topk(d2, k, dim=1, largest=False)


def _exact_distances(queries, gallery, rows, positions, budget):
    """Euclidean distances between each query and its selected gallery vectors, computed from
    differences (the fast ``|q|^2 + |g|^2 - 2 q.g`` form loses digits for close pairs)."""
    m, k = positions.shape
    d = queries.shape[1]
    out = torch.empty(m, k, dtype=queries.dtype, device=queries.device)
    step = max(1, budget // max(1, k * d))
    for start in range(0, m, step):
        pos = positions[start : start + step].cpu()
        index = pos.reshape(-1) if rows is None else rows[pos.reshape(-1)]
        neighbours = gallery.index_select(0, index).to(queries.device, queries.dtype)
        diff = queries[start : start + step, None, :] - neighbours.view(-1, k, d)
        out[start : start + step] = torch.linalg.vector_norm(diff, dim=2)
    return out


def nearest_neighbors(queries, gallery, n_neighbors, *, rows=None, exclude=None,
                      chunk_size=4096, gallery_norms=None):
    """Exact nearest gallery vectors of each query, by Euclidean distance, in chunks.

    The search compares blocks of at most ``chunk_size`` queries with blocks of at most
    ``chunk_size`` gallery vectors, keeping a running list of the best candidates, so memory
    stays bounded whatever the gallery size, and every gallery vector is compared (the last
    block is simply shorter). Candidates are ranked by ``|g|^2 - 2 q.g``, which orders them as
    the squared distance ``|q|^2 + |g|^2 - 2 q.g`` does, at the cost of one matrix product
    per block; the distances returned are then recomputed from the differences ``q - g``, so
    they are exact to floating-point precision even for near-duplicates.

    Parameters
    ----------
    queries : torch.Tensor of shape (m, d)
        Float32 or float64, on the device the search runs on.
    gallery : torch.Tensor of shape (N, d)
        Any float dtype (float16 storage is converted one block at a time), on the CPU or
        the queries' device.
    n_neighbors : int
        Neighbours per query; at most the number of candidates (minus one with ``exclude``).
    rows : torch.LongTensor of shape (r,) or None, default=None
        Search only ``gallery[rows]`` (without copying it). Returned indices are positions in
        ``rows``.
    exclude : torch.LongTensor of shape (m,) or None, default=None
        For each query, one candidate position to skip (its own entry, for leave-one-out
        scores), or -1 for none.
    chunk_size : int, default=4096
        Block size. The largest temporary holds ``chunk_size ** 2`` distances.
    gallery_norms : torch.Tensor of shape (N,) or None, default=None
        Squared norms of the gallery vectors (on the gallery's device), when the caller
        searches the same gallery many times; None computes them block by block.

    Returns
    -------
    distances : torch.Tensor of shape (m, n_neighbors)
        Sorted ascending, in the queries' dtype.
    indices : torch.LongTensor of shape (m, n_neighbors)
        Positions of the neighbours in ``gallery`` (or in ``rows``).

    Examples
    --------
    >>> import torch
    >>> from skpadim.detectors import nearest_neighbors
    >>> gallery = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    >>> dist, idx = nearest_neighbors(torch.tensor([[0.0, 0.1]]), gallery, 2, chunk_size=2)
    >>> idx.tolist(), [round(v, 4) for v in dist[0].tolist()]
    ([[0, 2]], [0.1, 1.005])
    """
    n_candidates = gallery.shape[0] if rows is None else rows.shape[0]
    available = n_candidates - (exclude is not None)
    if not 1 <= n_neighbors <= available:
        raise ConfigurationError(
            f"cannot find {n_neighbors} neighbours among {available} candidates; lower "
            "n_neighbors"
        )
    device, dtype = queries.device, queries.dtype
    if exclude is not None:
        exclude = exclude.to(device)
    found_d, found_i = [], []
    for q_start in range(0, queries.shape[0], chunk_size):
        q = queries[q_start : q_start + chunk_size]
        best_d2 = q.new_empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=device)
        for g_start in range(0, n_candidates, chunk_size):
            g = _select_rows(gallery, rows, g_start, g_start + chunk_size).to(device, dtype)
            if gallery_norms is None:
                g_sq = g.square().sum(dim=1)
            else:
                g_sq = _select_rows(gallery_norms, rows, g_start, g_start + chunk_size)
                g_sq = g_sq.to(device, dtype)
            # Squared distances up to the query's own |q|^2, which does not change the order.
            d2 = torch.addmm(g_sq[None], q, g.T, alpha=-2)
            if exclude is not None:
                local = exclude[q_start : q_start + len(q)] - g_start
                hit = ((local >= 0) & (local < len(g))).nonzero()[:, 0]
                d2[hit, local[hit]] = torch.inf
            values, positions = _chunk_smallest(d2, min(n_neighbors, len(g)))
            best_d2 = torch.cat([best_d2, values], dim=1)
            best_i = torch.cat([best_i, positions + g_start], dim=1)
            if best_d2.shape[1] > n_neighbors:
                best_d2, keep = _chunk_smallest(best_d2, n_neighbors)
                best_i = best_i.gather(1, keep)
        distances = _exact_distances(q, gallery, rows, best_i, chunk_size * chunk_size)
        distances, order = distances.sort(dim=1)
        found_d.append(distances)
        found_i.append(best_i.gather(1, order))
    return torch.cat(found_d), torch.cat(found_i)


# Gallery rows per block of the kappa=1 search. A block of ``chunk_size`` queries by 1024
# rows (up to 16 MB of float32 distances) stays in cache between the matrix product that
# writes it and the minimum that reads it; 4096 x 4096 blocks do not, and measured several
# times slower on EfficientNet-Lite0 at 224 px (benchmarks/bench_spade.py). Smaller blocks
# saved little more and multiply the per-call overheads. ``chunk_size`` still bounds them.
_BLOCK_ROWS = 1024


def _nearest_one(queries, gallery, chunk_size):
    """Exact distance from each query to its nearest gallery row: the kappa=1 patch search.

    Same result as ``nearest_neighbors(queries, gallery, 1)`` to float rounding, faster on
    the dense galleries SPADE searches: candidates are ranked by ``|g|^2 - 2 q.g`` from one
    matrix product per block (the norms ride along as an extra column) into a reused
    buffer, and each block is reduced with ``amin``, which skips the index bookkeeping of
    ``min``. Only the winning block of each query is searched again for the position, and
    the distance to that row is recomputed from the difference, so near-duplicates stay
    exact.

    Parameters
    ----------
    queries : torch.Tensor of shape (m, d), float32
    gallery : torch.Tensor of shape (N, d), float32, contiguous, on the queries' device
    chunk_size : int
        At most ``chunk_size`` queries and ``chunk_size ** 2`` distances per block.

    Returns
    -------
    distances : torch.Tensor of shape (m,)
    """
    # [q, 1] . [-2 g, |g|^2] = |g|^2 - 2 q.g; scaling by -2 is exact in binary floats.
    augmented = torch.cat([gallery * -2, gallery.square().sum(dim=1, keepdim=True)], dim=1)
    queries = torch.cat([queries, queries.new_ones(len(queries), 1)], dim=1)
    n_queries = min(chunk_size, len(queries))
    rows = max(1, min(_BLOCK_ROWS, chunk_size * chunk_size // n_queries))
    blocks = augmented.split(rows)
    buffer = queries.new_empty(n_queries, min(rows, len(augmented)))
    block_min = queries.new_empty(len(blocks), len(queries))
    for q_start in range(0, len(queries), n_queries):
        q = queries[q_start : q_start + n_queries]
        for b, block in enumerate(blocks):
            d2 = buffer[: len(q), : len(block)]
            torch.mm(q, block.T, out=d2)
            torch.amin(d2, dim=1, out=block_min[b, q_start : q_start + len(q)])
    best_block = block_min.argmin(dim=0)
    index = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    for b in best_block.unique().tolist():
        hit = (best_block == b).nonzero()[:, 0]
        index[hit] = torch.mm(queries[hit], blocks[b].T).argmin(dim=1) + b * rows
    diff = queries[:, :-1] - gallery.index_select(0, index)
    return torch.linalg.vector_norm(diff, dim=1)


def _search(queries, gallery, k, chunk_size, device, **kwargs):
    """:func:`nearest_neighbors` on ``device`` ("auto": CUDA when available), without
    autograd; distances and indices come back on the CPU."""
    device = resolve_device(device)
    with torch.inference_mode():
        distances, indices = nearest_neighbors(
            queries.to(device), gallery, k, chunk_size=chunk_size, **kwargs
        )
    return distances.cpu(), indices.cpu()
