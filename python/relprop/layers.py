"""Layers: the nodes of a :class:`relprop.Graph` (and of its chain, :class:`relprop.Sequential`).

Every layer describes itself, so that the engine, the rules, the loader and ``relprop info``
need no per-kind code:

* ``output_shape(*shapes)`` - the per-sample output shape for per-sample input shapes
  (validates, raising ``ValueError``);
* ``forward(*xs) -> (y, state)`` - the output and what the backward pass needs besides the
  inputs (pooling winners);
* ``vjp(g, xs, state, relu_mode) -> tuple`` - the vector-Jacobian product w.r.t. each input;
  it reads the values of the inputs only where ``backward_reads_input`` (ReLU, ReLU6),
  otherwise their shapes; single-input layers implement ``backward(g, x, state, relu_mode)``;
* ``config()`` / ``arrays()`` / ``from_config(cfg, arrays)`` - the JSON description and the
  parameters, for save and load; ``kind`` names the layer in files;
* ``flops(in_shapes, out_shape)`` and ``describe()`` - for ``relprop info``.

Linear layers (:class:`Dense`, :class:`Conv2d`) also expose ``apply(x, w, b)``,
``apply_split`` and ``apply_t(g, w, x_shape)`` with explicit parameters, so that LRP rules can
run the same kernels on rule-modified weights (made once per layer, rule and dtype by
:meth:`Linear.modified`).
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from . import ops
from ._validate import as_float_array, as_int, as_pair, as_scalar

#: Layer classes by ``kind`` (the name in model files), filled by :func:`register_layer`.
LAYER_TYPES: dict = {}


def register_layer(cls):
    """Class decorator: make ``cls`` loadable by its ``kind``."""
    LAYER_TYPES[cls.kind] = cls
    return cls


def _pair_text(p):
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def _numel(shape):
    return int(np.prod(shape, dtype=np.int64))


class Layer:
    """Base class of all layers (single input unless ``n_inputs`` says otherwise)."""

    kind = "layer"
    #: Number of inputs, or None for any number >= 2 (Add, Concat).
    n_inputs = 1
    linear = False
    #: Whether the backward pass reads the values of the inputs (not only their shapes).
    backward_reads_input = False
    #: A layer whose output is cheap to remake from its inputs (element-wise, reshaping, sums,
    #: concatenations): the LRP walk remakes it instead of keeping it.
    remakable = False

    # --- shapes and the two passes ----------------------------------------------------------
    def output_shape(self, *shapes) -> tuple:
        return tuple(shapes[0])

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, g, x, state, relu_mode="gradient"):
        raise NotImplementedError

    def vjp(self, g, xs, state, relu_mode="gradient"):
        """The vector-Jacobian product ``g`` -> one array per input."""
        return (self.backward(g, xs[0], state, relu_mode),)

    # --- description --------------------------------------------------------------------------
    def config(self) -> dict:
        return {}

    def arrays(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, cfg: dict, arrays: dict):
        """The layer described by ``cfg`` (its ``config()``) and ``arrays`` (its ``arrays()``);
        raises ValueError on a bad description."""
        return cls(**{k: v for k, v in cfg.items() if k in cls._config_args})

    _config_args = ()

    def flops(self, in_shapes, out_shape) -> int:
        """FLOPs for one sample (a multiply-add counts 2; adds, comparisons 1 per element)."""
        return 0

    def describe(self) -> str:
        return type(self).__name__

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def _need_rank(self, shape, rank, what):
        if len(shape) != rank:
            raise ValueError(f"{self!r} expects {what} per sample (rank {rank}), got shape "
                             f"{tuple(shape)}")

    # Layers are shipped between processes (pickle) by relprop.dask: their caches and locks
    # stay behind.
    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_cache", "_packed", "_lock"):
            state.pop(key, None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self, Linear):  # unpickled arrays are writeable copies
            self._weight = _read_only(self._weight)
            if self._bias is not None:
                self._bias = _read_only(self._bias)
            self._init_caches()


# Small batches spend much of a Dense or Conv2d layer's time packing its weights for the GEMM,
# so for small calls (at most PACK_MAX_BATCH samples for Dense, PACK_MAX_PIXELS output pixels
# for Conv2d) a layer keeps its weights packed: one copy per weight array (rule-modified ones
# too) and direction, for weights of at most PACK_MAX_BYTES.  Results are bitwise the same;
# relprop.release_memory() drops the copies.
PACK_MAX_BATCH = 16
PACK_MAX_PIXELS = 1024
PACK_MAX_BYTES = 32 << 20
#: Winograd's transformed weights are also kept for large calls up to this many channel pairs
#: (128 x 128: 2.4 MB of F(4x4) packing); their transform costs more than their packing saves.
WINOGRAD_KEEP_PAIRS = 128 * 128
_PACKING_LAYERS = weakref.WeakSet()


def release_packed():
    """Drop the packed weight copies of every layer."""
    for layer in list(_PACKING_LAYERS):
        with layer._lock:
            layer._packed.clear()


def release_memory() -> None:
    """Return the output blocks relprop keeps for reuse to the system.

    Large outputs (activations, relevances) are allocated from a pool: memory freed by one call
    is taken by the next call's outputs that fit in it, already mapped, which saves the
    operating system's page faults and zeroing (about a fifth of a CNN's gradient).  The pool
    never holds more than the largest amount of output memory in use at any earlier moment
    minus what is in use now, so it does not raise the process's memory high-water mark; this
    call frees it, and the packed weight copies that Dense and Conv2d layers keep for small
    calls.
    """
    release_packed()
    ops.release_pool()


def _read_only(a):
    """A read-only view of ``a`` (``a`` itself keeps its flags)."""
    v = a.view()
    v.flags.writeable = False
    return v


class Linear(Layer):
    """A layer ``y = W x + b`` (Dense or Conv2d): holds the parameters and their modified copies."""

    linear = True

    def __init__(self, weight, bias, weight_rank):
        w = as_float_array(weight, "weight")
        if w.ndim != weight_rank:
            raise ValueError(f"{type(self).__name__} weight must have {weight_rank} dimensions, "
                             f"got shape {w.shape}")
        if w.size == 0:
            raise ValueError(f"{type(self).__name__} weight must not be empty, got shape {w.shape}")
        if bias is not None:
            b = as_float_array(bias, "bias", dtype=w.dtype)
            if b.shape != (w.shape[0],):
                raise ValueError(f"{type(self).__name__} bias must have shape ({w.shape[0]},), got "
                                 f"{b.shape}")
            bias = _read_only(b)
        self._weight, self._bias = _read_only(w), bias
        self._init_caches()

    def _init_caches(self):
        self._cache = {}
        self._packed = {}
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

    def packed_weights(self, w, role, small):
        """``w`` packed for the GEMM of ``role`` (cached), or None unless the call is ``small``
        (see PACK_MAX_BATCH) and ``w`` at most PACK_MAX_BYTES."""
        if not small or w.nbytes > PACK_MAX_BYTES:
            return None
        # the key is the memory of w; the entry keeps w alive, so that memory is not reused
        key = (role, w.__array_interface__["data"][0], w.shape, w.strides, w.dtype.str,
               ops.isa())
        hit = self._packed.get(key)
        if hit is None:
            hit = (w, self._pack(w, role))
            with self._lock:
                hit = self._packed.setdefault(key, hit)
            _PACKING_LAYERS.add(self)
        return hit[1]

    def _pack(self, w, role):
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

    def apply_split(self, x, w, b, split, exact=False):
        """``apply`` with stacked weights, returned as two outputs: output features (channels)
        ``[0, split)`` and ``[split, out)``."""
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
    """Fully connected layer ``y = x W^T + b``; weight ``(out, in)`` as ``torch.nn.Linear``."""

    kind = "dense"

    def __init__(self, weight, bias=None):
        super().__init__(weight, bias, 2)

    def with_parameters(self, weight, bias):
        return Dense(weight, bias)

    @classmethod
    def from_config(cls, cfg, arrays):
        want = (_cfg_int(cfg, "out_features"), _cfg_int(cfg, "in_features"))
        return cls(*cls._parameters(cls, cfg, arrays, want))

    def _pack(self, w, role):
        return ops.dense_pack(w, role == "forward")

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
        return 2 * self.weight.size + (_numel(out_shape) if self.bias is not None else 0)

    def output_shape(self, shape):
        if len(shape) != 1 or shape[0] != self.in_features:
            raise ValueError(f"{self!r} expects ({self.in_features},) per sample, got "
                             f"{tuple(shape)} (add a Flatten layer before it?)")
        return (self.out_features,)

    def apply(self, x, w, b, exact=False, relu=False):
        small = len(x) <= PACK_MAX_BATCH
        return ops.dense_forward(x, w, b, self.packed_weights(w, "forward", small), relu=relu)

    def apply_split(self, x, w, b, split, exact=False):
        # two GEMMs on the row blocks of w (contiguous): no stacked output to split
        return tuple(self.apply(x, w[sl], None if b is None else b[sl])
                     for sl in (slice(None, split), slice(split, None)))

    def apply_t(self, g, w, x_shape, exact=False, mask=None):
        small = len(g) <= PACK_MAX_BATCH
        return ops.dense_backward(g, w, self.packed_weights(w, "backward", small), mask=mask)

    def lrp_epsilon(self, r, z, a, w, eps, exact=False):
        small = len(r) <= PACK_MAX_BATCH
        return ops.dense_lrp_epsilon(r, z, a, w, eps, self.packed_weights(w, "backward", small))


#: Convolution algorithms: "auto" chooses per call from the shapes (``ops.conv2d_algorithm``:
#: Winograd for stride-1 3x3 float32 layers where it is faster), "direct" always runs the
#: implicit GEMM, "winograd" runs Winograd F(4x4, 3x3) wherever it applies (any float dtype).
CONV_ALGORITHMS = ("auto", "direct", "winograd")
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


@register_layer
class Conv2d(Linear):
    """2-D convolution as ``torch.nn.Conv2d`` (NCHW, zero padding); weight
    ``(out, in // groups, kh, kw)``.  ``groups == in`` is a depthwise convolution.

    ``algorithm`` (see :data:`CONV_ALGORITHMS`): "auto" (default) runs stride-1 3x3 float32
    layers by Winograd's F(4x4, 3x3) or F(2x2, 3x3) where that is faster (4x or 2.25x fewer
    multiply-adds; error at most 1e-5 of the largest output, ``ops.conv2d_winograd_forward``),
    everything else by the implicit GEMM; "direct" never uses Winograd; "winograd" always
    (F(4x4); the layer must be stride-1 3x3 with padding <= 2, dilation 1, groups 1).
    """

    kind = "conv2d"

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
        self.winograd_applies = (self.weight.shape[2:] == (3, 3) and self.stride == (1, 1)
                                 and self.dilation == (1, 1) and self.groups == 1
                                 and max(self.padding) <= 2)
        if algorithm == "winograd" and not self.winograd_applies:
            raise ValueError(f"Conv2d algorithm='winograd' needs a 3x3 kernel, stride 1, "
                             f"dilation 1, groups 1 and padding <= 2; got weight "
                             f"{self.weight.shape}, stride {self.stride}, padding "
                             f"{self.padding}, dilation {self.dilation}, groups {self.groups}")
        self.algorithm = algorithm

    def _winograd_tile(self, x_shape, w, backward, exact=False):
        """The Winograd tile a call runs with, or None for the direct method."""
        name = _algorithm_override or self.algorithm
        if exact or name == "direct" or not self.winograd_applies:
            return None
        # the choice depends on one sample's shape only: made once per shape
        key = (name, tuple(x_shape[1:]), w.shape, w.dtype.str, backward, ops.isa())
        cache = self.__dict__.setdefault("_tiles", {})
        tile = cache.get(key, 0)
        if tile == 0:
            alg = ops.conv2d_algorithm(x_shape, w.shape, self.stride, self.padding, w.dtype,
                                       backward)
            tile = alg.tile if alg.name == "winograd" else (4 if name == "winograd" else None)
            if len(cache) < 64:
                cache[key] = tile
        return tile

    @property
    def in_channels(self):
        return self.weight.shape[1] * self.groups

    def _geometry(self):
        """Keyword arguments of the conv kernels besides stride and padding (only the ones that
        differ from the default, so that plain convolutions call the kernels as they always
        did)."""
        kw = {}
        if self.dilation != (1, 1):
            kw["dilation"] = self.dilation
        if self.groups != 1:
            kw["groups"] = self.groups
        return kw

    def with_parameters(self, weight, bias):
        return Conv2d(weight, bias, self.stride, self.padding, self.dilation, self.groups,
                      self.algorithm)

    @classmethod
    def from_config(cls, cfg, arrays):
        k = _cfg_pair(cfg, "kernel_size")
        groups = _cfg_int(cfg, "groups", 1)
        want = (_cfg_int(cfg, "out_channels"), _cfg_int(cfg, "in_channels") // max(groups, 1), *k)
        w, b = cls._parameters(cls, cfg, arrays, want)
        algorithm = cfg.get("algorithm", "auto")
        if algorithm not in CONV_ALGORITHMS:
            raise ValueError(f"has a bad 'algorithm': {algorithm!r}")
        return cls(w, b, _cfg_pair(cfg, "stride"), _cfg_pair(cfg, "padding"),
                   _cfg_pair(cfg, "dilation", (1, 1)), groups, algorithm)

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
        text = (f"Conv2d {self.in_channels}->{o} {kh}x{kw} stride {_pair_text(self.stride)} "
                f"pad {_pair_text(self.padding)}")
        if self.dilation != (1, 1):
            text += f" dil {_pair_text(self.dilation)}"
        if self.groups != 1:
            text += " depthwise" if self.groups == self.in_channels else f" groups {self.groups}"
        return text

    def flops(self, in_shapes, out_shape):
        n_out = _numel(out_shape)
        return n_out * 2 * _numel(self.weight.shape[1:]) + (n_out if self.bias is not None else 0)

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        c, h, w = shape
        o, _, kh, kw = self.weight.shape
        if c != self.in_channels:
            raise ValueError(f"{self!r} expects {self.in_channels} input channels, got shape "
                             f"{tuple(shape)}")
        return (o,) + _window_out(self, (h, w), self._extent(), self.stride, self.padding)

    def _extent(self):
        """The window's extent: the kernel size with dilation."""
        kh, kw = self.weight.shape[2:]
        return (self.dilation[0] * (kh - 1) + 1, self.dilation[1] * (kw - 1) + 1)

    def _pack(self, w, role):
        if role.startswith("winograd"):  # "winograd{tile}" or "winograd{tile}-backward"
            return ops.conv2d_winograd_pack(w, int(role[8]), role.endswith("backward"))
        return ops.conv2d_pack(w, role == "backward", self.stride, self.padding,
                               **self._geometry())

    @staticmethod
    def _keep_winograd(w, small):
        """Whether to keep Winograd's transformed weights of ``w`` (as packings, like the direct
        method's for small calls): for small calls, where transforming them would take a good
        share of the call, and for weights of at most WINOGRAD_KEEP_PAIRS channel pairs, whose
        packings are small (transformed weights are 4x, or 1.8x, the weights: kept for every
        large layer of ResNet-50 they held 255 MB more during an LRP call at batch 8)."""
        return small or w.shape[0] * w.shape[1] <= WINOGRAD_KEEP_PAIRS

    def _small(self, x_shape):
        oh, ow = _window_out(self, x_shape[2:], self._extent(), self.stride, self.padding)
        return x_shape[0] * oh * ow <= PACK_MAX_PIXELS

    def _packing(self, x_shape, w, tile, backward):
        """The packed weights of a call on inputs of ``x_shape`` (Winograd's with ``tile``,
        else the direct method's), for the forward pass or the ``backward`` one."""
        small = self._small(x_shape)
        suffix = "-backward" if backward else ""
        if tile:
            return self.packed_weights(w, f"winograd{tile}{suffix}", self._keep_winograd(w, small))
        return self.packed_weights(w, "backward" if backward else "forward", small)

    def apply(self, x, w, b, exact=False, relu=False):
        tile = self._winograd_tile(x.shape, w, False, exact)
        packed = self._packing(x.shape, w, tile, False)
        if tile:
            return ops.conv2d_winograd_forward(x, w, b, self.padding, packed, tile=tile, relu=relu)
        return ops.conv2d_forward(x, w, b, self.stride, self.padding, packed, relu=relu,
                                  **self._geometry())

    #: Whether :meth:`forward_relu_pool` can stand for this layer, a ReLU and ``pool``.
    @staticmethod
    def fuses_pool(pool):
        return (pool.kind == "maxpool2d" and pool.kernel_size == (2, 2)
                and pool.stride == (2, 2) and pool.padding == (0, 0))

    def forward_relu_pool(self, x):
        """This layer, a ReLU and a 2x2 stride-2 max pooling in one kernel: ``(pooled,
        argmax)``, bitwise the three layers apart (``ops.conv2d_forward_relu_maxpool``)."""
        w, b = self.params(x.dtype)
        tile = self._winograd_tile(x.shape, w, False)
        return ops.conv2d_forward_relu_maxpool(x, w, b, self.stride, self.padding,
                                               self._packing(x.shape, w, tile, False), tile=tile,
                                               **self._geometry())

    def backward_relu_pool(self, g, argmax, pooled, x, mask=False):
        """The gradient of :meth:`forward_relu_pool` w.r.t. ``x`` (a stand-in with its shape
        will do) from the pooled gradient ``g``; with ``mask`` also times ``x > 0``
        (``ops.conv2d_backward_pooled``)."""
        w = self.params(g.dtype)[0]
        tile = self._winograd_tile(x.shape, w, True)
        return ops.conv2d_backward_pooled(g, argmax, w, x.shape[2:], self.stride, self.padding,
                                          self._packing(x.shape, w, tile, True), pooled=pooled,
                                          mask=x if mask else None, tile=tile, **self._geometry())

    def apply_split(self, x, w, b, split, exact=False):
        if self.groups != 1:  # stacking breaks the groups: one call per weight set
            return tuple(self.apply(x, w[sl], None if b is None else b[sl], exact)
                         for sl in (slice(None, split), slice(split, None)))
        # one pass for both weight sets, written to two outputs
        tile = self._winograd_tile(x.shape, w, False, exact)
        packed = self._packing(x.shape, w, tile, False)
        if tile:
            return ops.conv2d_winograd_forward(x, w, b, self.padding, packed, tile=tile,
                                               split=split)
        return ops.conv2d_forward_split(x, w, b, split, self.stride, self.padding, packed,
                                        **self._geometry())

    def apply_t(self, g, w, x_shape, exact=False, mask=None):
        tile = self._winograd_tile(x_shape, w, True, exact)
        packed = self._packing(x_shape, w, tile, True)
        if tile:
            return ops.conv2d_winograd_backward(g, w, x_shape[2:], self.padding, packed, tile=tile,
                                                mask=mask)
        return ops.conv2d_backward(g, w, x_shape[2:], self.stride, self.padding, packed, mask=mask,
                                   **self._geometry())

    def lrp_epsilon(self, r, z, a, w, eps, exact=False):
        tile = self._winograd_tile(a.shape, w, True, exact)
        return ops.conv2d_lrp_epsilon(r, z, a, w, eps, self.stride, self.padding,
                                      self._packing(a.shape, w, tile, True), tile=tile,
                                      **self._geometry())

    def apply_t_stacked(self, g, w, x_shape, exact=False):
        if self.groups == 1:
            return self.apply_t(g, w, x_shape, exact)
        half = w.shape[0] // 2
        out = self.apply_t(np.ascontiguousarray(g[:, :half]), w[:half], x_shape, exact)
        out += self.apply_t(np.ascontiguousarray(g[:, half:]), w[half:], x_shape, exact)
        return out


