"""Each image's anomaly map and defect mask as a file: ``.npy``, 16-bit PNG, 8-bit PNG.

- :func:`save_map` writes an anomaly map as float32 ``.npy`` (exact) or as a 16-bit
  grayscale PNG (compact, viewable), and :func:`load_map` reads either back;
- :func:`save_mask` writes a binary defect mask as an 8-bit PNG.

Overlays and side-by-side panels, which are pictures for people rather than data, are in
:mod:`skpadim.evaluation`. Every file here is written atomically (a temporary file beside it,
fsynced, then :func:`os.replace`): a run that fails half-way leaves the previous files
whole.
"""

import math
import os
from numbers import Real

import numpy as np

from ..exceptions import ConfigurationError, DatasetError, InvalidImageError
from ._atomic import atomic_path, atomic_write

__all__ = [
    "save_map",
    "load_map",
    "save_mask",
]

#: Levels of a 16-bit map PNG above 0, which marks unknown pixels.
PNG16_LEVELS = 65534
_PNG16_VMAX_KEY = "vmax"
_PNG16_ENCODING_KEY = "encoding"
_PNG16_ENCODING = "0 = unknown (NaN); code c >= 1 means (c - 1) / 65534 * vmax"
_NPY_MAGIC = b"\x93NUMPY"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _check_map(anomaly_map, what="anomaly map"):
    anomaly_map = np.asarray(anomaly_map)
    if anomaly_map.ndim != 2 or 0 in anomaly_map.shape:
        raise InvalidImageError(
            f"an {what} must be one 2-D array (H, W), got shape {anomaly_map.shape}; save "
            "the maps of a batch one by one"
        )
    return anomaly_map


def _png16_codes(anomaly_map, vmax):
    """The 16-bit codes of a map: 0 for NaN, 1 + round(clip(v, 0, vmax) / vmax * 65534)."""
    # float64 arithmetic: a float32 quotient could round a value to the neighbouring code.
    anomaly_map = anomaly_map.astype(np.float64)
    unknown = np.isnan(anomaly_map)
    scaled = np.clip(np.nan_to_num(anomaly_map, nan=0.0) / vmax, 0.0, 1.0)
    codes = 1 + np.rint(scaled * PNG16_LEVELS).astype(np.uint16)
    codes[unknown] = 0
    return codes


def _default_vmax(anomaly_map):
    finite = anomaly_map[np.isfinite(anomaly_map)]
    top = float(finite.max()) if finite.size else 0.0
    return top if top > 0 else 1.0


def save_map(path, anomaly_map, format="npy", *, vmax=None):
    """Write one anomaly map as float32 ``.npy`` or as a 16-bit grayscale PNG.

    ``"npy"`` keeps every value exactly as float32, NaN (unknown pixels, e.g. the border
    that :func:`skpadim.features.restore_geometry` marks) included.

    ``"png16"`` is a 16-bit grayscale PNG, smaller and viewable in an image viewer. Each
    pixel holds a code ``c``:

    - ``c = 0``: unknown (NaN);
    - ``c = 1 + round(v / vmax * 65534)`` for a value ``v`` in ``[0, vmax]``: 1 is 0 and
      65535 is ``vmax``, linearly; decoding gives ``(c - 1) / 65534 * vmax``, within
      ``vmax / 65534`` (half that, rounding) of the value written;
    - values above ``vmax`` (and ``+inf``) saturate at 65535, values below 0 (and ``-inf``)
      at 1, i.e. 0: choose ``vmax`` above the values that matter.

    ``vmax`` is stored in a PNG text chunk (key ``vmax``; the key ``encoding`` describes the
    encoding in words), so :func:`load_map` needs nothing else. Give all maps of a model one
    ``vmax``, e.g. twice its pixel threshold, so that the same grey means the same value in
    every file.

    Parameters
    ----------
    path : str or path-like
        The file; its folder is created if needed. Its name is used as given (no extension
        is added).
    anomaly_map : array-like of shape (H, W)
        One map; higher = more anomalous, NaN = unknown. Taken as float32, as models return
        maps.
    format : {"npy", "png16"}, default="npy"
        The file format, as above.
    vmax : float or None, default=None
        For ``"png16"``: the value coded 65535. None takes the map's largest finite value
        (1 if it has no positive one), so nothing saturates but files of different maps do
        not share a scale. Ignored for ``"npy"``.

    Returns
    -------
    path : str
        The file written.

    Raises
    ------
    ConfigurationError
        If ``format`` is unknown or ``vmax`` is not a positive finite number.
    InvalidImageError
        If ``anomaly_map`` is not 2-D.

    See Also
    --------
    load_map : Read either format back.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skpadim.io import load_map, save_map
    >>> folder = tempfile.mkdtemp()
    >>> amap = np.array([[0.0, 1.0], [2.5, np.nan]], dtype=np.float32)
    >>> load_map(save_map(os.path.join(folder, "a.npy"), amap)).tolist()
    [[0.0, 1.0], [2.5, nan]]
    >>> path = save_map(os.path.join(folder, "a.png"), amap, "png16", vmax=2.0)
    >>> load_map(path).tolist()                           # 2.5 saturates at vmax = 2
    [[0.0, 1.0], [2.0, nan]]
    """
    anomaly_map = _check_map(anomaly_map).astype(np.float32)
    if format not in ("npy", "png16"):
        raise ConfigurationError(f"format must be 'npy' or 'png16', got {format!r}")
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    if format == "npy":
        with atomic_write(path, "wb") as f:
            np.save(f, anomaly_map, allow_pickle=False)
        return path

    from PIL import Image
    from PIL.PngImagePlugin import PngInfo

    vmax = _default_vmax(anomaly_map) if vmax is None else vmax
    if isinstance(vmax, bool) or not isinstance(vmax, Real) or not 0 < vmax < math.inf:
        raise ConfigurationError(
            f"vmax must be a positive finite number, got {vmax!r}; e.g. twice the model's "
            "pixel threshold"
        )
    info = PngInfo()
    info.add_text(_PNG16_VMAX_KEY, repr(float(vmax)))
    info.add_text(_PNG16_ENCODING_KEY, _PNG16_ENCODING)
    with atomic_path(path) as tmp:
        Image.fromarray(_png16_codes(anomaly_map, float(vmax))).save(tmp, format="PNG",
                                                                     pnginfo=info)
    return path


