"""The one engine every method runs on: a forward pass through a network's nodes in topological
order that keeps, per node, only what the method's backward step reads, then one backward walk
in reverse topological order that sums what a tensor's consumers send back.

A method is a *step*: an object with

* ``forward(i, node, ins) -> (y, saved)``: run node ``i`` on its input values ``ins`` and return
  its output and whatever its backward step will read (references to inputs, the output,
  pooling winners, ...; nothing else is kept);
* ``backward(i, node, saved, g) -> tuple``: map ``g``, the sum of what the node's consumers sent
  back to its output (gradient or relevance), to one array per input.

Tensors are numbered: 0 is the network input, ``i + 1`` the output of node ``i`` (the nodes in
topological order, the network's output node last).  A tensor's value is dropped as soon as its
last consumer has run, and a node's saved data as soon as its backward step has run, so memory
holds only what is still to be read.  Where several consumers send values back to one tensor
they are added in reverse topological order of the consumers: the same order for any thread
count and batch size.
"""
from __future__ import annotations

from ._common import seed, shape_only


def forward_pass(net, x, step):
    """Run ``step.forward`` over the nodes: ``(output, saved)``, ``saved[i]`` what node ``i``'s
    backward step reads."""
    sched = net.schedule
    n = len(sched.nodes)
    values = [None] * (n + 1)
    values[0] = x
    uses = list(sched.uses)
    saved = [None] * n
    for i, node in enumerate(sched.nodes):
        ids = sched.inputs[i]
        y, saved[i] = step.forward(i, node, [values[t] for t in ids])
        values[i + 1] = y
        for t in ids:
            uses[t] -= 1
            if uses[t] == 0:
                values[t] = None
    return values[n], saved


def backward_walk(net, step, saved, g, levels=False):
    """Run ``step.backward`` from ``g`` (shaped like the output) down to the input, dropping
    each node's ``saved`` entry once used.  Returns what reaches the input, or with ``levels``
    a list of what reached every tensor (0 the input, ``i + 1`` the output of node ``i``)."""
    sched = net.schedule
    n = len(sched.nodes)
    grads = {n: g}
    del g
    reached = [None] * (n + 1) if levels else None
    for i in range(n - 1, -1, -1):
        g = grads.pop(i + 1)
        if levels:
            reached[i + 1] = g
        back = step.backward(i, sched.nodes[i], saved[i], g)
        saved[i] = None
        del g
        for t, gt in zip(sched.inputs[i], back):
            grads[t] = gt if t not in grads else grads[t] + gt
        del back
    g = grads.pop(0)
    if levels:
        reached[0] = g
        return reached
    return g


def run(net, x, step, make_seed, levels=False):
    """Forward pass, then the backward walk of ``step`` from ``make_seed(output)``:
    ``(output, what reaches the input)``, or with ``levels`` ``(output, list of what reached
    every tensor)``."""
    out, saved = forward_pass(net, x, step)
    return out, backward_walk(net, step, saved, make_seed(out), levels)


class GradientStep:
    """The step of the gradient family: each layer's vector-Jacobian product, with the ReLU
    backward of ``relu_mode`` ("gradient", "deconvnet" or "guided").  Keeps the inputs of the
    layers whose backward reads them (ReLU) and the pooling winners, and the shape of the rest.
    """

    def __init__(self, relu_mode="gradient"):
        self.relu_mode = relu_mode

    def forward(self, i, node, ins):
        layer = node.layer
        y, state = layer.forward(*ins)
        kept = ins if layer.backward_reads_input else [shape_only(a) for a in ins]
        return y, (kept, state)

    def backward(self, i, node, saved, g):
        kept, state = saved
        return node.layer.vjp(g, kept, state, self.relu_mode)


class TraceStep(GradientStep):
    """:class:`GradientStep` that keeps every input (for :meth:`Graph.trace`)."""

    def forward(self, i, node, ins):
        y, state = node.layer.forward(*ins)
        return y, (ins, state)


def gradient_pass(net, x, target, relu_mode="gradient"):
    """``dF/dx`` with ``F = sum(seed * f(x))`` (``relu_mode``: "gradient", "deconvnet" or
    "guided"); ``x`` as ``net.check_input`` returns it."""
    return net.vjp(x, lambda out: seed(target, out, scale=False), relu_mode)[1]


def score_and_grad(net, x, target):
    """``(F(x) per sample, dF/dx)`` with ``F = sum(seed * f(x))``, from one forward-backward
    pass."""
    seeds = []

    def make_seed(out):
        seeds.append(seed(target, out, scale=False))
        return seeds[0]

    out, g = net.vjp(x, make_seed)
    score = (seeds[0] * out).reshape(len(x), -1).sum(axis=1)
    return score, g
