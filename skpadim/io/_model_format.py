"""The vocabulary of a model file, shared by writing and reading it: the allow-lists of the
classes a file may name, the dtypes its tensors may have, how each network is rebuilt from
its estimator's parameters, and the versions of the libraries that write it.

Both sides check against the same tables, so that what :func:`skpadim.save` writes is
exactly what :func:`skpadim.load` accepts. The names in the tables are the file format's
and never change; the modules they point to are where the code lives now.
"""

import numpy as np
import torch

from .._torch import seeded
from ..exceptions import ModelFileError

__all__ = []

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
    from ..detectors._vae_network import ConvVAE
    from ..features.backbones import build_trunk

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


def _differing(found, expected):
    """Names of two ``{name: (shape, dtype)}`` state dicts that differ (missing, extra, or of
    another shape or dtype), sorted; empty when they match."""
    return sorted(set(found) ^ set(expected)) or sorted(
        k for k in found if found[k] != expected[k])


# ---------------------------------------------------------------------------- versions
def _versions():
    import sklearn

    from .._versioning import skpadim_version

    return {"skpadim": skpadim_version(), "scikit-learn": sklearn.__version__,
            "torch": torch.__version__, "numpy": np.__version__}
