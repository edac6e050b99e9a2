"""The reference twin of every layer type, by kind: its forward pass and its vector-Jacobian
product in plain NumPy (:mod:`relprop.reference.ops`), read from the layer's public attributes
(``weight``, ``bias``, ``stride``, ``padding``, ``kernel_size``, ...).  Nothing of relprop's
compute path is used; a new layer type registers its twin here with :func:`register_twin`.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import ops


@dataclass(frozen=True)
class Twin:
    """``forward(layer, *xs) -> y``; ``backward(layer, g, xs, relu_mode) -> [gx per input]``;
    for layers with weights also ``apply(layer, x, w, b) -> y`` with explicit parameters (the
    layer's matrix of rule-modified weights, :func:`relprop.reference.as_matrix`); for layers
    that LRP's Norm rule sees as linear once a factor of the input is held constant
    (LayerNorm's standard deviation) ``linear(layer, a, v) -> `` that map, made at ``a``,
    applied to ``v`` (both shaped like the input); an addition of a constant gives the identity
    (the constant is its bias)."""

    forward: Callable
    backward: Callable
    apply: Callable = None
    linear: Callable = None


#: Twins by layer kind.
TWINS: dict = {}


def register_twin(*kinds, forward, backward, apply=None, linear=None):
    """Register the twin of the layer types ``kinds``."""
    for kind in kinds:
        TWINS[kind] = Twin(forward, backward, apply, linear)


def twin(layer) -> Twin:
    """The twin of ``layer``'s kind (ValueError if it has none)."""
    hit = TWINS.get(layer.kind)
    if hit is None:
        raise ValueError(f"reference: no twin for layer kind {layer.kind!r}")
    return hit


def _b(layer, dtype):
    return None if layer.bias is None else layer.bias.astype(dtype)


# --- layers with weights ------------------------------------------------------------------------
def _conv_kw(layer):
    """Dilation and groups of a Conv2d, where they differ from the defaults."""
    kw = {}
    if getattr(layer, "dilation", (1, 1)) != (1, 1):
        kw["dilation"] = layer.dilation
    if getattr(layer, "groups", 1) != 1:
        kw["groups"] = layer.groups
    return kw


def _dense_apply(layer, x, w, b):
    return ops.dense_forward(x, w, b)


def _conv_apply(layer, x, w, b):
    return ops.conv2d_forward(x, w, b, layer.stride, layer.padding, **_conv_kw(layer))


register_twin(
    "dense",
    forward=lambda layer, x: _dense_apply(layer, x, layer.weight.astype(x.dtype),
                                          _b(layer, x.dtype)),
    backward=lambda layer, g, xs, mode: [ops.dense_backward(g, layer.weight.astype(g.dtype))],
    apply=_dense_apply)
register_twin(
    "conv2d",
    forward=lambda layer, x: _conv_apply(layer, x, layer.weight.astype(x.dtype),
                                         _b(layer, x.dtype)),
    backward=lambda layer, g, xs, mode: [ops.conv2d_backward(
        g, layer.weight.astype(g.dtype), xs[0].shape[2:], layer.stride, layer.padding,
        **_conv_kw(layer))],
    apply=_conv_apply)


def _conv1d(x, w, b, stride, padding, dilation, groups):
    """y[n, o, t] = b[o] + sum_{c, u} w[o, c, u] x_pad[n, gi C + c, t stride + u dilation] for
    output channel o of group gi (C = the input channels per group), written for one axis (the
    layer runs the 2-D kernels on (c, 1, L) planes)."""
    n, c, length = x.shape
    o, cg, k = w.shape
    out = (length + 2 * padding - dilation * (k - 1) - 1) // stride + 1
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding)))
    y = np.zeros((n, o, out), dtype=x.dtype)
    og = o // groups
    for gi in range(groups):
        for u in range(k):
            taps = xp[:, gi * cg:(gi + 1) * cg, u * dilation:u * dilation + stride * (out - 1) + 1:
                      stride]
            y[:, gi * og:(gi + 1) * og] += np.einsum("ncl,oc->nol", taps,
                                                      w[gi * og:(gi + 1) * og, :, u])
    return y if b is None else y + b[None, :, None]


