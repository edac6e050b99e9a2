"""Layers with weights: Dense, Conv2d, ConvTranspose2d and Conv1d (the ``linear`` slot: LRP's
linear rules apply to them).  They describe; their passes run through plans
(:mod:`relprop.plans`), made once per weights, input shape, dtype and direction and cached on
the layer."""
from __future__ import annotations

import threading

import numpy as np

from .. import ops, plans
from .._validate import as_float_array, as_int, as_pair
from .base import (
    Layer,
    OnnxOp,
    TorchFunction,
    TorchModule,
    cfg_int,
    cfg_pair,
    numel,
    pair_text,
    plane_window,
    read_only,
    register_layer,
    single,
    window_out,
)
from .pooling import MaxPool2d


def release_memory() -> None:
    """Return the memory relprop keeps for reuse to the system.

    Large outputs (activations, relevances) and the kernels' large scratch buffers
    (workspaces, held only during a kernel call) are allocated from a pool: memory freed by one
    call is taken by the next call's requests that fit in it, already mapped, which saves the
    operating system's page faults and zeroing (about a fifth of a CNN's gradient).  The pool
    never holds more than the largest amount of memory in use from it at any earlier moment
    minus what is in use now, so it does not raise the process's memory high-water mark; this
    call frees it, and the packed weights that the plans of Dense and Conv2d layers keep
    (:mod:`relprop.plans`).  :func:`relprop.ops.memory_stats` shows both.  Workers of
    ``relprop.dask`` call it when they have been idle for a while
    (``relprop.dask.WORKER_IDLE_SECONDS``).
    """
    plans.release_packed()
    ops.release_pool()


class Linear(Layer):
    """A layer ``y = W x + b`` (Dense or Conv2d): holds the parameters and their modified copies.

    Composites must name its rule (no default); its kernels apply a ReLU reading it alone in
    their store, and the mask of a ReLU it alone reads in their backward store."""

    linear = True
    takes_epilogue = True

    def __init__(self, weight, bias, weight_rank, outputs=None):
        """``outputs``: the number of outputs (channels), the bias' length (default: the
        weight's first axis)."""
        w = as_float_array(weight, "weight")
        if w.ndim != weight_rank:
            raise ValueError(f"{type(self).__name__} weight must have {weight_rank} dimensions, "
                             f"got shape {w.shape}")
        if w.size == 0:
            raise ValueError(f"{type(self).__name__} weight must not be empty, got shape {w.shape}")
        if bias is not None:
            b = as_float_array(bias, "bias", dtype=w.dtype)
            outputs = w.shape[0] if outputs is None else outputs
            if b.shape != (outputs,):
                raise ValueError(f"{type(self).__name__} bias must have shape ({outputs},), got "
                                 f"{b.shape}")
            bias = read_only(b)
        self._weight, self._bias = read_only(w), bias
        self._init_caches()

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._weight = read_only(self._weight)  # unpickled arrays are writeable copies
        if self._bias is not None:
            self._bias = read_only(self._bias)
        self._init_caches()

    def _init_caches(self):
        self._cache = {}
        self._plans = {}
        self._lock = threading.Lock()

    # Read-only: rule-modified and packed copies of the parameters are cached, so they must not
    # change under them (build a new layer instead).
    @property
    def weight(self):
        return self._weight

    @property
    def bias(self):
        return self._bias

    def arrays(self):
        out = {"weight": self.weight}
        if self.bias is not None:
            out["bias"] = self.bias
        return out

    @staticmethod
    def _parameters(cls, cfg, arrays, weight_shape):
        """``(weight, bias)`` from ``arrays``, the weight checked against the declared shape."""
        w = arrays.get("weight")
        if w is None:
            raise ValueError("missing weight")
        if tuple(w.shape) != tuple(weight_shape):
            raise ValueError(f"weight shape {tuple(w.shape)} != declared {tuple(weight_shape)}")
        return w, arrays.get("bias")

    def with_parameters(self, weight, bias):
        """The same layer (stride, padding, ...) with other parameters."""
        raise NotImplementedError

    def modified(self, key, fn, dtype):
        """``fn(weight, bias) -> (weight', bias')`` in ``dtype``, computed once and cached.

        ``key`` names the modification (e.g. ``("gamma+", 0.25)``); the cache lives as long as
        the layer, so a rule's weights are made once per (network, rule, dtype).
        """
        dtype = np.dtype(dtype)
        ck = (key, dtype.str)
        hit = self._cache.get(ck)
        if hit is None:
            w = self.weight.astype(dtype, copy=False)
            b = None if self.bias is None else self.bias.astype(dtype, copy=False)
            w2, b2 = fn(w, b)
            hit = (np.ascontiguousarray(w2, dtype=dtype),
                   None if b2 is None else np.ascontiguousarray(b2, dtype=dtype))
            with self._lock:
                hit = self._cache.setdefault(ck, hit)
        return hit

    #: Plans kept per layer (beyond, a call makes its plan and lets it go).
    MAX_PLANS = 64

    def plan(self, w, x_shape, backward=False, exact=False):
        """The plan (:mod:`relprop.plans`) of this layer's forward pass, or its ``backward``
        pass, with the weights ``w`` (its own or rule-modified ones, in the computation's dtype)
        on inputs of shape ``x_shape`` (the batch is ignored: one sample's shape decides), made
        once and cached; ``exact`` asks for the direct method (see ``rules.AlphaBeta``)."""
        request = self._request(exact)
        # the key holds the memory of w; the plan keeps w alive, so that memory is not reused
        key = (w.__array_interface__["data"][0], w.shape, w.strides, w.dtype.str,
               tuple(x_shape[1:]), backward, request, ops.isa())
        hit = self._plans.get(key)
        if hit is None:
            hit = self._make_plan(w, tuple(int(s) for s in x_shape[1:]), backward, request)
            if len(self._plans) < self.MAX_PLANS:
                with self._lock:
                    hit = self._plans.setdefault(key, hit)
        return hit

    def _request(self, exact):
        return None

    def _make_plan(self, w, sample, backward, request):
        raise NotImplementedError

    def params(self, dtype):
        """``(weight, bias)`` in ``dtype`` (cached)."""
        return self.modified("identity", lambda w, b: (w, b), dtype)

    def forward(self, x, exact=False, relu=False):
        """``(y, None)``; with ``relu`` ``y`` is the output's ReLU, made by the kernel's store
        (bitwise ``ReLU().forward(y)``: the engine fuses a ReLU that reads the layer alone)."""
        w, b = self.params(x.dtype)
        return self.apply(x, w, b, exact, relu=relu), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return self.apply_t(g, self.params(g.dtype)[0], x.shape)

    def backward_masked(self, g, x):
        """The gradient w.r.t. the input ``x``, times ``x > 0`` (made by the kernel's store):
        the backward pass of this layer and of the ReLU whose output ``x`` is (``relu(z) > 0``
        exactly where ``z > 0``), bitwise as the two apart."""
        return self.apply_t(g, self.params(g.dtype)[0], x.shape, mask=x)

    # ``exact=True`` asks for the direct method, whose sums of terms of one sign are exact
    # zeros where every term is (Winograd's transforms mix terms: see rules.AlphaBeta).
    # ``relu=True`` returns the output's ReLU; ``mask`` (shaped like the input) multiplies the
    # result of ``apply_t`` by ``mask > 0``, both in the kernel's store.
    def apply(self, x, w, b, exact=False, relu=False):
        raise NotImplementedError

    def apply_split(self, x, w, b, exact=False):
        """``apply`` with two weight arrays stacked along axis 0 and their biases concatenated
        (the rules' ``[W+; W-]``), returned as two outputs: the first array's and the
        second's."""
        raise NotImplementedError

    def apply_t(self, g, w, x_shape, exact=False, mask=None):
        raise NotImplementedError

    def lrp_epsilon(self, r, z, a, w, eps, exact=False):
        """``a * apply_t(ops.lrp_divide(r, z, eps), w)`` in one kernel (the division in the
        transposed GEMM's operand packing, the product in its store), bitwise the same."""
        raise NotImplementedError

    def apply_t_stacked(self, g, w, x_shape, exact=False):
        """``apply_t`` of stacked weights ``w = [w1; w2]`` to stacked upper values
        ``g = [g1; g2]`` (output axis doubled): ``w1^T g1 + w2^T g2``."""
        return self.apply_t(g, w, x_shape, exact)


