"""Every documented path streams: batch-sized work, one backbone pass, results unchanged."""

import joblib
import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline
from sklearn.utils import estimator_html_repr

from reference_padim import ReferencePadim
from skpadim import (
    PRESETS,
    BackboneFeatures,
    PatchGaussian,
    StreamingPipeline,
    VAE,
    anomaly_maps,
    fit_in_batches,
    inspect_images,
    iter_inspect_images,
    make_padim,
    make_spade,
)
from skpadim.detectors import _gaussian as gaussian
from skpadim.detectors._calibration import SystematicSample
from skpadim.exceptions import ConfigurationError, InvalidImageError
from skpadim.gaussian import PatchMoments

SMALL = dict(weights=None, resize=None, crop=None, random_state=0, device="cpu")


@pytest.fixture
def images(tiny_images):
    return tiny_images[:, :64, :64]  # 12 images of 64 x 64


def _one_shot(pipe):
    """The same steps as a plain Pipeline: every feature map computed before the fit."""
    return Pipeline([(name, clone(step)) for name, step in pipe.steps])


class _MaxBatch:
    """Records the largest number of samples a method of ``cls`` was given."""

    def __init__(self, monkeypatch, cls, name):
        self.seen = []
        original = getattr(cls, name)

        def wrapper(est, X, *args, **kwargs):
            self.seen.append(len(X))
            return original(est, X, *args, **kwargs)

        monkeypatch.setattr(cls, name, wrapper)


def test_make_padim_returns_a_streaming_sklearn_pipeline(images):
    pipe = make_padim("resnet18", n_features=20, batch_size=5, **SMALL)
    assert isinstance(pipe, Pipeline) and isinstance(pipe, StreamingPipeline)
    assert pipe.get_params()["batch_size"] == 5
    copy = clone(pipe)
    assert isinstance(copy, StreamingPipeline) and copy.batch_size == 5
    assert "PatchGaussian" in estimator_html_repr(pipe)
    assert isinstance(pipe[:-1], StreamingPipeline) and pipe[:-1].batch_size == 5
    assert [name for name, _ in pipe.steps] == [
        "backbonefeatures", "randomfeatureselector", "patchgaussian"]


