"""Layers of several inputs: Add, Concat (either with constant operands too: ViT's position
embedding and class token), Mul."""
from __future__ import annotations

import numpy as np

from .._validate import as_float_array, as_int
from .base import Layer, OnnxOp, TorchFunction, TorchMethod, cfg_int, numel, register_layer
from .normalization import Scale


def _constant(value, name):
    """A constant operand as a float array (float32/float64 kept: the model's dtype)."""
    return as_float_array(value, name)


def _per_sample(c, rank, ctx, what):
    """A module parameter ``c`` that a call combines with a batch of rank ``rank``: without
    its leading batch axis of size 1 where it has one (``pos_embedding`` (1, T, D)); other
    constants broadcast to each sample as torch aligns trailing axes."""
    if c.ndim == rank:
        if c.shape[0] != 1:
            raise ctx.error(f"{what} of shape {c.shape} has a batch axis of {c.shape[0]}; "
                            "relprop takes constants that are the same for every sample")
        c = c[0]
    elif c.ndim > rank:
        raise ctx.error(f"{what} of shape {c.shape} has more axes than the batch ({rank})")
    return c


def _torch_add(a, ctx):
    x, y = a["input"], a["other"]
    if a["alpha"] != 1:
        raise ctx.error(f"alpha={a['alpha']} is not supported")
    if ctx.is_tensor(x) and ctx.is_tensor(y):
        return Add()
    c = y if ctx.is_tensor(x) else x
    if not (ctx.is_tensor(x) or ctx.is_tensor(y)) or not ctx.is_parameter(c):
        raise ctx.error(f"adds {ctx.describe(x)} and {ctx.describe(y)}; relprop supports the sum "
                        "of two tensors computed from the input, or of one and a parameter of "
                        "the module (a position embedding)")
    c = _per_sample(ctx.parameter(c, "the added parameter"), len(ctx.shape) + 1, ctx,
                    "the added parameter")
    return Add(constant=c)


def _onnx_sum(ctx):
    if len(ctx.inputs) == ctx.n_inputs:  # every operand is data
        return Add() if len(ctx.inputs) > 1 else None
    if ctx.node.op_type != "Add" or ctx.n_inputs != 2:
        raise ctx.error("sums data with constants; not supported")
    return ctx.add_bias()


_ADD = (("input", "other", ("alpha", 1)), _torch_add)


@register_layer
class Add(Layer):
    """The element-wise sum of two or more inputs of one shape (a residual connection), or of
    one input and a ``constant`` (ViT's position embedding; per-sample shaped, or broadcast to
    each sample as NumPy aligns trailing axes).

    LRP splits relevance in proportion to each operand's share of the sum (the Norm rule:
    ``R_i = x_i * R / stab(sum_j x_j + c)``, Zennit's ResNet canonizer); the constant's share
    stays with it, as a bias's does."""

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

    def __init__(self, constant=None):
        self.constant = None if constant is None else _constant(constant, "constant")
        if self.constant is not None:
            self.n_inputs = 1  # the input and the constant

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(arrays.get("constant"))

    def arrays(self):
        return {} if self.constant is None else {"constant": self.constant}

    def describe(self):
        return "Add" if self.constant is None else f"Add constant {self.constant.shape}"

    def output_shape(self, *shapes):
        if self.constant is not None:
            try:
                ok = np.broadcast_shapes(self.constant.shape, shapes[0]) == tuple(shapes[0])
            except ValueError:
                ok = False
            if not ok:
                raise ValueError(f"Add of a constant of shape {self.constant.shape} needs "
                                 "samples it broadcasts to without growing, got "
                                 f"{tuple(shapes[0])}")
            return tuple(shapes[0])
        if len(shapes) < 2:
            raise ValueError(f"Add needs at least two inputs, got {len(shapes)}")
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise ValueError(f"Add needs inputs of one shape, got {[tuple(s) for s in shapes]}")
        return tuple(shapes[0])

    def flops(self, in_shapes, out_shape):
        return (len(in_shapes) - (self.constant is None)) * numel(out_shape)

    def forward(self, *xs):
        if self.constant is not None:
            return xs[0] + self.constant.astype(xs[0].dtype, copy=False), None
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y, None

    def backward(self, g, x, state, relu_mode="gradient"):
        return g

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
    rank = len(ctx.shape) + 1
    operands = []
    for v in items:
        if ctx.is_parameter(v):  # ViT's class token, expanded over the batch
            operands.append(_per_sample(ctx.parameter(v, "a concatenated parameter"), rank, ctx,
                                        "a concatenated parameter"))
        else:
            ctx.tensor(v, "every concatenated value")
            operands.append(None)
    axis = batch_axis(ctx.constant(a["dim"], "dim"), rank, ctx, "dim")
    if len(items) == 1:
        return None
    return Concat(axis, operands if any(v is not None for v in operands) else None)


