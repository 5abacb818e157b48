"""PaDiM's normality model: one multivariate Gaussian per patch position.

:class:`PatchGaussian` is the thin scikit-learn estimator around maths that lives beside it,
in plain functions over torch tensors laid out positions-first, ``(n_positions, n_samples,
n_features)``: it streams training batches into :class:`~skpadim.detectors.PatchMoments`
(``_moments``), turns the finished moments into Cholesky factors of the precisions
(:func:`~skpadim.detectors.precision_cholesky`, ``_mahalanobis``), keeps those packed when
saved (``_packed``) and scores by :func:`~skpadim.detectors.mahalanobis`; covariances
shared by blocks of positions (``covariance_block``) are laid out and pooled by
``_blocks``. The functions above the class go from moments to the fitted state and back.

The module is over 500 lines and reads better whole: the class, with the documentation a
public estimator owes its users, is most of it, and its code is already a thin shell.
"""

from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, StrOptions, _fit_context
from .._torch import from_numpy, resolve_device
from .._validation import validate_feature_maps
from .._versioning import VersionedStateMixin
from ..exceptions import ConfigurationError, InvalidImageError
from ._base import MAP_PARAMETER_CONSTRAINTS, AnomalyMapMixin
from ._blocks import (
    block_index,
    block_mahalanobis,
    block_members,
    pool_scatter,
    refuse_shrinkage,
)
from ._calibration import SystematicSample

# precision_cholesky by name: _factorise looks it up here (tests count its calls).
from ._mahalanobis import (
    _covariances_from_factors,
    leave_one_out_distances,
    mahalanobis,
    precision_cholesky,
)
from ._moments import PatchMoments, _estimate_covariance, _moments_on, _same_blocks
from ._packed import pack_upper, unpack_upper

__all__ = ["PatchGaussian"]


def _storage(storage_dtype):
    """The torch dtype of a ``storage_dtype`` parameter."""
    return torch.float16 if storage_dtype == "float16" else torch.float32


def _factorise(moments, covariance, reg_covar, storage_dtype, chunk=64):
    """Means, shrinkage intensities and precision factors of finished moments.

    Positions (or blocks of positions, for block moments) are factorised in chunks, which
    bounds the float64 temporaries; shrinkage is applied per chunk, vectorised over its
    positions. The factors are rounded to ``storage_dtype`` (what a saved model keeps) and
    held as float32 matrices ready for scoring.

    Parameters
    ----------
    moments : PatchMoments
        Sums over at least 2 samples.
    covariance : {"empirical", "oas", "ledoit-wolf"}
        The estimate, as :class:`PatchGaussian`'s parameter of that name.
    reg_covar : float
        Added to the diagonal of each covariance, after any shrinkage.
    storage_dtype : {"float32", "float16"}
        Precision the factors are rounded to.
    chunk : int, default=64
        Positions (or blocks) factorised at once.

    Returns
    -------
    mean : ndarray of shape (n_positions, n_features), dtype float32
    shrinkage : ndarray of shape (n_blocks,), dtype float64
    precision_cholesky : torch.Tensor of shape (n_blocks, n_features, n_features)
        float32, on the CPU; ``n_blocks`` is ``n_positions`` for per-position moments.
    """
    storage = _storage(storage_dtype)
    mean = moments.mean
    # Sums propagate NaN and inf; isfinite on the whole buffer would allocate its size.
    if not torch.isfinite(mean.sum()) or not torch.isfinite(moments.sum_sq.sum()):
        raise InvalidImageError(
            "the fitted means or covariances hold NaN or infinite values (features too "
            "large for float32?); check the images and the steps before this one"
        )
    n_blocks, d = moments.sum_sq.shape[0], mean.shape[1]
    members = moments.block_members()
    chol = torch.empty(n_blocks, d, d, dtype=torch.float32)
    shrinkage = torch.zeros(n_blocks, dtype=torch.float64)
    finite = True
    for start in range(0, n_blocks, chunk):
        cov, rho = _estimate_covariance(moments, slice(start, start + chunk), covariance,
                                        members)
        shrinkage[start : start + chunk] = rho.cpu()
        factors = precision_cholesky(cov, reg_covar).cpu().to(storage)
        finite = finite and bool(torch.isfinite(factors).all())
        chol[start : start + chunk] = factors
    if not finite:
        raise InvalidImageError(
            f"the precision factors overflow {storage_dtype} (features with very "
            f"small variance and reg_covar={reg_covar}); use storage_dtype='float32' "
            "or a larger reg_covar"
        )
    return mean.to(torch.float32).cpu().numpy(), shrinkage.numpy(), chol


