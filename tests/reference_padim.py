"""An independent PaDiM written the way anomalib and the original code write it.

It keeps every training embedding in memory, estimates covariances from the stacked array,
inverts them explicitly with ``torch.linalg.inv`` and scores with the inverse: the recipe of
anomalib's Padim (FACTS.md section 3). The tests use it as the reference for parity, and
``benchmarks/bench_padim.py`` as the baseline that skpadim must beat on memory and size.
Nothing here imports skpadim.
"""

import numpy as np
import torch
import torch.nn.functional as F
import torchvision

IMAGENET_MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
IMAGENET_STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


class ReferencePadim:
    """anomalib-style PaDiM on a torchvision ResNet18 state dict."""

    def __init__(self, state_dict, feature_indices, image_size=256):
        self.model = torchvision.models.resnet18()
        self.model.load_state_dict(state_dict)
        self.model.eval()
        self.idx = torch.as_tensor(feature_indices)
        self.image_size = image_size

    def _images(self, images_uint8):
        x = torch.from_numpy(np.ascontiguousarray(images_uint8)).permute(0, 3, 1, 2).float() / 255
        x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                          align_corners=False, antialias=True)
        return x

    @torch.no_grad()
    def embed(self, images_uint8):
        m = self.model
        x = (self._images(images_uint8) - IMAGENET_MEAN) / IMAGENET_STD
        x = m.maxpool(m.relu(m.bn1(m.conv1(x))))
        f1 = m.layer1(x)
        f2 = m.layer2(f1)
        f3 = m.layer3(f2)
        size = f1.shape[-2:]
        emb = torch.cat([f1, F.interpolate(f2, size=size, mode="nearest"),
                         F.interpolate(f3, size=size, mode="nearest")], dim=1)
        return torch.index_select(emb, 1, self.idx)

    def fit(self, images_uint8, batch_size=32):
        return self.fit_batches(images_uint8[i : i + batch_size]
                                for i in range(0, len(images_uint8), batch_size))

    def fit_batches(self, batches):
        """Fit on an iterable of uint8 image batches; all embeddings are kept, as anomalib
        does."""
        self.embeddings = torch.cat([self.embed(batch) for batch in batches])
        n, d, h, w = self.embeddings.shape
        e = self.embeddings.reshape(n, d, h * w)
        self.mean = e.mean(dim=0)
        centred = e - self.mean
        cov = torch.einsum("ndp,nep->pde", centred, centred) / (n - 1)
        cov += 0.01 * torch.eye(d)
        cov += 1e-5 * torch.eye(d)
        self.inv_covariance = torch.linalg.inv(cov)
        self.grid = (h, w)
        return self

    def distances(self, images_uint8):
        return self.distances_from_embeddings(self.embed(images_uint8))

    @torch.no_grad()
    def anomaly_maps(self, images_uint8, sigma=4.0):
        return self.maps_from_distances(self.distances(images_uint8), sigma)

    @torch.no_grad()
    def distances_from_embeddings(self, e):
        n, d, h, w = e.shape
        delta = (e.reshape(n, d, h * w) - self.mean).permute(2, 0, 1)  # (p, n, d)
        d2 = torch.einsum("pnd,pde,pne->pn", delta, self.inv_covariance, delta)
        return d2.clamp(min=0).sqrt().T.reshape(n, h, w)

    @torch.no_grad()
    def maps_from_distances(self, dist, sigma=4.0):
        dist = dist[:, None]
        maps = F.interpolate(dist, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)
        radius = int(4 * sigma + 0.5)
        x = torch.arange(-radius, radius + 1, dtype=torch.float32)
        k1 = torch.exp(-(x**2) / (2 * sigma**2))
        k1 = k1 / k1.sum()
        kernel = (k1[:, None] * k1[None, :])[None, None]
        maps = F.conv2d(F.pad(maps, (radius,) * 4, mode="reflect"), kernel)
        return maps[:, 0].numpy()
