"""Import an ONNX model (a file, bytes or an ``onnx.ModelProto``), DAGs included.

The graph is walked in topological order.  Initializers and Constant nodes are constants, and
so is everything computed from constants and from tensor *shapes* alone (Shape, Gather,
Unsqueeze, Concat, ... as torch's exporters write ``x.view(x.size(0), -1)``): such subgraphs
are folded away.  Shapes depend on the batch size, which a model with a dynamic batch leaves
open, so constants are evaluated for two batch sizes at once; a Reshape is a flatten when its
target is one for both.  Every other node computes on data and becomes a relprop node named
after the ONNX node (its first output where the node has no name).
"""
from __future__ import annotations

import os

import numpy as np

from .. import layers as L
from ..graph import INPUT
from ._common import (
    CHECK_RTOL,
    GraphBuilder,
    adaptive_avg_pool,
    is_identity_window,
    probe,
    self_check,
    softmax,
)

#: The operators from_onnx reads, for error messages.
SUPPORTED = ("Conv (group, dilations), Gemm, MatMul (+ Add as its bias), Add/Sum of tensors, "
             "Concat (channel axis), Relu, Clip(0, 6), Clip(0), MaxPool, AveragePool, "
             "GlobalAveragePool, ReduceMean over (2, 3), Flatten, Reshape/Squeeze as a flatten, "
             "BatchNormalization, Dropout, Identity, Softmax (as the last node); constant and "
             "shape subgraphs (Constant, Shape, Gather, Unsqueeze, Squeeze, Concat, Slice, Cast, "
             "Reshape, arithmetic) are folded")

#: Batch sizes of the two evaluations of shape subgraphs for a model with a dynamic batch.
_WORLDS = (3, 5)

#: The largest probe input (elements) the ONNX self-check allocates for a fixed declared batch.
_MAX_PROBE_ELEMENTS = 1 << 24


