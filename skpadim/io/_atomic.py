"""Atomic file writes: a reader sees the old file or the new one, never half of one.

Every file skpadim writes (models, CSV and JSON results, reports, overlays, plots) goes
through :func:`atomic_path`: the content is written to a temporary file in the target's own
folder (so that the final rename stays on one file system), flushed and fsynced, renamed
over the target with :func:`os.replace` (atomic on POSIX and Windows), and the folder is
fsynced so that the rename itself survives a power cut. On any error, or a signal that
interrupts Python, the temporary file is removed; only a process killed outright (SIGKILL,
power loss) can leave one behind, and its name (``.<target name>.<random>.tmp``) is hidden
and never ends in the target's extension, so it is not mistaken for a model or an image.
"""

import contextlib
import os
import secrets
import stat

__all__ = ["atomic_path", "atomic_write", "atomic_savefig", "check_writable"]

TEMP_SUFFIX = ".tmp"


def _temp_name(path):
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}.{secrets.token_hex(4)}{TEMP_SUFFIX}")


def _reserve_temp(path):
    """Create an empty temporary file beside ``path``; return its name.

    ``os.open`` with mode 0o666 lets the umask decide the permissions, as a plain ``open``
    would (``tempfile.mkstemp`` would make every model file private to its owner).
    """
    for _ in range(100):
        tmp = _temp_name(path)
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        os.close(fd)
        return tmp
    raise FileExistsError(f"cannot create a temporary file beside {os.fspath(path)!r}")


def _fsync_file(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_folder(folder):
    """Make a rename in ``folder`` durable; a no-op where folders cannot be opened (Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path to write; on success it atomically becomes ``path``.

    For writers that take a file name rather than a file object (safetensors, PIL,
    matplotlib). The temporary file exists (empty) when the block starts; the block may
    overwrite it. If ``path`` already exists, the new file gets its permission bits.

    Parameters
    ----------
    path : str or path-like
        The file to write. Its folder must exist.

    Yields
    ------
    tmp : str
        The temporary file, in the folder of ``path``.

    Examples
    --------
    >>> import os, tempfile
    >>> from skpadim.io._atomic import atomic_path
    >>> path = os.path.join(tempfile.mkdtemp(), "numbers.txt")
    >>> with atomic_path(path) as tmp:
    ...     with open(tmp, "w") as f:
    ...         _ = f.write("1 2 3")
    >>> open(path).read(), os.listdir(os.path.dirname(path))
    ('1 2 3', ['numbers.txt'])
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    tmp = _reserve_temp(path)
    try:
        yield tmp
        with contextlib.suppress(FileNotFoundError):
            os.chmod(tmp, stat.S_IMODE(os.stat(path).st_mode))
        _fsync_file(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_folder(folder)


@contextlib.contextmanager
def atomic_write(path, mode="wb", *, encoding=None, newline=None):
    """``open(path, mode)`` that replaces ``path`` only once the block has succeeded.

    Parameters
    ----------
    path : str or path-like
        The file to write. Its folder must exist.
    mode : {"wb", "w", "wt"}, default="wb"
        Binary or text writing; appending cannot be atomic and is refused.
    encoding, newline : str or None, default=None
        As in :func:`open`, for text mode.

    Yields
    ------
    file : file object
        Open on a temporary file beside ``path``; flushed and fsynced when the block ends.

    Examples
    --------
    >>> import os, tempfile
    >>> from skpadim.io._atomic import atomic_write
    >>> path = os.path.join(tempfile.mkdtemp(), "scores.csv")
    >>> with atomic_write(path, "w", encoding="utf-8") as f:
    ...     _ = f.write("path,score\\n")
    >>> try:
    ...     with atomic_write(path, "w", encoding="utf-8") as f:
    ...         _ = f.write("half a row")
    ...         raise RuntimeError("the scorer failed")
    ... except RuntimeError:
    ...     pass
    >>> open(path, encoding="utf-8").read()                    # the old file is intact
    'path,score\\n'
    """
    if mode not in ("wb", "w", "wt"):
        raise ValueError(f"atomic_write writes whole files: mode must be 'wb', 'w' or 'wt', "
                         f"got {mode!r}")
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=encoding, newline=newline) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())


def atomic_savefig(figure, path, **kwargs):
    """``figure.savefig(path, **kwargs)``, atomically; the format comes from the extension.

    Parameters
    ----------
    figure : matplotlib.figure.Figure
        The figure to save.
    path : str or path-like
        The image file, e.g. ``roc.png``.
    **kwargs
        Passed to :meth:`~matplotlib.figure.Figure.savefig`.

    Returns
    -------
    path : str
        The file written.

    Examples
    --------
    >>> import os, tempfile
    >>> from matplotlib.figure import Figure
    >>> from skpadim.io._atomic import atomic_savefig
    >>> figure = Figure(figsize=(2, 2))
    >>> path = atomic_savefig(figure, os.path.join(tempfile.mkdtemp(), "plot.png"), dpi=50)
    >>> open(path, "rb").read(4)
    b'\\x89PNG'
    """
    path = os.fspath(path)
    kwargs.setdefault("format", os.path.splitext(path)[1].lstrip(".").lower() or "png")
    with atomic_path(path) as tmp:
        figure.savefig(tmp, **kwargs)
    return path


def check_writable(path):
    """Check now that ``path`` can be written later: create its folder and a file there.

    A long job (fitting) calls this first, so that a read-only or misspelt output folder
    fails in a second rather than after the work. A test file is created and removed
    beside ``path``; ``path`` itself is not touched.

    Parameters
    ----------
    path : str or path-like
        The file that will be written.

    Raises
    ------
    OSError
        If the folder cannot be created or written, or ``path`` is a folder.

    Examples
    --------
    >>> import os, tempfile
    >>> from skpadim.io._atomic import check_writable
    >>> folder = tempfile.mkdtemp()
    >>> check_writable(os.path.join(folder, "models", "m.safetensors"))
    >>> os.listdir(os.path.join(folder, "models"))                  # nothing left behind
    []
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise IsADirectoryError(21, "is a folder, not a file", path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    os.unlink(_reserve_temp(path))
