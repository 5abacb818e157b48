"""The VAE baseline: its pieces, training behaviour, persistence, and a quality floor.

Every test trains on 32x32 images for a few epochs, so the file runs in seconds on a CPU.

scikit-learn's ``parametrize_with_checks`` runs nothing on an estimator whose input is images
(its checks feed 2-D ``(n_samples, n_features)`` arrays, which the VAE rejects, and it skips
estimators without the ``two_d_array`` tag). What applies without data is run here one by one:
the API checks on construction, ``get_params``/``set_params``, cloning, ``repr`` and tags,
parameter validation (which fails before any data is read), and the check that an unfitted
VAE refuses to predict.
"""

import copy

import joblib
import numpy as np
import pytest
import torch
from numpy.testing import assert_allclose, assert_array_equal
from sklearn.utils import estimator_checks as checks

from skpadim.exceptions import InvalidImageError
from skpadim.metrics import image_auroc, pixel_auroc
from skpadim.preprocessing import transform_masks
from skpadim.vae import VAE, augment_batch, elbo_loss

SIZE = 32
GEOMETRY = dict(resize=36, random_crop=34, crop=SIZE)


# ---------------------------------------------------------------------- sklearn's API checks
API_CHECKS = [
    checks.check_estimator_cloneable,
    checks.check_estimator_repr,
    checks.check_estimator_tags_renamed,
    checks.check_valid_tag_types,
    checks.check_no_attributes_set_in_init,
    checks.check_parameters_default_constructible,
    checks.check_get_params_invariance,
    checks.check_set_params,
    checks.check_do_not_raise_errors_in_init_or_set_params,
    checks.check_mixin_order,
    checks.check_param_validation,
    checks.check_estimators_unfitted,
]


@pytest.mark.parametrize("check", API_CHECKS, ids=lambda c: c.__name__)
def test_sklearn_api_checks_that_need_no_2d_data(check):
    check("VAE", VAE())


# ---------------------------------------------------------------------- the pieces
def test_elbo_loss_is_squared_error_plus_weighted_kl():
    rng = torch.Generator().manual_seed(0)
    x, r = torch.rand(3, 3, 4, 4, generator=rng), torch.rand(3, 3, 4, 4, generator=rng)
    mu, logvar = torch.randn(3, 2, 1, 1, generator=rng), torch.randn(3, 2, 1, 1, generator=rng)
    sq = ((x - r) ** 2).sum(dim=(1, 2, 3))
    kl = 0.5 * (mu**2 + logvar.exp() - 1 - logvar).sum(dim=(1, 2, 3))
    assert_allclose(elbo_loss(x, r, mu, logvar, 0.5), (sq + 0.5 * kl).mean(), rtol=1e-6)


def test_augmentation_without_rotation_copies_random_crops():
    images = torch.randint(0, 256, (6, 3, 12, 12), dtype=torch.uint8)
    out = augment_batch(images, torch.Generator().manual_seed(0), (6, 6), (10, 10), 0.0)
    assert out.shape == (6, 3, 6, 6)
    found = set()
    for image, crop in zip(images.float() / 255, out):
        tops = [(t, l) for t in range(7) for l in range(7)
                if torch.allclose(image[:, t : t + 6, l : l + 6], crop, atol=1e-6)]
        assert tops and all(2 <= t <= 4 and 2 <= l <= 4 for t, l in tops)
        found.update(tops)
    assert len(found) > 1  # the windows move


def test_augmentation_is_reproducible_and_rotates():
    images = torch.randint(0, 256, (4, 3, 40, 40), dtype=torch.uint8)
    a = augment_batch(images, torch.Generator().manual_seed(3), (32, 32), (36, 36), 10.0)
    b = augment_batch(images, torch.Generator().manual_seed(3), (32, 32), (36, 36), 10.0)
    assert torch.equal(a, b)
    straight = augment_batch(images, torch.Generator().manual_seed(3), (32, 32), (36, 36), 0.0)
    assert not torch.allclose(a, straight)
    assert 0 <= float(a.min()) and float(a.max()) <= 1
    with pytest.raises(InvalidImageError, match=r"random_crop \(44, 44\) .* images \(40, 40\)"):
        augment_batch(images, torch.Generator(), (32, 32), (44, 44))


# ---------------------------------------------------------------------- trained models
def make_blobs_set(n, anomalous, rng):
    """Smooth grey images with a slight tilt and noise; anomalies are a square patch of
    saturated colour or black, the simple drawn defect a reconstruction model should miss."""
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE - 0.5
    images, masks = [], []
    for i, odd in enumerate(anomalous):
        level, tilt_y, tilt_x = rng.uniform(0.35, 0.65), *rng.uniform(-0.1, 0.1, 2)
        image = np.repeat((level + tilt_y * yy + tilt_x * xx)[..., None], 3, axis=2)
        image += rng.normal(0, 0.02, image.shape)
        mask = np.zeros((SIZE, SIZE), bool)
        if odd:
            r, c = rng.randint(4, SIZE - 9, 2)
            mask[r : r + 5, c : c + 5] = True
            image[mask] = [0.95, 0.2, 0.1] if i % 2 else [0.05, 0.05, 0.05]
        images.append(image)
        masks.append(mask)
    return (np.clip(np.array(images), 0, 1) * 255).astype(np.uint8), np.array(masks)


@pytest.fixture(scope="module")
def blobs():
    rng = np.random.RandomState(0)
    train, _ = make_blobs_set(16, np.zeros(16, bool), rng)
    labels = np.repeat([0, 1], 6)
    test, masks = make_blobs_set(12, labels.astype(bool), rng)
    return train, test, labels, masks


