"""Import a ``torch.nn.Module`` through ``torch.fx``.

The module is traced with :func:`torch.fx.symbolic_trace` (in eval mode; its train/eval mode
is restored afterwards) and its graph read node by node: ``call_module`` nodes of the layer
types relprop has, the functions and methods of :data:`SUPPORTED`, shape arithmetic
(``x.size(0)``, ``x.shape``) for ``view``/``reshape`` as a flatten.  Dropout, Identity and
poolings whose window is the identity are skipped.  Nodes are named after the module path
("layer1.0.conv1"); a module applied again gets torch.fx's name for that call
("layer1_0_relu_1"), functions and methods get torch.fx's names ("add", "cat_1").
"""
from __future__ import annotations

import operator

import numpy as np

from .. import layers as L
from ..graph import INPUT
from ._common import (
    CHECK_RTOL,
    GraphBuilder,
    adaptive_avg_pool,
    as_input_shape,
    is_identity_window,
    probe,
    self_check,
)

#: What from_torch reads, for error messages.
SUPPORTED = ("modules Linear, Conv2d (groups, dilation), ReLU, ReLU6, Hardtanh(0, 6), MaxPool2d, "
             "AvgPool2d, AdaptiveAvgPool2d, Flatten, BatchNorm1d/2d, Dropout, Identity; "
             "functions + / torch.add of two tensors, torch.cat(dim=1), torch.flatten(x, 1), "
             "relu, relu6, hardtanh(0, 6), clamp(0[, 6]), adaptive_avg_pool2d, avg_pool2d, "
             "max_pool2d, dropout, mean over (2, 3); methods flatten, view/reshape(n, -1), "
             "size, relu, clamp, add, mean, contiguous")


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


def _conv_padding(m, where):
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        pads = []
        for k, d in zip(m.kernel_size, m.dilation):  # "same": d (k - 1) in total per axis
            if (d * (k - 1)) % 2:
                raise ValueError(f"{where}: padding='same' with kernel {tuple(m.kernel_size)} and "
                                 f"dilation {tuple(m.dilation)} pads asymmetrically; relprop "
                                 "supports symmetric padding only")
            pads.append(d * (k - 1) // 2)
        return tuple(pads)
    return _pair(m.padding, "padding", where)


# --- modules --------------------------------------------------------------------------------
def _module_layer(m, shape, where):
    """The relprop layer of torch module ``m`` on per-sample input ``shape``; None for a module
    that is the identity here (Dropout, Identity, a pooling with an identity window)."""
    from torch import nn

    def unsupported(what):
        return ValueError(f"{where}: {what} is not supported")

    if isinstance(m, nn.Linear):
        return L.Dense(_np(m.weight), None if m.bias is None else _np(m.bias))
    if isinstance(m, nn.Conv2d):
        if m.padding_mode != "zeros":
            raise unsupported(f"padding_mode={m.padding_mode!r}")
        return L.Conv2d(_np(m.weight), None if m.bias is None else _np(m.bias),
                        stride=tuple(m.stride), padding=_conv_padding(m, where),
                        dilation=tuple(m.dilation), groups=m.groups)
    if isinstance(m, nn.ReLU):
        return L.ReLU()
    if isinstance(m, nn.ReLU6):
        return L.ReLU6()
    if isinstance(m, nn.Hardtanh):  # ReLU6 is a Hardtanh too (checked above)
        return _clamp_layer(m.min_val, m.max_val, where, "Hardtanh")
    if isinstance(m, nn.MaxPool2d):
        return _max_pool(m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode,
                         m.return_indices, where)
    if isinstance(m, nn.AvgPool2d):
        return _avg_pool(m.kernel_size, m.stride, m.padding, m.ceil_mode, m.count_include_pad,
                         m.divisor_override, where)
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return adaptive_avg_pool(shape, _pair(m.output_size, "output_size", where), where)
    if isinstance(m, nn.Flatten):
        return _flatten(shape, m.start_dim, m.end_dim, where)
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.running_mean is None or m.running_var is None:
            raise unsupported("track_running_stats=False (no running statistics)")
        n = m.num_features
        scale = _np(m.weight) if m.affine else np.ones(n)
        shift = _np(m.bias) if m.affine else np.zeros(n)
        cls = L.BatchNorm2d if isinstance(m, nn.BatchNorm2d) else L.BatchNorm1d
        return cls(scale, shift, _np(m.running_mean), _np(m.running_var), eps=float(m.eps))
    if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                      nn.FeatureAlphaDropout, nn.Identity)):
        return None
    activation = type(m).__module__.startswith("torch.nn.modules.activation")
    raise ValueError(f"{where}: {'the activation ' if activation else ''}{type(m).__name__} is "
                     f"not supported; from_torch reads {SUPPORTED}")


