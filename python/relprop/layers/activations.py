"""Element-wise activations: ReLU, LeakyReLU, PReLU, ReLU6, Hardtanh and the smooth ones (GELU,
...)."""
from __future__ import annotations

import numbers

import numpy as np

from .. import ops
from .._validate import as_float_array, as_scalar
from .base import (
    Layer,
    OnnxOp,
    TorchFunction,
    TorchMethod,
    TorchModule,
    cfg_int,
    numel,
    read_only,
    register_layer,
)


class Elementwise(Layer):
    """A layer applied element by element (shape preserved); LRP passes relevance through
    (Zennit's Pass rule for its Activation types)."""

    slots = ("activation",)
    default_rule = "pass"
    remakable = True
    elementwise = True
    zero_preserving = True  # but for the gates and clamps away from 0

    def flops(self, in_shapes, out_shape):
        return numel(out_shape)


@register_layer
class ReLU(Elementwise):
    """``max(x, 0)``; deconvnet's backward pass is ``max(g, 0)``, guided backprop's
    ``g * (x > 0) * (g > 0)``."""

    kind = "relu"
    backward_reads_input = True
    epilogue = "relu"
    imports = (
        TorchModule(("ReLU",), lambda m, ctx: ReLU()),
        TorchFunction(("torch.nn.functional.relu", "torch.nn.functional.relu_", "torch.relu",
                       "torch.relu_"), ("input", ("inplace", False)), lambda a, ctx: ReLU()),
        TorchMethod(("relu", "relu_"), ("input",), lambda a, ctx: ReLU()),
        OnnxOp(("Relu",), lambda ctx: ReLU()),
    )

    def nonnegative(self, inputs):
        return True

    def forward(self, x):
        return ops.relu_forward(x), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.relu_backward(g, x, relu_mode)


@register_layer
class LeakyReLU(Elementwise):
    """``x`` for ``x > 0``, else ``negative_slope * x`` (``torch.nn.LeakyReLU``).

    Piecewise linear and positively homogeneous, as ReLU; unlike ReLU not a rectifier, so
    deconvnet and guided backprop pass its gradient (their rules are ReLU's only, as in Captum),
    and LRP passes relevance through it (Zennit's Pass for its activations)."""

    kind = "leaky_relu"
    backward_reads_input = True
    _config_args = ("negative_slope",)
    imports = (
        TorchModule(("LeakyReLU",), lambda m, ctx: LeakyReLU(m.negative_slope)),
        TorchFunction(("torch.nn.functional.leaky_relu", "torch.nn.functional.leaky_relu_"),
                      ("input", ("negative_slope", 0.01), ("inplace", False)),
                      lambda a, ctx: LeakyReLU(ctx.constant(a["negative_slope"],
                                                            "negative_slope"))),
        OnnxOp(("LeakyRelu",), lambda ctx: LeakyReLU(ctx.attrs.get("alpha", 0.01))),
    )

    def __init__(self, negative_slope=0.01):
        self.negative_slope = as_scalar(negative_slope, "negative_slope")

    def config(self):
        return {"negative_slope": self.negative_slope}

    def describe(self):
        return f"LeakyReLU {self.negative_slope:g}"

    def forward(self, x):
        return ops.leaky_relu_forward(x, self.negative_slope), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.leaky_relu_backward(g, x, self.negative_slope)


def _onnx_prelu(ctx):
    """ONNX PRelu: a constant slope that broadcasts as one value, or one per channel (axis 1)."""
    slope = np.asarray(ctx.const(1, "slope"))
    if slope.size == 1:
        return PReLU(slope.reshape(1))
    rank = len(ctx.shape) + 1
    dims = (1,) * (rank - slope.ndim) + slope.shape  # broadcast against the input, from the right
    if len(dims) != rank or dims[1] != ctx.shape[0] or any(d != 1 for d in dims[:1] + dims[2:]):
        raise ctx.error(f"a slope of shape {slope.shape} is not one slope per channel of a "
                        f"tensor of per-sample shape {tuple(ctx.shape)}")
    return PReLU(slope.reshape(-1))


