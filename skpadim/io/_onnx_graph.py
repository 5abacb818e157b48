"""The torch graphs that :func:`~skpadim.export_onnx` exports, built from fitted models.

A PaDiM pipeline becomes ``_PadimGraph`` (crop, backbone with batch norms folded,
the kept channels, Mahalanobis distances with the stored Cholesky factors) and a
:class:`~skpadim.VAE` becomes ``_VaeGraph`` (crop, reconstruction error); both end in
``_Head``: the maps' upsampling and blur as one matrix per axis, the image score and
the label. A tile-shared PaDiM (``make_padim(positions="tile")``) becomes the graph of
one tile, ending in ``_TileHead``: the tile's map, upsampled only; cutting the image into
tiles, stitching and smoothing are :class:`~skpadim.io.OnnxModel`'s. Each part is
written so that ``torch.export`` traces it with a dynamic batch (and a dynamic image size
when the model has a crop but no resize). The functions below read what the fitted
estimators hold and refuse what cannot be exported, with the reason.
"""

import copy

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..detectors import scoring
from ..detectors._blocks import block_members
from ..exceptions import ConfigurationError

__all__ = []


# ---------------------------------------------------------------------------- graph parts
class _Preprocess(nn.Module):
    """uint8 ``(n, H, W, 3)`` -> float32 ``(n, 3, h, w)`` in [0, 1], center-cropped."""

    def __init__(self, crop):
        super().__init__()
        self.crop = crop

    def forward(self, images):
        x = images.permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.crop is not None:
            (ch, cw), (h, w) = self.crop, x.shape[-2:]
            # narrow keeps the output's size static even when the input's is dynamic.
            x = x.narrow(2, (h - ch) // 2, ch).narrow(3, (w - cw) // 2, cw)
        return x


class _TileHead(nn.Module):
    """Patch distances ``(n, h, w)`` -> maps ``(n, H, W)``: ``rows @ distances @ cols.T``.

    For a tile-shared model ``rows`` and ``cols`` only upsample (each tile's map, which
    :class:`~skpadim.io.OnnxModel` stitches and then smooths as a whole).
    """

    def __init__(self, rows, cols):
        super().__init__()
        self.register_buffer("rows", rows)
        self.register_buffer("cols_t", cols.T.contiguous())

    def forward(self, distances):
        return torch.matmul(torch.matmul(self.rows, distances), self.cols_t)


class _Head(_TileHead):
    """Patch distances ``(n, h, w)`` -> maps ``(n, H, W)``, scores ``(n,)``, labels ``(n,)``.

    ``rows`` and ``cols`` are :func:`skpadim.detectors.scoring.anomaly_maps`' fused operators:
    upsampling and Gaussian filter along each axis, as one matrix.
    """

    def __init__(self, rows, cols, threshold):
        super().__init__(rows, cols)
        # float32, as skpadim compares: -score - offset_ >= 0 in float32.
        self.register_buffer("threshold", torch.tensor(threshold, dtype=torch.float32))

    def forward(self, distances):
        maps = super().forward(distances)
        scores = maps.flatten(1).amax(dim=1)
        one = torch.ones_like(scores, dtype=torch.int64)
        labels = torch.where(scores <= self.threshold, one, -one)
        return maps, scores, labels


def _block_slots(blocks):
    """Positions in block order, padded (``slots``), and each position's slot (``inverse``).

    Slot ``b * size + j`` holds block ``b``'s ``j``-th position; padding slots repeat
    position 0, whose distances there are computed and dropped.
    """
    flat = block_members(blocks).reshape(-1)
    valid = flat >= 0
    inverse = torch.empty(blocks.numel(), dtype=torch.int64)
    inverse[flat[valid]] = torch.arange(flat.numel())[valid]
    return flat.clamp(min=0), inverse


class _PadimGraph(nn.Module):
    """PaDiM's distances; with ``blocks`` (the block of each position), positions share
    their block's factor: the graph gathers them block by block (``_block_slots``) and
    multiplies each block's samples by its factor at once, never one factor per position."""

    def __init__(self, preprocess, trunk, upsample, pieces, order, grid, mean, chol, head,
                 blocks=None):
        super().__init__()
        self.preprocess, self.trunk, self.head = preprocess, trunk, head
        self.upsample, self.grid = upsample, grid
        # Per tapped layer: None (no channel kept), "all", or the local channels kept.
        self.pieces = []
        for k, local in enumerate(pieces):
            if local is None or isinstance(local, str):
                self.pieces.append(local)
            else:
                self.register_buffer(f"channels{k}", torch.as_tensor(local))
                self.pieces.append(f"channels{k}")
        self.register_buffer("order", None if order is None else torch.as_tensor(order))
        self.blocked = blocks is not None
        if self.blocked:
            slots, inverse = _block_slots(blocks)
            self.register_buffer("slots", slots)
            self.register_buffer("inverse", inverse)
            mean = mean.index_select(0, slots)  # (slots, d), position by position
        self.register_buffer("mean", mean[:, None, :])  # (P or slots, 1, d)
        self.register_buffer("chol", chol)  # (P or blocks, d, d), float16 or float32

    def _embedding(self, outputs):
        """:func:`skpadim.features.concat_layers` of the kept channels, export-friendly."""
        h, w = self.grid
        parts = []
        for fmap, piece in zip(outputs, self.pieces):
            if piece is None:
                continue
            if piece != "all":
                fmap = fmap.index_select(1, getattr(self, piece))
            if tuple(fmap.shape[-2:]) != (h, w):
                kwargs = {} if self.upsample == "nearest" else {"align_corners": False}
                fmap = F.interpolate(fmap, size=(h, w), mode=self.upsample, **kwargs)
            parts.append(fmap)
        x = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        return x if self.order is None else x.index_select(1, self.order)

    def forward(self, images):
        x = self._embedding(self.trunk(self.preprocess(images)))
        n, d = x.shape[0], x.shape[1]
        if self.blocked:
            return self.head(self._block_distances(x.reshape(n, d, -1)).T.reshape(n, *self.grid))
        centred = x.reshape(n, d, -1).permute(2, 0, 1) - self.mean  # (P, n, d)
        y = torch.matmul(centred, self.chol.to(torch.float32))
        distances = y.square().sum(dim=-1).sqrt()  # (P, n)
        return self.head(distances.T.reshape(n, *self.grid))

    def _block_distances(self, x):
        """(n, d, P) embeddings -> (P, n) distances, with one factor per block."""
        n, d = x.shape[0], x.shape[1]
        centred = x.index_select(2, self.slots).permute(2, 0, 1) - self.mean  # (slots, n, d)
        # Slots are block-major: a block's positions and samples are one row range.
        centred = centred.reshape(self.chol.shape[0], -1, d)
        y = torch.matmul(centred, self.chol.to(torch.float32))
        distances = y.square().sum(dim=-1).sqrt().reshape(-1, n)  # (slots, n)
        return distances.index_select(0, self.inverse)


class _VaeGraph(nn.Module):
    def __init__(self, preprocess, module, head):
        super().__init__()
        self.preprocess, self.module, self.head = preprocess, module, head

    def forward(self, images):
        x = self.preprocess(images)
        reconstruction = self.module(x)[0]  # decoded from the mean code
        return self.head(torch.linalg.vector_norm(x - reconstruction, dim=1))


# ---------------------------------------------------------------------------- from models
def _pair(size):
    if size is None:
        return None
    if isinstance(size, (int, np.integer)):
        return (int(size), int(size))
    return tuple(int(s) for s in size)


def _head(detector, grid, threshold):
    size = detector._map_size(grid)
    args = (detector.interpolation, float(detector.sigma), float(detector.truncate),
            detector.mode)
    rows = scoring._axis_operator(grid[0], size[0], *args).clone()
    cols = scoring._axis_operator(grid[1], size[1], *args).clone()
    return _Head(rows, cols, threshold), size


def _tile_shared_settings(features, detector, crop):
    """What is done around a tile-shared model's graph (``metadata_props["tile_shared"]``):
    the crop, the tiles and the filter of the stitched map."""
    tile, overlap = features._shared_tile_plan()
    return dict(tile=list(tile), overlap=list(overlap),
                crop=None if crop is None else list(crop),
                input_size=None if features.resize is None else list(_pair(features.resize)),
                sigma=float(detector.sigma), truncate=float(detector.truncate),
                mode=detector.mode)


def _tile_head(detector, grid, tile):
    """A tile's upsampling alone: the Gaussian filter runs on the stitched image's map,
    which :class:`~skpadim.io.OnnxModel` smooths, as ``AnomalyMapMixin._tile_maps`` does."""
    args = (detector.interpolation, 0.0, float(detector.truncate), detector.mode)
    rows, cols = (scoring._axis_operator(g, t, *args).clone() for g, t in zip(grid, tile))
    return _TileHead(rows, cols)


def _threshold(detector):
    try:
        offset = detector.offset_
    except AttributeError:
        raise ConfigurationError(
            f"the {type(detector).__name__} has no threshold (offset_): fit the model before "
            "exporting it"
        ) from None
    return float(np.float32(-offset))


def _pixel_threshold(model):
    from sklearn.pipeline import Pipeline

    final = model[-1] if isinstance(model, Pipeline) else model
    return float(np.float32(final.pixel_threshold_))


def _input_size(resize, crop, known):
    """The graph's input ``(H, W)``, or None when any size of at least the crop works."""
    resize, crop = _pair(resize), _pair(crop)
    if resize is not None:
        return resize
    if crop is not None:
        return None
    if known is None:
        raise ConfigurationError(
            "the model has neither resize nor crop and no recorded input size "
            "(input_size_); fit it on images, or set resize, before exporting"
        )
    return tuple(int(s) for s in known)


def _padim_steps(model):
    from sklearn.pipeline import Pipeline

    from ..detectors._gaussian import PatchGaussian
    from ..features._extraction import BackboneFeatures
    from ..features._selection import RandomFeatureSelector

    steps = ([s for _, s in model.steps if s not in (None, "passthrough")]
             if isinstance(model, Pipeline) else [model])
    kinds = [type(s).__name__ for s in steps]
    ok = (len(steps) in (2, 3) and isinstance(steps[0], BackboneFeatures)
          and isinstance(steps[-1], PatchGaussian)
          and (len(steps) == 2 or isinstance(steps[1], RandomFeatureSelector)))
    if not ok:
        raise ConfigurationError(
            f"cannot export a {' -> '.join(kinds)} to ONNX; export_onnx takes a fitted PaDiM "
            "pipeline (BackboneFeatures -> RandomFeatureSelector -> PatchGaussian, as "
            "make_padim builds it) or a fitted VAE"
        )
    features, detector = steps[0], steps[-1]
    if not hasattr(features, "module_") or not hasattr(detector, "n_samples_seen_"):
        raise ConfigurationError("the pipeline is not fitted; fit it before exporting it")
    channels = steps[1].feature_indices_ if len(steps) == 3 else None
    return features, channels, detector


def _channel_pieces(layer_channels, channels):
    """What to take from each layer, and the permutation back to ``channels``' order."""
    if channels is None:
        return ["all"] * len(layer_channels), None
    channels = np.asarray(channels, dtype=np.int64)
    bounds = np.cumsum([0] + list(layer_channels))
    layer_of = np.searchsorted(bounds, channels, side="right") - 1
    pieces, where = [], []
    for k, c in enumerate(layer_channels):
        idx = np.flatnonzero(layer_of == k)
        local = channels[idx] - bounds[k]
        where.append(idx)
        pieces.append(None if idx.size == 0 else
                      "all" if np.array_equal(local, np.arange(c)) else local)
    order = np.argsort(np.concatenate(where), kind="stable")
    return pieces, None if np.array_equal(order, np.arange(order.size)) else order


def _refuse_tiled(features):
    # The graph runs the backbone once on the whole image; a stitched tiled model's
    # features differ near the tile cuts, so its graph would not give the maps the model
    # gives. (A tile-shared model, stitch=False, is exported tile by tile instead.)
    size = features.__dict__.get("image_size_") or features.__dict__.get("input_size_")
    grid = (1, 1) if size is None else features._tile_grid(size)
    if grid != (1, 1):
        raise ConfigurationError(
            f"tiled models cannot be exported to ONNX yet: BackboneFeatures(tile="
            f"{features.tile}) runs {size[0]}x{size[1]} images in {grid[0]}x{grid[1]} tiles, "
            "which the graph does not do. Fit the pipeline with tile=None to export it, "
            "use a tile-shared model (make_padim(positions='tile')), which exports, or "
            "score this model from Python"
        )


def _padim_graph(model, storage_dtype):
    features, channels, detector = _padim_steps(model)
    shared = not features.__dict__.get("stitch", True)
    if not shared:
        _refuse_tiled(features)
    storage = storage_dtype or detector.storage_dtype
    crop = _pair(features.crop)
    trunk = copy.deepcopy(features.module_).cpu().eval()
    from ..features.backbones import fold_batch_norm

    trunk = fold_batch_norm(trunk)
    pieces, order = _channel_pieces(features.layer_channels_, channels)
    grid = tuple(int(g) for g in detector.grid_shape_)
    chol = torch.from_numpy(detector.precisions_cholesky_)
    chol = chol.to(torch.float16 if storage == "float16" else torch.float32)
    if storage == "float16" and not torch.isfinite(chol).all():
        raise ConfigurationError(
            "the precision factors overflow float16; export with storage_dtype='float32'"
        )
    threshold = _threshold(detector)
    info = dict(model="PaDiM", backbone=features.backbone, factors_dtype=storage,
                resize=features.resize, crop=crop, interpolation=features.interpolation,
                threshold=threshold)
    if shared:  # the graph is one tile's: OnnxModel crops, cuts tiles, stitches, smooths
        plan = _tile_shared_settings(features, detector, crop)
        head, map_size = _tile_head(detector, grid, plan["tile"]), tuple(plan["tile"])
        input_size, crop = map_size, None
        info.update(outputs=["tile_maps"], tile_shared=plan)
    else:
        head, map_size = _head(detector, grid, threshold)
        input_size = _input_size(features.resize, features.crop,
                                 features.__dict__.get("input_size_"))
    blocks = (None if detector.covariance_block_ == 1
              else torch.from_numpy(detector.block_index_))
    graph = _PadimGraph(_Preprocess(crop), trunk, features.upsample, pieces, order, grid,
                        torch.from_numpy(detector.mean_).float(), chol, head, blocks).eval()
    return graph, input_size, crop, map_size, info


def _vae_graph(model, storage_dtype):
    if not hasattr(model, "module_"):
        raise ConfigurationError("the VAE is not fitted; fit it before exporting it")
    crop = tuple(int(s) for s in model.image_size_)
    module = copy.deepcopy(model.module_).cpu().eval()
    threshold = _threshold(model)
    head, map_size = _head(model, crop, threshold)
    graph = _VaeGraph(_Preprocess(crop), module, head).eval()
    input_size = _input_size(model.resize, crop, None)
    info = dict(model="VAE", backbone="resnet18 encoder", factors_dtype="none",
                resize=model.resize, crop=crop, interpolation=model.interpolation,
                threshold=threshold)
    return graph, input_size, crop, map_size, info


def _refuse_spade(model, protobuf_limit):
    # The limit is export_onnx's PROTOBUF_LIMIT, passed in: one constant for both uses.
    size = int(getattr(model, "memory_bytes_", 0))
    fits = ("within" if size < protobuf_limit else "beyond")
    raise ConfigurationError(
        f"SPADE is not exported to ONNX: its model is its gallery of training features "
        f"({size:,} bytes, {fits} the 2 GiB protobuf limit of an ONNX file, and growing with "
        "every training image), which a graph would hold as constants and search "
        "exhaustively for every patch. Score SPADE from Python, or export a PaDiM model "
        "(make_padim), whose size does not depend on the number of training images"
    )


def _graph(model, storage_dtype, protobuf_limit):
    from sklearn.pipeline import Pipeline

    from ..detectors._spade import SPADE
    from ..detectors._vae import VAE

    final = model[-1] if isinstance(model, Pipeline) else model
    if isinstance(final, SPADE):
        _refuse_spade(final, protobuf_limit)
    if isinstance(final, VAE):
        if isinstance(model, Pipeline) and len(model) > 1:
            raise ConfigurationError(
                "a VAE is exported on its own, not inside a pipeline; pass the VAE itself"
            )
        return _vae_graph(final, storage_dtype)
    return _padim_graph(model, storage_dtype)

