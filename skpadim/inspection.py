"""A fitted model applied to a user's image files: open the model file, inspect the images,
get the maps back in each image's own geometry.

This is what the ``skpadim`` command line runs, usable from Python:

- :func:`open_model` reads a model file (:func:`skpadim.load`), checks that it holds a fitted
  detector skpadim can score with (PaDiM, SPADE or VAE), puts it on a device and probes it
  once, so that a model another version wrote fails at once, with a clear message;
- :func:`detector_method` tells which of the three methods a model is;
- :func:`model_geometry` gives the resize and crop the model applies to its inputs;
- :func:`iter_inspect_files` yields, batch by batch, each image's anomaly map in the image's
  own size (see :func:`skpadim.features.restore_geometry`), its score and its verdict;
- :class:`ModelMasks` reads a data set's ground-truth masks in the model's geometry, the
  one its maps have, a slice at a time (for :func:`skpadim.evaluation.tune_thresholds` and
  pixel metrics).
"""

import os
from typing import NamedTuple

import numpy as np

from .exceptions import ModelFileError, SkpadimError

__all__ = ["METHODS", "detector_method", "open_model", "model_geometry", "iter_inspect_files",
           "FileInspection", "ModelMasks"]

#: The detectors the command line fits and scores, by the names its ``--method`` takes.
METHODS = ("padim", "spade", "vae")


def _final(model):
    steps = getattr(model, "steps", None)
    return steps[-1][1] if steps else model


def detector_method(model):
    """Which detector ``model`` is: "padim", "spade" or "vae"; None for anything else.

    PaDiM is a pipeline whose first step is :class:`~skpadim.BackboneFeatures` and whose
    last is :class:`~skpadim.PatchGaussian`; SPADE a pipeline of ``BackboneFeatures`` and
    :class:`~skpadim.SPADE`; the VAE a :class:`~skpadim.VAE` on its own (it takes images).

    Parameters
    ----------
    model : object
        A model, fitted or not.

    Returns
    -------
    method : {"padim", "spade", "vae"} or None

    Examples
    --------
    >>> from skpadim import VAE, make_padim
    >>> from skpadim.inspection import detector_method
    >>> detector_method(make_padim("resnet18", weights=None)), detector_method(VAE())
    ('padim', 'vae')
    >>> detector_method("not a model") is None
    True
    """
    from .detectors._gaussian import PatchGaussian
    from .detectors._spade import SPADE
    from .detectors._vae import VAE
    from .features._extraction import BackboneFeatures

    if isinstance(model, VAE):
        return "vae"
    steps = getattr(model, "steps", None)
    if not steps or len(steps) < 2 or not isinstance(steps[0][1], BackboneFeatures):
        return None
    final = steps[-1][1]
    if isinstance(final, PatchGaussian):
        return "padim"
    if isinstance(final, SPADE):
        return "spade"
    return None


def _describe(model):
    steps = getattr(model, "steps", None)
    if steps:
        return "Pipeline of " + " -> ".join(type(step).__name__ for _, step in steps)
    return type(model).__name__


def _is_fitted(model):
    final = _final(model)
    try:
        final.offset_
    except AttributeError:
        return False
    return not hasattr(model, "steps") or hasattr(model.steps[0][1], "module_")


def open_model(path, *, allow_pickle=False, device=None, method=None):
    """Read a model file and make it ready to score: checked, on ``device``, probed once.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`skpadim.save` (or ``skpadim fit``); a pickle (joblib) file
        only with ``allow_pickle``.
    allow_pickle : bool, default=False
        Also read pickle files, whose loading runs any code they contain: only for files
        you trust.
    device : str or None, default=None
        Torch device to score on ("auto", "cpu", "cuda", ...), whatever device the model was
        fitted on; None keeps the model's setting.
    method : {"padim", "spade", "vae"} or None, default=None
        The detector the file must hold; None accepts any of the three.

    Returns
    -------
    model : Pipeline or VAE
        The fitted model.

    Raises
    ------
    ModelFileError
        If the file is missing or unreadable, a pickle without ``allow_pickle``, not a fitted
        PaDiM, SPADE or VAE model (or not the ``method`` asked for), or a model this skpadim
        cannot score with (one written by another version that lacks something): the probe,
        one blank image scored, fails.

    See Also
    --------
    skpadim.load : Read any model file, without these checks.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from skpadim import make_padim, save
    >>> from skpadim.inspection import open_model
    >>> images = np.random.RandomState(0).randint(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    >>> pipe = make_padim("resnet18", n_features=10, weights=None, resize=None, crop=None,
    ...                   random_state=0).fit(images)
    >>> path = os.path.join(tempfile.mkdtemp(), "model.safetensors")
    >>> _ = save(pipe, path)
    >>> model = open_model(path, device="cpu", method="padim")
    >>> bool(np.array_equal(model.score_samples(images), pipe.score_samples(images)))
    True
    >>> open_model(path, method="vae")
    Traceback (most recent call last):
    ...
    skpadim.exceptions.ModelFileError: model file '...' holds a PaDiM model, not a VAE one...
    """
    from .io._persistence import load

    path = os.fspath(path)
    if not os.path.isfile(path):
        state = "is not a file" if os.path.exists(path) else "not found"
        raise ModelFileError(f"model file {state}: {path!r}; make one with 'skpadim fit DATA "
                             "--model FILE' or skpadim.save")
    model = load(path, allow_pickle=allow_pickle)
    found = detector_method(model)
    if found is None or not _is_fitted(model):
        raise ModelFileError(
            f"model file {path!r} holds a {_describe(model)}, not a fitted PaDiM, SPADE or VAE "
            "model (a pipeline of BackboneFeatures and a fitted PatchGaussian or SPADE, or a "
            "fitted VAE); make one with 'skpadim fit', or score other detectors from Python "
            "with skpadim.anomaly_maps and score_samples"
        )
    if method is not None and found != method:
        raise ModelFileError(f"model file {path!r} holds a {_NAMES[found]} model, not a "
                             f"{_NAMES[method]} one (--method {method}); drop --method, or "
                             f"pass --method {found}")
    if device is not None:
        _on_device(model, device)
    _probe(model, path)
    return model