@register_layer
class PReLU(Elementwise):
    """``x`` for ``x > 0``, else ``weight[c] * x`` (``torch.nn.PReLU``): ``weight`` holds a
    slope per channel (axis 1 of the tensor: a Dense output's units, an image's channels), or
    one slope for every element.

    Piecewise linear and positively homogeneous, as LeakyReLU: LRP passes relevance through it
    (Zennit's Pass for its activations), deconvnet and guided backprop pass its gradient (their
    rule is ReLU's only, as in Captum)."""

    kind = "prelu"
    backward_reads_input = True
    imports = (
        TorchModule(("PReLU",), lambda m, ctx: PReLU(ctx.array(m.weight))),
        TorchFunction(("torch.nn.functional.prelu", "torch.prelu"), ("input", "weight"),
                      lambda a, ctx: PReLU(ctx.parameter(a["weight"], "weight"))),
        OnnxOp(("PRelu",), _onnx_prelu),
    )

    def __init__(self, weight):
        w = as_float_array(weight, "weight")
        if w.ndim != 1 or w.size == 0:
            raise ValueError(f"PReLU weight must have shape (1,) or (channels,), got {w.shape}")
        self.weight = read_only(w)

    @property
    def num_parameters(self):
        return self.weight.shape[0]

    def config(self):
        return {"num_parameters": int(self.num_parameters)}

    def arrays(self):
        return {"weight": self.weight}

    @classmethod
    def from_config(cls, cfg, arrays):
        n, w = cfg_int(cfg, "num_parameters"), arrays.get("weight")
        if w is None or w.shape != (n,):
            raise ValueError(f"needs a weight of shape ({n},), got "
                             f"{None if w is None else w.shape}")
        return cls(w)

    def describe(self):
        n = self.num_parameters
        return f"PReLU {n} slope{'s' if n > 1 else ''}"

    def output_shape(self, shape):
        if self.num_parameters > 1 and shape[0] != self.num_parameters:
            raise ValueError(f"{self!r} has a slope per channel: expects {self.num_parameters} "
                             f"channels, got per-sample shape {tuple(shape)}")
        return tuple(shape)

    def forward(self, x):
        return ops.prelu_forward(x, self.weight.astype(x.dtype, copy=False)), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.prelu_backward(g, x, self.weight.astype(g.dtype, copy=False))


def clamp_layer(low, high, ctx, text):
    """The layer of ``clamp(x, low, high)`` (a bound None: none): ReLU for (0, None or inf) and
    ReLU6 for (0, 6), which keep their kinds, else Hardtanh; ValueError naming the call
    (``text``) for bounds that are not numbers with low < high."""
    if low == 0 and (high is None or high == float("inf")):
        return ReLU()
    if low == 0 and high == 6:
        return ReLU6()
    try:
        return Hardtanh(low, high)
    except (TypeError, ValueError) as exc:
        raise ctx.error(f"{text}: {exc}") from None


def _onnx_clip(ctx):
    """ONNX Clip: bounds as attributes (opset < 11) or constant inputs (scalars)."""
    if ctx.opset < 11:
        low, high = ctx.attrs.get("min", None), ctx.attrs.get("max", None)
    else:
        low = ctx.const(1, "min", required=False)
        high = ctx.const(2, "max", required=False)

    def scalar(v, name):
        if v is None:
            return None
        v = np.asarray(v)
        if v.size != 1:
            raise ctx.error(f"a {name} bound of shape {v.shape} is not supported (one number)")
        return float(v.reshape(-1)[0])

    low, high = scalar(low, "min"), scalar(high, "max")
    return clamp_layer(low, high, ctx, f"Clip(min={low}, max={high})")