def _window_out(layer, hw, k, s, p):
    oh = (hw[0] + 2 * p[0] - k[0]) // s[0] + 1
    ow = (hw[1] + 2 * p[1] - k[1]) // s[1] + 1
    if hw[0] + 2 * p[0] < k[0] or hw[1] + 2 * p[1] < k[1] or oh < 1 or ow < 1:
        raise ValueError(f"{layer!r}: window {tuple(k)} does not fit the padded input "
                         f"({hw[0] + 2 * p[0]}, {hw[1] + 2 * p[1]})")
    return (oh, ow)


class _Elementwise(Layer):
    """A layer applied element by element (shape preserved)."""

    remakable = True

    def flops(self, in_shapes, out_shape):
        return _numel(out_shape)


@register_layer
class ReLU(_Elementwise):
    """``max(x, 0)``."""

    kind = "relu"
    backward_reads_input = True

    def forward(self, x):
        return ops.relu_forward(x), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.relu_backward(g, x, relu_mode)


@register_layer
class ReLU6(_Elementwise):
    """``min(max(x, 0), 6)`` (MobileNetV2).  Gradient ``g * (0 < x < 6)``; deconvnet and guided
    backprop treat it as the rectifier it is (``max(g, 0)``, ``g * (0 < x < 6) * (g > 0)``)."""

    kind = "relu6"
    backward_reads_input = True

    def forward(self, x):
        return ops.relu6_forward(x), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.relu6_backward(g, x, relu_mode)


