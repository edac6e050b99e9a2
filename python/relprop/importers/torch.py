"""Import a ``torch.nn.Module`` through ``torch.fx``.

The module is traced with :func:`torch.fx.symbolic_trace` (in eval mode; its train/eval mode
is restored afterwards) and its graph read node by node.  Modules, functions and methods are
looked up in dispatch tables built from the layer types' descriptions (their
``TorchModule``/``TorchFunction``/``TorchMethod`` entries, :mod:`relprop.layers.base`), whose
converters make the layers; this module adds the plumbing: shape arithmetic (``x.size(0)``,
``x.shape``), and Dropout, Identity, ``contiguous`` and ``clone`` as the identity.  Nodes are
named after the module path ("layer1.0.conv1"); a module applied again gets torch.fx's name for
that call ("layer1_0_relu_1"), functions and methods get torch.fx's names ("add", "cat_1").
"""
from __future__ import annotations

import importlib
import operator

import numpy as np

from .. import layers as L
from ..graph import INPUT
from ._common import CHECK_RTOL, GraphBuilder, as_input_shape, probe, self_check


class _Batch:
    """The batch size in shape arithmetic (``x.size(0)``): unknown at import time."""

    def __repr__(self):
        return "n"


BATCH = _Batch()


def _np(t):
    """A torch tensor as a NumPy array that owns its memory (float32/float64 kept)."""
    import torch

    t = t.detach().cpu()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.numpy().copy()


def _pair(v, name, where):
    if isinstance(v, int) and not isinstance(v, bool):
        return (v, v)
    try:
        v = tuple(v)
    except TypeError:
        raise ValueError(f"{where}: {name}={v!r} is not an int or a pair") from None
    if len(v) == 1:
        v = v * 2
    if len(v) != 2 or not all(isinstance(i, int) or i is None for i in v):
        raise ValueError(f"{where}: {name}={v} is not a 2-D value")
    return v


# --- the dispatch tables: the layer registry's entries, and the plumbing ------------------------
#: torch.nn modules that are the identity in eval mode.
_ALIAS_MODULES = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout",
                  "FeatureAlphaDropout", "Identity")
_DROPOUT = ("input", ("p", 0.5), ("training", True), ("inplace", False))
#: Functions and methods that are the identity (in eval mode), read shapes, check them or
#: expand a parameter over the batch, by their params (and the plumbing's name, None for the
#: identity).
_PLUMBING_FUNCTIONS = {"torch.nn.functional.dropout": (_DROPOUT, None),
                       "torch.nn.functional.dropout2d": (_DROPOUT, None),
                       # torchvision's stochastic depth (EfficientNet, ConvNeXt): a residual
                       # branch dropped at random in training, the identity in eval
                       "torchvision.ops.stochastic_depth.stochastic_depth":
                           (("input", "p", "mode", ("training", True)), None),
                       "torch._assert": (("condition", "message"), "assert")}
_PLUMBING_METHODS = {"contiguous": ("input", ("memory_format", None)),
                     "clone": ("input", ("memory_format", None)),
                     "size": ("input", ("dim", None)), "dim": ("input",),
                     "expand": ("input", "*sizes")}
#: Python operators on shapes (``x.size(0) * 2``, ``x.shape[1]``, ``h == 224``), evaluated at
#: import time when no tensor is among their arguments (``+`` of two tensors is an Add).
_SHAPE_ARITHMETIC = ("operator.add", "operator.iadd", "operator.mul", "operator.sub",
                     "operator.floordiv", "operator.getitem", "operator.eq", "operator.ne",
                     "builtins.getattr")


def _resolve(dotted):
    """The object a dotted name ("torch.nn.functional.relu", "operator.add") names, or None
    where the installed version lacks it."""
    module, _, attr = dotted.rpartition(".")
    try:
        return getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError):
        return None


