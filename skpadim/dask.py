"""Fit and score skpadim pipelines on a Dask cluster, with mergeable statistics.

:func:`fit` fits a PaDiM (or SPADE) pipeline on images spread over a cluster, and gives the
model :func:`~skpadim.fit_in_batches` gives on one machine, to float rounding. No feature
map crosses the network: each partition of images is sent through the backbone on its
worker, and comes back as one :class:`~skpadim.detectors.PatchMoments` (float64 sums, a size
independent of the number of images) plus its share of the calibration sample; a binary
tree of :meth:`PatchMoments.merge <skpadim.detectors.PatchMoments.merge>` calls combines
them, and the driver computes the factors and the threshold once
(:meth:`PatchGaussian.from_moments <skpadim.PatchGaussian.from_moments>`). :func:`score`
scores images on the cluster, and can write each partition's anomaly maps to disk.

Dask is an optional dependency: ``pip install "skpadim[dask]"``. ``import skpadim`` never
imports it, and this module imports it only inside the functions that use it. The module
is over 500 lines and reads better whole: over a third of it is the documentation and
examples of :func:`fit` and :func:`score`, and its code is a thin driver of both.

Equality with a local fit:

- the transformers (backbone, channel draw) are fitted once, on the driver, on the first
  image, as :func:`~skpadim.fit_in_batches` does, and the fitted pipeline is sent to every
  worker once (``client.scatter(..., broadcast=True)``);
- moments: merging is exact in exact arithmetic; in float64 the means and covariances
  agree with a local fit's to about 1e-13 relative (tested to 1e-10);
- threshold: the calibration sample is the one a local fit keeps. With ``N`` training
  samples and room for ``capacity``, a local fit ends with stride ``s``, the smallest
  power of two with ``ceil(N / s) <= capacity``, and holds the samples whose index is a
  multiple of ``s``. ``N`` is known before the fit starts, so each partition keeps exactly
  those of its samples, and the union is the local sample; ``offset_`` is the same
  percentile of the same leave-one-out scores.
- tile-shared models (``make_padim(positions="tile")``): the samples are the tiles, in
  image order; the partitions' tiles are counted first, from the images' sizes alone, and
  ``samples_per_image_`` (tiles per image, which the threshold uses) is set as locally.
"""

import copy
import math
import os
from numbers import Integral
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline

from ._batches import _image_slices, _split, _transform, iter_inspect_images
from ._streaming import _feature_parts, _fit_transformers, _tiles_per_image
from ._torch import resolve_device
from .detectors._gaussian import PatchGaussian, _new_moments
from .detectors._moments import PatchMoments
from .detectors._spade import SPADE
from .exceptions import ConfigurationError, InvalidImageError
from .io._atomic import atomic_write

__all__ = ["fit", "score", "Scores"]

_INSTALL = 'pip install "skpadim[dask]"'


def _require_dask():
    """Import dask's pieces here, not at module level: dask is an optional extra."""
    try:
        import dask
        import dask.array
        import dask.bag
        import distributed
    except ImportError as error:
        raise ImportError(
            f"skpadim.dask needs dask and distributed, which are not installed ({error}); "
            f"install them with: {_INSTALL}"
        ) from error
    return dask, distributed


def _client(client):
    _, distributed = _require_dask()
    if client is not None:
        return client
    try:
        return distributed.get_client()
    except ValueError:
        raise ConfigurationError(
            "no Dask client: pass client=distributed.Client(...) or create one first (for "
            "a test on this machine: distributed.Client(distributed.LocalCluster()))"
        ) from None


