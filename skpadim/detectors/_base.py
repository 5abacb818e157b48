"""What every skpadim detector shares: sklearn's outlier interface on top of anomaly maps.

A detector subclass supplies ``_patch_distances(X)``: ``(n, h, w)`` patch-level distances
(higher = more anomalous) for spatial input, or ``(n,)`` for plain 2-D feature vectors. This
mixin turns them into maps and image scores through :mod:`skpadim.detectors.scoring`, and into
sklearn's conventions: ``score_samples`` (higher = more normal), ``offset_`` from ``contamination``,
``decision_function`` and ``predict``.

**Thresholds.** An image is anomalous when its anomaly score is strictly above
``image_threshold_`` (``-offset_``); a pixel when its map value is strictly above
``pixel_threshold_``. ``fit`` sets both from ``contamination``; ``set_thresholds`` fixes
them (:mod:`skpadim.evaluation` chooses them on validation images). A fixed pixel threshold
is kept in ``_pixel_threshold``; None (and models saved before it existed) means the
default rule of ``_default_pixel_threshold``.

**Streaming protocol.** ``partial_fit`` only accumulates (sums, stored samples); the costly
last step of a fit (factorising, setting ``offset_``) runs once, in ``_finish``, either when
the fit ends (``fit``, :func:`skpadim.fit_in_batches`, a streaming pipeline) or lazily when
the model is first used after ``partial_fit``. A subclass that defers work sets
``self._unfinished = True`` in ``partial_fit`` and implements ``_finish``; every scoring entry
point calls ``_ensure_finished`` first.
"""

import math
import warnings
from numbers import Integral, Real

import numpy as np
from sklearn.base import OutlierMixin
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions
from .._labels import as_anomaly_labels
from ..exceptions import ConfigurationError, InvalidImageError, SkpadimWarning
from ..features._tile_samples import TileSamples
from . import scoring


def _n_samples(X):
    shape = getattr(X, "shape", None)
    return shape[0] if shape is not None else len(X)


# The stride of the first tapped layer of every built-in backbone: a 56x56 patch grid comes
# from a 224x224 image. Used only when ``map_size`` is left at None.
DEFAULT_GRID_STRIDE = 4

MAP_PARAMETER_CONSTRAINTS = {
    "contamination": [Interval(Real, 0, 0.5, closed="right")],
    "map_size": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
    "interpolation": [StrOptions(set(scoring.INTERPOLATIONS))],
    "sigma": [Interval(Real, 0, None, closed="left")],
    "truncate": [Interval(Real, 0, None, closed="neither")],
    "mode": [StrOptions(set(scoring.BORDER_MODES))],
}


