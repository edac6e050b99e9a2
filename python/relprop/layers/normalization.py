"""Normalization and scaling: inference-mode BatchNorm (folded into the Dense/Conv2d before it
where it can be, else an affine node), LayerNorm, and Scale (a product with a parameter)."""
from __future__ import annotations

import numpy as np

from .. import ops
from .._validate import as_float_array, as_scalar
from .base import Layer, OnnxOp, TorchFunction, TorchModule, cfg_int, numel, register_layer
from .linear import Conv1d, Conv2d, Dense, Linear


@register_layer
class BatchNorm(Layer):
    """Inference-mode batch normalization ``scale * (x - mean) / sqrt(var + eps) + shift`` over
    the channel axis (axis 1).

    Right after a Dense or Conv2d whose output nothing else reads, a network folds it into that
    layer (canonization).  Anywhere else (DenseNet's BatchNorm before a convolution) it stays a
    node: the affine map ``x * s + t`` per channel, with ``s = scale / sqrt(var + eps)`` and
    ``t = shift - mean * s``; LRP passes relevance through it unchanged (Zennit's Pass rule for
    BatchNorm), gradients go through the affine map.
    """

    kind = "batchnorm"
    slots = ("batchnorm",)
    default_rule = "pass"
    elementwise = True
    imports = (
        TorchModule(("BatchNorm1d", "BatchNorm2d"), lambda m, ctx: _torch_batchnorm(m, ctx)),
        OnnxOp(("BatchNormalization",), lambda ctx: _onnx_batchnorm(ctx)),
    )
    expects = (Dense, Conv1d, Conv2d)  # whose weights keep the outputs on axis 0
    _ranks = None  # the per-sample ranks it takes (None: any)

    def __init__(self, scale, shift, mean, var, eps=1e-5):
        self.eps = as_scalar(eps, "eps", minimum=0.0)
        arrs = [as_float_array(a, n, dtype=np.float64)
                for a, n in ((scale, "scale"), (shift, "shift"), (mean, "mean"), (var, "var"))]
        shape = arrs[0].shape
        if len(shape) != 1 or any(a.shape != shape for a in arrs):
            raise ValueError(f"{type(self).__name__}: scale, shift, mean, var must be 1-D of one "
                             f"length, got shapes {[a.shape for a in arrs]}")
        if np.any(arrs[3] + self.eps <= 0):
            raise ValueError(f"{type(self).__name__}: var + eps must be positive")
        self.scale, self.shift, self.mean, self.var = arrs
        self._affine = {}

    @property
    def features(self):
        return int(self.scale.shape[0])

    @classmethod
    def from_config(cls, cfg, arrays):
        missing = [k for k in ("scale", "shift", "mean", "var") if k not in arrays]
        if missing:
            raise ValueError(f"missing {missing}")
        layer = cls(arrays["scale"], arrays["shift"], arrays["mean"], arrays["var"],
                    cfg.get("eps", 1e-5))
        if layer.features != cfg_int(cfg, "features"):
            raise ValueError(f"{layer.features} features != declared {cfg['features']}")
        return layer

    def config(self):
        return {"features": self.features, "eps": self.eps}

    def arrays(self):
        return {"scale": self.scale, "shift": self.shift, "mean": self.mean, "var": self.var}

    def describe(self):
        return f"{type(self).__name__} {self.features} (affine, not folded)"

    def flops(self, in_shapes, out_shape):
        return 2 * numel(out_shape)

    def can_fold_into(self, layer) -> bool:
        return isinstance(layer, self.expects) and layer.weight.shape[0] == self.features

    def fold_into(self, layer: Linear) -> Linear:
        """The layer ``self(layer(x))`` as one Dense/Conv2d."""
        expects = self.expects
        if not isinstance(layer, expects):
            raise ValueError(f"{self!r} can only be folded into a preceding "
                             f"{' or '.join(t.__name__ for t in _as_tuple(expects))}, not "
                             f"{layer!r}")
        out = layer.weight.shape[0]
        if self.features != out:
            raise ValueError(f"{self!r} has {self.features} features but {layer!r} has "
                             f"{out} outputs")
        s = self.scale / np.sqrt(self.var + self.eps)
        w = layer.weight.astype(np.float64) * s.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
        b = np.zeros(out) if layer.bias is None else layer.bias.astype(np.float64)
        b = (b - self.mean) * s + self.shift
        dtype = layer.weight.dtype
        return layer.with_parameters(w.astype(dtype), b.astype(dtype))

    def affine(self, dtype):
        """``(s, t)`` of the affine map in ``dtype`` (cached)."""
        dtype = np.dtype(dtype)
        hit = self._affine.get(dtype.str)
        if hit is None:
            s = self.scale / np.sqrt(self.var + self.eps)
            t = self.shift - self.mean * s
            hit = self._affine.setdefault(dtype.str, (s.astype(dtype), t.astype(dtype)))
        return hit

    def output_shape(self, shape):
        if self._ranks is not None and len(shape) not in self._ranks:
            ranks = " or ".join(map(str, self._ranks))
            raise ValueError(f"{self!r} expects per-sample rank {ranks}, got shape "
                             f"{tuple(shape)}")
        if not shape or shape[0] != self.features:
            raise ValueError(f"{self!r} expects {self.features} channels, got shape "
                             f"{tuple(shape)}")
        return tuple(shape)

    def forward(self, x):
        s, t = self.affine(x.dtype)
        return ops.channel_affine(x, s, t), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.channel_affine(g, self.affine(g.dtype)[0])


