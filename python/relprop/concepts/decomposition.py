"""How the relevance of one concept splits over the concepts of the layers below it: zennit-crp's
``AttributionGraph``."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._common import is_int
from ..composites import as_composite
from .relevance import (
    ConditionedWalk,
    _node_indices,
    channel_sums,
    condition_seeds,
    parse_conditions,
)


@dataclass
class AttributionGraph:
    """What :func:`attribution_graph` returns (zennit-crp's ``(nodes, connections)``).

    Attributes
    ----------
    nodes : list of (str, int)
        ``(node name, channel)``: the concept decomposed, then every lower concept found, level
        by level, in the order found (a concept found twice is listed twice, as in zennit-crp).
    edges : dict of (str, int) to list of (str, int, float)
        Per decomposed concept, the lower concepts kept and their shares: the channel relevance
        of the lower node under the condition of the concept (and of the root), normalized by
        the sum of absolute values when ``abs_norm``.
    """

    nodes: list
    edges: dict


def attribution_graph(net, x, target, node, channel, *, width=(4, 2),
                      composite="epsilon_plus_flat", abs_norm=True, layers=None,
                      check_finite=True, **rule_params) -> AttributionGraph:
    """Decompose concept ``channel`` of ``node`` into the concepts of the layers below, level by
    level, for one sample: zennit-crp's ``AttributionGraph(attribution, graph, layer_map)(x,
    composite, channel, node, target, width, abs_norm=abs_norm)``.

    At level ``i`` every concept ``(l, c)`` of the level above is conditioned (``{l: [c],
    node: [channel], "y": target}``, masking only: zennit-crp's ``exclude_parallel=False``),
    the relevance arriving at the nearest layers below ``l`` is summed per channel (divided by
    its sum of absolute values when ``abs_norm``), and the ``width[i]`` largest channels of each
    such layer (ties to the lower channel) become the concepts of the next level.

    Parameters
    ----------
    net : Graph or Sequential
    x : array (1, *input_shape) or (*input_shape,)
        One sample.
    target : int or None
        The class explained (the seed is one-hot times ``f(x)``); None: the walk starts at
        ``node``, seeded with its output (zennit-crp's ``start_layer``).
    node : str
        A node name or alias.
    channel : int
    width : sequence of int
        Lower concepts kept per layer, level by level.
    composite : Composite, Rule or str
    abs_norm : bool
    layers : sequence of str, optional
        The nodes that count as layers (zennit-crp's ``layer_map``); default every Dense and
        Conv2d node.

    Returns
    -------
    AttributionGraph
    """
    x = np.asarray(x)
    if net.input_shape is not None and x.shape == net.input_shape:
        x = x[None]
    x = net.check_input(x, check_finite)
    if len(x) != 1:
        raise ValueError(f"attribution_graph explains one sample, got {len(x)}")
    shapes = net.tensor_shapes(x.shape[1:])
    if target is not None and not is_int(target):
        raise TypeError(f"target must be a class (int) or None, got {target!r}")
    widths = [int(w) for w in ([width] if is_int(width) else width)]
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"width must be positive ints, got {width!r}")
    names = [n.name for n in net.nodes]
    root = names[_node_indices(net, [node], "node")[node]]
    if layers is None:
        kept = {n.name for n in net.nodes if n.layer.kind in ("dense", "conv2d")}
    else:
        kept = {names[i] for i in _node_indices(net, layers, "layers").values()}
    rules = as_composite(composite, **rule_params).rules(net)
    by_name = {n.name: n for n in net.nodes}
    start = None if target is not None else names.index(root)

    def below(name):  # the nearest layers below ``name`` (zennit-crp's find_input_layers)
        found = []
        for t in by_name[name].inputs:
            if t == net.input_name:
                continue
            for f in ([t] if t in kept else below(t)):
                if f not in found:
                    found.append(f)
        return found

    parent = {root: [int(channel)]}
    if target is not None:
        parent["y"] = int(target)
    parse_conditions(net, [parent], shapes, False)  # checks node, channel and target
    nodes, edges, level = [(root, int(channel))], {}, [(root, int(channel))]
    for w in widths:
        conds = [{**{name: [c]}, **parent} for name, c in level]
        record = []
        for name, _ in level:
            record += [f for f in below(name) if f not in record]
        if not record:
            break
        parsed = parse_conditions(net, conds, shapes, False)
        walk = ConditionedWalk(net, rules, parsed, shapes, exclude_parallel=False)
        ids = {names.index(f) for f in record}
        _, _, got, _ = walk.run(x, lambda out, p=parsed: condition_seeds(p, out) if start is None
                                else np.repeat(out, len(p), axis=0), ids, start=start)
        following = []
        for j, (name, c) in enumerate(level):
            for f in below(name):
                share = channel_sums(got[names.index(f)][j:j + 1], abs_norm)[0]
                best = np.lexsort((np.arange(len(share)), -share))[:w]
                nodes.extend((f, int(b)) for b in best)
                following.extend((f, int(b)) for b in best)
                edges.setdefault((name, c), []).extend(
                    (f, int(b), float(share[b])) for b in best)
        level = following
    return AttributionGraph(nodes, edges)
