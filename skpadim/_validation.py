"""Validation of feature-map input, shared by every estimator that follows the backbone."""

from sklearn.utils.validation import validate_data

from .exceptions import InvalidImageError


def validate_feature_maps(estimator, X, *, reset, **check_params):
    """sklearn's ``validate_data`` for ``(n, channels, h, w)`` maps or ``(n, features)`` rows.

    ``n_features_in_`` counts channels. Other dimensionalities get an error saying what the
    step expects.
    """
    X = validate_data(estimator, X, reset=reset, allow_nd=True, **check_params)
    if X.ndim not in (2, 4):
        raise InvalidImageError(
            f"{type(estimator).__name__} expects feature maps (n, channels, h, w) or vectors "
            f"(n, features), got shape {X.shape}"
        )
    return X
