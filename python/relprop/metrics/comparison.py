"""Which method explains best: every method under every metric, as a table (markdown for the
terminal, an HTML page with the metrics' curves for a browser).  ``relprop evaluate`` prints
:func:`compare`'s table."""
from __future__ import annotations

import inspect
import time
from dataclasses import dataclass, field

import numpy as np

from .._random import check_offset, check_seed, per_sample
from ._base import Curves, Target, nanmean
from ._registry import FAMILIES, METRICS
from .faithfulness import ABPC, IROF, ROAD, Monotonicity, SensitivityN
from .randomization import MPRT

#: The methods :func:`compare` runs by default ("random": a random attribution, the baseline
#: a useful explanation must beat).
DEFAULT_METHODS = ("lrp.epsilon_plus_flat", "lrp.epsilon", "gradient_x_input", "gradient",
                   "guided_backprop", "integrated_gradients", "smoothgrad", "random")
#: The metrics :func:`compare` runs by default: the faithfulness family.
DEFAULT_METRICS = tuple(fn.__name__ for fn in FAMILIES["faithfulness"])
#: Metrics that re-explain (they take the method) and those that take masks.
NEED_METHOD = {fn.__name__ for f in ("robustness", "randomization") for fn in FAMILIES[f]}
NEED_MASKS = {fn.__name__ for fn in FAMILIES["localisation"]}


def random_attribution(x, seed=0, sample_offset=0):
    """Uniform random values shaped like ``x``, sample ``i``'s from ``(seed, sample_offset +
    i)``: the baseline attribution."""
    seed, first = check_seed(seed), check_offset(sample_offset)
    return per_sample(seed, range(first, first + len(x)),
                      lambda r: r.random(x.shape[1:])).astype(x.dtype)


