"""A bounded, deterministic sample of a stream of training samples, for calibration.

A detector's threshold is a percentile of its training samples' scores under the *finished*
model, so those samples must still be at hand when the fit ends. Keeping them all makes
memory grow with the training set; passing over the data again costs a second backbone pass.
:class:`SystematicSample` keeps every ``stride``-th sample of the stream, doubling ``stride``
(and dropping every other kept sample) whenever more than ``capacity`` are held: between
``capacity / 2`` and ``capacity`` samples, spread evenly over the whole stream, chosen by
position alone (no random draw), so the same data in the same order always gives the same
sample, however it is split into batches.
"""

import numpy as np

__all__ = ["SystematicSample"]


class SystematicSample:
    """Every ``stride``-th sample of a stream, at most ``capacity`` of them.

    Parameters
    ----------
    capacity : int or None
        Most samples held; None keeps every sample.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.detectors._calibration import SystematicSample
    >>> sample = SystematicSample(capacity=4)
    >>> for batch in np.array_split(np.arange(10.0)[:, None], 3):
    ...     sample.add(batch)
    >>> sample.indices, sample.stride
    ([0, 4, 8], 4)
    >>> sample.array().ravel().tolist()
    [0.0, 4.0, 8.0]
    """

    def __init__(self, capacity=None):
        self.capacity = capacity
        self.stride = 1
        self.n_seen = 0
        self.indices = []
        # One contiguous buffer, grown by doubling up to ``capacity`` and compacted in
        # place: thousands of separately allocated samples would fragment the heap.
        self._buffer = None

    def add(self, batch):
        """Offer the samples of ``batch`` (first axis); keeps copies of the chosen ones."""
        for i in range(len(batch)):
            index = self.n_seen + i
            if index % self.stride:
                continue
            if self.capacity is not None and len(self.indices) == self.capacity:
                self._compact()
                if index % self.stride:
                    continue
            self._reserve(batch[i])
            self._buffer[len(self.indices)] = batch[i]
            self.indices.append(index)
        self.n_seen += len(batch)

    def _compact(self):
        """Double the stride and keep the samples on it, moved to the front."""
        self.stride *= 2
        keep = [k for k, j in enumerate(self.indices) if j % self.stride == 0]
        for new, old in enumerate(keep):  # new <= old: copying front to back is safe
            self._buffer[new] = self._buffer[old]
        self.indices = [self.indices[k] for k in keep]

    def _reserve(self, sample):
        n = len(self.indices)
        if self._buffer is not None and n < len(self._buffer):
            return
        size = max(4, 2 * n)
        if self.capacity is not None:
            size = min(size, self.capacity)
        grown = np.empty((size, *np.shape(sample)), dtype=np.asarray(sample).dtype)
        if n:
            grown[:n] = self._buffer[:n]
        self._buffer = grown

    def __len__(self):
        return len(self.indices)

    @property
    def nbytes(self):
        return 0 if self._buffer is None else self._buffer[: len(self)].nbytes

    def array(self):
        """The held samples stacked along a new first axis (a copy)."""
        return self._buffer[: len(self)].copy()

    def chunks(self, size):
        """The held samples, ``size`` at a time (views: no second copy of them all)."""
        for start in range(0, len(self), size):
            yield self._buffer[start : min(start + size, len(self))]
