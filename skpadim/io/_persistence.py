"""Model files that loading can never make run code: :func:`skpadim.save` and
:func:`skpadim.load`.

A model file is a `safetensors <https://huggingface.co/docs/safetensors>`_ file:

- every array and weight is a tensor of the file (numpy arrays, torch tensors, the
  ``state_dict`` of the backbone or VAE network), named by where it sits in the model
  (``steps[2][1]._packed_chol``, ``steps[0][1].module_.body.0.0.weight``);
- everything else is one JSON document in the file's header metadata (key ``"skpadim"``):
  the format name and version (:data:`FORMAT_VERSION`), the versions of skpadim,
  scikit-learn, PyTorch and NumPy that wrote it, and the model as a tree of tagged values:
  each estimator's class (from an allow-list), constructor parameters and fitted
  attributes, taken from its ``__getstate__`` as pickling would.

Loading reads that JSON and those tensors and nothing else: classes are looked up in the
allow-list (skpadim's estimators, scikit-learn's ``Pipeline``, skpadim's ``PatchMoments``,
the two torch networks), estimators are built with ``cls(**params)`` and their fitted
attributes restored with ``__setstate__``; networks are rebuilt from their estimator's
parameters (no weights file, no download) and then take the stored tensors with
``load_state_dict(strict=True)``. Anything unexpected (an unknown class or entry, a missing
or extra tensor, a tensor of another shape or dtype, a newer format) raises
:class:`~skpadim.exceptions.ModelFileError` with what was found and what to do.

Pickle files (``joblib.dump``) are refused unless ``allow_pickle=True``: unpickling runs
whatever code the file names.
"""

import json
import os

from ..exceptions import ModelFileError
from ._atomic import atomic_path
from ._decode import _Decoder
from ._encode import _Encoder
from ._model_format import _versions

__all__ = ["save", "load", "file_format", "FORMAT_VERSION"]

#: Version of the layout of the JSON description. A file with a higher number was written
#: by a newer skpadim and is refused with a message saying so.
FORMAT_VERSION = 1
FORMAT_NAME = "skpadim-model"
#: The safetensors metadata key holding the JSON. Only one key: safetensors writes its
#: metadata in hash-map order, and one entry keeps the files of identical fits identical.
METADATA_KEY = "skpadim"


# ---------------------------------------------------------------------------- saving
def _write_tensors(tensors, metadata, path):
    """Write the safetensors file (a seam: the fault-injection test slows it down)."""
    from safetensors.torch import save_file

    save_file(tensors, path, metadata=metadata)


def save(model, path):
    """Write a fitted skpadim estimator or pipeline to a model file that loads without pickle.

    The arrays and network weights become tensors of a safetensors file; classes,
    parameters, fitted attributes and the versions of skpadim, scikit-learn, PyTorch and
    NumPy go into its header as JSON (see the module description). The file is written
    atomically: to a temporary file in the same folder, flushed to disk, then renamed over
    ``path``, so a reader never sees half a file and a crash leaves the old model intact.
    Two identical fits give byte-identical files.

    Parameters
    ----------
    model : estimator
        A skpadim estimator (:class:`~skpadim.BackboneFeatures`,
        :class:`~skpadim.RandomFeatureSelector`, :class:`~skpadim.PatchPCA`,
        :class:`~skpadim.PatchGaussian`, :class:`~skpadim.SPADE`, :class:`~skpadim.VAE`)
        or a scikit-learn ``Pipeline`` of them, such as :func:`~skpadim.make_padim` and
        :func:`~skpadim.make_spade` build; fitted or not. Networks are saved on the CPU.
    path : str or path-like
        The file to write (``.safetensors`` by convention); its folder must exist.

    Returns
    -------
    path : str
        The file written.

    Raises
    ------
    ModelFileError
        If the model holds something the format cannot store (the message names the
        attribute and its type), or the file cannot be written.

    See Also
    --------
    load : Read the file back.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import skpadim
    >>> images = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    >>> pipe = skpadim.make_padim("resnet18", n_features=10, weights=None, resize=32,
    ...                           crop=None, random_state=0).fit(images)
    >>> path = skpadim.save(pipe, os.path.join(tempfile.mkdtemp(), "padim.safetensors"))
    >>> loaded = skpadim.load(path)
    >>> bool((loaded.score_samples(images) == pipe.score_samples(images)).all())
    True
    """
    encoder = _Encoder()
    if encoder._name(type(model), encoder.estimators) is None:
        encoder.refuse("", f"a {type(model).__module__}.{type(model).__qualname__}",
                       "skpadim.save writes one skpadim estimator or Pipeline")
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION,
                "versions": _versions(), "model": encoder.encode(model, "")}
    text = json.dumps(document, sort_keys=True, separators=(",", ":"), allow_nan=False)
    path = os.fspath(path)
    try:
        with atomic_path(path) as tmp:
            _write_tensors(encoder.tensors, {METADATA_KEY: text}, tmp)
    except OSError as exc:
        raise ModelFileError(
            f"cannot write model file {path!r}: {exc.strerror or exc}"
        ) from exc
    except Exception as exc:  # safetensors reports write failures as its own error type
        raise ModelFileError(
            f"cannot write model file {path!r} ({type(exc).__name__}: {exc})"
        ) from exc
    return path


