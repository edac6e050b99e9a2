"""Gradients averaged over many points: SmoothGrad (noisy copies) and Integrated Gradients
(points on a straight path).

Both expand the batch: sample ``i`` of ``x`` becomes ``k`` rows (its noisy copies or its path
points), the target is expanded along with it, and the rows go through the network in batched
gradient passes (one pass per chunk of ``batch_size`` rows, never one pass per copy).  The
gradients are then summed back per sample with the method's weights.
"""
from __future__ import annotations

import numpy as np

from ._common import batch_rows, finite_result, predicted, row_targets
from ._random import check_seed, sample_indices, sample_rng
from ._validate import as_float_array, as_int, as_scalar, check_size
from .engine import gradient_pass


def averaged_gradient(net, x, target, points, weights, batch_size=None):
    """``sum_k weights[k] * dF/dx`` at ``points(sample_rows, k_rows)``, for every sample of ``x``,
    summed in the order of ``k`` (bitwise the same for any ``batch_size``).

    Parameters
    ----------
    net : Sequential
    x : array (n, *input_shape), already validated by ``net.check_input``
    target : int, sequence of n ints, float array (n, n_out), or "pred"
    points : callable ``(i, k) -> array (len(i), *input_shape)``
        The input rows for sample indices ``i`` and point indices ``k`` (called once per chunk,
        with ``i`` non-decreasing).
    weights : array (k,)
    batch_size : int, optional
        Rows (sample x point) per batched gradient pass (default:
        :func:`relprop.default_batch_size` of ``net``).

    Returns
    -------
    array shaped like ``x``
    """
    n, k = x.shape[0], len(weights)
    rows = n * k
    step = batch_rows(batch_size, net, x)
    check_size((min(step, rows),) + x.shape[1:], "an expanded batch")
    take_target = row_targets(target, n)
    w = np.asarray(weights, dtype=x.dtype)
    out = np.zeros_like(x)
    for start in range(0, rows, step):
        idx = np.arange(start, min(rows, start + step))
        i, kk = idx // k, idx % k
        g = gradient_pass(net, points(i, kk), take_target(i))
        g *= w[kk].reshape((-1,) + (1,) * (x.ndim - 1))
        # each sample's terms are added in point order, one at a time, so its sum rounds
        # alike however the rows are cut into chunks (a sample appears once per point)
        for j in range(kk.min(), kk.max() + 1):
            at = kk == j
            out[i[at]] += g[at]
    return out


class _NoiseBlocks:
    """SmoothGrad's noise: sample ``i`` (``index[i]`` in the whole input) gets its ``n``
    copies' noise as one block of standard normals ``(n, *shape)`` (float64) from its own
    stream (:mod:`relprop._random`); the last block is kept, since a sample's copies may
    straddle two chunks of rows."""

    def __init__(self, seed, index, n, shape):
        self.seed, self.index, self.size = seed, index, (n,) + tuple(shape)
        self.last = (None, None)

    def block(self, i):
        if self.last[0] != i:
            self.last = (i, sample_rng(self.seed, self.index[i]).standard_normal(self.size))
        return self.last[1]

    def rows(self, i, k):
        """The noise of rows ``(i[r], k[r])``, with ``i`` non-decreasing: ``(len(i), *shape)``."""
        out = np.empty((len(i),) + self.size[1:])
        edges = np.r_[np.flatnonzero(np.r_[True, i[1:] != i[:-1]]), len(i)]
        for a, b in zip(edges[:-1], edges[1:]):
            out[a:b] = self.block(int(i[a]))[k[a:b]]
        return out


