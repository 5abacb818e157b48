"""SPADE's gallery: the training features as SPADE stores them, and the searches run on them.

SPADE reads the layers that :class:`~skpadim.BackboneFeatures` concatenated on one grid and
recovers each layer's native map (one position per nearest-upsampled block); the last layer
is average-pooled into the image-level vector. A fit keeps, per batch, the pooled vectors in
float32 and every pixel-level layer channels last, and joins the batches into one gallery
once. Scoring searches it twice: the nearest training images of each test image by their
pooled vectors, then, layer by layer, the nearest patches among all positions of those
images only. The leave-one-out anomaly maps that set SPADE's default pixel threshold run the
same two searches, each training image against the others.
"""

import math
import warnings
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from .._torch import resolve_device
from ..exceptions import ConfigurationError, InvalidImageError
from . import scoring
from ._neighbors import _nearest_one, _search, nearest_neighbors

__all__ = []


# ---------------------------------------------------------------------------- layout
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


def _layer_groups(n_channels, layer_channels, layer_strides):
    """``[(start, stop, stride), ...]`` of each layer, checked against the input."""
    channels = [n_channels] if layer_channels is None else list(layer_channels)
    if layer_strides is None:
        strides = [1] * len(channels)
    elif layer_channels is None:
        raise ConfigurationError(
            f"layer_strides={layer_strides!r} needs layer_channels too (how the "
            "channels split into layers); pass both, or use make_spade"
        )
    else:
        strides = list(layer_strides)
    bad = [v for v in channels + strides
           if not isinstance(v, Integral) or isinstance(v, bool) or v < 1]
    if not channels or bad or len(strides) != len(channels):
        raise ConfigurationError(
            f"layer_channels={layer_channels!r} and layer_strides="
            f"{layer_strides!r} must be non-empty lists of positive ints of equal "
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


def _native_layers(X, groups):
    """Split ``(n, C, h, w)`` into each layer's native map; returns (pixel maps, pooled)."""
    h, w = X.shape[2:]
    maps = []
    for start, stop, stride in groups:
        part = X[:, start:stop]
        if stride > 1:
            rows = _native_indices(h, math.ceil(h / stride))
            cols = _native_indices(w, math.ceil(w / stride))
            part = part[:, :, rows][:, :, :, cols]
        maps.append(part)
    pooled = maps[-1].mean(axis=(2, 3), dtype=np.float64)
    pixel_maps = maps[:-1] if len(maps) > 1 else maps
    return pixel_maps, pooled


def _image_vectors(X, groups):
    """The image-level vectors of ``X``: its last channel group for 2-D input, else the
    last layer's native map, average-pooled."""
    if X.ndim == 2:
        start, stop, _ = groups[-1]
        return X[:, start:stop]
    return _native_layers(X, groups)[1]


# ---------------------------------------------------------------------------- storage
def _gallery_part(X, groups, storage_dtype):
    """What the gallery keeps of ``X``: its image-level vectors in float32 and its
    pixel-level layers, channels last, in ``storage_dtype`` (none for 2-D input)."""
    dtype = np.float16 if storage_dtype == "float16" else np.float32
    if X.ndim == 2:
        pixel, image = [], _image_vectors(X, groups)
    else:
        pixel, image = _native_layers(X, groups)
        pixel = [np.ascontiguousarray(m.transpose(0, 2, 3, 1), dtype=dtype) for m in pixel]
    return np.asarray(image, dtype=np.float32), pixel


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


def _join_gallery(chunks):
    """One gallery ``(image features, [patch features of each layer])`` from the pending
    ``(image, pixel)`` chunks, emptying ``chunks``."""
    image = _join([image for image, _ in chunks])
    # Each chunk is released as soon as it is copied, so the peak stays near one
    # gallery plus one chunk instead of two galleries.
    layers = [[pixel[k] for _, pixel in chunks] for k in range(len(chunks[0][1]))]
    chunks.clear()
    return image, [_join(parts) for parts in layers]


# ---------------------------------------------------------------------------- searches
def _mean_distances(queries, image_features, k, chunk_size, device, exclude=None, skip=0):
    """Mean distance of each query to its ``k`` nearest stored image vectors, the ``skip``
    nearest left out (SPADE's image score)."""
    gallery = _as_tensor(image_features).to(queries.dtype)
    distances, _ = _search(queries, gallery, k, chunk_size, device, exclude=exclude)
    return distances[:, skip:].mean(dim=1).numpy()


def _pixel_distances(patch_features, pixel_maps, neighbours, grid, *, kappa, chunk_size,
                     device, interpolation):
    """``(n, *grid)`` patch distances: each layer's, brought to ``grid``, averaged."""
    total = np.zeros((len(neighbours), *grid), dtype=np.float32)
    for layer, test_maps in enumerate(pixel_maps):
        layer_maps = _layer_distances(patch_features[layer], test_maps, neighbours, kappa,
                                      chunk_size, device)
        total += scoring.upsample_maps(layer_maps, grid, interpolation)
    return total / len(pixel_maps)


def _layer_distances(stored, test_maps, neighbours, kappa, chunk_size, device):
    """``(n, h_k, w_k)`` distances of one layer's test patches to their gallery."""
    n_train, positions, c = stored.shape[0], stored.shape[1] * stored.shape[2], stored.shape[3]
    gallery = _as_tensor(stored).view(n_train, positions, c)
    n, _, h, w = test_maps.shape
    kappa = min(kappa, neighbours.shape[1] * positions)
    queries = torch.from_numpy(
        np.ascontiguousarray(test_maps.transpose(0, 2, 3, 1), dtype=np.float32)
    ).view(n, h * w, c)
    device = resolve_device(device)
    out = np.empty((n, h, w), dtype=np.float32)
    with torch.inference_mode():
        for i in range(n):
            # The rows of the image's nearest training images, gathered once into one
            # contiguous float32 block: every search block is then a plain slice.
            own = gallery.index_select(0, neighbours[i]).view(-1, c)
            own = own.to(device, torch.float32)
            q = queries[i].to(device)
            if kappa == 1:
                distances = _nearest_one(q, own, chunk_size)
            else:
                distances, _ = nearest_neighbors(q, own, kappa, chunk_size=chunk_size)
                distances = distances.mean(dim=1)
            out[i] = distances.cpu().numpy().reshape(h, w)
    return out


def _patch_distances(queries, pixel_maps, image_features, patch_features, k, grid, *,
                     kappa, chunk_size, device, interpolation, exclude=None):
    """``(n, *grid)`` patch distances of test images: each query's ``k`` nearest stored
    images (by image-level vectors), then each patch of ``pixel_maps`` against theirs."""
    _, neighbours = _search(queries, _as_tensor(image_features), k, chunk_size, device,
                            exclude=exclude)
    return _pixel_distances(patch_features, pixel_maps, neighbours, grid, kappa=kappa,
                            chunk_size=chunk_size, device=device, interpolation=interpolation)


def _leave_one_out_map_maxima(image_features, patch_features, chosen, k, grid, to_maps, *,
                              chunk=8, **search):
    """Maximum of the anomaly map of the training images ``chosen``, each scored against
    its ``k`` nearest other training images; ``to_maps`` turns patch distances into maps,
    ``search`` are :func:`_patch_distances`' settings."""
    maxima = []
    for start in range(0, len(chosen), chunk):
        rows = chosen[start : start + chunk]
        queries = torch.from_numpy(image_features[rows])
        # The stored layers are the images' own features, channels last.
        pixel_maps = [np.asarray(stored[rows], dtype=np.float32).transpose(0, 3, 1, 2)
                      for stored in patch_features]
        distances = _patch_distances(queries, pixel_maps, image_features, patch_features, k,
                                     grid, exclude=torch.from_numpy(rows), **search)
        maxima.append(scoring.image_scores(to_maps(distances)))
    return np.concatenate(maxima)