def _onnx_concat(ctx):
    if len(ctx.inputs) != ctx.n_inputs:
        raise ctx.error("concatenates data with constants; not supported")
    axis = batch_axis(ctx.attrs.get("axis", 1), len(ctx.shape) + 1, ctx, "axis")
    return Concat(axis) if len(ctx.inputs) > 1 else None


@register_layer
class Concat(Layer):
    """Concatenation of two or more operands along ``axis`` (an axis of the batch: 1, the
    channels, by default; never 0, the batch axis), the operands alike on every other axis.
    ``constants``, if given, lists the operands: an array for a constant (per-sample shaped,
    the same for every sample: ViT's class token) and None for each input in turn, so
    ``Concat(1, [token, None])`` puts ``token`` before its one input's tokens.

    LRP slices relevance back to the inputs (what lands on a constant stays there)."""

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

    def __init__(self, axis=1, constants=None):
        self.axis = as_int(axis, "axis", minimum=1)
        self.constants = None
        if constants is not None:
            if not isinstance(constants, (list, tuple)) or len(constants) < 2 or \
                    not any(v is None for v in constants):
                raise TypeError("constants must be the list of operands, an array for each "
                                "constant and None for each input in turn (at least one), "
                                f"two or more in all; got {constants!r}")
            self.constants = tuple(None if v is None else _constant(v, f"constants[{k}]")
                                   for k, v in enumerate(constants))
            self.n_inputs = sum(v is None for v in self.constants)

    @classmethod
    def from_config(cls, cfg, arrays):
        at, n = cfg.get("constants"), cfg.get("operands")
        if at is None:
            return cls(cfg_int(cfg, "axis", 1))
        if not isinstance(at, list) or not isinstance(n, int) or \
                any(f"constant{k}" not in arrays for k in at):
            raise ValueError(f"has bad 'constants' {at!r} or 'operands' {n!r} (positions of "
                             "arrays 'constant<k>' among the operands)")
        return cls(cfg_int(cfg, "axis", 1),
                   [arrays[f"constant{k}"] if k in at else None for k in range(n)])

    def config(self):
        cfg = {} if self.axis == 1 else {"axis": self.axis}
        if self.constants is not None:
            cfg["constants"] = [k for k, v in enumerate(self.constants) if v is not None]
            cfg["operands"] = len(self.constants)
        return cfg

    def arrays(self):
        return {f"constant{k}": v for k, v in enumerate(self.constants or ()) if v is not None}

    def describe(self):
        text = "Concat" if self.axis == 1 else f"Concat axis {self.axis}"
        return text + (f" with constants at {self.config()['constants']}"
                       if self.constants is not None else "")

    def _operands(self, xs, constant):
        """The inputs ``xs`` with ``constant(c)`` in each constant's place."""
        if self.constants is None:
            return list(xs)
        it = iter(xs)
        return [next(it) if c is None else constant(c) for c in self.constants]

    def output_shape(self, *shapes):
        if self.constants is None and len(shapes) < 2:
            raise ValueError(f"Concat needs at least two inputs, got {len(shapes)}")
        shapes = [tuple(s) for s in self._operands(shapes, lambda c: c.shape)]
        first, k = shapes[0], self.axis - 1  # k: the axis of a sample
        if k >= len(first) or any(len(s) != len(first) or s[:k] != first[:k]
                                  or s[k + 1:] != first[k + 1:] for s in shapes):
            raise ValueError(f"Concat along axis {self.axis} needs inputs that differ only on "
                             f"that axis, got per-sample shapes {shapes}")
        return first[:k] + (sum(int(s[k]) for s in shapes),) + first[k + 1:]

    def forward(self, *xs):
        n, dt = len(xs[0]), xs[0].dtype
        parts = self._operands(xs, lambda c: np.broadcast_to(c.astype(dt, copy=False),
                                                             (n,) + c.shape))
        return np.concatenate(parts, axis=self.axis), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return self.vjp(g, (x,), state)[0]

    def vjp(self, g, xs, state, relu_mode="gradient"):
        """The slices of ``g`` of each input (the constants' dropped)."""
        out, start = [], 0
        index = [slice(None)] * g.ndim
        sizes = self._operands([x.shape[self.axis] for x in xs],
                               lambda c: -c.shape[self.axis - 1])  # < 0: a constant's
        for size in sizes:
            stop = start + abs(size)
            index[self.axis] = slice(start, stop)
            if size >= 0:
                out.append(np.ascontiguousarray(g[tuple(index)]))
            start = stop
        return tuple(out)


# --- products ------------------------------------------------------------------------------------
def reduce_to(t, shape):
    """``t`` (n, ...) summed over the axes that a per-sample ``shape`` broadcasts to it (the
    vector-Jacobian product of a broadcast)."""
    lead = t.ndim - 1 - len(shape)
    axes = tuple(range(1, 1 + lead)) + tuple(
        1 + lead + k for k, s in enumerate(shape) if s == 1 and t.shape[1 + lead + k] != 1)
    return t.sum(axis=axes).reshape((len(t),) + tuple(shape)) if axes else t


