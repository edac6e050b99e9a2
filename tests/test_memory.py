"""Bounded memory: ``batch_size=`` keeps the peak of an explanation of any number of samples
near the memory of one chunk.

The peak counts what Python allocates (``tracemalloc``; NumPy reports its array buffers to it)
plus what the C++ kernels hold in counted buffers and large outputs on relprop's pool
(``relprop.ops.memory_stats``: the counting allocator of ``relprop/memory.hpp`` and the pool of
``relprop/pool.hpp``).  The stated bound, from the chunk size:

    BOUND = FACTOR * (activations of one chunk) + (the output array)

where the activations of one chunk are every layer's input and output for ``batch_size``
samples (the trace the backward pass reuses) and FACTOR = 5 leaves room for a rule's
temporaries (LRP-gamma keeps up to four layer-sized arrays next to the trace).
"""
import os
import sys
import tracemalloc

import numpy as np
import pytest
from numpy.testing import assert_allclose

import relprop as rp
from relprop.reference import ops as ref_ops

N_DIGITS = 10_000
BATCH = 256
FACTOR = 5


@pytest.fixture(scope="module")
def net():
    return rp.models.digits_cnn()


@pytest.fixture(scope="module")
def digits():
    """10,000 digits: the 450 bundled test digits, repeated with a little noise, and labels."""
    x, y = rp.models.digits_data()
    reps = -(-N_DIGITS // len(x))
    rng = np.random.default_rng(0)
    X = np.concatenate([x] * reps)[:N_DIGITS]
    X = np.clip(X + rng.normal(scale=0.05, size=X.shape).astype(np.float32), 0, 1)
    return X, np.concatenate([y] * reps)[:N_DIGITS]


def activation_bytes(net, n, dtype=np.float32):
    """Bytes of every layer's input and output for ``n`` samples."""
    per_sample = sum(int(np.prod(s)) for s in net.shapes(net.input_shape))
    return n * per_sample * np.dtype(dtype).itemsize


def bound(net, n_out_samples, batch=BATCH):
    return FACTOR * activation_bytes(net, batch) + n_out_samples * 64 * 4


def peak_bytes(fn):
    """``(result, peak bytes)``: tracemalloc's peak plus the C++ counter's peak during ``fn()``."""
    rp.ops.reset_memory_peak()
    cpp_before = rp.ops.memory_stats()["current_bytes"]
    tracemalloc.start()
    try:
        out = fn()
        py_peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return out, py_peak + rp.ops.memory_stats()["peak_bytes"] - cpp_before


def test_the_counter_counts():
    rp.ops.reset_memory_peak()
    before = rp.ops.memory_stats()
    inside = rp.ops._core._memory_probe(3 << 20)
    after = rp.ops.memory_stats()
    assert inside["current_bytes"] - before["current_bytes"] == 3 << 20
    assert after["current_bytes"] == before["current_bytes"]
    assert after["peak_bytes"] >= before["current_bytes"] + (3 << 20)
    rp.ops.reset_memory_peak()
    assert rp.ops.memory_stats()["peak_bytes"] == after["current_bytes"]


MiB = 1 << 20


def test_pool_reuses_freed_outputs_and_counts_them():
    rp.release_memory()
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 0
    x = np.ones((4, 1 << 18), dtype=np.float32)  # 4 MiB outputs come from the pool
    before = rp.ops.memory_stats()["current_bytes"]
    y = rp.ops.relu_forward(x)
    assert rp.ops.memory_stats()["current_bytes"] - before == 4 * MiB  # counted while alive
    assert y.flags.c_contiguous and y.flags.writeable and not y.flags.owndata
    y[0, 0] = -5.0  # writable, and stays correct
    assert_allclose(y[1], 1.0)
    address = y.ctypes.data
    del y
    assert rp.ops.memory_stats()["current_bytes"] == before
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 4 * MiB
    z = rp.ops.relu_forward(-x)  # same size: the freed block again, with fresh contents
    assert z.ctypes.data == address and not z.any()
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 0
    del z
    rp.release_memory()
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 0


def test_pool_never_holds_more_than_the_peak_in_use():
    rp.release_memory()
    small = rp.ops.relu_forward(np.ones((1, 1 << 20), dtype=np.float32))  # 4 MiB in use
    del small  # cached: 4 MiB, in use 0, peak 4 MiB
    big = rp.ops.relu_forward(np.ones((2, 1 << 20), dtype=np.float32))  # a miss: 8 MiB
    # cached + in use must stay <= the peak in use (8 MiB): the 4 MiB block was freed
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 0
    del big
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 8 * MiB
    rp.release_memory()
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="platform: free ranges are "
                    "grown with mremap (Linux)")
