"""Pooling: MaxPool2d, AvgPool2d, GlobalAvgPool2d, AdaptiveAvgPool2d.

A pooling whose window is one element moved one element at a time is the identity, and every
importer skips it alike (:func:`pool_layer`, :func:`adaptive_avg_pool`); likewise an importer
drops ``ceil_mode`` and ``count_include_pad=False`` where they change nothing on the input
shape it reads."""
from __future__ import annotations

import numpy as np

from .. import ops
from .._validate import as_pair
from .base import (
    Layer,
    OnnxOp,
    TorchFunction,
    TorchMethod,
    TorchModule,
    cfg_pair,
    numel,
    pair_text,
    register_layer,
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


class Pool(Layer):
    """A pooling window: ``kernel_size``, ``stride`` (default: the kernel size), ``padding``
    (at most half the kernel) and ``ceil_mode`` (torch's: output sizes rounded up instead of
    down, less a last window that would start past the input and its left padding; the last
    windows may then reach past the padding, where they read nothing)."""

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False):
        self.kernel_size = as_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride", minimum=1)
        self.padding = as_pair(padding, "padding", minimum=0)
        self.ceil_mode = _flag(ceil_mode, "ceil_mode")
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
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
        cfg = {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
               "padding": list(self.padding)}
        if self.ceil_mode:  # written where it differs from the default, as Conv2d's dilation
            cfg["ceil_mode"] = True
        return cfg

    def describe(self):
        return (f"{type(self).__name__} {pair_text(self.kernel_size)} stride "
                f"{pair_text(self.stride)} pad {pair_text(self.padding)}"
                + (" ceil" if self.ceil_mode else ""))

    def flops(self, in_shapes, out_shape):
        return numel(out_shape) * self.kernel_size[0] * self.kernel_size[1]

    def kernel_args(self):
        """The keyword arguments of the pooling kernels (``relprop.ops``)."""
        return {"kernel": self.kernel_size, "stride": self.stride, "padding": self.padding,
                "ceil_mode": self.ceil_mode}

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        if not self.ceil_mode:
            return (shape[0],) + window_out(self, shape[1:], self.kernel_size, self.stride,
                                            self.padding)
        out = tuple(pool_size(*a, True) for a in zip(shape[1:], self.kernel_size, self.stride,
                                                     self.padding))
        if min(out) < 1:
            raise ValueError(f"{self!r}: no window fits the padded input "
                             f"({shape[1] + 2 * self.padding[0]}, "
                             f"{shape[2] + 2 * self.padding[1]})")
        return (shape[0],) + out


def is_identity_window(kernel, stride, padding):
    """A pooling whose window is one element, moved one element at a time: the identity."""
    return tuple(kernel) == (1, 1) and tuple(stride) == (1, 1) and tuple(padding) == (0, 0)


def pool_layer(cls, ctx, kernel, stride, padding, ceil_mode=False, **flags):
    """``cls(kernel, stride, padding, ceil_mode, **flags)`` for an importer (pairs), or None
    where the window is the identity; ``ceil_mode`` is dropped where the output on the input
    shape ``ctx.shape`` is the same without it."""
    if is_identity_window(kernel, stride, padding):
        return None
    if ceil_mode and len(ctx.shape) == 3 and all(
            pool_size(*a, True) == pool_size(*a, False)
            for a in zip(ctx.shape[1:], kernel, stride, padding)):
        ceil_mode = False
    return cls(kernel, stride, padding, bool(ceil_mode), **flags)


def _torch_pool(cls, a, ctx, **flags):
    """The pooling layer of a torch call's (or module's) arguments ``a``."""
    if ctx.pair(a.get("dilation", 1), "dilation") != (1, 1):
        raise ctx.error(f"pooling with dilation={a['dilation']} is not supported")
    return pool_layer(cls, ctx, ctx.pair(a["kernel_size"], "kernel_size"),
                      ctx.pair(a["stride"] or a["kernel_size"], "stride"),
                      ctx.pair(a["padding"], "padding"), a["ceil_mode"], **flags)


_MAX_POOL_PARAMS = ("input", "kernel_size", ("stride", None), ("padding", 0), ("dilation", 1),
                    ("ceil_mode", False), ("return_indices", False))
_AVG_POOL_PARAMS = ("input", "kernel_size", ("stride", None), ("padding", 0), ("ceil_mode", False),
                    ("count_include_pad", True), ("divisor_override", None))


def _attributes(m, params):
    """The attributes of the pooling module ``m`` named as its function's ``params`` (torch's
    modules keep them under those names)."""
    return {name: getattr(m, name) for name in (p if isinstance(p, str) else p[0]
                                                for p in params[1:])}


def _torch_max_pool(a, ctx):
    if a["return_indices"]:
        raise ctx.error("return_indices=True is not supported")
    return _torch_pool(MaxPool2d, a, ctx)


def _onnx_pool(cls):
    def convert(ctx):
        if ctx.attrs.get("storage_order", 0):
            raise ctx.error("storage_order=1 is not supported")
        kernel, strides, pads, _ = ctx.window(pooling=True)
        flags = {}
        if cls is AvgPool2d:  # ONNX's default is count_include_pad=0, torch's True
            flags["count_include_pad"] = bool(ctx.attrs.get("count_include_pad", 0))
        return pool_layer(cls, ctx, kernel, strides, pads, ctx.attrs.get("ceil_mode", 0),
                          **flags)
    return convert


