"""relprop on Dask: explain and evaluate datasets larger than one machine with ``dask.array``
on any Dask scheduler (threaded, processes, ``dask.distributed``), following the conventions
of ``xgboost.dask`` and ``lightgbm.dask``.

>>> import dask.array as da, relprop, relprop.dask
>>> from distributed import Client, LocalCluster
>>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))     # doctest: +SKIP
>>> net = relprop.models.digits_cnn()
>>> x = relprop.dask.from_npy("digits.npy", chunks=4096)                 # doctest: +SKIP
>>> R = relprop.dask.explain(net, x, "pred", method="lrp.epsilon_plus_flat")
>>> R.to_zarr("relevance.zarr")  # or da.store, R.compute(), ...         # doctest: +SKIP

* :func:`explain` returns a lazy dask array chunked like ``x`` along the batch axis; each
  block is :func:`relprop.explain` of the block, so the result is bitwise the in-process one
  (relprop's results do not depend on the batch a sample is in, nor on thread counts).
* The network travels to each worker once: it is one key of the graph (with a
  ``dask.distributed`` client, a future: the scheduler keeps one copy, each worker fetches it
  once, and later calls with the same network and client use it again while the network
  lives), and tasks hold only the key, so the graph does not grow with the model's size times
  the chunks.
* Small chunks share a task: Dask spends a few milliseconds around every task (scheduler,
  the worker's event loop, the hand-over to its thread), a fifth of a 10 ms chunk.  When the
  chunks of ``x`` hold less than about :data:`TASK_SECONDS` of work (estimated from the
  network's FLOPs), runs of consecutive chunks are explained by one task and its result is
  cut back into ``x``'s chunks where it was computed (``chunks_per_task=``; arrays from
  :func:`from_npy` are read a run at a time); the last runs shrink, so no worker waits for
  another's last long task.
* On a distributed worker each task runs relprop's kernels on the worker's threads, shared
  by the tasks running there (:func:`use_worker_threads`; ``xgboost.dask`` sets ``nthread``
  to the worker's thread count likewise).
* A worker keeps the memory relprop reuses (its pool of outputs and kernel workspaces) from
  task to task, and gives it back once it has run no relprop task for
  :data:`WORKER_IDLE_SECONDS` (:func:`release_workers` does it at once).
* Every task first checks that its worker runs the relprop version and instruction set of the
  process that built the graph, and raises :class:`ClusterMismatch` naming both otherwise
  (other ISAs round differently: results would depend on where a chunk ran).  Checking in the
  task catches workers that a nanny restarted or that joined late, which a check at the start
  would miss.
* Networks pickle (their layers leave caches behind); loading model *files* never unpickles.

Writing an entry point (``relprop.dask.<name>``): check the arguments on the client (a probe
on one sample catches what the data cannot change), ship the network with ``_shipped(net)``
(one key, shipped once per network and client) and wrap every function that runs relprop on a
block in :func:`task`::

    R = da.blockwise(task(_my_block), "ab", x, "ab", net=_shipped(net)[0], ...)
    parts = [dask.delayed(task(_my_block))(xb, net=...) for xb in x.to_delayed().ravel()]

:func:`task` records this process's relprop version and ISA when the graph is built; on a
worker it checks them (:func:`check_environment`), then runs the block on the worker's threads
(:func:`worker_threads`).  Random draws take the block's first sample index (a
``da.arange(n, chunks=x.chunks[0])`` beside ``x`` gives it) as ``sample_offset``.

Needs ``pip install 'relprop[dask]'`` (``dask[array]`` and ``distributed``); ``import relprop``
does not import this module.
"""
from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import string
import uuid
import weakref

import numpy as np

try:
    import dask
    import dask.array as da
    from dask.highlevelgraph import HighLevelGraph
except ImportError as exc:  # pragma: no cover - tested in a subprocess without dask
    raise ImportError("relprop.dask needs Dask: pip install 'relprop[dask]' (dask[array] and "
                      f"distributed; {exc})") from None

from ._common import PRED, is_int, is_pred
from ._random import check_offset, check_seed
from .averaged import integrated_gradients, smoothgrad
from .graph import Graph
from .inputs import NpyFile, default_chunk_size
from .methods import explain as _explain
from .methods import explain_and_output
from .methods import parameters as _parameters
from .ops import get_num_threads, set_num_threads

__all__ = ["ClusterMismatch", "atlas", "check_environment", "environment", "explain", "from_npy",
           "metric", "pixel_flipping", "release_worker_memory", "release_workers", "task",
           "use_worker_threads", "worker_threads"]

#: Parameters of methods that may hold one row per sample (chunked along with ``x``).
PER_SAMPLE_PARAMS = ("root", "baseline")

#: Seconds of work (on one thread) a task aims at when the chunks of ``x`` hold less.  Dask
#: spends 1-3 ms of CPU around each task on a 2-core machine where the scheduler shares the
#: cores (measured, a task per chunk: 17-32% of the throughput at chunks of 10 ms, 0.6-12% at
#: 100 ms and more; bench/results_scale.md).
TASK_SECONDS = 0.1
#: Forward-pass FLOPs per second on one thread that the work estimate assumes: what LRP of the
#: predicted class (a forward and a backward pass) on the bundled digits CNN reaches per FLOP of
#: its forward pass on an AVX-512 core (30e9 measured).  Small layers are the slowest per FLOP,
#: so the estimate errs long for larger networks (whose chunks then stay one task each), and a
#: slower CPU makes the tasks longer, never shorter, than TASK_SECONDS.
FLOP_RATE = 30e9
#: Merging chunks keeps at least this many tasks per worker thread (all threads busy from the
#: start).
MIN_TASKS_PER_THREAD = 4
#: ... and the last tasks shrink (guided self-scheduling): a task takes at most this fraction,
#: per worker thread, of the samples not yet in a task, down to one chunk, so that the threads
#: finish within about a chunk of each other instead of one waiting for another's last task.
TAIL_SHARE = 0.5


