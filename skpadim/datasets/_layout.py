"""One entry point for a data set folder of any layout skpadim reads: :func:`load_dataset`."""

import os

from ..exceptions import ConfigurationError, DatasetError
from ._base import list_dirs, list_images
from ._folder import _FLAGS as _FOLDER_FLAGS
from ._folder import load_folder, load_folder_layout
from ._mvtec import load_mvtec
from ._stc import load_stc

__all__ = ["load_dataset", "LAYOUTS"]

#: The layouts :func:`load_dataset` reads, as its ``layout`` argument names them.
LAYOUTS = ("mvtec", "stc", "folder", "anomalib-folder")


def load_dataset(path, layout="auto", *, category=None, frame_step=1, **folders):
    """Load a data set folder in any layout skpadim reads, telling the layout if asked.

    With ``layout="auto"`` the folder's contents decide, in this order: any of ``folders``
    given means anomalib's Folder layout; ``category`` or a ``train/good`` folder, MVTec
    AD's layout (``path`` is then the category folder, or the folder above it with
    ``category``); ``training/`` and ``testing/``, ShanghaiTech Campus; ``good/``, the simple
    folder layout of :func:`load_folder`; image files directly in ``path``, a flat folder of
    normal images (training only).

    Parameters
    ----------
    path : str or path-like
        The data set's folder.
    layout : {"auto", "mvtec", "stc", "folder", "anomalib-folder"}, default="auto"
        The layout, or "auto" to tell it from the folders.
    category : str or None, default=None
        MVTec AD layout: the category folder's name (any name) when ``path`` is the folder
        above it.
    frame_step : int, default=1
        ShanghaiTech Campus: keep every ``frame_step``-th frame.
    **folders
        anomalib's Folder layout: ``normal_dir``, ``abnormal_dir``, ``normal_test_dir``,
        ``mask_dir`` and ``mask_suffix``, as :func:`load_folder_layout` takes them;
        ``normal_dir`` defaults to ``path`` itself.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        What the layout's loader returns (``train_images``, ``test_images``,
        ``test_labels``, ``test_masks``, ``test_defect_types``, ``name``, ...), plus
        ``layout`` (the layout read), ``set_name`` (a short name for reports: the category,
        or the folder's name) and ``description`` (one line: the layout, how it was told,
        and the image counts).

    Raises
    ------
    DatasetError
        If the folder is missing, its layout cannot be told, or its loader refuses it; the
        message names the command-line flag (``--format``, ``--category``,
        ``--normal-dir``, ...) that fixes it.
    ConfigurationError
        If ``folders`` are given with another ``layout``, or ``layout`` is unknown.

    See Also
    --------
    load_mvtec, load_stc, load_folder, load_folder_layout : The loaders behind it.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> from skpadim.datasets import load_dataset
    >>> tmp = tempfile.TemporaryDirectory()
    >>> for name in ["brick/train/good/0.png", "brick/train/good/1.png",
    ...              "brick/test/good/0.png", "brick/test/crack/0.png",
    ...              "brick/ground_truth/crack/0_mask.png"]:
    ...     Path(tmp.name, name).parent.mkdir(parents=True, exist_ok=True)
    ...     Image.new("RGB", (8, 8)).save(Path(tmp.name, name))
    >>> data = load_dataset(Path(tmp.name, "brick"))
    >>> data.layout, data.set_name, data.test_labels.tolist()
    ('mvtec', 'brick', [0, 1])
    >>> data.description.split(":")[0].startswith("detected MVTec AD layout")
    True
    >>> tmp.cleanup()
    """
    if layout != "auto" and layout not in LAYOUTS:
        raise ConfigurationError(f"unknown data set layout {layout!r}; choose 'auto' or one "
                                 f"of {', '.join(map(repr, LAYOUTS))} (--format)")
    folders = {k: v for k, v in folders.items() if v is not None}
    unknown = sorted(set(folders) - set(_FOLDER_FLAGS))
    if unknown:
        raise TypeError(f"load_dataset() got unexpected keyword arguments {unknown}")
    path = os.path.abspath(os.fspath(path))  # "." and ".." name their folder too
    if not os.path.isdir(path):
        state = "is not a folder" if os.path.exists(path) else "not found"
        raise DatasetError(f"data set folder {state}: {path!r}")
    told = "detected" if layout == "auto" else "format"
    if layout == "auto":
        layout = _detect(path, category, folders)
    if folders and layout != "anomalib-folder":
        flags = ", ".join(_FOLDER_FLAGS[k] for k in folders)
        raise ConfigurationError(f"{flags} name the folders of --format anomalib-folder, "
                                 f"not of --format {layout}; drop them, or pass "
                                 "--format anomalib-folder")

    if layout == "mvtec":
        if category is None:
            root, category = os.path.split(path)
        else:
            root = path
        data = load_mvtec(root or ".", category)
        set_name = category
        kind = (f"MVTec AD category {category!r}" if data.name == "mvtec_ad" else
                f"MVTec AD layout, category {category!r}")
    elif layout == "stc":
        data = load_stc(path, frame_step=frame_step)
        set_name = "shanghaitech_campus"
        kind = "ShanghaiTech Campus" + (f", every {frame_step}th frame" if frame_step > 1 else "")
    elif layout == "anomalib-folder":
        folders.setdefault("normal_dir", ".")
        data = load_folder_layout(path, **folders)
        set_name = data.name
        flat = len(folders) == 1 and folders["normal_dir"] == "."
        kind = "folder of normal images" if flat else "anomalib folder layout"
    else:
        data = load_folder(path)
        set_name = data.name
        kind = "folder layout"
    masks = "no masks" if data.test_masks is None else "with masks"
    data.layout, data.set_name = layout, set_name
    data.description = (
        f"{told} {kind} at {path!r}: {len(data.train_images)} training images, "
        f"{len(data.test_images)} test images ({int(sum(data.test_labels))} anomalous, "
        f"{masks})"
    )
    return data


def _detect(path, category, folders):
    def has(*parts):
        return os.path.isdir(os.path.join(path, *parts))

    if folders:
        return "anomalib-folder"
    if category is not None or has("train", "good"):
        return "mvtec"
    if has("training") and has("testing"):
        return "stc"
    if has("good"):
        return "folder"
    if list_images(path):
        return "anomalib-folder"  # a flat folder of normal images
    present = [d for d in list_dirs(path) if has(d, "train", "good")]
    hint = (f"; its folders {', '.join(present)} are in MVTec AD's layout: add --category "
            "NAME or pass one of them" if present else "")
    raise DatasetError(
        f"cannot tell the layout of data set folder {path!r}: it has no train/good (MVTec AD "
        f"layout), training/ and testing/ (STC), good/ (folder layout) or image files (a "
        f"folder of normal images){hint}; see 'skpadim fit --help' for the layouts, pass "
        "--format, or name your folders with --normal-dir, --abnormal-dir, --normal-test-dir "
        "and --mask-dir"
    )
