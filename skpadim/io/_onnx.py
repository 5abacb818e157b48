"""Fitted models as ONNX graphs: the same maps, scores and labels outside Python.

:func:`~skpadim.export_onnx` writes one ONNX graph that does everything a fitted PaDiM pipeline
(:func:`~skpadim.make_padim`, or a scikit-learn ``Pipeline`` of
:class:`~skpadim.BackboneFeatures`, :class:`~skpadim.RandomFeatureSelector` and
:class:`~skpadim.PatchGaussian`) or :class:`~skpadim.VAE` does to an image, from uint8
pixels to the verdict; :class:`~skpadim.io.OnnxModel` runs such a file with onnxruntime from Python.

**The graph's contract** (for C++, C#, Java, JavaScript users of onnxruntime):

- input ``images``: uint8, ``(n, H, W, 3)``, RGB, channels last, as cameras and image
  readers give them; ``n`` is dynamic. ``(H, W)`` is the model's input size: its
  ``resize`` (the training images' size when ``resize`` is None and there is no crop).
  **The graph does not resize**: torch's antialiased bicubic resampling has no faithful
  ONNX equivalent, so resize images to ``(H, W)`` first, as the training images were
  (PIL's ``Image.resize((W, H), Image.BICUBIC)`` is close). When ``resize`` is None and
  ``crop`` is set, ``H`` and ``W`` are dynamic too (at least the crop).
- inside: ``/ 255``, the center crop, the backbone's normalisation and layers (batch
  norms folded), the selected channels, Mahalanobis distances with the stored Cholesky
  factors of the precisions (no inverse; with ``PatchGaussian(covariance_block=k)`` one
  factor per block, the positions gathered block by block), upsampling and Gaussian blur
  as one matrix per axis, image score = maximum of the map;
- outputs: ``anomaly_maps``, float32 ``(n, h, w)`` at the crop size (the map size), higher
  = more anomalous; ``scores``, float32 ``(n,)``, the maximum of each map (skpadim's
  anomaly score, ``-score_samples``); ``labels``, int64 ``(n,)``, +1 normal (``scores <=
  threshold``), -1 anomalous;
- ``metadata_props``: ``threshold`` (float32, as text), ``pixel_threshold`` (float32, as
  text: a map value above it marks a defect pixel), ``skpadim_version``, ``model``,
  ``input_size``, ``map_size``, ``input``, ``preprocessing``, ``outputs`` and
  ``factors_dtype``.

**Tile-shared models** (``make_padim(positions="tile")``: one Gaussian per position of a
tile, shared by every tile) are exported as the graph of **one tile**: input ``images``
uint8 ``(n, th, tw, 3)``, ``n`` tiles of exactly the tile's size; output ``tile_maps``
float32 ``(n, th, tw)``, each tile's distances upsampled to its pixels, not smoothed. The
image-level steps are the caller's, as :class:`OnnxModel` does them, and
``metadata_props["tile_shared"]`` (JSON) holds their settings: center-crop the image to
``crop`` (if any); cut it into tiles along each axis of length ``L`` with tile ``t`` and
least overlap ``o``: ``k = ceil((L - t) / (t - o))`` steps, starts ``i * (L - t) // k``
for ``i = 0..k`` (:func:`~skpadim.features.shared_tile_spans`); take each pixel from one
tile, consecutive tiles ``(a0, a1)``, ``(b0, b1)`` being cut at ``(a1 + b0 + 1) // 2``
(:func:`~skpadim.features.kept_spans` with ``align=1``); Gaussian-filter the stitched map
(``scipy.ndimage.gaussian_filter`` with ``sigma``, ``truncate`` and ``mode``); the image
score is its maximum and the label +1 when ``score <= threshold``.

The optional ``onnx`` extra (``pip install "skpadim[onnx]"``: onnx, onnxruntime,
onnxscript) is needed here and only here; ``import skpadim`` does not import it.
"""

import json
import os
import tempfile

import numpy as np
import torch

from .._batches import Inspection
from ..exceptions import ConfigurationError, InvalidImageError
from ._atomic import atomic_path
from ._onnx_graph import _graph, _pixel_threshold

__all__ = ["export_onnx", "OnnxModel"]

#: Size above which "auto" writes the tensors to a separate file: protobuf, ONNX's file
#: format, cannot hold a message of 2 GiB or more.
PROTOBUF_LIMIT = 2**31 - 1

_INSTALL = 'pip install "skpadim[onnx]"'
_OPSETS = (17, 18, 19, 20, 21, 22, 23)