def _clamp_layer(low, high, where, what="clamp"):
    if low == 0 and high is None or low == 0 and high == float("inf"):
        return L.ReLU()
    if low == 0 and high == 6:
        return L.ReLU6()
    raise ValueError(f"{where}: the activation {what}({low}, {high}) is not supported (only "
                     "ReLU = clamp(0) and ReLU6 = clamp(0, 6))")


def _max_pool(kernel, stride, padding, dilation, ceil_mode, return_indices, where):
    if _pair(dilation, "dilation", where) != (1, 1):
        raise ValueError(f"{where}: max pooling with dilation={dilation} is not supported")
    if ceil_mode:
        raise ValueError(f"{where}: ceil_mode=True is not supported")
    if return_indices:
        raise ValueError(f"{where}: return_indices=True is not supported")
    k = _pair(kernel, "kernel_size", where)
    s = _pair(stride or kernel, "stride", where)
    p = _pair(padding, "padding", where)
    return None if is_identity_window(k, s, p) else L.MaxPool2d(k, s, p)


def _avg_pool(kernel, stride, padding, ceil_mode, count_include_pad, divisor_override, where):
    k = _pair(kernel, "kernel_size", where)
    s = _pair(stride or kernel, "stride", where)
    p = _pair(padding, "padding", where)
    if ceil_mode:
        raise ValueError(f"{where}: ceil_mode=True is not supported")
    if not count_include_pad and p != (0, 0):
        raise ValueError(f"{where}: count_include_pad=False with padding is not supported")
    if divisor_override is not None:
        raise ValueError(f"{where}: divisor_override={divisor_override} is not supported")
    return None if is_identity_window(k, s, p) else L.AvgPool2d(k, s, p)


def _flatten(shape, start, end, where):
    rank = len(shape) + 1
    if start < 0:
        start += rank
    if end < 0:
        end += rank
    if start != 1 or end != rank - 1:
        raise ValueError(f"{where}: flatten from dimension {start} to {end} is not supported "
                         "(only all but the batch dimension: start_dim=1, end_dim=-1)")
    return None if len(shape) == 1 else L.Flatten()


# --- functions and methods --------------------------------------------------------------------
def _bind(node, params, where):
    """The arguments of an fx node as a dict by ``params`` [(name, default), ...] (a default of
    ``...`` is required)."""
    args, kwargs = list(node.args), dict(node.kwargs)
    if len(args) > len(params):
        raise ValueError(f"{where}: takes at most {len(params)} arguments, got {len(args)}")
    out = {}
    for i, (name, default) in enumerate(params):
        if i < len(args):
            out[name] = args[i]
        elif name in kwargs:
            out[name] = kwargs.pop(name)
        elif default is ...:
            raise ValueError(f"{where}: missing argument {name!r}")
        else:
            out[name] = default
    if kwargs:
        raise ValueError(f"{where}: unexpected arguments {sorted(kwargs)}")
    return out


def _function_table():
    import torch
    import torch.nn.functional as F

    table = {
        operator.add: "add", operator.iadd: "add", torch.add: "add",
        operator.mul: "arith", operator.sub: "arith", operator.floordiv: "arith",
        operator.getitem: "getitem", getattr: "getattr",
        torch.cat: "cat", torch.flatten: "flatten",
        F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu",
        F.relu6: "relu6", F.hardtanh: "hardtanh", F.hardtanh_: "hardtanh",
        torch.clamp: "clamp", torch.clip: "clamp",
        F.adaptive_avg_pool2d: "adaptive_avg_pool2d", F.avg_pool2d: "avg_pool2d",
        F.max_pool2d: "max_pool2d", F.dropout: "dropout", F.dropout2d: "dropout",
        torch.mean: "mean",
    }
    for name in ("concat", "concatenate"):
        if hasattr(torch, name):
            table[getattr(torch, name)] = "cat"
    if hasattr(F, "_max_pool2d"):
        table[F._max_pool2d] = "max_pool2d"
    return table


