"""Tests of skpadim.metrics against hand-worked answers and slow independent computations."""

import pickle

import numpy as np
import pytest
from scipy import ndimage
from sklearn.base import BaseEstimator
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GridSearchCV, KFold, StratifiedKFold

from skpadim.exceptions import InvalidImageError
from skpadim.metrics import (
    image_auroc,
    image_auroc_scorer,
    make_pro_scorer,
    pixel_auroc,
    pixel_auroc_scorer,
    pro_curve,
    pro_score,
    pro_scorer,
)

# --------------------------------------------------------------------------------------
# A PRO example worked out by hand.
#
# Three 3x4 images, 36 pixels:
#   A: two regions. r1 = {(0,0)}, size 1. r2 = {(0,3), (1,2), (2,2)}, size 3: (0,3) touches
#      (1,2) only diagonally, so 8-connectivity is needed to make it one region.
#      8 normal pixels.
#   B: one region r3 = {(1,1), (1,2)}, size 2. 10 normal pixels.
#   C: no defect. 12 normal pixels.
# 3 regions and 30 normal pixels in all.
#
# Scores, and what each threshold t flags (the counts are cumulative down the list):
#   t=0.9: 2 pixels of r2, 1 normal (C).         FP = 1   overlaps r1 0, r2 2/3, r3 0
#   t=0.8: r1, 1 pixel of r3.                    FP = 1   overlaps 1, 2/3, 1/2
#   t=0.7: 3 normals (2 in A, 1 in B).           FP = 4   unchanged
#   t=0.5: 2nd pixel of r3, 2 normals (C).       FP = 6   overlaps 1, 2/3, 1
#   t=0.3: 3rd pixel of r2, tied with 4 normals
#          (1 in A, 1 in B, 2 in C).             FP = 10  overlaps 1, 1, 1
#   t=0.0: the other 20 normals.                 FP = 30
# PRO = mean of the three overlaps, FPR = FP / 30:
#   t=0.9: (1/30, (0 + 2/3 + 0) / 3 = 2/9)
#   t=0.8: (1/30, (1 + 2/3 + 1/2) / 3 = 13/18)
#   t=0.7: (4/30, 13/18)
#   t=0.5: (6/30, (1 + 2/3 + 1) / 3 = 8/9)
#   t=0.3: (10/30, 1)
#   t=0.0: (1, 1)
# after the prepended (0, 0).
# --------------------------------------------------------------------------------------

HAND_MASKS = np.array(
    [
        [[1, 0, 0, 1], [0, 0, 1, 0], [0, 0, 1, 0]],
        [[0, 0, 0, 0], [0, 1, 1, 0], [0, 0, 0, 0]],
        [[0, 0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]],
    ],
    dtype=bool,
)
HAND_MAPS = np.array(
    [
        [[0.8, 0.7, 0.7, 0.9], [0.3, 0.0, 0.9, 0.0], [0.0, 0.0, 0.3, 0.0]],
        [[0.7, 0.0, 0.0, 0.0], [0.0, 0.8, 0.5, 0.0], [0.0, 0.0, 0.0, 0.3]],
        [[0.9, 0.5, 0.0, 0.0], [0.0, 0.5, 0.0, 0.3], [0.0, 0.0, 0.3, 0.0]],
    ]
)
HAND_FPR = [0, 1 / 30, 1 / 30, 4 / 30, 6 / 30, 10 / 30, 1]
HAND_PRO = [0, 2 / 9, 13 / 18, 13 / 18, 8 / 9, 1, 1]
HAND_THRESHOLDS = [np.inf, 0.9, 0.8, 0.7, 0.5, 0.3, 0.0]

# Areas under the hand curve, segment by segment (width * mean height):
#   (0, 0)       -> (1/30, 2/9):   1/30 * 1/9                   = 1/270
#   (1/30, 2/9)  -> (1/30, 13/18): width 0                      = 0
#   (1/30, 13/18) -> (4/30, 13/18): 3/30 * 13/18                = 13/180
#   (4/30, 13/18) -> (6/30, 8/9):  2/30 * (13/18 + 16/18) / 2   = 29/540
#   (6/30, 8/9)  -> (10/30, 1):    4/30 * (8/9 + 1) / 2         = 17/135
#   (10/30, 1)   -> (1, 1):        20/30 * 1                    = 2/3
#
# max_fpr = 0.3 = 9/30 falls inside the (6/30, 8/9) -> (10/30, 1) segment, 3/4 of its way:
#   PRO(0.3) = 8/9 + 3/4 * 1/9 = 35/36
#   last piece: 3/30 * (8/9 + 35/36) / 2 = 67/720
#   area = 1/270 + 13/180 + 29/540 + 67/720 = (8 + 156 + 116 + 201) / 2160 = 481/2160
#   score = 481/2160 / (3/10) = 481/648
# max_fpr = 0.15 = 4.5/30 falls a quarter of the way along (4/30, 13/18) -> (6/30, 8/9):
#   PRO(0.15) = 13/18 + 1/4 * 3/18 = 55/72
#   last piece: 0.5/30 * (13/18 + 55/72) / 2 = 107/8640
#   area = 1/270 + 13/180 + 107/8640 = (32 + 624 + 107) / 8640 = 763/8640
#   score = 763/8640 / (3/20) = 763/1296
# max_fpr = 0.2 = 6/30 is a curve point, so no interpolation:
#   area = 1/270 + 13/180 + 29/540 = 280/2160 = 7/54; score = 7/54 / (1/5) = 35/54
# max_fpr = 1: area = 7/54 + 17/135 + 2/3 = (35 + 34 + 180) / 270 = 83/90
HAND_SCORES = [(0.3, 481 / 648), (0.15, 763 / 1296), (0.2, 35 / 54), (1.0, 83 / 90)]


