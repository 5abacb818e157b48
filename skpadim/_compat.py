"""The one place that imports scikit-learn's private API.

scikit-learn's parameter validation (``_fit_context`` and the constraint classes) is private but
is what its own estimators use; keeping the imports here means a future rename touches one file.
"""

from sklearn.base import _fit_context
from sklearn.utils._param_validation import HasMethods, Interval, Options, StrOptions

__all__ = ["_fit_context", "HasMethods", "Interval", "Options", "StrOptions"]
