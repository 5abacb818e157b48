"""BackboneFeatures: input forms, truncation, weights, errors."""

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from skpadim import BackboneFeatures
from skpadim.exceptions import DatasetError, InvalidImageError, SkpadimError

SMALL = dict(weights=None, resize=64, crop=56, random_state=0, device="cpu")


@pytest.fixture(scope="module")
def fitted(tiny_images):
    return BackboneFeatures(**SMALL).fit(tiny_images)


def test_output_is_the_concatenated_layer_grid(fitted, tiny_images):
    out = fitted.transform(tiny_images[:3])
    assert out.shape == (3, 448, 14, 14) and out.dtype == np.float32
    assert fitted.layer_channels_ == [64, 128, 256]
    assert fitted.feature_shape_ == (448, 14, 14) and fitted.image_size_ == (56, 56)


def test_every_input_form_gives_the_same_features(fitted, tiny_images, tmp_path):
    images = tiny_images[:3]
    reference = fitted.transform(images)
    as_float = images.transpose(0, 3, 1, 2).astype(np.float32) / 255
    np.testing.assert_allclose(fitted.transform(as_float), reference, rtol=1e-4, atol=1e-4)
    paths = []
    for i, img in enumerate(images):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(img).save(paths[-1])
    np.testing.assert_allclose(fitted.transform(paths), reference, rtol=1e-4, atol=1e-4)
    for array in (np.array(paths), np.array(paths, dtype=object)):  # sliced lists, pandas
        np.testing.assert_allclose(fitted.transform(array), reference, rtol=1e-4, atol=1e-4)


def test_grayscale_is_replicated_to_three_channels(fitted, tiny_images):
    gray = tiny_images[:2, :, :, 0]
    rgb = np.repeat(gray[..., None], 3, axis=-1)
    reference = fitted.transform(rgb)
    np.testing.assert_allclose(fitted.transform(gray), reference, rtol=1e-4, atol=1e-4)
    float_gray = gray[:, None].astype(np.float32) / 255
    np.testing.assert_allclose(fitted.transform(float_gray), reference, rtol=1e-4, atol=1e-4)


def test_batch_size_does_not_change_features(tiny_images):
    a = BackboneFeatures(**SMALL, batch_size=5).fit(tiny_images).transform(tiny_images)
    b = BackboneFeatures(**SMALL, batch_size=12).fit(tiny_images).transform(tiny_images)
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_only_the_layers_up_to_the_last_tap_are_kept():
    feats = BackboneFeatures(weights=None, layers=["layer1", "layer2"]).fit()
    assert feats.module_.names == ["stem", "layer1", "layer2"]
    assert not any(k.startswith("body.3") for k in feats.module_.state_dict())


def test_layers_are_concatenated_in_the_order_given(tiny_images):
    ab = BackboneFeatures(**SMALL, layers=["layer1", "layer2"]).fit().transform(tiny_images[:1])
    ba = BackboneFeatures(**SMALL, layers=["layer2", "layer1"]).fit().transform(tiny_images[:1])
    # layer2 first sets a coarser grid: same channels, in the other order, on 7x7.
    assert ba.shape == (1, 192, 7, 7)
    np.testing.assert_allclose(ba[:, 128:], ab[:, :64, ::2, ::2], atol=1e-5)


def test_weights_from_a_local_file_equal_the_model_they_came_from(resnet18_weights, tiny_images):
    model = torchvision.models.resnet18()
    model.load_state_dict(torch.load(resnet18_weights, weights_only=True))
    model.eval()
    feats = BackboneFeatures(weights=str(resnet18_weights), resize=None, crop=None,
                             layers=["layer2"], device="cpu").fit()
    x = torch.from_numpy(tiny_images[:2]).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    with torch.no_grad():
        h = model.maxpool(model.relu(model.bn1(model.conv1((x - mean) / std))))
        expected = model.layer2(model.layer1(h)).numpy()
    np.testing.assert_allclose(feats.transform(tiny_images[:2]), expected, atol=1e-4)


def test_random_init_is_seeded_and_leaves_the_global_rng_alone(tiny_images):
    before = torch.random.get_rng_state()
    a = BackboneFeatures(**SMALL).fit().transform(tiny_images[:1])
    b = BackboneFeatures(**SMALL).fit().transform(tiny_images[:1])
    c = BackboneFeatures(**{**SMALL, "random_state": 1}).fit().transform(tiny_images[:1])
    assert torch.equal(before, torch.random.get_rng_state())
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_lite0_uses_its_own_normalisation_and_layers(tiny_images):
    feats = BackboneFeatures(backbone="efficientnet_lite0", resize=64, crop=64).fit()
    assert feats.layer_channels_ == [24, 40, 112]
    assert feats.transform(tiny_images[:1]).shape == (1, 176, 16, 16)
    assert torch.allclose(feats.module_.mean, torch.full((1, 3, 1, 1), 127 / 255))


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 32, 32, 4), np.uint8), r"\(n, H, W, 3\)"),
        (np.zeros((32, 32), np.uint8), "shape"),
        (np.zeros((2, 32, 32, 3), np.float32), "channels-last"),
        (np.full((2, 3, 32, 32), np.nan, np.float32), "NaN"),
        (np.full((2, 3, 32, 32), 255.0, np.float32), r"\[0, 1\]"),
        (np.zeros((2, 3, 32, 32), np.int64), "dtype"),
    ],
)
def test_bad_images_get_a_clear_error(fitted, images, message):
    with pytest.raises(InvalidImageError, match=message):
        fitted.transform(images)


def test_unreadable_file_is_named(fitted, tmp_path):
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    with pytest.raises(DatasetError, match="broken.png"):
        fitted.transform([str(broken)])


def test_images_of_different_sizes_need_a_resize(tmp_path):
    paths = []
    for i, size in enumerate([40, 48]):
        paths.append(str(tmp_path / f"{i}.png"))
        Image.fromarray(np.zeros((size, size, 3), np.uint8)).save(paths[-1])
    feats = BackboneFeatures(weights=None, resize=None, crop=None, device="cpu").fit()
    with pytest.raises(InvalidImageError, match="set resize"):
        feats.transform(paths)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"backbone": "vgg16"}, "backbone"),
        ({"layers": ["layer9"]}, "no layer 'layer9'"),
        ({"weights": "/nonexistent/r18.pth"}, "not found"),
        ({"crop": 300}, "larger than"),
    ],
)
def test_bad_configuration_is_explained(tiny_images, params, message):
    with pytest.raises((SkpadimError, ValueError), match=message):
        BackboneFeatures(**{**SMALL, **params}).fit(tiny_images).transform(tiny_images[:1])


def test_a_state_dict_of_another_network_is_refused(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv.weight": torch.zeros(1)}, path)
    with pytest.raises(SkpadimError, match="lacks"):
        BackboneFeatures(weights=str(path)).fit()
