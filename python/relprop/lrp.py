"""Layer-wise relevance propagation: the engine's forward pass keeping what each node's rule
reads, and one backward walk of rules."""
from __future__ import annotations

import numpy as np

from . import ops
from ._common import batch_rows, chunks, map_batches, seed, shape_only
from .composites import as_composite, default_composite
from .engine import run
from .graph import Sequential


def lrp(net, x, target, rule_or_composite=None, *, batch_size=None,
        check_finite=True, layerwise=False, **kwargs):
    """Layer-wise relevance propagation of the explained score down to the input.

    Parameters
    ----------
    net : Graph or Sequential
    x : array (n, *input_shape)
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        With classes, relevance starts as one-hot times ``f(x)`` (so it sums to about the
        explained score ``f_t(x)``); "pred": each sample's predicted class (from this pass's
        forward pass); an array is used as the output relevance directly.
    rule_or_composite : Composite, Rule, str or None
        A composite (``relprop.composites``), a rule for every Dense/Conv2d (``relprop.rules``), or
        a registered name such as "epsilon_plus_flat" or "epsilon" (``kwargs`` go to its
        constructor); None: the network's default
        (:func:`relprop.composites.default_composite`: "epsilon_plus_flat", "attnlrp" for a
        transformer).
    batch_size : int, optional
        Process this many samples at a time (default: :func:`relprop.default_batch_size` of
        ``net``; the result does not depend on it).
    layerwise : bool
        Return the relevance of every tensor instead: for a :class:`relprop.Sequential` a list
        ``R`` with ``R[i]`` shaped like the input of layer ``i`` and ``R[-1]`` the output
        relevance; for a :class:`relprop.Graph` a dict from the input's name and every node's
        name to the relevance of that tensor (the sum of what its readers sent back), to check
        conservation node by node.

    Returns
    -------
    array shaped like ``x``: the input relevance (a list or dict of arrays with ``layerwise``).
    """
    x = net.check_input(x, check_finite)
    if rule_or_composite is None:
        rule_or_composite = default_composite(net)
    rules = as_composite(rule_or_composite, **kwargs).rules(net)
    if layerwise:
        parts = [_lrp(net, x[sl], t, rules, True)
                 for sl, t in chunks(x, target, batch_rows(batch_size, net, x))]
        levels = [np.concatenate(level) for level in zip(*parts)]
        if isinstance(net, Sequential):
            return levels
        return dict(zip([net.input_name] + [node.name for node in net.nodes], levels))
    return map_batches(lambda xc, tc: _lrp(net, xc, tc, rules), x, target, batch_size, net=net)


def _lrp(net, x, target, rules, layerwise=False, gradient=None):
    """The relevance of one batch (with ``layerwise``, of every tensor); ``gradient``: whether
    to walk in the gradient form (None: wherever every rule has it)."""
    if gradient is None:
        gradient = all(r.has_gradient(node.layer) for r, node in zip(rules, net.nodes))
    if gradient:
        step = GradientFormStep(rules, layerwise)
        # R = z * g at the output: g = R / z (the one-hot seed where f_t != 0)
        out, r = run(net, x, step, lambda z: ops.lrp_divide(seed(target, z, scale=True), z, 0.0),
                     layerwise)
        if layerwise:
            r = [None if g is None else v * g for v, g in zip(step.values, r)]  # g may alias
        else:
            r = None if r is None else x * r
    else:
        out, r = run(net, x, LrpStep(net, rules), lambda z: seed(target, z, scale=True),
                     layerwise)
    if not layerwise:
        return np.zeros_like(x) if r is None else r
    # tensors that received no relevance (a rule sent none there) hold zeros
    shapes = net.tensor_shapes(x.shape[1:])
    names = [net.input_name] + [node.name for node in net.nodes]
    return [np.zeros((len(x),) + shapes[name], x.dtype) if v is None else v
            for name, v in zip(names, r)]


class GradientFormStep:
    """The engine step of LRP where every rule has a gradient form (:meth:`Rule.gradient`,
    e.g. "attnlrp" with its defaults, LRP-0): the walk carries ``g`` with ``R = value * g`` at
    every tensor, through each rule's modified gradient, and the input relevance is ``x * g``
    (LXT's ``x * x.grad``).  The forward pass keeps what the rules' gradients read
    (:meth:`Rule.gradient_reads`); with ``keep_values`` also every tensor's value
    (``values``: the input, then each node's output), for the relevance of every tensor."""

    def __init__(self, rules, keep_values=False):
        self.rules = rules
        self.values = [] if keep_values else None

    def forward(self, i, node, ins):
        rule, layer = self.rules[i], node.layer
        y, state = layer.forward(*ins)
        if self.values is not None:
            if i == 0:
                self.values.append(ins[0])
            self.values.append(y)
        reads = rule.gradient_reads(layer)
        kept = [v if "a" in reads else shape_only(v) for v in ins]
        return y, (kept, y if "z" in reads else None, state)

    def backward(self, i, node, saved, g):
        kept, z, state = saved
        a = kept[0] if len(kept) == 1 else tuple(kept)
        return self.rules[i].gradient(node.layer, a, z, g, state)


