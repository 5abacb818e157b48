"""estimate_memory and StreamingPipeline(memory_limit=...): byte counts, refusals, advice."""

import ast
import os
import re

import numpy as np
import pytest
import torch
from safetensors import safe_open
from sklearn.base import clone
from sklearn.pipeline import make_pipeline

import skpadim
from skpadim import (
    BackboneFeatures,
    MemoryEstimate,
    PatchGaussian,
    RandomFeatureSelector,
    estimate_memory,
    make_padim,
)
from skpadim._memory import (
    MMAP_THRESHOLD,
    _LiveBytes,
    beside_pool,
    calibration_samples,
    factor_workspace,
    parse_memory,
)
from skpadim.detectors._calibration import SystematicSample
from skpadim.detectors._gaussian import _factorise
from skpadim.detectors._moments import PatchMoments
from skpadim.exceptions import ConfigurationError
from skpadim.pipeline import StreamingPipeline


def tiny_padim(n_features=10, **params):
    """R18 with 10 random channels: 32 x 32 images give an 8 x 8 grid."""
    return make_padim("resnet18", n_features=n_features, weights=None, resize=None,
                      crop=None, random_state=0, **params)


@pytest.fixture
def images():
    return np.random.RandomState(0).randint(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_estimate_memory_is_public_at_the_top_level():
    import skpadim._memory

    assert {"estimate_memory", "MemoryEstimate"} <= set(skpadim.__all__)
    assert skpadim.estimate_memory is skpadim._memory.estimate_memory
    assert skpadim.MemoryEstimate is skpadim._memory.MemoryEstimate


# ---------------------------------------------------------------------------- byte counts
def test_terms_match_hand_counted_bytes():
    estimate = estimate_memory(tiny_padim(), (32, 32), n_images=6)
    p, d = 8 * 8, 10
    assert (estimate.positions, estimate.n_features) == (p, d)
    assert isinstance(estimate, MemoryEstimate)
    terms = estimate.breakdown
    # float64 shift, sum, sum_cubic (p x d), sum_quartic (p), packed scatter p x d(d+1)/2
    assert terms["moments"] == 8 * p * (3 * d + 1 + d * (d + 1) // 2) == 44032
    assert terms["factors"] == 4 * p * d * d  # full float32 matrices while fitting
    assert terms["feature batch"] == 6 * 4 * p * d  # one StreamingPipeline batch: 6 images
    # The calibration buffer grows 4 -> 8 samples at the 5th, holding both copies then.
    assert terms["calibration sample"] == 8 * 4 * p * d
    trunk = skpadim.features.backbones.build_trunk("resnet18", weights=None)
    weights = sum(t.nbytes for t in trunk.state_dict().values())
    assert terms["weights"] == 2 * weights  # module_ and its batch-norm-folded copy
    # Saved: weights, float32 means, packed float32 factors, float64 shrinkage, indices.
    packed = p * d * (d + 1) // 2 * 4
    assert estimate.model_size == weights + 4 * p * d + packed + 8 * p + 8 * d
    assert estimate.fit_peak == max(estimate.phases.values())
    assert estimate.phases[estimate.peak_phase] == estimate.fit_peak


def test_float16_storage_halves_the_saved_factors_but_not_the_fit():
    wide, half = (estimate_memory(tiny_padim(storage_dtype=dtype), (64, 64))
                  for dtype in ("float32", "float16"))
    p, d = 16 * 16, 10
    assert wide.model_size - half.model_size == p * d * (d + 1) // 2 * 2
    assert half.fit_peak == wide.fit_peak  # fitting holds float32 factors either way


def test_model_size_equals_the_saved_tensors(images, tmp_path):
    pipe = tiny_padim().fit(images)
    path = skpadim.save(pipe, tmp_path / "model.safetensors")
    with safe_open(path, "pt") as f:
        saved = sum(f.get_tensor(k).nbytes for k in f.keys())
    assert estimate_memory(pipe, (32, 32), n_images=6).model_size == saved


def test_estimate_grows_with_positions_and_features():
    base = estimate_memory(tiny_padim(20), (64, 64))
    wider = estimate_memory(tiny_padim(20), (128, 64))
    deeper = estimate_memory(tiny_padim(40), (64, 64))
    assert wider.positions == 2 * base.positions
    assert wider.breakdown["factors"] == 2 * base.breakdown["factors"]  # p d^2
    assert deeper.breakdown["factors"] == 4 * base.breakdown["factors"]
    assert deeper.breakdown["moments"] > 3 * base.breakdown["moments"]  # ~ d^2 / 2
    assert wider.breakdown["backbone activations"] > base.breakdown["backbone activations"]
    for bigger in (wider, deeper):
        assert bigger.fit_peak > base.fit_peak


def test_resize_and_crop_set_what_the_network_sees():
    pipe = make_padim("resnet18", n_features=10, weights=None, resize=72, crop=64)
    assert estimate_memory(pipe, (480, 640)).positions == 16 * 16
    assert estimate_memory(tiny_padim(), 64) == estimate_memory(tiny_padim(), (64, 64))


def test_a_fitted_pipeline_is_estimated_as_the_unfitted_one(images):
    pipe = tiny_padim()
    before = estimate_memory(pipe, (32, 32), n_images=6)
    assert estimate_memory(pipe.fit(images), (32, 32), n_images=6) == before


@pytest.mark.parametrize("n_samples, capacity", [
    (1, 64), (4, 64), (5, 64), (6, 64), (17, 64), (64, 64), (65, 64), (200, 64),
    (300, 100), (10, None), (1000, 7),
])
def test_calibration_samples_follow_the_buffer(n_samples, capacity):
    """The peak against SystematicSample itself, fed one batch of 3 at a time."""
    sample, peak = SystematicSample(capacity), 0
    reserve = sample._reserve

    def counting(item):
        nonlocal peak
        held = len(sample.indices)
        grows = sample._buffer is None or held >= len(sample._buffer)
        peak = max(peak, 2 * held if grows else held + 1, held + 1)
        reserve(item)

    sample._reserve = counting
    for start in range(0, n_samples, 3):
        sample.add(np.zeros((min(3, n_samples - start), 1)))
    assert calibration_samples(n_samples, capacity) == (peak, len(sample))


def test_n_images_none_bounds_any_number_of_images():
    unknown = estimate_memory(tiny_padim(), (64, 64))
    for n in (2, 16, 500):
        assert estimate_memory(tiny_padim(), (64, 64), n_images=n).fit_peak <= unknown.fit_peak


def test_plain_pipeline_holds_every_feature_map():
    steps = [BackboneFeatures(weights=None, resize=None, crop=None),
             RandomFeatureSelector(n_features=10), PatchGaussian()]
    with pytest.raises(ConfigurationError, match="n_images"):
        estimate_memory(make_pipeline(*steps), (64, 64))
    plain = estimate_memory(make_pipeline(*steps), (64, 64), n_images=500)
    streamed = estimate_memory(StreamingPipeline(make_pipeline(*steps).steps), (64, 64),
                               n_images=500)
    assert plain.breakdown["feature batch"] == 500 * 4 * 16 * 16 * 10
    assert plain.fit_peak > streamed.fit_peak


def test_last_streamed_batch_counts_until_the_fit_ends():
    # StreamingPipeline.fit's loop keeps the last batch's features while the factors and
    # the threshold are computed: 8 images in batches of 4 leave 4 maps there, in one
    # batch of 8, all 8. Everything else is set alike: forward passes of one image, and
    # calibration scored 8 samples at a time.
    def factors_phase(batch_size):
        pipe = tiny_padim(batch_size=batch_size).set_params(
            backbonefeatures__batch_size=1, patchgaussian__batch_size=8)
        return estimate_memory(pipe, (64, 64), n_images=8).phases

    four, eight = factors_phase(4), factors_phase(8)
    map_bytes = 4 * 16 * 16 * 10
    assert eight["factors"] - four["factors"] == 4 * map_bytes
    assert eight["calibration"] - four["calibration"] == 4 * map_bytes


def test_small_arrays_reuse_the_allocators_retained_pool():
    big = MMAP_THRESHOLD
    assert beside_pool(100, [(60, 60), (30, 30)]) == 100  # carved out of the pool
    assert beside_pool(100, [(60, 60), (80, 80)]) == 140  # the pool, and what it lacks
    assert beside_pool(100, [(2 * big, big), (30, 30)]) == 100 + 2 * big  # mapped anew


def test_float_images_cost_more_activations():
    pipe = tiny_padim()
    uint8 = estimate_memory(pipe, (256, 256))
    floats = estimate_memory(pipe, (256, 256), image_dtype=np.float32)
    assert floats.breakdown["backbone activations"] > uint8.breakdown["backbone activations"]


def test_tiles_bound_the_activations():
    if "tile" not in BackboneFeatures().get_params():
        pytest.skip("BackboneFeatures has no tile parameter")
    whole = estimate_memory(tiny_padim(), (1024, 1024))
    tiled = estimate_memory(tiny_padim().set_params(backbonefeatures__tile=256), (1024, 1024))
    assert tiled.positions == whole.positions
    assert (tiled.breakdown["backbone activations"]
            < whole.breakdown["backbone activations"] / 2)


@pytest.mark.parametrize("bad, match", [
    ("not a pipeline", "PaDiM pipelines"),
    (make_pipeline(BackboneFeatures(weights=None), RandomFeatureSelector()), "PaDiM"),
])
def test_only_padim_pipelines_are_estimated(bad, match):
    with pytest.raises(ConfigurationError, match=match):
        estimate_memory(bad, (64, 64))


@pytest.mark.parametrize("size", [(64,), (0, 64), "64x64", None])
def test_image_size_must_be_a_pair_of_positive_ints(size):
    with pytest.raises(ConfigurationError, match="image_size"):
        estimate_memory(tiny_padim(), size)


def test_calibration_size_none_needs_n_images():
    pipe = tiny_padim(calibration_size=None)
    with pytest.raises(ConfigurationError, match="n_images"):
        estimate_memory(pipe, (64, 64))
    assert estimate_memory(pipe, (64, 64), n_images=10).breakdown["calibration sample"] > 0


def test_str_shows_gigabytes():
    text = str(estimate_memory(tiny_padim(), (640, 640)))
    assert "fit peak" in text and "model size" in text and "moments" in text
    assert re.search(r"\d+\.\d\d GB", text)


# ---------------------------------------------------------------------------- the tracer
@pytest.mark.parametrize("free_x, peak", [(False, 12000), (True, 8000)])
def test_live_bytes_counts_new_storages_until_freed(free_x, peak):
    with torch.inference_mode(), _LiveBytes() as live:
        x = torch.empty(1000, device="meta")
        live.track(x)                       # 4000 B
        y = x * 2                           # + 4000 B
        y.relu_()                           # in place: nothing new
        z = y.view(10, 100)                 # a view: nothing new
        if free_x:
            del x
        w = z + 1                           # + 4000 B
    assert live.peak == peak
    assert w.shape == (10, 100)


def test_channels_first_convolutions_get_onednn_buffer():
    conv = torch.nn.Conv2d(16, 32, 3, padding=1, device="meta")
    peaks = {}
    for layout in ("first", "last"):
        with torch.inference_mode(), _LiveBytes() as live:
            x = (torch.empty(2, 16, 8, 8, device="meta") if layout == "first" else
                 torch.empty(2, 8, 8, 16, device="meta").permute(0, 3, 1, 2))
            live.track(x)
            conv(x)
        peaks[layout] = live.peak
    x_bytes, out_bytes = 2 * 16 * 64 * 4, 2 * 32 * 64 * 4
    assert peaks == {"first": x_bytes + 2 * out_bytes, "last": x_bytes + out_bytes}


def test_factor_workspace_matches_traced_factorise():
    """The formula against the live tensors of a real (small) factorisation."""
    p, d = 128, 24
    X = torch.randn(p, 40, d, generator=torch.Generator().manual_seed(0))
    moments = PatchMoments.empty(X.mean(1, dtype=torch.float64)).update(X)
    with _LiveBytes() as live:
        _factorise(moments, "empirical", 0.01, "float32")
    held = 4 * p * d * d + 12 * p * d  # float32 factors; float64 and float32 means
    # Views of the moments count as well: at most their sums of one chunk.
    assert held + 0.9 * factor_workspace(p, d) <= live.peak
    assert live.peak <= held + 1.1 * factor_workspace(p, d) + 8 * 64 * d * (d + 2)


# ---------------------------------------------------------------------------- memory_limit
@pytest.mark.parametrize("value, expected", [
    ("6GB", 6 * 10**9), ("512MB", 512 * 10**6), ("1.5GiB", 3 * 2**29), ("100 kb", 10**5),
    ("2 mib", 2 * 2**20), ("1000", 1000), (1000, 1000), (".5GB", 5 * 10**8),
])
def test_memory_sizes_parse(value, expected):
    assert parse_memory(value) == expected


@pytest.mark.parametrize("value", ["6 gigs", "0", "0MB", "", "GB", "-1GB", "1e9", True, 0])
def test_bad_memory_sizes_say_what_to_write(value):
    with pytest.raises(ConfigurationError, match="'6GB', '512MB'"):
        parse_memory(value)


def test_memory_limit_type_is_validated_by_parameter_constraints(images):
    with pytest.raises(ValueError, match="memory_limit"):
        tiny_padim().set_params(memory_limit=1.5e9).fit(images)


@pytest.fixture
def backbone_calls(monkeypatch):
    """Counts what would put an image through the backbone."""
    calls = []

    def counting(name, method):
        def wrapper(self, *args, **kwargs):
            calls.append(name)
            return method(self, *args, **kwargs)
        return wrapper

    for name in ("fit", "_transform"):
        monkeypatch.setattr(BackboneFeatures, name,
                            counting(name, getattr(BackboneFeatures, name)))
    return calls


def test_refusal_comes_before_the_backbone(images, backbone_calls):
    pipe = tiny_padim().set_params(memory_limit="10MB")
    with pytest.raises(ConfigurationError, match=r"memory_limit='10MB' \(0\.01 GB\)"):
        pipe.fit(images)
    assert backbone_calls == []
    assert not hasattr(pipe[0], "module_")


def test_refusal_reads_only_file_headers(images, tmp_path, backbone_calls, monkeypatch):
    from PIL import Image

    import skpadim.features._images as image_module

    paths = []
    for k, image in enumerate(images):
        paths.append(os.fspath(tmp_path / f"{k}.png"))
        Image.fromarray(image).save(paths[-1])
    reads = []
    monkeypatch.setattr(image_module, "read_image", lambda p: reads.append(p))
    with pytest.raises(ConfigurationError, match="32x32 images"):
        tiny_padim().set_params(memory_limit=10**7).fit(paths)
    assert reads == [] and backbone_calls == []


def _advice(message):
    """The ``set_params(...)`` keyword arguments a refusal suggests."""
    found = re.findall(r"set_params\((.*?)\) \(about", message)
    calls = [ast.parse(f"f({args})", mode="eval").body for args in found]
    return [{k.arg: ast.literal_eval(k.value) for k in call.keywords} for call in calls]


@pytest.mark.parametrize("size, n_features, cut", [
    ((256, 256), 20, 1),        # a byte too many: a smaller batch is enough
    ((256, 256), 100, 0.6),     # the factors must shrink: fewer features or pixels
])
def test_advice_fits_under_the_limit(size, n_features, cut):
    pipe = tiny_padim(n_features)
    X = np.zeros((40, *size, 3), dtype=np.uint8)
    peak = estimate_memory(pipe, size, n_images=40).fit_peak
    limit = int(peak - cut) if cut >= 1 else int(peak * cut)
    with pytest.raises(ConfigurationError) as refused:
        pipe.set_params(memory_limit=limit).fit(X)
    advice = _advice(str(refused.value))
    assert advice
    for params in advice:
        trial = clone(pipe).set_params(**params)
        assert estimate_memory(trial, size, n_images=40).fit_peak <= limit, params
    if cut >= 1:
        assert "batch_size" in advice[0] or "backbonefeatures__batch_size" in advice[0]
    else:
        assert any("randomfeatureselector__n_features" in p for p in advice)
        assert any("backbonefeatures__resize" in p for p in advice)


def test_a_fit_under_the_limit_is_the_unlimited_fit(images):
    limited = tiny_padim().set_params(memory_limit="4GB").fit(images)
    plain = tiny_padim().fit(images)
    np.testing.assert_array_equal(limited.score_samples(images), plain.score_samples(images))


def test_clone_save_and_load_keep_memory_limit(images, tmp_path):
    pipe = tiny_padim().set_params(memory_limit="4GB")
    assert clone(pipe).memory_limit == "4GB"
    assert pipe.get_params()["memory_limit"] == "4GB"
    path = skpadim.save(pipe.fit(images), tmp_path / "model.safetensors")
    assert skpadim.load(path).memory_limit == "4GB"
    assert skpadim.load(skpadim.save(pipe.set_params(memory_limit=4 * 10**9),
                                     tmp_path / "b.safetensors")).memory_limit == 4 * 10**9


def test_memory_limit_applies_to_padim_only(images):
    pipe = skpadim.make_spade("resnet18", weights=None, resize=32, crop=None, n_neighbors=2)
    with pytest.raises(ConfigurationError, match="PaDiM pipelines"):
        pipe.set_params(memory_limit="4GB").fit(images)
    pipe.set_params(memory_limit=None).fit(images)  # without it, SPADE fits as before


def test_slices_do_not_inherit_memory_limit(images):
    pipe = tiny_padim().set_params(memory_limit="4GB")
    assert pipe[:1].memory_limit is None and pipe[:1].batch_size == pipe.batch_size
