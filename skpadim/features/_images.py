"""Turning what users hold (arrays, file paths) into checked, network-ready image tensors.

Images enter skpadim in one of these forms, and leave this module as float32 tensors
``(n, 3, H, W)`` in [0, 1]:

- uint8 arrays ``(n, H, W, 3)``, ``(n, H, W, 1)`` or ``(n, H, W)`` (grayscale), as image
  readers return them; divided by 255;
- uint16 arrays of the same shapes (16-bit images); divided by 65535, so they keep their
  precision;
- float arrays ``(n, 3, H, W)`` or ``(n, 1, H, W)`` with values in [0, 1], as torch uses them;
- a list of arrays sharing one shape and dtype, taken as the array they stack to;
- a list of image file paths (any size; each is resized on its own). :func:`read_image`
  reads 8-bit files as uint8 and 16-bit ones (PIL modes ``"I;16*"`` and ``"I"``) as uint16.

Input that can be read more than one way, or only by losing information, is refused with an
:class:`~skpadim.exceptions.InvalidImageError` saying what to pass instead, rather than
guessed at:

- a 3-D uint8 or uint16 array whose last axis is 3 or 4, such as one ``(H, W, 3)`` image: it
  could as well be a stack of grayscale images 3 pixels wide. Pass one image as ``X[None]``,
  a stack of grayscale images as ``X[..., None]`` (shape ``(n, H, W, 1)``);
- 4-channel (RGBA) arrays: drop alpha with ``X[..., :3]``, or blend it onto a background
  first if transparent pixels matter. (Image *files* with alpha are read as RGB, alpha
  dropped, as PIL converts them.);
- empty input, lists of arrays of different shapes or dtypes, lists mixing paths and arrays;
- image files of 32-bit floats (PIL mode ``"F"``), whose scale is unknown, or of integers
  outside 16 bits (mode ``"I"``).
"""

import os

import numpy as np
import torch

from .._torch import from_numpy
from ..exceptions import InvalidImageError
from ._geometry import resize_and_crop
from ._image_files import _is_path_list, image_size, read_image

__all__ = [
    "image_sizes",
    "as_image_batches",
]


def _is_sequence(X):
    """A list, tuple or 1-D object array: paths, or arrays to stack."""
    if isinstance(X, np.ndarray):
        return X.ndim == 1 and X.dtype == object
    return isinstance(X, (list, tuple))


def _few(values, limit=4):
    values = sorted(values, key=str)
    shown = ", ".join(map(str, values[:limit]))
    return "{" + shown + (", ..." if len(values) > limit else "") + "}"


def _batch_shape(X):
    """Shape of the batch ``X`` stands for, without stacking or reading it; None for paths.

    Refuses lists that do not stack into one array: silently making an object array of
    them, or stacking uint8 with float, leads to errors about anything but the cause.
    """
    if _is_path_list(X):
        return None
    if not _is_sequence(X):
        return tuple(X.shape) if hasattr(X, "shape") else np.shape(X)
    if len(X) == 0:
        return (0,)
    is_path = [isinstance(x, (str, os.PathLike)) for x in X]
    if any(is_path):
        odd = is_path.index(False) if is_path[0] else is_path.index(True)
        raise InvalidImageError(
            f"a list of images mixes file paths and other items (item 0 is a "
            f"{type(X[0]).__name__}, item {odd} a {type(X[odd]).__name__}); pass only paths "
            "or only arrays"
        )
    items = [np.asarray(x) for x in X]
    shapes = {x.shape for x in items}
    dtypes = {x.dtype.name for x in items}
    if len(shapes) > 1 or len(dtypes) > 1:
        raise InvalidImageError(
            "a list of arrays must share one shape and dtype to form one batch; got shapes "
            f"{_few(shapes)} and dtypes {_few(dtypes)}; pass file paths (each is resized on "
            "its own) or bring the arrays to one size and dtype first"
        )
    return (len(items), *items[0].shape)


def _as_array(X):
    """``X`` (not paths) as one array-like to slice batches from; lists are stacked."""
    if _is_sequence(X):
        return np.stack([np.asarray(x) for x in X])
    return X