# --------------------------------------------------------------------------------------------
# Workers
# --------------------------------------------------------------------------------------------
def _worker():
    try:
        from distributed import get_worker

        return get_worker()
    except (ImportError, ValueError):
        return None


def _share_threads(worker, leaving=0):
    state = worker.state
    total = int(state.nthreads)
    # the tasks running there and those ready to take a thread as soon as one is free: a task
    # that ends leaves its threads to the others only when no task waits to start
    busy = int(state.executing_count) - leaving + len(state.ready)
    n = max(1, total // min(total, max(1, busy)))
    if get_num_threads() != n:
        set_num_threads(n)
    return n


def use_worker_threads():
    """Inside a ``dask.distributed`` worker, run relprop's kernels on the worker's threads
    (``Worker.state.nthreads``), shared by the tasks running on it: a worker with T threads
    running k tasks (counting those ready to start there) gives each ``T // k`` (at least 1;
    all T to a task running alone), so its tasks never ask for more threads than it has.
    Returns that count; elsewhere does nothing and returns None.  (The nanny starts workers
    with ``OMP_NUM_THREADS=1``, which would pin a lone task to one thread; all the machine's
    cores per task would oversubscribe it.)  Thread counts never change results."""
    worker = _worker()
    return None if worker is None else _share_threads(worker)


#: glibc's mmap threshold in Dask worker processes where it is frozen at 128 KiB (None: leave
#: it).  The nanny starts workers with ``MALLOC_TRIM_THRESHOLD_`` set, which turns off glibc's
#: adaptive thresholds: every temporary array of 128 KiB or more is then mapped, faulted in page
#: by page and unmapped again, which cost the digits CNN a fifth more CPU in a worker than
#: in-process (200,000 page faults per 100,000 samples instead of 2,000), and the heap's top is
#: given back to the system whenever 64 KiB of it are free, to be faulted in again by the next
#: chunk (54,000 page faults for 50,000 digits in chunks of 256; 4,600 without;
#: ``python bench/worker_faults.py`` counts them).  relprop's
#: tasks set both to what glibc's adaptive thresholds can reach (mmap 32 MiB, trim twice that):
#: a worker keeps at most that much free memory at the top of its heap.
WORKER_MMAP_THRESHOLD = 32 << 20
_MALLOC_TUNED = []


def _glibc():
    """glibc (ctypes), or None elsewhere."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _tune_malloc():
    """Set glibc's mmap and trim thresholds once per worker process (see
    WORKER_MMAP_THRESHOLD)."""
    if _MALLOC_TUNED:
        return
    _MALLOC_TUNED.append(True)
    if (WORKER_MMAP_THRESHOLD is None or "MALLOC_TRIM_THRESHOLD_" not in os.environ
            or "MALLOC_MMAP_THRESHOLD_" in os.environ):
        return  # glibc's threshold is adaptive, or someone chose it
    libc = _glibc()
    if libc is not None:
        libc.mallopt(-3, int(WORKER_MMAP_THRESHOLD))  # M_MMAP_THRESHOLD
        libc.mallopt(-1, int(2 * WORKER_MMAP_THRESHOLD))  # M_TRIM_THRESHOLD


#: A worker gives back the memory relprop keeps for reuse (:func:`release_worker_memory`)
#: once no relprop task has run on it for this many seconds (None: never).  Between the tasks
#: of a job it keeps that memory, already mapped: a task that finds its outputs and workspaces
#: in the pool pays no page faults for them.  When the job ends, or the worker turns to other
#: work, the memory goes back after this delay; a release that comes too early only costs the
#: next task the page faults of what it takes again.
WORKER_IDLE_SECONDS = 5.0


def release_worker_memory():
    """Give back what relprop keeps for reuse in this process: :func:`relprop.release_memory`
    (the pool's mapped blocks, the layers' packed weights) and, with glibc, the free memory at
    the top of the heap that :data:`WORKER_MMAP_THRESHOLD` lets a worker keep
    (``malloc_trim``).  Workers call it when idle (:data:`WORKER_IDLE_SECONDS`);
    :func:`release_workers` calls it on every worker of a client."""
    from .layers import release_memory

    release_memory()
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def release_workers(client=None):
    """Run :func:`release_worker_memory` on every worker of ``client`` (default: the current
    ``dask.distributed`` client) now, e.g. when a job's result is in: workers also do it by
    themselves after :data:`WORKER_IDLE_SECONDS` without a relprop task."""
    if client is None:
        from distributed import default_client

        client = default_client()
    client.run(release_worker_memory)


class _IdleRelease:
    """Calls ``release()`` once ``delay`` seconds pass with no task running (tasks report with
    :meth:`started` and :meth:`ended`); ``timer(delay, fn, args)`` makes a started, cancellable
    timer (``threading.Timer``; tests pass their own)."""

    def __init__(self, release, timer=None):
        import threading

        self._release, self._timer_type = release, timer
        self._lock = threading.Lock()
        self._running = 0
        self._epoch = 0  # counts starts and ends: a timer from an older epoch does nothing
        self._timer = None

    def _cancel(self):
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def started(self):
        with self._lock:
            self._running += 1
            self._epoch += 1
            self._cancel()

    def ended(self):
        with self._lock:
            self._running -= 1
            self._epoch += 1
            if self._running == 0 and WORKER_IDLE_SECONDS is not None:
                self._timer = self._start_timer(WORKER_IDLE_SECONDS, self._fire, (self._epoch,))

    def _start_timer(self, delay, fn, args):
        if self._timer_type is not None:
            return self._timer_type(delay, fn, args)
        import threading

        timer = threading.Timer(delay, fn, args)
        timer.daemon = True
        timer.start()
        return timer

    def _fire(self, epoch):
        with self._lock:
            if self._running or epoch != self._epoch:
                return  # a task ran since
            self._timer = None
        self._release()


_IDLE = _IdleRelease(lambda: release_worker_memory())


@contextlib.contextmanager
def worker_threads():
    """:func:`use_worker_threads` for the duration of a task; when the task ends, the tasks
    still running on the worker get its threads back.  Also sets the worker's malloc
    threshold once (:data:`WORKER_MMAP_THRESHOLD`), and gives back relprop's memory once the
    worker has run no relprop task for :data:`WORKER_IDLE_SECONDS`."""
    worker = _worker()
    if worker is not None:
        _tune_malloc()
        _share_threads(worker)
        _IDLE.started()
    try:
        yield
    finally:
        if worker is not None:
            _share_threads(worker, leaving=1)
            _IDLE.ended()


class ClusterMismatch(RuntimeError):
    """A Dask worker runs another relprop version or instruction set than the process that
    built the graph (its results could differ in the last bits)."""


def environment():
    """``(relprop version, instruction set)`` of this process: what a task's worker must
    match."""
    from . import __version__, ops

    return __version__, ops.isa()


def check_environment(expected):
    """Raise :class:`ClusterMismatch` unless this process runs the relprop version and
    instruction set ``expected`` (from :func:`environment` where the graph was built)."""
    here = environment()
    if tuple(here) != tuple(expected):
        worker = _worker()
        where = f"Dask worker {worker.address}" if worker is not None else "this process"
        raise ClusterMismatch(
            f"{where} runs relprop {here[0]} on {here[1]}, the client relprop {expected[0]} on "
            f"{expected[1]}: results would depend on where a chunk ran (install the same relprop "
            "everywhere; set RELPROP_ISA to one instruction set on every machine)")


class task:
    """``fn`` as a relprop Dask task: each call checks the worker's relprop version and
    instruction set against those of the process that made this object
    (:func:`check_environment`), then runs ``fn`` on the worker's threads
    (:func:`worker_threads`).  Make it where the graph is built (see the module docstring)."""

    def __init__(self, fn):
        self.fn, self.expected = fn, environment()

    def __call__(self, *args, **kwargs):
        check_environment(self.expected)
        with worker_threads():
            return self.fn(*args, **kwargs)

    def __repr__(self):
        return f"task({getattr(self.fn, '__name__', self.fn)})"

    def __dask_tokenize__(self):
        return ("relprop.dask.task", getattr(self.fn, "__module__", None),
                getattr(self.fn, "__qualname__", repr(self.fn)), self.expected)


def _active_client():
    """The ``dask.distributed`` client that ``compute()`` would use now (or, for an
    asynchronous client, ``client.compute``), or None."""
    try:
        from distributed import default_client

        client = default_client()
    except (ImportError, ValueError):
        return None
    if getattr(client, "asynchronous", False):
        return client  # dask.base.get_scheduler() refuses it; client.compute(R) works
    sched = dask.base.get_scheduler()
    return client if getattr(sched, "__self__", None) is client else None


_TOKENS = weakref.WeakKeyDictionary()


def _identity(obj):
    """A task that returns its argument (the network, as one task's result)."""
    return obj


def _net_token(net):
    """A token of the network's structure and parameters (cached per network object)."""
    tok = _TOKENS.get(net)
    if tok is None:
        parts = [type(net).__name__, net.input_shape, net.input_name, net.output]
        for node in net.nodes:
            layer = node.layer
            parts.append((node.name, node.inputs, type(layer).__name__, repr(layer.config()),
                          [(k, a.dtype.str, a.shape, a) for k, a in layer.arrays().items()]))
        tok = dask.base.tokenize(*parts)
        _TOKENS[net] = tok
    return tok


#: The network futures shipped to each client: ``{net: future}`` (held while the network lives)
_SHIPPED = weakref.WeakKeyDictionary()


def _shipped(net):
    """``(argument, key)``: ``net`` as one key of the graph.

    With a distributed client active, a future of a task that returns the network: the
    scheduler holds one copy (the task's argument), a worker computes it and the others fetch
    it when they first need it, and if every holder dies the scheduler reruns it (a scattered
    future would be lost).  The future is kept for the network's lifetime and used again by
    later calls with the same client, so a network is shipped once however many calls use it
    (a new call takes a new key only when the old future is gone, e.g. after a restart:
    submitting a key again races with the release of the old one).  Without a client, a
    delayed object of one key.
    """
    key = f"relprop-net-{_net_token(net)}"
    client = _active_client()
    if client is None:
        return dask.delayed(net, name=key, pure=True), key
    held = _SHIPPED.get(net)
    if held is not None and held.client is client and held.status in ("pending", "finished"):
        return held, held.key
    # the network is sent once, on purpose: no large-graph warning for it
    with dask.config.set({"distributed.admin.large-graph-warning-threshold": "64GiB"}):
        fut = client.submit(_identity, net, key=f"{key}-{uuid.uuid4().hex}")
    _SHIPPED[net] = fut
    return fut, fut.key


# --------------------------------------------------------------------------------------------
# Arguments
# --------------------------------------------------------------------------------------------
def _check_net(net):
    if not isinstance(net, Graph):
        raise TypeError(f"net must be a relprop network (Sequential or Graph), got "
                        f"{type(net).__name__}")
    return net


def _check_x(x, net, name="x"):
    """``x`` as a dask array with whole samples in each block; its float dtype."""
    if not isinstance(x, da.Array):
        raise TypeError(f"{name} must be a dask array, got {type(x).__name__} (wrap arrays "
                        f"with dask.array.from_array({name}, chunks=...), or read a .npy with "
                        "relprop.dask.from_npy)")
    if x.ndim < 2:
        raise ValueError(f"{name} must be a batch (n, *sample_shape), got shape {x.shape}")
    probe = np.zeros((1,) + tuple(int(s) for s in x.shape[1:]), dtype=x.dtype)
    dtype = net.check_input(probe, check_finite=False, name=name).dtype  # dtype, shape
    x = x.rechunk({i: -1 for i in range(1, x.ndim)})
    return x, dtype


def _known(x):
    return not np.isnan(x.shape[0])


def _batch_aligned(a, x, name, trailing):
    """``a`` (NumPy or dask, one row per sample) chunked like ``x`` on axis 0 and whole on the
    others; ``trailing`` is the index string of its other axes."""
    if not _known(x):
        raise ValueError(f"x has unknown chunk sizes; call x.compute_chunk_sizes() to pass a "
                         f"per-sample {name}")
    n = int(x.shape[0])
    if a.shape[0] != n:
        raise ValueError(f"{name} has {a.shape[0]} rows for {n} samples")
    chunks = (x.chunks[0],) + tuple(-1 for _ in trailing)
    if isinstance(a, da.Array):
        return a.rechunk(chunks)
    return da.from_array(a, chunks=chunks)


def _target(target, x, net):
    """``(kind, arg)``: "pred" (arg "pred"), "int" (arg the class), "classes" or "seed" (arg a
    dask array aligned with ``x``)."""
    if is_pred(target):
        return "pred", PRED
    if is_int(target):
        return "int", int(target)
    t = target if isinstance(target, da.Array) else np.asarray(target)
    if t.dtype.kind in "iu" and t.ndim == 1:
        n_out = None if net.output_shape is None else int(np.prod(net.output_shape))
        if isinstance(t, np.ndarray) and t.size and n_out is not None and (
                t.min() < 0 or t.max() >= n_out):
            bad = int(t.min()) if t.min() < 0 else int(t.max())
            raise ValueError(f"target {bad} is out of range for {n_out} outputs "
                             f"(valid: 0..{n_out - 1})")
        return "classes", _batch_aligned(t, x, "target", "")
    if t.dtype.kind == "f" and t.ndim >= 2:
        if net.output_shape is not None and tuple(t.shape[1:]) != tuple(net.output_shape):
            raise ValueError(f"target seed has shape {t.shape} but the output has shape "
                             f"(n, {', '.join(map(str, net.output_shape))})")
        return "seed", _batch_aligned(t, x, "target", _SEED_AXES[:t.ndim - 1])
    raise TypeError(f"target must be an int, 'pred', an array of ints (one per sample) or a "
                    f"float seed array shaped like the output (n, ...); got "
                    f"{type(target).__name__} with dtype {t.dtype} and shape {t.shape}")


#: blockwise's indices of a seed's axes after the batch (whole; none of x's: those are a, b, ...)
_SEED_AXES = "zyxwvuts"


def _probe_target(kind, arg, dtype):
    """A target for a one-sample probe (per-sample targets are checked by the tasks)."""
    if kind in ("int", "pred"):
        return arg
    if kind == "seed":
        return np.zeros((1,) + tuple(arg.shape[1:]), dtype=dtype)
    return 0


def _blocks(x, kind, targ, extras):
    """blockwise's ``(array, index)`` pairs: x, then the target and per-sample parameters."""
    ind = string.ascii_lowercase[:x.ndim]
    pairs = [x, ind]
    if kind == "classes":
        pairs += [targ, ind[0]]
    elif kind == "seed":
        pairs += [targ, ind[0] + _SEED_AXES[:targ.ndim - 1]]
    for a in extras:
        pairs += [a, ind]
    return ind, pairs


# --------------------------------------------------------------------------------------------
# Tasks: runs of small chunks
# --------------------------------------------------------------------------------------------
#: The .npy file behind each :func:`from_npy` array (by the array's name), so that tasks can
#: read a run of its chunks at a time.
_NPY_FILES = weakref.WeakValueDictionary()


def _default(fn, name):
    return inspect.signature(fn).parameters[name].default


def _passes(method, params):
    """Work per sample of ``method`` in units of one explanation (SmoothGrad's noisy copies,
    the points on Integrated Gradients' path); a bad count is left to the method to refuse."""
    if method == "smoothgrad":
        count, extra = params.get("n", _default(smoothgrad, "n")), 0
    elif method == "integrated_gradients":
        count, extra = params.get("steps", _default(integrated_gradients, "steps")), 1
    else:
        return 1
    return max(1, int(count)) + extra if is_int(count) else 1


def _threads_total():
    """The threads that will run the tasks: the workers' of the active distributed client
    (when it can be asked without waiting: not an asynchronous client, some workers), else this
    machine's."""
    client = _active_client()
    if client is not None and not getattr(client, "asynchronous", False):
        threads = sum(client.nthreads().values())
        if threads:
            return threads
    return os.cpu_count() or 1


def _per_task(x, chunks_per_task, seconds_per_sample):
    """``(xt, runs)``: ``x`` with a batch-axis chunk per task, and the runs of ``x``'s chunks
    the tasks cover (None, and ``xt`` is ``x``, for a task per chunk); checks
    ``chunks_per_task``."""
    if chunks_per_task is not None:
        from ._validate import as_int

        chunks_per_task = as_int(chunks_per_task, "chunks_per_task", minimum=1)
        if chunks_per_task > 1 and not _known(x):
            raise ValueError("x has unknown chunk sizes; call x.compute_chunk_sizes() to merge "
                             "its chunks into tasks (chunks_per_task)")
    runs = _task_runs(x, chunks_per_task, seconds_per_sample)
    return (x, None) if runs is None else (_in_runs(x, runs), runs)


def _task_runs(x, chunks_per_task, seconds_per_sample):
    """The tasks' runs of consecutive batch-axis chunk sizes of ``x`` (a tuple of tuples), or
    None for one task per chunk.

    ``chunks_per_task`` None: runs of at most :data:`TASK_SECONDS` of estimated work (at most
    the default chunk size of :func:`from_npy`, at least :data:`MIN_TASKS_PER_THREAD` tasks per
    thread, shrinking at the end: :data:`TAIL_SHARE`), only for :func:`from_npy` arrays, whose
    runs are read whole (any other ``x`` would be rechunked: a task per chunk and a transfer
    between workers again)."""
    sizes = x.chunks[0]
    if chunks_per_task is None:
        if x.name not in _NPY_FILES or len(sizes) < 2:
            return None
        threads = _threads_total()
        left = int(x.shape[0])  # samples not yet in a closed run
        limit = min(TASK_SECONDS / max(seconds_per_sample, 1e-12),
                    default_chunk_size(x.shape[1:], x.dtype.itemsize),
                    left / (MIN_TASKS_PER_THREAD * threads))
        runs, run, held = [], [], 0  # held: the samples of the open run
        for size in sizes:
            if run and held + size > min(limit, TAIL_SHARE * left / threads):
                runs.append(tuple(run))
                left -= held
                run, held = [], 0
            run.append(size)
            held += size
        runs.append(tuple(run))
    else:
        runs = [sizes[i:i + chunks_per_task] for i in range(0, len(sizes), chunks_per_task)]
    return None if len(runs) == len(sizes) else tuple(runs)


def _in_runs(x, runs):
    """``x`` with a batch-axis chunk per run: a :func:`from_npy` array is read a run at a time
    (the read fuses into the task), any other is rechunked."""
    f = _NPY_FILES.get(x.name)
    sizes = tuple(sum(run) for run in runs)
    return _npy_array(f, sizes) if f is not None else x.rechunk({0: sizes})


def _rows(block, start, stop):
    return block[start:stop].copy()


def _cut(a, runs):
    """``a``, with a batch-axis block per run, as blocks of the runs' chunk sizes: a task per
    block copies its rows out of its run's result, on the worker that holds it."""
    sizes = tuple(size for run in runs for size in run)
    name = f"{a.name}-cut-{dask.base.tokenize(runs)}"
    rest = (0,) * (a.ndim - 1)
    dsk, i = {}, 0
    for r, run in enumerate(runs):
        start = 0
        for size in run:
            dsk[(name, i) + rest] = (_rows, (a.name, r) + rest, start, start + size)
            start, i = start + size, i + 1
    graph = HighLevelGraph.from_collections(name, dsk, dependencies=[a])
    return da.Array(graph, name, (sizes,) + a.chunks[1:], meta=a._meta)


# --------------------------------------------------------------------------------------------
# explain
# --------------------------------------------------------------------------------------------
def _explain_block(x, *rest, net, method, kind, target, names, params, offset, with_output):
    rest = list(rest)
    if kind in ("classes", "seed"):
        target = rest.pop(0)
    if offset is not None:  # the block's first sample index (in the whole x), from its arange
        idx = rest.pop()
        params = {**params, "sample_offset": offset + (int(idx[0]) if len(idx) else 0)}
    return (explain_and_output if with_output else _explain)(
        net, x, target, method, **params, **dict(zip(names, rest)))


def _parts(pairs, shapes):
    """The arrays of the blocks of ``pairs``, a dask array whose blocks are tuples: part ``i``
    has its batch-axis chunks and the trailing shape ``shapes[i]`` (a getitem task per block
    and part)."""
    import operator

    out = []
    for i, (name, shape, meta) in enumerate(shapes):
        rest = (0,) * len(shape)
        dsk = {(name, b) + rest: (operator.getitem, (pairs.name, b) + (0,) * (pairs.ndim - 1), i)
               for b in range(pairs.numblocks[0])}
        graph = HighLevelGraph.from_collections(name, dsk, dependencies=[pairs])
        out.append(da.Array(graph, name, (pairs.chunks[0],) + tuple((s,) for s in shape),
                            meta=meta))
    return out


def explain(net, x, target, method="lrp.epsilon_plus_flat", *, chunks_per_task=None,
            return_output=False, **params):
    """Explain ``net`` on the dask array ``x``, block by block: a lazy dask array.

    Parameters
    ----------
    net : Sequential or Graph
    x : dask.array.Array (n, *input_shape)
        Its chunks along the batch axis are the tasks; other axes are rechunked whole.
    target : int, array of ints (n,), float array (n, n_out), or "pred"
        As for :func:`relprop.explain` (NumPy or dask arrays, rechunked like ``x``); "pred"
        explains each sample's predicted class.
    method : str
        A :func:`relprop.explain` name: "gradient", "gradient_x_input", "lrp.epsilon_plus_flat",
        "lrp.epsilon_gamma_box", ...
    chunks_per_task : int, optional
        Consecutive chunks of ``x`` explained by one task (its result is cut back into the
        chunks of ``x`` on the worker that computed it).  Default: for :func:`from_npy` arrays
        whose chunks hold less than :data:`TASK_SECONDS` of work (estimated from the
        network's FLOPs), as many as make about that much (at most the default chunk size of
        :func:`from_npy`, and at least :data:`MIN_TASKS_PER_THREAD` tasks per worker thread;
        the last tasks shrink down to a chunk, :data:`TAIL_SHARE`, so the workers finish
        together); otherwise 1.  Another ``x`` with more than 1 is rechunked first.  Never
        changes the result.
    return_output : bool
        Also return the network's output at ``x``, computed by the same tasks (for "pred",
        that of the explanation's own forward pass: :func:`relprop.methods.explain_and_output`).
    **params
        The method's keyword arguments (``batch_size`` bounds the samples per kernel call
        inside a task).  ``root``/``baseline`` arrays with a row per sample are chunked along
        with ``x``.  A method that draws random numbers (SmoothGrad) draws those of each sample
        from (``seed``, the sample's index in ``x`` plus ``sample_offset``), so the result is
        bitwise the in-process one for any chunks; its ``seed`` must be an int (None draws one
        for the whole call).

    Returns
    -------
    dask.array.Array
        Shaped like ``x``, float dtype of ``x``, chunked like ``x`` along the batch axis; with
        ``return_output``, ``(R, out)``, ``out`` of shape ``(n, *output_shape)`` chunked alike.

    Raises
    ------
    TypeError
        ``net``, ``x``, ``target`` or a parameter of the wrong type; a
        ``numpy.random.Generator`` as ``seed`` (its draws would depend on the chunks).
    ValueError
        Shapes that do not fit, an unknown method, a target out of range; ``return_info``; a
        random method on ``x`` of unknown chunk sizes.  Checked now, on one sample; errors in
        the data (NaN) are raised by ``compute()``, as in-process.
    """
    net = _check_net(net)
    x, dtype = _check_x(x, net)
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    if params.get("return_info"):
        raise ValueError("return_info is not supported by relprop.dask.explain (it returns "
                         "relevance only)")
    taken = _parameters(method) or {}
    if "seed" in taken:  # one int for all blocks: sample i draws from (seed, i)
        params["seed"] = check_seed(params.get("seed"), chunked="relprop.dask.explain")
    offset = None
    if "sample_offset" in taken:  # each block passes the index of its first sample
        offset = check_offset(params.pop("sample_offset", 0))
        if not _known(x):
            raise ValueError(f"x has unknown chunk sizes; call x.compute_chunk_sizes() first "
                             f"({method}'s random draws depend on each sample's index)")
    xt, runs = _per_task(x, chunks_per_task,
                         net.flops(x.shape[1:]) * _passes(method, params) / FLOP_RATE)
    kind, targ = _target(target, xt, net)
    names, extras, fixed = [], [], {}
    for key, v in params.items():
        if key in PER_SAMPLE_PARAMS and (isinstance(v, da.Array) or (
                isinstance(v, np.ndarray) and v.ndim == x.ndim and v.shape[0] != 1)):
            if isinstance(v, np.ndarray) and v.shape[0] != x.shape[0]:  # (not the probe's x)
                raise ValueError(f"{key} has shape {v.shape}, not broadcastable to x {x.shape}")
            if tuple(v.shape) != tuple(x.shape):
                raise ValueError(f"{key} has shape {v.shape}; per-sample {key} must be shaped "
                                 f"like x {x.shape}")
            names.append(key)
            extras.append(_batch_aligned(v, xt, key, "bcdefgh"[:x.ndim - 1]).rechunk(xt.chunks))
        else:
            fixed[key] = v
    # check method, parameters and target now, on one zero sample
    probe = np.zeros((1,) + tuple(x.shape[1:]), dtype=dtype)
    first = {k: np.zeros_like(probe) for k in names}
    _, f = explain_and_output(net, probe, _probe_target(kind, targ, dtype), method, **fixed,
                              **first)

    ind, pairs = _blocks(xt, kind, targ, extras)
    if offset is not None:
        pairs += [da.arange(xt.shape[0], chunks=(xt.chunks[0],)), ind[0]]
    net_arg, net_key = _shipped(net)
    token = dask.base.tokenize(net_key, xt.name, kind, targ if kind == "int" else
                               getattr(targ, "name", None), method, fixed,
                               [a.name for a in extras], names, offset, return_output)
    meta = np.empty((0,) * x.ndim, dtype=dtype)
    out = da.blockwise(
        task(_explain_block), ind, *pairs, name=f"relprop-explain-{token}", dtype=dtype,
        concatenate=True, meta=meta, net=net_arg, method=method, kind=kind,
        target=targ if kind in ("int", "pred") else None, names=names, params=fixed,
        offset=offset, with_output=return_output)
    outs = [out]
    if return_output:
        outs = _parts(out, [(f"relprop-explain-relevance-{token}", x.shape[1:], meta),
                            (f"relprop-explain-output-{token}", f.shape[1:], f[:0])])
    if runs is not None:
        outs = [_cut(a, runs) for a in outs]
    return tuple(outs) if return_output else outs[0]


# --------------------------------------------------------------------------------------------
# metrics
# --------------------------------------------------------------------------------------------
#: Metric parameters that may hold one row per sample (chunked along with ``x``).
PER_SAMPLE_METRIC_PARAMS = ("fill", "noise", "subsets", "classes", "segments")


def _layout(result):
    """``[(field, trailing shape, dtype)]`` of a result's per-sample fields of fixed width
    (IROF's curves, as long as each sample's segment count, are left out)."""
    out = []
    for f in type(result).per_sample_fields():
        if f in getattr(type(result), "variable_width", ()):
            continue
        v = np.asarray(getattr(result, f))
        out.append((f, v.shape[1:], v.dtype))
    return out


def _pack(result, layout):
    """A result's per-sample fields side by side in one float64 array (n, width)."""
    n = len(result.scores)
    return np.concatenate([np.asarray(getattr(result, f), dtype=np.float64).reshape(n, -1)
                           for f, _, _ in layout], axis=1)


def _metric_block(x, R, idx, *rest, net, metric_name, kind, target, masks, names, params,
                  offset, layout):
    from .metrics import METRICS

    rest = list(rest)
    if kind in ("classes", "seed"):
        target = rest.pop(0)
    args = (rest.pop(0),) if masks else ()
    kw = {**params, **dict(zip(names, rest))}
    if offset is not None:  # the block's first sample index in the whole x
        kw["sample_offset"] = offset + (int(idx[0]) if len(idx) else 0)
    return _pack(METRICS[metric_name](net, x, R, target, *args, **kw), layout)


def metric(name, net, x, R, target, masks=None, *, chunks_per_task=None, **params):
    """The metric ``name`` of :mod:`relprop.metrics` over dask arrays, block by block: bitwise
    the in-process result (random draws follow each sample's index in ``x``).

    Parameters
    ----------
    name : str
        A :data:`relprop.metrics.METRICS` name ("pixel_flipping", "faithfulness_correlation",
        "max_sensitivity", ...).
    net : Sequential or Graph
    x, R : dask.array.Array (n, *input_shape)
        The inputs and their explanation (e.g. from :func:`explain`); ``R`` (shaped like
        ``x``, or ``(n, 1, h, w)``) is rechunked like ``x``.
    target : int, array of ints (n,), float array (n, n_out), or "pred"
        As for :func:`explain` ("pred": the classes predicted at ``x``, block by block).
    masks : dask or NumPy array, optional
        The localisation metrics' masks (rechunked like ``x``).
    chunks_per_task : int, optional
        As for :func:`explain` (the work of a sample is estimated from the metric's run on one
        sample, made now to check the arguments).
    **params
        The metric's parameters.  ``fill``, ``noise``, ``subsets``, ``classes`` and
        ``segments`` may hold a row per sample (NumPy or dask; chunked along with ``x``);
        ``seed`` must be an int (None draws one for the whole call); ``sample_offset`` is the
        index of ``x[0]`` in a larger input.

    Returns
    -------
    relprop.metrics.Result
        The metric's result class, its per-sample fields lazy dask arrays chunked like ``x``
        (IROF's ``curves``, whose width is each sample's segment count, is None); its
        batch-level statistics (``SensitivityN.correlations``, ``ROAD.accuracy``,
        ``summary``) are computed from them.

    Raises
    ------
    ValueError, TypeError
        As the in-process metric (checked now, on one sample), and for a ``seed`` that is a
        ``numpy.random.Generator`` or ``x`` of unknown chunk sizes.
    """
    import time

    from .metrics import METRICS
    from .metrics.comparison import NEED_MASKS, metric_parameters

    if name not in METRICS:
        raise ValueError(f"unknown metric {name!r}; the metrics: {', '.join(METRICS)}")
    net = _check_net(net)
    x, dtype = _check_x(x, net)
    R, _ = _check_x(R, net, name="R")
    pixel = len(x.shape) == 4 and tuple(R.shape) == (x.shape[0], 1) + tuple(x.shape[2:])
    if tuple(R.shape) != tuple(x.shape) and not pixel:
        raise ValueError(f"R has shape {R.shape} but x has shape {x.shape}")
    if not _known(x):
        raise ValueError("x has unknown chunk sizes; call x.compute_chunk_sizes() first")
    if (name in NEED_MASKS) != (masks is not None):
        raise ValueError(f"{name} {'needs' if name in NEED_MASKS else 'takes no'} masks")
    taken = metric_parameters(name)
    if "seed" in taken:  # one int for all blocks: sample i draws from (seed, i)
        params["seed"] = check_seed(params.get("seed", 0), chunked=f"relprop.dask.{name}")
    offset = check_offset(params.pop("sample_offset", 0)) if "sample_offset" in taken else None
    n = int(x.shape[0])
    names, extras, fixed = [], [], {}
    for key, v in params.items():
        if key in PER_SAMPLE_METRIC_PARAMS and (isinstance(v, da.Array) or (
                isinstance(v, np.ndarray) and v.ndim >= 1 and v.shape[0] == n
                and not (key == "fill" and v.ndim != len(x.shape)))):
            names.append(key)
            extras.append(v)
        else:
            fixed[key] = v
    # check the arguments now, on one sample (zeros, and the first row of per-sample ones)
    probe = np.zeros((1,) + tuple(x.shape[1:]), dtype=dtype)
    kind, targ = _target(target, x, net)
    t0 = targ[:1] if kind in ("classes", "seed") else targ
    first = [np.asarray(a[:1]) for a in ([targ] if kind in ("classes", "seed") else [])]
    rows = {k: np.asarray(v[:1]) for k, v in zip(names, extras)}
    args = (np.zeros((1,) + tuple(np.shape(masks)[1:])),) if masks is not None else ()
    start = time.perf_counter()
    res = METRICS[name](net, probe, np.zeros((1,) + tuple(R.shape[1:]), dtype=dtype),
                        first[0] if first else t0, *args, **fixed, **rows)
    seconds = time.perf_counter() - start
    layout = _layout(res)
    width = sum(int(np.prod(shape)) for _, shape, _ in layout)
    xt, runs = _per_task(x, chunks_per_task, seconds)
    kind, targ = _target(target, xt, net)
    trailing = "bcdefgh"
    aligned = [_batch_aligned(v, xt, k, trailing[:np.ndim(v) - 1]) for k, v in
               zip(names, extras)]
    if masks is not None:
        aligned.insert(0, _batch_aligned(masks, xt, "masks", trailing[:np.ndim(masks) - 1]))
    ind, pairs = _blocks(xt, kind, targ, [])
    idx = da.arange(n, chunks=(xt.chunks[0],))
    pairs[2:2] = [R.rechunk({0: xt.chunks[0]}), ind[:len(R.shape)], idx, ind[0]]
    for a in aligned:
        pairs += [a, ind[0] + trailing[:a.ndim - 1]]
    net_arg, net_key = _shipped(net)
    token = dask.base.tokenize(net_key, name, xt.name, R.name, kind, targ if kind == "int"
                               else getattr(targ, "name", None), fixed,
                               [a.name for a in aligned], names, offset)
    packed = da.blockwise(
        task(_metric_block), ind[0] + "q", *pairs, new_axes={"q": width},
        name=f"relprop-metric-{name}-{token}", dtype=np.float64, concatenate=True,
        meta=np.empty((0, 0), dtype=np.float64), net=net_arg, metric_name=name, kind=kind,
        target=targ if kind in ("int", "pred") else None, masks=masks is not None,
        names=names, params=fixed, offset=offset, layout=layout)
    if runs is not None:
        packed = _cut(packed, runs)
    values, col = {}, 0
    for f, shape, ftype in layout:
        w = int(np.prod(shape))
        values[f] = packed[:, col:col + w].reshape((n,) + tuple(shape)).astype(ftype)
        col += w
    cls = type(res)
    kwargs = {f.name: values.get(f.name, getattr(res, f.name) if f.metadata.get("batch")
                                 else None) for f in dataclasses.fields(cls)}
    return cls(**kwargs)


def pixel_flipping(net, x, R, target, steps=None, patch=1, fill=0.0,
                   order="most_relevant_first", *, chunks_per_task=None, **params):
    """:func:`relprop.metrics.pixel_flipping` over dask arrays: ``metric("pixel_flipping",
    ...)`` (see :func:`metric`)."""
    return metric("pixel_flipping", net, x, R, target, steps=steps, patch=patch, fill=fill,
                  order=order, chunks_per_task=chunks_per_task, **params)


# --------------------------------------------------------------------------------------------
# inputs
# --------------------------------------------------------------------------------------------
# --------------------------------------------------------------------------------------------
# concept atlas
# --------------------------------------------------------------------------------------------
def _atlas_block(x, labels, start, *, net, spec, batch_size):
    """The partial atlas of one block (``spec``: ``AtlasBuilder.spec``)."""
    from .concepts.maximization import AtlasBuilder

    *args, params = spec
    builder = AtlasBuilder(net, x.shape[1:], *args, **params)
    return builder.run(x, start, labels, batch_size)


def _merge_parts(*parts):
    out = parts[0]
    for p in parts[1:]:
        out = out.merge(p)
    return out


def atlas(net, x, layers, composite="epsilon_plus_flat", *, target="label", labels=None, k=8,
          abs_norm=True, batch_size=256, split_every=8, **rule_params):
    """:func:`relprop.concepts.atlas` of the dask array ``x``: a task per block, the blocks'
    top-k tables and class sums merged in a tree reduction (``split_every`` at a time).  The
    merges are exact and associative, so the atlas is bitwise the in-process one, for any
    chunking and scheduler.

    Parameters
    ----------
    net : Sequential or Graph
    x : dask.array.Array (n, *input_shape)
    layers, composite, target, k, abs_norm, rule_params
        As for :func:`relprop.concepts.atlas`.
    labels : array (n,) of ints (NumPy or dask), optional
        Required for ``target="label"``; chunked along with ``x``.
    batch_size : int
        Samples per pass inside a task.
    split_every : int
        Partial results merged by one task of the reduction.

    Returns
    -------
    relprop.concepts.Atlas
        Computed with the active scheduler.
    """
    from .concepts.maximization import AtlasBuilder

    net = _check_net(net)
    x, _ = _check_x(x, net)
    if not _known(x):
        raise ValueError("x has an unknown number of samples (compute its chunk sizes first)")
    builder = AtlasBuilder(net, x.shape[1:], layers, composite, target, k, abs_norm,
                           **rule_params)  # checks everything but the data now
    n = int(x.shape[0])
    if isinstance(labels, da.Array):  # values are checked where the blocks are computed
        if labels.shape != (n,) or labels.dtype.kind not in "iu":
            raise ValueError(f"labels must be ints of shape ({n},), got dtype {labels.dtype} "
                             f"and shape {labels.shape}")
        labels = labels.rechunk((x.chunks[0],))
    elif labels is not None or builder.target == "label":
        labels = da.from_array(builder.check_labels(labels, n), chunks=(x.chunks[0],))
    batch_size = int(batch_size)
    if batch_size < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    split_every = int(split_every)
    if split_every < 2:
        raise ValueError(f"split_every must be at least 2, got {split_every}")
    net_arg, _ = _shipped(net)
    xs = x.to_delayed().ravel()
    ls = labels.to_delayed().ravel() if labels is not None else [None] * len(xs)
    starts = np.cumsum((0,) + x.chunks[0])[:-1]
    block = dask.delayed(task(_atlas_block), pure=True)
    level = [block(xb, lb, int(s), net=net_arg, spec=builder.spec, batch_size=batch_size)
             for xb, lb, s in zip(xs, ls, starts)]
    merge = dask.delayed(_merge_parts, pure=True)
    while len(level) > 1:
        level = [merge(*level[i:i + split_every]) for i in range(0, len(level), split_every)]
    return level[0].compute().finish(builder)


def from_npy(path, chunks=None):
    """A ``.npy`` file as a dask array whose blocks are read where they are computed (each
    task reads its rows; the file must be visible to the workers, e.g. on a shared disk).

    ``dask.array.from_array(np.load(path, mmap_mode="r"))`` would put the whole array into the
    graph for a distributed scheduler; this puts the path.

    Parameters
    ----------
    path : str
    chunks : int, optional
        Samples per block (default: about 16 MiB of inputs, at most 4096 samples).

    Returns
    -------
    dask.array.Array
    """
    f = NpyFile(path)
    if f.ndim < 1:
        raise ValueError(f"{path}: a 0-dimensional array has no samples")
    if chunks is None:
        chunks = default_chunk_size(f.shape[1:], max(4, f.dtype.itemsize))
    elif not is_int(chunks) or chunks < 1:
        raise ValueError(f"chunks must be a positive number of samples, got {chunks!r}")
    return _npy_array(f, int(chunks))


def _npy_array(f, batch_chunks):
    """The :class:`NpyFile` ``f`` as a dask array with ``batch_chunks`` (an int or sizes) along
    the batch axis; registered so that :func:`explain` can read runs of its chunks."""
    chunks = (batch_chunks,) + f.shape[1:]
    arr = da.from_array(f, chunks=chunks, lock=False, asarray=False,
                        meta=np.empty((0,) * f.ndim, dtype=f.dtype),
                        name=f"relprop-npy-{dask.base.tokenize(f, chunks)}")
    _NPY_FILES[arr.name] = f
    return arr
