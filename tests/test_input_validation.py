"""Odd input fails loudly, with what to pass instead, rather than giving a wrong answer.

Ambiguous single images, RGBA arrays, 16-bit precision, decompression bombs, empty and
ragged input, unusable devices, and sklearn's wording for too few features.
"""

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.utils.estimator_checks import check_estimator, check_fit2d_1feature

import skpadim
from skpadim import PatchGaussian, RandomFeatureSelector
from skpadim._torch import resolve_device
from skpadim.exceptions import ConfigurationError, DatasetError, InvalidImageError
from skpadim.preprocessing import as_image_batches, n_images, read_image, transform_masks


def _batch(X, **kwargs):
    (batch,) = list(as_image_batches(X, 1000, **kwargs))
    return batch


@pytest.fixture(scope="module")
def padim(tiny_images):
    return skpadim.make_padim("resnet18", n_features=10, weights=None, resize=32, crop=None,
                              random_state=0, device="cpu").fit(tiny_images)


# --- one image (H, W, 3) is not H grayscale images ------------------------------------------


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
@pytest.mark.parametrize("channels", [3, 4])
def test_a_single_colour_image_is_refused_as_ambiguous(dtype, channels):
    with pytest.raises(InvalidImageError, match="ambiguous") as info:
        _batch(np.zeros((20, 24, channels), dtype))
    assert "X[None" in str(info.value) and "X[..., None]" in str(info.value)


def test_a_pipeline_refuses_one_image_instead_of_scoring_its_rows(padim):
    image = np.zeros((72, 72, 3), np.uint8)
    with pytest.raises(InvalidImageError, match=r"ambiguous.*X\[None\]"):
        padim.predict(image)
    assert padim.predict(image[None]).shape == (1,)


def test_grayscale_images_three_pixels_wide_pass_with_a_channel_axis():
    gray = np.random.RandomState(0).randint(0, 256, (5, 8, 3), dtype=np.uint8)
    out = _batch(gray[..., None])
    assert tuple(out.shape) == (5, 3, 8, 3)
    np.testing.assert_allclose(out[:, 0].numpy(), gray / 255, atol=1e-6)


@pytest.mark.parametrize(
    "images, message",
    [
        (np.zeros((2, 8, 8, 4), np.uint8), r"RGBA.*X\[\.\.\., :3\]"),
        (np.zeros((2, 8, 8, 4), np.uint16), r"RGBA.*X\[\.\.\., :3\]"),
        (np.zeros((2, 4, 8, 8), np.float32), r"X\[:, :3\]"),
        (np.zeros((3, 8, 8), np.float32), r"X\[None\]"),
    ],
    ids=["rgba-uint8", "rgba-uint16", "rgba-float", "one-float-image"],
)
def test_alpha_and_single_float_images_are_explained(images, message):
    with pytest.raises(InvalidImageError, match=message):
        _batch(images)


# --- 16 bits stay 16 bits ------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 6, 5, 3), (2, 6, 5), (2, 6, 5, 1)])
def test_uint16_arrays_are_scaled_by_65535(shape):
    X = np.random.RandomState(0).randint(0, 65536, shape).astype(np.uint16)
    out = _batch(X).numpy()
    expected = (X.reshape(2, 6, 5, -1) / 65535.0).transpose(0, 3, 1, 2)
    np.testing.assert_allclose(out, np.broadcast_to(expected, out.shape), atol=1e-7)


def test_uint16_keeps_differences_finer_than_8_bits():
    X = np.array([1000, 1001], np.uint16).reshape(2, 1, 1, 1)  # both 3 in 8 bits
    out = _batch(X)
    assert float(out[1, 0, 0, 0] - out[0, 0, 0, 0]) == pytest.approx(1 / 65535, rel=1e-3)


def test_big_endian_uint16_reads_like_native():
    X = np.random.RandomState(1).randint(0, 65536, (1, 4, 5)).astype(np.uint16)
    np.testing.assert_array_equal(_batch(X.astype(">u2")), _batch(X))


@pytest.fixture
def deep_values():
    # 40000 clips to 255 in 8 bits; 1 and 2 are both 0 there.
    return np.array([[0, 1, 2, 40000], [257, 1000, 1001, 65535]], np.uint16)


@pytest.mark.parametrize(
    "make, name",
    [
        (lambda a: Image.fromarray(a), "gray16.png"),                          # mode I;16
        (lambda a: Image.frombytes("I;16B", a.shape[::-1], a.astype(">u2").tobytes()),
         "gray16b.tif"),
        (lambda a: Image.fromarray(a.astype(np.int32)), "gray32.tif"),         # mode I
    ],
    ids=["png-I;16", "tiff-I;16B", "tiff-I"],
)
def test_16_bit_files_are_read_as_uint16(tmp_path, deep_values, make, name):
    path = tmp_path / name
    make(deep_values).save(path)
    image = read_image(path)
    assert image.dtype == np.uint16 and image.shape == (2, 4, 3)
    np.testing.assert_array_equal(image, np.repeat(deep_values[..., None], 3, axis=-1))
    out = _batch([str(path)])
    np.testing.assert_allclose(out[0, 0].numpy(), deep_values / 65535.0, atol=1e-7)


def test_16_bit_masks_count_every_non_zero_pixel(tmp_path, deep_values):
    path = tmp_path / "mask16.png"
    Image.fromarray(deep_values).save(path)
    np.testing.assert_array_equal(transform_masks([str(path)])[0], deep_values > 0)


