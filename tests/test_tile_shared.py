"""The tile-shared position model: one Gaussian per position of a tile, shared by all tiles."""

import joblib
import numpy as np
import pytest

from skpadim import BackboneFeatures, make_padim
from skpadim.detectors import scoring
from skpadim.exceptions import ConfigurationError, InvalidImageError
from skpadim.features import TileSamples, shared_tile_spans
from skpadim.io import load, save

TILE = 96


def _texture(rng, n, height, width):
    """A stationary surface: smoothed noise, the same statistics everywhere."""
    from scipy.ndimage import gaussian_filter

    noise = rng.normal(size=(n, height, width))
    smooth = gaussian_filter(noise, sigma=(0, 1.5, 1.5))
    smooth = (smooth - smooth.mean()) / smooth.std()
    gray = np.clip(128 + 40 * smooth, 0, 255).astype(np.uint8)
    return np.repeat(gray[..., None], 3, axis=-1)


def _model(**params):
    params = dict(n_features=24, weights=None, random_state=0, positions="tile", tile=TILE,
                  batch_size=3, **params)
    return make_padim("resnet18", **params)


@pytest.fixture(scope="module")
def images():
    return _texture(np.random.RandomState(0), 6, 176, 240)


@pytest.fixture(scope="module")
def fitted(images):
    return _model().fit(images)


def _cut(images, tile, overlap):
    rows = shared_tile_spans(images.shape[1], tile, overlap)
    cols = shared_tile_spans(images.shape[2], tile, overlap)
    return np.stack([image[r0:r1, c0:c1] for image in images
                     for r0, r1 in rows for c0, c1 in cols])


def test_spans_have_the_tile_size_and_cover_the_image_without_padding():
    for length in (96, 97, 150, 500, 8000):
        spans = shared_tile_spans(length, 96, 32)
        assert all(stop - start == 96 for start, stop in spans)
        assert spans[0][0] == 0 and spans[-1][1] == length
        assert all(b[0] - a[1] <= -32 for a, b in zip(spans, spans[1:]))  # overlap >= 32
    with pytest.raises(InvalidImageError, match="smaller than the 96-px tiles"):
        shared_tile_spans(80, 96, 32)


def test_moments_equal_a_fit_on_the_explicitly_cut_tiles(images, fitted):
    overlap = fitted[0]._shared_tile_plan()[1][0]
    tiles = _cut(images, TILE, overlap)
    explicit = make_padim("resnet18", n_features=24, weights=None, random_state=0,
                          resize=None, crop=None, batch_size=7).fit(tiles)
    shared, plain = fitted[-1], explicit[-1]
    assert shared.n_samples_seen_ == plain.n_samples_seen_ == len(tiles)
    assert shared.grid_shape_ == plain.grid_shape_ == (TILE // 4, TILE // 4)
    np.testing.assert_allclose(shared.mean_, plain.mean_, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(shared.precisions_cholesky_, plain.precisions_cholesky_,
                               rtol=1e-3, atol=1e-3)


def test_an_image_of_one_tile_gets_the_untiled_map(images, fitted):
    one = images[:2, :TILE, :TILE]
    features = fitted[:-1].transform(one)
    assert isinstance(features, TileSamples)
    direct = fitted[-1].anomaly_maps(np.concatenate([c.features for c in features]))
    np.testing.assert_allclose(fitted.anomaly_maps(one), direct, rtol=1e-5, atol=1e-4)


def test_maps_have_the_image_size_and_their_maximum_is_the_score(images, fitted):
    result = fitted.inspect(images[:2])
    assert result.maps.shape == (2, 176, 240)
    np.testing.assert_allclose(result.anomaly_scores, result.maps.max(axis=(1, 2)))
    np.testing.assert_allclose(-fitted.score_samples(images[:2]), result.anomaly_scores)


def test_a_defect_straddling_a_tile_border_scores_like_one_inside_a_tile():
    rng = np.random.RandomState(1)
    train = _texture(rng, 8, 176, 240)
    model = _model().fit(train)
    spans = shared_tile_spans(240, TILE, model[0]._shared_tile_plan()[1][1])
    from skpadim.features import kept_spans

    cut = kept_spans(spans, 1)[0][1]  # where the first tile hands over to the second
    inside = (spans[1][0] + spans[1][1]) // 2
    test = _texture(rng, 1, 176, 240)
    scores = []
    for centre in (inside, cut):
        image = test.copy()
        image[0, 80:96, centre - 8 : centre + 8] = 255  # 16 px: 4 cells of the patch grid
        scores.append(float(model.inspect(image).anomaly_scores[0]))
    clean = float(model.inspect(test).anomaly_scores[0])
    assert min(scores) > 1.25 * clean  # the defect is what scores
    assert abs(scores[1] - scores[0]) <= 0.1 * scores[0]


def test_images_of_different_sizes_train_one_model(images, tmp_path):
    from PIL import Image

    other = _texture(np.random.RandomState(2), 2, 300, 130)
    paths = []
    for k, image in enumerate([images[0], images[1], other[0], other[1]]):
        paths.append(str(tmp_path / f"{k}.png"))
        Image.fromarray(image).save(paths[-1])
    model = _model().fit(paths)
    assert model[-1].grid_shape_ == (TILE // 4, TILE // 4)
    assert model.anomaly_maps(other).shape == (2, 300, 130)
    with pytest.raises(InvalidImageError, match="smaller than the 96-px tiles"):
        model.anomaly_maps(images[:1, :80])


def test_the_threshold_flags_contamination_of_images_not_of_tiles(fitted):
    gaussian = fitted[-1]
    k = gaussian.samples_per_image_
    assert k == fitted[:-1].transform(np.zeros((1, 176, 240, 3), np.uint8)).tiles_per_image(
        (176, 240))
    per_tile = 1 - (1 - gaussian.contamination) ** (1 / k)
    assert per_tile < gaussian.contamination / (k / 2)
    assert gaussian._sample_contamination() == pytest.approx(per_tile)


def test_save_load_and_joblib_round_trips_give_the_same_maps(images, fitted, tmp_path):
    expected = fitted.anomaly_maps(images[:1])
    save(fitted, tmp_path / "model.skpadim")
    joblib.dump(fitted, tmp_path / "model.joblib")
    for restored in (load(tmp_path / "model.skpadim"), joblib.load(tmp_path / "model.joblib")):
        assert restored[0].stitch is False
        assert restored[-1].samples_per_image_ == fitted[-1].samples_per_image_
        np.testing.assert_array_equal(restored.anomaly_maps(images[:1]), expected)
        assert restored[-1].offset_ == fitted[-1].offset_


def test_stitch_false_needs_a_tile_and_a_streaming_pipeline(images):
    with pytest.raises(ConfigurationError, match="needs a tile size"):
        BackboneFeatures(weights=None, stitch=False).fit(images[:1])
    with pytest.raises(ConfigurationError, match="positions must be"):
        make_padim("resnet18", weights=None, positions="block")


def test_stitching_pastes_each_pixel_from_exactly_one_tile():
    tiles = np.stack([np.full((4, 4), v, dtype=np.float32) for v in (1, 2)])
    placements = [(((0, 4), (0, 4)), ((0, 4), (0, 3))), (((0, 4), (2, 6)), ((0, 4), (3, 6)))]
    stitched = scoring.stitch_tile_maps(tiles, placements, (4, 6))
    assert stitched.tolist() == [[1, 1, 1, 2, 2, 2]] * 4
    with pytest.raises(InvalidImageError, match="do not cover"):
        scoring.stitch_tile_maps(tiles[:1], placements[:1], (4, 6))