# ---------------------------------------------------------------------------- loading
_PICKLE_MAGIC = {  # first bytes of joblib's compressed files (plain pickles start b"\x80")
    b"\x78\x01": "zlib", b"\x78\x5e": "zlib", b"\x78\x9c": "zlib", b"\x78\xda": "zlib",
    b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"\x5d\x00\x00": "lzma",
    b"\x04\x22\x4d\x18": "lz4",
}


def file_format(path):
    """What a file is, from its first bytes: ``"safetensors"``, ``"pickle"`` or ``None``.

    Parameters
    ----------
    path : str or path-like
        The file.

    Returns
    -------
    kind : {"safetensors", "pickle"} or None
        ``"safetensors"``: an 8-byte little-endian header length, then ``{``;
        ``"pickle"``: a pickle stream (protocol 2 or later) or one of joblib's compressed
        files; None: neither.

    Raises
    ------
    ModelFileError
        If the file is missing or cannot be read.

    Examples
    --------
    >>> import os, tempfile
    >>> import joblib
    >>> from skpadim.io import file_format
    >>> path = os.path.join(tempfile.mkdtemp(), "model.joblib")
    >>> _ = joblib.dump({"a": 1}, path)
    >>> file_format(path)
    'pickle'
    """
    return _sniff(os.fspath(path))[0]


def _sniff(path):
    """(kind, description) of ``path`` from its first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
            size = os.fstat(f.fileno()).st_size
    except FileNotFoundError:
        raise ModelFileError(f"model file not found: {path!r}") from None
    except IsADirectoryError:
        raise ModelFileError(f"model file {path!r} is a folder, not a file") from None
    except OSError as exc:
        raise ModelFileError(f"cannot read model file {path!r}: {exc.strerror or exc}") from None
    if len(head) >= 9 and head[8:9] == b"{":
        if int.from_bytes(head[:8], "little") <= size - 8:
            return "safetensors", "a safetensors file"
        return "safetensors", "a safetensors file cut short"
    if head[:1] == b"\x80" and head[1:2] and 2 <= head[1] <= 5:
        return "pickle", f"pickle protocol {head[1]}"
    for magic, compressor in _PICKLE_MAGIC.items():
        if head.startswith(magic):
            return "pickle", f"{compressor}-compressed"
    return None, f"neither a skpadim model file nor a pickle (it starts with {head[:8]!r})"


def _load_pickle(path):
    import joblib

    try:
        return joblib.load(path)
    except Exception as exc:  # unpickling fails in as many ways as a file can be damaged
        raise ModelFileError(
            f"cannot read pickle model file {path!r} ({type(exc).__name__}: {exc}); is it "
            "a file written by joblib.dump with compatible skpadim and scikit-learn versions?"
        ) from None


def _warn_versions(versions, path):
    import warnings

    from ..exceptions import SkpadimWarning

    running = _versions()
    names = ("skpadim", "scikit-learn")
    if any(versions.get(name) != running[name] for name in names):
        def listed(which):
            return " and ".join(f"{name} {which.get(name, 'unknown')}" for name in names)

        warnings.warn(
            f"model file {path!r} was saved with {listed(versions)}; this is "
            f"{listed(running)}. It may fail or score differently: refit it with these "
            "versions, or install the ones it was saved with",
            SkpadimWarning,
            stacklevel=3,
        )


def _read_document(reader, path):
    """The JSON description in the header, checked to be a skpadim model of a known format."""
    text = (reader.metadata() or {}).get(METADATA_KEY)
    if text is None:
        raise ModelFileError(
            f"{path!r} is a safetensors file but not a skpadim model: its metadata has no "
            f"{METADATA_KEY!r} entry; write models with skpadim.save"
        )

    def no_constants(name):
        raise ValueError(f"{name} is not JSON")

    try:
        document = json.loads(text, parse_constant=no_constants)
    except (ValueError, RecursionError) as exc:
        raise ModelFileError(
            f"cannot load model file {path!r}: its description (JSON in the header) is "
            f"malformed ({exc}); the file was damaged or edited: write it again with "
            "skpadim.save"
        ) from None
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME:
        raise ModelFileError(f"{path!r} is a safetensors file but not a skpadim model "
                             f"(its description has no format {FORMAT_NAME!r})")
    version = document.get("format_version")
    versions = document.get("versions") if isinstance(document.get("versions"), dict) else {}
    written = versions.get("skpadim", "unknown")
    if not isinstance(version, int) or isinstance(version, bool) or version < 1:
        raise ModelFileError(f"cannot load model file {path!r}: format_version {version!r} "
                             "is not a positive integer; the file was damaged or edited")
    if version > FORMAT_VERSION:
        from .._versioning import skpadim_version

        raise ModelFileError(
            f"model file {path!r} was written by skpadim {written} in model-file format "
            f"version {version}; this skpadim ({skpadim_version()}) reads format versions up "
            f"to {FORMAT_VERSION}: upgrade skpadim (pip install --upgrade skpadim) to load it"
        )
    return document, versions


def _file_versions(path):
    """The versions a safe-format file says wrote it; ``{}`` for any other file."""
    try:
        if _sniff(os.fspath(path))[0] != "safetensors":
            return {}
        from safetensors import safe_open

        with safe_open(os.fspath(path), framework="pt", device="cpu") as reader:
            return _read_document(reader, os.fspath(path))[1]
    except Exception:  # only used to word an error message
        return {}


def load(path, *, allow_pickle=False):
    """Read a model written by :func:`save`; reading it never runs code from the file.

    Only classes of an allow-list are built (skpadim's estimators, scikit-learn's
    ``Pipeline``, and the networks, rebuilt from their estimator's parameters without any
    download). A model saved with other versions of skpadim or scikit-learn loads with a
    :class:`~skpadim.exceptions.SkpadimWarning` (or scikit-learn's
    ``InconsistentVersionWarning``) naming them, or fails with a
    :class:`~skpadim.exceptions.ModelFileError` that says why.

    Parameters
    ----------
    path : str or path-like
        A file written by :func:`save`.
    allow_pickle : bool, default=False
        Also read pickle files (``joblib.dump``), with ``joblib.load``. Unpickling runs
        any code the file contains: only for files you trust. Without it, a pickle file is
        refused, with an error that says so.

    Returns
    -------
    model : estimator
        The estimator or pipeline that was saved; networks are on the CPU, in eval mode.

    Raises
    ------
    ModelFileError
        If the file is missing, truncated or edited, is a pickle (without
        ``allow_pickle``), is of a newer format, or names a class that is not allowed.

    See Also
    --------
    save : Write a model file.

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> import skpadim
    >>> rng = np.random.RandomState(0)
    >>> gaussian = skpadim.PatchGaussian().fit(rng.normal(size=(20, 3, 2, 2)))
    >>> path = skpadim.save(gaussian, os.path.join(tempfile.mkdtemp(), "g.safetensors"))
    >>> skpadim.load(path).n_samples_seen_
    20
    >>> import joblib
    >>> _ = joblib.dump(gaussian, path + ".joblib")
    >>> from skpadim.exceptions import ModelFileError
    >>> try:
    ...     skpadim.load(path + ".joblib")              # a pickle: refused, not unpickled
    ... except ModelFileError as exc:
    ...     print(str(exc).split(": ", 1)[1][:42])
    loading it would run any code it contains.
    """
    path = os.fspath(path)
    kind, description = _sniff(path)
    if kind == "pickle":
        if allow_pickle:
            return _load_pickle(path)
        raise ModelFileError(
            f"model file {path!r} is a pickle file ({description}, as joblib.dump writes): "
            "loading it would run any code it contains. Load only the safe format "
            "(skpadim.save), or, for a file you trust, pass allow_pickle=True and re-save "
            "it with skpadim.save"
        )
    if kind is None:
        raise ModelFileError(f"cannot load model file {path!r}: it is {description}; write "
                             "models with skpadim.save")
    from safetensors import safe_open

    try:
        reader = safe_open(path, framework="pt", device="cpu")
    except Exception as exc:  # safetensors' own error type for a malformed file
        raise ModelFileError(
            f"cannot load model file {path!r}: it is {description} that safetensors cannot "
            f"read ({exc}); it may be truncated (an interrupted copy) or edited: write it "
            "again with skpadim.save"
        ) from None
    with reader:
        document, versions = _read_document(reader, path)
        decoder = _Decoder(reader, path, versions)
        try:
            model = decoder.decode(document.get("model"), "")
        except RecursionError:
            raise decoder.fail("", "its description is nested too deeply") from None
        extra = sorted(decoder.names - decoder.used)
        if extra:
            raise decoder.fail("", f"it holds tensors its description does not use: "
                                   f"{extra[:3]}")
    if type(model) not in decoder.estimators.values():
        raise decoder.fail("", f"it holds a {type(model).__name__}, not an estimator")
    _warn_versions(versions, path)
    return model
