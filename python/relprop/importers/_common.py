"""What the importers share: the probe input and self-check, and :class:`GraphBuilder`, which
collects nodes with their shapes while an importer walks the source graph and makes the
network (a Sequential for a chain, a Graph otherwise)."""
from __future__ import annotations

import numpy as np

from ..graph import INPUT, Graph, Node, Sequential, ancestors

#: Relative tolerance of the import self-check: ``max|relprop - source| <= rtol * max|source|``.
CHECK_RTOL = 1e-4
_PROBE_SEED = 0


def probe(shape, dtype, n=2):
    """A fixed probe batch ``(n, *shape)`` of standard normal values."""
    return np.random.default_rng(_PROBE_SEED).standard_normal((n,) + tuple(shape)).astype(dtype)


def self_check(got, want, source, rtol):
    """Raise ValueError unless ``got`` matches ``want`` within ``rtol`` of ``max|want|``."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        raise ValueError(f"import self-check failed: relprop gives output shape {got.shape}, "
                         f"{source} gives {want.shape}")
    scale = max(float(np.abs(want).max(initial=0.0)), np.finfo(np.float32).tiny)
    err = float(np.abs(got - want).max(initial=0.0)) / scale
    if not err <= rtol:
        raise ValueError(f"import self-check failed: relprop's forward pass differs from {source} "
                         f"by {err:.3g} (relative to the largest output), more than {rtol:g}")
    return err


def softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def as_input_shape(input_shape):
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be positive sizes, got {shape}")
    return shape


class GraphBuilder:
    """Nodes of the network being imported, with every tensor's per-sample shape.

    ``add`` names each node (the first free one of the candidates), checks its shapes (errors
    name the source node via ``where``) and returns the tensor's name; :meth:`build` makes the
    network.
    """

    def __init__(self, input_shape):
        self.nodes = []
        self.shapes = {INPUT: tuple(input_shape)}

    def unique(self, *candidates):
        """The first candidate name not taken (with a numeric suffix if all are)."""
        for name in candidates:
            if name and name not in self.shapes:
                return name
        base, k = candidates[-1] or "node", 1
        while f"{base}_{k}" in self.shapes:
            k += 1
        return f"{base}_{k}"

    def add(self, names, layer, inputs, where):
        """Add ``layer`` reading ``inputs`` under the first free name of ``names`` (a name or a
        sequence of candidates); return the name."""
        names = (names,) if isinstance(names, str) else tuple(names)
        inputs = tuple(inputs)
        try:
            out = layer.output_shape(*(self.shapes[t] for t in inputs))
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        name = self.unique(*names)
        self.nodes.append(Node(name, layer, inputs))
        self.shapes[name] = tuple(int(s) for s in out)
        return name

    def producer(self, name):
        """The node that makes tensor ``name`` (None for the network input)."""
        return next((n for n in reversed(self.nodes) if n.name == name), None)

    def build(self, output, input_shape, where):
        """The network whose output is tensor ``output``: a Sequential when the nodes that
        reach it form a chain, else a Graph (nodes the output does not depend on are left
        out)."""
        if output == INPUT:
            raise ValueError(f"{where}: the model has no layers relprop can use (its output is "
                             "its input)")
        needed = ancestors({n.name: n for n in self.nodes}, output)
        nodes = [n for n in self.nodes if n.name in needed]
        chain = all(n.inputs == ((INPUT,) if i == 0 else (nodes[i - 1].name,))
                    for i, n in enumerate(nodes)) and nodes[-1].name == output
        try:
            if chain:  # the names stay as aliases of the positions (CRP conditions use them)
                return Sequential([n.layer for n in nodes], input_shape=input_shape,
                                  aliases={n.name: str(i) for i, n in enumerate(nodes)})
            return Graph(nodes, input_shape=input_shape, output=output)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
