"""Faithfulness: does the network's score move as the explanation says it should when the
input is perturbed where the explanation points?

Ordered metrics perturb regions in the order of their relevance (:func:`pixel_flipping`,
:func:`region_perturbation`, :func:`abpc`, :func:`selectivity`, :func:`sensitivity_n`,
:func:`irof`, :func:`road`, :func:`monotonicity`, :func:`faithfulness_estimate`); the others
perturb random subsets (:func:`faithfulness_correlation`) or a region at a time with random
values (:func:`monotonicity_correlation`).  Regions, fills and targets are those of
:mod:`relprop.metrics._base`; every metric returns one score per sample.

References
----------
.. [Samek2017] W. Samek, A. Binder, G. Montavon, S. Lapuschkin, K.-R. Mueller, "Evaluating the
   visualization of what a deep neural network has learned", IEEE TNNLS 28(11), 2017.
.. [Bach2015] S. Bach et al., "On pixel-wise explanations for non-linear classifier decisions by
   layer-wise relevance propagation", PLoS ONE 10(7), 2015.
.. [Montavon2018] G. Montavon, W. Samek, K.-R. Mueller, "Methods for interpreting and
   understanding deep neural networks", Digital Signal Processing 73, 2018.
.. [Schulz2020] K. Schulz et al., "Restricting the flow: information bottlenecks for
   attribution", ICLR 2020 (ABPC).
.. [Bhatt2020] U. Bhatt, A. Weller, J. Moura, "Evaluating and aggregating feature-based model
   explanations", IJCAI 2020 (faithfulness correlation).
.. [Alvarez2018] D. Alvarez-Melis, T. Jaakkola, "Towards robust interpretability with
   self-explaining neural networks", NeurIPS 2018 (faithfulness estimate).
.. [Arya2019] V. Arya et al., "One explanation does not fit all", arXiv:1909.03012, 2019
   (monotonicity).
.. [Nguyen2020] A. Nguyen, M. Martinez, "On quantitative aspects of model interpretability",
   arXiv:2007.07584, 2020 (monotonicity correlation).
.. [Ancona2018] M. Ancona et al., "Towards better understanding of gradient-based attribution
   methods for deep neural networks", ICLR 2018 (sensitivity-n).
.. [Rieger2020] L. Rieger, L. K. Hansen, "IROF: a low resource evaluation metric for
   explanation methods", 2020.
.. [Rong2022] Y. Rong et al., "A consistent and efficient evaluation strategy for attribution
   methods" (ROAD), ICML 2022.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._random import NOISE, SUBSETS, check_offset, check_seed, sample_rng
from .._validate import as_int, as_scalar
from ._base import (
    ORDERS,
    Result,
    Target,
    batch_field,
    check_choice,
    check_inputs,
    curves_result,
    element_positions,
    fill_values,
    grid_regions,
    is_image,
    nanmean,
    pearson,
    perturbed,
    perturbed_scores,
    ranks,
    rows_of,
    segment_regions,
    spearman,
    step_counts,
    trapezoid01,
    trapezoid1,
)


# --------------------------------------------------------------------------------------------
# Ordered perturbation
# --------------------------------------------------------------------------------------------
def _better(order):
    return "lower" if order == ORDERS[0] else "higher"


#: Steps of one region each run through the incremental forward pass
#: (:mod:`relprop.metrics._cone`) on networks of at least this many forward FLOPs per sample
#: where a step costs at most 1 / CONE_MIN_SAVING of a full pass's FLOPs; elsewhere the batched
#: full passes of all rows, which run fewer and larger kernel calls, are faster.
CONE_MIN_FLOPS = 20e6
CONE_MIN_SAVING = 3.0


def _cone(net, x, regions, counts):
    """The :class:`~relprop.metrics._cone.Cone` for rows of one region per step, or None."""
    from ._cone import Cone

    steps = np.diff(np.concatenate(([0], np.asarray(counts))))
    if not is_image(x) or steps.max(initial=0) > 1 or net.flops(x.shape[1:]) < CONE_MIN_FLOPS:
        return None
    side = max(1, int(round(np.sqrt(x.shape[2] * x.shape[3] / regions.size))))
    cone = Cone(net, x.shape[1:], side)
    return cone if cone.usable and cone.saving >= CONE_MIN_SAVING else None


def _ordered(net, x, t, regions, pos, counts, fill, mode, batch_size):
    """The explained score of the rows ``k = 0 .. len(counts) - 1`` of every sample, where
    row k perturbs (``mode``) the regions at positions below ``counts[k]``:

    * "remove": those regions take the fill values, the rest keep ``x``;
    * "insert": those regions keep ``x``, the rest take the fill values;
    * "alone": the regions at positions ``counts[k - 1] .. counts[k] - 1`` take the fill values
      (row 0 is ``x``).

    Steps of one region each on large networks go through the incremental forward pass.
    """
    cone = _cone(net, x, regions, counts)
    if cone is not None:
        from ._cone import scores

        return scores(cone, x, t, regions, pos, counts, fill, mode, batch_size)
    fill = np.broadcast_to(fill, x.shape)
    counts = np.asarray(counts)
    below = np.concatenate(([0], counts[:-1]))
    shape = (-1,) + (1,) * (x.ndim - 1)

    def make(i, k):
        p = element_positions(regions, pos, i)
        hi = counts[k].reshape(shape)
        if mode == "remove":
            return np.where(p < hi, fill[i], x[i])
        if mode == "insert":
            return np.where(p < hi, x[i], fill[i])
        return np.where((p >= below[k].reshape(shape)) & (p < hi), fill[i], x[i])

    return perturbed_scores(net, x, t, len(counts), make, batch_size)


def _setup(net, x, R, target, patch, channels, order, softmax, batch_size, check_finite):
    """Checked arguments of an ordered metric: ``(x, R, target, regions, relevance per region,
    positions)``."""
    x, R = check_inputs(net, x, R, check_finite)
    check_choice(order, "order", ORDERS)
    regions = grid_regions(x.shape[1:], patch, channels)
    rel = regions.sums(np.broadcast_to(R, x.shape) if channels == "apart" else R)
    t = Target(net, x, target, softmax, batch_size)
    return x, R, t, regions, rel, ranks(rel, regions.count, order)


def _steps(steps, size):
    return size if steps is None else min(as_int(steps, "steps", minimum=1), size)


def pixel_flipping(net, x, R, target, steps=None, patch=1, fill=0.0,
                   order="most_relevant_first", *, channels="together", seed=0,
                   sample_offset=0, softmax=False, batch_size=None, check_finite=True):
    """Pixel flipping [Bach2015]_ [Samek2017]_: remove regions in the order of their relevance
    and record the explained score.

    Step ``k`` (0..steps) replaces the first ``round(k * P / steps)`` of the ``P`` regions by
    ``fill``; all steps of all samples go through the network in batches.

    Parameters
    ----------
    net : Sequential or Graph
    x : array (n, *input_shape)
    R : array shaped like ``x`` (or ``(n, 1, h, w)`` for images)
        The explanation to evaluate (e.g. from :func:`relprop.explain`).
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        The explained score: ``f_t`` for a class, ``sum(seed * f)`` for a seed array, each
        sample's class predicted at ``x`` for "pred".
    steps : int, optional
        Perturbation steps (at most ``P``); by default one region per step.
    patch : int
        Region side: ``patch x patch`` pixels of an image (n, c, h, w).  Must be 1 for other
        inputs, whose every element is a region.
    fill : float, "mean", "min", "uniform" or array
        The value of removed elements: a constant; "mean": each sample's per-channel mean;
        "min": each sample's minimum (Quantus's "black"); "uniform": uniform noise in each
        sample's ``[min, max]``, drawn per sample from ``(seed, sample_offset + i)``; or an
        array broadcastable to ``x`` (e.g. a mean image).
    order : "most_relevant_first" or "least_relevant_first"
        MoRF (a good explanation makes the score drop fast: small area) or LeRF (a good
        explanation keeps the score: large area).
    channels : "together" or "apart"
        Images: a region holds all channels of its pixels, ranked by their summed relevance
        (default), or each channel apart (Quantus's per-feature convention).
    seed : int
        Seeds ``fill="uniform"``.
    sample_offset : int
        The index of ``x[0]`` in the whole input (for the draws of ``fill="uniform"``: a
        dataset cut by hand gets the same draws).
    softmax : bool
        Score ``softmax(f)`` instead of the logits (Quantus's default).
    batch_size : int, optional
        Perturbed inputs per forward pass (default: about 256 MiB of activations).
    check_finite : bool
        Raise ValueError on NaN/Inf in ``x`` or ``R`` (default).

    Returns
    -------
    Curves
        ``curves`` (n, steps + 1), ``fractions`` ``k / steps``, ``scores`` (alias ``auc``):
        the trapezoid area over [0, 1]; ``quantus_auc``: Quantus's ``PixelFlipping`` area,
        ``np.trapz`` of ``curves[:, 1:]`` with unit spacing.  Lower is better for MoRF.

    Raises
    ------
    ValueError
        Shapes that do not fit, an unknown order, fill or channels, ``steps < 1``.
    TypeError
        A fill, seed or target of the wrong type.
    """
    x, R, t, regions, _, pos = _setup(net, x, R, target, patch, channels, order, softmax,
                                      batch_size, check_finite)
    steps = _steps(steps, regions.size)
    fill = fill_values(x, fill, seed, sample_offset)
    curves = _ordered(net, x, t, regions, pos, step_counts(regions.size, steps), fill, "remove",
                      batch_size)
    return curves_result(curves, _better(order), trapezoid1(curves[:, 1:]))


def region_perturbation(net, x, R, target, regions=100, patch=8, fill=0.0,
                        order="most_relevant_first", *, channels="together", seed=0,
                        sample_offset=0, softmax=False, batch_size=None, check_finite=True):
    """Region perturbation [Samek2017]_: remove the ``patch x patch`` regions one at a time in
    the order of their relevance (summed over the region) and record the explained score.

    Step ``k`` (0..K, ``K = min(regions, P)``) has removed the first ``k`` regions.

    Parameters
    ----------
    net, x, R, target, patch, fill, order, channels, seed, sample_offset, softmax, batch_size,
    check_finite
        As for :func:`pixel_flipping` (here ``patch`` defaults to 8).
    regions : int
        Regions removed (Quantus's ``regions_evaluation``), at most ``P``.

    Returns
    -------
    Curves
        ``curves`` (n, K + 1); ``scores`` the area over [0, 1]; ``quantus_auc``: Quantus's
        ``RegionPerturbation`` area, ``np.trapz`` with unit spacing of its curve of drops
        ``f(x) - curves[:, 1:]``.
    """
    x, R, t, reg, _, pos = _setup(net, x, R, target, patch, channels, order, softmax,
                                  batch_size, check_finite)
    steps = min(as_int(regions, "regions", minimum=1), reg.size)
    fill = fill_values(x, fill, seed, sample_offset)
    curves = _ordered(net, x, t, reg, pos, np.arange(steps + 1), fill, "remove", batch_size)
    return curves_result(curves, _better(order), trapezoid1(curves[:, :1] - curves[:, 1:]))


@dataclass
class ABPC(Result):
    """The result of :func:`abpc`: ``scores`` = area under ``lerf`` minus area under ``morf``
    (each over [0, 1]); ``morf`` and ``lerf`` the region perturbation curves (n, K + 1)."""

    morf: np.ndarray
    lerf: np.ndarray


def abpc(net, x, R, target, regions=100, patch=8, fill=0.0, *, channels="together", seed=0,
         sample_offset=0, softmax=False, batch_size=None, check_finite=True):
    """Area between the perturbation curves [Schulz2020]_: region perturbation least relevant
    first minus most relevant first.  A good explanation keeps the score when the least
    relevant regions go and loses it when the most relevant go: higher is better.

    Parameters
    ----------
    As for :func:`region_perturbation` (without ``order``).

    Returns
    -------
    ABPC
        ``scores`` (n,), ``morf`` and ``lerf`` (n, K + 1).
    """
    kw = dict(channels=channels, seed=seed, sample_offset=sample_offset, softmax=softmax,
              batch_size=batch_size, check_finite=check_finite)
    morf = region_perturbation(net, x, R, target, regions, patch, fill, ORDERS[0], **kw)
    lerf = region_perturbation(net, x, R, target, regions, patch, fill, ORDERS[1], **kw)
    return ABPC(lerf.scores - morf.scores, "higher", morf.curves, lerf.curves)


def selectivity(net, x, R, target, patch=8, fill=0.0, order="most_relevant_first", *,
                channels="together", seed=0, sample_offset=0, softmax=False, batch_size=None,
                check_finite=True):
    """Selectivity [Montavon2018]_: remove all regions one at a time, most relevant first, and
    record the explained score: it should fall fast (small area).

    Parameters
    ----------
    As for :func:`pixel_flipping` (``patch`` defaults to 8; every region is one step).

    Returns
    -------
    Curves
        ``curves`` (n, P + 1); ``scores`` the area over [0, 1]; ``quantus_auc``: Quantus's
        ``Selectivity`` area, ``np.trapz`` of ``curves[:, 1:]`` with unit spacing.
    """
    x, R, t, regions, _, pos = _setup(net, x, R, target, patch, channels, order, softmax,
                                      batch_size, check_finite)
    fill = fill_values(x, fill, seed, sample_offset)
    curves = _ordered(net, x, t, regions, pos, np.arange(regions.size + 1), fill, "remove",
                      batch_size)
    return curves_result(curves, _better(order), trapezoid1(curves[:, 1:]))


@dataclass
class SensitivityN(Result):
    """The result of :func:`sensitivity_n`.

    Attributes
    ----------
    scores : array (n,)
        Per sample, Pearson's correlation over the steps of the drop ``f(x) - f(x after k
        steps)`` with the relevance removed in those k steps (higher is better).
    curves : array (n, steps + 1)
        The explained score after 0, 1, ..., steps steps.
    fractions : array (steps + 1,)
    relevance : array (n, steps)
        The relevance of the regions removed at each step.
    n_max : int
        The steps whose correlation :attr:`correlations` reports.
    """

    curves: np.ndarray
    fractions: np.ndarray = batch_field()
    relevance: np.ndarray
    n_max: int = batch_field()

    @property
    def correlations(self):
        """Pearson's correlation, across the samples, of the drop ``f(x) - f(x after k steps)``
        and the relevance removed at step k, for k = 1 .. n_max (Quantus's ``SensitivityN``)."""
        drops = self.curves[:, :1] - self.curves[:, 1:self.n_max + 1]
        return pearson(np.asarray(drops).T, np.asarray(self.relevance[:, :self.n_max]).T)

    @property
    def summary(self) -> float:
        """The mean of :attr:`correlations` (Quantus's aggregate)."""
        return nanmean(self.correlations)


def sensitivity_n(net, x, R, target, steps=None, patch=1, fill=0.0, *, n_max=0.8,
                  channels="together", seed=0, sample_offset=0, softmax=False, batch_size=None,
                  check_finite=True):
    """Sensitivity-n [Ancona2018]_ as Quantus 0.6 computes it: remove regions most relevant
    first, cumulatively, and correlate across the samples the drop of the score after k
    steps with the relevance of the regions removed at step k (a batch-level statistic).

    Ancona et al. draw random subsets of n features; Quantus's ``SensitivityN`` ranks them
    instead, and relprop follows Quantus so that the numbers compare.

    Parameters
    ----------
    net, x, R, target, steps, patch, fill, channels, seed, sample_offset, softmax, batch_size,
    check_finite
        As for :func:`pixel_flipping`.
    n_max : float
        The share of the steps whose correlation is reported (``int(n_max * steps)``;
        Quantus's ``n_max_percentage``).

    Returns
    -------
    SensitivityN
        ``scores`` (n,), ``curves`` (n, steps + 1) and ``relevance`` (n, steps) per sample;
        ``correlations`` (n_max,) the batch statistic, ``summary`` its mean.
    """
    x, R, t, regions, rel, pos = _setup(net, x, R, target, patch, channels, ORDERS[0], softmax,
                                        batch_size, check_finite)
    steps = _steps(steps, regions.size)
    n_max = as_scalar(n_max, "n_max", minimum=0.0)
    counts = step_counts(regions.size, steps)
    curves = _ordered(net, x, t, regions, pos, counts,
                      fill_values(x, fill, seed, sample_offset), "remove", batch_size)
    step_rel = _group_sums(rel, pos, counts)
    drops = curves[:, :1] - curves[:, 1:]
    return SensitivityN(pearson(drops, np.cumsum(step_rel, axis=1)), "higher", curves,
                        np.arange(steps + 1) / steps, step_rel, int(n_max * steps))


@dataclass
class Monotonicity(Result):
    """The result of :func:`monotonicity`: ``scores`` 1.0 where the score never falls as the
    regions are inserted, else 0.0; ``curves`` (n, steps + 1) the explained score from the
    baseline (step 0) to the last insertion."""

    curves: np.ndarray


def monotonicity(net, x, R, target, steps=None, patch=1, fill=0.0, *, channels="together",
                 seed=0, sample_offset=0, softmax=False, batch_size=None, check_finite=True):
    """Monotonicity [Arya2019]_: start from the baseline (every element the fill value) and
    insert the regions of ``x``, least relevant first; the explanation is monotonic when the
    explained score never falls from one insertion to the next.

    Quantus 0.6's ``Monotonicity`` inserts the baseline value instead of ``x`` (so every
    attribution passes); see the README's "Coming from Quantus".

    Parameters
    ----------
    As for :func:`pixel_flipping` (``fill`` is the baseline).

    Returns
    -------
    Monotonicity
        ``scores`` (n,) 1.0 or 0.0, ``curves`` (n, steps + 1).
    """
    x, R, t, regions, _, pos = _setup(net, x, R, target, patch, channels, ORDERS[1], softmax,
                                      batch_size, check_finite)
    steps = _steps(steps, regions.size)
    fill = fill_values(x, fill, seed, sample_offset)
    curves = _ordered(net, x, t, regions, pos, step_counts(regions.size, steps), fill, "insert",
                      batch_size)
    mono = np.all(np.diff(curves[:, 1:], axis=1) >= 0, axis=1)
    return Monotonicity(mono.astype(np.float64), "higher", curves)


@dataclass
class Correlation(Result):
    """The result of a correlation metric: ``scores`` the correlation, per sample, of
    ``relevance`` (n, k) with ``change`` (n, k), the change of the explained score it is
    compared with."""

    relevance: np.ndarray
    change: np.ndarray


def faithfulness_estimate(net, x, R, target, steps=None, patch=1, fill=0.0, *,
                          channels="together", seed=0, sample_offset=0, softmax=False,
                          batch_size=None, check_finite=True):
    """Faithfulness estimate [Alvarez2018]_: remove each step's regions alone (the regions in
    order of relevance, most relevant first, cut into ``steps`` groups) and correlate
    (Pearson) the relevance of the group with the drop of the score ``f(x) - f(x without the
    group)``.

    Parameters
    ----------
    As for :func:`pixel_flipping`.

    Returns
    -------
    Correlation
        ``scores`` (n,), higher is better; ``relevance`` and ``change`` (the drops), (n, steps).
    """
    x, R, t, regions, rel, pos = _setup(net, x, R, target, patch, channels, ORDERS[0], softmax,
                                        batch_size, check_finite)
    steps = _steps(steps, regions.size)
    counts = step_counts(regions.size, steps)
    scores = _ordered(net, x, t, regions, pos, counts[1:], fill_values(x, fill, seed,
                                                                        sample_offset),
                      "alone", batch_size)
    drops = t.at_x[:, None] - scores
    step_rel = _group_sums(rel, pos, counts)
    return Correlation(pearson(step_rel, drops), "higher", step_rel, drops)


def _group_sums(rel, pos, counts):
    """The relevance of the regions at positions ``counts[k] .. counts[k + 1] - 1``: (n, k)."""
    n, size = rel.shape
    ordered = np.zeros((n, size + 1))
    np.put_along_axis(ordered, pos, rel, axis=1)  # (regions beyond the count land at size)
    cum = np.concatenate((np.zeros((n, 1)), np.cumsum(ordered[:, :size], axis=1)), axis=1)
    return cum[:, counts[1:]] - cum[:, counts[:-1]]


def monotonicity_correlation(net, x, R, target, steps=None, patch=1, runs=100, *, eps=1e-5,
                             noise=None, channels="together", seed=0, sample_offset=0,
                             softmax=False, batch_size=None, check_finite=True):
    """Monotonicity correlation [Nguyen2020]_: the regions in order of relevance, least
    relevant first, cut into ``steps`` groups; each group alone is set to a random value
    ``runs`` times, and the variance it causes, ``mean_r (f(x_r) - f(x))^2 / f(x)^2``
    (``f(x)^2`` replaced by 1 where ``|f(x)| < eps``), is correlated (Spearman) with the
    group's relevance.

    Parameters
    ----------
    net, x, R, target, steps, patch, channels, softmax, batch_size, check_finite
        As for :func:`pixel_flipping`.
    runs : int
        Random values per group (Quantus's ``nr_samples``).
    eps : float
    noise : array (n, steps, runs), optional
        The values the group takes in each run (all its elements alike).  By default drawn
        uniformly in each sample's ``[min, max]`` from ``(seed, sample_offset + i)``.
    seed, sample_offset : int
        For the default ``noise``.

    Returns
    -------
    Correlation
        ``scores`` (n,), higher is better; ``relevance`` and ``change`` (the variances),
        (n, steps).
    """
    x, R, t, regions, rel, pos = _setup(net, x, R, target, patch, channels, ORDERS[1], softmax,
                                        batch_size, check_finite)
    steps = _steps(steps, regions.size)
    runs = as_int(runs, "runs", minimum=1)
    eps = as_scalar(eps, "eps", minimum=0.0)
    n = len(x)
    if noise is None:
        flat = x.reshape(n, -1).astype(np.float64)
        seed, first = check_seed(seed), check_offset(sample_offset)
        noise = np.stack([sample_rng(seed, first + i, NOISE).uniform(flat[i].min(), flat[i].max(),
                                                              (steps, runs)) for i in range(n)])
    else:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (n, steps, runs):
            raise ValueError(f"noise has shape {noise.shape}, must be (n, steps, runs) = "
                             f"{(n, steps, runs)}")
    counts = step_counts(regions.size, steps)
    below, above = counts[:-1], counts[1:]
    shape = (-1,) + (1,) * (x.ndim - 1)

    def make(i, k):
        s, r = k // runs, k % runs
        p = element_positions(regions, pos, i)
        inside = (p >= below[s].reshape(shape)) & (p < above[s].reshape(shape))
        return np.where(inside, noise[i, s, r].reshape(shape).astype(x.dtype), x[i])

    out = perturbed_scores(net, x, t, steps * runs, make, batch_size).reshape(n, steps, runs)
    f = t.at_x
    with np.errstate(divide="ignore"):
        inv = np.where(np.abs(f) >= eps, 1.0 / np.abs(f), 1.0) ** 2
    variance = ((out - f[:, None, None]) ** 2).mean(axis=2) * inv[:, None]
    step_rel = _group_sums(rel, pos, counts)
    return Correlation(spearman(step_rel, variance), "higher", step_rel, variance)


def faithfulness_correlation(net, x, R, target, runs=100, subset=None, fill=0.0, *, patch=1,
                             channels="together", subsets=None, seed=0, sample_offset=0,
                             softmax=False, batch_size=None, check_finite=True):
    """Faithfulness correlation [Bhatt2020]_: remove a random subset of ``subset`` regions,
    ``runs`` times, and correlate (Pearson) the relevance of the subset with the drop of the
    score ``f(x) - f(x without the subset)``.

    Parameters
    ----------
    net, x, R, target, fill, patch, channels, softmax, batch_size, check_finite
        As for :func:`pixel_flipping`.
    runs : int
        Random subsets per sample (Quantus's ``nr_runs``).
    subset : int, optional
        Regions per subset (Quantus's ``subset_size``), fewer than the regions of a sample;
        by default 224 (Quantus's default), or a quarter of the regions when a sample has fewer
        than 896.
    subsets : int array (n, runs, subset), optional
        The subsets (region numbers) to use; by default drawn without replacement per run
        from ``(seed, sample_offset + i)``.
    seed, sample_offset : int
        For the default ``subsets`` and ``fill="uniform"``.

    Returns
    -------
    Correlation
        ``scores`` (n,), higher is better; ``relevance`` and ``change`` (the drops),
        (n, runs).
    """
    x, R, t, regions, rel, pos = _setup(net, x, R, target, patch, channels, ORDERS[0], softmax,
                                        batch_size, check_finite)
    n, size = len(x), regions.size
    runs = as_int(runs, "runs", minimum=1)
    subset = min(224, size // 4) if subset is None else as_int(subset, "subset", minimum=1)
    if not 0 < subset < size:
        raise ValueError(f"subset must be smaller than the {size} regions of a sample, got "
                         f"{subset}")
    if subsets is None:
        s, first = check_seed(seed), check_offset(sample_offset)
        subsets = np.stack([_draw_subsets(sample_rng(s, first + i, SUBSETS), size, runs, subset)
                            for i in range(n)])
    else:
        subsets = np.asarray(subsets)
        if subsets.shape != (n, runs, subset) or subsets.dtype.kind not in "iu":
            raise ValueError(f"subsets must be ints of shape (n, runs, subset) = "
                             f"{(n, runs, subset)}, got {subsets.dtype} {subsets.shape}")
        if subsets.min() < 0 or subsets.max() >= size:
            raise ValueError(f"subsets must be region numbers 0..{size - 1}")
    fill = np.broadcast_to(fill_values(x, fill, seed, sample_offset), x.shape)
    labels = regions.labels

    def make(i, k):
        member = np.zeros((len(i), size + 1), dtype=bool)
        np.put_along_axis(member, subsets[i, k], True, axis=1)
        lab = np.broadcast_to(rows_of(labels, i), (len(i),) + x.shape[1:]).reshape(len(i), -1)
        inside = np.take_along_axis(member, lab, axis=1).reshape((len(i),) + x.shape[1:])
        return np.where(inside, fill[i], x[i])

    drops = t.at_x[:, None] - perturbed_scores(net, x, t, runs, make, batch_size)
    sub_rel = np.take_along_axis(rel, subsets.reshape(n, -1), axis=1).reshape(n, runs, subset)
    sub_rel = sub_rel.sum(axis=2)
    return Correlation(pearson(sub_rel, drops), "higher", sub_rel, drops)


def _draw_subsets(rng, size, runs, subset):
    return np.stack([rng.choice(size, subset, replace=False) for _ in range(runs)])


# --------------------------------------------------------------------------------------------
# IROF
# --------------------------------------------------------------------------------------------
#: Superpixels per image for IROF's grid segmentation (SLIC's default ``n_segments``).
GRID_SEGMENTS = 100


@dataclass
class IROF(Result):
    """The result of :func:`irof`.

    Attributes
    ----------
    scores : array (n,)
        The area over the curve of ``curves / f(x)`` over [0, 1]: higher is better.
    curves : array (n, S + 1)
        The explained score after removing 0, 1, ..., S_i segments (NaN beyond a sample's
        ``counts[i]``; S the largest count).
    counts : int array (n,)
        Segments per sample.
    quantus_auc : array (n,)
        Quantus's area: ``np.trapz`` with unit spacing of ``curves[i, 1:S_i + 1] / f(x)``;
        Quantus's ``IROF`` score is ``counts - quantus_auc``.
    segmentation : str
        "slic" (scikit-image), "grid" or "given".
    """

    curves: np.ndarray
    counts: np.ndarray
    quantus_auc: np.ndarray
    segmentation: str = batch_field()

    #: Per-sample fields as wide as each sample's segment count (left out by relprop.dask).
    variable_width = ("curves",)


def segment(x, segmentation="auto"):
    """Superpixels of images ``x`` (n, c, h, w): ``(segments (n, h, w) int, method)``.

    "slic": ``skimage.segmentation.slic`` with its defaults on the channel-last image in
    float64 (as Quantus's IROF); "grid": square cells of side ``round(sqrt(h * w / 100))`` on
    :mod:`relprop.metrics._base`'s grid; "auto": SLIC when scikit-image is installed, else the
    grid.
    """
    check_choice(segmentation, "segmentation", ("auto", "slic", "grid"))
    if not is_image(x):
        raise ValueError(f"segments need images (n, c, h, w), got x of shape {x.shape}")
    if segmentation == "auto":
        try:
            import skimage.segmentation  # noqa: F401
            segmentation = "slic"
        except ImportError:
            segmentation = "grid"
    n, _, h, w = x.shape
    if segmentation == "slic":
        try:
            from skimage.segmentation import slic
        except ImportError as exc:
            raise ImportError(f"segmentation='slic' needs scikit-image ({exc})") from None
        segs = np.stack([slic(np.moveaxis(xi, 0, -1).astype(np.float64), start_label=0)
                         for xi in x])
        return segs, "slic"
    patch = max(1, int(round(np.sqrt(h * w / GRID_SEGMENTS))))
    cells = grid_regions((1, h, w), patch, "together").labels[0, 0]
    return np.broadcast_to(cells, (n, h, w)), "grid"


def irof(net, x, R, target, segments=None, fill="mean", *, segmentation="auto", seed=0,
         sample_offset=0, softmax=False, batch_size=None, check_finite=True):
    """Iterative removal of features [Rieger2020]_: remove superpixels in the order of their
    mean relevance, most relevant first, and measure the area over the curve of the score
    relative to ``f(x)``.

    Parameters
    ----------
    net, x, R, target, fill, seed, sample_offset, softmax, batch_size, check_finite
        As for :func:`pixel_flipping` (``fill`` defaults to each sample's channel means).
    segments : int array (n, h, w), optional
        The superpixels (any integer labels); by default from :func:`segment`.
    segmentation : "auto", "slic" or "grid"
        How :func:`segment` cuts the images when ``segments`` is None.

    Returns
    -------
    IROF
        ``scores`` (n,), ``curves``, ``counts``, ``quantus_auc`` and ``segmentation``.
    """
    x, R = check_inputs(net, x, R, check_finite)
    if not is_image(x):
        raise ValueError(f"irof needs images (n, c, h, w), got x of shape {x.shape}")
    if segments is None:
        segments, how = segment(x, segmentation)
    else:
        segments, how = np.asarray(segments), "given"
        if segments.shape != (len(x),) + x.shape[2:] or segments.dtype.kind not in "iu":
            raise ValueError(f"segments must be ints of shape {(len(x),) + x.shape[2:]}, got "
                             f"{segments.dtype} {segments.shape}")
    regions = segment_regions(segments, x.shape[1:])
    mean_rel = regions.sums(R) / np.maximum(regions.sizes(R.shape[1:]), 1)
    pos = ranks(mean_rel, regions.count, ORDERS[0])
    t = Target(net, x, target, softmax, batch_size)
    fill = fill_values(x, fill, seed, sample_offset)
    curves = _ordered(net, x, t, regions, pos, np.arange(regions.size + 1), fill, "remove",
                      batch_size)
    cols = np.arange(regions.size + 1)[None, :]
    curves[cols > regions.count[:, None]] = np.nan
    scores, q_auc = np.empty(len(x)), np.empty(len(x))
    for i, s in enumerate(regions.count):
        ratio = curves[i, :s + 1] / t.at_x[i]
        scores[i] = 1.0 - trapezoid01(ratio[None])[0]
        q_auc[i] = trapezoid1(ratio[None, 1:])[0]
    return IROF(scores, "higher", curves, regions.count, q_auc, how)


# --------------------------------------------------------------------------------------------
# ROAD
# --------------------------------------------------------------------------------------------
#: Noisy linear imputation: the weight of each neighbour (row, column offset).
NEIGHBOURS = (((1, 1), 1 / 12), ((0, 1), 1 / 6), ((-1, 1), 1 / 12), ((1, -1), 1 / 12),
              ((0, -1), 1 / 6), ((-1, -1), 1 / 12), ((1, 0), 1 / 6), ((-1, 0), 1 / 6))


def impute(image, pixels, noise=None):
    """Noisy linear imputation [Rong2022]_ of ``pixels`` (flat indices into ``h * w``) of
    ``image`` (c, h, w): each imputed pixel takes the weighted mean of its neighbours inside
    the image (weight 1/6 side by side, 1/12 diagonal), known neighbours at their values and
    imputed ones solved together (one sparse linear system per image, every channel a
    right-hand side), plus ``noise`` (c, len(pixels)) if given.  Returns the imputed image
    (float64)."""
    try:
        from scipy.sparse import coo_matrix
        from scipy.sparse.linalg import spsolve
    except ImportError as exc:
        raise ImportError(f"ROAD's imputation needs SciPy: pip install 'relprop[metrics]' "
                          f"({exc})") from None

    c, h, w = image.shape
    flat = image.reshape(c, -1).astype(np.float64)
    pixels = np.asarray(pixels, dtype=np.int64)
    m = len(pixels)
    out = flat.copy()
    if m == 0:
        return out.reshape(image.shape)
    unknown = np.full(h * w, -1, dtype=np.int64)
    unknown[pixels] = np.arange(m)
    rows, cols, vals = [], [], []
    b = np.zeros((m, c))
    total = np.ones(m)
    r0, c0 = pixels // w, pixels % w
    for (dr, dc), weight in NEIGHBOURS:
        r, col = r0 + dr, c0 + dc
        valid = (r >= 0) & (r < h) & (col >= 0) & (col < w)
        total[~valid] -= weight
        ids = np.flatnonzero(valid)
        nb = r[valid] * w + col[valid]
        known = unknown[nb] < 0
        b[ids[known]] -= weight * flat[:, nb[known]].T
        rows.append(ids[~known])
        cols.append(unknown[nb[~known]])
        vals.append(np.full(int((~known).sum()), weight))
    rows.append(np.arange(m))
    cols.append(np.arange(m))
    vals.append(-total)
    a = coo_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                   shape=(m, m)).tocsc()
    res = spsolve(a, b)
    res = res.reshape(m, c).T
    out[:, pixels] = res if noise is None else res + noise
    return out.reshape(image.shape)


@dataclass
class ROAD(Result):
    """The result of :func:`road`.

    Attributes
    ----------
    scores : array (n,)
        The share of the percentages at which the sample is still classified as its target
        class (for most relevant first: lower is better).
    curves : array (n, len(percentages) + 1)
        The explained score of ``x``, then after imputing each percentage.
    fractions : array (len(percentages) + 1,)
        0, then the percentages / 100.
    correct : bool array (n, len(percentages))
        Whether the imputed input is still classified as the target class.
    """

    curves: np.ndarray
    fractions: np.ndarray = batch_field()
    correct: np.ndarray

    @property
    def accuracy(self):
        """The share of the samples still classified as their target, per percentage
        (Quantus's ``ROAD`` result)."""
        return self.correct.mean(axis=0)


def road(net, x, R, target, percentages=range(1, 100, 2), order="most_relevant_first", *,
         std=0.01, noise=None, seed=0, sample_offset=0, batch_size=None, check_finite=True):
    """RemOve And Debias [Rong2022]_: impute the given percentages of the pixels, most (or
    least) relevant first, by noisy linear imputation (:func:`impute`), and check whether the
    network still predicts the target class.

    The pixels are ranked by their relevance summed over channels; percentage p imputes the
    first ``int(h * w * p / 100)`` of them, in every channel.

    Parameters
    ----------
    net, x, R, order, batch_size, check_finite
        As for :func:`pixel_flipping`; ``x`` images (n, c, h, w).
    target : int, sequence of n ints, or "pred"
        The class that should survive (a class target: ROAD compares predictions).
    percentages : sequence of numbers in [0, 100]
    std : float
        The standard deviation of the imputation noise.
    noise : array (n, len(percentages), c, h, w), optional
        Standard normal draws per pixel (those of the imputed pixels are used, times
        ``std``); by default drawn from ``(seed, sample_offset + i)``, stream per percentage.
    seed, sample_offset : int

    Returns
    -------
    ROAD
        ``scores``, ``curves``, ``fractions``, ``correct``; ``accuracy`` per percentage.
    """
    x, R = check_inputs(net, x, R, check_finite)
    if not is_image(x):
        raise ValueError(f"road needs images (n, c, h, w), got x of shape {x.shape}")
    check_choice(order, "order", ORDERS)
    pcts = [as_scalar(p, "percentages", minimum=0.0) for p in percentages]
    if not pcts or max(pcts) > 100:
        raise ValueError(f"percentages must be one or more numbers in [0, 100], got {pcts}")
    std = as_scalar(std, "std", minimum=0.0)
    t = Target(net, x, target, False, batch_size)
    classes = t.need_classes("road")
    n, c, h, w = x.shape
    pixels = grid_regions(x.shape[1:], 1, "together")
    pos = ranks(pixels.sums(R), pixels.count, order)
    by_rank = np.argsort(pos, axis=1)
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (n, len(pcts), c, h, w):
            raise ValueError(f"noise has shape {noise.shape}, must be (n, len(percentages), "
                             f"c, h, w) = {(n, len(pcts), c, h, w)}")
    s, first = check_seed(seed), check_offset(sample_offset)

    def make(i, k):
        out = np.empty((len(i),) + x.shape[1:])
        for row, (si, ki) in enumerate(zip(i, k)):
            if ki == 0:
                out[row] = x[si]
                continue
            take = by_rank[si, :int(h * w * pcts[ki - 1] / 100)]
            z = (noise[si, ki - 1].reshape(c, -1) if noise is not None else
                 sample_rng(s, first + si, NOISE, ki - 1).standard_normal((c, h * w)))
            out[row] = impute(x[si], take, std * z[:, take])
        return out

    def reduce(out, i):  # the score and the predicted class of each row
        return np.stack([t.score(out, i), out.argmax(axis=1)], axis=1)

    both = perturbed(net, x, len(pcts) + 1, make, reduce, batch_size)
    curves = both[:, :, 0]
    correct = both[:, 1:, 1] == classes[:, None]
    fractions = np.array([0.0] + [p / 100 for p in pcts])
    return ROAD(correct.mean(axis=1), _better(order), curves, fractions, correct)


#: This module's family and its metrics, in order (:data:`relprop.metrics.FAMILIES`).
FAMILY = "faithfulness"
FUNCTIONS = (pixel_flipping, region_perturbation, abpc, selectivity, sensitivity_n, irof, road,
             monotonicity, monotonicity_correlation, faithfulness_estimate,
             faithfulness_correlation)