def _as_tuple(t):
    return t if isinstance(t, tuple) else (t,)


@register_layer
class BatchNorm1d(BatchNorm):
    """BatchNorm over the features of a Dense output, or the channels of a Conv1d's (torch's
    BatchNorm1d on (N, C) and (N, C, L))."""

    kind = "batchnorm1d"
    expects = (Dense, Conv1d)
    _ranks = (1, 2)


@register_layer
class BatchNorm2d(BatchNorm):
    """BatchNorm over the channels of a Conv2d output."""

    kind = "batchnorm2d"
    expects = (Conv2d,)
    _ranks = (3,)


# --- importer converters ------------------------------------------------------------------------
def _batchnorm(ctx, scale, shift, mean, var, eps):
    """BatchNorm2d on per-sample (c, h, w) inputs, else BatchNorm1d."""
    cls = BatchNorm2d if len(ctx.shape) == 3 else BatchNorm1d
    try:
        return cls(scale, shift, mean, var, eps=eps)
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None


def _torch_batchnorm(m, ctx):
    if m.running_mean is None or m.running_var is None:
        raise ctx.error("track_running_stats=False (no running statistics) is not supported")
    n = m.num_features
    scale = ctx.array(m.weight) if m.affine else np.ones(n)
    shift = ctx.array(m.bias) if m.affine else np.zeros(n)
    return _batchnorm(ctx, scale, shift, ctx.array(m.running_mean), ctx.array(m.running_var),
                      float(m.eps))


def _onnx_batchnorm(ctx):
    if ctx.attrs.get("training_mode", 0):
        raise ctx.error("training_mode=1 is not supported")
    params = (ctx.const(i, n) for i, n in enumerate(("scale", "B", "mean", "var"), start=1))
    return _batchnorm(ctx, *params, float(ctx.attrs.get("epsilon", 1e-5)))


# --- layer normalization ------------------------------------------------------------------------
#: The axes LayerNorm normalizes over: a sample's last (torch.nn.LayerNorm: ViT's tokens, the
#: features of an MLP) or its first, the channels of NCHW (ConvNeXt's LayerNorm2d).
LAYER_NORM_AXES = {"last": -1, "channels": 1}


