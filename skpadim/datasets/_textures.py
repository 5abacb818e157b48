"""A demo data set that needs no download: texture photos with drawn defects."""

from numbers import Real

import numpy as np
from sklearn.utils import Bunch, check_random_state

from ._base import check_positive_int
from ._defects import DEFECT_TYPES, paint_defect

__all__ = ["make_texture_defects", "load_demo", "DEMO_TEXTURES", "DEFECT_TYPES"]

#: The scikit-image texture photos :func:`make_texture_defects` crops from.
DEMO_TEXTURES = ("brick", "grass", "gravel")

# Each photo is 512x512; training crops come from its top half, test crops from its bottom
# half, so no test pixel was ever seen in training.
_PHOTO_SIZE = 512
_SPLIT_ROW = 256


def make_texture_defects(texture="brick", n_train=60, n_test=40, size=224, anomaly_ratio=0.5,
                         defect_types=DEFECT_TYPES, random_state=0):
    """Make a small anomaly detection data set from a real texture photo, offline.

    The photos are the 512x512 grayscale textures shipped with scikit-image
    (``skimage.data.brick``, ``grass`` and ``gravel``), returned as RGB with equal channels.
    Training images are random ``size`` x ``size`` crops of the photo's top half (rows 0 to
    255), test images random crops of its bottom half (rows 256 to 511): the two sets share
    no pixel. A share ``anomaly_ratio`` of the test images gets one drawn defect each:

    - ``"scratch"``: a thin, gently curving bright or dark line;
    - ``"stain"``: a soft-edged irregular blob, tinted with a muted colour or darkened;
    - ``"hole"``: a dark irregular ellipse with a lighter rim;
    - ``"crack"``: a jagged dark line with thinner branches.

    Size, position, shape, shade and strength are drawn at random, so defects are visible
    but rarely saturated. Defect types take turns, so each appears when there are at least
    as many anomalous images as types.

    The masks are exact: a mask is the set of pixels its defect painted, where the painted
    shape covers at least a quarter of a pixel; every pixel outside
    it keeps its value from the clean crop. A pixel inside it can keep its value only where
    the paint already matched it, which is rare.

    Crop positions depend only on ``texture``, ``size``, ``n_train`` (training crops),
    ``n_test`` (test crops) and ``random_state``; so with ``anomaly_ratio=0`` and the same other
    arguments you get the clean versions of the test images.

    Parameters
    ----------
    texture : {"brick", "grass", "gravel"}, default="brick"
        The photo.
    n_train : int, default=60
        Number of normal training images.
    n_test : int, default=40
        Number of test images.
    size : int, default=224
        Side of the square images, from 32 to 256. The default is what the PaDiM paper feeds
        its networks, so no resizing is needed.
    anomaly_ratio : float, default=0.5
        Share of anomalous test images, in [0, 1]; ``round(anomaly_ratio * n_test)`` of them.
    defect_types : sequence of str, default=("scratch", "stain", "hole", "crack")
        The defect types to draw, from those above.
    random_state : int, RandomState instance or None, default=0
        Seeds crops, labels and defects; the same seed gives the same data set.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With fields:

        - ``train_images`` : ndarray of shape (n_train, size, size, 3), dtype uint8.
        - ``test_images`` : ndarray of shape (n_test, size, size, 3), dtype uint8.
        - ``test_labels`` : ndarray of shape (n_test,), int; 1 = anomalous, 0 = normal.
        - ``test_masks`` : ndarray of shape (n_test, size, size), dtype bool; non-empty
          exactly for anomalous images.
        - ``test_defect_types`` : ndarray of shape (n_test,), str; ``"good"`` for normal images.
        - ``train_origins``, ``test_origins`` : ndarray of shape (n, 2), int; the (row, column)
          of each crop's top-left corner in the 512x512 photo.
        - ``texture`` : the texture; ``name`` : ``"texture_defects"``.

    Raises
    ------
    ImportError
        If scikit-image, which ships the photos, is not installed.

    Examples
    --------
    >>> from skpadim.datasets import make_texture_defects
    >>> data = make_texture_defects("grass", n_train=4, n_test=4, size=64)
    >>> data.train_images.shape, data.test_images.dtype, data.test_masks.shape
    ((4, 64, 64, 3), dtype('uint8'), (4, 64, 64))
    >>> bool((data.test_labels == data.test_masks.any(axis=(1, 2))).all())
    True
    """
    photo = _photo(texture)
    n_train, n_test = check_positive_int(n_train, "n_train"), check_positive_int(n_test, "n_test")
    size = check_positive_int(size, "size")
    if not 32 <= size <= _SPLIT_ROW:
        raise ValueError(
            f"size must be from 32 to {_SPLIT_ROW} (crops come from one half of a "
            f"{_PHOTO_SIZE}x{_PHOTO_SIZE} photo), got {size}; resize the images afterwards "
            "for a larger input"
        )
    if isinstance(anomaly_ratio, bool) or not isinstance(anomaly_ratio, Real) or not (
        0 <= anomaly_ratio <= 1
    ):
        raise ValueError(f"anomaly_ratio must be a number in [0, 1], got {anomaly_ratio!r}")
    defect_types = _check_defect_types(defect_types)

    # Three independent streams, so that crops do not shift when labels or defects change.
    rng = check_random_state(random_state)
    train_rng, test_rng, defect_rng = (
        np.random.RandomState(seed) for seed in rng.randint(np.iinfo(np.int32).max, size=3)
    )
    train_origins = _origins(train_rng, n_train, size, first_row=0)
    test_origins = _origins(test_rng, n_test, size, first_row=_SPLIT_ROW)
    test_images = _crops(photo, test_origins, size).astype(np.float32)

    types, masks = _add_defects(test_images, anomaly_ratio, defect_types, defect_rng)
    return Bunch(
        train_images=_crops(photo, train_origins, size),
        test_images=np.rint(test_images).astype(np.uint8),
        test_labels=(types != "good").astype(np.int64),
        test_masks=masks,
        test_defect_types=types,
        train_origins=train_origins,
        test_origins=test_origins,
        texture=texture,
        name="texture_defects",
    )