def _conv1d_t(g, w, length, stride, padding, dilation, groups):
    """The transpose of :func:`_conv1d` (without bias): each output gradient scattered over its
    taps."""
    n, o, out = g.shape
    _, cg, k = w.shape
    gp = np.zeros((n, cg * groups, length + 2 * padding), dtype=g.dtype)
    og = o // groups
    for gi in range(groups):
        for u in range(k):
            gp[:, gi * cg:(gi + 1) * cg, u * dilation:u * dilation + stride * (out - 1) + 1:
               stride] += np.einsum("nol,oc->ncl", g[:, gi * og:(gi + 1) * og],
                                    w[gi * og:(gi + 1) * og, :, u])
    return gp[:, :, padding:padding + length]


def _conv1d_apply(layer, x, w, b):
    return _conv1d(x, w, b, layer.stride, layer.padding, layer.dilation, layer.groups)


register_twin(
    "conv1d",
    forward=lambda layer, x: _conv1d_apply(layer, x, layer.weight.astype(x.dtype),
                                           _b(layer, x.dtype)),
    backward=lambda layer, g, xs, mode: [_conv1d_t(
        g, layer.weight.astype(g.dtype), xs[0].shape[2], layer.stride, layer.padding,
        layer.dilation, layer.groups)],
    apply=_conv1d_apply)


def _convt_out(layer, hw):
    """The output size of a ConvTranspose2d on inputs of size ``hw`` (torch's formula)."""
    return tuple((h - 1) * s - 2 * p + d * (k - 1) + op + 1 for h, s, p, d, k, op in zip(
        hw, layer.stride, layer.padding, layer.dilation, layer.weight.shape[2:],
        layer.output_padding))


def _convt_apply(layer, x, w, b):
    """The transposed convolution: each input scattered over its window of the output (the
    transpose of conv2d_forward, on the whole output: rows beyond the windows stay 0)."""
    y = ops.conv2d_backward(x, w, _convt_out(layer, x.shape[2:]), layer.stride, layer.padding,
                            **_conv_kw(layer))
    return y if b is None else y + b[None, :, None, None]


def _convt_backward(layer, g, xs, mode):
    h, w = xs[0].shape[2:]
    gx = ops.conv2d_forward(g, layer.weight.astype(g.dtype), None, layer.stride, layer.padding,
                            **_conv_kw(layer))
    return [gx[:, :, :h, :w]]  # (outputs beyond the windows make more rows, all 0)


register_twin(
    "convtranspose2d",
    forward=lambda layer, x: _convt_apply(layer, x, layer.weight.astype(x.dtype),
                                          _b(layer, x.dtype)),
    backward=_convt_backward, apply=_convt_apply)


# --- activations --------------------------------------------------------------------------------
register_twin("relu", forward=lambda layer, x: ops.relu_forward(x),
              backward=lambda layer, g, xs, mode: [ops.relu_backward(g, xs[0], mode)])
register_twin("leaky_relu",
              forward=lambda layer, x: ops.leaky_relu_forward(x, layer.negative_slope),
              backward=lambda layer, g, xs, mode: [ops.leaky_relu_backward(
                  g, xs[0], layer.negative_slope)])
register_twin("prelu", forward=lambda layer, x: ops.prelu_forward(x, layer.weight),
              backward=lambda layer, g, xs, mode: [ops.prelu_backward(g, xs[0], layer.weight)])
register_twin("hardtanh",
              forward=lambda layer, x: ops.hardtanh_forward(x, layer.min_val, layer.max_val),
              backward=lambda layer, g, xs, mode: [ops.hardtanh_backward(
                  g, xs[0], layer.min_val, layer.max_val)])
register_twin("relu6", forward=lambda layer, x: ops.hardtanh_forward(x, 0.0, 6.0),
              backward=lambda layer, g, xs, mode: [ops.hardtanh_backward(g, xs[0], 0.0, 6.0)])