def metric_parameters(name):
    """The keyword parameters of the metric ``name`` (not those it passes to the method)."""
    sig = inspect.signature(METRICS[name]).parameters
    return {k for k, p in sig.items()
            if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


@dataclass
class Comparison:
    """Methods under metrics: ``results[(method, metric)]`` is the metric's result (None where
    it does not apply: a re-explaining metric of the random attribution).

    Attributes
    ----------
    methods, metrics : list of str
    results : dict
    samples_per_s : dict
        Per method, the throughput of the explanation (wall clock, after a warm-up call).
    settings : dict
        ``n`` and the metric parameters used.
    """

    methods: list
    metrics: list
    results: dict
    samples_per_s: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def value(self, method, metric) -> float:
        """The metric's one number for the method (its result's ``summary``; NaN if none)."""
        res = self.results.get((method, metric))
        return float("nan") if res is None else res.summary

    def better(self, metric) -> str:
        """"higher" or "lower"."""
        return next(r.better for (m, k), r in self.results.items() if k == metric and r)

    def heads(self):
        return [f"{metric} ({self.better(metric)} is better)" for metric in self.metrics]

    def to_markdown(self) -> str:
        """The table: a row per method, a column per metric with the direction of "better";
        ``n/a`` where a metric does not apply."""
        lines = ["| method | " + " | ".join(self.heads()) + " |",
                 "|---|" + "---:|" * len(self.metrics)]
        for method in self.methods:
            cells = [_fmt(self.value(method, m), self.results.get((method, m)))
                     for m in self.metrics]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        return "\n".join(lines)

    def __str__(self):
        return self.to_markdown()

    def figures(self):
        """``(svg, caption)`` of every metric with curves: the mean curve of each method."""
        from ..render import line_chart

        out = []
        for metric in self.metrics:
            series, chart = [], None
            for method in self.methods:
                drawn = _chart(self.results.get((method, metric)))
                if drawn is not None:
                    chart = drawn
                    series += [(method + suffix, ys) for suffix, ys in drawn.lines]
            if series:
                svg = line_chart(series, chart.xs, title=metric, xlabel=chart.xlabel,
                                 ylabel=chart.ylabel, xticklabels=chart.ticks)
                out.append((svg, f"{metric}: {chart.caption}"))
        return out

    def write_html(self, path, title="relprop evaluate", notes=()):
        """The table and the curves as one page (no JavaScript), its folder made if missing,
        with ``notes`` (paragraphs) after the introduction; returns ``path``."""
        import os

        from ..render import write_html

        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        rows = [[_fmt(self.value(method, m), self.results.get((method, m)))
                 for m in self.metrics] for method in self.methods]
        heads = ["method"] + [f"{m}\n({self.better(m)} is better)" for m in self.metrics]
        settings = ", ".join(f"{k}={v}" for k, v in self.settings.items())
        intro = [f"Each method explains the same inputs; each metric scores the explanations "
                 f"(the mean over the samples, or the metric's batch statistic). {settings}.",
                 *notes]
        return write_html(path, heads, rows, title=title, intro=intro, row_heads=self.methods,
                          legend=False, figures=self.figures())


def _fmt(value, result):
    return "n/a" if result is None else format(value, ".4g")


@dataclass
class _Chart:
    """The mean curves of one result: ``lines`` ``[(name suffix, ys)]`` at ``xs``."""

    xs: np.ndarray
    lines: list
    xlabel: str
    ylabel: str
    caption: str
    ticks: list = None


def _chart(res):
    """The :class:`_Chart` of a result, or None for a metric without curves."""
    score = "explained score (mean)"
    if res is None:
        return None
    if isinstance(res, ABPC):
        xs = np.linspace(0, 1, res.morf.shape[1])
        return _Chart(xs, [(" (most relevant first)", _mean(res.morf)),
                           (" (least relevant first)", _mean(res.lerf))],
                      "fraction of regions removed", score,
                      "region perturbation both ways; the score is the area between")
    if isinstance(res, IROF):
        grid = np.linspace(0, 1, 51)
        rel = [np.interp(grid, np.linspace(0, 1, c + 1), curve[:c + 1] / curve[0])
               for curve, c in zip(res.curves, res.counts)]
        return _Chart(grid, [("", _mean(rel))], "fraction of segments removed",
                      "score / f(x) (mean)", f"superpixels by {res.segmentation}")
    if isinstance(res, ROAD):
        return _Chart(res.fractions[1:], [("", res.accuracy)], "fraction of pixels imputed",
                      "share still classified", "the accuracy per percentage")
    if isinstance(res, MPRT):
        return _Chart(np.arange(len(res.layers)), [("", _mean(res.similarities))],
                      "randomized up to", "similarity with R (mean)",
                      "the similarity per randomized layer", list(res.layers))
    if isinstance(res, Monotonicity):
        return _Chart(np.linspace(0, 1, res.curves.shape[1]), [("", _mean(res.curves))],
                      "fraction inserted", score, "from the baseline, least relevant first")
    if isinstance(res, (Curves, SensitivityN)):
        return _Chart(res.fractions, [("", _mean(res.curves))], "fraction removed", score,
                      "the mean curve over the samples")
    return None


def _mean(a):
    """The mean over axis 0, NaN left out."""
    return np.array([nanmean(col) for col in np.asarray(a, dtype=np.float64).T])


def compare(net, x, target, methods=DEFAULT_METHODS, metrics=DEFAULT_METRICS, *, masks=None,
            seed=0, batch_size=None, method_kwargs=None, **params):
    """Explain ``x`` with every method, then score every explanation with every metric.

    Parameters
    ----------
    net : Sequential or Graph
    x : array (n, *input_shape)
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        "pred": the classes predicted at ``x``, the same for every method and metric.
    methods : sequence of str
        :func:`relprop.explain` names, and "random" (:func:`random_attribution`).
    metrics : sequence of str
        :data:`relprop.metrics.METRICS` names.
    masks : array, optional
        The object masks of the localisation metrics.
    seed : int
        Seeds the random attribution and every metric's draws.
    batch_size : int, optional
        Goes to the methods and the metrics.
    method_kwargs : dict, optional
        Parameters per method name, e.g. ``{"smoothgrad": {"seed": 0}}`` (also used when a
        metric re-explains).
    **params
        Metric parameters (``steps=``, ``patch=``, ``fill=``, ``order=``, ``runs=``, ...), each
        given to the metrics that take it.

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        No methods or metrics (or one named twice), an unknown metric, a localisation metric
        without ``masks``, a parameter no metric takes.
    """
    from ..methods import explain

    x = net.check_input(x)
    for what, names in (("methods", methods), ("metrics", metrics)):
        if isinstance(names, str) or not len(names) or len(set(names)) != len(names):
            raise ValueError(f"{what} must be a non-empty sequence of distinct names, got "
                             f"{names!r}")
    for m in metrics:
        if m not in METRICS:
            raise ValueError(f"unknown metric {m!r}; the metrics: {', '.join(METRICS)}")
        if m in NEED_MASKS and masks is None:
            raise ValueError(f"{m} needs the masks of the objects (masks=)")
    taken = {m: metric_parameters(m) for m in metrics}
    unused = sorted(set(params) - set().union(*taken.values()))
    if unused:
        raise ValueError(f"no metric of {list(metrics)} takes {', '.join(unused)}")
    method_kwargs = dict(method_kwargs or {})
    t = Target(net, x, target, False, batch_size)  # "pred": the same classes for every method
    target = t.classes if t.classes is not None else t.seed
    results, rates = {}, {}
    for name in methods:
        if name == "random":
            R, rates[name] = random_attribution(x, seed), None
        else:
            kw = method_kwargs.get(name, {})
            explain(net, x[:2], target[:2], method=name, **kw)  # warm-up: caches, threads
            t0 = time.perf_counter()
            R = explain(net, x, target, method=name, batch_size=batch_size, **kw)
            rates[name] = len(x) / max(time.perf_counter() - t0, 1e-9)
        for m in metrics:
            if m in NEED_METHOD and name == "random":
                results[(name, m)] = None
                continue
            kw = {k: v for k, v in params.items() if k in taken[m]}
            kw.update({k: v for k, v in (("seed", seed), ("batch_size", batch_size))
                       if k in taken[m]})
            if m in NEED_METHOD:
                kw.update(method=name, **method_kwargs.get(name, {}))
            args = (net, x, R, target) + ((masks,) if m in NEED_MASKS else ())
            results[(name, m)] = METRICS[m](*args, **kw)
    settings = {"n": len(x), **params, "seed": seed}
    return Comparison(list(methods), list(metrics), results, rates, settings)
