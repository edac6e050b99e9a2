"""Pooling and upsampling: MaxPool2d, AvgPool2d, GlobalAvgPool2d, AdaptiveAvgPool2d, their 1-D
forms MaxPool1d, AvgPool1d, AdaptiveAvgPool1d (signals: the 2-D kernels on (c, 1, L) planes),
and Upsample.

A pooling whose window is one element moved one element at a time is the identity, and every
importer skips it alike (:func:`pool_layer`, :func:`adaptive_avg_pool`); likewise an importer
drops ``ceil_mode`` and ``count_include_pad=False`` where they change nothing on the input
shape it reads."""
from __future__ import annotations

import numpy as np

from .. import ops
from .._validate import as_pair, as_window
from .base import (
    LAYER_TYPES,
    Layer,
    OnnxOp,
    TorchFunction,
    TorchMethod,
    TorchModule,
    cfg_int,
    cfg_pair,
    numel,
    pair_text,
    plane_window,
    register_layer,
    single,
    window_out,
)


def _flag(value, name):
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return bool(value)


def pool_size(n, k, s, p, ceil_mode):
    """torch's pooling output size on ``n`` inputs: ``(n + 2p - k) / s`` rounded down (or up,
    ``ceil_mode``) plus one, less a last window that would start past the input and its left
    padding (0 where no window fits)."""
    span = n + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    return out - 1 if ceil_mode and (out - 1) * s >= n + p else max(out, 0)


def _plane(rank, kernel, stride, padding):
    """A window as pairs: a 1-D pooling's (ints) on the (1, L) planes its kernels run on."""
    if rank == 2:
        return tuple(kernel), tuple(stride), tuple(padding)
    return (1, kernel), (1, stride), (0, padding)


def _text(v):
    return pair_text(v) if isinstance(v, tuple) else str(v)


class Pool(Layer):
    """A pooling window over a sample's last ``rank`` axes (2: pairs, 1: ints): ``kernel_size``,
    ``stride`` (default: the kernel size), ``padding`` (at most half the kernel) and
    ``ceil_mode`` (torch's: output sizes rounded up instead of down, less a last window that
    would start past the input and its left padding; the last windows may then reach past the
    padding, where they read nothing).  A 1-D pooling runs the 2-D kernels on its samples seen
    as ``(c, 1, L)`` planes (views), the window ``(1, k)``."""

    rank = 2
    _SHAPES = {2: "(channels, height, width)", 1: "(channels, length)"}

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        arg = as_pair if self.rank == 2 else as_window
        self.kernel_size = arg(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else arg(stride, "stride", minimum=1)
        self.padding = arg(padding, "padding", minimum=0)
        self.ceil_mode = _flag(ceil_mode, "ceil_mode")
        kernel, _, pads = self.window()
        if any(2 * p > k for p, k in zip(pads, kernel)):
            raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most half "
                             f"of kernel_size {self.kernel_size}")

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_pair(cfg, "kernel_size"), cfg_pair(cfg, "stride"),
                   cfg_pair(cfg, "padding"), **cls._flags(cfg))

    @classmethod
    def _flags(cls, cfg):
        """The keyword arguments of the flags in ``cfg`` (a model file's)."""
        val = cfg.get("ceil_mode", False)
        if not isinstance(val, bool):
            raise ValueError(f"has a bad 'ceil_mode': {val!r}")
        return {"ceil_mode": val}

    def config(self):
        value = list if self.rank == 2 else int
        cfg = {"kernel_size": value(self.kernel_size), "stride": value(self.stride),
               "padding": value(self.padding)}
        if self.ceil_mode:  # written where it differs from the default, as Conv2d's dilation
            cfg["ceil_mode"] = True
        return cfg

    def describe(self):
        return (f"{type(self).__name__} {_text(self.kernel_size)} stride "
                f"{_text(self.stride)} pad {_text(self.padding)}"
                + (" ceil" if self.ceil_mode else ""))

    def flops(self, in_shapes, out_shape):
        return numel(out_shape) * numel(self.window()[0])

    def window(self):
        """``(kernel, stride, padding)`` as pairs (a 1-D pooling's on its planes)."""
        return _plane(self.rank, self.kernel_size, self.stride, self.padding)

    def kernel_args(self):
        """The keyword arguments of the pooling kernels (``relprop.ops``)."""
        kernel, stride, padding = self.window()
        return {"kernel": kernel, "stride": stride, "padding": padding,
                "ceil_mode": self.ceil_mode}

    def planes(self, a):
        """An input or output ``(n, c, ...)`` as the ``(n, c, h, w)`` planes of the kernels."""
        return a if self.rank == 2 else a.reshape(a.shape[:2] + (1,) + a.shape[2:])

    def unplanes(self, a):
        """The inverse of :meth:`planes`."""
        return a if self.rank == 2 else a.reshape(a.shape[:2] + a.shape[3:])

    def plane_hw(self, shape):
        """The plane size ``(h, w)`` of an input of ``shape`` (with or without the batch)."""
        return tuple(shape[-2:]) if self.rank == 2 else (1, shape[-1])

    def output_shape(self, shape):
        self._need_rank(shape, self.rank + 1, self._SHAPES[self.rank])
        kernel, stride, padding = self.window()
        hw = self.plane_hw(shape)
        if not self.ceil_mode:
            out = window_out(self, hw, kernel, stride, padding)
        else:
            out = tuple(pool_size(*a, True) for a in zip(hw, kernel, stride, padding))
            if min(out) < 1:
                raise ValueError(f"{self!r}: no window fits the padded input "
                                 f"{tuple(n + 2 * p for n, p in zip(hw, padding))}")
        return (shape[0],) + out[2 - self.rank:]


