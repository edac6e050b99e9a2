"""Validated wrappers of the compiled kernels: the only module that imports ``relprop._core``.

Each function takes float32 or float64 arrays (all of one dtype), makes them C-contiguous if they
are not, and calls the kernel with the thread count of :func:`set_num_threads`.  The GIL is
released inside every kernel.
"""
from __future__ import annotations

import contextlib
import threading
from typing import NamedTuple

import numpy as np

from . import _core

_threads = 0  # 0: the OpenMP default (all cores)
_local = threading.local()  # .n: this Python thread's count (local_threads)


def _nt() -> int:
    """The kernels' thread count for the calling Python thread (0: the OpenMP default)."""
    return getattr(_local, "n", _threads)

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


def isa_table(isa=None) -> dict:
    """The table of an instruction set (default: the one in use), built once in the kernels
    and read by them and by the planner (:func:`conv2d_plan`).

    Returns
    -------
    dict
        ``isa``; ``gemm[dtype]``: the GEMM's register tile ``mr x nr`` and cache blocks ``mc,
        kc, nc``; ``depthwise[dtype]``: the depthwise row kernel's vector ``lanes`` and
        ``vectors`` per register block (rows of up to that many vectors are computed several at
        a time); ``winograd``: the crossovers of the auto rule (``min_channels``,
        ``min_macs``, ``f4_min_tiles``, ``f2_min_tiles``), whether they were ``measured`` on
        this ISA (``bench/winograd_crossover.py``) and their ``source`` (the CPU they were
        measured on, or the cost model they were derived from).  ``dtype`` is "float32" or
        "float64".
    """
    if isa is not None and not isinstance(isa, str):
        raise TypeError(f"isa must be a string, got {type(isa).__name__}")
    return dict(_core.isa_table(isa or ""))


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
    Calls whose batches are small run them side by side, a kernel thread each
    (``relprop._common.SAMPLE_PARALLEL_FLOPS``).
    """
    from ._validate import as_threads

    global _threads
    _threads = as_threads(n, "n", minimum=0)


def get_num_threads() -> int:
    """The number of threads the kernels use (called from this Python thread)."""
    n = _nt()
    return n if n > 0 else int(_core.default_threads())


@contextlib.contextmanager
def local_threads(n: int):
    """Kernels called from this Python thread use ``n`` threads inside the block, whatever
    :func:`set_num_threads` says for the others (the batch loop's worker threads run a kernel
    thread each)."""
    from ._validate import as_threads

    n = as_threads(n, "n", minimum=1)
    old = getattr(_local, "n", None)
    _local.n = n
    try:
        yield
    finally:
        if old is None:
            del _local.n
        else:
            _local.n = old


def memory_stats() -> dict:
    """Memory of the kernels, in bytes: ``current_bytes`` and ``peak_bytes`` of their
    workspaces (every scratch buffer a kernel holds, only while it runs) and of the output
    arrays on relprop's pool (outputs of 256 KiB or more, which ``tracemalloc`` does not see;
    smaller outputs are NumPy's, which it does), and ``pool_cached_bytes``, the freed output
    and workspace blocks of 256 KiB or more that the pool keeps mapped for reuse (see
    :func:`relprop.release_memory`).  The peak is process-wide, over all threads, since the last
    :func:`reset_memory_peak`.
    """
    out = {k: int(v) for k, v in _core.memory_stats().items()}
    out["pool_cached_bytes"] = int(_core.pool_cached_bytes())
    return out


def release_pool() -> None:
    """Return the blocks relprop's pool keeps for reuse to the system (see
    :func:`relprop.release_memory`, which also drops the layers' packed weights)."""
    _core.release_memory()


def reset_memory_peak() -> None:
    """Start a new peak measurement of :func:`memory_stats` (the peak becomes the current use)."""
    _core.reset_memory_peak()


def _c(a, dtype):
    return np.ascontiguousarray(a, dtype=dtype)


def dense_forward(x, w, b=None, packed=None, *, relu=False):
    """``y = x @ w.T + b``: x (n, in), w (out, in), b (out,) -> (n, out).

    ``packed``: ``dense_pack(w, True)`` made under the ISA in use (skips packing ``w``; the
    result is bitwise the same).  ``relu=True``: ``max(y, 0)`` (NaN kept) written by the GEMM's
    store, bitwise ``relu_forward(dense_forward(x, w, b))``."""
    x = _array(x, "x")
    w, b = _like(w, x.dtype, "w"), _like(b, x.dtype, "b")
    if relu:
        return _core.dense_forward(x, w, b, _nt(), packed, True)
    return _core.dense_forward(x, w, b, _nt(), packed)


def dense_backward(g, w, packed=None, *, mask=None):
    """``gx = g @ w``: g (n, out), w (out, in) -> (n, in); ``packed``: ``dense_pack(w, False)``.

    ``mask`` (n, in), optional: ``gx * (mask > 0)`` in the GEMM's store, bitwise
    ``relu_backward(dense_backward(g, w), mask)``; pass the layer's input when it is a ReLU's
    output (``relu(z) > 0`` exactly where ``z > 0``), so the ReLU's backward pass costs nothing.
    """
    g = _array(g, "g")
    w = _like(w, g.dtype, "w", "g")
    if mask is not None:
        return _core.dense_backward(g, w, _nt(), packed,
                                    _like(_array(mask, "mask"), g.dtype, "mask", "g"))
    return _core.dense_backward(g, w, _nt(), packed)


def dense_lrp_epsilon(r, z, a, w, eps, packed=None):
    """LRP-epsilon of a Dense layer in one GEMM: ``a * ((r / stab(z)) @ w)``.

    The stabilized division (:func:`lrp_divide`'s: ``stab(z) = z + eps * sign(z)``, sign(0) =
    +1, 0 where the denominator is 0) is made while the GEMM packs its A operand and the product
    with ``a`` in its store: bitwise ``a * dense_backward(lrp_divide(r, z, eps), w)``, without
    the two intermediate arrays.

    Parameters
    ----------
    r, z : (n, out) upper relevance and the layer's output ``x @ w.T + b``
    a : (n, in) the layer's input
    w : (out, in)
    packed : ``dense_pack(w, False)`` made under the ISA in use, or None

    Returns
    -------
    (n, in) the input relevance
    """
    r = _array(r, "r")
    return _core.dense_lrp_epsilon(r, _like(_array(z, "z"), r.dtype, "z", "r"),
                                   _like(_array(a, "a"), r.dtype, "a", "r"), _c(w, r.dtype),
                                   float(eps), _nt(), packed)


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