def batch_aligned(t, rank):
    """``t`` (n, ...) with unit axes after the batch axis up to ``rank``: a sample's shape
    broadcast by NumPy's rules while the batch axis stays first."""
    return t.reshape(t.shape[:1] + (1,) * (rank - t.ndim) + t.shape[1:])


def _silu_of(ctx, inputs):
    """``x * sigmoid(x)`` (either order, the sigmoid reading x alone): a SiLU of x, as torch's
    ONNX exporters write F.silu; None for any other product."""
    from .activations import Sigmoid, SiLU

    for j in (0, 1):
        p = ctx.producer(inputs[j])
        other = getattr(inputs[1 - j], "name", inputs[1 - j])
        if p is not None and isinstance(p.layer, Sigmoid) and tuple(p.inputs) == (other,):
            return ctx.add(SiLU(), [other])
    return None


def _factor(value, ctx):
    """A constant factor as a per-sample weight (:func:`_per_sample`; a number as float64)."""
    w = np.asarray(value, dtype=np.float64 if np.isscalar(value) else None)
    return _per_sample(w, len(ctx.shape) + 1, ctx, "the factor")


def _torch_mul(a, ctx):
    x, y = a["input"], a["other"]
    if ctx.is_tensor(x) and ctx.is_tensor(y):
        return _silu_of(ctx, [x, y]) or Mul()
    if not (ctx.is_tensor(x) or ctx.is_tensor(y)):  # names the first (not a tensor at all)
        ctx.tensor(x, "the input")
    t, c = (x, y) if ctx.is_tensor(x) else (y, x)
    w = ctx.parameter(c, "the factor") if ctx.is_parameter(c) else \
        ctx.constant(c, "the factor")
    try:
        return ctx.add(Scale(_factor(w, ctx)), [t])
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None


def _onnx_mul(ctx):
    if len(ctx.inputs) == 2:
        return _silu_of(ctx, ctx.inputs) or Mul()
    data = 0 if ctx.node.input[0] in ctx.reader.data else 1
    w = _factor(ctx.const(1 - data, "the factor"), ctx)
    try:
        return Scale(w)
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None


_MUL = (("input", "other"), _torch_mul)


@register_layer
class Mul(Layer):
    """The element-wise product of two inputs broadcast against each other (NumPy's rules on
    each sample's shape): a squeeze-and-excitation gate ``x * s`` with ``s`` (c, 1, 1).

    ``gate``: the input that gates the other (0 or 1), None, or "auto" (the default), resolved
    when the network is built: the input made by a gating layer (Sigmoid, Hardsigmoid; the
    ``gating`` trait) when exactly one is.  LRP (the Product rule): a gate gets no relevance and
    the other input all of it (the gate held constant, as LXT's CP-LRP treats gated units);
    without a gate each input gets half (AttnLRP's uniform rule).  A product with a parameter
    or a number is a :class:`relprop.layers.normalization.Scale`.
    """

    kind = "mul"
    slots = ("product",)
    default_rule = "product"
    n_inputs = 2
    backward_reads_input = True
    remakable = True
    imports = (
        TorchFunction(("operator.mul", "operator.imul", "torch.mul"), *_MUL),
        TorchMethod(("mul", "mul_", "__mul__"), *_MUL),
        OnnxOp(("Mul",), _onnx_mul),
    )

    def __init__(self, gate="auto"):
        if gate not in ("auto", None, 0, 1) or isinstance(gate, bool):
            raise ValueError(f"Mul gate must be 'auto', None, 0 or 1, got {gate!r}")
        self.gate = gate

    def config(self):
        return {"gate": self.gate}

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg.get("gate", "auto"))

    def describe(self):
        return "Mul" + ("" if self.gate in ("auto", None) else f" (input {self.gate} gates)")

    def resolve(self, producers):
        if self.gate != "auto":
            return self
        gates = [i for i, p in enumerate(producers) if p is not None and p.gating]
        return Mul(gates[0] if len(gates) == 1 else None)

    def output_shape(self, *shapes):
        try:
            return tuple(np.broadcast_shapes(*(tuple(s) for s in shapes)))
        except ValueError:
            raise ValueError(f"Mul needs inputs that broadcast against each other, got "
                             f"{[tuple(s) for s in shapes]}") from None

    def flops(self, in_shapes, out_shape):
        return numel(out_shape)

    def forward(self, a, b):
        rank = max(a.ndim, b.ndim)  # a sample's axes align from the last, the batch's first
        return np.multiply(batch_aligned(a, rank), batch_aligned(b, rank)), None

    def vjp(self, g, xs, state, relu_mode="gradient"):
        a, b = (batch_aligned(x, g.ndim) for x in xs)
        return reduce_to(g * b, xs[0].shape[1:]), reduce_to(g * a, xs[1].shape[1:])
