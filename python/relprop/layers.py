"""Layers of a :class:`relprop.Sequential` network.

Every layer implements the same small protocol, which the explanation methods walk:

* ``output_shape(shape)`` - per-sample output shape for a per-sample input shape (validates);
* ``forward(x) -> (y, state)`` - the output and what the backward pass needs besides ``x``;
* ``backward(g, x, state, relu_mode)`` - the vector-Jacobian product w.r.t. the input; it
  reads the values of ``x`` only where ``backward_reads_input`` (ReLU), otherwise its shape;
* ``config()`` / ``arrays()`` - the JSON description and the parameters, for ``save``.

Linear layers (:class:`Dense`, :class:`Conv2d`) also expose ``apply(x, w, b)`` and
``apply_t(g, w, x_shape)`` with explicit parameters, so that LRP rules can run the same kernels
on rule-modified weights (made once per layer, rule and dtype by :meth:`Linear.modified`).
"""
from __future__ import annotations

import threading
import weakref

import numpy as np

from . import ops
from ._validate import as_float_array, as_pair, as_scalar


class Layer:
    """Base class of all layers."""

    kind = "layer"
    linear = False
    #: Whether ``backward`` reads the values of its input ``x`` (not only its shape and dtype).
    backward_reads_input = False

    def output_shape(self, shape: tuple) -> tuple:
        return tuple(shape)

    def forward(self, x):
        raise NotImplementedError

    def backward(self, g, x, state, relu_mode="gradient"):
        raise NotImplementedError

    def config(self) -> dict:
        return {}

    def arrays(self) -> dict:
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def _need_rank(self, shape, rank, what):
        if len(shape) != rank:
            raise ValueError(f"{self!r} expects {what} per sample (rank {rank}), got shape "
                             f"{tuple(shape)}")


# Small batches spend much of a Dense or Conv2d layer's time packing its weights for the GEMM,
# so for small calls (at most PACK_MAX_BATCH samples for Dense, PACK_MAX_PIXELS output pixels
# for Conv2d) a layer keeps its weights packed: one copy per weight array (rule-modified ones
# too) and direction, for weights of at most PACK_MAX_BYTES.  Results are bitwise the same;
# relprop.release_memory() drops the copies.
PACK_MAX_BATCH = 16
PACK_MAX_PIXELS = 1024
PACK_MAX_BYTES = 32 << 20
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

    def forward(self, x):
        w, b = self.params(x.dtype)
        return self.apply(x, w, b), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return self.apply_t(g, self.params(g.dtype)[0], x.shape)

    def apply(self, x, w, b):
        raise NotImplementedError

    def apply_split(self, x, w, b, split):
        """``apply`` with stacked weights, returned as two outputs: output features (channels)
        ``[0, split)`` and ``[split, out)``."""
        raise NotImplementedError

    def apply_t(self, g, w, x_shape):
        raise NotImplementedError


class Dense(Linear):
    """Fully connected layer ``y = x W^T + b``; weight ``(out, in)`` as ``torch.nn.Linear``."""

    kind = "dense"

    def __init__(self, weight, bias=None):
        super().__init__(weight, bias, 2)

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

    def output_shape(self, shape):
        if len(shape) != 1 or shape[0] != self.in_features:
            raise ValueError(f"{self!r} expects ({self.in_features},) per sample, got "
                             f"{tuple(shape)} (add a Flatten layer before it?)")
        return (self.out_features,)

    def apply(self, x, w, b):
        small = len(x) <= PACK_MAX_BATCH
        return ops.dense_forward(x, w, b, self.packed_weights(w, "forward", small))

    def apply_split(self, x, w, b, split):
        # two GEMMs on the row blocks of w (contiguous): no stacked output to split
        return tuple(self.apply(x, w[sl], None if b is None else b[sl])
                     for sl in (slice(None, split), slice(split, None)))

    def apply_t(self, g, w, x_shape):
        small = len(g) <= PACK_MAX_BATCH
        return ops.dense_backward(g, w, self.packed_weights(w, "backward", small))


class Conv2d(Linear):
    """2-D convolution as ``torch.nn.Conv2d`` (NCHW, zero padding); weight ``(out, in, kh, kw)``."""

    kind = "conv2d"

    def __init__(self, weight, bias=None, stride=1, padding=0):
        super().__init__(weight, bias, 4)
        self.stride = as_pair(stride, "stride", minimum=1)
        self.padding = as_pair(padding, "padding", minimum=0)

    def config(self):
        o, i, kh, kw = self.weight.shape
        return {"in_channels": int(i), "out_channels": int(o), "kernel_size": [int(kh), int(kw)],
                "stride": list(self.stride), "padding": list(self.padding)}

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        c, h, w = shape
        o, i, kh, kw = self.weight.shape
        if c != i:
            raise ValueError(f"{self!r} expects {i} input channels, got shape {tuple(shape)}")
        return (o,) + _window_out(self, (h, w), (kh, kw), self.stride, self.padding)

    def _pack(self, w, role):
        return ops.conv2d_pack(w, role == "backward", self.stride, self.padding)

    def _packed_for(self, x, w):
        oh, ow = _window_out(self, x.shape[2:], w.shape[2:], self.stride, self.padding)
        return self.packed_weights(w, "forward", len(x) * oh * ow <= PACK_MAX_PIXELS)

    def apply(self, x, w, b):
        return ops.conv2d_forward(x, w, b, self.stride, self.padding, self._packed_for(x, w))

    def apply_split(self, x, w, b, split):
        # one implicit GEMM: both weight sets share the packing of x
        return ops.conv2d_forward_split(x, w, b, split, self.stride, self.padding,
                                        self._packed_for(x, w))

    def apply_t(self, g, w, x_shape):
        small = g.shape[0] * g.shape[2] * g.shape[3] <= PACK_MAX_PIXELS
        return ops.conv2d_backward(g, w, x_shape[2:], self.stride, self.padding,
                                   self.packed_weights(w, "backward", small))


