"""Class prototypes by activation maximization, with an optional Gaussian data prior.

Activation maximization looks for the input a class responds to most: starting from ``x0``, it
climbs ``f_c(x) - l2 * ||x - x0||^2`` by gradient ascent (Adam), clipped to a box after every
step.  The "expert" variant of the tutorial [Montavon2018]_ adds a density model of the data,
``- weight * (-log p(x))``, which keeps the prototype close to what real inputs look like;
:class:`GaussianPrior` is such a model.

References
----------
.. [Montavon2018] G. Montavon, W. Samek, K.-R. Mueller, "Methods for interpreting and
   understanding deep neural networks", Digital Signal Processing 73, 2018.
"""
from __future__ import annotations

import numbers
from dataclasses import dataclass

import numpy as np

from ._random import check_seed, sample_rng
from ._validate import as_float_array, as_int, as_scalar
from .engine import score_and_grad


@dataclass
class GaussianPrior:
    """A Gaussian density over flattened inputs: ``p(x) = N(x; mean, covariance)``.

    Make one with :meth:`fit`.  ``weight`` scales the prior's term in
    :func:`activation_maximization`.

    Attributes
    ----------
    mean : array (d,)
    covariance : array (d, d)
    precision : array (d, d)
        The inverse covariance, from its eigendecomposition.
    log_det : float
        ``log det(covariance)``.
    shape : tuple
        The shape of one sample (``d`` = its size).
    weight : float
    """

    mean: np.ndarray
    covariance: np.ndarray
    precision: np.ndarray
    log_det: float
    shape: tuple
    weight: float = 1.0

    @classmethod
    def fit(cls, X, shrinkage=0.1, weight=1.0):
        """Fit mean and shrunk covariance to samples ``X`` (n, *sample_shape).

        The covariance is ``(1 - shrinkage) * C + shrinkage * trace(C) / d * I``, with ``C`` the
        empirical (maximum-likelihood, divided by n) covariance, as scikit-learn's
        ``ShrunkCovariance``; shrinkage makes it invertible when features are constant or
        fewer samples than features are given.

        Parameters
        ----------
        X : array (n, *sample_shape)
        shrinkage : float in [0, 1]
        weight : float >= 0

        Raises
        ------
        ValueError
            Fewer than 2 samples, shrinkage outside [0, 1], or a covariance that is not positive
            definite (increase ``shrinkage``).
        """
        X = as_float_array(X, "X", dtype=np.float64)
        if X.ndim < 2 or X.shape[0] < 2:
            raise ValueError(f"X must hold at least 2 samples (n, *sample_shape), got shape "
                             f"{X.shape}")
        shrinkage = as_scalar(shrinkage, "shrinkage", minimum=0.0)
        if shrinkage > 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {shrinkage}")
        flat = X.reshape(len(X), -1)
        d = flat.shape[1]
        mean = flat.mean(axis=0)
        c = flat - mean
        emp = c.T @ c / len(flat)
        cov = (1 - shrinkage) * emp + shrinkage * np.trace(emp) / d * np.eye(d)
        lam, vec = np.linalg.eigh(cov)
        if lam[0] <= 1e-12 * max(lam[-1], np.finfo(float).tiny):
            raise ValueError(f"the covariance of X is singular (smallest eigenvalue {lam[0]:.3g}); "
                             "increase shrinkage")
        precision = (vec / lam) @ vec.T
        return cls(mean, cov, precision, float(np.log(lam).sum()), X.shape[1:],
                   as_scalar(weight, "weight", minimum=0.0))

    def _flat(self, x):
        x = as_float_array(x, "x")
        if x.shape[1:] != tuple(self.shape):
            raise ValueError(f"x has shape {x.shape}; the prior was fitted to samples of shape "
                             f"{tuple(self.shape)}")
        return x.reshape(len(x), -1).astype(np.float64) - self.mean

    def neg_log_density(self, x):
        """``-log p(x)`` per sample of ``x`` (n, *shape): ``0.5 * (d log 2 pi + log det S +
        (x - mean)^T S^-1 (x - mean))``; returns (n,)."""
        c = self._flat(x)
        maha = np.einsum("ni,ij,nj->n", c, self.precision, c)
        return 0.5 * (c.shape[1] * np.log(2 * np.pi) + self.log_det + maha)

    def grad_neg_log_density(self, x):
        """The gradient of :meth:`neg_log_density`, ``S^-1 (x - mean)``, shaped like ``x``."""
        x = np.asarray(x)
        return (self._flat(x) @ self.precision).reshape(x.shape).astype(x.dtype, copy=False)


@dataclass
class Prototypes:
    """What :func:`activation_maximization` returns.

    Attributes
    ----------
    prototypes : array (n_classes, *input_shape)
    targets : array (n_classes,) of int
    scores : array (steps, n_classes)
        ``f_c(x_t)`` at the start of every step (``scores[0]`` is the initial point).
    objective : array (steps, n_classes)
        The maximized objective at the same points.
    final_scores : array (n_classes,)
        ``f_c`` of the returned prototypes.
    """

    prototypes: np.ndarray
    targets: np.ndarray
    scores: np.ndarray
    objective: np.ndarray
    final_scores: np.ndarray


def _targets_array(targets):
    if isinstance(targets, (numbers.Integral, np.integer)) and not isinstance(targets, bool):
        return np.array([int(targets)])
    t = np.asarray(targets)
    if t.ndim != 1 or t.size == 0 or t.dtype.kind not in "iu":
        raise TypeError(f"targets must be an int or a non-empty sequence of ints, got "
                        f"{type(targets).__name__} with shape {t.shape} and dtype {t.dtype}")
    return t.astype(np.int64)


