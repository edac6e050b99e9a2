"""Threads: one network shared by 8 Python threads gives the results of sequential calls, and the
kernels release the GIL (two threads run kernels at the same time, even at one OpenMP thread).
"""
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from numpy.testing import assert_array_equal

import relprop as rp

N_THREADS = 8


def make_net():
    """A small VGG-style CNN, the same weights on every call (a fresh, cold rule cache)."""
    rng = np.random.default_rng(42)

    def w(*shape):
        return (rng.normal(size=shape) / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    return rp.Sequential([
        rp.Conv2d(w(8, 3, 3, 3), w(8), padding=1), rp.ReLU(),
        rp.Conv2d(w(8, 8, 3, 3), w(8), padding=1), rp.ReLU(), rp.MaxPool2d(2),
        rp.Conv2d(w(16, 8, 3, 3), w(16), stride=2, padding=1), rp.ReLU(),
        rp.AvgPool2d(2), rp.Flatten(), rp.Dense(w(32, 64), w(32)), rp.ReLU(), rp.Dense(w(10, 32)),
    ], input_shape=(3, 16, 16))


#: Every call a thread makes: LRP composites and rules whose modified weights (W+, W-,
#: W + gamma W+, W^2, ones) the first caller makes and caches, plus the gradient family.
CALLS = {
    "forward": lambda net, x, t: net.forward(x),
    "gradient": lambda net, x, t: rp.gradient(net, x, t),
    "guided_backprop": lambda net, x, t: rp.guided_backprop(net, x, t),
    "taylor": lambda net, x, t: rp.taylor(net, x, t, "nearest", max_steps=3),
    "integrated_gradients": lambda net, x, t: rp.integrated_gradients(net, x, t, steps=4),
    "smoothgrad": lambda net, x, t: rp.smoothgrad(net, x, t, n=3, seed=7),
    "lrp.epsilon_gamma_box": lambda net, x, t: rp.lrp(net, x, t, "epsilon_gamma_box",
                                                      low=-3.0, high=3.0),
    "lrp.epsilon_alpha2_beta1_flat": lambda net, x, t: rp.lrp(net, x, t,
                                                              "epsilon_alpha2_beta1_flat"),
    "lrp.epsilon_plus": lambda net, x, t: rp.lrp(net, x, t, "epsilon_plus"),
    "lrp.gamma": lambda net, x, t: rp.lrp(net, x, t, rp.rules.Gamma(0.5)),
    "lrp.wsquare": lambda net, x, t: rp.lrp(net, x, t, "wsquare"),
}


@pytest.fixture(scope="module")
def batches():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N_THREADS, 4, 3, 16, 16)).astype(np.float32)
    t = rng.integers(0, 10, size=(N_THREADS, 4))
    return x, t


@pytest.fixture(scope="module")
def sequential(batches):
    """Results of every call for every thread's batch, one call at a time on its own network."""
    net = make_net()
    x, t = batches
    return [{name: fn(net, x[i], t[i]) for name, fn in CALLS.items()} for i in range(N_THREADS)]


@pytest.mark.parametrize("round_", range(3))
def test_eight_threads_on_one_network_match_sequential_calls(batches, sequential, round_):
    net = make_net()  # cold cache: the threads race to make the rule-modified weights
    x, t = batches
    start = threading.Barrier(N_THREADS)
    names = list(CALLS)

    def worker(i):
        order = names[i % len(names):] + names[:i % len(names)]  # threads start on different calls
        start.wait()
        return {name: CALLS[name](net, x[i], t[i]) for name in order}

    with ThreadPoolExecutor(N_THREADS) as pool:
        results = list(pool.map(worker, range(N_THREADS)))
    for i in range(N_THREADS):
        for name in names:
            assert_array_equal(results[i][name], sequential[i][name], err_msg=f"thread {i}: {name}")


def test_threads_share_one_batch_and_one_target(batches, sequential):
    net = make_net()
    x, t = batches
    start = threading.Barrier(N_THREADS)

    def worker(_):
        start.wait()
        return rp.lrp(net, x[0], t[0], "epsilon_gamma_box", low=-3.0, high=3.0)

    with ThreadPoolExecutor(N_THREADS) as pool:
        for got in pool.map(worker, range(N_THREADS)):
            assert_array_equal(got, sequential[0]["lrp.epsilon_gamma_box"])


# --- the GIL ------------------------------------------------------------------------------------
@pytest.fixture
def one_thread():
    old = rp.get_num_threads()
    rp.set_num_threads(1)
    yield
    rp.set_num_threads(old)


