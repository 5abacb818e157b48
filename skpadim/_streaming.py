"""The streaming pipeline: a scikit-learn ``Pipeline`` fitted ``batch_size`` images at a time.

``Pipeline.fit`` computes the features of every training image before the last step sees
any. :class:`StreamingPipeline` (what :func:`~skpadim.make_padim` and
:func:`~skpadim.make_spade` return) and :func:`fit_in_batches` (for a hand-made
``Pipeline``) fit the transformers first, then feed the final detector's ``partial_fit``
one batch at a time, so memory does not grow with the number of images and each image goes
through the backbone once; the pipeline's scoring methods go through ``_batches`` likewise.
"""

from numbers import Integral

import numpy as np
from sklearn.pipeline import Pipeline, _name_estimators
from sklearn.utils.metaestimators import available_if

from ._batches import _image_slices, _split, _transform, inspect_images
from ._compat import Interval
from ._memory import check_memory_limit
from ._versioning import VersionedStateMixin
from .detectors._base import AnomalyMapMixin
from .exceptions import ConfigurationError, InvalidImageError
from .features._images import image_sizes, n_images
from .features._tile_samples import TileSamples

__all__ = ["StreamingPipeline", "fit_in_batches"]


def _final_has(attr):
    def check(self):
        getattr(self._final_estimator, attr)
        return True

    return check