def test_32_bit_integer_files_beyond_16_bits_are_refused(tmp_path):
    path = tmp_path / "wide.tif"
    Image.fromarray(np.array([[0, 70000], [-5, 3]], np.int32)).save(path)
    with pytest.raises(InvalidImageError, match=r"wide\.tif.*\[-5, 70000\].*0\.\.65535"):
        read_image(path)


def test_float_files_are_refused(tmp_path):
    path = tmp_path / "float.tif"
    Image.fromarray(np.full((3, 3), 0.5, np.float32)).save(path)
    with pytest.raises(InvalidImageError, match=r"float\.tif.*mode 'F'"):
        read_image(path)


# --- huge files -----------------------------------------------------------------------------


def test_a_decompression_bomb_is_a_dataset_error_saying_how_to_allow_it(tmp_path, monkeypatch):
    path = tmp_path / "huge.png"
    Image.new("RGB", (16, 16)).save(path)
    # PIL refuses outright above twice the limit; 256 pixels > 2 * 100.
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)
    for read in (read_image, skpadim.preprocessing.image_size):
        with pytest.raises(DatasetError, match=r"huge\.png.*MAX_IMAGE_PIXELS"):
            read(path)


# --- empty, ragged and mixed input --------------------------------------------------------


@pytest.mark.parametrize(
    "X",
    [[], (), np.zeros((0, 8, 8, 3), np.uint8), np.array([], dtype=str)],
    ids=["list", "tuple", "array", "str-array"],
)
def test_empty_input_says_it_got_no_images(X):
    with pytest.raises(InvalidImageError, match="got no images"):
        n_images(X)
    with pytest.raises(InvalidImageError, match="got no images"):
        _batch(X)


def test_a_ragged_list_of_arrays_names_the_shapes():
    X = [np.zeros((8, 8, 3), np.uint8), np.zeros((9, 8, 3), np.uint8)]
    message = r"share one shape and dtype.*\(8, 8, 3\), \(9, 8, 3\).*pass file paths"
    with pytest.raises(InvalidImageError, match=message):
        n_images(X)
    with pytest.raises(InvalidImageError, match=message):
        _batch(X)


def test_a_list_mixing_uint8_and_float_names_the_dtypes():
    X = [np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.float32)]
    with pytest.raises(InvalidImageError, match=r"dtypes \{float32, uint8\}"):
        _batch(X)


def test_a_list_mixing_paths_and_arrays_is_refused(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (8, 8)).save(path)
    with pytest.raises(InvalidImageError, match="mixes file paths"):
        n_images([str(path), np.zeros((8, 8, 3), np.uint8)])


def test_a_pipeline_refuses_a_ragged_list(padim, tiny_images):
    with pytest.raises(InvalidImageError, match="share one shape"):
        padim.predict([tiny_images[0], tiny_images[1, :60]])


def test_a_list_of_equal_arrays_is_the_array_it_stacks_to(tiny_images):
    images = tiny_images[:3]
    assert n_images(list(images)) == 3
    np.testing.assert_array_equal(_batch(list(images), resize=32), _batch(images, resize=32))
    as_objects = np.empty(3, dtype=object)
    as_objects[:] = list(images)
    np.testing.assert_array_equal(_batch(as_objects, resize=32), _batch(images, resize=32))


# --- devices --------------------------------------------------------------------------------


@pytest.mark.parametrize("device", ["xpu:9", "mps", "meta", torch.device("xpu")])
def test_devices_torch_names_but_skpadim_cannot_use_are_refused(device):
    with pytest.raises(ConfigurationError, match=rf"{torch.device(device)}.*'cpu'.*'cuda:N'"):
        resolve_device(device)


def test_a_cuda_index_beyond_the_gpus_present_is_refused(monkeypatch):
    # Pretend to have one GPU, so the check runs on any machine.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ConfigurationError, match=r"'cuda:7'.*1 CUDA device.*N < 1"):
        resolve_device("cuda:7")


def test_cuda_without_cuda_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigurationError, match=r"'cuda:7'.*not available.*'cpu'"):
        resolve_device("cuda:7")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_real_gpus_are_counted():
    count = torch.cuda.device_count()
    assert resolve_device(f"cuda:{count - 1}") == torch.device("cuda", count - 1)
    assert resolve_device("cuda").type == "cuda"
    with pytest.raises(ConfigurationError, match=rf"N < {count}"):
        resolve_device(f"cuda:{count}")


def test_an_estimator_with_an_unusable_device_fails_in_fit(feature_maps):
    with pytest.raises(ConfigurationError, match="xpu:9"):
        PatchGaussian(device="xpu:9").fit(feature_maps)


def test_cpu_is_accepted():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device(torch.device("cpu")) == torch.device("cpu")


# --- sklearn's wording for too few features ----------------------------------------------


def test_too_few_features_uses_sklearns_words():
    with pytest.raises(ValueError, match=r"n_features=2 exceeds the 1 feature\(s\)"):
        RandomFeatureSelector(n_features=2).fit(np.zeros((10, 1)))
    check_fit2d_1feature("RandomFeatureSelector", RandomFeatureSelector(n_features=2))


def test_feature_maps_are_described_by_channels():
    with pytest.raises(InvalidImageError, match="exceeds the 5 channels"):
        RandomFeatureSelector(n_features=6).fit(np.zeros((2, 5, 3, 3)))


@pytest.mark.parametrize("n_features", [2, None])
def test_check_estimator_passes_on_small_selections(n_features):
    # The default n_features=100 cannot pass: sklearn's check data has 1 to 10 features,
    # and drawing 100 of them must fail.
    check_estimator(RandomFeatureSelector(n_features=n_features, random_state=0))