def _moments_from_factors(mean, prec_chol, count, reg_covar, shrinkage=None, blocks=None):
    """Moments that reproduce fitted Gaussians: :func:`_factorise` undone, up to rounding.

    A model restored from disk keeps its means and factors but not its sums; these moments
    let ``partial_fit`` continue its fit. The fourth moments are lost (see
    :meth:`PatchMoments.from_mean_covariance`).

    Parameters
    ----------
    mean : ndarray of shape (n_positions, n_features)
    prec_chol : ndarray of shape (n_blocks, n_features, n_features)
        Precision factors of the regularised (and maybe shrunk) covariances.
    count : int
        Number of samples the model was fitted on.
    reg_covar : float
        The regulariser in the factors.
    shrinkage : ndarray of shape (n_positions,) or None, default=None
        Intensities the covariances were shrunk with; None if they were not.
    blocks : torch.Tensor of shape (n_positions,) or None, default=None
        The block of each position, for shared covariances; None: one per position.

    Returns
    -------
    moments : PatchMoments
    """
    U = torch.from_numpy(prec_chol).to(torch.float64)
    cov = _covariances_from_factors(U)
    d = cov.shape[-1]
    eye = torch.eye(d, dtype=torch.float64)
    cov = cov - reg_covar * eye
    n = count
    if shrinkage is not None:
        rho = torch.from_numpy(shrinkage)
        if bool((rho >= 1).any()):
            raise InvalidImageError(
                "cannot continue this fit: a position was shrunk with intensity 1, which "
                "loses its sample covariance; refit on all images instead"
            )
        # Undo (1 - rho) S + rho tr(S) / d I (the trace is kept), then rescale the
        # maximum-likelihood S to the n - 1 covariance the moments reproduce.
        target = cov.diagonal(dim1=1, dim2=2).sum(dim=1) / d
        ml = (cov - (rho * target)[:, None, None] * eye) / (1 - rho)[:, None, None]
        cov = ml * n / (n - 1)
    return PatchMoments.from_mean_covariance(n, torch.from_numpy(mean), cov, blocks)


def _new_moments(batch, grid_shape, covariance_block):
    """Empty moments summed around ``batch``'s mean (positions first), with one scatter per
    ``covariance_block x covariance_block`` block of ``grid_shape`` when that exceeds 1."""
    blocks = None if covariance_block == 1 else block_index(grid_shape, covariance_block)
    return PatchMoments.empty(batch.mean(dim=1, dtype=torch.float64), blocks)


def _moments_in_blocks(moments, blocks):
    """``moments`` laid out for ``blocks`` (None: per position): per-position moments are
    pooled into blocks; moments pooled in other blocks are refused."""
    if moments.block_index is None and blocks is not None:
        return moments._replace(sum_sq=pool_scatter(moments.sum_sq, blocks), sum_quartic=None,
                                sum_cubic=None, block_index=blocks.to(moments.sum.device))
    if not _same_blocks(moments.block_index, blocks):
        raise ConfigurationError(
            "these moments pool their positions in other blocks than covariance_block and "
            "grid_shape make; pass the covariance_block they were accumulated with"
        )
    return moments


