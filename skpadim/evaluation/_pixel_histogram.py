"""The pixel threshold of best F1, streamed: defect and normal pixels counted on a fine
grid of map values.

Masks and maps pass batch by batch into a :class:`PixelHistogram`, two counters per bin, so
that memory does not grow with the number of validation images; histograms of separate
passes (batches, workers) merge, and F1 at every edge of the grid is exact.
:func:`pixel_f1_optimal_threshold` does the same for masks and maps held in memory. The cut
of best F1 over counts in ascending order of value, and the check that both classes occur,
are shared with the image-level threshold of :mod:`skpadim.evaluation._thresholds`.
"""

import numpy as np

from ..exceptions import InvalidImageError
from ._metrics import _check_mask_shapes

__all__ = ["PixelHistogram", "pixel_f1_optimal_threshold"]


# ---------------------------------------------------------------------------- F1 of counts
def _check_both(n_anomalous, size, name, unit):
    """Raise unless ``n_anomalous`` of ``size`` samples leaves both classes present."""
    if n_anomalous == 0 or n_anomalous == size:
        missing = "normal" if n_anomalous else "anomalous"
        raise InvalidImageError(
            f"{name} hold no {missing} {unit} among {size}: choosing a "
            f"threshold by F1 needs both normal and anomalous {unit}s; use a validation set "
            "that holds both, or keep the contamination threshold"
        )


def _best_cut(normal, defect):
    """Index ``k`` such that flagging groups ``k:`` of ascending values maximises F1.

    ``normal`` and ``defect`` count the samples of each group, groups in ascending order of
    value. Among equal F1 the largest ``k`` wins: the fewest alarms. F1 is ``2 tp / (tp +
    fp + P)`` from integer counts; equal fractions round to equal floats, so ties are exact.
    """
    tp = np.cumsum(defect[::-1])[::-1]
    fp = np.cumsum(normal[::-1])[::-1]
    f1 = 2.0 * tp / (tp + fp + tp[0])
    k = len(f1) - 1 - int(np.argmax(f1[::-1]))
    return k, float(f1[k])


# ---------------------------------------------------------------------------- the grid
# Bits of a float32's order-preserving key that name its bin: 2**20 bins.
_KEY_BITS = 20
_DROPPED_BITS = 32 - _KEY_BITS
_N_BINS = 1 << _KEY_BITS
_SIGN = np.uint32(0x80000000)


def _bins(values):
    """Bin of each float32 value: ``ceil(key / 2**12)`` of its order-preserving key.

    The key is the value's bits with the sign bit flipped (positive values) or with every
    bit flipped (negative values), so that keys order as the values do. Bin ``j`` holds the
    keys in ``((j - 1) 2**12, j 2**12]``: its largest value has the key ``j 2**12``, which
    for a value >= 0 is a float32 whose 12 lowest mantissa bits are zero.
    """
    bits = np.ascontiguousarray(values, dtype=np.float32).view(np.uint32)
    keys = np.where(bits & _SIGN, ~bits, bits | _SIGN)
    return (keys.astype(np.int64) + ((1 << _DROPPED_BITS) - 1)) >> _DROPPED_BITS


def _edge(j):
    """The largest float32 of bin ``j``: ``map > _edge(j)`` flags exactly bins ``> j``."""
    key = np.uint32(int(j) << _DROPPED_BITS)
    bits = key ^ _SIGN if key & _SIGN else ~key
    return np.array(bits, dtype=np.uint32).view(np.float32)[()]