def _tables():
    """The dispatch tables, made from the registry (per import: a layer type registered later
    is read too): ``modules`` {torch.nn class: TorchModule entry, or None for the identity},
    ``functions`` {callable: (params, converter, or the plumbing's name, None for the
    identity)}, ``methods`` {name: (params, converter, or the plumbing's name)}, ``arithmetic``
    (the shape operators) and ``supported`` (for error messages)."""
    from torch import nn

    modules = {getattr(nn, name): entry
               for name, (entry, _) in L.import_table(L.TorchModule).items()
               if hasattr(nn, name)}
    modules.update({getattr(nn, name): None for name in _ALIAS_MODULES if hasattr(nn, name)})
    functions = {name: (entry.params, entry.convert)
                 for name, (entry, _) in L.import_table(L.TorchFunction).items()}
    functions.update(_PLUMBING_FUNCTIONS)
    methods = {name: (entry.params, entry.convert)
               for name, (entry, _) in L.import_table(L.TorchMethod).items()}
    methods.update({name: (params, name) for name, params in _PLUMBING_METHODS.items()})
    supported = (f"modules {', '.join(sorted(m.__name__ for m in modules))}; functions "
                 f"{', '.join(sorted(functions))} and shape arithmetic; methods "
                 f"{', '.join(sorted(methods))}")
    return {"modules": modules, "methods": methods, "supported": supported,
            "functions": {_resolve(n): f for n, f in functions.items() if _resolve(n)},
            "arithmetic": {_resolve(n) for n in _SHAPE_ARITHMETIC}}


def _bind(node, params, where):
    """The arguments of an fx node as a dict by ``params`` (names, ``(name, default)`` pairs,
    a ``*name`` collecting the remaining positional arguments)."""
    args, kwargs = list(node.args), dict(node.kwargs)
    out = {}
    for i, spec in enumerate(params):
        name, default = (spec, ...) if isinstance(spec, str) else spec
        if name.startswith("*"):
            out[name[1:]] = args[i:] + ([kwargs.pop(name[1:])] if name[1:] in kwargs else [])
            args = args[:i]
            break
        if i < len(args):
            out[name] = args[i]
        elif name in kwargs:
            out[name] = kwargs.pop(name)
        elif default is ...:
            raise ValueError(f"{where}: missing argument {name!r}")
        else:
            out[name] = default
    if len(args) > len(params):
        raise ValueError(f"{where}: takes at most {len(params)} arguments, got {len(args)}")
    if kwargs:
        raise ValueError(f"{where}: unexpected arguments {sorted(kwargs)}")
    return out


