"""The PaDiM paper's VAE baseline: flag the pixels a model of normal images cannot rebuild.

A variational autoencoder is trained on augmented normal images; at test time an image is
encoded, decoded from the mean of its latent code, and the per-pixel L2 reconstruction error
(over colour channels) is the anomaly map, smoothed by :mod:`skpadim.scoring` like every other
detector's; the image score is its maximum.

The parts are kept apart, as the style of this package asks:

- :class:`~skpadim.vae.ConvVAE`, the torch model: a ResNet18 trunk as encoder, 1x1 convolutions to the mean
  and log-variance of a convolutional latent (8x8 for a 256x256 input), and a decoder of
  transposed convolutions back to the input resolution;
- :func:`elbo_loss`, :func:`augment_batch` and :func:`reconstruction_errors`, plain functions;
- :func:`train_vae`, the training loop;
- :class:`VAE`, the scikit-learn estimator that builds, trains and applies them.
"""

import math
import os
from numbers import Integral, Real

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.base import BaseEstimator
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_is_fitted
from torch import nn
from tqdm.auto import tqdm

from ..features import _preprocessing as preprocessing
from .._compat import Interval, _fit_context
from ._base import MAP_PARAMETER_CONSTRAINTS, AnomalyMapMixin
from .._torch import ImageModuleMixin, resolve_device, seeded
from .._versioning import VersionedStateMixin
from ..features.backbones import build_trunk
from ..exceptions import ConfigurationError, InvalidImageError

__all__ = [
    "ConvVAE",
    "elbo_loss",
    "augment_batch",
    "reconstruction_errors",
    "train_vae",
    "VAE",
]

_ENCODER_CHANNELS = 512  # ResNet18's layer4
_ENCODER_STRIDE = 32


class ConvVAE(nn.Module):
    """Variational autoencoder with a convolutional latent.

    Parameters
    ----------
    encoder : torch.nn.Module
        Maps ``(n, 3, H, W)`` images in [0, 1] to a list whose last element is the
        ``(n, encoder_channels, H / 2**n_upsamplings, W / 2**n_upsamplings)`` code (a
        :class:`~skpadim.backbones.FeatureTrunk`, which normalises its input itself).
    latent_channels : int, default=32
        Channels of the latent code.
    encoder_channels : int, default=512
        Channels of the encoder's output.
    n_upsamplings : int, default=5
        Stride-2 transposed convolutions in the decoder: 5 undoes ResNet's stride 32.
    base_channels : int, default=16
        Width of the last decoder stage; each earlier stage doubles it.

    Attributes
    ----------
    encoder : torch.nn.Module
        As given.
    mu, logvar : torch.nn.Conv2d
        1x1 convolutions from the code to the latent mean and log-variance.
    decoder : torch.nn.Sequential
        Latent code to ``(n, 3, H, W)`` images in [0, 1].

    See Also
    --------
    VAE : The scikit-learn estimator that builds and trains this model.

    Examples
    --------
    >>> import torch
    >>> from skpadim.backbones import build_trunk
    >>> from skpadim.vae import ConvVAE
    >>> encoder = build_trunk("resnet18", ["layer4"], weights=None)
    >>> model = ConvVAE(encoder, latent_channels=4).eval()
    >>> x = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    >>> with torch.no_grad():
    ...     reconstruction, mu, logvar = model(x)
    >>> tuple(reconstruction.shape), tuple(mu.shape)              # stride 32: a 2 x 2 code
    ((2, 3, 64, 64), (2, 4, 2, 2))
    >>> bool(reconstruction.min() >= 0 and reconstruction.max() <= 1)
    True
    """

    def __init__(self, encoder, latent_channels=32, encoder_channels=_ENCODER_CHANNELS,
                 n_upsamplings=5, base_channels=16):
        super().__init__()
        self.encoder = encoder
        self.mu = nn.Conv2d(encoder_channels, latent_channels, 1)
        self.logvar = nn.Conv2d(encoder_channels, latent_channels, 1)
        widths = [base_channels * 2**i for i in range(n_upsamplings, -1, -1)]
        layers = [nn.Conv2d(latent_channels, widths[0], 3, padding=1, bias=False),
                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(widths[-1], 3, 3, padding=1), nn.Sigmoid()]
        self.decoder = nn.Sequential(*layers)

    def encode(self, x):
        """Mean and log-variance of the latent code, each ``(n, latent_channels, h, w)``."""
        code = self.encoder(x)[-1]
        return self.mu(code), self.logvar(code)

    def decode(self, z, size):
        """Images in [0, 1] of spatial ``size`` from latent codes."""
        out = self.decoder(z)
        if tuple(out.shape[-2:]) != tuple(size):  # inputs that are not a multiple of 32
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return out

    def forward(self, x, generator=None):
        """Reconstruct ``x``; returns ``(reconstruction, mu, logvar)``.

        With a ``generator``, the latent code is sampled (the reparameterisation
        ``mu + eps * exp(logvar / 2)``, ``eps`` drawn from it on the CPU so that training is
        reproducible on any device); without, the mean code is decoded, as for scoring.
        """
        mu, logvar = self.encode(x)
        z = mu
        if generator is not None:
            eps = torch.randn(mu.shape, generator=generator).to(mu.device)
            z = mu + eps * torch.exp(0.5 * logvar)
        return self.decode(z, x.shape[-2:]), mu, logvar


