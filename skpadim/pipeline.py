"""PaDiM as a pipeline: the paper's configurations, streaming fit and scoring, anomaly maps.

:func:`~skpadim.make_padim` returns a :class:`~skpadim.StreamingPipeline`: a scikit-learn ``Pipeline`` whose
``fit`` and scoring methods move ``batch_size`` images at a time through every step, so
memory does not grow with the number of images and each image goes through the backbone
once. :func:`~skpadim.inspect_images` returns maps, scores and labels of the same images from
one pass; :func:`~skpadim.iter_inspect_images` yields them batch by batch, for test sets of any size.
"""

from numbers import Integral
from typing import NamedTuple

import numpy as np
from sklearn.pipeline import Pipeline, _name_estimators
from sklearn.utils.metaestimators import available_if

from ._compat import Interval
from .detectors._base import AnomalyMapMixin
from ._versioning import VersionedStateMixin
from .exceptions import ConfigurationError, InvalidImageError
from .features._extraction import BackboneFeatures
from .detectors._gaussian import PatchGaussian
from .features._preprocessing import n_images
from .features._selection import RandomFeatureSelector

__all__ = [
    "PAPER_CONFIGS",
    "PRESETS",
    "StreamingPipeline",
    "Inspection",
    "make_padim",
    "anomaly_maps",
    "inspect_images",
    "iter_inspect_images",
    "fit_in_batches",
]

#: The paper's named configurations: backbone and number of randomly kept channels
#: (None keeps all). "Lite0-Rd100" is skpadim's small offline configuration.
PAPER_CONFIGS = {
    "R18-Rd100": ("resnet18", 100),
    "WR50-Rd550": ("wide_resnet50_2", 550),
    "EfficientNet-B5": ("efficientnet_b5", None),
    "Lite0-Rd100": ("efficientnet_lite0", 100),
}
_DEFAULT_N_FEATURES = {backbone: n for backbone, n in PAPER_CONFIGS.values()}

#: What :func:`make_padim`'s ``preset`` sets, for every argument left at ``"auto"``.
#:
#: - ``"paper"``: the PaDiM paper (256 -> center crop 224, bicubic resize and map
#:   upsampling, ``reg_covar=0.01``, scipy's ``gaussian_filter`` border ``"reflect"``, the
#:   PaDiM authors' code).
#: - ``"anomalib"``: anomalib's ``Padim`` (images at the data's size, no crop, bilinear map
#:   upsampling, 0.01 + 1e-5 on the diagonal, a 33-tap blur (sigma 4) padded with torch's
#:   ``"reflect"``, which is scipy's ``"mirror"``).
PRESETS = {
    "paper": dict(resize=256, crop=224, interpolation="bicubic", map_interpolation=None,
                  reg_covar=0.01, mode="reflect"),
    "anomalib": dict(resize=None, crop=None, interpolation="bilinear",
                     map_interpolation="bilinear", reg_covar=0.01001, mode="mirror"),
}


def _config(backbone, n_features):
    key = {k.lower(): k for k in PAPER_CONFIGS}.get(backbone.lower().removeprefix("padim-"))
    if key is not None:
        config_backbone, config_n = PAPER_CONFIGS[key]
        return config_backbone, config_n if n_features == "auto" else n_features
    if backbone not in _DEFAULT_N_FEATURES:
        raise ConfigurationError(
            f"unknown backbone or configuration {backbone!r}; choose a backbone "
            f"({', '.join(_DEFAULT_N_FEATURES)}) or a configuration ({', '.join(PAPER_CONFIGS)})"
        )
    return backbone, _DEFAULT_N_FEATURES[backbone] if n_features == "auto" else n_features