# ---------------------------------------------------------------------- partitions
def _partitions(images, client, partition_size):
    """``(delayed partitions, sizes)`` of a bag, an array, a list or a numpy array."""
    dask, _ = _require_dask()
    import dask.array as da
    import dask.bag as db

    if not isinstance(images, (db.Bag, da.Array)):
        if isinstance(images, tuple):
            images = list(images)
        n = len(images)
        if n == 0:
            raise InvalidImageError("got no images; pass at least one image or image path")
        if partition_size is None:
            # Two partitions per worker: a slow worker holds back the fit by half as much.
            workers = max(1, len(client.scheduler_info(n_workers=-1)["workers"]))
            partition_size = math.ceil(n / (2 * workers))
        if isinstance(images, list):
            images = db.from_sequence(images, partition_size=partition_size)
        else:
            images = da.from_array(np.asarray(images), chunks=(partition_size, -1, -1, -1))
        partition_size = None
    if isinstance(images, da.Array):
        if images.ndim != 4:
            raise InvalidImageError(
                f"a dask array of images must be (n, H, W, 3), got shape {images.shape}"
            )
        chunks = {1: -1, 2: -1, 3: -1}
        if partition_size is not None:
            chunks[0] = partition_size
        images = images.rechunk(chunks)
        if any(math.isnan(c) for c in images.chunks[0]):
            images = images.compute_chunk_sizes()
        parts = list(images.to_delayed().ravel())
        return parts, [int(c) for c in images.chunks[0]]
    if partition_size is not None:
        images = images.repartition(npartitions=max(1, math.ceil(images.count().compute()
                                                                  / partition_size)))
    # The sizes, known before the fit, place every image in the global stream (for the
    # calibration sample); counting a bag of paths reads no image.
    sizes = [int(s) for s in images.map_partitions(lambda p: [len(list(p))]).compute()]
    return list(images.to_delayed()), sizes


def _as_images(part):
    """A partition as the pipeline's first step takes it: paths as a list, else an array."""
    if isinstance(part, np.ndarray):
        return part
    part = list(part)
    if part and not isinstance(part[0], (str, os.PathLike)):
        return np.stack([np.asarray(p) for p in part])
    return part


def _first_image(parts, sizes):
    dask, _ = _require_dask()
    k = next(i for i, size in enumerate(sizes) if size)
    (part,) = dask.compute(parts[k])
    return _as_images(part)[:1]


# ---------------------------------------------------------------------- PaDiM
def _feature_array(features):
    """Feature maps as PatchGaussian validates them: float32 or float64."""
    features = np.asarray(features)
    return features if features.dtype in (np.float32, np.float64) else features.astype(np.float64)