@register_layer
class LayerNorm(Layer):
    """Layer normalization over one axis of each sample: ``(x - mean) / sqrt(var + eps) * weight
    + bias``, mean and (biased) variance over the last axis (``axis="last"``, as
    ``torch.nn.LayerNorm(d)``) or over the channels (``axis="channels"``, axis 1 of NCHW, as
    ConvNeXt normalizes between its permutes); weight and bias ``(d,)`` or None (1 and 0).

    LRP: the Norm rule on the map with the standard deviation held constant, ``R_x = x *
    A^T (R_y / stab(y))`` with ``A = diag(weight / std) (I - 1/d)`` along the axis: the identity
    rule for the division by the standard deviation with the centering kept as the linear map it
    is, as LXT's ``layer_norm_forward`` computes it (conserving without a bias); gradients go
    through the whole map.
    """

    kind = "layernorm"
    slots = ("layernorm",)
    default_rule = "norm"
    backward_reads_input = True
    imports = (
        TorchModule(("LayerNorm",), lambda m, ctx: _torch_layernorm(m, ctx)),
        TorchFunction(("torch.nn.functional.layer_norm",),
                      ("input", "normalized_shape", ("weight", None), ("bias", None),
                       ("eps", 1e-5)), lambda a, ctx: _torch_f_layernorm(a, ctx)),
        OnnxOp(("LayerNormalization",), lambda ctx: _onnx_layernorm(ctx)),
    )

    def __init__(self, weight=None, bias=None, eps=1e-5, axis="last", features=None):
        if axis not in LAYER_NORM_AXES:
            raise ValueError(f"LayerNorm axis must be one of {sorted(LAYER_NORM_AXES)}, got "
                             f"{axis!r}")
        self.axis = axis
        self.eps = as_scalar(eps, "eps", minimum=0.0)
        self.weight = None if weight is None else as_float_array(weight, "weight")
        self.bias = None if bias is None else as_float_array(bias, "bias")
        sizes = {len(a) if a.ndim == 1 else -1 for a in (self.weight, self.bias) if a is not None}
        if features is not None:
            sizes.add(int(features))
        if len(sizes) != 1 or min(sizes) < 1:
            raise ValueError("LayerNorm: weight and bias must be 1-D of one length d >= 1 (or, "
                             f"with neither, give features=d); got weight "
                             f"{None if weight is None else self.weight.shape}, bias "
                             f"{None if bias is None else self.bias.shape}, features={features}")
        self.features = sizes.pop()
        self._params = {}

    @classmethod
    def from_config(cls, cfg, arrays):
        layer = cls(arrays.get("weight"), arrays.get("bias"), cfg.get("eps", 1e-5),
                    cfg.get("axis", "last"), cfg_int(cfg, "features"))
        return layer

    def config(self):
        return {"features": self.features, "eps": self.eps, "axis": self.axis}

    def arrays(self):
        return {k: v for k, v in (("weight", self.weight), ("bias", self.bias)) if v is not None}

    def describe(self):
        where = "channels" if self.axis == "channels" else "last axis"
        return f"LayerNorm {self.features} ({where})"

    def flops(self, in_shapes, out_shape):
        return 8 * numel(out_shape)

    def output_shape(self, shape):
        at = LAYER_NORM_AXES[self.axis] - 1 if self.axis == "channels" else -1
        if not shape or shape[at] != self.features:
            where = "channels (first axis)" if self.axis == "channels" else "last axis"
            raise ValueError(f"{self!r} expects {self.features} features on its {where} per "
                             f"sample, got shape {tuple(shape)}")
        return tuple(shape)

    def params(self, dtype):
        """``(weight, bias)`` in ``dtype`` (cached; None where absent)."""
        dtype = np.dtype(dtype)
        hit = self._params.get(dtype.str)
        if hit is None:
            hit = self._params.setdefault(dtype.str, tuple(
                None if a is None else np.ascontiguousarray(a, dtype=dtype)
                for a in (self.weight, self.bias)))
        return hit

    def forward(self, x):
        w, b = self.params(x.dtype)
        y, mean, rstd = ops.layer_norm_forward(x, w, b, LAYER_NORM_AXES[self.axis], self.eps)
        return y, (mean, rstd)

    def backward(self, g, x, state, relu_mode="gradient"):
        mean, rstd = state
        return ops.layer_norm_backward(g, x, self.params(g.dtype)[0], mean, rstd,
                                       LAYER_NORM_AXES[self.axis])

    def linear_backward(self, g, x, state):
        return ops.layer_norm_backward(g, None, self.params(g.dtype)[0], None, state[1],
                                       LAYER_NORM_AXES[self.axis], frozen_std=True)


