"""skpadim: PaDiM, SPADE and VAE image anomaly detection as scikit-learn estimators.

The PaDiM pipeline chains three estimators, which :func:`make_padim` builds with the
paper's settings::

    BackboneFeatures -> RandomFeatureSelector -> PatchGaussian

:class:`SPADE` (built by :func:`make_spade`) and :class:`VAE` are the paper's two baselines,
with the same outlier interface. :func:`anomaly_maps` gives the per-pixel maps of any fitted
pipeline or detector; :mod:`skpadim.evaluation` scores them (image/pixel AUROC, PRO).
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

from . import _moved
from ._lazy import attach

# 0.1.0's module paths (skpadim.gaussian, skpadim.metrics, ...) stay importable.
_moved.install()

# The public names and the module each lives in. They are imported on first use (PEP 562),
# so that ``import skpadim`` and ``skpadim --help`` do not pay for importing torch.
_getattr, __dir__, __all__ = attach(__name__, {
    ".features": ["BackboneFeatures", "RandomFeatureSelector", "PatchPCA"],
    ".detectors": ["PatchGaussian", "SPADE", "VAE"],
    ".evaluation": ["NormalOnlyKFold"],
    ".pipeline": ["make_padim", "make_spade", "anomaly_maps", "fit_in_batches", "inspect_images",
                  "iter_inspect_images", "StreamingPipeline", "Inspection", "PAPER_CONFIGS",
                  "PRESETS"],
    ".io": ["save", "load", "export_onnx"],
    "._memory": ["estimate_memory", "MemoryEstimate"],
})

if TYPE_CHECKING:  # what static tools and IDEs see
    from ._memory import MemoryEstimate, estimate_memory
    from .detectors import SPADE, VAE, PatchGaussian
    from .evaluation import NormalOnlyKFold
    from .features import BackboneFeatures, PatchPCA, RandomFeatureSelector
    from .io import export_onnx, load, save
    from .pipeline import (
        PAPER_CONFIGS,
        PRESETS,
        Inspection,
        StreamingPipeline,
        anomaly_maps,
        fit_in_batches,
        inspect_images,
        iter_inspect_images,
        make_padim,
        make_spade,
    )


def __getattr__(name):
    """A public name, or a submodule (``skpadim.evaluation``...) on first use."""
    if not name.startswith("_") and name not in __all__ and importlib.util.find_spec(
            f"{__name__}.{name}"):
        value = importlib.import_module(f".{name}", __name__)
        globals()[name] = value  # once imported, a plain attribute
        return value
    return _getattr(name)
