"""Writing a model file's content: the ``_Encoder`` turns an estimator into a JSON tree
of tagged values plus the ``{name: tensor}`` it refers to, and refuses anything that
loading could not rebuild from the allow-lists alone.

Each kind of value has its tag (``"ndarray"``, ``"estimator"``, ``"module"``...), which
``_decode`` reads back; a network is stored as its ``state_dict`` only, after checking that
its owner's parameters rebuild the same network.
"""

import math
import pathlib

import numpy as np
import torch

from .._torch import from_numpy
from ..exceptions import ModelFileError
from ._model_format import (
    _ESTIMATORS,
    _MODULES,
    _NAMEDTUPLES,
    _NUMPY_DTYPES,
    _REBUILD,
    _SCALAR_DTYPES,
    _TORCH_DTYPES,
    _build_module,
    _differing,
    _join,
    _resolve,
)

__all__ = []


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
            differ = _differing(found, expected)
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
