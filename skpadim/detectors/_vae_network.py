"""The VAE baseline's network and its training: a torch model and plain functions.

- :class:`~skpadim.detectors.ConvVAE`, the torch model: a ResNet18 trunk as encoder, 1x1
  convolutions to the mean and log-variance of a convolutional latent (8x8 for a 256x256
  input), and a decoder of transposed convolutions back to the input resolution;
- :func:`elbo_loss`, :func:`augment_batch` and :func:`reconstruction_errors`, plain functions;
- :func:`train_vae`, the training loop.

None of them knows about scikit-learn: :class:`~skpadim.VAE`, the estimator, builds, trains
and applies them.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from ..exceptions import InvalidImageError

__all__ = [
    "ConvVAE",
    "elbo_loss",
    "augment_batch",
    "reconstruction_errors",
    "train_vae",
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
        :class:`~skpadim.features.backbones.FeatureTrunk`, which normalises its input itself).
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
    skpadim.VAE : The scikit-learn estimator that builds and trains this model.

    Examples
    --------
    >>> import torch
    >>> from skpadim.features.backbones import build_trunk
    >>> from skpadim.detectors import ConvVAE
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
    >>> from skpadim.detectors import elbo_loss
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
    >>> from skpadim.detectors import reconstruction_errors
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
    :func:`skpadim.features.resize_and_crop` takes at test time.

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
    >>> from skpadim.detectors import augment_batch
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
    >>> from skpadim.features.backbones import FeatureTrunk
    >>> from skpadim.detectors import ConvVAE, train_vae
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