def elbo_loss(x, reconstruction, mu, logvar, kl_weight=1.0):
    """Negative evidence lower bound per image, averaged over the batch.

    Reconstruction term: the squared error summed over pixels and channels (a Gaussian
    likelihood of fixed variance); regulariser: the KL divergence of the latent posterior
    ``N(mu, exp(logvar))`` from ``N(0, 1)``, summed over the latent code.

    Parameters
    ----------
    x, reconstruction : torch.Tensor of shape (n, 3, H, W)
    mu, logvar : torch.Tensor of shape (n, c, h, w)
    kl_weight : float, default=1.0
        Weight of the KL term (1 is the ELBO proper).

    Returns
    -------
    loss : torch.Tensor, scalar

    Examples
    --------
    >>> import torch
    >>> from skpadim.vae import elbo_loss
    >>> x = torch.zeros(2, 3, 4, 4)
    >>> float(elbo_loss(x, x + 0.5, torch.zeros(2, 1, 1, 1), torch.zeros(2, 1, 1, 1)))
    12.0
    """
    reconstruction_term = (reconstruction - x).square().flatten(1).sum(dim=1)
    kl = 0.5 * (mu.square() + logvar.exp() - 1.0 - logvar).flatten(1).sum(dim=1)
    return (reconstruction_term + kl_weight * kl).mean()


def reconstruction_errors(x, reconstruction):
    """Per-pixel L2 norm of the reconstruction error over channels: ``(n, H, W)``.

    Parameters
    ----------
    x, reconstruction : torch.Tensor of shape (n, c, H, W)
        Images and their reconstructions.

    Returns
    -------
    errors : torch.Tensor of shape (n, H, W)
        ``||x - reconstruction||`` over the channels at each pixel.

    Examples
    --------
    >>> import torch
    >>> from skpadim.vae import reconstruction_errors
    >>> x = torch.zeros(1, 3, 2, 2)
    >>> reconstruction = x.clone()
    >>> reconstruction[0, :, 0, 1] = torch.tensor([3.0, 4.0, 0.0])
    >>> reconstruction_errors(x, reconstruction).tolist()
    [[[0.0, 5.0], [0.0, 0.0]]]
    """
    return torch.linalg.vector_norm(x - reconstruction, dim=1)


