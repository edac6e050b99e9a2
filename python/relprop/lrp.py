"""Layer-wise relevance propagation: one cached forward pass, one backward walk of rules."""
from __future__ import annotations

import numpy as np

from ._targets import chunks, map_batches, seed
from .composites import as_composite
from .rules import WinnerTakeAll, split_forward


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
    # The forward pass: layers whose rule uses (z+, z-) run once on [W+; W-] when their input is
    # non-negative (see relprop.rules); every other layer runs its plain forward.
    inputs, states, parts = [], [], []
    for layer, rule in zip(net.layers, rules):
        inputs.append(x)
        if rule.uses_parts and not (x < 0).any():
            x, part = split_forward(layer, x)
            states.append(None)
            parts.append(part)
        else:
            x, state = layer.forward(x)
            states.append(state)
            parts.append(None)
    inputs.append(x)
    r = seed(target, x, scale=True)
    levels = [r]
    for i in range(len(net.layers) - 1, -1, -1):
        layer, a, z = net.layers[i], inputs[i], inputs[i + 1]
        if isinstance(rules[i], WinnerTakeAll):
            r = layer.backward(r, a, states[i])
        else:
            r = rules[i].relevance(layer, a, z, r, parts[i])
        if layerwise:
            levels.append(r)
    return levels[::-1] if layerwise else r


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
