"""How much memory a PaDiM fit needs, known before it starts: :func:`estimate_memory`.

The Notes of :func:`estimate_memory` list the terms a fit's peak is made of. Each is a
byte count read off the code that allocates it: the helpers below count one term each
(``moments_bytes``, ``update_workspace``...), the network's trace (:class:`_LiveBytes`)
follows the tensors a forward pass on PyTorch's ``meta`` device keeps alive, and
``_phases`` adds up what is alive during each phase of a fit. The measured constants
(:data:`RUNTIME_OVERHEAD`, :data:`MMAP_THRESHOLD`) say where their numbers come from.

The module is over 500 lines and reads better whole: every term is counted here from the
code that allocates it, the phases add them up, and ``memory_limit``'s advice runs the
same model over other settings. The network's trace (:class:`_LiveBytes` and its helpers)
is the part that could live beside the backbones, if tiling ever wants it too.
"""

import functools
import math
import os
import re
from numbers import Integral
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline

# Private torch API, the only way to see every tensor an operation creates; it is what
# torch's own FakeTensor and FlopCounter modes build on.
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from ._torch import resolve_device
from .detectors._gaussian import PatchGaussian
from .exceptions import ConfigurationError
from .features import backbones
from .features._decomposition import PatchPCA
from .features._extraction import BackboneFeatures
from .features._geometry import _pair
from .features._images import image_sizes, n_images
from .features._selection import RandomFeatureSelector

__all__ = ["MemoryEstimate", "estimate_memory", "parse_memory"]

#: Resident memory a fit adds besides the terms of the module description: PyTorch's,
#: oneDNN's and MKL's kernels, buffers and threads, set up on first use. Measured: fits
#: of 32 x 32 images (whose terms are a few MB) peak 57 to 60 MB above the terms, with
#: ResNet18 and with Lite0.
RUNTIME_OVERHEAD = 64 * 2**20

#: glibc's largest mmap threshold: it serves larger blocks from the system and returns
#: them when freed, but keeps smaller freed blocks resident for reuse. A fit's resident
#: memory before its second forward pass, and after its last, exceeds what is alive by
#: about the peak of the activations held in smaller blocks (measured: 70 to 100 MB for
#: ResNet18 at 640 x 640, for 79 MB of such activations).
MMAP_THRESHOLD = 32 * 2**20

#: Bytes per float64 and float32 value.
_F64, _F32 = 8, 4

#: ``PatchMoments.update``'s ``chunk_bytes`` and ``PatchGaussian._finish``'s chunk of positions.
_UPDATE_BLOCK = 1 << 23
_FACTOR_CHUNK = 64
#: ``mahalanobis``'s ``block_bytes`` and ``PatchGaussian._new_calibration_sample``'s budget.
_DISTANCE_BLOCK = 1 << 23
_CALIBRATION_BUDGET = 1 << 26

_PHASES = {
    "build": "while the network is built",
    "features": "while the backbone computes features",
    "reduction": "while the features are reduced",
    "moments": "while the moments are updated",
    "factors": "while the precision factors are computed",
    "calibration": "while the threshold is calibrated",
}

_UNITS = {"b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
          "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)\s*$", re.IGNORECASE)


def parse_memory(value):
    """Bytes of a memory size: an int, or a string such as ``"6GB"``, ``"512MB"``, ``"1.5GiB"``.

    Units are decimal (``kB``, ``MB``, ``GB``, ``TB``: powers of 1000) or binary (``KiB``,
    ``MiB``, ``GiB``, ``TiB``: powers of 1024), in any case; a bare number is bytes.

    Parameters
    ----------
    value : int or str
        The size.

    Returns
    -------
    size : int
        Bytes.

    Raises
    ------
    ConfigurationError
        If ``value`` is not a positive size in one of these forms.

    Examples
    --------
    >>> from skpadim._memory import parse_memory
    >>> parse_memory("6GB"), parse_memory("512 MiB"), parse_memory(1000)
    (6000000000, 536870912, 1000)
    """
    if isinstance(value, Integral) and not isinstance(value, bool) and value > 0:
        return int(value)
    match = _SIZE.match(value) if isinstance(value, str) else None
    unit = match and _UNITS.get(match.group(2).lower() or "b")
    size = unit and int(float(match.group(1)) * unit)
    if not size:
        raise ConfigurationError(
            f"memory_limit={value!r} is not a memory size; use a positive number of bytes "
            "(an int) or a string such as '6GB', '512MB' or '1.5GiB' (units B, kB, MB, GB, "
            "TB and KiB, MiB, GiB, TiB)"
        )
    return size


def _gb(n_bytes):
    return f"{n_bytes / 1e9:.2f} GB"


