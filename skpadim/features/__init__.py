"""From images to feature maps: the first steps of every pipeline.

A user's image passes through this sub-package in order:

- reading and checking images, and the paper's resize and centre crop (with their inverse
  for maps and masks): :func:`read_image`, :func:`as_image_batches`, :func:`resize_and_crop`,
  :func:`restore_geometry`, :func:`transform_masks`;
- the pretrained backbone and the layers it taps (:mod:`skpadim.features.backbones`), run
  by the :class:`~skpadim.BackboneFeatures` transformer, on the whole image or on
  overlapping tiles stitched on the whole image's grid (:func:`tile_spans`,
  :func:`kept_spans`, :func:`forward_tiled`), so that large images are inspected at their
  own resolution with the backbone's memory bounded by the tile, or handed on as samples
  of their own (:class:`TileSamples`, :func:`shared_tile_spans`) for a model of one
  tile's positions shared by every tile;
- optional reduction of the channels: :class:`~skpadim.RandomFeatureSelector` (the
  paper's random selection) or :class:`~skpadim.PatchPCA`.

The feature maps that leave it, ``(n_samples, channels, height, width)``, are what the
detectors of :mod:`skpadim.detectors` model.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "._image_files": ["read_image", "image_size"],
    "._images": ["as_image_batches", "image_sizes"],
    "._geometry": ["resize_and_crop", "restore_geometry", "transform_masks", "uncrop_maps"],
    "._extraction": ["BackboneFeatures", "concat_layers"],
    "._selection": ["RandomFeatureSelector"],
    "._decomposition": ["PatchPCA"],
    "._tile_samples": ["TileSamples", "TileChunk", "shared_tile_spans"],
    "._tiling": ["tile_spans", "kept_spans", "forward_tiled", "auto_overlap", "layer_strides",
                 "output_shapes"],
})

if TYPE_CHECKING:  # what static tools and IDEs see
    from ._decomposition import PatchPCA
    from ._extraction import BackboneFeatures, concat_layers
    from ._geometry import resize_and_crop, restore_geometry, transform_masks, uncrop_maps
    from ._image_files import image_size, read_image
    from ._images import as_image_batches, image_sizes
    from ._selection import RandomFeatureSelector
    from ._tile_samples import TileChunk, TileSamples, shared_tile_spans
    from ._tiling import (
        auto_overlap,
        forward_tiled,
        kept_spans,
        layer_strides,
        output_shapes,
        tile_spans,
    )
