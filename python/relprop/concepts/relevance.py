"""Conditional relevance and channel relevance: the LRP walk of :mod:`relprop.lrp` with the
relevance that arrives at named nodes masked to chosen channels (batched over conditions: one
forward pass per sample, one backward pass over its ``k`` copies), and what arrives at named
nodes recorded on the way."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._common import PRED, ShapeOnly, check_batch_size, chunks, is_int, seed
from .._validate import check_size
from ..composites import as_composite
from ..engine import backward_walk, forward_pass
from ..lrp import LrpStep

#: The key of a condition that names the explained output (zennit-crp's ``MODEL_OUTPUT_NAME``).
Y = "y"
#: Added to the sum of absolute channel relevances before dividing by it (``abs_norm``), as
#: zennit-crp does.
ABS_NORM_EPS = 1e-10


@dataclass
class Conditional:
    """What :func:`conditional` returns.

    Attributes
    ----------
    heatmap : array (n, k, *input_shape)
        ``heatmap[s, j]``: the input relevance of sample ``s`` under condition ``j``.
    relevances : dict of str to array (n, k, *node output shape)
        The relevance at the output of each recorded node (keyed by the name given in
        ``record``); at a conditioned node, the masked relevance its rule used.
    prediction : array (n, *output_shape)
        The network output ``f(x)``.
    """

    heatmap: np.ndarray
    relevances: dict
    prediction: np.ndarray


@dataclass(frozen=True)
class Condition:
    """One parsed condition: ``y`` (None: the whole output is the seed; an int or a tuple of
    ints: those classes, one-hot times ``f``; "pred": each sample's predicted class) and
    ``channels``, ``{node index: tuple of channels}``."""

    y: object
    channels: dict


def conditional(net, x, conditions, composite="epsilon_plus_flat", *, record=(),
                batch_size=None, exclude_parallel=True, check_finite=True, **rule_params):
    """Concept-conditional LRP: heatmaps of every sample under every condition.

    A condition ``{node: [channel, ...], ..., "y": class}`` multiplies the relevance arriving
    at each named node's output by the 0/1 mask of the listed channels (a Dense node's units
    count as channels) before that node's rule uses it.  With ``exclude_parallel`` (the
    default, as zennit-crp's), only relevance that flows through the conditioned nodes reaches
    the input: at a conditioned node, what has arrived at the other tensors still to come (the
    shortcuts and branches parallel to it) is dropped for that condition (docs/DESIGN.md,
    section 2.4).  The numbers are those of zennit-crp 0.6's ``CondAttribution(model)(data,
    conditions, composite, record_layer=...)`` with the same Zennit composite (its canonizers
    on graphs), on the grid of every sample with every condition.

    Parameters
    ----------
    net : Graph or Sequential
    x : array (n, *input_shape)
    conditions : list of k dicts (or one dict)
        Keys: node names (or :attr:`Graph.aliases`, such as the module paths of an imported
        model; a BatchNorm folded into its convolution means the convolution's output), values
        a channel or a list of channels; and optionally ``"y"``: an int or a list of ints (the
        seed is one-hot times ``f(x)`` at those classes), or "pred" (each sample's predicted
        class); without ``"y"`` the whole output ``f(x)`` is the seed.  With
        ``exclude_parallel`` the nodes of one condition must lie on one path (two nodes
        neither of which reads the other's output are refused, as zennit-crp refuses them).
    composite : Composite, Rule or str
        As for :func:`relprop.lrp` (``rule_params`` go to a named one's constructor).
    record : sequence of str
        Nodes whose output relevance to return (in ``relevances``).
    batch_size : int, optional
        Samples per pass (each with its k conditions: ``batch_size * k`` rows in the backward
        pass); all at once by default.
    exclude_parallel : bool
        Cut off the relevance that goes around a conditioned node (default, as zennit-crp);
        False masks only.
    check_finite : bool
        Raise ValueError on NaN/Inf in ``x`` (default).

    Returns
    -------
    Conditional
        ``heatmap`` (n, k, *input_shape), ``relevances`` {name: (n, k, *node shape)},
        ``prediction`` (n, *output_shape).

    Raises
    ------
    ValueError
        An unknown node, a channel out of range, a class out of range, parallel nodes in one
        condition, an empty list of conditions.
    TypeError
        A condition that is not a dict, channels or classes that are not ints.
    """
    x = net.check_input(x, check_finite)
    shapes = net.tensor_shapes(x.shape[1:])
    conds = parse_conditions(net, conditions, shapes, exclude_parallel)
    rules = as_composite(composite, **rule_params).rules(net)
    recorded = _node_indices(net, record, "record")
    n, k = len(x), len(conds)
    step = check_batch_size(batch_size, n)
    check_size((min(step, n) * k,) + x.shape[1:], "a batch of (sample, condition) rows")
    walk = ConditionedWalk(net, rules, conds, shapes, exclude_parallel)
    heat = np.empty((n, k) + x.shape[1:], x.dtype)
    rels = {name: np.empty((n, k) + shapes[net.nodes[i].name], x.dtype)
            for name, i in recorded.items()}
    pred = None
    for sl, _ in chunks(x, 0, step):
        out, h, got, _ = walk.run(x[sl], lambda out: condition_seeds(conds, out),
                                  set(recorded.values()))
        if pred is None:
            pred = np.empty((n,) + out.shape[1:], out.dtype)
        pred[sl] = out
        heat[sl] = h.reshape((-1, k) + x.shape[1:])
        for name, i in recorded.items():
            rels[name][sl] = got[i].reshape(rels[name][sl].shape)
    return Conditional(heat, rels, pred)


def channel_relevance(net, x, target, layers, composite="epsilon_plus_flat", *, abs_norm=True,
                      batch_size=None, check_finite=True, **rule_params) -> dict:
    """The relevance of every channel of each named node for ``target``, from one LRP pass.

    The relevance arriving at the node's output summed over space (a Dense node's units are
    its channels); with ``abs_norm`` divided, per sample, by the sum over channels of its
    absolute values plus 1e-10 (zennit-crp's ``ChannelConcept().attribute``).

    Parameters
    ----------
    net : Graph or Sequential
    x : array (n, *input_shape)
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        As for :func:`relprop.lrp` (a class: the seed is one-hot times ``f(x)``).
    layers : sequence of str
        Node names (or aliases).
    composite : Composite, Rule or str
    abs_norm : bool
    batch_size : int, optional
        Samples per pass.
    check_finite : bool

    Returns
    -------
    dict of str to array (n, C)
        Keyed by the names given in ``layers``.
    """
    x = net.check_input(x, check_finite)
    shapes = net.tensor_shapes(x.shape[1:])
    nodes = _node_indices(net, layers, "layers")
    if not nodes:
        raise ValueError("layers names no node")
    rules = as_composite(composite, **rule_params).rules(net)
    walk = ConditionedWalk(net, rules, [Condition(None, {})], shapes)
    out = {name: np.empty((len(x), shapes[net.nodes[i].name][0]), x.dtype)
           for name, i in nodes.items()}
    for sl, t in chunks(x, target, check_batch_size(batch_size, len(x))):
        _, _, got, _ = walk.run(x[sl], lambda o, t=t: seed(t, o, scale=True),
                                set(nodes.values()))
        for name, i in nodes.items():
            out[name][sl] = channel_sums(got[i], abs_norm)
    return out


def channel_sums(r, abs_norm=True):
    """``r`` (n, C, ...) summed over all but the first two axes, (n, C); with ``abs_norm``
    divided per row by the sum of its absolute values plus :data:`ABS_NORM_EPS`."""
    s = r.reshape(r.shape[0], r.shape[1], -1).sum(axis=2)
    if abs_norm:
        s = s / (np.abs(s).sum(axis=1, keepdims=True) + ABS_NORM_EPS)
    return s


# --- conditions ---------------------------------------------------------------------------------
def parse_conditions(net, conditions, shapes, exclude_parallel=True) -> list:
    """``conditions`` checked against ``net``: a list of :class:`Condition`."""
    if isinstance(conditions, dict):
        conditions = [conditions]
    if isinstance(conditions, (str, bytes)) or not hasattr(conditions, "__len__"):
        raise TypeError(f"conditions must be a list of dicts, got {type(conditions).__name__}")
    if len(conditions) == 0:
        raise ValueError("conditions is empty: give at least one condition (e.g. {'y': 0})")
    index = {node.name: i for i, node in enumerate(net.nodes)}
    n_out = shapes[net.output]
    out = []
    for j, cond in enumerate(conditions):
        where = f"condition {j}"
        if not isinstance(cond, dict):
            raise TypeError(f"{where}: a condition is a dict {{node: channels, 'y': class}}, "
                            f"got {type(cond).__name__}")
        y, channels = None, {}
        for key, val in cond.items():
            if key == Y:
                y = _classes(val, n_out, where)
                continue
            try:
                name = net.node_name(key)
            except KeyError as exc:
                raise ValueError(f"{where}: {exc.args[0]}") from None
            i = index[name]
            c = _channels(val, shapes[name][0], f"{where}, node {key!r}")
            channels[i] = tuple(sorted(set(channels.get(i, ()) + c)))
        if exclude_parallel:
            _check_one_path(net, channels, where)
        out.append(Condition(y, channels))
    return out


def _classes(val, n_out, where):
    if isinstance(val, str):
        if val != PRED:
            raise ValueError(f"{where}: 'y' must be an int, a list of ints or {PRED!r}, got "
                             f"{val!r}")
        return PRED
    if len(n_out) != 1:
        raise ValueError(f"{where}: 'y' needs an output of shape (n, n_out), the network's is "
                         f"(n, {', '.join(map(str, n_out))}); leave 'y' out to seed with f(x)")
    vals = [val] if is_int(val) else val
    if not hasattr(vals, "__iter__"):
        raise TypeError(f"{where}: 'y' must be an int, a list of ints or {PRED!r}, got {val!r}")
    vals = list(vals)
    if not vals or not all(is_int(v) for v in vals):
        raise TypeError(f"{where}: 'y' must be an int, a list of ints or {PRED!r}, got {val!r}")
    bad = [int(v) for v in vals if not 0 <= v < n_out[0]]
    if bad:
        raise ValueError(f"{where}: class {bad[0]} is out of range for {n_out[0]} outputs "
                         f"(valid: 0..{n_out[0] - 1})")
    return tuple(sorted({int(v) for v in vals}))


def _channels(val, count, where):
    vals = [val] if is_int(val) else val
    if isinstance(vals, str) or not hasattr(vals, "__iter__"):
        raise TypeError(f"{where}: channels must be an int or a list of ints, got {val!r}")
    vals = list(vals)
    if not all(is_int(v) for v in vals):
        raise TypeError(f"{where}: channels must be ints, got {val!r}")
    bad = [int(v) for v in vals if not 0 <= v < count]
    if bad:
        raise ValueError(f"{where}: channel {bad[0]} is out of range for {count} channels "
                         f"(valid: 0..{count - 1})")
    return tuple(int(v) for v in vals)


def _check_one_path(net, channels, where):
    """Raise ValueError if two conditioned nodes are parallel: neither reads (through other
    nodes) the other's output."""
    order = sorted(channels, reverse=True)
    for upper, lower in zip(order, order[1:]):
        if lower not in upstream(net.schedule, upper):
            a, b = net.nodes[upper].name, net.nodes[lower].name
            raise ValueError(f"{where}: nodes {b!r} and {a!r} are parallel (neither reads the "
                             f"other's output): with exclude_parallel the nodes of a condition "
                             "must lie on one path, as in zennit-crp; condition them apart")


def upstream(schedule, i) -> set:
    """The indices of the nodes whose outputs node ``i`` reads, directly or through others."""
    seen, stack = set(), [t for t in schedule.inputs[i] if t > 0]
    while stack:
        j = stack.pop() - 1
        if j not in seen:
            seen.add(j)
            stack.extend(t for t in schedule.inputs[j] if t > 0)
    return seen


def downstream(schedule, i) -> set:
    """The indices of the nodes that read node ``i``'s output, directly or through others."""
    readers = {}
    for j, ids in enumerate(schedule.inputs):
        for t in ids:
            readers.setdefault(t, []).append(j)
    seen, stack = set(), list(readers.get(i + 1, ()))
    while stack:
        j = stack.pop()
        if j not in seen:
            seen.add(j)
            stack.extend(readers.get(j + 1, ()))
    return seen


def _node_indices(net, names, what) -> dict:
    """``{name as given: node index}`` for a sequence of node names or aliases."""
    if isinstance(names, str):
        names = [names]
    index = {node.name: i for i, node in enumerate(net.nodes)}
    out = {}
    for name in names:
        try:
            out[name] = index[net.node_name(name)]
        except KeyError as exc:
            raise ValueError(f"{what}: {exc.args[0]}") from None
    return out


def condition_seeds(conds, out):
    """The output seeds of every sample under every condition: ``(n * k, *output_shape)``,
    row ``s * k + j`` for sample ``s`` and condition ``j``."""
    n, k = len(out), len(conds)
    s = np.zeros((n, k) + out.shape[1:], out.dtype)
    rows = np.arange(n)
    for j, c in enumerate(conds):
        if c.y is None:
            s[:, j] = out
        elif c.y == PRED:
            classes = out.argmax(axis=1)
            s[rows, j, classes] = out[rows, classes]
        else:
            s[:, j, list(c.y)] = out[:, list(c.y)]
    return s.reshape((n * k,) + out.shape[1:])


# --- the walk -----------------------------------------------------------------------------------
class ConditionedWalk:
    """The LRP walk of every sample under ``k`` conditions: one forward pass of the samples,
    one backward walk of their ``k`` copies (row ``s * k + j``), with the relevance arriving
    at conditioned nodes masked (and, with ``exclude_parallel``, the rest cut off) per row."""

    def __init__(self, net, rules, conds, shapes, exclude_parallel=True):
        self.net, self.rules, self.k = net, rules, len(conds)
        self.exclude_parallel = exclude_parallel
        self.masks, self.cut = {}, {}  # node -> (k, C) 0/1 mask, (k,) conditions naming it
        for j, c in enumerate(conds):
            for i, channels in c.channels.items():
                if i not in self.masks:
                    self.masks[i] = np.ones((self.k, shapes[net.nodes[i].name][0]))
                    self.cut[i] = np.zeros(self.k, dtype=bool)
                self.masks[i][j] = 0
                self.masks[i][j, list(channels)] = 1
                self.cut[i][j] = True
        # per node after a conditioned node c that does not read c's output (a branch beside
        # it): the conditions naming c, for which nothing that arrives there counts
        self.beside = {}
        if exclude_parallel:
            for c in self.cut:
                through = downstream(net.schedule, c)
                for i in range(c + 1, len(net.nodes)):
                    if i not in through:
                        self.beside[i] = self.beside.get(i, False) | self.cut[c]

    def run(self, x, make_seed, record=(), outputs=(), start=None):
        """``(output, input relevance (n * k, ...), {node in record: its relevance (n * k,
        ...)}, {node in outputs: its output (n, ...)})``.  ``make_seed(output)`` gives the
        output relevance of the ``n * k`` rows; with ``start`` (a node index) the walk starts at
        that node instead, from ``make_seed(its output)`` (zennit-crp's ``start_layer``)."""
        n, k, dtype = len(x), self.k, x.dtype
        keep = set(outputs) | ({start} if start is not None else set())
        step = RepeatedLrpStep(self.net, self.rules, k, keep)
        out, saved = forward_pass(self.net, x, step)
        got = {}

        def rows(a, ndim):  # per-condition values (k, ...) for all n * k rows, broadcastable
            a = np.tile(a.astype(dtype), (n,) + (1,) * (a.ndim - 1))
            return a.reshape(a.shape + (1,) * (ndim - a.ndim))

        def arrive(i, g, pending):
            if start is not None and i >= start:
                if i > start:
                    return None  # the walk starts at node ``start``
                pending.clear()
                g = make_seed(step.outputs[start])
            beside = self.beside.get(i)
            if beside is not None and g is not None:
                g = None if beside.all() else g * rows(~beside, g.ndim)
            if i in self.masks:
                if g is not None:
                    g = g * rows(self.masks[i], g.ndim)
                if self.exclude_parallel:
                    cut = self.cut[i]
                    if cut.all():
                        pending.clear()
                    else:
                        for t, v in pending.items():
                            pending[t] = v * rows(~cut, v.ndim)
            if i in record:
                got[i] = g
            return g

        r = backward_walk(self.net, step, saved, make_seed(out) if start is None else
                          np.zeros((0,), dtype), arrive=arrive)
        shapes = self.net.tensor_shapes(x.shape[1:])
        for i in record:
            if got[i] is None:  # cut off: nothing arrived
                got[i] = np.zeros((n * k,) + shapes[self.net.nodes[i].name], dtype)
        return out, r, got, step.outputs


class RepeatedLrpStep(LrpStep):
    """:class:`relprop.lrp.LrpStep` whose backward step runs ``k`` copies of every sample (rows
    ``s * k + j``) from one forward pass: what the forward pass kept is repeated per node,
    when the walk reaches it."""

    def __init__(self, net, rules, k, outputs=()):
        super().__init__(net, rules)
        self.k = k
        self.keep, self.outputs = set(outputs), {}  # nodes whose output to keep, and those

    def forward(self, i, node, ins):
        y, saved = super().forward(i, node, ins)
        if i in self.keep:
            self.outputs[i] = y
        return y, saved

    def backward(self, i, node, saved, r):
        return super().backward(i, node, _repeat(saved, self.k), r)


def _repeat(v, k):
    """``v`` (what a forward step kept: arrays with the batch first, their shapes, functions
    that remake them, tuples of those) with every sample repeated ``k`` times."""
    if v is None or k == 1:
        return v
    if isinstance(v, np.ndarray):
        return np.repeat(v, k, axis=0)
    if isinstance(v, ShapeOnly):
        return ShapeOnly((v.shape[0] * k,) + tuple(v.shape[1:]), v.dtype)
    if isinstance(v, (tuple, list)):
        return type(v)(_repeat(e, k) for e in v)
    if callable(v):
        return lambda: np.repeat(v(), k, axis=0)
    raise TypeError(f"cannot repeat a saved {type(v).__name__}")