def load_map(path):
    """Read a map that :func:`save_map` wrote, in either format, as float32.

    The format is recognised from the file's first bytes, not its name. A 16-bit PNG is
    decoded with the ``vmax`` stored in it: code 0 becomes NaN, code ``c`` becomes
    ``(c - 1) / 65534 * vmax``.

    Parameters
    ----------
    path : str or path-like
        A ``.npy`` or 16-bit PNG map file.

    Returns
    -------
    anomaly_map : ndarray of shape (H, W), dtype float32

    Raises
    ------
    DatasetError
        If the file is missing, is neither format, or is a PNG without the ``vmax`` that
        :func:`save_map` stores.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skpadim.io import load_map, save_map
    >>> path = save_map(os.path.join(tempfile.mkdtemp(), "m.png"), np.full((2, 3), 0.3),
    ...                 "png16", vmax=1.0)
    >>> amap = load_map(path)
    >>> amap.shape, amap.dtype, bool(np.allclose(amap, 0.3, atol=1 / 65534))
    ((2, 3), dtype('float32'), True)
    """
    from ..features._image_files import _open_image

    try:
        with open(path, "rb") as f:
            head = f.read(len(_PNG_MAGIC))
    except FileNotFoundError as exc:
        raise DatasetError(f"map file not found: {os.fspath(path)!r}") from exc
    if head.startswith(_NPY_MAGIC):
        try:
            return _check_map(np.load(path, allow_pickle=False)).astype(np.float32)
        except ValueError as exc:
            raise DatasetError(f"cannot read map {os.fspath(path)!r}: {exc}") from exc
    if head != _PNG_MAGIC:
        raise DatasetError(
            f"{os.fspath(path)!r} is neither a .npy nor a PNG map file; write maps with "
            "skpadim.io.save_map"
        )
    with _open_image(path) as png:
        png.load()
        text = dict(getattr(png, "text", {}))
        mode = png.mode
        codes = np.array(png)
    if _PNG16_VMAX_KEY not in text or mode not in ("I;16", "I;16B", "I;16L", "I"):
        raise DatasetError(
            f"{os.fspath(path)!r} is a PNG but not a 16-bit map of save_map (mode {mode!r}, "
            f"no {_PNG16_VMAX_KEY!r} text chunk); masks and overlays are not maps"
        )
    vmax = float(text[_PNG16_VMAX_KEY])
    codes = codes.astype(np.float64)
    values = (codes - 1) / PNG16_LEVELS * vmax
    values[codes == 0] = np.nan
    return values.astype(np.float32)


def save_mask(path, mask):
    """Write a binary defect mask as an 8-bit grayscale PNG: 255 = defect, 0 = not.

    The caller decides what a defect is, normally ``mask = anomaly_map > pixel_threshold``.
    Any non-zero value counts as defect, except NaN: an unknown pixel is written 0, not a
    defect (``map > threshold`` is False there too). The file reads back as a mask with
    :func:`skpadim.features.transform_masks`, like a data set's ground truth.

    Parameters
    ----------
    path : str or path-like
        The PNG file; its folder is created if needed.
    mask : array-like of shape (H, W)
        Boolean, or numbers where non-zero (and not NaN) marks a defect.

    Returns
    -------
    path : str
        The file written.

    Raises
    ------
    InvalidImageError
        If ``mask`` is not 2-D.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim.io import save_mask
    >>> amap = np.array([[0.2, 0.9], [np.nan, 0.7]])
    >>> path = save_mask(os.path.join(tempfile.mkdtemp(), "mask.png"), amap > 0.5)
    >>> with Image.open(path) as png:
    ...     png.mode, np.asarray(png).tolist()
    ('L', [[0, 255], [0, 255]])
    """
    from PIL import Image

    mask = _check_map(mask, what="mask")
    defect = np.nan_to_num(mask.astype(np.float64), nan=0.0) != 0
    path = os.fspath(path)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with atomic_path(path) as tmp:
        Image.fromarray(np.where(defect, 255, 0).astype(np.uint8)).save(tmp, format="PNG")
    return path
