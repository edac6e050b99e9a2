"""Private helpers shared by the methods: ``target`` semantics, chunking over the batch, and
stand-ins for arrays whose values a backward pass does not read."""
from __future__ import annotations

import functools
import numbers
import os
import threading

import numpy as np

from ._validate import as_int


def is_int(t):
    return isinstance(t, (numbers.Integral, np.integer)) and not isinstance(t, (bool, np.bool_))


#: The target that explains each sample's predicted class, ``argmax`` of its output.
PRED = "pred"
#: What the errors for a class target on a dense output advise.
DENSE_HINT = ("for a dense output (e.g. a segmentation map) pass a seed array shaped like it: "
              "relprop.targets.region(net(x), cls, mask) explains class cls on the pixels of "
              "mask")


class Predicted:
    """The target "pred" that also keeps the outputs it saw (``outputs``, one array per batch,
    in order): a caller that needs the scores reads them from the explanation's own forward
    pass instead of running another."""

    def __init__(self):
        self.outputs = []


def is_pred(t):
    """Whether ``t`` is the target "pred" (any other string raises ValueError)."""
    if isinstance(t, str) and t != PRED:
        raise ValueError(f"target must be an int, a sequence of ints, a float seed array or "
                         f"{PRED!r}, got {t!r}")
    return isinstance(t, (str, Predicted))


def predicted(net, x, target, batch_size=None):
    """``target`` for methods that evaluate the network away from ``x`` (Taylor's root, the
    points of SmoothGrad and Integrated Gradients, pixel flipping): "pred" becomes the classes
    predicted at ``x`` (one forward pass); any other target is returned as is."""
    if not is_pred(target):
        return target
    return pred_classes(target, net.forward(x, batch_size=batch_size, check_finite=False))


def pred_classes(target, out):
    """The classes of the target "pred" (or a :class:`Predicted`, which keeps ``out``)."""
    if out.ndim != 2:
        raise ValueError(f"target {PRED!r} needs an output of shape (n, n_out), got "
                         f"{out.shape}; {DENSE_HINT}")
    if isinstance(target, Predicted):
        target.outputs.append(out)
    return out.argmax(axis=1)


def seed(target, out: np.ndarray, scale: bool) -> np.ndarray:
    """The output seed for ``target`` given the network output ``out`` (n, n_out).

    * an int: the same class for every sample;
    * a sequence of n ints: one class per sample;
    * "pred" (or a :class:`Predicted`): each sample's class ``argmax(out)`` (the first of
      tied maxima);
    * an array shaped like ``out``: used as the seed directly.

    With classes the seed is one-hot, times ``out`` when ``scale`` (LRP: relevance starts as
    the explained score).
    """
    n = out.shape[0]
    if is_pred(target):
        classes = pred_classes(target, out)
    elif is_int(target):
        c = int(target)
        if out.ndim == 2 and not 0 <= c < out.shape[1]:  # before np.full: 2**63 would overflow
            raise ValueError(f"target {c} is out of range for {out.shape[1]} outputs "
                             f"(valid: 0..{out.shape[1] - 1})")
        classes = np.full(n, c if out.ndim == 2 else 0, dtype=np.int64)
    else:
        t = np.asarray(target) if not isinstance(target, np.ndarray) else target
        if t.dtype.kind in "iu" and t.ndim == 1:
            if t.shape[0] != n:
                raise ValueError(f"target has {t.shape[0]} classes for a batch of {n} samples")
            classes = t.astype(np.int64)
        elif t.dtype.kind == "f" and t.ndim == out.ndim:
            if t.shape != out.shape:
                raise ValueError(f"target seed has shape {t.shape} but the output has shape "
                                 f"{out.shape}")
            with np.errstate(over="ignore"):  # 1e300 in a float32 seed is reported below
                s = np.ascontiguousarray(t, dtype=out.dtype)
            if not np.isfinite(s).all():
                raise ValueError(f"target seed contains NaN or infinite values (as {out.dtype})")
            return s
        else:
            raise TypeError("target must be an int, a sequence of ints (one per sample) or a float "
                            f"array shaped like the output {out.shape}; got "
                            f"{type(target).__name__} with dtype {t.dtype} and shape {t.shape}")
    if out.ndim != 2:
        raise ValueError(f"class targets need an output of shape (n, n_out), got {out.shape}; "
                         f"{DENSE_HINT}")
    n_out = out.shape[1]
    bad = (classes < 0) | (classes >= n_out)
    if bad.any():
        raise ValueError(f"target {int(classes[bad][0])} is out of range for {n_out} outputs "
                         f"(valid: 0..{n_out - 1})")
    s = np.zeros_like(out)
    rows = np.arange(n)
    s[rows, classes] = out[rows, classes] if scale else 1
    return s


