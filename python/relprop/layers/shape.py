"""Shape operations: Flatten."""
from __future__ import annotations

import numpy as np

from .base import Layer, OnnxOp, TorchFunction, TorchMethod, TorchModule, numel, register_layer


def _torch_flatten(shape, start, end, ctx):
    rank = len(shape) + 1
    start, end = start + rank if start < 0 else start, end + rank if end < 0 else end
    if start != 1 or end != rank - 1:
        raise ctx.error(f"flatten from dimension {start} to {end} is not supported (only all but "
                        "the batch dimension: start_dim=1, end_dim=-1)")
    return None if len(shape) == 1 else Flatten()


def _torch_reshape(a, ctx):
    """``x.view(*shape)`` / ``x.reshape(shape)``: a flatten ``(n, -1)``, or the identity."""
    shape, target = ctx.shape, list(a["shape"])
    if len(target) == 1 and isinstance(target[0], (list, tuple)):
        target = list(target[0])
    n = ctx.batch
    if len(target) == 2 and (target[0] is n or target[0] == -1) and \
            (target[1] == numel(shape) or (target[1] == -1 and target[0] is n)):
        return None if len(shape) == 1 else Flatten()
    if target and target[0] is n and tuple(target[1:]) == tuple(shape):
        return None
    raise ctx.error(f"reshape to {tuple(target)} from per-sample shape {tuple(shape)} is not a "
                    "flatten (n, -1); not supported")


def _onnx_flatten(ctx):
    axis = ctx.attrs.get("axis", 1)
    if axis != 1:
        raise ctx.error(f"axis={axis} is not supported (only 1)")
    return Flatten() if len(ctx.shape) > 1 else None


def _onnx_reshape(ctx):
    """Reshape to a constant target (per batch size of the importer's two evaluations): a
    flatten, or the identity."""
    shape, flat = ctx.shape, numel(ctx.shape)
    targets = ctx.targets(1, "the target shape")
    allowzero = ctx.attrs.get("allowzero", 0)

    def resolved(t, batch):
        full = (batch,) + tuple(shape)
        return t if allowzero else [full[k] if v == 0 and k < len(full) else v
                                    for k, v in enumerate(t)]

    ts = [resolved(t, b) for t, b in zip(targets, ctx.worlds)]
    if all(len(t) == 2 and ((t[0] == b and t[1] in (flat, -1)) or (t[0] == -1 and t[1] == flat))
           for t, b in zip(ts, ctx.worlds)):
        return Flatten() if len(shape) > 1 else None
    if all(t == [b, *shape] for t, b in zip(ts, ctx.worlds)):
        return None
    raise ctx.error(f"Reshape to {targets[0]} from per-sample shape {tuple(shape)} is not a "
                    "flatten (n, -1); not supported")


def _onnx_squeeze(ctx):
    shape = ctx.shape
    axes = ctx.const(1, "axes", required=False) if ctx.opset >= 13 else \
        ctx.attrs.get("axes", None)
    rank = len(shape) + 1
    axes = None if axes is None else sorted(int(a) % rank for a in np.asarray(axes).reshape(-1))
    full = (None,) + tuple(shape)
    if axes is None:
        axes = [k for k in range(1, rank) if full[k] == 1]
    if 0 in axes or any(full[k] != 1 for k in axes):
        raise ctx.error(f"Squeeze of axes {axes} of per-sample shape {tuple(shape)} is not "
                        "supported")
    kept = [full[k] for k in range(1, rank) if k not in axes]
    if len(kept) != 1:
        raise ctx.error(f"Squeeze to per-sample shape {tuple(kept)} is not a flatten; not "
                        "supported")
    return Flatten() if len(shape) > 1 else None


_FLATTEN = (("input", ("start_dim", 0), ("end_dim", -1)),
            lambda a, ctx: _torch_flatten(ctx.shape, a["start_dim"], a["end_dim"], ctx))


@register_layer
class Flatten(Layer):
    """C-order flatten of all but the batch axis (relevance passes through, reshaped)."""

    kind = "flatten"
    slots = ("reshape",)
    default_rule = "pass"
    remakable = True
    imports = (
        TorchModule(("Flatten",), lambda m, ctx: _torch_flatten(ctx.shape, m.start_dim,
                                                                m.end_dim, ctx)),
        TorchFunction(("torch.flatten",), *_FLATTEN),
        TorchMethod(("flatten",), *_FLATTEN),
        TorchMethod(("view", "reshape"), ("input", "*shape"), _torch_reshape),
        OnnxOp(("Flatten",), _onnx_flatten),
        OnnxOp(("Reshape",), _onnx_reshape),
        OnnxOp(("Squeeze",), _onnx_squeeze),
    )

    def output_shape(self, shape):
        return (numel(shape),)

    def forward(self, x):
        return x.reshape(x.shape[0], -1), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return g.reshape(x.shape)
