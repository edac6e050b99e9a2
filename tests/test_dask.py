"""relprop.dask: bitwise the in-process results on every Dask scheduler, networks that pickle,
a graph that does not carry the network per chunk, and a distributed cluster that survives a
killed worker, a chunk with NaN and 50 jobs in a row.  Expected values come from in-process
relprop calls on the whole batch."""
import os
import pickle
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import relprop as rp
from relprop import models
from relprop.inputs import default_chunk_size

da = pytest.importorskip("dask.array")
rd = pytest.importorskip("relprop.dask")

TIMEOUT = 300  # seconds for any one cluster job: a hang fails the test


@pytest.fixture(scope="module")
def digits():
    x, _ = models.digits_data()
    # 900 distinct digits: the test split and a shifted copy
    return np.concatenate([x, np.clip(x + 0.05, 0, 1)]).astype(np.float32)


@pytest.fixture(scope="module")
def cnn():
    return models.digits_cnn()


def residual_graph(rng):
    def w(*shape):
        return rng.normal(size=shape).astype(np.float32) / np.sqrt(np.prod(shape[1:]))

    return rp.Graph([
        ("conv1", rp.Conv2d(w(4, 1, 3, 3), w(4, 1)[:, 0], padding=1), "input"),
        ("relu1", rp.ReLU(), "conv1"),
        ("conv2", rp.Conv2d(w(4, 4, 3, 3), padding=1), "relu1"),
        ("add", rp.Add(), ["conv2", "relu1"]),
        ("relu2", rp.ReLU(), "add"),
        ("pool", rp.MaxPool2d(2), "relu2"),
        ("flat", rp.Flatten(), "pool"),
        ("fc", rp.Dense(w(10, 64), w(10, 1)[:, 0]), "flat"),
    ], input_shape=(1, 8, 8))


def wide_mlp(hidden, seed=0):
    """(1, 8, 8) -> Dense(hidden) -> ReLU -> Dense(10): parameters scale with ``hidden``."""
    rng = np.random.default_rng(seed)
    return rp.Sequential([
        rp.Flatten(),
        rp.Dense(rng.normal(size=(hidden, 64)).astype(np.float32) / 8,
                 np.zeros(hidden, np.float32)),
        rp.ReLU(),
        rp.Dense(rng.normal(size=(10, hidden)).astype(np.float32) / np.float32(np.sqrt(hidden))),
    ], input_shape=(1, 8, 8))


def chunked(a, sizes):
    """``a`` as a dask array with the batch-axis chunk ``sizes`` (a tuple) and whole samples."""
    return da.from_array(a, chunks=(tuple(sizes),) + a.shape[1:])


def reference(net, x, target, method, **kw):
    """The in-process result on the whole batch."""
    return rp.explain(net, x, target, method, **kw)


METHODS = [
    ("lrp.epsilon_plus_flat", {}),
    ("lrp.epsilon_gamma_box", {"low": 0.0, "high": 1.0}),
    ("lrp.epsilon_alpha2_beta1", {}),
    ("lrp.epsilon", {"epsilon": 0.01}),
    ("gradient", {}),
    ("gradient_x_input", {}),
    ("sensitivity", {}),
    ("guided_backprop", {}),
    ("deconvnet", {}),
    ("taylor", {"root": "zero"}),
    ("integrated_gradients", {"steps": 5}),
]


# ------------------------------------------------------------------------------- imports --
def test_import_relprop_imports_no_dask():
    code = ("import sys, relprop; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('dask', 'distributed') "
            "or m in ('relprop.dask', 'relprop.stream', 'tqdm')]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out


def test_without_dask_the_import_error_says_what_to_install():
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('dask', 'distributed'):\n"
            "            raise ImportError(f'No module named {name!r}')\n"
            "sys.meta_path.insert(0, Block())\n"
            "import relprop\n"
            "try:\n"
            "    import relprop.dask\n"
            "except ImportError as e:\n"
            "    print('ImportError:', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert "ImportError:" in out.stdout and "pip install 'relprop[dask]'" in out.stdout, out


# -------------------------------------------------------------------------------- pickle --
def test_networks_pickle_without_caches_and_give_the_same_bits(digits, cnn, rng):
    graph = residual_graph(rng)
    x = digits[:40]
    for net in (cnn, graph):
        before = {m: reference(net, x, "pred", m, **kw) for m, kw in METHODS[:6]}
        before["small"] = rp.lrp(net, x[:3], 1, "epsilon_plus_flat")  # packs weights
        blob = pickle.dumps(net)
        params = sum(a.nbytes for layer in net.layers for a in layer.arrays().values())
        assert len(blob) < params + 20_000  # the parameters, not their cached copies
        twin = pickle.loads(blob)
        for m, kw in METHODS[:6]:
            np.testing.assert_array_equal(reference(twin, x, "pred", m, **kw), before[m])
        np.testing.assert_array_equal(rp.lrp(twin, x[:3], 1, "epsilon_plus_flat"),
                                      before["small"])


# ----------------------------------------------------------------------- local schedulers --
@pytest.mark.parametrize("method,kw", METHODS, ids=[m for m, _ in METHODS])
def test_threaded_scheduler_gives_the_in_process_bits(digits, cnn, method, kw):
    x = chunked(digits, (7, 100, 1, 300, 492))
    for target in ("pred", 3):
        got = rd.explain(cnn, x, target, method=method, **kw).compute(scheduler="threads")
        np.testing.assert_array_equal(got, reference(cnn, digits, target, method, **kw),
                                      strict=True)


def test_processes_scheduler_gives_the_in_process_bits(digits, cnn, rng):
    graph = residual_graph(rng)
    x = da.from_array(digits, chunks=128)
    for net, method, kw in [(cnn, "lrp.epsilon_gamma_box", {"low": 0.0, "high": 1.0}),
                            (graph, "gradient_x_input", {})]:
        got = rd.explain(net, x, "pred", method, **kw).compute(scheduler="processes",
                                                                num_workers=2)
        np.testing.assert_array_equal(got, reference(net, digits, "pred", method, **kw))


def test_targets_numpy_dask_and_seeds(digits, cnn):
    n = len(digits)
    classes = (np.arange(n) * 7) % 10
    x = da.from_array(digits, chunks=200)
    want = reference(cnn, digits, classes, "lrp.epsilon_plus_flat")
    for t in (classes, da.from_array(classes, chunks=333), classes.astype(np.int32)):
        got = rd.explain(cnn, x, t).compute(scheduler="sync")
        np.testing.assert_array_equal(got, want)
    seed = np.random.default_rng(1).normal(size=(n, 10)).astype(np.float32)
    got = rd.explain(cnn, x, da.from_array(seed, chunks=(150, 5)), "gradient")
    np.testing.assert_array_equal(got.compute(scheduler="sync"),
                                  rp.gradient(cnn, digits, seed))


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 899), max_size=8, unique=True),
       method=st.sampled_from(["lrp.epsilon_plus_flat", "lrp.epsilon_alpha2_beta1", "gradient",
                               "guided_backprop"]),
       graph=st.booleans(), per_task=st.sampled_from([None, 1, 2, 3]))
