"""Painting synthetic surface defects, with exact masks, onto texture images.

Every defect is a stack of paint layers. A layer has a *coverage* map in [0, 1] (how much of
each pixel the rasterised shape covers: anti-aliased strokes, soft-edged blobs), a paint
colour and a strength; a pixel moves towards the paint by ``coverage * strength``. Coverage
below :data:`MIN_COVERAGE` is set to zero before painting, so every layer has a crisp support.

The mask is that support: the pixels some layer painted. Pixels outside it keep their exact
values. A pixel inside it changes unless the paint happens to match it already (a dark hole
over a pixel that is black), which is rare.

Sizes are fractions of the image side, so small images get proportionally small defects.
"""

import numpy as np

#: The kinds of defect :func:`~skpadim.datasets.make_texture_defects` can draw.
DEFECT_TYPES = ("scratch", "stain", "hole", "crack")

MIN_COVERAGE = 0.25
"""Coverage below which a layer leaves a pixel untouched (and out of the mask)."""

# Stain colours, RGB: rust, olive, blue ink, wine. Grey textures make any hue stand out, so
# these are muted and applied at partial strength rather than saturated.
_STAIN_COLOURS = np.array([[150, 85, 40], [95, 110, 40], [60, 70, 140], [120, 60, 90]], float)


def paint_defect(image, defect_type, rng):
    """Paint one defect on ``image`` in place and return its mask.

    Parameters
    ----------
    image : ndarray of shape (S, S, 3), dtype float32
        Values in [0, 255]; modified in place.
    defect_type : {"scratch", "stain", "hole", "crack"}
    rng : numpy.random.RandomState

    Returns
    -------
    mask : ndarray of shape (S, S), dtype bool
        The pixels the defect painted; never empty.
    """
    draw = {"scratch": _scratch, "stain": _stain, "hole": _hole, "crack": _crack}[defect_type]
    mask = np.zeros(image.shape[:2], dtype=bool)
    for coverage, paint, strength in draw(image, rng):
        coverage = np.where(coverage >= MIN_COVERAGE, coverage, 0).astype(np.float32)
        # Every layer reads the image as the previous layers left it, so a hole's dark
        # interior covers its rim where they overlap.
        image += (coverage * strength)[..., None] * (paint - image)
        mask |= coverage > 0
    np.clip(image, 0, 255, out=image)
    return mask


def _centre(rng, size):
    # Keep defects away from the border so that most of each one lies inside the image.
    return rng.uniform(0.2 * size, 0.8 * size, size=2)


def _scratch(image, rng):
    """A thin, gently curving bright or dark line."""
    size = image.shape[0]
    length, n_segments = rng.uniform(0.25, 0.6) * size, rng.randint(2, 5)
    heading = rng.uniform(0, 2 * np.pi)
    start = _centre(rng, size) - 0.5 * length * np.array([np.sin(heading), np.cos(heading)])
    points = _walk(rng, start, heading, n_segments, length / n_segments, drift=0.15, jitter=0.0)
    width = rng.uniform(1.2, 2.5) * max(size / 224, 0.5)
    grey = rng.uniform(215, 250) if rng.rand() < 0.5 else rng.uniform(10, 45)
    yield _stroke(points, width, size), np.full(3, grey), rng.uniform(0.55, 0.9)


def _stain(image, rng):
    """A soft-edged irregular blob, tinted with a colour or darkened."""
    size = image.shape[0]
    radius = _blob_radius(rng, size, rng.uniform(0.06, 0.14) * size, rng.uniform(0.6, 1.0))
    soft = rng.uniform(0.25, 0.5)  # fraction of the radius over which the stain fades out
    coverage = np.clip((1 - radius) / soft, 0, 1)
    coverage = coverage * coverage * (3 - 2 * coverage)  # smoothstep: no visible rim
    if rng.rand() < 0.5:
        colour = _STAIN_COLOURS[rng.randint(len(_STAIN_COLOURS))] + rng.uniform(-20, 20, 3)
        yield coverage, colour, rng.uniform(0.5, 0.8)
    else:
        yield coverage, image * rng.uniform(0.3, 0.55), 1.0