def test_pro_curve_matches_hand_worked_points():
    fpr, pro, thresholds = pro_curve(HAND_MASKS, HAND_MAPS)
    np.testing.assert_allclose(fpr, HAND_FPR, rtol=1e-12)
    np.testing.assert_allclose(pro, HAND_PRO, rtol=1e-12)
    np.testing.assert_array_equal(thresholds, HAND_THRESHOLDS)


@pytest.mark.parametrize("max_fpr, expected", HAND_SCORES)
def test_pro_score_matches_hand_worked_area(max_fpr, expected):
    assert pro_score(HAND_MASKS, HAND_MAPS, max_fpr=max_fpr) == pytest.approx(expected)


def test_pro_score_default_limit_is_mvtec_03():
    assert pro_score(HAND_MASKS, HAND_MAPS) == pytest.approx(481 / 648)


# --------------------------------------------------------------------------------------
# A slow reference: one pass over every pixel at every distinct threshold, regions labelled
# image by image.
# --------------------------------------------------------------------------------------


def reference_pro_curve(masks, maps):
    regions = []
    for i, mask in enumerate(masks):
        labels, n_regions = ndimage.label(mask, structure=np.ones((3, 3)))
        regions += [(i, labels == k) for k in range(1, n_regions + 1)]
    normal = ~masks
    thresholds = np.unique(maps)[::-1]
    fpr, pro = [0.0], [0.0]
    for t in thresholds:
        flagged = maps >= t
        fpr.append(np.sum(flagged & normal) / np.sum(normal))
        pro.append(np.mean([np.mean(flagged[i][region]) for i, region in regions]))
    return np.array(fpr), np.array(pro), np.r_[np.inf, thresholds]


def reference_pro_score(fpr, pro, max_fpr):
    area = 0.0
    for x0, y0, x1, y1 in zip(fpr[:-1], pro[:-1], fpr[1:], pro[1:]):
        if x0 >= max_fpr:
            break
        if x1 > max_fpr:
            y1 = y0 + (y1 - y0) * (max_fpr - x0) / (x1 - x0)
            x1 = max_fpr
        area += (x1 - x0) * (y0 + y1) / 2
    return area / max_fpr


def random_blob_masks(rng, n_images=6, size=(12, 14)):
    """Smoothed noise above a high quantile, with the last image left defect-free."""
    noise = ndimage.gaussian_filter(rng.random((n_images, *size)), sigma=(0, 1.5, 1.5))
    masks = noise > np.quantile(noise, 0.85)
    masks[-1] = False
    return masks


def random_maps_with_ties(rng, masks):
    # One decimal makes many pixels share a score, within and across images.
    return np.round(0.4 * masks + rng.random(masks.shape), 1)


@pytest.mark.parametrize("seed", range(5))
def test_pro_curve_matches_slow_reference(seed):
    rng = np.random.default_rng(seed)
    masks = random_blob_masks(rng)
    maps = random_maps_with_ties(rng, masks)
    expected = reference_pro_curve(masks, maps)
    for got, want in zip(pro_curve(masks, maps), expected):
        np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("max_fpr", [0.3, 0.05, 0.5, 1.0])
def test_pro_score_matches_slow_reference(seed, max_fpr):
    rng = np.random.default_rng(seed)
    masks = random_blob_masks(rng)
    maps = random_maps_with_ties(rng, masks)
    fpr, pro, _ = reference_pro_curve(masks, maps)
    expected = reference_pro_score(fpr, pro, max_fpr)
    assert pro_score(masks, maps, max_fpr=max_fpr) == pytest.approx(expected, rel=1e-10)


