"""A simple folder layout for users' own data."""

import os

from ..exceptions import DatasetError
from ._base import (
    collect_test_images,
    list_images,
    make_bunch,
    orphan_mask_folders,
    require_dir,
    require_images,
)

__all__ = ["load_folder"]

_LAYOUT = "<root>/good/ for training, <root>/test/good/ and <root>/test/<defect>/ for testing"


def load_folder(root):
    """Load your own images from a simple folder layout.

    The layout::

        <root>/good/*.png                      normal images, used for training (required)
        <root>/test/good/*.png                 normal test images (optional)
        <root>/test/<defect>/*.png             anomalous test images, one folder per defect
                                               type, any name but "good" (optional)
        <root>/masks/<defect>/<stem>.png       the mask of test/<defect>/<stem>.<ext>
        <root>/masks/<defect>/<stem>_mask.png  (either name; optional, see below)

    Image files are those ending in .png, .jpg, .jpeg, .bmp, .tif or .tiff (any case); other
    files and hidden files are ignored, and each folder is read in natural file-name order. In
    a mask, a non-zero pixel marks a defect; a mask has its image's size.

    Masks are all or nothing: without a ``masks`` folder the data set has image labels only
    (``test_masks`` is None); with one, every anomalous test image needs exactly one mask, so
    that an empty mask always means a normal image.

    Parameters
    ----------
    root : str or path-like
        The data set's folder.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With fields:

        - ``train_images`` : list of str, the images of ``<root>/good``.
        - ``test_images`` : list of str; ``test/good`` first, then the defect folders in
          natural order. Empty when there is no ``test`` folder.
        - ``test_labels`` : ndarray of shape (n_test,), int; 1 = anomalous, 0 = normal.
        - ``test_masks`` : list of str or None, or None; each test image's mask (None for a
          normal image), or None when there is no ``masks`` folder. Read them with
          :func:`read_masks`.
        - ``test_defect_types`` : ndarray of shape (n_test,), str; the defect folder name,
          ``"good"`` for normal images.
        - ``name`` : the name of ``root``; ``root`` : ``root`` as a string.

    Raises
    ------
    DatasetError
        Naming the path: ``root`` or ``root/good`` is missing, ``root/good`` holds no image,
        ``root/test`` holds loose images, an anomalous image has no mask (when ``masks``
        exists), or a mask has no image.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import load_folder
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for name in ["good/a.png", "good/b.png", "test/good/c.png", "test/dent/d.jpg",
    ...              "masks/dent/d_mask.png"]:
    ...     path = Path(tmp.name, "parts", name)
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(path)
    >>> data = load_folder(Path(tmp.name, "parts"))
    >>> data.name, len(data.train_images), data.test_labels, data.test_defect_types
    ('parts', 2, array([0, 1]), array(['good', 'dent'], dtype='<U4'))
    >>> [None if m is None else Path(m).name for m in data.test_masks]
    [None, 'd_mask.png']
    >>> tmp.cleanup()
    """
    root = require_dir(root, "data set folder", f"expected {_LAYOUT}")
    train = require_images(os.path.join(root, "good"), "folder of normal training images",
                           f"expected {_LAYOUT}")
    test_dir = os.path.join(root, "test")
    mask_root = os.path.join(root, "masks")
    mask_root = mask_root if os.path.isdir(mask_root) else None
    if os.path.isdir(test_dir):
        _check_no_loose_images(test_dir)
        images, masks, types = collect_test_images(test_dir, mask_root, ("", "_mask"))
    else:
        orphan_mask_folders(mask_root, ())
        images, masks, types = [], None if mask_root is None else [], []
    return make_bunch(
        os.path.basename(os.path.normpath(root)), train, images, [t != "good" for t in types],
        masks, types, root=root,
    )


def _check_no_loose_images(test_dir):
    loose = list_images(test_dir)
    if loose:
        raise DatasetError(
            f"image {loose[0]!r} lies loose in the test folder; move normal images to "
            f"{os.path.join(test_dir, 'good')!r} and anomalous ones to "
            f"{os.path.join(test_dir, '<defect>')!r}"
        )
