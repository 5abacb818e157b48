"""Shared fixtures: tiny images and small fitted models, so every test runs in seconds."""

import numpy as np
import pytest
import torch

# Tests must not depend on how many cores the machine has, and must never download.
torch.set_num_threads(2)


@pytest.fixture(scope="session")
def rng():
    return np.random.RandomState(0)


@pytest.fixture(scope="session")
def tiny_images():
    """Twelve 72x72 uint8 RGB images of smooth random texture."""
    gen = np.random.RandomState(42)
    base = gen.randint(0, 256, (12, 18, 18, 3)).astype(np.float32)
    images = base.repeat(4, axis=1).repeat(4, axis=2)
    images += gen.normal(0, 12, images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="session")
def resnet18_weights(tmp_path_factory):
    """A local resnet18 state-dict file (random init, seeded): the offline stand-in for
    ImageNet weights."""
    import torchvision

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torchvision.models.resnet18(weights=None)
    path = tmp_path_factory.mktemp("weights") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="session")
def feature_maps():
    """Random (n, d, h, w) feature maps with per-position structure."""
    gen = np.random.RandomState(1)
    n, d, h, w = 40, 6, 3, 4
    mix = gen.normal(size=(h * w, d, d))
    z = gen.normal(size=(n, h * w, d))
    X = np.einsum("npd,pde->npe", z, mix) + gen.normal(size=(h * w, d)) * 3
    return X.reshape(n, h, w, d).transpose(0, 3, 1, 2).astype(np.float32)


@pytest.fixture(params=[0.0, 1e3], ids=["close-shifts", "far-shifts"])
def worker_moments(request):
    """Samples of 5 positions in 4 dimensions, as one pass and as two workers' moments
    (the second worker's samples offset by the parameter, so their shifts differ)."""
    from types import SimpleNamespace

    from skpadim.gaussian import PatchMoments

    gen = np.random.RandomState(7)
    X = torch.from_numpy(gen.normal(size=(5, 60, 4)) * 3 + 10)
    X[:, 25:] += request.param
    one = PatchMoments.empty(X[:, :7].mean(dim=1)).update(X)
    a = PatchMoments.empty(X[:, :25].mean(dim=1)).update(X[:, :25])
    b = PatchMoments.empty(X[:, 25:].mean(dim=1)).update(X[:, 25:40]).update(X[:, 40:])
    return SimpleNamespace(X=X, one=one, a=a, b=b)