@register_layer
class Flatten(Layer):
    """C-order flatten of all but the batch axis."""

    kind = "flatten"
    remakable = True

    def output_shape(self, shape):
        return (_numel(shape),)

    def forward(self, x):
        return x.reshape(x.shape[0], -1), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return g.reshape(x.shape)


class _Pool(Layer):
    def __init__(self, kernel_size, stride=None, padding=0):
        self.kernel_size = as_pair(kernel_size, "kernel_size", minimum=1)
        self.stride = self.kernel_size if stride is None else as_pair(stride, "stride", minimum=1)
        self.padding = as_pair(padding, "padding", minimum=0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{type(self).__name__}: padding {self.padding} must be at most half "
                             f"of kernel_size {self.kernel_size}")

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(_cfg_pair(cfg, "kernel_size"), _cfg_pair(cfg, "stride"),
                   _cfg_pair(cfg, "padding"))

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def describe(self):
        return (f"{type(self).__name__} {_pair_text(self.kernel_size)} stride "
                f"{_pair_text(self.stride)} pad {_pair_text(self.padding)}")

    def flops(self, in_shapes, out_shape):
        return _numel(out_shape) * self.kernel_size[0] * self.kernel_size[1]

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        return (shape[0],) + _window_out(self, shape[1:], self.kernel_size, self.stride,
                                         self.padding)


