"""Networks: :class:`Graph`, a directed acyclic graph of layers, and :class:`Sequential`, its
chain special case, and their model files (:meth:`Graph.save`, :func:`load`).

Every node has a name, a layer and the names of its inputs (the network input or other nodes);
a tensor may feed several nodes.  When a network is built, its nodes are put in topological
order, checked (unknown inputs, cycles, nodes that do not reach the output, shapes when the
input shape is given), and canonized: a BatchNorm right after a Dense/Conv2d whose output
nothing else reads is folded into that layer.  All methods run on :mod:`relprop.engine`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import io
from . import layers as L
from ._common import NonFiniteResult, map_batches
from ._validate import MAX_ELEMENTS, as_float_array, as_int, check_size
from .engine import (
    GradientStep,
    TraceStep,
    backward_walk,
    find_fusions,
    forward_pass,
    fused_forward,
    run,
)

#: The default name of a network's input.
INPUT = "input"
#: Model file format: version 2 describes a graph, ``{"format": "relprop", "version": 2,
#: "network": "graph"|"sequential", "input_shape": [...]|null, "input_name": "input", "output":
#: name, "nodes": [{"name", "kind", "inputs", **layer.config()}, ...]}``, with node ``i``'s
#: arrays stored as ``"{i}.{array name}"``.  Version 1 files (a list of ``"layers"``, written
#: before graphs) still load, as :class:`Sequential`.
FORMAT_VERSION = 2


@dataclass(frozen=True)
class Node:
    """One node of a :class:`Graph`: ``layer`` applied to the tensors named in ``inputs``."""

    name: str
    layer: L.Layer
    inputs: tuple

    def __repr__(self):
        return f"Node({self.name!r}, {self.layer!r}, inputs={list(self.inputs)})"


@dataclass
class Trace:
    """A forward pass that keeps every value.

    ``inputs[t]`` is the value of tensor ``t``: ``inputs[0]`` the network input and
    ``inputs[i + 1]`` the output of node ``i`` (nodes in topological order; in a
    :class:`Sequential`, the input of layer ``i + 1``); ``states[i]`` node ``i``'s extra state
    (pooling winners), ``output`` the network output ``f(x)``.
    """

    inputs: list
    states: list
    output: np.ndarray
    saved: list = None


@dataclass(frozen=True)
class Schedule:
    """A network's nodes as the engine walks them: ``nodes`` in topological order (the output
    node last), ``inputs[i]`` the tensor numbers node ``i`` reads (0 the network input,
    ``j + 1`` the output of node ``j``), ``uses[t]`` how many times tensor ``t`` is read."""

    nodes: tuple
    inputs: tuple
    uses: tuple


def _as_node(spec):
    if isinstance(spec, Node):
        return spec
    if not isinstance(spec, (tuple, list)) or len(spec) != 3:
        raise TypeError(f"a node is a relprop.Node or a tuple (name, layer, inputs), got {spec!r}")
    name, layer, inputs = spec
    if isinstance(inputs, str):
        inputs = (inputs,)
    return Node(name, layer, tuple(inputs))


class Graph:
    """A feed-forward network whose layers form a directed acyclic graph.

    Parameters
    ----------
    nodes : sequence of Node or (name, layer, inputs)
        ``inputs`` is a name or a sequence of names: ``input_name`` (the network input) or
        other nodes.  Add and Concat take two or more inputs, every other layer one.
    input_shape : tuple of int, optional
        Shape of one sample, e.g. ``(3, 224, 224)``.  When given, shapes are checked now and
        inputs on every call.
    input_name : str
        The name of the network input (default "input").
    output : str, optional
        The node whose output is the network output; by default the one node that no other
        node reads.
    aliases : dict of str to str, optional
        Other names of nodes (``{alias: node name}``, e.g. the module paths an importer saw):
        :meth:`node_name` resolves them (an alias that is also a node's name means that node).
        A BatchNorm folded into the layer before it becomes an alias of that layer's node.

    Raises
    ------
    ValueError
        Duplicate or unknown names, a cycle, a node that does not contribute to the output,
        a wrong number of inputs, or shapes that do not fit (the message names the node).
    TypeError
        Something that is not a relprop layer.

    Examples
    --------
    A residual block::

        net = rp.Graph([
            ("conv1", rp.Conv2d(w1, padding=1), "input"),
            ("relu1", rp.ReLU(), "conv1"),
            ("conv2", rp.Conv2d(w2, padding=1), "relu1"),
            ("add", rp.Add(), ["conv2", "input"]),
            ("relu2", rp.ReLU(), "add"),
        ], input_shape=(8, 16, 16))
    """

    def __init__(self, nodes, input_shape=None, *, input_name=INPUT, output=None,
                 aliases=None):
        if not isinstance(input_name, str) or not input_name:
            raise TypeError(f"input_name must be a non-empty string, got {input_name!r}")
        nodes = [_as_node(n) for n in nodes]
        if not nodes:
            raise ValueError(f"{type(self).__name__} needs at least one node")
        self.input_name = input_name
        self._check_nodes(nodes)
        given = {n.name for n in nodes}
        nodes, output, renamed = _fold_batchnorms(nodes, self._output_of(nodes, output))
        nodes = _resolve(nodes)
        self.output = output
        self.schedule = _schedule(nodes, input_name, output, self._where)
        self.nodes = self.schedule.nodes
        self.aliases = _aliases(aliases, renamed, given, {n.name for n in self.nodes})
        self.input_shape = None
        self.output_shape = None
        if input_shape is not None:
            shape = _sizes(input_shape)
            if not shape:
                raise ValueError(f"input_shape must be positive sizes, got {shape}")
            self.output_shape = self.tensor_shapes(shape)[self.output]
            self.input_shape = shape

    # --- construction -----------------------------------------------------------------------
    def _where(self, name):
        return f"node {name!r}"

    def _check_nodes(self, nodes):
        seen = set()
        for node in nodes:
            if not isinstance(node.name, str) or not node.name:
                raise TypeError(f"node names must be non-empty strings, got {node.name!r}")
            if node.name == self.input_name or node.name in seen:
                raise ValueError(f"{self._where(node.name)}: the name is used twice (node names "
                                 f"and the input name {self.input_name!r} must be unique)")
            seen.add(node.name)
            if not isinstance(node.layer, L.Layer):
                raise TypeError(f"{self._where(node.name)}: expected a relprop layer, got "
                                f"{type(node.layer).__name__}")
            if not node.inputs or not all(isinstance(t, str) for t in node.inputs):
                raise TypeError(f"{self._where(node.name)}: inputs must be names, got "
                                f"{node.inputs!r}")
            arity = node.layer.n_inputs
            if (arity is None and len(node.inputs) < 2) or (arity is not None and
                                                            len(node.inputs) != arity):
                want = "two or more inputs" if arity is None else f"{arity} input(s)"
                raise ValueError(f"{self._where(node.name)}: {type(node.layer).__name__} takes "
                                 f"{want}, got {list(node.inputs)}")
        for node in nodes:
            for t in node.inputs:
                if t != self.input_name and t not in seen:
                    raise ValueError(f"{self._where(node.name)}: unknown input {t!r} (not a "
                                     f"node, not the input {self.input_name!r})")

    def _output_of(self, nodes, output):
        if output is not None:
            if output not in {n.name for n in nodes}:
                raise ValueError(f"output {output!r} is not a node")
            return output
        read = {t for n in nodes for t in n.inputs}
        sinks = [n.name for n in nodes if n.name not in read]
        if len(sinks) != 1:
            raise ValueError(f"the network has {len(sinks)} nodes that no other node reads "
                             f"({sinks[:5]}); name the output with output=")
        return sinks[0]

    # --- shapes -----------------------------------------------------------------------------
    def _memo(self, name, key, compute):
        """``compute()``, remembered under ``key`` in the network's cache ``name`` (data derived
        from the nodes, which never change; at most 16 keys per cache)."""
        cache = self.__dict__.setdefault(name, {})
        if key in cache:
            return cache[key]
        value = compute()
        if len(cache) < 16:
            cache[key] = value
        return value

    def tensor_shapes(self, input_shape) -> dict:
        """Per-sample shape of every tensor: ``{input_name: input_shape, node: output shape}``
        (computed once per input shape: every call checks its input with it)."""
        input_shape = _sizes(input_shape)

        def walk():
            shapes = {self.input_name: input_shape}
            for node in self.nodes:
                try:
                    out = node.layer.output_shape(*(shapes[t] for t in node.inputs))
                except ValueError as exc:
                    raise ValueError(f"{self._where(node.name)}: {exc}") from None
                shapes[node.name] = tuple(int(s) for s in out)
                if math.prod(shapes[node.name]) > MAX_ELEMENTS:  # one sample: no batch size helps
                    raise ValueError(f"{self._where(node.name)}: its output of per-sample shape "
                                     f"{shapes[node.name]} is more than relprop's limit of "
                                     f"{MAX_ELEMENTS} elements")
            return shapes

        return dict(self._memo("_shapes", input_shape, walk))

    def node_flops(self, input_shape=None) -> list:
        """Forward-pass FLOPs per sample of each node, in topological order (a multiply-add
        counts 2; bias adds, ReLU, additions and pooling count 1 per element), as
        ``relprop info`` lists them; ``input_shape`` defaults to the network's."""
        shape = self.input_shape if input_shape is None else input_shape
        if shape is None:
            raise ValueError("the network has no input shape: pass input_shape")
        shape = _sizes(shape)

        def count():  # (remembered: the batch loop asks on every call)
            shapes = self.tensor_shapes(shape)
            return [int(node.layer.flops([shapes[t] for t in node.inputs], shapes[node.name]))
                    for node in self.nodes]

        return list(self._memo("_flops", shape, count))

    def flops(self, input_shape=None) -> int:
        """Forward-pass FLOPs per sample: the sum of :meth:`node_flops`."""
        return sum(self.node_flops(input_shape))

    def plans(self, input_shape=None) -> list:
        """The plans (:mod:`relprop.plans`) of every node's forward and backward pass with its
        own weights, for inputs of ``input_shape`` (default: the network's), in topological
        order: ``[(forward plan, backward plan)]``, ``(None, None)`` for layers without
        weights; what ``relprop info`` lists.  A node the forward pass fuses with its ReLU and
        max pooling runs these plans in the fused kernels."""
        shape = self.input_shape if input_shape is None else input_shape
        if shape is None:
            raise ValueError("the network has no input shape: pass input_shape")
        shapes = self.tensor_shapes(shape)
        out = []
        for node in self.nodes:
            layer = node.layer
            if not layer.linear:
                out.append((None, None))
                continue
            w = layer.params(layer.weight.dtype)[0]
            x_shape = (1,) + shapes[node.inputs[0]]
            out.append((layer.plan(w, x_shape), layer.plan(w, x_shape, backward=True)))
        return out

    @property
    def layers(self):
        """The nodes' layers, in topological order."""
        return tuple(node.layer for node in self.nodes)

    @property
    def linear_layers(self):
        return [i for i, layer in enumerate(self.layers) if layer.linear]

    def with_input_shape(self, input_shape):
        """The same network with another ``input_shape`` (checked)."""
        return Graph(self.nodes, input_shape, input_name=self.input_name, output=self.output,
                     aliases=self.aliases)

    def node(self, name) -> Node:
        """The node called ``name``."""
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r}")

    def node_name(self, name) -> str:
        """The name of the node that ``name`` (a node name or one of :attr:`aliases`) means.

        Raises
        ------
        KeyError
            ``name`` is neither (the message lists some of the names there are).
        """
        if isinstance(name, str) and (name in self.aliases or
                                      any(n.name == name for n in self.nodes)):
            return self.aliases.get(name, name)
        names = [n.name for n in self.nodes]
        raise KeyError(f"no node {name!r} in the network (nodes: {names[:8]}"
                       f"{' ...' if len(names) > 8 else ''}"
                       + (f"; aliases: {sorted(self.aliases)[:8]}" if self.aliases else "") + ")")

    def __len__(self):
        return len(self.nodes)

    def __repr__(self):
        body = ",\n".join(f"  {node!r}" for node in self.nodes)
        shape = f", input_shape={self.input_shape}" if self.input_shape else ""
        return f"{type(self).__name__}([\n{body}\n]{shape})"

    # --- the passes -------------------------------------------------------------------------
    def check_input(self, x, check_finite=True, name="x"):
        """Validate ``x`` (n, *input_shape) and return it as a C-contiguous float array."""
        arr = as_float_array(x, name, check_finite=check_finite)
        if arr.ndim < 2:
            raise ValueError(f"{name} must be a batch (n, *sample_shape), got shape {arr.shape}; "
                             "use x[None] for one sample")
        if arr.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {arr.shape})")
        if self.input_shape is not None and arr.shape[1:] != self.input_shape:
            raise ValueError(f"{name} has shape {arr.shape} but the network expects "
                             f"(n, {', '.join(map(str, self.input_shape))})")
        for s in self.tensor_shapes(arr.shape[1:]).values():
            check_size((arr.shape[0],) + s, "an activation")
        return arr

    def forward(self, x, check_finite=True, batch_size=None):
        """Output scores ``f(x)`` (logits), shape ``(n, *output_shape)``.

        ``batch_size`` runs the batch in chunks of that many samples (default:
        :func:`relprop.default_batch_size`).  A finite ``x`` whose
        scores overflow to inf/NaN raises ``ValueError`` (whatever ``check_finite``, which
        governs the check of ``x`` only)."""
        x = self.check_input(x, check_finite)
        return map_batches(lambda xc, _: self._forward(xc), x, 0, batch_size, net=self)

    __call__ = forward

    def fusions(self, gradient=True):
        """Where the forward pass (and with ``gradient`` the gradient's backward pass) runs
        several nodes as one kernel: :class:`relprop.engine.Fusions` (made once)."""
        return self._memo("_fusions", gradient, lambda: find_fusions(self.schedule, gradient))

    def _forward(self, x):
        sched = self.schedule
        fusions = self.fusions()
        values = [x] + [None] * len(sched.nodes)
        uses = list(sched.uses)
        for i, node in enumerate(sched.nodes):
            ids = sched.inputs[i]
            values[i + 1] = fused_forward(fusions, i, node, [values[t] for t in ids])[0]
            for t in ids:
                uses[t] -= 1
                if uses[t] == 0:
                    values[t] = None
        return values[-1]

    def trace(self, x, check_finite=True) -> Trace:
        """Forward pass keeping every tensor's value and every node's state (see
        :class:`Trace`)."""
        x = self.check_input(x, check_finite)
        values = [x]

        class Keep(TraceStep):
            def forward(self, i, node, ins):
                y, saved = super().forward(i, node, ins)
                values.append(y)
                return y, saved

        out, saved = forward_pass(self, x, Keep())
        _check_overflow(x, out)
        return Trace(values, [s[1] for s in saved], out, saved)

    def backward(self, trace: Trace, seed, relu_mode="gradient"):
        """Vector-Jacobian product of ``seed`` (shaped like the output) down to the input, from
        a :meth:`trace`.  ``relu_mode`` is "gradient", "deconvnet" or "guided"."""
        return backward_walk(self, GradientStep(relu_mode), list(trace.saved), seed)

    def vjp(self, x, make_seed, relu_mode="gradient"):
        """Forward pass, then the vector-Jacobian product of ``make_seed(output)`` down to the
        input: ``(output, g)``, as ``backward(trace(x), ...)`` but keeping only what the
        backward pass reads (the inputs of ReLUs, pooling winners; the shape of the rest) and
        letting go of each as soon as the backward pass is past it.  ``x`` as
        :meth:`check_input` returns it."""

        def checked_seed(out):
            _check_overflow(x, out)
            return make_seed(out)

        step = GradientStep(relu_mode, self.fusions(relu_mode == "gradient"))
        return run(self, x, step, checked_seed)

    # --- copies -----------------------------------------------------------------------------
    def randomized(self, nodes, seed=0):
        """A copy of the network whose ``nodes`` have their parameters redrawn (the model
        parameter randomization test, :func:`relprop.metrics.model_parameter_randomization`).

        Every parameter array of a named node's layer (its ``arrays()``) is replaced by an array
        of the same shape drawn with replacement from its own entries: the parameters keep
        their scale and sign constraints (a BatchNorm's variance stays positive) and lose what
        was learned.  Node ``j`` (in :attr:`nodes` order) draws from
        ``numpy.random.default_rng(SeedSequence(seed, spawn_key=(j, 5)))`` (the stream
        ``relprop._random.PARAMETERS``, apart from every sample's draws), so its draw does not
        depend on which other nodes are randomized.

        Parameters
        ----------
        nodes : sequence of str
            Names (or :attr:`aliases`) of nodes with parameters.
        seed : int

        Returns
        -------
        Graph
            Of the same class (a :class:`Sequential` stays one); the other nodes share their
            layers with this network.

        Raises
        ------
        ValueError
            An unknown node, or one without parameters.
        """
        from ._random import PARAMETERS, check_seed, sample_rng

        seed = check_seed(seed)
        if isinstance(seed, np.random.Generator):
            raise TypeError("seed must be an int: each node draws from (seed, its position)")
        names = [nodes] if isinstance(nodes, str) else list(nodes)
        where = {node.name: j for j, node in enumerate(self.nodes)}
        layers = list(self.layers)
        for name in names:
            try:
                name = self.node_name(name)
            except KeyError as exc:
                raise ValueError(f"cannot randomize: {exc.args[0]}") from None
            j = where[name]
            layer = layers[j]
            arrays = layer.arrays()
            if not arrays:
                raise ValueError(f"{self._where(name)} ({layer.describe()}) has no parameters "
                                 "to randomize")
            rng = sample_rng(seed, j, PARAMETERS)
            drawn = {k: rng.choice(a.ravel(), size=a.shape).astype(a.dtype)
                     for k, a in arrays.items()}
            layers[j] = type(layer).from_config(layer.config(), drawn)
        return self._with_layers(layers)

    def _with_layers(self, layers):
        """The same network with ``layers`` (one per node, in order) in its nodes."""
        nodes = [Node(node.name, layer, node.inputs) for node, layer in zip(self.nodes, layers)]
        return Graph(nodes, self.input_shape, input_name=self.input_name, output=self.output,
                     aliases=self.aliases)

    # --- files ------------------------------------------------------------------------------
    def save(self, path):
        """Write the network to ``path`` (.npz: parameters plus a JSON description, format
        :data:`FORMAT_VERSION`; read it back with :func:`relprop.load`)."""
        desc = {"format": "relprop", "version": FORMAT_VERSION,
                "network": "sequential" if isinstance(self, Sequential) else "graph",
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "input_name": self.input_name, "output": self.output, "nodes": []}
        if self.aliases:
            desc["aliases"] = self.aliases
        arrays = {}
        for i, node in enumerate(self.nodes):
            desc["nodes"].append({"name": node.name, "kind": node.layer.kind,
                                  "inputs": list(node.inputs), **node.layer.config()})
            for name, arr in node.layer.arrays().items():
                arrays[f"{i}.{name}"] = arr
        io.write_model(path, desc, arrays)


