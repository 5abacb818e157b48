"""Writing inspection results to disk: a row per image, and each image's map and mask.

What a model found on a batch of images ends up in files that other programs read:

- :class:`ResultsWriter` streams one row per image into ``scores.csv`` and
  ``scores.jsonl`` (the same rows, as CSV for spreadsheets and as JSON Lines with typed
  values for programs);
- :func:`save_map` writes an anomaly map as float32 ``.npy`` (exact) or as a 16-bit
  grayscale PNG (compact, viewable), and :func:`load_map` reads either back;
- :func:`save_mask` writes a binary defect mask as an 8-bit PNG.

Overlays and side-by-side panels, which are pictures for people rather than data, are in
:mod:`skpadim.report`. Every file here is written atomically (a temporary file beside it,
fsynced, then :func:`os.replace`): a run that fails half-way leaves the previous files
whole.

The verdict of an image is ``"anomalous"`` when its anomaly score is above the image
threshold (``-offset_`` of the detector) and ``"normal"`` otherwise, as ``predict``
decides (:func:`verdict`).
"""

import contextlib
import csv
import json
import math
import os
from numbers import Integral, Real

import numpy as np

from ._atomic import atomic_path, atomic_write
from ..exceptions import ConfigurationError, DatasetError, InvalidImageError

__all__ = [
    "DEFAULT_COLUMNS",
    "ResultsWriter",
    "verdict",
    "save_map",
    "load_map",
    "save_mask",
]

#: The first columns of a :class:`ResultsWriter` not given ``columns``; the first row adds more.
DEFAULT_COLUMNS = ("path", "anomaly_score", "normalized_score", "verdict", "image_threshold")

#: Levels of a 16-bit map PNG above 0, which marks unknown pixels.
PNG16_LEVELS = 65534
_PNG16_VMAX_KEY = "vmax"
_PNG16_ENCODING_KEY = "encoding"
_PNG16_ENCODING = "0 = unknown (NaN); code c >= 1 means (c - 1) / 65534 * vmax"
_NPY_MAGIC = b"\x93NUMPY"
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def verdict(score, threshold):
    """``"anomalous"`` when ``score > threshold``, else ``"normal"``: ``predict``'s rule.

    A detector predicts -1 (anomalous) when ``decision_function`` is negative, i.e. when the
    anomaly score exceeds ``-offset_``; a score exactly at the threshold is normal.

    A NumPy score is compared in its own float type, the threshold rounded to it, as the
    detectors compare their float32 scores: the verdict is then always ``predict``'s.

    Parameters
    ----------
    score : float or numpy floating
        An image's anomaly score (higher = more anomalous).
    threshold : float
        The image threshold, ``-offset_`` of the detector.

    Returns
    -------
    verdict : {"anomalous", "normal"}

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.outputs import verdict
    >>> verdict(2.5, 2.0), verdict(2.0, 2.0)
    ('anomalous', 'normal')
    >>> verdict(np.float32(1.0), 0.99999999)     # the threshold is 1.0 in float32
    'normal'
    """
    if isinstance(score, np.floating):
        return "anomalous" if score > score.dtype.type(threshold) else "normal"
    return "anomalous" if float(score) > float(threshold) else "normal"


def _typed(value, column):
    """``value`` as a JSON value: numbers, strings, booleans; NaN, infinities and None as None."""
    if isinstance(value, np.generic) or (isinstance(value, np.ndarray) and value.ndim == 0):
        value = value.item()
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, Integral):
        return int(value)
    if isinstance(value, Real):
        value = float(value)
        return value if math.isfinite(value) else None
    raise ConfigurationError(
        f"column {column!r} got a {type(value).__name__} ({value!r:.60}); pass a number, a "
        "string, a path, a boolean or None"
    )


