"""Tiles as samples: one Gaussian per position of a tile, shared by every tile of every image.

A stationary surface (a texture, a web, sheet metal, painted or rolled goods) looks the same
everywhere, so a model of one tile's positions serves the whole image, whatever its size:
the memory of the Gaussians is that of one tile, and every tile of every training image is
a training sample. :class:`~skpadim.BackboneFeatures` with ``tile`` and ``stitch=False``
hands on, instead of one feature map per image, :class:`TileSamples`: the image's tiles at
native resolution, all of exactly ``tile`` pixels (:func:`shared_tile_spans`), each run
through the backbone as an image of its own and computed lazily, a chunk at a time, so
only one chunk's activations and features exist at once, however large the image.

A detector scores each tile as the sample it was trained on and the tiles' distance maps
are stitched, at the image's own resolution, into one map per image
(:func:`skpadim.detectors.scoring.stitch_tile_maps`): each tile contributes the pixels
closer to its centre than to a neighbour's, and the Gaussian filter runs on the stitched
map, so nothing of the features is averaged.
"""

import math
from typing import NamedTuple

import numpy as np
import torch

from ..exceptions import InvalidImageError
from ._geometry import _pair
from ._image_files import _is_path_list, read_image
from ._images import (
    _array_to_tensor,
    _unsigned_to_nhwc,
    as_image_batches,
    n_images,
)
from ._tiling import _check_int, auto_overlap, kept_spans
from ._tiling import _pair as _tile_pair

__all__ = ["TileSamples", "TileChunk", "shared_tile_spans"]

#: Default overlap of tiles handed on as samples, in cells of the coarsest tapped layer:
#: half the stitched tiles' (64 px at stride 16). Their borders have Gaussians of their own.
SHARED_OVERLAP_CELLS = 4


def _shared_plan(tile, tile_overlap, align):
    """``(tile, overlap)`` pixel pairs of ``BackboneFeatures(tile, tile_overlap,
    stitch=False)`` on a network whose coarsest tapped stride is ``align``."""
    tile = _tile_pair(tile, "tile", 1)
    if tile_overlap == "auto":
        return tile, auto_overlap(tile, align, cells=SHARED_OVERLAP_CELLS)
    return tile, _tile_pair(tile_overlap, "tile_overlap", 0)


def _count_tiles(size, tile, overlap):
    """Tiles an image of ``size`` is cut into (:func:`shared_tile_spans` along each axis)."""
    rows, cols = (len(shared_tile_spans(s, t, o)) for s, t, o in zip(size, tile, overlap))
    return rows * cols


