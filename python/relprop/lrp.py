"""Layer-wise relevance propagation: one cached forward pass, one backward walk of rules."""
from __future__ import annotations

import numpy as np

from ._common import chunks, map_batches, seed, shape_only
from .composites import as_composite
from .layers import Flatten, ReLU
from .rules import WinnerTakeAll


def lrp(net, x, target, rule_or_composite="epsilon_plus_flat", *, batch_size=None,
        check_finite=True, layerwise=False, **kwargs):
    """Layer-wise relevance propagation of the explained score down to the input.

    Parameters
    ----------
    net : Sequential
    x : array (n, *input_shape)
    target : int, sequence of n ints, or float array (n, n_out)
        With ints, relevance starts as one-hot times ``f(x)`` (so it sums to about the explained
        score ``f_t(x)``); an array is used as the output relevance directly.
    rule_or_composite : Composite, Rule or str
        A composite (``relprop.composites``), a rule for every Dense/Conv2d (``relprop.rules``), or
        a registered name such as "epsilon_plus_flat" or "epsilon" (``kwargs`` go to its
        constructor).
    batch_size : int, optional
        Process this many samples at a time.
    layerwise : bool
        Return the relevance at every layer's input instead: a list ``R`` with ``R[i]`` shaped
        like the input of layer ``i`` and ``R[-1]`` the output relevance (to check conservation
        layer by layer).

    Returns
    -------
    array shaped like ``x``: the input relevance (a list of arrays with ``layerwise``).
    """
    x = net.check_input(x, check_finite)
    rules = as_composite(rule_or_composite, **kwargs).rules(net)
    if layerwise:
        parts = [_lrp(net, x[sl], t, rules, True) for sl, t in chunks(x, target, batch_size)]
        return [np.concatenate(level) for level in zip(*parts)]
    return map_batches(lambda xc, tc: _lrp(net, xc, tc, rules), x, target, batch_size)


def _lrp(net, x, target, rules, layerwise=False):
    # The forward pass keeps, per layer, only what its rule reads (Rule.reads), and a ReLU's
    # output that the layer above reads is not kept when it can be remade from the data kept
    # for the layers below (relu(z) from a kept z, or relu(z+ + z-) from kept parts).  Layers
    # whose rule uses (z+, z-) compute them in the forward pass when their input is
    # non-negative (see relprop.rules).  The backward walk frees each layer's share after use.
    saved, remake = [], None
    for layer, rule in zip(net.layers, rules):
        a, state, parts = x, None, None
        if rule.uses_parts and a.min() >= 0:
            x, parts = rule.forward_parts(layer, a)
        else:
            x, state = layer.forward(a)
        reads = rule.reads(parts is not None)
        kept_a = (a if remake is None else remake) if "a" in reads else shape_only(a)
        saved.append([kept_a, x if "z" in reads else None, state, parts])
        remake = _remaker(layer, x, "z" in reads, parts, remake)
    r = seed(target, x, scale=True)
    del x, a, parts, remake
    levels = [r]
    for i in range(len(net.layers) - 1, -1, -1):
        a, z, state, parts = saved.pop()
        if callable(a):
            a = a()
        if isinstance(rules[i], WinnerTakeAll):
            r = net.layers[i].backward(r, a, state)
        else:
            r = rules[i].relevance(net.layers[i], a, z, r, parts)
        del a, z, state, parts
        if layerwise:
            levels.append(r)
    return levels[::-1] if layerwise else r


def _remaker(layer, y, z_kept, parts, below):
    """A function that remakes ``y``, the output of ``layer``, from data the walk keeps for the
    layers below (bitwise as the forward pass made it), or None."""
    if isinstance(layer, (ReLU, Flatten)):
        return None if below is None else lambda: layer.forward(below())[0]
    if z_kept:
        return lambda: y
    if parts is not None and parts[1] is not None:  # z = z+ + z-, as split_forward adds them
        return lambda: parts[0] + parts[1]
    return None


def conservation(net, x, target, R, *, batch_size=None):
    """Per-sample explained score, relevance sum and their difference.

    The explained score is the sum of the LRP output seed (``f_t(x)`` for an int target);
    ``batch_size`` runs the forward pass in chunks.

    Returns
    -------
    dict with arrays ``score``, ``relevance`` and ``difference`` (score - relevance), each (n,).
    """
    x = net.check_input(x)
    R = np.asarray(R)
    if R.shape != x.shape:
        raise ValueError(f"R has shape {R.shape} but x has shape {x.shape}")
    out = net.forward(x, batch_size=batch_size)
    score = seed(target, out, scale=True).reshape(len(x), -1).sum(axis=1)
    rel = R.reshape(len(x), -1).sum(axis=1)
    return {"score": score, "relevance": rel, "difference": score - rel}