@register_layer
class Dense(Linear):
    """Fully connected layer ``y = x W^T + b``; weight ``(out, in)`` as ``torch.nn.Linear``,
    applied to the last axis of its input: per-sample shape ``(..., in)`` -> ``(..., out)``
    (``(in,)`` for an MLP, ``(tokens, in)`` or ``(h, w, in)`` elsewhere), every row of the
    ``(n * ..., in)`` matrix alone."""

    kind = "dense"
    slots = ("dense", "linear")
    imports = (
        TorchModule(("Linear",), lambda m, ctx: Dense(
            ctx.array(m.weight), None if m.bias is None else ctx.array(m.bias))),
        OnnxOp(("Gemm",), lambda ctx: _onnx_gemm(ctx)),
        OnnxOp(("MatMul",), lambda ctx: _onnx_matmul(ctx)),
    )

    def __init__(self, weight, bias=None):
        super().__init__(weight, bias, 2)

    def with_parameters(self, weight, bias):
        return Dense(weight, bias)

    @classmethod
    def from_config(cls, cfg, arrays):
        want = (cfg_int(cfg, "out_features"), cfg_int(cfg, "in_features"))
        return cls(*cls._parameters(cls, cfg, arrays, want))

    def _make_plan(self, w, sample, backward, request):
        return plans.DensePlan(w, backward)

    @property
    def in_features(self):
        return self.weight.shape[1]

    @property
    def out_features(self):
        return self.weight.shape[0]

    def config(self):
        return {"in_features": int(self.in_features), "out_features": int(self.out_features)}

    def describe(self):
        return f"Dense {self.in_features}->{self.out_features}"

    def flops(self, in_shapes, out_shape):
        rows = numel(in_shapes[0][:-1])
        return rows * 2 * self.weight.size + (numel(out_shape) if self.bias is not None else 0)

    def output_shape(self, shape):
        if len(shape) < 1 or shape[-1] != self.in_features:
            raise ValueError(f"{self!r} expects (..., {self.in_features}) per sample (its last "
                             f"axis), got {tuple(shape)} (add a Flatten layer before it?)")
        return tuple(shape[:-1]) + (self.out_features,)

    # The kernels multiply 2-D (rows, features) matrices: an input (n, ..., in) is the matrix of
    # its n * ... rows (a view), the output is shaped back.
    @staticmethod
    def _rows(a):
        return None if a is None else a.reshape(-1, a.shape[-1])

    def apply(self, x, w, b, exact=False, relu=False):
        return self.plan(w, x.shape).forward(self._rows(x), b, relu).reshape(
            x.shape[:-1] + (w.shape[0],))

    def apply_split(self, x, w, b, exact=False):
        # two GEMMs on the row blocks of w (contiguous): no stacked output to split
        split = w.shape[0] // 2
        return tuple(self.apply(x, w[sl], None if b is None else b[sl])
                     for sl in (slice(None, split), slice(split, None)))

    def apply_t(self, g, w, x_shape, exact=False, mask=None):
        return self.plan(w, x_shape, True).backward(self._rows(g), self._rows(mask)).reshape(
            x_shape)

    def lrp_epsilon(self, r, z, a, w, eps, exact=False):
        return self.plan(w, a.shape, True).lrp_epsilon(
            self._rows(r), self._rows(z), self._rows(a), eps).reshape(a.shape)

    def apply_t_stacked(self, g, w, x_shape, exact=False):
        if len(x_shape) == 2:  # rows [g1 g2]: one GEMM on the stacked weights
            return self.apply_t(g, w, x_shape, exact)
        # the stacked shares double the first axis after the batch: g = [g1; g2] per sample
        half = w.shape[0] // 2
        g = g.reshape((len(g), 2) + tuple(x_shape[1:-1]) + (half,))
        out = self.apply_t(np.ascontiguousarray(g[:, 0]), w[:half], x_shape, exact)
        out += self.apply_t(np.ascontiguousarray(g[:, 1]), w[half:], x_shape, exact)
        return out