class Sequential(Graph):
    """A feed-forward network whose layers are applied in order: the chain :class:`Graph`.

    Parameters
    ----------
    layers : sequence of Layer
        Dense, Conv2d, ReLU, ReLU6, pooling, Flatten, BatchNorm1d/2d (folded into a Dense/Conv2d
        right before them, otherwise an affine node).
    input_shape : tuple of int, optional
        Shape of one sample, e.g. ``(3, 32, 32)``.  When given, the layers are checked against
        it now, and inputs are checked against it on every call.

    aliases : dict of str to str, optional
        Other names of layers, ``{alias: position in layers}`` (as a string; an importer passes
        the module paths): :meth:`node_name` resolves them to the node the layer ended in.

    The nodes are named by position after folding ("0", "1", ...): composites' ``overrides``
    take these indices, and ``lrp(..., layerwise=True)`` returns a list (the relevance at every
    layer's input, then the output relevance).

    Raises
    ------
    ValueError
        Layers whose shapes do not chain (the message names the layer).
    """

    def __init__(self, layers, input_shape=None, *, aliases=None):
        layers = list(layers)
        for layer in layers:
            if not isinstance(layer, L.Layer):
                raise TypeError(f"Sequential takes relprop layers, got {type(layer).__name__}")
            if layer.n_inputs != 1:
                raise ValueError(f"Sequential takes single-input layers, got {layer!r}; use "
                                 "relprop.Graph for additions and concatenations")
        if not layers:
            raise ValueError("Sequential needs at least one layer")
        chain = [Node(f"_{i}", layer, (INPUT if i == 0 else f"_{i - 1}",))
                 for i, layer in enumerate(layers)]
        folded, _, renamed = _fold_batchnorms(chain, chain[-1].name)
        position = {node.name: str(i) for i, node in enumerate(folded)}
        nodes = [Node(position[node.name], node.layer, (INPUT if i == 0 else str(i - 1),))
                 for i, node in enumerate(folded)]
        final = {str(i): position[renamed.get(f"_{i}", f"_{i}")] for i in range(len(layers))}
        if aliases is not None:
            if not isinstance(aliases, dict):
                raise TypeError(f"aliases must be a dict, got {type(aliases).__name__}")
            bad = [t for t in aliases.values() if t not in final]
            if bad:
                raise ValueError(f"aliases name layer {bad[0]!r}, not a position in layers "
                                 f"(0..{len(layers) - 1})")
            aliases = {a: final[t] for a, t in aliases.items() if a != final[t]}
        super().__init__(nodes, input_shape, aliases=aliases)

    def _where(self, name):
        return f"layer {name}"

    def with_input_shape(self, input_shape):
        net = Sequential(self.layers, input_shape)
        net.aliases = dict(self.aliases)
        return net

    def _with_layers(self, layers):
        net = Sequential(layers, self.input_shape)
        net.aliases = dict(self.aliases)
        return net

    def shapes(self, input_shape) -> list:
        """Per-sample shapes: of the input, then after every layer."""
        return list(self.tensor_shapes(input_shape).values())

    def __repr__(self):
        body = ",\n".join(f"  ({node.name}) {node.layer!r}" for node in self.nodes)
        shape = f", input_shape={self.input_shape}" if self.input_shape else ""
        return f"Sequential(\n{body}\n{shape})"