def _import_onnx():
    """The onnx package, or ImportError saying how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"reading ONNX models needs the onnx package ({exc}): "
                          "pip install 'relprop[onnx]'") from None
    return onnx


def _load(path_or_model):
    onnx = _import_onnx()

    if isinstance(path_or_model, onnx.ModelProto):
        return path_or_model, "ONNX model"
    if isinstance(path_or_model, (bytes, bytearray)):
        try:
            return onnx.load_from_string(bytes(path_or_model)), "ONNX model"
        except Exception as exc:  # protobuf raises its own DecodeError
            raise ValueError(f"not a readable ONNX model ({type(exc).__name__}: {exc})") from None
    if not isinstance(path_or_model, (str, os.PathLike)):
        raise TypeError("from_onnx expects a path, bytes or an onnx.ModelProto, got "
                        f"{type(path_or_model).__name__}")
    path = os.fspath(path_or_model)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        model = onnx.load(path)
    except Exception as exc:  # protobuf DecodeError, external-data errors, ...
        raise ValueError(f"{path}: not a readable ONNX model ({type(exc).__name__}: "
                         f"{exc})") from None
    return model, path


def _attrs(node):
    from onnx import helper

    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _node_where(node):
    return f"ONNX node {(node.name or node.output[0] if node.output else node.name)!r} " \
           f"({node.op_type})"


def _topological(nodes, known, where):
    """The nodes in an order where every input is made before it is read: the file's order
    where it already is one (Kahn's algorithm, lowest position first).  ValueError naming the
    nodes of a cycle, or a node that reads a tensor nothing makes."""
    import heapq

    producer = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                if o in producer or o in known:
                    raise ValueError(f"{where}: {_node_where(n)}: tensor {o!r} is made twice")
                producer[o] = i
    waiting = [0] * len(nodes)
    readers = {}
    for i, n in enumerate(nodes):
        for x in set(n.input):
            if not x or x in known:
                continue
            if x not in producer:
                raise ValueError(f"{where}: {_node_where(n)} reads {x!r}, which no node, "
                                 "initializer or graph input makes")
            waiting[i] += 1
            readers.setdefault(producer[x], []).append(i)
    ready = [i for i in range(len(nodes)) if waiting[i] == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        i = heapq.heappop(ready)
        order.append(nodes[i])
        for r in readers.get(i, ()):
            waiting[r] -= 1
            if waiting[r] == 0:
                heapq.heappush(ready, r)
    if len(order) != len(nodes):
        stuck = [_node_where(nodes[i]) for i in range(len(nodes)) if waiting[i]]
        raise ValueError(f"{where}: the graph has a cycle through {', '.join(stuck[:6])}"
                         + (" ..." if len(stuck) > 6 else ""))
    return order


class _Const:
    """A constant: its value for each of the two batch sizes of :data:`_WORLDS` (one object
    when it does not depend on the batch size)."""

    __slots__ = ("v",)

    def __init__(self, *v):
        self.v = tuple(np.asarray(a) for a in v) if len(v) == 2 else (np.asarray(v[0]),) * 2

    def same(self):
        return self.v[0] is self.v[1] or (self.v[0].shape == self.v[1].shape and
                                          np.array_equal(self.v[0], self.v[1]))


def _symmetric_pads(attrs, kernel, dilation, where):
    """ONNX ``pads`` [top, left, bottom, right] (or auto_pad) as a symmetric (ph, pw)."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    strides = tuple(attrs.get("strides", (1, 1)))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if strides != (1, 1) or any((d * (k - 1)) % 2 for k, d in zip(kernel, dilation)):
            raise ValueError(f"{where}: auto_pad={auto} with strides {strides} and kernel "
                             f"{tuple(kernel)} pads asymmetrically; not supported")
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    if auto == "VALID":
        return (0, 0)
    if auto != "NOTSET":
        raise ValueError(f"{where}: auto_pad={auto!r} is not supported")
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise ValueError(f"{where}: pads {list(pads)} are not 2-D symmetric "
                         "(relprop needs top == bottom and left == right)")
    return pads[:2]


def _window_attrs(attrs, where, pooling=True):
    kernel = tuple(attrs.get("kernel_shape", ()))
    if len(kernel) != 2:
        raise ValueError(f"{where}: kernel_shape {list(kernel)} is not 2-D")
    dilation = tuple(attrs.get("dilations", (1, 1)))
    if len(dilation) != 2:
        raise ValueError(f"{where}: dilations {list(dilation)} are not 2-D")
    if pooling and dilation != (1, 1):
        raise ValueError(f"{where}: dilations {list(dilation)} are not supported for pooling")
    if attrs.get("ceil_mode", 0):
        raise ValueError(f"{where}: ceil_mode=1 is not supported")
    strides = tuple(attrs.get("strides", (1, 1)))
    return kernel, strides, _symmetric_pads(attrs, kernel, dilation, where), dilation


class _Reader:
    """Walks an ONNX graph and builds the relprop network."""

    def __init__(self, model, where):
        from onnx import numpy_helper

        self.where = where
        g = model.graph
        self.opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")),
                          1)
        self.consts = {}
        for t in g.initializer:
            try:
                self.consts[t.name] = _Const(numpy_helper.to_array(t))
            except (KeyError, ValueError, TypeError) as exc:  # unknown or inconsistent dtype
                raise ValueError(f"{where}: initializer {t.name!r} cannot be read "
                                 f"({type(exc).__name__}: {exc})") from None
        data_inputs = [i for i in g.input if i.name not in self.consts]
        if len(data_inputs) != 1:
            raise ValueError(f"{where}: relprop needs exactly one data input, the graph has "
                             f"{[i.name for i in data_inputs]}")
        if len(g.output) != 1:
            raise ValueError(f"{where}: relprop needs exactly one output, the graph has "
                             f"{[o.name for o in g.output]}")
        self.input_name, self.output_name = data_inputs[0].name, g.output[0].name
        self.input_shape, self.batch, self.dtype = self._input_info(data_inputs[0])
        self.worlds = (self.batch,) * 2 if self.batch else _WORLDS
        self.nodes = _topological(list(g.node), set(self.consts) | {self.input_name}, where)
        self.b = GraphBuilder(self.input_shape)
        self.data = {self.input_name: INPUT}  # ONNX tensor -> relprop tensor
        self.readers = {}
        for n in self.nodes:
            for x in n.input:
                self.readers.setdefault(x, []).append(n)
        self.softmax = False

    def _input_info(self, vi):
        from onnx import TensorProto

        t = vi.type.tensor_type
        dtypes = {TensorProto.FLOAT: np.float32, TensorProto.DOUBLE: np.float64}
        if t.elem_type not in dtypes:
            raise ValueError(f"{self.where}: input {vi.name!r} has element type {t.elem_type}; "
                             "relprop reads float32 or float64 models")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
        if len(dims) < 2 or any(d is None or d <= 0 for d in dims[1:]):
            raise ValueError(f"{self.where}: input {vi.name!r} needs a fixed per-sample shape, "
                             f"got dims {dims}")
        return tuple(dims[1:]), dims[0], dtypes[t.elem_type]

    # --- values -------------------------------------------------------------------------------
    def const(self, node, i, what, required=True):
        """Input ``i`` of ``node`` as a constant that does not depend on the batch size (None
        where the input is absent and not ``required``)."""
        if i >= len(node.input) or not node.input[i]:
            if required:
                raise ValueError(f"{_node_where(node)}: missing {what}")
            return None
        name = node.input[i]
        if name not in self.consts:
            raise ValueError(f"{_node_where(node)}: {what} ({name!r}) must be a constant (an "
                             "initializer, or computed from constants only)")
        c = self.consts[name]
        if not c.same():
            raise ValueError(f"{_node_where(node)}: {what} ({name!r}) depends on the batch size")
        return c.v[0]

    def tensor(self, node, i=0):
        name = node.input[i] if i < len(node.input) else ""
        if name not in self.data:
            raise ValueError(f"{_node_where(node)}: input {i} ({name!r}) must be computed from "
                             "the data input, not a constant")
        return self.data[name]

    def shape(self, node, i=0):
        return self.b.shapes[self.tensor(node, i)]

    def add(self, node, layer, inputs, suffix=""):
        """Add ``layer`` for ``node`` (None: ``node``'s output aliases its first input)."""
        if layer is None:
            self.data[node.output[0]] = inputs[0] if isinstance(inputs, list) else inputs
            return
        inputs = inputs if isinstance(inputs, list) else [inputs]
        base = (node.name or node.output[0]) + suffix
        name = self.b.add(base, layer, inputs, _node_where(node))
        self.data[node.output[0]] = name
        return name

    # --- the walk -----------------------------------------------------------------------------
    def run(self):
        for node in self.nodes:
            where = _node_where(node)
            if node.op_type == "Constant":
                self._constant(node, where)
                continue
            if node.op_type == "Shape":
                self._shape(node, where)
                continue
            reads_data = any(x in self.data for x in node.input if x)
            if not reads_data and node.op_type not in ("Softmax",):
                self._fold(node, where)
                continue
            for extra in node.output[1:]:
                if extra and (extra in self.readers or extra == self.output_name):
                    raise ValueError(f"{where}: its output {extra!r} is used; only the first "
                                     "output of a data node is supported")
            if node.op_type == "Softmax":
                if node.output[0] != self.output_name:
                    raise ValueError(f"{where}: Softmax is only supported as the last node")
                self.softmax = True
                self.data[node.output[0]] = self.tensor(node)
                continue
            self._op(node, where)
        if self.output_name not in self.data:
            raise ValueError(f"{self.where}: the output {self.output_name!r} is a constant (it "
                             "does not depend on the input)")
        return self.data[self.output_name]

    def _constant(self, node, where):
        from onnx import numpy_helper

        attrs = {a.name: a for a in node.attribute}
        if "value" not in attrs:
            raise ValueError(f"{where}: only tensor-valued Constant nodes are supported")
        try:
            self.consts[node.output[0]] = _Const(numpy_helper.to_array(attrs["value"].t))
        except (KeyError, ValueError, TypeError) as exc:
            raise ValueError(f"{where}: cannot be read ({type(exc).__name__}: {exc})") from None

    def _shape(self, node, where):
        if node.input[0] in self.consts:
            c = self.consts[node.input[0]]
            full = [np.array(c.v[k].shape, dtype=np.int64) for k in (0, 1)]
        else:
            per = self.shape(node)
            full = [np.array((b,) + per, dtype=np.int64) for b in self.worlds]
        a = _attrs(node)
        sl = slice(a.get("start", 0), a.get("end", None))
        self.consts[node.output[0]] = _Const(full[0][sl], full[1][sl])

    def _fold(self, node, where):
        """Evaluate a node on constants (for both batch sizes)."""
        ins = [self.consts.get(x) if x else None for x in node.input]
        missing = [x for x, c in zip(node.input, ins) if x and c is None]
        if missing:
            raise ValueError(f"{where}: input {missing[0]!r} is neither data nor a constant")
        attrs = _attrs(node)
        try:
            outs = [_eval(node.op_type, [None if c is None else c.v[k] for c in ins], attrs,
                          self.opset) for k in (0, 1)]
        except _Unsupported:
            raise ValueError(f"{where}: the operator {node.op_type!r} on constants is not "
                             f"supported; relprop reads {SUPPORTED}") from None
        except Exception as exc:  # numpy refuses inconsistent constants
            raise ValueError(f"{where}: cannot be evaluated on its constant inputs "
                             f"({type(exc).__name__}: {exc})") from None
        same = all(c is None or c.v[0] is c.v[1] for c in ins)
        self.consts[node.output[0]] = _Const(outs[0]) if same else _Const(outs[0], outs[1])

    def _op(self, node, where):
        op, attrs = node.op_type, _attrs(node)
        if op == "Conv":
            self._conv(node, attrs, where)
        elif op == "Gemm":
            if attrs.get("transA", 0):
                raise ValueError(f"{where}: transA=1 is not supported")
            b = self.const(node, 1, "B")
            if b.ndim != 2:
                raise ValueError(f"{where}: B must be 2-D, got shape {b.shape}")
            w = (b if attrs.get("transB", 0) else b.T) * attrs.get("alpha", 1.0)
            c = self.const(node, 2, "C", required=False)
            bias = None
            if c is not None:
                bias = _vector(c * attrs.get("beta", 1.0), w.shape[0], where, "C")
            self.add(node, L.Dense(w.astype(b.dtype), bias), self.tensor(node))
        elif op == "MatMul":
            b = self.const(node, 1, "the second input")
            if b.ndim != 2:
                raise ValueError(f"{where}: the weight must be 2-D, got shape {b.shape}")
            self.add(node, L.Dense(b.T), self.tensor(node))
        elif op in ("Add", "Sum"):
            self._add(node, where)
        elif op == "Concat":
            ins = [x for x in node.input if x]
            if any(x not in self.data for x in ins):
                raise ValueError(f"{where}: concatenates data with constants; not supported")
            names = [self.data[x] for x in ins]
            rank = len(self.b.shapes[names[0]]) + 1
            axis = attrs.get("axis", 1)
            if axis != 1 and axis + rank != 1:
                raise ValueError(f"{where}: concatenation along axis={axis} is not supported "
                                 "(only the channel axis, 1)")
            self.add(node, L.Concat() if len(names) > 1 else None, names)
        elif op == "Relu":
            self.add(node, L.ReLU(), self.tensor(node))
        elif op == "Clip":
            self.add(node, self._clip(node, attrs, where), self.tensor(node))
        elif op in ("MaxPool", "AveragePool"):
            if op == "MaxPool" and attrs.get("storage_order", 0):
                raise ValueError(f"{where}: storage_order=1 is not supported")
            kernel, strides, pads, _ = _window_attrs(attrs, where)
            if op == "AveragePool" and any(pads) and not attrs.get("count_include_pad", 0):
                raise ValueError(f"{where}: count_include_pad=0 with padding is not supported")
            layer = None
            if not is_identity_window(kernel, strides, pads):
                layer = (L.MaxPool2d if op == "MaxPool" else L.AvgPool2d)(kernel, strides, pads)
            self.add(node, layer, self.tensor(node))
        elif op == "GlobalAveragePool":
            self.add(node, adaptive_avg_pool(self.shape(node), (1, 1), where), self.tensor(node))
        elif op == "ReduceMean":
            self._reduce_mean(node, attrs, where)
        elif op == "Flatten":
            axis = attrs.get("axis", 1)
            if axis != 1:
                raise ValueError(f"{where}: axis={axis} is not supported (only 1)")
            self.add(node, L.Flatten() if len(self.shape(node)) > 1 else None, self.tensor(node))
        elif op == "Reshape":
            self._reshape(node, attrs, where)
        elif op == "Squeeze":
            self._squeeze(node, attrs, where)
        elif op == "BatchNormalization":
            if attrs.get("training_mode", 0):
                raise ValueError(f"{where}: training_mode=1 is not supported")
            scale, shift, mean, var = (self.const(node, i, n) for i, n in
                                       enumerate(("scale", "B", "mean", "var"), start=1))
            shape = self.shape(node)
            cls = L.BatchNorm2d if len(shape) == 3 else L.BatchNorm1d
            try:
                bn = cls(scale, shift, mean, var, eps=float(attrs.get("epsilon", 1e-5)))
            except (ValueError, TypeError) as exc:
                raise ValueError(f"{where}: {exc}") from None
            self.add(node, bn, self.tensor(node))
        elif op in ("Dropout", "Identity"):
            self.add(node, None, self.tensor(node))
        elif op in _ACTIVATIONS:
            raise ValueError(f"{where}: the activation {op} is not supported (relprop explains "
                             "ReLU networks: Relu, Clip(0, 6))")
        else:
            raise ValueError(f"{where}: unsupported ONNX operator {op!r}; relprop reads "
                             f"{SUPPORTED}")

    def _conv(self, node, attrs, where):
        w = self.const(node, 1, "W")
        if w.ndim != 4:
            raise ValueError(f"{where}: only 2-D convolutions are supported (W shape {w.shape})")
        attrs.setdefault("kernel_shape", w.shape[2:])
        kernel, strides, pads, dilation = _window_attrs(attrs, where, pooling=False)
        if tuple(kernel) != tuple(w.shape[2:]):
            raise ValueError(f"{where}: kernel_shape {tuple(kernel)} disagrees with W of shape "
                             f"{w.shape}")
        try:
            layer = L.Conv2d(w, self.const(node, 2, "B", required=False), strides, pads,
                             dilation=dilation, groups=attrs.get("group", 1))
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{where}: {exc}") from None
        self.add(node, layer, self.tensor(node))

    def _clip(self, node, attrs, where):
        if self.opset < 11:
            low, high = attrs.get("min", None), attrs.get("max", None)
        else:
            low = self.const(node, 1, "min", required=False)
            high = self.const(node, 2, "max", required=False)
        low = None if low is None else float(np.asarray(low).reshape(-1)[0]) \
            if np.asarray(low).size == 1 else np.nan
        high = None if high is None else float(np.asarray(high).reshape(-1)[0]) \
            if np.asarray(high).size == 1 else np.nan
        if low == 0 and (high is None or high == np.inf):
            return L.ReLU()
        if low == 0 and high == 6:
            return L.ReLU6()
        raise ValueError(f"{where}: the activation Clip(min={low}, max={high}) is not supported "
                         "(only Clip(0) = ReLU and Clip(0, 6) = ReLU6)")

    def _add(self, node, where):
        ins = [x for x in node.input if x]
        data = [x for x in ins if x in self.data]
        if len(data) == len(ins):
            if len(data) == 1:
                self.add(node, None, self.data[data[0]])
            else:
                self.add(node, L.Add(), [self.data[x] for x in data])
            return
        if node.op_type != "Add" or len(ins) != 2:
            raise ValueError(f"{where}: sums data with constants; not supported")
        self._add_bias(node, data[0], next(x for x in ins if x not in self.data), where)

    def _add_bias(self, node, x, c, where):
        """``linear(..) + c`` with a per-output constant: folded into the linear layer's bias
        when nothing else reads the linear layer's output."""
        src = self.data[x]
        i = next((k for k, n in enumerate(self.b.nodes) if n.name == src), None)
        prev = self.b.nodes[i].layer if i is not None else None
        if not isinstance(prev, (L.Dense, L.Conv2d)) or len(self.readers.get(x, [])) != 1 or \
                x == self.output_name:
            raise ValueError(f"{where}: adds a constant to {x!r}; supported only as the bias of "
                             "the MatMul/Gemm/Conv right before it, read by nothing else")
        cv = self.consts[c]
        if not cv.same():
            raise ValueError(f"{where}: the added constant depends on the batch size")
        cv = cv.v[0]
        n = prev.weight.shape[0]
        if isinstance(prev, L.Conv2d) and cv.ndim >= 3 and cv.shape[-2:] != (1, 1):
            raise ValueError(f"{where}: Add of shape {cv.shape} is not a per-channel bias")
        bias = _vector(cv, n, where, "Add operand").astype(prev.weight.dtype)
        if prev.bias is not None:
            bias = prev.bias + bias
        node_i = self.b.nodes[i]
        self.b.nodes[i] = type(node_i)(node_i.name, prev.with_parameters(prev.weight, bias),
                                       node_i.inputs)
        self.data[node.output[0]] = src

    def _reduce_mean(self, node, attrs, where):
        shape = self.shape(node)
        if self.opset >= 18:
            axes = self.const(node, 1, "axes", required=False)
        else:
            axes = attrs.get("axes", None)
        axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        rank = len(shape) + 1
        if len(shape) != 3 or axes is None or sorted(a % rank for a in axes) != [2, 3]:
            raise ValueError(f"{where}: ReduceMean over axes {axes} of per-sample shape "
                             f"{tuple(shape)} is not supported (only over height and width)")
        pooled = adaptive_avg_pool(shape, (1, 1), where)
        if attrs.get("keepdims", 1):
            self.add(node, pooled, self.tensor(node))
            return
        x = self.tensor(node)
        if pooled is not None:
            x = self.b.add(node.name or node.output[0], pooled, [x], where)
        self.data[node.output[0]] = self.b.add((node.name or node.output[0]) + ".flatten",
                                               L.Flatten(), [x], where)

    def _reshape(self, node, attrs, where):
        shape = self.shape(node)
        c = self.consts.get(node.input[1]) if len(node.input) > 1 else None
        if c is None:
            raise ValueError(f"{where}: the target shape must be a constant (or computed from "
                             "shapes only)")
        flat = int(np.prod(shape))
        allowzero = attrs.get("allowzero", 0)
        targets = [[int(v) for v in np.asarray(t).reshape(-1)] for t in c.v]

        def resolved(t, batch):
            full = (batch,) + tuple(shape)
            if not allowzero:
                t = [full[k] if v == 0 and k < len(full) else v for k, v in enumerate(t)]
            return t

        def is_flatten(t, batch):
            return len(t) == 2 and ((t[0] == batch and t[1] in (flat, -1)) or
                                    (t[0] == -1 and t[1] == flat))

        def is_same(t, batch):
            return t == [batch, *shape]

        ts = [resolved(t, b) for t, b in zip(targets, self.worlds)]
        if all(is_flatten(t, b) for t, b in zip(ts, self.worlds)):
            self.add(node, L.Flatten() if len(shape) > 1 else None, self.tensor(node))
        elif all(is_same(t, b) for t, b in zip(ts, self.worlds)):
            self.add(node, None, self.tensor(node))
        else:
            raise ValueError(f"{where}: Reshape to {targets[0]} from per-sample shape "
                             f"{tuple(shape)} is not a flatten (n, -1); not supported")

    def _squeeze(self, node, attrs, where):
        shape = self.shape(node)
        if self.opset >= 13:
            axes = self.const(node, 1, "axes", required=False)
        else:
            axes = attrs.get("axes", None)
        rank = len(shape) + 1
        axes = None if axes is None else sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))
        full = (None,) + tuple(shape)
        if axes is None:
            axes = [k for k in range(1, rank) if full[k] == 1]
        if 0 in axes or any(full[k] != 1 for k in axes):
            raise ValueError(f"{where}: Squeeze of axes {axes} of per-sample shape {tuple(shape)} "
                             "is not supported")
        kept = [full[k] for k in range(1, rank) if k not in axes]
        if len(kept) != 1:
            raise ValueError(f"{where}: Squeeze to per-sample shape {tuple(kept)} is not a "
                             "flatten; not supported")
        self.add(node, L.Flatten() if len(shape) > 1 else None, self.tensor(node))