#: What a Conv2d asks its plans for (``ops.conv2d_plan``'s ``request``): "auto" chooses from the
#: layer and one sample's shape (Winograd for stride-1 3x3 float32 layers where the ISA's table
#: says it is faster), "direct" never runs Winograd, "winograd" runs it wherever it applies
#: (any float dtype).
CONV_ALGORITHMS = ops.CONV_REQUESTS
_algorithm_override = None


def set_conv_algorithm(name=None):
    """Run every Conv2d with the algorithm ``name`` ("auto", "direct" or "winograd"; Winograd
    where it applies, direct elsewhere), or with ``None`` each layer with its own ``algorithm``
    (the default).  Process-wide, for comparisons and tests; results of the algorithms differ by
    rounding (see ``ops.conv2d_winograd_forward`` for Winograd's error bound)."""
    global _algorithm_override
    if name is not None and name not in CONV_ALGORITHMS:
        raise ValueError(f"conv algorithm must be one of {CONV_ALGORITHMS} or None, got {name!r}")
    _algorithm_override = name


def get_conv_algorithm():
    """The algorithm set by :func:`set_conv_algorithm` (None: each layer's own)."""
    return _algorithm_override


def _groups_text(conv):
    """A convolution's groups for its description: "" (one group), " depthwise" or " groups g"."""
    if conv.groups == 1:
        return ""
    return " depthwise" if conv.groups == conv.in_channels else f" groups {conv.groups}"


def _conv_flops(conv, out_shape):
    """A convolution's FLOPs for one sample: a multiply-add per output and weight of its
    group, the bias added to each output."""
    n_out = numel(out_shape)
    return n_out * 2 * numel(conv.weight.shape[1:]) + (n_out if conv.bias is not None else 0)