@register_layer
class MaxPool2d(Pool):
    """Max pooling as ``torch.nn.MaxPool2d``; ties go to the first maximum in the window.  LRP
    gives a window's relevance to its winner (winner-take-all: the gradient)."""

    kind = "maxpool2d"
    slots = ("maxpool",)
    default_rule = "winner_take_all"
    imports = (
        TorchModule(("MaxPool2d",), lambda m, ctx: _torch_max_pool(
            _attributes(m, _MAX_POOL_PARAMS), ctx)),
        TorchFunction(("torch.nn.functional.max_pool2d", "torch.nn.functional._max_pool2d",
                       "torch.max_pool2d"), _MAX_POOL_PARAMS, _torch_max_pool),
        OnnxOp(("MaxPool",), lambda ctx: _onnx_pool(MaxPool2d)(ctx)),
    )

    def forward(self, x):
        return ops.maxpool2d_forward(x, **self.kernel_args())

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.maxpool2d_backward(g, state, x.shape[2:], **self.kernel_args())


class AvgPool(Layer):
    """Average poolings: the Norm rule (Epsilon with the pooling as the linear map)."""

    slots = ("avgpool",)
    default_rule = "norm"


def _torch_avg_pool(a, ctx):
    if a["divisor_override"] is not None:
        raise ctx.error(f"divisor_override={a['divisor_override']} is not supported")
    return _torch_pool(AvgPool2d, a, ctx, count_include_pad=bool(a["count_include_pad"]))


@register_layer
class AvgPool2d(AvgPool, Pool):
    """Average pooling as ``torch.nn.AvgPool2d``: each window's sum over its count, the
    window's taps inside the input plus, with ``count_include_pad`` (the default), those in the
    zero padding; the taps past the padding that ``ceil_mode`` adds are never counted."""

    kind = "avgpool2d"
    imports = (
        TorchModule(("AvgPool2d",), lambda m, ctx: _torch_avg_pool(
            _attributes(m, _AVG_POOL_PARAMS), ctx)),
        TorchFunction(("torch.nn.functional.avg_pool2d",), _AVG_POOL_PARAMS, _torch_avg_pool),
        OnnxOp(("AveragePool",), lambda ctx: _onnx_pool(AvgPool2d)(ctx)),
    )

    def __init__(self, kernel_size, stride=None, padding=0, ceil_mode=False,
                 count_include_pad=True):
        super().__init__(kernel_size, stride, padding, ceil_mode)
        # without padding the count is the window's taps in the input either way
        self.count_include_pad = (_flag(count_include_pad, "count_include_pad")
                                  or self.padding == (0, 0))

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
        return ops.avgpool2d_forward(x, **self.kernel_args()), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.avgpool2d_backward(g, x.shape[2:], **self.kernel_args())


def adaptive_avg_pool(shape, size, ctx):
    """The layer of ``AdaptiveAvgPool2d(size)`` on per-sample input ``shape`` (c, h, w): None
    where it is the identity (``size`` is the input size), GlobalAvgPool2d for size 1, an
    AvgPool2d where ``size`` divides the input, else AdaptiveAvgPool2d.  ``None`` in ``size``
    keeps that input size."""
    if len(shape) != 3:
        raise ctx.error("adaptive average pooling expects (channels, height, width) per sample, "
                        f"got shape {tuple(shape)}")
    h, w = shape[1:]
    oh, ow = (h if size[0] is None else int(size[0])), (w if size[1] is None else int(size[1]))
    if oh <= 0 or ow <= 0:
        raise ctx.error(f"output size {(oh, ow)} must be positive")
    if (oh, ow) == (h, w):
        return None
    if (oh, ow) == (1, 1):
        return GlobalAvgPool2d()
    if h % oh == 0 and w % ow == 0:
        return AvgPool2d((h // oh, w // ow))
    return AdaptiveAvgPool2d((oh, ow))


def _spatial_mean(ctx, axes, keepdims):
    """``x.mean(axes)`` over height and width: a global average pooling (and a Flatten unless
    ``keepdims``)."""
    shape = ctx.shape
    rank = len(shape) + 1
    if len(shape) != 3 or axes is None or sorted(a % rank for a in axes) != [2, 3]:
        raise ctx.error(f"mean over {axes} of per-sample shape {tuple(shape)} is not supported "
                        "(only over height and width, (2, 3))")
    from .shape import Flatten

    return [adaptive_avg_pool(shape, (1, 1), ctx)] + ([] if keepdims else [Flatten()])


def _torch_mean(a, ctx):
    if a["dtype"] is not None:
        raise ctx.error(f"mean with dtype={a['dtype']} is not supported")
    dims = a["dim"]
    dims = (dims,) if isinstance(dims, int) else (None if dims is None else tuple(dims))
    return _spatial_mean(ctx, dims, a["keepdim"])


def _onnx_reduce_mean(ctx):
    axes = ctx.const(1, "axes", required=False) if ctx.opset >= 18 else \
        ctx.attrs.get("axes", None)
    axes = None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]
    return _spatial_mean(ctx, axes, ctx.attrs.get("keepdims", 1))


_MEAN = (("input", ("dim", None), ("keepdim", False), ("dtype", None)), _torch_mean)


@register_layer
class GlobalAvgPool2d(AvgPool):
    """Mean over height and width: ``(n, c, h, w) -> (n, c, 1, 1)`` (``AdaptiveAvgPool2d(1)``,
    ``x.mean((2, 3))``)."""

    kind = "globalavgpool2d"
    imports = (
        TorchFunction(("torch.mean",), *_MEAN),
        TorchMethod(("mean",), *_MEAN),
        OnnxOp(("GlobalAveragePool",), lambda ctx: adaptive_avg_pool(ctx.shape, (1, 1), ctx)),
        OnnxOp(("ReduceMean",), _onnx_reduce_mean),
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