def test_any_chunking_gives_the_same_bits(digits, cnn, cuts, method, graph, per_task):
    """Chunk boundaries (and runs of chunks in a task) never change a sample's result (batch
    invariance of the kernels)."""
    net = residual_graph(np.random.default_rng(3)) if graph else cnn
    edges = [0] + sorted(cuts) + [900]
    x = chunked(digits, np.diff(edges))
    R = rd.explain(net, x, "pred", method, chunks_per_task=per_task)
    assert R.chunks == x.chunks
    got = R.compute(scheduler="sync")
    np.testing.assert_array_equal(got, reference(net, digits, "pred", method))


def test_per_sample_root_and_baseline_are_chunked_with_x(digits, cnn):
    rng = np.random.default_rng(2)
    root = (digits * rng.uniform(0, 0.5, size=digits.shape)).astype(np.float32)
    x = da.from_array(digits, chunks=128)
    got = rd.explain(cnn, x, 4, "taylor", root=root).compute(scheduler="sync")
    np.testing.assert_array_equal(got, rp.taylor(cnn, digits, 4, root=root))
    got = rd.explain(cnn, x, 4, "integrated_gradients", steps=4,
                     baseline=da.from_array(root, chunks=300)).compute(scheduler="sync")
    np.testing.assert_array_equal(got, rp.integrated_gradients(cnn, digits, 4, baseline=root,
                                                               steps=4))
    one = root[:1]  # one sample, broadcast to all
    got = rd.explain(cnn, x, 4, "taylor", root=one).compute(scheduler="sync")
    np.testing.assert_array_equal(got, rp.taylor(cnn, digits, 4, root=one))


@settings(max_examples=10, deadline=None)
@given(cuts=st.lists(st.integers(1, 119), max_size=6, unique=True),
       per_task=st.sampled_from([None, 1, 3]), offset=st.sampled_from([0, 1000]))
def test_smoothgrad_gives_the_in_process_bits_for_any_chunking(digits, cnn, cuts, per_task,
                                                                offset):
    """Each sample's noise comes from (seed, its index): chunks, runs of chunks in a task and
    a user's sample_offset give the in-process bits (the noise used to restart in every
    chunk, so a seeded SmoothGrad over several chunks was refused)."""
    x = digits[:120]
    edges = [0] + sorted(cuts) + [120]
    R = rd.explain(cnn, chunked(x, np.diff(edges)), "pred", "smoothgrad", n=3, seed=5,
                   sample_offset=offset, chunks_per_task=per_task)
    want = rp.smoothgrad(cnn, x, "pred", n=3, seed=5, sample_offset=offset)
    np.testing.assert_array_equal(R.compute(scheduler="sync"), want, strict=True)


def test_smoothgrad_refuses_a_generator_and_draws_one_seed(digits, cnn):
    x = da.from_array(digits[:40], chunks=20)
    with pytest.raises(TypeError, match="relprop.dask.explain: seed must be an int .* "
                                        "would depend on the cut"):
        rd.explain(cnn, x, 1, "smoothgrad", seed=np.random.default_rng(0))
    with pytest.raises(ValueError, match="sample_offset must be >= 0"):
        rd.explain(cnn, x, 1, "smoothgrad", seed=0, sample_offset=-1)
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        rd.explain(cnn, x[x[:, 0, 0, 0] >= 0], 1, "smoothgrad", seed=0)
    # seed=None: one seed for the call (so both halves, identical inputs, get other noise)
    twice = da.concatenate([x[:20], x[:20]])
    got = rd.explain(cnn, twice, 1, "smoothgrad", n=2).compute(scheduler="sync")
    assert not np.array_equal(got[:20], got[20:])


def test_float64_inputs_stay_float64(digits, cnn):
    x64 = digits.astype(np.float64)
    got = rd.explain(cnn, da.from_array(x64, chunks=300), 2, "gradient")
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got.compute(scheduler="sync"), rp.gradient(cnn, x64, 2),
                                  strict=True)