def _hole(image, rng):
    """A dark irregular ellipse with a lighter rim around it."""
    size = image.shape[0]
    scale = max(size / 224, 0.5)
    semi_axis = rng.uniform(0.035, 0.08) * size
    rim = rng.uniform(1.5, 3.5) * scale
    radius = _blob_radius(rng, size, semi_axis, rng.uniform(0.6, 1.0))
    inner = np.clip((1 - radius) * semi_axis + 0.5, 0, 1)  # about a 1-pixel anti-aliased edge
    outer = np.clip((1 - radius * semi_axis / (semi_axis + rim)) * (semi_axis + rim) + 0.5, 0, 1)
    yield outer - inner, np.full(3, rng.uniform(165, 210)), rng.uniform(0.5, 0.75)
    # Keep a trace of the texture at the bottom of the hole, so it does not look pasted on.
    bottom = rng.uniform(8, 35) + 0.2 * (image - image.mean())
    yield inner, bottom, rng.uniform(0.85, 0.97)


def _crack(image, rng):
    """A jagged dark line with a few thinner branches."""
    size = image.shape[0]
    scale = max(size / 224, 0.5)
    step, width = rng.uniform(3, 6) * scale, rng.uniform(1.0, 2.0) * scale
    heading = rng.uniform(0, 2 * np.pi)
    trunk = _walk(rng, _centre(rng, size), heading, rng.randint(15, 31), step, 0.15, 0.6)
    coverage = _stroke(trunk, width, size)
    for _ in range(rng.randint(1, 4)):
        fork = trunk[rng.randint(1, len(trunk) - 1)]
        angle = heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.0)
        branch = _walk(rng, fork, angle, rng.randint(5, 13), step, 0.15, 0.6)
        coverage = np.maximum(coverage, _stroke(branch, max(0.7 * width, 0.8), size))
    yield coverage, np.full(3, rng.uniform(5, 40)), rng.uniform(0.7, 0.95)


def _walk(rng, start, heading, n_steps, step, drift, jitter):
    """Points of a random walk: the heading drifts slowly, each step deviates from it."""
    points = [np.asarray(start, dtype=float)]
    for _ in range(n_steps):
        heading += rng.normal(0, drift)
        angle = heading + (rng.normal(0, jitter) if jitter else 0.0)
        points.append(points[-1] + step * np.array([np.sin(angle), np.cos(angle)]))
    return np.array(points)


def _stroke(points, width, size):
    """Anti-aliased coverage of a polyline ``points`` (k, 2) of ``width`` pixels."""
    coverage = np.zeros((size, size), dtype=np.float32)
    # Only the polyline's bounding box can be covered; computing there alone keeps long
    # cracks cheap.
    margin = width / 2 + 1
    lo = np.clip(np.floor(points.min(axis=0) - margin), 0, size).astype(int)
    hi = np.clip(np.ceil(points.max(axis=0) + margin) + 1, 0, size).astype(int)
    if (hi <= lo).any():
        return coverage
    yy, xx = np.mgrid[lo[0] : hi[0], lo[1] : hi[1]].astype(np.float32)
    distance = np.full(yy.shape, np.inf, dtype=np.float32)
    for a, b in zip(points[:-1], points[1:]):
        d = b - a
        t = ((yy - a[0]) * d[0] + (xx - a[1]) * d[1]) / max(float(d @ d), 1e-12)
        t = np.clip(t, 0, 1)
        distance = np.minimum(distance, np.hypot(yy - a[0] - t * d[0], xx - a[1] - t * d[1]))
    coverage[lo[0] : hi[0], lo[1] : hi[1]] = np.clip(width / 2 + 0.5 - distance, 0, 1)
    return coverage


def _blob_radius(rng, size, semi_axis, aspect):
    """Normalised radius of an irregular ellipse: 1 on its edge, below 1 inside.

    The ellipse has semi-axes ``semi_axis`` and ``aspect * semi_axis`` at a random angle; a few
    low-frequency harmonics make its outline wobble, as stains and holes do.
    """
    cy, cx = _centre(rng, size)
    angle = rng.uniform(0, np.pi)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    u = ((xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)) / semi_axis
    v = (-(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)) / (aspect * semi_axis)
    theta = np.arctan2(v, u)
    edge = np.ones_like(theta)
    for k in (2, 3, 4):
        edge += rng.uniform(0, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    return np.hypot(u, v) / edge