@register_layer
class MaxPool2d(_Pool):
    """Max pooling as ``torch.nn.MaxPool2d``; ties go to the first maximum in the window."""

    kind = "maxpool2d"

    def forward(self, x):
        return ops.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.maxpool2d_backward(g, state, x.shape[2:], self.kernel_size, self.stride,
                                      self.padding)


@register_layer
class AvgPool2d(_Pool):
    """Average pooling as ``torch.nn.AvgPool2d`` with ``count_include_pad=True``."""

    kind = "avgpool2d"

    def forward(self, x):
        return ops.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.avgpool2d_backward(g, x.shape[2:], self.kernel_size, self.stride, self.padding)


@register_layer
class GlobalAvgPool2d(Layer):
    """Mean over height and width: ``(n, c, h, w) -> (n, c, 1, 1)`` (``AdaptiveAvgPool2d(1)``)."""

    kind = "globalavgpool2d"

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        return (shape[0], 1, 1)

    def flops(self, in_shapes, out_shape):
        return _numel(in_shapes[0])

    @staticmethod
    def window(x_shape):
        hw = tuple(int(s) for s in x_shape[-2:])
        return hw, hw, (0, 0)

    def forward(self, x):
        return ops.avgpool2d_forward(x, *self.window(x.shape)), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.avgpool2d_backward(g, x.shape[2:], *self.window(x.shape))


