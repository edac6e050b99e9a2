"""Telling good explanations from bad: conservation over a dataset; pixel flipping and the
comparison table of methods live in :mod:`relprop.metrics` (reachable here under their old
names).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import metrics
from ._common import is_pred, pred_classes
from ._common import seed as output_seed

#: The old names: pixel flipping lives in :mod:`relprop.metrics` with the other metrics.
pixel_flipping = metrics.pixel_flipping
PixelFlipping = metrics.Curves
ORDERS = metrics.ORDERS


@dataclass
class ConservationReport:
    """Conservation of an explanation over a dataset: the explained score against the sum of
    relevance.

    Attributes
    ----------
    method : str
    score, relevance : arrays (n,)
        The explained score (``f_t(x)`` for an int target) and ``sum(R)`` per sample.
    abs_error : array (n,)
        ``|score - relevance|``.
    rel_error : array (n,)
        ``abs_error / |score|`` (NaN where the score is 0; such samples are left out of
        ``mean_rel``/``max_rel``).
    """

    method: str
    score: np.ndarray
    relevance: np.ndarray
    abs_error: np.ndarray
    rel_error: np.ndarray

    @property
    def mean_abs(self) -> float:
        return float(self.abs_error.mean())

    @property
    def max_abs(self) -> float:
        return float(self.abs_error.max())

    @property
    def mean_rel(self) -> float:
        ok = np.isfinite(self.rel_error)
        return float(self.rel_error[ok].mean()) if ok.any() else float("nan")

    @property
    def max_rel(self) -> float:
        ok = np.isfinite(self.rel_error)
        return float(self.rel_error[ok].max()) if ok.any() else float("nan")

    def summary(self) -> dict:
        """``n``, ``mean_abs``, ``max_abs``, ``mean_rel``, ``max_rel`` as a dict."""
        return {"method": self.method, "n": len(self.score), "mean_abs": self.mean_abs,
                "max_abs": self.max_abs, "mean_rel": self.mean_rel, "max_rel": self.max_rel}

    def __str__(self):
        s = self.summary()
        return (f"{s['method']}: n={s['n']}, |score - sum R| mean {s['mean_abs']:.3g} "
                f"max {s['max_abs']:.3g}; relative mean {s['mean_rel']:.3g} "
                f"max {s['max_rel']:.3g}")


def _conservation(method, score, rel):
    err = np.abs(score - rel)
    with np.errstate(divide="ignore", invalid="ignore"):
        relerr = np.where(score != 0, err / np.abs(score), np.nan)
    return ConservationReport(method, score, rel, err, relerr)


def _explained_score(net, x, target):
    """``(score, target)``: the explained score per sample and the target, "pred" resolved to
    the classes of the same forward pass."""
    out = net.forward(x, check_finite=False)
    if is_pred(target):
        target = pred_classes(target, out)
    return output_seed(target, out, scale=True).reshape(len(x), -1).sum(axis=1), target


def conservation_report(net, X, target, method="lrp.epsilon", *, batch_size=None, **kwargs):
    """Conservation error of ``method`` over the dataset ``X``.

    Parameters
    ----------
    net : Sequential
    X : array (n, *input_shape)
    target : int, sequence of n ints, float array (n, n_out), or "pred"
    method : str
        A name for :func:`relprop.explain`; ``kwargs`` go to it.
    batch_size : int, optional

    Returns
    -------
    ConservationReport
        ``.summary()`` gives mean/max absolute and relative error.
    """
    from .methods import explain

    X = net.check_input(X)
    score, target = _explained_score(net, X, target)  # "pred": one class for both sides
    R = explain(net, X, target, method=method, batch_size=batch_size, **kwargs)
    return _conservation(method, score, R.reshape(len(X), -1).sum(axis=1).astype(np.float64))


#: The comparison table lives in :mod:`relprop.metrics` (every method under every metric).
compare = metrics.compare
Comparison = metrics.Comparison
DEFAULT_METHODS = metrics.DEFAULT_METHODS
