"""skpadim: PaDiM, SPADE and VAE image anomaly detection as scikit-learn estimators.

The PaDiM pipeline chains three estimators, which :func:`make_padim` builds with the
paper's settings::

    BackboneFeatures -> RandomFeatureSelector -> PatchGaussian

:func:`anomaly_maps` gives the per-pixel maps of a fitted pipeline; :mod:`skpadim.metrics`
scores them (image/pixel AUROC, PRO).
"""

from .decomposition import PatchPCA
from .features import BackboneFeatures
from .gaussian import PatchGaussian
from .model_selection import NormalOnlyKFold
from .pipeline import PAPER_CONFIGS, anomaly_maps, fit_in_batches, make_padim
from .selection import RandomFeatureSelector

__version__ = "0.1.0"

__all__ = [
    "BackboneFeatures",
    "RandomFeatureSelector",
    "PatchGaussian",
    "PatchPCA",
    "NormalOnlyKFold",
    "make_padim",
    "anomaly_maps",
    "fit_in_batches",
    "PAPER_CONFIGS",
]