_ACTIVATIONS = {"LeakyRelu", "PRelu", "Sigmoid", "Tanh", "Elu", "Selu", "Celu", "Gelu",
                "HardSigmoid", "HardSwish", "Softplus", "Softsign", "ThresholdedRelu", "Mish",
                "Erf", "Exp", "Log", "LogSoftmax"}


class _Unsupported(Exception):
    pass


def _eval(op, ins, attrs, opset):
    """``op`` on constant NumPy inputs (None for an absent optional input)."""
    x = ins[0] if ins else None
    if op == "Identity":
        return x
    if op == "Cast":
        from onnx import helper

        return x.astype(helper.tensor_dtype_to_np_dtype(attrs["to"]))
    if op == "Gather":
        return np.take(x, ins[1].astype(np.int64), axis=attrs.get("axis", 0))
    if op in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes") if opset < 13 else (None if len(ins) < 2 or ins[1] is None
                                                     else ins[1])
        if op == "Squeeze":
            return np.squeeze(x) if axes is None else np.squeeze(
                x, axis=tuple(int(a) for a in np.asarray(axes).reshape(-1)))
        out = x
        rank = x.ndim + len(np.asarray(axes).reshape(-1))
        for a in sorted(int(a) % rank for a in np.asarray(axes).reshape(-1)):
            out = np.expand_dims(out, a)
        return out
    if op == "Concat":
        return np.concatenate([i for i in ins if i is not None], axis=attrs.get("axis", 0))
    if op == "Slice":
        if opset < 10:
            starts, ends = attrs["starts"], attrs["ends"]
            axes, steps = attrs.get("axes"), None
        else:
            starts, ends = ins[1], ins[2]
            axes = ins[3] if len(ins) > 3 else None
            steps = ins[4] if len(ins) > 4 else None
        starts = [int(v) for v in np.asarray(starts).reshape(-1)]
        ends = [int(v) for v in np.asarray(ends).reshape(-1)]
        axes = list(range(len(starts))) if axes is None else [int(v) for v in
                                                              np.asarray(axes).reshape(-1)]
        steps = [1] * len(starts) if steps is None else [int(v) for v in
                                                         np.asarray(steps).reshape(-1)]
        sl = [slice(None)] * x.ndim
        for s, e, a, st in zip(starts, ends, axes, steps):
            sl[a] = slice(s, e, st)
        return x[tuple(sl)]
    if op == "Reshape":
        shape = [int(v) for v in ins[1].reshape(-1)]
        if not attrs.get("allowzero", 0):
            shape = [x.shape[k] if v == 0 else v for k, v in enumerate(shape)]
        return x.reshape(shape)
    if op == "Transpose":
        return np.transpose(x, attrs.get("perm"))
    if op in ("Add", "Sub", "Mul", "Div"):
        a, b = ins
        if op == "Div" and a.dtype.kind in "iu":
            return (a // b).astype(a.dtype)
        return {"Add": np.add, "Sub": np.subtract, "Mul": np.multiply,
                "Div": np.divide}[op](a, b).astype(np.result_type(a, b))
    if op == "Neg":
        return -x
    if op == "Sqrt":
        return np.sqrt(x)
    if op == "Size":
        return np.array(x.size, dtype=np.int64)
    if op == "ConstantOfShape":
        from onnx import numpy_helper

        value = attrs.get("value")
        fill = numpy_helper.to_array(value).reshape(-1)[0] if value is not None else \
            np.float32(0)
        return np.full([int(v) for v in x.reshape(-1)], fill, dtype=np.asarray(fill).dtype)
    raise _Unsupported(op)


def _vector(v, n, where, what):
    v = np.asarray(v)
    if v.size == 1:
        return np.full(n, v.reshape(()), dtype=v.dtype)
    if v.size != n or max(v.shape) != n:
        raise ValueError(f"{where}: {what} of shape {v.shape} is not a bias of length {n}")
    return v.reshape(n)


def from_onnx(path_or_model, *, check=True, rtol=CHECK_RTOL):
    """A relprop network from an ONNX model (a file path, bytes, or an ``onnx.ModelProto``).

    Reads DAGs, those of both of torch's exporters included (``torch.onnx.export`` with the
    default ``dynamo=True`` and with ``dynamo=False``), with a fixed or a dynamic batch.
    Operators: Conv (group, dilations, symmetric pads), Gemm, MatMul (an Add of a constant
    right after it, or after a Gemm/Conv, is its bias), Add/Sum of data tensors, Concat on the
    channel axis, Relu, Clip(0, 6) (ReLU6) and Clip(0), MaxPool, AveragePool,
    GlobalAveragePool, ReduceMean over height and width, Flatten, Reshape and Squeeze as a
    flatten, BatchNormalization (folded into the Conv/Gemm/MatMul before it where nothing else
    reads that output, else an affine node), Dropout and Identity (skipped); a Softmax as the
    last node is dropped (relprop explains the scores before it).  Subgraphs on constants and
    shapes are folded away.  Poolings whose window is the identity are skipped.  The data input
    needs a fixed per-sample shape; element type float32 or float64.

    Parameters
    ----------
    path_or_model : str, os.PathLike, bytes or onnx.ModelProto
    check : bool
        When onnxruntime is installed, compare the forward pass with onnxruntime on a probe
        input (through the dropped Softmax, if any).
    rtol : float
        Tolerance of the check, relative to the largest output magnitude.

    Returns
    -------
    Sequential or Graph
        A Sequential where the layers form a chain (layers named by index), else a Graph whose
        nodes are named after the ONNX nodes.

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        A malformed or truncated file, an unsupported operator, activation or attribute (the
        message names the operator and its node), a cycle, or a failed self-check.
    ImportError
        The onnx package is not installed (``pip install 'relprop[onnx]'``).
    """
    onnx = _import_onnx()

    model, where = _load(path_or_model)
    # cycles first: the checker would only say that the nodes are not sorted
    g = model.graph
    _topological(list(g.node), {t.name for t in g.initializer} | {i.name for i in g.input}, where)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and protobuf errors
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{where}: invalid ONNX model ({type(exc).__name__}: {first})") from None
    try:
        reader = _Reader(model, where)
        output = reader.run()
    except TypeError as exc:  # e.g. an initializer of a non-numeric element type
        raise ValueError(f"{where}: {exc}") from None
    except ValueError as exc:
        msg = str(exc)
        raise ValueError(msg if msg.startswith(where) else f"{where}: {msg}") from None
    net = reader.b.build(output, reader.input_shape, where)
    if check:
        try:
            import onnxruntime as ort
        except ImportError:
            return net
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        try:
            sess = ort.InferenceSession(model.SerializeToString(), opts,
                                        providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own exception types
            raise ValueError(f"{where}: onnxruntime cannot load the model ({exc})") from None
        n = reader.batch or 2
        if n * int(np.prod(net.input_shape)) > _MAX_PROBE_ELEMENTS:
            raise ValueError(f"{where}: the model declares a fixed batch of {n}, too large for the "
                             "onnxruntime self-check; pass check=False to skip it")
        x = probe(net.input_shape, reader.dtype, n=n)
        try:
            want = sess.run(None, {reader.input_name: x})[0]
        except Exception as exc:  # onnxruntime's Fail/InvalidArgument: the graph is inconsistent
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ValueError(f"{where}: onnxruntime cannot run the model ({first})") from None
        got = net(x)
        if reader.softmax:
            got = softmax(got)
        self_check(got, want, "onnxruntime", rtol)
    return net
