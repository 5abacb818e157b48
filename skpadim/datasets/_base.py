"""File-system helpers shared by the data set loaders.

Every loader lists folders the same way: image files only (by extension, hidden files skipped),
in natural order so ``2.png`` comes before ``10.png`` and results do not depend on the order the
operating system happens to list files in.
"""

import os
import re
from numbers import Integral

import numpy as np
from sklearn.utils import Bunch

from ..exceptions import DatasetError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _natural_key(name):
    # Digit runs compare as numbers; split() puts text at even and digits at odd positions, so
    # keys of different names always compare str with str and int with int.
    parts = re.split(r"(\d+)", name)
    return [int(p) if i % 2 else p for i, p in enumerate(parts)]


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _entries(folder):
    with os.scandir(folder) as it:
        entries = [e for e in it if not e.name.startswith(".")]
    # The name itself breaks ties ("01.png" and "1.png"), so the order never depends on the
    # order the operating system lists files in.
    return sorted(entries, key=lambda e: (_natural_key(e.name), e.name))


def list_images(folder):
    """Image files directly in ``folder``, as path strings in natural order."""
    return [
        e.path
        for e in _entries(folder)
        if e.is_file() and os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS
    ]


def list_dirs(folder):
    """Names of the sub-folders of ``folder``, in natural order."""
    return [e.name for e in _entries(folder) if e.is_dir()]


def require_dir(path, what, hint=""):
    """Return ``path`` as a string, or raise a DatasetError naming it if it is not a folder."""
    path = os.fspath(path)
    if not os.path.isdir(path):
        state = "is not a folder" if os.path.exists(path) else "not found"
        raise DatasetError(f"{what} {state}: {path!r}{'; ' + hint if hint else ''}")
    return path


def require_images(folder, what, hint=""):
    """Images in ``folder``; raise a DatasetError naming it if it is missing or holds none."""
    folder = require_dir(folder, what, hint)
    images = list_images(folder)
    if not images:
        raise DatasetError(
            f"{what} {folder!r} holds no image files ({', '.join(IMAGE_EXTENSIONS)})"
            f"{'; ' + hint if hint else ''}"
        )
    return images


def check_positive_int(value, name):
    # bool is an Integral to Python, but frame_step=True is surely a mistake.
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return int(value)


def pair_masks(image_dir, image_paths, mask_dir, suffixes):
    """Match each anomalous image of ``image_dir`` with its one mask file in ``mask_dir``.

    A mask belongs to image ``<stem>.<ext>`` when its own stem is ``<stem><suffix>`` for one
    of ``suffixes``; its extension may be any image extension.

    Returns
    -------
    masks : list of str
        One mask path per image, in the order of ``image_paths``.

    Raises
    ------
    DatasetError
        Naming the image when it has no mask or two, and naming the mask when it matches no
        image (or two).
    """
    by_stem = {}
    for path in image_paths:
        by_stem.setdefault(_stem(path), []).append(path)
    found = {path: [] for path in image_paths}
    masks = list_images(mask_dir) if os.path.isdir(mask_dir) else []
    for mask in masks:
        stem = _stem(mask)
        owners = [
            img
            for suffix in suffixes
            if stem.endswith(suffix)
            for img in by_stem.get(stem[: len(stem) - len(suffix)], [])
        ]
        if not owners:
            raise DatasetError(
                f"mask {mask!r} has no image: a mask is named {_expected('<stem>', suffixes)} "
                f"after an image <stem>.<ext> in {image_dir!r}, and none matches; rename or "
                "remove the mask, or add its image"
            )
        if len(owners) > 1:
            raise DatasetError(
                f"mask {mask!r} could belong to several images {owners}; rename them so each "
                "mask matches one image"
            )
        found[owners[0]].append(mask)
    for path, matches in found.items():
        if len(matches) != 1:
            problem = "has no mask" if not matches else f"has several masks {matches}"
            raise DatasetError(
                f"anomalous image {path!r} {problem}: expected one file named "
                f"{_expected(_stem(path), suffixes)} in {mask_dir!r}"
            )
    return [found[path][0] for path in image_paths]


def _expected(stem, suffixes):
    return " or ".join(repr(f"{stem}{suffix}.png") for suffix in suffixes)


def orphan_mask_folders(mask_root, defects):
    """Raise a DatasetError naming a mask in a folder of ``mask_root`` not named in ``defects``.

    ``defects`` are the names of the anomalous image folders, the only ones that have masks.
    """
    if mask_root is None or not os.path.isdir(mask_root):
        return
    for name in list_dirs(mask_root):
        masks = list_images(os.path.join(mask_root, name))
        if name not in defects and masks:
            reason = (
                "normal ('good') images need no mask"
                if name == "good"
                else f"there is no image folder for defect {name!r}"
            )
            raise DatasetError(
                f"mask {masks[0]!r} has no image: {reason}; remove the mask folder "
                f"{os.path.join(mask_root, name)!r} or add its images"
            )


def collect_test_images(test_dir, mask_root, suffixes):
    """The images of every ``test_dir/<defect>/`` folder, with their masks and defect types.

    ``good`` comes first, then the other folders in natural order. Normal images get the mask
    None; anomalous ones their file in ``mask_root/<defect>/`` (see :func:`pair_masks`), or,
    when ``mask_root`` is None, no masks at all (``masks`` is None).
    """
    defects = sorted(list_dirs(test_dir), key=lambda d: d != "good")  # a stable sort
    images, masks, types = [], [], []
    for defect in defects:
        folder = os.path.join(test_dir, defect)
        paths = list_images(folder)
        if defect == "good":
            masks += [None] * len(paths)
        elif mask_root is not None:
            masks += pair_masks(folder, paths, os.path.join(mask_root, defect), suffixes)
        images += paths
        types += [defect] * len(paths)
    if mask_root is None:
        return images, None, types
    orphan_mask_folders(mask_root, [d for d in defects if d != "good"])
    return images, masks, types


def make_bunch(name, train_images, test_images, test_labels, test_masks, test_defect_types,
               **extra):
    """The Bunch every loader returns, with its shared fields typed the same way."""
    return Bunch(
        name=name,
        train_images=list(train_images),
        test_images=list(test_images),
        test_labels=np.asarray(test_labels, dtype=np.int64).reshape(-1),
        test_masks=test_masks,
        test_defect_types=np.asarray(test_defect_types, dtype=str).reshape(-1),
        **extra,
    )
