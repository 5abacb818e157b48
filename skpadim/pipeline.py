"""The PaDiM pipeline: the paper's configurations, anomaly maps, and fitting in batches."""

import itertools

import numpy as np
from sklearn.pipeline import Pipeline, make_pipeline

from .exceptions import ConfigurationError, InvalidImageError
from .features import BackboneFeatures
from .gaussian import PatchGaussian
from .preprocessing import n_images
from .selection import RandomFeatureSelector

__all__ = ["PAPER_CONFIGS", "make_padim", "anomaly_maps", "fit_in_batches"]

#: The paper's named configurations: backbone and number of randomly kept channels
#: (None keeps all). "Lite0-Rd100" is skpadim's small offline configuration.
PAPER_CONFIGS = {
    "R18-Rd100": ("resnet18", 100),
    "WR50-Rd550": ("wide_resnet50_2", 550),
    "EfficientNet-B5": ("efficientnet_b5", None),
    "Lite0-Rd100": ("efficientnet_lite0", 100),
}
_DEFAULT_N_FEATURES = {backbone: n for backbone, n in PAPER_CONFIGS.values()}


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


def make_padim(
    backbone="resnet18",
    n_features="auto",
    *,
    layers=None,
    weights="DEFAULT",
    resize=256,
    crop=224,
    interpolation="bicubic",
    reg_covar=0.01,
    contamination=0.01,
    sigma=4.0,
    mode="reflect",
    storage_dtype="float32",
    batch_size=32,
    device="auto",
    verbose=False,
    random_state=None,
):
    """Build PaDiM as a scikit-learn Pipeline: features, random selection, Gaussians.

    The result is ``make_pipeline(BackboneFeatures(...), RandomFeatureSelector(...),
    PatchGaussian(...))`` with the paper's settings, so everything sklearn does with a
    Pipeline (``clone``, ``set_params``, ``GridSearchCV``, ``joblib.dump``) works on it.

    Parameters
    ----------
    backbone : str, default="resnet18"
        A backbone name ("resnet18", "wide_resnet50_2", "efficientnet_b5",
        "efficientnet_lite0") or one of the paper's configurations by name: "R18-Rd100",
        "WR50-Rd550", "EfficientNet-B5" (a "PaDiM-" prefix is allowed), or "Lite0-Rd100".
    n_features : int, None or "auto", default="auto"
        Channels kept by the random selection; "auto" takes the paper's value for the
        backbone (100 for ResNet18, 550 for Wide ResNet-50-2, all for EfficientNet-B5,
        100 for Lite0); None keeps all.
    layers, weights, resize, crop, batch_size, verbose
        Passed to :class:`BackboneFeatures`.
    device : str, default="auto"
        Where the backbone and the Gaussians compute ("auto": CUDA when available).
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        Used both to resize images and to upsample distance maps, as in the paper.
    reg_covar, contamination, sigma, mode, storage_dtype
        Passed to :class:`PatchGaussian`.
    random_state : int, RandomState instance or None, default=None
        Seeds the channel draw (and the weights when ``weights=None``).

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
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
    """
    backbone, n_features = _config(backbone, n_features)
    features = BackboneFeatures(
        backbone=backbone, layers=layers, weights=weights, resize=resize, crop=crop,
        interpolation=interpolation, batch_size=batch_size, device=device, verbose=verbose,
        random_state=random_state,
    )
    map_size = crop if crop is not None else resize
    return make_pipeline(
        features,
        RandomFeatureSelector(n_features=n_features, random_state=random_state),
        PatchGaussian(
            reg_covar=reg_covar, contamination=contamination, batch_size=batch_size,
            map_size=map_size, interpolation=interpolation, sigma=sigma, mode=mode,
            storage_dtype=storage_dtype, device=device,
        ),
    )


def _split(estimator):
    if isinstance(estimator, Pipeline):
        final = estimator._final_estimator
        return estimator[:-1] if len(estimator) > 1 else None, final
    return None, estimator


def _image_slices(X, batch_size):
    n = n_images(X)
    return (X[start : start + batch_size] for start in range(0, n, batch_size))