def test_bad_arguments_are_named(digits, cnn):
    x = da.from_array(digits, chunks=100)
    with pytest.raises(TypeError, match="x must be a dask array"):
        rd.explain(cnn, digits, 1)
    with pytest.raises(TypeError, match="relprop network"):
        rd.explain("net.npz", x, 1)
    with pytest.raises(ValueError, match=r"\(n, 1, 8, 8\)"):
        rd.explain(cnn, x.reshape(900, 64), 1)
    with pytest.raises(ValueError, match="unknown LRP rule or composite 'nonsense'"):
        rd.explain(cnn, x, 1, "lrp.nonsense")
    with pytest.raises(ValueError, match="unknown method 'saliency'"):
        rd.explain(cnn, x, 1, "saliency")
    with pytest.raises(TypeError, match="gamma"):
        rd.explain(cnn, x, 1, "lrp.epsilon", gamma=2)
    with pytest.raises(ValueError, match="out of range"):
        rd.explain(cnn, x, 12)
    with pytest.raises(ValueError, match="out of range"):
        rd.explain(cnn, x, np.full(900, 10))
    with pytest.raises(ValueError, match="target has 899 rows for 900 samples"):
        rd.explain(cnn, x, np.zeros(899, np.int64))
    with pytest.raises(ValueError, match="'pred'"):
        rd.explain(cnn, x, "predicted")
    with pytest.raises(TypeError, match="target must be"):
        rd.explain(cnn, x, np.zeros(900, bool))
    with pytest.raises(ValueError, match="return_info"):
        rd.explain(cnn, x, 1, "taylor", return_info=True)
    with pytest.raises(TypeError, match="bool"):
        rd.explain(cnn, da.zeros((10, 1, 8, 8), dtype=bool), 1)
    with pytest.raises(ValueError, match="R has shape"):
        rd.pixel_flipping(cnn, x, x[:10], 1)
    with pytest.raises(ValueError, match="patch=2 needs images"):
        xf = da.from_array(digits.reshape(900, 64), chunks=100)
        rd.pixel_flipping(models.digits_mlp(), xf, xf, 1, patch=2)
    with pytest.raises(ValueError, match="not broadcastable"):
        rd.pixel_flipping(cnn, x, x, 1, fill=np.zeros(3))
    with pytest.raises(ValueError, match=r"baseline has shape \(3, 1, 8, 8\), not broadcastable "
                                         r"to x \(900, 1, 8, 8\)"):
        rd.explain(cnn, x, 1, "integrated_gradients", baseline=np.zeros((3, 1, 8, 8)))
    with pytest.raises(TypeError, match="method 'gradient' takes no parameter 'foo'"):
        rd.explain(cnn, x, 1, "gradient", foo=1)


def test_a_nan_chunk_raises_the_in_process_error(digits, cnn):
    bad = digits.copy()
    bad[555, 0, 2, 2] = np.nan
    with pytest.raises(ValueError) as want:
        rp.explain(cnn, bad, 1)
    with pytest.raises(ValueError) as got:
        rd.explain(cnn, da.from_array(bad, chunks=100), 1).compute(scheduler="threads")
    assert str(got.value) == str(want.value)


# ------------------------------------------------------------------ small chunks, one task --
def explain_tasks(arr, prefix="relprop-explain-"):
    """(tasks that run the method, tasks that cut their results into chunks) of ``arr``'s
    graph (before optimization, which may fuse a run of one chunk with its cut)."""
    names = [k[0] if isinstance(k, tuple) else k for k in dict(arr.__dask_graph__())]
    cut = sum("-cut-" in n for n in names)
    return sum(n.startswith(prefix) for n in names) - cut, cut


@settings(max_examples=60, deadline=None)
@given(sizes=st.lists(st.integers(0, 50), min_size=1, max_size=40),
       seconds=st.floats(1e-7, 1e-2), threads=st.integers(1, 8), k=st.integers(1, 6),
       itemsize=st.sampled_from([4, 8]))
def test_task_runs_cover_the_chunks_in_order_within_the_limit(sizes, seconds, threads, k,
                                                              itemsize):
    """Runs are consecutive chunks, in order, all of them; each at most its limit (work, the
    default chunk size, the minimum task count, the tail's share of the samples left) unless
    one chunk is larger; a run and the next chunk would not fit together; an explicit count
    groups exactly that many."""
    n = sum(sizes)
    dtype = np.float32 if itemsize == 4 else np.float64
    x = da.zeros((n, 1, 8, 8), chunks=(tuple(sizes), 1, 8, 8), dtype=dtype)
    source = _Registered()
    rd._NPY_FILES[x.name] = source
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(rd, "_threads_total", lambda: threads)
        runs = rd._task_runs(x, None, seconds)
        explicit = rd._task_runs(x, k, seconds)
    cap = min(rd.TASK_SECONDS / seconds, default_chunk_size((1, 8, 8), itemsize),
              n / (rd.MIN_TASKS_PER_THREAD * threads))

    def limits(runs):  # each run's limit, from the samples left when it starts
        left = n - np.cumsum([0] + [sum(run) for run in runs[:-1]])
        return [min(cap, rd.TAIL_SHARE * rest / threads) for rest in left]

    if runs is None:  # nothing to merge
        chunks = [(size,) for size in sizes]
        assert all(sum(a) + b[0] > lim for a, b, lim in zip(chunks, chunks[1:], limits(chunks)))
    else:
        assert tuple(c for run in runs for c in run) == tuple(sizes)
        assert len(runs) < len(sizes)
        lims = limits(runs)
        assert all(sum(run) <= lim or len(run) == 1 for run, lim in zip(runs, lims))
        assert all(sum(a) + b[0] > lim for a, b, lim in zip(runs, runs[1:], lims))
    if k == 1 or len(sizes) == 1:
        assert explicit is None
    else:
        assert [len(run) for run in explicit] == [min(k, len(sizes) - i)
                                                  for i in range(0, len(sizes), k)]


class _Registered:
    """Stands for a .npy file behind an array (only its registration matters here)."""


