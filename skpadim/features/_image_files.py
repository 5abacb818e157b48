"""Reading image files into RGB arrays, and telling a list of file paths from arrays.

:func:`read_image` decodes one file with PIL: 8-bit files as uint8 and 16-bit ones (PIL modes
``"I;16*"`` and ``"I"``) as uint16, grayscale and palette images as RGB, alpha dropped.
Files of 32-bit floats (mode ``"F"``), whose scale is unknown, or of integers outside 16 bits
(mode ``"I"``) are refused with an :class:`~skpadim.exceptions.InvalidImageError`.
:func:`image_size` reads a file's header only. A file that is missing, is not a complete
image or has more pixels than PIL allows fails with a
:class:`~skpadim.exceptions.DatasetError` that names it.
"""

import contextlib
import os

import numpy as np

from ..exceptions import DatasetError, InvalidImageError

__all__ = [
    "read_image",
    "image_size",
]


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
    >>> from skpadim.features import image_size
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
    >>> from skpadim.features import read_image
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