def test_diagonal_neighbours_form_one_region():
    masks = np.zeros((1, 5, 5), dtype=bool)
    masks[0, 0, 0] = masks[0, 1, 1] = True  # one region of two, by 8-connectivity
    masks[0, 3, 3] = True  # a second region
    maps = np.zeros((1, 5, 5))
    maps[0, 0, 0] = maps[0, 3, 3] = 1.0
    _, pro, _ = pro_curve(masks, maps)
    # Half of the diagonal region and all of the other: (1/2 + 1) / 2. Were the diagonal
    # pixels two regions, PRO would be (1 + 0 + 1) / 3 instead.
    assert pro[1] == pytest.approx(0.75)


# --------------------------------------------------------------------------------------
# Perfect and inverted detectors.
# --------------------------------------------------------------------------------------


@pytest.fixture
def blob_masks():
    return random_blob_masks(np.random.default_rng(0))


def test_perfect_detector_scores_one(blob_masks):
    # Every defective pixel scores above every normal one, ties or not.
    rng = np.random.default_rng(1)
    maps = blob_masks + 0.5 * rng.random(blob_masks.shape)
    assert pro_score(blob_masks, maps) == pytest.approx(1.0)
    assert pixel_auroc(blob_masks, maps) == 1.0


def test_inverted_detector_scores_zero(blob_masks):
    rng = np.random.default_rng(1)
    maps = -(blob_masks + 0.5 * rng.random(blob_masks.shape))
    assert pro_score(blob_masks, maps) == 0.0
    assert pixel_auroc(blob_masks, maps) == 0.0


def test_pixel_auroc_pools_pixels_of_all_images(blob_masks):
    rng = np.random.default_rng(2)
    maps = random_maps_with_ties(rng, blob_masks)
    expected = roc_auc_score(blob_masks.ravel(), maps.ravel())
    assert pixel_auroc(blob_masks.astype(np.uint8) * 255, maps) == pytest.approx(expected)


# --------------------------------------------------------------------------------------
# Image AUROC and its label conventions.
# --------------------------------------------------------------------------------------

IMAGE_ANOMALOUS = np.array([0, 1, 0, 0, 1, 1, 0, 1])
IMAGE_SCORES = np.array([0.2, 0.9, 0.4, 0.1, 0.3, 0.8, 0.5, 0.45])


def _masks_for(is_anomalous):
    masks = np.zeros((len(is_anomalous), 4, 4), dtype=bool)
    masks[is_anomalous.astype(bool), 1, 2] = True
    return masks


@pytest.mark.parametrize(
    "y_true",
    [
        IMAGE_ANOMALOUS,
        np.where(IMAGE_ANOMALOUS == 1, -1, 1),
        IMAGE_ANOMALOUS.astype(bool),
        _masks_for(IMAGE_ANOMALOUS),
    ],
    ids=["0/1", "-1/+1", "bool", "masks"],
)
def test_image_auroc_matches_sklearn_for_each_label_convention(y_true):
    expected = roc_auc_score(IMAGE_ANOMALOUS, IMAGE_SCORES)
    assert image_auroc(y_true, IMAGE_SCORES) == pytest.approx(expected)


# --------------------------------------------------------------------------------------
# Errors.
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", [pixel_auroc, pro_curve, pro_score])
def test_mismatched_shapes_name_both_shapes_and_the_fix(metric):
    masks = np.zeros((2, 8, 8), dtype=bool)
    maps = np.zeros((2, 4, 4))
    with pytest.raises(InvalidImageError, match="transform_masks") as info:
        metric(masks, maps)
    assert "(2, 8, 8)" in str(info.value) and "(2, 4, 4)" in str(info.value)


def test_image_labels_as_masks_point_to_image_auroc():
    with pytest.raises(InvalidImageError, match="image_auroc"):
        pixel_auroc(IMAGE_ANOMALOUS, IMAGE_SCORES)


def test_image_auroc_rejects_one_score_per_wrong_count():
    with pytest.raises(InvalidImageError, match=r"\(8,\).*\(7,\)"):
        image_auroc(IMAGE_ANOMALOUS, IMAGE_SCORES[:7])


@pytest.mark.parametrize("y_true, missing", [([0, 0, 0], "anomalous"), ([1, 1, 1], "normal")])
def test_single_class_labels_are_refused(y_true, missing):
    with pytest.raises(InvalidImageError, match=f"no {missing} .*needs both"):
        image_auroc(y_true, [0.1, 0.2, 0.3])


def test_pixel_metrics_refuse_masks_without_defects():
    masks = np.zeros((2, 4, 4), dtype=bool)
    maps = np.random.default_rng(0).random((2, 4, 4))
    with pytest.raises(InvalidImageError, match="no anomalous"):
        pixel_auroc(masks, maps)
    with pytest.raises(InvalidImageError, match="no defective pixel"):
        pro_curve(masks, maps)


def test_pro_refuses_masks_without_normal_pixels():
    masks = np.ones((2, 4, 4), dtype=bool)
    with pytest.raises(InvalidImageError, match="normal pixels"):
        pro_curve(masks, np.zeros((2, 4, 4)))