@pytest.fixture(scope="module")
def fitted(blobs):
    train = blobs[0]
    return VAE(n_epochs=8, n_augmented=16, batch_size=16, learning_rate=1e-3, random_state=0,
               **GEOMETRY).fit(train)


def test_loss_decreases(fitted):
    curve = fitted.loss_curve_
    assert len(curve) == fitted.n_iter_ == 8
    assert curve[-1] < 0.6 * curve[0]
    assert all(b < a for a, b in zip(curve[:-2], curve[2:]))
    assert fitted.n_samples_fit_ == 16 and fitted.image_size_ == (SIZE, SIZE)


def test_training_images_reconstruct_better_than_defective_ones(fitted, blobs):
    train, test, labels, masks = blobs
    assert fitted.anomaly_scores(train).mean() < fitted.anomaly_scores(test[labels == 1]).min()
    errors = fitted.patch_distances(test[labels == 1])
    masks = transform_masks(masks[labels == 1], GEOMETRY["resize"], SIZE)
    assert errors[masks].mean() > 2 * errors[~masks].mean()
    assert fitted.reconstruct(train[:2]).shape == (2, 3, SIZE, SIZE)


def test_quality_floor_on_drawn_defects(fitted, blobs):
    """Measured (random_state=0): image AUROC 0.89, pixel AUROC 0.95."""
    _, test, labels, masks = blobs
    maps = fitted.anomaly_maps(test)
    assert maps.shape == (12, SIZE, SIZE)
    assert image_auroc(labels, -fitted.score_samples(test)) >= 0.75
    assert pixel_auroc(transform_masks(masks, GEOMETRY["resize"], SIZE), maps) >= 0.85


def test_anomalous_images_in_y_are_not_trained_on(blobs):
    train, test, labels, _ = blobs
    params = dict(n_epochs=1, n_augmented=8, batch_size=4, random_state=0, **GEOMETRY)
    mixed = np.concatenate([test[labels == 1][:2], train[:6]])
    labelled = VAE(**params).fit(mixed, np.r_[1, 1, np.zeros(6, int)])
    normal_only = VAE(**params).fit(train[:6])
    assert labelled.n_samples_fit_ == 6
    assert_allclose(labelled.anomaly_scores(test), normal_only.anomaly_scores(test))


def test_predict_follows_the_threshold(fitted, blobs):
    test = blobs[1]
    decision = fitted.decision_function(test)
    assert_allclose(decision, fitted.score_samples(test) - fitted.offset_)
    assert_array_equal(fitted.predict(test), np.where(decision >= 0, 1, -1))


@pytest.fixture(scope="module")
def twins(blobs, resnet18_weights):
    """Two tiny VAEs trained alike, with the encoder read from a state-dict file."""
    params = dict(weights=resnet18_weights, n_epochs=2, n_augmented=8, batch_size=8,
                  latent_channels=4, random_state=7, **GEOMETRY)
    return VAE(**params).fit(blobs[0][:8]), VAE(**params).fit(blobs[0][:8])


def test_same_random_state_trains_the_same_model(twins, blobs):
    a, b = twins
    assert a.loss_curve_ == b.loss_curve_
    assert_array_equal(a.anomaly_maps(blobs[1][:3]), b.anomaly_maps(blobs[1][:3]))


def test_different_random_states_draw_different_augmentations(blobs):
    images = torch.from_numpy(blobs[0][:4]).permute(0, 3, 1, 2)
    draws = [augment_batch(images, torch.Generator().manual_seed(s), (24, 24), (28, 28), 2.0)
             for s in (0, 1)]
    assert not torch.equal(*draws)


def test_encoder_starts_from_a_state_dict_file(twins, resnet18_weights):
    saved = torch.load(resnet18_weights, weights_only=True)["conv1.weight"]
    trained = twins[0].module_.encoder.body[0][0].weight
    # Two Adam steps of size 1e-4 move each weight by about 2e-4 at most; a fresh random
    # initialisation would differ by about 0.1.
    assert_allclose(trained.numpy(), saved.numpy(), atol=5e-4)
    assert not torch.equal(trained, saved)  # and the encoder is trained


def test_joblib_round_trip_gives_identical_scores(fitted, blobs, tmp_path):
    test = blobs[1]
    joblib.dump(fitted, tmp_path / "vae.joblib")
    loaded = joblib.load(tmp_path / "vae.joblib")
    assert all(p.device.type == "cpu" for p in loaded.module_.parameters())
    assert_array_equal(loaded.anomaly_maps(test), fitted.anomaly_maps(test))
    assert_array_equal(loaded.score_samples(test), fitted.score_samples(test))


def test_bad_geometry_and_sizes_are_explained(fitted, blobs):
    train = blobs[0][:4]
    with pytest.raises(InvalidImageError, match=r"crop \(34, 34\) <= random_crop \(33, 33\)"):
        VAE(resize=36, random_crop=33, crop=34, n_epochs=1).fit(train)
    with pytest.raises(InvalidImageError, match=r"need crop \(48, 48\)"):
        VAE(resize=None, random_crop=None, crop=48, n_epochs=1).fit(train)
    with pytest.raises(InvalidImageError, match="at least 2 normal samples, got 1"):
        VAE(n_epochs=1, **GEOMETRY).fit(train[:1])
    # Batch norm cannot train on one image: said before training starts.
    for bad in ({"batch_size": 1}, {"n_augmented": 1}):
        with pytest.raises(ValueError, match=f"'{next(iter(bad))}' parameter"):
            VAE(n_epochs=1, **GEOMETRY, **bad).fit(train)
    changed = copy.deepcopy(fitted).set_params(resize=None, crop=30)
    with pytest.raises(InvalidImageError, match=r"reach the network at \(30, 30\), not the"):
        changed.anomaly_maps(train)