def is_identity_window(kernel, stride, padding):
    """A pooling whose window is one element, moved one element at a time: the identity."""
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def pool_layer(cls, ctx, kernel, stride, padding, ceil_mode=False, **flags):
    """``cls(kernel, stride, padding, ceil_mode, **flags)`` for an importer (pairs, or ints for
    a 1-D pooling), or None where the window is the identity; ``ceil_mode`` is dropped where
    the output on the input shape ``ctx.shape`` is the same without it."""
    window = _plane(cls.rank, kernel, stride, padding)
    if is_identity_window(*window):
        return None
    shape = ctx.shape
    hw = shape[1:] if cls.rank == 2 else (1,) + tuple(shape[1:])
    if ceil_mode and len(shape) == cls.rank + 1 and all(
            pool_size(*a, True) == pool_size(*a, False) for a in zip(hw, *window)):
        ceil_mode = False
    return cls(kernel, stride, padding, bool(ceil_mode), **flags)


def _torch_pool(cls, a, ctx, **flags):
    """The pooling layer of a torch call's (or module's) arguments ``a``."""
    if ctx.pair(a.get("dilation", 1), "dilation") != (1, 1):
        raise ctx.error(f"pooling with dilation={a['dilation']} is not supported")
    arg = ctx.pair if cls.rank == 2 else (lambda v, name: single(v, name, ctx))
    return pool_layer(cls, ctx, arg(a["kernel_size"], "kernel_size"),
                      arg(a["stride"] or a["kernel_size"], "stride"),
                      arg(a["padding"], "padding"), a["ceil_mode"], **flags)


_MAX_POOL_PARAMS = ("input", "kernel_size", ("stride", None), ("padding", 0), ("dilation", 1),
                    ("ceil_mode", False), ("return_indices", False))
_AVG_POOL_PARAMS = ("input", "kernel_size", ("stride", None), ("padding", 0), ("ceil_mode", False),
                    ("count_include_pad", True), ("divisor_override", None))


def _attributes(m, params):
    """The attributes of the pooling module ``m`` named as its function's ``params`` (torch's
    modules keep them under those names)."""
    return {name: getattr(m, name) for name in (p if isinstance(p, str) else p[0]
                                                for p in params[1:])}


def _torch_entries(name, functions, params, convert):
    """A pooling's torch entries: the module ``nn.<name>`` and the ``functions`` taking
    ``params``, read by ``convert(cls, a, ctx)`` with ``cls`` the layer type named ``name``
    (looked up when a model is imported, as the class is being defined here)."""
    def read(a, ctx):
        return convert(globals()[name], a, ctx)
    return (TorchModule((name,), lambda m, ctx: read(_attributes(m, params), ctx)),
            TorchFunction(functions, params, read))


def _torch_max_pool(cls, a, ctx):
    if a["return_indices"]:
        raise ctx.error("return_indices=True is not supported")
    return _torch_pool(cls, a, ctx)


