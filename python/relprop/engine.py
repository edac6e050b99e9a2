"""The one engine every method runs on: a forward pass through a network's nodes in topological
order that keeps, per node, only what the method's backward step reads, then one backward walk
in reverse topological order that sums what a tensor's consumers send back.

A method is a *step*: an object with

* ``forward(i, node, ins) -> (y, saved)``: run node ``i`` on its input values ``ins`` and return
  its output and whatever its backward step will read (references to inputs, the output,
  pooling winners, ...; nothing else is kept);
* ``backward(i, node, saved, g) -> tuple``: map ``g``, the sum of what the node's consumers sent
  back to its output (gradient or relevance), to one array per input, or None for an input that
  receives nothing (CP-LRP sends no relevance to an attention's queries and keys): a tensor
  that receives nothing from any consumer is skipped, and so is the node that made it.

Tensors are numbered: 0 is the network input, ``i + 1`` the output of node ``i`` (the nodes in
topological order, the network's output node last).  A tensor's value is dropped as soon as its
last consumer has run, and a node's saved data as soon as its backward step has run, so memory
holds only what is still to be read.  Where several consumers send values back to one tensor
they are added in reverse topological order of the consumers: the same order for any thread
count and batch size.
"""
from __future__ import annotations

from dataclasses import dataclass

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


def backward_walk(net, step, saved, g, levels=False, arrive=None):
    """Run ``step.backward`` from ``g`` (shaped like the output) down to the input, dropping
    each node's ``saved`` entry once used.  Returns what reaches the input, or with ``levels``
    a list of what reached every tensor (0 the input, ``i + 1`` the output of node ``i``); None
    where nothing did (a step sent None to it, or only nodes that received nothing read it).

    ``arrive(i, g, pending)``, if given, sees what arrived at node ``i``'s output (None if
    nothing did) before the node's step uses it, and returns what the step is to use (None:
    skip the node); ``pending`` (tensor number -> array) is what has arrived so far at tensors
    still to come, which it may change (concept relevance masks channels and cuts off the
    branches parallel to a conditioned node: :mod:`relprop.concepts`)."""
    sched = net.schedule
    n = len(sched.nodes)
    grads = {n: g}
    del g
    reached = [None] * (n + 1) if levels else None
    for i in range(n - 1, -1, -1):
        g = grads.pop(i + 1, None)
        if arrive is not None:
            g = arrive(i, g, grads)
        if g is None:
            saved[i] = None
            continue
        if levels:
            reached[i + 1] = g
        back = step.backward(i, sched.nodes[i], saved[i], g)
        saved[i] = None
        del g
        for t, gt in zip(sched.inputs[i], back):
            if gt is not None:
                grads[t] = gt if t not in grads else grads[t] + gt
        del back
    g = grads.pop(0, None)
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


@dataclass(frozen=True)
class Fusions:
    """Where the forward pass and the gradient run two or three nodes as one kernel.

    ``relu``: Dense and Conv2d nodes read by a ReLU alone, which write the ReLU's output
    (``forward(x, relu=True)``); ``through``: those ReLUs, which pass it on (and keep it for
    their backward step).  ``pool``: Conv2d nodes read by a ReLU alone, itself read alone by a
    2x2 stride-2 max pooling, which write the pooled output and its winners
    (``forward_relu_pool``) and run the backward pass of the three (``backward_relu_pool``);
    ``pool_through``: those ReLUs and poolings, which pass values on both ways.  ``masked``
    (the gradient only, not deconvnet or guided backprop): Dense and Conv2d nodes whose input
    is the output of a ReLU they alone read, whose backward step applies that ReLU's mask in
    its store; ``mask_through``: those ReLUs, which pass the gradient on.  Every fusion is
    bitwise the nodes apart.
    """

    relu: frozenset = frozenset()
    pool: frozenset = frozenset()
    through: frozenset = frozenset()
    pool_through: frozenset = frozenset()
    masked: frozenset = frozenset()
    mask_through: frozenset = frozenset()


NO_FUSIONS = Fusions()


def find_fusions(schedule, gradient=True):
    """The :class:`Fusions` of a schedule, from the layers' fusion traits (``takes_epilogue``,
    ``epilogue``, ``fuses_pool``; :mod:`relprop.layers.base`); ``gradient=False`` leaves out
    those whose backward pass is the gradient's only (the ReLU masks, and the pooling fusions
    whose backward pass needs them)."""
    nodes, inputs, uses = schedule.nodes, schedule.inputs, schedule.uses
    reader = {}
    for i, ids in enumerate(inputs):
        for t in ids:
            reader[t] = i if t not in reader else None  # None: read by several nodes

    def only_reader(t):
        i = reader.get(t)
        return i if i is not None and uses[t] == 1 else None

    relu, pool, through, pool_through = set(), set(), set(), set()
    masked, mask_through = set(), set()
    for i, node in enumerate(nodes):
        if not node.layer.takes_epilogue:
            continue
        j = only_reader(i + 1)
        if j is None or nodes[j].layer.epilogue != "relu":
            continue
        k = only_reader(j + 1)
        if gradient and k is not None and node.layer.fuses_pool(nodes[k].layer):
            pool.add(i)
            pool_through |= {j, k}
        else:
            relu.add(i)
            through.add(j)
    if gradient:
        for k, node in enumerate(nodes):
            t = inputs[k][0]
            if node.layer.takes_epilogue and t > 0 and nodes[t - 1].layer.epilogue == "relu" \
                    and only_reader(t) == k:
                masked.add(k)
                mask_through.add(t - 1)
    return Fusions(*map(frozenset, (relu, pool, through, pool_through, masked, mask_through)))


def fused_forward(fusions, i, node, ins):
    """Node ``i``'s output and state under ``fusions`` (the state of a pooling fusion is
    ``(argmax, pooled)``)."""
    if i in fusions.through or i in fusions.pool_through:
        return ins[0], None
    if i in fusions.pool:
        pooled, argmax = node.layer.forward_relu_pool(ins[0])
        return pooled, (argmax, pooled)
    if i in fusions.relu:
        return node.layer.forward(ins[0], relu=True)
    return node.layer.forward(*ins)


class GradientStep:
    """The step of the gradient family: each layer's vector-Jacobian product, with the ReLU
    backward of ``relu_mode`` ("gradient", "deconvnet" or "guided").  Keeps the inputs of the
    layers whose backward reads them (ReLU) and the pooling winners, and the shape of the rest.
    ``fusions`` (from :func:`find_fusions` with ``gradient=(relu_mode == "gradient")``) runs
    nodes together; the default runs each alone.
    """

    def __init__(self, relu_mode="gradient", fusions=NO_FUSIONS):
        self.relu_mode = relu_mode
        self.fusions = fusions

    def forward(self, i, node, ins):
        f = self.fusions
        y, state = fused_forward(f, i, node, ins)
        if i in f.mask_through or i in f.pool_through:
            return y, None  # nothing to do backward
        keep = node.layer.backward_reads_input or i in f.masked
        return y, ([a if keep else shape_only(a) for a in ins], state)

    def backward(self, i, node, saved, g):
        if saved is None:
            return (g,)
        kept, state = saved
        f = self.fusions
        if i in f.pool:
            argmax, pooled = state
            return (node.layer.backward_relu_pool(g, argmax, pooled, kept[0], i in f.masked),)
        if i in f.masked:
            return (node.layer.backward_masked(g, kept[0]),)
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