def _layernorm(ctx, normalized_shape, weight, bias, eps):
    shape = tuple(normalized_shape) if isinstance(normalized_shape, (list, tuple)) else \
        (normalized_shape,)
    if len(shape) != 1:
        raise ctx.error(f"LayerNorm over the last {len(shape)} axes {shape} is not supported "
                        "(relprop normalizes over one axis)")
    try:
        return LayerNorm(weight, bias, eps, "last", features=int(shape[0]))
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None


def _torch_layernorm(m, ctx):
    weight = None if getattr(m, "weight", None) is None else ctx.array(m.weight)
    bias = None if getattr(m, "bias", None) is None else ctx.array(m.bias)
    return _layernorm(ctx, m.normalized_shape, weight, bias, float(m.eps))


def _torch_f_layernorm(a, ctx):
    weight, bias = (None if a[k] is None else ctx.parameter(a[k], k) for k in ("weight", "bias"))
    return _layernorm(ctx, ctx.constant(a["normalized_shape"], "normalized_shape"), weight, bias,
                      float(ctx.constant(a["eps"], "eps")))


def _onnx_layernorm(ctx):
    axis = ctx.attrs.get("axis", -1)
    rank = len(ctx.shape) + 1
    if axis % rank != rank - 1:
        raise ctx.error(f"LayerNormalization over axes {axis}..{rank - 1} is not supported "
                        "(relprop normalizes over one axis, the last)")
    scale = ctx.const(1, "Scale")
    return _layernorm(ctx, scale.shape, scale, ctx.const(2, "B", required=False),
                      float(ctx.attrs.get("epsilon", 1e-5)))


# --- a product with a parameter ------------------------------------------------------------------
@register_layer
class Scale(Layer):
    """``x * weight`` with a parameter ``weight`` broadcast against each sample: ``(c, 1, 1)``
    per channel (ConvNeXt's layer scale), ``(d,)`` per feature of the last axis, a scalar.

    A linear map: LRP's Norm rule (``R_x = x w R / stab(x w)``, relevance straight through up
    to the stabilizer); gradients ``g * w``.  Made by the importers from a product with a
    module parameter or a number (the Mul description's entries)."""

    kind = "scale"
    slots = ("scale",)
    default_rule = "norm"

    def __init__(self, weight):
        self.weight = as_float_array(weight, "weight")
        self._cache = {}

    @classmethod
    def from_config(cls, cfg, arrays):
        if "weight" not in arrays:
            raise ValueError("missing weight")
        if cfg.get("shape") != list(arrays["weight"].shape):
            raise ValueError(f"has 'shape' {cfg.get('shape')!r} but a weight of shape "
                             f"{arrays['weight'].shape}")
        return cls(arrays["weight"])

    def config(self):
        return {"shape": list(self.weight.shape)}

    def arrays(self):
        return {"weight": self.weight}

    def describe(self):
        return f"Scale {'x'.join(map(str, self.weight.shape)) or 'scalar'}"

    def flops(self, in_shapes, out_shape):
        return numel(out_shape)

    def output_shape(self, shape):
        if self.weight.ndim > len(shape) or tuple(np.broadcast_shapes(
                tuple(shape), self.weight.shape)) != tuple(shape):
            raise ValueError(f"{type(self).__name__} of shape {self.weight.shape} does not "
                             f"broadcast against samples of shape {tuple(shape)} (it may not "
                             "grow them)")
        return tuple(shape)

    def _apply(self, x):
        """``x * weight``: as one per-channel pass (``ops.channel_affine`` on the view of ``x``
        around the weight's one axis longer than 1), else NumPy's broadcast product."""
        dtype = x.dtype.str
        w = self._cache.get(dtype)
        if w is None:
            w = self._cache.setdefault(dtype, np.ascontiguousarray(self.weight, dtype=x.dtype))
        long = [k for k, s in enumerate(w.shape) if s != 1]
        if len(long) > 1:
            return x * w
        axis = x.ndim - w.ndim + (long[0] if long else w.ndim)  # the weight's axis in x
        outer = int(np.prod(x.shape[:axis], dtype=np.int64))
        c = x.shape[axis] if long else 1
        x3 = x.reshape(outer, c, -1)
        return ops.channel_affine(x3, w.reshape(c)).reshape(x.shape)

    def forward(self, x):
        return self._apply(x), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return self._apply(g)