_METHODS = {"add": "add", "add_": "add", "__add__": "add", "flatten": "flatten",
            "view": "reshape", "reshape": "reshape", "size": "size", "dim": "dim",
            "relu": "relu", "relu_": "relu", "clamp": "clamp", "clamp_": "clamp", "clip": "clamp",
            "mean": "mean", "contiguous": "alias", "clone": "alias"}

_PARAMS = {
    "add": [("input", ...), ("other", ...), ("alpha", 1)],
    "cat": [("tensors", ...), ("dim", 0)],
    "flatten": [("input", ...), ("start_dim", 0), ("end_dim", -1)],
    "relu": [("input", ...), ("inplace", False)],
    "relu6": [("input", ...), ("inplace", False)],
    "hardtanh": [("input", ...), ("min_val", -1.0), ("max_val", 1.0), ("inplace", False)],
    "clamp": [("input", ...), ("min", None), ("max", None)],
    "adaptive_avg_pool2d": [("input", ...), ("output_size", ...)],
    "avg_pool2d": [("input", ...), ("kernel_size", ...), ("stride", None), ("padding", 0),
                   ("ceil_mode", False), ("count_include_pad", True), ("divisor_override", None)],
    "max_pool2d": [("input", ...), ("kernel_size", ...), ("stride", None), ("padding", 0),
                   ("dilation", 1), ("ceil_mode", False), ("return_indices", False)],
    "dropout": [("input", ...), ("p", 0.5), ("training", True), ("inplace", False)],
    "mean": [("input", ...), ("dim", None), ("keepdim", False), ("dtype", None)],
    "size": [("input", ...), ("dim", None)],
    "dim": [("input", ...)],
    "alias": [("input", ...), ("memory_format", None)],
}


