"""A fitted pipeline's images, a batch at a time: the final step's input, then maps and scores.

A plain scikit-learn ``Pipeline`` forwards only its standard methods and transforms all of
``X`` at once. Here every step but the last transforms ``batch_size`` images at a time
(``_transform``, which lets a backbone compute only the channels the next step selects), and
the final detector turns each batch's features into anomaly maps (:func:`anomaly_maps`) or
into maps, image scores and labels from one pass (:func:`inspect_images`,
:func:`iter_inspect_images`, :class:`Inspection`), so memory does not grow with the number
of test images.
"""

from typing import NamedTuple

import numpy as np
from sklearn.pipeline import Pipeline

from .exceptions import ConfigurationError
from .features._extraction import BackboneFeatures
from .features._images import n_images
from .features._selection import RandomFeatureSelector
from .features._tile_samples import TileSamples

__all__ = ["Inspection", "anomaly_maps", "inspect_images", "iter_inspect_images"]


class Inspection(NamedTuple):
    """Maps, scores and labels of the same images, from one pass through the pipeline.

    Attributes
    ----------
    maps : ndarray of shape (n_samples, H, W), dtype float32
        Anomaly maps, higher = more anomalous.
    anomaly_scores : ndarray of shape (n_samples,)
        Image-level anomaly scores (``-score_samples``), higher = more anomalous.
    labels : ndarray of shape (n_samples,)
        ``predict``'s verdicts: +1 normal, -1 anomalous.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import Inspection
    >>> result = Inspection(np.zeros((2, 4, 4)), np.array([0.5, 3.0]), np.array([1, -1]))
    >>> result.labels.tolist(), result.maps.shape
    ([1, -1], (2, 4, 4))
    """

    maps: np.ndarray
    anomaly_scores: np.ndarray
    labels: np.ndarray


def _split(estimator):
    if isinstance(estimator, Pipeline):
        final = estimator._final_estimator
        return estimator[:-1] if len(estimator) > 1 else None, final
    return None, estimator


def _transform(transformers, part):
    """``transformers.transform(part)``; a backbone followed by a channel selection computes
    only the selected channels (the same values, without the unselected ones in memory)."""
    if transformers is None:
        return part
    steps = [step for _, step in transformers.steps if step not in (None, "passthrough")]
    if (len(steps) >= 2 and isinstance(steps[0], BackboneFeatures)
            and isinstance(steps[1], RandomFeatureSelector)):
        part = steps[0]._transform(part, channels=steps[1].feature_indices_)
        steps = steps[2:]
    for step in steps:
        # Tiles handed on as samples are computed lazily; later steps join the chain.
        part = part.then(step) if isinstance(part, TileSamples) else step.transform(part)
    return part


def _image_slices(X, batch_size):
    n = n_images(X)
    return (X[start : start + batch_size] for start in range(0, n, batch_size))


def _final_detector(estimator):
    transformers, final = _split(estimator)
    if not hasattr(final, "anomaly_maps"):
        raise ConfigurationError(
            f"{type(final).__name__} has no anomaly_maps method; the pipeline must end in "
            "PatchGaussian, SPADE, VAE or another skpadim detector"
        )
    return transformers, final


