"""skpadim.save / skpadim.load: bit-identical round trips, files that loading cannot make run
code, clear errors for damaged, edited or foreign files, atomic writes, version stamps."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import joblib
import numpy as np
import pytest
import torch
from sklearn.pipeline import make_pipeline

import skpadim
from skpadim import persistence
from skpadim.exceptions import ModelFileError, SkpadimError, SkpadimWarning

TRAIN = np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)
TEST = np.random.RandomState(1).randint(0, 256, (3, 32, 32, 3), dtype=np.uint8)


def _padim(**kwargs):
    return skpadim.make_padim("resnet18", n_features=10, weights=None, resize=32, crop=None,
                              random_state=0, **kwargs)


MODELS = {
    "padim": lambda: _padim(),
    "padim_float16": lambda: _padim(storage_dtype="float16"),
    "feature_indices": lambda: skpadim.make_padim(
        "resnet18", feature_indices=[300, 5, 17, 1, 64], weights=None, resize=32, crop=None),
    "pca": lambda: make_pipeline(
        skpadim.BackboneFeatures(weights=None, resize=32, crop=None, random_state=0),
        skpadim.PatchPCA(n_components=8), skpadim.PatchGaussian()),
    "spade": lambda: skpadim.make_spade("resnet18", weights=None, resize=32, crop=None,
                                        n_neighbors=2, random_state=0),
    "vae": lambda: skpadim.VAE(resize=36, random_crop=34, crop=32, n_epochs=1, n_augmented=8,
                               batch_size=4, random_state=0),
}


@pytest.fixture(scope="module")
def fitted():
    """Each model, fitted once for the module (they are cached: fits cost seconds)."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = MODELS[name]().fit(TRAIN)
        return cache[name]

    return get


@pytest.fixture(scope="module")
def padim_file(fitted, tmp_path_factory):
    return skpadim.save(fitted("padim"), tmp_path_factory.mktemp("m") / "padim.safetensors")


def _outputs(model, X):
    return {"score_samples": model.score_samples(X), "predict": model.predict(X),
            "maps": skpadim.anomaly_maps(model, X)}


# ---------------------------------------------------------------------------- round trips
@pytest.mark.parametrize("name", list(MODELS))
def test_round_trip_gives_bit_identical_scores_and_maps(name, fitted, tmp_path):
    model = fitted(name)
    path = skpadim.save(model, tmp_path / "model.safetensors")
    assert persistence.file_format(path) == "safetensors"
    loaded = skpadim.load(path)
    assert type(loaded) is type(model) and repr(loaded) == repr(model)
    expected, found = _outputs(model, TEST), _outputs(loaded, TEST)
    for key in expected:
        np.testing.assert_array_equal(found[key], expected[key], err_msg=key)
        assert found[key].dtype == expected[key].dtype
    # Parameters come back with their types (tuples stay tuples, ints stay ints).
    assert repr(loaded.get_params(deep=True)) == repr(model.get_params(deep=True))


def test_custom_feature_indices_are_kept_in_order(fitted, tmp_path):
    model = fitted("feature_indices")
    loaded = skpadim.load(skpadim.save(model, tmp_path / "m.safetensors"))
    np.testing.assert_array_equal(loaded[1].feature_indices_, [300, 5, 17, 1, 64])
    assert loaded[1].feature_indices == [300, 5, 17, 1, 64]


@pytest.mark.parametrize("name", ["padim", "vae"])
def test_loaded_networks_are_on_the_cpu_in_eval_mode_and_frozen(name, fitted, tmp_path):
    model = fitted(name)
    loaded = skpadim.load(skpadim.save(model, tmp_path / "m.safetensors"))
    module = (loaded[0] if name == "padim" else loaded).module_
    tensors = list(module.parameters()) + list(module.buffers())
    assert tensors and all(t.device.type == "cpu" for t in tensors)
    assert not module.training and not any(p.requires_grad for p in module.parameters())