class LrpStep:
    """The engine step of LRP.

    The forward pass keeps, per node, only what its rule reads (:meth:`Rule.reads`), and a
    remakable node's output (ReLU, Flatten, Add, Concat) that a reader needs is not kept when it
    can be remade from data kept anyway (relu(z) from a kept z, relu(z+ + z-) from kept parts,
    a sum from the summands its Norm rule keeps).
    Nodes whose rule uses (z+, z-) compute them in the forward pass when their input is
    non-negative by the network (:meth:`Layer.nonnegative`: a ReLU's output, and what pools or
    moves it), never from the data, so that a sample's algorithm, and its bits, do not depend
    on the samples beside it (see :mod:`relprop.rules`).
    """

    def __init__(self, net, rules):
        self.rules = rules
        self.inputs = net.schedule.inputs
        self.remake = [None] * (len(rules) + 1)  # per tensor: a function that remakes it
        self.depth = [0] * (len(rules) + 1)  # per tensor: the layers its remaker runs
        # per tensor: non-negative by the network (a ReLU's output and what moves or pools it;
        # not the network input), whatever the data: where the parts are made
        self.nonnegative = [False]
        for ids, node in zip(self.inputs, net.schedule.nodes):
            self.nonnegative.append(node.layer.nonnegative([self.nonnegative[t] for t in ids]))

    def forward(self, i, node, ins):
        rule, layer = self.rules[i], node.layer
        parts = state = None
        if rule.uses_parts and self.nonnegative[self.inputs[i][0]]:
            y, parts = rule.forward_parts(layer, ins[0])
        elif rule.exact:
            y, state = layer.forward(ins[0], exact=True)
        else:
            y, state = layer.forward(*ins)
        reads = rule.reads(parts is not None)
        ids = self.inputs[i]
        below = [self.remake[t] for t in ids]
        if "a" in reads:
            kept = [v if r is None else r for v, r in zip(ins, below)]
            below = kept  # what the output can be remade from
        else:
            kept = [shape_only(v) for v in ins]
        self.remake[i + 1], self.depth[i + 1] = _remaker(layer, y, "z" in reads, parts, below,
                                                         [self.depth[t] for t in ids])
        return y, (kept, y if "z" in reads else None, state, parts)

    def backward(self, i, node, saved, r):
        # the remakers the readers need are in their saved data: let go of the list, so that
        # each node's data goes as soon as its last reader is past
        self.remake = None
        kept, z, state, parts = saved
        a = [v() if callable(v) else v for v in kept]
        if len(a) == 1:
            return (self.rules[i].relevance(node.layer, a[0], z, r, parts, state),)
        return self.rules[i].relevance(node.layer, tuple(a), z, r, parts, state)


#: The most layers one remaking may run (a ReLU of a sum of a convolution's parts: 3).  A
#: deeper chain is kept instead: else remaking a residual block's output would remake the
#: residual stream below it, block by block, at every reader (quadratic in the depth: ResNet-50's
#: sums were remade 115 times for 16 nodes).
MAX_REMAKE_DEPTH = 3


def _remaker(layer, y, z_kept, parts, below, depths):
    """``(remake, depth)``: a function that remakes ``y``, the output of ``layer``, from data the
    walk keeps (bitwise as the forward pass made it), and the layers it runs; or ``(None, 0)``.
    ``below``: per input, a kept array or a function that remakes it, or None; ``depths``: the
    inputs' remakers' layers."""
    if layer.remakable:
        depth = 1 + max((d for v, d in zip(below, depths) if callable(v)), default=0)
        if any(v is None for v in below) or depth > MAX_REMAKE_DEPTH:
            return None, 0
        return lambda: layer.forward(*(v() if callable(v) else v for v in below))[0], depth
    if z_kept:
        return lambda: y, 0
    if parts is not None and parts[1] is not None:  # z = z+ + z-, as split_forward adds them
        return lambda: parts[0] + parts[1], 1
    return None, 0


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