def _grad_and_input(g, x):
    """``g`` and ``x`` as C-contiguous arrays of ``g``'s float dtype, for a backward kernel
    (``TypeError`` for other dtypes, or ``x`` of the other precision)."""
    g = _array(g, "g")
    return g, _like(_array(x, "x"), g.dtype, "x", "g")


def _conv_args(stride, padding, dilation, groups):
    from ._validate import as_int, as_pair

    return (as_pair(stride, "stride", minimum=1), as_pair(padding, "padding", minimum=0),
            as_pair(dilation, "dilation", minimum=1), as_int(groups, "groups", minimum=1))


#: Conv2d's algorithms, by their code in the kernels (``relprop/plan.hpp``'s ConvAlgo): the
#: implicit GEMM (``gemm1x1``: a 1x1 stride-1 layer multiplies by x itself), the depthwise
#: kernel, Winograd F(2x2, 3x3) and F(4x4, 3x3), and for the backward pass the transposed
#: convolution with the flipped kernel or ``W^T`` and col2im.  :func:`conv2d_plan` chooses.
CONV_ALGORITHMS = ("gemm", "gemm1x1", "depthwise", "winograd2", "winograd4", "flipped", "col2im")
#: What a layer asks :func:`conv2d_plan` for (``Conv2d(algorithm=...)``).
CONV_REQUESTS = ("auto", "direct", "winograd")


def _algo(algorithm):
    """The kernels' code of ``algorithm`` (None: -1, the planner's choice without Winograd)."""
    if algorithm is None:
        return -1
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"algorithm must be one of {CONV_ALGORITHMS} or None, got "
                         f"{algorithm!r}")
    return CONV_ALGORITHMS.index(algorithm)


class ConvPlan(NamedTuple):
    """A convolution pass's plan: the ``algorithm`` (one of :data:`CONV_ALGORITHMS`), the bytes
    of its packed weights and of the ``workspace`` a call takes per thread besides its output,
    the packed weights and the GEMM core's thread buffers (col2im's columns, Winograd's
    transformed blocks)."""

    algorithm: str
    packed_bytes: int
    workspace_bytes: int

    @property
    def tile(self):
        """The Winograd tile (4 or 2), or None."""
        return {"winograd4": 4, "winograd2": 2}.get(self.algorithm)


def conv2d_plan(x_shape, w_shape, stride=1, padding=0, dtype=np.float32, backward=False, *,
                dilation=1, groups=1, request="auto") -> ConvPlan:
    """The plan of a convolution's forward pass or (``backward``) its vector-Jacobian product
    w.r.t. the input: which algorithm runs it, chosen by the kernels' planner from the shape of
    one sample, the dtype, the direction and the table of the ISA in use
    (:func:`isa_table`), never from the batch, so that a sample's result does not depend on
    the batch it is explained in.

    Depthwise layers (``groups == c_in > 1``) run the depthwise kernel; ``request="auto"``
    runs float32 stride-1 3x3 layers (dilation 1, groups 1, padding <= 2) by Winograd where the
    table's crossovers say it pays: with ``(cin, cout)`` the channels the pass reads and writes
    and ``oh x ow`` its output, direct if ``min(cin, cout) < min_channels`` or a sample takes
    fewer than ``min_macs`` multiply-adds (``9 cin cout oh ow``), else F(4x4) if a sample has
    at least ``f4_min_tiles`` 4x4 tiles, else F(2x2) if it has ``f2_min_tiles`` 2x2 tiles,
    else direct (float64 stays direct: its direct result is exact to ~1e-16 already);
    ``"winograd"`` takes the auto tile or F(4x4) wherever Winograd applies (any float dtype);
    ``"direct"`` never Winograd.  Otherwise: forward ``gemm1x1`` (1x1, stride 1, no padding)
    or ``gemm``; backward ``flipped`` (stride 1, padding at most the dilated kernel's extent
    less one, at least ``c_out / 8`` input channels per group; ``gemm1x1`` for a 1x1 kernel)
    or ``col2im``.

    Parameters
    ----------
    x_shape : (n, c_in, h, w) or (c_in, h, w); w_shape : (c_out, c_in // groups, kh, kw)
    stride, padding, dilation : int or pair;  groups : int;  dtype : the computation dtype
    backward : the plan of the backward pass (w.r.t. the input)
    request : "auto", "direct" or "winograd" (:data:`CONV_REQUESTS`)

    Returns
    -------
    ConvPlan
    """
    from ._validate import as_int, as_pair

    if request not in CONV_REQUESTS:
        raise ValueError(f"request must be one of {CONV_REQUESTS}, got {request!r}")
    c, h, w = (int(v) for v in tuple(x_shape)[-3:])
    info = _core.conv2d_plan(c, (h, w), [int(v) for v in w_shape],
                             as_pair(stride, "stride", minimum=1),
                             as_pair(padding, "padding", minimum=0),
                             as_pair(dilation, "dilation", minimum=1),
                             as_int(groups, "groups", minimum=1),
                             np.dtype(dtype) == np.float64, bool(backward),
                             CONV_REQUESTS.index(request))
    return ConvPlan(str(info["algorithm"]), int(info["packed_bytes"]),
                    int(info["workspace_bytes"]))


def conv2d_forward(x, w, b=None, stride=(1, 1), padding=(0, 0), packed=None, *, dilation=(1, 1),
                   groups=1, relu=False, algorithm=None):
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
        ``conv2d_pack(w, dilation=dilation, groups=groups, algorithm=algorithm)`` made under the
        ISA in use: skips packing ``w``; the result is bitwise the same.
    groups : int
        ``c_in`` and ``c_out`` must be multiples of it.  ``groups == c_in`` (depthwise, any
        channel multiplier ``c_out // c_in``) runs a direct vectorized kernel; ``1 < groups <
        c_in`` one implicit GEMM per group; ``groups == 1`` one per sample.
    relu : bool
        ``max(y, 0)`` (NaN kept) instead of ``y``, written by the GEMM's store (depthwise: a pass
        over each plane right after the kernel): bitwise ``relu_forward(conv2d_forward(...))``.
    algorithm : str, optional
        One of :data:`CONV_ALGORITHMS` that can run the layer (a forward one; Winograd's error
        bound: :func:`conv2d_winograd_forward`); None: :func:`conv2d_plan`'s with
        ``request="direct"``.

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
    return _core.conv2d_forward(x, _like(w, x.dtype, "w"), _like(b, x.dtype, "b"), s, p, _nt(),
                                packed, d, g, bool(relu), _algo(algorithm))


