"""Randomization (sanity checks): an explanation that does not change when the network's
parameters or the explained class are randomized does not explain the network.

References
----------
.. [Adebayo2018] J. Adebayo et al., "Sanity checks for saliency maps", NeurIPS 2018 (model
   parameter randomization).
.. [Sixt2020] L. Sixt, M. Granz, T. Landgraf, "When explanations lie: why many modified BP
   attributions fail", ICML 2020 (random logit).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._random import CLASSES, check_offset, check_seed, sample_rng
from ._base import (
    Result,
    Target,
    batch_field,
    check_choice,
    check_inputs,
    like,
    method_draws,
    similarity,
)

LAYER_ORDERS = ("top_down", "bottom_up", "independent")


def _similarities(R, Rp, absolute, compare):
    """``compare`` of the flattened rows of ``R`` and ``Rp`` (absolute values first with
    ``absolute``; ``Rp`` summed to the shape of ``R``)."""
    Rp = like(Rp, R.shape[1:])
    a = R.reshape(len(R), -1).astype(np.float64)
    b = Rp.reshape(len(Rp), -1).astype(np.float64)
    if absolute:
        a, b = np.abs(a), np.abs(b)
    return compare(a, b)


def _explain(net, x, t, method, batch_size, params, seed, first):
    """``x`` explained by ``method`` (a random one's draws from ``(seed, first + i)``)."""
    from ..methods import explain

    return explain(net, x, t.rows(np.arange(len(x))), method=method, batch_size=batch_size,
                   **params, **method_draws(method, seed, first))


@dataclass
class MPRT(Result):
    """The result of :func:`model_parameter_randomization`.

    Attributes
    ----------
    scores : array (n,)
        The similarity of ``R`` with the explanation of the last randomized network (lower
        is better).
    similarities : array (n, len(layers))
        The similarity with the explanation of each network in turn: the original first.
    layers : list of str
        "original", then the nodes randomized at each step.
    """

    similarities: np.ndarray
    layers: list = batch_field()


def model_parameter_randomization(net, x, R, target, method="lrp.epsilon_plus_flat", *,
                                  order="top_down", nodes=None, nets=None, seed=0,
                                  sample_offset=0, similarity_func="spearman", absolute=True,
                                  batch_size=None, check_finite=True, **params):
    """Model parameter randomization test [Adebayo2018]_ (MPRT): randomize the network's
    parameters node by node and compare ``R`` with the explanation of each randomized network.

    "top_down" randomizes the nodes with parameters cumulatively from the output, "bottom_up"
    from the input, "independent" one at a time (in input-to-output order, as Quantus);
    :meth:`relprop.Graph.randomized` draws the parameters.

    Parameters
    ----------
    net : Sequential or Graph
    x : array (n, *input_shape)
    R : array shaped like ``x``
        The explanation of ``x`` by ``method`` (with ``params``) on ``net``.
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        The explained output ("pred": the class predicted by ``net`` at ``x``, kept for every
        randomized network).
    method : str
        A :func:`relprop.explain` name; ``params`` are its parameters.
    order : "top_down", "bottom_up" or "independent"
    nodes : sequence of str, optional
        The nodes to randomize (default: every node with parameters), in input-to-output
        order.
    nets : iterable of (name, network), optional
        The randomized networks themselves, instead of ``net.randomized`` (e.g. Quantus's
        randomized torch model imported at each step with :func:`relprop.from_torch`).
    seed : int or None
        Seeds :meth:`relprop.Graph.randomized` (None: one int drawn for every step) and a
        method that draws random numbers (SmoothGrad): sample ``i`` draws from ``(seed,
        sample_offset + i)`` on every network, as ``relprop.explain(..., seed=seed,
        sample_offset=sample_offset)`` of ``x``.
    sample_offset : int
        The index of ``x[0]`` in the whole input.
    similarity_func : "spearman", "pearson" or "ssim"
        Spearman's rank correlation by default (as Quantus's MPRT).
    absolute : bool
        Compare absolute values (default, as Quantus's ``abs=True``).
    batch_size : int, optional
    check_finite : bool

    Returns
    -------
    MPRT
        ``scores`` (n,), ``similarities`` (n, 1 + steps), ``layers``.
    """
    x, R = check_inputs(net, x, R, check_finite)
    check_choice(order, "order", LAYER_ORDERS)
    compare = similarity(similarity_func)
    t = Target(net, x, target, False, batch_size)
    seed, first = check_seed(seed), check_offset(sample_offset)
    if nets is None:
        if nodes is None:
            nodes = [node.name for node in net.nodes if node.layer.arrays()]
        nodes = list(nodes)
        steps = nodes[::-1] if order == "top_down" else nodes
        if order == "independent":
            nets = ((name, net.randomized([name], seed)) for name in steps)
        else:
            nets = ((name, net.randomized(steps[:k + 1], seed)) for k, name in enumerate(steps))
    names, sims = ["original"], [_similarities(R, _explain(net, x, t, method, batch_size,
                                                           params, seed, first),
                                               absolute, compare)]
    for name, randomized in nets:
        names.append(name)
        Rp = _explain(randomized, x, t, method, batch_size, params, seed, first)
        sims.append(_similarities(R, Rp, absolute, compare))
    sims = np.stack(sims, axis=1)
    return MPRT(sims[:, -1], "lower", sims, names)


@dataclass
class RandomLogit(Result):
    """The result of :func:`random_logit`: ``scores`` (n,) the similarity of ``R`` with the
    explanation of ``classes`` (n,), another class per sample (lower is better)."""

    classes: np.ndarray


def random_logit(net, x, R, target, method="lrp.epsilon_plus_flat", *, classes=None, seed=0,
                 sample_offset=0, similarity_func="ssim", absolute=False, batch_size=None,
                 check_finite=True, **params):
    """Random logit test [Sixt2020]_: explain another class, drawn uniformly among the classes
    other than the target, and compare with ``R`` (structural similarity of the flattened
    maps, as Quantus's ``RandomLogit``).

    Parameters
    ----------
    net, x, R, method, batch_size, check_finite, params
        As for :func:`model_parameter_randomization`.
    target : int, sequence of n ints, or "pred"
        The class ``R`` explains.
    classes : int array (n,), optional
        The other classes to explain; by default drawn from ``(seed, sample_offset + i)``.
    seed, sample_offset : int
        Also seed a method that draws random numbers (SmoothGrad), sample ``i`` from ``(seed,
        sample_offset + i)`` as ``relprop.explain(..., seed=seed, sample_offset=...)``.
    similarity_func : "ssim", "spearman" or "pearson"
    absolute : bool
        Compare absolute values.

    Returns
    -------
    RandomLogit
        ``scores`` (n,), ``classes`` (n,).
    """
    x, R = check_inputs(net, x, R, check_finite)
    compare = similarity(similarity_func)
    t = Target(net, x, target, False, batch_size)
    own = t.need_classes("random_logit")
    n, n_out = len(x), t.n_out
    if n_out < 2:
        raise ValueError("random_logit needs at least two outputs")
    s, first = check_seed(seed), check_offset(sample_offset)
    if classes is None:
        drawn = np.array([sample_rng(s, first + i, CLASSES).integers(n_out - 1)
                          for i in range(n)])
        classes = drawn + (drawn >= own)  # the d-th of the classes other than the target
    else:
        classes = np.asarray(classes)
        if classes.shape != (n,) or classes.dtype.kind not in "iu":
            raise ValueError(f"classes must be {n} ints, got {classes.dtype} {classes.shape}")
        if classes.min() < 0 or classes.max() >= n_out or np.any(classes == own):
            raise ValueError(f"classes must be classes 0..{n_out - 1} other than the target")
    from ..methods import explain

    Rp = explain(net, x, classes, method=method, batch_size=batch_size, **params,
                 **method_draws(method, s, first))
    return RandomLogit(_similarities(R, Rp, absolute, compare), "lower", classes)


#: This module's family and its metrics, in order (:data:`relprop.metrics.FAMILIES`).
FAMILY = "randomization"
FUNCTIONS = (model_parameter_randomization, random_logit)