def _unsigned_to_nhwc(X):
    """uint8 / uint16 ``(n, H, W[, c])`` -> ``(n, H, W, c)``, refusing ambiguous shapes."""
    kind = X.dtype.name
    if X.ndim == 3 and X.shape[-1] in (3, 4):
        c = X.shape[-1]
        one = "X[None]" if c == 3 else "X[None, ..., :3] (alpha dropped)"
        raise InvalidImageError(
            f"a 3-D {kind} array of shape {X.shape} is ambiguous: one {c}-channel image, or "
            f"{X.shape[0]} grayscale images {c} pixels wide? Pass one image as {one}, and "
            "grayscale images as X[..., None], of shape (n, H, W, 1)"
        )
    if X.ndim == 3:
        X = X[..., None]
    if X.ndim == 4 and X.shape[-1] == 4:
        raise InvalidImageError(
            f"{kind} images of shape {X.shape} have 4 channels (RGBA?), but images must have "
            "shape (n, H, W, 3) or (n, H, W, 1); drop alpha with X[..., :3]"
        )
    if X.ndim != 4 or X.shape[-1] not in (1, 3):
        raise InvalidImageError(
            f"{kind} images must have shape (n, H, W, 3), (n, H, W, 1) or (n, H, W), got "
            f"{X.shape}; channels-first {kind} arrays need X.transpose(0, 2, 3, 1)"
        )
    return X


def _float_hint(shape):
    if len(shape) == 4 and shape[-1] in (1, 3):
        return "; it looks channels-last: use X.transpose(0, 3, 1, 2)"
    if len(shape) == 4 and shape[1] == 4:
        return "; drop alpha with X[:, :3]"
    if len(shape) == 3 and shape[0] in (1, 3):
        return "; for one image use X[None]"
    return ""


def _array_to_tensor(X):
    """Validate one array of images and return float32 ``(n, 3, H, W)`` in [0, 1]."""
    X = np.asarray(X)
    if X.dtype == np.uint8:
        X = _unsigned_to_nhwc(X)
        t = from_numpy(X).permute(0, 3, 1, 2).float().div_(255)
    elif X.dtype.kind == "u" and X.dtype.itemsize == 2:  # uint16 in either byte order
        X = _unsigned_to_nhwc(X)
        # float32's 24-bit mantissa holds every 16-bit value exactly.
        t = from_numpy(X, dtype=np.float32).permute(0, 3, 1, 2).div_(65535)
    elif np.issubdtype(X.dtype, np.floating):
        if X.ndim != 4 or X.shape[1] not in (1, 3):
            raise InvalidImageError(
                "float images must have shape (n, 3, H, W) or (n, 1, H, W), got "
                f"{X.shape}{_float_hint(X.shape)}"
            )
        _check_float_range(X)
        t = from_numpy(X, dtype=np.float32)
    else:
        raise InvalidImageError(
            "images must be uint8, uint16 or float arrays or a list of file paths, got dtype "
            f"{X.dtype}"
        )
    if t.shape[1] == 1:
        t = t.expand(-1, 3, -1, -1)
    return t


def n_images(X):
    """Number of images in ``X`` without loading them.

    Raises :class:`~skpadim.exceptions.InvalidImageError` for empty input, for anything
    that is not a batch, and for lists whose arrays do not share one shape and dtype.
    """
    shape = _batch_shape(X)
    if shape is None:
        return len(X)
    if len(shape) > 0 and shape[0] == 0:
        what = f"an empty {type(X).__name__}" if _is_sequence(X) else f"shape {shape}"
        raise InvalidImageError(f"got no images ({what}); pass at least one image")
    if len(shape) < 2:
        raise InvalidImageError(
            f"expected a batch of images, got an array of shape {shape}"
        )
    return shape[0]


