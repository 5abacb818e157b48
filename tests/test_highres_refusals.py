"""SPADE and the VAE refuse high-resolution input with an error that says what to do."""

import numpy as np
import pytest

from skpadim import SPADE, VAE
from skpadim.detectors._spade import MAX_GRID_POSITIONS
from skpadim.exceptions import InvalidImageError


def test_spade_refuses_a_patch_grid_beyond_512_px_images_and_names_padim():
    side = int(np.sqrt(MAX_GRID_POSITIONS)) + 1
    X = np.zeros((2, 4, side, side), dtype=np.float32)
    for fit in (SPADE().fit, SPADE().partial_fit):
        with pytest.raises(InvalidImageError, match=r"make_padim\(positions='tile'\)"):
            fit(X)


def test_spade_accepts_the_largest_grid_it_allows():
    side = int(np.sqrt(MAX_GRID_POSITIONS))
    X = np.random.RandomState(0).normal(size=(2, 2, side, side)).astype(np.float32)
    assert SPADE(n_neighbors=1).fit(X).n_samples_fit_ == 2


def test_vae_refuses_images_much_larger_than_its_crop():
    images = np.zeros((2, 80, 80, 3), dtype=np.uint8)
    vae = VAE(weights=None, resize=None, crop=32, random_crop=None, n_epochs=1, n_augmented=2,
              random_state=0)
    with pytest.raises(InvalidImageError, match="would inspect 16% and ignore the rest"):
        vae.fit(images)