@register_layer
class Conv2d(Linear):
    """2-D convolution as ``torch.nn.Conv2d`` (NCHW, zero padding); weight
    ``(out, in // groups, kh, kw)``.  ``groups == in`` is a depthwise convolution.

    ``algorithm`` (see :data:`CONV_ALGORITHMS`) is what the layer's plans ask the planner for
    (``ops.conv2d_plan``): "auto" (default) runs stride-1 3x3 float32 layers by Winograd's
    F(4x4, 3x3) or F(2x2, 3x3) where the ISA's table says that is faster (4x or 2.25x fewer
    multiply-adds; error at most 1e-5 of the largest output, ``ops.conv2d_winograd_forward``),
    everything else by the implicit GEMM or the depthwise kernel; "direct" never uses Winograd;
    "winograd" always (F(4x4) where "auto" would not; the layer must be stride-1 3x3 with
    padding <= 2, dilation 1, groups 1).  :meth:`plan` gives the plan of each pass.
    """

    kind = "conv2d"
    slots = ("convolution", "linear")
    imports = (
        TorchModule(("Conv2d",), lambda m, ctx: _torch_conv2d(m, ctx)),
        OnnxOp(("Conv",), lambda ctx: _onnx_conv(ctx)),
    )

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1,
                 algorithm="auto"):
        super().__init__(weight, bias, 4)
        self.stride = as_pair(stride, "stride", minimum=1)
        self.padding = as_pair(padding, "padding", minimum=0)
        self.dilation = as_pair(dilation, "dilation", minimum=1)
        self.groups = as_int(groups, "groups", minimum=1)
        if self.weight.shape[0] % self.groups:
            raise ValueError(f"Conv2d with groups={self.groups} needs a number of output "
                             f"channels divisible by it, got weight {self.weight.shape}")
        if algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"Conv2d algorithm must be one of {CONV_ALGORITHMS}, got "
                             f"{algorithm!r}")
        winograd_applies = (self.weight.shape[2:] == (3, 3) and self.stride == (1, 1)
                            and self.dilation == (1, 1) and self.groups == 1
                            and max(self.padding) <= 2)
        if algorithm == "winograd" and not winograd_applies:
            raise ValueError(f"Conv2d algorithm='winograd' needs a 3x3 kernel, stride 1, "
                             f"dilation 1, groups 1 and padding <= 2; got weight "
                             f"{self.weight.shape}, stride {self.stride}, padding "
                             f"{self.padding}, dilation {self.dilation}, groups {self.groups}")
        self.algorithm = algorithm

    def _request(self, exact):
        return "direct" if exact else (_algorithm_override or self.algorithm)

    def _make_plan(self, w, sample, backward, request):
        return plans.ConvPlan(self, w, sample, backward, request)

    @property
    def in_channels(self):
        return self.weight.shape[1] * self.groups

    def with_parameters(self, weight, bias):
        return Conv2d(weight, bias, self.stride, self.padding, self.dilation, self.groups,
                      self.algorithm)

    @classmethod
    def from_config(cls, cfg, arrays):
        k = cfg_pair(cfg, "kernel_size")
        groups = cfg_int(cfg, "groups", 1)
        want = (cfg_int(cfg, "out_channels"), cfg_int(cfg, "in_channels") // max(groups, 1), *k)
        w, b = cls._parameters(cls, cfg, arrays, want)
        algorithm = cfg.get("algorithm", "auto")
        if algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"has a bad 'algorithm': {algorithm!r}")
        return cls(w, b, cfg_pair(cfg, "stride"), cfg_pair(cfg, "padding"),
                   cfg_pair(cfg, "dilation", (1, 1)), groups, algorithm)

    def config(self):
        o, _, kh, kw = self.weight.shape
        cfg = {"in_channels": int(self.in_channels), "out_channels": int(o),
               "kernel_size": [int(kh), int(kw)], "stride": list(self.stride),
               "padding": list(self.padding)}
        if self.dilation != (1, 1):
            cfg["dilation"] = list(self.dilation)
        if self.groups != 1:
            cfg["groups"] = self.groups
        if self.algorithm != "auto":
            cfg["algorithm"] = self.algorithm
        return cfg

    def describe(self):
        o, _, kh, kw = self.weight.shape
        text = (f"Conv2d {self.in_channels}->{o} {kh}x{kw} stride {pair_text(self.stride)} "
                f"pad {pair_text(self.padding)}")
        if self.dilation != (1, 1):
            text += f" dil {pair_text(self.dilation)}"
        return text + _groups_text(self)

    def flops(self, in_shapes, out_shape):
        return _conv_flops(self, out_shape)

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        c, h, w = shape
        o, _, kh, kw = self.weight.shape
        if c != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} input channels, got shape "
                             f"{tuple(shape)}")
        return (o,) + window_out(self, (h, w), self._extent(), self.stride, self.padding)

    def _extent(self):
        """The window's extent: the kernel size with dilation."""
        kh, kw = self.weight.shape[2:]
        return (self.dilation[0] * (kh - 1) + 1, self.dilation[1] * (kw - 1) + 1)

    def apply(self, x, w, b, exact=False, relu=False):
        return self.plan(w, x.shape, False, exact).forward(x, b, relu)

    def fuses_pool(self, pool):
        """Whether :meth:`forward_relu_pool` can stand for this layer, a ReLU and ``pool``: a
        2x2 stride-2 max pooling without padding (floor mode)."""
        return (isinstance(pool, MaxPool2d) and pool.kernel_size == (2, 2)
                and pool.stride == (2, 2) and pool.padding == (0, 0) and not pool.ceil_mode)

    def forward_relu_pool(self, x):
        """This layer, a ReLU and a 2x2 stride-2 max pooling in one kernel: ``(pooled,
        argmax)``, bitwise the three layers apart (``ops.conv2d_forward_relu_maxpool``)."""
        w, b = self.params(x.dtype)
        return self.plan(w, x.shape).forward_relu_pool(x, b)

    def backward_relu_pool(self, g, argmax, pooled, x, mask=False):
        """The gradient of :meth:`forward_relu_pool` w.r.t. ``x`` (a stand-in with its shape
        will do) from the pooled gradient ``g``; with ``mask`` also times ``x > 0``
        (``ops.conv2d_backward_pooled``)."""
        return self.plan(self.params(g.dtype)[0], x.shape, True).backward_pooled(
            g, argmax, pooled, x.shape, x if mask else None)

    def apply_split(self, x, w, b, exact=False):
        split = w.shape[0] // 2
        if self.groups != 1:  # stacking breaks the groups: one call per weight set
            return tuple(self.apply(x, w[sl], None if b is None else b[sl], exact)
                         for sl in (slice(None, split), slice(split, None)))
        # one pass for both weight sets, written to two outputs
        return self.plan(w, x.shape, False, exact).forward_split(x, b, split)

    def apply_t(self, g, w, x_shape, exact=False, mask=None):
        return self.plan(w, x_shape, True, exact).backward(g, x_shape, mask)

    def lrp_epsilon(self, r, z, a, w, eps, exact=False):
        return self.plan(w, a.shape, True, exact).lrp_epsilon(r, z, a, eps)

    def apply_t_stacked(self, g, w, x_shape, exact=False):
        if self.groups == 1:
            return self.apply_t(g, w, x_shape, exact)
        half = w.shape[0] // 2
        out = self.apply_t(np.ascontiguousarray(g[:, :half]), w[:half], x_shape, exact)
        out += self.apply_t(np.ascontiguousarray(g[:, half:]), w[half:], x_shape, exact)
        return out


