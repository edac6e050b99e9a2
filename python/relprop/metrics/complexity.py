"""Complexity and axioms: how concentrated an explanation is (:func:`sparseness`,
:func:`complexity`), whether it sums to the change of the score (:func:`completeness`) and
whether the features it calls irrelevant are (:func:`non_sensitivity`).

References
----------
.. [Chalasani2020] P. Chalasani et al., "Concise explanations of neural networks using
   adversarial training", ICML 2020 (sparseness: the Gini index).
.. [Bhatt2020c] U. Bhatt, A. Weller, J. Moura, "Evaluating and aggregating feature-based model
   explanations", IJCAI 2020 (complexity: the entropy).
.. [Sundararajan2017] M. Sundararajan, A. Taly, Q. Yan, "Axiomatic attribution for deep
   networks", ICML 2017 (completeness).
.. [Nguyen2020c] A. Nguyen, M. Martinez, "On quantitative aspects of model interpretability",
   arXiv:2007.07584, 2020 (non-sensitivity).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._validate import as_scalar
from ._base import (
    Result,
    Target,
    check_inputs,
    fill_values,
    grid_regions,
    perturbed_scores,
)


def _abs_rows(net, x, R, check_finite):
    R = check_inputs(net, x, R, check_finite)[1]
    return np.abs(R.reshape(len(R), -1).astype(np.float64))


def sparseness(net, x, R, target=None, *, check_finite=True):
    """Sparseness [Chalasani2020]_: the Gini index of the absolute relevance of each sample,
    ``sum_k (2k - d - 1) a_(k) / (d sum_k a_(k))`` over its ``d`` values in increasing order
    ``a_(1) <= ... <= a_(d)``, after ``a = |R| / max|R| + 1e-7`` (the small constant of
    Quantus's ``Sparseness``, which runs on attributions scaled to at most 1).  1 is a single
    relevant feature, 0 a uniform map: higher is better (more concise).

    Parameters
    ----------
    net : Sequential or Graph
        Checks ``x``; ``target`` is not used (the signature is that of every metric).
    x : array (n, *input_shape)
    R : array shaped like ``x`` (or ``(n, 1, h, w)``)
    target : ignored
    check_finite : bool

    Returns
    -------
    Result
        ``scores`` (n,).
    """
    a = _abs_rows(net, x, R, check_finite)
    peak = a.max(axis=1, keepdims=True)
    a = np.sort(a / np.where(peak > 0, peak, 1.0) + 1e-7, axis=1)
    d = a.shape[1]
    k = np.arange(1, d + 1)
    return Result(((2 * k - d - 1) * a).sum(axis=1) / (d * a.sum(axis=1)), "higher")


def complexity(net, x, R, target=None, *, check_finite=True):
    """Complexity [Bhatt2020c]_: the entropy of the share of each feature in the absolute
    relevance, ``-sum_k p_k log(p_k + 1e-12)`` with ``p = |R| / sum|R|``.  Lower is better
    (fewer features carry the relevance).

    Parameters
    ----------
    As for :func:`sparseness`.

    Returns
    -------
    Result
        ``scores`` (n,); NaN for an all-zero map.
    """
    a = _abs_rows(net, x, R, check_finite)
    with np.errstate(invalid="ignore", divide="ignore"):
        p = a / a.sum(axis=1, keepdims=True)
    return Result(-(p * np.log(p + 1e-12)).sum(axis=1), "lower")


@dataclass
class Completeness(Result):
    """The result of :func:`completeness`: ``scores`` 1.0 where ``|gaps| <= tolerance``, else
    0.0; ``gaps`` (n,) ``sum(R) - (f(x) - f(baseline))``; ``tolerance`` (n,)."""

    gaps: np.ndarray
    tolerance: np.ndarray


def completeness(net, x, R, target, fill=0.0, *, rtol=1e-4, atol=0.0, seed=0, sample_offset=0,
                 softmax=False, batch_size=None, check_finite=True):
    """Completeness [Sundararajan2017]_ (conservation): the relevance sums to the change of
    the explained score between the baseline (every element the fill value) and ``x``,
    ``sum(R) = f(x) - f(baseline)``, within ``atol + rtol * |f(x) - f(baseline)|``.

    The change of the score is taken in the dtype of ``x`` (the network's), the relevance
    summed in float64.  Quantus's ``Completeness`` tests exact float equality; ``rtol=0`` (and
    ``atol=0``) does the same.

    Parameters
    ----------
    net, x, R, target, fill, seed, sample_offset, softmax, batch_size, check_finite
        As for :func:`relprop.metrics.pixel_flipping` (``fill`` is the baseline).
    rtol, atol : float
        The tolerance.

    Returns
    -------
    Completeness
        ``scores`` (n,), ``gaps``, ``tolerance``; higher is better.
    """
    x, R = check_inputs(net, x, R, check_finite)
    rtol = as_scalar(rtol, "rtol", minimum=0.0)
    atol = as_scalar(atol, "atol", minimum=0.0)
    t = Target(net, x, target, softmax, batch_size)
    base = np.broadcast_to(fill_values(x, fill, seed, sample_offset), x.shape)
    at_base = perturbed_scores(net, x, t, 1, lambda i, k: base[i], batch_size)[:, 0]
    change = (t.at_x.astype(x.dtype) - at_base.astype(x.dtype)).astype(np.float64)
    gaps = R.reshape(len(R), -1).sum(axis=1, dtype=np.float64) - change
    tol = atol + rtol * np.abs(change)
    return Completeness((np.abs(gaps) <= tol).astype(np.float64), "higher", gaps, tol)


@dataclass
class NonSensitivity(Result):
    """The result of :func:`non_sensitivity`: ``scores`` (n,) the number of regions where
    "the score does not move" and "the relevance is zero" disagree (lower is better);
    ``change`` (n, P) the change of the score when the region alone is removed, ``relevance``
    (n, P) the region's sum of ``|R|``."""

    change: np.ndarray
    relevance: np.ndarray


def non_sensitivity(net, x, R, target, fill=0.0, *, eps=1e-5, patch=1, channels="together",
                    seed=0, sample_offset=0, softmax=False, batch_size=None,
                    check_finite=True):
    """Non-sensitivity [Nguyen2020c]_: a region whose removal (alone) leaves the explained
    score within ``eps`` should have zero relevance (the sum of ``|R|`` below ``eps``), and
    one with zero relevance should leave the score.  The score counts the regions where the
    two disagree.

    Parameters
    ----------
    net, x, R, target, fill, patch, channels, seed, sample_offset, softmax, batch_size,
    check_finite
        As for :func:`relprop.metrics.pixel_flipping`.
    eps : float

    Returns
    -------
    NonSensitivity
        ``scores`` (n,), ``change``, ``relevance`` (n, P).
    """
    x, R = check_inputs(net, x, R, check_finite)
    eps = as_scalar(eps, "eps", minimum=0.0)
    regions = grid_regions(x.shape[1:], patch, channels)
    rel = regions.sums(np.abs(np.broadcast_to(R, x.shape) if channels == "apart" else R))
    t = Target(net, x, target, softmax, batch_size)
    fill = np.broadcast_to(fill_values(x, fill, seed, sample_offset), x.shape)
    labels = np.broadcast_to(regions.labels, (1,) + x.shape[1:])[0]
    def make(i, k):  # row k removes region k alone
        return np.where(labels[None] == k.reshape((-1,) + (1,) * (x.ndim - 1)), fill[i], x[i])

    change = np.abs(perturbed_scores(net, x, t, regions.size, make, batch_size)
                    - t.at_x[:, None])
    disagree = (change < eps) ^ (rel < eps)
    return NonSensitivity(disagree.sum(axis=1).astype(np.float64), "lower", change, rel)


#: This module's family and its metrics, in order (:data:`relprop.metrics.FAMILIES`).
FAMILY = "complexity"
FUNCTIONS = (sparseness, complexity, completeness, non_sensitivity)