def test_small_chunks_of_a_npy_share_tasks_and_keep_their_chunks(tmp_path, digits, cnn):
    """Chunks of 12 digits (a third of a millisecond of work): runs of them are explained by
    one task each, the result is cut back into the chunks of x, with the in-process bits."""
    np.save(tmp_path / "x.npy", digits)
    x = rd.from_npy(tmp_path / "x.npy", chunks=12)  # 75 chunks
    n = len(digits)
    classes = (np.arange(n) * 3) % 10
    root = (digits * 0.5).astype(np.float32)
    cases = [("pred", "lrp.epsilon_plus_flat", {}),
             (classes, "gradient", {}),
             (da.from_array(classes, chunks=100), "lrp.epsilon_gamma_box", {"low": 0.0,
                                                                            "high": 1.0}),
             (np.ones((n, 10), np.float32), "guided_backprop", {}),
             (4, "taylor", {"root": root}),
             (4, "integrated_gradients", {"steps": 3, "baseline": da.from_array(root,
                                                                               chunks=50)})]
    for target, method, kw in cases:
        R = rd.explain(cnn, x, target, method, **kw)
        assert R.chunks == x.chunks
        tasks, _ = explain_tasks(R)
        assert 1 < tasks < 75 // 2, (method, tasks)
        got = R.compute(scheduler="threads")
        want = reference(cnn, digits, target if not isinstance(target, da.Array) else classes,
                         method, **{k: (root if isinstance(v, da.Array) else v)
                                    for k, v in kw.items()})
        np.testing.assert_array_equal(got, want, strict=True)


def test_chunks_per_task_is_explicit_or_follows_the_work(monkeypatch, tmp_path, digits, cnn):
    np.save(tmp_path / "x.npy", digits)
    x = rd.from_npy(tmp_path / "x.npy", chunks=12)
    # one task per chunk on request: no cutting
    R = rd.explain(cnn, x, 1, chunks_per_task=1)
    assert explain_tasks(R) == (75, 0)
    # an explicit count also merges chunks of other arrays (rechunked first)
    xa = chunked(digits, (7, 100, 1, 300, 492))
    R = rd.explain(cnn, xa, "pred", "gradient", chunks_per_task=2)
    assert R.chunks == xa.chunks and explain_tasks(R)[0] == 3
    np.testing.assert_array_equal(R.compute(scheduler="sync"),
                                  reference(cnn, digits, "pred", "gradient"))
    # by default only .npy arrays are merged (another x would need a task per chunk to
    # rechunk it, and a transfer between workers)
    assert explain_tasks(rd.explain(cnn, chunked(digits, (12,) * 75), 1))[0] == 75
    # the estimate decides: a slow network (per FLOP) keeps a task per chunk
    monkeypatch.setattr(rd, "FLOP_RATE", 1e3)
    assert explain_tasks(rd.explain(cnn, x, 1))[0] == 75
    # SmoothGrad's noisy copies count as work
    monkeypatch.setattr(rd, "FLOP_RATE", 25e9)
    plain = explain_tasks(rd.explain(cnn, x, 1, "gradient"))[0]
    noisy = explain_tasks(rd.explain(cnn, x, 1, "smoothgrad", n=400))[0]
    assert plain < noisy == 75


def test_chunks_per_task_errors(tmp_path, digits, cnn):
    x = chunked(digits, (100,) * 9)
    for bad, err in ((0, ValueError), (-1, ValueError), (1.5, TypeError), (True, TypeError),
                     ("2", TypeError)):
        with pytest.raises(err, match="chunks_per_task"):
            rd.explain(cnn, x, 1, chunks_per_task=bad)
        with pytest.raises(err, match="chunks_per_task"):
            rd.pixel_flipping(cnn, x, x, 1, chunks_per_task=bad)
    # the work estimate leaves bad counts to the method's own errors
    np.save(tmp_path / "x.npy", digits)
    xn = rd.from_npy(tmp_path / "x.npy", chunks=10)
    for bad, err in (("x", TypeError), (-3, ValueError), (2.5, TypeError)):
        with pytest.raises(err, match="n must be"):
            rd.explain(cnn, xn, 1, "smoothgrad", n=bad)
        with pytest.raises(err, match="steps must be"):
            rd.explain(cnn, xn, 1, "integrated_gradients", steps=bad)
    unknown = x[x[:, 0, 0, 0] >= 0]  # unknown chunk sizes
    with pytest.raises(ValueError, match="unknown chunk sizes"):
        rd.explain(cnn, unknown, 1, chunks_per_task=2)


def test_npy_arrays_of_different_chunks_have_different_keys(tmp_path, digits):
    """Two arrays of one file with different chunks in one graph must not share keys."""
    np.save(tmp_path / "x.npy", digits)
    a, b = rd.from_npy(tmp_path / "x.npy", chunks=100), rd.from_npy(tmp_path / "x.npy", chunks=300)
    assert a.name != b.name
    np.testing.assert_array_equal(da.concatenate([a, b]).compute(scheduler="sync"),
                                  np.concatenate([digits, digits]))


# ------------------------------------------------------------------------ pixel flipping --
@pytest.mark.parametrize("fill,patch,order,target", [
    (0.0, 1, "most_relevant_first", "pred"),
    ("uniform", 2, "most_relevant_first", 3),
    ("mean", 3, "least_relevant_first", "classes"),
    ("per-sample", 1, "most_relevant_first", "pred"),
])
def test_pixel_flipping_gives_the_in_process_bits(digits, cnn, fill, patch, order, target):
    x = digits[:300]
    R = rp.explain(cnn, x, cnn(x).argmax(axis=1))
    t = {"pred": cnn(x).argmax(axis=1), "classes": np.arange(300) % 10}.get(target, target)
    f = np.random.default_rng(4).random(x.shape).astype(np.float32) if fill == "per-sample" \
        else fill
    want = rp.evaluate.pixel_flipping(cnn, x, R, t, steps=9, patch=patch, fill=f, order=order,
                                      seed=11)
    xd = chunked(x, (40, 1, 200, 59))
    fd = da.from_array(f, chunks=150) if fill == "per-sample" else f
    got = rd.pixel_flipping(cnn, xd, da.from_array(R, chunks=100),
                            target if target == "pred" else t, steps=9, patch=patch, fill=fd,
                            order=order, seed=11)
    np.testing.assert_array_equal(got.curves.compute(scheduler="threads"), want.curves)
    np.testing.assert_array_equal(got.auc.compute(scheduler="threads"), want.auc)
    np.testing.assert_array_equal(got.fractions, want.fractions)
    assert got.mean_auc == pytest.approx(want.mean_auc, rel=1e-12)


