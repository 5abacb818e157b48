"""MVTec AD, read from its published folder layout."""

import os

from ..exceptions import DatasetError
from ._base import collect_test_images, make_bunch, require_dir, require_images

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
        One of :data:`MVTEC_CATEGORIES`. None loads every category present under ``root``.

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
        - ``name`` : ``"mvtec_ad"``; ``category`` : the category; ``kind`` : ``"texture"``
          or ``"object"``; ``root`` : the category folder.
        - ``resize`` : 256 and ``crop`` : 224, the paper's preprocessing for MVTec AD.

        With ``category=None``, a dict mapping each category present to its Bunch.

    Raises
    ------
    DatasetError
        Naming the path: ``root``, the category, its ``train/good`` or ``test`` folder is
        missing; ``train/good`` holds no image; an anomalous image has no mask, or a mask has
        no image; ``category`` is not an MVTec AD category.

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
        present = [c for c in MVTEC_CATEGORIES if os.path.isdir(os.path.join(root, c))]
        if not present:
            raise DatasetError(
                f"no MVTec AD category folder in {root!r}; expected some of "
                f"{', '.join(MVTEC_CATEGORIES)}; {_GET_IT}"
            )
        return {c: _load_category(root, c) for c in present}
    if category not in MVTEC_CATEGORIES:
        raise DatasetError(
            f"unknown MVTec AD category {category!r} at {os.path.join(root, category)!r}; "
            f"choose one of "
            f"{', '.join(MVTEC_CATEGORIES)}, or use load_folder for data in another layout"
        )
    return _load_category(root, category)


def _load_category(root, category):
    base = require_dir(os.path.join(root, category), f"MVTec AD category {category!r} folder",
                       _GET_IT)
    train = require_images(os.path.join(base, "train", "good"), "training folder", _GET_IT)
    test_dir = require_dir(os.path.join(base, "test"), "test folder", _GET_IT)
    images, masks, types = collect_test_images(
        test_dir, os.path.join(base, "ground_truth"), ("_mask",)
    )
    if not images:
        raise DatasetError(f"test folder {test_dir!r} holds no images; {_GET_IT}")
    return make_bunch(
        "mvtec_ad", train, images, [t != "good" for t in types], masks, types,
        category=category, kind="texture" if category in MVTEC_TEXTURES else "object",
        root=base, resize=256, crop=224,
    )