def load(path) -> Graph:
    """Read a network written by :meth:`Graph.save` (a :class:`Graph`, or a :class:`Sequential`
    if one was saved).

    Never unpickles; :func:`relprop.io.read_model` checks every size the file declares before
    reading it, and the description must agree with the arrays.  A corrupted, truncated or
    inconsistent file raises ``ValueError`` (a missing one ``FileNotFoundError``).
    """
    desc, arrays = io.read_model(path)
    return _from_description(desc, arrays, path)


def _from_description(desc, arrays, path) -> Graph:
    if not isinstance(desc, dict) or desc.get("format") != "relprop":
        raise ValueError(f"{path}: not a relprop model description")
    version = desc.get("version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"{path}: unsupported model format version {version!r} (this relprop "
                         f"reads versions 1 and {FORMAT_VERSION})")
    key = "layers" if version == 1 else "nodes"
    specs = desc.get(key)
    if not isinstance(specs, list) or not 0 < len(specs) <= io.MAX_NODES:
        raise ValueError(f"{path}: '{key}' must be a list of 1 to {io.MAX_NODES} entries")
    shape = desc.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or not 0 < len(shape) <= 8 or
                              not all(isinstance(s, int) and 0 < s < (1 << 31) for s in shape)):
        raise ValueError(f"{path}: bad input_shape {shape!r}")
    layers, used = [], set()
    for i, spec in enumerate(specs):
        kind = spec.get("kind") if isinstance(spec, dict) else None
        cls = L.LAYER_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(f"{path}: entry {i} has an unknown kind {kind!r}")
        mine = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.split(".", 1)[0] == str(i)}
        try:
            layer = cls.from_config(spec, mine)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: entry {i} ({kind}): {exc}") from None
        used.update(f"{i}.{k}" for k in layer.arrays())
        layers.append(layer)
    extra = set(arrays) - used
    if extra:
        raise ValueError(f"{path}: unexpected arrays {sorted(extra)[:5]}")
    try:
        aliases = desc.get("aliases")
        if aliases is not None and (not isinstance(aliases, dict) or not all(
                isinstance(k, str) and isinstance(v, str) for k, v in aliases.items())):
            raise ValueError(f"bad aliases {str(aliases)[:80]!r} (a dict of names)")
        if version == 1 or desc.get("network") == "sequential":
            return Sequential(layers, input_shape=shape, aliases=aliases)
        nodes = []
        for spec, layer in zip(specs, layers):
            name, inputs = spec.get("name"), spec.get("inputs")
            if not isinstance(inputs, list):
                raise ValueError(f"node {name!r} has no list of inputs")
            nodes.append(Node(name, layer, tuple(inputs)))
        kw = {"input_name": desc.get("input_name", "input"), "output": desc.get("output"),
              "aliases": aliases}
        return Graph(nodes, input_shape=shape, **kw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def _sizes(shape) -> tuple:
    """A per-sample shape as a tuple of ints >= 1 (not truncated floats: 3.5 is refused)."""
    try:
        return tuple(as_int(s, "input_shape", minimum=1) for s in shape)
    except ValueError:
        raise ValueError(f"input_shape must be positive sizes, got {shape!r}") from None
    except TypeError:
        raise TypeError(f"input_shape must be a sequence of ints, got {shape!r}") from None


def _fold_batchnorms(nodes, output):
    """Fold every BatchNorm whose input is a Dense/Conv2d that nothing else reads into that
    layer; the folded node keeps the linear layer's name and takes the BatchNorm's readers.
    Returns ``(nodes, output, {folded BatchNorm's name: its layer's name})``."""
    readers = {}
    for node in nodes:
        for t in node.inputs:
            readers.setdefault(t, []).append(node.name)
    by_name = {n.name: n for n in nodes}
    renamed = {}
    for node in nodes:
        layer = node.layer
        if not isinstance(layer, L.BatchNorm):
            continue
        src = by_name.get(renamed.get(node.inputs[0], node.inputs[0]))
        if (src is None or readers.get(src.name) != [node.name] or src.name == output
                or not layer.can_fold_into(src.layer)):
            continue
        by_name[src.name] = Node(src.name, layer.fold_into(src.layer), src.inputs)
        del by_name[node.name]
        renamed[node.name] = src.name
        readers[src.name] = readers.pop(node.name, [])
        if output == node.name:
            output = src.name
    out = []
    for node in nodes:
        if node.name in by_name:
            n = by_name[node.name]
            out.append(Node(n.name, n.layer, tuple(renamed.get(t, t) for t in n.inputs)))
    return out, output, renamed


def _resolve(nodes):
    """Each node with its layer as the layer's type resolves it from the layers that make its
    inputs (``Layer.resolve``; None for the network input)."""
    made = {n.name: n.layer for n in nodes}
    out = []
    for n in nodes:
        layer = n.layer.resolve([made.get(t) for t in n.inputs])
        out.append(n if layer is n.layer else Node(n.name, layer, n.inputs))
    return out


def _aliases(aliases, renamed, given, names) -> dict:
    """A network's aliases: ``aliases`` (``{alias: node name given}``, checked) followed
    through the folds ``renamed``, and the folded BatchNorms' names."""
    out = dict(renamed)
    if aliases is None:
        return out
    if not isinstance(aliases, dict):
        raise TypeError(f"aliases must be a dict, got {type(aliases).__name__}")
    for alias, target in aliases.items():
        if not isinstance(alias, str) or not isinstance(target, str):
            raise TypeError(f"aliases map names to names, got {alias!r}: {target!r}")
        if target not in given and target not in out:
            raise ValueError(f"alias {alias!r} names {target!r}, which is not a node")
        target = out.get(target, target)
        if alias not in names:  # a node's own name wins over an alias
            out[alias] = target
    return out


def ancestors(by_name, output, input_name=INPUT) -> set:
    """The names of ``output`` and of every node it depends on (``by_name``: name -> Node; the
    network input ``input_name`` is not a node)."""
    needed, stack = set(), [output]
    while stack:
        name = stack.pop()
        if name in needed or name == input_name:
            continue
        needed.add(name)
        stack.extend(by_name[name].inputs)
    return needed


def _schedule(nodes, input_name, output, where) -> Schedule:
    """The nodes in topological order (ties kept in the given order, the output last), with
    tensor numbers; raises ValueError on a cycle or a node the output does not depend on."""
    by_name = {n.name: n for n in nodes}
    needed = ancestors(by_name, output, input_name)
    dead = [n.name for n in nodes if n.name not in needed]
    if dead:
        raise ValueError(f"{where(dead[0])} does not contribute to the output {output!r}"
                         + (f" (nor do {dead[1:5]})" if len(dead) > 1 else ""))
    # Kahn's algorithm, stable in the given order
    pending = {}
    readers = {}
    for n in nodes:
        for t in set(n.inputs):
            readers.setdefault(t, []).append(n.name)
    for n in nodes:
        pending[n.name] = len({t for t in n.inputs if t != input_name})
    order, ready = [], [n.name for n in nodes if pending[n.name] == 0]
    position = {n.name: i for i, n in enumerate(nodes)}
    while ready:
        ready.sort(key=position.__getitem__)
        name = ready.pop(0)
        order.append(name)
        for r in readers.get(name, []):
            pending[r] -= 1
            if pending[r] == 0:
                ready.append(r)
    if len(order) != len(nodes):
        stuck = [n.name for n in nodes if n.name not in set(order)]
        raise ValueError(f"the network has a cycle through {[repr(s) for s in stuck[:6]]}")
    assert order[-1] == output  # every other node is an ancestor of the output
    number = {input_name: 0}
    for i, name in enumerate(order):
        number[name] = i + 1
    ordered = tuple(by_name[name] for name in order)
    inputs = tuple(tuple(number[t] for t in n.inputs) for n in ordered)
    uses = [0] * (len(ordered) + 1)
    for ids in inputs:
        for t in ids:
            uses[t] += 1
    return Schedule(ordered, inputs, tuple(uses))


def _check_overflow(x, out):
    """Raise :class:`NonFiniteResult` (a ValueError) where a finite input ``x`` gave a
    non-finite output (an overflow)."""
    if not np.isfinite(out).all() and np.isfinite(x).all():
        raise NonFiniteResult(f"the forward pass overflowed: a finite input gave inf/NaN "
                              f"outputs in {out.dtype} (inputs or weights too large; float64 "
                              "has more range)")