def chunks(x: np.ndarray, target, batch_size):
    """Yield ``(slice, target chunk)`` pairs covering the batch ``x`` in ``batch_size`` pieces."""
    n = x.shape[0]
    if batch_size is None:
        yield slice(0, n), target
        return
    bs = as_int(batch_size, "batch_size", minimum=1)
    per_sample = not (is_int(target) or is_pred(target))
    if per_sample:
        t = np.asarray(target)
        if t.ndim == 0 or t.shape[0] != n:
            raise ValueError(f"target has {t.shape[0] if t.ndim else 0} entries for a batch of "
                             f"{n} samples")
    for start in range(0, n, bs):
        sl = slice(start, min(n, start + bs))
        yield sl, (t[sl] if per_sample else target)


#: Batches of at most this many forward-pass FLOPs run side by side, a batch per thread with a
#: kernel thread each, instead of one after another with the threads splitting every kernel.
#: Small kernels end in a barrier every few microseconds, where one thread waits for the
#: other, and threads that share every layer's data suffer most when a VM's cores are far
#: apart: the digits CNN in batches of 64 (44 MFLOP) took 2.05 s per 100,000 samples on 2
#: threads for tens of seconds at a time on a 2-vCPU AMD EPYC, 1.35 s batch by batch
#: (bitwise the same result: kernels are batch- and thread-invariant; ``python bench/pairs.py
#: side-by-side`` compares the two).  Larger batches keep a batch's memory to one at a time.
SAMPLE_PARALLEL_FLOPS = 1 << 28

_POOLS = {}  # thread count -> ThreadPoolExecutor of that many threads, made on first use
_POOL_LOCK = threading.Lock()
_IN_POOL = threading.local()


def _forget_pools():  # a forked child has none of the pools' threads: it starts new pools
    global _POOL_LOCK
    _POOLS.clear()
    _POOL_LOCK = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_pools)


def _batch_threads(net, x, batches, rows):
    """Threads to run ``batches`` batches of ``rows`` samples of ``x`` side by side (1: one
    after another)."""
    from .ops import get_num_threads

    if net is None or batches < 2 or getattr(_IN_POOL, "active", False):
        return 1
    threads = min(get_num_threads(), batches)
    if threads < 2 or net.flops(x.shape[1:]) * rows > SAMPLE_PARALLEL_FLOPS:
        return 1
    return threads


def _pool(threads):
    """The batch pool of ``threads`` threads: calls at that thread count share it, so they
    never run more batches at once than that, whatever the pools of other counts do."""
    from concurrent.futures import ThreadPoolExecutor

    with _POOL_LOCK:
        if threads not in _POOLS:
            _POOLS[threads] = ThreadPoolExecutor(threads, thread_name_prefix="relprop-batch")
        return _POOLS[threads]


def _in_pool(fn, *args):
    from .ops import local_threads

    _IN_POOL.active = True
    try:
        with local_threads(1):
            return fn(*args)
    finally:
        _IN_POOL.active = False


def _side_by_side(run, pieces, threads):
    """``run(piece)`` for every piece, in order, ``threads`` at a time on the batch pool (at
    most twice as many results waiting); the first failure in order is raised, as one after
    another would."""
    from collections import deque

    pool, pending, it = _pool(threads), deque(), iter(pieces)
    try:
        for piece in it:
            pending.append(pool.submit(_in_pool, run, piece))
            if len(pending) >= 2 * threads:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        for fut in pending:
            fut.cancel()


