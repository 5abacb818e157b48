"""Finding the images to score (files named, folder trees walked) and their masks."""

import os

from ..exceptions import DatasetError
from ._base import IMAGE_EXTENSIONS, _entries, _stem

__all__ = ["find_images", "output_names", "match_masks"]


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


def _folder_name(path):
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def match_masks(images, targets, suffixes=("_mask", "")):
    """Each image's ground-truth mask among ``targets`` (files or folders), by name.

    Mask ``<stem><suffix>.<ext>`` (any image extension), for the first of ``suffixes``
    found (by default ``<stem>_mask.png``, then ``<stem>.png``), belongs to image
    ``<stem>.<ext>``. When some image's folder has a namesake among the masks' folders (MVTec
    AD's ``test/<defect>`` and ``ground_truth/<defect>``, where file names repeat across
    defect types), a mask must also sit in the folder named like its image's folder. Images
    in a folder named ``good`` are normal in every layout skpadim reads, and get no mask.
    Mask folders are searched at any depth, as :func:`find_images` does.

    Parameters
    ----------
    images : sequence of str
        The image paths, such as :func:`find_images` returns.
    targets : str, path-like, or sequence of them
        Mask files and folders.
    suffixes : sequence of str, default=("_mask", "")
        What a mask's stem adds to its image's, tried in order (``skpadim score
        --mask-suffix``).

    Returns
    -------
    masks : list of str or None
        For each image, its mask's path, or None when it has none.
    unmatched : list of str
        The masks that belong to no image, sorted.

    Raises
    ------
    DatasetError
        If two masks would belong to the same image, one mask to two images (same stem
        in different folders, and no mask folder named like theirs), or a target is
        missing.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import match_masks
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for name in ["test/good/000.png", "test/crack/000.png", "ground_truth/crack/000_mask.png",
    ...              "ground_truth/crack/001_mask.png"]:
    ...     Path(tmp.name, name).parent.mkdir(parents=True, exist_ok=True)
    ...     Image.new("L", (8, 8)).save(Path(tmp.name, name))
    >>> images = [str(Path(tmp.name, "test", d, "000.png")) for d in ("good", "crack")]
    >>> masks, unmatched = match_masks(images, Path(tmp.name, "ground_truth"))
    >>> [m and Path(m).name for m in masks], [Path(m).name for m in unmatched]
    ([None, '000_mask.png'], ['001_mask.png'])
    >>> tmp.cleanup()
    """
    masks = find_images(targets)[0]
    mask_folders = {_folder_name(m) for m in masks}
    by_folder = any(_folder_name(image) in mask_folders for image in images)
    index = {}
    for mask in masks:
        key = (_folder_name(mask) if by_folder else None, _stem(mask))
        if key in index:
            raise DatasetError(f"masks {index[key]!r} and {mask!r} have the same name; "
                               "pass the mask folder of one defect type at a time")
        index[key] = mask
    out, owner = [], {}
    for image in images:
        folder = _folder_name(image) if by_folder else None
        stem = _stem(image)
        found = None
        if _folder_name(image) != "good":
            found = next((index[(folder, stem + suffix)] for suffix in suffixes
                          if (folder, stem + suffix) in index), None)
        if found is not None and found in owner:
            raise DatasetError(
                f"mask {found!r} would belong to both {owner[found]!r} and {image!r}: their "
                "names are the same and no mask folder is named like their folders; pass "
                "the images and masks of one folder at a time, or put each folder's masks in "
                "a folder of the same name"
            )
        if found is not None:
            owner[found] = image
        out.append(found)
    unmatched = sorted(set(masks) - set(owner))
    return out, unmatched
