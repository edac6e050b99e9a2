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
from ..layers.linear import bias_vector
from ._common import CHECK_RTOL, GraphBuilder, probe, self_check, softmax

#: Operators that are the identity (plumbing, besides the layer types' OnnxOp entries).
_ALIASES = ("Dropout", "Identity")


def supported():
    """The operators from_onnx reads, for error messages: the layer types' entries and the
    plumbing."""
    ops = sorted(L.import_table(L.OnnxOp)) + list(_ALIASES)
    return (f"{', '.join(ops)}, Softmax (as the last node); constant and shape subgraphs "
            "(Constant, Shape, Gather, Unsqueeze, Squeeze, Concat, Slice, Cast, Reshape, "
            "arithmetic) are folded")

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
        self.baked = None  # the export batch a dynamic-batch file's Reshapes hold as constants
        self.nodes = _topological(list(g.node), set(self.consts) | {self.input_name}, where)
        self.b = GraphBuilder(self.input_shape)
        self.data = {self.input_name: INPUT}  # ONNX tensor -> relprop tensor
        self.readers = {}
        for n in self.nodes:
            for x in n.input:
                self.readers.setdefault(x, []).append(n)
        self.softmax = False
        self.ops = L.import_table(L.OnnxOp)  # the layer types' converters by operator

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
            if node.op_type == "Softmax":  # the last node (from_onnx refused any other)
                self.softmax = True
                self.data[node.output[0]] = self.tensor(node)
                continue
            self._op(node, where)
            for extra in node.output[1:]:
                if extra and extra not in self.data and (extra in self.readers or
                                                         extra == self.output_name):
                    raise ValueError(f"{where}: its output {extra!r} is used; relprop reads the "
                                     f"first output of {node.op_type} only")
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
                             f"supported; relprop reads {supported()}") from None
        except Exception as exc:  # numpy refuses inconsistent constants
            raise ValueError(f"{where}: cannot be evaluated on its constant inputs "
                             f"({type(exc).__name__}: {exc})") from None
        same = all(c is None or c.v[0] is c.v[1] for c in ins)
        self.consts[node.output[0]] = _Const(outs[0]) if same else _Const(outs[0], outs[1])

    def _op(self, node, where):
        entry = self.ops.get(node.op_type)
        if entry is not None:
            call = _Call(self, node, where)
            call.result(entry[0].convert(call))
        elif node.op_type in _ALIASES:
            self.data[node.output[0]] = self.tensor(node)
        elif node.op_type in _ACTIVATIONS:
            raise ValueError(f"{where}: the activation {node.op_type} is not supported; relprop "
                             f"reads {supported()}")
        else:
            raise ValueError(f"{where}: unsupported ONNX operator {node.op_type!r}; relprop reads "
                             f"{supported()}")

    def fold_bias(self, node, where):
        """``linear(..) + c`` with a per-output constant ``c``: folded into the bias of the
        linear layer that makes the other operand when nothing else reads its output; returns
        that layer's tensor."""
        x = next(i for i in node.input if i in self.data)
        c = next(i for i in node.input if i and i not in self.data)
        src = self.data[x]
        i = next((k for k, n in enumerate(self.b.nodes) if n.name == src), None)
        prev = self.b.nodes[i].layer if i is not None else None
        if not (prev is not None and prev.linear) or len(self.readers.get(x, [])) != 1 or \
                x == self.output_name:
            raise ValueError(f"{where}: adds a constant to {x!r}; supported only as the bias of "
                             "the MatMul/Gemm/Conv right before it, read by nothing else")
        cv = self.const(node, list(node.input).index(c), "the added constant")
        n = prev.weight.shape[0]
        if isinstance(prev, L.Conv2d) and cv.ndim >= 3 and cv.shape[-2:] != (1, 1):
            raise ValueError(f"{where}: Add of shape {cv.shape} is not a per-channel bias")
        bias = bias_vector(cv, n, _Call(self, node, where), "Add operand").astype(
            prev.weight.dtype)
        if prev.bias is not None:
            bias = prev.bias + bias
        node_i = self.b.nodes[i]
        self.b.nodes[i] = type(node_i)(node_i.name, prev.with_parameters(prev.weight, bias),
                                       node_i.inputs)
        return src