_NAMES = {"padim": "PaDiM", "spade": "SPADE", "vae": "VAE"}


def _on_device(model, device):
    steps = [step for _, step in model.steps] if hasattr(model, "steps") else [model]
    for step in steps:
        if "device" in step.get_params(deep=False):
            step.set_params(device=device)
    return model


def _probe(model, path):
    """Score one blank image now: a model that lacks something this skpadim needs fails
    here, as a model-file error, not half-way through a folder."""
    from . import __version__
    from .io._persistence import _file_versions
    from .pipeline import anomaly_maps

    size = model_geometry(model)["input_size"]
    if size is None:  # no fixed input size: nothing to probe with
        return
    try:
        anomaly_maps(model, np.zeros((1, *size, 3), dtype=np.uint8))
    except SkpadimError:  # a setting (device) the library rejected, not the file
        raise
    except Exception as exc:
        written = _file_versions(path).get("skpadim", "an unknown version")
        raise ModelFileError(
            f"model file {path!r} (written by skpadim {written}) cannot be used by this "
            f"skpadim ({__version__}): scoring fails with {type(exc).__name__}: {exc}; refit "
            "the model with 'skpadim fit', or score with the skpadim version that wrote it"
        ) from None


def model_geometry(model):
    """How a model brings its input images to the network: resize, crop, interpolation.

    Parameters
    ----------
    model : Pipeline or VAE
        A PaDiM or SPADE pipeline (its first step's settings) or a VAE.

    Returns
    -------
    geometry : dict
        ``resize`` and ``crop`` (int, (int, int) or None), ``interpolation`` (str), and
        ``input_size``: an image size (H, W) the fitted model accepts (the one it requires
        when it has neither resize nor crop), or None when nothing tells one.

    Examples
    --------
    >>> from skpadim import VAE, make_padim
    >>> from skpadim.inspection import model_geometry
    >>> g = model_geometry(make_padim("R18-Rd100", weights=None))
    >>> g["resize"], g["crop"], g["interpolation"]
    (256, 224, 'bicubic')
    >>> model_geometry(VAE())["crop"]
    256
    """
    from .features._geometry import _pair

    first = model.steps[0][1] if hasattr(model, "steps") else model
    # Images of the size the network sees are accepted whatever the resize; without resize
    # and crop, only the size the model was fitted on is.
    size = (getattr(first, "input_size_", None) or getattr(first, "image_size_", None)
            or _pair(first.crop or first.resize, "crop"))
    return {"resize": first.resize, "crop": first.crop, "interpolation": first.interpolation,
            "input_size": None if size is None else tuple(int(s) for s in size)}


class FileInspection(NamedTuple):
    """One image's result, from :func:`iter_inspect_files`.

    Attributes
    ----------
    index : int
        The image's position in the paths given.
    path : str
        The image file.
    anomaly_map : ndarray of shape (H, W), dtype float32
        The map in the image's own size; NaN where the model's crop left the image out
        (with ``fill="nan"``).
    anomaly_score : float
        Image anomaly score, higher = more anomalous.
    label : int
        +1 normal, -1 anomalous, at the model's image threshold.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.inspection import FileInspection
    >>> result = FileInspection(0, "part.png", np.zeros((4, 6), np.float32), 2.5, -1)
    >>> result.anomaly_map.shape, result.label
    ((4, 6), -1)
    """

    index: int
    path: str
    anomaly_map: np.ndarray
    anomaly_score: float
    label: int


