"""The per-image results table: one row per image, written as CSV and as JSON Lines.

:class:`ResultsWriter` streams one row per image into ``scores.csv`` and ``scores.jsonl``
(the same rows, as CSV for spreadsheets and as JSON Lines with typed values for programs).
Both files are written atomically (a temporary file beside each, fsynced, then
:func:`os.replace`): a run that fails half-way leaves the previous files whole.

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

from ..exceptions import ConfigurationError
from ._atomic import atomic_write

__all__ = [
    "DEFAULT_COLUMNS",
    "ResultsWriter",
    "verdict",
]

#: The first columns of a :class:`ResultsWriter` not given ``columns``; the first row adds more.
DEFAULT_COLUMNS = ("path", "anomaly_score", "normalized_score", "verdict", "image_threshold")


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
    >>> from skpadim.io import verdict
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
    >>> from skpadim.io import ResultsWriter
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
