"""The PaDiM paper's VAE baseline: flag the pixels a model of normal images cannot rebuild.

A variational autoencoder is trained on augmented normal images; at test time an image is
encoded, decoded from the mean of its latent code, and the per-pixel L2 reconstruction error
(over colour channels) is the anomaly map, smoothed by :mod:`skpadim.detectors.scoring` like every
other detector's; the image score is its maximum.

This module holds :class:`VAE`, the scikit-learn estimator that builds, trains and applies
the network; the network, its loss, augmentation and training loop are plain torch code in
``_vae_network``.
"""

import os
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted

from .._compat import Interval, _fit_context
from .._torch import ImageModuleMixin, resolve_device, seeded
from .._versioning import VersionedStateMixin
from ..exceptions import ConfigurationError, InvalidImageError
from ..features._geometry import _pair
from ..features._images import as_image_batches
from ..features.backbones import build_trunk
from ._base import MAP_PARAMETER_CONSTRAINTS, AnomalyMapMixin

# train_vae by name: fit looks it up here (tests replace it).
from ._vae_network import ConvVAE, reconstruction_errors, train_vae

__all__ = ["VAE"]

#: Refused: images reaching the VAE with more than this many times its crop's area (it
#: would model the centre and never look at the rest). The paper's 292 -> 256 is 1.3.
_MAX_UNSEEN_FACTOR = 4


