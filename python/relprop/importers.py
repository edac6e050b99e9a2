"""Import trained models from PyTorch, ONNX and scikit-learn into :class:`relprop.Sequential`.

Each importer reads the parameters as they are (BatchNorm folded into the Dense/Conv2d before
it, Dropout and Identity skipped), then checks itself: the relprop forward pass on a fixed probe
input must match the source framework (the torch module in eval mode, onnxruntime when it is
installed, scikit-learn's ``predict_proba``/``predict``) within ``rtol`` of the largest output
magnitude, else ``ValueError``.  The frameworks are imported lazily, inside the functions.
"""
from __future__ import annotations

import os

import numpy as np

from . import layers as L
from .graph import Sequential

#: Relative tolerance of the import self-check: ``max|relprop - source| <= rtol * max|source|``.
CHECK_RTOL = 1e-4
_PROBE_SEED = 0


#: The largest probe input (elements) the ONNX self-check allocates for a fixed declared batch.
_MAX_PROBE_ELEMENTS = 1 << 24


def _probe(shape, dtype, n=2):
    """A fixed probe batch ``(n, *shape)`` of standard normal values."""
    return np.random.default_rng(_PROBE_SEED).standard_normal((n,) + tuple(shape)).astype(dtype)


def _self_check(got, want, source, rtol):
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


# --------------------------------------------------------------------------------------------
# PyTorch
# --------------------------------------------------------------------------------------------
_TORCH_SUPPORTED = ("Sequential, Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d, "
                    "Flatten, BatchNorm1d, BatchNorm2d, Dropout, Identity")


def _np(t):
    """A torch tensor as a NumPy array that owns its memory (float32/float64 kept)."""
    import torch

    t = t.detach().cpu()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.float()
    return t.numpy().copy()


def _torch_pair(v, name, path):
    if isinstance(v, int):
        return (v, v)
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"module '{path}': {name}={v} is not a 2-D value")
    return v