def _preset(preset, **given):
    if preset not in PRESETS:
        raise ConfigurationError(
            f"unknown preset {preset!r}; choose one of {', '.join(map(repr, PRESETS))}"
        )
    values = {k: (PRESETS[preset][k] if v == "auto" else v) for k, v in given.items()}
    if values["map_interpolation"] is None:
        values["map_interpolation"] = values["interpolation"]
    return values


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
    transform_input, memory, verbose
        As for ``sklearn.pipeline.Pipeline``.

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
    """

    _parameter_constraints = {
        **Pipeline._parameter_constraints,
        "batch_size": [Interval(Integral, 1, None, closed="left")],
    }

    def __init__(self, steps, *, batch_size=32, transform_input=None, memory=None,
                 verbose=False):
        super().__init__(steps, transform_input=transform_input, memory=memory,
                         verbose=verbose)
        self.batch_size = batch_size

    def __getitem__(self, ind):
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
        """
        if params or not self._streams():
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
        :func:`skpadim.thresholds.tune_thresholds` chooses the values on validation images.

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


def _make_streaming_pipeline(*steps, batch_size):
    return StreamingPipeline(_name_estimators(steps), batch_size=batch_size)


def make_padim(
    backbone="resnet18",
    n_features="auto",
    *,
    preset="paper",
    layers=None,
    weights="DEFAULT",
    resize="auto",
    crop="auto",
    interpolation="auto",
    map_interpolation="auto",
    feature_indices=None,
    reg_covar="auto",
    covariance="empirical",
    contamination=0.01,
    calibration_size="auto",
    sigma=4.0,
    mode="auto",
    storage_dtype="float32",
    batch_size=32,
    device="auto",
    verbose=False,
    random_state=None,
):
    """Build PaDiM as a scikit-learn Pipeline: features, random selection, Gaussians.

    The result is a :class:`StreamingPipeline` of :class:`BackboneFeatures`,
    :class:`RandomFeatureSelector` and :class:`PatchGaussian` with the paper's settings:
    ``fit``, ``score_samples``, ``predict``, ``decision_function``, :meth:`anomaly_maps
    <StreamingPipeline.anomaly_maps>` and :meth:`inspect <StreamingPipeline.inspect>` move
    ``batch_size`` images at a time through it, so memory stays flat in the number of
    images, and everything sklearn does with a Pipeline (``clone``, ``set_params``,
    ``GridSearchCV``, ``joblib.dump``) works on it.

    Parameters
    ----------
    backbone : str, default="resnet18"
        A backbone name ("resnet18", "wide_resnet50_2", "efficientnet_b5",
        "efficientnet_lite0") or one of the paper's configurations by name: "R18-Rd100",
        "WR50-Rd550", "EfficientNet-B5" (a "PaDiM-" prefix is allowed), or "Lite0-Rd100".
    n_features : int, None or "auto", default="auto"
        Channels kept by the random selection; "auto" takes the paper's value for the
        backbone (100 for ResNet18, 550 for Wide ResNet-50-2, all for EfficientNet-B5,
        100 for Lite0); None keeps all. Ignored when ``feature_indices`` is given.
    preset : {"paper", "anomalib"}, default="paper"
        Fills every argument left at "auto" (see :data:`PRESETS`). "anomalib" reproduces
        anomalib's ``Padim`` maps: no resize or crop (images at the data's size), bilinear
        map upsampling, ``reg_covar=0.01001`` (anomalib adds 0.01 and then 1e-5 to the
        diagonal) and its blur's border, torch's "reflect" (scipy's "mirror"). Pass
        anomalib's channel indices as ``feature_indices`` to get its maps exactly.
    layers, weights, verbose
        Passed to :class:`BackboneFeatures`.
    batch_size : int, default=32
        Images the pipeline moves through its steps at a time, and the Gaussians' batch.
        The backbone's own forward batch is :class:`BackboneFeatures`' "auto" (8 images
        on the CPU, 32 on a GPU; ``backbonefeatures__batch_size`` sets it).
    resize, crop : int, (int, int), None or "auto", default="auto"
        Passed to :class:`BackboneFeatures` (paper: 256 and 224; anomalib: None and None).
    interpolation : {"bicubic", "bilinear", "nearest", "auto"}, default="auto"
        How images are resized (paper: "bicubic"; anomalib: "bilinear").
    map_interpolation : {"bicubic", "bilinear", "nearest", "auto"}, default="auto"
        How distance maps are upsampled to the image size (paper: as ``interpolation``;
        anomalib: "bilinear").
    feature_indices : array-like of int or None, default=None
        Exact channels to keep, in this order (for instance an anomalib model's ``idx``).
    reg_covar : float or "auto", default="auto"
        Added to every covariance's diagonal (paper: 0.01; anomalib: 0.01001).
    covariance : {"empirical", "oas", "ledoit-wolf"}, default="empirical"
        Per-position covariance estimate, passed to :class:`PatchGaussian`: the paper's
        sample covariance, or a shrinkage estimate (OAS, Ledoit-Wolf) whose intensity is
        estimated from the data; ``reg_covar`` is added on top.
    mode : {"reflect", "mirror", "nearest", "constant", "wrap", "auto"}, default="auto"
        Border of the maps' Gaussian filter, in **scipy.ndimage's** names: "reflect" repeats
        the edge pixel (d c b a | a b c d; the paper), "mirror" does not (d c b | a b c d;
        what torch and numpy call "reflect", anomalib's).
    device : str, default="auto"
        Where the backbone and the Gaussians compute ("auto": CUDA when available).
    contamination, calibration_size, sigma, storage_dtype
        Passed to :class:`PatchGaussian`.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel draw (and the weights when ``weights=None``).

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``backbonefeatures``, ``randomfeatureselector`` and ``patchgaussian``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import make_padim, anomaly_maps
    >>> rng = np.random.RandomState(0)
    >>> train = rng.randint(0, 256, (8, 72, 72, 3), dtype=np.uint8)
    >>> pipe = make_padim("resnet18", n_features=20, weights=None, resize=72, crop=64,
    ...                   random_state=0).fit(train)
    >>> pipe.score_samples(train[:2]).shape
    (2,)
    >>> anomaly_maps(pipe, train[:2]).shape
    (2, 64, 64)
    >>> anomalib_like = make_padim("resnet18", preset="anomalib", weights=None)
    >>> anomalib_like[0].resize, anomalib_like[-1].interpolation, anomalib_like[-1].mode
    (None, 'bilinear', 'mirror')
    """
    backbone, n_features = _config(backbone, n_features)
    settings = _preset(preset, resize=resize, crop=crop, interpolation=interpolation,
                       map_interpolation=map_interpolation, reg_covar=reg_covar, mode=mode)
    features = BackboneFeatures(
        backbone=backbone, layers=layers, weights=weights, resize=settings["resize"],
        crop=settings["crop"], interpolation=settings["interpolation"],
        device=device, verbose=verbose, random_state=random_state,
    )
    crop, resize = settings["crop"], settings["resize"]
    map_size = crop if crop is not None else resize
    return _make_streaming_pipeline(
        features,
        RandomFeatureSelector(n_features=n_features, feature_indices=feature_indices,
                              random_state=random_state),
        PatchGaussian(
            reg_covar=settings["reg_covar"], covariance=covariance,
            contamination=contamination,
            calibration_size=calibration_size, batch_size=batch_size, map_size=map_size,
            interpolation=settings["map_interpolation"], sigma=sigma, mode=settings["mode"],
            storage_dtype=storage_dtype, device=device,
        ),
        batch_size=batch_size,
    )


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
        part = step.transform(part)
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


def _fit_transformers(transformers, X, batch_size):
    """Fit the steps before the detector, in order, without holding all features at once.

    A step with ``partial_fit`` learns from the data (:class:`~skpadim.PatchPCA`): it gets
    one pass over every image, batch by batch. The others (the backbone, the channel draw)
    learn nothing from the images but their shape, and are fitted on the first image.
    """
    for k, (_, step) in enumerate(transformers.steps):
        before = transformers[:k] if k else None
        if hasattr(step, "partial_fit"):
            parts = _image_slices(X, batch_size)
            step.fit(_transform(before, next(parts)))  # fit: a refit starts from scratch
            for part in parts:
                step.partial_fit(_transform(before, part))
        else:
            step.fit(_transform(before, X[:1]))


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
        for part in _image_slices(X, batch_size):
            final.partial_fit(_transform(transformers, part))
            if progress:
                progress.update(len(part))
    finally:
        if close:
            progress.close()
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