class VAE(VersionedStateMixin, ImageModuleMixin, AnomalyMapMixin, BaseEstimator):
    """Variational-autoencoder anomaly detection, the PaDiM paper's VAE baseline.

    ``fit`` trains a :class:`~skpadim.detectors.ConvVAE` (ResNet18 encoder, 8x8 convolutional
    latent for 256x256 inputs, transposed-convolution decoder) on augmented copies of the normal
    training images, minimising reconstruction error plus ``kl_weight`` times the KL
    divergence (the negative ELBO). A test image's anomaly map is the per-pixel L2 norm,
    over colour channels, of its reconstruction error (decoding the latent mean), smoothed
    with a Gaussian filter; its score is the maximum of the map.

    Unlike :class:`~skpadim.PatchGaussian` and :class:`~skpadim.SPADE`, the VAE takes
    images, not features: uint8 ``(n, H, W, 3)`` or ``(n, H, W)``, float ``(n, 3, H, W)``
    in [0, 1], or a list of file paths (see :mod:`skpadim.features`).

    **Training, as in the paper.** Adam with step 1e-4, batches of 32, 100 epochs, each of
    ``n_augmented`` (10,000) images made on the fly from the training images: resized to
    ``resize`` (292), rotated by up to ``rotation`` (2) degrees, cropped at random to
    ``random_crop`` (282) and center-cropped to ``crop`` (256). Drawing fresh augmentations
    every epoch, rather than storing a fixed set of 10,000, keeps memory at the size of the
    training set; the rotation is applied after resizing (the same for square images, up to
    resampling). Test images are resized to ``resize`` and center-cropped to ``crop``, so
    they have the scale the network was trained on. On a CPU the paper's budget takes days;
    small images, fewer epochs or fewer augmented images are the CPU-sized settings.

    **Memory.** Training draws augmentations from every training image in every epoch, so
    ``fit`` holds the training set, resized, as uint8: ``3 * resize**2`` bytes per image
    (256 KB at the paper's 292 px, 25 MB per 100 images). ``score_samples``,
    ``decision_function`` and ``predict`` work ``batch_size`` images at a time;
    ``anomaly_maps`` returns every map, and :func:`skpadim.iter_inspect_images` yields maps
    and scores batch by batch.

    Parameters
    ----------
    latent_channels : int, default=32
        Channels of the convolutional latent code (the paper does not give its depth).
    weights : str, path-like or None, default=None
        Initial encoder weights: None for random initialisation from ``random_state``, a
        torchvision weights name such as "DEFAULT" (downloaded on first use), or a path to a
        ResNet18 state-dict file. The encoder is trained either way.
    resize : int, (int, int) or None, default=292
        Images are first resized to this size (None keeps theirs; they must then share one).
    crop : int or (int, int), default=256
        Size of the network's input: center crop at test time, last crop in training.
    random_crop : int, (int, int) or None, default=282
        Size of the random crop of the augmentation, between ``crop`` and ``resize``; None
        disables random translation.
    rotation : float, default=2.0
        Largest random rotation in degrees; 0 disables it.
    interpolation : {"bicubic", "bilinear", "nearest"}, default="bicubic"
        Resampling filter of the resize (and of the maps, if ``map_size`` differs from
        ``crop``).
    n_epochs : int, default=100
        Training epochs.
    n_augmented : int or None, default=10000
        Augmented images per epoch, at least 2; None makes one augmented copy of each
        training image.
    batch_size : int, default=32
        Images per training step and per scoring pass; at least 2, since the network's
        batch norm layers cannot train on a single image.
    learning_rate : float, default=1e-4
        Adam's step size.
    kl_weight : float, default=1.0
        Weight of the KL term in the loss.
    contamination : float, default=0.01
        Fraction of training images the threshold ``offset_`` flags. It is set from the
        training images' own scores, which are optimistic for new images (the network has
        seen them): expect more than ``contamination`` of new normal images to be flagged.
    map_size : int, (int, int) or None, default=None
        Size of the anomaly maps; None keeps the network's input size ``crop``.
    sigma : float, default=4.0
        Standard deviation of the Gaussian filter on the maps, in pixels. 0 disables it.
    truncate : float, default=4.0
        Filter radius in standard deviations.
    mode : {"reflect", "mirror", "nearest", "constant", "wrap"}, default="reflect"
        Border mode of the filter, in scipy.ndimage's names.
    device : str or torch.device, default="auto"
        "auto" uses CUDA when available, else the CPU. A model trained on a GPU is saved
        with its weights on the CPU, so it loads on any machine; with "auto" it then scores
        on whatever that machine has.
    verbose : bool, default=False
        Show a progress bar over the epochs, with the loss. ``loss_curve_`` is recorded
        either way.
    random_state : int, RandomState instance or None, default=None
        Seeds initialisation, shuffling, augmentation and latent sampling: the same value
        gives the same model on the same device (and thread count, on the CPU).

    Attributes
    ----------
    module_ : ConvVAE
        The trained network, in eval mode.
    loss_curve_ : list of float
        Mean training loss (negative ELBO per image) of each epoch.
    n_iter_ : int
        Epochs run.
    n_samples_fit_ : int
        Number of training images.
    image_size_ : tuple of int
        ``(H, W)`` of the network's input.
    offset_ : float
        Threshold on ``score_samples``; ``decision_function = score_samples - offset_``.
    image_threshold_ : float
        ``-offset_``: images with ``anomaly_scores`` above it are anomalous.
    pixel_threshold_ : float
        Map values above it mark defective pixels; ``image_threshold_`` until
        ``set_thresholds`` fixes it (the image score is the map's maximum).

    See Also
    --------
    make_padim : PaDiM, which needs no training and localises far better.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.detectors import VAE
    >>> rng = np.random.RandomState(0)
    >>> images = rng.randint(0, 256, (6, 40, 40, 3), dtype=np.uint8)
    >>> vae = VAE(resize=36, random_crop=34, crop=32, n_epochs=2, n_augmented=12,
    ...           batch_size=6, random_state=0).fit(images)
    >>> len(vae.loss_curve_), vae.anomaly_maps(images[:2]).shape
    (2, (2, 32, 32))
    >>> vae.predict(images[:2]).shape
    (2,)
    """

    _parameter_constraints = {
        "latent_channels": [Interval(Integral, 1, None, closed="left")],
        "weights": [None, str, os.PathLike],
        "resize": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "crop": [Interval(Integral, 1, None, closed="left"), tuple, list],
        "random_crop": [None, Interval(Integral, 1, None, closed="left"), tuple, list],
        "rotation": [Interval(Real, 0, 180, closed="both")],
        "n_epochs": [Interval(Integral, 1, None, closed="left")],
        # Batch norm cannot train on a batch of one image.
        "n_augmented": [None, Interval(Integral, 2, None, closed="left")],
        "batch_size": [Interval(Integral, 2, None, closed="left")],
        "learning_rate": [Interval(Real, 0, None, closed="neither")],
        "kl_weight": [Interval(Real, 0, None, closed="left")],
        "device": [str, torch.device],
        "verbose": ["boolean"],
        "random_state": ["random_state"],
        **MAP_PARAMETER_CONSTRAINTS,
    }

    def __init__(
        self,
        latent_channels=32,
        weights=None,
        resize=292,
        crop=256,
        random_crop=282,
        rotation=2.0,
        interpolation="bicubic",
        n_epochs=100,
        n_augmented=10000,
        batch_size=32,
        learning_rate=1e-4,
        kl_weight=1.0,
        contamination=0.01,
        map_size=None,
        sigma=4.0,
        truncate=4.0,
        mode="reflect",
        device="auto",
        verbose=False,
        random_state=None,
    ):
        self.latent_channels = latent_channels
        self.weights = weights
        self.resize = resize
        self.crop = crop
        self.random_crop = random_crop
        self.rotation = rotation
        self.interpolation = interpolation
        self.n_epochs = n_epochs
        self.n_augmented = n_augmented
        self.batch_size = batch_size
        self.learning_rate = learning_rate
        self.kl_weight = kl_weight
        self.contamination = contamination
        self.map_size = map_size
        self.sigma = sigma
        self.truncate = truncate
        self.mode = mode
        self.device = device
        self.verbose = verbose
        self.random_state = random_state

    # ------------------------------------------------------------------ fitting
    def _geometry(self, resized):
        """Check ``crop <= random_crop <= resized size``; returns (crop, random_crop)."""
        crop = _pair(self.crop, "crop")
        random_crop = _pair(self.random_crop, "random_crop")
        window = random_crop or resized
        if min(window[0] - crop[0], window[1] - crop[1], resized[0] - window[0],
               resized[1] - window[1]) < 0:
            raise InvalidImageError(
                f"need crop {crop} <= random_crop {random_crop} <= resized image "
                f"{tuple(resized)}; lower crop or random_crop, or raise resize"
            )
        if resized[0] * resized[1] > _MAX_UNSEEN_FACTOR * crop[0] * crop[1]:
            # The network's input is fixed (the crop): of a large image it would model a
            # small centre and never look at the rest.
            seen = crop[0] * crop[1] / (resized[0] * resized[1])
            raise InvalidImageError(
                f"the VAE sees a {crop[0]}x{crop[1]} centre crop: of images reaching it at "
                f"{resized[0]}x{resized[1]} it would inspect {seen:.0%} and ignore the rest. "
                f"Set resize so that the crop covers most of the image (the paper: resize "
                f"292, crop 256), or inspect at native resolution with PaDiM "
                "(make_padim(positions='tile') for surfaces, tile=512 for parts)"
            )
        return crop, random_crop

    def _load(self, X):
        """All training images, resized, as one uint8 tensor (augmentation crops later)."""
        batches = [
            batch.mul(255).round_().to(torch.uint8)
            for batch in as_image_batches(
                X, 64, self.resize, None, self.interpolation
            )
        ]
        sizes = {tuple(b.shape[-2:]) for b in batches}
        if len(sizes) > 1:
            raise InvalidImageError(
                f"training images have different sizes {sorted(sizes)}; set resize so that "
                "they share one"
            )
        return torch.cat(batches)

    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y=None):
        """Train the VAE on normal images.

        Parameters
        ----------
        X : array-like or list of paths
            Normal training images (at least 2), in a form :mod:`skpadim.features`
            accepts.
        y : array-like of shape (n_samples,) or (n_samples, H, W), default=None
            Optional image labels (1 or -1 = anomalous) or masks: anomalous samples are
            left out, so a labelled set can be passed whole (as GridSearchCV's refit does).

        Returns
        -------
        self : VAE
            The fitted estimator.
        """
        self._check_map_size()
        images = self._load(self._normal_samples(X, y))
        crop, random_crop = self._geometry(images.shape[-2:])
        rng = check_random_state(self.random_state)
        encoder_seed, decoder_seed, train_seed = rng.randint(0, 2**31 - 1, size=3)
        encoder = build_trunk("resnet18", ["layer4"], self.weights, seed=int(encoder_seed))
        encoder.train().requires_grad_(True)
        with seeded(int(decoder_seed)):
            module = ConvVAE(encoder, latent_channels=self.latent_channels)
        generator = torch.Generator().manual_seed(int(train_seed))
        self.loss_curve_ = train_vae(
            module, images, crop=crop, random_crop=random_crop, rotation=self.rotation,
            n_epochs=self.n_epochs, n_per_epoch=self.n_augmented or len(images),
            batch_size=self.batch_size, learning_rate=self.learning_rate,
            kl_weight=self.kl_weight, generator=generator, device=resolve_device(self.device),
            verbose=self.verbose,
        )
        if not np.isfinite(self.loss_curve_).all():
            epoch = int(np.flatnonzero(~np.isfinite(self.loss_curve_))[0]) + 1
            raise ConfigurationError(
                f"VAE training diverged: the loss became {self.loss_curve_[epoch - 1]} in "
                f"epoch {epoch}; lower learning_rate (now {self.learning_rate}) or kl_weight "
                f"(now {self.kl_weight})"
            )
        self.module_ = module.eval().requires_grad_(False)
        self.n_iter_ = len(self.loss_curve_)
        self.n_samples_fit_ = len(images)
        self.image_size_ = crop
        # Training images are scored as stored (resized), center-cropped as test images are.
        self._set_offset(np.concatenate([
            self.score_samples(part.float().div_(255).numpy())
            for part in images.split(self.batch_size)
        ]))
        return self

    # ------------------------------------------------------------------ scoring
    def _map_size(self, grid_shape):
        # The error maps are already at the input resolution: keep it unless asked.
        if self.map_size is None:
            return tuple(grid_shape)
        return super()._map_size(grid_shape)

    def reconstruct(self, X):
        """Reconstructions of the images, as the network sees them (resized and cropped).

        Parameters
        ----------
        X : array-like or list of paths
            Images.

        Returns
        -------
        reconstructions : ndarray of shape (n_samples, 3, H, W), dtype float32
            In [0, 1], decoded from the mean latent code.
        """
        check_is_fitted(self)
        return np.concatenate([r.numpy() for _, r in self._reconstructions(X)])

    def _reconstructions(self, X):
        device = resolve_device(self.device)
        module = self.module_.to(device)
        batches = as_image_batches(
            X, self.batch_size, self.resize, self.crop, self.interpolation
        )
        with torch.inference_mode():
            for batch in batches:
                if tuple(batch.shape[-2:]) != self.image_size_:
                    raise InvalidImageError(
                        f"images reach the network at {tuple(batch.shape[-2:])}, not the "
                        f"{self.image_size_} it was trained at; score images preprocessed "
                        "like the training images"
                    )
                x = batch.to(device)
                yield batch, module(x)[0].cpu()

    def _patch_distances(self, X):
        errors = [reconstruction_errors(x, r).numpy() for x, r in self._reconstructions(X)]
        return np.concatenate(errors)

    def patch_distances(self, X):
        """Per-pixel reconstruction errors, before smoothing: the VAE's raw anomaly measure.

        Parameters
        ----------
        X : array-like or list of paths
            Images.

        Returns
        -------
        errors : ndarray of shape (n_samples, H, W), dtype float32
            L2 norm over colour channels of image minus reconstruction, at the network's
            input size. Higher = more anomalous.
        """
        return super().patch_distances(X)

    def anomaly_maps(self, X):
        """Anomaly maps: reconstruction errors, smoothed (and resized to ``map_size``).

        Parameters
        ----------
        X : array-like or list of paths
            Images.

        Returns
        -------
        maps : ndarray of shape (n_samples, H, W), dtype float32
            Higher = more anomalous.
        """
        return super().anomaly_maps(X)