def load_demo(textures=DEMO_TEXTURES, random_state=0, **kwargs):
    """Make the demo data set of :func:`make_texture_defects` for several textures.

    Parameters
    ----------
    textures : sequence of str, default=("brick", "grass", "gravel")
        The textures, from :data:`DEMO_TEXTURES`.
    random_state : int, RandomState instance or None, default=0
        Draws one seed per texture, so that textures get different defects; the same value
        gives the same data sets.
    **kwargs
        Passed to :func:`make_texture_defects` for every texture.

    Returns
    -------
    data : dict of str to :class:`~sklearn.utils.Bunch`
        Each texture's data set, in the order of ``textures``.

    Examples
    --------
    >>> from skpadim.datasets import load_demo
    >>> demo = load_demo(n_train=2, n_test=2, size=32)
    >>> {name: data.test_images.shape for name, data in demo.items()}
    {'brick': (2, 32, 32, 3), 'grass': (2, 32, 32, 3), 'gravel': (2, 32, 32, 3)}
    """
    if isinstance(textures, str):
        textures = (textures,)
    seeds = check_random_state(random_state).randint(np.iinfo(np.int32).max, size=len(textures))
    return {
        texture: make_texture_defects(texture, random_state=seed, **kwargs)
        for texture, seed in zip(textures, seeds)
    }


def _photo(texture):
    if texture not in DEMO_TEXTURES:
        raise ValueError(f"texture must be one of {DEMO_TEXTURES}, got {texture!r}")
    try:
        from skimage import data
    except ImportError as exc:
        raise ImportError(
            "the demo data set uses texture photos shipped with scikit-image, which is not "
            'installed; install it with pip install "skpadim[demo]"'
        ) from exc
    photo = np.asarray(getattr(data, texture)())
    return np.repeat(photo[..., None], 3, axis=-1) if photo.ndim == 2 else photo[..., :3]


def _check_defect_types(defect_types):
    defect_types = (defect_types,) if isinstance(defect_types, str) else tuple(defect_types)
    unknown = [d for d in defect_types if d not in DEFECT_TYPES]
    if unknown or not defect_types:
        raise ValueError(
            f"defect_types must be a non-empty selection of {DEFECT_TYPES}, got {defect_types!r}"
        )
    return defect_types


def _add_defects(images, anomaly_ratio, defect_types, rng):
    """Paint one defect on a share ``anomaly_ratio`` of ``images``, in place.

    Returns each image's defect type ("good" for none) and mask.
    """
    n_images, size = images.shape[:2]
    n_anomalous = int(round(anomaly_ratio * n_images))
    anomalous = np.sort(rng.permutation(n_images)[:n_anomalous])
    types = np.full(n_images, "good", dtype=f"<U{max(map(len, defect_types + ('good',)))}")
    # Types take turns before shuffling, so each appears once there are enough defects.
    types[anomalous] = rng.permutation(np.resize(np.array(defect_types), n_anomalous))
    masks = np.zeros((n_images, size, size), dtype=bool)
    for i in anomalous:
        masks[i] = paint_defect(images[i], types[i], rng)
    return types, masks


def _origins(rng, n, size, first_row):
    rows = first_row + rng.randint(0, _SPLIT_ROW - size + 1, size=n)
    cols = rng.randint(0, _PHOTO_SIZE - size + 1, size=n)
    return np.stack([rows, cols], axis=1)


def _crops(photo, origins, size):
    return np.stack([photo[r : r + size, c : c + size] for r, c in origins])