def _require(*names):
    """Import the onnx extra's packages, or say how to install them."""
    import importlib

    modules = []
    for name in names:
        try:
            modules.append(importlib.import_module(name))
        except ImportError as exc:
            raise ImportError(
                f"exporting to or running ONNX needs the package {name!r} ({exc}); install "
                f"the onnx extra: {_INSTALL}"
            ) from exc
    return modules


# ---------------------------------------------------------------------------- export
def _sizes_text(input_size, crop, map_size, shared):
    """``input_size`` and ``map_size`` as the metadata states them."""
    def text(size):
        return "x".join(map(str, size))

    if input_size is not None:
        size = text(input_size)
    else:
        size = f"any, at least {text(crop if crop is not None else shared['tile'])}"
    if shared is not None:  # the map has the (cropped) image's size
        map_size = crop if crop is not None else input_size
        return size, "the image's size" if map_size is None else text(map_size)
    return size, text(map_size)


def _metadata(info, input_size, crop, map_size, threshold, pixel_threshold):
    from .. import __version__

    shared = info.get("tile_shared")
    if shared is not None:  # the graph is a tile's: the sizes stated are the image's
        input_size, crop = shared["input_size"], shared["crop"]
    size, map_text = _sizes_text(input_size, crop, map_size, shared)
    resize = info["resize"]
    steps = ["uint8 / 255"]
    if crop is not None and shared is None:
        steps.append(f"center crop to {crop[0]}x{crop[1]}")
    steps += ["backbone normalisation and layers (batch norms folded)"
              if info["model"] == "PaDiM" else "VAE reconstruction from the mean code"]
    not_done = (f"not in the graph: the resize to {resize} ({info['interpolation']}, "
                "antialiased); give images at the input size" if resize is not None
                else "no resize")
    entries = {
        "model": f"skpadim {info['model']} ({info['backbone']})",
        "skpadim_version": __version__,
        "threshold": repr(threshold),
        "pixel_threshold": repr(pixel_threshold),
        "input_size": size,
        "map_size": map_text,
        "input": "images: uint8 (n, H, W, 3), RGB, channels last; n dynamic",
        "preprocessing": "; ".join(steps) + "; " + not_done,
        "outputs": ("anomaly_maps: float32 (n, h, w), higher = more anomalous; scores: "
                    "float32 (n,), max of each map; labels: int64 (n,), +1 normal "
                    "(scores <= threshold), -1 anomalous"),
        "factors_dtype": info["factors_dtype"],
    }
    if shared is not None:
        tile = ", ".join(map(str, shared["tile"]))
        entries.update(
            input=f"images: uint8 (n, {tile}, 3), RGB, channels last: "
                  "n tiles cut from images as tile_shared says; n dynamic",
            preprocessing=entries["preprocessing"] + (
                "; not in the graph either: the center crop to the tile_shared crop, the "
                "cut into tiles, the stitching and the Gaussian filter (skpadim's OnnxModel "
                "does them; see the skpadim.io._onnx module documentation)"),
            outputs=(f"tile_maps: float32 (n, {tile}), each tile's "
                     "distances upsampled to its pixels, not smoothed; stitched and "
                     "Gaussian-filtered, an image's map has scores = its max and labels "
                     "+1 when scores <= threshold, -1 otherwise"),
            tile_shared=json.dumps(shared),
        )
    return entries


def _torch_export(graph, input_size, crop, opset, outputs):
    batch = torch.export.Dim("batch", min=1)
    if input_size is None:
        h, w = crop
        example = torch.zeros(2, h + 2, w + 2, 3, dtype=torch.uint8)
        dims = {0: batch, 1: torch.export.Dim("height", min=h),
                2: torch.export.Dim("width", min=w)}
    else:
        example = torch.zeros(2, *input_size, 3, dtype=torch.uint8)
        dims = {0: batch}
    # dynamo=True: the torch.export-based exporter, torch's default since 2.9. The
    # TorchScript exporter (dynamo=False) is deprecated, and it constant-folds the float16
    # factors' Cast into float32 initializers, which doubles the file of a float16 model.
    program = torch.onnx.export(
        graph, (example,), dynamo=True, opset_version=opset, input_names=["images"],
        output_names=outputs, dynamic_shapes={"images": dims},
        verbose=False, optimize=True,
    )
    return program.model_proto


def _tensor_bytes(proto):
    total = 0
    for t in proto.graph.initializer:
        total += len(t.raw_data) if t.raw_data else 8 * int(np.prod(t.dims, dtype=np.int64))
    return total


