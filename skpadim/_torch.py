"""Torch glue shared by the estimators: devices, seeded initialisation, CPU-safe pickling."""

import contextlib
import copy

import numpy as np
import torch
from sklearn.utils import check_random_state

from .exceptions import ConfigurationError

_DEVICE_CHOICES = "'auto', 'cpu', 'cuda' or 'cuda:N' (N < torch.cuda.device_count())"


def from_numpy(X, dtype=None):
    """``torch.from_numpy`` without a copy where possible and without torch's warning on
    read-only arrays (joblib memmaps, sklearn's checks), which are only read here."""
    X = np.ascontiguousarray(X, dtype=dtype)
    return torch.from_numpy(X if X.flags.writeable else X.copy())


def resolve_device(device):
    """The ``torch.device`` to compute on, checked to be one this machine can use.

    ``"auto"`` means CUDA when available, else the CPU. Only the CPU and CUDA GPUs are
    supported: other devices torch can name (``"xpu"``, ``"mps"``, ``"meta"``, ...) and CUDA
    indices beyond the GPUs present are refused here, with the choices, rather than failing
    inside torch on the first tensor moved there.

    Raises
    ------
    ConfigurationError
        If ``device`` is not a torch device, is of an unsupported type, or names a CUDA
        device that does not exist here.

    Examples
    --------
    >>> from skpadim._torch import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> resolve_device("xpu:9")
    Traceback (most recent call last):
    ...
    skpadim.exceptions.ConfigurationError: device='xpu:9' is not supported: ...
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ConfigurationError(
            f"device={device!r} is not a torch device; use {_DEVICE_CHOICES}"
        ) from exc
    if device.type == "cpu":
        return device
    if device.type != "cuda":
        raise ConfigurationError(
            f"device={str(device)!r} is not supported: skpadim computes on the CPU or on CUDA "
            f"GPUs; use {_DEVICE_CHOICES}"
        )
    if not torch.cuda.is_available():
        raise ConfigurationError(
            f"device={str(device)!r} was requested but CUDA is not available here; "
            "use device='cpu' or 'auto'"
        )
    if device.index is None:
        # With an index, comparing it with a tensor's device (always indexed) is meaningful.
        return torch.device("cuda", torch.cuda.current_device())
    count = torch.cuda.device_count()
    if device.index >= count:
        raise ConfigurationError(
            f"device={str(device)!r} does not exist: this machine has {count} CUDA device(s); "
            f"use 'auto', 'cpu', 'cuda' or 'cuda:N' with N < {count}"
        )
    return device


def torch_seed(random_state):
    """A torch seed drawn from a sklearn ``random_state`` (int, RandomState or None)."""
    return int(check_random_state(random_state).randint(0, 2**31 - 1))


@contextlib.contextmanager
def seeded(seed):
    """Run torch code under ``seed`` and leave the global RNG state as it was.

    torchvision initialises layers from the global generator; forking it is the only way to
    make that reproducible without disturbing the caller's own random stream.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def cpu_copy(module):
    """A CPU copy of ``module`` for pickling, so models saved on a GPU load anywhere."""
    try:
        on_cpu = all(p.device.type == "cpu" for p in module.state_dict().values())
    except AttributeError:
        return module
    return module if on_cpu else copy.deepcopy(module).cpu()


class ImageModuleMixin:
    """What estimators that feed images to a fitted torch network ``module_`` share: they
    pickle a CPU copy of it (a model fitted on a GPU loads anywhere) and declare their
    input as images rather than 2-D feature rows."""

    def __getstate__(self):
        # super() keeps what other bases add (BaseEstimator, version stamps); copy, since
        # BaseEstimator may return the instance's own __dict__.
        state = dict(super().__getstate__())
        if "module_" in state:
            state["module_"] = cpu_copy(state["module_"])
        return state

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.input_tags.two_d_array = False
        tags.input_tags.three_d_array = True
        tags.requires_fit = True
        return tags