def smoothgrad(net, x, target, n=16, sigma=0.15, seed=None, *, sample_offset=0,
               batch_size=None, check_finite=True):
    """SmoothGrad [Smilkov2017]_: the gradient averaged over noisy copies of the input.

    ``R = 1/n sum_j dF/dx (x + e_j)``, ``e_j ~ N(0, (sigma * (max(x) - min(x)))^2)`` per
    element, where ``max(x) - min(x)`` is the range of each sample (so ``sigma`` is the noise
    level relative to the input range, as in the paper; a constant sample gets no noise).

    Parameters
    ----------
    net : Sequential
    x : array (n_samples, *input_shape)
    target : int, sequence of n_samples ints, float array (n_samples, n_out), or "pred"
        As for :func:`relprop.gradient`; expanded along with ``x`` to every noisy copy.
    n : int
        Noisy copies per sample.
    sigma : float
        Noise standard deviation relative to each sample's range ``max - min``.
    seed : int, numpy.random.Generator or None
        Seeds the noise.  With an int, sample ``i`` of ``x`` draws the standard normals of its
        ``n`` copies as one block ``(n, *input_shape)`` (float64) from
        ``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(sample_offset +
        i,)))`` (:mod:`relprop._random`), so its noise depends only on the seed and its index
        in the whole input: never on ``batch_size``, threads, or how the input was cut.  A
        Generator gives the samples' blocks in order; None draws a fresh int seed.
    sample_offset : int or int array (n_samples,)
        The index of ``x[0]`` in the whole input (for a slice of a dataset explained on its
        own: the same noise as in the whole); or each sample's index (for samples that are not
        consecutive, e.g. a metric's perturbed copies of one sample: each gets its sample's
        noise).
    batch_size : int, optional
        Rows of the expanded batch (``n_samples * n`` noisy copies) per batched gradient pass;
        bounds memory (default: :func:`relprop.default_batch_size` of ``net``).
    check_finite : bool
        Raise ValueError on NaN/Inf in ``x`` (default).

    Returns
    -------
    array shaped like ``x``

    Raises
    ------
    TypeError
        A seed that is not an int (or a Generator), an offset that is not an int (or ints).
    ValueError
        A negative seed or offset, an offset array not of ``n_samples`` indices, ``n < 1``,
        ``sigma < 0``, or NaN/Inf in ``x``.

    References
    ----------
    .. [Smilkov2017] D. Smilkov et al., "SmoothGrad: removing noise by adding noise", 2017.
    """
    x = net.check_input(x, check_finite)
    n = as_int(n, "n", minimum=1)
    sigma = as_scalar(sigma, "sigma", minimum=0.0)
    noise = _NoiseBlocks(check_seed(seed), sample_indices(sample_offset, len(x)), n, x.shape[1:])
    flat = x.reshape(len(x), -1)
    scale = sigma * (flat.max(axis=1).astype(np.float64) - flat.min(axis=1))
    scale = scale.reshape((-1,) + (1,) * (x.ndim - 1))

    def points(i, k):
        return (x[i] + scale[i] * noise.rows(i, k)).astype(x.dtype)

    weights = np.full(n, 1.0 / n)
    target = predicted(net, x, target, batch_size)  # the class at x, not at the copies
    return finite_result(lambda xc, tc: averaged_gradient(net, xc, tc, points, weights,
                                                           batch_size), x, target)


def _gauss_legendre(s):
    nodes, weights = np.polynomial.legendre.leggauss(s)
    return 0.5 * (1 + nodes), 0.5 * weights


#: Quadrature rules on [0, 1] for :func:`integrated_gradients`: ``steps -> (alphas, weights)``.
#: The names are Captum's.  ``riemann_trapezoid`` is the trapezoidal rule (``steps`` points
#: ``0, 1/(steps-1), ..., 1``; weights ``1/(steps-1)``, halved at both ends, summing to 1);
#: Captum's rule of that name uses the same points with weights ``1/steps`` (halved at the
#: ends), which sum to ``1 - 1/steps``, so Captum's result is relprop's times ``(steps-1)/steps``.
QUADRATURES = {
    "riemann_trapezoid": lambda s: (np.linspace(0, 1, s),
                                    np.r_[0.5, np.ones(s - 2), 0.5] / (s - 1)),
    "riemann_middle": lambda s: ((np.arange(s) + 0.5) / s, np.full(s, 1.0 / s)),
    "riemann_left": lambda s: (np.arange(s) / s, np.full(s, 1.0 / s)),
    "riemann_right": lambda s: ((np.arange(s) + 1.0) / s, np.full(s, 1.0 / s)),
    "gausslegendre": _gauss_legendre,
}