def _save(proto, path, external):
    """Write ``proto`` to ``path`` atomically, tensors in ``path + '.data'`` if ``external``."""
    import onnx

    path = os.fspath(path)
    if not external:
        with atomic_path(path) as tmp:
            onnx.save_model(proto, tmp)
        return [path]
    folder = os.path.dirname(os.path.abspath(path))
    data_name = os.path.basename(path) + ".data"
    with tempfile.TemporaryDirectory(dir=folder, prefix=".skpadim-onnx-") as work:
        staged = os.path.join(work, os.path.basename(path))
        onnx.save_model(proto, staged, save_as_external_data=True,
                        all_tensors_to_one_file=True, location=data_name, size_threshold=1024)
        # The data first, the graph last: the new graph never points at old data.
        for name in (data_name, os.path.basename(path)):
            with atomic_path(os.path.join(folder, name)) as tmp:
                os.replace(os.path.join(work, name), tmp)
    return [path, os.path.join(folder, data_name)]


def export_onnx(model, path, *, opset=18, storage_dtype=None, external_data="auto"):
    """Write a fitted PaDiM pipeline or VAE as one ONNX graph: uint8 images in, maps,
    scores and labels out.

    The graph computes what :func:`skpadim.inspect_images` computes (see the module
    docstring for the contract): input ``images``, uint8 ``(n, H, W, 3)`` at the model's
    input size (the graph crops; it does **not** resize); outputs ``anomaly_maps``
    float32 ``(n, h, w)``, ``scores`` float32 ``(n,)`` and ``labels`` int64 ``(n,)``
    (+1 normal, -1 anomalous). The image and pixel thresholds and a description of the
    contract are in the file's ``metadata_props``. Export uses torch's
    ``torch.export``-based exporter (``dynamo=True``) with a dynamic batch dimension.

    Parameters
    ----------
    model : Pipeline or VAE
        A fitted PaDiM pipeline (:func:`~skpadim.make_padim`, or a ``Pipeline`` of
        ``BackboneFeatures``, ``RandomFeatureSelector`` and ``PatchGaussian``), or a
        fitted :class:`~skpadim.VAE`. SPADE is refused (its model is its gallery of
        training features), and so is a backbone that stitches several tiles
        (``BackboneFeatures(tile=..., stitch=True)`` on images larger than a tile). A
        tile-shared pipeline (``make_padim(positions="tile")``) is written as the graph
        of one tile (see the module description); :class:`~skpadim.io.OnnxModel` cuts
        the images into tiles and stitches and smooths the maps.
    path : str or path-like
        The ``.onnx`` file to write; written atomically (a temporary file, then a rename).
    opset : int, default=18
        ONNX opset of the graph (17 to 23).
    storage_dtype : {"float32", "float16"} or None, default=None
        Precision of PaDiM's Cholesky factors in the file (cast to float32 in the graph);
        None keeps the model's ``PatchGaussian.storage_dtype``. float16 halves the file.
        The factors are kept as full ``d x d`` matrices (zeros below the diagonal), so
        that the graph multiplies them directly: the file holds about twice the factor
        bytes of a :func:`skpadim.save` file.
    external_data : bool or "auto", default="auto"
        Write the tensors to ``path + ".data"`` beside the graph (ONNX external data):
        needed for models of 2 GiB or more (WR50-Rd550 at 224 px in float32), which
        protobuf cannot hold in one file; "auto" does so only for those.

    Returns
    -------
    paths : list of str
        The files written: ``path``, and the external data file if any.

    Raises
    ------
    ImportError
        If onnx, onnxruntime or onnxscript is missing (``pip install "skpadim[onnx]"``).
    ConfigurationError
        If the model is not a fitted PaDiM pipeline or VAE (SPADE: with the reason).

    See Also
    --------
    skpadim.io.OnnxModel : Run the exported file with onnxruntime.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skpadim import inspect_images, make_padim
    >>> from skpadim.io import OnnxModel, export_onnx
    >>> images = np.random.RandomState(0).randint(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    >>> pipe = make_padim("resnet18", n_features=10, weights=None, resize=40, crop=32,
    ...                   random_state=0).fit(images)
    >>> path = os.path.join(tempfile.mkdtemp(), "padim.onnx")
    >>> export_onnx(pipe, path) == [path]
    True
    >>> onnx_model = OnnxModel(path)
    >>> onnx_model.input_size, onnx_model.metadata["map_size"]
    ((40, 40), '32x32')
    >>> result = onnx_model.inspect(images[:3])
    >>> expected = inspect_images(pipe, images[:3])
    >>> bool(np.allclose(result.maps, expected.maps, rtol=1e-4, atol=1e-4 * expected.maps.max()))
    True
    >>> result.labels.tolist() == expected.labels.tolist()
    True
    """
    _require("onnx", "onnxscript")
    if opset not in _OPSETS:
        raise ConfigurationError(f"opset must be one of {_OPSETS}, got {opset!r}")
    if storage_dtype not in (None, "float32", "float16"):
        raise ConfigurationError(
            f"storage_dtype must be None, 'float32' or 'float16', got {storage_dtype!r}"
        )
    if external_data not in (True, False, "auto"):
        raise ConfigurationError(
            f"external_data must be True, False or 'auto', got {external_data!r}"
        )
    graph, input_size, crop, map_size, info = _graph(model, storage_dtype, PROTOBUF_LIMIT)
    threshold = info["threshold"]
    pixel_threshold = _pixel_threshold(model)
    outputs = info.get("outputs", ["anomaly_maps", "scores", "labels"])
    with torch.inference_mode(False), torch.no_grad():
        proto = _torch_export(graph, input_size, crop, opset, outputs)
    proto.doc_string = (f"skpadim anomaly detector: images (uint8 n,H,W,3) -> "
                        f"{', '.join(outputs)}; see metadata_props")
    del proto.metadata_props[:]
    for key, value in _metadata(info, input_size, crop, map_size, threshold,
                                pixel_threshold).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, str(value)
    if external_data == "auto":
        external_data = _tensor_bytes(proto) >= PROTOBUF_LIMIT
    return _save(proto, path, bool(external_data))


