"""RandomFeatureSelector: reproducible draws and exact user indices."""

import numpy as np
import pytest

from skpadim import RandomFeatureSelector


def test_draw_is_reproducible_and_stored(rng):
    X = rng.normal(size=(2, 448, 3, 3))
    a = RandomFeatureSelector(100, random_state=0).fit(X)
    b = RandomFeatureSelector(100, random_state=0).fit(X)
    c = RandomFeatureSelector(100, random_state=1).fit(X)
    np.testing.assert_array_equal(a.feature_indices_, b.feature_indices_)
    assert not np.array_equal(a.feature_indices_, c.feature_indices_)
    assert len(np.unique(a.feature_indices_)) == 100
    np.testing.assert_array_equal(a.transform(X), X[:, a.feature_indices_])


def test_given_indices_are_kept_in_their_order(rng):
    X = rng.normal(size=(2, 10))
    out = RandomFeatureSelector(feature_indices=[7, 2, 5]).fit_transform(X)
    np.testing.assert_array_equal(out, X[:, [7, 2, 5]])


def test_none_keeps_every_channel(rng):
    X = rng.normal(size=(2, 5, 2, 2))
    np.testing.assert_array_equal(RandomFeatureSelector(None).fit_transform(X), X)


def test_global_rng_is_untouched(rng):
    X = rng.normal(size=(2, 50))
    state = np.random.get_state()[1].copy()
    RandomFeatureSelector(10, random_state=5).fit(X)
    np.testing.assert_array_equal(np.random.get_state()[1], state)


@pytest.mark.parametrize(
    "params, message",
    [
        ({"n_features": 11}, r"exceeds the 10 feature\(s\)"),
        ({"feature_indices": [0, 10]}, r"\[0, 10\)"),
        ({"feature_indices": [1, 1]}, "distinct"),
        ({"feature_indices": [0.5]}, "ints"),
    ],
)
def test_impossible_selections_are_explained(rng, params, message):
    with pytest.raises(ValueError, match=message):
        RandomFeatureSelector(**params).fit(rng.normal(size=(2, 10)))


def test_channel_count_must_match_fit(rng):
    selector = RandomFeatureSelector(3).fit(rng.normal(size=(2, 10, 2, 2)))
    with pytest.raises(ValueError, match="features"):
        selector.transform(rng.normal(size=(2, 9, 2, 2)))