def test_identical_fits_write_byte_identical_files(tmp_path):
    first = skpadim.save(_padim().fit(TRAIN), tmp_path / "a.safetensors")
    second = skpadim.save(_padim().fit(TRAIN), tmp_path / "b.safetensors")
    assert pathlib.Path(first).read_bytes() == pathlib.Path(second).read_bytes()


def test_every_supported_value_type_round_trips(tmp_path):
    selector = skpadim.RandomFeatureSelector(
        n_features=2, random_state=np.random.RandomState(3)).fit(np.ones((4, 5)))
    extras = {
        "floats_": (float("nan"), float("inf"), -float("inf"), -0.0, 0.1, 1e300),
        "numpy_": [np.float32(0.1), np.float16(2.5), np.int64(-3), np.bool_(True),
                   np.uint8(7), np.arange(6, dtype=np.int16).reshape(2, 3)[:, ::-1]],
        "torch_": {"device": torch.device("cpu"), "dtype": torch.float16,
                   "size": torch.Size([2, 3]), "tensor": torch.arange(4.0)[::2],
                   "half": torch.ones(2, dtype=torch.bfloat16)},
        "mapping_": {3: "int key", (1, 2): None, "nested": [{"a": ()}]},
        "path_": pathlib.Path("some/where.pth"),
        "dtype_": np.dtype("float32"),
        "generator_": torch.Generator().manual_seed(5),
        "empty_": np.zeros((0, 3), dtype=np.float32),
    }
    for key, value in extras.items():
        setattr(selector, key, value)
    loaded = skpadim.load(skpadim.save(selector, tmp_path / "s.safetensors"))

    floats = loaded.floats_
    assert type(floats) is tuple and np.isnan(floats[0])
    assert floats[1:] == extras["floats_"][1:] and str(floats[3]) == "-0.0"
    for a, b in zip(loaded.numpy_, extras["numpy_"]):
        assert type(a) is type(b) and np.array_equal(a, b)
    assert loaded.torch_["device"] == torch.device("cpu")
    assert loaded.torch_["dtype"] is torch.float16 and loaded.torch_["size"] == (2, 3)
    assert torch.equal(loaded.torch_["tensor"], torch.tensor([0.0, 2.0]))
    assert loaded.torch_["half"].dtype == torch.bfloat16
    assert loaded.mapping_ == extras["mapping_"]
    assert list(loaded.mapping_) == list(extras["mapping_"])  # insertion order kept
    assert loaded.path_ == extras["path_"] and loaded.dtype_ == np.float32
    assert torch.equal(loaded.generator_.get_state(), extras["generator_"].get_state())
    assert loaded.empty_.shape == (0, 3)
    # A RandomState parameter comes back in the state it had.
    assert loaded.random_state.randint(1000) == selector.random_state.randint(1000)


# ---------------------------------------------------------------------------- save-time errors
class _Opaque:
    pass


@pytest.mark.parametrize("attribute, value, message", [
    ("extra_", _Opaque(), "attribute 'steps[2][1].extra_': a tests.test_persistence._Opaque"),
    ("extra_", np.array(["a", "b"], dtype=object), "numpy array of dtype object"),
    ("extra_", lambda x: x, "attribute 'steps[2][1].extra_': a builtins.function"),
])
def test_save_names_the_attribute_it_cannot_store(attribute, value, message, tmp_path):
    model = make_pipeline(skpadim.RandomFeatureSelector(n_features=1),
                          skpadim.RandomFeatureSelector(n_features=1),
                          skpadim.PatchGaussian())
    setattr(model[-1], attribute, value)
    with pytest.raises(ModelFileError, match="cannot save") as info:
        skpadim.save(model, tmp_path / "m.safetensors")
    assert message.replace("tests.", "") in str(info.value).replace("tests.", "")
    assert os.listdir(tmp_path) == []  # nothing written, no temporary file left


