"""Shrinkage of per-position covariances toward a scaled identity, with data-driven intensity.

With fewer training images than feature dimensions, each position's sample covariance is
singular and PaDiM's fixed ``reg_covar * I`` decides most of the distance. Shrinkage replaces
the maximum-likelihood covariance ``S`` (divided by ``n``, centred on the mean) by

.. math:: \\hat\\Sigma = (1 - \\rho) S + \\rho \\frac{\\operatorname{tr} S}{d} I

with an intensity ``rho`` estimated from the data, per position. The functions here reproduce
:class:`sklearn.covariance.OAS` and :class:`sklearn.covariance.LedoitWolf` (with
``assume_centered=False``) exactly, but from a few per-position statistics instead of the
samples, so that they can be computed from streamed, mergeable moments
(:class:`skpadim.detectors.PatchMoments`) and vectorised over positions:

- :func:`oas_shrinkage` needs ``n``, ``tr S`` and ``tr S^2``;
- :func:`ledoit_wolf_shrinkage` also needs ``sum_i ||x_i - mean||^4``;
- :func:`shrunk_covariance` applies an intensity to a stack of covariances.

All take and return torch tensors laid out positions-first.
"""

import torch

__all__ = ["oas_shrinkage", "ledoit_wolf_shrinkage", "shrunk_covariance", "covariance_traces"]


def covariance_traces(covariance):
    """``tr S`` and ``tr S^2`` of a stack of symmetric matrices, the inputs of the intensities.

    Parameters
    ----------
    covariance : torch.Tensor of shape (n_positions, d, d)
        Symmetric matrices (``tr S^2`` is computed as the sum of squared entries).

    Returns
    -------
    trace, trace_sq : torch.Tensor of shape (n_positions,)

    Examples
    --------
    >>> import torch
    >>> from skpadim.detectors import covariance_traces
    >>> trace, trace_sq = covariance_traces(torch.tensor([[[2.0, 1.0], [1.0, 3.0]]]))
    >>> trace.tolist(), trace_sq.tolist()                # 2 + 3, 4 + 1 + 1 + 9
    ([5.0], [15.0])
    """
    trace = covariance.diagonal(dim1=-2, dim2=-1).sum(dim=-1)
    return trace, covariance.square().sum(dim=(-2, -1))


def oas_shrinkage(n_samples, trace, trace_sq, n_features):
    """Oracle Approximating Shrinkage intensity (Chen et al. 2010), per position.

    As :func:`sklearn.covariance.oas` computes it (its eq. 23 without the ``2 / d`` terms):

    .. math:: \\rho = \\min\\left(1, \\frac{\\operatorname{tr}(S^2) + \\operatorname{tr}^2(S)}
              {(n + 1) \\left(\\operatorname{tr}(S^2) - \\operatorname{tr}^2(S) / d\\right)}
              \\right)

    and 1 where the denominator is 0 (``S`` already proportional to the identity); 0 for
    ``d = 1``, where every intensity gives the same matrix.

    Parameters
    ----------
    n_samples : int
        Number of samples ``n`` the covariances come from.
    trace, trace_sq : torch.Tensor of shape (n_positions,)
        ``tr S`` and ``tr S^2`` of the maximum-likelihood covariances ``S`` (divided by
        ``n``), see :func:`covariance_traces`.
    n_features : int
        Dimension ``d``.

    Returns
    -------
    shrinkage : torch.Tensor of shape (n_positions,)
        Intensities in [0, 1].

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.covariance import OAS
    >>> from skpadim.detectors import covariance_traces, oas_shrinkage
    >>> X = np.random.RandomState(0).normal(size=(10, 4))
    >>> S = torch.from_numpy(np.cov(X.T, bias=True))[None]     # one position, divided by n
    >>> rho = oas_shrinkage(10, *covariance_traces(S), n_features=4)
    >>> bool(np.isclose(rho[0], OAS().fit(X).shrinkage_))
    True
    """
    if n_features == 1:
        return torch.zeros_like(trace)
    numerator = trace_sq + trace.square()
    denominator = (n_samples + 1) * (trace_sq - trace.square() / n_features)
    # where() evaluates both branches: the division by a zero denominator is discarded.
    ratio = torch.clamp(numerator / denominator, max=1.0)
    return torch.where(denominator == 0, torch.ones_like(ratio), ratio)