def test_pool_cuts_merges_and_grows_free_ranges():
    rp.release_memory()
    big = rp.ops.relu_forward(np.ones((2, 1 << 20), dtype=np.float32))  # 8 MiB: peak in use
    address = big.ctypes.data
    del big  # free: 8 MiB; a new 4 MiB block would make 12 MiB > the peak
    half = rp.ops.relu_forward(-np.ones((1, 1 << 20), dtype=np.float32))
    assert half.ctypes.data == address  # the front of the free range, no new memory
    assert not half.any() and rp.ops.memory_stats()["pool_cached_bytes"] == 4 * MiB
    other = rp.ops.relu_forward(np.full((1, 1 << 20), 2.0, dtype=np.float32))
    assert other.ctypes.data == address + 4 * MiB and (other == 2.0).all()  # the back
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 0
    del half, other  # the two halves merge again: one 8 MiB range
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 8 * MiB
    whole = rp.ops.relu_forward(np.ones((2, 1 << 20), dtype=np.float32))
    assert whole.ctypes.data == address
    del whole
    rp.release_memory()
    small = rp.ops.relu_forward(np.ones((1, 1 << 20), dtype=np.float32))  # peak 4 MiB
    del small  # free: 4 MiB; an 8 MiB request grows that range instead of mapping 8 MiB
    grown = rp.ops.relu_forward(np.full((2, 1 << 20), 3.0, dtype=np.float32))
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 0
    assert (grown == 3.0).all()
    grown[-1, -1] = 7.0  # every page of the grown block is there and writable
    assert grown[-1, -1] == 7.0
    del grown
    rp.release_memory()


def test_pool_blocks_never_overlap_under_random_sizes_and_threads():
    # outputs of 256 KiB to 3 MiB made, kept a while and freed in random order from four
    # threads: each keeps its own fill value until freed (overlapping blocks would not)
    from concurrent.futures import ThreadPoolExecutor

    def worker(seed):
        rng = np.random.default_rng(seed)
        kept = []
        for step in range(150):
            n = int(rng.integers(1 << 16, 3 << 18))  # float32 elements
            value = np.float32(seed * 1000 + step)
            kept.append((value, rp.ops.relu_forward(np.full(n, value, dtype=np.float32))))
            if len(kept) > 6 or rng.random() < 0.3:
                v, a = kept.pop(int(rng.integers(len(kept))))
                assert (a == v).all()
        return all((a == v).all() for v, a in kept)

    rp.release_memory()
    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(worker, range(1, 5)))
    rp.release_memory()


