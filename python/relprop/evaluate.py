"""Telling good explanations from bad: conservation over a dataset, and a comparison table of
methods by pixel flipping (:func:`relprop.metrics.pixel_flipping`, also reachable here under
its old name) and conservation.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from . import metrics
from ._common import is_pred, pred_classes
from ._common import seed as output_seed
from .metrics import ORDERS

#: The old names: pixel flipping lives in :mod:`relprop.metrics` with the other metrics.
pixel_flipping = metrics.pixel_flipping
PixelFlipping = metrics.Curves


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


@dataclass
class Comparison:
    """A table comparing explanation methods; ``rows`` are dicts with keys ``method``, ``auc``
    (mean pixel-flipping AUC), ``conservation_error`` (mean relative) and ``samples_per_s``."""

    rows: list
    settings: dict

    def to_markdown(self) -> str:
        """The table as GitHub markdown (``n/a`` for the random baseline's error and speed)."""
        def fmt(v, spec):
            return "n/a" if v is None else format(v, spec)

        order = self.settings.get("order", ORDERS[0])
        better = "lower" if order == ORDERS[0] else "higher"
        lines = [f"| method | pixel-flipping AUC ({better} is better) | conservation error | "
                 "samples/s |", "|---|---:|---:|---:|"]
        for r in self.rows:
            lines.append(f"| {r['method']} | {fmt(r['auc'], '.4g')} | "
                         f"{fmt(r['conservation_error'], '.3g')} | "
                         f"{fmt(r['samples_per_s'], '.0f')} |")
        return "\n".join(lines)

    def __str__(self):
        return self.to_markdown()


DEFAULT_METHODS = ("lrp.epsilon_plus_flat", "lrp.epsilon", "gradient_x_input", "gradient",
                   "guided_backprop", "integrated_gradients", "smoothgrad", "random")


def compare(net, x, target, methods=DEFAULT_METHODS, *, steps=None, patch=1, fill=0.0,
            order="most_relevant_first", seed=0, batch_size=None, method_kwargs=None):
    """Explain ``x`` with every method, then score each explanation by pixel flipping and
    conservation.

    Parameters
    ----------
    net : Sequential
    x : array (n, *input_shape)
    target : int, sequence of n ints, float array (n, n_out), or "pred"
    methods : sequence of str
        Names for :func:`relprop.explain`, plus "random": a uniform random attribution drawn
        from ``seed`` (the baseline a useful explanation must beat).
    steps, patch, fill, order, seed, batch_size
        As for :func:`pixel_flipping` (``batch_size`` also goes to the methods).
    method_kwargs : dict, optional
        Extra keyword arguments per method name, e.g. ``{"smoothgrad": {"seed": 0}}``.

    Returns
    -------
    Comparison
        ``rows`` (list of dicts: method, auc, conservation_error, samples_per_s) and
        ``to_markdown()``.  samples/s times the explanation alone (wall clock, one run after
        a warm-up call on two samples).
    """
    from .methods import explain

    x = net.check_input(x)
    method_kwargs = dict(method_kwargs or {})
    score, target = _explained_score(net, x, target)  # "pred": the same classes for every method
    rows = []
    for name in methods:
        if name == "random":
            R = np.random.default_rng(seed).random(x.shape).astype(x.dtype)
            rate = err = None
        else:
            kw = method_kwargs.get(name, {})
            t_small = target if np.ndim(target) == 0 else np.asarray(target)[:2]
            explain(net, x[:2], t_small, method=name, **kw)  # warm-up: rule caches, threads
            t0 = time.perf_counter()
            R = explain(net, x, target, method=name, batch_size=batch_size, **kw)
            rate = len(x) / max(time.perf_counter() - t0, 1e-9)
            err = _conservation(name, score, R.reshape(len(x), -1).sum(axis=1)).mean_rel
        pf = pixel_flipping(net, x, R, target, steps=steps, patch=patch, fill=fill, order=order,
                            seed=seed, batch_size=batch_size, check_finite=False)
        rows.append({"method": name, "auc": pf.mean_auc, "conservation_error": err,
                     "samples_per_s": rate})
    settings = {"n": len(x), "steps": steps, "patch": patch, "fill": fill, "order": order,
                "seed": seed}
    return Comparison(rows, settings)