def test_save_refuses_estimators_outside_the_allow_list(tmp_path):
    from sklearn.preprocessing import StandardScaler

    with pytest.raises(ModelFileError, match="StandardScaler.*skpadim.PatchGaussian"):
        skpadim.save(make_pipeline(StandardScaler(), skpadim.PatchGaussian()),
                     tmp_path / "m.safetensors")
    with pytest.raises(ModelFileError, match="builtins.dict"):
        skpadim.save({"model": skpadim.PatchGaussian()}, tmp_path / "m.safetensors")


def test_save_into_a_missing_folder_is_a_model_file_error(fitted, tmp_path):
    target = tmp_path / "no" / "such" / "m.safetensors"
    with pytest.raises(ModelFileError, match="cannot write model file"):
        skpadim.save(fitted("padim"), target)


# ---------------------------------------------------------------------------- load-time errors
def _rewrite(src, dst, document=None, tensors=None):
    """Copy a model file, editing its JSON description and/or its tensors."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src, framework="pt") as f:
        text = f.metadata()[persistence.METADATA_KEY]
        stored = {k: f.get_tensor(k) for k in f.keys()}
    if document is not None:
        text = document(json.loads(text))
        text = text if isinstance(text, str) else json.dumps(text)
    if tensors is not None:
        tensors(stored)
    save_file(stored, dst, metadata={persistence.METADATA_KEY: text})
    return dst


def _nodes(node):
    """Every JSON object of a description, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for value in node:
            yield from _nodes(value)


def _detector(document):
    return next(n for n in _nodes(document) if n.get("class") == "skpadim.PatchGaussian")


def _rename_class(document):
    _detector(document)["class"] = "os.system"
    return document


def _future(document):
    document["format_version"] = persistence.FORMAT_VERSION + 1
    document["versions"]["skpadim"] = "9.0"
    return document


def _unknown_type(document):
    _detector(document)["state"]["n_samples_seen_"] = {"$type": "exec", "code": "..."}
    return document


def _unknown_parameter(document):
    _detector(document)["params"]["shell"] = "rm -rf /"
    return document


def _bad_parameter(document):
    _detector(document)["params"]["reg_covar"] = "lots"
    return document


def _drop(stored):
    del stored[next(k for k in stored if "module_" in k)]


def _extra(stored):
    stored["payload"] = torch.zeros(3)


def _reshape(stored):
    name = next(k for k in stored if k.endswith("feature_indices_"))
    stored[name] = torch.zeros(3, dtype=stored[name].dtype)


def _retype(stored):
    name = next(k for k in stored if k.endswith("module_.body.0.0.weight"))
    stored[name] = stored[name].double()


@pytest.mark.parametrize("document, tensors, message", [
    (_rename_class, None, "names estimator class 'os.system', which is not one skpadim loads"),
    (lambda d: json.dumps(d)[:-40], None, "description (JSON in the header) is malformed"),
    (lambda d: json.dumps(d)[:-1] + ', "extra": NaN}', None, "NaN is not JSON"),
    (_future, None, "written by skpadim 9.0 in model-file format version 2; this skpadim"),
    (_unknown_type, None, "unknown entry type 'exec'"),
    (_unknown_parameter, None, "PatchGaussian takes no parameters ['shell']"),
    (_bad_parameter, None, "invalid parameters"),
    (None, _drop, "the file lacks tensor 'steps[0][1].module_."),
    (None, _extra, "holds tensors its description does not use: ['payload']"),
    (None, _reshape, "feature_indices_' is int64 [3], but the description says int64 [10]"),
    (None, _retype, "body.0.0.weight' is float64 [64, 3, 7, 7], but the description says "
                    "float32"),
    (lambda d: {"something": "else"}, None, "not a skpadim model"),
])
def test_edited_files_give_model_file_errors(padim_file, tmp_path, document, tensors, message):
    edited = _rewrite(padim_file, tmp_path / "edited.safetensors", document, tensors)
    with pytest.raises(ModelFileError) as info:
        skpadim.load(edited)
    assert message in str(info.value)
    assert str(edited) in str(info.value) and "bug" not in str(info.value)