def test_streaming_fit_equals_a_one_shot_fit(images):
    pipe = make_padim("resnet18", n_features=20, batch_size=5, **SMALL).fit(images)
    whole = _one_shot(pipe).fit(images)
    np.testing.assert_allclose(pipe[-1].mean_, whole[-1].mean_, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(pipe[-1].precisions_cholesky_, whole[-1].precisions_cholesky_,
                               rtol=1e-4, atol=1e-5)
    assert pipe[-1].offset_ == pytest.approx(whole[-1].offset_, rel=1e-5)
    for method in ("score_samples", "decision_function"):
        np.testing.assert_allclose(getattr(pipe, method)(images),
                                   getattr(whole, method)(images), rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(pipe.predict(images), whole.predict(images))
    np.testing.assert_allclose(pipe.anomaly_maps(images), anomaly_maps(whole, images),
                               rtol=1e-5, atol=1e-5)


def test_batch_size_does_not_change_the_model(images):
    a = make_padim("resnet18", n_features=20, batch_size=3, **SMALL).fit(images)
    b = make_padim("resnet18", n_features=20, batch_size=12, **SMALL).fit(images)
    np.testing.assert_allclose(a.score_samples(images), b.score_samples(images), rtol=1e-5)
    assert a[-1].offset_ == pytest.approx(b[-1].offset_, rel=1e-5)


@pytest.mark.parametrize("as_paths", [False, True])
def test_no_step_ever_sees_more_than_a_batch(images, tmp_path, monkeypatch, as_paths):
    from PIL import Image

    X = images
    if as_paths:
        X = []
        for i, image in enumerate(images):
            X.append(str(tmp_path / f"{i}.png"))
            Image.fromarray(image).save(X[-1])
    backbone = _MaxBatch(monkeypatch, BackboneFeatures, "_transform")
    detector = _MaxBatch(monkeypatch, PatchGaussian, "partial_fit")
    scorer = _MaxBatch(monkeypatch, PatchGaussian, "_patch_distances")
    pipe = make_padim("resnet18", n_features=20, batch_size=4, **SMALL).fit(X)
    for method in ("score_samples", "predict", "decision_function", "anomaly_maps",
                   "inspect"):
        getattr(pipe, method)(X)
    assert max(backbone.seen) <= 4 and max(detector.seen) <= 4 and max(scorer.seen) <= 4
    assert sum(detector.seen) == len(X)


def test_each_image_goes_through_the_backbone_once(images, monkeypatch):
    counter = _MaxBatch(monkeypatch, BackboneFeatures, "_transform")
    pipe = make_padim("resnet18", n_features=20, batch_size=5, **SMALL).fit(images)
    # Fitting: every image once, plus one image to learn the channel count.
    assert sum(counter.seen) == len(images) + 1
    counter.seen.clear()
    result = pipe.inspect(images)
    assert sum(counter.seen) == len(images)
    np.testing.assert_array_equal(result.anomaly_scores, -pipe.score_samples(images))
    np.testing.assert_array_equal(result.labels, pipe.predict(images))
    np.testing.assert_allclose(result.maps, pipe.anomaly_maps(images), rtol=1e-6)
    np.testing.assert_allclose(result.maps.max(axis=(1, 2)), result.anomaly_scores, rtol=1e-6)


def test_iter_inspect_images_yields_batches_that_add_up(images):
    pipe = make_padim("resnet18", n_features=20, **SMALL).fit(images)
    whole = inspect_images(pipe, images)
    parts = list(iter_inspect_images(pipe, images, batch_size=5))
    assert [start for start, _ in parts] == [0, 5, 10]
    # Equal up to float rounding, not to the bit: the CPU's convolution kernels are chosen by
    # batch size (the last part holds 2 images, the whole run's backbone batch 4), and on some
    # processors (AMD EPYC here) they round differently. Order and completeness are exact.
    np.testing.assert_allclose(np.concatenate([p.maps for _, p in parts]), whole.maps,
                               rtol=1e-6)


def test_inspect_works_on_a_plain_pipeline_and_on_spade(images):
    plain = fit_in_batches(_one_shot(make_padim("resnet18", n_features=20, **SMALL)), images)
    assert inspect_images(plain, images[:3]).maps.shape == (3, 64, 64)
    spade = make_spade("resnet18", n_neighbors=3, **SMALL).fit(images)
    result = spade.inspect(images[:3])
    # SPADE scores images by its own image-level rule, not the map's maximum.
    np.testing.assert_allclose(result.anomaly_scores, -spade.score_samples(images[:3]),
                               rtol=1e-6)
    np.testing.assert_array_equal(result.labels, spade.predict(images[:3]))


def test_partial_fit_factorises_once_when_first_used(feature_maps, monkeypatch):
    calls = []
    original = gaussian.precision_cholesky
    monkeypatch.setattr(gaussian, "precision_cholesky",
                        lambda *a, **k: calls.append(1) or original(*a, **k))
    model = PatchGaussian()
    for part in np.array_split(feature_maps, 4):
        model.partial_fit(part)
    assert calls == []                                # no factorisation per batch
    scores = model.score_samples(feature_maps)
    n_calls = len(calls)
    assert n_calls >= 1
    model.score_samples(feature_maps)
    assert len(calls) == n_calls                      # and none on later use
    reference = PatchGaussian().fit(feature_maps)
    np.testing.assert_allclose(scores, reference.score_samples(feature_maps), rtol=1e-5)
    assert model.offset_ == pytest.approx(reference.offset_, rel=1e-5)


def test_threshold_comes_from_a_bounded_sample_without_a_second_pass(feature_maps):
    capped = PatchGaussian(calibration_size=8).fit(feature_maps)     # 40 samples
    sample = capped.calibration_samples_
    assert 4 <= len(sample) <= 8
    np.testing.assert_array_equal(sample, feature_maps[::8][: len(sample)])
    # The same sample whatever the batches: fit, partial_fit and a streamed fit agree.
    parts = PatchGaussian(calibration_size=8)
    for part in np.array_split(feature_maps, [3, 17, 30]):
        parts.partial_fit(part)
    assert parts.offset_ == pytest.approx(capped.offset_, rel=1e-5)
    # Within calibration_size, every training sample is scored, as a second pass would.
    full = PatchGaussian().fit(feature_maps)
    loo = gaussian.leave_one_out_distances(full.patch_distances(feature_maps), 40)
    expected = np.percentile(-full._distances_to_scores(loo), 1.0)
    assert full.offset_ == pytest.approx(expected, rel=1e-6)


def test_systematic_sample_is_independent_of_batching():
    data = np.arange(100.0)[:, None]
    a, b = SystematicSample(10), SystematicSample(10)
    a.add(data)
    for part in np.array_split(data, 13):
        b.add(part)
    assert a.indices == b.indices and 5 <= len(a) <= 10
    assert a.indices == list(range(0, 100, a.stride))


def test_the_calibration_sample_is_not_saved(feature_maps, tmp_path):
    model = PatchGaussian().fit(feature_maps)
    joblib.dump(model, tmp_path / "m.joblib")
    restored = joblib.load(tmp_path / "m.joblib")
    assert "_calibration" not in vars(restored) and "_moments" not in vars(restored)
    np.testing.assert_array_equal(restored.score_samples(feature_maps),
                                  model.score_samples(feature_maps))


def test_merged_moments_equal_one_pass(worker_moments):
    X, one, a, b = (worker_moments.X, worker_moments.one, worker_moments.a, worker_moments.b)
    merged = a.merge(b)
    assert merged.count == 60
    torch.testing.assert_close(merged.mean, X.mean(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(merged.covariance(), one.covariance(), rtol=1e-10, atol=1e-10)
    expected = torch.stack([torch.cov(x.T) for x in X])
    torch.testing.assert_close(merged.covariance(), expected, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(b.merge(a).covariance(), merged.covariance(), rtol=1e-10,
                               atol=1e-10)


def test_merging_moments_of_other_shapes_is_refused():
    a = PatchMoments.empty(torch.zeros(3, 2))
    with pytest.raises(InvalidImageError, match="cannot merge"):
        a.merge(PatchMoments.empty(torch.zeros(4, 2)))


def test_a_model_from_merged_moments_equals_one_fit(feature_maps):
    def moments(part):
        t = torch.from_numpy(part).reshape(len(part), part.shape[1], -1).permute(2, 0, 1)
        return PatchMoments.empty(t.mean(dim=1, dtype=torch.float64)).update(t)

    merged = moments(feature_maps[:15]).merge(moments(feature_maps[15:]))
    model = PatchGaussian.from_moments(merged, grid_shape=feature_maps.shape[2:],
                                       calibration_samples=feature_maps, reg_covar=0.05)
    reference = PatchGaussian(reg_covar=0.05).fit(feature_maps)
    np.testing.assert_allclose(model.score_samples(feature_maps),
                               reference.score_samples(feature_maps), rtol=1e-5)
    assert model.offset_ == pytest.approx(reference.offset_, rel=1e-5)
    with pytest.raises(InvalidImageError, match="positions"):
        PatchGaussian.from_moments(merged, grid_shape=(2, 2))


def test_anomalib_preset_reproduces_anomalib_style_maps(tiny_images, resnet18_weights):
    idx = np.random.RandomState(3).permutation(448)[:40]            # unsorted, as anomalib
    reference = ReferencePadim(torch.load(resnet18_weights, weights_only=True), idx,
                               image_size=72).fit(tiny_images[:10])
    pipe = make_padim("resnet18", preset="anomalib", weights=str(resnet18_weights),
                      feature_indices=idx, device="cpu").fit(tiny_images[:10])
    np.testing.assert_array_equal(pipe[1].feature_indices_, idx)     # order kept
    theirs = reference.anomaly_maps(tiny_images[10:])
    result = pipe.inspect(tiny_images[10:])
    np.testing.assert_allclose(result.maps, theirs, rtol=1e-4, atol=1e-4 * theirs.max())
    np.testing.assert_allclose(result.anomaly_scores, theirs.max(axis=(1, 2)), rtol=1e-4)


def test_presets_fill_only_what_is_left_at_auto():
    paper = make_padim("resnet18", preset="paper", weights=None)
    assert (paper[0].resize, paper[0].crop, paper[-1].reg_covar, paper[-1].mode) == (
        256, 224, 0.01, "reflect")
    anomalib = make_padim("resnet18", preset="anomalib", weights=None, reg_covar=0.1)
    assert anomalib[0].resize is None and anomalib[-1].reg_covar == 0.1
    assert anomalib[-1].interpolation == "bilinear" and anomalib[-1].mode == "mirror"
    split = make_padim("resnet18", weights=None, interpolation="bilinear",
                       map_interpolation="bicubic")
    assert split[0].interpolation == "bilinear" and split[-1].interpolation == "bicubic"
    assert set(PRESETS) == {"full-view", "paper", "anomalib"}
    with pytest.raises(ConfigurationError, match="anomalib"):
        make_padim("resnet18", preset="patchcore")


def test_empty_input_is_a_clear_error(images):
    pipe = make_padim("resnet18", n_features=20, **SMALL).fit(images)
    for call in (lambda: anomaly_maps(pipe, []), lambda: pipe.score_samples([]),
                 lambda: inspect_images(pipe, [])):
        with pytest.raises(InvalidImageError, match="no images"):
            call()


def test_a_size_mismatch_fails_before_the_backbone_runs(images, monkeypatch):
    pipe = make_padim("resnet18", n_features=20, **SMALL).fit(images)
    forward = []
    trunk = pipe[0]._inference_module(torch.device("cpu"))
    monkeypatch.setattr(type(trunk), "forward",
                        lambda self, x: forward.append(1) or None)
    with pytest.raises(InvalidImageError, match=r"\(64, 64\) seen in fit"):
        pipe.score_samples(images[:, :48, :48])
    assert forward == []


def test_fold_batch_norm_keeps_the_features(images):
    features = BackboneFeatures(**SMALL).fit(images)
    x = torch.from_numpy(images[:2]).permute(0, 3, 1, 2).float() / 255
    with torch.inference_mode():
        plain = features.module_(x)
        folded = features._inference_module(torch.device("cpu"))(x)
    assert folded is not None
    for a, b in zip(plain, folded):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4 * float(a.abs().max()))
    assert "_folded" not in features.__getstate__()


def test_vae_scores_in_batches_as_at_once(tiny_images):
    vae = VAE(resize=36, random_crop=34, crop=32, n_epochs=1, n_augmented=8, batch_size=4,
              random_state=0, device="cpu").fit(tiny_images[:8])
    batched = vae.score_samples(tiny_images)
    vae.set_params(batch_size=12)
    np.testing.assert_allclose(vae.score_samples(tiny_images), batched, rtol=1e-5)


def test_a_diverged_vae_is_an_error_in_fit(tiny_images, monkeypatch):
    from skpadim.detectors import _vae

    monkeypatch.setattr(_vae, "train_vae", lambda *a, **k: [1.0, float("nan")])
    with pytest.raises(ConfigurationError, match="diverged.*epoch 2"):
        VAE(resize=36, random_crop=34, crop=32, n_epochs=2, n_augmented=8, batch_size=4,
            random_state=0, device="cpu").fit(tiny_images[:8])


def test_a_nan_training_score_is_an_error(feature_maps):
    model = PatchGaussian().fit(feature_maps)
    with pytest.raises(InvalidImageError, match="NaN or infinite score"):
        model._set_offset(np.array([1.0, np.nan]))


def test_a_backbone_by_name_sees_the_whole_image_and_a_paper_configuration_crops():
    # The paper's centre crop discards the border; only its configurations and preset keep it.
    whole = make_padim("resnet18", weights=None)
    assert (whole[0].resize, whole[0].crop, whole[-1].map_size) == (256, None, 256)
    for paper in (make_padim("R18-Rd100", weights=None),
                  make_padim("PaDiM-Lite0-Rd100", weights=None),
                  make_padim("resnet18", preset="paper", weights=None)):
        assert (paper[0].resize, paper[0].crop) == (256, 224)
    with pytest.raises(ConfigurationError, match="choose 'auto' or one of 'full-view'"):
        make_padim("resnet18", preset="whole")