class PatchGaussian(VersionedStateMixin, AnomalyMapMixin, BaseEstimator):
    """PaDiM's normality model: a Gaussian per patch position, scored by Mahalanobis distance.

    For every position ``(i, j)`` of the feature grid, ``fit`` estimates the mean and the
    sample covariance (divided by ``n - 1``) of the training embeddings, or a shrinkage
    estimate of it (see ``covariance``), adds ``reg_covar`` to the diagonal, and keeps the
    Cholesky factor of the precision matrix. A test patch's
    anomaly is its Mahalanobis distance to its position's Gaussian; distances are upsampled to
    ``map_size``, Gaussian-filtered, and the image score is the maximum of the map.

    Fitting streams over ``batch_size`` samples at a time and accumulates float64 sums
    (:class:`~skpadim.detectors.PatchMoments`), so memory does not grow with the number of
    training images, and :meth:`partial_fit` continues a fit with more images, giving the same
    model as one
    ``fit`` on all of them. The factors are computed once, when the fit ends or, after
    ``partial_fit``, when the model is first used.

    **Threshold without a second pass.** ``offset_`` is a percentile of training scores
    under the finished model, so the samples scored must still be at hand when the fit
    ends. The model keeps an evenly spread, deterministic sample of at most
    ``calibration_size`` training samples (every k-th one, k doubling as the stream grows;
    all of them up to ``calibration_size``) and scores those: no training image is sent
    through the backbone twice, and memory stays bounded.

    With 2-D input ``(n_samples, n_features)`` the grid is a single position and this is a
    plain regularised Mahalanobis outlier detector.

    Parameters
    ----------
    reg_covar : float, default=0.01
        Added to the diagonal of each covariance (the paper's epsilon), after any shrinkage.
        0 is allowed where the covariances are positive definite, which shrinkage ensures
        even with fewer training samples than features.
    covariance : {"empirical", "oas", "ledoit-wolf"}, default="empirical"
        Covariance estimate per position. "empirical" is the paper's: the sample covariance,
        divided by ``n - 1``. "oas" and "ledoit-wolf" are the shrunk covariances of
        :class:`sklearn.covariance.OAS` and :class:`sklearn.covariance.LedoitWolf`
        (``assume_centered=False``) exactly: ``(1 - rho) S + rho tr(S) / d I`` with ``S``
        the maximum-likelihood covariance (divided by ``n``) and a per-position intensity
        ``rho`` estimated from the data (:mod:`skpadim.detectors`). Both are computed from
        the streamed moments, so ``partial_fit`` and merged moments give the same model as
        one ``fit``; "ledoit-wolf" also needs fourth moments, which a model loaded from disk
        no longer has (continuing such a fit with ``partial_fit`` raises). See the user
        guide's "Shrinkage covariance" for when it helps.
    covariance_block : int, default=1
        Side ``k`` of the blocks of ``k x k`` neighbouring positions that share one
        covariance; every position keeps its own mean. The memory of the fit's scatter sums
        and of the model's factors drops by ``k^2`` (100 features on a 512 x 512 grid: 10.6
        GB of float64 scatter sums and 5.3 GB of saved factors at ``k=1``, 0.66 GB and 0.33
        GB at ``k=4``; the per-position means and sums, 0.42 GB, stay). Blocks
        tile the grid from the top-left; where ``k`` does not divide it, the last row and
        column of blocks are smaller. A block's covariance is the pooled within-position
        covariance: each position's samples centred on that position's mean, summed over
        the block and divided by ``sum (n - 1)`` over its positions. 1 is the paper's
        model. Only with ``covariance="empirical"``: shrinkage intensities are estimated
        per position, and a ``ConfigurationError`` says so. Leaving an image out of a
        shared covariance removes a sample from every position of its block; the
        leave-one-out ``calibration`` downdates it in closed form for all of them at once
        (exact without ``reg_covar``, as for single positions).
    contamination : float, default=0.01
        Fraction of normal images the threshold ``offset_`` flags as anomalous; see
        ``calibration`` for which scores it is taken from.
    calibration : {"leave-one-out", "in-sample"}, default="leave-one-out"
        Scores the threshold is computed from. "leave-one-out" scores each training image
        by the model fitted without it (in closed form, see
        :func:`~skpadim.detectors.leave_one_out_distances`), which estimates how new normal images
        score, so about ``contamination`` of them are flagged. "in-sample" uses the fitted model's
        own scores of the training images, sklearn's convention (exactly ``contamination`` of
        the training images are flagged), which is optimistic: in-sample distances are
        small, and with 100 dimensions and a few hundred images many new normal images
        would be flagged. The closed form is exact for the unregularised sample covariance;
        with ``reg_covar`` and, more so, with shrinkage (whose intensity would also change
        without the sample) it is an approximation.
    calibration_size : int, "auto" or None, default="auto"
        Most training samples kept to set ``offset_`` (see above); they are dropped when the
        model is saved. With at most this many training samples, all of them are scored,
        exactly as a second pass over the data would; beyond it, between
        ``calibration_size / 2`` and ``calibration_size`` evenly spaced ones are. Each costs
        one feature map of memory (1.25 MB for 100 channels on a 56x56 grid). "auto" keeps
        as many as fit in 64 MB, and at least 64; None keeps every training sample (memory
        then grows with the training set).
    batch_size : int, default=32
        Samples processed at once in ``fit`` and when scoring. Results do not depend on it.
    map_size : int, (int, int) or None, default=None
        Size of the anomaly maps, normally the size of the image the network saw. None
        means four times the patch grid, which is the input size for every built-in backbone
        (their first tapped layer has stride 4); :func:`skpadim.make_padim` sets it
        explicitly.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        How distance maps are upsampled (the paper: bicubic; anomalib: bilinear).
    sigma : float, default=4.0
        Standard deviation of the Gaussian filter on the maps, in map pixels. 0 disables it.
    truncate : float, default=4.0
        Filter radius in standard deviations.
    mode : {"reflect", "mirror", "nearest", "constant", "wrap"}, default="reflect"
        Border mode of the filter, in scipy.ndimage's names (anomalib's is "mirror").
    storage_dtype : {"float32", "float16"}, default="float32"
        Precision in which the Cholesky factors are stored. float16 halves the fitted model's
        size at a small cost in accuracy (see ``benchmarks/bench_padim.py``).
    device : str, default="auto"
        Where moments are accumulated and distances computed: "auto" uses CUDA when
        available, else the CPU. Results come back as CPU arrays and the fitted model is
        stored on the CPU, so it loads anywhere.

    Attributes
    ----------
    n_features_in_ : int
        Number of channels (or features for 2-D input) seen in ``fit``.
    grid_shape_ : tuple of int
        ``(h, w)`` of the feature maps; ``(1, 1)`` for 2-D input.
    n_samples_seen_ : int
        Number of training samples the model is built from.
    mean_ : ndarray of shape (h * w, n_features_in_), dtype float32
        Per-position means, positions in row-major order.
    covariance_block_ : int
        The ``covariance_block`` the model was fitted with.
    block_index_ : ndarray of shape (h * w,), dtype int64
        The covariance (row of ``precisions_cholesky_``) of each position, positions in
        row-major order, blocks numbered row-major; ``arange(h * w)`` when
        ``covariance_block_`` is 1.
    shrinkage_ : ndarray of shape (n_blocks,), dtype float64
        Per-covariance shrinkage intensity ``rho`` (zeros for ``covariance="empirical"``).
        ``n_blocks`` is ``h * w`` for ``covariance_block=1``, else
        ``ceil(h / k) * ceil(w / k)``.
    precisions_cholesky_ : ndarray of shape (n_blocks, n_features_in_, n_features_in_)
        Upper-triangular Cholesky factors of the precision matrices (inverse regularised
        covariances), as in :class:`sklearn.mixture.GaussianMixture`, rounded to
        ``storage_dtype``, one per position (or per block, see ``block_index_``). Saved
        packed (upper triangles only).
    covariances_ : ndarray of shape (n_blocks, n_features_in_, n_features_in_)
        Regularised (and shrunk) covariances, recomputed from ``precisions_cholesky_`` on
        access.
    offset_ : float
        Threshold on ``score_samples``; ``decision_function = score_samples - offset_``.
    image_threshold_ : float
        ``-offset_``: images with ``anomaly_scores`` above it are anomalous.
    pixel_threshold_ : float
        Map values above it mark defect pixels: ``image_threshold_`` unless set otherwise
        with ``set_thresholds`` (an image's score is its map's maximum, so a pixel above it
        alone flags its image).
    samples_per_image_ : float
        Set only when the model was fitted on tiles (``make_padim(positions="tile")``):
        the mean number of tiles per training image, ``k``. An image is flagged when any
        of its tiles is, so ``offset_`` flags a share ``1 - (1 - contamination) ** (1 / k)``
        of the training tiles, which flags ``contamination`` of images whose tiles are
        independent.

    See Also
    --------
    make_padim : The paper's whole pipeline in one call.
    sklearn.covariance.EmpiricalCovariance : The 1x1-grid case without regularisation.
    sklearn.covariance.OAS : The 1x1-grid case of ``covariance="oas", reg_covar=0``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import PatchGaussian
    >>> rng = np.random.RandomState(0)
    >>> train = rng.normal(size=(50, 8, 4, 4)).astype(np.float32)   # 50 maps, 8 channels
    >>> test = rng.normal(size=(2, 8, 4, 4)).astype(np.float32)
    >>> test[1, :, 1, 2] += 6                                        # one odd patch
    >>> model = PatchGaussian().fit(train)
    >>> model.patch_distances(test).shape
    (2, 4, 4)
    >>> model.anomaly_maps(test).shape                               # 4 x the grid
    (2, 16, 16)
    >>> model.predict(test)
    array([ 1, -1])
    >>> few = rng.normal(size=(5, 8)).astype(np.float32)           # 5 samples, 8 features
    >>> shrunk = PatchGaussian(covariance="oas", reg_covar=0).fit(few)
    >>> bool(0 < shrunk.shrinkage_[0] < 1)
    True
    >>> shared = PatchGaussian(covariance_block=2).fit(train)     # 2 x 2 blocks of 4 x 4
    >>> shared.precisions_cholesky_.shape, shared.block_index_.reshape(4, 4)[:2].tolist()
    ((4, 8, 8), [[0, 0, 1, 1], [0, 0, 1, 1]])
    >>> shared.predict(test)
    array([ 1, -1])
    """

    _parameter_constraints = {
        "reg_covar": [Interval(Real, 0, None, closed="left")],
        "covariance": [StrOptions({"empirical", "oas", "ledoit-wolf"})],
        "covariance_block": [Interval(Integral, 1, None, closed="left")],
        "batch_size": [Interval(Integral, 1, None, closed="left")],
        "storage_dtype": [StrOptions({"float32", "float16"})],
        "calibration": [StrOptions({"leave-one-out", "in-sample"})],
        "calibration_size": [None, StrOptions({"auto"}), Interval(Integral, 1, None, closed="left")],
        "device": [str, torch.device],
        **MAP_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        reg_covar=0.01,
        covariance="empirical",
        covariance_block=1,
        contamination=0.01,
        calibration="leave-one-out",
        calibration_size="auto",
        batch_size=32,
        map_size=None,
        interpolation="bicubic",
        sigma=4.0,
        truncate=4.0,
        mode="reflect",
        storage_dtype="float32",
        device="auto",
    ):
        self.reg_covar = reg_covar
        self.covariance = covariance
        self.covariance_block = covariance_block
        self.contamination = contamination
        self.calibration = calibration
        self.calibration_size = calibration_size
        self.batch_size = batch_size
        self.map_size = map_size
        self.interpolation = interpolation
        self.sigma = sigma
        self.truncate = truncate
        self.mode = mode
        self.storage_dtype = storage_dtype
        self.device = device

    # ------------------------------------------------------------------ input handling
    def _validate(self, X, reset):
        X = validate_feature_maps(self, X, reset=reset, dtype=[np.float64, np.float32],
                                  ensure_min_samples=2 if reset else 1)
        shape = (1, 1) if X.ndim == 2 else X.shape[2:]
        if not reset and ((X.ndim == 2) != self._flat_ or shape != self.grid_shape_):
            raise InvalidImageError(
                f"feature maps of shape {X.shape[1:]} differ from the "
                f"{(self.n_features_in_, *self.grid_shape_)} seen in fit; score images "
                "preprocessed like the training images (same resize/crop and layers)"
            )
        return X, shape

    @staticmethod
    def _positions_first(X):
        """(n, d, h, w) or (n, d) numpy -> (h*w, n, d) torch, no copy where possible."""
        t = from_numpy(X)
        if t.ndim == 2:
            return t[None]
        n, d = t.shape[:2]
        return t.reshape(n, d, -1).permute(2, 0, 1)

    # ------------------------------------------------------------------ fitting
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Estimate the per-position Gaussians from normal training samples.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps of normal images (at least 2).
        y : array-like of shape (n_samples,) or (n_samples, H, W), default=None
            Optional image labels (1 or -1 = anomalous) or masks: anomalous samples are
            left out, so a labelled set can be passed whole (as GridSearchCV's refit does).

        Returns
        -------
        self : PatchGaussian
            The fitted estimator.
        """
        self._reset()
        self._check_settings()
        X, _ = self._validate(X, reset=True)
        X = self._normal_samples(X, y)
        self._accumulate(X)
        self._finish()
        return self

    @_fit_context(prefer_skip_nested_validation=True)
    def partial_fit(self, X, y=None):
        """Add more normal samples to the model (or start one).

        Only the running sums are updated (and, for the threshold, a bounded sample of the
        training samples is kept, see ``calibration_size``); the Cholesky factors and
        ``offset_`` are computed once, when the model is next used. The resulting model
        equals a single ``fit`` on all samples seen, up to floating-point rounding.

        Parameters
        ----------
        X : ndarray of shape (n_samples, n_channels, h, w) or (n_samples, n_features)
            Feature maps of normal images.
        y : array-like of shape (n_samples,) or (n_samples, H, W), default=None
            Optional labels or masks; anomalous samples are left out, as in ``fit``.

        Returns
        -------
        self : PatchGaussian
            The updated estimator.
        """
        first = not hasattr(self, "n_samples_seen_")
        if first:
            self._check_settings()
        X, _ = self._validate(X, reset=first)
        X = self._normal_samples(X, y, min_samples=2 if first else 1)
        self._accumulate(X)
        self._unfinished = True
        return self

    @classmethod
    def from_moments(cls, moments, grid_shape=None, calibration_samples=None, **params):
        """A fitted model from accumulated (for instance merged) moments.

        See :class:`~skpadim.detectors.PatchMoments`.

        Parameters
        ----------
        moments : PatchMoments
            Sums over ``moments.count`` (at least 2) training samples: per position, or
            pooled in the blocks ``covariance_block`` makes of ``grid_shape`` (per-position
            moments are then pooled here).
        grid_shape : (int, int) or None, default=None
            ``(h, w)`` of the feature maps the positions come from, row-major; None for
            2-D feature vectors (a single position).
        calibration_samples : ndarray of shape (m, n_features, h, w) or (m, n_features)
            Training samples whose scores set ``offset_`` (for instance the union of each
            worker's sample). None leaves the threshold unset.
        **params
            Estimator parameters (``reg_covar``, ``contamination``, ...).

        Returns
        -------
        model : PatchGaussian
            Fitted, as ``fit`` on the same samples would be.

        Examples
        --------
        >>> import numpy as np, torch
        >>> from skpadim import PatchGaussian
        >>> from skpadim.detectors import PatchMoments
        >>> X = np.random.RandomState(0).normal(size=(30, 4)).astype(np.float32)
        >>> def moments(part):
        ...     t = torch.from_numpy(part)[None]           # one position, positions first
        ...     return PatchMoments.empty(t.mean(dim=1)).update(t)
        >>> merged = moments(X[:10]).merge(moments(X[10:]))
        >>> model = PatchGaussian.from_moments(merged, calibration_samples=X)
        >>> bool(np.allclose(model.score_samples(X), PatchGaussian().fit(X).score_samples(X)))
        True
        """
        model = cls(**params)
        model._validate_params()
        model._check_settings()
        if moments.count < 2:
            raise InvalidImageError(f"fitting needs at least 2 samples, got {moments.count}")
        flat = grid_shape is None
        model._flat_ = flat
        model.grid_shape_ = (1, 1) if flat else tuple(int(g) for g in grid_shape)
        if moments.shift.shape[0] != model.grid_shape_[0] * model.grid_shape_[1]:
            raise InvalidImageError(
                f"moments hold {moments.shift.shape[0]} positions, not the "
                f"{model.grid_shape_[0] * model.grid_shape_[1]} of grid_shape={grid_shape}"
            )
        model.n_features_in_ = moments.n_features
        model.covariance_block_ = int(model.covariance_block)
        model._moments = _moments_on(_moments_in_blocks(moments, model._blocks()), "cpu")
        model.n_samples_seen_ = moments.count
        model.reg_covar_ = float(model.reg_covar)
        if calibration_samples is not None:
            calibration_samples = np.asarray(calibration_samples)
            model._calibration = model._new_calibration_sample(calibration_samples[0].nbytes)
            model._calibration.add(calibration_samples)
        model._finish()
        return model

    def _training_scores(self, X):
        """``score_samples`` of training samples, as ``calibration`` asks, to set ``offset_``."""
        loo = self.calibration == "leave-one-out"
        if loo and self._blocks() is not None:
            # Shared covariances lose a sample per position of the block: the closed form
            # needs the whitened residuals, which the distances are computed from.
            distances = self._patch_distances(X, loo_samples=self.n_samples_seen_)
        else:
            distances = self._patch_distances(X)
            if loo:
                distances = leave_one_out_distances(distances, self.n_samples_seen_)
        return -self._distances_to_scores(distances)

    def _new_calibration_sample(self, sample_bytes, budget=1 << 26):
        capacity = self.calibration_size
        if capacity == "auto":
            capacity = max(64, budget // max(1, sample_bytes))
        return SystematicSample(capacity)

    def _check_settings(self):
        self._check_map_size()
        refuse_shrinkage(self.covariance, self.covariance_block)

    def _blocks(self):
        """The fitted block of each position (torch int64), or None for one covariance per
        position."""
        k = self.__dict__.get("covariance_block_", 1)
        return None if k == 1 else block_index(self.grid_shape_, k)

    def _reset(self):
        """Forget what was learnt, so that the next partial_fit starts a new model."""
        for attr in ("_moments", "_calibration", "n_samples_seen_", "_unfinished"):
            self.__dict__.pop(attr, None)

    def _accumulate(self, X):
        moments = self.__dict__.get("_moments")
        device = resolve_device(self.device)
        if hasattr(self, "n_samples_seen_") and self.covariance_block_ != self.covariance_block:
            raise ConfigurationError(
                f"covariance_block changed from {self.covariance_block_} to "
                f"{self.covariance_block} since this fit started; partial_fit continues a fit "
                "with its own blocks: set it back, or refit with fit"
            )
        grid_shape = (1, 1) if X.ndim == 2 else tuple(X.shape[2:])
        if moments is None and hasattr(self, "n_samples_seen_"):
            moments = self._moments_from_fitted()
        if moments is not None and moments.sum.device != device:
            moments = _moments_on(moments, device)
        calibration = self.__dict__.get("_calibration")
        if calibration is None:
            calibration = self._calibration = self._new_calibration_sample(X[0].nbytes)
        for start in range(0, X.shape[0], self.batch_size):
            part = X[start : start + self.batch_size]
            batch = self._positions_first(part).to(device)
            if moments is None:
                moments = _new_moments(batch, grid_shape, self.covariance_block)
            moments = moments.update(batch)
            calibration.add(part)
        # Kept for partial_fit, on the CPU: a GPU's memory goes to scoring.
        self._moments = _moments_on(moments, "cpu")
        self._flat_ = X.ndim == 2
        self.grid_shape_ = grid_shape
        self.covariance_block_ = int(self.covariance_block)
        self.n_samples_seen_ = moments.count
        self.reg_covar_ = float(self.reg_covar)

    def _finish(self, chunk=64):
        """Factorise (once, however many partial_fit calls came before) and calibrate."""
        self._mean, self._shrinkage, self._chol_cpu = _factorise(
            self._moments, self.covariance, self.reg_covar_, self.storage_dtype, chunk)
        # What the stored factors are of, for _moments_from_fitted (set_params may change
        # the parameter afterwards).
        self._shrunk = self.covariance != "empirical"
        self.__dict__.pop("_chol_cache", None)
        self._unfinished = False
        calibration = self.__dict__.get("_calibration")
        if calibration is not None and len(calibration):
            self._set_offset(np.concatenate([
                self._training_scores(part) for part in calibration.chunks(self.batch_size)
            ]))

    def _moments_from_fitted(self):
        """Rebuild the sums from a model restored from disk, where they are not saved."""
        # Models saved before shrinkage existed have no such flag: they did not shrink.
        shrinkage = self.shrinkage_ if self.__dict__.get("_shrunk", False) else None
        return _moments_from_factors(self.mean_, self.precisions_cholesky_,
                                     self.n_samples_seen_, self.reg_covar_, shrinkage,
                                     self._blocks())

    # ------------------------------------------------------------------ fitted state
    @property
    def mean_(self):
        self._ensure_finished()
        try:
            return self.__dict__["_mean"]
        except KeyError:
            raise AttributeError("mean_ is set by fit") from None

    @property
    def shrinkage_(self):
        self._ensure_finished()
        check_is_fitted(self, "mean_")
        return np.asarray(self.__dict__.get("_shrinkage", np.zeros(len(self._mean)))).copy()

    @property
    def precisions_cholesky_(self):
        self._ensure_finished()
        check_is_fitted(self, "mean_")
        return self._chol_cpu.numpy().copy()

    @property
    def block_index_(self):
        check_is_fitted(self, "n_samples_seen_")
        blocks = self._blocks()
        h, w = self.grid_shape_
        return np.arange(h * w, dtype=np.int64) if blocks is None else blocks.numpy()

    @property
    def covariances_(self):
        U = torch.from_numpy(self.precisions_cholesky_).to(torch.float64)
        return _covariances_from_factors(U).numpy()

    @property
    def calibration_samples_(self):
        """The training samples ``offset_`` was computed from (see ``calibration_size``)."""
        calibration = self.__dict__.get("_calibration")
        if calibration is None or not len(calibration):
            raise AttributeError("calibration_samples_ are kept only until the model is saved")
        return calibration.array()

    def _chol(self, dtype, device="cpu"):
        """The factors as ``dtype`` on ``device``; copies other than the float32 CPU one are
        cached in memory (never saved), since scoring reads them often."""
        chol = self._chol_cpu
        if chol.dtype == dtype and chol.device == torch.device(device):
            return chol
        cache = self.__dict__.get("_chol_cache")
        if cache is None or cache.dtype != dtype or cache.device != torch.device(device):
            cache = self._chol_cache = chol.to(device, dtype)
        return cache

    def __getstate__(self):
        self._ensure_finished()
        # A copy: object.__getstate__ may hand back the instance's own __dict__.
        state = dict(super().__getstate__())
        # The float64 sums (several times the factors), the calibration sample and any
        # device copy are not part of the model; the factors are saved packed, in
        # storage_dtype, which is what keeps model files small.
        for key in ("_moments", "_calibration", "_chol_cache", "_unfinished"):
            state.pop(key, None)
        chol = state.pop("_chol_cpu", None)
        if chol is not None:
            state["_packed_chol"] = pack_upper(chol).to(_storage(self.storage_dtype))
        return state

    def __setstate__(self, state):
        state = dict(state)
        packed = state.pop("_packed_chol", None)
        if "n_samples_seen_" in state:  # models saved before covariance_block existed
            state.setdefault("covariance_block_", 1)
        super().__setstate__(state)
        if packed is not None:
            d = self.mean_.shape[1]
            self._chol_cpu = unpack_upper(torch.as_tensor(packed), d, torch.float32)

    # ------------------------------------------------------------------ scoring
    def _patch_distances(self, X, loo_samples=None):
        """Distances of ``X`` to its positions' Gaussians; with ``loo_samples`` (blocks
        only), leave-one-out distances of training samples."""
        X, shape = self._validate(X, reset=False)
        # 2-D input is one position: float64 costs nothing there and keeps sklearn's
        # batch-invariance checks exact.
        dtype = torch.float64 if X.ndim == 2 else torch.float32
        device = resolve_device(self.device)
        mean = torch.from_numpy(self.mean_).to(device, dtype)
        chol = self._chol(dtype, device)
        blocks = self._blocks()
        members = None if blocks is None else block_members(blocks).to(device)
        out = []
        with torch.inference_mode():
            for start in range(0, X.shape[0], self.batch_size):
                batch = self._positions_first(X[start : start + self.batch_size])
                batch = batch.to(device, dtype)
                if members is None:
                    out.append(mahalanobis(batch, mean, chol).T.cpu())
                else:
                    out.append(block_mahalanobis(batch, mean, chol, members,
                                                 loo_samples=loo_samples).T.cpu())
        d = torch.cat(out).numpy()
        return d[:, 0] if X.ndim == 2 else d.reshape(X.shape[0], *shape)

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = True
        return tags
