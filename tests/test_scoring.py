"""The shared scoring module against scipy and torch computed directly."""

import numpy as np
import pytest
import scipy.ndimage
import torch
import torch.nn.functional as F

from skpadim import scoring
from skpadim.exceptions import InvalidImageError


def test_gaussian_smooth_filters_each_map_alone(rng):
    maps = rng.normal(size=(3, 40, 45)).astype(np.float32)
    together = scoring.gaussian_smooth(maps, sigma=2.0, mode="mirror")
    for k in range(3):
        alone = scipy.ndimage.gaussian_filter(maps[k], 2.0, mode="mirror")
        np.testing.assert_allclose(together[k], alone, atol=1e-6)


def test_kernel_is_anomalibs_33_taps_with_torch_reflect_padding():
    """sigma 4, truncate 4 -> radius 16; torch's "reflect" padding is scipy's "mirror"."""
    spike = np.zeros((1, 64, 64), np.float32)
    spike[0, 0, 30] = 1.0
    x = torch.arange(-16, 17, dtype=torch.float32)
    k = torch.exp(-(x**2) / 32)
    k = k / k.sum()
    padded = F.pad(torch.from_numpy(spike)[None], (16,) * 4, mode="reflect")
    expected = F.conv2d(padded, (k[:, None] * k[None, :])[None, None])[0].numpy()
    np.testing.assert_allclose(scoring.gaussian_smooth(spike, mode="mirror"), expected,
                               atol=1e-6)


def test_sigma_zero_is_the_identity(rng):
    maps = rng.normal(size=(1, 5, 5)).astype(np.float32)
    np.testing.assert_array_equal(scoring.gaussian_smooth(maps, sigma=0), maps)


@pytest.mark.parametrize("interpolation", ["bicubic", "bilinear"])
def test_upsampling_is_torch_interpolate_without_aligned_corners(rng, interpolation):
    maps = rng.normal(size=(2, 7, 9)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(maps)[:, None], size=(28, 36),
                             mode=interpolation, align_corners=False)[:, 0].numpy()
    np.testing.assert_allclose(scoring.upsample_maps(maps, (28, 36), interpolation), expected)


def test_nearest_upsampling_repeats_each_patch():
    maps = np.arange(4, dtype=np.float32).reshape(1, 2, 2)
    out = scoring.upsample_maps(maps, 4, "nearest")
    np.testing.assert_array_equal(out[0], np.kron(maps[0], np.ones((2, 2))))


def test_anomaly_maps_upsample_then_blur(rng):
    d = rng.uniform(size=(2, 8, 8)).astype(np.float32)
    expected = scoring.gaussian_smooth(scoring.upsample_maps(d, 32), sigma=4)
    # One fused operator per axis: the same numbers up to float32 rounding.
    np.testing.assert_allclose(scoring.anomaly_maps(d, 32), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(scoring.image_scores(expected), expected.max(axis=(1, 2)))


def test_bad_arguments_are_named():
    with pytest.raises(InvalidImageError, match="interpolation"):
        scoring.upsample_maps(np.zeros((1, 2, 2)), 4, "lanczos")
    with pytest.raises(InvalidImageError, match="mode"):
        scoring.gaussian_smooth(np.zeros((1, 2, 2)), mode="edge")
    with pytest.raises(InvalidImageError, match=r"\(n, h, w\)"):
        scoring.image_scores(np.zeros((2, 2)))


@pytest.mark.parametrize("interpolation", scoring.INTERPOLATIONS)
@pytest.mark.parametrize("mode", scoring.BORDER_MODES)
def test_anomaly_maps_equal_upsampling_then_filtering_2d(rng, interpolation, mode):
    """anomaly_maps fuses both steps into one matrix per axis; the reference runs them one
    after the other, with scipy's 2-D filter on each map."""
    distances = (10 * rng.random_sample((3, 14, 11))).astype(np.float32)
    upsampled = F.interpolate(torch.from_numpy(distances)[:, None], size=(61, 44),
                              mode="nearest-exact" if interpolation == "nearest" else
                              interpolation, **({} if interpolation == "nearest" else
                                                {"align_corners": False}))[:, 0].numpy()
    expected = np.stack([scipy.ndimage.gaussian_filter(m, 3.0, truncate=3.5, mode=mode)
                         for m in upsampled])
    maps = scoring.anomaly_maps(distances, (61, 44), interpolation=interpolation, sigma=3.0,
                                truncate=3.5, mode=mode)
    assert maps.shape == (3, 61, 44) and maps.dtype == np.float32
    np.testing.assert_allclose(maps, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sigma", [0.0, 4.0])
def test_anomaly_maps_at_the_grid_size_only_filter(rng, sigma):
    distances = rng.random_sample((2, 20, 20)).astype(np.float32)
    np.testing.assert_allclose(scoring.anomaly_maps(distances, 20, sigma=sigma),
                               scoring.gaussian_smooth(distances, sigma=sigma), atol=1e-7)