def iter_inspect_files(model, paths, *, batch_size=32, geometry="image", fill="nan"):
    """Yield each image's map, score and verdict, ``batch_size`` images at a time.

    Each batch goes through the backbone once (:func:`skpadim.iter_inspect_images`), so
    memory stays flat however many files there are.

    Parameters
    ----------
    model : Pipeline or VAE
        A fitted PaDiM, SPADE or VAE model.
    paths : sequence of str
        Image files.
    batch_size : int, default=32
        Images per batch.
    geometry : {"image", "model"}, default="image"
        "image": maps in each image's own size, the model's resize and crop undone
        (:func:`skpadim.features.restore_geometry`); "model": maps as the model makes
        them (the cropped geometry, at the map size).
    fill : {"nan", "nearest"} or float, default="nan"
        With ``geometry="image"``, the value of the border the crop removed: "nan" marks it
        unknown, "nearest" extends the map's edge, a number fills it.

    Yields
    ------
    result : FileInspection
        In the order of ``paths``.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim import make_padim
    >>> from skpadim.inspection import iter_inspect_files
    >>> folder = tempfile.mkdtemp()
    >>> rng = np.random.RandomState(0)
    >>> paths = []
    >>> for i in range(4):
    ...     paths.append(os.path.join(folder, f"{i}.png"))
    ...     Image.fromarray(rng.randint(0, 256, (40, 48, 3), dtype=np.uint8)).save(paths[-1])
    >>> pipe = make_padim("resnet18", n_features=10, weights=None, resize=32, crop=24,
    ...                   random_state=0).fit(paths)
    >>> first = next(iter_inspect_files(pipe, paths, batch_size=2))
    >>> first.anomaly_map.shape                               # the image's own (H, W)
    (40, 48)
    >>> bool(np.isnan(first.anomaly_map[0, 0])), bool(np.isfinite(first.anomaly_map[20, 24]))
    (True, True)
    """
    from .features._geometry import restore_geometry
    from .features._images import image_sizes
    from .pipeline import iter_inspect_images

    if geometry not in ("image", "model"):
        raise SkpadimError(f"geometry must be 'image' or 'model', got {geometry!r}")
    g = model_geometry(model)
    paths = [os.fspath(p) for p in paths]
    for start, part in iter_inspect_images(model, paths, batch_size=batch_size):
        batch = paths[start : start + len(part.maps)]
        sizes = image_sizes(batch) if geometry == "image" else [None] * len(batch)
        for i, (path, size) in enumerate(zip(batch, sizes)):
            m = part.maps[i]
            if size is not None:
                m = restore_geometry(m[None], size, g["resize"], g["crop"], fill=fill)[0]
            yield FileInspection(start + i, path, m, float(part.anomaly_scores[i]),
                                 int(part.labels[i]))


class ModelMasks:
    """Ground-truth masks in a model's geometry, read on demand, a slice at a time.

    Each mask is read from its file (:func:`skpadim.datasets.read_masks`; a None reference
    is an empty mask, a normal image's) and brought through the model's resize and crop
    (:func:`skpadim.features.transform_masks`), so it lines up with the model's maps.
    Indexing with a slice returns a boolean array ``(k, h, w)``; nothing is kept, so a pass
    over a large test set holds one batch of masks at a time.

    Parameters
    ----------
    model : Pipeline or VAE
        The model whose geometry (:func:`model_geometry`) the masks take.
    mask_refs : sequence of str or None
        One mask reference per image, as the data set loaders return them
        (``test_masks``); None for an image without a defect.
    images : sequence of str
        The images, to check each mask's size against its image's.
    crop : bool, default=True
        False leaves out the model's crop: the masks then cover the whole resized image,
        the border the model does not see included (see
        :func:`skpadim.evaluation.evaluation_view`).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim import make_padim
    >>> from skpadim.inspection import ModelMasks
    >>> folder = tempfile.mkdtemp()
    >>> image, mask = os.path.join(folder, "a.png"), os.path.join(folder, "a_mask.png")
    >>> Image.new("RGB", (40, 40)).save(image)
    >>> Image.fromarray(np.full((40, 40), 255, np.uint8)).save(mask)
    >>> masks = ModelMasks(make_padim("resnet18", weights=None, resize=32, crop=24),
    ...                    [mask, None], [image, image])
    >>> len(masks), masks[0:2].shape, masks[0:2].any(axis=(1, 2)).tolist()
    (2, (2, 24, 24), [True, False])
    """

    def __init__(self, model, mask_refs, images, *, crop=True):
        geometry = model_geometry(model)
        self.resize, self.crop = geometry["resize"], geometry["crop"] if crop else None
        self.mask_refs, self.images = list(mask_refs), list(images)
        if len(self.mask_refs) != len(self.images):
            raise SkpadimError(f"{len(self.images)} images but {len(self.mask_refs)} masks")

    def __len__(self):
        return len(self.mask_refs)

    def __getitem__(self, index):
        from .datasets import read_masks
        from .features._geometry import transform_masks

        if not isinstance(index, slice):
            return self[index : index + 1][0]
        refs, images = self.mask_refs[index], self.images[index]
        out = [transform_masks(read_masks([ref], [image]), self.resize, self.crop)
               for ref, image in zip(refs, images)]
        if not out:
            return np.zeros((0, 0, 0), dtype=bool)
        return np.concatenate(out).astype(bool)

