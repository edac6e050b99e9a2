"""Validated wrappers of the compiled kernels: the only module that imports ``relprop._core``.

Each function takes float32 or float64 arrays (all of one dtype), makes them C-contiguous if they
are not, and calls the kernel with the thread count of :func:`set_num_threads`.  The GIL is
released inside every kernel.
"""
from __future__ import annotations

import numpy as np

from . import _core

_threads = 0  # 0: the OpenMP default (all cores)

# The GEMM micro-kernels' instruction set: the best this CPU supports, or RELPROP_ISA
# (avx512, avx2, generic, auto).  An unknown or unsupported value raises ValueError here, at
# import, rather than falling back silently.
_core.set_isa_from_env()


def isa() -> str:
    """The instruction set of the GEMM kernels in use: ``"avx512"``, ``"avx2"`` or ``"generic"``."""
    return str(_core.isa())


def supported_isas() -> list:
    """The instruction sets this build and CPU can use, best last."""
    return list(_core.supported_isas())


def set_isa(name: str) -> None:
    """Switch the GEMM kernels to ``name`` (``"avx512"``, ``"avx2"``, ``"generic"`` or ``"auto"``).

    For tests and comparisons; results of different ISAs differ by rounding.  Do not call it
    while kernels run on other threads.

    Raises
    ------
    ValueError
        If ``name`` is unknown or not supported by this CPU (see :func:`supported_isas`).
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a string, got {type(name).__name__}")
    _core.set_isa(name)


def gemm_blocks(dtype=np.float32) -> dict:
    """The register tile ``mr x nr`` and cache blocks ``mc, kc, nc`` of the GEMM of the ISA in
    use for ``dtype`` (float32 or float64)."""
    return dict(_core.gemm_blocks(np.dtype(dtype) == np.float64))


def depthwise_blocks(dtype=np.float32) -> dict:
    """The vector ``lanes`` and the ``vectors`` per register block of the depthwise
    convolution's row kernel under the ISA in use for ``dtype``: output rows of up to
    ``vectors`` vectors are computed several at a time, longer ones in blocks (tests derive
    their row lengths from these)."""
    return dict(_core.depthwise_blocks(np.dtype(dtype) == np.float64))


def fma_peak_gflops(nthreads=None) -> float:
    """Measured float32 FMA throughput of the ISA in use, in GFLOP/s over ``nthreads`` threads.

    A register-resident loop of fused multiply-adds (the machine's practical peak); it takes
    about half a second.  ``nthreads`` defaults to :func:`get_num_threads`.
    """
    from ._validate import as_threads

    n = get_num_threads() if nthreads is None else as_threads(nthreads, "nthreads", minimum=1)
    return float(_core.fma_peak_gflops(n))


def set_num_threads(n: int) -> None:
    """Set the number of threads relprop's kernels use (``0`` restores the default).

    Results do not depend on it: every reduction runs in the same order for any thread count.
    """
    from ._validate import as_threads

    global _threads
    _threads = as_threads(n, "n", minimum=0)


def get_num_threads() -> int:
    """The number of threads the kernels use."""
    return _threads if _threads > 0 else int(_core.default_threads())


def memory_stats() -> dict:
    """Memory of the kernels, in bytes: ``current_bytes`` and ``peak_bytes`` of their counted
    scratch buffers and of the output arrays on relprop's pool (outputs of 256 KiB or more,
    which ``tracemalloc`` does not see; smaller outputs are NumPy's, which it does), and
    ``pool_cached_bytes``, freed output blocks the pool keeps for reuse (see
    :func:`relprop.release_memory`).  The peak is process-wide, over all threads, since the last
    :func:`reset_memory_peak`.
    """
    out = {k: int(v) for k, v in _core.memory_stats().items()}
    out["pool_cached_bytes"] = int(_core.pool_cached_bytes())
    return out


def release_pool() -> None:
    """Return the output blocks relprop's pool keeps for reuse to the system (see
    :func:`relprop.release_memory`, which also drops the layers' packed weights)."""
    _core.release_memory()


def reset_memory_peak() -> None:
    """Start a new peak measurement of :func:`memory_stats` (the peak becomes the current use)."""
    _core.reset_memory_peak()


def _c(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def _bias(b, dtype):
    return None if b is None else _c(b, dtype)


def dense_forward(x, w, b=None, packed=None):
    """``y = x @ w.T + b``: x (n, in), w (out, in), b (out,) -> (n, out).

    ``packed``: ``dense_pack(w, True)`` made under the ISA in use (skips packing ``w``; the
    result is bitwise the same)."""
    return _core.dense_forward(x, _c(w, x.dtype), _bias(b, x.dtype), _threads, packed)


def dense_backward(g, w, packed=None):
    """``gx = g @ w``: g (n, out), w (out, in) -> (n, in); ``packed``: ``dense_pack(w, False)``."""
    return _core.dense_backward(g, _c(w, g.dtype), _threads, packed)


def dense_pack(w, forward):
    """``w`` (out, in) packed for :func:`dense_forward` (``forward=True``) or
    :func:`dense_backward` in the layout of the GEMM's instruction set in use: a
    ``PackedWeights`` that records the ISA, the GEMM, the dtype and the weight's shape, all of
    which the kernels check (a packing of another weight raises ``ValueError``)."""
    return _core.dense_pack(w, bool(forward))


def _array(a, name):
    """``a`` as a C-contiguous float32/float64 array; other dtypes raise ``TypeError``."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    if a.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name} has dtype {a.dtype}; relprop's kernels take float32 or float64")
    return np.ascontiguousarray(a)


def _like(a, dtype, name, ref="x"):
    """``a`` (an array, or a list/scalar to convert) as a C-contiguous array of ``dtype``: a
    float array of the other precision raises ``TypeError`` naming both dtypes."""
    if a is None:
        return None
    if isinstance(a, np.ndarray) and a.dtype != dtype and a.dtype.kind == "f":
        raise TypeError(f"{name} has dtype {a.dtype} but {ref} has dtype {np.dtype(dtype)}: "
                        "pass arrays of one dtype")
    return np.ascontiguousarray(a, dtype=dtype)


def _conv_args(stride, padding, dilation, groups):
    from ._validate import as_int, as_pair

    return (as_pair(stride, "stride", minimum=1), as_pair(padding, "padding", minimum=0),
            as_pair(dilation, "dilation", minimum=1), as_int(groups, "groups", minimum=1))


def conv2d_forward(x, w, b=None, stride=(1, 1), padding=(0, 0), packed=None, *, dilation=(1, 1),
                   groups=1):
    """2-D cross-correlation as ``torch.nn.functional.conv2d`` (zero padding).

    ``y[n, o, p, q] = b[o] + sum_{c, u, v} w[o, c, u, v] * x[n, g*C + c, p*sh + u*dh - ph,
    q*sw + v*dw - pw]`` where ``g = o // (c_out // groups)`` is the group of output channel
    ``o`` and ``C = c_in // groups`` its number of input channels.

    Parameters
    ----------
    x : ndarray, (n, c_in, h, w), float32 or float64
    w : ndarray, (c_out, c_in // groups, kh, kw), of x's dtype
    b : ndarray, (c_out,), optional
    stride, padding, dilation : int or pair of ints (sh, sw), (ph, pw), (dh, dw)
    packed : PackedWeights, optional
        ``conv2d_pack(w, dilation=dilation, groups=groups)`` made under the ISA in use: skips
        packing ``w``; the result is bitwise the same.
    groups : int
        ``c_in`` and ``c_out`` must be multiples of it.  ``groups == c_in`` (depthwise, any
        channel multiplier ``c_out // c_in``) runs a direct vectorized kernel; ``1 < groups <
        c_in`` one implicit GEMM per group; ``groups == 1`` one per sample.

    Returns
    -------
    y : ndarray, (n, c_out, oh, ow) with ``oh = (h + 2 ph - dh (kh - 1) - 1) // sh + 1`` (ow alike)

    Raises
    ------
    ValueError
        On shapes that do not fit (weight, groups, a window larger than the padded input),
        stride or dilation < 1, negative padding, or a packing made for other weights, groups
        or dilation.
    TypeError
        If the arrays are not float32/float64 or their dtypes differ.
    """
    x = _array(x, "x")
    s, p, d, g = _conv_args(stride, padding, dilation, groups)
    return _core.conv2d_forward(x, _like(w, x.dtype, "w"), _like(b, x.dtype, "b"), s, p, _threads,
                                packed, d, g)


def conv2d_forward_split(x, w, b, split, stride=(1, 1), padding=(0, 0), packed=None, *,
                         dilation=(1, 1), groups=1):
    """Two convolutions of ``x`` in one pass: ``(conv2d_forward(x, w[:split], b[:split]),
    conv2d_forward(x, w[split:], b[split:]))`` with the same stride, padding, dilation and
    groups (LRP's z and z+ from stacked weights).

    With ``groups == 1`` that is :func:`conv2d_forward` of the whole ``w`` cut at output channel
    ``split``, from one GEMM (both weight sets share the im2col packing).  With ``groups > 1``
    each half is a grouped convolution of its own (``split`` and ``c_out - split`` multiples
    of ``groups``): one GEMM per group on that group's rows of both halves (``packed`` must be
    None: the stacked rows are packed per call), or, depthwise, one pass over each input plane
    for both outputs (``packed`` from :func:`conv2d_pack` of the whole ``w`` is accepted).
    Note that for ``groups > 1`` this is *not* ``conv2d_forward(x, w, groups=groups)`` cut in
    two, whose groups would mix the halves.

    Parameters
    ----------
    x : ndarray, (n, c_in, h, w)
    w : ndarray, (c_out, c_in // groups, kh, kw); b : (c_out,) or None
    split : int, 0 < split < c_out

    Returns
    -------
    (y1, y2) : ndarrays (n, split, oh, ow) and (n, c_out - split, oh, ow)
    """
    x = _array(x, "x")
    s, p, d, g = _conv_args(stride, padding, dilation, groups)
    return _core.conv2d_forward_split(x, _like(w, x.dtype, "w"), _like(b, x.dtype, "b"),
                                      int(split), s, p, _threads, packed, d, g)


def conv2d_pack(w, backward=False, stride=(1, 1), padding=(0, 0), *, dilation=(1, 1), groups=1):
    """``w`` (c_out, c_in // groups, kh, kw) packed for :func:`conv2d_forward` (and
    :func:`conv2d_forward_split` with ``groups == 1`` or depthwise), or with ``backward`` for
    :func:`conv2d_backward` with that stride, padding and dilation.

    Returns a ``PackedWeights`` that records the ISA, the GEMM (``conv2d_forward``,
    ``conv2d_backward``, ``conv2d_backward_flipped``, ``conv2d_depthwise_forward`` or
    ``conv2d_depthwise_backward``), the dtype, the weight's shape, ``groups`` and ``dilation``;
    a kernel given a packing that differs in any of them raises ``ValueError``."""
    w = _array(w, "w")
    s, p, d, g = _conv_args(stride, padding, dilation, groups)
    return _core.conv2d_pack(w, bool(backward), s, p, d, g)


def conv2d_backward(g, w, in_hw, stride=(1, 1), padding=(0, 0), packed=None, *, dilation=(1, 1),
                    groups=1):
    """Vector-Jacobian product of :func:`conv2d_forward` w.r.t. x (the transposed convolution).

    Parameters
    ----------
    g : ndarray, (n, c_out, oh, ow)
    w : ndarray, (c_out, c_in // groups, kh, kw), of g's dtype
    in_hw : pair of ints, (h, w) of x
    packed : PackedWeights, optional
        ``conv2d_pack(w, True, stride, padding, dilation=dilation, groups=groups)`` made under
        the ISA in use (the result is bitwise the same).

    Returns
    -------
    gx : ndarray, (n, c_in, h, w)
    """
    from ._validate import as_pair

    g_ = _array(g, "g")
    s, p, d, gr = _conv_args(stride, padding, dilation, groups)
    return _core.conv2d_backward(g_, _like(w, g_.dtype, "w", "g"), as_pair(in_hw, "in_hw", 1), s,
                                 p, _threads, packed, d, gr)


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


def adaptive_avgpool2d_forward(x, out_hw):
    """Adaptive average pooling as ``torch.nn.AdaptiveAvgPool2d(out_hw)``.

    Output ``(i, j)`` is the mean of rows ``[floor(i h / oh), ceil((i + 1) h / oh))`` and columns
    ``[floor(j w / ow), ceil((j + 1) w / ow))`` of its plane: any output size, also one that does
    not divide the input or is larger than it (windows overlap or repeat pixels).

    Parameters
    ----------
    x : ndarray, (n, c, h, w), float32 or float64
    out_hw : int or pair of ints, (oh, ow) >= 1

    Returns
    -------
    y : ndarray, (n, c, oh, ow)
    """
    from ._validate import as_pair

    x = _array(x, "x")
    return _core.adaptive_avgpool2d_forward(x, as_pair(out_hw, "out_hw", minimum=1), _threads)


def adaptive_avgpool2d_backward(g, in_hw):
    """Transpose of :func:`adaptive_avgpool2d_forward`: ``g`` (n, c, oh, ow) -> (n, c, h, w),
    each ``g[i, j]`` spread evenly over its window; ``in_hw`` = (h, w) of x."""
    from ._validate import as_pair

    g = _array(g, "g")
    return _core.adaptive_avgpool2d_backward(g, as_pair(in_hw, "in_hw", minimum=1), _threads)


def relu6_forward(x):
    """``min(max(x, 0), 6)`` (``torch.nn.ReLU6``) for an array of any shape; NaN stays NaN."""
    return _core.relu6_forward(_array(x, "x"), _threads)


def relu6_backward(g, x, mode="gradient"):
    """ReLU6 backward with input ``x`` (same shape as ``g``): gradient ``g * (0 < x < 6)``,
    deconvnet ``max(g, 0)``, guided ``g * (0 < x < 6) * (g > 0)``.

    Raises
    ------
    ValueError
        On an unknown ``mode`` or shapes that differ.
    TypeError
        If ``g`` and ``x`` are not float32/float64 arrays of one dtype.
    """
    if mode not in RELU_MODES:
        raise ValueError(f"mode must be one of {sorted(RELU_MODES)}, got {mode!r}")
    g = _array(g, "g")
    return _core.relu6_backward(g, _like(_array(x, "x"), g.dtype, "x", "g"), RELU_MODES[mode],
                                _threads)


def channel_affine(x, scale, shift=None):
    """``y[n, c, ...] = x[n, c, ...] * scale[c] + shift[c]`` in one pass (an inference
    BatchNorm, unfolded): x of any rank >= 2 with the channel axis 1.

    Its vector-Jacobian product w.r.t. x is ``channel_affine(g, scale)``.

    Parameters
    ----------
    x : ndarray, (n, c, ...), float32 or float64
    scale : ndarray, (c,)
    shift : ndarray, (c,), optional (0 when None)

    Returns
    -------
    y : ndarray, the shape of x

    Raises
    ------
    ValueError
        If x has fewer than 2 dimensions or scale/shift are not (c,).
    TypeError
        If scale or shift are float arrays of another dtype than x.
    """
    x = _array(x, "x")
    return _core.channel_affine(x, _like(scale, x.dtype, "scale"), _like(shift, x.dtype, "shift"),
                                _threads)


def relu_forward(x):
    """``max(x, 0)``."""
    return _core.relu_forward(x, _threads)


RELU_MODES = {"gradient": 0, "deconvnet": 1, "guided": 2}


def relu_backward(g, x, mode="gradient"):
    """ReLU backward with input ``x``: gradient ``g*(x>0)``, deconvnet ``max(g,0)``,
    guided ``g*(x>0)*(g>0)``."""
    return _core.relu_backward(g, _c(x, g.dtype), RELU_MODES[mode], _threads)


def lrp_divide(r, z, eps, shift=None):
    """``r / (z + eps*sign(z))`` with sign(0)=+1, and 0 where that denominator is 0.

    ``shift`` (one sample, shaped like ``r[:1]``): divide by the stabilized ``z - shift``
    instead, without a batch-sized temporary."""
    shift = None if shift is None else _c(shift, r.dtype)
    return _core.lrp_divide(r, _c(z, r.dtype), float(eps), _threads, shift)


def lrp_gamma_shares(r, p, n, gamma, eps, z=None):
    """The stacked shares ``[u; v]`` (channel axis doubled) of LRP-gamma on ``[W+; W-]`` with
    ``p`` and ``n`` the positive and negative parts of ``z`` (``z = p + n`` unless given):
    ``s1 = [z > 0] r / stab((1+gamma) p + n)``, ``s2 = [z < 0] r / stab(p + (1+gamma) n)``,
    ``u = (1+gamma) s1 + s2``, ``v = s1 + (1+gamma) s2`` (divisions as :func:`lrp_divide`)."""
    return _core.lrp_gamma_shares(r, _c(p, r.dtype), _c(n, r.dtype),
                                  None if z is None else _c(z, r.dtype), float(gamma), float(eps),
                                  _threads)


def lrp_alpha_beta_shares(r, p, n, alpha, beta, eps):
    """The stacked shares ``[alpha r / stab(p); -beta r / stab(n)]`` of LRP-alpha-beta on
    ``[W+; W-]`` (channel axis doubled; divisions as :func:`lrp_divide`)."""
    return _core.lrp_alpha_beta_shares(r, _c(p, r.dtype), _c(n, r.dtype), float(alpha),
                                       float(beta), float(eps), _threads)


def gemm(a, b, trans_a=False, trans_b=False):
    """``op(a) @ op(b)`` on relprop's GEMM core (2-D arrays of one float dtype)."""
    a = _c(a, a.dtype)
    return _core.gemm(a, _c(b, a.dtype), bool(trans_a), bool(trans_b), _threads)
