"""Reading a model file's content: the ``_Decoder`` rebuilds the model from the JSON
tree that ``_encode`` wrote, one method per tag, taking each tensor from the open file.

Nothing outside the allow-lists is ever built: classes are looked up by their stored name,
estimators are made with ``cls(**params)`` and ``__setstate__``, networks are rebuilt from
their owner's parameters before they take the stored weights. Whatever does not fit (an
unknown tag or class, a missing or unused tensor, a tensor of another shape or dtype)
raises :class:`~skpadim.exceptions.ModelFileError` naming where in the model it is.
"""

import pathlib

import numpy as np
import torch

from ..exceptions import ModelFileError
from ._model_format import (
    _ESTIMATORS,
    _MODULES,
    _NAMEDTUPLES,
    _NUMPY_DTYPES,
    _SCALAR_DTYPES,
    _TORCH_DTYPES,
    _build_module,
    _differing,
    _join,
    _resolve,
    _versions,
)

__all__ = []


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
        # Fields with defaults may be missing: files written before they were added.
        required = set(cls._fields) - set(cls._field_defaults)
        if not required <= set(items) <= set(cls._fields):
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
            differ = _differing(found, expected)
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
