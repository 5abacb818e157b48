"""skpadim: PaDiM, SPADE and VAE image anomaly detection as scikit-learn estimators.

The PaDiM pipeline chains three estimators, which :func:`make_padim` builds with the
paper's settings::

    BackboneFeatures -> RandomFeatureSelector -> PatchGaussian

:class:`SPADE` (built by :func:`make_spade`) and :class:`VAE` are the paper's two baselines,
with the same outlier interface. :func:`anomaly_maps` gives the per-pixel maps of any fitted
pipeline or detector; :mod:`skpadim.metrics` scores them (image/pixel AUROC, PRO).
"""

import importlib
import importlib.util
from typing import TYPE_CHECKING

__version__ = "0.1.0"

# The public names and the submodule each lives in. They are imported on first use (PEP 562),
# so that ``import skpadim`` and ``skpadim --help`` do not pay for importing torch.
_EXPORTS = {
    "BackboneFeatures": "features",
    "RandomFeatureSelector": "selection",
    "PatchGaussian": "gaussian",
    "PatchPCA": "decomposition",
    "SPADE": "spade",
    "VAE": "vae",
    "NormalOnlyKFold": "model_selection",
    "make_padim": "pipeline",
    "make_spade": "spade",
    "save": "persistence",
    "load": "persistence",
    "anomaly_maps": "pipeline",
    "fit_in_batches": "pipeline",
    "export_onnx": "export",
    "inspect_images": "pipeline",
    "iter_inspect_images": "pipeline",
    "StreamingPipeline": "pipeline",
    "Inspection": "pipeline",
    "PAPER_CONFIGS": "pipeline",
    "PRESETS": "pipeline",
}

if TYPE_CHECKING:  # what static tools and IDEs see
    from .decomposition import PatchPCA
    from .export import export_onnx
    from .features import BackboneFeatures
    from .gaussian import PatchGaussian
    from .model_selection import NormalOnlyKFold
    from .persistence import load, save
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
    )
    from .selection import RandomFeatureSelector
    from .spade import SPADE, make_spade
    from .vae import VAE


def __getattr__(name):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}"):
        value = importlib.import_module(f".{name}", __name__)  # skpadim.metrics, ...
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # once imported, a plain attribute
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


__all__ = [
    "BackboneFeatures",
    "RandomFeatureSelector",
    "PatchGaussian",
    "PatchPCA",
    "SPADE",
    "VAE",
    "NormalOnlyKFold",
    "make_padim",
    "make_spade",
    "save",
    "load",
    "anomaly_maps",
    "fit_in_batches",
    "export_onnx",
    "inspect_images",
    "iter_inspect_images",
    "StreamingPipeline",
    "Inspection",
    "PAPER_CONFIGS",
    "PRESETS",
]