def test_a_model_from_another_version_says_which(padim_file, tmp_path):
    def older(document):
        document["versions"]["skpadim"] = "0.0.1"
        _detector(document)["params"]["old_parameter"] = 1
        return document

    with pytest.raises(ModelFileError, match="written by skpadim 0.0.1; this is skpadim"):
        skpadim.load(_rewrite(padim_file, tmp_path / "old.safetensors", older))


def test_foreign_truncated_and_missing_files_are_model_file_errors(padim_file, tmp_path):
    from safetensors.torch import save_file

    cases = {
        "missing.safetensors": None,
        "text.safetensors": b"this is not a model",
        "truncated.safetensors": pathlib.Path(padim_file).read_bytes()[:100_000],
        "empty.safetensors": b"",
    }
    for name, content in cases.items():
        if content is not None:
            (tmp_path / name).write_bytes(content)
    save_file({"w": torch.zeros(2)}, tmp_path / "foreign.safetensors")
    for name, message in [("missing", "not found"), ("text", "neither a skpadim model file"),
                          ("truncated", "truncated"), ("empty", "neither"),
                          ("foreign", "not a skpadim model")]:
        with pytest.raises(ModelFileError, match=message):
            skpadim.load(tmp_path / f"{name}.safetensors")
    with pytest.raises(ModelFileError, match="is a folder"):
        skpadim.load(tmp_path)


def test_model_file_error_is_an_os_error_and_a_skpadim_error():
    assert issubclass(ModelFileError, OSError) and issubclass(ModelFileError, SkpadimError)
    assert str(ModelFileError("what and why")) == "what and why"


# ---------------------------------------------------------------------------- pickle files
class _Payload:
    """Unpickling this creates ``marker``: the code a malicious model file would run."""

    def __init__(self, marker):
        self.marker = pathlib.Path(marker)

    def __reduce__(self):
        return (pathlib.Path.touch, (self.marker,))


@pytest.mark.parametrize("compress", [0, 3])
def test_pickle_files_are_refused_without_being_unpickled(compress, fitted, tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "model.joblib"
    joblib.dump({"model": fitted("padim"), "payload": _Payload(marker)}, evil,
                compress=compress)
    assert persistence.file_format(evil) == "pickle"
    with pytest.raises(ModelFileError, match="pickle file .*would run any code it contains"):
        skpadim.load(evil)
    assert not marker.exists()
    # The control: unpickling the file does run its code.
    skpadim.load(evil, allow_pickle=True)
    assert marker.exists()


def test_allow_pickle_loads_a_genuine_joblib_model(fitted, tmp_path):
    joblib.dump(fitted("padim"), tmp_path / "model.joblib")
    loaded = skpadim.load(tmp_path / "model.joblib", allow_pickle=True)
    np.testing.assert_array_equal(loaded.score_samples(TEST),
                                  fitted("padim").score_samples(TEST))


def test_joblib_round_trip_keeps_working_without_warnings(fitted, tmp_path):
    model = fitted("padim")
    joblib.dump(model, tmp_path / "model.joblib")
    with warnings.catch_warnings():
        warnings.simplefilter("error", SkpadimWarning)
        loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.score_samples(TEST), model.score_samples(TEST))
    for step in loaded[:2]:  # the stamps are state, not attributes
        assert "_skpadim_version" not in vars(step) and "_sklearn_version" not in vars(step)


