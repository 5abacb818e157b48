"""The module paths of skpadim 0.1.0 that moved into sub-packages, kept importable.

Until 0.1.0 every module sat directly under ``skpadim/``. The code now lives in
sub-packages by role (:mod:`skpadim.features`, :mod:`skpadim.detectors`,
:mod:`skpadim.evaluation`, :mod:`skpadim.io`), and the old paths keep working, so that
scripts, documentation links and ``joblib`` pickles (which name each class by the module it
was defined in) written for 0.1.0 still import and load:

============================  ====================================================
0.1.0 path                    where the code lives now
============================  ====================================================
``skpadim.preprocessing``     :mod:`skpadim.features`
``skpadim.backbones``         :mod:`skpadim.features.backbones`
``skpadim.selection``         :mod:`skpadim.features`
``skpadim.decomposition``     :mod:`skpadim.features`
``skpadim.gaussian``          :mod:`skpadim.detectors`
``skpadim.shrinkage``         :mod:`skpadim.detectors`
``skpadim.spade``             :mod:`skpadim.detectors` (``make_spade``: top level)
``skpadim.vae``               :mod:`skpadim.detectors`
``skpadim.scoring``           :mod:`skpadim.detectors.scoring`
``skpadim.metrics``           :mod:`skpadim.evaluation`
``skpadim.thresholds``        :mod:`skpadim.evaluation`
``skpadim.model_selection``   :mod:`skpadim.evaluation`
``skpadim.report``            :mod:`skpadim.evaluation`
``skpadim.persistence``       :mod:`skpadim.io`
``skpadim.export``            :mod:`skpadim.io`
``skpadim.outputs``           :mod:`skpadim.io`
============================  ====================================================

(``skpadim.features`` itself kept its name: it is now the sub-package.)

An old path is an alias module: reading a name from it reads the same object from the
private modules that now define its code (its ``__all__`` is the one of 0.1.0), so
``skpadim.gaussian.PatchGaussian is skpadim.PatchGaussian``. Setting a name on an alias is
refused, with the module to set it on instead: ``monkeypatch.setattr(skpadim.spade, ...)`` would
otherwise change nothing that the code reads.
"""

import importlib
import importlib.abc
import importlib.util
import sys
import types

__all__ = ["MOVED", "install"]

#: ``{0.1.0 module path: modules that now define its names}``. A module stands for the names
#: of its ``__all__``, or, as ``"module:name name"``, for the names listed; together they are
#: the old path's ``__all__``, as it was in 0.1.0.
MOVED = {
    "skpadim.preprocessing": ("skpadim.features._images", "skpadim.features._image_files",
                              "skpadim.features._geometry:resize_and_crop restore_geometry "
                              "transform_masks"),
    "skpadim.backbones": ("skpadim.features.backbones",),
    # Private, but pickles of Lite0 models name its network classes by this path.
    "skpadim.backbones._lite0": ("skpadim.features.backbones._lite0",),
    "skpadim.selection": ("skpadim.features._selection",),
    "skpadim.decomposition": ("skpadim.features._decomposition",),
    "skpadim.gaussian": ("skpadim.detectors._gaussian", "skpadim.detectors._moments",
                         "skpadim.detectors._packed", "skpadim.detectors._mahalanobis"),
    "skpadim.shrinkage": ("skpadim.detectors._shrinkage",),
    "skpadim.spade": ("skpadim.detectors._spade", "skpadim.detectors._neighbors",
                      "skpadim.pipeline:make_spade"),
    "skpadim.vae": ("skpadim.detectors._vae", "skpadim.detectors._vae_network"),
    "skpadim.scoring": ("skpadim.detectors.scoring:INTERPOLATIONS BORDER_MODES upsample_maps "
                        "gaussian_smooth anomaly_maps image_scores",),
    "skpadim.metrics": ("skpadim.evaluation._metrics", "skpadim.evaluation._scorers"),
    "skpadim.thresholds": ("skpadim.evaluation._thresholds",
                           "skpadim.evaluation._pixel_histogram"),
    "skpadim.model_selection": ("skpadim.evaluation._model_selection",),
    "skpadim.report": ("skpadim.evaluation._report", "skpadim.evaluation._scored",
                       "skpadim.evaluation._curves", "skpadim.evaluation._overlay",
                       "skpadim.evaluation._legends", "skpadim.evaluation._pictures"),
    "skpadim.persistence": ("skpadim.io._persistence",),
    "skpadim.export": ("skpadim.io._onnx",),
    "skpadim.outputs": ("skpadim.io._results", "skpadim.io._maps"),
}


class MovedModule(types.ModuleType):
    """A 0.1.0 module path whose names now live in ``targets``."""

    def __init__(self, name, targets):
        modules = tuple(target.partition(":")[0] for target in targets)
        super().__init__(name, f"Moved: the names of {name} now live in {', '.join(modules)}.")
        # Old packages (skpadim.backbones) had submodules; an empty path lets the import
        # system ask MOVED for them instead of calling the alias "not a package".
        self.__dict__.update(_targets=modules, _listed=targets, __path__=[])

    def _modules(self):
        return [importlib.import_module(target) for target in self._targets]

    def __getattr__(self, name):
        if name.startswith("__") and name != "__all__":
            raise AttributeError(name)
        if name == "__all__":
            names = []
            for target, module in zip(self._listed, self._modules()):
                listed = target.partition(":")[2].split()
                names.extend(listed or getattr(module, "__all__", []))
            return names
        for module in self._modules():
            if hasattr(module, name):
                return getattr(module, name)
        raise AttributeError(f"module {self.__name__!r} (now {', '.join(self._targets)}) "
                             f"has no attribute {name!r}")

    def __setattr__(self, name, value):
        if name.startswith("__") or isinstance(value, types.ModuleType):
            super().__setattr__(name, value)  # what the import system itself sets
            return
        owner = next((m.__name__ for m in self._modules() if hasattr(m, name)),
                     self._targets[0])
        raise AttributeError(
            f"{self.__name__} is the old path of {', '.join(self._targets)}; setting "
            f"{name!r} here would change nothing the code reads: set it on {owner}")

    def __dir__(self):
        return sorted(set(self.__all__) | set(super().__dir__()))


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, fullname, path=None, target=None):
        if fullname in MOVED:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        return MovedModule(spec.name, MOVED[spec.name])

    def exec_module(self, module):
        pass


def install():
    """Make the old paths importable (``import skpadim`` calls this once)."""
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        # First, so that a stale 0.1.0 file left in an old install cannot shadow an alias.
        sys.meta_path.insert(0, _Finder())
