"""Telling good explanations from bad: pixel flipping (region perturbation), conservation over a
dataset, and a comparison table of methods.

Pixel flipping [Samek2017]_ removes the input regions an explanation ranks most relevant first
and records how fast the explained score falls: the faster (the smaller the area under the
curve), the better the explanation points at the evidence the network uses.

References
----------
.. [Samek2017] W. Samek, A. Binder, G. Montavon, S. Lapuschkin, K.-R. Mueller, "Evaluating the
   visualization of what a deep neural network has learned", IEEE TNNLS 28(11), 2017.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from ._common import check_batch_size, is_pred, pred_classes, predicted, row_targets
from ._common import seed as output_seed
from ._validate import as_float_array, as_int

ORDERS = ("most_relevant_first", "least_relevant_first")


@dataclass
class PixelFlipping:
    """The result of :func:`pixel_flipping`.

    Attributes
    ----------
    curves : array (n, steps + 1)
        The explained score after 0, 1, ..., steps perturbation steps.
    fractions : array (steps + 1,)
        The fraction of regions perturbed at each step (``k / steps``).
    auc : array (n,)
        Area under each curve over ``fractions`` (trapezoidal rule on [0, 1]), in score units.
    """

    curves: np.ndarray
    fractions: np.ndarray
    auc: np.ndarray

    @property
    def mean_auc(self) -> float:
        return float(self.auc.mean())


def _region_ranks(R, patch, order):
    """The perturbation rank of every input position, from the relevance ``R`` (n, ...).

    Images ``(n, c, h, w)``: relevance is summed over channels and over ``patch x patch`` regions
    of a grid anchored at the top left (edge regions may be smaller); a position's rank is its
    region's.  Other shapes: every element is a region (``patch`` must be 1).  Returns ``(ranks
    shaped (n, 1, h, w) or like R, number of regions)``; rank 0 is perturbed first, ties go to
    the region that comes first in C order.
    """
    n = R.shape[0]
    if R.ndim == 4:
        h, w = R.shape[2:]
        gh, gw = -(-h // patch), -(-w // patch)
        r = np.zeros((n, gh * patch, gw * patch))
        r[:, :h, :w] = R.sum(axis=1)
        region = r.reshape(n, gh, patch, gw, patch).sum(axis=(2, 4)).reshape(n, -1)
    else:
        if patch != 1:
            raise ValueError(f"patch={patch} needs images (n, c, h, w); got R of shape {R.shape}")
        region = R.reshape(n, -1).astype(np.float64)
    key = -region if order == "most_relevant_first" else region
    order_idx = np.argsort(key, axis=1, kind="stable")
    ranks = np.empty_like(order_idx)
    np.put_along_axis(ranks, order_idx, np.arange(region.shape[1])[None], axis=1)
    if R.ndim == 4:
        ranks = ranks.reshape(n, gh, 1, gw, 1)
        ranks = np.broadcast_to(ranks, (n, gh, patch, gw, patch)).reshape(n, gh * patch,
                                                                          gw * patch)
        ranks = ranks[:, None, :h, :w]
    else:
        ranks = ranks.reshape(R.shape)
    return ranks, region.shape[1]


def _fill_values(x, fill, rng):
    """The values perturbed positions take, broadcastable to ``x``."""
    if isinstance(fill, str):
        axes = tuple(range(2, x.ndim)) if x.ndim == 4 else tuple(range(1, x.ndim))
        if fill == "mean":
            return x.mean(axis=axes, keepdims=True)
        if fill == "uniform":
            flat = x.reshape(len(x), -1)
            shape = (-1,) + (1,) * (x.ndim - 1)
            lo, hi = flat.min(axis=1).reshape(shape), flat.max(axis=1).reshape(shape)
            return (lo + (hi - lo) * rng.random(x.shape)).astype(x.dtype)
        raise ValueError(f"fill must be a number, 'mean', 'uniform' or an array, got {fill!r}")
    f = as_float_array(fill, "fill", dtype=x.dtype)
    try:
        np.broadcast_to(f, x.shape)
    except ValueError:
        raise ValueError(f"fill has shape {f.shape}, not broadcastable to x {x.shape}") from None
    return f


def pixel_flipping(net, x, R, target, steps=None, patch=1, fill=0.0,
                   order="most_relevant_first", *, seed=0, batch_size=None, check_finite=True):
    """Region perturbation [Samek2017]_: perturb regions in the order of their relevance and
    record the explained score.

    Step ``k`` (0..steps) replaces the first ``round(k * P / steps)`` of the ``P`` regions by
    ``fill``; all steps of all samples are batched through the network (``batch_size`` rows at
    a time).

    Parameters
    ----------
    net : Sequential
    x : array (n, *input_shape)
    R : array shaped like ``x``
        The explanation to evaluate (e.g. from :func:`relprop.explain`).
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        The explained score: ``f_t`` for a class, ``sum(seed * f)`` for a seed array.
    steps : int, optional
        Perturbation steps; by default one region per step (``steps = P``).
    patch : int
        Region size: ``patch x patch`` pixels of an image ``(n, c, h, w)``, all channels
        together, ranked by their summed relevance.  Must be 1 for non-image inputs (each
        element is a region).
    fill : float, "mean", "uniform" or array
        The value of perturbed positions: a constant; "mean": each sample's per-channel mean;
        "uniform": uniform noise in each sample's ``[min, max]`` (drawn once per sample from
        ``seed``, as in the paper); or an array broadcastable to ``x`` (e.g. a mean image).
    order : "most_relevant_first" or "least_relevant_first"
        MoRF (a good explanation makes the score drop fast: small AUC) or LeRF (a good
        explanation keeps the score: large AUC).
    seed : int
        Seeds ``fill="uniform"``.
    batch_size : int, optional
        Rows of the expanded batch (``n * (steps + 1)`` perturbed inputs) per forward pass.
    check_finite : bool
        Raise ValueError on NaN/Inf in ``x`` or ``R`` (default).

    Returns
    -------
    PixelFlipping
        ``curves`` (n, steps + 1), ``fractions``, ``auc`` (n,) and ``mean_auc``.
    """
    x = net.check_input(x, check_finite)
    R = as_float_array(R, "R", check_finite=check_finite)
    if R.shape != x.shape:
        raise ValueError(f"R has shape {R.shape} but x has shape {x.shape}")
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    patch = as_int(patch, "patch", minimum=1)
    ranks, n_regions = _region_ranks(R, patch, order)
    steps = n_regions if steps is None else as_int(steps, "steps", minimum=1)
    counts = np.rint(np.arange(steps + 1) * (n_regions / steps)).astype(np.int64)
    fill = np.broadcast_to(_fill_values(x, fill, np.random.default_rng(seed)), x.shape)
    n = x.shape[0]
    rows = n * (steps + 1)
    step = check_batch_size(batch_size, rows)
    take_target = row_targets(predicted(net, x, target, step), n)  # "pred": the class at x
    curves = np.empty(rows)
    for start in range(0, rows, step):
        idx = np.arange(start, min(rows, start + step))
        i, k = idx // (steps + 1), idx % (steps + 1)
        mask = ranks[i] < counts[k].reshape((-1,) + (1,) * (x.ndim - 1))
        out = net.forward(np.where(mask, fill[i], x[i]), check_finite=False)
        s = output_seed(take_target(i), out, scale=False)
        curves[idx] = (s * out).reshape(len(idx), -1).sum(axis=1)
    curves = curves.reshape(n, steps + 1)
    auc = (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * steps)
    return PixelFlipping(curves, np.arange(steps + 1) / steps, auc)


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