def map_batches(fn, x: np.ndarray, target, batch_size, *extra, net, side_by_side=True):
    """Apply ``fn(x_chunk, target_chunk, *extra_chunks)`` over batches of ``batch_size``
    samples (None: :func:`default_batch_size` of ``net``) and stack the results.

    ``extra`` are arrays with the batch on axis 0 (sliced along with ``x``) or None.  A result
    with inf/NaN from a finite chunk (an overflow) raises ValueError.  Small batches run side by
    side on the threads (:data:`SAMPLE_PARALLEL_FLOPS`) unless ``side_by_side`` is False;
    ``fn`` must then be safe to call from several threads.
    """
    step = batch_rows(batch_size, net, x)
    if step >= x.shape[0]:
        return finite_result(fn, x, target, *extra)
    pieces = list(chunks(x, target, step))
    if isinstance(target, Predicted):  # a recorder per batch, read back in order
        pieces = [(sl, Predicted()) for sl, _ in pieces]

    def run(piece):
        sl, t = piece
        return finite_result(fn, x[sl], t, *(e if e is None else e[sl] for e in extra))

    threads = _batch_threads(net, x, len(pieces), step) if side_by_side else 1
    parts = map(run, pieces) if threads == 1 else _side_by_side(run, pieces, threads)
    out = None
    for (sl, t), part in zip(pieces, parts):
        if out is None:
            out = np.empty((x.shape[0],) + part.shape[1:], dtype=part.dtype)
        out[sl] = part
        if isinstance(target, Predicted):
            target.outputs.extend(t.outputs)
    return out


class NonFiniteResult(ValueError):
    """A finite input gave inf/NaN: the result overflowed its dtype (large weights, inputs or
    target seeds)."""


def finite_result(fn, x, *args):
    with np.errstate(over="ignore", invalid="ignore"):  # reported below, with the cause
        out = fn(x, *args)
    if not np.isfinite(out).all() and np.isfinite(x).all():
        raise NonFiniteResult(f"the result overflowed: a finite input gave inf/NaN in {out.dtype} "
                         "(a large target seed, input or weights; float64 has more range)")
    return out


def row_targets(target, n):
    """A function ``rows -> target of those rows`` for sample indices ``rows`` of a batch of n."""
    if is_int(target):
        return lambda rows: target
    t = np.asarray(target)
    if t.ndim == 0 or t.shape[0] != n:
        raise ValueError(f"target has {t.shape[0] if t.ndim else 0} entries for a batch of {n} "
                         "samples")
    return lambda rows: t[rows]


# --- the default batch size --------------------------------------------------------------------
#: What one batch costs beyond the work of its samples, in FLOPs a core could do meanwhile:
#: relprop's own handling of each node of the network (Python, kernel calls and their
#: arguments: some tens of microseconds) ...
NODE_FLOPS = 1 << 20
#: ... and of each byte of weights (read by the forward and the backward pass, packed for the
#: GEMM, the rules' modified copies, Winograd's transforms).
WEIGHT_FLOPS_PER_BYTE = 32
#: The default batch does about this many times these fixed costs in forward FLOPs, so that
#: they are about 1/16 of its time.
WORK_PER_FIXED = 16
#: Networks with fewer forward FLOPs per byte of their activations than this are bound by
#: memory (small layers); their default batch keeps its activations within half of the
#: last-level cache.
MEMORY_BOUND_FLOPS_PER_BYTE = 64
#: Cache sizes where the system does not tell them (bytes, by level).
FALLBACK_CACHES = {1: 32 << 10, 2: 1 << 20, 3: 16 << 20}


def cache_sizes() -> dict:
    """The data caches of the CPU that runs this process: ``{level: bytes}`` of one cache of
    each level (Linux sysfs; :data:`FALLBACK_CACHES` elsewhere)."""
    return dict(_caches())


@functools.cache
def _caches():
    root = "/sys/devices/system/cpu/cpu0/cache"

    def read(entry, name):
        with open(os.path.join(root, entry, name)) as f:
            return f.read().strip()

    found = {}
    try:
        for entry in sorted(e for e in os.listdir(root) if e.startswith("index")):
            if read(entry, "type") in ("Data", "Unified"):
                size = read(entry, "size")
                unit = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(size[-1:], 1)
                found[int(read(entry, "level"))] = int(size.rstrip("KMG")) * unit
    except (OSError, ValueError):
        found = {}
    return tuple(sorted((found or FALLBACK_CACHES).items()))


