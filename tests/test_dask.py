"""skpadim.dask: a fit on a two-worker cluster gives the model of a local fit_in_batches.

Tolerances: the float64 means and covariances to 1e-10 relative (merging moments is exact
but for rounding); the float32 factors, scores and offset_ to float32 rounding (1e-5); the
calibration samples and SPADE's gallery exactly (features are computed the same way).

The batches here all hold at least two images: ResNet18 on the CPU gives a batch of one
image features that differ from the same image's in a larger batch by float32 rounding
(about 1e-6), which would move the moments by as much, in a local fit as in this one.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

import skpadim
from skpadim.detectors._calibration import SystematicSample
from skpadim.exceptions import ConfigurationError
from skpadim.gaussian import precision_cholesky

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")
db = pytest.importorskip("dask.bag")
skd = pytest.importorskip("skpadim.dask")

N_IMAGES = 20


@pytest.fixture(scope="module")
def client():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster:
        with distributed.Client(cluster) as client:
            yield client


@pytest.fixture(scope="module")
def images():
    gen = np.random.RandomState(3)
    base = gen.randint(0, 256, (N_IMAGES, 8, 8, 3)).astype(np.float32)
    images = base.repeat(4, axis=1).repeat(4, axis=2) + gen.normal(0, 12, (N_IMAGES, 32, 32, 3))
    return np.clip(images, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def paths(images, tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    out = []
    for k, image in enumerate(images):
        out.append(str(folder / f"{k:03d}.png"))
        Image.fromarray(image).save(out[-1])
    return out


def padim(**params):
    pipe = skpadim.make_padim("resnet18", n_features=10, weights=None, resize=None, crop=None,
                              random_state=0)
    return pipe.set_params(**params)


def assert_same_padim(got, want, X):
    g, w = got[-1], want[-1]
    assert g.n_samples_seen_ == w.n_samples_seen_
    mg, mw = g._moments, w._moments
    np.testing.assert_allclose(mg.mean.numpy(), mw.mean.numpy(), rtol=1e-10)
    cov_g, cov_w = mg.covariance(), mw.covariance()
    scale = float(cov_w.abs().max())
    np.testing.assert_allclose(cov_g.numpy(), cov_w.numpy(), rtol=1e-10, atol=1e-10 * scale)
    np.testing.assert_allclose(precision_cholesky(cov_g, g.reg_covar_).numpy(),
                               precision_cholesky(cov_w, w.reg_covar_).numpy(), rtol=1e-10,
                               atol=1e-10)
    np.testing.assert_allclose(g.mean_, w.mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(g.precisions_cholesky_, w.precisions_cholesky_, rtol=1e-5,
                               atol=1e-6)
    np.testing.assert_array_equal(g.calibration_samples_, w.calibration_samples_)
    assert g.offset_ == pytest.approx(w.offset_, rel=1e-5)
    np.testing.assert_allclose(got.score_samples(X), want.score_samples(X), rtol=1e-5)


def test_calibration_stride_is_the_systematic_samples_end_state():
    for capacity in (None, 1, 2, 3, 5, 8, 64):
        for n_samples in range(1, 80):
            sample = SystematicSample(capacity)
            for part in np.array_split(np.zeros((n_samples, 0)), 3):
                sample.add(part)
            stride = skd._calibration_stride(n_samples, capacity)
            assert stride == sample.stride, (n_samples, capacity)
            assert sample.indices == list(range(0, n_samples, stride))


@pytest.mark.parametrize("calibration_size", ["auto", 5])
def test_fit_of_a_dask_array_equals_fit_in_batches(client, images, calibration_size):
    want = skpadim.fit_in_batches(padim(patchgaussian__calibration_size=calibration_size),
                                  images)
    X = da.from_array(images, chunks=(7, 32, 32, 3))               # partitions 7, 7, 6
    got = skd.fit(padim(patchgaussian__calibration_size=calibration_size), X, client,
                  batch_size=4)                                   # batches 4+3, 4+3, 4+2
    if calibration_size == 5:                                      # stride 4: 0, 4, ..., 16
        assert len(got[-1].calibration_samples_) == 5
    assert_same_padim(got, want, images)


def test_fit_of_a_bag_of_paths_equals_fit_in_batches(client, paths, images):
    want = skpadim.fit_in_batches(padim(), paths)
    got = skd.fit(padim(), db.from_sequence(paths, npartitions=3), client)
    assert_same_padim(got, want, images)


def test_fit_of_a_plain_list_is_split_into_partitions(client, paths, images):
    want = skpadim.fit_in_batches(padim(), paths)
    assert_same_padim(skd.fit(padim(), paths, client, partition_size=6), want, images)


def test_spade_fit_equals_local_fit(client, images):
    def spade():
        return skpadim.make_spade("resnet18", weights=None, resize=32, crop=None,
                                  n_neighbors=3, random_state=0)

    want = skpadim.fit_in_batches(spade(), images)
    got = skd.fit(spade(), images, client, partition_size=6)
    np.testing.assert_array_equal(got[-1].image_features_, want[-1].image_features_)
    for g, w in zip(got[-1].patch_features_, want[-1].patch_features_):
        np.testing.assert_array_equal(g, w)
    assert got[-1].n_samples_fit_ == N_IMAGES
    assert got[-1].offset_ == pytest.approx(want[-1].offset_, rel=1e-6)
    np.testing.assert_allclose(got.score_samples(images), want.score_samples(images), rtol=1e-6)


def test_score_equals_local_scores_labels_and_maps(client, images, tmp_path):
    pipe = padim().fit(images[:12])
    X = da.from_array(images, chunks=(8, 32, 32, 3))
    result = skd.score(pipe, X, client, maps_dir=tmp_path / "maps", batch_size=3)
    np.testing.assert_allclose(result.anomaly_scores, -pipe.score_samples(images), rtol=1e-5)
    np.testing.assert_array_equal(result.labels, pipe.predict(images))
    assert [os.path.basename(f) for f in result.map_files] == [
        "maps-00000.npy", "maps-00001.npy", "maps-00002.npy"]
    assert sorted(os.listdir(tmp_path / "maps")) == sorted(map(os.path.basename,
                                                               result.map_files))
    maps = np.concatenate([np.load(f) for f in result.map_files])
    np.testing.assert_allclose(maps, skpadim.anomaly_maps(pipe, images), rtol=1e-5, atol=1e-5)
    assert skd.score(pipe, images, client).map_files is None


def test_a_worker_killed_mid_fit_is_replaced_and_the_model_is_unchanged(client, paths,
                                                                        images, tmp_path):
    calls = str(tmp_path / "calls")

    def die_once(path):
        # Pickled by value (a closure), so workers need not import this test module.
        if path == paths[10]:
            with open(calls, "a") as f:
                f.write("x")
            # 1st read: counting the partitions; 2nd: the moments task, mid-fit.
            if os.path.getsize(calls) == 2:
                os._exit(1)
        return path

    pids = set(client.run(os.getpid).values())
    bag = db.from_sequence(paths, partition_size=4).map(die_once)
    got = skd.fit(padim(), bag, client)
    # The worker died (its nanny started another) and dask reran its task: the fit
    # completed, with the model of a local fit.
    assert os.path.getsize(calls) == 3
    assert set(client.run(os.getpid).values()) != pids
    assert_same_padim(got, skpadim.fit_in_batches(padim(), paths), images)


def test_steps_that_learn_from_the_data_are_refused(client, images):
    from sklearn.pipeline import make_pipeline

    pipe = make_pipeline(skpadim.BackboneFeatures(weights=None, resize=None, crop=None),
                         skpadim.PatchPCA(n_components=4), skpadim.PatchGaussian())
    with pytest.raises(ConfigurationError, match="partial_fit"):
        skd.fit(pipe, images, client)


def test_import_skpadim_does_not_import_dask():
    code = "import skpadim, sys; assert 'dask' not in sys.modules and 'distributed' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_without_dask_the_error_names_the_extra(monkeypatch, images):
    monkeypatch.setitem(sys.modules, "dask", None)                 # import dask fails
    with pytest.raises(ImportError, match=r'pip install "skpadim\[dask\]"'):
        skd.fit(padim(), images)
    with pytest.raises(ImportError, match=r'pip install "skpadim\[dask\]"'):
        skd.score(padim(), images)