def _onnx_max_min(ctx):
    """ONNX Max or Min of the data and one constant number: a clamp from below or above (the
    dynamo exporter writes ``torch.clamp(x, 0)`` as ``Max(x, 0)``)."""
    op = ctx.node.op_type
    if len(ctx.inputs) != 1 or ctx.n_inputs != 2:
        raise ctx.error(f"{op} is supported of one tensor and one constant number only")
    for k in (1, 0):  # Max and Min commute: the constant may be either operand
        try:
            c = np.asarray(ctx.const(k, "the constant operand"))
            break
        except ValueError:
            if k == 0:
                raise
    if c.size != 1:
        raise ctx.error(f"{op} with a constant of shape {c.shape} is not supported (one number)")
    c = float(c.reshape(-1)[0])
    low, high = (c, None) if op == "Max" else (None, c)
    return clamp_layer(low, high, ctx, f"{op}(x, {c})")


def _torch_clamp(names, text):
    """The converter of a clamp whose bounds are the arguments ``names`` (a name None: no such
    bound)."""
    def convert(a, ctx):
        low, high = (None if name is None else ctx.constant(a[name], name) for name in names)
        return clamp_layer(low, high, ctx, f"{text}({low}, {high})")
    return convert


_CLAMP = (("input", ("min", None), ("max", None)), _torch_clamp(("min", "max"), "clamp"))
_CLAMP_MIN = (("input", "min"), _torch_clamp(("min", None), "clamp_min"))
_CLAMP_MAX = (("input", "max"), _torch_clamp((None, "max"), "clamp_max"))


@register_layer
class ReLU6(Elementwise):
    """``min(max(x, 0), 6)`` (MobileNetV2): Hardtanh's kernels with the bounds (0, 6), its own
    kind (as torch's and Zennit's, and for models that name it).  Deconvnet and guided backprop
    pass its gradient ``g * (0 < x < 6)`` (their rule is ReLU's only, as in Captum, whose
    hooks take ``nn.ReLU`` modules).  ``Hardtanh(0, 6)`` and ``clamp(0, 6)`` import as ReLU6
    (and ``clamp(0)`` as ReLU)."""

    kind = "relu6"
    backward_reads_input = True
    imports = (
        TorchModule(("ReLU6",), lambda m, ctx: ReLU6()),
        TorchFunction(("torch.nn.functional.relu6",), ("input", ("inplace", False)),
                      lambda a, ctx: ReLU6()),
    )

    def nonnegative(self, inputs):
        return True

    def forward(self, x):
        return ops.hardtanh_forward(x, 0.0, 6.0), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.hardtanh_backward(g, x, 0.0, 6.0)


def _bound(value, name, none):
    """A Hardtanh bound: a real number, infinite, or None (``none``)."""
    if value is None:
        return none
    if isinstance(value, (numbers.Real, np.floating)) and np.isinf(value):
        return float(value)
    return as_scalar(value, name)


