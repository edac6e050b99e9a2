"""What the metrics share: checked arguments, regions (the units a metric ranks and perturbs),
fill values, the explained score of perturbed inputs in batches, correlations and results.

A *region* is what a metric ranks and perturbs as one: for an image ``(n, c, h, w)`` the
``patch x patch`` cells of a grid over the pixels, with all channels together
(``channels="together"``, the default) or each channel apart (``channels="apart"``, Quantus's
per-feature convention); for any other input every element.  The grid is Quantus's: when
``patch`` does not divide a side, the image is padded to a multiple of ``patch`` (the lesser
half of the padding before, the greater after) and the cells are cut from the padded image, so
the edge cells hold fewer pixels.  Regions are numbered in C order (channel, cell row, cell
column); ties in a ranking go to the lower number.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .._common import is_int, is_pred
from .._common import seed as output_seed
from .._random import FILL, check_offset, check_seed, per_sample
from .._validate import as_float_array, as_int

ORDERS = ("most_relevant_first", "least_relevant_first")
CHANNELS = ("together", "apart")
#: Bytes of activations per forward pass of perturbed inputs when ``batch_size`` is None.
PASS_BYTES = 256 << 20


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------
def check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")
    return value


def check_relevance(R, x, check_finite=True, name="R"):
    """``R`` as a float array shaped like ``x``, or, for images ``(n, c, h, w)``, one value per
    pixel ``(n, 1, h, w)``."""
    R = as_float_array(R, name, check_finite=check_finite)
    pixel_map = x.ndim == 4 and R.shape == (x.shape[0], 1) + x.shape[2:]
    if R.shape != x.shape and not pixel_map:
        want = f" or {(x.shape[0], 1) + x.shape[2:]}" if x.ndim == 4 else ""
        raise ValueError(f"{name} has shape {R.shape} but x has shape {x.shape}; {name} must be "
                         f"shaped like x{want}")
    return R


def like(Rp, shape):
    """Explanations ``Rp`` (rows, *x.shape[1:]) summed over the axes where an explanation of
    per-sample ``shape`` has size 1 (a pixel map of images), to compare with it."""
    axes = tuple(a for a in range(1, Rp.ndim) if shape[a - 1] == 1 and Rp.shape[a] != 1)
    return Rp.sum(axis=axes, keepdims=True) if axes else Rp


def check_inputs(net, x, R, check_finite=True):
    """``(x, R)`` checked: ``x`` against the network, ``R`` against ``x``."""
    x = net.check_input(x, check_finite)
    return x, check_relevance(R, x, check_finite)


def is_image(x):
    return x.ndim == 4


# --------------------------------------------------------------------------------------------
# Regions
# --------------------------------------------------------------------------------------------
def grid_padding(side, patch):
    """Quantus's padding of a side to a multiple of ``patch``: ``(before, after)``."""
    total = -side % patch
    return total // 2, total - total // 2


@dataclass(frozen=True)
class Regions:
    """The regions of a batch: ``labels`` (1 or n, *sample_shape) gives each element's region
    (0 .. ``count[i] - 1``), ``count`` (n,) the regions of each sample, ``size`` their maximum.
    """

    labels: np.ndarray
    count: np.ndarray
    size: int

    def of(self, i):
        """The labels of the samples ``i`` (an index array)."""
        return self.labels[0 if len(self.labels) == 1 else i]

    def sums(self, values):
        """``values`` (n, *shape) summed per region: ``(n, size)`` float64.  ``values`` may have
        a channel axis of 1 where the labels have more (a pixel map): the labels are the same
        across channels then, and the first channel's are used."""
        n = len(values)
        labels = self.labels[(slice(None),) + tuple(slice(0, s) for s in values.shape[1:])]
        labels = np.broadcast_to(labels, values.shape).reshape(n, -1)
        flat = labels + (np.arange(n) * self.size)[:, None]
        out = np.bincount(flat.ravel(), weights=values.reshape(n, -1).ravel().astype(np.float64),
                          minlength=n * self.size)
        return out.reshape(n, self.size)

    def sizes(self, shape):
        """Elements per region in arrays of per-sample ``shape``: ``(n or 1, size)``."""
        labels = self.labels[(slice(None),) + tuple(slice(0, s) for s in shape)]
        return np.stack([np.bincount(lab.ravel(), minlength=self.size) for lab in labels])


