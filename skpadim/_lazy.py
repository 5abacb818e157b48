"""Package namespaces whose names are imported on first use (PEP 562).

``import skpadim`` and ``skpadim --help`` must not pay for importing torch, and a
sub-package such as :mod:`skpadim.io` holds both light modules (per-image outputs) and heavy
ones (ONNX export): each ``__init__`` lists its public names and the private module that
defines each, and a name's module is imported when the name is first read.
"""

import importlib

__all__ = ["attach"]


def attach(package, exports):
    """``(__getattr__, __dir__, __all__)`` for ``package`` from ``{module: [names]}``.

    ``module`` is relative to ``package`` (``"._metrics"``). Once read, a name is stored in
    the package's namespace, so later reads are plain attribute lookups.
    """
    where = {name: module for module, names in exports.items() for name in names}
    namespace = importlib.import_module(package).__dict__

    def __getattr__(name):
        if name not in where:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(where[name], package), name)
        namespace[name] = value
        return value

    def __dir__():
        return sorted(set(namespace) | set(where))

    return __getattr__, __dir__, list(where)