def anomaly_maps(estimator, X, batch_size=64):
    """Anomaly maps ``(n, H, W)`` at image resolution from a fitted pipeline or detector.

    This is the pipeline-level counterpart of the detectors' own ``anomaly_maps`` method
    (sklearn's Pipeline forwards only its standard methods): ``X`` goes through every step
    but the last, ``batch_size`` images at a time, and the final detector turns the
    features into maps. Higher values are more anomalous.

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
    transformers, final = _split(estimator)
    if not hasattr(final, "anomaly_maps"):
        raise ConfigurationError(
            f"{type(final).__name__} has no anomaly_maps method; the pipeline must end in "
            "PatchGaussian, SPADE, VAE or another skpadim detector"
        )
    maps = [final.anomaly_maps(part if transformers is None else transformers.transform(part))
            for part in _image_slices(X, batch_size)]
    return np.concatenate(maps)


def _fit_transformers(transformers, first, X, batch_size):
    """Fit the steps before the detector, in order, without holding all features at once;
    return the features of ``first``, the first batch of ``X``.

    A step with ``partial_fit`` learns from the data (:class:`~skpadim.PatchPCA`): it gets
    one pass over every image, batch by batch. The others (the backbone, the channel draw)
    learn nothing from the images and are fitted on the first batch.
    """
    for k, (_, step) in enumerate(transformers.steps):
        step.fit(first)  # fit, not partial_fit: a refit starts from scratch
        if hasattr(step, "partial_fit"):
            for part in itertools.islice(_image_slices(X, batch_size), 1, None):
                step.partial_fit(transformers[:k].transform(part) if k else part)
        first = step.transform(first)
    return first


def fit_in_batches(pipeline, X, batch_size=64, calibrate=True):
    """Fit a pipeline whose last step has ``partial_fit``, ``batch_size`` images at a time.

    ``Pipeline.fit`` computes the features of every training image before the last step
    sees any: with thousands of images that alone can exceed memory. Here the transformers
    are fitted on the first batch (the backbone and the channel draw do not learn from data;
    a step with ``partial_fit``, such as :class:`~skpadim.PatchPCA`, gets its own pass over
    every image) and the last step is updated batch by batch with ``partial_fit``, so peak
    memory does not grow with the number of images. The Gaussians equal those of
    ``pipeline.fit(X)``.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        For instance from :func:`make_padim`. Fitted in place.
    X : array-like or list of paths
        Normal training images.
    batch_size : int, default=64
        Images per step.
    calibrate : bool, default=True
        Score the training images again at the end to set the threshold ``offset_`` from
        all of them, as ``fit`` does. This runs the backbone a second time; with False the
        threshold comes from the last batch only.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        The fitted pipeline.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.base import clone
    >>> from skpadim import make_padim, fit_in_batches
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> pipe = make_padim("efficientnet_lite0", n_features=10, weights=None, resize=32,
    ...                   crop=None, random_state=0)
    >>> pipe = fit_in_batches(pipe, images, batch_size=4)   # batches of 4 and 2 images
    >>> pipe[-1].n_samples_seen_
    6
    >>> whole = clone(pipe).fit(images)                     # all images at once
    >>> bool(np.allclose(pipe[-1].mean_, whole[-1].mean_, atol=1e-6))
    True
    >>> bool(np.isclose(pipe[-1].offset_, whole[-1].offset_))
    True
    """
    transformers, final = _split(pipeline)
    if not hasattr(final, "partial_fit"):
        raise ConfigurationError(f"{type(final).__name__} has no partial_fit; use pipeline.fit")
    if n_images(X) < 2:
        raise InvalidImageError("fitting needs at least 2 training images")
    if hasattr(final, "_reset"):
        final._reset()  # a refit starts from scratch, as fit would
    parts = _image_slices(X, batch_size)
    if transformers is not None:
        first = _fit_transformers(transformers, next(parts), X, batch_size)
        parts = itertools.chain([first], map(transformers.transform, parts))
    for part in parts:
        final.partial_fit(part)
    if calibrate:
        # Detectors score their training samples their own way (PatchGaussian: leave-one-out).
        training_scores = getattr(final, "_training_scores", final.score_samples)
        scores = [training_scores(transformers.transform(part) if transformers else part)
                  for part in _image_slices(X, batch_size)]
        final._set_offset(np.concatenate(scores))
    return pipeline