@pytest.mark.parametrize("writer", ["joblib", "safe"])
def test_a_model_saved_by_another_skpadim_version_warns(writer, fitted, tmp_path, monkeypatch):
    import skpadim._versioning

    model = fitted("padim")
    path = tmp_path / "model"
    with monkeypatch.context() as patch:
        patch.setattr(skpadim._versioning, "skpadim_version", lambda: "0.0.1")
        if writer == "joblib":
            joblib.dump(model, path)
        else:
            skpadim.save(model, path)
    # joblib: each stamped estimator warns; the safe format: one warning for the file.
    who = "BackboneFeatures" if writer == "joblib" else f"model file {str(path)!r}"
    with pytest.warns(SkpadimWarning) as caught:
        loaded = joblib.load(path) if writer == "joblib" else skpadim.load(path)
    messages = [str(w.message) for w in caught if w.category is SkpadimWarning]
    assert any(m.startswith(f"{who} was saved with skpadim 0.0.1 and scikit-learn ")
               and "; this is skpadim " in m for m in messages), messages
    if writer == "safe":
        assert len(messages) == 1, messages
    np.testing.assert_array_equal(loaded.score_samples(TEST), model.score_samples(TEST))


# ---------------------------------------------------------------------------- atomic writes
CHILD = """
import os, sys, time
import skpadim
from skpadim.io import _persistence as persistence

model_path, ready = sys.argv[1], sys.argv[2]
model = skpadim.load(model_path)
model.set_params(patchgaussian__contamination=0.2)  # what it saves differs from the file
write = persistence._write_tensors

def killed_half_way(tensors, metadata, tmp):
    write(tensors, metadata, tmp)
    with open(tmp, "r+b") as f:  # as if the process died with half the bytes on disk
        f.truncate(os.path.getsize(tmp) // 2)
    open(ready, "w").close()
    time.sleep(600)

persistence._write_tensors = killed_half_way
skpadim.save(model, model_path)
"""


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_a_save_killed_half_way_leaves_the_old_model_whole(fitted, tmp_path):
    model = fitted("padim")
    path = pathlib.Path(skpadim.save(model, tmp_path / "padim.safetensors"))
    before = path.read_bytes()
    script, ready = tmp_path / "child.py", tmp_path / "ready"
    script.write_text(textwrap.dedent(CHILD))
    child = subprocess.Popen([sys.executable, str(script), str(path), str(ready)],
                             stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 300
        while not ready.exists():
            assert child.poll() is None, child.stderr.read()
            assert time.monotonic() < deadline, "the child never reached the write"
            time.sleep(0.1)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
        child.stderr.close()
    assert child.returncode == -signal.SIGKILL

    assert path.read_bytes() == before
    loaded = skpadim.load(path)
    np.testing.assert_array_equal(loaded.score_samples(TEST), model.score_samples(TEST))
    # The half-written temporary file stays (nothing could remove it), under a hidden name
    # that no one takes for a model, and it does not load.
    strays = sorted(set(os.listdir(tmp_path)) - {"padim.safetensors", "child.py", "ready"})
    assert len(strays) == 1, strays
    assert strays[0].startswith(".padim.safetensors.") and strays[0].endswith(".tmp")
    with pytest.raises(ModelFileError):
        skpadim.load(tmp_path / strays[0])


def test_readers_never_see_a_partial_model_while_it_is_replaced(tmp_path):
    rng = np.random.RandomState(0)
    models = [skpadim.PatchGaussian().fit(rng.normal(size=(n, 4, 3, 3))) for n in (10, 20)]
    path = tmp_path / "live.safetensors"
    skpadim.save(models[0], path)
    errors, stop = [], threading.Event()

    def replace_repeatedly():
        try:
            for i in range(40):
                skpadim.save(models[i % 2], path)
        except Exception as exc:  # reported by the main thread
            errors.append(exc)
        finally:
            stop.set()

    writer = threading.Thread(target=replace_repeatedly)
    writer.start()
    seen = set()
    while not stop.is_set():
        seen.add(skpadim.load(path).n_samples_seen_)  # raises on a partial file
    writer.join()
    assert not errors and seen <= {10, 20}
    assert os.listdir(tmp_path) == ["live.safetensors"]  # every temporary file renamed
