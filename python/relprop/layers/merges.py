"""Layers of several inputs: Add, Concat."""
from __future__ import annotations

import numpy as np

from .base import Layer, OnnxOp, TorchFunction, TorchMethod, numel, register_layer


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


def _torch_cat(a, ctx):
    items = a["tensors"]
    if not isinstance(items, (list, tuple)) or not items:
        raise ctx.error(f"expects a list of tensors, got {items!r}")
    for v in items:
        ctx.tensor(v, "every concatenated value")
    dim = ctx.constant(a["dim"], "dim")
    if dim != 1 and dim + len(ctx.shape) + 1 != 1:
        raise ctx.error(f"concatenation along dim={dim} is not supported (only the channel axis, "
                        "dim=1)")
    return Concat() if len(items) > 1 else None


def _onnx_concat(ctx):
    if len(ctx.inputs) != ctx.n_inputs:
        raise ctx.error("concatenates data with constants; not supported")
    axis = ctx.attrs.get("axis", 1)
    if axis != 1 and axis + len(ctx.shape) + 1 != 1:
        raise ctx.error(f"concatenation along axis={axis} is not supported (only the channel "
                        "axis, 1)")
    return Concat() if len(ctx.inputs) > 1 else None


@register_layer
class Concat(Layer):
    """Concatenation of two or more inputs along the channel axis (axis 1 of the batch).

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

    def output_shape(self, *shapes):
        if len(shapes) < 2:
            raise ValueError(f"Concat needs at least two inputs, got {len(shapes)}")
        first = tuple(shapes[0])
        if any(len(s) != len(first) or tuple(s[1:]) != first[1:] for s in shapes):
            raise ValueError("Concat needs inputs that differ only in their channels, got "
                             f"{[tuple(s) for s in shapes]}")
        return (sum(int(s[0]) for s in shapes),) + first[1:]

    def forward(self, *xs):
        return np.concatenate(xs, axis=1), None

    def vjp(self, g, xs, state, relu_mode="gradient"):
        out, start = [], 0
        for x in xs:
            stop = start + x.shape[1]
            out.append(np.ascontiguousarray(g[:, start:stop]))
            start = stop
        return tuple(out)