# ---------------------------------------------------------------------------- running
def _tile_placements(size, plan):
    """Per tile of an image of ``size``: its pixel spans and the spans of the map it gives,
    as :class:`~skpadim.features.TileSamples` cuts them."""
    from ..features import kept_spans, shared_tile_spans

    rows, cols = (shared_tile_spans(length, tile, overlap)
                  for length, tile, overlap in zip(size, plan["tile"], plan["overlap"]))
    return [((r, c), (kr, kc)) for r, kr in zip(rows, kept_spans(rows, 1))
            for c, kc in zip(cols, kept_spans(cols, 1))]


def _inspect_tiles(session, images, plan, threshold, batch_size):
    """A tile-shared model's maps, scores and labels: the graph runs ``batch_size`` tiles at
    a time; stitching and smoothing are numpy's and scipy's, as the torch path's
    (``AnomalyMapMixin._tile_maps``): each pixel from one tile, then one filter per map."""
    import scipy.ndimage

    if plan["crop"] is not None:
        (h, w), (ch, cw) = images.shape[1:3], plan["crop"]
        if h < ch or w < cw:
            raise InvalidImageError(
                f"images are {(h, w)}, smaller than the model's crop {(ch, cw)}")
        top, left = (h - ch) // 2, (w - cw) // 2  # where resize_and_crop crops
        images = images[:, top : top + ch, left : left + cw]
    placed = _tile_placements(images.shape[1:3], plan)
    maps = np.empty(images.shape[:3], dtype=np.float32)
    jobs = [(i, where) for i in range(len(images)) for where in placed]
    for start in range(0, len(jobs), batch_size):
        group = jobs[start : start + batch_size]
        tiles = np.stack([images[i, r0:r1, c0:c1] for i, (((r0, r1), (c0, c1)), _) in group])
        (tile_maps,) = session.run(None, {"images": np.ascontiguousarray(tiles)})
        for part, (i, (((r0, _), (c0, _)), ((kr0, kr1), (kc0, kc1)))) in zip(tile_maps, group):
            maps[i, kr0:kr1, kc0:kc1] = part[kr0 - r0 : kr1 - r0, kc0 - c0 : kc1 - c0]
    sigma = plan["sigma"]
    if sigma > 0:  # as skpadim.detectors.scoring.gaussian_smooth, one map at a time
        maps = scipy.ndimage.gaussian_filter(maps, sigma=(0, sigma, sigma),
                                             truncate=plan["truncate"], mode=plan["mode"])
    scores = maps.reshape(len(maps), -1).max(axis=1)
    labels = np.where(scores <= np.float32(threshold), 1, -1).astype(np.int64)
    return Inspection(maps, scores, labels)