class _Tensor:
    """A tensor computed from the network input: the relprop tensor of that name."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Reader:
    """Walks an fx graph and builds the relprop network."""

    def __init__(self, root, graph, input_shape):
        self.root, self.graph = root, graph
        self.b = GraphBuilder(input_shape)
        self.input_shape = input_shape
        self.called = set()
        self.functions = _function_table()
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
                kind = self.functions.get(node.target)
                if kind is None:
                    raise ValueError(f"{self._where(node)}: the function "
                                     f"{_target_name(node.target)} is not supported; from_torch "
                                     f"reads {SUPPORTED}")
                self.env[node] = self._apply(kind, node)
            elif node.op == "call_method":
                kind = _METHODS.get(node.target)
                if kind is None:
                    raise ValueError(f"{self._where(node)}: the tensor method "
                                     f".{node.target}() is not supported; from_torch reads "
                                     f"{SUPPORTED}")
                self.env[node] = self._apply(kind, node)
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
        if isinstance(v, _Attr):
            raise ValueError(f"{self._where(node)}: {what} is the module attribute "
                             f"{v.target!r}, a constant; relprop reads tensors computed from the "
                             "input only (no constant tensors in the data path)")
        raise ValueError(f"{self._where(node)}: {what} is {v!r}, not a tensor computed from "
                         "the input")

    def _constant(self, v, node, what):
        if isinstance(v, (_Tensor, _Attr)) or (isinstance(v, (list, tuple)) and any(
                isinstance(a, (_Tensor, _Attr)) for a in v)):
            raise ValueError(f"{self._where(node)}: {what} must be a constant, not a tensor")
        return v

    def _add(self, node, layer, x, name=None):
        """Add ``layer`` reading tensor ``x`` (or a list of tensors), named ``name`` or after the
        fx node; None as the layer aliases ``x``."""
        if layer is None:
            return _Tensor(x)
        inputs = x if isinstance(x, list) else [x]
        return _Tensor(self.b.add((name, node.name) if name else node.name, layer, inputs,
                                  self._where(node)))

    # --- call_module --------------------------------------------------------------------------
    def _call_module(self, node):
        target = node.target
        m = self.root.get_submodule(target) if target else self.root
        path = target or type(m).__name__
        where = f"module '{path}' ({type(m).__name__})"
        if len(node.args) != 1 or node.kwargs:
            raise ValueError(f"{where}: called with {len(node.args)} arguments and keywords "
                             f"{sorted(node.kwargs)}; relprop's layers take one tensor")
        x = self._tensor(self._value(node.args[0]), node, f"the input of {where}")
        layer = _module_layer(m, self.b.shapes[x], where)
        first = target not in self.called
        self.called.add(target)
        if layer is None:
            return _Tensor(x)
        name = path if first else None
        try:
            return self._add(node, layer, x, name)
        except ValueError as exc:
            raise ValueError(str(exc).replace(self._where(node), where)) from None

    # --- call_function / call_method ----------------------------------------------------------
    def _apply(self, kind, node):
        where = self._where(node)
        if kind in ("arith", "getitem", "getattr"):
            return self._shape_arith(kind, node, where)
        if kind == "reshape":  # x.view(*shape) / x.reshape(shape): variadic
            x = self._tensor(self._value(node.args[0]), node, "the input")
            return self._add(node, self._reshape(node, self.b.shapes[x], where), x)
        a = _bind(node, _PARAMS[kind], where)
        a = {k: self._value(v) for k, v in a.items()}
        if kind == "add":
            x, y = a["input"], a["other"]
            if not (isinstance(x, _Tensor) and isinstance(y, _Tensor)):
                if not any(isinstance(v, (_Tensor, _Attr)) for v in (x, y)):
                    return x + y  # shape arithmetic
                raise ValueError(f"{where}: adds {_describe(x)} and {_describe(y)}; relprop "
                                 "supports the sum of two tensors computed from the input only "
                                 "(no constant offsets)")
            if a["alpha"] != 1:
                raise ValueError(f"{where}: alpha={a['alpha']} is not supported")
            return self._add(node, L.Add(), [x.name, y.name])
        if kind == "size":
            x = self._tensor(a["input"], node, "the input")
            full = (BATCH,) + self.b.shapes[x]
            return full if a["dim"] is None else full[a["dim"]]
        if kind == "dim":
            return len(self.b.shapes[self._tensor(a["input"], node, "the input")]) + 1
        if kind == "cat":
            items = a["tensors"]
            if not isinstance(items, (list, tuple)) or not items:
                raise ValueError(f"{where}: expects a list of tensors, got {items!r}")
            names = [self._tensor(v, node, "every concatenated value") for v in items]
            rank = len(self.b.shapes[names[0]]) + 1
            dim = self._constant(a["dim"], node, "dim")
            if dim != 1 and dim + rank != 1:
                raise ValueError(f"{where}: concatenation along dim={dim} is not supported "
                                 "(only the channel axis, dim=1)")
            if len(names) == 1:
                return _Tensor(names[0])
            return self._add(node, L.Concat(), names)
        x = self._tensor(a["input"], node, "the input")
        shape = self.b.shapes[x]
        if kind == "alias" or kind == "dropout":
            return _Tensor(x)
        if kind == "relu":
            return self._add(node, L.ReLU(), x)
        if kind == "relu6":
            return self._add(node, L.ReLU6(), x)
        if kind == "hardtanh":
            return self._add(node, _clamp_layer(a["min_val"], a["max_val"], where, "hardtanh"),
                             x)
        if kind == "clamp":
            return self._add(node, _clamp_layer(a["min"], a["max"], where), x)
        if kind == "flatten":
            return self._add(node, _flatten(shape, a["start_dim"], a["end_dim"], where), x)
        if kind == "adaptive_avg_pool2d":
            size = _pair(self._constant(a["output_size"], node, "output_size"), "output_size",
                         where)
            return self._add(node, adaptive_avg_pool(shape, size, where), x)
        if kind == "avg_pool2d":
            return self._add(node, _avg_pool(a["kernel_size"], a["stride"], a["padding"],
                                             a["ceil_mode"], a["count_include_pad"],
                                             a["divisor_override"], where), x)
        if kind == "max_pool2d":
            return self._add(node, _max_pool(a["kernel_size"], a["stride"], a["padding"],
                                             a["dilation"], a["ceil_mode"], a["return_indices"],
                                             where), x)
        if kind == "mean":
            return self._mean(node, x, shape, a, where)
        raise AssertionError(kind)  # pragma: no cover

    def _shape_arith(self, kind, node, where):
        args = [self._value(v) for v in node.args]
        if node.kwargs or any(isinstance(v, (_Tensor, _Attr)) for v in args[1:]) or (
                kind != "getattr" and isinstance(args[0], (_Tensor, _Attr))):
            raise ValueError(f"{where}: {_target_name(node.target)} on tensors is not "
                             f"supported; from_torch reads {SUPPORTED}")
        if kind == "getattr":
            x, attr = args
            if isinstance(x, _Tensor) and attr == "shape":
                return (BATCH,) + self.b.shapes[x.name]
            raise ValueError(f"{where}: the attribute {attr!r} of {_describe(x)} is not "
                             "supported (only .shape)")
        if any(v is BATCH for v in args) and kind != "getitem":
            raise ValueError(f"{where}: arithmetic on the batch size is not supported")
        try:
            return node.target(*args)
        except Exception as exc:  # an operation on shapes that Python refuses
            raise ValueError(f"{where}: {type(exc).__name__}: {exc}") from None

    def _reshape(self, node, shape, where):
        args = [self._value(v) for v in node.args[1:]]
        if node.kwargs:
            args += list(self._value(v) for v in node.kwargs.values())
        if len(args) == 1 and isinstance(args[0], (list, tuple)):
            args = list(args[0])
        flat = int(np.prod(shape))
        target = [v for v in args]
        ok = (len(target) == 2 and (target[0] is BATCH or target[0] == -1)
              and (target[1] == flat or (target[1] == -1 and target[0] is BATCH)))
        if ok:
            return None if len(shape) == 1 else L.Flatten()
        if target and target[0] is BATCH and tuple(target[1:]) == tuple(shape):
            return None
        raise ValueError(f"{where}: reshape to {tuple(target)} from per-sample shape "
                         f"{tuple(shape)} is not a flatten (n, -1); not supported")

    def _mean(self, node, x, shape, a, where):
        dims = a["dim"]
        dims = (dims,) if isinstance(dims, int) else tuple(dims or ())
        rank = len(shape) + 1
        if len(shape) != 3 or sorted(d % rank for d in dims) != [2, 3] or a["dtype"] is not None:
            raise ValueError(f"{where}: mean over dims {dims} of shape {tuple(shape)} is not "
                             "supported (only over height and width, (2, 3))")
        pooled = self._add(node, adaptive_avg_pool(shape, (1, 1), where), x)
        if a["keepdim"]:
            return pooled
        return self._add(node, L.Flatten(), pooled.name, f"{node.name}.flatten")


class _Attr:
    """A module attribute read by ``get_attr`` (a parameter or buffer)."""

    __slots__ = ("target",)

    def __init__(self, target):
        self.target = target

    def __repr__(self):
        return f"attribute {self.target!r}"


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
        Read in eval mode (BatchNorm with its running statistics, Dropout skipped): torchvision's
        ResNets, DenseNets, MobileNetV2, VGGs and AlexNet, ``nn.Sequential`` stacks, and modules
        whose forward uses ``+``/``torch.add`` of two tensors, ``torch.cat(..., 1)``,
        ``torch.flatten(x, 1)``, ``x.view(x.size(0), -1)``, functional relu/relu6/hardtanh(0, 6),
        adaptive/average/max pooling and dropout.  Layers: Linear, Conv2d (groups, dilation,
        symmetric padding), ReLU, ReLU6, Hardtanh(0, 6), MaxPool2d, AvgPool2d,
        AdaptiveAvgPool2d (the identity where the output size is the input's, a global or fixed
        average pooling where it divides the input), Flatten, BatchNorm1d/2d (folded into the
        Dense/Conv2d before it where nothing else reads that layer's output, else an affine
        node), Dropout and Identity (skipped).  Parameters are copied (float32/float64 kept,
        other float dtypes converted to float32).  The module's train/eval mode is left as it
        was.
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