def default_batch_size(net, input_shape=None, dtype=np.float32) -> int:
    """The samples per batch of the methods' ``batch_size=None``, from the network alone.

    A batch costs relprop some fixed work besides its samples' (each node's handling,
    :data:`NODE_FLOPS`; each weight byte's, :data:`WEIGHT_FLOPS_PER_BYTE`), which one thread
    does.  Batches small enough to run side by side (:data:`SAMPLE_PARALLEL_FLOPS`) each pay
    their own on their thread: the default is the batch whose forward FLOPs are
    :data:`WORK_PER_FIXED` times those costs, if running side by side keeps at least half of
    it.  A larger batch has its kernels split over the threads while its fixed costs run on
    one: it holds that work per thread (:func:`relprop.get_num_threads` times as much).  For
    networks bound by memory (:data:`MEMORY_BOUND_FLOPS_PER_BYTE`) a batch's activations (every
    tensor of the network) fill at most half of the last-level cache, unless that leaves less
    than a quarter of the batch.  Rounded to a multiple of 16 samples from 16 on.  Results never
    depend on it: kernels give a sample the same bits in any batch.

    Parameters
    ----------
    net : Graph
    input_shape : tuple, optional
        One sample's shape (default: the network's).
    dtype : float32 or float64

    Returns
    -------
    int, at least 1
    """
    from .ops import get_num_threads

    shape = net.input_shape if input_shape is None else tuple(int(s) for s in input_shape)
    if shape is None:
        raise ValueError("the network has no input shape: pass input_shape")
    itemsize = np.dtype(dtype).itemsize
    threads = get_num_threads()

    def compute():
        flops = max(1, net.flops(shape))
        activations = itemsize * sum(int(np.prod(s)) for s in net.tensor_shapes(shape).values())
        weights = sum(a.nbytes for layer in net.layers for a in layer.arrays().values())
        fixed = len(net.nodes) * NODE_FLOPS + weights * WEIGHT_FLOPS_PER_BYTE
        batch = WORK_PER_FIXED * fixed / flops
        side = SAMPLE_PARALLEL_FLOPS // flops  # the largest batch that runs side by side
        if 2 * side < batch:
            batch, side = batch * threads, None
        if flops < MEMORY_BOUND_FLOPS_PER_BYTE * activations:
            batch = min(batch, max(max(cache_sizes().values()) / 2 / activations, batch / 4))
        batch = max(1, round(batch / 16) * 16 if batch >= 16 else round(batch))
        return batch if side is None else max(1, min(batch, side))

    return net._memo("_default_batch", (shape, itemsize, threads), compute)


def batch_rows(batch_size, net, x):
    """Samples per batch: ``batch_size`` checked, or :func:`default_batch_size` of ``net`` for
    None."""
    if batch_size is None:
        return default_batch_size(net, x.shape[1:], x.dtype)
    return as_int(batch_size, "batch_size", minimum=1)


def check_batch_size(batch_size, rows):
    """``batch_size`` validated, or ``rows`` (everything at once) for None."""
    return rows if batch_size is None else as_int(batch_size, "batch_size", minimum=1)


class ShapeOnly:
    """What a backward step that reads only the shape of an input keeps of it: ``shape``,
    ``dtype`` and ``ndim``, and no data (a zero-strided array cost 5 us to make, per node and
    call)."""

    __slots__ = ("shape", "dtype")

    def __init__(self, shape, dtype):
        self.shape, self.dtype = shape, dtype

    @property
    def ndim(self):
        return len(self.shape)

    def __repr__(self):
        return f"ShapeOnly({self.shape}, {self.dtype})"


def shape_only(x):
    """A stand-in for ``x`` with its shape and dtype and no data (:class:`ShapeOnly`), for
    backward steps that read only the shape."""
    return ShapeOnly(x.shape, x.dtype)
