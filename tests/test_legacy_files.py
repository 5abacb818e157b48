"""Model files written before the package moved into sub-packages still load and score the
same, to the bit (the files and how they were made: ``tests/data/legacy/``)."""

import pathlib

import numpy as np
import pytest

import skpadim

LEGACY = pathlib.Path(__file__).parent / "data" / "legacy"


@pytest.fixture(scope="module")
def test_images():
    return np.load(LEGACY / "images.npy")[8:]


@pytest.mark.parametrize("name", ["padim", "spade"])
def test_a_safe_model_file_from_0_1_0_scores_bit_identically(name, test_images):
    model = skpadim.load(LEGACY / f"{name}.safetensors")
    np.testing.assert_array_equal(skpadim.anomaly_maps(model, test_images),
                                  np.load(LEGACY / f"{name}_maps.npy"))
    np.testing.assert_array_equal(model.score_samples(test_images),
                                  np.load(LEGACY / f"{name}_scores.npy"))


def test_a_joblib_pickle_from_0_1_0_loads_through_the_old_module_paths(test_images):
    # The pickle names skpadim.gaussian.PatchGaussian, skpadim.backbones.FeatureTrunk, ...
    assert b"skpadim.gaussian" in (LEGACY / "padim.joblib").read_bytes()
    model = skpadim.load(LEGACY / "padim.joblib", allow_pickle=True)
    assert type(model[-1]) is skpadim.PatchGaussian
    np.testing.assert_array_equal(model.score_samples(test_images),
                                  np.load(LEGACY / "padim_scores.npy"))