# the activations of ops.activation_forward/backward, with the layer's op
for _kind in ("gelu", "silu", "sigmoid", "tanh", "hardsigmoid", "hardswish"):
    register_twin(_kind, forward=lambda layer, x: ops.activation_forward(x, layer.op),
                  backward=lambda layer, g, xs, mode: [ops.activation_backward(g, xs[0],
                                                                               layer.op)])


# --- pooling ------------------------------------------------------------------------------------
def _window(layer, shape):
    kw = {"ceil_mode": layer.ceil_mode}
    if hasattr(layer, "count_include_pad"):
        kw["count_include_pad"] = layer.count_include_pad
    return (layer.kernel_size, layer.stride, layer.padding), kw


def _global(layer, shape):
    hw = tuple(shape[-2:])
    return (hw, hw, (0, 0)), {}


def _maxpool(layer, x):
    args, kw = _window(layer, x.shape)
    return ops.maxpool2d_forward(x, *args, **kw)


def _maxpool_backward(layer, g, xs, mode):
    args, kw = _window(layer, xs[0].shape)
    return [ops.maxpool2d_backward(g, _maxpool(layer, xs[0])[1], xs[0].shape[2:], *args, **kw)]


def _avgpool_forward(layer, x, window):
    args, kw = window(layer, x.shape)
    return ops.avgpool2d_forward(x, *args, **kw)


def _avgpool_backward(layer, g, xs, window):
    args, kw = window(layer, xs[0].shape)
    return [ops.avgpool2d_backward(g, xs[0].shape[2:], *args, **kw)]


register_twin("maxpool2d", forward=lambda layer, x: _maxpool(layer, x)[0],
              backward=_maxpool_backward)
for _kind, _win in (("avgpool2d", _window), ("globalavgpool2d", _global)):
    register_twin(_kind, forward=lambda layer, x, w=_win: _avgpool_forward(layer, x, w),
                  backward=lambda layer, g, xs, mode, w=_win: _avgpool_backward(layer, g, xs, w))
register_twin("adaptiveavgpool2d",
              forward=lambda layer, x: ops.adaptive_avgpool2d_forward(x, layer.output_size),
              backward=lambda layer, g, xs, mode: [ops.adaptive_avgpool2d_backward(
                  g, xs[0].shape[2:])])


# 1-D poolings, written for one axis (the layers run the 2-D kernels on (c, 1, L) planes)
def _windows1d(layer, length):
    """Per output: ``(start, stop, padded)``, its window clipped to the input and its count of
    taps inside the zero-padded input (torch's pooling sizes, ceil mode included)."""
    k, s, p = layer.kernel_size, layer.stride, layer.padding
    for t in range(ops._pool_size(length, k, s, p, layer.ceil_mode)):
        lo = t * s - p
        yield max(lo, 0), min(lo + k, length), min(lo + k, length + p) - max(lo, -p)


def _maxpool1d(layer, x):
    """``(y, winners)``: each window's maximum and the index of its first maximum."""
    wins = list(_windows1d(layer, x.shape[2]))
    at = np.stack([a + np.argmax(x[:, :, a:b], axis=2) for a, b, _ in wins], axis=2)
    return np.take_along_axis(x, at, axis=2), at


def _maxpool1d_backward(layer, g, xs, mode):
    gx = np.zeros_like(xs[0], dtype=g.dtype)
    at = _maxpool1d(layer, xs[0])[1]
    for i in range(g.shape[0]):
        for c in range(g.shape[1]):
            np.add.at(gx[i, c], at[i, c], g[i, c])
    return [gx]


def _avg_count(layer, a, b, padded):
    return padded if layer.count_include_pad else b - a


def _avgpool1d(layer, x):
    return np.stack([x[:, :, a:b].sum(axis=2) / _avg_count(layer, a, b, padded)
                     for a, b, padded in _windows1d(layer, x.shape[2])], axis=2)


def _avgpool1d_backward(layer, g, xs, mode):
    gx = np.zeros(xs[0].shape, dtype=g.dtype)
    for t, (a, b, padded) in enumerate(_windows1d(layer, xs[0].shape[2])):
        gx[:, :, a:b] += (g[:, :, t] / _avg_count(layer, a, b, padded))[:, :, None]
    return [gx]