class OnnxModel:
    """An exported skpadim model run with onnxruntime: maps, scores and labels.

    A thin wrapper around ``onnxruntime.InferenceSession`` that feeds ``images`` in
    batches and returns what :func:`skpadim.inspect_images` returns. It needs only numpy
    and onnxruntime at run time (skpadim's torch models are not used).

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`~skpadim.export_onnx`.
    intra_op_num_threads : int or None, default=None
        Threads onnxruntime uses per operator; None lets it choose (all cores).
    providers : list of str or None, default=None
        onnxruntime execution providers, e.g. ``["CUDAExecutionProvider",
        "CPUExecutionProvider"]``; None: the CPU.

    Attributes
    ----------
    session : onnxruntime.InferenceSession
        The session.
    metadata : dict of str to str
        The file's ``metadata_props`` (threshold, input size, preprocessing, ...).
    threshold : float
        Images with ``scores <= threshold`` are normal (label +1).
    pixel_threshold : float
        Map values above it are defect pixels (the model's ``pixel_threshold_``); NaN for
        files written before skpadim recorded it.
    input_size : tuple of int or None
        ``(H, W)`` the images must have; None when any size of at least the crop (or,
        for a tile-shared model, the tile) works.
    tile_shared : dict or None
        For a tile-shared model, the graph being one tile's: ``tile``, ``overlap``,
        ``crop``, ``input_size``, and the stitched map's ``sigma``, ``truncate`` and
        ``mode`` (the file's ``metadata_props["tile_shared"]``); else None.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skpadim import VAE
    >>> from skpadim.io import OnnxModel, export_onnx
    >>> images = np.random.RandomState(0).randint(0, 256, (6, 36, 36, 3), dtype=np.uint8)
    >>> vae = VAE(resize=36, random_crop=34, crop=32, n_epochs=1, n_augmented=6,
    ...           batch_size=6, random_state=0).fit(images)
    >>> path = export_onnx(vae, os.path.join(tempfile.mkdtemp(), "vae.onnx"))[0]
    >>> model = OnnxModel(path, intra_op_num_threads=1)
    >>> result = model.inspect(images[:2])
    >>> result.maps.shape, result.anomaly_scores.dtype, result.labels.dtype
    ((2, 32, 32), dtype('float32'), dtype('int64'))
    >>> model.predict(images[:2]).tolist() == vae.predict(images[:2]).tolist()
    True
    """

    def __init__(self, path, *, intra_op_num_threads=None, providers=None):
        (ort,) = _require("onnxruntime")
        options = ort.SessionOptions()
        if intra_op_num_threads is not None:
            options.intra_op_num_threads = int(intra_op_num_threads)
        self.session = ort.InferenceSession(
            os.fspath(path), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        self.threshold = float(self.metadata.get("threshold", "nan"))
        self.pixel_threshold = float(self.metadata.get("pixel_threshold", "nan"))
        shared = self.metadata.get("tile_shared")
        self.tile_shared = None if shared is None else json.loads(shared)
        shape = self.session.get_inputs()[0].shape
        if self.tile_shared is not None:  # the graph's input is a tile, not the image
            shape = [None] + (self.tile_shared["input_size"] or [None, None])
        fixed = all(isinstance(s, int) for s in shape[1:3])
        self.input_size = tuple(shape[1:3]) if fixed else None

    def _check(self, images):
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise InvalidImageError(
                f"the ONNX model takes uint8 images of shape (n, H, W, 3), got "
                f"{images.dtype} {images.shape}; one image is image[None]"
            )
        if self.input_size is not None and tuple(images.shape[1:3]) != self.input_size:
            raise InvalidImageError(
                f"images are {tuple(images.shape[1:3])}, but the model takes "
                f"{self.input_size}; resize them first, as the training images were "
                f"({self.metadata.get('preprocessing', '')})"
            )
        return np.ascontiguousarray(images)

    def inspect(self, images, batch_size=32):
        """Anomaly maps, image anomaly scores and labels of ``images``.

        Parameters
        ----------
        images : ndarray of shape (n, H, W, 3), dtype uint8
            RGB images at the model's input size.
        batch_size : int, default=32
            Images per run of the graph (tiles, for a tile-shared model).

        Returns
        -------
        inspection : Inspection
            ``maps`` (n, h, w) float32, ``anomaly_scores`` (n,) float32, higher = more
            anomalous, ``labels`` (n,) int64, +1 normal / -1 anomalous.
        """
        images = self._check(images)
        if self.tile_shared is not None:
            return _inspect_tiles(self.session, images, self.tile_shared, self.threshold,
                                  batch_size)
        parts = [self.session.run(None, {"images": images[start : start + batch_size]})
                 for start in range(0, len(images), batch_size)]
        return Inspection(*(np.concatenate(field) for field in zip(*parts)))

    def predict(self, images, batch_size=32):
        """+1 for normal images, -1 for anomalies (``inspect(images).labels``).

        Parameters
        ----------
        images : ndarray of shape (n, H, W, 3), dtype uint8
            RGB images at the model's input size.
        batch_size : int, default=32
            Images per run of the graph.

        Returns
        -------
        labels : ndarray of shape (n,), dtype int64
        """
        return self.inspect(images, batch_size).labels