def ledoit_wolf_shrinkage(n_samples, trace, trace_sq, fourth_moment, n_features):
    """Ledoit-Wolf shrinkage intensity (Ledoit and Wolf 2004), per position.

    As ``sklearn.covariance.ledoit_wolf_shrinkage`` computes it, written with the
    centred samples ``z_i = x_i - mean``:

    .. math:: \\beta = \\frac{1}{n d}\\left(\\frac{1}{n}\\sum_i \\lVert z_i\\rVert^4
              - \\operatorname{tr}(S^2)\\right), \\quad
              \\delta = \\frac{1}{d}\\left(\\operatorname{tr}(S^2)
              - \\frac{\\operatorname{tr}^2(S)}{d}\\right), \\quad
              \\rho = \\frac{\\min(\\beta, \\delta)}{\\delta}

    (0 where ``min(beta, delta)`` is 0, and for ``d = 1``).

    Parameters
    ----------
    n_samples : int
        Number of samples ``n``.
    trace, trace_sq : torch.Tensor of shape (n_positions,)
        ``tr S`` and ``tr S^2`` of the maximum-likelihood covariances (divided by ``n``).
    fourth_moment : torch.Tensor of shape (n_positions,)
        ``sum_i ||x_i - mean||^4`` (a sum, not a mean), see
        :meth:`skpadim.detectors.PatchMoments.centred_fourth_moment`.
    n_features : int
        Dimension ``d``.

    Returns
    -------
    shrinkage : torch.Tensor of shape (n_positions,)
        Intensities in [0, 1].

    Examples
    --------
    >>> import numpy as np, torch
    >>> from sklearn.covariance import LedoitWolf
    >>> from skpadim.detectors import covariance_traces, ledoit_wolf_shrinkage
    >>> X = np.random.RandomState(0).normal(size=(10, 4))
    >>> Z = X - X.mean(axis=0)
    >>> S = torch.from_numpy(Z.T @ Z / 10)[None]
    >>> q = torch.tensor([(np.square(Z).sum(axis=1) ** 2).sum()])
    >>> rho = ledoit_wolf_shrinkage(10, *covariance_traces(S), q, n_features=4)
    >>> bool(np.isclose(rho[0], LedoitWolf().fit(X).shrinkage_))
    True
    """
    if n_features == 1:
        return torch.zeros_like(trace)
    n, d = n_samples, n_features
    beta = (fourth_moment / n - trace_sq) / (d * n)
    delta = (trace_sq - trace.square() / d) / d
    # Capping beta at delta keeps the intensity at most 1 (sklearn's "do not invert").
    beta = torch.minimum(beta, delta)
    return torch.where(beta == 0, torch.zeros_like(beta), beta / delta)


def shrunk_covariance(covariance, shrinkage):
    """``(1 - rho) S + rho tr(S) / d I`` for a stack of covariances, one ``rho`` each.

    The batched form of :func:`sklearn.covariance.shrunk_covariance`. The trace is kept, so
    the total variance is unchanged; for ``rho > 0`` and ``tr S > 0`` the result is positive
    definite even where ``S`` is singular.

    Parameters
    ----------
    covariance : torch.Tensor of shape (n_positions, d, d)
        Covariances to shrink.
    shrinkage : torch.Tensor of shape (n_positions,) or float
        Intensities in [0, 1].

    Returns
    -------
    shrunk : torch.Tensor of shape (n_positions, d, d)

    Examples
    --------
    >>> import torch
    >>> from skpadim.detectors import shrunk_covariance
    >>> S = torch.tensor([[[3.0, 1.0], [1.0, 1.0]]])                    # tr(S) / d = 2
    >>> shrunk_covariance(S, torch.tensor([0.5])).tolist()
    [[[2.5, 0.5], [0.5, 1.5]]]
    """
    d = covariance.shape[-1]
    rho = torch.as_tensor(shrinkage, dtype=covariance.dtype, device=covariance.device)
    rho = rho.reshape(-1, 1, 1) if rho.ndim else rho
    target = covariance.diagonal(dim1=-2, dim2=-1).sum(dim=-1) / d
    eye = torch.eye(d, dtype=covariance.dtype, device=covariance.device)
    return (1 - rho) * covariance + (rho * target.reshape(-1, 1, 1)) * eye