def as_image_batches(X, batch_size, resize=None, crop=None, interpolation="bicubic"):
    """Yield float32 ``(b, 3, H, W)`` tensors in [0, 1], resized and cropped.

    Paths are read one batch at a time, so memory does not grow with the number of images.

    Parameters
    ----------
    X : array-like or list of paths
        Images in one of the forms the module docstring lists.
    batch_size : int
        Images per yielded tensor.
    resize, crop : int, (int, int) or None, default=None
        As in :func:`resize_and_crop`. Images read from files may differ in size; ``resize``
        must then bring them to one.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        As in :func:`resize_and_crop`.

    Yields
    ------
    batch : torch.Tensor of shape (b, 3, H, W)
        float32 in [0, 1]; ``b`` is ``batch_size`` except perhaps for the last batch.

    Raises
    ------
    InvalidImageError
        If ``X`` is empty, has an unsupported or ambiguous shape (see the module docstring)
        or dtype, holds values outside [0, 1] (float arrays), is a list of arrays that differ
        in shape or dtype, or holds files whose sizes differ after ``resize`` and ``crop``.
    DatasetError
        If an image file is missing or cannot be decoded.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.features import as_image_batches
    >>> images = np.full((5, 40, 40), 255, dtype=np.uint8)    # grayscale uint8
    >>> batches = list(as_image_batches(images, 2, resize=36, crop=32))
    >>> [tuple(b.shape) for b in batches]
    [(2, 3, 32, 32), (2, 3, 32, 32), (1, 3, 32, 32)]
    >>> batches[0].dtype, float(batches[0].max())
    (torch.float32, 1.0)
    """
    n = n_images(X)
    paths = _is_path_list(X)
    if not paths:
        X = _as_array(X)
        # Validate the whole array once, up front: a NaN in the last batch should fail before
        # minutes of work on the first ones.
        _check_values(X)
    for start in range(0, n, batch_size):
        part = X[start : start + batch_size]
        if paths:
            tensors = [
                resize_and_crop(_array_to_tensor(read_image(p)[None]), resize, crop, interpolation)
                for p in part
            ]
            sizes = {tuple(t.shape[-2:]) for t in tensors}
            if len(sizes) > 1:
                raise InvalidImageError(
                    f"images have different sizes {sorted(sizes)}; set resize (and crop) so "
                    "every image reaches the network at the same size"
                )
            yield torch.cat(tensors)
        else:
            yield resize_and_crop(_array_to_tensor(part), resize, crop, interpolation)


def _check_float_range(X):
    if not np.isfinite(X).all():
        raise InvalidImageError("images contain NaN or infinite values")
    lo, hi = float(X.min()), float(X.max())
    if lo < 0 or hi > 1:
        raise InvalidImageError(
            f"float images must lie in [0, 1], got values in [{lo:.4g}, {hi:.4g}]; "
            "divide 0..255 data by 255 or pass it as uint8"
        )


def _check_values(X):
    X = np.asarray(X)
    _array_to_tensor(X[:1])  # shape and dtype
    if np.issubdtype(X.dtype, np.floating):
        _check_float_range(X)


def image_sizes(X):
    """``(height, width)`` of each image of a batch, as the models would read it.

    Arrays give their shape (one size for the whole batch); file paths are read from their
    headers only, without decoding the pixels. These are the sizes
    :func:`restore_geometry` brings anomaly maps back to.

    Parameters
    ----------
    X : array-like or list of paths
        Images in one of the forms the module docstring lists.

    Returns
    -------
    sizes : list of (int, int)
        One ``(height, width)`` per image, in the order of ``X``.

    Raises
    ------
    InvalidImageError
        If ``X`` is empty or is not a batch the models accept (see the module docstring).
    DatasetError
        If an image file is missing or is not an image.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim.features import image_sizes
    >>> image_sizes(np.zeros((2, 48, 64, 3), dtype=np.uint8))          # channels last
    [(48, 64), (48, 64)]
    >>> image_sizes(np.zeros((1, 3, 30, 20), dtype=np.float32))        # channels first
    [(30, 20)]
    >>> folder = tempfile.mkdtemp()
    >>> paths = [os.path.join(folder, name) for name in ("a.png", "b.png")]
    >>> Image.new("RGB", (64, 48)).save(paths[0])
    >>> Image.new("L", (10, 20)).save(paths[1])
    >>> image_sizes(paths)
    [(48, 64), (20, 10)]
    """
    n = n_images(X)
    if _is_path_list(X):
        return [image_size(p) for p in X]
    # Converting the first image settles the layout exactly as the models read it
    # ((n, H, W, c) for integers, (n, c, H, W) for floats); every image shares its shape.
    first = _array_to_tensor(_as_array(X[:1]))
    height, width = (int(s) for s in first.shape[-2:])
    return [(height, width)] * n