def augment_batch(images, generator, crop, random_crop=None, rotation=0.0):
    """Random rotation, random crop and center crop of a batch, in one resampling.

    The paper's recipe, on images already resized: rotate by an angle drawn uniformly in
    ``[-rotation, rotation]`` degrees, crop a ``random_crop`` window at a random place, then
    keep its central ``crop``. All three are one affine map, applied with a single bilinear
    ``torch.nn.functional.grid_sample`` (reflecting at the borders, so rotated corners
    are never black). Without rotation the crops are exact pixel copies, and with
    ``random_crop=None`` the result is the center crop that
    :func:`skpadim.preprocessing.resize_and_crop` takes at test time.

    Parameters
    ----------
    images : torch.Tensor of shape (n, 3, H, W)
        uint8 (0-255) or float (0-1) images.
    generator : torch.Generator
        CPU generator all random draws come from.
    crop : (int, int)
        Output size.
    random_crop : (int, int) or None, default=None
        Size of the random window, between ``crop`` and ``(H, W)``; None: no translation.
    rotation : float, default=0.0
        Largest rotation in degrees.

    Returns
    -------
    batch : torch.Tensor of shape (n, 3, crop[0], crop[1]), float32 in [0, 1]

    Examples
    --------
    >>> import torch
    >>> from skpadim.vae import augment_batch
    >>> images = torch.arange(2 * 3 * 8 * 8, dtype=torch.float32).reshape(2, 3, 8, 8) / 400
    >>> out = augment_batch(images, torch.Generator().manual_seed(0), (4, 4))
    >>> bool(torch.allclose(out, images[..., 2:6, 2:6]))
    True
    """
    x = images.float().div_(255) if images.dtype == torch.uint8 else images.float()
    n, _, height, width = x.shape
    crop_h, crop_w = crop
    window_h, window_w = random_crop or (height, width)
    if not (crop_h <= window_h <= height and crop_w <= window_w <= width):
        raise InvalidImageError(
            f"need crop {tuple(crop)} <= random_crop {random_crop and tuple(random_crop)} <= "
            f"images {(height, width)}; lower crop or random_crop, or resize the images"
        )
    if random_crop is None:
        top = torch.full((n,), float((height - crop_h) // 2))
        left = torch.full((n,), float((width - crop_w) // 2))
    else:
        # A random window, then its center crop, placed as resize_and_crop places one.
        top = torch.randint(0, height - window_h + 1, (n,), generator=generator).float()
        left = torch.randint(0, width - window_w + 1, (n,), generator=generator).float()
        top += (window_h - crop_h) // 2
        left += (window_w - crop_w) // 2
    # Offset of the crop's centre from the image's centre, in pixels.
    ty = top + crop_h / 2 - height / 2
    tx = left + crop_w / 2 - width / 2
    angle = (torch.rand(n, generator=generator) * 2 - 1) * math.radians(rotation)
    cos, sin = angle.cos(), angle.sin()
    theta = torch.stack([
        torch.stack([cos * crop_w / width, -sin * crop_h / width, 2 * tx / width], dim=1),
        torch.stack([sin * crop_w / height, cos * crop_h / height, 2 * ty / height], dim=1),
    ], dim=1).to(x.device)
    grid = F.affine_grid(theta, (n, 3, crop_h, crop_w), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    return out.clamp_(0, 1)


def _epoch_batches(n_images, n_per_epoch, batch_size, generator):
    """Indices of the images of each batch of one epoch: shuffled passes over the training
    set, as many as needed for ``n_per_epoch`` images. A last batch of one image joins the
    previous one (batch norm cannot train on a single image)."""
    passes = math.ceil(n_per_epoch / n_images)
    order = torch.cat([torch.randperm(n_images, generator=generator) for _ in range(passes)])
    batches = list(order[:n_per_epoch].split(batch_size))
    if len(batches) > 1 and len(batches[-1]) == 1:
        batches[-2:] = [torch.cat(batches[-2:])]
    return batches


def _adam(parameters, learning_rate):
    """Adam; its fused kernel (torch >= 2.4 on the CPU) when available: the same updates,
    several times faster than the default per-tensor loop on a 14-million-parameter model."""
    parameters = list(parameters)
    try:
        return torch.optim.Adam(parameters, lr=learning_rate, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, lr=learning_rate)


def train_vae(module, images, *, crop, random_crop, rotation, n_epochs, n_per_epoch,
              batch_size, learning_rate, kl_weight, generator, device, verbose=False):
    """Train ``module`` with Adam on freshly augmented batches; returns the loss per epoch.

    Parameters
    ----------
    module : ConvVAE
        Trained in place, on ``device``.
    images : torch.Tensor of shape (n, 3, H, W), uint8
        Resized training images, on the CPU; batches are augmented with
        :func:`augment_batch` and moved to ``device``.
    crop : (int, int)
        Size of the network's input; see :func:`augment_batch`.
    random_crop : (int, int) or None
        Size of the random crop; see :func:`augment_batch`.
    rotation : float
        Largest random rotation in degrees; see :func:`augment_batch`.
    n_epochs : int
        Epochs.
    n_per_epoch : int
        Augmented images per epoch, drawn by shuffled passes over ``images``.
    batch_size : int
        Images per step (a last batch of one image joins the one before).
    learning_rate : float
        Adam's step size.
    kl_weight : float
        Weight of :func:`elbo_loss`'s KL term.
    generator : torch.Generator
        CPU generator for shuffling, augmentation and latent sampling.
    device : torch.device
        Where ``module`` is moved and trained.
    verbose : bool, default=False
        Show a progress bar.

    Returns
    -------
    loss_curve : list of float
        Mean :func:`elbo_loss` over each epoch's images.

    Examples
    --------
    A tiny stride-8 encoder stands in for ResNet18, so the example trains in milliseconds:

    >>> import torch
    >>> from torch import nn
    >>> from skpadim.backbones import FeatureTrunk
    >>> from skpadim.vae import ConvVAE, train_vae
    >>> images = torch.randint(0, 256, (4, 3, 36, 36), dtype=torch.uint8,
    ...                        generator=torch.Generator().manual_seed(0))
    >>> encoder = FeatureTrunk([("conv", nn.Conv2d(3, 16, 8, stride=8))], ["conv"],
    ...                        mean=(0.5,) * 3, std=(0.25,) * 3)
    >>> module = ConvVAE(encoder, latent_channels=4, encoder_channels=16, n_upsamplings=3)
    >>> curve = train_vae(module, images, crop=(32, 32), random_crop=(34, 34), rotation=2.0,
    ...                   n_epochs=1, n_per_epoch=4, batch_size=4, learning_rate=1e-3,
    ...                   kl_weight=1.0, generator=torch.Generator().manual_seed(0),
    ...                   device=torch.device("cpu"))
    >>> len(curve), curve[0] > 0, module.training
    (1, True, True)
    """
    module.to(device).train()
    optimizer = _adam(module.parameters(), learning_rate)
    curve = []
    with tqdm(range(n_epochs), disable=not verbose, desc="VAE", unit="epoch") as bar:
        for _ in bar:
            total, count = 0.0, 0
            for index in _epoch_batches(len(images), n_per_epoch, batch_size, generator):
                x = augment_batch(images[index], generator, crop, random_crop, rotation)
                x = x.to(device)
                reconstruction, mu, logvar = module(x, generator=generator)
                loss = elbo_loss(x, reconstruction, mu, logvar, kl_weight)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += float(loss.detach()) * len(index)
                count += len(index)
            curve.append(total / count)
            bar.set_postfix(loss=f"{curve[-1]:.4g}")
    return curve


class VAE(VersionedStateMixin, ImageModuleMixin, AnomalyMapMixin, BaseEstimator):
    """Variational-autoencoder anomaly detection, the PaDiM paper's VAE baseline.

    ``fit`` trains a :class:`~skpadim.vae.ConvVAE` (ResNet18 encoder, 8x8 convolutional latent for
    256x256 inputs, transposed-convolution decoder) on augmented copies of the normal
    training images, minimising reconstruction error plus ``kl_weight`` times the KL
    divergence (the negative ELBO). A test image's anomaly map is the per-pixel L2 norm,
    over colour channels, of its reconstruction error (decoding the latent mean), smoothed
    with a Gaussian filter; its score is the maximum of the map.

    Unlike :class:`~skpadim.PatchGaussian` and :class:`~skpadim.spade.SPADE`, the VAE takes
    images, not features: uint8 ``(n, H, W, 3)`` or ``(n, H, W)``, float ``(n, 3, H, W)``
    in [0, 1], or a list of file paths (see :mod:`skpadim.preprocessing`).

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
    >>> from skpadim.vae import VAE
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
        crop = preprocessing._pair(self.crop, "crop")
        random_crop = preprocessing._pair(self.random_crop, "random_crop")
        window = random_crop or resized
        if min(window[0] - crop[0], window[1] - crop[1], resized[0] - window[0],
               resized[1] - window[1]) < 0:
            raise InvalidImageError(
                f"need crop {crop} <= random_crop {random_crop} <= resized image "
                f"{tuple(resized)}; lower crop or random_crop, or raise resize"
            )
        return crop, random_crop

    def _load(self, X):
        """All training images, resized, as one uint8 tensor (augmentation crops later)."""
        batches = [
            batch.mul(255).round_().to(torch.uint8)
            for batch in preprocessing.as_image_batches(
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
            Normal training images (at least 2), in a form :mod:`skpadim.preprocessing`
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
        batches = preprocessing.as_image_batches(
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