def shared_tile_spans(length, tile, overlap):
    """``(start, stop)`` spans of equal tiles of ``tile`` pixels covering ``[0, length)``.

    The first tile starts at 0, the last ends at ``length`` (nothing is padded) and the
    starts in between are spread evenly, consecutive tiles sharing at least ``overlap``
    pixels. Unlike :func:`~skpadim.features.tile_spans`, every tile has exactly ``tile``
    pixels, whatever the image's size: the tiles are the samples of one model.

    Parameters
    ----------
    length : int
        Pixels along the axis; at least ``tile``.
    tile : int
        Tile length in pixels.
    overlap : int
        Least overlap of consecutive tiles, ``0 <= overlap < tile``.

    Returns
    -------
    spans : list of (int, int)

    Raises
    ------
    InvalidImageError
        If the image is smaller than a tile.

    Examples
    --------
    >>> from skpadim.features import shared_tile_spans
    >>> shared_tile_spans(512, tile=256, overlap=64)
    [(0, 256), (128, 384), (256, 512)]
    >>> shared_tile_spans(256, tile=256, overlap=64)
    [(0, 256)]
    """
    length = _check_int(length, "length", 1)
    tile = _check_int(tile, "tile", 1)
    overlap = _check_int(overlap, "overlap", 0)
    if overlap >= tile:
        raise InvalidImageError(
            f"tile overlap ({overlap} px) must be smaller than the tile ({tile} px)")
    if length < tile:
        raise InvalidImageError(
            f"an image side of {length} px is smaller than the {tile}-px tiles of a "
            f"tile-shared model; give images of at least {tile} px, or a smaller tile "
            "(which needs a new fit)"
        )
    steps = math.ceil((length - tile) / (tile - overlap))
    if steps == 0:
        return [(0, tile)]
    return [(i * (length - tile) // steps, i * (length - tile) // steps + tile)
            for i in range(steps + 1)]


class TileChunk(NamedTuple):
    """A chunk of tiles of one image: their features and where they lie.

    Attributes
    ----------
    features : ndarray of shape (m, C, h, w), dtype float32
        One feature map per tile, as the steps after the backbone leave them.
    image : int
        Index of the image in the batch.
    image_size : (int, int)
        ``(H, W)`` of the image as it reached the network.
    tiles : list of ((int, int), (int, int))
        Row and column pixel spans of each tile.
    kept : list of ((int, int), (int, int))
        Row and column pixel spans of the image each tile's map contributes.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import BackboneFeatures
    >>> image = np.zeros((1, 64, 112, 3), dtype=np.uint8)
    >>> step = BackboneFeatures(weights=None, resize=None, crop=None, tile=64,
    ...                         tile_overlap=16, stitch=False, random_state=0).fit(image)
    >>> chunk = next(iter(step.transform(image)))
    >>> chunk.image, chunk.image_size, chunk.features.shape
    (0, (64, 112), (2, 448, 16, 16))
    >>> chunk.tiles                                  # two 64-px tiles, overlapping by 16
    [((0, 64), (0, 64)), ((0, 64), (48, 112))]
    >>> chunk.kept                                   # each keeps its side of the middle
    [((0, 64), (0, 56)), ((0, 64), (56, 112))]
    """

    features: np.ndarray
    image: int
    image_size: tuple
    tiles: list
    kept: list


class TileSamples:
    """The tiles of a batch of images, computed a chunk at a time: a tile-shared model's input.

    What ``BackboneFeatures(tile=..., stitch=False)`` (and the steps after it, in a
    :class:`~skpadim.StreamingPipeline`) hands to the detector in place of feature maps.
    Iterating yields :class:`TileChunk` objects, one image's tiles at a time, at most
    ``chunk_size`` per chunk; ``len`` is the number of images.

    Parameters
    ----------
    features : BackboneFeatures
        The fitted backbone step, with ``tile`` set and ``stitch=False``.
    X : array-like or list of paths
        The images.
    channels : array-like of int or None, default=None
        Channels of the backbone's output to keep (a channel selection that follows it).
    after : sequence of transformers, default=()
        Steps applied, in order, to each chunk's features.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim import BackboneFeatures
    >>> images = np.random.RandomState(0).randint(0, 256, (2, 96, 160, 3), dtype=np.uint8)
    >>> step = BackboneFeatures(weights=None, resize=None, crop=None, tile=64,
    ...                         tile_overlap=16, stitch=False, random_state=0).fit(images)
    >>> samples = step.transform(images)
    >>> len(samples), [c.features.shape[0] for c in samples]   # 2 x 3 tiles of 64 px
    (2, [6, 6])
    >>> samples.tiles_per_image((96, 160))
    6
    """

    def __init__(self, features, X, channels=None, after=()):
        self.features = features
        self.X = X
        self.channels = channels
        self.after = tuple(after)

    def __len__(self):
        return n_images(self.X)

    def then(self, step):
        """The same tiles with ``step.transform`` applied to every chunk's features."""
        return TileSamples(self.features, self.X, self.channels, self.after + (step,))

    def tiles_per_image(self, size):
        """Number of tiles an image of ``size`` ``(H, W)`` (as read) is cut into."""
        step = self.features
        if step.crop is not None or step.resize is not None:
            size = _pair(step.crop if step.crop is not None else step.resize, "resize")
        return _count_tiles(size, *step._shared_tile_plan())

    def spans(self, size):
        """Row and column tile spans of an image of ``size`` ``(H, W)``."""
        (th, tw), (oh, ow) = self.features._shared_tile_plan()
        return shared_tile_spans(size[0], th, oh), shared_tile_spans(size[1], tw, ow)

    def first_features(self):
        """The first chunk's features: enough for a step that learns only their shape."""
        return next(iter(self)).features

    def _images(self):
        """Per image: its size as it reaches the network and a function cutting float32
        tiles from it. At native resolution the image stays as read (uint8: a quarter of
        its float32 copy, 150 MB less at 4096 x 4096) and each tile is converted alone."""
        step = self.features
        if step.resize is not None or step.crop is not None:
            for image in as_image_batches(self.X, 1, step.resize, step.crop,
                                          step.interpolation):
                yield tuple(image.shape[-2:]), (
                    lambda r, c, image=image: image[:, :, r[0]:r[1], c[0]:c[1]])
            return
        paths = _is_path_list(self.X)
        for i in range(len(self)):
            raw = read_image(self.X[i])[None] if paths else np.asarray(self.X[i : i + 1])
            if raw.dtype.kind == "f":  # (1, c, H, W), channels first
                yield raw.shape[-2:], (lambda r, c, raw=raw: _array_to_tensor(
                    raw[:, :, r[0]:r[1], c[0]:c[1]]))
            else:
                raw = _unsigned_to_nhwc(raw)
                yield raw.shape[1:3], (lambda r, c, raw=raw: _array_to_tensor(
                    raw[:, r[0]:r[1], c[0]:c[1]]))

    def __iter__(self):
        step = self.features
        device, module, chunk_size = step._tile_runtime()
        for index, (size, cut) in enumerate(self._images()):
            size = tuple(int(s) for s in size)
            rows, cols = self.spans(size)
            placed = [(r, c, kr, kc) for r, kr in zip(rows, kept_spans(rows, 1))
                      for c, kc in zip(cols, kept_spans(cols, 1))]
            for start in range(0, len(placed), chunk_size):
                group = placed[start : start + chunk_size]
                tiles = torch.cat([cut(r, c) for r, c, _, _ in group])
                fmap = step._tile_features(module, tiles.to(device), self.channels)
                for later in self.after:
                    fmap = later.transform(fmap)
                yield TileChunk(fmap, index, size, [(r, c) for r, c, _, _ in group],
                                [(kr, kc) for _, _, kr, kc in group])