@register_layer
class Hardtanh(Elementwise):
    """``min(max(x, min_val), max_val)`` (``torch.nn.Hardtanh``, ``torch.clamp``,
    ``clamp_min``, ``clamp_max``, ONNX Clip;
    a bound may be infinite: one-sided clamps).  Gradient ``g`` where ``min_val < x < max_val``,
    0 where ``x`` is at or beyond a bound (torch's hardtanh; ``torch.clamp``'s own gradient is
    ``g`` at a bound: only inputs exactly there differ).  Piecewise linear, not a rectifier:
    deconvnet and guided backprop pass its gradient (their rule is ReLU's only, as in Captum),
    LRP passes relevance through it (Zennit's Pass for its activations).  The importers make
    ReLU of ``(0, inf)`` and ReLU6 of ``(0, 6)``."""

    kind = "hardtanh"
    backward_reads_input = True
    _config_args = ("min_val", "max_val")
    imports = (
        TorchModule(("Hardtanh",), lambda m, ctx: clamp_layer(
            m.min_val, m.max_val, ctx, f"Hardtanh({m.min_val}, {m.max_val})")),
        TorchFunction(("torch.nn.functional.hardtanh", "torch.nn.functional.hardtanh_"),
                      ("input", ("min_val", -1.0), ("max_val", 1.0), ("inplace", False)),
                      _torch_clamp(("min_val", "max_val"), "hardtanh")),
        TorchFunction(("torch.clamp", "torch.clip"), *_CLAMP),
        TorchMethod(("clamp", "clamp_", "clip"), *_CLAMP),
        TorchFunction(("torch.clamp_min",), *_CLAMP_MIN),
        TorchMethod(("clamp_min", "clamp_min_"), *_CLAMP_MIN),
        TorchFunction(("torch.clamp_max",), *_CLAMP_MAX),
        TorchMethod(("clamp_max", "clamp_max_"), *_CLAMP_MAX),
        OnnxOp(("Clip",), _onnx_clip),
        OnnxOp(("Max", "Min"), _onnx_max_min),
    )

    def __init__(self, min_val=-1.0, max_val=1.0):
        self.min_val = _bound(min_val, "min_val", -np.inf)
        self.max_val = _bound(max_val, "max_val", np.inf)
        if not self.min_val < self.max_val:
            raise ValueError(f"Hardtanh needs min_val < max_val, got {self.min_val} and "
                             f"{self.max_val}")

    def config(self):  # infinite bounds as null: standard JSON
        return {"min_val": None if np.isinf(self.min_val) else self.min_val,
                "max_val": None if np.isinf(self.max_val) else self.max_val}

    def describe(self):
        return f"Hardtanh [{self.min_val:g}, {self.max_val:g}]"

    @property
    def zero_preserving(self):
        return self.min_val <= 0 <= self.max_val

    def nonnegative(self, inputs):
        return self.min_val >= 0 or (all(inputs) and self.max_val >= 0)

    def forward(self, x):
        return ops.hardtanh_forward(x, self.min_val, self.max_val), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.hardtanh_backward(g, x, self.min_val, self.max_val)


# --- the activations of one kernel pair: ops.activation_forward/backward -------------------------
class KernelActivation(Elementwise):
    """An activation computed by :func:`relprop.ops.activation_forward` with the op ``self.op``
    (a name of ``ops.ACTIVATIONS``: the smooth ones and the hard sigmoid and swish).  Not a
    rectifier: deconvnet and guided backprop pass its gradient; LRP passes relevance through it
    (Zennit's Pass for its activations)."""

    backward_reads_input = True
    op = None

    def forward(self, x):
        return ops.activation_forward(x, self.op), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.activation_backward(g, x, self.op)


def _choice(value, name, choices, ctx=None):
    """``value`` (a str, or ONNX's bytes) if it is one of ``choices``, else ValueError (the
    importer's, naming the call, with ``ctx``)."""
    if isinstance(value, bytes):
        value = value.decode()
    if value not in choices:
        msg = f"{name} must be one of {choices}, got {value!r}"
        raise ctx.error(msg) if ctx is not None else ValueError(msg)
    return value


_GELU_FORMS = ("none", "tanh")


@register_layer
class GELU(KernelActivation):
    """``x Phi(x)`` with ``Phi`` the standard normal distribution function (``approximate=
    "none"``), or its tanh form ``x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) / 2``
    (``approximate="tanh"``), as ``torch.nn.GELU``."""

    kind = "gelu"
    _config_args = ("approximate",)
    imports = (
        TorchModule(("GELU",), lambda m, ctx: GELU(_choice(m.approximate, "approximate",
                                                          _GELU_FORMS, ctx))),
        TorchFunction(("torch.nn.functional.gelu",), ("input", ("approximate", "none")),
                      lambda a, ctx: GELU(_choice(ctx.constant(a["approximate"], "approximate"),
                                                  "approximate", _GELU_FORMS, ctx))),
        OnnxOp(("Gelu",), lambda ctx: GELU(_choice(ctx.attrs.get("approximate", "none"),
                                                   "approximate", _GELU_FORMS, ctx))),
    )

    def __init__(self, approximate="none"):
        self.approximate = _choice(approximate, "approximate", _GELU_FORMS)
        self.op = "gelu" if self.approximate == "none" else "gelu_tanh"

    def config(self):
        return {"approximate": self.approximate}

    def describe(self):
        return "GELU" if self.approximate == "none" else "GELU (tanh)"