@register_layer
class AdaptiveAvgPool2d(Layer):
    """``torch.nn.AdaptiveAvgPool2d(output_size)``: output ``(i, j)`` averages the input rows
    ``[floor(i h / oh), ceil((i + 1) h / oh))`` and likewise the columns (any output size,
    also larger than the input)."""

    kind = "adaptiveavgpool2d"

    def __init__(self, output_size):
        self.output_size = as_pair(output_size, "output_size", minimum=1)

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(_cfg_pair(cfg, "output_size"))

    def config(self):
        return {"output_size": list(self.output_size)}

    def describe(self):
        return f"AdaptiveAvgPool2d {_pair_text(self.output_size)}"

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
    expects = None  # folds into any linear layer
    _rank = None

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
        if layer.features != _cfg_int(cfg, "features"):
            raise ValueError(f"{layer.features} features != declared {cfg['features']}")
        return layer

    def config(self):
        return {"features": self.features, "eps": self.eps}

    def arrays(self):
        return {"scale": self.scale, "shift": self.shift, "mean": self.mean, "var": self.var}

    def describe(self):
        return f"{type(self).__name__} {self.features} (affine, not folded)"

    def flops(self, in_shapes, out_shape):
        return 2 * _numel(out_shape)

    def can_fold_into(self, layer) -> bool:
        return isinstance(layer, self.expects or Linear) and layer.weight.shape[0] == self.features

    def fold_into(self, layer: Linear) -> Linear:
        """The layer ``self(layer(x))`` as one Dense/Conv2d."""
        expects = self.expects or Linear
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
        if self._rank is not None:
            self._need_rank(shape, self._rank, f"{self._rank}-D features")
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
    """BatchNorm over the features of a Dense output."""

    kind = "batchnorm1d"
    expects = (Dense,)
    _rank = 1