class _Call:
    """What a converter sees of one ONNX node (:mod:`relprop.layers.base`): ``node``,
    ``where``, ``attrs``, ``opset``, ``inputs`` (the relprop names of its data inputs),
    ``n_inputs`` (of all its inputs), ``shape`` (of its first data input), ``worlds`` (the
    batch sizes of the two evaluations of shape subgraphs), ``dynamic`` (whether the file's batch
    axis is), ``error``, ``const``, ``window``, ``targets``, ``bake``, ``add``, ``add_bias``."""

    def __init__(self, reader, node, where):
        self.reader, self.node, self.where = reader, node, where
        self.attrs, self.opset, self.worlds = _attrs(node), reader.opset, reader.worlds
        present = [x for x in node.input if x]
        self.inputs = [reader.data[x] for x in present if x in reader.data]
        self.n_inputs = len(present)
        self.dynamic = reader.batch is None

    @property
    def shape(self):
        return self.reader.b.shapes[self.inputs[0]]

    def error(self, msg):
        return ValueError(f"{self.where}: {msg}")

    def const(self, i, what, required=True):
        return self.reader.const(self.node, i, what, required)

    def producer(self, name):
        """The relprop node that makes tensor ``name`` (None for the network input)."""
        return self.reader.b.producer(getattr(name, "name", name))

    def window(self, pooling=True):
        """``(kernel, strides, pads, dilations)`` of a Conv or pooling, pads symmetric."""
        return _window_attrs(self.attrs, self.where, pooling)

    def targets(self, i, what):
        """Input ``i``, a constant that may depend on the batch size, as a list of ints per
        batch size of ``worlds``."""
        c = self.reader.consts.get(self.node.input[i]) if i < len(self.node.input) else None
        if c is None:
            raise self.error(f"{what} must be a constant (or computed from shapes only)")
        return [[int(v) for v in np.asarray(t).reshape(-1)] for t in c.v]

    def bake(self, batch):
        """Record that this node holds the export batch ``batch`` as a constant where the batch
        belongs (a dynamic-batch file: torch's exporters write what the model computed in Python
        from the batch size as constants); the self-check runs at that batch.  Two different
        baked batches raise ValueError."""
        baked = self.reader.baked
        if baked is not None and baked != batch:
            raise self.error(f"holds the batch size {batch} as a constant where the batch "
                             f"belongs, and another node holds {baked}: export the model with a "
                             "dynamic batch that its forward reads from the input "
                             "(x.size(0), x.shape[0] or -1)")
        self.reader.baked = batch

    def add(self, layer, inputs=None, suffix=""):
        """Add ``layer`` reading ``inputs`` (default: the data inputs) named after the node;
        returns its tensor's name."""
        base = (self.node.name or self.node.output[0]) + suffix
        return self.reader.b.add(base, layer, self.inputs if inputs is None else inputs,
                                 self.where)

    def add_bias(self):
        return self.reader.fold_bias(self.node, self.where)

    def result(self, value):
        """Record a converter's result as the node's output (see :mod:`relprop.layers.base`;
        a tuple holds one tensor per output)."""
        if isinstance(value, tuple):
            for name, v in zip(self.node.output, value):
                self.reader.data[name] = v
            return
        if value is None:
            value = self.inputs[0]
        if isinstance(value, L.Layer):
            value = [value]
        if isinstance(value, list):
            out = self.inputs[0]
            for k, layer in enumerate(v for v in value if v is not None):
                out = self.add(layer, None if k == 0 else [out], "" if k == 0 else
                               f".{layer.kind}")
            value = out
        self.reader.data[self.node.output[0]] = value


#: Activation operators, named as such where relprop refuses them (an OnnxOp entry of a layer
#: type is looked up first).
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
    if op == "Mod":  # fmod=0: the sign of the divisor (integers); fmod=1: C's fmod
        return (np.fmod if attrs.get("fmod", 0) else np.mod)(*ins).astype(np.result_type(*ins))
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


def from_onnx(path_or_model, *, check=True, rtol=CHECK_RTOL):
    """A relprop network from an ONNX model (a file path, bytes, or an ``onnx.ModelProto``).

    Reads DAGs, those of both of torch's exporters included (``torch.onnx.export`` with the
    default ``dynamo=True`` and with ``dynamo=False``), with a fixed or a dynamic batch.
    Operators: Conv (2-D and 1-D) and ConvTranspose (group, dilations, symmetric pads, output
    padding), Gemm,
    MatMul (an Add of a constant right after it, or after a Gemm/Conv, is its bias), Add/Sum of
    data tensors, Concat on any axis but the batch's, Relu, LeakyRelu, PRelu, Clip (ReLU6 for
    (0, 6), ReLU for (0), Hardtanh otherwise; also Max and Min of a constant), MaxPool,
    AveragePool (2-D and 1-D), GlobalAveragePool, GlobalMaxPool, ReduceMean and ReduceMax over
    height and width (or a signal's length), Resize (torch's nearest
    and bilinear), Flatten, Reshape (its leading dimension the batch, or the export batch baked
    into a dynamic-batch file), Squeeze and Unsqueeze of axes but the batch's, Transpose keeping
    the batch axis first, Split, Slice and Gather (one index) on axes but the batch's, Pad of
    zeros, BatchNormalization (folded into the Conv/Gemm/MatMul before it where nothing else
    reads that output, else an affine node), Dropout and Identity (skipped); a Softmax as the
    last node is dropped (relprop explains the scores before it). Subgraphs on constants and
    shapes are folded away. Poolings whose window is the identity are skipped. The data input
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
    inner = [n for n in g.node if n.op_type == "Softmax" and
             not {o.name for o in g.output} & set(n.output)]
    if inner:  # before any other node's error: what the file is, and what to do instead
        raise ValueError(f"{where}: {_node_where(inner[0])}: Softmax is only supported as the "
                         "last node (dropped: relprop explains the scores before it); attention "
                         "decomposed into MatMul and Softmax is not read from ONNX files: import "
                         "the torch module with relprop.from_torch (nn.MultiheadAttention with "
                         "batch_first=True)")
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
        n = reader.batch or reader.baked or 2
        if n * int(np.prod(net.input_shape)) > _MAX_PROBE_ELEMENTS:
            raise ValueError(f"{where}: onnxruntime runs the model at a batch of {n} only, too "
                             "large for the self-check; pass check=False to skip it")
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