def _bound(value, name, shape, dtype):
    arr = as_float_array(value, name, dtype=dtype)
    try:
        return np.broadcast_to(arr, shape)
    except ValueError:
        raise ValueError(f"{name} has shape {arr.shape}, not broadcastable to the input shape "
                         f"{shape[1:]}") from None


def activation_maximization(net, targets, input_shape=None, steps=200, lr=0.05, l2=0.01, low=0.0,
                            high=1.0, init="mean", prior=None, seed=0, *, beta1=0.9, beta2=0.999,
                            dtype=np.float64):
    """Class prototypes: maximize ``f_c(x) - l2 * ||x - x0||^2`` (``- prior.weight *
    prior.neg_log_density(x)`` with a prior) over ``low <= x <= high``, for every class at once.

    Each step makes one batched gradient pass over all requested classes, then an Adam ascent
    step [Kingma2015]_ (bias-corrected, ``eps=1e-8``) and clips to ``[low, high]``.

    Parameters
    ----------
    net : Sequential
    targets : int or sequence of int
        The classes; one prototype each (repeats allowed).
    input_shape : tuple, optional
        Shape of one input; defaults to ``net.input_shape``.
    steps : int
        Ascent steps.
    lr : float
        Adam step size.
    l2 : float
        Weight of the pull towards ``x0``.
    low, high : float or array broadcastable to ``input_shape``
        The box (e.g. per-channel bounds of shape ``(c, 1, 1)``).
    init : "mean", "random" or array
        The start ``x0``: "mean" is the prior's mean when a prior is given, else the middle of
        the box ``(low + high) / 2``; "random" starts uniformly at random in the box (see
        ``seed``) with the l2 term still centered on the "mean" point; an array (one sample,
        broadcast, or ``(n_classes, *input_shape)``) is both the start and the center.
    prior : GaussianPrior, optional
        A density model whose ``weight * neg_log_density`` is subtracted from the objective.
    seed : int or numpy.random.Generator
        Seeds ``init="random"``: with an int, the start of class ``c`` is
        ``rng.uniform(low, high)`` (float64) with ``rng`` the stream of index ``c``,
        ``numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(c,)))``
        (:mod:`relprop._random`), so a class's prototype does not depend on the other classes
        asked for; a Generator draws the starts in the order of ``targets``.
    beta1, beta2 : float
        Adam's moment decay rates.
    dtype : float32 or float64
        Computation dtype (float64 by default: the batch is small).

    Returns
    -------
    Prototypes

    References
    ----------
    .. [Kingma2015] D. P. Kingma, J. Ba, "Adam: a method for stochastic optimization", ICLR 2015.
    """
    t = _targets_array(targets)
    shape = net.input_shape if input_shape is None else tuple(int(s) for s in input_shape)
    if shape is None:
        raise ValueError("activation_maximization needs input_shape (the network has none)")
    steps = as_int(steps, "steps", minimum=1)
    lr = as_scalar(lr, "lr", minimum=0.0)
    l2 = as_scalar(l2, "l2", minimum=0.0)
    dtype = np.dtype(dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"dtype must be float32 or float64, got {dtype}")
    full = (len(t),) + shape
    lo, hi = _bound(low, "low", full, dtype), _bound(high, "high", full, dtype)
    if np.any(lo > hi):
        raise ValueError("low must be <= high everywhere")
    if prior is not None:
        if not isinstance(prior, GaussianPrior):
            raise TypeError(f"prior must be a GaussianPrior, got {type(prior).__name__}")
        if tuple(prior.shape) != shape:
            raise ValueError(f"the prior was fitted to samples of shape {tuple(prior.shape)}, "
                             f"the input shape is {shape}")
    if isinstance(init, str):
        if init not in ("mean", "random"):
            raise ValueError(f"init must be 'mean', 'random' or an array, got {init!r}")
        center = (prior.mean.reshape(shape) if prior is not None else (lo + hi) / 2)
        x0 = np.ascontiguousarray(np.broadcast_to(center, full), dtype=dtype)
        if init == "random":
            seed = check_seed(seed)
            x = np.stack([sample_rng(seed, c).uniform(lo[j], hi[j])
                          for j, c in enumerate(t)]).astype(dtype)
        else:
            x = x0.copy()
    else:
        x0 = np.ascontiguousarray(_bound(init, "init", full, dtype))
        x = x0.copy()
    x = np.clip(x, lo, hi)
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    scores = np.empty((steps, len(t)))
    objective = np.empty((steps, len(t)))
    axes = tuple(range(1, x.ndim))
    for step in range(1, steps + 1):
        score, g = score_and_grad(net, x, t)
        obj = score - l2 * ((x - x0) ** 2).sum(axis=axes)
        g = g - (2 * l2) * (x - x0)
        if prior is not None:
            obj = obj - prior.weight * prior.neg_log_density(x)
            g = g - prior.weight * prior.grad_neg_log_density(x)
        scores[step - 1], objective[step - 1] = score, obj
        m = beta1 * m + (1 - beta1) * g
        v = beta2 * v + (1 - beta2) * g * g
        m_hat = m / (1 - beta1 ** step)
        v_hat = v / (1 - beta2 ** step)
        x = np.clip(x + lr * m_hat / (np.sqrt(v_hat) + 1e-8), lo, hi).astype(dtype, copy=False)
    final = score_and_grad(net, x, t)[0]
    return Prototypes(x, t, scores, objective, final)
