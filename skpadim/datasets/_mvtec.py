"""MVTec AD, read from its published folder layout."""

import os

from ..exceptions import DatasetError
from ._base import collect_test_images, list_dirs, make_bunch, require_dir, require_images

__all__ = ["load_mvtec", "MVTEC_CATEGORIES", "MVTEC_TEXTURES", "MVTEC_OBJECTS"]

#: The 15 categories of MVTec AD, in alphabetical order.
MVTEC_CATEGORIES = (
    "bottle", "cable", "capsule", "carpet", "grid", "hazelnut", "leather", "metal_nut",
    "pill", "screw", "tile", "toothbrush", "transistor", "wood", "zipper",
)
#: The 5 texture categories of MVTec AD.
MVTEC_TEXTURES = ("carpet", "grid", "leather", "tile", "wood")
#: The 10 object categories of MVTec AD.
MVTEC_OBJECTS = tuple(c for c in MVTEC_CATEGORIES if c not in MVTEC_TEXTURES)

_GET_IT = (
    "download MVTec AD from https://www.mvtec.com/company/research/datasets/mvtec-ad and "
    "extract it so that <root>/<category>/train/good holds the training images"
)
_LAYOUT = (
    "MVTec AD's layout is <category>/train/good/ (normal training images), "
    "<category>/test/good/ and <category>/test/<defect>/ (test images) and "
    "<category>/ground_truth/<defect>/<stem>_mask.png (masks)"
)


def load_mvtec(root, category=None):
    """Load one or all categories of MVTec AD from its published folder layout.

    The layout, as the data set is distributed::

        <root>/<category>/train/good/*.png              normal training images
        <root>/<category>/test/good/*.png               normal test images
        <root>/<category>/test/<defect>/<stem>.png      anomalous test images
        <root>/<category>/ground_truth/<defect>/<stem>_mask.png

    Nothing is read but the folder listings: images stay on disk as paths, which skpadim's
    estimators and :func:`read_masks` accept.

    Parameters
    ----------
    root : str or path-like
        The folder holding the category folders.
    category : str or None, default=None
        The name of a category folder under ``root``: one of :data:`MVTEC_CATEGORIES`, or
        any other name, for your own data in MVTec AD's layout. None loads every category
        present under ``root``: the folders that hold ``train/good``, and those named like
        an MVTec AD category.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch` or dict of str to Bunch
        For one category, a Bunch with:

        - ``train_images`` : list of str, the normal training images.
        - ``test_images`` : list of str; ``test/good`` first, then the defect folders, each in
          natural file-name order.
        - ``test_labels`` : ndarray of shape (n_test,), int; 1 = anomalous, 0 = normal.
        - ``test_masks`` : list of str or None; the mask of each test image, None for a
          normal one. Read them with :func:`read_masks`.
        - ``test_defect_types`` : ndarray of shape (n_test,), str; the defect folder name,
          ``"good"`` for normal images.
        - ``category`` : the category; ``root`` : the category folder.
        - For the 15 MVTec AD categories: ``name`` : ``"mvtec_ad"``; ``kind`` :
          ``"texture"`` or ``"object"``; ``resize`` : 256 and ``crop`` : 224, the paper's
          preprocessing for MVTec AD. For any other category (your own data in this
          layout): ``name`` : the category, ``kind`` : None, and no ``resize`` or ``crop``,
          which only MVTec AD's own images prescribe.

        With ``category=None``, a dict mapping each category present to its Bunch.

    Raises
    ------
    DatasetError
        Naming the path: ``root``, the category, its ``train/good`` or ``test`` folder is
        missing; ``train/good`` holds no image; an anomalous image has no mask, or a mask has
        no image; there is no folder for ``category``.

    Examples
    --------
    A tiny tree in MVTec AD's layout, one image per folder:

    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import load_mvtec
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for name in ["train/good/000.png", "test/good/000.png", "test/crack/000.png",
    ...              "ground_truth/crack/000_mask.png"]:
    ...     path = Path(tmp.name, "bottle", name)
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(path)
    >>> data = load_mvtec(tmp.name, "bottle")
    >>> data.test_labels, data.test_defect_types
    (array([0, 1]), array(['good', 'crack'], dtype='<U5'))
    >>> [None if m is None else Path(m).name for m in data.test_masks]
    [None, '000_mask.png']
    >>> list(load_mvtec(tmp.name))
    ['bottle']
    >>> tmp.cleanup()
    """
    root = require_dir(root, "MVTec AD root folder", _GET_IT)
    if category is None:
        present = _categories_present(root)
        if not present:
            raise DatasetError(
                f"no category folder in MVTec AD root folder {root!r}: no sub-folder holds "
                f"train/good; {_GET_IT}; for images in another layout, see load_folder and "
                "load_folder_layout (--format folder or anomalib-folder on the command line)"
            )
        return {c: _load_category(root, c) for c in present}
    category = os.fspath(category)
    if not category or os.path.basename(category) != category or category in (".", ".."):
        raise DatasetError(
            f"category {category!r} is not a folder name; pass the name of one folder in "
            f"{root!r} (--category NAME on the command line)"
        )
    if not os.path.isdir(os.path.join(root, category)):
        present = _categories_present(root)
        choices = (f"categories present: {', '.join(present)}" if present else
                   "it holds no folder with train/good")
        raise DatasetError(
            f"MVTec AD category {category!r} folder not found: "
            f"{os.path.join(root, category)!r}; {choices}; choose one with category= "
            "(--category on the command line), or, for images in another layout, see "
            "load_folder and load_folder_layout (--format folder or anomalib-folder)"
        )
    return _load_category(root, category)


def _categories_present(root):
    """Sub-folders of ``root`` that hold ``train/good`` or are named like an MVTec AD
    category (so that a damaged official category fails loudly rather than vanishing)."""
    return [
        name for name in list_dirs(root)
        if name in MVTEC_CATEGORIES or os.path.isdir(os.path.join(root, name, "train", "good"))
    ]


def _load_category(root, category):
    hint = _GET_IT if category in MVTEC_CATEGORIES else _LAYOUT
    base = require_dir(os.path.join(root, category), f"MVTec AD category {category!r} folder",
                       hint)
    train = require_images(os.path.join(base, "train", "good"), "training folder", hint)
    test_dir = require_dir(os.path.join(base, "test"), "test folder", hint)
    images, masks, types = collect_test_images(
        test_dir, os.path.join(base, "ground_truth"), ("_mask",)
    )
    if not images:
        raise DatasetError(f"test folder {test_dir!r} holds no images; {hint}")
    labels = [t != "good" for t in types]
    if category not in MVTEC_CATEGORIES:
        return make_bunch(category, train, images, labels, masks, types, category=category,
                          kind=None, root=base)
    return make_bunch(
        "mvtec_ad", train, images, labels, masks, types,
        category=category, kind="texture" if category in MVTEC_TEXTURES else "object",
        root=base, resize=256, crop=224,
    )
