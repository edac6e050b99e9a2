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


def _per_sample(rest, n):
    """The per-sample shape ``rest`` (one -1 resolved) for samples of ``n`` elements, or None
    where ``rest`` does not hold ``n`` elements."""
    if rest.count(-1) > 1 or any(v == 0 or v < -1 for v in rest):
        return None
    if -1 in rest:
        known = numel([v for v in rest if v != -1])
        if n % known:
            return None
        rest = [n // known if v == -1 else v for v in rest]
    return tuple(rest) if numel(rest) == n else None


def onnx_target(ctx):
    """The per-sample target shape of an ONNX Reshape (input 1, a constant for each batch size
    of ``ctx.worlds``) whose leading dimension is the batch: ``-1`` or the batch size itself
    (computed from the input's shape).  In a file with a dynamic batch axis, a leading constant
    that does not follow the batch is the export batch baked in by the exporter (what the
    model computed in Python from ``x.size(0)``): batch-preserving, and recorded with
    ``ctx.bake``.  Returns ``(shape, fixed)``: ``fixed`` where the file's batch is fixed and the
    target names it (relprop cannot tell there whether the model keeps samples apart at other
    batch sizes).  ValueError for a target that mixes samples."""
    n = numel(ctx.shape)
    targets = ctx.targets(1, "the target shape")
    resolved = []
    for t, b in zip(targets, ctx.worlds):
        if not ctx.attrs.get("allowzero", 0):  # a 0 copies the input's dimension
            full = (b,) + tuple(ctx.shape)
            t = [full[k] if v == 0 and k < len(full) else v for k, v in enumerate(t)]
        rest = _per_sample(t[1:], n) if t and (t[0] != -1 or -1 not in t[1:]) else None
        resolved.append((t[0] if t else None, rest))
    (lead, rest), (lead2, rest2) = resolved
    follows = all(v in (-1, b) for v, b in zip((lead, lead2), ctx.worlds))
    baked = ctx.dynamic and lead == lead2 != -1
    if rest is None or rest != rest2 or not (follows or baked):
        raise ctx.error(f"Reshape to {targets[0]} from per-sample shape {tuple(ctx.shape)} mixes "
                        "samples (its leading dimension is not the batch); relprop reshapes each "
                        "sample alone")
    if baked:
        ctx.bake(lead)
    return rest, lead != -1 and not ctx.dynamic


def _onnx_reshape(ctx):
    """Reshape to a constant target: a flatten, or the identity."""
    target, _ = onnx_target(ctx)
    if target == tuple(ctx.shape):
        return None
    if len(target) == 1:
        return Flatten()
    raise ctx.error(f"Reshape to per-sample shape {target} from {tuple(ctx.shape)} is not a "
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