def grid_regions(shape, patch, channels):
    """The regions of inputs of per-sample ``shape`` (see the module docstring)."""
    patch = as_int(patch, "patch", minimum=1)
    check_choice(channels, "channels", CHANNELS)
    if len(shape) != 3:
        if patch != 1:
            raise ValueError(f"patch={patch} needs images (n, c, h, w); got inputs of shape "
                             f"(n, {', '.join(map(str, shape))})")
        size = int(np.prod(shape))
        return Regions(np.arange(size).reshape((1,) + tuple(shape)), np.array([size]), size)
    c, h, w = shape
    (top, _), (left, _) = grid_padding(h, patch), grid_padding(w, patch)
    gh, gw = -(-h // patch), -(-w // patch)
    cell = ((np.arange(h) + top) // patch)[:, None] * gw + ((np.arange(w) + left) // patch)
    cells = gh * gw
    if channels == "together":
        labels = np.broadcast_to(cell, (c, h, w))
        size = cells
    else:
        labels = cell[None] + (np.arange(c) * cells)[:, None, None]
        size = c * cells
    return Regions(np.ascontiguousarray(labels)[None], np.array([size]), size)


def segment_regions(segments, shape):
    """Regions from segmentations ``(n, h, w)`` of integer labels, all channels together (the
    labels renumbered 0.. in order of value)."""
    n = len(segments)
    labels = np.empty((n,) + tuple(shape), dtype=np.int64)
    count = np.empty(n, dtype=np.int64)
    for i, seg in enumerate(segments):
        values, inverse = np.unique(seg, return_inverse=True)
        labels[i] = inverse.reshape(seg.shape)[None]
        count[i] = len(values)
    return Regions(labels, count, int(count.max()))


def ranks(relevance, count, order):
    """The perturbation position of every region, ``(n, size)``: 0 first, in order of
    ``relevance`` (n, size) (descending for "most_relevant_first"), ties to the lower region;
    regions beyond a sample's ``count`` get ``size`` (never)."""
    n, size = relevance.shape
    key = -relevance if order == ORDERS[0] else relevance.copy()
    beyond = np.arange(size)[None, :] >= np.asarray(count).reshape(-1, 1)
    key[np.broadcast_to(beyond, key.shape)] = np.inf
    by_rank = np.argsort(key, axis=1, kind="stable")
    pos = np.empty_like(by_rank)
    np.put_along_axis(pos, by_rank, np.arange(size)[None, :], axis=1)
    pos[key == np.inf] = size
    return pos


def element_positions(regions, pos, i):
    """The position of every element of samples ``i`` (their region's position), shaped like
    the samples."""
    labels = np.broadcast_to(regions.of(i), (len(i),) + regions.labels.shape[1:])
    flat = labels.reshape(len(i), -1)
    return np.take_along_axis(pos[i], flat, axis=1).reshape(labels.shape)


def step_counts(size, steps):
    """Regions perturbed after 0, 1, ..., steps steps: ``round(k * size / steps)``."""
    return np.rint(np.arange(steps + 1) * (size / steps)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Fill values
# --------------------------------------------------------------------------------------------
FILLS = ("mean", "min", "uniform")


def fill_values(x, fill, seed=0, sample_offset=0, *, chunked=None):
    """The values perturbed elements take, broadcastable to ``x``.

    A number; "mean": each sample's mean per channel (images) or over all its elements;
    "min": each sample's minimum over all of ``x`` (Quantus's "black"); "uniform": noise drawn
    uniformly in each sample's ``[min, max]``, sample ``i``'s from ``(seed, sample_offset +
    i)`` (:mod:`relprop._random`); or an array broadcastable to ``x``.
    """
    n = len(x)
    if isinstance(fill, str):
        check_choice(fill, "fill", FILLS)
        flat = x.reshape(n, -1)
        rows = (n,) + (1,) * (x.ndim - 1)
        if fill == "mean":
            axes = (2, 3) if is_image(x) else tuple(range(1, x.ndim))
            return x.mean(axis=axes, keepdims=True)
        lo = flat.min(axis=1).reshape(rows)
        if fill == "min":
            return lo
        seed = check_seed(seed, chunked=chunked)
        hi = flat.max(axis=1).reshape(rows)
        first = check_offset(sample_offset)
        noise = per_sample(seed, range(first, first + n), lambda r: r.random(x.shape[1:]), FILL)
        return (lo + (hi - lo) * noise).astype(x.dtype)
    if isinstance(fill, bool) or not isinstance(fill, (int, float, np.number, np.ndarray, list,
                                                       tuple)):
        raise TypeError(f"fill must be a number, one of {FILLS} or an array, got "
                        f"{type(fill).__name__}")
    f = as_float_array(fill, "fill", dtype=x.dtype)
    try:
        np.broadcast_to(f, x.shape)
    except ValueError:
        raise ValueError(f"fill has shape {f.shape}, not broadcastable to x {x.shape}") from None
    return f


def method_draws(method, seed, index):
    """The arguments that make ``method``, if it draws random numbers (SmoothGrad: it takes
    ``sample_offset``), draw those of each re-explained row from its sample's stream:
    ``seed`` (the metric's) and ``sample_offset=index`` (the rows' sample indices in the whole
    input, repeated for a sample's perturbed copies).  A row re-explained unperturbed then gets
    ``R``'s bits when ``R`` is the method's with the same seed, whatever the batch or chunk;
    ``{}`` for a deterministic method."""
    from ..methods import parameters

    if "sample_offset" not in (parameters(method) or {}):
        return {}
    return {"seed": seed, "sample_offset": index}


def rows_of(a, i):
    """Rows ``i`` of ``a``, an array with a row per sample or one broadcast to all."""
    return a[i] if a.ndim and a.shape[0] != 1 else a


# --------------------------------------------------------------------------------------------
# The explained score of perturbed inputs
# --------------------------------------------------------------------------------------------
class Target:
    """A checked target: ``classes`` (n,) or ``seed`` (n, n_out), and the explained score of
    outputs (``softmax`` applies softmax over the outputs first, as Quantus does by default)."""

    def __init__(self, net, x, target, softmax=False, batch_size=None):
        if not isinstance(softmax, (bool, np.bool_)):
            raise TypeError(f"softmax must be True or False, got {type(softmax).__name__}")
        self.softmax = bool(softmax)
        out = net.forward(x, check_finite=False, batch_size=batch_size)
        if out.ndim != 2:
            raise ValueError(f"metrics need an output of shape (n, n_out), got {out.shape}")
        self.classes = self.seed = None
        if is_pred(target):
            self.classes = out.argmax(axis=1)
        else:
            seed = output_seed(target, out, scale=False)  # checks classes, shapes, finiteness
            if is_int(target):
                self.classes = np.full(len(x), int(target), dtype=np.int64)
            elif np.asarray(target).dtype.kind in "iu":
                self.classes = np.asarray(target, dtype=np.int64)
            else:
                self.seed = seed
        self.n_out = out.shape[1]
        self.output = out
        self.at_x = self.score(out, np.arange(len(x)))

    def rows(self, i):
        """The target of samples ``i`` as :func:`relprop.explain` takes it."""
        return self.classes[i] if self.classes is not None else self.seed[i]

    def need_classes(self, metric):
        if self.classes is None:
            raise ValueError(f"{metric} needs classes as target (an int, ints or 'pred'), not a "
                             "seed array")
        return self.classes

    def score(self, out, i):
        """The explained score of outputs ``out`` of samples ``i``: float64 ``(len(i),)``."""
        out = out.astype(np.float64)
        if self.softmax:
            out = np.exp(out - out.max(axis=1, keepdims=True))
            out /= out.sum(axis=1, keepdims=True)
        if self.classes is not None:
            return out[np.arange(len(i)), self.classes[i]]
        with np.errstate(over="ignore", invalid="ignore"):
            score = (out * self.seed[i]).sum(axis=1)
        if not np.isfinite(score).all():
            raise ValueError("the explained score overflowed: the target seed times the output "
                             "is beyond float64")
        return score


def rows_per_pass(net, x, batch_size):
    """Perturbed inputs per forward pass: ``batch_size``, or as many as keep the activations
    of one pass near :data:`PASS_BYTES`."""
    if batch_size is not None:
        return as_int(batch_size, "batch_size", minimum=1)
    per_row = sum(int(np.prod(s)) for s in net.tensor_shapes(x.shape[1:]).values())
    return max(1, min(4096, PASS_BYTES // max(1, per_row * x.itemsize)))


def perturbed(net, x, per_sample_rows, make, reduce, batch_size=None):
    """``reduce`` of the outputs of ``per_sample_rows`` perturbed inputs per sample: ``(n,
    per_sample_rows, ...)``.  ``make(i, k)`` returns the inputs of rows ``(i, k)`` (sample, row of
    that sample; index arrays), shaped ``(len(i), *x.shape[1:])``; ``reduce(out, i)`` maps their
    outputs to one value (or array) per row.  Rows go through the network sample-major,
    ``batch_size`` at a time."""
    n = len(x)
    total = n * per_sample_rows
    step = rows_per_pass(net, x, batch_size)
    values = None
    for start in range(0, total, step):
        r = np.arange(start, min(total, start + step))
        i, k = r // per_sample_rows, r % per_sample_rows
        xs = np.ascontiguousarray(make(i, k), dtype=x.dtype)
        v = np.asarray(reduce(net.forward(xs, check_finite=False), i))
        if values is None:
            values = np.empty((total,) + v.shape[1:], dtype=v.dtype)
        values[r] = v
    return values.reshape((n, per_sample_rows) + values.shape[1:])


def perturbed_scores(net, x, target, per_sample_rows, make, batch_size=None):
    """The explained score (float64) of the perturbed inputs of :func:`perturbed`: ``(n,
    per_sample_rows)``."""
    return perturbed(net, x, per_sample_rows, make, target.score, batch_size)


# --------------------------------------------------------------------------------------------
# Statistics
# --------------------------------------------------------------------------------------------
def nanmean(values) -> float:
    """The mean of ``values`` without its NaNs (NaN if none is left)."""
    v = np.asarray(values, dtype=np.float64)
    ok = ~np.isnan(v)
    return float(v[ok].mean()) if ok.any() else float("nan")


def trapezoid01(curves):
    """The trapezoid area of each curve ``(n, k + 1)`` over ``[0, 1]`` (equal spacing)."""
    steps = curves.shape[1] - 1
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / (2 * steps)


def trapezoid1(curves):
    """Quantus's ``np.trapz(curves, dx=1, axis=1)``."""
    return (curves[:, :-1] + curves[:, 1:]).sum(axis=1) / 2


def pearson(a, b):
    """Pearson's correlation of the rows of ``a`` and ``b`` ``(n, k)``; NaN where a row is
    constant.  (Computed on C-ordered copies: NumPy's sums, and so the bits, depend on the
    memory layout.)"""
    a = np.ascontiguousarray(a, dtype=np.float64)
    b = np.ascontiguousarray(b, dtype=np.float64)
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    na, nb = np.linalg.norm(a, axis=1), np.linalg.norm(b, axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a * b).sum(axis=1) / (na * nb)
    return np.clip(r, -1.0, 1.0)


def rankdata(a):
    """Ranks 1..k of each row of ``a`` ``(n, k)``, ties averaged (``scipy.stats.rankdata``)."""
    n, k = a.shape
    order = np.argsort(a, axis=1, kind="stable")
    s = np.take_along_axis(a, order, axis=1)
    ranks = np.empty((n, k))
    for row in range(n):
        new = np.concatenate(([True], s[row, 1:] != s[row, :-1]))
        starts = np.flatnonzero(new)
        ends = np.append(starts[1:], k)
        avg = (starts + ends + 1) / 2.0  # mean of ranks start+1 .. end
        ranks[row, order[row]] = np.repeat(avg, ends - starts)
    return ranks


def spearman(a, b):
    """Spearman's rank correlation of the rows of ``a`` and ``b`` ``(n, k)``."""
    return pearson(rankdata(a), rankdata(b))


def ssim(a, b, window=7):
    """The structural similarity of the rows of ``a`` and ``b`` ``(n, k)`` as 1-D signals, as
    ``skimage.metrics.structural_similarity(a_i, b_i, data_range=max - min of both)`` computes
    it (uniform window of 7, sample covariance, K1 = 0.01, K2 = 0.03; the mean over the windows
    that lie inside the signal)."""
    a, b = a.astype(np.float64), b.astype(np.float64)
    n, k = a.shape
    if k < window:
        raise ValueError(f"ssim needs at least {window} features, got {k}")

    def mean(v):  # the window means at positions window // 2 .. k - window // 2 - 1
        c = np.concatenate((np.zeros((n, 1)), np.cumsum(v, axis=1)), axis=1)
        return (c[:, window:] - c[:, :-window]) / window

    rng = np.maximum(a.max(axis=1), b.max(axis=1)) - np.minimum(a.min(axis=1), b.min(axis=1))
    c1, c2 = ((0.01 * rng) ** 2)[:, None], ((0.03 * rng) ** 2)[:, None]
    ua, ub = mean(a), mean(b)
    norm = window / (window - 1)
    va, vb = norm * (mean(a * a) - ua * ua), norm * (mean(b * b) - ub * ub)
    vab = norm * (mean(a * b) - ua * ub)
    with np.errstate(invalid="ignore", divide="ignore"):
        s = (2 * ua * ub + c1) * (2 * vab + c2) / ((ua ** 2 + ub ** 2 + c1) * (va + vb + c2))
    return s.mean(axis=1)


SIMILARITIES = {"spearman": spearman, "pearson": pearson, "ssim": ssim}


def similarity(name):
    check_choice(name, "similarity", tuple(SIMILARITIES))
    return SIMILARITIES[name]


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------
def batch_field(**kw):
    """A result field that holds one value for the whole batch (not one row per sample)."""
    return field(metadata={"batch": True}, **kw)


@dataclass
class Result:
    """The result of a metric.

    Attributes
    ----------
    scores : array (n,)
        One score per sample.
    better : str
        "higher" or "lower": which scores (and :attr:`summary`) are better.
    """

    scores: np.ndarray
    better: str = batch_field()

    @property
    def mean(self) -> float:
        """The mean score over the samples (NaN scores left out)."""
        return nanmean(self.scores)

    @property
    def summary(self) -> float:
        """The metric's one number for the batch: the mean score (a batch-level metric
        overrides it with its statistic)."""
        return self.mean

    @classmethod
    def per_sample_fields(cls):
        """The names of the fields with a row per sample."""
        return [f.name for f in fields(cls) if not f.metadata.get("batch")]


@dataclass
class Curves(Result):
    """The result of a metric with curves.

    Attributes
    ----------
    scores : array (n,)
        The area under each curve over ``fractions`` (trapezoidal rule on [0, 1]), in score
        units.
    curves : array (n, steps + 1)
        The explained score after 0, 1, ..., steps steps.
    fractions : array (steps + 1,)
        ``k / steps``.
    quantus_auc : array (n,)
        The area Quantus reports for the same curves: ``np.trapz`` with unit spacing of the
        curve as Quantus records it (for each metric in its docstring).
    """

    curves: np.ndarray
    fractions: np.ndarray = batch_field()
    quantus_auc: np.ndarray

    @property
    def auc(self):
        """``scores``: the area under each curve over [0, 1]."""
        return self.scores

    @property
    def mean_auc(self) -> float:
        return self.mean


def curves_result(curves, better, quantus_auc):
    steps = curves.shape[1] - 1
    return Curves(trapezoid01(curves), better, curves, np.arange(steps + 1) / steps, quantus_auc)
