"""Tile-shared models (``make_padim(positions="tile")``) exported to ONNX and run on Dask.

The reference is always the same model in Python on one machine: ONNX maps equal
:func:`skpadim.inspect_images`'s to float32 rounding (1e-4 of the largest value) with the
same labels; a Dask fit equals a local fit (float64 sums merged in another order: means
and factors to 1e-5, the same calibration tiles and ``samples_per_image_``), and Dask
scores and maps equal local ones.
"""

import numpy as np
import pytest

from skpadim import inspect_images, make_padim, make_spade

TILE = 96
SIZE = (160, 224)  # 3 x 4 tiles of 96 px (overlapping by at least 48)
TILES = 12


def _surfaces(n, seed, defect=False):
    """Blocky grey surfaces of ``SIZE``; with ``defect``, the last one has a bright square
    across the cut between its first two tile columns."""
    rng = np.random.RandomState(seed)
    cells = rng.randint(70, 190, (n, SIZE[0] // 4, SIZE[1] // 4, 1))
    images = cells.repeat(4, axis=1).repeat(4, axis=2).repeat(3, axis=3)
    images = np.clip(images + rng.normal(0, 10, images.shape), 0, 255).astype(np.uint8)
    if defect:
        images[-1, 60:80, 80:100] = 255
    return images


def _padim(**params):
    return make_padim("resnet18", n_features=16, weights=None, random_state=0,
                      positions="tile", tile=TILE, batch_size=4, **params)


@pytest.fixture(scope="module")
def train():
    return _surfaces(3, seed=0)


@pytest.fixture(scope="module")
def test_images():
    return _surfaces(3, seed=1, defect=True)


@pytest.fixture(scope="module")
def fitted(train):
    return _padim().fit(train)


# ---------------------------------------------------------------------------- ONNX
@pytest.fixture(scope="module")
def exported(fitted, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    from skpadim.io import OnnxModel, export_onnx

    path = tmp_path_factory.mktemp("onnx") / "tiles.onnx"
    assert export_onnx(fitted, path) == [str(path)]
    return OnnxModel(path, intra_op_num_threads=1)


def test_onnx_maps_scores_and_labels_match_python(exported, fitted, test_images):
    expected = inspect_images(fitted, test_images)
    assert set(expected.labels.tolist()) == {1, -1}  # the threshold is exercised
    for batch_size in (1, 7):  # tiles per run of the graph: within an image and across
        got = exported.inspect(test_images, batch_size=batch_size)
        assert got.maps.shape == (3, *SIZE) and got.maps.dtype == np.float32
        error = np.abs(got.maps - expected.maps).max() / np.abs(expected.maps).max()
        assert error <= 1e-4, error
        np.testing.assert_allclose(got.anomaly_scores, expected.anomaly_scores, rtol=1e-4)
        np.testing.assert_array_equal(got.labels, expected.labels)
    np.testing.assert_array_equal(exported.predict(test_images), fitted.predict(test_images))


def test_onnx_file_is_one_tile_graph_with_the_image_steps_in_its_metadata(exported, fitted):
    import json

    tile_input = exported.session.get_inputs()[0].shape
    assert tile_input[1:] == [TILE, TILE, 3]
    assert [o.name for o in exported.session.get_outputs()] == ["tile_maps"]
    plan = json.loads(exported.metadata["tile_shared"])
    tile, overlap = fitted[0]._shared_tile_plan()
    assert plan["tile"] == list(tile) and plan["overlap"] == list(overlap)
    assert (plan["sigma"], plan["mode"]) == (fitted[-1].sigma, fitted[-1].mode)
    assert exported.input_size is None  # any image of at least a tile
    assert exported.threshold == pytest.approx(-fitted[-1].offset_, rel=1e-6)


def test_onnx_refuses_images_smaller_than_a_tile(exported):
    from skpadim.exceptions import InvalidImageError

    with pytest.raises(InvalidImageError, match="smaller than the 96-px tiles"):
        exported.inspect(np.zeros((1, 80, 200, 3), np.uint8))


# ---------------------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    pytest.importorskip("skpadim.dask")
    # Two workers in one process share the model: the tiled tasks' turn-taking is exercised.
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


@pytest.mark.parametrize("calibration_size", ["auto", 5])  # 5: a stride of 8 tiles of 36
def test_dask_fit_equals_a_local_fit(client, train, fitted, calibration_size):
    import skpadim.dask

    local = fitted if calibration_size == "auto" else _padim(
        calibration_size=calibration_size).fit(train)
    remote = skpadim.dask.fit(_padim(calibration_size=calibration_size), train, client,
                              partition_size=2)
    got, expected = remote[-1], local[-1]
    assert got.n_samples_seen_ == expected.n_samples_seen_ == 3 * TILES
    assert got.grid_shape_ == expected.grid_shape_ == (TILE // 4, TILE // 4)
    assert got.samples_per_image_ == expected.samples_per_image_ == TILES
    np.testing.assert_array_equal(got.calibration_samples_, expected.calibration_samples_)
    np.testing.assert_allclose(got.mean_, expected.mean_, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got.precisions_cholesky_, expected.precisions_cholesky_,
                               rtol=1e-5, atol=1e-5)
    assert got.offset_ == pytest.approx(expected.offset_, rel=1e-5)


def test_dask_score_equals_local_maps_scores_and_labels(client, fitted, test_images,
                                                        tmp_path):
    import skpadim.dask

    expected = inspect_images(fitted, test_images)
    result = skpadim.dask.score(fitted, test_images, client, maps_dir=tmp_path,
                                partition_size=2, batch_size=1)
    np.testing.assert_allclose(result.anomaly_scores, expected.anomaly_scores, rtol=1e-6)
    np.testing.assert_array_equal(result.labels, expected.labels)
    maps = np.concatenate([np.load(f) for f in result.map_files])
    np.testing.assert_allclose(maps, expected.maps, rtol=1e-6, atol=1e-6)


def test_dask_fits_spade_on_tiles_as_locally(client, train, test_images):
    import skpadim.dask

    def spade():
        pipe = make_spade("resnet18", weights=None, resize=None, crop=None, n_neighbors=2,
                          random_state=0)
        return pipe.set_params(backbonefeatures__tile=TILE, backbonefeatures__stitch=False)

    local = spade().fit(train)
    remote = skpadim.dask.fit(spade(), train, client, partition_size=2)
    # SPADE's deeper layers make a wider overlap, so fewer tiles than PaDiM's.
    assert remote[-1].samples_per_image_ == local[-1].samples_per_image_ > 1
    assert remote[-1].offset_ == pytest.approx(local[-1].offset_, rel=1e-6)
    np.testing.assert_allclose(inspect_images(remote, test_images).maps,
                               inspect_images(local, test_images).maps, rtol=1e-6, atol=1e-6)