class PixelHistogram:
    """Defect and normal pixels counted on a fine grid of map values; exact F1 at its edges.

    Each :meth:`~PixelHistogram.update` adds a batch of masks and maps; memory stays at two
    counters per bin (16 MiB) however many images pass, and two histograms
    :meth:`~PixelHistogram.merge` into the one a single pass would give (batches, workers).
    :meth:`~PixelHistogram.f1_optimal_threshold` then finds
    the best threshold for the rule "defect iff map > t" among the grid's edges.

    **The grid.** A float32 value is turned into an order-preserving 32-bit key (the sign
    bit flipped for values >= 0, every bit flipped for negative values); bins are keyed by
    its top 20 bits. The edges are the largest value of each bin: for
    ``t >= 0`` they are the float32 numbers with 12 significant bits (the 12 lowest of the
    23 mantissa bits zero), 2048 per power of two, so consecutive edges are
    :math:`2^{e - 11}` apart in :math:`[2^e, 2^{e+1})`, between :math:`2^{-12}` and
    :math:`2^{-11}` of the value; negative values have the mirror image of that grid.
    Since every value of a bin is at most its edge and above the previous edge, the counts
    above an edge are exact, and so are precision, recall and F1 there. Between edges
    nothing is known: the threshold is optimal among the edges, within one grid step of
    the best threshold of all.

    Attributes
    ----------
    counts : ndarray of shape (1048576, 2), dtype int64
        Normal (column 0) and defect (column 1) pixels per bin, bins in ascending order of
        value.

    See Also
    --------
    pixel_f1_optimal_threshold : The same for masks and maps in memory.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import PixelHistogram
    >>> masks = np.array([[[0, 0], [1, 1]], [[0, 0], [0, 1]]])
    >>> maps = np.array([[[0.1, 0.5], [2.0, 3.0]], [[0.2, 0.1], [0.4, 2.5]]])
    >>> hist = PixelHistogram().update(masks[:1], maps[:1]).update(masks[1:], maps[1:])
    >>> hist.n_defect, hist.n_normal
    (3, 5)
    >>> threshold, f1 = hist.f1_optimal_threshold()
    >>> f1, bool(0.5 <= threshold < 2.0)
    (1.0, True)
    """

    def __init__(self):
        self.counts = np.zeros((_N_BINS, 2), dtype=np.int64)

    @property
    def n_defect(self):
        """Defect pixels counted so far."""
        return int(self.counts[:, 1].sum())

    @property
    def n_normal(self):
        """Normal pixels counted so far."""
        return int(self.counts[:, 0].sum())

    def update(self, masks, maps):
        """Count the pixels of a batch.

        Parameters
        ----------
        masks : array-like of shape (n_samples, H, W)
            Ground truth; non-zero marks a defect pixel.
        maps : array-like of shape (n_samples, H, W)
            Anomaly maps at the masks' resolution, finite; counted as float32 (what the
            detectors give).

        Returns
        -------
        self : PixelHistogram
        """
        masks, maps = np.asarray(masks), np.asarray(maps)
        _check_mask_shapes(masks, maps)
        values = np.asarray(maps, dtype=np.float32).ravel()
        if not np.isfinite(values).all():
            raise InvalidImageError(
                "anomaly maps contain NaN or infinite values; check the model that made them"
            )
        # One bincount: bin and class interleaved, no boolean-indexed copies.
        index = 2 * _bins(values) + (masks.ravel() != 0)
        self.counts += np.bincount(index, minlength=2 * _N_BINS).reshape(_N_BINS, 2)
        return self

    def merge(self, other):
        """Add another histogram's counts to this one's.

        Parameters
        ----------
        other : PixelHistogram

        Returns
        -------
        self : PixelHistogram
            Equal to one histogram of both passes' pixels.
        """
        if not isinstance(other, PixelHistogram):
            raise TypeError(f"can only merge a PixelHistogram, got {type(other).__name__}")
        self.counts += other.counts
        return self

    def f1_optimal_threshold(self):
        """The grid edge of best F1 for "defect iff map > t", and that F1.

        Among equal best F1 the largest edge wins (the fewest alarms): the edge just below
        the lowest flagged value's bin.

        Returns
        -------
        threshold : float
            A float32 value, an edge of the grid (see the class description).
        f1 : float
            F1 of the pixels counted, at ``threshold``: exact.

        Raises
        ------
        InvalidImageError
            If no defect pixel, or no normal pixel, was counted.
        """
        occupied = np.flatnonzero(self.counts.any(axis=1))
        counts = self.counts[occupied]
        _check_both(int(counts[:, 1].sum()), int(counts.sum()), "masks", "pixel")
        k, f1 = _best_cut(counts[:, 0], counts[:, 1])
        return float(_edge(occupied[k] - 1)), f1


def pixel_f1_optimal_threshold(masks, maps, chunk_size=16):
    """The pixel threshold of best F1 for "defect iff map > t", among a fine grid's edges.

    A :class:`PixelHistogram` of ``masks`` and ``maps``, filled ``chunk_size`` images at a
    time; see it for the grid (edges between :math:`2^{-12}` and :math:`2^{-11}` of the
    value apart) and why F1 at every edge is exact.

    Parameters
    ----------
    masks : array-like of shape (n_samples, H, W)
        Ground truth; non-zero marks a defect pixel. Both classes must occur.
    maps : array-like of shape (n_samples, H, W)
        Anomaly maps at the masks' resolution.
    chunk_size : int, default=16
        Images counted at a time; bounds the temporaries.

    Returns
    -------
    threshold : float
        A float32 value, the largest of the edges with the best F1.

    See Also
    --------
    tune_thresholds : Choose it from a model's maps, batch by batch, and set it.
    skpadim.evaluation.pixel_threshold_metrics : Precision, recall and F1 at a threshold.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import pixel_f1_optimal_threshold
    >>> masks = np.array([[[0, 0, 1, 1]]])
    >>> pixel_f1_optimal_threshold(masks, [[[0.25, 0.5, 1.0, 3.0]]])   # 1 - 2**-12
    0.999755859375
    """
    masks, maps = np.asarray(masks), np.asarray(maps)
    _check_mask_shapes(masks, maps)
    hist = PixelHistogram()
    for start in range(0, max(len(maps), 1), chunk_size):
        hist.update(masks[start : start + chunk_size], maps[start : start + chunk_size])
    return hist.f1_optimal_threshold()[0]
