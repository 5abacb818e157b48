"""skpadim: PaDiM, SPADE and VAE image anomaly detection as scikit-learn estimators.

The PaDiM pipeline chains three estimators, which :func:`make_padim` builds with the
paper's settings::

    BackboneFeatures -> RandomFeatureSelector -> PatchGaussian

:class:`SPADE` (built by :func:`make_spade`) and :class:`VAE` are the paper's two baselines,
with the same outlier interface. :func:`anomaly_maps` gives the per-pixel maps of any fitted
pipeline or detector; :mod:`skpadim.metrics` scores them (image/pixel AUROC, PRO).
"""

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

__version__ = "0.1.0"

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