def anomaly_maps(estimator, X, batch_size=64):
    """Anomaly maps ``(n, H, W)`` at image resolution from a fitted pipeline or detector.

    This is the pipeline-level counterpart of the detectors' own ``anomaly_maps`` method
    (a plain sklearn Pipeline forwards only its standard methods): ``X`` goes through every
    step but the last, ``batch_size`` images at a time, and the final detector turns the
    features into maps. Higher values are more anomalous. For scores and labels of the same
    images without a second pass, use :func:`inspect_images`.

    Parameters
    ----------
    estimator : Pipeline or detector
        A fitted pipeline ending in :class:`PatchGaussian`, ``SPADE`` or ``VAE`` (or any
        estimator with an ``anomaly_maps`` method), or such a detector on its own.
    X : array-like or list of paths
        Images, in any form the pipeline's first step accepts.
    batch_size : int, default=64
        Images sent through the pipeline at once; bounds memory on large test sets.

    Returns
    -------
    maps : ndarray of shape (n_samples, H, W), dtype float32
        One map per image; an image's anomaly score (``-score_samples``) is its maximum.

    See Also
    --------
    PatchGaussian.anomaly_maps : The same maps from feature maps, for the detector alone.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import make_padim, anomaly_maps
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> pipe = make_padim("efficientnet_lite0", n_features=10, weights=None, resize=32,
    ...                   crop=None, random_state=0).fit(images)
    >>> maps = anomaly_maps(pipe, images, batch_size=2)
    >>> maps.shape, maps.dtype
    ((4, 32, 32), dtype('float32'))
    >>> bool(np.allclose(maps.max(axis=(1, 2)), -pipe.score_samples(images)))
    True
    """
    transformers, final = _final_detector(estimator)
    return np.concatenate([
        final.anomaly_maps(_transform(transformers, part))
        for part in _image_slices(X, batch_size)
    ])


def iter_inspect_images(estimator, X, batch_size=32):
    """Yield ``(start, Inspection)`` for consecutive batches of ``X``: flat memory.

    Each batch goes through the backbone once; its maps, image anomaly scores and labels
    come from that one pass. ``start`` is the index of the batch's first image. Write each
    batch's results out (as the command line does) and memory stays flat however many
    images there are.

    Parameters
    ----------
    estimator : Pipeline or detector
        As for :func:`anomaly_maps`.
    X : array-like or list of paths
        Images.
    batch_size : int, default=32
        Images per batch.

    Yields
    ------
    start : int
        Index in ``X`` of the batch's first image.
    inspection : Inspection
        The batch's ``maps``, ``anomaly_scores`` and ``labels``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import make_padim, iter_inspect_images
    >>> images = np.random.RandomState(0).randint(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    >>> pipe = make_padim("resnet18", n_features=10, weights=None, resize=None, crop=None,
    ...                   random_state=0).fit(images)
    >>> [(start, part.maps.shape) for start, part in iter_inspect_images(pipe, images, 2)]
    [(0, (2, 32, 32)), (2, (2, 32, 32)), (4, (1, 32, 32))]
    """
    transformers, final = _final_detector(estimator)
    for k, part in enumerate(_image_slices(X, batch_size)):
        maps, scores = final._maps_and_scores(_transform(transformers, part))
        labels = np.where(-scores - final.offset_ >= 0, 1, -1)
        yield k * batch_size, Inspection(maps, scores, labels)


def inspect_images(estimator, X, batch_size=32):
    """Anomaly maps, image anomaly scores and labels of ``X`` from one pass.

    Calling ``anomaly_maps`` and then ``score_samples`` runs the backbone twice on the same
    images; this runs it once. The scores equal ``-estimator.score_samples(X)`` and the
    labels ``estimator.predict(X)``.

    Parameters
    ----------
    estimator : Pipeline or detector
        As for :func:`anomaly_maps`.
    X : array-like or list of paths
        Images.
    batch_size : int, default=32
        Images sent through the pipeline at once.

    Returns
    -------
    inspection : Inspection
        ``maps`` (n, H, W), ``anomaly_scores`` (n,), higher = more anomalous, and
        ``labels`` (n,), +1 normal / -1 anomalous.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import make_padim, inspect_images
    >>> images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> pipe = make_padim("resnet18", n_features=10, weights=None, resize=None, crop=None,
    ...                   random_state=0).fit(images)
    >>> result = inspect_images(pipe, images)
    >>> result.maps.shape
    (6, 32, 32)
    >>> bool(np.array_equal(result.anomaly_scores, -pipe.score_samples(images)))
    True
    >>> bool(np.array_equal(result.labels, pipe.predict(images)))
    True
    """
    parts = [part for _, part in iter_inspect_images(estimator, X, batch_size)]
    return Inspection(*(np.concatenate(field) for field in zip(*parts)))