def test_non_finite_maps_are_refused():
    maps = HAND_MAPS.copy()
    maps[0, 0, 0] = np.nan
    with pytest.raises(InvalidImageError, match="NaN"):
        pro_score(HAND_MASKS, maps)


@pytest.mark.parametrize("max_fpr", [0, -0.1, 1.5, np.nan, "0.3", True])
def test_bad_max_fpr_is_refused(max_fpr):
    with pytest.raises(ValueError, match="max_fpr"):
        pro_score(HAND_MASKS, HAND_MAPS, max_fpr=max_fpr)
    with pytest.raises(ValueError, match="max_fpr"):
        make_pro_scorer(max_fpr)


# --------------------------------------------------------------------------------------
# Scorers.
# --------------------------------------------------------------------------------------


class FakeDetector(BaseEstimator):
    """Outlier detector whose anomaly score is the first feature, times ``sign``."""

    def __init__(self, sign=1):
        self.sign = sign

    def fit(self, X, y=None):
        self.is_fitted_ = True
        return self

    def score_samples(self, X):
        return -self.sign * np.asarray(X)[:, 0]


class FakeMapper(BaseEstimator):
    """Anomaly-map model whose maps are the images themselves, times ``sign``."""

    def __init__(self, sign=1):
        self.sign = sign

    def fit(self, X, y=None):
        self.is_fitted_ = True
        return self

    def anomaly_maps(self, X):
        return self.sign * np.asarray(X, dtype=float)


def test_image_auroc_scorer_negates_score_samples():
    X = IMAGE_SCORES[:, None]
    detector = FakeDetector().fit(X)
    expected = roc_auc_score(IMAGE_ANOMALOUS, IMAGE_SCORES)
    assert image_auroc_scorer(detector, X, IMAGE_ANOMALOUS) == pytest.approx(expected)
    masks = _masks_for(IMAGE_ANOMALOUS)
    assert image_auroc_scorer(detector, X, masks) == pytest.approx(expected)


def test_image_auroc_scorer_picks_the_right_detector_in_grid_search():
    X = np.r_[np.arange(8.0), np.arange(8.0) + 10][:, None]
    y = np.r_[np.zeros(8), np.ones(8)]
    search = GridSearchCV(
        FakeDetector(), {"sign": [-1, 1]}, scoring=image_auroc_scorer, cv=StratifiedKFold(4)
    )
    search.fit(X, y)
    assert search.best_params_ == {"sign": 1}
    assert search.best_score_ == 1.0


def test_make_pro_scorer_pickles_with_its_limit():
    scorer = pickle.loads(pickle.dumps(make_pro_scorer(max_fpr=0.1)))
    assert scorer.keywords == {"max_fpr": 0.1}


# skpadim.pipeline.anomaly_maps is expected to hand a bare final estimator's own
# anomaly_maps method the images, so FakeMapper stands in for a fitted model.


def test_pixel_scorers_equal_the_metrics_on_the_maps():
    pytest.importorskip("skpadim.pipeline")
    mapper = FakeMapper().fit(HAND_MAPS)
    assert pixel_auroc_scorer(mapper, HAND_MAPS, HAND_MASKS) == pixel_auroc(
        HAND_MASKS, HAND_MAPS
    )
    assert pro_scorer(mapper, HAND_MAPS, HAND_MASKS) == pytest.approx(481 / 648)
    scorer = make_pro_scorer(max_fpr=0.15)
    assert scorer(mapper, HAND_MAPS, HAND_MASKS) == pytest.approx(763 / 1296)


@pytest.mark.parametrize("scorer", [pixel_auroc_scorer, pro_scorer])
def test_pixel_scorers_explain_mismatched_masks(scorer):
    pytest.importorskip("skpadim.pipeline")
    mapper = FakeMapper().fit(HAND_MAPS)
    masks = np.zeros((3, 6, 8), dtype=bool)
    with pytest.raises(InvalidImageError, match="transform_masks"):
        scorer(mapper, HAND_MAPS, masks)


def test_pixel_scorers_work_in_grid_search():
    pytest.importorskip("skpadim.pipeline")
    # Images A, B, C, A, B, C: each of three consecutive folds holds a defect.
    masks = np.concatenate([HAND_MASKS, HAND_MASKS])
    maps = np.concatenate([HAND_MAPS, HAND_MAPS])
    scoring = {"pixel_auroc": pixel_auroc_scorer, "pro": make_pro_scorer(max_fpr=0.2)}
    search = GridSearchCV(
        FakeMapper(), {"sign": [-1, 1]}, scoring=scoring, refit="pro", cv=KFold(3)
    )
    search.fit(maps, masks)
    assert search.best_params_ == {"sign": 1}
