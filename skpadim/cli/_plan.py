"""What ``skpadim fit`` settles before a PaDiM fit at native resolution starts.

At native resolution a PaDiM fit's memory follows the image's size. Before the long part,
``fit`` chooses what the user left at "auto": the backbone's tile, the covariance blocks
that bring the Gaussians within the memory limit, and then says what the fit will need
(the estimate of :func:`skpadim.estimate_memory`) and how long it should take (one image
timed through the backbone, scaled to the training set).
"""

import os
import time

#: Side above which ``--tile auto`` runs the backbone on tiles of this many pixels.
AUTO_TILE = 512
#: Covariance blocks ``--covariance-block auto`` tries, smallest first.
BLOCKS = (1, 2, 4, 8, 16)
#: Most memory ``--memory-limit auto`` allows a fit, in bytes (less on a machine with less
#: than twice as much RAM): a fit that takes most of an inspection PC's memory is no default.
AUTO_LIMIT = 6 * 10**9


def physical_memory():
    """Bytes of RAM of this machine, or None where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_limit(value):
    """``--memory-limit`` in bytes: "auto" is :data:`AUTO_LIMIT` or half the RAM,
    whichever is less; "none" is None (no limit); else a size such as "6GB"."""
    from .._memory import parse_memory

    if value.lower() == "none":
        return None
    if value.lower() == "auto":
        total = physical_memory()
        return AUTO_LIMIT if total is None else min(AUTO_LIMIT, total // 2)
    return parse_memory(value)


def auto_tile(positions, size):
    """``--tile auto``: the shared tile for ``positions="tile"``; for whole-image
    positions, backbone tiles once an image side exceeds :data:`AUTO_TILE`."""
    if positions == "tile":
        return None  # make_padim's default tile
    return AUTO_TILE if max(size) > AUTO_TILE else None


def choose_block(build, size, n_images, limit):
    """``--covariance-block auto``: the smallest block (1, the paper's per-position model,
    wherever memory allows) whose fit is estimated within ``limit`` bytes. Returns
    ``(k, estimate)``; the largest block and its estimate when none fits.

    ``build(k)`` makes the unfitted pipeline for a block size ``k``.
    """
    from .._memory import estimate_memory
    from ..exceptions import SkpadimError

    estimate = None
    for k in BLOCKS:
        try:
            estimate = estimate_memory(build(k), size, n_images=n_images)
        except SkpadimError:
            return k, None
        if limit is None or estimate.fit_peak <= limit:
            return k, estimate
    return BLOCKS[-1], estimate


def seconds_per_image(features, path):
    """Seconds one training image takes through ``features``, a fitted backbone step
    (the detector's share of a fit is small beside it)."""
    from ..features._tile_samples import TileSamples

    start = time.perf_counter()
    out = features.transform([path])
    if isinstance(out, TileSamples):  # computed lazily: run it
        for _ in out:
            pass
    return time.perf_counter() - start