class MemoryEstimate(NamedTuple):
    """What fitting a PaDiM pipeline on images of one size needs, from ``estimate_memory``.

    Attributes
    ----------
    fit_peak : int
        Bytes of resident memory the fit adds at its peak, above the process's memory
        before it (the images themselves, already loaded, are not counted).
    model_size : int
        Bytes of the fitted model's tensors: the trunk's weights, the float32 means, the
        packed precision factors in ``storage_dtype`` and the fitted vectors; a saved
        model file is this plus a few kB of description.
    positions : int
        Patch positions ``h * w`` of the feature grid (one Gaussian each).
    n_features : int
        Features per position ``d``.
    breakdown : dict of str to int
        Bytes of each term at its largest (the Notes of :func:`~skpadim.estimate_memory`
        describe them): "weights", "backbone activations", "feature batch", "moments",
        "calibration sample", "factors", "workspace", "runtime". Not all are alive at
        once: ``fit_peak`` is the largest sum of those that are, during ``peak_phase``.
    peak_phase : str
        When the peak happens: "build", "features", "reduction", "moments", "factors" or
        "calibration".
    phases : dict of str to int
        Bytes alive during each of those phases, "runtime" included: ``fit_peak`` is the
        largest.

    Examples
    --------
    >>> from skpadim import estimate_memory, make_padim
    >>> pipe = make_padim("resnet18", n_features=100, weights=None, resize=256, crop=224)
    >>> estimate = estimate_memory(pipe, (1024, 1024), n_images=200)
    >>> estimate.positions, estimate.peak_phase
    (3136, 'features')
    >>> estimate.fit_peak == max(estimate.phases.values())
    True
    >>> print(estimate)                                          # doctest: +ELLIPSIS
    PaDiM fit: 3136 positions x 100 features
      fit peak    0.50 GB (while the backbone computes features)
      model size  0.08 GB
    ...
    """

    fit_peak: int
    model_size: int
    positions: int
    n_features: int
    breakdown: dict
    peak_phase: str
    phases: dict

    def __str__(self):
        lines = [
            f"PaDiM fit: {self.positions} positions x {self.n_features} features",
            f"  fit peak    {_gb(self.fit_peak)} ({_PHASES[self.peak_phase]})",
            f"  model size  {_gb(self.model_size)}",
        ]
        width = max(map(len, self.breakdown))
        lines += [f"    {name:<{width}}  {_gb(size)}" for name, size in self.breakdown.items()]
        return "\n".join(lines)


# ---------------------------------------------------------------------------- the maths
def moments_bytes(positions, n_features):
    """Bytes of :class:`~skpadim.detectors.PatchMoments` (float64, fourth moments included)."""
    return sum(size for size, _ in moments_allocations(positions, n_features))


