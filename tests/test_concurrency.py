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