def _window_out(layer, hw, k, s, p):
    oh = (hw[0] + 2 * p[0] - k[0]) // s[0] + 1
    ow = (hw[1] + 2 * p[1] - k[1]) // s[1] + 1
    if hw[0] + 2 * p[0] < k[0] or hw[1] + 2 * p[1] < k[1] or oh < 1 or ow < 1:
        raise ValueError(f"{layer!r}: window {tuple(k)} does not fit the padded input "
                         f"({hw[0] + 2 * p[0]}, {hw[1] + 2 * p[1]})")
    return (oh, ow)


class ReLU(Layer):
    """``max(x, 0)``."""

    kind = "relu"
    backward_reads_input = True

    def forward(self, x):
        return ops.relu_forward(x), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.relu_backward(g, x, relu_mode)


class Flatten(Layer):
    """C-order flatten of all but the batch axis."""

    kind = "flatten"

    def output_shape(self, shape):
        return (int(np.prod(shape, dtype=np.int64)),)

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

    def config(self):
        return {"kernel_size": list(self.kernel_size), "stride": list(self.stride),
                "padding": list(self.padding)}

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        return (shape[0],) + _window_out(self, shape[1:], self.kernel_size, self.stride,
                                         self.padding)


class MaxPool2d(_Pool):
    """Max pooling as ``torch.nn.MaxPool2d``; ties go to the first maximum in the window."""

    kind = "maxpool2d"

    def forward(self, x):
        return ops.maxpool2d_forward(x, self.kernel_size, self.stride, self.padding)

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.maxpool2d_backward(g, state, x.shape[2:], self.kernel_size, self.stride,
                                      self.padding)


class AvgPool2d(_Pool):
    """Average pooling as ``torch.nn.AvgPool2d`` with ``count_include_pad=True``."""

    kind = "avgpool2d"

    def forward(self, x):
        return ops.avgpool2d_forward(x, self.kernel_size, self.stride, self.padding), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.avgpool2d_backward(g, x.shape[2:], self.kernel_size, self.stride, self.padding)

    def window(self, x_shape):
        return self.kernel_size, self.stride, self.padding


class GlobalAvgPool2d(Layer):
    """Mean over height and width: ``(n, c, h, w) -> (n, c, 1, 1)`` (``AdaptiveAvgPool2d(1)``)."""

    kind = "globalavgpool2d"

    def output_shape(self, shape):
        self._need_rank(shape, 3, "(channels, height, width)")
        return (shape[0], 1, 1)

    def window(self, x_shape):
        hw = tuple(int(s) for s in x_shape[-2:])
        return hw, hw, (0, 0)

    def forward(self, x):
        return ops.avgpool2d_forward(x, *self.window(x.shape)), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return ops.avgpool2d_backward(g, x.shape[2:], *self.window(x.shape))


class BatchNorm(Layer):
    """Inference-mode batch normalization ``scale * (x - mean) / sqrt(var + eps) + shift``.

    It never runs on its own: :class:`relprop.Sequential` folds it into the Dense or Conv2d layer
    right before it (canonization) and raises ``ValueError`` where that is impossible.
    """

    kind = "batchnorm"
    expects = (Dense, Conv2d)

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

    def config(self):
        return {"features": int(self.scale.shape[0]), "eps": self.eps}

    def fold_into(self, layer: Linear) -> Linear:
        """The layer ``self(layer(x))`` as one Dense/Conv2d."""
        if not isinstance(layer, self.expects):
            raise ValueError(f"{self!r} can only be folded into a preceding "
                             f"{' or '.join(t.__name__ for t in self.expects)}, not {layer!r}")
        out = layer.weight.shape[0]
        if self.scale.shape[0] != out:
            raise ValueError(f"{self!r} has {self.scale.shape[0]} features but {layer!r} has "
                             f"{out} outputs")
        s = self.scale / np.sqrt(self.var + self.eps)
        w = layer.weight.astype(np.float64) * s.reshape((-1,) + (1,) * (layer.weight.ndim - 1))
        b = np.zeros(out) if layer.bias is None else layer.bias.astype(np.float64)
        b = (b - self.mean) * s + self.shift
        dtype = layer.weight.dtype
        kw = {} if isinstance(layer, Dense) else {"stride": layer.stride, "padding": layer.padding}
        return type(layer)(w.astype(dtype), b.astype(dtype), **kw)


class BatchNorm1d(BatchNorm):
    """BatchNorm over features of a Dense output (folded into the Dense)."""

    kind = "batchnorm1d"
    expects = (Dense,)


class BatchNorm2d(BatchNorm):
    """BatchNorm over channels of a Conv2d output (folded into the Conv2d)."""

    kind = "batchnorm2d"
    expects = (Conv2d,)


LAYER_TYPES = {cls.kind: cls for cls in (Dense, Conv2d, ReLU, Flatten, MaxPool2d, AvgPool2d,
                                         GlobalAvgPool2d)}
