"""Turning what users hold (arrays, file paths) into network-ready image tensors.

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

Masks go through :func:`transform_masks`, the same geometry as the images, so metrics
compare like with like. The way back, from anomaly maps to the user's own images, is
:func:`restore_geometry`: it undoes the crop and the resize, so that a map lies over
the original image pixel for pixel (with the border the crop removed marked unknown).
"""

import contextlib
import os
from numbers import Integral

import numpy as np
import torch
import torch.nn.functional as F

from .._torch import from_numpy
from ..exceptions import DatasetError, InvalidImageError

__all__ = [
    "read_image",
    "image_size",
    "image_sizes",
    "as_image_batches",
    "resize_and_crop",
    "transform_masks",
    "restore_geometry",
]

_INTERPOLATIONS = ("bicubic", "bilinear", "nearest")


@contextlib.contextmanager
def _open_image(path):
    """PIL's ``Image.open``, with its many failure modes turned into one error naming the file."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            yield img
    except Image.DecompressionBombError as exc:
        raise DatasetError(
            f"image {os.fspath(path)!r} is larger than PIL allows ({exc}); if you trust the "
            "file, raise the limit: PIL.Image.MAX_IMAGE_PIXELS = <pixels>, or None for none"
        ) from exc
    except FileNotFoundError as exc:
        raise DatasetError(f"image file not found: {os.fspath(path)!r}") from exc
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise DatasetError(
            f"cannot read image {os.fspath(path)!r} ({exc}); is the file complete and an image?"
        ) from exc


def image_size(path):
    """``(height, width)`` of an image file, read from its header only.

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    size : tuple of int
        ``(height, width)`` in pixels.

    Raises
    ------
    DatasetError
        If the file is missing or is not an image.

    Examples
    --------
    >>> import os, tempfile
    >>> from PIL import Image
    >>> from skpadim.preprocessing import image_size
    >>> path = os.path.join(tempfile.mkdtemp(), "wide.png")
    >>> Image.new("RGB", (64, 48)).save(path)      # PIL sizes are (width, height)
    >>> image_size(path)
    (48, 64)
    """
    with _open_image(path) as img:
        width, height = img.size
    return height, width


# PIL modes of 16-bit grayscale files (PNG, TIFF, PGM); some open as 32-bit "I".
_HIGH_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def read_image(path):
    """Read one image file as an RGB array ``(H, W, 3)``: uint8, or uint16 for 16-bit files.

    Grayscale and palette images are converted to RGB and alpha is dropped; the whole file is
    decoded now, so a truncated file fails here with its name rather than later. 16-bit
    grayscale files (PIL modes ``"I;16"``, ``"I;16B"``, ``"I;16L"``, and ``"I"`` with values
    in 0..65535) keep their 16 bits as uint16 instead of being clipped to 8.

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    image : ndarray of shape (H, W, 3), dtype uint8 or uint16
        The decoded image, a writable array; uint16 (values 0..65535) for 16-bit files.

    Raises
    ------
    DatasetError
        If the file is missing, cannot be decoded as an image, or has more pixels than
        ``PIL.Image.MAX_IMAGE_PIXELS`` allows.
    InvalidImageError
        If the file holds 32-bit floats (PIL mode ``"F"``), whose scale is unknown, or
        integers outside 0..65535 (mode ``"I"``).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim.preprocessing import read_image
    >>> folder = tempfile.mkdtemp()
    >>> path = os.path.join(folder, "gray.png")
    >>> Image.fromarray(np.full((4, 6), 200, dtype=np.uint8)).save(path)   # grayscale
    >>> image = read_image(path)
    >>> image.shape, image.dtype, image[0, 0].tolist()
    ((4, 6, 3), dtype('uint8'), [200, 200, 200])
    >>> path = os.path.join(folder, "deep.png")
    >>> Image.fromarray(np.full((4, 6), 40000, dtype=np.uint16)).save(path)  # 16-bit
    >>> image = read_image(path)
    >>> image.shape, image.dtype, image[0, 0].tolist()
    ((4, 6, 3), dtype('uint16'), [40000, 40000, 40000])
    """
    with _open_image(path) as img:
        img.load()
        mode = img.mode
        if mode == "F":
            image = None
        elif mode in _HIGH_BIT_MODES:
            image = np.array(img)
        else:
            # A writable copy: torch warns on read-only arrays.
            return np.array(img.convert("RGB"))
    if image is None:
        raise InvalidImageError(
            f"image {os.fspath(path)!r} holds 32-bit floats (PIL mode 'F'), whose scale is "
            "unknown; save it as 8- or 16-bit, or load it yourself and pass float arrays "
            "(n, 3, H, W) in [0, 1]"
        )
    if image.size and (image.min() < 0 or image.max() > 65535):
        raise InvalidImageError(
            f"image {os.fspath(path)!r} holds integers in [{image.min()}, {image.max()}] "
            f"(PIL mode {mode!r}), beyond the 16 bits (0..65535) skpadim reads; rescale it, "
            "or load it yourself and pass float arrays (n, 3, H, W) in [0, 1]"
        )
    # astype also turns big-endian "I;16B" data into native uint16.
    return np.repeat(image.astype(np.uint16)[..., None], 3, axis=-1)


def _is_path_list(X):
    # 1-D arrays of paths arrive from sklearn's splitters indexing a list (dtype "U"), or
    # from pandas columns (dtype object).
    if isinstance(X, np.ndarray):
        if X.ndim != 1 or X.dtype.kind not in "UO":
            return False
    elif not isinstance(X, (list, tuple)):
        return False
    return len(X) > 0 and all(isinstance(x, (str, os.PathLike)) for x in X)


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
    >>> from skpadim.preprocessing import as_image_batches
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


def _pair(size, name):
    if size is None:
        return None
    if isinstance(size, Integral):
        size = (size, size)
    size = tuple(int(s) for s in size)
    if len(size) != 2 or min(size) < 1:
        raise InvalidImageError(f"{name} must be a positive int or (height, width), got {size}")
    return size


def resize_and_crop(images, resize=None, crop=None, interpolation="bicubic"):
    """Resize to ``resize`` then center-crop to ``crop``, as the PaDiM paper preprocesses.

    Parameters
    ----------
    images : torch.Tensor of shape (n, c, H, W)
        Float images in [0, 1] (or masks as float).
    resize : int, (int, int) or None, default=None
        Target size; an int gives a square, as the paper resizes MVTec AD to 256x256.
        None keeps the size.
    crop : int, (int, int) or None, default=None
        Center crop applied after resizing; None keeps everything.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        Resampling filter. Bicubic and bilinear are antialiased when shrinking, like PIL;
        bicubic output is clipped back to [0, 1].

    Returns
    -------
    images : torch.Tensor of shape (n, c, h, w)
        ``(h, w)`` is ``crop``, else ``resize``, else the input size.

    Raises
    ------
    InvalidImageError
        If ``interpolation`` is unknown, a size is not positive, or ``crop`` is larger than
        the resized image.

    Examples
    --------
    >>> import torch
    >>> from skpadim.preprocessing import resize_and_crop
    >>> images = torch.rand(2, 3, 48, 64, generator=torch.Generator().manual_seed(0))
    >>> tuple(resize_and_crop(images, resize=36, crop=32).shape)
    (2, 3, 32, 32)
    >>> tuple(resize_and_crop(images, resize=(24, 32)).shape)
    (2, 3, 24, 32)
    >>> grid = torch.arange(16.0).reshape(1, 1, 4, 4)
    >>> resize_and_crop(grid, crop=2).tolist()                  # the central 2 x 2
    [[[[5.0, 6.0], [9.0, 10.0]]]]
    """
    if interpolation not in _INTERPOLATIONS:
        raise InvalidImageError(
            f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}"
        )
    resize, crop = _pair(resize, "resize"), _pair(crop, "crop")
    if resize is not None and tuple(images.shape[-2:]) != resize:
        images = _resample(images, resize, interpolation)
        if interpolation == "bicubic":  # its overshoot leaves [0, 1]
            images = images.clamp_(0, 1)
    if crop is not None:
        h, w = images.shape[-2:]
        ch, cw = crop
        if ch > h or cw > w:
            raise InvalidImageError(
                f"crop {crop} is larger than the (resized) image {(h, w)}; lower crop or raise "
                "resize"
            )
        top, left = _center_crop_offset((h, w), crop)
        images = images[..., top : top + ch, left : left + cw]
    return images


def transform_masks(masks, resize=None, crop=None):
    """Bring ground-truth masks through the same resize and crop as the images.

    Masks are resampled with nearest-neighbour interpolation, so they stay binary and a defect
    keeps its place relative to the image content.

    Parameters
    ----------
    masks : array-like of shape (n, H, W) or list of mask file paths
        Non-zero marks a defective pixel.
    resize, crop : int, (int, int) or None
        The values given to the feature extractor (``BackboneFeatures.resize`` and ``crop``).

    Returns
    -------
    masks : ndarray of shape (n, h, w), dtype bool

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.preprocessing import transform_masks
    >>> masks = np.zeros((1, 512, 512), dtype=bool)
    >>> masks[0, 200:300, 200:300] = True
    >>> transform_masks(masks, resize=256, crop=224).shape
    (1, 224, 224)
    """
    if _is_path_list(masks):
        # Any non-black pixel is defect, in whichever channel (palette masks read as RGB).
        out = [transform_masks(read_image(p).any(axis=-1)[None], resize, crop)[0]
               for p in masks]
        sizes = {m.shape for m in out}
        if len(sizes) > 1:
            raise InvalidImageError(
                f"mask files come out at different sizes {sorted(sizes)} (e.g. "
                f"{os.fspath(masks[0])!r}: {out[0].shape}); set resize so they share one"
            )
        return np.stack(out)
    masks = np.asarray(masks)
    if masks.ndim != 3:
        raise InvalidImageError(f"masks must have shape (n, H, W), got {masks.shape}")
    t = from_numpy(masks, dtype=np.float32)[:, None]
    t = resize_and_crop(t, resize, crop, interpolation="nearest")
    return t[:, 0].numpy() > 0.5


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
    >>> from skpadim.preprocessing import image_sizes
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


def _center_crop_offset(size, crop):
    """Top-left corner of the center crop of ``crop`` in ``size``: where
    :func:`resize_and_crop` crops, and :func:`restore_geometry` puts maps back."""
    (h, w), (ch, cw) = size, crop
    return (h - ch) // 2, (w - cw) // 2


def _resample(t, size, interpolation):
    """``t`` (n, c, h, w) resampled to ``size``, antialiased when shrinking (bilinear and
    bicubic, like PIL); unclipped: :func:`resize_and_crop` clips images to [0, 1] itself,
    and anomaly maps are not confined to it."""
    if tuple(t.shape[-2:]) == tuple(size):
        return t
    if interpolation == "nearest":
        return F.interpolate(t, size=size, mode="nearest-exact")
    return F.interpolate(t, size=size, mode=interpolation, align_corners=False, antialias=True)


def _fill_value(fill):
    """``fill`` as a float, or None for ``"nearest"``."""
    if isinstance(fill, str):
        if fill == "nan":
            return float("nan")
        if fill == "nearest":
            return None
    elif isinstance(fill, (int, float, np.integer, np.floating)) and not isinstance(fill, bool):
        return float(fill)
    raise InvalidImageError(
        f"fill must be 'nan' (unknown), 'nearest' (edge values extended) or a number, got "
        f"{fill!r}"
    )


def restore_geometry(maps, image_size, resize=None, crop=None, *, fill="nan",
                     interpolation="bilinear"):
    """Bring anomaly maps back to the images' own geometry: undo the crop, then the resize.

    The inverse of :func:`resize_and_crop` for maps. A model resizes an image of size
    ``image_size`` to ``resize``, center-crops it to ``crop``, and returns a map that covers
    the crop (at the crop's size, or at the detector's ``map_size``). This function

    1. resamples the map to the crop's size;
    2. places it in a canvas of the resized size at the crop's offset
       (``((h - ch) // 2, (w - cw) // 2)``, the offset :func:`resize_and_crop` crops at,
       odd differences included); the border the crop removed is unknown;
    3. resamples the canvas to ``image_size``.

    The map then lies over the original image pixel for pixel, as a mask drawn on the
    original image does before :func:`skpadim.preprocessing.transform_masks` moves it to
    the maps' geometry.

    Unknown values never leak into known pixels: the border is first filled with the
    map's edge values and the canvas resampled; a validity mask (1 inside the crop, 0 on
    the border) is resampled beside it, and the output pixels where it falls below 0.5,
    those whose centre lies outside the crop region, are unknown and receive ``fill``.

    Parameters
    ----------
    maps : array-like of shape (n, h, w) or (h, w)
        Anomaly maps of images that share one original size; any ``(h, w)``, as long as
        the map covers the crop region. Values must be finite.
    image_size : int or (int, int)
        The images' original ``(height, width)``, e.g. from :func:`image_sizes`.
    resize, crop : int, (int, int) or None, default=None
        The values the model's features used (``BackboneFeatures.resize`` and ``crop``).
        With both None the maps are only resampled to ``image_size``.
    fill : {"nan", "nearest"} or float, default="nan"
        The value of the pixels the crop removed: ``"nan"`` marks them unknown (NaN);
        ``"nearest"`` extends the map's edge values outwards, for a map without holes;
        a number fills them with that number.
    interpolation : {"bilinear", "bicubic", "nearest"}, default="bilinear"
        Resampling filter of both steps; bilinear and bicubic are antialiased when
        shrinking, as in :func:`resize_and_crop`, but not clipped.

    Returns
    -------
    maps : ndarray of shape (n, H, W) or (H, W), dtype float32
        The maps in the original geometry ``image_size``; 2-D when ``maps`` was.

    Raises
    ------
    InvalidImageError
        If ``maps`` is not 2-D or 3-D or holds NaN or infinite values, a size is not
        positive, ``crop`` is larger than the resized image, or ``fill`` or
        ``interpolation`` is unknown.

    See Also
    --------
    transform_masks : The forward direction, for ground-truth masks.

    Examples
    --------
    The paper's geometry: 256 x 256 images, resized to 256 and cropped to 224. The map comes
    back at 256 x 256 with the 16-pixel border the crop removed marked unknown:

    >>> import numpy as np
    >>> from skpadim.preprocessing import restore_geometry
    >>> maps = np.ones((1, 224, 224), dtype=np.float32)
    >>> restored = restore_geometry(maps, (256, 256), resize=256, crop=224)
    >>> restored.shape, float(np.isnan(restored).mean()) == 1 - 224**2 / 256**2
    ((1, 256, 256), True)
    >>> np.flatnonzero(~np.isnan(restored[0, 128]))[[0, -1]].tolist()   # columns 16..239
    [16, 239]

    A 2-D map, a non-square original, and the border filled with the edge values:

    >>> amap = np.arange(16, dtype=np.float32).reshape(4, 4)
    >>> out = restore_geometry(amap, (6, 6), crop=4, fill="nearest",
    ...                              interpolation="nearest")
    >>> out[0].tolist(), out.shape
    ([0.0, 0.0, 1.0, 2.0, 3.0, 3.0], (6, 6))
    >>> restore_geometry(np.zeros((56, 56)), (300, 200), resize=256, crop=224).shape
    (300, 200)
    """
    if interpolation not in _INTERPOLATIONS:
        raise InvalidImageError(
            f"interpolation must be one of {_INTERPOLATIONS}, got {interpolation!r}"
        )
    value = _fill_value(fill)
    maps = np.asarray(maps, dtype=np.float32)
    single = maps.ndim == 2
    if single:
        maps = maps[None]
    if maps.ndim != 3 or 0 in maps.shape:
        raise InvalidImageError(
            f"maps must have shape (n, h, w) or (h, w), got {maps.shape}"
        )
    if not np.isfinite(maps).all():
        # Interpolation would spread a NaN over its neighbours; the border is the only
        # unknown region this function knows how to keep apart.
        raise InvalidImageError(
            "maps contain NaN or infinite values; pass the maps a model returned (finite), "
            "before any restoring"
        )
    original = _pair(image_size, "image_size")
    canvas = _pair(resize, "resize") or original
    crop = _pair(crop, "crop") or canvas
    if crop[0] > canvas[0] or crop[1] > canvas[1]:
        raise InvalidImageError(
            f"crop {crop} is larger than the (resized) image {canvas}; pass the resize and "
            "crop the model used"
        )
    top, left = _center_crop_offset(canvas, crop)
    # (left, right, top, bottom): F.pad's order for the last two axes.
    border = (left, canvas[1] - crop[1] - left, top, canvas[0] - crop[0] - top)

    t = _resample(from_numpy(maps)[:, None], crop, interpolation)
    out = _resample(F.pad(t, border, mode="replicate"), original, interpolation)[:, 0]
    if value is not None and any(border):
        valid = F.pad(torch.ones(1, 1, *crop), border)  # zeros on the border
        known = _resample(valid, original, interpolation)[0, 0] >= 0.5
        out[:, ~known] = value
    out = out.numpy()
    return out[0] if single else out
