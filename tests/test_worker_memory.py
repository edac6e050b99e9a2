"""Dask workers keep relprop's memory from task to task and give it back when idle
(``relprop.dask.WORKER_IDLE_SECONDS``), or at once with ``relprop.dask.release_workers``."""
import time

import numpy as np
import pytest

import relprop as rp

da = pytest.importorskip("dask.array")
distributed = pytest.importorskip("distributed")
rd = pytest.importorskip("relprop.dask")


class FakeTimer:
    """A timer the test fires by hand (threading.Timer's interface)."""

    def __init__(self, delay, fn, args):
        self.delay, self.fn, self.args, self.cancelled = delay, fn, args, False

    def cancel(self):
        self.cancelled = True

    def fire(self):  # also when cancelled: a timer may run just as it is cancelled
        self.fn(*self.args)


def test_release_waits_for_an_idle_worker(monkeypatch):
    monkeypatch.setattr(rd, "WORKER_IDLE_SECONDS", 5.0)
    timers, released = [], []
    idle = rd._IdleRelease(lambda: released.append(True),
                           timer=lambda *a: timers.append(FakeTimer(*a)) or timers[-1])
    idle.started()
    idle.ended()  # a task ended: nothing released yet, a timer of the delay waits
    assert released == [] and [t.delay for t in timers] == [5.0]
    idle.started()  # the next task of the job comes in time: the release is off
    assert timers[0].cancelled
    timers[0].fire()
    assert released == []
    idle.started()  # two tasks at once: the first to end leaves the worker busy
    idle.ended()
    assert len(timers) == 1
    idle.ended()  # the last task ends, and nothing comes for the delay
    timers[-1].fire()
    assert released == [True]
    monkeypatch.setattr(rd, "WORKER_IDLE_SECONDS", None)  # never
    idle.started()
    idle.ended()
    assert len(timers) == 2


@pytest.fixture
def cluster():
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as lc, \
            distributed.Client(lc, set_as_default=False) as client:
        yield client


@pytest.fixture
def releases(monkeypatch):
    """The pool's cached bytes before and after each release_worker_memory call."""
    calls = []
    real = rd.release_worker_memory

    def release():
        before = rp.ops.memory_stats()["pool_cached_bytes"]
        real()
        calls.append((before, rp.ops.memory_stats()["pool_cached_bytes"]))

    monkeypatch.setattr(rd, "release_worker_memory", release)
    return calls


def _job(client):
    """LRP of 8,192 digits in chunks of 2048 on the cluster, whose workers share this process
    (so its memory statistics are theirs); the result matches the in-process one."""
    net = rp.models.digits_cnn()
    x = np.repeat(rp.models.digits_data()[0], 19, axis=0)[:8192]
    want = rp.explain(net, x, "pred")
    rp.release_memory()
    got = client.compute(rd.explain(net, da.from_array(x, chunks=2048), "pred")).result()
    np.testing.assert_array_equal(got, want)


@pytest.mark.slow
def test_an_idle_worker_gives_the_memory_back(cluster, releases, monkeypatch):
    monkeypatch.setattr(rd, "WORKER_IDLE_SECONDS", 0.5)
    _job(cluster)
    deadline = time.monotonic() + 30
    while not releases and time.monotonic() < deadline:
        time.sleep(0.05)
    # the pool kept the job's memory until the worker had been idle, then gave it back
    assert len(releases) == 1 and releases[0][0] > 0 and releases[0][1] == 0


@pytest.mark.slow
def test_release_workers_gives_the_memory_back_at_once(cluster, monkeypatch):
    monkeypatch.setattr(rd, "WORKER_IDLE_SECONDS", None)
    _job(cluster)
    deadline = time.monotonic() + 60  # the worker lets go of the job's chunks
    while any(cluster.run(lambda dask_worker: len(dask_worker.data)).values()):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert rp.ops.memory_stats()["pool_cached_bytes"] > 0
    rd.release_workers(cluster)
    assert rp.ops.memory_stats()["pool_cached_bytes"] == 0