def moments_allocations(positions, n_features, blocks=None):
    """:class:`~skpadim.detectors.PatchMoments`' tensors as ``(bytes, block)`` pairs: the
    shift, sum and ``sum_cubic`` (``p x d`` each), ``sum_quartic`` and the packed scatter.

    With covariances shared by ``blocks`` blocks of positions (``covariance_block > 1``),
    the scatter has one row per block and there are no fourth moments."""
    p, d = positions, n_features
    if blocks is not None and blocks != p:
        return [(2 * _F64 * p * d, _F64 * p * d), (_F64 * blocks * (d * (d + 1) // 2),) * 2]
    return [(3 * _F64 * p * d, _F64 * p * d), (_F64 * p, _F64 * p),
            (_F64 * p * (d * (d + 1) // 2),) * 2]


def calibration_samples(n_samples, capacity):
    """``(peak, kept)``: the most samples a :class:`SystematicSample` buffer holds at once,
    counting the old copy while it grows, and the samples it keeps at the end.

    The buffer starts at 4 samples (at most ``capacity``) and doubles, up to ``capacity``,
    when full: growing from ``s`` samples holds ``2 s`` for a moment. At ``capacity`` the
    stride doubles instead, in place, which leaves ``ceil(n / stride)`` samples.
    ``n_samples=None`` means a stream long enough to fill ``capacity``.
    """
    n = capacity if n_samples is None else n_samples
    most = n if capacity is None else min(n, capacity)
    stride = 1
    while -(-n // stride) > most:
        stride *= 2
    peak = size = min(4, most)
    while size < most:  # full, and another sample comes: copy into a buffer twice the size
        peak = max(peak, 2 * size)
        size = min(2 * size, capacity or 2 * size)
    return max(peak, most), -(-n // stride)


def update_workspace(positions, batch, n_features):
    """Bytes of ``PatchMoments.update``'s temporaries for a batch of ``batch`` samples.

    Positions go ``step`` at a time (as many as fit its 8 MiB blocks): a float64 copy of
    the batch and its centred values (``step x batch x d`` each), then the scatter products
    (``step x d x d``) and their upper triangle, beside the centred values.
    """
    b, d = batch, n_features
    step = min(positions, max(1, _UPDATE_BLOCK // max(1, (d * d + b * d) * _F64)))
    return _F64 * step * max(2 * b * d, b * d + d * d + d * (d + 1) // 2)


def factor_workspace(positions, n_features):
    """Bytes of ``_factorise``'s temporaries, in float64 ``(64, d, d)`` stacks: 6.6 of them.

    A chunk's covariance is ``(scatter - outer) / (n - 1)``: the outer product of the sums
    and its quotient, the unpacked scatter, the difference and the quotient (5 stacks), while
    the previous chunk's covariance and float32 factors are still bound (1.5 stacks). Traced
    with :class:`_LiveBytes` on the CPU: 6.55 stacks, whatever ``d``.
    """
    return int(6.6 * _F64 * min(_FACTOR_CHUNK, positions) * n_features**2)


def scoring_allocations(grid, n_features, batch, map_size):
    """Temporaries of scoring ``batch`` calibration samples
    (``PatchGaussian._training_scores``), as ``(bytes, block)`` pairs.

    Distances, a float32 ``(positions, batch)`` result and its concatenated copy; the
    leave-one-out correction's three float64 arrays of that size; two blocks of
    ``mahalanobis`` (8 MiB each at most); the anomaly maps, made by two matrix products
    through a ``(batch, H, w)`` intermediate, for a ``(h, w)`` grid.
    """
    (h, w), (height, width), b = grid, map_size, batch
    p = h * w
    block = min(_DISTANCE_BLOCK, p * b * n_features * _F32)
    return [(2 * p * b * _F32, p * b * _F32), (3 * p * b * _F64, p * b * _F64),
            (2 * block, block), (b * height * w * _F32,) * 2, (b * height * width * _F32,) * 2]


def beside_pool(pool, allocations):
    """Bytes that temporaries, ``(bytes, block)`` pairs (``bytes`` in allocations of
    ``block`` bytes each), hold beside the C allocator's retained pool of ``pool`` bytes,
    the pool included.

    Once a forward pass has run, the pool is free but resident memory (see
    :data:`MMAP_THRESHOLD`): allocations under the threshold are carved out of it first;
    larger ones are mapped anew. Only temporaries count so: a long-lived small array (a
    moment, a calibration buffer) that takes part of the pool makes the next forward pass
    grow the heap again. Measured at 224 x 224, where the factorisation's temporaries are
    as large as the pool: counted beside it, they overestimated the peak by 10 to 15%;
    counting the long-lived arrays in it too underestimated 448 x 448 by 5%.
    """
    small = sum(size for size, block in allocations if block < MMAP_THRESHOLD)
    return max(pool, small) + sum(size for size, _ in allocations) - small


# ---------------------------------------------------------------------------- the network
class _LiveBytes(TorchDispatchMode):
    """Follows the bytes of the tensors alive after each operation; ``peak`` is the most.

    Meant for the ``meta`` device, where operations compute shapes only. Storages are
    followed by weak references, so a tensor counts until Python frees it, and views and
    in-place results cost nothing. Composite operations are decomposed so that what the
    CPU kernels allocate is seen (max pooling returns int64 indices as well). Batch norms
    return their input: the fitted network runs with them folded into the convolutions.
    A convolution of channels-first input adds, for its own duration, oneDNN's buffer
    outside PyTorch for its blocked layout: the size of its output, or of its input when
    grouped (measured, see :func:`estimate_memory`'s Notes); channels-last input, oneDNN's own
    layout, needs none.
    """

    def __init__(self):
        super().__init__()
        self._live = {}
        self.peak = 0
        self.small_peak = 0  # of the tensors under MMAP_THRESHOLD
        self.small_at_peak = 0  # of those, alive when the most is

    def track(self, tensor):
        storage = tensor.untyped_storage()
        ref = StorageWeakRef(storage)
        self._live.setdefault(ref.cdata, (ref, storage.nbytes()))

    def _alive(self):
        """Bytes of the tensors alive, and of those under :data:`MMAP_THRESHOLD`."""
        self._live = {k: v for k, v in self._live.items() if not v[0].expired()}
        sizes = [size for _, size in self._live.values()]
        small = sum(s for s in sizes if s < MMAP_THRESHOLD)
        self.small_peak = max(self.small_peak, small)
        return sum(sizes), small

    def _record(self, total, small):
        if total > self.peak:
            self.peak, self.small_at_peak = total, small

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func.__name__
        if "batch_norm" in name:
            out = func(*args, **kwargs)
            return args[0] if torch.is_tensor(out) else (args[0], *out[1:])
        with self:  # the parts of a composite operation come back through here
            decomposed = func.decompose(*args, **kwargs)
        if decomposed is not NotImplemented:
            return decomposed
        before, small = self._alive()
        out = func(*args, **kwargs)
        if name.startswith("convolution"):
            if args[0].is_contiguous(memory_format=torch.channels_last):
                # The CPU kernels keep channels-last input so; the meta kernel does not.
                out = out.contiguous(memory_format=torch.channels_last)
            else:
                grouped = len(args) > 8 and args[8] > 1
                buffer = (args[0] if grouped else out).nbytes
                new = [n for n in (out.nbytes, buffer) if n < MMAP_THRESHOLD]
                self._record(before + out.nbytes + buffer, small + sum(new))
        for tensor in tree_leaves(out):
            if torch.is_tensor(tensor):
                self.track(tensor)
        self._record(*self._alive())
        return out


@functools.lru_cache(maxsize=8)
def _meta_network(backbone, layers):
    """The trunk on the meta device, its weights' bytes and the whole network's bytes."""
    spec = backbones._spec(backbone)
    with torch.device("meta"):
        trunk = backbones.build_trunk(backbone, layers, weights=None)
        whole = spec.build(None)
    weights = sum(t.nbytes for t in trunk.state_dict().values())
    return trunk, weights, sum(t.nbytes for t in whole.state_dict().values())


@functools.lru_cache(maxsize=64)
def _forward(backbone, layers, batch, size, channels_last=True):
    """Traced peak bytes of a forward pass of ``batch`` images of ``size`` (input included),
    the bytes of those under :data:`MMAP_THRESHOLD` then and at their own peak, and the
    shapes ``(c, h, w)`` of the tapped layers.

    Images read from integer arrays or files reach the network channels-last (a view of
    their ``(n, H, W, 3)`` layout), float arrays channels-first.
    """
    trunk = _meta_network(backbone, layers)[0]
    try:
        with torch.inference_mode(), _LiveBytes() as live:
            x = (torch.empty(batch, *size, 3, device="meta").permute(0, 3, 1, 2)
                 if channels_last else torch.empty(batch, 3, *size, device="meta"))
            live.track(x)
            outputs = trunk(x)
    except RuntimeError as exc:
        raise ConfigurationError(
            f"{backbone} cannot take images of {size[0]}x{size[1]} ({exc}); use larger "
            "images or a larger resize"
        ) from exc
    return (live.peak, live.small_at_peak, live.small_peak,
            tuple(tuple(o.shape[1:]) for o in outputs))


def _tile_extent(features, size, strides):
    """The largest tile ``(h, w)`` the backbone runs on, or None without tiling."""
    tile = getattr(features, "tile", None)
    if tile is None:
        return None
    from .features._tiling import auto_overlap, tile_spans  # only with tiling

    align = max(strides)
    tile = _pair(tile, "tile")
    overlap = getattr(features, "tile_overlap", "auto")
    if overlap == "auto":
        overlap = auto_overlap(tile, align)
    elif isinstance(overlap, Integral):  # 0 is allowed, which _pair refuses
        overlap = (overlap, overlap)
    return tuple(max(stop - start for start, stop in tile_spans(s, t, o, align))
                 for s, t, o in zip(size, tile, overlap))


class _Network(NamedTuple):
    weights: int  # the trunk's state_dict
    whole: int  # the whole network, while it is built
    shapes: tuple  # (c, h, w) of each tapped layer on the whole image
    activations: int  # host bytes of one forward batch: input, activations, concatenation
    batch: int  # images per forward pass
    retained: int  # activations the C allocator keeps resident after a forward pass


def _network(features, image_size, n_batch, d_out, channels_last):
    """What the backbone step costs for images of ``image_size``, ``n_batch`` at most per
    forward pass, keeping ``d_out`` channels."""
    layers = tuple(features.layers or backbones.default_layers(features.backbone))
    _, weights, whole = _meta_network(features.backbone, layers)
    resize, crop = _pair(features.resize, "resize"), _pair(features.crop, "crop")
    size = crop or resize or tuple(image_size)
    shapes = _forward(features.backbone, layers, 1, size)[3]
    device = resolve_device(features.device)
    auto = 8 if device.type == "cpu" else 32  # BackboneFeatures._batch_size
    batch = min(n_batch, auto if features.batch_size == "auto" else features.batch_size)
    # The batch as read (float32), and resized: the network sees a view of it.
    source = batch * 3 * _F32 * (image_size[0] * image_size[1]
                                 + (resize[0] * resize[1] if resize else 0))
    tapped = batch * _F32 * sum(c * h * w for c, h, w in shapes)
    (_, h0, w0), channels = shapes[0], sum(s[0] for s in shapes)
    out = batch * d_out * h0 * w0 * _F32
    # concat_layers gathers each layer's chosen channels (a random draw: d_out / channels
    # of each) before writing them into `out`.
    gather = 0 if d_out == channels else max(
        batch * math.ceil(d_out * c / channels) * h * w * _F32 for c, h, w in shapes)
    if device.type != "cpu":  # activations are on the GPU; the host gets the maps back
        return _Network(weights, whole, shapes, source + out, batch, 0)
    strides = [max(1, round(size[0] / h)) for _, h, _ in shapes]
    tile = _tile_extent(features, size, strides)
    if tile is None or tuple(tile) == tuple(size):
        peak, small, pool, _ = _forward(features.backbone, layers, batch, size, channels_last)
        forward = peak - batch * 3 * size[0] * size[1] * _F32 + source
    else:  # one tile batch's activations, beside the whole image's stitched maps
        peak, small, pool, _ = _forward(features.backbone, layers, batch, tile, channels_last)
        forward = peak - batch * 3 * tile[0] * tile[1] * _F32 + source + tapped
    # The C allocator's pool of small blocks keeps its largest size through the forward
    # passes (at their peak it holds some of the tensors); once they are over, it trims
    # its free top beyond twice the threshold.
    forward += pool - small
    concatenation = source + tapped + out + gather
    return _Network(weights, whole, shapes, max(forward, concatenation), batch,
                    min(pool, 2 * MMAP_THRESHOLD))


# ---------------------------------------------------------------------------- the pipeline
def _padim_steps(model):
    """``(features, reduction or None, gaussian)`` of a PaDiM pipeline, or an error."""
    steps = [s for _, s in model.steps if s not in (None, "passthrough")] if isinstance(
        model, Pipeline) else []
    ok = (len(steps) in (2, 3) and isinstance(steps[0], BackboneFeatures)
          and isinstance(steps[-1], PatchGaussian)
          and (len(steps) == 2 or isinstance(steps[1], (RandomFeatureSelector, PatchPCA))))
    if not ok:
        found = " -> ".join(type(s).__name__ for s in steps) or type(model).__name__
        raise ConfigurationError(
            f"memory estimates cover PaDiM pipelines (BackboneFeatures, optionally "
            f"RandomFeatureSelector or PatchPCA, then PatchGaussian, as make_padim builds), "
            f"not {found}; drop memory_limit or build the pipeline with make_padim"
        )
    return steps[0], (steps[1] if len(steps) == 3 else None), steps[-1]


def _n_features(reduction, channels):
    if isinstance(reduction, PatchPCA):
        return reduction.n_components
    if isinstance(reduction, RandomFeatureSelector):
        if reduction.feature_indices is not None:
            return len(reduction.feature_indices)
        if reduction.n_features is not None:
            return reduction.n_features
    return channels


def _capacity(gaussian, sample_bytes, n):
    capacity = gaussian.calibration_size
    if capacity == "auto":  # PatchGaussian._new_calibration_sample
        return max(64, _CALIBRATION_BUDGET // max(1, sample_bytes))
    if capacity is None and n is None:
        raise ConfigurationError(
            "calibration_size=None keeps every training sample, so the memory depends on "
            "their number: pass n_images, or set calibration_size"
        )
    return capacity


def _check_image_size(image_size):
    try:
        size = _pair(image_size, "image_size")
    except (TypeError, ValueError):
        size = None
    if size is None:
        raise ConfigurationError(
            f"image_size must be (height, width) of the images in pixels, got {image_size!r}"
        )
    return size


def _streaming_batch(model):
    # Imported here: _streaming imports this module for StreamingPipeline's memory_limit.
    from ._streaming import StreamingPipeline

    return model.batch_size if isinstance(model, StreamingPipeline) else None


def estimate_memory(model, image_size, *, n_images=None, image_dtype="uint8"):
    """Peak memory of fitting a PaDiM pipeline, and the fitted model's size, before fitting.

    Everything is computed from the pipeline's settings and the image size: the network
    runs on PyTorch's ``meta`` device (no weights, no activations, no download), and the
    detector's buffers are counted from their shapes (the Notes below list the terms).
    The estimate is of the resident memory the fit adds to the process on the CPU; with
    ``device="cuda"`` the backbone's activations are in the GPU's memory instead and are
    left out. ``benchmarks/bench_memory.py`` compares it with measured peaks: within 8%
    for ResNet18 and Lite0 from 224 x 224 to 640 x 640 and 320 x 960, and within 2% at
    native 1024 x 1024, 1536 x 1536 and 1024 x 2048 with ``tile=512`` (6 to 13 GB), the
    sizes it is for (at smaller sizes the C allocator's noise is a larger part of the
    peak).

    Parameters
    ----------
    model : Pipeline
        A PaDiM pipeline, fitted or not: ``BackboneFeatures``, optionally
        ``RandomFeatureSelector`` or ``PatchPCA``, then ``PatchGaussian``, as
        :func:`~skpadim.make_padim` builds. A :class:`~skpadim.StreamingPipeline` is
        estimated as its ``fit`` runs, ``batch_size`` images at a time; a plain
        ``sklearn.pipeline.Pipeline`` as ``Pipeline.fit``, which holds every image's
        features (``n_images`` is then needed).
    image_size : (int, int) or int
        ``(height, width)`` of the training images as given to ``fit`` (an int: a square);
        the pipeline's ``resize`` and ``crop`` are applied to it.
    n_images : int or None, default=None
        Number of training images. None assumes enough of them to fill every buffer,
        which bounds the estimate for any number.
    image_dtype : str or numpy dtype, default="uint8"
        The images' dtype (files count as integers). Integer images reach the network
        channels-last, float ``(n, 3, H, W)`` arrays channels-first, for which PyTorch's
        CPU convolutions need an extra buffer each.

    Returns
    -------
    estimate : MemoryEstimate
        ``fit_peak`` and ``model_size`` in bytes, ``positions``, ``n_features``, the
        ``breakdown`` by term, the ``peak_phase`` and every phase's bytes;
        ``print(estimate)`` shows them in GB.

    Raises
    ------
    ConfigurationError
        If ``model`` is not a PaDiM pipeline, ``image_size`` is not a pair of positive
        ints, or the estimate needs ``n_images`` (a plain ``Pipeline``, or
        ``calibration_size=None``).

    Notes
    -----
    A fit's peak is the moment when the most is alive at once. For a PaDiM pipeline of
    ``p`` patch positions and ``d`` features the terms are:

    - **weights**: the truncated network (``module_``) and its batch-norm-folded copy,
      built on first use: twice the trunk's ``state_dict``; while it is built, the whole
      network (layers past the deepest tapped one included) exists for a moment.
    - **backbone activations** of one forward batch (``BackboneFeatures.batch_size``,
      "auto" = 8 images on the CPU), from running the network on PyTorch's ``meta`` device
      and following which tensors are alive after each operation; then the concatenation
      of the tapped layers. Images read from integer arrays or files reach the network
      channels-last, oneDNN's (PyTorch's CPU convolution library) own layout; float
      ``(n, 3, H, W)`` arrays reach it channels-first, and each convolution then needs a
      buffer outside PyTorch: the size of its output, or of its input for a grouped
      (depthwise) one. Measured forward passes of 8 images of 640 x 640 (ResNet18, Wide
      ResNet-50-2, EfficientNet-B5, Lite0; PyTorch 2.14, AVX-512 CPU) peak at the traced
      bytes to 0.1% channels-first, and 14% above to 22% below them channels-last. With
      ``tile``, one batch of tiles' activations beside the whole image's tapped maps. On a
      GPU the activations are in the GPU's memory and not counted.
    - **feature batch**: the ``StreamingPipeline.batch_size`` images' ``d``-channel float32
      maps that the detector receives (a plain ``Pipeline``'s fit holds every image's).
    - **moments** (:class:`~skpadim.detectors.PatchMoments`): float64 shift, sum and
      fourth-moment ``sum_cubic`` (``p x d`` each), ``sum_quartic`` (``p``) and the packed
      scatter ``p x d(d+1)/2``: ``8 p (3d + d(d+1)/2 + 1)`` bytes.
    - **calibration sample**: up to ``calibration_size`` float32 training maps (``4 p d``
      bytes each) kept to set the threshold; its buffer doubles as it grows, so while
      growing it briefly holds the old and the new copy.
    - **factors**: ``PatchGaussian`` holds the precision factors as full float32 matrices,
      ``4 p d^2`` bytes, whatever ``storage_dtype`` (which sets what is saved).
    - **workspace**: temporaries of the moments update (bounded by its 8 MiB blocks), of
      the factorisation (6.6 float64 ``d x d`` stacks per chunk of 64 positions), of
      scoring the calibration sample and, with ``PatchPCA``, of its float64 projection.
    - **runtime**: 64 MiB, measured (PyTorch's, oneDNN's and MKL's kernels, buffers and
      threads), and, once a forward pass is over, the activations the C allocator keeps
      resident for reuse: those in blocks under its 32 MiB mmap threshold, at most as many
      as were alive at once. The detector's arrays and temporaries under that threshold
      reuse that memory first.

    The phases of a fit (building the network, computing features, reducing them,
    updating the moments, factorising, calibrating) each sum what is alive during them;
    the estimate is the largest. The model that is saved holds the trunk's weights, the
    float32 means, the packed factors in ``storage_dtype`` and a few vectors.

    Examples
    --------
    >>> from skpadim import estimate_memory, make_padim
    >>> pipe = make_padim("resnet18", n_features=100, weights=None, resize=None, crop=None)
    >>> estimate = estimate_memory(pipe, (640, 640))
    >>> estimate.positions, estimate.n_features, estimate.peak_phase
    (25600, 100, 'calibration')
    >>> estimate.breakdown["factors"] == 25600 * 100 * 100 * 4   # float32 (p, d, d)
    True
    >>> smaller = estimate_memory(pipe.set_params(randomfeatureselector__n_features=50),
    ...                           (640, 640))
    >>> bool(smaller.fit_peak < estimate.fit_peak / 2)
    True
    """
    size = _check_image_size(image_size)
    if n_images is not None and (not isinstance(n_images, Integral) or n_images < 1):
        raise ConfigurationError(f"n_images must be a positive int or None, got {n_images!r}")
    channels_last = not np.issubdtype(np.dtype(image_dtype), np.floating)
    return _estimate(model, size, n_images, _streaming_batch(model), channels_last)


def _estimate(model, image_size, n, batch_size, channels_last=True):
    """:func:`estimate_memory`; ``batch_size`` None for ``Pipeline.fit``, which holds the
    features of all ``n`` images."""
    features, reduction, gaussian = _padim_steps(model)
    if batch_size is None and n is None:
        raise ConfigurationError(
            "a plain Pipeline's fit holds every training image's features, so its memory "
            "depends on their number: pass n_images, or use a StreamingPipeline "
            "(make_padim builds one)"
        )
    image_bytes = 0
    if features.tile is not None and not getattr(features, "stitch", True):
        # Tiles as samples: the network, the detector's batches and its sample are those
        # of tiles; besides them, one image as read (uint8) at a time.
        size = _pair(features.crop, "crop") or _pair(features.resize, "resize") or image_size
        image_bytes = size[0] * size[1] * 3
        tiles = _tiles_per_image(features, size)
        n = None if n is None else n * tiles
        batch_size = gaussian.batch_size if batch_size else None
        image_size = _pair(features.tile, "tile")
        features = clone(features).set_params(tile=None, stitch=True, resize=None, crop=None)
    n_batch = min(batch_size, n or batch_size) if batch_size else n
    layers = tuple(features.layers or backbones.default_layers(features.backbone))
    size = _pair(features.crop, "crop") or _pair(features.resize, "resize") or image_size
    channels = sum(c for c, _, _ in _forward(features.backbone, layers, 1, size)[3])
    d = _n_features(reduction, channels)
    # In a StreamingPipeline a selector makes the backbone compute only the channels it
    # keeps (_batches._transform); PatchPCA, or Pipeline.fit, gets all of them.
    selects = batch_size and isinstance(reduction, RandomFeatureSelector)
    net = _network(features, image_size, n_batch, d if selects or reduction is None
                   else channels, channels_last)
    terms = _terms(net, reduction, gaussian, n, n_batch, d, channels, batch_size is not None)
    phases = {name: int(size + RUNTIME_OVERHEAD + (image_bytes if name != "build" else 0))
              for name, size in _phases(terms).items()}
    peak_phase = max(phases, key=phases.get)
    _, h, w = net.shapes[0]
    return MemoryEstimate(
        fit_peak=phases[peak_phase],
        model_size=int(_model_size(net.weights, reduction, gaussian, (h, w), d, channels)),
        positions=int(h * w), n_features=int(d), peak_phase=peak_phase, phases=phases,
        breakdown={
            "weights": terms["weights"],
            "backbone activations": net.activations,
            "feature batch": terms["batch"],
            "moments": terms["moments"],
            "calibration sample": terms["sample_peak"],
            "factors": terms["factors"],
            "workspace": max(terms["reduce_work"], *(
                sum(size for size, _ in parts) for parts in terms["work"].values())),
            "runtime": RUNTIME_OVERHEAD + terms["retained"],
        },
    )


def _blocks(gaussian, grid):
    """Covariances of ``gaussian`` on a ``grid`` of positions (its ``covariance_block``)."""
    k = getattr(gaussian, "covariance_block", 1)
    return math.ceil(grid[0] / k) * math.ceil(grid[1] / k)


def _terms(net, reduction, gaussian, n, n_batch, d, channels, streaming):
    """The byte counts the phases of a fit add up (see the module description)."""
    _, h, w = net.shapes[0]
    p = h * w
    nb = _blocks(gaussian, (h, w))
    sample = p * d * _F32
    capacity = _capacity(gaussian, sample, n)
    peak_held, kept = calibration_samples(n, capacity)
    held = min(v for v in (n, capacity) if v is not None)  # at most, while streaming
    moments = sum(size for size, _ in moments_allocations(p, d, nb))
    batch = n_batch * p * d * _F32
    backbone_out = n_batch * p * (channels if reduction is not None and not (
        streaming and isinstance(reduction, RandomFeatureSelector)) else d) * _F32
    if isinstance(reduction, PatchPCA):
        # PatchPCA.transform: float64 rows and their centred copy beside the input; the
        # detector then copies the (transposed) projection to contiguous memory.
        reduce_work = backbone_out + n_batch * p * channels * 2 * _F64
        batch *= 2
    elif backbone_out > batch:  # Pipeline.fit: X[:, indices] copies the chosen channels
        reduce_work = backbone_out + batch
    else:
        reduce_work = 0
    scored = min(gaussian.batch_size, kept)
    held_after = _last_batch(n, n_batch) * p * d * _F32 if streaming else batch
    factors = nb * d * d * _F32
    stack = _F64 * min(_FACTOR_CHUNK, nb) * d * d
    update = update_workspace(p, min(gaussian.batch_size, n_batch), d)
    means = [(p * d * _F64,) * 2, (p * d * _F32,) * 2]
    return {
        "weights": 2 * net.weights,  # module_ and its folded copy
        "retained": net.retained,
        "whole": net.whole,
        "activations": net.activations,
        # The array the forward batches are written into, unless one forward pass is all.
        "filled": backbone_out if n_batch > net.batch else 0,
        # From the second StreamingPipeline batch on, the moments and sample exist.
        "before": moments + held * sample if n is None or (streaming and n > n_batch) else 0,
        "batch": batch,
        # Features still referenced while the factors and the threshold are computed:
        # Pipeline.fit's, all of them; StreamingPipeline.fit's, the last batch's, which its
        # loop variable keeps (measured: 0.1 GB per 4 images of 1024 x 1024).
        "held_after": held_after,
        "moments": moments,
        "sample_peak": peak_held * sample,
        "sample": kept * sample,
        "factors": factors,
        "reduce_work": reduce_work,
        # What is alive after a forward pass, as (bytes, block) pairs.
        "updating": [*moments_allocations(p, d, nb), (peak_held * sample,) * 2,
                     (batch,) * 2],
        "fitted": [*moments_allocations(p, d, nb), (kept * sample,) * 2, (held_after,) * 2,
                   (factors,) * 2],
        # Temporaries of each phase after the forward passes, also as (bytes, block).
        "work": {
            # PatchMoments.update's 8 MiB blocks, or the first batch's mean as the shift.
            "moments": max([(update, _UPDATE_BLOCK)], means,
                           key=lambda parts: sum(size for size, _ in parts)),
            "factors": [(factor_workspace(nb, d), stack), *means, (p * _F64,) * 2],
            "calibration": [(p * d * _F32,) * 2, (p * _F64,) * 2, *scoring_allocations(
                (h, w), d, scored, gaussian._map_size((h, w)))],
        },
    }


def _tiles_per_image(features, size):
    """Tiles of ``size`` an image is cut into by ``BackboneFeatures(stitch=False)``."""
    from .features._tile_samples import _count_tiles, _shared_plan

    tile = _pair(features.tile, "tile")
    layers = tuple(features.layers or backbones.default_layers(features.backbone))
    shapes = _forward(features.backbone, layers, 1, tile)[3]
    align = max(max(1, round(tile[0] / h)) for _, h, _ in shapes)
    return _count_tiles(size, *_shared_plan(features.tile, features.tile_overlap, align))


def _last_batch(n, n_batch):
    """Images in the last of the batches of ``n_batch`` that ``n`` images make (None: many)."""
    return n_batch if n is None else n - n_batch * ((n - 1) // n_batch)


def _phases(t):
    """Bytes alive in each phase of a fit, from :func:`_terms`, runtime left out."""
    # After a forward pass, the C allocator keeps its small blocks, a pool that later
    # temporaries reuse (during the passes, the activations count what it holds).
    pool, work = t["retained"], t["work"]

    def after_forward(alive, temporaries):
        return t["weights"] + sum(size for size, _ in alive) + beside_pool(pool, temporaries)

    return {
        "build": t["whole"],
        "features": t["weights"] + t["before"] + t["filled"] + t["activations"],
        "reduction": t["weights"] + pool + t["before"] + t["reduce_work"],
        "moments": after_forward(t["updating"], work["moments"]),
        "factors": after_forward(t["fitted"], work["factors"]),
        "calibration": after_forward(t["fitted"], work["calibration"]),
    }


def _model_size(weights, reduction, gaussian, grid, d, channels):
    """Bytes of the fitted tensors a saved model holds."""
    storage = 2 if gaussian.storage_dtype == "float16" else _F32
    p, nb = grid[0] * grid[1], _blocks(gaussian, grid)
    size = weights + p * d * _F32 + nb * d * (d + 1) // 2 * storage + nb * _F64
    if isinstance(reduction, RandomFeatureSelector):
        size += d * np.dtype(np.intp).itemsize  # feature_indices_
    elif isinstance(reduction, PatchPCA):
        # components_, explained_variance_, mean_ and the float64 sums partial_fit goes on from
        size += _F64 * (d * channels + d + channels + channels + channels * channels)
    return size


# ---------------------------------------------------------------------------- memory_limit
def check_memory_limit(model, X, limit, batch_size):
    """Refuse to fit ``model`` on ``X`` if its estimated peak exceeds ``limit``.

    Reads only the first image's size (a file's header), so it runs before any image goes
    through the backbone. ``batch_size`` is the StreamingPipeline's, or None for
    ``Pipeline.fit``.

    Raises
    ------
    ConfigurationError
        If ``limit`` is not a memory size, ``model`` is not a PaDiM pipeline, or the
        estimate exceeds ``limit``; the message names settings whose estimate fits.
    """
    limit_bytes = parse_memory(limit)
    _padim_steps(model)
    size, n = image_sizes(X[:1])[0], n_images(X)
    first = X[0] if not isinstance(X[0], (str, os.PathLike)) else None
    channels_last = first is None or not np.issubdtype(np.asarray(first).dtype, np.floating)
    estimate = _estimate(model, size, n, batch_size, channels_last)
    if estimate.fit_peak <= limit_bytes:
        return estimate
    found = _suggestions(model, size, n, batch_size, limit_bytes, channels_last)
    if found:
        advice = "settings estimated to fit: " + "; ".join(
            f"set_params({', '.join(f'{k}={v!r}' for k, v in params.items())}) "
            f"(about {_gb(result.fit_peak)})" for params, result in found)
    elif estimate.phases["build"] > limit_bytes:
        advice = (f"building the network alone needs about {_gb(estimate.phases['build'])}: "
                  "raise memory_limit")
    else:
        advice = "no smaller batch, tile, feature count or resize fits: raise memory_limit"
    raise ConfigurationError(
        f"fitting would need about {_gb(estimate.fit_peak)} of memory at its peak "
        f"({_PHASES[estimate.peak_phase]}: {estimate.positions} positions x "
        f"{estimate.n_features} features from {size[0]}x{size[1]} images), more than "
        f"memory_limit={limit!r} ({_gb(limit_bytes)}); {advice}. "
        f"estimate_memory(pipeline, {size}) shows every term"
    )


def _suggestions(model, image_size, n, batch_size, limit, channels_last):
    """Settings under which the estimate fits ``limit``, as ``(params, estimate)`` pairs: the
    mildest change that leaves the model as it is (smaller batches, or tiles, which change
    features only at tile borders), the largest calibration sample, the most features and
    the largest resolution that fit."""
    features, reduction, gaussian = _padim_steps(model)
    names = {id(step): name + "__" for name, step in model.steps}
    at = names[id(features)]

    def estimate(params):
        trial = clone(model).set_params(**params)
        return _estimate(trial, image_size, n, trial.batch_size if batch_size else None,
                         channels_last)

    free = [{"batch_size": b} for b in _halvings(batch_size or 1)]
    forward = 8 if features.batch_size == "auto" else features.batch_size
    free += [{at + "batch_size": b} for b in _halvings(forward)]
    if "tile" in features.get_params() and features.tile is None:
        free += [{at + "tile": t} for t in (1024, 768, 512, 384, 256)
                 if t < max(_pair(features.crop or features.resize or image_size, "size"))]
    found = [next(((p, r) for p in free if (r := estimate(p)).fit_peak <= limit), None)]
    now = _estimate(model, image_size, n, batch_size, channels_last)
    sample = now.positions * now.n_features * _F32
    held = calibration_samples(n, _capacity(gaussian, sample, n))[1]
    found.append(_largest(lambda k: {names[id(gaussian)] + "calibration_size": k}, held - 1,
                          estimate, limit))
    if isinstance(reduction, (PatchPCA, RandomFeatureSelector)) and getattr(
            reduction, "feature_indices", None) is None:
        key = names[id(reduction)] + ("n_components" if isinstance(reduction, PatchPCA)
                                      else "n_features")
        found.append(_largest(lambda k: {key: k}, now.n_features - 1, estimate, limit))
    found.append(_largest(lambda k: _scaled(features, at, image_size, k / 100), 99,
                          estimate, limit))
    return [f for f in found if f is not None]


def _halvings(value):
    """``value // 2``, ``value // 4``, ... down to 1."""
    out = []
    while value > 1:
        value //= 2
        out.append(value)
    return out


def _scaled(features, at, image_size, scale, align=32):
    """``resize`` (and ``crop``) bringing the network's input to ``scale`` times its size,
    same view, on a grid of ``align`` pixels."""
    def shrink(size):
        size = tuple(max(align, int(s * scale) // align * align) for s in size)
        return size[0] if size[0] == size[1] else size

    crop = _pair(features.crop, "crop")
    params = {at + "resize": shrink(_pair(features.resize, "resize") or image_size)}
    if crop is not None:
        params[at + "crop"] = shrink(crop)
    return params


def _largest(params_at, high, estimate, limit):
    """The largest ``k`` in ``[1, high]`` whose estimate fits ``limit`` (estimates grow with
    ``k``), as ``(params, estimate)``, or None."""
    best, low = None, 1
    while low <= high:
        mid = (low + high) // 2
        params = params_at(mid)
        try:
            result = estimate(params)
        except ConfigurationError:  # images too small for the network: go larger
            low = mid + 1
            continue
        if result.fit_peak <= limit:
            best, low = (params, result), mid + 1
        else:
            high = mid - 1
    return best