def _torch_conv_padding(m, path):
    if isinstance(m.padding, str):
        if m.padding == "valid":
            return (0, 0)
        pads = []
        for k in m.kernel_size:  # "same" with stride 1 and dilation 1: k - 1 in total per axis
            if (k - 1) % 2:
                raise ValueError(f"module '{path}' ({m!r}): padding='same' with an even kernel "
                                 "pads asymmetrically; relprop supports symmetric padding only")
            pads.append((k - 1) // 2)
        return tuple(pads)
    return _torch_pair(m.padding, "padding", path)


def _torch_layer(m, path):
    """The relprop layer for one torch module, or None for a module that is skipped."""
    from torch import nn

    def unsupported(what):
        return ValueError(f"module '{path}' ({m!r}): {what} is not supported")

    if isinstance(m, nn.Linear):
        return L.Dense(_np(m.weight), None if m.bias is None else _np(m.bias))
    if isinstance(m, nn.Conv2d):
        if tuple(m.dilation) != (1, 1):
            raise unsupported(f"dilation={tuple(m.dilation)}")
        if m.groups != 1:
            raise unsupported(f"groups={m.groups}")
        if m.padding_mode != "zeros":
            raise unsupported(f"padding_mode={m.padding_mode!r}")
        return L.Conv2d(_np(m.weight), None if m.bias is None else _np(m.bias),
                        stride=tuple(m.stride), padding=_torch_conv_padding(m, path))
    if isinstance(m, nn.ReLU):
        return L.ReLU()
    if isinstance(m, nn.MaxPool2d):
        if _torch_pair(m.dilation, "dilation", path) != (1, 1):
            raise unsupported(f"dilation={m.dilation}")
        if m.ceil_mode:
            raise unsupported("ceil_mode=True")
        if m.return_indices:
            raise unsupported("return_indices=True")
        return L.MaxPool2d(_torch_pair(m.kernel_size, "kernel_size", path),
                           _torch_pair(m.stride or m.kernel_size, "stride", path),
                           _torch_pair(m.padding, "padding", path))
    if isinstance(m, nn.AvgPool2d):
        if m.ceil_mode:
            raise unsupported("ceil_mode=True")
        if not m.count_include_pad and _torch_pair(m.padding, "padding", path) != (0, 0):
            raise unsupported("count_include_pad=False with padding")
        if m.divisor_override is not None:
            raise unsupported(f"divisor_override={m.divisor_override}")
        return L.AvgPool2d(_torch_pair(m.kernel_size, "kernel_size", path),
                           _torch_pair(m.stride or m.kernel_size, "stride", path),
                           _torch_pair(m.padding, "padding", path))
    if isinstance(m, nn.AdaptiveAvgPool2d):
        size = _torch_pair(m.output_size, "output_size", path)
        if size == (1, 1):
            return L.GlobalAvgPool2d()
        if None in size:
            raise unsupported(f"output_size={m.output_size}")
        return _AdaptiveAvgPool(size)
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise unsupported(f"start_dim={m.start_dim}, end_dim={m.end_dim} (only 1, -1)")
        return L.Flatten()
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if m.running_mean is None or m.running_var is None:
            raise unsupported("track_running_stats=False (no running statistics to fold)")
        n = m.num_features
        scale = _np(m.weight) if m.affine else np.ones(n)
        shift = _np(m.bias) if m.affine else np.zeros(n)
        cls = L.BatchNorm2d if isinstance(m, nn.BatchNorm2d) else L.BatchNorm1d
        return cls(scale, shift, _np(m.running_mean), _np(m.running_var), eps=float(m.eps))
    if isinstance(m, (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                      nn.Identity)):
        return None
    hint = ""
    if next(m.children(), None) is not None:
        hint = (f" ({type(m).__name__} has its own forward(); if it applies its children in "
                "order, pass nn.Sequential(*children) with the flatten steps made explicit)")
    raise ValueError(f"module '{path}' ({type(m).__name__}) is not supported{hint}; from_torch "
                     f"reads nn.Sequential stacks of {_TORCH_SUPPORTED}")


def _torch_walk(module, path, out):
    from torch import nn

    if isinstance(module, nn.Sequential):
        for name, child in module.named_children():
            _torch_walk(child, f"{path}.{name}" if path else name, out)
        return
    layer = _torch_layer(module, path or type(module).__name__)
    if layer is None:
        return
    if isinstance(layer, L.BatchNorm):
        _check_foldable(layer, out[-1][1] if out else None,
                        f"module '{path}' ({type(module).__name__})")
    out.append((path, layer))


def _check_foldable(bn, prev, where):
    if not isinstance(prev, bn.expects):
        after = "the start of the network" if prev is None else repr(prev)
        raise ValueError(f"{where} cannot be folded: it must follow a "
                         f"{' or '.join(t.__name__ for t in bn.expects)}, not {after}")


class _AdaptiveAvgPool:
    """``AdaptiveAvgPool2d(size)``: an AvgPool2d once the input size is known (see _chain)."""

    def __init__(self, size):
        self.size = size

    def __repr__(self):
        return f"AdaptiveAvgPool2d({self.size})"

    def resolve(self, shape):
        """AvgPool2d for an input (c, h, w) that ``size`` divides; None when it is the identity."""
        if len(shape) != 3:
            raise ValueError(f"AdaptiveAvgPool2d expects (channels, height, width), got {shape}")
        (h, w), (oh, ow) = shape[1:], self.size
        if (h, w) == (oh, ow):
            return None
        if h % oh or w % ow:
            raise ValueError(f"AdaptiveAvgPool2d{self.size} on a {h}x{w} input has uneven windows "
                             "(only sizes that divide the input are supported)")
        return L.AvgPool2d((h // oh, w // ow))


def _chain(found, input_shape):
    """The layers chained from ``input_shape``: AdaptiveAvgPool2d resolved to a fixed pooling,
    and the module path named when shapes do not fit."""
    try:
        shape = tuple(int(s) for s in input_shape)
    except (TypeError, ValueError):
        raise TypeError(f"input_shape must be a tuple of ints, got {input_shape!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"input_shape must be positive sizes, got {shape}")
    layers = []
    for path, layer in found:
        try:
            if isinstance(layer, _AdaptiveAvgPool):
                layer = layer.resolve(shape)
                if layer is None:
                    continue
            shape = tuple(layer.output_shape(shape))
        except ValueError as exc:
            raise ValueError(f"module '{path}': {exc}") from None
        layers.append(layer)
    return layers


def from_torch(module, input_shape, *, check=True, rtol=CHECK_RTOL) -> Sequential:
    """A relprop network from a ``torch.nn.Sequential`` (or a single supported module).

    Parameters
    ----------
    module : torch.nn.Module
        ``nn.Sequential`` (nested ones allowed) of Linear, Conv2d, ReLU, MaxPool2d, AvgPool2d,
        AdaptiveAvgPool2d (output size 1, or one that divides the input: a fixed AvgPool2d),
        Flatten, BatchNorm1d/2d (folded into the layer before), Dropout
        and Identity (skipped).  Parameters are copied (float32/float64 kept, other float
        dtypes converted to float32).
    input_shape : tuple of int
        Shape of one sample, e.g. ``(3, 32, 32)``.
    check : bool
        Compare the forward pass with the module in eval mode on a probe input (the module's
        train/eval mode is restored afterwards).
    rtol : float
        Tolerance of the check, relative to the largest output magnitude.

    Returns
    -------
    Sequential

    Raises
    ------
    ValueError
        An unsupported module or option (the message names the module and its path in the
        Sequential), shapes that do not chain, or a failed self-check.
    TypeError
        ``module`` is not a torch module.
    """
    import torch
    from torch import nn

    if not isinstance(module, nn.Module):
        raise TypeError(f"from_torch expects a torch.nn.Module, got {type(module).__name__}")
    found = []
    _torch_walk(module, "", found)
    if not found:
        raise ValueError(f"{type(module).__name__} has no layers relprop can use")
    net = Sequential(_chain(found, input_shape), input_shape=input_shape)
    if check:
        dtype = net.layers[0].weight.dtype if net.layers[0].linear else np.float32
        x = _probe(net.input_shape, dtype)
        modes = {m: m.training for m in module.modules()}
        param = next(module.parameters(), None)
        try:
            module.eval()
            with torch.no_grad():
                xt = torch.from_numpy(x)
                if param is not None:
                    xt = xt.to(device=param.device, dtype=param.dtype)
                want = _np(module(xt))
        finally:
            for m, training in modes.items():
                m.training = training
        _self_check(net(x), want, "torch", rtol)
    return net


# --------------------------------------------------------------------------------------------
# ONNX
# --------------------------------------------------------------------------------------------
_ONNX_SUPPORTED = ("Gemm, MatMul(+Add), Conv, Relu, MaxPool, AveragePool, GlobalAveragePool, "
                   "Flatten, Reshape (as flatten), BatchNormalization, Dropout, Identity, "
                   "Softmax (last node only)")


def _import_onnx():
    """The onnx package, or ImportError saying how to install it."""
    try:
        import onnx
    except ImportError as exc:
        raise ImportError(f"reading ONNX models needs the onnx package ({exc}): "
                          "pip install 'relprop[onnx]'") from None
    return onnx


def _onnx_load(path_or_model):
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


def _topological(nodes, known):
    """Nodes in an order where every input is produced before use (Kahn's algorithm)."""
    producers = {o: i for i, n in enumerate(nodes) for o in n.output if o}
    order, done, ready = [], set(known), list(range(len(nodes)))
    placed = [False] * len(nodes)
    progress = True
    while progress:
        progress = False
        for i in ready:
            if placed[i]:
                continue
            if all(not x or x in done or x not in producers for x in nodes[i].input):
                placed[i] = True
                order.append(nodes[i])
                done.update(o for o in nodes[i].output if o)
                progress = True
    if len(order) != len(nodes):
        stuck = next(n for n, p in zip(nodes, placed) if not p)
        raise ValueError(f"ONNX graph has a cycle or a missing input at node {stuck.name!r} "
                         f"({stuck.op_type})")
    return order


def _symmetric_pads(attrs, kernel, where):
    """ONNX ``pads`` [top, left, bottom, right] (or auto_pad) as a symmetric (ph, pw)."""
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    strides = tuple(attrs.get("strides", (1, 1)))
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        if strides != (1, 1) or any((k - 1) % 2 for k in kernel):
            raise ValueError(f"{where}: auto_pad={auto} with strides {strides} and kernel "
                             f"{tuple(kernel)} pads asymmetrically; not supported")
        return tuple((k - 1) // 2 for k in kernel)
    if auto == "VALID":
        return (0, 0)
    if auto != "NOTSET":
        raise ValueError(f"{where}: auto_pad={auto!r} is not supported")
    pads = tuple(attrs.get("pads", (0, 0, 0, 0)))
    if len(pads) != 4 or pads[:2] != pads[2:]:
        raise ValueError(f"{where}: pads {list(pads)} are not 2-D symmetric "
                         "(relprop needs top == bottom and left == right)")
    return pads[:2]


def _window_attrs(attrs, where, default_stride=None):
    kernel = tuple(attrs.get("kernel_shape", ()))
    if len(kernel) != 2:
        raise ValueError(f"{where}: kernel_shape {list(kernel)} is not 2-D")
    if any(d != 1 for d in attrs.get("dilations", (1, 1))):
        raise ValueError(f"{where}: dilations {list(attrs['dilations'])} are not supported")
    if attrs.get("ceil_mode", 0):
        raise ValueError(f"{where}: ceil_mode=1 is not supported")
    strides = tuple(attrs.get("strides", default_stride or (1, 1)))
    return kernel, strides, _symmetric_pads(attrs, kernel, where)


class _OnnxReader:
    """Walks a linear chain of ONNX nodes and builds the relprop layers."""

    def __init__(self, model, where):
        from onnx import numpy_helper

        self.where = where
        g = model.graph
        self.consts = {}
        for t in g.initializer:
            try:
                self.consts[t.name] = numpy_helper.to_array(t)
            except (KeyError, ValueError, TypeError) as exc:  # unknown or inconsistent data type
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
        self.nodes = _topological(list(g.node), set(self.consts) | {self.input_name})
        self.layers, self.shape = [], self.input_shape
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

    def const(self, node, i, what):
        if i >= len(node.input) or not node.input[i]:
            return None
        name = node.input[i]
        if name not in self.consts:
            raise ValueError(f"{self._node(node)}: {what} ({name!r}) must be a constant "
                             "(an initializer)")
        return self.consts[name]

    @staticmethod
    def _node(node):
        return f"ONNX node {node.name!r} ({node.op_type})"

    def add(self, layer, node):
        try:
            if not isinstance(layer, L.BatchNorm):
                self.shape = tuple(layer.output_shape(self.shape))
            self.layers.append(layer)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{self._node(node)}: {exc}") from None

    def run(self):
        consumers = {}
        for n in self.nodes:
            for x in n.input:
                if x and x not in self.consts:
                    consumers.setdefault(x, []).append(n)
        current = self.input_name
        for k, node in enumerate(self.nodes):
            where = self._node(node)
            if node.op_type == "Constant":
                self._constant(node)
                continue
            data = [x for x in node.input if x and x not in self.consts]
            if data != [current]:
                raise ValueError(f"{where} takes {data}; relprop reads linear chains only "
                                 f"(each node consumes the previous node's output {current!r})")
            users = consumers.get(current, [])
            if len(users) != 1:
                raise ValueError(f"{where}: tensor {current!r} is used by "
                                 f"{[u.name for u in users]}; relprop reads linear chains only")
            if node.op_type == "Softmax":
                if any(n.op_type != "Constant" for n in self.nodes[k + 1:]):
                    raise ValueError(f"{where}: Softmax is only supported as the last node")
                self.softmax = True
            else:
                self._op(node, where)
            for extra in node.output[1:]:
                if extra and (extra in consumers or extra == self.output_name):
                    raise ValueError(f"{where}: its second output {extra!r} is used; "
                                     "not supported")
            current = node.output[0]
        if current != self.output_name:
            raise ValueError(f"{self.where}: the chain ends at {current!r}, not at the graph "
                             f"output {self.output_name!r}")
        if not self.layers:
            raise ValueError(f"{self.where}: the graph has no layers relprop can use")
        return self.layers

    def _constant(self, node):
        from onnx import numpy_helper

        attrs = {a.name: a for a in node.attribute}
        if "value" not in attrs:
            raise ValueError(f"{self._node(node)}: only tensor-valued Constant nodes are supported")
        self.consts[node.output[0]] = numpy_helper.to_array(attrs["value"].t)

    def _op(self, node, where):
        op, attrs = node.op_type, _attrs(node)
        if op == "Gemm":
            if attrs.get("transA", 0):
                raise ValueError(f"{where}: transA=1 is not supported")
            b = self.const(node, 1, "B")
            if b is None or b.ndim != 2:
                raise ValueError(f"{where}: B must be a 2-D constant")
            w = (b if attrs.get("transB", 0) else b.T) * attrs.get("alpha", 1.0)
            c = self.const(node, 2, "C")
            bias = None
            if c is not None:
                bias = self._vector(c * attrs.get("beta", 1.0), w.shape[0], where, "C")
            self.add(L.Dense(w, bias), node)
        elif op == "MatMul":
            b = self.const(node, 1, "the second input")
            if b.ndim != 2:
                raise ValueError(f"{where}: the weight must be 2-D, got shape {b.shape}")
            self.add(L.Dense(b.T), node)
        elif op == "Add":
            self._add_bias(node, where)
        elif op == "Conv":
            w = self.const(node, 1, "W")
            if w.ndim != 4:
                raise ValueError(f"{where}: only 2-D convolutions are supported (W shape "
                                 f"{w.shape})")
            if attrs.get("group", 1) != 1:
                raise ValueError(f"{where}: group={attrs['group']} is not supported")
            attrs.setdefault("kernel_shape", w.shape[2:])
            kernel, strides, pads = _window_attrs(attrs, where)
            if tuple(kernel) != tuple(w.shape[2:]):
                raise ValueError(f"{where}: kernel_shape {tuple(kernel)} disagrees with W of shape "
                                 f"{w.shape}")
            self.add(L.Conv2d(w, self.const(node, 2, "B"), strides, pads), node)
        elif op == "Relu":
            self.add(L.ReLU(), node)
        elif op in ("MaxPool", "AveragePool"):
            if op == "MaxPool" and attrs.get("storage_order", 0):
                raise ValueError(f"{where}: storage_order=1 is not supported")
            kernel, strides, pads = _window_attrs(attrs, where)
            if op == "AveragePool" and any(pads) and not attrs.get("count_include_pad", 0):
                raise ValueError(f"{where}: count_include_pad=0 with padding is not supported")
            cls = L.MaxPool2d if op == "MaxPool" else L.AvgPool2d
            self.add(cls(kernel, strides, pads), node)
        elif op == "GlobalAveragePool":
            self.add(L.GlobalAvgPool2d(), node)
        elif op == "Flatten":
            if attrs.get("axis", 1) != 1:
                raise ValueError(f"{where}: axis={attrs['axis']} is not supported (only 1)")
            self.add(L.Flatten(), node)
        elif op == "Reshape":
            self._reshape(node, where)
        elif op == "BatchNormalization":
            if attrs.get("training_mode", 0):
                raise ValueError(f"{where}: training_mode=1 is not supported")
            scale, shift, mean, var = (self.const(node, i, n) for i, n in
                                       enumerate(("scale", "B", "mean", "var"), start=1))
            cls = L.BatchNorm2d if len(self.shape) == 3 else L.BatchNorm1d
            bn = cls(scale, shift, mean, var, eps=float(attrs.get("epsilon", 1e-5)))
            _check_foldable(bn, self.layers[-1] if self.layers else None, where)
            self.add(bn, node)
        elif op in ("Dropout", "Identity"):
            pass
        else:
            raise ValueError(f"{where}: unsupported ONNX operator {op!r}; relprop reads "
                             f"{_ONNX_SUPPORTED}")

    @staticmethod
    def _vector(v, n, where, what):
        v = np.asarray(v)
        if v.size == 1:
            return np.full(n, v.reshape(()), dtype=v.dtype)
        if v.size != n or max(v.shape) != n:
            raise ValueError(f"{where}: {what} of shape {v.shape} is not a bias of length {n}")
        return v.reshape(n)

    def _add_bias(self, node, where):
        prev = self.layers[-1] if self.layers else None
        if not isinstance(prev, (L.Dense, L.Conv2d)):
            raise ValueError(f"{where}: Add is supported only as the bias of the MatMul/Gemm/Conv "
                             f"right before it, not after {prev!r}")
        c = next(self.consts[x] for x in node.input if x in self.consts)
        n = prev.weight.shape[0]
        if isinstance(prev, L.Conv2d) and c.ndim >= 3 and c.shape[-2:] != (1, 1):
            raise ValueError(f"{where}: Add of shape {c.shape} is not a per-channel bias")
        bias = self._vector(c, n, where, "Add operand").astype(prev.weight.dtype)
        if prev.bias is not None:
            bias = prev.bias + bias
        kw = {} if isinstance(prev, L.Dense) else {"stride": prev.stride, "padding": prev.padding}
        self.layers[-1] = type(prev)(prev.weight, bias, **kw)

    def _reshape(self, node, where):
        target = self.const(node, 1, "shape")
        flat = int(np.prod(self.shape))
        t = [int(v) for v in np.asarray(target).reshape(-1)]
        ok = len(t) == 2 and (t[1] == flat or (t[1] == -1 and t[0] in (0, -1) + (
            (self.batch,) if self.batch else ())))
        if not ok:
            raise ValueError(f"{where}: Reshape to {t} from per-sample shape {self.shape} is not "
                             "a flatten (n, -1); not supported")
        self.add(L.Flatten(), node)


def from_onnx(path_or_model, *, check=True, rtol=CHECK_RTOL) -> Sequential:
    """A relprop network from an ONNX model (a file path, bytes, or an ``onnx.ModelProto``).

    The graph is walked in topological order, with initializers (and Constant nodes) as the
    weights.  Supported: a linear chain (each node's output used once, by the next node) of
    Gemm, MatMul (+ Add as its bias), Conv, Relu, MaxPool, AveragePool, GlobalAveragePool,
    Flatten, Reshape to ``(n, -1)``, BatchNormalization (folded into the layer before),
    Dropout and Identity (skipped); a Softmax as the last node is dropped (relprop explains the
    scores before it).  The data input needs a fixed per-sample shape; element type float32 or
    float64.

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
    Sequential

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    ValueError
        A malformed or truncated file, an unsupported operator or attribute (the message names
        the operator and its node), a graph that is not a linear chain, or a failed self-check.
    ImportError
        The onnx package is not installed (``pip install 'relprop[onnx]'``).
    """
    onnx = _import_onnx()

    model, where = _onnx_load(path_or_model)
    try:
        onnx.checker.check_model(model)
    except Exception as exc:  # onnx.checker.ValidationError and protobuf errors
        first = (str(exc).strip().splitlines() or [""])[0]
        raise ValueError(f"{where}: invalid ONNX model ({type(exc).__name__}: {first})") from None
    reader = _OnnxReader(model, where)
    try:
        layers = reader.run()
    except TypeError as exc:  # e.g. an initializer of a non-numeric element type
        raise ValueError(f"{where}: {exc}") from None
    try:
        net = Sequential(layers, input_shape=reader.input_shape)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{where}: {exc}") from None
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
        x = _probe(net.input_shape, reader.dtype, n=n)
        try:
            want = sess.run(None, {reader.input_name: x})[0]
        except Exception as exc:  # onnxruntime's Fail/InvalidArgument: the graph is inconsistent
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ValueError(f"{where}: onnxruntime cannot run the model ({first})") from None
        got = net(x)
        if reader.softmax:
            got = _softmax(got)
        _self_check(got, want, "onnxruntime", rtol)
    return net


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


# --------------------------------------------------------------------------------------------
# scikit-learn
# --------------------------------------------------------------------------------------------
def from_sklearn(mlp, *, check=True, rtol=CHECK_RTOL) -> Sequential:
    """A relprop network from a fitted scikit-learn ``MLPClassifier`` or ``MLPRegressor``.

    The network outputs the scores before the output activation (the logits of a classifier:
    before softmax, or before the logistic function of a binary/multilabel classifier).  Only
    ``activation="relu"`` is supported.  ``coefs_[i]`` of shape ``(in, out)`` becomes the Dense
    weight ``coefs_[i].T``.

    Parameters
    ----------
    mlp : sklearn.neural_network.MLPClassifier or MLPRegressor
    check : bool
        Compare the output activation of relprop's scores with ``predict_proba`` (classifier)
        or ``predict`` (regressor) on a probe input.
    rtol : float
        Tolerance of the check, relative to the largest output magnitude.

    Returns
    -------
    Sequential

    Raises
    ------
    ValueError
        Another activation, an unfitted model, or a failed self-check.
    TypeError
        Not an MLPClassifier/MLPRegressor.
    """
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    if not isinstance(mlp, (MLPClassifier, MLPRegressor)):
        raise TypeError("from_sklearn expects an MLPClassifier or MLPRegressor, got "
                        f"{type(mlp).__name__}")
    if mlp.activation != "relu":
        raise ValueError(f"{type(mlp).__name__} has activation={mlp.activation!r}; relprop "
                         "supports 'relu' only")
    if not hasattr(mlp, "coefs_"):
        raise ValueError(f"{type(mlp).__name__} is not fitted (no coefs_)")
    layers = []
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        if i:
            layers.append(L.ReLU())
        layers.append(L.Dense(np.array(w.T), np.array(b)))
    net = Sequential(layers, input_shape=(mlp.coefs_[0].shape[0],))
    if check:
        x = _probe(net.input_shape, net.layers[0].weight.dtype, n=4)
        z = net(x)
        act = mlp.out_activation_
        if act == "softmax":
            got, want = _softmax(z), mlp.predict_proba(x)
        elif act == "logistic":
            p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
            got = np.hstack([1 - p, p]) if p.shape[1] == 1 else p
            want = mlp.predict_proba(x)
        elif act == "identity":
            got, want = z, np.asarray(mlp.predict(x)).reshape(z.shape)
        else:
            raise ValueError(f"{type(mlp).__name__} has an unsupported output activation "
                             f"{act!r}")
        _self_check(got, want, "scikit-learn", rtol)
    return net
