"""Exceptions and warnings raised by skpadim.

Every error skpadim raises for bad input derives from :class:`SkpadimError`, and also from the
built-in exception a caller would naturally catch (``ValueError`` for bad values, ``OSError``
for unreadable files), so ``except ValueError`` keeps working.
"""

__all__ = [
    "SkpadimError",
    "InvalidImageError",
    "ConfigurationError",
    "DatasetError",
    "WeightsError",
    "ModelFileError",
    "SkpadimWarning",
]


class SkpadimError(Exception):
    """Base class of every error raised by skpadim."""


class InvalidImageError(SkpadimError, ValueError):
    """Images or feature maps of the wrong shape, type, range or size."""


class ConfigurationError(SkpadimError, ValueError):
    """Settings that cannot work together: an unknown backbone or layer, a layer layout that
    does not match the features, more neighbours than samples, an unavailable device."""


class DatasetError(SkpadimError, OSError):
    """A data set on disk is missing, incomplete, unreadable or inconsistent."""


class WeightsError(SkpadimError, OSError):
    """A backbone's weights file is missing, unreadable or holds the wrong tensors."""


class ModelFileError(SkpadimError, OSError):
    """A model file that cannot be read or written: missing, truncated, edited, of an
    unknown or newer format, naming classes outside skpadim's allow-list, a pickle file
    where the safe format is required, or a model holding something the safe format cannot
    store."""


class SkpadimWarning(UserWarning):
    """Something worked, but probably not as the user meant it to."""