def _onnx_pool(ctx, two, one):
    """The layer of an ONNX pooling: the 2-D layer type ``two``, or ``one`` for a 1-D
    kernel_shape (its window read as its planes')."""
    if ctx.attrs.get("storage_order", 0):
        raise ctx.error("storage_order=1 is not supported")
    cls = two
    if len(ctx.attrs.get("kernel_shape", ())) == 1:
        cls = one
        plane_window(ctx.attrs)
    window = ctx.window(pooling=True)[:3]
    if cls.rank == 1:
        window = tuple(v[1] for v in window)
    flags = {}
    if issubclass(cls, AvgPool):  # ONNX's default is count_include_pad=0, torch's True
        flags["count_include_pad"] = bool(ctx.attrs.get("count_include_pad", 0))
    return pool_layer(cls, ctx, *window, ctx.attrs.get("ceil_mode", 0), **flags)


def _adaptive_sizes(shape, size, ctx, what):
    """``(sizes, out)``: the input's and the output's sizes (pairs, or 1-tuples for a signal) of
    an adaptive ``what`` pooling to ``size`` on per-sample input ``shape``: ``(c, h, w)`` and a
    pair (``None`` in it keeps that input size), or ``(c, L)`` and an int."""
    if len(shape) not in (2, 3):
        raise ctx.error(f"adaptive {what} pooling expects (channels, height, width) or "
                        f"(channels, length) per sample, got shape {tuple(shape)}")
    sizes = tuple(shape[1:])
    out = tuple(n if o is None else int(o)
                for n, o in zip(sizes, (size,) if len(sizes) == 1 else size))
    if min(out) <= 0:
        raise ctx.error(f"output size {out if len(out) == 2 else out[0]} must be positive")
    return sizes, out


