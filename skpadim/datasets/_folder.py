"""Users' own data: a simple fixed layout, or folders named one by one (anomalib's)."""

import os

from ..exceptions import DatasetError
from ._base import (
    collect_test_images,
    list_images,
    make_bunch,
    orphan_mask_folders,
    pair_masks,
    require_dir,
    require_images,
)

__all__ = ["load_folder", "load_folder_layout"]

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


def load_folder_layout(root, normal_dir, abnormal_dir=None, mask_dir=None,
                       normal_test_dir=None, mask_suffix=("", "_mask")):
    """Load your own images from folders you name, as anomalib's ``Folder`` data set does.

    Each folder is named relative to ``root`` (an absolute path is taken as it is); only the
    image files directly in it are read. ``normal_dir="."`` takes the images of ``root``
    itself: a flat folder of normal images is a training set. For example::

        <root>/good/*.png              normal_dir="good"         (training)
        <root>/good_test/*.png         normal_test_dir="good_test"
        <root>/crack/*.png             abnormal_dir=["crack", "dent"]
        <root>/dent/*.png
        <root>/mask/crack/*.png        mask_dir=["mask/crack", "mask/dent"]
        <root>/mask/dent/*.png

    Image files are those ending in .png, .jpg, .jpeg, .bmp, .tif or .tiff (any case); hidden
    files are ignored and each folder is read in natural file-name order. The mask of image
    ``<stem>.<ext>`` is the file ``<stem><suffix>.<any image extension>`` of its mask
    folder, for one of ``mask_suffix``. Masks are all or nothing: with ``mask_dir``, every
    anomalous image needs exactly one mask, and every mask one image.

    Parameters
    ----------
    root : str or path-like
        The data set's folder.
    normal_dir : str or path-like
        The normal training images.
    abnormal_dir : str, path-like, sequence of them, or None, default=None
        Anomalous test images, one folder per defect type; a folder's name is the defect
        type of its images.
    mask_dir : str, path-like, sequence of them, or None, default=None
        The masks of the anomalous images, one folder per ``abnormal_dir`` folder, in the
        same order. None: the data set has image labels only (``test_masks`` is None).
    normal_test_dir : str, path-like or None, default=None
        Normal test images. Without them the test set holds anomalous images only, which
        is enough for scoring but not for AUROC.
    mask_suffix : str or sequence of str, default=("", "_mask")
        What a mask's stem adds to its image's stem.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With fields:

        - ``train_images`` : list of str, the images of ``normal_dir``.
        - ``test_images`` : list of str; ``normal_test_dir`` first, then each
          ``abnormal_dir`` folder in the order given.
        - ``test_labels`` : ndarray of shape (n_test,), int; 1 = anomalous, 0 = normal.
        - ``test_masks`` : list of str or None, or None; each test image's mask (None for a
          normal image), or None without ``mask_dir``. Read them with :func:`read_masks`.
        - ``test_defect_types`` : ndarray of shape (n_test,), str; the name of the
          anomalous image's folder, ``"good"`` for normal images.
        - ``name`` : the name of ``root``; ``root`` : ``root`` as a string.

    Raises
    ------
    DatasetError
        Naming the path: a folder is missing, ``normal_dir`` holds no image, ``mask_dir``
        does not have one folder per ``abnormal_dir`` folder, an anomalous image has no
        mask or several, or a mask has no image.

    See Also
    --------
    load_folder : A fixed layout of ``good/``, ``test/<defect>/`` and ``masks/<defect>/``.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import load_folder_layout
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for name in ["a.png", "b.png", "ok/c.png", "bad/d.jpg", "bad_masks/d_mask.png"]:
    ...     path = Path(tmp.name, "tiles", name)
    ...     path.parent.mkdir(parents=True, exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(path)
    >>> data = load_folder_layout(Path(tmp.name, "tiles"), normal_dir=".", abnormal_dir="bad",
    ...                           mask_dir="bad_masks", normal_test_dir="ok")
    >>> data.name, len(data.train_images), data.test_labels, data.test_defect_types
    ('tiles', 2, array([0, 1]), array(['good', 'bad'], dtype='<U4'))
    >>> [None if m is None else Path(m).name for m in data.test_masks]
    [None, 'd_mask.png']
    >>> tmp.cleanup()
    """
    root = require_dir(root, "data set folder")
    suffixes = (mask_suffix,) if isinstance(mask_suffix, str) else tuple(mask_suffix)
    if not suffixes or not all(isinstance(s, str) for s in suffixes):
        raise ValueError(f"mask_suffix must be a str or a sequence of str, got {mask_suffix!r}")
    train = require_images(_under(root, normal_dir, "normal_dir"),
                           "folder of normal training images",
                           "name the folder of normal images with normal_dir "
                           "(--normal-dir on the command line; '.' for the data set folder)")
    abnormal = _folders(root, abnormal_dir, "abnormal_dir")
    mask_dirs = None if mask_dir is None else _folders(root, mask_dir, "mask_dir")
    if mask_dirs is not None and len(mask_dirs) != len(abnormal):
        raise DatasetError(
            f"got {len(mask_dirs)} mask folders {mask_dirs} for {len(abnormal)} folders of "
            f"anomalous images {abnormal}: give one mask folder per abnormal_dir folder, in "
            "the same order (--mask-dir once per --abnormal-dir on the command line)"
        )
    images, masks, types = [], [], []
    if normal_test_dir is not None:
        normal = list_images(_under(root, normal_test_dir, "normal_test_dir"))
        images, masks, types = normal, [None] * len(normal), ["good"] * len(normal)
    for i, folder in enumerate(abnormal):
        paths = list_images(folder)
        if mask_dirs is not None:
            masks += pair_masks(folder, paths, mask_dirs[i], suffixes)
        images += paths
        types += [os.path.basename(os.path.normpath(folder))] * len(paths)
    return make_bunch(
        os.path.basename(os.path.normpath(os.path.abspath(root))), train, images,
        [t != "good" for t in types], None if mask_dirs is None else masks, types, root=root,
    )


# The command line's flag for each option of load_folder_layout, for messages.
_FLAGS = {"normal_dir": "--normal-dir", "abnormal_dir": "--abnormal-dir",
          "mask_dir": "--mask-dir", "normal_test_dir": "--normal-test-dir",
          "mask_suffix": "--mask-suffix"}


def _under(root, folder, name):
    """``root/folder`` as a string, or a DatasetError naming it and the parameter."""
    path = os.path.join(root, os.fspath(folder))
    return require_dir(path, f"{name} folder",
                       f"{name} is relative to {root!r} ({_FLAGS[name]} on the command line)")


def _folders(root, folders, name):
    if folders is None:
        return []
    if isinstance(folders, (str, os.PathLike)):
        folders = [folders]
    return [_under(root, f, name) for f in folders]