def _long_conv():
    """A conv forward that takes at least 0.1 s on one thread here (sized by measuring)."""
    rng = np.random.default_rng(0)
    w = rng.normal(size=(32, 32, 3, 3)).astype(np.float32)
    n = 1
    while True:
        x = rng.normal(size=(n, 32, 48, 48)).astype(np.float32)
        t0 = time.perf_counter()
        rp.ops.conv2d_forward(x, w, None, (1, 1), (1, 1))
        if time.perf_counter() - t0 >= 0.1 or n >= 256:
            return x, w
        n *= 2


def _heartbeats_during_a_long_call(x, w, small_x):
    """Thread A makes one long conv call; thread B makes small conv calls until A is done.
    Returns A's (start, end) and the end times of B's calls."""
    a_window, beats = [], []
    a_done = threading.Event()
    b_running = threading.Event()

    def a():
        b_running.wait()
        t0 = time.perf_counter()
        rp.ops.conv2d_forward(x, w, None, (1, 1), (1, 1))
        a_window.extend([t0, time.perf_counter()])
        a_done.set()

    def b():
        b_running.set()
        while not a_done.is_set():
            rp.ops.conv2d_forward(small_x, w, None, (1, 1), (1, 1))
            beats.append(time.perf_counter())

    threads = [threading.Thread(target=f) for f in (a, b)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return a_window, beats


def test_kernels_release_the_gil(one_thread):
    # While thread A is inside one long conv kernel, thread B keeps entering and leaving small
    # conv kernels.  B needs the GIL between its calls, so B can finish a call in the middle of
    # A's call only if A's kernel runs without the GIL.  Holding it, A would let B run for at
    # most one switch interval (5 ms) before entering the kernel, and B would be stuck until A
    # returns: no B call could end in the middle half of a call of >= 100 ms.  A structural
    # fact, not a speed threshold; a few attempts only guard against a starved scheduler.
    x, w = _long_conv()
    small_x = x[:1, :, :8, :8].copy()
    for _ in range(3):
        (t0, t1), beats = _heartbeats_during_a_long_call(x, w, small_x)
        quarter = (t1 - t0) / 4
        inside = [b for b in beats if t0 + quarter < b < t1 - quarter]
        if inside:
            break
    assert t1 - t0 > 4 * sys.getswitchinterval()
    assert inside, (f"no call of thread B ended in the middle of thread A's {t1 - t0:.3f} s "
                    f"kernel: the GIL was held ({len(beats)} calls of B in all)")


# ------------------------------------------------------------------------------------------
# Small batches side by side (relprop._common.SAMPLE_PARALLEL_FLOPS)
# ------------------------------------------------------------------------------------------
SIDE_BY_SIDE = {
    "forward": lambda net, x, bs: net.forward(x, batch_size=bs),
    "gradient": lambda net, x, bs: rp.gradient(net, x, "pred", batch_size=bs),
    "gradient_x_input": lambda net, x, bs: rp.gradient_x_input(net, x, 3, batch_size=bs),
    "taylor": lambda net, x, bs: rp.taylor(net, x, 2, "nearest", max_steps=2, batch_size=bs),
    "lrp.epsilon_plus_flat": lambda net, x, bs: rp.lrp(net, x, "pred", batch_size=bs),
    "lrp.epsilon_gamma_box": lambda net, x, bs: rp.explain(
        net, x, np.arange(len(x)) % 10, "lrp.epsilon_gamma_box", low=-3.0, high=3.0,
        batch_size=bs),
}


@pytest.fixture
def spy_threads(monkeypatch):
    """The names of the threads that ran the batches of ``map_batches``."""
    from relprop import _common

    names = []
    real = _common.finite_result

    def spying(fn, x, *args):
        names.append(threading.current_thread().name)
        return real(fn, x, *args)

    monkeypatch.setattr(_common, "finite_result", spying)
    return names


@pytest.mark.parametrize("call", SIDE_BY_SIDE, ids=str)
def test_small_batches_run_side_by_side_with_the_sequential_bits(call, spy_threads):
    net = make_net()
    x = np.random.default_rng(3).normal(size=(45, 3, 16, 16)).astype(np.float32)
    rp.set_num_threads(1)
    try:
        want = SIDE_BY_SIDE[call](net, x, 8)
        assert not any(n.startswith("relprop-batch") for n in spy_threads)
        rp.set_num_threads(2)
        spy_threads.clear()
        got = SIDE_BY_SIDE[call](net, x, 8)
    finally:
        rp.set_num_threads(0)
    assert sum(n.startswith("relprop-batch") for n in spy_threads) >= 6  # 6 batches of 8
    assert_array_equal(got, want)


def test_large_batches_and_taylor_infos_stay_in_order(spy_threads, monkeypatch):
    from relprop import _common

    net = make_net()
    x = np.random.default_rng(4).normal(size=(30, 3, 16, 16)).astype(np.float32)
    rp.set_num_threads(2)
    try:
        monkeypatch.setattr(_common, "SAMPLE_PARALLEL_FLOPS", net.flops() * 8 - 1)
        rp.gradient(net, x, 1, batch_size=8)  # a batch of 8 is one FLOP too many
        assert not any(n.startswith("relprop-batch") for n in spy_threads)
        monkeypatch.setattr(_common, "SAMPLE_PARALLEL_FLOPS", 1 << 28)
        R, info = rp.taylor(net, x, 1, "nearest", max_steps=2, batch_size=4, return_info=True)
        R1, info1 = rp.taylor(net, x, 1, "nearest", max_steps=2, return_info=True)
    finally:
        rp.set_num_threads(0)
    assert_array_equal(info.root, info1.root)  # the roots of every batch, in order
    assert_array_equal(R, R1)


def test_side_by_side_raises_the_first_failing_batch(monkeypatch):
    net = make_net()
    x = np.random.default_rng(5).normal(size=(40, 3, 16, 16)).astype(np.float32)
    seed = np.eye(10, dtype=np.float32)[np.arange(40) % 10]
    for i in (17, 33):  # the 3rd and the 5th batch of 8 overflow: x * dF/dx is 1e30 * 1e30 * w
        x[i] *= np.float32(1e30)
        seed[i] *= np.float32(1e30)
    rp.set_num_threads(2)
    try:
        with pytest.raises(ValueError, match="overflowed") as side:
            rp.gradient_x_input(net, x, seed, batch_size=8)
        rp.set_num_threads(1)
        with pytest.raises(ValueError, match="overflowed") as one:
            rp.gradient_x_input(net, x, seed, batch_size=8)
    finally:
        rp.set_num_threads(0)
    assert str(side.value) == str(one.value)


def test_local_threads_is_per_python_thread():
    from relprop.ops import local_threads

    rp.set_num_threads(2)
    seen = {}
    try:
        with local_threads(1):
            seen["inside"] = rp.get_num_threads()
            t = threading.Thread(target=lambda: seen.setdefault("other", rp.get_num_threads()))
            t.start()
            t.join()
        seen["after"] = rp.get_num_threads()
        with pytest.raises(ValueError, match="n must be"):
            with local_threads(0):
                pass
    finally:
        rp.set_num_threads(0)
    assert seen == {"inside": 1, "other": 2, "after": 2}


def _gradient_in_batches(net, x):
    return rp.gradient(net, x, 1, batch_size=4)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="platform: needs os.fork (POSIX)")