# ------------------------------------------------------------------------------- metrics --
METRIC_CASES = {  # small settings; metrics that draw, that re-explain, batch statistics, masks
    "faithfulness_correlation": dict(runs=6, subset=8, seed=3),
    "monotonicity_correlation": dict(steps=8, runs=3),
    "sensitivity_n": dict(steps=8),
    "road": dict(percentages=[10, 60]),
    "irof": dict(segmentation="grid"),
    "max_sensitivity": dict(method="gradient", runs=2),
    "random_logit": dict(method="gradient_x_input"),
    "model_parameter_randomization": dict(method="gradient", order="independent"),
    "pointing_game": dict(),
    "completeness": dict(fill="uniform"),
    # re-explaining with a method that draws: each row's draws are its sample's
    "max_sensitivity/smoothgrad": dict(method="smoothgrad", n=2, runs=2, seed=4),
    "random_logit/smoothgrad": dict(method="smoothgrad", n=2),
    "model_parameter_randomization/smoothgrad": dict(method="smoothgrad", n=2, nodes=["0"]),
}


@pytest.mark.parametrize("name", sorted(METRIC_CASES))
def test_metrics_give_the_in_process_bits(digits, cnn, name):
    """Every per-sample field bitwise the in-process one, and the batch statistics computed
    from the gathered fields equal too."""
    x = digits[:100]
    pred = cnn(x).argmax(axis=1)
    R = rp.explain(cnn, x, pred, method="gradient_x_input")
    masks = (x > 0.5).astype(np.float32)
    extra = (masks,) if name == "pointing_game" else ()
    name, kw = name.split("/")[0], METRIC_CASES[name]
    fn = getattr(rp.metrics, name)
    want = fn(cnn, x, R, pred, *extra, **kw)
    got = rd.metric(name, cnn, chunked(x, (40, 1, 59)), da.from_array(R, chunks=30), "pred",
                    *(da.from_array(m, chunks=25) for m in extra), **kw)
    assert type(got) is type(want)
    for field in type(want).per_sample_fields():
        value = getattr(got, field)
        if field in getattr(type(want), "variable_width", ()):
            assert value is None
            continue
        np.testing.assert_array_equal(value.compute(scheduler="threads"), getattr(want, field),
                                      err_msg=field)
    for stat in ("correlations", "accuracy"):
        if hasattr(want, stat):
            np.testing.assert_array_equal(np.asarray(getattr(got, stat)), getattr(want, stat))
    np.testing.assert_array_equal(got.summary, want.summary)


def test_metric_errors(digits, cnn):
    x = chunked(digits[:100], (50, 50))
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        rd.metric("nope", cnn, x, x, 1)
    with pytest.raises(ValueError, match="pointing_game needs masks"):
        rd.metric("pointing_game", cnn, x, x, 1)
    with pytest.raises(TypeError, match="seed must be an int"):
        rd.metric("faithfulness_correlation", cnn, x, x, 1, seed=np.random.default_rng(0))
    with pytest.raises(ValueError, match="subset must be smaller"):  # checked on one sample
        rd.metric("faithfulness_correlation", cnn, x, x, 1, subset=64)


# ------------------------------------------------------------------------------ from_npy --
def test_from_npy_reads_rows_where_computed(tmp_path, digits, cnn):
    np.save(tmp_path / "x.npy", digits)
    x = rd.from_npy(tmp_path / "x.npy", chunks=128)
    assert x.chunks[0] == (128,) * 7 + (4,)
    np.testing.assert_array_equal(x.compute(), digits, strict=True)
    graph = dict(x.__dask_graph__())
    assert len(pickle.dumps(graph)) < 20_000  # the path, not the data
    np.testing.assert_array_equal(rd.explain(cnn, x, "pred").compute(scheduler="processes",
                                                                    num_workers=2),
                                  reference(cnn, digits, "pred", "lrp.epsilon_plus_flat"))
    with pytest.raises(ValueError, match="chunks must be"):
        rd.from_npy(tmp_path / "x.npy", chunks=0)


def graph_bytes(arr):
    return len(pickle.dumps(dict(arr.__dask_graph__())))


