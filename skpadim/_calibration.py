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
    >>> from skpadim._calibration import SystematicSample
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
        self._items = []

    def add(self, batch):
        """Offer the samples of ``batch`` (first axis); keeps copies of the chosen ones."""
        for i in range(len(batch)):
            index = self.n_seen + i
            if index % self.stride == 0:
                # A copy, not a view: a view would keep the whole batch alive.
                self._items.append(np.array(batch[i]))
                self.indices.append(index)
                if self.capacity is not None and len(self._items) > self.capacity:
                    self.stride *= 2
                    keep = [k for k, j in enumerate(self.indices) if j % self.stride == 0]
                    self._items = [self._items[k] for k in keep]
                    self.indices = [self.indices[k] for k in keep]
        self.n_seen += len(batch)

    def __len__(self):
        return len(self._items)

    @property
    def nbytes(self):
        return sum(item.nbytes for item in self._items)

    def array(self):
        """The held samples stacked along a new first axis."""
        return np.stack(self._items)

    def chunks(self, size):
        """The held samples, ``size`` at a time, stacked: no second copy of them all."""
        for start in range(0, len(self._items), size):
            yield np.stack(self._items[start : start + size])
