"""The outlier detectors that model feature maps, and the maths under them.

- :class:`~skpadim.PatchGaussian`: PaDiM's Gaussian per patch position, fitted from
  streamed, mergeable moments (:class:`PatchMoments`) with an empirical or shrunk
  (:func:`oas_shrinkage`, :func:`ledoit_wolf_shrinkage`) covariance, stored as Cholesky
  factors of the precisions (:func:`precision_cholesky`) and scored by :func:`mahalanobis`;
- :class:`~skpadim.SPADE`: nearest training images, then nearest patches among them
  (:func:`nearest_neighbors`);
- :class:`~skpadim.VAE`: a variational autoencoder whose reconstruction error is the map
  (:class:`ConvVAE`, :func:`train_vae`).

All three turn their patch distances into pixel maps and image scores with one shared
module, :mod:`skpadim.detectors.scoring`, and share sklearn's outlier interface
(``score_samples``, ``decision_function``, ``predict``) and the thresholds built on it.
"""

from typing import TYPE_CHECKING

from .._lazy import attach

__getattr__, __dir__, __all__ = attach(__name__, {
    "._gaussian": ["PatchGaussian"],
    "._moments": ["PatchMoments"],
    "._mahalanobis": ["precision_cholesky", "mahalanobis", "leave_one_out_distances"],
    "._packed": ["pack_upper", "unpack_symmetric", "unpack_upper"],
    "._shrinkage": ["covariance_traces", "ledoit_wolf_shrinkage", "oas_shrinkage",
                    "shrunk_covariance"],
    "._spade": ["SPADE", "SPADE_LAYERS", "PIXEL_CALIBRATION_IMAGES"],
    "._neighbors": ["nearest_neighbors"],
    "._vae": ["VAE"],
    "._vae_network": ["ConvVAE", "augment_batch", "elbo_loss", "reconstruction_errors",
                      "train_vae"],
})

if TYPE_CHECKING:  # what static tools and IDEs see
    from ._gaussian import PatchGaussian
    from ._mahalanobis import leave_one_out_distances, mahalanobis, precision_cholesky
    from ._moments import PatchMoments
    from ._neighbors import nearest_neighbors
    from ._packed import pack_upper, unpack_symmetric, unpack_upper
    from ._shrinkage import (
        covariance_traces,
        ledoit_wolf_shrinkage,
        oas_shrinkage,
        shrunk_covariance,
    )
    from ._spade import PIXEL_CALIBRATION_IMAGES, SPADE, SPADE_LAYERS
    from ._vae import VAE
    from ._vae_network import ConvVAE, augment_batch, elbo_loss, reconstruction_errors, train_vae