def test_graph_holds_the_network_once(tmp_path, digits):
    """The graph grows with the model once and with the chunks by a constant each, never with
    the model's size times the number of chunks."""
    np.save(tmp_path / "x.npy", np.tile(digits, (8, 1, 1, 1)))  # 7200 digits
    small, big = wide_mlp(8), wide_mlp(32768)  # 2.4 KB and 9.8 MB of parameters
    big_bytes = sum(a.nbytes for layer in big.layers for a in layer.arrays().values())
    sizes = {}
    for name, net in (("small", small), ("big", big)):
        for chunks in (8, 64):
            x = rd.from_npy(tmp_path / "x.npy", chunks=-(-7200 // chunks))
            sizes[name, chunks] = graph_bytes(rd.explain(net, x, "pred", "lrp.epsilon"))
    per_chunk = (sizes["small", 64] - sizes["small", 8]) / 56
    assert per_chunk < 5_000
    # the big network adds its size once, whatever the number of chunks
    for chunks in (8, 64):
        assert big_bytes - 10_000 < sizes["big", chunks] - sizes["small", chunks] \
            < big_bytes + 20_000
    assert abs((sizes["big", 64] - sizes["big", 8]) - (sizes["small", 64] - sizes["small", 8])) \
        < 5_000


# -------------------------------------------------------------------- distributed cluster --
@pytest.fixture(scope="module")
def client():
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, timeout="60s") as c:
        yield c


def compute(client, arr):
    return client.compute(arr).result(timeout=TIMEOUT)


@pytest.mark.parametrize("method,kw", METHODS[:7], ids=[m for m, _ in METHODS[:7]])
def test_cluster_gives_the_in_process_bits(client, tmp_path, digits, cnn, method, kw):
    np.save(tmp_path / "x.npy", digits)
    for x in (chunked(digits, (100, 1, 350, 449)),
              rd.from_npy(tmp_path / "x.npy", chunks=64)):
        for target in ("pred", np.arange(900) % 10):
            got = compute(client, rd.explain(cnn, x, target, method, **kw))
            np.testing.assert_array_equal(got, reference(cnn, digits, target, method, **kw),
                                          strict=True)


def test_cluster_smoothgrad_gives_the_in_process_bits(client, digits, cnn):
    """Seeded SmoothGrad on worker processes: each sample's noise from (seed, its index), a
    task per chunk, as one in-process call."""
    x = digits[:200]
    got = compute(client, rd.explain(cnn, chunked(x, (50, 1, 80, 69)), "pred", "smoothgrad",
                                     n=2, seed=3, sample_offset=5, chunks_per_task=1))
    np.testing.assert_array_equal(got, rp.smoothgrad(cnn, x, "pred", n=2, seed=3,
                                                     sample_offset=5), strict=True)


def _network_fetches(dask_worker):
    """How many times this worker received a relprop network from another worker."""
    return sum(str(k).startswith("relprop-net-") for entry in dask_worker.transfer_incoming_log
               for k in entry["keys"])


def test_cluster_ships_the_network_once(client, tmp_path, digits):
    client.restart()  # fresh transfer logs
    big = wide_mlp(32768)
    np.save(tmp_path / "x.npy", np.tile(digits, (2, 1, 1, 1)))
    x = rd.from_npy(tmp_path / "x.npy", chunks=25)  # 72 chunks
    R = rd.explain(big, x, 0, "gradient")
    assert graph_bytes(R) < 200_000  # 72 tasks, and not one copy of the 9.8 MB network
    got = compute(client, R)
    np.testing.assert_array_equal(got, rp.gradient(big, np.tile(digits, (2, 1, 1, 1)), 0))
    # one worker computed the network's key, the other fetched it once for its tasks
    fetched = client.run(_network_fetches)
    assert sorted(fetched.values()) == [0, 1], fetched


def test_cluster_pixel_flipping(client, digits, cnn):
    x = digits[:200]
    R = rp.explain(cnn, x, 5)
    want = rp.evaluate.pixel_flipping(cnn, x, R, 5, steps=8, fill="uniform", patch=2, seed=3)
    got = rd.pixel_flipping(cnn, da.from_array(x, chunks=33), da.from_array(R, chunks=33), 5,
                            steps=8, fill="uniform", patch=2, seed=3)
    np.testing.assert_array_equal(compute(client, got.curves), want.curves)
    np.testing.assert_array_equal(compute(client, got.auc), want.auc)


def test_cluster_small_chunks_share_tasks(client, tmp_path, digits, cnn):
    np.save(tmp_path / "x.npy", digits)
    x = rd.from_npy(tmp_path / "x.npy", chunks=10)
    R = rd.explain(cnn, x, "pred", "lrp.epsilon_alpha2_beta1")
    assert R.chunks == x.chunks and explain_tasks(R)[0] < 90 // 2
    np.testing.assert_array_equal(compute(client, R),
                                  reference(cnn, digits, "pred", "lrp.epsilon_alpha2_beta1"),
                                  strict=True)
    R0 = rp.explain(cnn, digits[:300], 2)
    pf = rd.pixel_flipping(cnn, x[:300], da.from_array(R0, chunks=77), 2, steps=6,
                           fill="uniform", seed=5, chunks_per_task=4)
    want = rp.evaluate.pixel_flipping(cnn, digits[:300], R0, 2, steps=6, fill="uniform", seed=5)
    assert pf.curves.chunks[0] == (10,) * 30
    np.testing.assert_array_equal(compute(client, pf.curves), want.curves)
    np.testing.assert_array_equal(compute(client, pf.auc), want.auc)


def test_asynchronous_client(tmp_path, digits, cnn):
    """An asynchronous default client (dask.compute refuses it): the graph is built for it and
    ``await client.compute(R)`` gives the in-process bits."""
    import asyncio

    distributed = pytest.importorskip("distributed")
    np.save(tmp_path / "x.npy", digits)

    async def run():
        async with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False,
                                            asynchronous=True, dashboard_address=":0") as lc, \
                distributed.Client(lc, asynchronous=True) as c:
            R = rd.explain(cnn, rd.from_npy(tmp_path / "x.npy", chunks=30), "pred")
            return R.chunks, await asyncio.wait_for(c.compute(R), TIMEOUT)

    chunks, got = asyncio.run(run())
    assert chunks[0] == (30,) * 30
    np.testing.assert_array_equal(got, reference(cnn, digits, "pred", "lrp.epsilon_plus_flat"))


def test_cluster_nan_chunk_raises_the_in_process_error_and_stays_usable(client, digits, cnn):
    bad = digits.copy()
    bad[555, 0, 2, 2] = np.nan
    with pytest.raises(ValueError) as want:
        rp.explain(cnn, bad, 1, "lrp.epsilon_gamma_box", low=0, high=1)
    with pytest.raises(ValueError) as got:
        compute(client, rd.explain(cnn, da.from_array(bad, chunks=100), 1,
                                   "lrp.epsilon_gamma_box", low=0, high=1))
    assert str(got.value) == str(want.value)
    again = compute(client, rd.explain(cnn, da.from_array(digits, chunks=100), 1, "gradient"))
    np.testing.assert_array_equal(again, rp.gradient(cnn, digits, 1))


def _set_isa(name):
    from relprop import ops

    ops.set_isa(name)


def _set_version(version):
    import relprop

    relprop.__version__ = version


try:
    from distributed import WorkerPlugin as _WorkerPlugin
