"""One reading of "which samples are anomalous", shared by metrics and splitters."""

import numpy as np

from .exceptions import InvalidImageError


def as_anomaly_labels(y):
    """Return a boolean ``(n,)`` array, True where a sample is anomalous.

    ``y`` may be image labels, ``(n,)`` with 1 (or True) for anomalous and 0 for normal, or
    sklearn's outlier convention with -1 for anomalous and +1 for normal; or ground-truth masks
    ``(n, H, W)``, where an image is anomalous when any pixel of its mask is set.
    """
    y = np.asarray(y)
    if y.ndim == 3:
        return y.reshape(len(y), -1).astype(bool).any(axis=1)
    if y.ndim != 1:
        raise InvalidImageError(
            f"labels must be (n,) image labels or (n, H, W) masks, got shape {y.shape}"
        )
    if y.dtype == bool:
        return y
    values = set(np.unique(y).tolist())
    if values <= {0, 1}:
        return y == 1
    if values <= {-1, 1}:
        return y == -1
    raise InvalidImageError(
        f"labels must be 0/1 (1 = anomalous) or -1/+1 (-1 = anomalous), got values "
        f"{sorted(values)[:10]}"
    )
