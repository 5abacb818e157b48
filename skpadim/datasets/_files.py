"""Finding the images to score: files named, and folder trees walked."""

import os

from ..exceptions import DatasetError
from ._base import IMAGE_EXTENSIONS, _entries

__all__ = ["find_images", "output_names"]


def find_images(targets, recursive=True):
    """The image files among ``targets``, and those in the folders among them.

    Parameters
    ----------
    targets : str, path-like, or sequence of them
        Image files, taken as they are whatever their extension, and folders, whose image
        files (.png, .jpg, .jpeg, .bmp, .tif, .tiff, any case) are found.
    recursive : bool, default=True
        Also look in the sub-folders of the folders, at any depth.

    Returns
    -------
    paths : list of str
        The images, in the order of ``targets``; in a folder, its own files first and then
        each sub-folder's, in natural name order (``2.png`` before ``10.png``). Hidden files
        and folders are skipped, and an image found twice is listed once.
    names : list of str
        Each image's path relative to the innermost folder holding every target ("/"
        separates folders): relative to the folder, for one folder; ``good/000.png`` and
        ``crack/000.png`` for the folders ``test/good`` and ``test/crack``. Names are
        distinct, so they can key results and name output files.

    Raises
    ------
    DatasetError
        Naming the target, if it does not exist, or if a folder holds no image.

    See Also
    --------
    output_names : Output file names, one per image, that mirror the folder tree.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import find_images
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for name in ["test/good/000.png", "test/crack/000.png", "test/crack/10.png",
    ...              "test/crack/2.png", "test/notes.txt"]:
    ...     path = Path(tmp.name, name)
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(path) if name.endswith(".png") else path.touch()
    >>> paths, names = find_images(Path(tmp.name, "test"))
    >>> names
    ['crack/000.png', 'crack/2.png', 'crack/10.png', 'good/000.png']
    >>> find_images([Path(tmp.name, "test", "good"), Path(tmp.name, "test", "crack", "2.png")])[1]
    ['good/000.png', 'crack/2.png']
    >>> tmp.cleanup()
    """
    if isinstance(targets, (str, os.PathLike)):
        targets = [targets]
    targets = [os.fspath(t) for t in targets]
    paths, bases, seen = [], [], set()
    for target in targets:
        if os.path.isdir(target):
            found = _walk(target, recursive, set())
            if not found:
                where = "or its sub-folders " if recursive else ""
                raise DatasetError(
                    f"folder {target!r} {where}holds no image files "
                    f"({', '.join(IMAGE_EXTENSIONS)})"
                )
            bases.append(os.path.abspath(target))
        elif os.path.isfile(target):
            found = [target]
            bases.append(os.path.dirname(os.path.abspath(target)))
        else:
            raise DatasetError(f"image file or folder not found: {target!r}")
        for path in found:
            key = os.path.normcase(os.path.abspath(path))
            if key not in seen:
                seen.add(key)
                paths.append(path)
    return paths, _relative_names(paths, bases)


def _walk(folder, recursive, visited):
    # A folder linked into itself would loop forever: each real folder is read once.
    real = os.path.realpath(folder)
    if real in visited:
        return []
    visited.add(real)
    files, dirs = [], []
    for entry in _entries(folder):
        if entry.is_file():
            if os.path.splitext(entry.name)[1].lower() in IMAGE_EXTENSIONS:
                files.append(entry.path)
        elif recursive and entry.is_dir():
            dirs.append(entry.path)
    for sub in dirs:
        files += _walk(sub, recursive, visited)
    return files


def _relative_names(paths, bases):
    absolute = [os.path.abspath(p) for p in paths]
    if not absolute:
        return []
    try:
        base = os.path.commonpath(bases)
    except ValueError:  # different drives (Windows): no common folder
        # Names stay relative, so that output paths built from them stay in their folder.
        return [os.path.splitdrive(p)[1].lstrip(os.sep).replace(os.sep, "/")
                for p in absolute]
    return [os.path.relpath(p, base).replace(os.sep, "/") for p in absolute]


def output_names(names, extension=".png"):
    """One distinct output file name per image name, mirroring the names' folders.

    An image ``crack/000.jpg`` gives ``crack/000.png``. Where two images of one folder share
    a stem (``a.png`` and ``a.jpg``), both keep their extension (``a.png.png``,
    ``a.jpg.png``), so that no output overwrites another.

    Parameters
    ----------
    names : sequence of str
        Distinct image names, "/"-separated, such as :func:`find_images` returns.
    extension : str, default=".png"
        The outputs' extension.

    Returns
    -------
    outputs : list of str
        "/"-separated relative paths, in the order of ``names``.

    Examples
    --------
    >>> from skpadim.datasets import output_names
    >>> output_names(["good/000.png", "crack/000.png", "crack/a.jpg", "crack/a.bmp"])
    ['good/000.png', 'crack/000.png', 'crack/a.jpg.png', 'crack/a.bmp.png']
    """
    stems = [os.path.splitext(n)[0] for n in names]
    count = {}
    for stem in stems:
        count[stem.lower()] = count.get(stem.lower(), 0) + 1
    used, outputs = set(), []
    for name, stem in zip(names, stems):
        base = stem if count[stem.lower()] == 1 else name
        out, k = base + extension, 1
        # Case-insensitive, for the file systems of macOS and Windows.
        while out.lower() in used:
            k += 1
            out = f"{base}-{k}{extension}"
        used.add(out.lower())
        outputs.append(out)
    return outputs