def _csv_text(value):
    """A typed value as CSV text, spelt as in JSON where they differ (booleans, null)."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)  # the shortest text that reads back as the same float
    return str(value)


class ResultsWriter:
    """Stream one row per image into a CSV file and a JSON Lines file, atomically.

    Use it as a context manager: inside the ``with`` block each :meth:`write` call adds a
    row to both files at once, so memory does not grow with the number of images. The rows
    go to temporary files in ``out_dir``; when the block ends without an exception both are
    fsynced and renamed over ``csv_name`` and ``jsonl_name`` (each rename atomic, the JSON
    Lines file first). If the block raises, the temporary files are removed and the files
    of a previous run stay as they were.

    Both files hold the same rows and columns. The JSON Lines file has one object per line
    with typed values: numbers as numbers, booleans as ``true``/``false``, and missing
    values, NaN and infinities as ``null``. The CSV file spells the same values as text:
    floats in their shortest exact form (``repr``), booleans ``true``/``false``, and missing
    or non-finite values as an empty field.

    Parameters
    ----------
    out_dir : str or path-like
        Folder of the two files, created if needed.
    csv_name : str or None, default="scores.csv"
        Name of the CSV file in ``out_dir``; None writes no CSV file.
    jsonl_name : str or None, default="scores.jsonl"
        Name of the JSON Lines file in ``out_dir``; None writes none.
    columns : sequence of str or None, default=None
        The columns, in order; a row may then name only these. None takes
        :data:`DEFAULT_COLUMNS` (``path``, ``anomaly_score``, ``normalized_score``,
        ``verdict``, ``image_threshold``) followed by the other names of the first row, in
        its order (e.g. ``defect_type``, ``label``, ``map``, ``mask``, ``overlay``,
        ``panel``); later rows may name only those.

    Attributes
    ----------
    fieldnames : tuple of str or None
        The columns as written, once known (at the first row, or at the start when
        ``columns`` is given).
    n_rows : int
        Rows written so far.
    paths : list of str
        The files the writer writes (and, after a successful block, has written).

    See Also
    --------
    verdict : The verdict column's rule.
    save_map, save_mask : Per-image files whose paths go in the rows.

    Examples
    --------
    >>> import json, os, tempfile
    >>> from skpadim.outputs import ResultsWriter
    >>> out = tempfile.mkdtemp()
    >>> with ResultsWriter(out) as writer:
    ...     writer.write(path="a.png", anomaly_score=3.25, verdict="anomalous",
    ...                  image_threshold=2.0, defect_type="crack")
    ...     writer.write({"path": "b.png", "anomaly_score": float("nan")})
    >>> writer.n_rows, [os.path.basename(p) for p in writer.paths]
    (2, ['scores.csv', 'scores.jsonl'])
    >>> print(open(writer.paths[0]).read().strip())
    path,anomaly_score,normalized_score,verdict,image_threshold,defect_type
    a.png,3.25,,anomalous,2.0,crack
    b.png,,,,,
    >>> [json.loads(line)["anomaly_score"] for line in open(writer.paths[1])]
    [3.25, None]
    """

    def __init__(self, out_dir, *, csv_name="scores.csv", jsonl_name="scores.jsonl",
                 columns=None):
        self.out_dir = out_dir
        self.csv_name = csv_name
        self.jsonl_name = jsonl_name
        self.columns = columns
        self.fieldnames = None
        self.n_rows = 0
        self._stack = None

    @property
    def paths(self):
        """The CSV and JSON Lines files (those not switched off), as paths in ``out_dir``."""
        names = [self.csv_name, self.jsonl_name]
        return [os.path.join(os.fspath(self.out_dir), n) for n in names if n is not None]

    def _check_settings(self):
        if self.csv_name is None and self.jsonl_name is None:
            raise ConfigurationError("csv_name and jsonl_name are both None: nothing to write")
        if self.csv_name == self.jsonl_name:
            raise ConfigurationError(
                f"csv_name and jsonl_name are both {self.csv_name!r}; give the files "
                "different names"
            )
        if self.columns is None:
            return None
        columns = tuple(self.columns)
        if not columns or not all(isinstance(c, str) and c for c in columns):
            raise ConfigurationError(
                f"columns must be a non-empty sequence of names or None, got {self.columns!r}"
            )
        if len(set(columns)) != len(columns):
            twice = sorted({c for c in columns if columns.count(c) > 1})
            raise ConfigurationError(f"columns name {twice} more than once; name each once")
        return columns

    def __enter__(self):
        if self._stack is not None:
            raise RuntimeError("this ResultsWriter is already open; use one per with block")
        columns = self._check_settings()
        os.makedirs(self.out_dir, exist_ok=True)
        self.n_rows, self.fieldnames = 0, None
        with contextlib.ExitStack() as stack:
            self._csv = self._jsonl = None
            if self.csv_name is not None:
                f = stack.enter_context(atomic_write(self.paths[0], "w", newline="",
                                                     encoding="utf-8"))
                self._csv = csv.writer(f)
            if self.jsonl_name is not None:
                self._jsonl = stack.enter_context(atomic_write(self.paths[-1], "w",
                                                               encoding="utf-8"))
            # Opened without error: the files are closed (and renamed) in __exit__.
            self._stack = stack.pop_all()
        if columns is not None:
            self._start(columns)
        return self

    def _start(self, fieldnames):
        self.fieldnames = fieldnames
        if self._csv is not None:
            self._csv.writerow(fieldnames)

    def __exit__(self, exc_type, exc, tb):
        stack, self._stack = self._stack, None
        if exc_type is None and self.fieldnames is None:
            self._start(DEFAULT_COLUMNS)  # no row at all: the header alone
        return stack.__exit__(exc_type, exc, tb)

    def write(self, row=None, /, **values):
        """Add one row to both files.

        Parameters
        ----------
        row : dict or None, default=None
            Values by column name; keyword arguments add to it (and win).
        **values
            Values by column name. Columns not given are left empty (``null``).

        Raises
        ------
        ConfigurationError
            If a name is not one of the columns, or a value is not a number, string, path,
            boolean or None.
        RuntimeError
            If called outside the ``with`` block.
        """
        if self._stack is None:
            raise RuntimeError("ResultsWriter.write must be called inside its with block")
        values = {**(row or {}), **values}
        if self.fieldnames is None:
            self._start(DEFAULT_COLUMNS + tuple(n for n in values if n not in DEFAULT_COLUMNS))
        unknown = [name for name in values if name not in self.fieldnames]
        if unknown:
            where = ("were given as columns=" if self.columns is not None else
                     "were fixed by the first row (DEFAULT_COLUMNS, then its other names)")
            raise ConfigurationError(
                f"no column named {unknown}; the columns {where}: {list(self.fieldnames)}. "
                "Name every column when creating the ResultsWriter: columns=[...]"
            )
        typed = {name: _typed(values.get(name), name) for name in self.fieldnames}
        if self._csv is not None:
            self._csv.writerow([_csv_text(v) for v in typed.values()])
        if self._jsonl is not None:
            self._jsonl.write(json.dumps(typed, ensure_ascii=False, allow_nan=False) + "\n")
        self.n_rows += 1


# ---------------------------------------------------------------------------- maps and masks
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
    that :func:`skpadim.preprocessing.restore_geometry` marks) included.

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
    >>> from skpadim.outputs import load_map, save_map
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
    >>> from skpadim.outputs import load_map, save_map
    >>> path = save_map(os.path.join(tempfile.mkdtemp(), "m.png"), np.full((2, 3), 0.3),
    ...                 "png16", vmax=1.0)
    >>> amap = load_map(path)
    >>> amap.shape, amap.dtype, bool(np.allclose(amap, 0.3, atol=1 / 65534))
    ((2, 3), dtype('float32'), True)
    """
    from ..features._preprocessing import _open_image

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
            "skpadim.outputs.save_map"
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
    :func:`skpadim.preprocessing.transform_masks`, like a data set's ground truth.

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
    >>> from skpadim.outputs import save_mask
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
