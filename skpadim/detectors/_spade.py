"""SPADE: anomaly detection by nearest neighbours, first among images, then among patches.

Semantic Pyramid Anomaly Detection (Cohen and Hoshen, 2020), the PaDiM paper's main baseline,
works in two stages:

1. image level: a test image's anomaly score is the mean Euclidean distance from its globally
   average-pooled deepest features to those of its ``n_neighbors`` nearest training images;
2. pixel level: every position of the test image's feature pyramid is compared with a gallery
   holding every position of those nearest training images, and scores the mean distance to
   its ``kappa`` nearest gallery vectors. Each pyramid layer is searched at its own
   resolution; the per-layer maps are interpolated to the finest grid and averaged, and
   :mod:`skpadim.detectors.scoring` upsamples and smooths them like every other detector's.

:class:`~skpadim.SPADE` is the scikit-learn estimator, alone in this module: a thin shell over
:func:`~skpadim.detectors.nearest_neighbors` (in ``_neighbors``: the search itself, exact, over
torch tensors, in chunks of bounded size) and ``_spade_gallery`` (the stored training
features and the two searches run on them). The module reads better whole: most of its
length is the class's documentation (input layout, memory, thresholds), which no split would
shorten. :func:`~skpadim.make_spade`, in :mod:`skpadim.pipeline`, builds the paper's pipeline
(:class:`~skpadim.BackboneFeatures` followed by :class:`~skpadim.SPADE`).
"""

import warnings
from numbers import Integral

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, _fit_context
from .._validation import validate_feature_maps
from .._versioning import VersionedStateMixin
from ..exceptions import InvalidImageError, SkpadimWarning
from ._base import MAP_PARAMETER_CONSTRAINTS, AnomalyMapMixin
from ._spade_gallery import (
    _gallery_part,
    _image_vectors,
    _join_gallery,
    _layer_groups,
    _leave_one_out_map_maxima,
    _mean_distances,
    _native_layers,
    _patch_distances,
)

__all__ = ["SPADE", "SPADE_LAYERS", "PIXEL_CALIBRATION_IMAGES"]

#: Largest patch grid SPADE accepts (positions of the finest tapped layer): 512 x 512
#: images at stride 4. It keeps every training image's feature maps, so memory and search
#: grow with the grid times the training set.
MAX_GRID_POSITIONS = 128 * 128

#: Most training images whose leave-one-out anomaly maps set SPADE's default pixel threshold
#: (spread evenly over the training set): a bounded cost, that of scoring as many images.
PIXEL_CALIBRATION_IMAGES = 64

#: Layers :func:`~skpadim.make_spade` taps by default: the pixel-level pyramid, then the layer whose
#: pooled output compares whole images (the one the classifier pools, as in the paper).
SPADE_LAYERS = {
    "resnet18": ("layer1", "layer2", "layer3", "layer4"),
    "wide_resnet50_2": ("layer1", "layer2", "layer3", "layer4"),
    "efficientnet_b5": ("blocks.7", "blocks.20", "blocks.26", "head"),
    "efficientnet_lite0": ("stage2", "stage3", "stage5", "head"),
}


