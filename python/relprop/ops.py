"""Validated wrappers of the compiled kernels: the only module that imports ``relprop._core``.

Each function takes float32 or float64 arrays (all of one dtype), makes them C-contiguous if they
are not, and calls the kernel with the thread count of :func:`set_num_threads`.  The GIL is
released inside every kernel.
"""
from __future__ import annotations

import numpy as np

from . import _core

_threads = 0  # 0: the OpenMP default (all cores)


def set_num_threads(n: int) -> None:
    """Set the number of threads relprop's kernels use (``0`` restores the default).

    Results do not depend on it: every reduction runs in the same order for any thread count.
    """
    from ._validate import as_int

    global _threads
    _threads = as_int(n, "n", minimum=0)


def get_num_threads() -> int:
    """The number of threads the kernels use."""
    return _threads if _threads > 0 else int(_core.default_threads())


def _c(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def _bias(b, dtype):
    return None if b is None else _c(b, dtype)


def dense_forward(x, w, b=None):
    """``y = x @ w.T + b``: x (n, in), w (out, in), b (out,) -> (n, out)."""
    return _core.dense_forward(x, _c(w, x.dtype), _bias(b, x.dtype), _threads)


def dense_backward(g, w):
    """``gx = g @ w``: g (n, out), w (out, in) -> (n, in)."""
    return _core.dense_backward(g, _c(w, g.dtype), _threads)


def conv2d_forward(x, w, b=None, stride=(1, 1), padding=(0, 0)):
    """2-D cross-correlation as torch's conv2d: x (n, c_in, h, w), w (c_out, c_in, kh, kw)."""
    return _core.conv2d_forward(x, _c(w, x.dtype), _bias(b, x.dtype), stride, padding, _threads)


def conv2d_backward(g, w, in_hw, stride=(1, 1), padding=(0, 0)):
    """Vector-Jacobian product of :func:`conv2d_forward` w.r.t. x; ``in_hw`` = (h, w) of x."""
    return _core.conv2d_backward(g, _c(w, g.dtype), tuple(in_hw), stride, padding, _threads)


def maxpool2d_forward(x, kernel, stride, padding=(0, 0)):
    """Max pooling; returns ``(y, argmax)`` with argmax the flat index in each input plane."""
    return _core.maxpool2d_forward(x, kernel, stride, padding, _threads)


def maxpool2d_backward(g, argmax, in_hw, kernel, stride, padding=(0, 0)):
    """Route ``g`` to the winners recorded in ``argmax``."""
    return _core.maxpool2d_backward(g, argmax, tuple(in_hw), kernel, stride, padding, _threads)


def avgpool2d_forward(x, kernel, stride, padding=(0, 0)):
    """Average pooling with zero padding counted (torch's ``count_include_pad=True``)."""
    return _core.avgpool2d_forward(x, kernel, stride, padding, _threads)


def avgpool2d_backward(g, in_hw, kernel, stride, padding=(0, 0)):
    """Transpose of :func:`avgpool2d_forward`."""
    return _core.avgpool2d_backward(g, tuple(in_hw), kernel, stride, padding, _threads)


def relu_forward(x):
    """``max(x, 0)``."""
    return _core.relu_forward(x, _threads)


RELU_MODES = {"gradient": 0, "deconvnet": 1, "guided": 2}


def relu_backward(g, x, mode="gradient"):
    """ReLU backward with input ``x``: gradient ``g*(x>0)``, deconvnet ``max(g,0)``,
    guided ``g*(x>0)*(g>0)``."""
    return _core.relu_backward(g, _c(x, g.dtype), RELU_MODES[mode], _threads)


def lrp_divide(r, z, eps):
    """``r / (z + eps*sign(z))`` with sign(0)=+1, and 0 where that denominator is 0."""
    return _core.lrp_divide(r, _c(z, r.dtype), float(eps), _threads)


def gemm(a, b, trans_a=False, trans_b=False):
    """``op(a) @ op(b)`` on relprop's GEMM core (2-D arrays of one float dtype)."""
    a = _c(a, a.dtype)
    return _core.gemm(a, _c(b, a.dtype), bool(trans_a), bool(trans_b), _threads)