@register_layer
class ConvTranspose2d(Linear):
    """Transposed 2-D convolution as ``torch.nn.ConvTranspose2d`` (NCHW, zero padding); weight
    ``(in, out // groups, kh, kw)``, and ``stride``, ``padding``, ``output_padding``,
    ``dilation``, ``groups`` as torch's (``output_padding`` below ``stride`` or ``dilation``).

    It is the adjoint of the Conv2d with its weight, stride, padding, dilation and groups, from
    ``out`` to ``in`` channels (``conv``): its forward pass is that convolution's backward pass
    (plus the bias) and its backward pass that convolution's forward pass, the same kernels,
    algorithms and packings (an ``output_padding`` of a stride or more, which needs a larger
    dilation, gives that convolution zero inputs past the last).  It takes the composites'
    convolution slot, as Zennit's Convolution type covers ConvTranspose2d, so its LRP rules are
    Conv2d's."""

    kind = "convtranspose2d"
    slots = ("convolution", "linear")
    takes_epilogue = False  # its kernels apply no ReLU store or mask
    imports = (
        TorchModule(("ConvTranspose2d",), lambda m, ctx: _torch_conv_transpose2d(m, ctx)),
        TorchFunction(("torch.nn.functional.conv_transpose2d", "torch.conv_transpose2d"),
                      ("input", "weight", ("bias", None), ("stride", 1), ("padding", 0),
                       ("output_padding", 0), ("groups", 1), ("dilation", 1)),
                      lambda a, ctx: _torch_conv_transpose2d_function(a, ctx)),
        OnnxOp(("ConvTranspose",), lambda ctx: _onnx_conv_transpose(ctx)),
    )

    def __init__(self, weight, bias=None, stride=1, padding=0, output_padding=0, dilation=1,
                 groups=1, algorithm="auto"):
        groups = as_int(groups, "groups", minimum=1)
        w = as_float_array(weight, "weight")
        super().__init__(w, bias, 4, outputs=w.shape[1] * groups if w.ndim == 4 else None)
        self.conv = Conv2d(self.weight, None, stride, padding, dilation, groups, algorithm)
        self.stride, self.padding = self.conv.stride, self.conv.padding
        self.dilation, self.groups, self.algorithm = self.conv.dilation, groups, algorithm
        self.output_padding = as_pair(output_padding, "output_padding", minimum=0)
        if any(op >= max(s, d) for op, s, d in zip(self.output_padding, self.stride,
                                                     self.dilation)):
            raise ValueError(f"ConvTranspose2d output_padding {self.output_padding} must be "
                             f"smaller than the stride {self.stride} or the dilation "
                             f"{self.dilation}")

    @property
    def in_channels(self):
        return self.weight.shape[0]

    @property
    def out_channels(self):
        return self.weight.shape[1] * self.groups

    def with_parameters(self, weight, bias):
        return ConvTranspose2d(weight, bias, self.stride, self.padding, self.output_padding,
                               self.dilation, self.groups, self.algorithm)

    @classmethod
    def from_config(cls, cfg, arrays):
        k = cfg_pair(cfg, "kernel_size")
        groups = cfg_int(cfg, "groups", 1)
        want = (cfg_int(cfg, "in_channels"), cfg_int(cfg, "out_channels") // groups, *k)
        w, b = cls._parameters(cls, cfg, arrays, want)
        algorithm = cfg.get("algorithm", "auto")
        if algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"has a bad 'algorithm': {algorithm!r}")
        return cls(w, b, cfg_pair(cfg, "stride"), cfg_pair(cfg, "padding"),
                   cfg_pair(cfg, "output_padding", (0, 0)), cfg_pair(cfg, "dilation", (1, 1)),
                   groups, algorithm)

    def config(self):
        cfg = self.conv.config()
        cfg["in_channels"], cfg["out_channels"] = int(self.in_channels), int(self.out_channels)
        if self.output_padding != (0, 0):
            cfg["output_padding"] = list(self.output_padding)
        return cfg

    def describe(self):
        _, _, kh, kw = self.weight.shape
        text = (f"ConvTranspose2d {self.in_channels}->{self.out_channels} {kh}x{kw} stride "
                f"{pair_text(self.stride)} pad {pair_text(self.padding)}")
        if self.output_padding != (0, 0):
            text += f" outpad {pair_text(self.output_padding)}"
        if self.dilation != (1, 1):
            text += f" dil {pair_text(self.dilation)}"
        if self.groups != 1:
            text += f" groups {self.groups}"
        return text

    def flops(self, in_shapes, out_shape):
        per_input = 2 * numel(self.weight.shape[1:])
        return numel(in_shapes[0]) * per_input + (numel(out_shape) if self.bias is not None
                                                  else 0)

    def _sizes(self, hw):
        """``(out, extra)``: the output size for an input of size ``hw``, and the zero rows and
        columns the adjoint convolution's output needs beyond the input to have that input
        size (``output_padding // stride``: none unless the output padding reaches the
        stride)."""
        out = tuple((h - 1) * s - 2 * p + e + op for h, s, p, e, op in zip(
            hw, self.stride, self.padding, self.conv._extent(), self.output_padding))
        if min(out) < 1:
            raise ValueError(f"{self!r}: an input of {tuple(hw)} gives no output ({out})")
        return out, tuple(op // s for op, s in zip(self.output_padding, self.stride))

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        if shape[0] != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} input channels, got shape "
                             f"{tuple(shape)}")
        return (self.out_channels,) + self._sizes(shape[1:])[0]

    def plan(self, w, x_shape, backward=False, exact=False):
        """The plan of the pass: the adjoint convolution's other pass, whose input is this
        layer's output (its plans, cached on ``conv``)."""
        out = (self.out_channels,) + self._sizes(tuple(x_shape[2:]))[0]
        return self.conv.plan(w, (1,) + out, not backward, exact)

    def apply(self, x, w, b, exact=False, relu=False):
        out, extra = self._sizes(x.shape[2:])
        if any(extra):
            x = np.pad(x, ((0, 0), (0, 0), (0, extra[0]), (0, extra[1])))
        y = self.conv.apply_t(x, w, (len(x), w.shape[1] * self.groups) + out, exact)
        if b is not None:
            y += b.reshape(-1, 1, 1)
        return y

    def apply_t(self, g, w, x_shape, exact=False, mask=None):
        gx = self.conv.apply(g, w, None, exact)
        h, wd = x_shape[2:]
        return np.ascontiguousarray(gx[:, :, :h, :wd]) if gx.shape[2:] != (h, wd) else gx

    def apply_split(self, x, w, b, exact=False):
        # the stacked weights stack the inputs (axis 0): one call per weight set
        b = (None, None) if b is None else np.split(b, 2)
        return tuple(self.apply(x, wk, bk, exact) for wk, bk in zip(np.split(w, 2), b))

    def apply_t_stacked(self, g, w, x_shape, exact=False):
        (w1, w2), (g1, g2) = np.split(w, 2), np.split(g, 2, axis=1)
        out = self.apply_t(np.ascontiguousarray(g1), w1, x_shape, exact)
        out += self.apply_t(np.ascontiguousarray(g2), w2, x_shape, exact)
        return out

    def lrp_epsilon(self, r, z, a, w, eps, exact=False):
        out = self.apply_t(ops.lrp_divide(r, z, eps), w, a.shape, exact)
        return np.multiply(out, a, out=out)