except ImportError:  # (the tests that use it skip)
    _WorkerPlugin = object


class _OtherISA(_WorkerPlugin):
    """A worker plugin: workers started after it is registered run ``isa``."""

    def __init__(self, isa, existing):
        self.isa, self.existing = isa, set(existing)

    def setup(self, worker):
        if worker.address not in self.existing:
            _set_isa(self.isa)


def _other_isa():
    from relprop import ops

    others = [i for i in ops.supported_isas() if i != ops.isa()]
    if not others:
        pytest.skip("platform: this CPU runs one instruction set only (none to switch a worker to)")
    return "generic" if "generic" in others else others[0]


def test_a_worker_of_another_relprop_or_isa_is_refused_in_every_task(digits, cnn):
    """Every entry point's tasks check their worker: a worker switched to other kernels (or
    reporting another version) fails the job with both named, as do a worker that joins later
    and one that its nanny restarts (the CLI checked the workers once, at the start; the
    library not at all: LRP came back 2.4e-7 off without a word)."""
    distributed = pytest.importorskip("distributed")
    from relprop import __version__, ops

    other, isa = _other_isa(), ops.isa()
    R = rp.explain(cnn, digits[:200], "pred")
    labels = np.arange(200) % 10
    chunks = iter(range(50, 0, -1))  # other keys for every job (an erred key keeps its error)

    def x():
        return da.from_array(digits[:200], chunks=next(chunks))

    jobs = {"explain": lambda: rd.explain(cnn, x(), "pred"),
            "pixel_flipping": lambda: rd.pixel_flipping(cnn, x(), da.from_array(R, chunks=50),
                                                        "pred", steps=4).curves}
    other_isa = f"runs relprop {__version__} on {other}, the client relprop {__version__} on {isa}"
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, timeout="60s") as client:
        first = next(iter(client.scheduler_info()["workers"]))
        compute(client, jobs["explain"]())  # a matching worker: fine
        client.run(_set_isa, other)
        for job in jobs.values():
            with pytest.raises(rd.ClusterMismatch, match=f"Dask worker {first} {other_isa}"):
                compute(client, job())
        with pytest.raises(rd.ClusterMismatch, match=other_isa):
            rd.atlas(cnn, x(), ["0"], labels=labels, k=2)
        client.run(_set_isa, isa)
        client.run(_set_version, "0.0.0")
        with pytest.raises(rd.ClusterMismatch, match=f"runs relprop 0.0.0 on {isa}, the client "
                                                     f"relprop {__version__} on {isa}"):
            compute(client, jobs["explain"]())
        client.run(_set_version, __version__)
        # workers that start later (joining, or restarted by their nanny) run other kernels
        client.register_plugin(_OtherISA(other, [first]), name="relprop-test-other-isa")
        cluster.scale(2)
        client.wait_for_workers(2, timeout=TIMEOUT)
        late = next(w for w in client.scheduler_info()["workers"] if w != first)
        with pytest.raises(rd.ClusterMismatch, match=f"Dask worker {late} {other_isa}"):
            client.compute(jobs["explain"](), workers=[late]).result(timeout=TIMEOUT)
        np.testing.assert_array_equal(  # the first worker still gives the in-process bits
            client.compute(jobs["explain"](), workers=[first]).result(timeout=TIMEOUT),
            rp.explain(cnn, digits[:200], "pred"))
        client.restart_workers([first], timeout=TIMEOUT)
        restarted = next(w for w in client.scheduler_info()["workers"] if w != late)
        assert restarted != first
        with pytest.raises(rd.ClusterMismatch, match=f"Dask worker {restarted} {other_isa}"):
            client.compute(jobs["explain"](), workers=[restarted]).result(timeout=TIMEOUT)


def _threads_in_task(_):
    return rd.use_worker_threads(), rp.get_num_threads()


def _threads_of_two_tasks(i):
    """The kernel threads of task ``i`` while task ``1 - i`` runs too (two rendezvous: both
    have started before either asks, neither ends before both have asked)."""
    from distributed import Event

    def meet(what):
        Event(f"relprop-test-{what}-{i}").set()
        if not Event(f"relprop-test-{what}-{1 - i}").wait(timeout=60):
            raise TimeoutError(f"the other task did not reach {what!r}")

    meet("start")
    n = rd.use_worker_threads()
    meet("asked")
    return n


def test_tasks_run_with_the_workers_thread_count(client):
    distributed = pytest.importorskip("distributed")
    assert rd.use_worker_threads() is None  # not in a worker: nothing changes
    assert client.submit(_threads_in_task, 0).result(timeout=TIMEOUT) == (1, 1)
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, timeout="60s", set_as_default=False) as c2:
        # the nanny starts workers with OMP_NUM_THREADS=1; a task alone uses both threads
        assert c2.submit(_threads_in_task, 0).result(timeout=TIMEOUT) == (2, 2)
        # two tasks running at once share them, one each
        both = c2.map(_threads_of_two_tasks, [0, 1], pure=False)
        assert c2.gather(both) == [1, 1]


@pytest.mark.parametrize("threads, executing, ready, leaving, want", [
    (2, 1, 0, 0, 2),  # alone: all the worker's threads
    (2, 2, 0, 0, 1),  # two running: one each
    (2, 2, 0, 1, 2),  # one ends, nothing waits: the other gets both
    (2, 2, 1, 1, 1),  # one ends, a task waits to take its thread: the other keeps one
    (2, 1, 1, 0, 1),  # a task about to start beside it counts
    (8, 3, 0, 0, 2),
    (8, 3, 9, 0, 1),
    (1, 1, 4, 0, 1),
])
def test_worker_threads_are_shared_by_the_tasks_running_or_about_to(monkeypatch, threads,
                                                                    executing, ready, leaving,
                                                                    want):
    from relprop import ops

    monkeypatch.setattr(ops, "_threads", ops._threads)  # restored after the test
    state = types.SimpleNamespace(nthreads=threads, executing_count=executing,
                                  ready=[object()] * ready)
    assert rd._share_threads(types.SimpleNamespace(state=state), leaving) == want
    assert rp.get_num_threads() == want