class StreamingPipeline(VersionedStateMixin, Pipeline):
    """A scikit-learn Pipeline that fits and scores ``batch_size`` images at a time.

    ``Pipeline.fit`` computes the features of every training image before the last step
    sees any, and its ``score_samples``, ``predict`` and ``decision_function`` do the same
    with test images: memory grows with the number of images (about 5.6 MB per image for
    ResNet18's 448 channels at 224 x 224). This pipeline sends ``batch_size`` images
    through the steps at a time instead:

    - ``fit`` fits the transformers on the first batch (the backbone and the channel draw
      learn nothing from the data; a step with ``partial_fit``, such as
      :class:`~skpadim.PatchPCA`, gets its own pass over every image) and feeds every
      batch to the final detector's ``partial_fit``; the detector finishes (factors,
      threshold) once, at the end, without a second pass over the images. The result
      equals ``Pipeline.fit`` on the same data, to float rounding.
    - ``score_samples``, ``decision_function``, ``predict``, :meth:`anomaly_maps` and
      :meth:`inspect` transform and score batch by batch.

    It is a ``Pipeline`` in every other respect (``clone``, ``get_params``/``set_params``
    with ``step__param`` names, ``GridSearchCV``, slicing, the HTML repr, ``joblib``). A
    final step without ``partial_fit``, or fit parameters routed to steps, fall back to
    ``Pipeline.fit``. :func:`make_padim` and :func:`~skpadim.make_spade` build one; a
    hand-made ``sklearn.pipeline.make_pipeline(...)`` holds every image's features
    (fit it with :func:`fit_in_batches`).

    Parameters
    ----------
    steps : list of (str, estimator) tuples
        As for ``sklearn.pipeline.Pipeline``.
    batch_size : int, default=32
        Images sent through the steps at a time. Results do not depend on it.
    memory_limit : int, str or None, default=None
        Most memory the fit may need, in bytes or as a string such as ``"6GB"``,
        ``"512MB"`` or ``"1.5GiB"``. Before any image goes through the backbone, ``fit``
        reads the first image's size (a file's header only), estimates the fit's peak with
        ``estimate_memory`` and, if it exceeds the limit, raises a
        :class:`~skpadim.exceptions.ConfigurationError` naming settings that would fit
        (smaller batches, fewer features, a smaller ``resize``). Only PaDiM pipelines
        (ending in :class:`~skpadim.PatchGaussian`) can be checked. None checks nothing.
    transform_input, memory, verbose
        As for ``sklearn.pipeline.Pipeline`` (``memory`` caches fitted transformers; it
        is not ``memory_limit``).

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import BackboneFeatures, PatchGaussian, RandomFeatureSelector
    >>> from skpadim.pipeline import StreamingPipeline
    >>> images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> pipe = StreamingPipeline([
    ...     ("features", BackboneFeatures(weights=None, resize=None, crop=None,
    ...                                   random_state=0)),
    ...     ("select", RandomFeatureSelector(n_features=10, random_state=0)),
    ...     ("gaussian", PatchGaussian()),
    ... ], batch_size=4).fit(images)                   # batches of 4 and 2 images
    >>> pipe[-1].n_samples_seen_
    6
    >>> result = pipe.inspect(images[:3])               # one pass: maps, scores, labels
    >>> result.maps.shape, result.anomaly_scores.shape, result.labels.tolist()
    ((3, 32, 32), (3,), [1, 1, 1])
    >>> pipe.set_params(memory_limit="10MB").fit(images)   # refused before the backbone runs
    Traceback (most recent call last):
    ...
    skpadim.exceptions.ConfigurationError: fitting would need about ...
    """

    _parameter_constraints = {
        **Pipeline._parameter_constraints,
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        # A string's format is checked by parse_memory when fit starts.
        "memory_limit": [None, Interval(Integral, 1, None, closed="left"), str],
    }

    def __init__(self, steps, *, batch_size=32, memory_limit=None, transform_input=None,
                 memory=None, verbose=False):
        super().__init__(steps, transform_input=transform_input, memory=memory,
                         verbose=verbose)
        self.batch_size = batch_size
        self.memory_limit = memory_limit

    def __getitem__(self, ind):
        # memory_limit stays None: a slice is rarely a whole PaDiM pipeline.
        sub = super().__getitem__(ind)
        if isinstance(sub, StreamingPipeline):
            sub.batch_size = self.batch_size
        return sub

    def _streams(self):
        return hasattr(self._final_estimator, "partial_fit")

    def fit(self, X, y=None, **params):
        """Fit every step, ``batch_size`` images at a time (see the class description).

        Parameters
        ----------
        X : array-like or list of paths
            Normal training images.
        y : array-like of shape (n_samples,) or (n_samples, H, W), default=None
            Optional labels (1 or -1 = anomalous) or masks: anomalous images are left out.
        **params
            Fit parameters routed to steps; given any, ``Pipeline.fit`` is used.

        Returns
        -------
        self : StreamingPipeline
            The fitted pipeline.

        Raises
        ------
        ConfigurationError
            If the estimated peak memory exceeds ``memory_limit`` (before any image goes
            through the backbone), or ``memory_limit`` is set on a pipeline that is not
            PaDiM's.
        """
        streams = not params and self._streams()
        if self.memory_limit is not None:
            self._validate_params()
            # Pipeline.fit holds every image's features: estimated as such.
            check_memory_limit(self, _as_indexable(X), self.memory_limit,
                               self.batch_size if streams else None)
        if not streams:
            return super().fit(X, y, **params)
        self._validate_params()
        X = AnomalyMapMixin._normal_samples(_as_indexable(X), y)
        first = self.steps[0][1]
        _stream_fit(self, X, self.batch_size, progress=bool(getattr(first, "verbose", False)))
        return self

    def fit_predict(self, X, y=None, **params):
        """``fit(X, y)`` then ``predict(X)``: +1 normal, -1 anomalous.

        Parameters
        ----------
        X : array-like or list of paths
            Training images.
        y : array-like, default=None
            As in :meth:`fit`.
        **params
            As in :meth:`fit`.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        return self.fit(X, y, **params).predict(X)

    def _transformed(self, X):
        """The final step's input, a batch at a time."""
        transformers, _ = _split(self)
        for part in _image_slices(X, self.batch_size):
            yield _transform(transformers, part)

    def _each(self, method, X):
        final = self._final_estimator
        return np.concatenate([getattr(final, method)(t) for t in self._transformed(X)])

    @available_if(_final_has("score_samples"))
    def score_samples(self, X):
        """Normality of each image (higher = more normal), a batch at a time.

        Parameters
        ----------
        X : array-like or list of paths
            Images.

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        return self._each("score_samples", X)

    @available_if(_final_has("decision_function"))
    def decision_function(self, X, **params):
        """``score_samples(X) - offset_``, a batch at a time; negative = anomalous.

        Parameters
        ----------
        X : array-like or list of paths
            Images.
        **params
            Routed to the steps; given any, ``Pipeline.decision_function`` is used.

        Returns
        -------
        decision : ndarray of shape (n_samples,)
        """
        if params:
            return super().decision_function(X, **params)
        return self._each("decision_function", X)

    @available_if(_final_has("predict"))
    def predict(self, X, **params):
        """+1 for normal images, -1 for anomalies, a batch at a time.

        Parameters
        ----------
        X : array-like or list of paths
            Images.
        **params
            Routed to the steps; given any, ``Pipeline.predict`` is used.

        Returns
        -------
        labels : ndarray of shape (n_samples,)
        """
        if params:
            return super().predict(X, **params)
        return self._each("predict", X)

    @available_if(_final_has("anomaly_maps"))
    def anomaly_maps(self, X):
        """Anomaly maps ``(n, H, W)``, a batch at a time; higher = more anomalous.

        Parameters
        ----------
        X : array-like or list of paths
            Images.

        Returns
        -------
        maps : ndarray of shape (n_samples, H, W), dtype float32
        """
        return self._each("anomaly_maps", X)

    @available_if(_final_has("set_thresholds"))
    def set_thresholds(self, image=None, pixel=None):
        """Fix the final detector's image and pixel thresholds; None keeps one as it is.

        The detector's ``set_thresholds``, for a whole pipeline:
        :func:`skpadim.evaluation.tune_thresholds` chooses the values on validation images.

        Parameters
        ----------
        image : float or None, default=None
            New ``image_threshold_`` of the final step, in anomaly-score units.
        pixel : float or None, default=None
            New ``pixel_threshold_`` of the final step, in anomaly-map units.

        Returns
        -------
        self : StreamingPipeline
            The pipeline.

        Examples
        --------
        >>> import numpy as np
        >>> from skpadim import make_padim
        >>> images = np.random.RandomState(0).randint(0, 256, (4, 32, 32, 3), dtype=np.uint8)
        >>> pipe = make_padim("resnet18", n_features=10, weights=None, resize=None,
        ...                   crop=None, random_state=0).fit(images)
        >>> pipe = pipe.set_thresholds(image=1e6)
        >>> pipe[-1].image_threshold_, pipe.predict(images).tolist()
        (1000000.0, [1, 1, 1, 1])
        """
        self._final_estimator.set_thresholds(image=image, pixel=pixel)
        return self

    @available_if(_final_has("anomaly_maps"))
    def inspect(self, X):
        """Maps, image scores and labels of ``X`` from one pass (see :func:`inspect_images`).

        Parameters
        ----------
        X : array-like or list of paths
            Images.

        Returns
        -------
        inspection : Inspection
            ``maps``, ``anomaly_scores`` and ``labels``.
        """
        return inspect_images(self, X, batch_size=self.batch_size)


def _as_indexable(X):
    return list(X) if isinstance(X, tuple) else X


def _make_streaming_pipeline(*steps, batch_size, memory_limit=None):
    return StreamingPipeline(_name_estimators(steps), batch_size=batch_size,
                             memory_limit=memory_limit)


def _fit_transformers(transformers, X, batch_size):
    """Fit the steps before the detector, in order, without holding all features at once.

    A step with ``partial_fit`` learns from the data (:class:`~skpadim.PatchPCA`): it gets
    one pass over every image, batch by batch. The others (the backbone, the channel draw)
    learn nothing from the images but their shape, and are fitted on the first image.
    """
    for k, (_, step) in enumerate(transformers.steps):
        before = transformers[:k] if k else None
        if hasattr(step, "partial_fit"):
            parts = (part for image_part in _image_slices(X, batch_size)
                     for part in _feature_parts(_transform(before, image_part)))
            step.fit(next(parts))  # fit: a refit starts from scratch
            for part in parts:
                step.partial_fit(part)
        else:
            first = _transform(before, X[:1])
            step.fit(first.first_features() if isinstance(first, TileSamples) else first)


def _feature_parts(transformed, least=2):
    """Arrays of samples from one image batch's transform: itself, or its tiles gathered
    into arrays of at least ``least`` samples (the last one may have fewer)."""
    if not isinstance(transformed, TileSamples):
        yield transformed
        return
    pending = []
    for chunk in transformed:
        pending.append(chunk.features)
        if sum(len(p) for p in pending) >= least:
            yield np.concatenate(pending) if len(pending) > 1 else pending[0]
            pending = []
    if pending:
        yield np.concatenate(pending)


def _tiles_per_image(transformers, X):
    """Mean tiles per training image when the detector is fitted on tiles, else None."""
    first = None if transformers is None else transformers.steps[0][1]
    if getattr(first, "tile", None) is None or getattr(first, "stitch", True):
        return None
    samples = TileSamples(first, X[:1])  # geometry only: nothing runs through the network
    return float(np.mean([samples.tiles_per_image(size) for size in image_sizes(X)]))


def _stream_fit(pipeline, X, batch_size, progress=None):
    """Fit ``pipeline`` a batch at a time; its final step has ``partial_fit``."""
    transformers, final = _split(pipeline)
    if not hasattr(final, "partial_fit"):
        raise ConfigurationError(f"{type(final).__name__} has no partial_fit; use pipeline.fit")
    if n_images(X) < 2:
        raise InvalidImageError("fitting needs at least 2 training images")
    if hasattr(final, "_reset"):
        final._reset()  # a refit starts from scratch, as fit would
    if transformers is not None:
        _fit_transformers(transformers, X, batch_size)
    close = progress is True
    if close:
        from tqdm.auto import tqdm

        progress = tqdm(total=n_images(X), desc="fit", unit="img")
    try:
        # A fit starts from at least two samples: one-tile images wait for a second.
        pending, started = [], False
        for part in _image_slices(X, batch_size):
            # Tiles reach the detector in batches of its own size: each update of the
            # moments costs a pass over all of them, however few samples it adds.
            least = max(2, getattr(final, "batch_size", 2))
            for features in _feature_parts(_transform(transformers, part), least):
                pending.append(features)
                if started or sum(map(len, pending)) >= 2:
                    final.partial_fit(np.concatenate(pending) if len(pending) > 1
                                      else pending[0])
                    pending, started = [], True
            if progress:
                progress.update(len(part))
        if pending:
            final.partial_fit(np.concatenate(pending))
    finally:
        if close:
            progress.close()
    tiles = _tiles_per_image(transformers, X)
    if tiles is not None:
        # The threshold is set on tiles' scores; an image is flagged when any tile is.
        final.samples_per_image_ = tiles
    if hasattr(final, "_ensure_finished"):
        # Factors and threshold once, now, so that a fit's errors surface in fit.
        final._ensure_finished()
    return pipeline


def fit_in_batches(pipeline, X, batch_size=64, progress=None):
    """Fit a pipeline whose last step has ``partial_fit``, ``batch_size`` images at a time.

    ``Pipeline.fit`` computes the features of every training image before the last step
    sees any: with thousands of images that alone can exceed memory. Here the transformers
    are fitted on the first batch (the backbone and the channel draw do not learn from data;
    a step with ``partial_fit``, such as :class:`~skpadim.PatchPCA`, gets its own pass over
    every image) and the last step is updated batch by batch with ``partial_fit``, so peak
    memory does not grow with the number of images. The detector's threshold comes from
    training samples it kept on the way (see ``PatchGaussian.calibration_size``), so no image
    goes through the backbone twice. The model equals that of ``pipeline.fit(X)``.

    :class:`StreamingPipeline` (what :func:`make_padim` returns) does this in its own
    ``fit``; this function is for a hand-made ``sklearn.pipeline.Pipeline``.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        For instance from :func:`make_padim`. Fitted in place.
    X : array-like or list of paths
        Normal training images.
    batch_size : int, default=64
        Images per step.
    progress : bool or tqdm-like, default=None
        True shows a progress bar over the images; an object with an ``update(n)`` method
        (a ``tqdm`` bar) is advanced by each batch's images.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        The fitted pipeline.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.pipeline import make_pipeline
    >>> from skpadim import (BackboneFeatures, PatchGaussian, RandomFeatureSelector,
    ...                      fit_in_batches)
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> pipe = make_pipeline(BackboneFeatures(weights=None, resize=None, crop=None,
    ...                                       random_state=0),
    ...                      RandomFeatureSelector(n_features=10, random_state=0),
    ...                      PatchGaussian())
    >>> pipe = fit_in_batches(pipe, images, batch_size=4)   # batches of 4 and 2 images
    >>> pipe[-1].n_samples_seen_
    6
    """
    return _stream_fit(pipeline, _as_indexable(X), batch_size, progress)