def test_a_forked_child_runs_batches_side_by_side():
    """The child of a fork has none of the batch pool's threads; it must start its own instead
    of waiting forever on the parent's."""
    import multiprocessing as mp

    net = make_net()
    x = np.random.default_rng(6).normal(size=(24, 3, 16, 16)).astype(np.float32)
    rp.set_num_threads(2)
    try:
        want = rp.gradient(net, x, 1, batch_size=4)  # the parent's pool is up
        ctx = mp.get_context("fork")
        with ctx.Pool(1) as pool:
            got = pool.apply_async(_gradient_in_batches, (net, x)).get(timeout=60)
    finally:
        rp.set_num_threads(0)
    assert_array_equal(got, want)


def test_side_by_side_runs_at_most_the_thread_count(monkeypatch):
    """After a call on 4 threads, a call on 2 runs at most 2 batches at a time."""
    from relprop import _common

    active, peak, lock = [0], [0], threading.Lock()
    real = _common.finite_result

    def counting(fn, x, *args):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.002)  # long enough for the others to start if they may
            return real(fn, x, *args)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(_common, "finite_result", counting)
    net = make_net()
    x = np.random.default_rng(7).normal(size=(64, 3, 16, 16)).astype(np.float32)
    try:
        rp.set_num_threads(4)
        rp.gradient(net, x, 1, batch_size=4)
        assert peak[0] == 4
        peak[0] = 0
        rp.set_num_threads(2)
        rp.gradient(net, x, 1, batch_size=4)
    finally:
        rp.set_num_threads(0)
    assert peak[0] == 2