class SPADE(VersionedStateMixin, AnomalyMapMixin, BaseEstimator):
    """SPADE: k-nearest-neighbour anomaly detection on images, then on patches.

    ``fit`` stores the training features (SPADE learns nothing else). A test image is scored
    by the mean distance of its pooled deepest features to those of its ``n_neighbors``
    nearest training images; its anomaly map gives every patch the mean distance to its
    ``kappa`` nearest patches among all positions of those same training images, layer by
    layer, averaged over layers, then upsampled to ``map_size`` and Gaussian-filtered.

    **Input layout.** SPADE reads the ``(n, C, h, w)`` output of
    :class:`~skpadim.BackboneFeatures`, which concatenates the tapped layers on the grid of the
    first one. ``layer_channels`` (what ``BackboneFeatures.layer_channels_`` reports) says
    how the ``C`` channels split into layers:

    - with two or more layers, the last one is the image-level layer (the paper: ResNet
      ``layer4``) and is only average-pooled; the others form the pixel-level pyramid (the
      paper: ``layer1`` to ``layer3``);
    - with one layer (or ``layer_channels=None``), all channels serve both levels.

    ``layer_strides`` says how much coarser each layer's own grid is than the input grid
    (1, 2, 4, 8 for ResNet layers 1-4). ``BackboneFeatures`` upsamples coarse layers with
    nearest-neighbour interpolation (its default), so each layer's native map is recovered
    exactly by taking one position per upsampled block; the search then runs at the native
    resolution, as the paper's code does, instead of on many copies of each coarse vector.
    Pooling is done on the native maps too. :func:`~skpadim.make_spade` sets both parameters.

    2-D input ``(n_samples, n_features)`` makes SPADE a plain k-nearest-neighbour outlier
    detector: the score is the mean distance to the ``n_neighbors`` nearest training samples
    (of the last channel group when ``layer_channels`` is given).

    **Memory.** The fitted model keeps, for every training image, every pixel-level layer at
    native resolution in ``storage_dtype`` plus the pooled vector in float32:
    ``n_train * (sum_k h_k * w_k * c_k * bytes + c_image * 4)`` bytes, reported exactly in
    ``memory_bytes_``. The model grows with the training set by nature: at 224x224 (pixel
    layers on 56x56, 28x28 and 14x14 grids), ``memory_bytes_ / n_samples_fit_`` is 519,424
    bytes (0.52 MB) per training image for EfficientNet-Lite0 (stages 2, 3 and 5, plus the
    1280-channel head pooled), 1,406,976 bytes (1.4 MB) for ResNet-18 (layers 1-3, plus
    layer4 pooled), and 5.6 MB for Wide ResNet-50-2, about 1.4 GB for 250 images; float16
    storage halves the patch part (262,272 and 704,512 bytes for Lite0 and ResNet-18).
    ``partial_fit`` keeps each batch's features as they come and joins them once, layer by
    layer, when the fit ends, so a streamed fit does not hold two copies of the gallery.
    Stored features stay on the CPU: each test image's own gallery (the positions of its
    ``n_neighbors_`` nearest training images, one layer at a time) is copied to ``device``.

    **Thresholds.** SPADE's image score is not the maximum of its map, so its default pixel
    threshold comes from maps: at the end of a fit, the anomaly maps of at most
    :data:`~skpadim.detectors.PIXEL_CALIBRATION_IMAGES` (64) training images, spread evenly,
    are computed leave-one-out (each image against its nearest *other* training images,
    whatever ``calibration`` says: in-sample, every patch would find itself at distance 0),
    and ``pixel_threshold_`` is the value a fraction ``contamination`` of their maxima
    exceeds, the rule ``offset_`` applies to image scores. That costs as much as scoring
    those images, once per fit. Patch features stored in float16 are compared in float32.

    Parameters
    ----------
    n_neighbors : int, default=50
        Nearest training images per test image (the paper's K). If there are fewer training
        images, all are used and a :class:`~skpadim.exceptions.SkpadimWarning` says so.
    kappa : int, default=1
        Nearest gallery patches averaged for each test patch (the paper's kappa).
    layer_channels : list of int or None, default=None
        Channels of each layer, in input order (see above). None: a single layer.
    layer_strides : list of int or None, default=None
        Stride of each layer relative to the input grid, same length as ``layer_channels``.
        None: every layer is at the input grid's resolution.
    calibration : {"leave-one-out", "in-sample"}, default="leave-one-out"
        Scores the threshold ``offset_`` is taken from. "leave-one-out" scores each training
        image against the others only, which estimates how new normal images score.
        "in-sample" lets each training image find itself (at distance 0) among its
        neighbours, sklearn's convention for training-set contamination.
    chunk_size : int, default=4096
        Block size of the neighbour search (see :func:`~skpadim.detectors.nearest_neighbors`): the
        largest temporary holds ``chunk_size ** 2`` distances (64 MB in float32). Results do not
        depend on it.
    storage_dtype : {"float32", "float16"}, default="float32"
        Precision of the stored patch features; float16 halves the model. Distances are
        always computed in float32 (float64 for 2-D input).
    contamination : float, default=0.01
        Fraction of normal images the threshold ``offset_`` should flag as anomalous.
    map_size : int, (int, int) or None, default=None
        Size of the anomaly maps; None means four times the patch grid.
        :func:`~skpadim.make_spade` sets the network's input size.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        How coarse layers' distance maps are brought to the finest grid, and that grid to
        ``map_size``.
    sigma : float, default=4.0
        Standard deviation of the Gaussian filter on the maps, in map pixels. 0 disables it.
    truncate : float, default=4.0
        Filter radius in standard deviations.
    mode : {"reflect", "mirror", "nearest", "constant", "wrap"}, default="reflect"
        Border mode of the filter, in scipy.ndimage's names.
    device : str or torch.device, default="auto"
        Where distances are computed; "auto" uses CUDA when available. Results come back as
        CPU numpy arrays.

    Attributes
    ----------
    n_features_in_ : int
        Channels (or features, for 2-D input) seen in ``fit``.
    n_samples_fit_ : int
        Number of stored training samples.
    n_neighbors_ : int
        Nearest training images actually used: ``min(n_neighbors, n_samples_fit_)``.
    image_features_ : ndarray of shape (n_samples_fit_, c_image), dtype float32
        Pooled image-level features of the training samples (the samples themselves for 2-D
        input).
    patch_features_ : list of ndarray of shape (n_samples_fit_, h_k, w_k, c_k)
        Each pixel-level layer of every training image at its native resolution, channels
        last, in ``storage_dtype``. Empty for 2-D input.
    layer_grids_ : list of tuple of int
        ``(h_k, w_k)`` of each pixel-level layer, for the grid seen in ``fit``.
    memory_bytes_ : int
        Bytes held by ``image_features_`` and ``patch_features_``: the size of the fitted
        model up to a few kilobytes.
    offset_ : float
        Threshold on ``score_samples``; ``decision_function = score_samples - offset_``.
    image_threshold_ : float
        ``-offset_``: images with ``anomaly_scores`` above it are anomalous.
    pixel_threshold_ : float
        Map values above it mark defective pixels (see Thresholds above); both are fixed
        with ``set_thresholds``.

    See Also
    --------
    make_spade : The paper's pipeline in one call.
    skpadim.PatchGaussian : PaDiM's model, whose size does not grow with the training set.
    sklearn.neighbors.LocalOutlierFactor : Another nearest-neighbour outlier detector.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.detectors import SPADE
    >>> rng = np.random.RandomState(0)
    >>> train = rng.normal(size=(20, 6, 8, 8)).astype(np.float32)  # 20 maps, 6 channels
    >>> test = rng.normal(size=(2, 6, 8, 8)).astype(np.float32)
    >>> test[1, :, 2:4, 5:7] += 8                                   # an odd region
    >>> model = SPADE(n_neighbors=5, layer_channels=[2, 2, 2], layer_strides=[1, 2, 4])
    >>> model = model.fit(train)     # pixel layers on 8x8 and 4x4 grids, image layer pooled
    >>> model.patch_distances(test).shape                           # pixel level
    (2, 8, 8)
    >>> maps = model.anomaly_maps(test)                             # 4 x the grid
    >>> maps.shape, bool(maps[1].max() > maps[0].max())
    ((2, 32, 32), True)
    >>> model.anomaly_scores(test).shape                            # image level
    (2,)
    >>> model.memory_bytes_                  # 20 x (8*8*2 + 4*4*2 + 2) floats x 4 bytes
    12960
    """

    _parameter_constraints = {
        "n_neighbors": [Interval(Integral, 1, None, closed="left")],
        "kappa": [Interval(Integral, 1, None, closed="left")],
        "layer_channels": [None, list, tuple],
        "layer_strides": [None, list, tuple],
        "calibration": [StrOptions({"leave-one-out", "in-sample"})],
        "chunk_size": [Interval(Integral, 1, None, closed="left")],
        "storage_dtype": [StrOptions({"float32", "float16"})],
        "device": [str, torch.device],
        **MAP_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        n_neighbors=50,
        kappa=1,
        layer_channels=None,
        layer_strides=None,
        calibration="leave-one-out",
        chunk_size=4096,
        storage_dtype="float32",
        contamination=0.01,
        map_size=None,
        interpolation="bicubic",
        sigma=4.0,
        truncate=4.0,
        mode="reflect",
        device="auto",
    ):
        self.n_neighbors = n_neighbors
        self.kappa = kappa
        self.layer_channels = layer_channels
        self.layer_strides = layer_strides
        self.calibration = calibration
        self.chunk_size = chunk_size
        self.storage_dtype = storage_dtype
        self.contamination = contamination
        self.map_size = map_size
        self.interpolation = interpolation
        self.sigma = sigma
        self.truncate = truncate
        self.mode = mode
        self.device = device

    # ------------------------------------------------------------------ input handling
    def _validate(self, X, reset):
        X = validate_feature_maps(self, X, reset=reset, dtype=[np.float64, np.float32],
                                  ensure_min_samples=2 if reset else 1)
        if not reset and (X.ndim == 2) != self._flat_:
            seen = "vectors (n, features)" if self._flat_ else "feature maps (n, channels, h, w)"
            raise InvalidImageError(
                f"SPADE was fitted on {seen} but got shape {X.shape}; score data shaped like "
                "the training data"
            )
        return X

    def _groups(self, n_channels):
        """``[(start, stop, stride), ...]`` of each layer, checked against the input."""
        return _layer_groups(n_channels, self.layer_channels, self.layer_strides)

    def _native_layers(self, X):
        """Split ``(n, C, h, w)`` into each layer's native map; returns (pixel maps, pooled)."""
        return _native_layers(X, self._groups(X.shape[1]))

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Store the training features.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps of normal images (at least 2).
        y : array-like of shape (n_samples,) or (n_samples, H, W), default=None
            Optional image labels (1 or -1 = anomalous) or masks: anomalous samples are
            left out, so a labelled set can be passed whole (as GridSearchCV's refit does).

        Returns
        -------
        self : SPADE
            The fitted estimator.
        """
        self._reset()
        self._check_map_size()
        X = self._normal_samples(self._validate(X, reset=True), y)
        self._check_resolution(X)
        self._append(X)
        self._finish()
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Add more normal samples to the stored ones (or start storing).

        The model equals a single ``fit`` on all samples seen, so
        :func:`skpadim.fit_in_batches` can fit a SPADE pipeline without holding every
        training embedding at once. Each call only keeps the new samples' features; they
        are joined into one gallery, and ``offset_`` is computed from all stored samples,
        once, when the model is next used (or read).

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps of normal images.
        y : array-like of shape (n_samples,) or (n_samples, H, W), default=None
            Optional labels or masks; anomalous samples are left out, as in ``fit``.

        Returns
        -------
        self : SPADE
            The updated estimator.
        """
        first = not hasattr(self, "n_samples_fit_")
        if first:
            self._check_map_size()
        X = self._normal_samples(self._validate(X, reset=first), y,
                                 min_samples=2 if first else 1)
        if first:
            self._check_resolution(X)
        if not first and X.ndim == 4 and self._layer_grids(X) != self.layer_grids_:
            raise InvalidImageError(
                f"feature maps of grid {X.shape[2:]} give layer grids {self._layer_grids(X)}, "
                f"not the {self.layer_grids_} stored so far; preprocess every training image "
                "alike"
            )
        self._append(X)
        self._unfinished = True
        return self

    def _check_resolution(self, X):
        """Refuse feature maps too large to keep for every training image (high resolution)."""
        if X.ndim != 4 or X.shape[2] * X.shape[3] <= MAX_GRID_POSITIONS:
            return
        per_image = X[0].size * np.dtype(self.storage_dtype).itemsize
        raise InvalidImageError(
            f"SPADE keeps every training image's feature maps and searches them all for each "
            f"test patch: on a {X.shape[2]}x{X.shape[3]} patch grid that is "
            f"{per_image / 1e6:,.0f} MB per training image, beyond its limit of "
            f"{MAX_GRID_POSITIONS:,} positions (512x512 images). Resize the images "
            "(make_spade(resize=256); skpadim fit --resize 256), or inspect at native "
            "resolution with PaDiM, which tiles images of any size "
            "(make_padim(positions='tile') for surfaces, make_padim(tile=512) for parts)"
        )

    def _reset(self):
        """Forget the stored samples, so that the next partial_fit starts a new model."""
        for name in ("n_samples_fit_", "_pending", "_image_features", "_patch_features",
                     "_unfinished", "_pixel_default", "_grid"):
            self.__dict__.pop(name, None)

    def _layer_grids(self, X):
        return [tuple(m.shape[2:]) for m in self._native_layers(X[:1])[0]]

    def _append(self, X):
        """Keep the features of ``X`` as one more pending chunk; ``_finish`` joins them."""
        image, pixel = _gallery_part(X, self._groups(X.shape[1]), self.storage_dtype)
        pending = self.__dict__.setdefault("_pending", [])
        if not pending and "_image_features" in self.__dict__:
            # partial_fit after the model was finished (and used): continue from its gallery.
            pending.append((self.__dict__.pop("_image_features"),
                            self.__dict__.pop("_patch_features")))
        pending.append((image, pixel))
        # The counts are known without joining the chunks, so they stay plain attributes.
        self._flat_ = X.ndim == 2
        self._grid = None if X.ndim == 2 else tuple(int(g) for g in X.shape[2:])
        self.layer_grids_ = [tuple(p.shape[1:3]) for p in pixel]
        self.n_samples_fit_ = getattr(self, "n_samples_fit_", 0) + image.shape[0]
        self.n_neighbors_ = min(self.n_neighbors, self.n_samples_fit_)
        self.memory_bytes_ = (getattr(self, "memory_bytes_", 0)
                              + int(image.nbytes + sum(p.nbytes for p in pixel)))

    def _finish(self):
        """Join the pending chunks into the gallery, then set ``offset_`` from it."""
        chunks = self.__dict__.pop("_pending", [])
        if chunks:
            self._image_features, self._patch_features = _join_gallery(chunks)
        self._unfinished = False
        if self.n_neighbors > self.n_samples_fit_:
            # Here, not in fit: a streamed fit (partial_fit batches) ends here too.
            warnings.warn(
                f"n_neighbors={self.n_neighbors} exceeds the {self.n_samples_fit_} training "
                f"samples; each test image is compared with all {self.n_samples_fit_} (the "
                "paper's K=50 assumes at least 50 normal images)",
                SkpadimWarning,
                stacklevel=3,
            )
        self._set_offset(self._stored_training_scores())
        self._pixel_default = None if self._flat_ else self._leave_one_out_pixel_threshold()

    @property
    def image_features_(self):
        """Pooled image-level features of the training samples (see the class docstring)."""
        self._ensure_finished()
        return self._fitted("_image_features")

    @property
    def patch_features_(self):
        """Each pixel-level layer of every training image (see the class docstring)."""
        self._ensure_finished()
        return self._fitted("_patch_features")

    def _fitted(self, name):
        try:
            return self.__dict__[name]
        except KeyError:
            raise AttributeError(f"SPADE has no {name[1:]}_ yet: fit it first") from None

    # ------------------------------------------------------------------ calibration
    def _stored_training_scores(self):
        """``score_samples`` of the stored training samples, as ``calibration`` asks."""
        queries = torch.from_numpy(self._image_features)
        if self.calibration == "in-sample":
            return -self._image_scores(queries)
        return -self._image_scores(queries, exclude=torch.arange(self.n_samples_fit_))

    def _training_scores(self, X):
        """``score_samples`` of training samples ``X`` (already stored), for
        :func:`skpadim.fit_in_batches`. With leave-one-out calibration each sample's nearest
        stored sample, itself, is left out."""
        self._ensure_finished()
        X = self._validate(X, reset=False)
        queries = self._image_queries(X)
        if self.calibration == "in-sample":
            return -self._image_scores(queries)
        k = min(self.n_neighbors_ + 1, self.n_samples_fit_)
        return -_mean_distances(queries, self._image_features, k, self.chunk_size, self.device,
                                skip=1)

    def _default_pixel_threshold(self):
        """The map value a fraction ``contamination`` of leave-one-out training maps'
        maxima exceeds (see the class description); for 2-D input, whose "map" is the
        image score itself, the image threshold."""
        if self._flat_:
            return self.image_threshold_
        value = self.__dict__.get("_pixel_default")
        if value is None:  # a model saved before pixel thresholds existed: compute it now
            value = self._pixel_default = self._leave_one_out_pixel_threshold()
        return value

    def _leave_one_out_pixel_threshold(self):
        maxima = self._leave_one_out_map_maxima()
        return -self._contamination_percentile(-maxima)

    def _leave_one_out_map_maxima(self, chunk=8):
        """Maximum of the anomaly map of up to ``PIXEL_CALIBRATION_IMAGES`` training images,
        each scored against its nearest other training images."""
        n = self.n_samples_fit_
        chosen = np.unique(np.linspace(0, n - 1, min(n, PIXEL_CALIBRATION_IMAGES))
                           .round().astype(np.int64))
        grid = self.__dict__.get("_grid")
        if grid is None:  # models saved before the grid was kept: the first layer's
            stride = 1 if self.layer_strides is None else int(self.layer_strides[0])
            grid = tuple(stride * g for g in self.layer_grids_[0])
        return _leave_one_out_map_maxima(
            self._image_features, self._patch_features, chosen, min(self.n_neighbors_, n - 1),
            grid, self._distances_to_maps, chunk=chunk, **self._patch_search())

    # ------------------------------------------------------------------ scoring
    def _patch_search(self):
        """The settings of the patch-level search, as ``_patch_distances`` takes them."""
        return dict(kappa=self.kappa, chunk_size=self.chunk_size, device=self.device,
                    interpolation=self.interpolation)

    def _image_scores(self, queries, exclude=None):
        k = self.n_neighbors_
        if exclude is not None:
            k = min(k, self.n_samples_fit_ - 1)
        return _mean_distances(queries, self._image_features, k, self.chunk_size, self.device,
                               exclude=exclude)

    def _image_queries(self, X):
        # 2-D input is computed in float64: it costs nothing there and keeps sklearn's
        # batch-invariance checks exact.
        dtype = np.float64 if X.ndim == 2 else np.float32
        vectors = _image_vectors(X, self._groups(X.shape[1]))
        return torch.from_numpy(np.ascontiguousarray(vectors, dtype=dtype))

    def anomaly_scores(self, X):
        """Image-level anomaly scores: mean distance to the nearest training images.

        This is SPADE's image score (not the maximum of the anomaly map): the mean Euclidean
        distance between the pooled image-level features of each sample and those of its
        ``n_neighbors_`` nearest training samples. Higher = more anomalous.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
            float32 for feature maps, float64 for 2-D input.
        """
        check_is_fitted(self)
        self._ensure_finished()
        X = self._validate(X, reset=False)
        return self._image_scores(self._image_queries(X))

    def _patch_distances(self, X):
        X = self._validate(X, reset=False)
        queries = self._image_queries(X)
        if X.ndim == 2:
            return self._image_scores(queries)
        pixel_maps, _ = self._native_layers(X)
        return _patch_distances(queries, pixel_maps, self._image_features, self._patch_features,
                                self.n_neighbors_, X.shape[2:], **self._patch_search())

    def __setstate__(self, state):
        # Models pickled before partial_fit deferred its work kept the arrays (and offset_)
        # as plain attributes, and a cache of norms that is no longer used.
        for old, new in (("image_features_", "_image_features"),
                         ("patch_features_", "_patch_features"), ("offset_", "_offset")):
            if old in state:
                state[new] = state.pop(old)
        state.pop("_norms_cache", None)
        super().__setstate__(state)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags
