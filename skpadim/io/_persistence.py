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
import math
import os
import pathlib

import numpy as np
import torch

from ._atomic import atomic_path
from .._torch import from_numpy, seeded
from ..exceptions import ModelFileError

__all__ = ["save", "load", "file_format", "FORMAT_VERSION"]

#: Version of the layout of the JSON description. A file with a higher number was written
#: by a newer skpadim and is refused with a message saying so.
FORMAT_VERSION = 1
FORMAT_NAME = "skpadim-model"
#: The safetensors metadata key holding the JSON. Only one key: safetensors writes its
#: metadata in hash-map order, and one entry keeps the files of identical fits identical.
METADATA_KEY = "skpadim"

# Allow-lists: the only classes a model file may name, as (module, attribute). The names are
# the file format's, fixed since format 1 (a file says "skpadim.gaussian.PatchMoments" even
# though the class now lives in skpadim.detectors); the modules are where the code lives now.
# A name that a module does not (or no longer) define is simply not allowed.
_ESTIMATORS = {
    "skpadim.BackboneFeatures": ("skpadim.features", "BackboneFeatures"),
    "skpadim.RandomFeatureSelector": ("skpadim.features", "RandomFeatureSelector"),
    "skpadim.PatchPCA": ("skpadim.features", "PatchPCA"),
    "skpadim.PatchGaussian": ("skpadim.detectors", "PatchGaussian"),
    "skpadim.SPADE": ("skpadim.detectors", "SPADE"),
    "skpadim.VAE": ("skpadim.detectors", "VAE"),
    "skpadim.StreamingPipeline": ("skpadim.pipeline", "StreamingPipeline"),
    "sklearn.pipeline.Pipeline": ("sklearn.pipeline", "Pipeline"),
}
_NAMEDTUPLES = {
    "skpadim.gaussian.PatchMoments": ("skpadim.detectors", "PatchMoments"),
}
_MODULES = {
    "skpadim.backbones.FeatureTrunk": ("skpadim.features.backbones", "FeatureTrunk"),
    "skpadim.vae.ConvVAE": ("skpadim.detectors", "ConvVAE"),
}

# Tensor dtypes the file may hold; numpy arrays are stored as torch tensors of the same dtype.
_TORCH_DTYPES = {
    name: getattr(torch, name)
    for name in ("bool", "uint8", "int8", "int16", "int32", "int64", "float16", "bfloat16",
                 "float32", "float64")
}
_NUMPY_DTYPES = {name for name in _TORCH_DTYPES if name != "bfloat16"}
_SCALAR_DTYPES = _NUMPY_DTYPES | {"uint16", "uint32", "uint64"}


def _resolve(table):
    """``{name: class}`` of an allow-list, importing only the modules it names."""
    import importlib

    out = {}
    for name, (module, attr) in table.items():
        cls = getattr(importlib.import_module(module), attr, None)
        if cls is not None:
            out[name] = cls
    return out


# ---------------------------------------------------------------------------- networks
def _rebuild_feature_trunk(owner):
    from ..features.backbones import build_trunk

    # weights=None: the stored state dict replaces every weight; nothing is read or fetched.
    return build_trunk(owner.backbone, owner.layers, weights=None, seed=0)


def _rebuild_conv_vae(owner):
    from ..features.backbones import build_trunk
    from ..detectors._vae import ConvVAE

    # As VAE.fit builds it: a ResNet18 trunk up to layer4, then the decoder.
    encoder = build_trunk("resnet18", ["layer4"], weights=None, seed=0)
    with seeded(0):
        module = ConvVAE(encoder, latent_channels=owner.latent_channels)
    return module


#: How each network class is rebuilt: (the estimator class that owns it, builder(owner)).
_REBUILD = {
    "skpadim.backbones.FeatureTrunk": ("skpadim.BackboneFeatures", _rebuild_feature_trunk),
    "skpadim.vae.ConvVAE": ("skpadim.VAE", _rebuild_conv_vae),
}


def _build_module(name, owner, where):
    """The network ``name`` as ``owner``'s parameters build it, and whether it is on the
    ``meta`` device (no memory, no random initialisation: the fast path)."""
    owner_name, builder = _REBUILD[name]
    if type(owner).__name__ != owner_name.rpartition(".")[2]:
        raise ModelFileError(f"{where}: a {name} is only stored as an attribute of a "
                             f"{owner_name}, not of a {type(owner).__name__}")
    try:
        with torch.device("meta"):
            return builder(owner), True
    except Exception:  # a layer that cannot be built on meta: build it for real
        return builder(owner), False


def _join(path, key):
    return f"{path}.{key}" if path else str(key)


# ---------------------------------------------------------------------------- saving
class _Encoder:
    """Turns a model into a JSON-able tree plus ``{name: tensor}``; refuses anything else."""

    def __init__(self):
        self.tensors = {}
        self._storages = set()
        self._owners = []
        self.estimators = _resolve(_ESTIMATORS)
        self.namedtuples = _resolve(_NAMEDTUPLES)
        self.modules = _resolve(_MODULES)

    def refuse(self, path, what, hint=""):
        where = f"attribute {path!r}" if path else "the model"
        raise ModelFileError(
            f"cannot save {where}: {what}. The safe format stores numbers, strings, "
            "None, lists, tuples, dicts, numpy arrays and scalars, torch tensors and "
            "devices, and skpadim's estimators and networks" + (f"; {hint}" if hint else "")
            + ". Convert it to one of those, or save with joblib if only people you trust "
            "will load the file"
        )

    @staticmethod
    def _name(cls, table):
        for name, allowed in table.items():
            if cls is allowed:
                return name
        return None

    def tensor(self, t, path):
        """Store a CPU, contiguous, unshared copy of ``t``; return its name."""
        t = t.detach()
        if t.layout != torch.strided or t.is_quantized:
            self.refuse(path, f"a {t.layout} torch tensor", "store it dense")
        dtype = str(t.dtype).removeprefix("torch.")
        if dtype not in _TORCH_DTYPES:
            self.refuse(path, f"a torch tensor of dtype {dtype}")
        t = t.cpu().contiguous()
        if t.numel():
            # safetensors refuses tensors that share memory (views of one array).
            storage = t.untyped_storage().data_ptr()
            if storage in self._storages:
                t = t.clone()
                storage = t.untyped_storage().data_ptr()
            self._storages.add(storage)
        name, k = path or "model", 1
        while name in self.tensors:  # only a dict key with a dot in it can collide
            k += 1
            name = f"{path}#{k}"
        self.tensors[name] = t
        return {"tensor": name, "dtype": dtype, "shape": list(t.shape)}

    def encode(self, value, path):
        if value is None or type(value) is bool:
            return value
        if isinstance(value, str):
            return str(value)
        if isinstance(value, np.generic):
            return self.numpy_scalar(value, path)
        if isinstance(value, int):
            return int(value)
        if isinstance(value, float):
            value = float(value)
            return value if math.isfinite(value) else {"$type": "float", "value": str(value)}
        if type(value) in (np.ndarray, np.memmap):
            return self.array(value, path)
        if isinstance(value, torch.Tensor):
            record = self.tensor(value, path)
            return {"$type": "tensor", **record,
                    **({"requires_grad": True} if value.requires_grad else {})}
        if isinstance(value, torch.device):
            return {"$type": "torch.device", "value": str(value)}
        if isinstance(value, torch.dtype):
            return {"$type": "torch.dtype", "value": str(value).removeprefix("torch.")}
        if isinstance(value, torch.Size):
            return {"$type": "torch.Size", "items": [int(v) for v in value]}
        if isinstance(value, tuple) and hasattr(type(value), "_fields"):
            return self.namedtuple(value, path)
        if type(value) is tuple:
            return {"$type": "tuple",
                    "items": [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]}
        if type(value) is list:
            return [self.encode(v, f"{path}[{i}]") for i, v in enumerate(value)]
        if type(value) is dict:
            return {"$type": "dict", "items": [
                [self.encode(k, f"{path} key {k!r}"), self.encode(v, f"{path}[{k!r}]")]
                for k, v in value.items()]}
        if isinstance(value, torch.nn.Module):
            return self.module(value, path)
        if isinstance(value, pathlib.PurePath):
            return {"$type": "path", "value": str(value)}
        if isinstance(value, np.dtype):
            if value.name not in _SCALAR_DTYPES:
                self.refuse(path, f"numpy dtype {value}")
            return {"$type": "numpy.dtype", "value": value.name}
        if type(value) is np.random.RandomState:
            _, keys, pos, has_gauss, cached = value.get_state(legacy=True)
            return {"$type": "numpy.RandomState", "pos": int(pos), "has_gauss": int(has_gauss),
                    "cached_gaussian": self.encode(float(cached), path),
                    "keys": self.array(keys.astype(np.int64), f"{path}.keys")}
        if type(value) is torch.Generator:
            if value.device.type != "cpu":
                self.refuse(path, f"a {value.device.type} torch.Generator")
            return {"$type": "torch.Generator",
                    "state": self.tensor(value.get_state(), f"{path}.state")}
        if hasattr(value, "get_params") and hasattr(value, "fit"):
            return self.estimator(value, path)
        self.refuse(path, f"a {type(value).__module__}.{type(value).__qualname__}")

    def numpy_scalar(self, value, path):
        if value.dtype.name not in _SCALAR_DTYPES:
            self.refuse(path, f"a numpy scalar of dtype {value.dtype}")
        return {"$type": "numpy.scalar", "dtype": value.dtype.name,
                "value": self.encode(value.item(), path)}

    def array(self, value, path):
        array = np.asarray(value)
        if not array.dtype.isnative:
            array = array.astype(array.dtype.newbyteorder("="))
        if array.dtype.name not in _NUMPY_DTYPES:
            self.refuse(path, f"a numpy array of dtype {array.dtype}",
                        "object and string arrays (such as feature names) are not stored")
        return {"$type": "ndarray", **self.tensor(from_numpy(array), path)}

    def namedtuple(self, value, path):
        name = self._name(type(value), self.namedtuples)
        if name is None:
            self.refuse(path, f"a {type(value).__qualname__} named tuple",
                        f"the named tuples it knows are {', '.join(self.namedtuples)}")
        return {"$type": "namedtuple", "class": name,
                "items": {f: self.encode(v, _join(path, f)) for f, v in value._asdict().items()}}

    def module(self, module, path):
        name = self._name(type(module), self.modules)
        if name is None or not self._owners:
            self.refuse(path, f"a torch module of class {type(module).__qualname__}",
                        "the networks it rebuilds are "
                        + ", ".join(f"{m} (in {_REBUILD[m][0]})" for m in self.modules))
        owner = self._owners[-1]
        reference, _ = _build_module(name, owner, path)
        stored = module.state_dict()
        expected = {k: (tuple(t.shape), t.dtype) for k, t in reference.state_dict().items()}
        found = {k: (tuple(t.shape), t.dtype) for k, t in stored.items()}
        if found != expected:
            differ = sorted(set(found) ^ set(expected)) or sorted(
                k for k in found if found[k] != expected[k])
            raise ModelFileError(
                f"cannot save attribute {path!r}: this {type(module).__name__} is not the one "
                f"{type(owner).__name__}'s parameters build (they differ in {differ[:3]}), "
                "and the safe format rebuilds networks from the parameters; save a model "
                "fitted by skpadim, or use joblib for a modified network"
            )
        return {"$type": "module", "class": name, "state_dict": {
            k: self.tensor(t, _join(path, k)) for k, t in stored.items()}}

    def estimator(self, est, path):
        name = self._name(type(est), self.estimators)
        if name is None:
            self.refuse(path, f"a {type(est).__module__}.{type(est).__qualname__} estimator",
                        "the estimators it stores are " + ", ".join(self.estimators))
        finish = getattr(est, "_ensure_finished", None)
        if callable(finish):  # a fit left open by partial_fit: save the finished model
            finish()
        state = dict(est.__getstate__())
        params = {k: state.pop(k) for k in type(est)._get_param_names() if k in state}
        self._owners.append(est)
        try:
            return {
                "$type": "estimator",
                "class": name,
                "params": {k: self.encode(v, _join(path, k)) for k, v in params.items()},
                "state": {k: self.encode(v, _join(path, k)) for k, v in state.items()},
            }
        finally:
            self._owners.pop()


def _versions():
    import sklearn

    from .._versioning import skpadim_version

    return {"skpadim": skpadim_version(), "scikit-learn": sklearn.__version__,
            "torch": torch.__version__, "numpy": np.__version__}


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
    >>> from skpadim.persistence import file_format
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


class _Decoder:
    """Rebuilds the model from the JSON tree, reading tensors from the open file."""

    def __init__(self, reader, path, versions):
        self.reader = reader
        self.names = set(reader.keys())
        self.used = set()
        self.path = path
        self.versions = versions
        self.owners = []
        self.estimators = _resolve(_ESTIMATORS)
        self.namedtuples = _resolve(_NAMEDTUPLES)
        self.modules = _resolve(_MODULES)

    def fail(self, where, what):
        running = _versions()["skpadim"]
        written = self.versions.get("skpadim") if isinstance(self.versions, dict) else None
        if written != running:
            hint = (f"The file was written by skpadim {written}; this is skpadim {running}: "
                    f"load it with skpadim {written}, or refit the model with this version")
        else:
            hint = ("The file was damaged or edited after skpadim.save wrote it; write it "
                    "again with skpadim.save")
        at = f" at {where!r}" if where else ""
        return ModelFileError(f"cannot load model file {self.path!r}{at}: {what}. {hint}")

    def field(self, node, key, types, where):
        value = node.get(key) if isinstance(node, dict) else None
        if not isinstance(value, types) or (types is int and isinstance(value, bool)):
            raise self.fail(where, f"entry {key!r} is missing or of the wrong type")
        return value

    def decode(self, node, where):
        if node is None or isinstance(node, (bool, int, float, str)):
            return node
        if isinstance(node, list):
            return [self.decode(v, f"{where}[{i}]") for i, v in enumerate(node)]
        kind = self.field(node, "$type", str, where)
        handler = getattr(self, "_" + kind.replace(".", "_"), None)
        if handler is None or kind not in _TAGS:
            raise self.fail(where, f"unknown entry type {kind!r}")
        try:
            return handler(node, where)
        except ModelFileError:
            raise
        except Exception as exc:  # what an edited file makes numpy, torch or a class raise
            raise self.fail(where, f"{type(exc).__name__}: {exc}") from None

    def lookup(self, table, node, where, kind):
        name = self.field(node, "class", str, where)
        if name not in table:
            raise self.fail(where, f"it names {kind} class {name!r}, which is not one skpadim "
                                   f"loads (allowed: {', '.join(table)})")
        return name, table[name]

    def tensor(self, node, where):
        name = self.field(node, "tensor", str, where)
        if name not in self.names:
            raise self.fail(where, f"the file lacks tensor {name!r} (truncated or edited?)")
        t = self.reader.get_tensor(name)
        dtype = str(t.dtype).removeprefix("torch.")
        shape = self.field(node, "shape", list, where)
        if dtype != node.get("dtype") or list(t.shape) != shape:
            raise self.fail(where, f"tensor {name!r} is {dtype} {list(t.shape)}, but the "
                                   f"description says {node.get('dtype')} {shape}")
        self.used.add(name)
        return t

    # One method per tag of the encoder.
    def _float(self, node, where):
        value = self.field(node, "value", str, where)
        if value not in ("nan", "inf", "-inf"):
            raise self.fail(where, f"{value!r} is not a non-finite float")
        return float(value)

    def _tuple(self, node, where):
        items = self.field(node, "items", list, where)
        return tuple(self.decode(v, f"{where}[{i}]") for i, v in enumerate(items))

    def _torch_Size(self, node, where):
        return torch.Size(self._tuple(node, where))

    def _dict(self, node, where):
        out = {}
        for pair in self.field(node, "items", list, where):
            if not (isinstance(pair, list) and len(pair) == 2):
                raise self.fail(where, "a dict item is not a [key, value] pair")
            key = self.decode(pair[0], f"{where} key")
            out[key] = self.decode(pair[1], f"{where}[{key!r}]")
        return out

    def _ndarray(self, node, where):
        if node.get("dtype") not in _NUMPY_DTYPES:
            raise self.fail(where, f"arrays of dtype {node.get('dtype')!r} are not stored")
        return self.tensor(node, where).numpy()

    def _tensor(self, node, where):
        t = self.tensor(node, where)
        return t.requires_grad_(True) if node.get("requires_grad") is True else t

    def _numpy_scalar(self, node, where):
        dtype = node.get("dtype")
        if dtype not in _SCALAR_DTYPES:
            raise self.fail(where, f"numpy scalars of dtype {dtype!r} are not stored")
        value = self.decode(node.get("value"), where)
        if not isinstance(value, (bool, int, float)):
            raise self.fail(where, "a numpy scalar's value is not a number")
        return np.dtype(dtype).type(value)

    def _numpy_dtype(self, node, where):
        value = self.field(node, "value", str, where)
        if value not in _SCALAR_DTYPES:
            raise self.fail(where, f"numpy dtype {value!r} is not stored")
        return np.dtype(value)

    def _torch_device(self, node, where):
        return torch.device(self.field(node, "value", str, where))

    def _torch_dtype(self, node, where):
        value = self.field(node, "value", str, where)
        if value not in _TORCH_DTYPES:
            raise self.fail(where, f"torch dtype {value!r} is not stored")
        return _TORCH_DTYPES[value]

    def _path(self, node, where):
        return pathlib.Path(self.field(node, "value", str, where))

    def _numpy_RandomState(self, node, where):
        keys = self._ndarray(self.field(node, "keys", dict, where), f"{where}.keys")
        state = ("MT19937", keys.astype(np.uint32), self.field(node, "pos", int, where),
                 self.field(node, "has_gauss", int, where),
                 float(self.decode(node.get("cached_gaussian"), where)))
        rng = np.random.RandomState()
        rng.set_state(state)
        return rng

    def _torch_Generator(self, node, where):
        generator = torch.Generator()
        generator.set_state(self.tensor(self.field(node, "state", dict, where), where))
        return generator

    def _namedtuple(self, node, where):
        _, cls = self.lookup(self.namedtuples, node, where, "named tuple")
        items = self.field(node, "items", dict, where)
        if sorted(items) != sorted(cls._fields):
            raise self.fail(where, f"{cls.__name__} has fields {list(cls._fields)}, the file "
                                   f"{sorted(items)}")
        return cls(**{k: self.decode(v, _join(where, k)) for k, v in items.items()})

    def _module(self, node, where):
        name, _ = self.lookup(self.modules, node, where, "network")
        if not self.owners:
            raise self.fail(where, f"a {name} outside an estimator")
        module, on_meta = _build_module(name, self.owners[-1], where)
        records = self.field(node, "state_dict", dict, where)
        state = {k: self.tensor(self.field(records, k, dict, where), _join(where, k))
                 for k in records}
        expected = {k: (t.dtype, tuple(t.shape)) for k, t in module.state_dict().items()}
        found = {k: (t.dtype, tuple(t.shape)) for k, t in state.items()}
        if found != expected:
            differ = sorted(set(found) ^ set(expected)) or sorted(
                k for k in found if found[k] != expected[k])
            raise self.fail(where, f"its weights do not fit the {name} that the parameters "
                                   f"build (they differ in {differ[:3]})")
        # On meta there is nothing to copy into: the stored tensors become the weights.
        module.load_state_dict(state, strict=True, assign=on_meta)
        return module.eval().requires_grad_(False)

    def _estimator(self, node, where):
        name, cls = self.lookup(self.estimators, node, where, "estimator")
        params = {k: self.decode(v, _join(where, k))
                  for k, v in self.field(node, "params", dict, where).items()}
        unknown = sorted(set(params) - set(cls._get_param_names()))
        if unknown:
            raise self.fail(where, f"{cls.__name__} takes no parameters {unknown}")
        est = cls(**params)
        validate = getattr(est, "_validate_params", None)
        if callable(validate):
            try:
                validate()
            except ValueError as exc:
                raise self.fail(where, f"invalid parameters: {exc}") from None
        state = self.field(node, "state", dict, where)
        self.owners.append(est)
        try:
            state = {k: self.decode(v, _join(where, k)) for k, v in state.items()}
        finally:
            self.owners.pop()
        clash = sorted(set(state) & set(params))
        if clash:
            raise self.fail(where, f"{clash} are both parameters and fitted attributes")
        # load() warns once, for the whole file, when its versions differ from the running
        # ones; the per-estimator stamps would repeat that warning for every step.
        from .._versioning import VersionedStateMixin

        stamps = _running_stamps()
        if isinstance(est, VersionedStateMixin):
            state.update(stamps)
        elif "_sklearn_version" in state or type(est).__module__.startswith("sklearn."):
            state["_sklearn_version"] = stamps["_sklearn_version"]
        est.__setstate__(state)
        return est


_TAGS = {"float", "tuple", "torch.Size", "dict", "ndarray", "tensor", "numpy.scalar",
         "numpy.dtype", "torch.device", "torch.dtype", "path", "numpy.RandomState",
         "torch.Generator", "namedtuple", "module", "estimator"}


def _running_stamps():
    import sklearn

    from .._versioning import SKLEARN_KEY, SKPADIM_KEY, skpadim_version

    return {SKPADIM_KEY: skpadim_version(), SKLEARN_KEY: sklearn.__version__}


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