def adaptive_avg_pool(shape, size, ctx):
    """The layer of an adaptive average pooling to ``size`` on per-sample input ``shape``
    (:func:`_adaptive_sizes`).  None where it is the identity (``size`` is the input size);
    GlobalAvgPool2d for (1, 1); an AvgPool2d (AvgPool1d) where ``size`` divides the input, a 1-D
    one to 1 excepted; else AdaptiveAvgPool2d (AdaptiveAvgPool1d)."""
    sizes, out = _adaptive_sizes(shape, size, ctx, "average")
    if out == sizes:
        return None
    if len(out) == 1:
        return AvgPool1d(sizes[0] // out[0]) if sizes[0] % out[0] == 0 and out[0] > 1 else \
            AdaptiveAvgPool1d(out[0])
    if out == (1, 1):
        return GlobalAvgPool2d()
    if all(n % o == 0 for n, o in zip(sizes, out)):
        return AvgPool2d(tuple(n // o for n, o in zip(sizes, out)))
    return AdaptiveAvgPool2d(out)


def adaptive_max_pool(shape, size, ctx, return_indices=False):
    """The layer of an adaptive max pooling to ``size`` on per-sample input ``shape``
    (:func:`_adaptive_sizes`): None where it is the identity; where ``size`` divides the input,
    the MaxPool2d (MaxPool1d) whose windows tile it, torch's adaptive windows then; else
    ValueError (torch's windows would overlap or differ in size)."""
    if return_indices:
        raise ctx.error("return_indices=True is not supported")
    sizes, out = _adaptive_sizes(shape, size, ctx, "max")
    if out == sizes:
        return None
    if any(n % o for n, o in zip(sizes, out)):
        raise ctx.error(f"adaptive max pooling to {out if len(out) == 2 else out[0]} of "
                        f"per-sample shape {tuple(shape)} is not supported (only to sizes that "
                        "divide the input's)")
    kernel = tuple(n // o for n, o in zip(sizes, out))
    return MaxPool2d(kernel) if len(kernel) == 2 else MaxPool1d(kernel[0])


def _global(shape):
    """The output size of a global pooling of per-sample ``shape``."""
    return 1 if len(shape) == 2 else (1, 1)


def _spatial(ctx, axes, keepdims, what, pool):
    """``x.<what>(axes)`` over height and width, or a signal's length: the global pooling
    ``pool(shape, size, ctx)`` (and a Flatten unless ``keepdims``)."""
    shape = ctx.shape
    rank = len(shape) + 1
    want = [2, 3] if len(shape) == 3 else [2]
    if len(shape) not in (2, 3) or axes is None or sorted(a % rank for a in axes) != want:
        raise ctx.error(f"{what} over {axes} of per-sample shape {tuple(shape)} is not supported "
                        "(only over height and width, (2, 3), or a signal's length, 2)")
    # by kind: layers.shape imports lead back here (shape, merges, normalization, linear)
    flatten = LAYER_TYPES["flatten"]
    return [pool(shape, _global(shape), ctx)] + ([] if keepdims else [flatten()])


def _dims(dims):
    return (dims,) if isinstance(dims, int) else (None if dims is None else tuple(dims))


def _torch_mean(a, ctx):
    if a["dtype"] is not None:
        raise ctx.error(f"mean with dtype={a['dtype']} is not supported")
    return _spatial(ctx, _dims(a["dim"]), a["keepdim"], "mean", adaptive_avg_pool)


def _torch_amax(a, ctx):
    return _spatial(ctx, _dims(a["dim"]) or None, a["keepdim"], "amax", adaptive_max_pool)


def _onnx_reduce(what, pool):
    """The converter of ONNX ReduceMean or ReduceMax: a global pooling (:func:`_spatial`)."""
    def convert(ctx):
        axes = ctx.const(1, "axes", required=False) if ctx.opset >= 18 else \
            ctx.attrs.get("axes", None)
        axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
        return _spatial(ctx, axes, ctx.attrs.get("keepdims", 1), what, pool)
    return convert


_MEAN = (("input", ("dim", None), ("keepdim", False), ("dtype", None)), _torch_mean)
_AMAX = (("input", ("dim", ()), ("keepdim", False)), _torch_amax)
_ADAPTIVE_MAX = ("input", "output_size", ("return_indices", False))


class MaxPool(Pool):
    """Max pooling as torch's; ties go to the first maximum in the window (row-major).  LRP gives
    a window's relevance to its winner (winner-take-all: the gradient)."""

    slots = ("maxpool",)
    default_rule = "winner_take_all"

    def forward(self, x):
        y, winners = ops.maxpool2d_forward(self.planes(x), **self.kernel_args())
        return self.unplanes(y), winners

    def backward(self, g, x, state, relu_mode="gradient"):
        return self.unplanes(ops.maxpool2d_backward(
            self.planes(g), state, self.plane_hw(x.shape), **self.kernel_args()))


@register_layer
class MaxPool2d(MaxPool):
    """Max pooling as ``torch.nn.MaxPool2d``; also what an adaptive or global max pooling is
    where its output size divides the input (:func:`adaptive_max_pool`)."""

    kind = "maxpool2d"
    imports = _torch_entries("MaxPool2d", ("torch.nn.functional.max_pool2d",
                                           "torch.nn.functional._max_pool2d", "torch.max_pool2d"),
                             _MAX_POOL_PARAMS, _torch_max_pool) + (
        OnnxOp(("MaxPool",), lambda ctx: _onnx_pool(ctx, MaxPool2d, MaxPool1d)),
        # adaptive max poolings to sizes that divide the input, global ones (a signal's too)
        TorchModule(("AdaptiveMaxPool2d",), lambda m, ctx: adaptive_max_pool(
            ctx.shape, ctx.pair(m.output_size, "output_size"), ctx, m.return_indices)),
        TorchFunction(("torch.nn.functional.adaptive_max_pool2d",), _ADAPTIVE_MAX,
                      lambda a, ctx: adaptive_max_pool(
                          ctx.shape, ctx.pair(ctx.constant(a["output_size"], "output_size"),
                                              "output_size"), ctx, a["return_indices"])),
        TorchFunction(("torch.amax",), *_AMAX),
        TorchMethod(("amax",), *_AMAX),
        OnnxOp(("GlobalMaxPool",),
               lambda ctx: adaptive_max_pool(ctx.shape, _global(ctx.shape), ctx)),
        OnnxOp(("ReduceMax",), _onnx_reduce("max", adaptive_max_pool)),
    )


@register_layer
class MaxPool1d(MaxPool):
    """Max pooling as ``torch.nn.MaxPool1d`` (ONNX MaxPool with a 1-D kernel, GlobalMaxPool and
    ReduceMax of a signal are read by MaxPool2d's entries); also ``AdaptiveMaxPool1d`` where its
    output size divides the input."""

    kind = "maxpool1d"
    rank = 1
    imports = _torch_entries("MaxPool1d", ("torch.nn.functional.max_pool1d",
                                           "torch.nn.functional._max_pool1d", "torch.max_pool1d"),
                             _MAX_POOL_PARAMS, _torch_max_pool) + (
        TorchModule(("AdaptiveMaxPool1d",), lambda m, ctx: adaptive_max_pool(
            ctx.shape, single(m.output_size, "output_size", ctx), ctx, m.return_indices)),
        TorchFunction(("torch.nn.functional.adaptive_max_pool1d",), _ADAPTIVE_MAX,
                      lambda a, ctx: adaptive_max_pool(
                          ctx.shape, single(a["output_size"], "output_size", ctx), ctx,
                          a["return_indices"])),
    )


class AvgPool(Layer):
    """Average poolings: the Norm rule (Epsilon with the pooling as the linear map)."""

    slots = ("avgpool",)
    default_rule = "norm"


def _torch_avg_pool(cls, a, ctx):
    if a.get("divisor_override") is not None:
        raise ctx.error(f"divisor_override={a['divisor_override']} is not supported")
    return _torch_pool(cls, a, ctx, count_include_pad=bool(a["count_include_pad"]))


class WindowAvgPool(AvgPool, Pool):
    """Average pooling as torch's: each window's sum over its count, the window's taps inside
    the input plus, with ``count_include_pad`` (the default), those in the zero padding; the
    taps past the padding that ``ceil_mode`` adds are never counted."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        # without padding the count is the window's taps in the input either way
        self.count_include_pad = (_flag(count_include_pad, "count_include_pad")
                                  or not any(self.window()[2]))

    @classmethod
    def _flags(cls, cfg):
        val = cfg.get("count_include_pad", True)
        if not isinstance(val, bool):
            raise ValueError(f"has a bad 'count_include_pad': {val!r}")
        return {**super()._flags(cfg), "count_include_pad": val}

    def config(self):
        cfg = super().config()
        if not self.count_include_pad:
            cfg["count_include_pad"] = False
        return cfg

    def describe(self):
        return super().describe() + ("" if self.count_include_pad else " pad uncounted")

    def kernel_args(self):
        return {**super().kernel_args(), "count_include_pad": self.count_include_pad}

    def forward(self, x):
        return self.unplanes(ops.avgpool2d_forward(self.planes(x), **self.kernel_args())), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return self.unplanes(ops.avgpool2d_backward(
            self.planes(g), self.plane_hw(x.shape), **self.kernel_args()))


@register_layer
class AvgPool2d(WindowAvgPool):
    """Average pooling as ``torch.nn.AvgPool2d``."""

    kind = "avgpool2d"
    imports = _torch_entries("AvgPool2d", ("torch.nn.functional.avg_pool2d",), _AVG_POOL_PARAMS,
                             _torch_avg_pool) + (
        OnnxOp(("AveragePool",), lambda ctx: _onnx_pool(ctx, AvgPool2d, AvgPool1d)),)


@register_layer
class AvgPool1d(WindowAvgPool):
    """Average pooling as ``torch.nn.AvgPool1d`` (ONNX AveragePool with a 1-D kernel is read by
    AvgPool2d's entry)."""

    kind = "avgpool1d"
    rank = 1
    imports = _torch_entries("AvgPool1d", ("torch.nn.functional.avg_pool1d", "torch.avg_pool1d"),
                             _AVG_POOL_PARAMS[:-1], _torch_avg_pool)  # no divisor_override




@register_layer
class GlobalAvgPool2d(AvgPool):
    """Mean over height and width: ``(n, c, h, w) -> (n, c, 1, 1)`` (``AdaptiveAvgPool2d(1)``,
    ``x.mean((2, 3))``).  Its entries read a signal's mean too (``x.mean(2)``, ONNX
    GlobalAveragePool and ReduceMean on ``(n, c, L)``: AdaptiveAvgPool1d(1))."""

    kind = "globalavgpool2d"
    imports = (
        TorchFunction(("torch.mean",), *_MEAN),
        TorchMethod(("mean",), *_MEAN),
        OnnxOp(("GlobalAveragePool",),
               lambda ctx: adaptive_avg_pool(ctx.shape, _global(ctx.shape), ctx)),
        OnnxOp(("ReduceMean",), _onnx_reduce("mean", adaptive_avg_pool)),
    )

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        return (shape[0], 1, 1)

    def flops(self, in_shapes, out_shape):
        return numel(in_shapes[0])

    @staticmethod
    def window(x_shape):
        hw = tuple(int(s) for s in x_shape[-2:])
        return hw, hw, (0, 0)

    def forward(self, x):
        return ops.avgpool2d_forward(x, *self.window(x.shape)), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.avgpool2d_backward(g, x.shape[2:], *self.window(x.shape))


@register_layer
class AdaptiveAvgPool2d(AvgPool):
    """``torch.nn.AdaptiveAvgPool2d(output_size)``: output ``(i, j)`` averages the input rows
    ``[floor(i h / oh), ceil((i + 1) h / oh))`` and likewise the columns (any output size,
    also larger than the input).  The importers make it only where no simpler pooling is the
    same (:func:`adaptive_avg_pool`)."""

    kind = "adaptiveavgpool2d"
    imports = (
        TorchModule(("AdaptiveAvgPool2d",), lambda m, ctx: adaptive_avg_pool(
            ctx.shape, ctx.pair(m.output_size, "output_size"), ctx)),
        TorchFunction(("torch.nn.functional.adaptive_avg_pool2d",), ("input", "output_size"),
                      lambda a, ctx: adaptive_avg_pool(
                          ctx.shape, ctx.pair(ctx.constant(a["output_size"], "output_size"),
                                              "output_size"), ctx)),
    )

    def __init__(self, output_size):
        self.output_size = as_pair(output_size, "output_size", minimum=1)

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_pair(cfg, "output_size"))

    def config(self):
        return {"output_size": list(self.output_size)}

    def describe(self):
        return f"AdaptiveAvgPool2d {pair_text(self.output_size)}"

    def flops(self, in_shapes, out_shape):
        c, h, w = in_shapes[0]
        oh, ow = self.output_size
        # each output sums a window of at most ceil(h / oh) + 1 rows and columns
        return c * oh * ow * (-(-h // oh) + 1) * (-(-w // ow) + 1)

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        return (shape[0],) + self.output_size

    def forward(self, x):
        return ops.adaptive_avgpool2d_forward(x, self.output_size), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.adaptive_avgpool2d_backward(g, x.shape[2:])


@register_layer
class AdaptiveAvgPool1d(AvgPool):
    """``torch.nn.AdaptiveAvgPool1d(output_size)``: output ``i`` averages the inputs
    ``[floor(i L / o), ceil((i + 1) L / o))`` (any output size), by the 2-D kernels on
    ``(c, 1, L)`` planes.  The importers make it where no simpler pooling is the same
    (:func:`adaptive_avg_pool`: the identity, an AvgPool1d where the size divides the input),
    and for a signal's mean (``x.mean(2)``, ONNX GlobalAveragePool and ReduceMean)."""

    kind = "adaptiveavgpool1d"
    imports = (
        TorchModule(("AdaptiveAvgPool1d",), lambda m, ctx: adaptive_avg_pool(
            ctx.shape, single(m.output_size, "output_size", ctx), ctx)),
        TorchFunction(("torch.nn.functional.adaptive_avg_pool1d", "torch.adaptive_avg_pool1d"),
                      ("input", "output_size"), lambda a, ctx: adaptive_avg_pool(
                          ctx.shape, single(a["output_size"], "output_size", ctx), ctx)),
    )

    def __init__(self, output_size):
        self.output_size = as_window(output_size, "output_size", minimum=1)

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_int(cfg, "output_size"))

    def config(self):
        return {"output_size": self.output_size}

    def describe(self):
        return f"AdaptiveAvgPool1d {self.output_size}"

    def flops(self, in_shapes, out_shape):
        c, length = in_shapes[0]
        return c * self.output_size * (-(-length // self.output_size) + 1)

    def output_shape(self, shape):
        self._need_rank(shape, 2, "(channels, length)")
        return (shape[0], self.output_size)

    def forward(self, x):
        y = ops.adaptive_avgpool2d_forward(x[:, :, None], (1, self.output_size))
        return y.reshape(y.shape[:2] + y.shape[3:]), None

    def backward(self, g, x, state, relu_mode="gradient"):
        gx = ops.adaptive_avgpool2d_backward(g[:, :, None], (1, x.shape[2]))
        return gx.reshape(x.shape)


# --- upsampling ---------------------------------------------------------------------------------
def _scale_pair(v, name):
    """A scale factor (a number or a pair) as a pair of positive floats."""
    from .._validate import as_scalar

    pair = tuple(v) if isinstance(v, (tuple, list)) else (v, v)
    if len(pair) != 2:
        raise ValueError(f"{name} must be a number or a pair, got {v!r}")
    out = tuple(as_scalar(s, name) for s in pair)
    if min(out) <= 0:
        raise ValueError(f"{name} must be positive, got {v!r}")
    return out


def upsample_layer(ctx, size, scale, mode, align_corners, recompute=False):
    """The layer of ``F.interpolate(x, size, scale_factor, mode, align_corners,
    recompute_scale_factor)`` on the importer's input, or None where it is the identity."""
    shape = ctx.shape
    if len(shape) != 3:
        raise ctx.error(f"upsampling expects (channels, height, width) per sample, got "
                        f"{tuple(shape)}")
    if mode not in ops.UPSAMPLE_MODES:
        raise ctx.error(f"mode={mode!r} is not supported (only {', '.join(ops.UPSAMPLE_MODES)})")
    if (size is None) == (scale is None):
        raise ctx.error("needs a size or a scale_factor (one of them)")
    try:
        if scale is not None and recompute:  # torch then interpolates by the sizes
            sf = _scale_pair(scale, "scale_factor")
            size, scale = tuple(int(np.floor(float(n) * s)) for n, s in zip(shape[1:], sf)), None
        layer = Upsample(size=size, scale_factor=scale, mode=mode,
                         align_corners=bool(align_corners) and mode == "bilinear")
        out = layer.output_shape(shape)
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None
    return None if out == tuple(shape) else layer


def _torch_interpolate(a, ctx):
    if a.get("antialias"):
        raise ctx.error("antialias=True is not supported")
    size, scale = ctx.constant(a["size"], "size"), ctx.constant(a["scale_factor"], "scale_factor")
    return upsample_layer(ctx, size, scale, a["mode"], a["align_corners"],
                          a.get("recompute_scale_factor"))


def _onnx_resize(ctx):
    def text(name, default):
        v = ctx.attrs.get(name, default)
        return v.decode() if isinstance(v, bytes) else v

    mode, transform = text("mode", "nearest"), text("coordinate_transformation_mode", "half_pixel")
    if ctx.attrs.get("antialias", 0) or ctx.attrs.get("axes") is not None:
        raise ctx.error("antialias and axes are not supported")
    nearest = text("nearest_mode", "round_prefer_floor")
    if mode == "nearest" and transform == "asymmetric" and nearest == "floor":
        mode, align = "nearest", False  # torch's nearest
    elif mode == "linear" and transform in ("align_corners", "pytorch_half_pixel", "half_pixel"):
        mode, align = "bilinear", transform == "align_corners"
    else:
        raise ctx.error(f"mode={mode!r} with coordinate_transformation_mode={transform!r} is not "
                        "supported (torch's nearest and bilinear: asymmetric/floor, "
                        "align_corners, pytorch_half_pixel)")
    scales = ctx.const(2, "scales", required=False)
    if scales is not None and scales.size:
        scales = [float(s) for s in scales.reshape(-1)]
        if len(scales) != 4 or scales[:2] != [1.0, 1.0]:
            raise ctx.error(f"scales {scales} resize the batch or the channels")
        return upsample_layer(ctx, None, tuple(scales[2:]), mode, align)
    sizes = ctx.targets(3, "sizes")
    if any(len(s) != 4 or s[1] != ctx.shape[0] or s[2:] != sizes[0][2:] for s in sizes) or \
            any(s[0] != b for s, b in zip(sizes, ctx.worlds)):
        raise ctx.error(f"sizes {sizes[0]} resize the batch or the channels")
    return upsample_layer(ctx, tuple(sizes[0][2:]), None, mode, align)


_INTERPOLATE = ("input", ("size", None), ("scale_factor", None), ("mode", "nearest"),
                ("align_corners", None), ("recompute_scale_factor", None), ("antialias", False))


def _torch_upsample_module(m, ctx, mode=None, align=None):
    return upsample_layer(ctx, m.size, m.scale_factor, mode or m.mode,
                          m.align_corners if align is None else align,
                          getattr(m, "recompute_scale_factor", None))


@register_layer
class Upsample(Layer):
    """Upsampling of each channel's plane as ``torch.nn.Upsample`` and ``F.interpolate``: to
    ``size`` or by ``scale_factor`` (a number or a pair; the output ``floor(h * scale)``),
    ``mode`` "nearest" or "bilinear" (``align_corners``: the corner pixels aligned, else the
    pixel centres), with torch's source positions (``ops.upsample2d_forward``).

    Zennit hooks no upsampling: gradient and relevance (Pass) cross it through its transpose,
    which conserves relevance (each output's weights sum to one: nearest copies sum back)."""

    kind = "upsample"
    slots = ("upsample",)
    default_rule = "pass"
    remakable = True
    imports = (
        TorchModule(("Upsample",), _torch_upsample_module),
        TorchModule(("UpsamplingNearest2d",),
                    lambda m, ctx: _torch_upsample_module(m, ctx, "nearest", False)),
        TorchModule(("UpsamplingBilinear2d",),
                    lambda m, ctx: _torch_upsample_module(m, ctx, "bilinear", True)),
        TorchFunction(("torch.nn.functional.interpolate", "torch.nn.functional.upsample"),
                      _INTERPOLATE, _torch_interpolate),
        TorchFunction(("torch.nn.functional.upsample_nearest",),
                      ("input", ("size", None), ("scale_factor", None)),
                      lambda a, ctx: _torch_interpolate(dict(a, mode="nearest",
                                                             align_corners=None), ctx)),
        TorchFunction(("torch.nn.functional.upsample_bilinear",),
                      ("input", ("size", None), ("scale_factor", None)),
                      lambda a, ctx: _torch_interpolate(dict(a, mode="bilinear",
                                                             align_corners=True), ctx)),
        OnnxOp(("Resize",), _onnx_resize),
    )

    def __init__(self, size=None, scale_factor=None, mode="nearest", align_corners=False):
        if (size is None) == (scale_factor is None):
            raise ValueError("Upsample needs a size or a scale_factor (one of them)")
        self.size = None if size is None else as_pair(size, "size", minimum=1)
        self.scale_factor = None if scale_factor is None else _scale_pair(scale_factor,
                                                                           "scale_factor")
        if mode not in ops.UPSAMPLE_MODES:
            raise ValueError(f"Upsample mode must be one of {ops.UPSAMPLE_MODES}, got {mode!r}")
        self.mode, self.align_corners = mode, _flag(align_corners, "align_corners")
        if self.align_corners and mode != "bilinear":
            raise ValueError("Upsample align_corners applies to mode='bilinear' only")

    @classmethod
    def from_config(cls, cfg, arrays):
        size, scale = cfg.get("size"), cfg.get("scale_factor")
        return cls(None if size is None else cfg_pair(cfg, "size"), scale, cfg.get("mode"),
                   cfg.get("align_corners", False))

    def config(self):
        cfg = {"mode": self.mode}
        if self.size is not None:
            cfg["size"] = list(self.size)
        else:
            cfg["scale_factor"] = list(self.scale_factor)
        if self.align_corners:
            cfg["align_corners"] = True
        return cfg

    def describe(self):
        how = (f"to {pair_text(self.size)}" if self.size is not None else
               f"x{self.scale_factor[0]:g}" if self.scale_factor[0] == self.scale_factor[1] else
               f"x{self.scale_factor[0]:g}x{self.scale_factor[1]:g}")
        return f"Upsample {self.mode} {how}" + (" align corners" if self.align_corners else "")

    def _out(self, hw):
        if self.size is not None:
            return self.size
        out = tuple(int(np.floor(float(n) * s)) for n, s in zip(hw, self.scale_factor))
        if min(out) < 1:
            raise ValueError(f"{self!r} makes no output of an input of {tuple(hw)}")
        return out

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        return (shape[0],) + self._out(shape[1:])

    def flops(self, in_shapes, out_shape):
        return 6 * numel(out_shape) if self.mode == "bilinear" else 0  # nearest copies

    def forward(self, x):
        return ops.upsample2d_forward(x, self._out(x.shape[2:]), self.mode, self.align_corners,
                                      self.scale_factor), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.upsample2d_backward(g, x.shape[2:], self.mode, self.align_corners,
                                       self.scale_factor)