def integrated_gradients(net, x, target, baseline=None, steps=32, quadrature="riemann_trapezoid", *,
                         batch_size=None, check_finite=True):
    """Integrated Gradients [Sundararajan2017]_ along the straight path from a baseline.

    ``R = (x - x') * integral_0^1 dF/dx (x' + a (x - x')) da``, with the integral approximated
    by the ``quadrature`` rule over ``steps`` points of the path.  Completeness: ``sum(R) =
    F(x) - F(x')`` up to the discretization error (for a ReLU network ``F`` is piecewise linear
    along the path, so the error comes from the few steps that straddle a kink and shrinks like
    ``1/steps``; it is zero for a network that is linear on the path).

    Parameters
    ----------
    net : Sequential
    x : array (n, *input_shape)
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        As for :func:`relprop.gradient`; expanded along with ``x`` to every path point.
    baseline : None, float, or array
        ``x'``: zeros (None), a constant, one sample ``input_shape`` (broadcast) or an array
        shaped like ``x``.
    steps : int
        Points on the path (gradient evaluations per sample).
    quadrature : str
        (Captum calls it ``method``; renamed here so that it can pass through
        ``relprop.explain(..., method="integrated_gradients", quadrature=...)``.)
        A key of :data:`QUADRATURES`: "riemann_trapezoid" (trapezoidal rule including both ends,
        ``steps >= 2``), "riemann_middle" (midpoint rule), "riemann_left", "riemann_right" or
        "gausslegendre".  Riemann middle and Gauss-Legendre match Captum's
        ``IntegratedGradients`` of the same name exactly; see :data:`QUADRATURES` for Captum's
        trapezoid.
    batch_size : int, optional
        Rows of the expanded batch (``n * steps`` path points) per batched gradient pass; bounds
        memory (default: :func:`relprop.default_batch_size` of ``net``).
    check_finite : bool
        Raise ValueError on NaN/Inf in ``x`` (default).

    Returns
    -------
    array shaped like ``x``

    References
    ----------
    .. [Sundararajan2017] M. Sundararajan, A. Taly, Q. Yan, "Axiomatic attribution for deep
       networks", ICML 2017.
    """
    x = net.check_input(x, check_finite)
    steps = as_int(steps, "steps", minimum=1)
    if quadrature not in QUADRATURES:
        raise ValueError(f"quadrature must be one of {sorted(QUADRATURES)}, got {quadrature!r}")
    if quadrature == "riemann_trapezoid" and steps < 2:
        raise ValueError(f"riemann_trapezoid needs steps >= 2, got {steps}")
    if baseline is None:
        base = np.zeros((1,) * x.ndim, dtype=x.dtype)
    else:
        base = as_float_array(baseline, "baseline", dtype=x.dtype)
    try:
        base = np.broadcast_to(base, x.shape)
    except ValueError:
        raise ValueError(f"baseline has shape {base.shape}, not broadcastable to x "
                         f"{x.shape}") from None
    alphas, weights = QUADRATURES[quadrature](steps)
    alphas = alphas.astype(x.dtype)
    diff = x - base
    shape = (-1,) + (1,) * (x.ndim - 1)

    def points(i, k):
        return base[i] + alphas[k].reshape(shape) * diff[i]

    target = predicted(net, x, target, batch_size)  # the class at x, not along the path
    return finite_result(lambda xc, tc: diff * averaged_gradient(net, xc, tc, points, weights,
                                                                  batch_size), x, target)