@register_layer
class BatchNorm2d(BatchNorm):
    """BatchNorm over the channels of a Conv2d output."""

    kind = "batchnorm2d"
    expects = (Conv2d,)
    _rank = 3


@register_layer
class Add(Layer):
    """The element-wise sum of two or more inputs of one shape (a residual connection).

    LRP splits relevance in proportion to each input's share of the sum (the Norm rule:
    ``R_i = x_i * R / stab(sum_j x_j)``, Zennit's ResNet canonizer)."""

    kind = "add"
    n_inputs = None
    remakable = True

    def output_shape(self, *shapes):
        if len(shapes) < 2:
            raise ValueError(f"Add needs at least two inputs, got {len(shapes)}")
        if any(tuple(s) != tuple(shapes[0]) for s in shapes):
            raise ValueError(f"Add needs inputs of one shape, got {[tuple(s) for s in shapes]}")
        return tuple(shapes[0])

    def flops(self, in_shapes, out_shape):
        return (len(in_shapes) - 1) * _numel(out_shape)

    def forward(self, *xs):
        y = xs[0] + xs[1]
        for x in xs[2:]:
            y += x
        return y, None

    def vjp(self, g, xs, state, relu_mode="gradient"):
        return (g,) * len(xs)


@register_layer
class Concat(Layer):
    """Concatenation of two or more inputs along the channel axis (axis 1 of the batch).

    LRP slices relevance back to the inputs."""

    kind = "concat"
    n_inputs = None
    remakable = True

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


# --- reading a layer's description (model files) ---------------------------------------------
def _cfg_value(cfg, key, default):
    if key not in cfg:
        if default is None:
            raise ValueError(f"lacks '{key}'")
        return default
    return cfg[key]


def _cfg_int(cfg, key, default=None):
    val = _cfg_value(cfg, key, default)
    if not isinstance(val, int) or isinstance(val, bool) or not 0 < val < (1 << 31):
        raise ValueError(f"has a bad '{key}': {val!r}")
    return val


def _cfg_pair(cfg, key, default=None):
    val = _cfg_value(cfg, key, default)
    if isinstance(val, (list, tuple)):
        if len(val) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
            raise ValueError(f"has a bad '{key}': {val!r}")
        return tuple(val)
    if not isinstance(val, int) or isinstance(val, bool):
        raise ValueError(f"has a bad '{key}': {val!r}")
    return val