def _adaptive1d(layer, length):
    o = layer.output_size
    return [((t * length) // o, -((-(t + 1) * length) // o)) for t in range(o)]


def _adaptive_avgpool1d_backward(layer, g, xs, mode):
    gx = np.zeros(xs[0].shape, dtype=g.dtype)
    for t, (a, b) in enumerate(_adaptive1d(layer, xs[0].shape[2])):
        gx[:, :, a:b] += (g[:, :, t] / (b - a))[:, :, None]
    return [gx]


register_twin("maxpool1d", forward=lambda layer, x: _maxpool1d(layer, x)[0],
              backward=_maxpool1d_backward)
register_twin("avgpool1d", forward=_avgpool1d, backward=_avgpool1d_backward)
register_twin("adaptiveavgpool1d", forward=lambda layer, x: np.stack(
    [x[:, :, a:b].mean(axis=2) for a, b in _adaptive1d(layer, x.shape[2])], axis=2),
    backward=_adaptive_avgpool1d_backward)


def _upsample_out(layer, hw):
    if layer.size is not None:
        return layer.size
    return tuple(int(np.floor(n * s)) for n, s in zip(hw, layer.scale_factor))


register_twin("upsample",
              forward=lambda layer, x: ops.upsample2d_forward(
                  x, _upsample_out(layer, x.shape[2:]), layer.mode, layer.align_corners,
                  layer.scale_factor),
              backward=lambda layer, g, xs, mode: [ops.upsample2d_backward(
                  g, xs[0].shape[2:], layer.mode, layer.align_corners, layer.scale_factor)])


# --- shapes, merges, normalization --------------------------------------------------------------
register_twin("flatten", "reshape",
              forward=lambda layer, x: x.reshape((len(x),) + tuple(layer.shape)),
              backward=lambda layer, g, xs, mode: [g.reshape(xs[0].shape)])
register_twin("permute", forward=lambda layer, x: np.transpose(x, layer.dims),
              backward=lambda layer, g, xs, mode: [np.transpose(g, np.argsort(layer.dims))])


def _slice_backward(layer, g, xs, mode):
    out = np.zeros(xs[0].shape, g.dtype)
    for k, at in enumerate(range(layer.start, layer.stop, layer.step)):
        dst = [slice(None)] * out.ndim
        dst[layer.axis] = at
        src = [slice(None)] * g.ndim
        src[layer.axis] = k
        out[tuple(dst)] = g[tuple(src)]
    return [out]


def _pad_widths(layer, rank):
    """torch's F.pad amounts (last axis first) as (before, after) per axis of the batch."""
    pairs = list(zip(layer.pads[::2], layer.pads[1::2]))[::-1]
    return [(0, 0)] * (rank - len(pairs)) + pairs


def _pad_forward(layer, x):
    widths = _pad_widths(layer, x.ndim)
    y = np.pad(x, [(max(b, 0), max(a, 0)) for b, a in widths])
    return y[tuple(slice(max(-b, 0), y.shape[k] - max(-a, 0)) for k, (b, a) in enumerate(widths))]


def _pad_backward(layer, g, xs, mode):
    # the transpose: crop what the padding added, pad back what it cropped
    inverse = type("Inverse", (), {"pads": tuple(-p for p in layer.pads)})()
    return [_pad_forward(inverse, g)]


register_twin("pad", forward=_pad_forward, backward=_pad_backward)
register_twin("slice",
              forward=lambda layer, x: np.take(
                  x, np.arange(layer.start, layer.stop, layer.step), axis=layer.axis),
              backward=_slice_backward)


def _concat_operands(layer, xs):
    """The inputs with the constants (repeated over the batch) in their places."""
    if layer.constants is None:
        return list(xs)
    it = iter(xs)
    return [next(it) if c is None else np.repeat(c[None].astype(xs[0].dtype), len(xs[0]), 0)
            for c in layer.constants]


def _concat_backward(layer, g, xs, mode):
    parts = _concat_operands(layer, xs)
    bounds = np.cumsum([0] + [a.shape[layer.axis] for a in parts])
    return [np.take(g, np.arange(lo, hi), axis=layer.axis)
            for lo, hi, a in zip(bounds[:-1], bounds[1:], parts) if any(a is x for x in xs)]


def _add_forward(layer, *xs):
    y = sum(xs[1:], xs[0])
    return y if layer.constant is None else y + layer.constant.astype(y.dtype)


# Add's map, for the Norm rule: the sum of the inputs (a constant is its bias)
register_twin("add", forward=_add_forward, backward=lambda layer, g, xs, mode: [g for _ in xs],
              linear=lambda layer, a, v: v)
register_twin("concat",
              forward=lambda layer, *xs: np.concatenate(_concat_operands(layer, xs),
                                                        axis=layer.axis),
              backward=_concat_backward)


register_twin("attention",
              forward=lambda layer, q, k, v: ops.attention_forward(q, k, v, layer.heads,
                                                                   layer.scale)[0],
              backward=lambda layer, g, xs, mode: list(ops.attention_backward(
                  g, *xs, ops.attention_forward(*xs, layer.heads, layer.scale)[1], layer.heads,
                  layer.scale)))


def _affine(layer, dtype):
    """``(s, t)`` of an unfolded BatchNorm: ``y = x * s + t`` per channel."""
    s = layer.scale / np.sqrt(layer.var + layer.eps)
    return s.astype(dtype), (layer.shift - layer.mean * s).astype(dtype)


register_twin("batchnorm", "batchnorm1d", "batchnorm2d",
              forward=lambda layer, x: ops.channel_affine(x, *_affine(layer, x.dtype)),
              backward=lambda layer, g, xs, mode: [ops.channel_affine(
                  g, _affine(layer, g.dtype)[0])])


def _ln_axis(layer):
    return 1 if layer.axis == "channels" else -1


def _ln_frozen(layer, a, v):
    """LayerNorm's map with the standard deviation of ``a`` held constant (no bias), applied to
    ``v``: ``(v - mean(v)) / std(a) * weight``."""
    axis = _ln_axis(layer)
    rstd = np.expand_dims(ops.layer_norm_forward(a, axis=axis, eps=layer.eps)[2], axis)
    shape = [1] * v.ndim
    shape[axis] = -1
    w = 1.0 if layer.weight is None else layer.weight.reshape(shape)
    return (v - v.mean(axis=axis, keepdims=True)) * rstd * w


def _ln_backward(layer, g, xs, mode):
    _, mean, rstd = ops.layer_norm_forward(xs[0], layer.weight, layer.bias, _ln_axis(layer),
                                           layer.eps)
    return [ops.layer_norm_backward(g, xs[0], layer.weight, mean, rstd, _ln_axis(layer))]


register_twin("layernorm",
              forward=lambda layer, x: ops.layer_norm_forward(x, layer.weight, layer.bias,
                                                              _ln_axis(layer), layer.eps)[0],
              backward=_ln_backward, linear=_ln_frozen)


def reduce_to(t, shape):
    """``t`` (n, ...) summed to the per-sample ``shape`` it was broadcast from."""
    lead = t.ndim - 1 - len(shape)
    t = t.sum(axis=tuple(range(1, 1 + lead))) if lead else t
    axes = tuple(1 + k for k, s in enumerate(shape) if s == 1 and t.shape[1 + k] != 1)
    return t.sum(axis=axes, keepdims=True) if axes else t


def _per_sample(t, rank):
    """``t`` (n, ...) as ``rank`` axes: a sample's axes aligned from the last."""
    return t.reshape((len(t),) + (1,) * (rank - t.ndim) + t.shape[1:])


def _mul(layer, a, b):
    rank = max(a.ndim, b.ndim)
    return _per_sample(a, rank) * _per_sample(b, rank)


def _mul_backward(layer, g, xs, mode):
    a, b = (_per_sample(x, g.ndim) for x in xs)
    return [reduce_to(g * b, xs[0].shape[1:]), reduce_to(g * a, xs[1].shape[1:])]


register_twin("mul", forward=_mul, backward=_mul_backward)
register_twin("scale", forward=lambda layer, x: x * layer.weight.astype(x.dtype),
              backward=lambda layer, g, xs, mode: [g * layer.weight.astype(g.dtype)])