def _calibration_stride(n_samples, capacity):
    """Stride a :class:`~skpadim.detectors._calibration.SystematicSample` ends with after
    ``n_samples``: the smallest power of two ``s`` with ``ceil(n_samples / s) <= capacity``
    (1 when ``capacity`` is None)."""
    stride = 1
    if capacity is not None:
        while -(-n_samples // stride) > capacity:
            stride *= 2
    return stride


class _MomentsPart(NamedTuple):
    """What a partition sends back for PaDiM: its sums and its share of the sample."""

    moments: PatchMoments | None
    calibration: list  # arrays of kept samples, in stream order


def _fit_moments(pipeline, part, start, stride, batch_size):
    """One partition's moments and kept calibration samples (runs on a worker); ``start``
    and ``stride`` count the detector's samples: images, or tiles (of a tile-shared model)."""
    transformers, final = _split(pipeline)
    device = resolve_device(final.device)
    images = _as_images(part)
    moments, kept, index = None, [], start
    for batch in _image_slices(images, batch_size):
        for X in _feature_parts(_transform(transformers, batch), max(2, final.batch_size)):
            X = _feature_array(X)
            # Blocks of the detector's batch_size, as in partial_fit: the first block's mean
            # is the shift of the sums; covariance_block pools the scatter from the start.
            grid_shape = (1, 1) if X.ndim == 2 else X.shape[2:]
            for a in range(0, len(X), final.batch_size):
                block = PatchGaussian._positions_first(X[a : a + final.batch_size]).to(device)
                if moments is None:
                    moments = _new_moments(block, grid_shape, final.covariance_block)
                moments = moments.update(block)
            on_stride = (index + np.arange(len(X))) % stride == 0
            if on_stride.any():
                kept.append(X[on_stride].copy())  # a copy: a view would keep X alive
            index += len(X)
    if moments is not None:
        moments = PatchMoments(*(t.cpu() if torch.is_tensor(t) else t for t in moments))
    return _MomentsPart(moments, kept)


def _n_tiles(pipeline, part):
    """Tiles a partition's images are cut into (runs on a worker; reads sizes only)."""
    images = _as_images(part)
    return round(_tiles_per_image(_split(pipeline)[0], images) * len(images)) if len(images) else 0


def _merge_moments(a, b):
    """Merge two partitions' results, ``a`` before ``b`` in the stream."""
    if a.moments is None:
        return b
    moments = a.moments if b.moments is None else a.moments.merge(b.moments)
    return _MomentsPart(moments, a.calibration + b.calibration)


# ---------------------------------------------------------------------- SPADE
def _fit_gallery(pipeline, part, batch_size):
    """One partition's SPADE, ``partial_fit`` but not finished (runs on a worker)."""
    transformers, final = _split(pipeline)
    spade = clone(final)
    for batch in _image_slices(_as_images(part), batch_size):
        for X in _feature_parts(_transform(transformers, batch)):  # tiles: arrays of them
            spade.partial_fit(X)
    return spade if hasattr(spade, "n_samples_fit_") else None


def _merge_galleries(a, b):
    """``a``'s stored samples followed by ``b``'s; nothing is joined until ``_finish``."""
    # SPADE has no public merge; its partial_fit keeps pending chunks and three counts,
    # which are combined here as a partial_fit of b's samples after a's would leave them.
    if a is None or b is None:
        return a if b is None else b
    if b.layer_grids_ != a.layer_grids_ or b._flat_ != a._flat_:
        raise InvalidImageError(
            f"partitions give layer grids {a.layer_grids_} and {b.layer_grids_}; preprocess "
            "every training image alike"
        )
    a = copy.copy(a)  # never modify a task's input: a retried task would see it changed
    a._pending = a.__dict__.get("_pending", []) + b.__dict__.get("_pending", [])
    a.n_samples_fit_ += b.n_samples_fit_
    a.n_neighbors_ = min(a.n_neighbors, a.n_samples_fit_)
    a.memory_bytes_ += b.memory_bytes_
    return a


# ---------------------------------------------------------------------- driver
def _tree(delayed, merge, leaves):
    """Merge ``leaves`` pairwise, level by level, keeping their order."""
    level = list(leaves)
    while len(level) > 1:
        level = [delayed(merge)(level[i], level[i + 1]) if i + 1 < len(level) else level[i]
                 for i in range(0, len(level), 2)]
    return level[0]


def _batch_size(pipeline, batch_size):
    if batch_size is None:
        batch_size = getattr(pipeline, "batch_size", 64)
    if not isinstance(batch_size, Integral) or batch_size < 1:
        raise ConfigurationError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def fit(pipeline, images, client=None, partition_size=None, batch_size=None):
    """Fit a PaDiM or SPADE pipeline on a Dask cluster; the model equals a local fit's.

    The driver fits the steps that learn nothing from the data (the backbone, the channel
    draw) on the first image, as :func:`~skpadim.fit_in_batches` does, and sends the
    pipeline to every worker once. Each partition of images goes through the transformers
    on its worker, ``batch_size`` images at a time, and returns its
    :class:`~skpadim.detectors.PatchMoments` and the calibration samples that fall on the
    global stride (PaDiM), or its share of the gallery (SPADE). A binary tree of merges
    combines them, in partition order; the driver computes the factors and ``offset_``
    once and puts the fitted detector in the pipeline's last step.

    A lost worker costs nothing but time: Dask reruns the tasks whose results it held (the
    pipeline has a replica on every worker and the image partitions are recomputable), and
    every task is a pure function of its inputs, so the result does not change. A task
    that keeps killing workers fails the fit with Dask's ``KilledWorker`` error.

    Parameters
    ----------
    pipeline : sklearn.pipeline.Pipeline
        Ending in :class:`~skpadim.PatchGaussian` or :class:`~skpadim.SPADE`, for instance
        from :func:`~skpadim.make_padim`; fitted in place. Steps with ``partial_fit``
        before the detector (:class:`~skpadim.PatchPCA`) would need a pass of their own
        over the data and are refused: fit those pipelines with
        :func:`~skpadim.fit_in_batches`. A tile-shared pipeline
        (``make_padim(positions="tile")``) is fitted on the images' tiles, as locally.
    images : dask.bag.Bag, dask.array.Array, list or ndarray
        Normal training images: a bag of image paths (or of ``(H, W, 3)`` arrays), a dask
        array ``(n, H, W, 3)`` uint8, or a plain list of paths or array, which is split
        into partitions of ``partition_size`` images.
    client : distributed.Client or None, default=None
        The cluster; None uses the current client (``distributed.get_client()``).
    partition_size : int or None, default=None
        Images per partition. None keeps a dask collection's partitions and splits a plain
        list or array into two partitions per worker.
    batch_size : int or None, default=None
        Images sent through the steps at a time on a worker; None takes the pipeline's
        ``batch_size`` (64 for a plain ``Pipeline``). The model does not depend on it.

    Returns
    -------
    pipeline : sklearn.pipeline.Pipeline
        The fitted pipeline.

    Raises
    ------
    ImportError
        If dask or distributed is missing (``pip install "skpadim[dask]"``).
    ConfigurationError
        If there is no client, or the pipeline's steps cannot be fitted this way.

    Examples
    --------
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> import skpadim, skpadim.dask
    >>> images = np.random.RandomState(0).randint(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    >>> def padim():
    ...     return skpadim.make_padim("resnet18", n_features=10, weights=None, resize=None,
    ...                               crop=None, random_state=0)
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, \\
    ...         Client(cluster) as client:
    ...     pipe = skpadim.dask.fit(padim(), images, client, partition_size=3)
    >>> local = skpadim.fit_in_batches(padim(), images)
    >>> pipe[-1].n_samples_seen_
    8
    >>> bool(np.allclose(pipe.score_samples(images), local.score_samples(images)))
    True
    """
    dask, _ = _require_dask()
    client = _client(client)
    if not isinstance(pipeline, Pipeline):
        raise ConfigurationError(
            f"skpadim.dask.fit fits a Pipeline of images to a detector (from make_padim or "
            f"make_spade), not a {type(pipeline).__name__}"
        )
    transformers, final = _split(pipeline)
    gaussian = isinstance(final, PatchGaussian)
    if not gaussian and not isinstance(final, SPADE):
        raise ConfigurationError(
            f"skpadim.dask.fit fits pipelines ending in PatchGaussian or SPADE, not "
            f"{type(final).__name__}; fit it with skpadim.fit_in_batches"
        )
    if transformers is not None:
        learners = [name for name, step in transformers.steps if hasattr(step, "partial_fit")]
        if learners:
            raise ConfigurationError(
                f"step {learners[0]!r} learns from the data (it has partial_fit) and would "
                "need its own pass over every image; fit this pipeline with "
                "skpadim.fit_in_batches, or drop the step"
            )
    batch_size = _batch_size(pipeline, batch_size)
    parts, sizes = _partitions(images, client, partition_size)
    n = sum(sizes)
    if n < 2:
        raise InvalidImageError(f"fitting needs at least 2 training images, got {n}")

    final._reset()  # a refit starts from scratch, as a local fit would
    if gaussian:  # settings that cannot work fail before the cluster does any work
        final._validate_params()
        final._check_settings()
    first = _first_image(parts, sizes)
    if transformers is not None:
        _fit_transformers(transformers, first, batch_size)
    tiled = _tiles_per_image(transformers, first) is not None  # samples: tiles, not images
    # Sent once to every worker, not once per task; a replica on each worker also
    # survives the loss of any one of them.
    shipped = client.scatter(pipeline, broadcast=True, hash=False)
    task = dask.delayed(pure=True)
    if gaussian:
        # Tiles are counted first (image sizes only): their place in the stream.
        counts = (client.gather(client.compute([task(_n_tiles)(shipped, p) for p in parts]))
                  if tiled else sizes)
        starts = np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        sample = _feature_array(next(_feature_parts(_transform(transformers, first))))
        capacity = final._new_calibration_sample(sample[0].nbytes).capacity
        stride = _calibration_stride(sum(counts), capacity)
        leaves = [task(_fit_moments)(shipped, part, start, stride, batch_size)
                  for part, start in zip(parts, starts)]
        merged = client.compute(_tree(task, _merge_moments, leaves)).result()
        grid_shape = None if sample.ndim == 2 else sample.shape[2:]
        calibration = np.concatenate(merged.calibration)
        model = type(final).from_moments(merged.moments, grid_shape, calibration,
                                         **final.get_params())
    else:
        leaves = [task(_fit_gallery)(shipped, part, batch_size) for part in parts]
        model = client.compute(_tree(task, _merge_galleries, leaves)).result()
    if tiled:  # as locally, set before the threshold, which then flags images, not tiles
        model.samples_per_image_ = (model.n_samples_seen_ if gaussian
                                    else model.n_samples_fit_) / n
    if tiled or not gaussian:  # from_moments finished the model without it
        model._unfinished = True
        model._ensure_finished()
    client.cancel(shipped)
    pipeline.steps[-1] = (pipeline.steps[-1][0], model)
    return pipeline


# ---------------------------------------------------------------------- scoring
class Scores(NamedTuple):
    """What :func:`score` returns: image scores and labels, in order, and any map files.

    Attributes
    ----------
    anomaly_scores : ndarray of shape (n_samples,)
        Image anomaly scores (``-score_samples``), higher = more anomalous.
    labels : ndarray of shape (n_samples,)
        ``predict``'s verdicts: +1 normal, -1 anomalous.
    map_files : list of str or None
        With ``maps_dir``: one ``.npy`` file per partition, in order, holding that
        partition's maps ``(n_part, H, W)`` float32; else None.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.dask import Scores
    >>> result = Scores(np.array([0.5, 3.0]), np.array([1, -1]), None)
    >>> result.labels.tolist()
    [1, -1]
    """

    anomaly_scores: np.ndarray
    labels: np.ndarray
    map_files: list | None


def _score_partition(model, part, index, maps_dir, batch_size):
    images = _as_images(part)
    if not len(images):
        return np.empty(0), np.empty(0, dtype=int), None
    results = [inspection for _, inspection in iter_inspect_images(model, images, batch_size)]
    scores = np.concatenate([r.anomaly_scores for r in results])
    labels = np.concatenate([r.labels for r in results])
    path = None
    if maps_dir is not None:
        path = os.path.join(maps_dir, f"maps-{index:05d}.npy")
        # Atomic: a retried task (after a lost worker) replaces the file whole.
        with atomic_write(path) as f:
            np.save(f, np.concatenate([r.maps for r in results]))
    return scores, labels, path


def score(model, images, client=None, maps_dir=None, partition_size=None, batch_size=None):
    """Score images on a Dask cluster: anomaly scores and labels in order, maps on disk.

    The fitted model is sent to every worker once; each partition goes through it with
    :func:`~skpadim.iter_inspect_images` on its worker. Only the scores and labels come
    back; with ``maps_dir`` each partition writes its anomaly maps to one ``.npy`` file
    there (atomically, so a retried task leaves no half-written file).

    Parameters
    ----------
    model : Pipeline or detector
        A fitted pipeline ending in a skpadim detector (see :func:`~skpadim.anomaly_maps`).
    images : dask.bag.Bag, dask.array.Array, list or ndarray
        As for :func:`fit`.
    client : distributed.Client or None, default=None
        The cluster; None uses the current client.
    maps_dir : str, path-like or None, default=None
        A folder the workers can write (shared storage on a real cluster); created if
        missing. None writes no maps.
    partition_size : int or None, default=None
        As for :func:`fit`.
    batch_size : int or None, default=None
        Images scored at a time on a worker; None takes the model's ``batch_size`` (64
        when it has none).

    Returns
    -------
    scores : Scores
        ``anomaly_scores`` and ``labels`` of every image, in order, and ``map_files``
        (one file per partition, in order) or None.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from distributed import Client, LocalCluster
    >>> import skpadim, skpadim.dask
    >>> images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> pipe = skpadim.make_padim("resnet18", n_features=10, weights=None, resize=None,
    ...                           crop=None, random_state=0).fit(images)
    >>> folder = tempfile.mkdtemp()
    >>> with LocalCluster(n_workers=1, processes=False, dashboard_address=None) as cluster, \\
    ...         Client(cluster) as client:
    ...     result = skpadim.dask.score(pipe, images, client, maps_dir=folder,
    ...                                 partition_size=4)
    >>> bool(np.allclose(result.anomaly_scores, -pipe.score_samples(images)))
    True
    >>> [os.path.basename(f) for f in result.map_files]
    ['maps-00000.npy', 'maps-00001.npy']
    >>> np.load(result.map_files[1]).shape
    (2, 32, 32)
    """
    dask, _ = _require_dask()
    client = _client(client)
    batch_size = _batch_size(model, batch_size)
    if maps_dir is not None:
        maps_dir = os.path.abspath(os.fspath(maps_dir))
        os.makedirs(maps_dir, exist_ok=True)
    parts, sizes = _partitions(images, client, partition_size)
    if sum(sizes) == 0:
        raise InvalidImageError("got no images; pass at least one image or image path")
    shipped = client.scatter(model, broadcast=True, hash=False)
    task = dask.delayed(pure=True)
    results = client.compute([task(_score_partition)(shipped, part, k, maps_dir, batch_size)
                              for k, part in enumerate(parts)])
    results = client.gather(results)
    client.cancel(shipped)
    files = None if maps_dir is None else [path for *_, path in results if path is not None]
    return Scores(np.concatenate([s for s, _, _ in results]),
                  np.concatenate([lab for _, lab, _ in results]), files)
