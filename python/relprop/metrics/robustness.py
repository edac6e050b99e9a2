"""Robustness of the explanation: how much it changes when the input changes a little.  These
metrics re-explain perturbed inputs, so they take the explanation method by name
(``method="lrp.epsilon_plus_flat"`` and its parameters, as :func:`relprop.explain`); the
perturbed inputs of all samples are explained in batches.

References
----------
.. [Yeh2019] C.-K. Yeh et al., "On the (in)fidelity and sensitivity of explanations", NeurIPS
   2019 (max- and avg-sensitivity).
.. [AlvarezMelis2018] D. Alvarez-Melis, T. Jaakkola, "On the robustness of interpretability
   methods", ICML workshop 2018 (local Lipschitz estimate).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._random import NOISE, check_offset, check_seed, sample_rng
from .._validate import as_int, as_scalar
from ._base import Result, Target, check_inputs, like, method_draws, rows_per_pass


@dataclass
class Sensitivity(Result):
    """The result of a robustness metric: ``scores`` (n,) the maximum (or mean) over the runs
    of ``values`` (n, runs), the change of the explanation per run (lower is better)."""

    values: np.ndarray


def _noise_rows(x, runs, noise, draw, seed, first):
    """``noise(i, r)``: the perturbation of rows ``(i, r)``, from the array ``noise`` (n, runs,
    *shape) or drawn by ``draw(rng, shape)`` from ``(seed, first + i)``, stream (NOISE, r)
    (``seed`` and ``first`` checked)."""
    n = len(x)
    if noise is not None:
        noise = np.asarray(noise, dtype=np.float64)
        if noise.shape != (n, runs) + x.shape[1:]:
            raise ValueError(f"noise has shape {noise.shape}, must be (n, runs, *x.shape[1:]) = "
                             f"{(n, runs) + x.shape[1:]}")
        return lambda i, r: noise[i, r]
    return lambda i, r: np.stack([draw(sample_rng(seed, first + a, NOISE, b), x.shape[1:])
                                  for a, b in zip(i, r)])


def _robustness(net, x, R, target, method, runs, noise, draw, seed, sample_offset, change,
                reduce, nan_on_change, batch_size, check_finite, params):
    """``reduce`` over the runs of ``change(R rows, re-explanations, x rows, perturbed rows)``,
    the perturbed rows ``x + noise`` explained by ``method`` (``noise`` and ``draw`` as for
    :func:`_noise_rows`; a method that draws random numbers draws a row's as its sample's,
    :func:`method_draws`)."""
    from ..methods import explain

    x, R = check_inputs(net, x, R, check_finite)
    runs = as_int(runs, "runs", minimum=1)
    seed, first = check_seed(seed), check_offset(sample_offset)
    noise_rows = _noise_rows(x, runs, noise, draw, seed, first)
    # a Generator gives the perturbations in row order; the method's draws would interleave
    # with them by batch, so the method gets an int seed drawn from it first
    method_seed = int(seed.integers(1 << 63)) if isinstance(seed, np.random.Generator) else seed
    t = Target(net, x, target, False, batch_size)
    pred = t.output.argmax(axis=1)
    n = len(x)
    total = n * runs
    step = rows_per_pass(net, x, batch_size)
    values = np.empty(total)
    flat_R = R.reshape(n, -1).astype(np.float64)
    for start in range(0, total, step):
        rows = np.arange(start, min(total, start + step))
        i, r = rows // runs, rows % runs
        xp = (x[i].astype(np.float64) + noise_rows(i, r)).astype(x.dtype)
        Rp = like(explain(net, xp, t.rows(i), method=method, batch_size=batch_size,
                          **params, **method_draws(method, method_seed, first + i)), R.shape[1:])
        values[rows] = change(flat_R[i], Rp.reshape(len(rows), -1).astype(np.float64),
                              x[i].reshape(len(rows), -1), xp.reshape(len(rows), -1))
        if nan_on_change:
            moved = net.forward(xp, check_finite=False).argmax(axis=1) != pred[i]
            values[rows[moved]] = np.nan
    values = values.reshape(n, runs)
    with np.errstate(invalid="ignore"):
        scores = reduce(values, axis=1)
    return Sensitivity(scores, "lower", values)


def _relative(Ra, Rp, xa, xp):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.linalg.norm(Ra - Rp, axis=1) / np.linalg.norm(Ra, axis=1)


def _uniform(radius):
    return lambda rng, shape: rng.uniform(-radius, radius, shape)


def max_sensitivity(net, x, R, target, method="lrp.epsilon_plus_flat", *, runs=200,
                    radius=0.2, noise=None, seed=0, sample_offset=0, nan_on_change=False,
                    batch_size=None, check_finite=True, **params):
    """Max-sensitivity [Yeh2019]_: the largest relative change of the explanation,
    ``max_r ||R - R(x + e_r)|| / ||R||`` (Frobenius norms over all elements), over ``runs``
    perturbations ``e_r`` drawn uniformly in ``[-radius, radius]`` per element.

    Parameters
    ----------
    net : Sequential or Graph
    x : array (n, *input_shape)
    R : array shaped like ``x`` (or ``(n, 1, h, w)``: the re-explanations are then summed over
        channels)
        The explanation of ``x`` by ``method`` (with ``params``).
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        The explained output ("pred": the class predicted at ``x``, for every perturbation).
    method : str
        A :func:`relprop.explain` name; ``params`` are its parameters.
    runs : int
        Perturbations per sample (Quantus's ``nr_samples``).
    radius : float
        Half-width of the uniform noise (Quantus's ``lower_bound``).
    noise : array (n, runs, *input_shape), optional
        The perturbations themselves; by default drawn from ``(seed, sample_offset + i)``.
    seed, sample_offset : int
        Sample ``i`` draws its perturbations from ``(seed, sample_offset + i)``; a method that
        draws random numbers (SmoothGrad) draws those of every perturbed copy of sample ``i``
        from there too (its stream, as ``relprop.explain(..., seed=seed,
        sample_offset=sample_offset)`` of ``x``), so that the change measures the perturbation
        alone, whatever the batch or chunk.
    nan_on_change : bool
        Leave out (NaN) the runs whose perturbation changes the predicted class (Quantus's
        ``return_nan_when_prediction_changes``; the maximum is then over the others).
    batch_size : int, optional
        Perturbed inputs explained at a time.
    check_finite : bool

    Returns
    -------
    Sensitivity
        ``scores`` (n,), lower is better; ``values`` (n, runs).
    """
    draw = _uniform(as_scalar(radius, "radius", minimum=0.0))
    return _robustness(net, x, R, target, method, runs, noise, draw, seed, sample_offset,
                       _relative, np.nanmax, nan_on_change, batch_size, check_finite, params)


def avg_sensitivity(net, x, R, target, method="lrp.epsilon_plus_flat", *, runs=200,
                    radius=0.2, noise=None, seed=0, sample_offset=0, nan_on_change=False,
                    batch_size=None, check_finite=True, **params):
    """Avg-sensitivity [Yeh2019]_: as :func:`max_sensitivity`, with the mean over the runs
    instead of the maximum.

    Returns
    -------
    Sensitivity
        ``scores`` (n,), lower is better; ``values`` (n, runs).
    """
    draw = _uniform(as_scalar(radius, "radius", minimum=0.0))
    return _robustness(net, x, R, target, method, runs, noise, draw, seed, sample_offset,
                       _relative, np.nanmean, nan_on_change, batch_size, check_finite, params)


def local_lipschitz_estimate(net, x, R, target, method="lrp.epsilon_plus_flat", *, runs=200,
                             std=0.1, noise=None, seed=0, sample_offset=0, nan_on_change=False,
                             batch_size=None, check_finite=True, **params):
    """Local Lipschitz estimate [AlvarezMelis2018]_: ``max_r ||R - R(x + e_r)|| / (||e_r|| +
    1e-10)`` (Euclidean norms over all elements, ``e_r`` the perturbation as it lands in the
    input's dtype) over ``runs`` Gaussian perturbations of standard deviation ``std``.

    Parameters
    ----------
    As for :func:`max_sensitivity`, with ``std`` (Quantus's ``perturb_std``) instead of
    ``radius``.

    Returns
    -------
    Sensitivity
        ``scores`` (n,), lower is better; ``values`` (n, runs).
    """
    std = as_scalar(std, "std", minimum=0.0)

    def lipschitz(Ra, Rp, xa, xp):
        dx = np.linalg.norm(xa.astype(np.float64) - xp, axis=1)
        return np.linalg.norm(Ra - Rp, axis=1) / (dx + 1e-10)

    return _robustness(net, x, R, target, method, runs, noise,
                       lambda rng, shape: rng.normal(0.0, std, shape), seed, sample_offset,
                       lipschitz, np.nanmax, nan_on_change, batch_size, check_finite, params)


#: This module's family and its metrics, in order (:data:`relprop.metrics.FAMILIES`).
FAMILY = "robustness"
FUNCTIONS = (max_sensitivity, avg_sensitivity, local_lipschitz_estimate)
