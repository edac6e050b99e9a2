"""Layers of several inputs: Add, Concat."""
from __future__ import annotations

import numpy as np

from .._validate import as_int
from .base import Layer, OnnxOp, TorchFunction, TorchMethod, cfg_int, numel, register_layer


def _torch_add(a, ctx):
    x, y = a["input"], a["other"]
    if not (ctx.is_tensor(x) and ctx.is_tensor(y)):
        raise ctx.error(f"adds {ctx.describe(x)} and {ctx.describe(y)}; relprop supports the sum "
                        "of two tensors computed from the input only (no constant offsets)")
    if a["alpha"] != 1:
        raise ctx.error(f"alpha={a['alpha']} is not supported")
    return Add()


def _onnx_sum(ctx):
    if len(ctx.inputs) == ctx.n_inputs:  # every operand is data
        return Add() if len(ctx.inputs) > 1 else None
    if ctx.node.op_type != "Add" or ctx.n_inputs != 2:
        raise ctx.error("sums data with constants; not supported")
    return ctx.add_bias()


_ADD = (("input", "other", ("alpha", 1)), _torch_add)


@register_layer
class Add(Layer):
    """The element-wise sum of two or more inputs of one shape (a residual connection).

    LRP splits relevance in proportion to each input's share of the sum (the Norm rule:
    ``R_i = x_i * R / stab(sum_j x_j)``, Zennit's ResNet canonizer)."""

    kind = "add"
    slots = ("sum",)
    default_rule = "norm"
    n_inputs = None
    remakable = True
    imports = (
        TorchFunction(("operator.add", "operator.iadd", "torch.add"), *_ADD),
        TorchMethod(("add", "add_", "__add__"), *_ADD),
        OnnxOp(("Add", "Sum"), _onnx_sum),
    )

    def output_shape(self, *shapes):
        if len(shapes) < 2:
            raise ValueError(f"Add needs at least two inputs, got {len(shapes)}")
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise ValueError(f"Add needs inputs of one shape, got {[tuple(s) for s in shapes]}")
        return tuple(shapes[0])

    def flops(self, in_shapes, out_shape):
        return (len(in_shapes) - 1) * numel(out_shape)

    def forward(self, *xs):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y, None

    def vjp(self, g, xs, state, relu_mode="gradient"):
        return (g,) * len(xs)


def batch_axis(axis, rank, ctx, what):
    """``axis`` (an int; negative counts from the end) of a batch of rank ``rank`` as a
    non-negative axis; ValueError naming ``what`` for the batch axis or one out of range."""
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool):
        raise ctx.error(f"{what}={axis!r} must be an int")
    k = int(axis) + rank if axis < 0 else int(axis)
    if not 0 < k < rank:
        raise ctx.error(f"{what}={axis} is not supported: it must name an axis of the samples "
                        f"(1..{rank - 1} or -{rank - 1}..-1), not the batch axis 0")
    return k


def _torch_cat(a, ctx):
    items = a["tensors"]
    if not isinstance(items, (list, tuple)) or not items:
        raise ctx.error(f"expects a list of tensors, got {items!r}")
    for v in items:
        ctx.tensor(v, "every concatenated value")
    axis = batch_axis(ctx.constant(a["dim"], "dim"), len(ctx.shape) + 1, ctx, "dim")
    return Concat(axis) if len(items) > 1 else None


def _onnx_concat(ctx):
    if len(ctx.inputs) != ctx.n_inputs:
        raise ctx.error("concatenates data with constants; not supported")
    axis = batch_axis(ctx.attrs.get("axis", 1), len(ctx.shape) + 1, ctx, "axis")
    return Concat(axis) if len(ctx.inputs) > 1 else None


@register_layer
class Concat(Layer):
    """Concatenation of two or more inputs along ``axis`` (an axis of the batch: 1, the
    channels, by default; never 0, the batch axis), the inputs alike on every other axis.

    LRP slices relevance back to the inputs."""

    kind = "concat"
    slots = ("concat",)
    default_rule = "pass"
    n_inputs = None
    remakable = True
    imports = (
        TorchFunction(("torch.cat", "torch.concat", "torch.concatenate"),
                      ("tensors", ("dim", 0)), _torch_cat),
        OnnxOp(("Concat",), _onnx_concat),
    )

    def __init__(self, axis=1):
        self.axis = as_int(axis, "axis", minimum=1)

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_int(cfg, "axis", 1))

    def config(self):
        return {} if self.axis == 1 else {"axis": self.axis}

    def describe(self):
        return "Concat" if self.axis == 1 else f"Concat axis {self.axis}"

    def output_shape(self, *shapes):
        if len(shapes) < 2:
            raise ValueError(f"Concat needs at least two inputs, got {len(shapes)}")
        first, k = tuple(shapes[0]), self.axis - 1  # k: the axis of a sample
        if k >= len(first) or any(len(s) != len(first) or tuple(s[:k]) != first[:k]
                                  or tuple(s[k + 1:]) != first[k + 1:] for s in shapes):
            raise ValueError(f"Concat along axis {self.axis} needs inputs that differ only on "
                             f"that axis, got per-sample shapes {[tuple(s) for s in shapes]}")
        return first[:k] + (sum(int(s[k]) for s in shapes),) + first[k + 1:]

    def forward(self, *xs):
        return np.concatenate(xs, axis=self.axis), None

    def vjp(self, g, xs, state, relu_mode="gradient"):
        out, start = [], 0
        index = [slice(None)] * g.ndim
        for x in xs:
            stop = start + x.shape[self.axis]
            index[self.axis] = slice(start, stop)
            out.append(np.ascontiguousarray(g[tuple(index)]))
            start = stop
        return tuple(out)
