"""Validation of feature-map input, shared by every estimator that follows the backbone."""

from sklearn.utils.validation import validate_data

from .exceptions import ConfigurationError, InvalidImageError
from .features._tile_samples import TileSamples


def validate_feature_maps(estimator, X, *, reset, **check_params):
    """sklearn's ``validate_data`` for ``(n, channels, h, w)`` maps or ``(n, features)`` rows.

    ``n_features_in_`` counts channels. Other dimensionalities get an error saying what the
    step expects.
    """
    if isinstance(X, TileSamples):
        raise ConfigurationError(
            f"{type(estimator).__name__} got tiles handed on as samples "
            "(BackboneFeatures(stitch=False)), which only skpadim's StreamingPipeline feeds "
            "to a detector: build the model with make_padim(positions='tile'), or fit a "
            "hand-made pipeline with skpadim.fit_in_batches"
        )
    X = validate_data(estimator, X, reset=reset, allow_nd=True, **check_params)
    if X.ndim not in (2, 4):
        raise InvalidImageError(
            f"{type(estimator).__name__} expects feature maps (n, channels, h, w) or vectors "
            f"(n, features), got shape {X.shape}"
        )
    return X