def _held_by_kernels(call):
    """``(result, bytes the call held at its peak beyond its result)``, after a fresh start of
    the pool; the call's memory must be in use no more once it returned."""
    rp.release_memory()
    rp.ops.reset_memory_peak()
    before = rp.ops.memory_stats()["current_bytes"]
    out = call()
    after = rp.ops.memory_stats()
    # the result itself, on the pool (in whole pages) unless it is small
    pooled = 0 if out.flags.owndata else -(-out.nbytes // 4096) * 4096
    assert after["current_bytes"] - before == pooled
    return out, after["peak_bytes"] - before - pooled


#: .ci/sanitize preloads ASan: its build takes every workspace from the heap at its exact size,
#: so that an access past it is reported (cpp/include/relprop/workspace.hpp), never the pool
ASAN = "libasan" in os.environ.get("LD_PRELOAD", "")


def test_kernel_workspaces_are_counted_and_released():
    """Every scratch byte a kernel holds is counted while the call runs, kept mapped by the
    pool once it returned, and given back by release_memory: the GEMM's packed panels of B
    (kb x min(nc, n) elements per thread) and the depthwise convolution's zero-padded planes
    (they were per-thread buffers that nothing counted or freed)."""
    rp.set_num_threads(1)
    try:
        blocks = rp.ops.isa_table()["gemm"]["float32"]
        k, n = 512, 4096
        a = np.ones((15, k), np.float32)  # a result of 240 KiB: NumPy's, not the pool's
        b = np.ones((k, n), np.float32)
        c, held = _held_by_kernels(lambda: rp.ops.gemm(a, b))
        assert_allclose(c, a @ b)
        steps = -(-k // blocks["kc"])
        panel = -(-k // steps) * min(blocks["nc"], n) * 4
        assert held >= panel
        if not ASAN:  # mapped for the next call (under ASan workspaces live on the heap)
            assert rp.ops.memory_stats()["pool_cached_bytes"] >= panel
        rp.release_memory()
        assert rp.ops.memory_stats()["pool_cached_bytes"] == 0

        x = np.ones((1, 2, 600, 600), np.float32)
        w = np.ones((2, 1, 3, 3), np.float32)
        y, held = _held_by_kernels(lambda: rp.ops.conv2d_forward(x, w, None, 1, 4, dilation=4,
                                                                 groups=2))
        assert_allclose(y, ref_ops.conv2d_forward(x, w, None, 1, 4, dilation=4, groups=2),
                        rtol=1e-6)
        assert held >= 608 * 608 * 4  # one padded plane
        del y
        rp.release_memory()
        assert rp.ops.memory_stats()["pool_cached_bytes"] == 0
    finally:
        rp.set_num_threads(0)


_FORK = """
import os, sys, threading, time
import numpy as np
import relprop as rp
from relprop import _core

a = np.arange(512 * 512, dtype=np.float32).reshape(512, 512) % 7
if sys.argv[1] == "teams":  # this thread runs a team of two threads before it forks
    rp.set_num_threads(2)
    want = rp.ops.gemm(a, a)
else:  # another thread holds the pool's lock as this one forks
    rp.set_num_threads(1)
    want = rp.ops.gemm(a, a)
    holder = threading.Thread(target=_core._hold_pool_lock, args=(0.5,))
    holder.start()
    while not _core._pool_lock_held():
        time.sleep(0.001)
rp.set_num_threads(2)
pid = os.fork()
if pid == 0:  # a 1 MiB result from the pool, a convolution's workspace, two threads asked for
    x = np.ones((2, 8, 64, 64), np.float32)
    w = np.ones((8, 8, 3, 3), np.float32)
    ok = (rp.ops.gemm(a, a) == want).all() and (rp.ops.conv2d_forward(x, w) == 72).all()
    os._exit(0 if ok else 1)
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
        print("child", os.waitstatus_to_exitcode(status))
        break
    time.sleep(0.05)
else:
    os.kill(pid, 9)
    print("child hangs")
"""


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="platform: needs os.fork (POSIX)")
@pytest.mark.parametrize("case", ["pool lock", "teams"])
def test_a_forked_child_runs_kernels(case):
    """A forked child can run kernels (pthread_atfork in relprop/fork.hpp): it does not inherit
    the pool's lock held by a thread it does not have ("pool lock"), and the thread that forked
    does not wait for OpenMP threads that did not survive the fork ("teams", GNU libgomp)."""
    import subprocess

    out = subprocess.run([sys.executable, "-c", _FORK, case], capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["child", "0"]  # not "child hangs" (killed after 30 s)


def test_small_outputs_are_numpys():
    y = rp.ops.relu_forward(np.ones((3, 100), dtype=np.float32))
    assert y.flags.owndata


@pytest.mark.slow
def test_explaining_10000_digits_in_chunks_stays_below_the_bound(net, digits):
    X, y = digits
    limit = bound(net, N_DIGITS)
    R, peak = peak_bytes(lambda: rp.lrp(net, X, y, batch_size=BATCH))
    assert R.shape == X.shape and np.isfinite(R).all()
    assert peak < limit, f"peak {peak / 1e6:.1f} MB over the bound {limit / 1e6:.1f} MB"
    # the bound is not vacuous: without chunks, a quarter of the digits already exceeds it
    _, unchunked = peak_bytes(lambda: rp.lrp(net, X[:N_DIGITS // 4], y[:N_DIGITS // 4],
                                             batch_size=N_DIGITS // 4))
    assert unchunked > limit, f"unchunked {unchunked / 1e6:.1f} MB, bound {limit / 1e6:.1f} MB"
    # and chunks change nothing but memory
    assert_allclose(R[:600], rp.lrp(net, X[:600], y[:600], batch_size=600), rtol=1e-5,
                    atol=1e-7)


@pytest.mark.slow
def test_explaining_10000_digits_by_default_stays_below_the_bound(net, digits):
    """Without batch_size=, batches of relprop.default_batch_size(net) (it was one batch)."""
    X, y = digits
    limit = bound(net, N_DIGITS, batch=rp.default_batch_size(net))
    R, peak = peak_bytes(lambda: rp.lrp(net, X, y))
    assert peak < limit, f"peak {peak / 1e6:.1f} MB over the bound {limit / 1e6:.1f} MB"


# every method that explains a batch, with the arguments that keep it quick here
CHUNKED = {
    "gradient": lambda net, x, t, **k: rp.gradient(net, x, t, **k),
    "sensitivity": lambda net, x, t, **k: rp.sensitivity(net, x, t, **k),
    "gradient_x_input": lambda net, x, t, **k: rp.gradient_x_input(net, x, t, **k),
    "deconvnet": lambda net, x, t, **k: rp.deconvnet(net, x, t, **k),
    "guided_backprop": lambda net, x, t, **k: rp.guided_backprop(net, x, t, **k),
    "taylor.nearest": lambda net, x, t, **k: rp.taylor(net, x, t, "nearest", max_steps=3, **k),
    "lrp.epsilon_gamma_box": lambda net, x, t, **k: rp.lrp(net, x, t, "epsilon_gamma_box",
                                                           low=0.0, high=1.0, **k),
    "lrp.epsilon_alpha2_beta1_flat": lambda net, x, t, **k: rp.lrp(
        net, x, t, "epsilon_alpha2_beta1_flat", **k),
    "smoothgrad": lambda net, x, t, **k: rp.smoothgrad(net, x, t, n=4, seed=0, **k),
    "integrated_gradients": lambda net, x, t, **k: rp.integrated_gradients(net, x, t, steps=4, **k),
    "explain": lambda net, x, t, **k: rp.explain(net, x, t, "lrp.epsilon_plus", **k),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(CHUNKED))
def test_every_method_stays_below_the_bound_in_chunks(net, digits, name):
    X, y = digits[0][:2400], digits[1][:2400]
    limit = bound(net, len(X))
    R, peak = peak_bytes(lambda: CHUNKED[name](net, X, y, batch_size=BATCH))
    assert R.shape == X.shape
    assert peak < limit, f"{name}: peak {peak / 1e6:.1f} MB over the bound {limit / 1e6:.1f} MB"
    _, unchunked = peak_bytes(lambda: CHUNKED[name](net, X, y, batch_size=len(X)))
    assert unchunked > limit, f"{name}: unchunked {unchunked / 1e6:.1f} MB, bound not exceeded"


@pytest.mark.slow
def test_pixel_flipping_stays_below_the_bound_in_chunks(net, digits):
    X, y = digits[0][:1000], digits[1][:1000]
    R = rp.gradient(net, X, y)
    limit = bound(net, 0) + R.nbytes  # the ranks of R, as one more input-sized array
    res, peak = peak_bytes(lambda: rp.evaluate.pixel_flipping(net, X, R, y, steps=16,
                                                             batch_size=BATCH))
    assert res.curves.shape == (1000, 17)
    assert peak < limit, f"peak {peak / 1e6:.1f} MB over the bound {limit / 1e6:.1f} MB"


# --- which methods take batch_size= -------------------------------------------------------------
def _batch_methods():
    out = {f"METHODS[{k!r}]": v for k, v in rp.METHODS.items()}
    out.update({"lrp": rp.lrp, "explain": rp.explain,
                "evaluate.pixel_flipping": rp.evaluate.pixel_flipping,
                "evaluate.conservation_report": rp.evaluate.conservation_report,
                "evaluate.compare": rp.evaluate.compare,
                "Sequential.forward": rp.Sequential.forward, "conservation": rp.conservation})
    return out




_ALLOCATION_FAILURE = """
import numpy as np
import relprop as rp
from relprop import _core, ops
from relprop import reference as ref

rp.set_num_threads(2)
a = np.ones((300, 400), np.float32)
x = np.ones((4, 16, 20, 20), np.float32)
w = np.ones((32, 16, 3, 3), np.float32)
g = np.ones((4, 32, 18, 18), np.float32)
w2 = np.ones((32, 1, 3, 3), np.float32)  # one input channel: the W^T and col2im backward
calls = {"gemm": (lambda: ops.gemm(a, a.T), lambda: a @ a.T),
         "conv2d_forward": (lambda: ops.conv2d_forward(x, w), lambda: ref.conv2d_forward(x, w)),
         "conv2d_backward": (lambda: ops.conv2d_backward(g, w, (20, 20)),
                             lambda: ref.conv2d_backward(g, w, (20, 20))),
         "conv2d_backward_cols": (lambda: ops.conv2d_backward(g, w2, (20, 20)),
                                  lambda: ref.conv2d_backward(g, w2, (20, 20)))}
import sys
name = sys.argv[1]
call, want = calls[name]
if True:
    _core._fail_scratch_allocations(True)
    try:
        call()
        print(name, "no error")
    except MemoryError:
        print(name, "MemoryError")
    finally:
        _core._fail_scratch_allocations(False)
    print(name, "then", "right" if np.allclose(call(), want(), rtol=1e-5) else "wrong")
"""


@pytest.mark.parametrize("name", ["gemm", "conv2d_forward", "conv2d_backward",
                                  "conv2d_backward_cols"])
def test_allocation_failure_inside_a_kernel_is_a_memory_error(name):
    # A kernel's workspace (relprop/workspace.hpp) is made before its OpenMP regions; a failed
    # allocation must reach Python as MemoryError (not end the process), and the next call must
    # work.  Run in a subprocess with the test-only failure switch on.
    import subprocess

    out = subprocess.run([sys.executable, "-c", _ALLOCATION_FAILURE, name], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == [f"{name} MemoryError", f"{name} then right"]