class _Tensor:
    """A tensor computed from the network input: the relprop tensor of that name."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


def _tensors(v):
    """The tensors in an argument value, in order (into lists and tuples)."""
    if isinstance(v, _Tensor):
        return [v.name]
    if isinstance(v, (list, tuple)):
        return [t for a in v for t in _tensors(a)]
    return []


class _Call:
    """What a converter sees of one call (:mod:`relprop.layers.base`): ``where``, ``shape``
    (of its first data input), ``inputs`` (its data inputs' names), ``batch`` (the batch size in
    shape arithmetic), ``args`` (a module's bound arguments, with ``TorchModule.params``),
    ``error``, ``pair``, ``array``, ``constant``, ``parameter``, ``is_parameter``, ``tensor``,
    ``is_tensor``, ``describe`` and ``add``."""

    batch = BATCH

    def __init__(self, reader, node, where, inputs, names, args=None):
        self.reader, self.node, self.where = reader, node, where
        self.inputs, self.names, self.args = inputs, names, args

    @property
    def shape(self):
        return self.reader.b.shapes[self.inputs[0]]

    def error(self, msg):
        return ValueError(f"{self.where}: {msg}")

    def pair(self, v, name):
        return _pair(v, name, self.where)

    @staticmethod
    def array(t):
        return _np(t)

    @staticmethod
    def is_tensor(v):
        return isinstance(v, _Tensor)

    @staticmethod
    def describe(v):
        return _describe(v)

    def constant(self, v, what):
        return self.reader._constant(v, self.node, what)

    def producer(self, name):
        """The relprop node that makes tensor ``name`` (None for the network input)."""
        return self.reader.b.producer(getattr(name, "name", name))

    def parameter(self, v, what):
        """The module's parameter or buffer that the call reads (``F.prelu(x, self.weight)``),
        or one expanded over the batch (``self.token.expand(x.size(0), -1, -1)``: its batch
        axis of size 1 kept), as an array (:meth:`array`); ValueError for any other value."""
        return self.reader._parameter(v, self.node, what)

    @staticmethod
    def is_parameter(v):
        """Whether ``v`` is a value :meth:`parameter` reads."""
        return isinstance(v, (_Attr, _Expanded))

    def tensor(self, v, what):
        return self.reader._tensor(v, self.node, what)

    def add(self, layer, inputs=None, names=None):
        """Add ``layer`` reading ``inputs`` (default: the call's data inputs) under the first
        free name of ``names`` (default: the call's); returns the tensor."""
        inputs = self.inputs if inputs is None else [getattr(t, "name", t) for t in inputs]
        return _Tensor(self.reader.b.add(names or self.names, layer, inputs, self.where))

    def result(self, value):
        """A converter's result as the call's value (see :mod:`relprop.layers.base`)."""
        if value is None:
            return _Tensor(self.inputs[0])
        if isinstance(value, L.Layer):
            value = [value]
        if isinstance(value, list):
            chain = [layer for layer in value if layer is not None]
            out = _Tensor(self.inputs[0])
            for k, layer in enumerate(chain):
                out = self.add(layer, None if k == 0 else [out],
                               None if k == 0 else f"{self.node.name}.{layer.kind}")
            return out
        return value


class _Reader:
    """Walks an fx graph and builds the relprop network."""

    def __init__(self, root, graph, input_shape):
        self.root, self.graph = root, graph
        self.b = GraphBuilder(input_shape)
        self.input_shape = input_shape
        self.called = set()
        self.tables = _tables()
        self.env = {}

    @staticmethod
    def _where(node):
        return f"torch.fx node {node.name!r} ({node.op} {_target_name(node.target)})"

    def run(self):
        placeholders = [n for n in self.graph.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise ValueError(f"{type(self.root).__name__}.forward takes "
                             f"{[n.target for n in placeholders]}; relprop imports modules with "
                             "one input tensor")
        output = None
        for node in self.graph.nodes:
            if node.op == "placeholder":
                self.env[node] = _Tensor(INPUT)
            elif node.op == "get_attr":
                self.env[node] = _Attr(node.target)
            elif node.op == "call_module":
                self.env[node] = self._call_module(node)
            elif node.op == "call_function":
                self.env[node] = self._call_function(node)
            elif node.op == "call_method":
                self.env[node] = self._call_method(node)
            elif node.op == "output":
                output = self._tensor(self._value(node.args[0]), node, "the module's output")
        return output

    # --- values -------------------------------------------------------------------------------
    def _value(self, arg):
        """An fx argument with nodes replaced by their values (recursively in lists)."""
        from torch import fx

        if isinstance(arg, fx.Node):
            return self.env[arg]
        if isinstance(arg, (list, tuple)):
            return type(arg)(self._value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self._value(v) for k, v in arg.items()}
        return arg

    def _tensor(self, v, node, what):
        if isinstance(v, _Tensor):
            return v.name
        if isinstance(v, (_Attr, _Expanded)):
            raise ValueError(f"{self._where(node)}: {what} is {_describe(v)}, a constant; "
                             "relprop reads tensors computed from the input only (no constant "
                             "tensors in the data path)")
        raise ValueError(f"{self._where(node)}: {what} is {v!r}, not a tensor computed from "
                         "the input")

    def _parameter(self, v, node, what):
        import torch

        if isinstance(v, _Expanded):
            return v.value.copy()
        value = None
        if isinstance(v, _Attr):
            value = self.root
            for part in v.target.split("."):
                value = getattr(value, part)
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"{self._where(node)}: {what} must be a parameter or buffer of the "
                             f"module, got {_describe(v)}")
        return _np(value)

    def _constant(self, v, node, what):
        if isinstance(v, _VALUES) or (isinstance(v, (list, tuple)) and any(
                isinstance(a, _VALUES) for a in v)):
            raise ValueError(f"{self._where(node)}: {what} must be a constant, not a tensor")
        return v

    # --- calls --------------------------------------------------------------------------------
    def _call_module(self, node):
        target = node.target
        m = self.root.get_submodule(target) if target else self.root
        path = target or type(m).__name__
        where = f"module '{path}' ({type(m).__name__})"
        modules = self.tables["modules"]
        cls = next((c for c in type(m).__mro__ if c in modules), None)
        entry = None if cls is None else modules[cls]
        args = None
        if entry is not None and entry.params is not None:  # a module of several arguments
            args = {k: self._value(v) for k, v in _bind(node, entry.params, where).items()}
            inputs = [t for v in args.values() for t in _tensors(v)]
            if not inputs:
                self._tensor(next(iter(args.values())), node, f"the input of {where}")
        else:
            if len(node.args) != 1 or node.kwargs:
                raise ValueError(f"{where}: called with {len(node.args)} arguments and keywords "
                                 f"{sorted(node.kwargs)}; relprop's layers take one tensor")
            inputs = [self._tensor(self._value(node.args[0]), node, f"the input of {where}")]
        if cls is None:
            activation = type(m).__module__.startswith("torch.nn.modules.activation")
            raise ValueError(f"{where}: {'the activation ' if activation else ''}"
                             f"{type(m).__name__} is not supported; from_torch reads "
                             f"{self.tables['supported']}")
        first = target not in self.called
        self.called.add(target)
        if entry is None:  # the identity
            return _Tensor(inputs[0])
        call = _Call(self, node, where, inputs, (path, node.name) if first else (node.name,),
                     args)
        return call.result(entry.convert(m, call))

    def _call_function(self, node):
        where = self._where(node)
        target = node.target
        if target in self.tables["arithmetic"]:
            args = [self._value(v) for v in node.args]
            if target is operator.getitem and isinstance(args[0], (tuple, list)) and \
                    not _tensors(args[1:]):  # an item of a call's tuple (torch.chunk's)
                return args[0][self._constant(args[1], node, "the index")]
            if not any(_tensors(a) or isinstance(a, _VALUES) for a in args) or \
                    target is getattr:
                return self._shape_arith(node, args, where)
            if target not in self.tables["functions"]:
                raise ValueError(f"{where}: {_target_name(target)} on tensors is not "
                                 f"supported; from_torch reads {self.tables['supported']}")
        hit = self.tables["functions"].get(target)
        if hit is None:
            raise ValueError(f"{where}: the function {_target_name(target)} is not supported; "
                             f"from_torch reads {self.tables['supported']}")
        return self._convert(node, *hit, where)

    def _call_method(self, node):
        where = self._where(node)
        hit = self.tables["methods"].get(node.target)
        if hit is None:
            raise ValueError(f"{where}: the tensor method .{node.target}() is not supported; "
                             f"from_torch reads {self.tables['supported']}")
        return self._convert(node, *hit, where)

    def _convert(self, node, params, convert, where):
        """Bind the call's arguments and run its converter (or the plumbing named ``convert``,
        None for the identity)."""
        a = {k: self._value(v) for k, v in _bind(node, params, where).items()}
        if convert == "assert":  # the model's own check of shapes (ViT's image size)
            return self._assert(node, a, where)
        if convert == "expand":
            return self._expand(node, a, where)
        inputs = [t for v in a.values() for t in _tensors(v)]
        if not inputs:  # names the non-tensor first argument
            self._tensor(next(iter(a.values())), node, "the input")
        if convert is None or convert in ("contiguous", "clone"):
            return _Tensor(inputs[0])
        if convert == "size":
            full = (BATCH,) + self.b.shapes[inputs[0]]
            return full if a["dim"] is None else full[a["dim"]]
        if convert == "dim":
            return len(self.b.shapes[inputs[0]]) + 1
        call = _Call(self, node, where, inputs, (node.name,))
        return call.result(convert(a, call))

    def _assert(self, node, a, where):
        """``torch._assert(condition, message)`` on shapes: checked now."""
        cond = self._constant(a["condition"], node, "the asserted condition")
        if not isinstance(cond, (bool, np.bool_)):
            raise ValueError(f"{where}: asserts {_describe(cond)}; relprop evaluates "
                             "assertions on shapes only")
        if not cond:
            raise ValueError(f"{where}: the module's assertion fails on the input shape "
                             f"{self.input_shape}: {a['message']}")
        return None

    def _expand(self, node, a, where):
        """``v.expand(*sizes)``: a module parameter whose batch axis (leading, of size 1)
        expands to the batch (``self.token.expand(x.size(0), -1, -1)``: the same values for
        every sample; its other axes as ``sizes`` say), or a tensor expanded to its own shape
        (the identity)."""
        v, sizes = a["input"], list(a["sizes"])
        if len(sizes) == 1 and isinstance(sizes[0], (list, tuple)):
            sizes = list(sizes[0])
        sizes = [self._constant(s, node, "the expanded sizes") for s in sizes]
        if isinstance(v, _Tensor):
            full = (BATCH,) + self.b.shapes[v.name]
            if len(sizes) == len(full) and all(s == -1 or s is f or s == f
                                               for s, f in zip(sizes, full)):
                return v
            raise ValueError(f"{where}: expand of {_describe(v)} {full} to {tuple(sizes)} is "
                             "not supported (relprop broadcasts no data)")
        value = self._parameter(v, node, "the expanded value")
        per = list(value.shape[1:])
        ok = bool(sizes) and sizes[0] is BATCH and value.ndim == len(sizes) and value.shape[0] == 1
        for k, s in enumerate(sizes[1:] if ok else ()):
            if s != -1 and s != per[k]:
                ok = per[k] == 1 and isinstance(s, (int, np.integer)) and s > 0
                per[k] = s
        if not ok:
            raise ValueError(f"{where}: expand of {_describe(v)} of shape {value.shape} to "
                             f"{tuple(sizes)}: relprop expands a parameter over the batch only "
                             "(p.expand(x.size(0), -1, ...) with p of leading size 1)")
        return _Expanded(np.ascontiguousarray(np.broadcast_to(value, (1,) + tuple(per))))

    def _shape_arith(self, node, args, where):
        if node.kwargs or any(_tensors(v) or isinstance(v, _VALUES) for v in args[1:]):
            raise ValueError(f"{where}: {_target_name(node.target)} on tensors is not "
                             f"supported; from_torch reads {self.tables['supported']}")
        if node.target is getattr:
            x, attr = args
            if isinstance(x, _Tensor) and attr == "shape":
                return (BATCH,) + self.b.shapes[x.name]
            raise ValueError(f"{where}: the attribute {attr!r} of {_describe(x)} is not "
                             "supported (only .shape)")
        if any(v is BATCH for v in args) and node.target is not operator.getitem:
            raise ValueError(f"{where}: arithmetic on the batch size is not supported")
        try:
            return node.target(*args)
        except Exception as exc:  # an operation on shapes that Python refuses
            raise ValueError(f"{where}: {type(exc).__name__}: {exc}") from None


class _Attr:
    """A module attribute read by ``get_attr`` (a parameter or buffer)."""

    __slots__ = ("target",)

    def __init__(self, target):
        self.target = target

    def __repr__(self):
        return f"attribute {self.target!r}"


class _Expanded:
    """A module parameter expanded over the batch: ``value`` (1, ...) is every sample's."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __repr__(self):
        return f"a parameter of shape {self.value.shape[1:]} expanded over the batch"


#: Values that are not constants: tensors, module attributes and their expansions.
_VALUES = (_Tensor, _Attr, _Expanded)


def _describe(v):
    if isinstance(v, _Tensor):
        return f"tensor {v.name!r}"
    return repr(v)


def _target_name(target):
    if isinstance(target, str):
        return target
    mod = getattr(target, "__module__", None)
    name = getattr(target, "__name__", None) or repr(target)
    if mod is None or mod.startswith("torch._C"):  # torch.sigmoid & co. are builtins of torch
        mod = "torch"
    if mod == "_operator":
        return f"operator.{name}"
    return name if mod == "builtins" else f"{mod}.{name}"


def _trace(module):
    """The fx graph of ``module`` (in eval mode): a single torch.nn layer as one call."""
    from torch import fx

    tracer = fx.Tracer()
    if tracer.is_leaf_module(module, ""):
        graph = fx.Graph()
        x = graph.placeholder("x")
        graph.output(graph.call_module("", (x,)))
        return graph
    try:
        return tracer.trace(module)
    except Exception as exc:  # fx's TraceError, or whatever the forward raises on proxies
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"torch.fx cannot trace {type(module).__name__} ({type(exc).__name__}: "
                         f"{first}); from_torch reads modules that torch.fx.symbolic_trace can "
                         "trace") from None


def from_torch(module, input_shape, *, check=True, rtol=CHECK_RTOL):
    """A relprop network from a ``torch.nn.Module`` that ``torch.fx`` can trace.

    Parameters
    ----------
    module : torch.nn.Module
        Read in eval mode (BatchNorm with its running statistics, Dropout skipped):
        torchvision's ResNets, DenseNets, MobileNetV2, VGGs and AlexNet, ``nn.Sequential``
        stacks, and modules whose forward uses ``+``/``torch.add`` of two tensors or of a tensor
        and a parameter (a position embedding), ``torch.cat`` (any dim but 0; of tensors and
        parameters expanded over the batch: a class token), per-sample reshapes
        (``torch.flatten``, ``x.view(x.size(0), ...)``, ``reshape``, ``unflatten``,
        ``squeeze``/``unsqueeze`` of axes but the batch's;
        ``permute``, ``transpose``, ``movedim`` that keep the batch axis first;
        ``torch.chunk``/``split`` and indexing of each sample's axes; ``F.pad`` with zeros),
        functional relu/relu6/leaky_relu/prelu/hardtanh, clamps, adaptive/average/max pooling,
        ``F.interpolate`` (nearest, bilinear), ``F.conv_transpose2d`` and ``F.conv1d`` with the
        module's parameters and dropout. Layers: Linear, Conv2d, ConvTranspose2d and Conv1d
        (groups, dilation, symmetric padding; output padding), ReLU, ReLU6, LeakyReLU, PReLU,
        Hardtanh, MaxPool1d/2d, AvgPool1d/2d, AdaptiveAvgPool1d/2d (the identity where the
        output size is the input's, a global or fixed average pooling where it divides the
        input), AdaptiveMaxPool1d/2d to sizes that divide the input (a max pooling), Upsample and
        UpsamplingNearest2d/Bilinear2d, Flatten, Unflatten, ZeroPad1d/2d/3d, ConstantPad1d/2d/3d
        (zeros), BatchNorm1d/2d (folded into the Dense/Conv1d/Conv2d before it where nothing
        else reads that layer's output, else an affine node), Dropout and Identity (skipped);
        LayerNorm, GELU and batch-first MultiheadAttention (torchvision's VisionTransformer).
        Parameters are copied (float32/float64 kept, other float dtypes converted to float32).
        The module's train/eval mode is left as it was.
    input_shape : tuple of int
        Shape of one sample, e.g. ``(3, 224, 224)``.
    check : bool
        Compare the forward pass with the module in eval mode on a probe input.
    rtol : float
        Tolerance of the check, relative to the largest output magnitude.

    Returns
    -------
    Sequential or Graph
        A Sequential where the layers form a chain (layers named by index), else a Graph whose
        nodes are named after module paths ("layer1.0.conv1"; a module applied again gets
        torch.fx's name for that call, "layer1_0_relu_1") and torch.fx's names for functions
        ("add", "cat_1").

    Raises
    ------
    ValueError
        A module torch.fx cannot trace, an unsupported module, function, method or option (the
        message names the module path or torch.fx node and the reason), shapes that do not fit,
        or a failed self-check.
    TypeError
        ``module`` is not a torch module.
    """
    import torch
    from torch import nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    shape = as_input_shape(input_shape)
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        graph = _trace(module)
        reader = _Reader(module, graph, shape)
        output = reader.run()
        net = reader.b.build(output, shape, type(module).__name__)
        if check:
            param = next((p for p in module.parameters() if p.is_floating_point()), None)
            dtype = np.float64 if param is not None and param.dtype == torch.float64 else \
                np.float32
            x = probe(net.input_shape, dtype)
            with torch.no_grad():
                xt = torch.from_numpy(x)
                if param is not None:
                    xt = xt.to(device=param.device)
                want = _np(module(xt))
            self_check(net(x), want, "torch", rtol)
    finally:
        for m, training in modes.items():
            m.training = training
    return net