def _gate(block, *, event):
    """Once this worker holds an explained chunk, the next chunk waits for the distributed
    Event ``event``, and the worker says so (the Event ``event-at-<worker address>``)."""
    from distributed import Event, get_worker

    worker = get_worker()
    while True:
        try:
            done = any("relprop-explain" in str(k) for k in list(worker.data))
            break
        except RuntimeError:  # the event loop changed the data while we read it
            continue
    if done:
        Event(f"{event}-at-{worker.address}").set()
        if not Event(event).wait(timeout=TIMEOUT):
            raise TimeoutError(f"{event} was not set")
    return block


def _explained_keys(client):
    """Worker address -> the explained chunks it holds in memory."""
    return {w: [k for k in keys if "relprop-explain" in str(k)]
            for w, keys in client.has_what().items()}


@pytest.mark.slow
def test_cluster_survives_a_killed_worker(digits, cnn):
    """A worker killed while it holds finished chunks and runs another: the job's result is
    still bitwise the in-process one (the lost chunks are recomputed elsewhere).  How Dask
    replaces the worker (its nanny may restart it, or close) is not what this proves."""
    import uuid

    distributed = pytest.importorskip("distributed")
    x = np.tile(digits, (4, 1, 1, 1)) * np.repeat(np.linspace(0.7, 1, 4, dtype=np.float32),
                                                   900)[:, None, None, None]  # 3600 distinct
    want = reference(cnn, x, "pred", "lrp.epsilon_plus_flat")
    event = f"relprop-test-gate-{uuid.uuid4().hex}"
    # each worker explains a chunk, then waits at the gate until the kill
    xd = da.from_array(x, chunks=150).map_blocks(_gate, event=event, dtype=x.dtype)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, timeout="60s") as client:
        fut = client.compute(rd.explain(cnn, xd, "pred", "lrp.epsilon_plus_flat"))
        at_gate = {w: distributed.Event(f"{event}-at-{w}", client=client)
                   for w in client.scheduler_info()["workers"]}
        deadline, victim = time.monotonic() + TIMEOUT, None
        while victim is None:  # a worker that holds finished chunks and runs another
            assert time.monotonic() < deadline and not fut.done(), fut
            time.sleep(0.05)
            held = _explained_keys(client)
            victim = next((w for w, e in at_gate.items() if e.is_set() and held.get(w)), None)
        pid = client.run(os.getpid, workers=[victim])[victim]
        os.kill(pid, signal.SIGKILL)
        while victim in client.scheduler_info()["workers"]:
            assert time.monotonic() < deadline, "the scheduler did not notice the kill"
            time.sleep(0.05)
        distributed.Event(event, client=client).set()
        got = fut.result(timeout=TIMEOUT)
    assert held[victim], held
    np.testing.assert_array_equal(got, want, strict=True)


@pytest.mark.slow
def test_fifty_jobs_do_not_grow_worker_memory(digits):
    """On fresh workers of their own (the module's cluster holds what earlier tests left)."""
    distributed = pytest.importorskip("distributed")

    def rss():
        import psutil

        return psutil.Process().memory_info().rss

    net = wide_mlp(4096)  # 1.2 MB of parameters, shipped with every job
    x = np.tile(digits, (20, 1, 1, 1))  # 18,000 digits: 4.6 MB in and out per job
    xd = da.from_array(x, chunks=1500)
    want = rp.explain(net, x, 0, "lrp.epsilon")
    used = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, timeout="60s") as client:  # the default while open
        for job in range(50):
            got = compute(client, rd.explain(net, xd, 0, "lrp.epsilon"))
            if job in (9, 49):
                np.testing.assert_array_equal(got, want)
                used.append(client.run(rss))
    growth = {w: (used[1][w] - used[0][w]) / 2**20 for w in used[1] if w in used[0]}
    print(f"worker RSS growth from job 10 to job 50: {growth} MB")
    assert growth and max(growth.values()) < 40, growth


def _minor_faults(dask_worker=None):
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def test_worker_tasks_do_not_map_every_temporary(digits, cnn):
    """Dask's nanny freezes glibc's mmap threshold at 128 KiB and its trim threshold at 64 KiB
    (MALLOC_TRIM_THRESHOLD_): a relprop task sets them back to 32 and 64 MiB, or every temporary
    array of 128 KiB or more is mapped and faulted in page by page (about 2 page faults per
    sample for the digits CNN), and the heap's top is given back and faulted in again chunk
    after chunk.  A cluster
    of its own: the count depends on the heap that earlier jobs left (23,000 after the other
    tests of this module, on the shared cluster)."""
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, timeout="60s") as client:
        _count_worker_faults(client, digits, cnn)


def _count_worker_faults(client, digits, cnn):
    # large chunks (the mmap threshold) and many small ones (the trim threshold)
    for chunk, bound in ((4500, 20_000), (256, 5_000)):
        x = da.from_array(np.tile(digits, (20, 1, 1, 1)), chunks=chunk)  # 18,000 digits
        compute(client, rd.explain(cnn, x[:9000], "pred", batch_size=64))  # warm-up
        before = client.run(_minor_faults)
        compute(client, rd.explain(cnn, x, "pred", batch_size=64))
        after = client.run(_minor_faults)
        faults = sum(after[w] - before[w] for w in after if w in before)
        print(f"page faults of the workers for 18,000 digits in chunks of {chunk}: {faults}")
        # measured on a fresh cluster: 2,500 in chunks of 4500 (the inputs and results travel
        # too; 9,200 without the trim setting, 38,000 without the mmap setting), 840 in chunks
        # of 256 (21,000 without the trim setting)
        assert faults < bound, (chunk, faults)