_INPLACE = ("input", ("inplace", False))


@register_layer
class SiLU(KernelActivation):
    """``x * sigmoid(x)`` (``torch.nn.SiLU``, EfficientNet's swish).  torch's ONNX exporters
    write it as ``Mul(x, Sigmoid(x))``, which from_onnx reads back as a SiLU (the Mul
    description)."""

    kind = "silu"
    op = "silu"
    imports = (
        TorchModule(("SiLU",), lambda m, ctx: SiLU()),
        TorchFunction(("torch.nn.functional.silu",), _INPLACE, lambda a, ctx: SiLU()),
    )


@register_layer
class Sigmoid(KernelActivation):
    """``1 / (1 + e^-x)`` (``torch.nn.Sigmoid``)."""

    kind = "sigmoid"
    op = "sigmoid"
    gating = True
    zero_preserving = False  # f(0) = 1/2
    imports = (
        TorchModule(("Sigmoid",), lambda m, ctx: Sigmoid()),
        TorchFunction(("torch.sigmoid", "torch.nn.functional.sigmoid", "torch.special.expit"),
                      ("input",), lambda a, ctx: Sigmoid()),
        TorchMethod(("sigmoid", "sigmoid_"), ("input",), lambda a, ctx: Sigmoid()),
        OnnxOp(("Sigmoid",), lambda ctx: Sigmoid()),
    )

    def nonnegative(self, inputs):
        return True


@register_layer
class Tanh(KernelActivation):
    """``tanh(x)`` (``torch.nn.Tanh``)."""

    kind = "tanh"
    op = "tanh"
    imports = (
        TorchModule(("Tanh",), lambda m, ctx: Tanh()),
        TorchFunction(("torch.tanh", "torch.nn.functional.tanh"), ("input",),
                      lambda a, ctx: Tanh()),
        TorchMethod(("tanh", "tanh_"), ("input",), lambda a, ctx: Tanh()),
        OnnxOp(("Tanh",), lambda ctx: Tanh()),
    )


def _onnx_hardsigmoid(ctx):
    alpha, beta = ctx.attrs.get("alpha", 0.2), ctx.attrs.get("beta", 0.5)
    if abs(alpha - 1 / 6) > 1e-6 or beta != 0.5:
        raise ctx.error(f"HardSigmoid(alpha={alpha:g}, beta={beta:g}) is not supported (only "
                        "torch's, alpha=1/6 and beta=1/2)")
    return Hardsigmoid()


@register_layer
class Hardsigmoid(KernelActivation):
    """``min(max(x + 3, 0), 6) / 6`` (``torch.nn.Hardsigmoid``, MobileNetV3's gates); its
    gradient ``1/6`` strictly inside ``(-3, 3)``, as torch's."""

    kind = "hardsigmoid"
    op = "hardsigmoid"
    gating = True
    zero_preserving = False  # f(0) = 1/2
    imports = (
        TorchModule(("Hardsigmoid",), lambda m, ctx: Hardsigmoid()),
        TorchFunction(("torch.nn.functional.hardsigmoid",), _INPLACE,
                      lambda a, ctx: Hardsigmoid()),
        OnnxOp(("HardSigmoid",), _onnx_hardsigmoid),
    )

    def nonnegative(self, inputs):
        return True


@register_layer
class Hardswish(KernelActivation):
    """``x * min(max(x + 3, 0), 6) / 6`` (``torch.nn.Hardswish``, MobileNetV3); its gradient
    0 up to -3, ``x / 3 + 1/2`` below 3 and 1 from 3, as torch's."""

    kind = "hardswish"
    op = "hardswish"
    imports = (
        TorchModule(("Hardswish",), lambda m, ctx: Hardswish()),
        TorchFunction(("torch.nn.functional.hardswish",), _INPLACE, lambda a, ctx: Hardswish()),
        OnnxOp(("HardSwish",), lambda ctx: Hardswish()),
    )
