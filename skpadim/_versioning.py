"""Version stamps in the state of saved estimators, checked when they are restored.

scikit-learn stamps ``_sklearn_version`` only into the state of its own classes (those whose
module starts with ``sklearn.``), so a pickled skpadim estimator would carry no versions at
all. :class:`VersionedStateMixin` adds skpadim's and scikit-learn's versions to the state
that ``pickle``/``joblib`` and :func:`skpadim.save` store, and warns with a
:class:`~skpadim.exceptions.SkpadimWarning` when a state from other versions is restored.
"""

import warnings

import sklearn

from .exceptions import SkpadimWarning

__all__ = ["VersionedStateMixin", "skpadim_version"]

SKPADIM_KEY = "_skpadim_version"
SKLEARN_KEY = "_sklearn_version"


def skpadim_version():
    """The running skpadim's version (read late: ``skpadim/__init__`` defines it last)."""
    from . import __version__

    return __version__


class VersionedStateMixin:
    """Stamp skpadim's and scikit-learn's versions into the pickled state; warn on restore
    when they differ from the running ones.

    Put it first among an estimator's bases, so that it sees the state of every other
    class's ``__getstate__`` and removes the stamps before ``BaseEstimator.__setstate__``
    would store them as attributes. A class that defines its own ``__getstate__`` must build
    on ``super().__getstate__()`` for the stamps to be added.

    Examples
    --------
    >>> import pickle
    >>> from skpadim import RandomFeatureSelector
    >>> selector = RandomFeatureSelector(n_features=2)
    >>> sorted(set(selector.__getstate__()) - set(vars(selector)))
    ['_sklearn_version', '_skpadim_version']
    >>> restored = pickle.loads(pickle.dumps(selector))     # versions match: no warning
    >>> "_skpadim_version" in vars(restored)                 # the stamps are not attributes
    False
    """

    def __getstate__(self):
        # BaseEstimator may return the instance's own __dict__: copy before adding to it.
        state = dict(super().__getstate__())
        state[SKPADIM_KEY] = skpadim_version()
        state[SKLEARN_KEY] = sklearn.__version__
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = {"skpadim": state.pop(SKPADIM_KEY, None),
                 "scikit-learn": state.pop(SKLEARN_KEY, None)}
        running = {"skpadim": skpadim_version(), "scikit-learn": sklearn.__version__}
        if saved != running:
            def versions(which):
                return " and ".join(f"{name} {v or 'unknown (no version stamp)'}"
                                    for name, v in which.items())

            warnings.warn(
                f"{type(self).__name__} was saved with {versions(saved)}; this is "
                f"{versions(running)}. It may fail or score differently: refit it with these "
                "versions, or install the ones it was saved with",
                SkpadimWarning,
                stacklevel=2,
            )
        super().__setstate__(state)