class AnomalyMapMixin(OutlierMixin):
    """Outlier-detector methods derived from ``_patch_distances``.

    Subclasses declare ``contamination``, ``map_size``, ``interpolation``, ``sigma``,
    ``truncate`` and ``mode`` as parameters (see ``MAP_PARAMETER_CONSTRAINTS``).
    """

    def _finish(self):
        """Complete a fit that ``partial_fit`` left open (subclasses that defer work)."""

    def _ensure_finished(self):
        """Run ``_finish`` once after the last ``partial_fit``, before the model is used."""
        if self.__dict__.get("_unfinished"):
            self._finish()
            self._unfinished = False

    @property
    def offset_(self):
        """Threshold on ``score_samples``; ``decision_function = score_samples - offset_``."""
        self._ensure_finished()
        try:
            return self.__dict__["_offset"]
        except KeyError:
            raise AttributeError(
                f"{type(self).__name__} has no offset_ yet: fit it first"
            ) from None

    @offset_.setter
    def offset_(self, value):
        self._offset = float(value)

    @property
    def image_threshold_(self):
        """Threshold on anomaly scores: an image scoring above it is anomalous.

        In anomaly-score units (``anomaly_scores``, higher = more anomalous); it is
        ``-offset_``. Set it with ``set_thresholds``.
        """
        return -self.offset_

    @property
    def pixel_threshold_(self):
        """Threshold on anomaly-map values: a pixel above it is marked defective.

        Binary defect masks are ``anomaly_maps(X) > pixel_threshold_``. Until
        ``set_thresholds`` fixes it, it follows from ``contamination``: for detectors whose
        image score is the map's maximum (PatchGaussian, VAE) it is ``image_threshold_``,
        so a pixel above it alone makes its image anomalous; SPADE applies the same rule to
        leave-one-out maps of its training images (see its description).
        """
        self._ensure_finished()
        value = self.__dict__.get("_pixel_threshold")
        return self._default_pixel_threshold() if value is None else value

    def _default_pixel_threshold(self):
        """The pixel threshold while none is set: the image threshold, for detectors whose
        image score is the map maximum (subclasses that score images otherwise override)."""
        return self.image_threshold_

    def set_thresholds(self, image=None, pixel=None):
        """Fix the image and pixel thresholds, in anomaly units; None keeps one as it is.

        The values replace the ``contamination`` rule until the next fit, and are saved
        with the model (:func:`skpadim.save`, :func:`skpadim.export_onnx`).
        :func:`skpadim.evaluation.tune_thresholds` chooses them on validation images.
        While no pixel threshold is set, PatchGaussian's and the VAE's follows the image
        threshold.

        Parameters
        ----------
        image : float or None, default=None
            New ``image_threshold_``: images with ``anomaly_scores > image`` are anomalous
            (``offset_`` becomes ``-image``).
        pixel : float or None, default=None
            New ``pixel_threshold_``: pixels with a map value ``> pixel`` are defective.

        Returns
        -------
        self : object
            The detector.

        Examples
        --------
        >>> import numpy as np
        >>> from skpadim import PatchGaussian
        >>> X = np.random.RandomState(0).normal(size=(20, 3))
        >>> model = PatchGaussian().fit(X).set_thresholds(image=4.0, pixel=5.0)
        >>> model.image_threshold_, model.offset_, model.pixel_threshold_
        (4.0, -4.0, 5.0)
        >>> bool((model.predict(X) == np.where(model.anomaly_scores(X) > 4.0, -1, 1)).all())
        True
        """
        check_is_fitted(self)
        self._ensure_finished()
        image, pixel = (None if v is None else _finite_threshold(v, name)
                        for v, name in ((image, "image"), (pixel, "pixel")))
        if image is not None:
            self.offset_ = -image
        if pixel is not None:
            self._pixel_threshold = pixel
        return self

    def _map_size(self, grid_shape):
        if self.map_size is None:
            return tuple(DEFAULT_GRID_STRIDE * g for g in grid_shape)
        size = (self.map_size,) * 2 if isinstance(self.map_size, Integral) else self.map_size
        if len(size) != 2 or not all(isinstance(s, Integral) and s >= 1 for s in size):
            raise InvalidImageError(
                f"map_size must be a positive int or (height, width) of positive ints, got "
                f"{self.map_size!r}"
            )
        return tuple(int(s) for s in size)

    def _check_map_size(self):
        """Fail in ``fit`` on a bad ``map_size``, not when maps are first asked for."""
        self._map_size((1, 1))

    def patch_distances(self, X):
        """Distance of every patch to its normal model: the paper's raw anomaly measure.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps, or feature vectors (the 1x1-grid case).

        Returns
        -------
        distances : ndarray of shape (n_samples, h, w) or (n_samples,)
            Higher = more anomalous.
        """
        check_is_fitted(self)
        self._ensure_finished()
        if isinstance(X, TileSamples):
            raise InvalidImageError(
                "tiles handed on as samples have no whole-image patch grid; use "
                "anomaly_maps, which stitches the tiles' maps at the image's resolution"
            )
        return self._patch_distances(X)

    def anomaly_maps(self, X):
        """Anomaly maps at image resolution: distances upsampled and Gaussian-smoothed.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w)
            Feature maps.

        Returns
        -------
        maps : ndarray of shape (n_samples, H, W), dtype float32
            Higher = more anomalous. ``(H, W)`` is ``map_size``.
        """
        if isinstance(X, TileSamples):
            check_is_fitted(self)
            self._ensure_finished()
            return self._tile_maps(X)
        distances = self.patch_distances(X)
        if distances.ndim != 3:
            raise InvalidImageError(
                "anomaly maps need spatial feature maps (n, channels, h, w); 2-D input has no "
                "spatial layout: use anomaly_scores or score_samples instead"
            )
        return self._distances_to_maps(distances)

    def _tile_maps(self, samples):
        """Maps of images whose tiles are the samples: each tile's distances are upsampled
        to its pixels, the kept parts pasted into one map per image, and the Gaussian
        filter runs on the whole map (:func:`scoring.stitch_tile_maps`)."""
        maps = [None] * len(samples)
        for chunk in samples:
            (r0, r1), (c0, c1) = chunk.tiles[0]
            tile_maps = scoring.upsample_maps(
                self._patch_distances(chunk.features), (r1 - r0, c1 - c0), self.interpolation)
            if maps[chunk.image] is None:
                maps[chunk.image] = np.empty(chunk.image_size, dtype=np.float32)
            scoring.stitch_tile_maps(tile_maps, list(zip(chunk.tiles, chunk.kept)),
                                     chunk.image_size, out=maps[chunk.image])
        if len({m.shape for m in maps}) > 1:
            raise InvalidImageError(
                f"images of different sizes {sorted({m.shape for m in maps})} cannot share "
                "one array of maps; score them one at a time (batch_size=1) or in groups "
                "of one size"
            )
        return scoring.gaussian_smooth(np.stack(maps), sigma=self.sigma,
                                       truncate=self.truncate, mode=self.mode)

    def _distances_to_maps(self, distances):
        return scoring.anomaly_maps(
            distances,
            self._map_size(distances.shape[1:]),
            interpolation=self.interpolation,
            sigma=self.sigma,
            truncate=self.truncate,
            mode=self.mode,
        )

    def anomaly_scores(self, X):
        """Image-level anomaly scores: the maximum of each anomaly map (higher = worse).

        For 2-D input (one patch per sample) the score is the patch distance itself, which is
        what the maximum of an upsampled, smoothed constant map would be.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        check_is_fitted(self)
        self._ensure_finished()
        if isinstance(X, TileSamples):
            return scoring.image_scores(self._tile_maps(X))
        # A chunk of samples at a time: some detectors' distances are full-resolution maps
        # (the VAE's), which for a whole test set would grow with its size.
        step = getattr(self, "batch_size", None) or 32
        if not hasattr(X, "shape") and not hasattr(X, "__len__"):
            X = np.asarray(X)  # array-likes that only convert (sklearn's _NotAnArray)
        n = _n_samples(X)
        if n == 0:
            return self._distances_to_scores(self._patch_distances(X))
        return np.concatenate([
            self._distances_to_scores(self._patch_distances(X[start : start + step]))
            for start in range(0, n, step)
        ])

    def _distances_to_scores(self, distances, chunk=32):
        if distances.ndim == 1:
            return distances
        # Maps are made a chunk at a time and reduced at once: full-resolution maps of a
        # whole test set would grow with its size.
        return np.concatenate([
            scoring.image_scores(self._distances_to_maps(distances[start : start + chunk]))
            for start in range(0, len(distances), chunk)
        ])

    def _maps_and_scores(self, X):
        """Anomaly maps and image anomaly scores of the same samples, from one pass.

        The score is the maximum of the map, unless the detector scores images its own way
        (it overrides ``anomaly_scores``, as SPADE does), in which case that is computed from
        the same input.
        """
        maps = self.anomaly_maps(X)
        if (type(self).anomaly_scores is AnomalyMapMixin.anomaly_scores
                or isinstance(X, TileSamples)):
            return maps, scoring.image_scores(maps)
        return maps, np.asarray(self.anomaly_scores(X))

    def score_samples(self, X):
        """Normality of each sample, sklearn's convention: higher = more normal.

        This is ``-anomaly_scores(X)``.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)

        Returns
        -------
        scores : ndarray of shape (n_samples,)
        """
        return -self.anomaly_scores(X)

    def decision_function(self, X):
        """``score_samples(X) - offset_``: negative for samples predicted anomalous.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)

        Returns
        -------
        decision : ndarray of shape (n_samples,)
        """
        return self.score_samples(X) - self.offset_

    def predict(self, X):
        """+1 for normal samples, -1 for anomalies, using the threshold ``offset_``.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)

        Returns
        -------
        labels : ndarray of shape (n_samples,), values in {-1, +1}
        """
        return np.where(self.decision_function(X) >= 0, 1, -1)

    @staticmethod
    def _normal_samples(X, y, min_samples=2):
        """Drop the samples ``y`` labels anomalous, so fitting uses normal samples only, and
        check that at least ``min_samples`` remain.

        Detectors learn normality; a labelled set passed whole (GridSearchCV's refit does
        this) would otherwise teach them its defects. ``y`` that is not a set of anomaly
        labels is ignored with a warning, as sklearn's outlier detectors ignore ``y``.
        """
        anomalous = None
        if y is not None:
            try:
                anomalous = as_anomaly_labels(y)
            except InvalidImageError as exc:
                warnings.warn(f"y ignored: {exc}; fitting on all samples", SkpadimWarning)
        if anomalous is not None:
            if len(anomalous) != len(X):
                raise InvalidImageError(f"{len(X)} samples but {len(anomalous)} labels in y")
            if np.ndim(y) == 1 and anomalous.all() and set(np.unique(y).tolist()) == {1}:
                # All ones: "all anomalous" as 0/1 labels, "all normal" as sklearn's -1/+1.
                # A training set is normal, and NormalOnlyKFold's folds of -1/+1 labels are
                # exactly this.
                anomalous = None
        if anomalous is not None and anomalous.any():
            keep = np.flatnonzero(~anomalous)
            X = [X[i] for i in keep] if isinstance(X, list) else X[keep]
        if len(X) < min_samples:
            dropped = ("" if anomalous is None else
                       f" after leaving out the {int(anomalous.sum())} that y marks anomalous")
            raise InvalidImageError(
                f"fitting needs at least {min_samples} normal samples, got {len(X)}{dropped}"
            )
        return X

    def _contamination_percentile(self, training_scores):
        """The ``contamination`` percentile of ``score_samples``-like values (higher =
        more normal): a fraction ``contamination`` of them lies below it."""
        training_scores = np.asarray(training_scores)
        if not np.isfinite(training_scores).all():
            raise InvalidImageError(
                f"{type(self).__name__} gives {int((~np.isfinite(training_scores)).sum())} of "
                f"its {training_scores.size} training samples a NaN or infinite score, so no "
                "threshold can be set; check the training images and the settings (for a "
                "VAE: a smaller learning_rate)"
            )
        return float(np.percentile(training_scores, 100.0 * self._sample_contamination()))

    def _sample_contamination(self):
        """``contamination`` per training sample. Fitted on tiles, an image is flagged when
        any of its ``k = samples_per_image_`` tiles is, so each tile is flagged with the
        probability ``1 - (1 - contamination) ** (1 / k)`` that flags ``contamination`` of
        images whose tiles are independent."""
        k = self.__dict__.get("samples_per_image_", 1.0)
        if k == 1:
            return self.contamination
        return 1.0 - (1.0 - self.contamination) ** (1.0 / k)

    def _set_offset(self, training_scores):
        """Threshold so that a fraction ``contamination`` of the training samples is flagged.

        A fit ends here, so a pixel threshold fixed for the previous fit is dropped too.
        """
        self.offset_ = self._contamination_percentile(training_scores)
        self._pixel_threshold = None


def _finite_threshold(value, name):
    # bool is a Real to Python, but image=True is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value):
        raise ConfigurationError(
            f"the {name} threshold must be a finite float (anomaly units, higher = more "
            f"anomalous) or None to keep it, got {value!r}"
        )
    return float(value)