def conv2d_forward_split(x, w, b, split, stride=(1, 1), padding=(0, 0), packed=None, *,
                         dilation=(1, 1), groups=1, algorithm=None):
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
    algorithm : as :func:`conv2d_forward`'s

    Returns
    -------
    (y1, y2) : ndarrays (n, split, oh, ow) and (n, c_out - split, oh, ow)
    """
    x = _array(x, "x")
    s, p, d, g = _conv_args(stride, padding, dilation, groups)
    return _core.conv2d_forward_split(x, _like(w, x.dtype, "w"), _like(b, x.dtype, "b"),
                                      int(split), s, p, _nt(), packed, d, g, _algo(algorithm))


def conv2d_pack(w, backward=False, stride=(1, 1), padding=(0, 0), *, dilation=(1, 1), groups=1,
                algorithm=None):
    """``w`` (c_out, c_in // groups, kh, kw) packed for :func:`conv2d_forward` (and
    :func:`conv2d_forward_split` with ``groups == 1`` or depthwise), or with ``backward`` for
    :func:`conv2d_backward` with that stride, padding and dilation, by ``algorithm`` (as
    :func:`conv2d_forward`'s; Winograd's are its transformed weights,
    :func:`conv2d_winograd_pack`).

    Returns a ``PackedWeights`` that records the ISA, the GEMM (``conv2d_forward``,
    ``conv2d_backward``, ``conv2d_backward_flipped``, ``conv2d_depthwise_forward``,
    ``conv2d_depthwise_backward``, ``conv2d_winograd_forward_f4``, ...), the dtype, the
    weight's shape, ``groups`` and ``dilation``; a kernel given a packing that differs in any
    of them raises ``ValueError``."""
    w = _array(w, "w")
    s, p, d, g = _conv_args(stride, padding, dilation, groups)
    return _core.conv2d_pack(w, bool(backward), s, p, d, g, _algo(algorithm), _nt())


def conv2d_backward(g, w, in_hw, stride=(1, 1), padding=(0, 0), packed=None, *, dilation=(1, 1),
                    groups=1, mask=None, algorithm=None):
    """Vector-Jacobian product of :func:`conv2d_forward` w.r.t. x (the transposed convolution).

    Parameters
    ----------
    g : ndarray, (n, c_out, oh, ow)
    w : ndarray, (c_out, c_in // groups, kh, kw), of g's dtype
    in_hw : pair of ints, (h, w) of x
    packed : PackedWeights, optional
        ``conv2d_pack(w, True, stride, padding, dilation=dilation, groups=groups)`` made under
        the ISA in use (the result is bitwise the same).
    mask : ndarray, (n, c_in, h, w), optional
        ``gx * (mask > 0)`` written by the backward GEMM's store (the col2im and depthwise paths:
        right after each unit's gx is made), bitwise ``relu_backward(conv2d_backward(...),
        mask)``: pass the layer's input when it is a ReLU's output.
    algorithm : str, optional
        A backward one of :data:`CONV_ALGORITHMS` that can run the layer; None:
        :func:`conv2d_plan`'s with ``request="direct"``.

    Returns
    -------
    gx : ndarray, (n, c_in, h, w)
    """
    from ._validate import as_pair

    g_ = _array(g, "g")
    s, p, d, gr = _conv_args(stride, padding, dilation, groups)
    mask = None if mask is None else _like(_array(mask, "mask"), g_.dtype, "mask", "g")
    return _core.conv2d_backward(g_, _like(w, g_.dtype, "w", "g"), as_pair(in_hw, "in_hw", 1), s,
                                 p, _nt(), packed, d, gr, mask, _algo(algorithm))


def maxpool2d_forward(x, kernel, stride, padding=(0, 0), *, ceil_mode=False):
    """Max pooling; returns ``(y, argmax)`` with argmax the flat index in each input plane.

    ``ceil_mode`` (torch's): output sizes rounded up, less a last window that would start past
    the input and its left padding; the last windows may reach past the padding (those taps are
    not visited)."""
    return _core.maxpool2d_forward(_array(x, "x"), kernel, stride, padding, _nt(),
                                   bool(ceil_mode))


def maxpool2d_backward(g, argmax, in_hw, kernel, stride, padding=(0, 0), *, mask=None,
                       ceil_mode=False):
    """Route ``g`` to the winners recorded in ``argmax``.

    ``mask`` (shaped like ``g``), optional: route ``g`` only where ``mask > 0`` (0 elsewhere).
    With ``mask`` the pooling's output ``y`` and a ReLU before the pooling, that is the ReLU's
    and the pooling's backward pass in one: bitwise ``relu_backward(maxpool2d_backward(g,
    argmax, ...), x)`` for the ReLU's input ``x`` (``x`` at a winner is ``y``).  Needs disjoint
    windows (stride >= kernel)."""
    g = _array(g, "g")
    if mask is not None:
        return _core.maxpool2d_backward(g, argmax, tuple(in_hw), kernel, stride, padding, _nt(),
                                        _like(_array(mask, "mask"), g.dtype, "mask", "g"),
                                        bool(ceil_mode))
    return _core.maxpool2d_backward(g, argmax, tuple(in_hw), kernel, stride, padding, _nt(),
                                    ceil_mode=bool(ceil_mode))


def avgpool2d_forward(x, kernel, stride, padding=(0, 0), *, ceil_mode=False,
                      count_include_pad=True):
    """Average pooling as ``torch.nn.functional.avg_pool2d``: each window's sum divided by its
    count, the window's taps inside the input plus, with ``count_include_pad``, those in the
    zero padding (never those past the padding that ``ceil_mode`` adds; ``ceil_mode`` as
    :func:`maxpool2d_forward`).  The padding must be at most half the kernel."""
    return _core.avgpool2d_forward(_array(x, "x"), kernel, stride, padding, _nt(),
                                   bool(ceil_mode), bool(count_include_pad))


def avgpool2d_backward(g, in_hw, kernel, stride, padding=(0, 0), *, ceil_mode=False,
                       count_include_pad=True):
    """Transpose of :func:`avgpool2d_forward`."""
    return _core.avgpool2d_backward(_array(g, "g"), tuple(in_hw), kernel, stride, padding,
                                    _nt(), bool(ceil_mode), bool(count_include_pad))


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
    return _core.adaptive_avgpool2d_forward(x, as_pair(out_hw, "out_hw", minimum=1), _nt())


def adaptive_avgpool2d_backward(g, in_hw):
    """Transpose of :func:`adaptive_avgpool2d_forward`: ``g`` (n, c, oh, ow) -> (n, c, h, w),
    each ``g[i, j]`` spread evenly over its window; ``in_hw`` = (h, w) of x."""
    from ._validate import as_pair

    g = _array(g, "g")
    return _core.adaptive_avgpool2d_backward(g, as_pair(in_hw, "in_hw", minimum=1), _nt())


#: Upsampling modes of :func:`upsample2d_forward`, by their kernel's number.
UPSAMPLE_MODES = ("nearest", "bilinear")


def _upsample_args(mode, align_corners, scale):
    from ._validate import as_scalar

    if mode not in UPSAMPLE_MODES:
        raise ValueError(f"mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    if align_corners and mode != "bilinear":
        raise ValueError("align_corners applies to bilinear upsampling only")
    scale = (0.0, 0.0) if scale is None else tuple(
        as_scalar(s, "scale", minimum=0.0) for s in (scale if np.ndim(scale) else (scale,) * 2))
    if len(scale) != 2:
        raise ValueError(f"scale must be a number or a pair, got {scale}")
    return UPSAMPLE_MODES.index(mode), bool(align_corners), scale


def upsample2d_forward(x, out_hw, mode="nearest", align_corners=False, scale=None):
    """Upsampling of the planes of ``x`` to ``out_hw`` as ``torch.nn.functional.interpolate``.

    ``mode`` "nearest": output ``d`` reads input ``min(floor(d * s), in - 1)`` with ``s``
    computed in float32 (as torch, for every dtype); "bilinear": two taps per axis, with
    ``align_corners`` the corners of input and output aligned (``s = (in - 1) / (out - 1)``),
    else pixel centres (``(d + 0.5) s - 0.5``, clamped at 0).  ``s`` is ``1 / scale`` where
    the scale factors torch was given are passed as ``scale`` (its default for ``scale_factor``
    without ``recompute_scale_factor``), else ``in / out``.  Any sizes, also smaller than the
    input.

    Parameters
    ----------
    x : ndarray, (n, c, h, w), float32 or float64
    out_hw : int or pair of ints >= 1
    mode : "nearest" or "bilinear"
    align_corners : bool
    scale : float or pair of floats, optional

    Returns
    -------
    y : ndarray, (n, c, oh, ow)
    """
    from ._validate import as_pair

    return _core.upsample2d_forward(_array(x, "x"), as_pair(out_hw, "out_hw", minimum=1),
                                    *_upsample_args(mode, align_corners, scale), _nt())


def upsample2d_backward(g, in_hw, mode="nearest", align_corners=False, scale=None):
    """Transpose of :func:`upsample2d_forward`: ``g`` (n, c, oh, ow) -> (n, c, h, w) for inputs
    of size ``in_hw``, each input summing the output gradients it was copied or interpolated
    into (in a fixed order: the same bits for any thread count and batch)."""
    from ._validate import as_pair

    return _core.upsample2d_backward(_array(g, "g"), as_pair(in_hw, "in_hw", minimum=1),
                                     *_upsample_args(mode, align_corners, scale), _nt())


def _axis_split(shape, axis):
    """``(axis, outer, c, inner)``: an array of ``shape`` seen as (outer, c, inner) around
    ``axis`` (ValueError for an axis it does not have)."""
    from ._validate import as_int

    axis = as_int(axis, "axis")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis {axis} is out of range for an array of shape {tuple(shape)}")
    axis %= len(shape)
    return (axis, int(np.prod(shape[:axis], dtype=np.int64)), int(shape[axis]),
            int(np.prod(shape[axis + 1:], dtype=np.int64)))


def layer_norm_forward(x, weight=None, bias=None, axis=-1, eps=1e-5):
    """Layer normalization of ``x`` over one ``axis``: ``(x - mean) / sqrt(var + eps) * weight +
    bias``, mean and (biased) variance over that axis (``torch.nn.LayerNorm`` over the last axis;
    ConvNeXt's over the channels, ``axis=1`` of NCHW).  Sums in double, in a fixed order.

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape
    weight, bias : ndarray, (x.shape[axis],), optional (1 and 0 when None)
    axis : int
    eps : float, >= 0

    Returns
    -------
    (y, mean, rstd) : y shaped like ``x``; the mean and ``1 / sqrt(var + eps)`` shaped like ``x``
    without ``axis`` (what :func:`layer_norm_backward` reads).

    Raises
    ------
    ValueError
        An axis out of range, weight or bias of another length, eps < 0.
    TypeError
        Float arrays of different dtypes.
    """
    x = _array(x, "x")
    axis, outer, c, inner = _axis_split(x.shape, axis)
    y, mean, rstd = _core.layer_norm_forward(x, _like(weight, x.dtype, "weight"),
                                             _like(bias, x.dtype, "bias"), outer, c, inner,
                                             float(eps), _nt())
    stats = x.shape[:axis] + x.shape[axis + 1:]
    return y, mean.reshape(stats), rstd.reshape(stats)


def layer_norm_backward(g, x, weight, mean, rstd, axis=-1, frozen_std=False):
    """The vector-Jacobian product of :func:`layer_norm_forward` w.r.t. ``x`` (shaped like
    ``g``), from the ``mean`` and ``rstd`` it returned; with ``frozen_std`` the transpose of the
    map with the standard deviation held constant, ``u - mean(u)`` with ``u = g weight rstd``
    (``x`` and ``mean`` unread: pass None), LRP's identity rule for LayerNorm.

    Raises
    ------
    ValueError
        Shapes that do not fit.
    TypeError
        Float arrays of different dtypes.
    """
    g = _array(g, "g")
    axis, outer, c, inner = _axis_split(g.shape, axis)
    if frozen_std:
        x = mean = None
    else:
        x, mean = _like(x, g.dtype, "x", "g"), _like(mean, g.dtype, "mean", "g")
    return _core.layer_norm_backward(g, x, _like(weight, g.dtype, "weight", "g"), mean,
                                     _like(rstd, g.dtype, "rstd", "g"), outer, c, inner,
                                     bool(frozen_std), _nt())


def attention_forward(q, k, v, heads, scale=None):
    """Multi-head scaled dot-product attention (the core of ``torch.nn.MultiheadAttention``,
    without its projections): for each sample and head ``h`` (the columns ``[h d, (h + 1) d)``
    of each operand), ``A = softmax(scale Q_h K_h^T)`` over each row and ``O_h = A V_h``.

    Parameters
    ----------
    q : ndarray (n, tq, heads * dk), float32 or float64
    k : ndarray (n, tk, heads * dk)
    v : ndarray (n, tk, heads * dv)
    heads : int
    scale : float, optional
        ``1 / sqrt(dk)`` by default (torch's).

    Returns
    -------
    (out, a) : out (n, tq, heads * dv); a (n, heads, tq, tk) the attention weights, which
    :func:`attention_backward` reads.

    Raises
    ------
    ValueError
        Shapes that do not fit, heads < 1, a scale that is not finite.
    TypeError
        Arrays of different float dtypes.
    """
    q = _array(q, "q")
    k, v = _like(k, q.dtype, "k", "q"), _like(v, q.dtype, "v", "q")
    return _core.attention_forward(q, k, v, int(heads), _scale(scale, q, heads), _nt())


def attention_backward(g, q, k, v, a, heads, scale=None, wanted="qkv"):
    """The vector-Jacobian products of :func:`attention_forward` from ``g`` (shaped like its
    output) and its weights ``a``: ``gV_h = A^T G_h``, ``gS = scale A (G_h V_h^T - rowsum(A G_h
    V_h^T))``, ``gQ_h = gS K_h``, ``gK_h = gS^T Q_h``.  ``wanted`` names the ones to compute
    ("v" alone skips the attention weights' gradient); the others come back as None.

    Returns
    -------
    (gq, gk, gv) : shaped like q, k, v, or None.

    Raises
    ------
    ValueError
        Shapes that do not fit.
    TypeError
        Arrays of different float dtypes.
    """
    g = _array(g, "g")
    q, k, v, a = (_like(t, g.dtype, name, "g") for t, name in ((q, "q"), (k, "k"), (v, "v"),
                                                               (a, "a")))
    return _core.attention_backward(g, q, k, v, a, int(heads), _scale(scale, q, heads),
                                    "q" in wanted, "k" in wanted, "v" in wanted, _nt())


def _scale(scale, q, heads):
    """The scale of attention's scores: ``scale``, or ``1 / sqrt(dk)`` (torch's default)."""
    if scale is not None:
        return float(scale)
    dk = q.shape[-1] // max(int(heads), 1) if q.ndim else 0
    return 1.0 / np.sqrt(dk) if dk > 0 else 1.0


#: The smooth activations of :func:`activation_forward`, in the kernel's numbering.
ACTIVATIONS = ("sigmoid", "silu", "tanh", "gelu", "gelu_tanh", "hardsigmoid", "hardswish")


def _activation(op):
    if op not in ACTIVATIONS:
        raise ValueError(f"op must be one of {ACTIVATIONS}, got {op!r}")
    return ACTIVATIONS.index(op)


def activation_forward(x, op):
    """A smooth activation of ``x`` (any shape), element by element; NaN stays NaN.

    Parameters
    ----------
    x : ndarray, float32 or float64
    op : str
        "sigmoid" ``1 / (1 + e^-x)``, "silu" ``x sigmoid(x)``, "tanh", "gelu" ``x Phi(x)`` (the
        standard normal distribution function), "gelu_tanh" ``x (1 + tanh(sqrt(2/pi) (x + 0.044715
        x^3))) / 2``, "hardsigmoid" ``min(max(x + 3, 0), 6) / 6``, "hardswish" ``x *
        hardsigmoid(x)``; as torch defines them.

    Returns
    -------
    ndarray shaped like ``x``.  float32 is computed in float, vectorized with the instruction set
    in use, in forms without cancellation (GELU of negative ``x`` from ``erfc``, its tanh form as
    ``x sigmoid(2 u)``), at least as accurate as torch's float32 kernels (tests/test_activations.py
    measures both against float64); float64 through the C library.

    Raises
    ------
    ValueError
        An unknown ``op``.
    """
    return _core.activation_forward(_array(x, "x"), _activation(op), _nt())


def activation_backward(g, x, op):
    """The vector-Jacobian product of :func:`activation_forward` at ``x``: ``g * act'(x)``
    (shaped like ``g``; hardsigmoid and hardswish take torch's one-sided values at their kinks).

    Raises
    ------
    ValueError
        An unknown ``op``, or ``g`` and ``x`` of different shapes.
    TypeError
        If they are not float32/float64 arrays of one dtype.
    """
    g, x = _grad_and_input(g, x)
    return _core.activation_backward(g, x, _activation(op), _nt())


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
                                _nt())


def hardtanh_forward(x, min_val=-1.0, max_val=1.0):
    """``min(max(x, min_val), max_val)`` (``torch.nn.Hardtanh``, ``torch.clamp``) for an array of
    any shape; the bounds may be infinite; NaN stays NaN."""
    return _core.hardtanh_forward(_array(x, "x"), float(min_val), float(max_val), _nt())


def hardtanh_backward(g, x, min_val=-1.0, max_val=1.0):
    """The vector-Jacobian product of :func:`hardtanh_forward` at ``x`` (torch's hardtanh
    gradient): ``g`` where ``min_val < x < max_val``, 0 where ``x`` is at or beyond a bound
    (``g`` where ``x`` is NaN).

    Raises
    ------
    ValueError
        If ``g`` and ``x`` differ in shape.
    TypeError
        If they are not float32/float64 arrays of one dtype.
    """
    g, x = _grad_and_input(g, x)
    return _core.hardtanh_backward(g, x, float(min_val), float(max_val), _nt())


def prelu_forward(x, weight):
    """``x`` where ``x > 0``, else ``weight[c] * x`` with ``c`` the channel (axis 1 of ``x``;
    ``torch.nn.PReLU``); a ``weight`` of one element is every element's slope.  NaN stays NaN.

    Parameters
    ----------
    x : ndarray, (n, c, ...), float32 or float64 ((n, ...) with one slope)
    weight : ndarray, (c,) or (1,), of x's dtype

    Returns
    -------
    y : ndarray, the shape of x

    Raises
    ------
    ValueError
        If ``weight`` is neither (1,) nor (c,).
    TypeError
        If ``weight`` is a float array of the other precision.
    """
    x = _array(x, "x")
    return _core.prelu_forward(x, _like(weight, x.dtype, "weight"), _nt())


def prelu_backward(g, x, weight):
    """The vector-Jacobian product of :func:`prelu_forward` at ``x`` (shaped like ``g``): ``g``
    where ``x > 0``, else ``weight[c] * g`` (torch's gradient, 0 counted as negative).

    Raises
    ------
    ValueError
        If ``g`` and ``x`` differ in shape, or ``weight`` is neither (1,) nor (c,).
    TypeError
        If they are not float32/float64 arrays of one dtype.
    """
    g, x = _grad_and_input(g, x)
    return _core.prelu_backward(g, x, _like(weight, g.dtype, "weight", "g"), _nt())


def leaky_relu_forward(x, negative_slope=0.01):
    """``x`` where ``x > 0``, else ``negative_slope * x`` (``torch.nn.LeakyReLU``), for an array
    of any shape; NaN stays NaN."""
    return _core.leaky_relu_forward(_array(x, "x"), float(negative_slope), _nt())


def leaky_relu_backward(g, x, negative_slope=0.01):
    """The vector-Jacobian product of :func:`leaky_relu_forward` at ``x`` (shaped like ``g``):
    ``g`` where ``x > 0``, else ``negative_slope * g`` (torch's gradient, 0 counted as
    negative).

    Raises
    ------
    ValueError
        If ``g`` and ``x`` differ in shape.
    TypeError
        If they are not float32/float64 arrays of one dtype.
    """
    g, x = _grad_and_input(g, x)
    return _core.leaky_relu_backward(g, x, float(negative_slope), _nt())


def relu_forward(x):
    """``max(x, 0)``."""
    return _core.relu_forward(_array(x, "x"), _nt())


RELU_MODES = {"gradient": 0, "deconvnet": 1, "guided": 2}


def relu_backward(g, x, mode="gradient"):
    """ReLU backward with input ``x``: gradient ``g*(x>0)``, deconvnet ``max(g,0)``,
    guided ``g*(x>0)*(g>0)``."""
    if mode not in RELU_MODES:
        raise ValueError(f"mode must be one of {tuple(RELU_MODES)}, got {mode!r}")
    g, x = _grad_and_input(g, x)
    return _core.relu_backward(g, x, RELU_MODES[mode], _nt())


def lrp_divide(r, z, eps, shift=None):
    """``r / (z + eps*sign(z))`` with sign(0)=+1, and 0 where that denominator is 0.

    ``shift`` (one sample, shaped like ``r[:1]``): divide by the stabilized ``z - shift``
    instead, without a batch-sized temporary."""
    r = _array(r, "r")
    shift = None if shift is None else _c(shift, r.dtype)
    return _core.lrp_divide(r, _c(z, r.dtype), float(eps), _nt(), shift)


def lrp_gamma_shares(r, p, n, gamma, eps, z=None):
    """The stacked shares ``[u; v]`` (channel axis doubled) of LRP-gamma on ``[W+; W-]`` with
    ``p`` and ``n`` the positive and negative parts of ``z`` (``z = p + n`` unless given):
    ``s1 = [z > 0] r / stab((1+gamma) p + n)``, ``s2 = [z < 0] r / stab(p + (1+gamma) n)``,
    ``u = (1+gamma) s1 + s2``, ``v = s1 + (1+gamma) s2`` (divisions as :func:`lrp_divide`)."""
    r = _array(r, "r")
    return _core.lrp_gamma_shares(r, _c(p, r.dtype), _c(n, r.dtype),
                                  None if z is None else _c(z, r.dtype), float(gamma), float(eps),
                                  _nt())


def lrp_alpha_beta_shares(r, p, n, alpha, beta, eps):
    """The stacked shares ``[alpha r / stab(p); -beta r / stab(n)]`` of LRP-alpha-beta on
    ``[W+; W-]`` (channel axis doubled; divisions as :func:`lrp_divide`)."""
    r = _array(r, "r")
    return _core.lrp_alpha_beta_shares(r, _c(p, r.dtype), _c(n, r.dtype), float(alpha),
                                       float(beta), float(eps), _nt())


def gemm(a, b, trans_a=False, trans_b=False):
    """``op(a) @ op(b)`` on relprop's GEMM core (2-D arrays of one float dtype)."""
    a = _array(a, "a")
    return _core.gemm(a, _like(b, a.dtype, "b", "a"), bool(trans_a), bool(trans_b), _nt())


# ------------------------------------------------------------------------------------------
# Winograd convolution F(m x m, 3x3) for stride-1 3x3 layers

#: Output tiles of the Winograd convolutions: F(2x2, 3x3) and F(4x4, 3x3).
WINOGRAD_TILES = (2, 4)

#: The accuracy contract of the Winograd convolutions in float32, as a fraction of the largest
#: output magnitude (see :func:`conv2d_winograd_forward`).
WINOGRAD_RTOL = 1e-5


def _winograd_args(tile, stride, padding):
    from ._validate import as_int, as_pair

    tile = as_int(tile, "tile")
    if tile not in WINOGRAD_TILES:
        raise ValueError(f"tile={tile}: Winograd convolution has tiles {WINOGRAD_TILES} "
                         "(F(2x2, 3x3) and F(4x4, 3x3))")
    stride = as_pair(stride, "stride", minimum=1)
    if stride != (1, 1):
        raise ValueError(f"stride={stride}: Winograd convolution needs stride (1, 1); use "
                         "conv2d_forward for strided layers")
    padding = as_pair(padding, "padding")
    if max(padding) > 2:
        raise ValueError(f"padding={padding}: Winograd convolution needs padding 0, 1 or 2 "
                         "in each direction")
    return tile, padding


def conv2d_winograd_pack(w, tile=4, backward=False):
    """The weights ``w`` (c_out, c_in, 3, 3) transformed for :func:`conv2d_winograd_forward`,
    or with ``backward`` for :func:`conv2d_winograd_backward`, and packed for the GEMM core.

    The transform ``U = G w G^T`` (per channel pair) is computed in float64 and rounded once;
    the backward packing transforms the flipped, channel-transposed kernel
    ``w'[c, o, u, v] = w[o, c, 2-u, 2-v]``.  Make it once per weight and keep it: it holds
    ``(tile + 2)**2 * c_out * c_in`` values (4x or 1.8x the weight) in the layout of the
    instruction set in use.

    Returns
    -------
    PackedWeights
        Records the ISA, the GEMM (``conv2d_winograd_forward_f4``, ...), the dtype and the
        weight's shape; the convolutions refuse a packing made for anything else
        (``ValueError``).
    """
    tile, _ = _winograd_args(tile, 1, 0)
    return _core.conv2d_winograd_pack(np.ascontiguousarray(w), tile, bool(backward), _nt())


def conv2d_winograd_forward(x, w, b=None, padding=(1, 1), packed=None, *, tile=4, split=None,
                            stride=(1, 1), relu=False):
    """Stride-1 3x3 convolution by Winograd's minimal filtering F(tile x tile, 3x3).

    The same result as ``conv2d_forward(x, w, b, 1, padding)`` up to rounding, from
    ``(tile + 2)**2`` GEMMs of ``c_out x c_in`` on ``tile x tile`` output tiles: 4x
    (``tile=4``) or 2.25x (``tile=2``) fewer multiply-adds than the direct method, plus the
    transforms.  F(4x4, 3x3) uses the points 0, 1, -1, 1/2, -2 (Barabasz et al. 2020), whose
    float32 error is about 3x smaller than Lavin & Gray's 0, +-1, +-2.

    Accuracy contract (float32): on realistic layers (He-initialized weights, inputs after a
    ReLU, ``c_in`` up to 512) ``max|y - y_exact| <= 1e-5 * max|y_exact|`` for both tiles
    (:data:`WINOGRAD_RTOL`), and likewise for :func:`conv2d_winograd_backward` with normal
    gradients.  Measured (``bench/winograd_accuracy.py``, every conv layer of vgg16 at 224 and
    cifar_cnn, float64 reference): tile 4 at most 2.5e-6 forward and 6.8e-6 backward, tile 2
    at most 7e-7, the direct method 5e-7; on random layers up to 512 -> 512 channels tile 4
    stays below 5.6e-6 (AVX-512, AVX2 and generic kernels alike).  So F(4x4) meets the
    contract everywhere measured, by a factor of 1.5 to 2; F(2x2) by more than 10.
    Elementwise, the error is bounded by the error model of ``tests/test_winograd.py`` (a
    multiple of eps times the Winograd computation in absolute values).  float64 works too
    (relative error ~1e-14).

    Results are bitwise identical for any thread count and do not depend on the batch.
    Memory: besides the packed weights, a call takes a workspace from relprop's pool (the
    transformed inputs and products of one block of tiles per thread: up to 32 MiB per thread
    at 512 channels, about 2 MiB at 64), which stays cached for the next call until
    :func:`relprop.release_memory`.

    Parameters
    ----------
    x : (n, c_in, h, w) float32 or float64
    w : (c_out, c_in, 3, 3), b : (c_out,) or None
    padding : int or (ph, pw), each 0, 1 or 2 (zero padding)
    packed : ``conv2d_winograd_pack(w, tile)`` made under the ISA in use, or None
    tile : 4 or 2
    split : None, or 0 < split < c_out: return ``(y[:, :split], y[:, split:])`` as two arrays
        written directly by the output transform (LRP's stacked ``[W+; W-]``).
    stride : must be 1 (accepted so that callers can pass a layer's stride through).
    relu : ``max(y, 0)`` (NaN kept) instead of ``y``, applied by the output transform: bitwise
        ``relu_forward`` of the plain result (not with ``split``).

    Returns
    -------
    y : (n, c_out, h + 2 ph - 2, w + 2 pw - 2), or two arrays with ``split``.

    Raises
    ------
    ValueError
        For a kernel other than 3x3, a stride other than 1, padding outside 0..2, a tile other
        than 2 or 4, a bad ``split`` or shapes that do not match, and for packed weights made
        for another weight, tile, direction, dtype or ISA.
    """
    tile, padding = _winograd_args(tile, stride, padding)
    from ._validate import as_int

    split = 0 if split is None else as_int(split, "split", minimum=1)
    x = _array(x, "x")
    w, b = _like(w, x.dtype, "w"), _like(b, x.dtype, "b")
    if relu:
        if split:
            raise ValueError("relu=True needs one output (split=None)")
        return _core.conv2d_winograd_forward(x, w, b, padding, tile, 0, _nt(), packed, 0, True)
    return _core.conv2d_winograd_forward(x, w, b, padding, tile, split, _nt(), packed)


def conv2d_winograd_backward(g, w, in_hw, padding=(1, 1), packed=None, *, tile=4,
                             stride=(1, 1), mask=None):
    """Vector-Jacobian product of :func:`conv2d_winograd_forward` (and of ``conv2d_forward``)
    w.r.t. x: g (n, c_out, oh, ow) -> (n, c_in, h, w) with ``in_hw = (h, w)``.

    For stride 1 it is the stride-1 3x3 convolution of ``g`` with the flipped,
    channel-transposed kernel and padding ``2 - padding``, run by the same Winograd kernel.
    ``packed``: ``conv2d_winograd_pack(w, tile, backward=True)``.  ``mask`` (n, c_in, h, w),
    optional: ``gx * (mask > 0)`` applied by the output transform, bitwise
    ``relu_backward(conv2d_winograd_backward(...), mask)``.  Accuracy contract and errors as
    :func:`conv2d_winograd_forward`.
    """
    tile, padding = _winograd_args(tile, stride, padding)
    g = _array(g, "g")
    w = _like(w, g.dtype, "w", "g")
    if mask is not None:
        return _core.conv2d_winograd_backward(g, w, tuple(in_hw), padding, tile, _nt(), packed, 0,
                                              _like(_array(mask, "mask"), g.dtype, "mask", "g"))
    return _core.conv2d_winograd_backward(g, w, tuple(in_hw), padding, tile, _nt(), packed)


# ------------------------------------------------------------------------------------------
# Fused layer steps: convolution + ReLU + 2x2 max pooling, its backward pass from the pooled
# gradient, LRP-epsilon (``algorithm``: as conv2d_forward's / conv2d_backward's, Winograd
# included)


def conv2d_forward_relu_maxpool(x, w, b=None, stride=(1, 1), padding=(0, 0), packed=None, *,
                                dilation=(1, 1), groups=1, algorithm=None, pool=2):
    """A convolution, its bias, a ReLU and a 2x2 stride-2 max pooling in one kernel.

    Returns ``(pooled, argmax)``, bitwise ``maxpool2d_forward(relu_forward(conv2d_forward(x, w,
    b, ..., algorithm=algorithm)), 2, 2)``: ``argmax`` is each window's winner as
    :func:`maxpool2d_forward` reports it, the flat index in the ``oh x ow`` plane of the
    convolution's output (first maximum in row-major window order, NaN wins).  The
    convolution's output never goes to memory: the implicit GEMM computes bands of output rows
    into a thread's scratch (bias and ReLU in the GEMM's store) and pools them from there;
    Winograd's output transform pools each tile (the windows lie inside tiles).  With
    ``groups > 1`` the convolution and its ReLU are made in a workspace, then pooled.

    For the backward pass keep ``argmax`` and ``pooled`` (the next layer's input anyway): see
    :func:`conv2d_backward_pooled`.

    Parameters
    ----------
    x, w, b, stride, padding, dilation, groups, algorithm : as :func:`conv2d_forward`
    packed : ``conv2d_pack(w, ..., algorithm=algorithm)``, or None
    pool : the pooling window and stride: must be 2

    Returns
    -------
    pooled : (n, c_out, oh // 2, ow // 2);  argmax : int64, same shape
    """
    from ._validate import as_pair

    if as_pair(pool, "pool") != (2, 2):
        raise ValueError(f"pool={pool}: the fused pooling is 2x2 with stride 2")
    x = _array(x, "x")
    s, p, d, g = _conv_args(stride, padding, dilation, groups)
    return _core.conv2d_forward_relu_maxpool(x, _like(w, x.dtype, "w"), _like(b, x.dtype, "b"), s,
                                             p, _nt(), packed, d, g, _algo(algorithm))


def conv2d_backward_pooled(g, argmax, w, in_hw, stride=(1, 1), padding=(0, 0), packed=None, *,
                           pooled=None, mask=None, dilation=(1, 1), groups=1, algorithm=None):
    """The backward pass of :func:`conv2d_forward_relu_maxpool` from the pooled gradient.

    ``g`` and ``argmax`` (and ``pooled``) are (n, c_out, oh // 2, ow // 2); the gradient of the
    convolution's output is ``g`` at the winners ``argmax`` where ``pooled > 0`` (the ReLU
    between the convolution and the pooling; without ``pooled``: everywhere) and 0 elsewhere;
    the result is its :func:`conv2d_backward` (by ``algorithm``) times ``mask > 0`` if ``mask``
    is given.  Bitwise::

        conv2d_backward(relu_backward(maxpool2d_backward(g, argmax, (oh, ow), 2, 2), y), w,
                        in_hw, ..., mask=mask, algorithm=algorithm)

    for the convolution's output ``y`` whose ReLU and pooling gave ``pooled`` and ``argmax``.
    That gradient is made in a workspace (one pass, in place of the pooling's and the ReLU's
    backward passes and their two arrays); the ReLU mask of the layer below is applied in the
    backward pass's store.

    Parameters
    ----------
    g : (n, c_out, oh // 2, ow // 2) the pooled output's gradient
    argmax : int64, same shape, from :func:`conv2d_forward_relu_maxpool`
    w, in_hw, stride, padding, dilation, groups, algorithm : as :func:`conv2d_backward`
    packed : ``conv2d_pack(w, True, stride, padding, ..., algorithm=algorithm)``, or None
    pooled : the pooled output, optional (its ReLU mask)
    mask : (n, c_in, h, w), optional: the layer's input when it is a ReLU's output

    Returns
    -------
    gx : (n, c_in, h, w)
    """
    from ._validate import as_pair

    g = _array(g, "g")
    w = _like(w, g.dtype, "w", "g")
    s, p, d, gr = _conv_args(stride, padding, dilation, groups)
    if not isinstance(argmax, np.ndarray) or argmax.dtype != np.int64:
        raise TypeError("argmax must be an int64 array (from conv2d_forward_relu_maxpool)")
    return _core.conv2d_backward_pooled(
        g, np.ascontiguousarray(argmax),
        None if pooled is None else _like(_array(pooled, "pooled"), g.dtype, "pooled", "g"), w,
        as_pair(in_hw, "in_hw", 1), s, p, _nt(), packed, d, gr,
        None if mask is None else _like(_array(mask, "mask"), g.dtype, "mask", "g"),
        _algo(algorithm))


def conv2d_lrp_epsilon(r, z, a, w, eps, stride=(1, 1), padding=(0, 0), packed=None, *,
                       dilation=(1, 1), groups=1, algorithm=None):
    """LRP-epsilon of a convolution: ``a * conv2d_backward(r / stab(z), w)``.

    Bitwise ``a * conv2d_backward(lrp_divide(r, z, eps), w, a.shape[2:], ...,
    algorithm=algorithm)``; the quotients go to a workspace in one pass and the product with
    ``a`` is made by the backward pass's store (Winograd: the output transform), without the
    two intermediate output arrays.

    Parameters
    ----------
    r, z : (n, c_out, oh, ow) the upper relevance and the layer's output ``conv(a, w) + b``
    a : (n, c_in, h, w) the layer's input
    w, stride, padding, dilation, groups, algorithm : as :func:`conv2d_backward`
    packed : ``conv2d_pack(w, True, stride, padding, ..., algorithm=algorithm)``, or None

    Returns
    -------
    (n, c_in, h, w) the input relevance
    """
    r = _array(r, "r")
    w = _like(w, r.dtype, "w", "r")
    s, p, d, gr = _conv_args(stride, padding, dilation, groups)
    return _core.conv2d_lrp_epsilon(r, _like(_array(z, "z"), r.dtype, "z", "r"),
                                    _like(_array(a, "a"), r.dtype, "a", "r"), w, float(eps), s, p,
                                    _nt(), packed, d, gr, _algo(algorithm))