def _plane(a):
    """An ``(n, c, L)`` array (or weight ``(out, in, k)``) as its ``(n, c, 1, L)`` planes, and a
    shape likewise: a view, no copy."""
    if isinstance(a, tuple):
        return a[:2] + (1,) + a[2:]
    return a.reshape(_plane(a.shape))


def _line(a):
    """The inverse of :func:`_plane` for arrays."""
    return a.reshape(a.shape[:2] + a.shape[3:])


@register_layer
class Conv1d(Linear):
    """1-D convolution as ``torch.nn.Conv1d`` (NCL, zero padding); weight ``(out, in // groups,
    k)`` and int ``stride``, ``padding``, ``dilation``, ``groups`` as torch's.

    It runs as the Conv2d of its samples seen as ``(c, 1, L)`` planes with the ``(1, k)`` kernel
    (``self.conv``; views, no copies): the same kernels and packings, bitwise.  It takes the
    composites' convolution slot, as Zennit's Convolution type covers Conv1d, so its LRP rules
    are Conv2d's (ZBox as EpsilonGammaBox's first layer too).  ONNX Conv with a 3-D weight is
    read by Conv2d's entry."""

    kind = "conv1d"
    slots = ("convolution", "linear")
    imports = (
        TorchModule(("Conv1d",), lambda m, ctx: _conv1d(
            ctx, ctx.array(m.weight), None if m.bias is None else ctx.array(m.bias),
            m.stride[0], _torch_padding(m.padding, m.kernel_size, m.dilation, ctx)[0],
            m.dilation[0], m.groups, m.padding_mode)),
        TorchFunction(("torch.nn.functional.conv1d", "torch.conv1d"),
                      ("input", "weight", ("bias", None), ("stride", 1), ("padding", 0),
                       ("dilation", 1), ("groups", 1)),
                      lambda a, ctx: _torch_conv1d_function(a, ctx)),
    )

    def __init__(self, weight, bias=None, stride=1, padding=0, dilation=1, groups=1):
        super().__init__(weight, bias, 3)
        self.stride = as_int(stride, "stride", minimum=1)
        self.padding = as_int(padding, "padding", minimum=0)
        self.dilation = as_int(dilation, "dilation", minimum=1)
        self.groups = as_int(groups, "groups", minimum=1)
        if self.weight.shape[0] % self.groups:
            raise ValueError(f"Conv1d with groups={self.groups} needs a number of output "
                             f"channels divisible by it, got weight {self.weight.shape}")
        self.conv = Conv2d(_plane(self.weight), None, (1, self.stride), (0, self.padding),
                           (1, self.dilation), self.groups)

    @property
    def in_channels(self):
        return self.weight.shape[1] * self.groups

    def with_parameters(self, weight, bias):
        return Conv1d(weight, bias, self.stride, self.padding, self.dilation, self.groups)

    @classmethod
    def from_config(cls, cfg, arrays):
        groups = cfg_int(cfg, "groups", 1)
        want = (cfg_int(cfg, "out_channels"), cfg_int(cfg, "in_channels") // max(groups, 1),
                cfg_int(cfg, "kernel_size"))
        w, b = cls._parameters(cls, cfg, arrays, want)
        return cls(w, b, cfg.get("stride", 1), cfg.get("padding", 0), cfg.get("dilation", 1),
                   groups)

    def config(self):
        o, _, k = self.weight.shape
        cfg = {"in_channels": int(self.in_channels), "out_channels": int(o),
               "kernel_size": int(k), "stride": self.stride, "padding": self.padding}
        if self.dilation != 1:
            cfg["dilation"] = self.dilation
        if self.groups != 1:
            cfg["groups"] = self.groups
        return cfg

    def describe(self):
        o, _, k = self.weight.shape
        text = f"Conv1d {self.in_channels}->{o} {k} stride {self.stride} pad {self.padding}"
        if self.dilation != 1:
            text += f" dil {self.dilation}"
        return text + _groups_text(self)

    def flops(self, in_shapes, out_shape):
        return _conv_flops(self, out_shape)

    def output_shape(self, shape):
        self._need_rank(shape, 2, "(channels, length)")
        if shape[0] != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} input channels, got shape "
                             f"{tuple(shape)}")
        o, _, k = self.weight.shape
        extent, padded = self.dilation * (k - 1) + 1, shape[1] + 2 * self.padding
        if padded < extent:
            raise ValueError(f"{self!r}: kernel {k} (extent {extent}) does not fit the padded "
                             f"input ({padded})")
        return (o, (padded - extent) // self.stride + 1)

    def plan(self, w, x_shape, backward=False, exact=False):
        """The plan of the pass: its planes' convolution's (``conv``'s, cached there)."""
        return self.conv.plan(_plane(w), _plane(tuple(x_shape)), backward, exact)

    def apply(self, x, w, b, exact=False, relu=False):
        return _line(self.conv.apply(_plane(x), _plane(w), b, exact, relu))

    def apply_split(self, x, w, b, exact=False):
        return tuple(_line(y) for y in self.conv.apply_split(_plane(x), _plane(w), b, exact))

    def apply_t(self, g, w, x_shape, exact=False, mask=None):
        return _line(self.conv.apply_t(_plane(g), _plane(w), _plane(tuple(x_shape)), exact,
                                       None if mask is None else _plane(mask)))

    def lrp_epsilon(self, r, z, a, w, eps, exact=False):
        return _line(self.conv.lrp_epsilon(_plane(r), _plane(z), _plane(a), _plane(w), eps,
                                           exact))

    def apply_t_stacked(self, g, w, x_shape, exact=False):
        return _line(self.conv.apply_t_stacked(_plane(g), _plane(w), _plane(tuple(x_shape)),
                                               exact))


# --- importer converters ------------------------------------------------------------------------
def bias_vector(v, n, ctx, what):
    """A constant ``v`` as a bias of length ``n`` (a scalar is broadcast)."""
    v = np.asarray(v)
    if v.size == 1:
        return np.full(n, v.reshape(()), dtype=v.dtype)
    if v.size != n or max(v.shape) != n:
        raise ctx.error(f"{what} of shape {v.shape} is not a bias of length {n}")
    return v.reshape(n)


def _onnx_gemm(ctx):
    if ctx.attrs.get("transA", 0):
        raise ctx.error("transA=1 is not supported")
    b = ctx.const(1, "B")
    if b.ndim != 2:
        raise ctx.error(f"B must be 2-D, got shape {b.shape}")
    w = (b if ctx.attrs.get("transB", 0) else b.T) * ctx.attrs.get("alpha", 1.0)
    c = ctx.const(2, "C", required=False)
    bias = None if c is None else bias_vector(c * ctx.attrs.get("beta", 1.0), w.shape[0], ctx, "C")
    return Dense(w.astype(b.dtype), bias)


def _onnx_matmul(ctx):
    b = ctx.const(1, "the second input")
    if b.ndim != 2:
        raise ctx.error(f"the weight must be 2-D, got shape {b.shape}")
    return Dense(b.T)


def _torch_padding(padding, kernel, dilation, ctx):
    """A torch convolution's padding per axis: ``"valid"`` none, ``"same"`` ``d (k - 1) / 2``
    (ValueError where that is odd: asymmetric), else as given (a tuple)."""
    kernel, dilation = tuple(kernel), tuple(dilation)
    if padding == "valid":
        return (0,) * len(kernel)
    if padding == "same":
        if any((d * (k - 1)) % 2 for k, d in zip(kernel, dilation)):
            raise ctx.error(f"padding='same' with kernel {kernel} and dilation {dilation} pads "
                            "asymmetrically; relprop supports symmetric padding only")
        return tuple(d * (k - 1) // 2 for k, d in zip(kernel, dilation))
    return tuple(padding)


def _torch_conv2d(m, ctx):
    if m.padding_mode != "zeros":
        raise ctx.error(f"padding_mode={m.padding_mode!r} is not supported")
    padding = (_torch_padding(m.padding, m.kernel_size, m.dilation, ctx)
               if isinstance(m.padding, str) else ctx.pair(m.padding, "padding"))
    return Conv2d(ctx.array(m.weight), None if m.bias is None else ctx.array(m.bias),
                  stride=tuple(m.stride), padding=padding, dilation=tuple(m.dilation),
                  groups=m.groups)


def _conv1d(ctx, weight, bias, stride, padding, dilation, groups, padding_mode="zeros"):
    if padding_mode != "zeros":
        raise ctx.error(f"padding_mode={padding_mode!r} is not supported")
    try:
        return Conv1d(weight, bias, stride, padding, dilation, groups)
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None


def _torch_conv1d_function(a, ctx):
    w = ctx.parameter(a["weight"], "weight")
    if w.ndim != 3:
        raise ctx.error(f"conv1d weight must be 3-D, got shape {w.shape}")
    dilation = single(a["dilation"], "dilation", ctx)
    padding = a["padding"]
    if isinstance(padding, str):
        padding = _torch_padding(padding, w.shape[2:], (dilation,), ctx)
    return _conv1d(ctx, w, None if a["bias"] is None else ctx.parameter(a["bias"], "bias"),
                   single(a["stride"], "stride", ctx), single(padding, "padding", ctx), dilation,
                   ctx.constant(a["groups"], "groups"))


def _onnx_conv(ctx):
    """ONNX Conv: a Conv2d, or with a 3-D weight a Conv1d (its window read as its planes')."""
    w = ctx.const(1, "W")
    if w.ndim not in (3, 4):
        raise ctx.error(f"only 1-D and 2-D convolutions are supported (W shape {w.shape})")
    if w.ndim == 3:
        plane_window(ctx.attrs)
    ctx.attrs.setdefault("kernel_shape", (1,) * (4 - w.ndim) + w.shape[2:])
    kernel, strides, pads, dilation = ctx.window(pooling=False)
    if tuple(kernel[4 - w.ndim:]) != tuple(w.shape[2:]):
        raise ctx.error(f"kernel_shape {tuple(kernel)} disagrees with W of shape {w.shape}")
    b, groups = ctx.const(2, "B", required=False), ctx.attrs.get("group", 1)
    if w.ndim == 3:
        return _conv1d(ctx, w, b, strides[1], pads[1], dilation[1], groups)
    try:
        return Conv2d(w, b, strides, pads, dilation=dilation, groups=groups)
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None


def _conv_transpose2d(ctx, weight, bias, stride, padding, output_padding, groups, dilation):
    try:
        return ConvTranspose2d(weight, bias, stride, padding, output_padding, dilation, groups)
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None


def _torch_conv_transpose2d(m, ctx):
    if m.padding_mode != "zeros":
        raise ctx.error(f"padding_mode={m.padding_mode!r} is not supported")
    return _conv_transpose2d(ctx, ctx.array(m.weight),
                             None if m.bias is None else ctx.array(m.bias), tuple(m.stride),
                             ctx.pair(m.padding, "padding"), tuple(m.output_padding), m.groups,
                             tuple(m.dilation))


def _torch_conv_transpose2d_function(a, ctx):
    bias = None if a["bias"] is None else ctx.parameter(a["bias"], "bias")
    args = [ctx.constant(a[k], k) for k in ("stride", "padding", "output_padding", "groups",
                                             "dilation")]
    return _conv_transpose2d(ctx, ctx.parameter(a["weight"], "weight"), bias, *args)


def _onnx_conv_transpose(ctx):
    w = ctx.const(1, "W")
    if w.ndim != 4:
        raise ctx.error(f"only 2-D transposed convolutions are supported (W shape {w.shape})")
    auto = ctx.attrs.get("auto_pad", b"NOTSET")
    if (auto.decode() if isinstance(auto, bytes) else auto) not in ("NOTSET", "VALID"):
        raise ctx.error(f"auto_pad={auto!r} is not supported (explicit pads)")
    ctx.attrs.setdefault("kernel_shape", w.shape[2:])
    kernel, strides, pads, dilation = ctx.window(pooling=False)
    if tuple(kernel) != tuple(w.shape[2:]):
        raise ctx.error(f"kernel_shape {tuple(kernel)} disagrees with W of shape {w.shape}")
    outpad = tuple(ctx.attrs.get("output_padding", (0, 0)))
    if "output_shape" in ctx.attrs:  # the output padding that gives it
        shape = tuple(ctx.attrs["output_shape"])[-2:]
        base = [(h - 1) * s - 2 * p + d * (k - 1) + 1 for h, s, p, d, k in
                zip(ctx.shape[1:], strides, pads, dilation, kernel)]
        outpad = tuple(o - b for o, b in zip(shape, base))
    return _conv_transpose2d(ctx, w, ctx.const(2, "B", required=False), strides, pads, outpad,
                             ctx.attrs.get("group", 1), dilation)
