"""Fuzzing the public API: any input gives a sound result or a clean error, never a crash.

Hypothesis draws layer specs (valid and invalid kernels, strides, paddings, channel counts,
weights), inputs (shapes, dtypes incl. big-endian, structured and object arrays, NaN/inf/huge
values, non-contiguous, negative-stride, broadcast and read-only layouts, nested lists),
targets and keyword arguments, and calls every public method on them.

Every call must either return a result of the right shape and dtype with finite values, or
raise ValueError, TypeError or MemoryError.  Beyond that, what the contract accepts must be
accepted (a valid call may not raise), what it rejects must be rejected (NaN input, a wrong
shape, an unsupported dtype, an out-of-range target), a result may not depend on the memory
layout or byte order of the input, and the forward pass of every network that builds matches
:mod:`relprop.reference`.

Model files are untrusted input too: ``relprop.load`` never unpickles, checks every declared
size and count before reading, rejects descriptions that disagree with the arrays, and turns
every kind of damage (truncation, bit flips, zip-level damage) into ValueError.  The
coverage-guided fuzzers of the loaders live in ``tests/fuzz/``.
"""
import io
import json
import os
import pickle
import tempfile
import tracemalloc
import warnings
import zipfile

import numpy as np
import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from numpy.lib import format as npy_format
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
import relprop.io as rp_network
from relprop._common import NonFiniteResult
from relprop.reference import network as ref_net

CLEAN = (ValueError, TypeError, MemoryError)
#: Examples per fuzz test: a multiple of the active profile's (40 in "ci", 500 in "long").
EXAMPLES = 3 * settings.default.max_examples
FUZZ = settings(max_examples=EXAMPLES, deadline=None)

LINEAR_RULES = [name for name, cls in rp.rules.RULES.items() if "linear" in cls.applies_to]
OTHER_RULES = sorted(set(rp.rules.RULES) - set(LINEAR_RULES))
COMPOSITE_KWARGS = {"epsilon_gamma_box": {"low": -1.0, "high": 1.0}}


class Outcome:
    """What one call gave: a value, or a clean exception."""

    def __init__(self, value=None, error=None):
        self.value, self.error = value, error

    @property
    def ok(self):
        return self.error is None


def call(fn, *args, quiet=False, **kwargs):
    """Run ``fn``; a clean exception (with a message) is an outcome, any other one fails the test.

    A warning is an error too (an overflow or invalid cast is a bug), unless ``quiet``: NumPy's
    floating-point warnings on NaN/inf input that the caller chose not to check.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            if quiet:
                warnings.simplefilter("ignore", RuntimeWarning)
            return Outcome(value=fn(*args, **kwargs))
    except CLEAN as exc:
        assert str(exc), f"{type(exc).__name__} without a message"
        return Outcome(error=exc)


def expected_dtype(x):
    """The contract's computation dtype for an input ``x`` (README's dtype rule)."""
    dt = np.asarray(x).dtype
    return np.dtype(np.float64) if dt.kind == "f" and dt.itemsize == 8 else np.dtype(np.float32)


def check_result(out, status, what, shape, dtype):
    """``status``: "valid" (must succeed), "maybe" (either way), "invalid" (must raise),
    "unchecked" (either way, and NaN/inf may pass: ``check_finite=False`` on such input)."""
    if status == "invalid":
        assert not out.ok, f"{what}: accepted an invalid call and returned {out.value!r:.200}"
        return
    if status == "valid":
        assert out.ok, f"{what}: rejected a valid call: {out.error!r}"
    if out.ok:
        value = np.asarray(out.value)
        assert value.shape == shape, f"{what}: shape {value.shape}, expected {shape}"
        assert value.dtype == dtype, f"{what}: dtype {value.dtype}, expected {dtype}"
        if status != "unchecked":
            assert np.isfinite(value).all(), f"{what}: non-finite values in the result"


def combine(*statuses):
    for s in ("invalid", "unchecked", "maybe"):
        if s in statuses:
            return s
    return "valid"


# --- networks ---------------------------------------------------------------------------------
def _fixed_nets():
    rng = np.random.default_rng(7)
    cnn = rp.Sequential([
        rp.Conv2d(rng.normal(size=(3, 2, 3, 3)).astype(np.float32), rng.normal(size=3), padding=1),
        rp.ReLU(), rp.MaxPool2d(2),
        rp.Conv2d(rng.normal(size=(4, 3, 2, 2)), stride=(1, 1)), rp.ReLU(),
        rp.AvgPool2d(2, stride=1, padding=1), rp.GlobalAvgPool2d(), rp.Flatten(),
        rp.Dense(rng.normal(size=(5, 4)), rng.normal(size=5)), rp.ReLU(),
        rp.Dense(rng.normal(size=(3, 5)))], input_shape=(2, 6, 6))
    mlp = rp.Sequential([rp.Dense(rng.normal(size=(4, 5)), rng.normal(size=4)), rp.ReLU(),
                         rp.Dense(rng.normal(size=(3, 4)), rng.normal(size=3))], input_shape=(5,))
    return {"cnn": cnn, "mlp": mlp}


NETS = _fixed_nets()

# --- inputs -----------------------------------------------------------------------------------
SUPPORTED_DTYPES = ["<f4", ">f4", "<f8", ">f8", "<f2", ">f2", "i1", "u1", ">i4", "<i8", "u8", ">u2"]
UNSUPPORTED_DTYPES = ["?", "<c8", ">c16", "O", "U4", "S3", "M8[s]", "m8[ms]", "g",
                      [("a", "<f4"), ("b", "<f4")], [("v", "<f8", (2,))]]
SPECIALS = [np.nan, np.inf, -np.inf, 1e30, -3e38, 1e300, 1e-310, -0.0, 5e-45]


def _cast(vals, dtype):
    """``vals`` (float64) in ``dtype``: integers rounded and clipped, others via astype."""
    return np.asarray(_cast_values(vals, dtype))


def _cast_values(vals, dtype):
    dt = np.dtype(dtype)
    with np.errstate(all="ignore"):
        if dt.kind in "iu":
            info = np.iinfo(dt)
            v = np.nan_to_num(vals, nan=0.0, posinf=info.max, neginf=info.min)
            return np.clip(np.round(v), info.min, info.max).astype(dt)
        if dt.kind == "M":
            return np.nan_to_num(vals).astype(np.int64).astype(dt)
        if dt.kind == "m":
            return np.nan_to_num(vals).astype(np.int64).astype(dt)
        if dt.fields is not None:
            return np.zeros(vals.shape, dtype=dt)
        if dt.kind == "O":
            return vals.astype(object)
        return vals.astype(dt)


def _layout(arr, how):
    """``arr`` laid out ``how`` (the values stay the same, except for "broadcast")."""
    if how == "fortran":
        return np.asfortranarray(arr)
    if how == "strided" and arr.ndim:
        big = np.zeros(arr.shape[:-1] + (2 * arr.shape[-1],), dtype=arr.dtype)
        big[..., ::2] = arr
        return big[..., ::2]
    if how == "reversed" and arr.ndim:
        return np.flip(np.ascontiguousarray(np.flip(arr)))
    if how == "broadcast" and arr.ndim and arr.shape[0]:
        return np.broadcast_to(arr[:1], arr.shape)
    if how == "readonly":
        arr = arr.copy()
        arr.flags.writeable = False
        return arr
    if how == "list" and arr.dtype.kind in "iuf":
        return arr.tolist()
    return arr


@st.composite
def inputs(draw, sample_shape):
    """``(x, status)`` for a network with per-sample shape ``sample_shape``; status "nonfinite":
    valid but for NaN/inf values."""
    n = draw(st.integers(1, 3))
    shape_kind = draw(st.sampled_from(["ok"] * 8 + ["empty", "no_batch", "extra_dim", "off_by_one",
                                                    "scalar", "flat"]))
    shape = {"ok": (n,) + sample_shape, "empty": (0,) + sample_shape, "no_batch": sample_shape,
             "extra_dim": (n,) + sample_shape + (1,),
             "off_by_one": (n,) + sample_shape[:-1] + (sample_shape[-1] + 1,),
             "scalar": (), "flat": (n * int(np.prod(sample_shape)),)}[shape_kind]
    vals = draw(hnp.arrays(np.float64, shape, elements=st.floats(-4, 4, allow_subnormal=False)))
    special = draw(st.one_of(st.none(), st.none(), st.sampled_from(SPECIALS)))
    if special is not None and vals.size:
        vals.flat[draw(st.integers(0, vals.size - 1))] = special
    dtype = draw(st.sampled_from(SUPPORTED_DTYPES * 3 + UNSUPPORTED_DTYPES))
    arr = _cast(vals, dtype)
    x = _layout(arr, draw(st.sampled_from(["c"] * 4 + ["fortran", "strided", "reversed",
                                                        "broadcast", "readonly", "list"])))
    if shape_kind != "ok" or isinstance(dtype, list) or dtype in UNSUPPORTED_DTYPES:
        return x, "invalid"
    with np.errstate(all="ignore"):
        conv = np.asarray(x).astype(expected_dtype(x))
    if not np.isfinite(conv).all():
        return x, "nonfinite"
    return x, ("maybe" if np.abs(conv).max(initial=0) > 1e6 else "valid")


@st.composite
def targets(draw, n, n_out):
    """``(target, status)`` for a batch of ``n`` and ``n_out`` outputs."""
    kind = draw(st.sampled_from(["int", "int", "npint", "ints", "ints", "seed", "seed", "bad_int",
                                 "huge_int", "bool", "float", "none", "str", "short", "long",
                                 "bad_ints", "int_matrix", "seed_shape", "seed_nan", "seed_huge",
                                 "complex", "object", "empty", "0d"]))
    cls = st.integers(0, n_out - 1)
    if kind == "int":
        return draw(cls), "valid"
    if kind == "npint":
        return draw(st.sampled_from([np.int8, np.int32, np.int64, np.uint8, np.uint64]))(
            draw(cls)), "valid"
    if kind == "ints":
        t = draw(st.lists(cls, min_size=n, max_size=n))
        return (draw(st.sampled_from([list, tuple, np.array])))(t), "valid"
    if kind == "seed":
        s = draw(hnp.arrays(draw(st.sampled_from([np.float32, np.float64, ">f8", np.float16])),
                            (n, n_out), elements=st.floats(-2, 2, width=16)))
        return (s.tolist() if draw(st.booleans()) else s), "valid"
    if kind == "seed_huge":
        return np.full((n, n_out), 1e300), "maybe"
    bad = {
        "bad_int": lambda: draw(st.sampled_from([-1, n_out, n_out + 5, -n_out - 1])),
        "huge_int": lambda: draw(st.sampled_from([2**63, -2**63 - 1, 2**80, np.uint64(2**64 - 1)])),
        "bool": lambda: True,
        "float": lambda: draw(st.sampled_from([1.0, 0.5, np.nan, np.float64(1)])),
        "none": lambda: None,
        "str": lambda: "0",
        "short": lambda: [0] * (n - 1),
        "long": lambda: [0] * (n + 1),
        "bad_ints": lambda: [0] * (n - 1) + [draw(st.sampled_from([-1, n_out, 2**70]))],
        "int_matrix": lambda: np.zeros((n, n_out), dtype=np.int64),
        "seed_shape": lambda: np.ones(draw(st.sampled_from([(n, n_out + 1), (n + 1, n_out), (n,),
                                                             (n, n_out, 1), (n_out,)]))),
        "seed_nan": lambda: np.full((n, n_out), draw(st.sampled_from([np.nan, np.inf]))),
        "complex": lambda: np.ones((n, n_out), dtype=complex),
        "object": lambda: np.array([None] * n, dtype=object),
        "empty": lambda: [],
        "0d": lambda: np.array(draw(cls)),
    }
    t = bad[kind]()
    if kind == "seed_shape" and n == 1 and np.shape(t) == (n_out,):
        return t, "maybe"
    return t, "invalid"


@st.composite
def method_kwargs(draw):
    """``({batch_size, check_finite}, status)``."""
    bs, bs_ok = draw(st.sampled_from([(None, True)] * 4 + [
        (1, True), (2, True), (1000, True), (np.int64(2), True), (2**70, True),
        (0, False), (-1, False), (1.5, False), (True, False), ("2", False),
        (np.float64(2), False)]))
    return {"batch_size": bs, "check_finite": draw(st.sampled_from([True, True, True, False]))}, \
        ("valid" if bs_ok else "invalid")


# --- the calls --------------------------------------------------------------------------------
def explanation_calls():
    """``(name, fn(net, x, target, **kw))`` for every method that returns an array shaped like x."""
    out = [(m.__name__, m) for m in (rp.gradient, rp.sensitivity, rp.gradient_x_input,
                                     rp.deconvnet, rp.guided_backprop)]
    out += [("taylor_zero", lambda n, x, t, **k: rp.taylor(n, x, t, "zero", **k)),
            ("taylor_nearest", lambda n, x, t, **k: rp.taylor(n, x, t, "nearest", max_steps=4,
                                                              **k)),
            ("taylor_array", lambda n, x, t, **k: rp.taylor(
                n, x, t, np.full(n.input_shape, 0.25), **k)),
            ("smoothgrad", lambda n, x, t, **k: rp.smoothgrad(n, x, t, n=2, seed=0, **k)),
            ("integrated_gradients",
             lambda n, x, t, **k: rp.integrated_gradients(n, x, t, steps=3, **k))]
    for name in rp.composites.COMPOSITES:
        out.append((f"lrp.{name}", lambda n, x, t, _c=name, **k: rp.lrp(
            n, x, t, _c, **COMPOSITE_KWARGS.get(_c, {}), **k)))
    for name in LINEAR_RULES:
        out.append((f"lrp.rule.{name}", lambda n, x, t, _r=name, **k: rp.lrp(n, x, t, _r, **k)))
    for name in rp.METHODS:
        if name not in ("smoothgrad", "integrated_gradients"):  # their defaults are slow here
            out.append((f"explain.{name}", lambda n, x, t, _m=name, **k: rp.explain(
                n, x, t, method=_m, **k)))
    out.append(("explain.lrp", lambda n, x, t, **k: rp.explain(n, x, t, "lrp.epsilon_plus", **k)))
    return out


CALLS = explanation_calls()


def sample_count(x):
    arr = np.asarray(x)
    return arr.shape[0] if arr.ndim >= 2 else 0


@FUZZ
@given(data=st.data())
@pytest.mark.parametrize("net_name", sorted(NETS))
def test_every_method_gives_a_sound_result_or_a_clean_error(net_name, data):
    net = NETS[net_name]
    x, x_status = data.draw(inputs(net.input_shape), label="x")
    n = max(sample_count(x), 1)
    t, t_status = data.draw(targets(n, net.output_shape[0]), label="target")
    kw, kw_status = data.draw(method_kwargs(), label="kwargs")
    if x_status == "nonfinite":
        x_status = "unchecked" if not kw["check_finite"] else "invalid"
    dtype = expected_dtype(x)
    shape = np.shape(np.asarray(x))
    full = combine(x_status, t_status, kw_status)
    event(f"call: {full}")

    quiet = x_status == "unchecked"
    fwd = call(net.forward, x, check_finite=kw["check_finite"], quiet=quiet)
    check_result(fwd, x_status, "forward", (shape[:1] or (0,)) + net.output_shape, dtype)

    results = {}
    for name, fn in CALLS:
        out = call(fn, net, x, t, quiet=quiet, **kw)
        check_result(out, full, name, shape, dtype)
        results[name] = out

    for name in OTHER_RULES:  # rules that do not apply to Dense/Conv2d: always a clean error
        assert not call(rp.lrp, net, x, t, name).ok

    R = results["gradient"].value if results["gradient"].ok else np.zeros(shape)
    cons = call(rp.conservation, net, x, t, R)
    if combine(x_status, t_status) == "valid":
        assert cons.ok, cons.error
        assert set(cons.value) == {"score", "relevance", "difference"}
        for v in cons.value.values():
            assert np.shape(v) == (n,) and np.isfinite(v).all()
    pf = call(rp.evaluate.pixel_flipping, net, x, R, t, steps=3, batch_size=kw["batch_size"],
              check_finite=kw["check_finite"], quiet=quiet)
    if full == "valid":
        assert pf.ok, pf.error
        assert pf.value.curves.shape == (n, 4) and np.isfinite(pf.value.curves).all()

    if full == "valid":
        # the result does not depend on layout, byte order or container of the input
        plain = np.ascontiguousarray(np.asarray(x), dtype=dtype)
        assert_array_equal(fwd.value, net.forward(plain))
        for name in ("gradient", "lrp.epsilon_plus_flat", "taylor_zero"):
            again = dict(CALLS)[name](net, plain, t, **kw)
            assert_array_equal(results[name].value, again, err_msg=name)


WEIRD = st.sampled_from([0, -1, 1.5, None, "2", (1, 2, 3), (0, 1), True, [], np.int64(2), (2,)])


@st.composite
def layer_stacks(draw):
    """``(input_shape, [thunk building a layer])``: each layer plausible for the running shape
    (weights, kernel, stride and padding that fit) nine times in ten, else anything."""
    image = draw(st.booleans())
    shape = ((draw(st.integers(1, 3)), draw(st.integers(1, 7)), draw(st.integers(1, 7)))
             if image else (draw(st.integers(1, 10)),))
    dtype = draw(st.sampled_from([np.float32, np.float64, ">f8", np.float16, np.int32]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))

    def weights(shape_):
        shape_ = tuple(max(0, int(d)) for d in shape_)
        w = rng.normal(size=shape_) / np.sqrt(max(1, int(np.prod(shape_[1:]))))
        spec = draw(st.sampled_from([None] * 12 + ["nan", "zero", "huge", "list"]))
        if spec == "nan" and w.size:
            w.flat[0] = np.nan
        elif spec == "zero":
            w[:] = 0
        elif spec == "huge":
            w *= 1e30
        w = _cast(w, dtype)
        return w.tolist() if spec == "list" else w

    def window(hw):
        """kernel, stride, padding that fit ``hw`` (h, w), or weird ones."""
        if not draw(st.integers(0, 9)):
            return draw(WEIRD), draw(WEIRD), draw(WEIRD)
        k = tuple(draw(st.integers(1, max(1, d))) for d in hw)
        p = tuple(draw(st.integers(0, kk // 2)) for kk in k)
        s = tuple(draw(st.integers(1, 3)) for _ in k)
        squash = draw(st.booleans()) and k[0] == k[1] and p[0] == p[1] and s[0] == s[1]
        return (k[0], s[0], p[0]) if squash else (k, s, p)

    def out_hw(hw, k, s, p):
        """The output (h, w) of a window that fits; ValueError if it does not."""
        k, s, p = (tuple(int(u) for u in v) if isinstance(v, tuple) else (int(v),) * 2
                   for v in (k, s, p))
        if min(s) < 1 or min(k) < 1 or min(p) < 0 or len(k) != 2:
            raise ValueError("weird window")
        out = tuple((d + 2 * pp - kk) // ss + 1 for d, kk, ss, pp in zip(hw, k, s, p))
        if min(out) < 1:
            raise ValueError("window does not fit")
        return out

    cur = shape
    thunks = []
    last = kind = None
    for _ in range(draw(st.integers(1, 6))):
        last, kind = kind if thunks else None, draw(st.sampled_from([
            "dense", "conv2d", "relu", "flatten", "maxpool2d", "avgpool2d", "globalavgpool2d",
            "batchnorm1d", "batchnorm2d"]))
        fits = draw(st.integers(0, 9)) > 0
        image_now = len(cur) == 3
        if fits and not image_now and kind in ("conv2d", "maxpool2d", "avgpool2d",
                                                "globalavgpool2d"):
            kind = "relu"
        if fits and image_now and kind == "dense":
            thunks.append(rp.Flatten)
            cur = (int(np.prod(cur)),)
        if kind == "dense":
            feat = (cur[0] if len(cur) == 1 else int(np.prod(cur))) if fits else draw(
                st.integers(0, 12))
            out = draw(st.integers(1, 6))
            b = out if fits else draw(st.one_of(st.none(), st.integers(0, 7)))
            w = weights((out, feat))
            thunks.append(lambda w=w, b=b: rp.Dense(w, None if b is None else rng.normal(size=b)))
            cur = (out,)
        elif kind == "conv2d":
            chans = cur[0] if fits and image_now else draw(st.integers(0, 4))
            out = draw(st.integers(1, 4))
            k, stride, padding = window(cur[1:] if image_now else (3, 3))
            try:  # the weight's kernel size: k itself where it is a size
                kh, kw = (int(v) for v in (k if isinstance(k, tuple) else (k, k)))
            except (TypeError, ValueError):
                kh, kw = 2, 2
            w = weights((out, chans, kh, kw))
            thunks.append(lambda w=w, o=out, s=stride, p=padding: rp.Conv2d(
                w, rng.normal(size=o), stride=s, padding=p))
            try:
                cur = ((out,) + out_hw(cur[1:], (kh, kw), stride, padding) if image_now
                       else (out, 1, 1))
            except (TypeError, ValueError, ZeroDivisionError):
                pass  # weird parameters: the layer will be rejected
        elif kind in ("maxpool2d", "avgpool2d"):
            cls = rp.MaxPool2d if kind == "maxpool2d" else rp.AvgPool2d
            k, s, p = window(cur[1:] if image_now else (2, 2))
            s = None if draw(st.integers(0, 3)) == 0 else s
            thunks.append(lambda cls=cls, k=k, s=s, p=p: cls(k, s, p))
            try:
                cur = cur[:1] + out_hw(cur[1:], k, k if s is None else s, p) if image_now else cur
            except (TypeError, ValueError, ZeroDivisionError):
                pass
        elif kind.startswith("batchnorm"):
            cls = rp.BatchNorm1d if kind == "batchnorm1d" else rp.BatchNorm2d
            if fits:  # right after the layer it folds into, or not at all
                if last not in ("dense", "conv2d"):
                    continue
                cls = rp.BatchNorm1d if last == "dense" else rp.BatchNorm2d
            f = cur[0] if fits else draw(st.integers(0, 6))
            var = 0.5 if fits else draw(st.sampled_from([1.0, 0.0, -1.0, np.inf]))
            eps = 1e-5 if fits else draw(st.sampled_from([1e-5, 0.0, -1.0, np.nan, "1"]))
            thunks.append(lambda cls=cls, f=f, var=var, eps=eps: cls(
                rng.uniform(0.5, 2, f), rng.normal(size=f), rng.normal(size=f), np.full(f, var),
                eps))
        else:
            cls = {"relu": rp.ReLU, "flatten": rp.Flatten,
                   "globalavgpool2d": rp.GlobalAvgPool2d}[kind]
            thunks.append(cls)
            if kind == "flatten":
                cur = (int(np.prod(cur)),)
            elif kind == "globalavgpool2d" and image_now:
                cur = (cur[0], 1, 1)
    return shape, thunks


@pytest.fixture(scope="module")
def workdir():
    with tempfile.TemporaryDirectory() as d:
        yield d


@FUZZ
@given(stack=layer_stacks(), n=st.integers(1, 3), seed=st.integers(0, 2**16))
def test_any_layer_spec_builds_or_raises_cleanly_and_runs_like_the_reference(stack, n, seed,
                                                                              workdir):
    shape, thunks = stack
    built = [call(th) for th in thunks]
    if not all(b.ok for b in built):
        event("a layer was rejected")
        return
    layers = [b.value for b in built]
    shaped = call(rp.Sequential, layers, input_shape=shape)
    loose = call(rp.Sequential, layers)
    x = np.random.default_rng(seed).uniform(-1, 1, size=(n,) + shape)
    if not loose.ok:
        assert not shaped.ok, "a network that needs no input shape failed, with one it built"
        event("the network was rejected (without input_shape)")
        return
    fwd_loose = call(loose.value.forward, x)
    if not shaped.ok:
        # the same shape error is found on the first call of the network without input_shape
        assert not fwd_loose.ok, f"built without input_shape, rejected with it: {shaped.error}"
        event("the network was rejected for its input_shape")
        return
    net = shaped.value
    fwd = call(net.forward, x)
    weights_huge = any(np.abs(layer.weight).max() > 1e6 for layer in net.layers if layer.linear)
    status = "maybe" if weights_huge else "valid"
    check_result(fwd, status, "forward", (n,) + net.output_shape, np.dtype(np.float64))
    if not fwd.ok:
        event("the forward pass raised (huge weights)")
        return
    event(f"the network ran ({len(net.layers)} layers)")
    assert_array_equal(fwd.value, fwd_loose.value)
    want = ref_net.forward(net, x)[-1]
    assert_allclose(fwd.value, want, rtol=1e-9, atol=1e-12 * (1 + np.abs(want).max()))

    # every method runs on it (class targets need a 2-D output; else an explicit seed)
    out_shape = (n,) + net.output_shape
    t = 0 if len(out_shape) == 2 else np.ones(out_shape)
    for name, fn in CALLS:
        check_result(call(fn, net, x, t), status, name, x.shape, np.dtype(np.float64))

    # save / load gives the same network
    path = os.path.join(workdir, "net.npz")
    net.save(path)
    again = rp.load(path)
    assert [type(a) for a in again.layers] == [type(b) for b in net.layers]
    assert_array_equal(again.forward(x), fwd.value)


@FUZZ
@given(data=st.data())
def test_activation_maximization_targets_and_arguments(data):
    net = NETS[data.draw(st.sampled_from(sorted(NETS)))]
    t, status = data.draw(targets(2, net.output_shape[0]))
    if np.ndim(t) > 1 or np.asarray(t).dtype.kind == "f":
        status = "invalid"  # prototypes take classes, not seeds
    elif status == "invalid":
        status = "maybe"  # e.g. a 0-d int array or any number of classes is fine here
    steps, steps_ok = data.draw(st.sampled_from([(2, True), (0, False), (-3, False), (1.5, False)]))
    out = call(rp.activation_maximization, net, t, steps=steps)
    if status == "valid" and steps_ok:
        assert out.ok, out.error
        assert out.value.prototypes.shape == (np.size(t),) + net.input_shape
        assert np.isfinite(out.value.prototypes).all()
    if status == "invalid" or not steps_ok:
        assert not out.ok, "accepted invalid targets or steps"


# --- what the fuzzing found, pinned -----------------------------------------------------------
def test_big_endian_float64_input_is_computed_in_float64():
    net = NETS["mlp"]
    x = np.random.default_rng(0).normal(size=(2, 5))
    got = rp.gradient(net, x.astype(">f8"), 1)
    assert got.dtype == np.float64
    assert_array_equal(got, rp.gradient(net, x, 1))
    assert net(x.astype(">f4")).dtype == np.float32


@pytest.mark.parametrize("target", [2**63, -2**63 - 1, 2**80, np.uint64(2**64 - 1)])
def test_int_target_beyond_int64_is_out_of_range(target):
    with pytest.raises(ValueError, match="out of range"):
        rp.gradient(NETS["mlp"], np.ones((2, 5)), target)


@pytest.mark.parametrize("batch_size", [True, np.bool_(True), 1.0])
def test_batch_size_must_be_an_int(batch_size):
    with pytest.raises(TypeError, match="batch_size must be an integer"):
        rp.gradient(NETS["mlp"], np.ones((2, 5)), 0, batch_size=batch_size)


def test_seed_beyond_float32_range_is_rejected_in_a_float32_run():
    x = np.ones((1, 5), dtype=np.float32)
    with pytest.raises(ValueError, match="NaN or infinite"):
        rp.gradient(NETS["mlp"], x, np.full((1, 3), 1e300))


def _two_unit_net(w):
    """Dense(w) - ReLU - Dense(1, bias 0.5), float32."""
    w = np.asarray(w, dtype=np.float32)
    return rp.Sequential([rp.Dense(w), rp.ReLU(),
                          rp.Dense(np.ones((1, w.shape[0]), np.float32), np.float32([0.5]))])


@pytest.mark.parametrize("method", [rp.gradient, rp.sensitivity, rp.gradient_x_input,
                                    rp.deconvnet, lambda *a: rp.lrp(*a, "epsilon")])
def test_overflow_in_the_forward_pass_raises_instead_of_returning_inf(method):
    x = np.full((1, 2), 3e38, dtype=np.float32)
    with pytest.raises(ValueError, match="overflowed"):
        method(_two_unit_net([[1.0, 1.0]]), x, 0)


def test_overflow_after_the_backward_pass_raises_instead_of_returning_inf():
    with pytest.raises(ValueError, match="overflowed"):  # gradient 1e300, squared
        rp.sensitivity(NETS["mlp"], np.ones((1, 5)), np.full((1, 3), 1e300))


def test_nan_input_still_passes_with_check_finite_false():
    x = np.ones((1, 5))
    x[0, 0] = np.nan
    assert np.isnan(NETS["mlp"].forward(x, check_finite=False)).all()  # ReLU keeps NaN
    assert rp.gradient(NETS["mlp"], x, 0, check_finite=False).shape == (1, 5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_keeps_nan_like_the_reference(dtype):
    x = np.array([np.nan, -1.0, 2.0, -0.0, np.inf, -np.inf], dtype=dtype)
    from relprop.reference import ops as ref_ops

    assert_array_equal(rp.ops.relu_forward(x), ref_ops.relu_forward(x))


def test_overflowing_hidden_layer_is_not_masked_by_relu():
    # 2 * 3e38 - 2 * 3e38 is inf - inf = NaN in float32; ReLU used to turn that NaN into 0, so
    # the network returned its last bias, 0.5, as a finite (wrong) score
    net = _two_unit_net([[2.0, -2.0]])
    with pytest.raises(ValueError, match="overflowed"):
        net(np.full((1, 2), 3e38, dtype=np.float32))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_keeps_nan_like_the_reference(dtype):
    from relprop.reference import ops as ref_ops

    x = np.arange(32, dtype=dtype).reshape(1, 2, 4, 4)
    x[0, 0, 1, 1] = x[0, 0, 0, 3] = x[0, 1, 2, 2] = np.nan
    got, arg = rp.ops.maxpool2d_forward(x, (2, 2), (2, 2))
    want, want_arg = ref_ops.maxpool2d_forward(x, (2, 2), (2, 2))
    assert_array_equal(got, want)
    assert_array_equal(arg, want_arg)


# --- untrusted model files --------------------------------------------------------------------
def _npy(arr):
    buf = io.BytesIO()
    npy_format.write_array(buf, np.asarray(arr), allow_pickle=True)
    return buf.getvalue()


def _model_members(net=None):
    """``(description dict, {entry name: .npy bytes})`` of a saved network (the CNN by default)."""
    with tempfile.TemporaryDirectory() as d:
        (net or NETS["cnn"]).save(os.path.join(d, "m.npz"))
        with zipfile.ZipFile(os.path.join(d, "m.npz")) as zf:
            members = {i.filename: zf.read(i) for i in zf.infolist()}
    meta = npy_format.read_array(io.BytesIO(members.pop("__relprop__.npy")))
    return json.loads(meta.tobytes()), members


def _write(path, desc, members, compression=zipfile.ZIP_STORED):
    meta = desc if isinstance(desc, bytes) else json.dumps(desc).encode()
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr("__relprop__.npy", _npy(np.frombuffer(meta, dtype=np.uint8)))
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def _load_error(path, match=None):
    with pytest.raises(ValueError, match=match) as info:
        rp.load(path)
    return info.value


class _Payload:
    ran = False

    def __reduce__(self):
        return (setattr, (_Payload, "ran", True))


def test_load_never_unpickles(tmp_path):
    desc, members = _model_members()
    members["0.weight.npy"] = _npy(np.array([_Payload()], dtype=object))
    _load_error(_write(tmp_path / "obj.npz", desc, members), "numeric arrays")
    (tmp_path / "model.pkl").write_bytes(pickle.dumps(_Payload()))
    _load_error(tmp_path / "model.pkl", "cannot read")
    assert not _Payload.ran


def test_load_round_trips_the_cnn(tmp_path):
    net = NETS["cnn"]
    net.save(tmp_path / "cnn.npz")
    x = np.random.default_rng(0).normal(size=(2,) + net.input_shape)
    assert_array_equal(rp.load(tmp_path / "cnn.npz")(x), net(x))


def test_truncated_files_raise_value_error(tmp_path):
    NETS["cnn"].save(tmp_path / "ok.npz")
    raw = (tmp_path / "ok.npz").read_bytes()
    for cut in sorted(set(np.linspace(0, len(raw) - 1, 40).astype(int))):
        (tmp_path / "cut.npz").write_bytes(raw[:cut])
        _load_error(tmp_path / "cut.npz")


def test_corrupted_bytes_raise_value_error_or_load_the_same_network(tmp_path):
    net = NETS["mlp"]
    net.save(tmp_path / "ok.npz")
    raw = (tmp_path / "ok.npz").read_bytes()
    x = np.ones((1,) + net.input_shape)
    rng = np.random.default_rng(1)
    for pos in rng.choice(len(raw), size=60, replace=False):
        bad = bytearray(raw)
        bad[pos] ^= 1 << int(rng.integers(8))
        (tmp_path / "bad.npz").write_bytes(bytes(bad))
        try:
            loaded = rp.load(tmp_path / "bad.npz")
        except ValueError:
            continue
        assert_array_equal(loaded(x), net(x))  # a flip in a field nothing reads (e.g. a date)


def test_not_a_model_file(tmp_path):
    np.save(tmp_path / "plain.npy", np.ones(3))
    _load_error(tmp_path / "plain.npy", "cannot read")
    np.savez(tmp_path / "other.npz", a=np.ones(3))
    _load_error(tmp_path / "other.npz", "not a relprop model file")
    (tmp_path / "text.npz").write_text("hello")
    _load_error(tmp_path / "text.npz")
    _load_error(tmp_path, "cannot read")  # a directory
    with pytest.raises(FileNotFoundError):
        rp.load(tmp_path / "missing.npz")


def test_declared_sizes_are_checked_before_reading(tmp_path, monkeypatch):
    desc, members = _model_members()
    # a header declaring 2**40 elements over 8 bytes of data: refused, nothing allocated
    header = _npy(np.zeros(1))
    huge = header.replace(b"(1,)", b"(1099511627776,)".ljust(4)[:len(b"(1099511627776,)")])
    members["0.weight.npy"] = huge
    tracemalloc.start()
    try:
        _load_error(_write(tmp_path / "huge.npz", desc, members), "declares shape")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    # a compressed entry far larger than the file (a zip bomb) is refused before inflating
    desc, members = _model_members()
    members["0.weight.npy"] = _npy(np.zeros((1000, 2, 3, 3)))
    monkeypatch.setattr(rp_network, "MAX_PARAM_ELEMENTS", 10_000)
    path = _write(tmp_path / "bomb.npz", desc, members, zipfile.ZIP_DEFLATED)
    assert path.stat().st_size < 144_000 // 20  # 144 kB of zeros, deflated
    _load_error(path, "more than the")


def test_zip_level_damage_raises_value_error(tmp_path):
    NETS["mlp"].save(tmp_path / "ok.npz")
    raw = bytearray((tmp_path / "ok.npz").read_bytes())
    enc = bytearray(raw)
    enc[6] |= 1  # general purpose flag "encrypted" in the first local header...
    cd = enc.rfind(b"PK\x01\x02")
    enc[cd + 8] |= 1  # ...and in the central directory: zipfile asks for a password
    (tmp_path / "enc.npz").write_bytes(bytes(enc))
    _load_error(tmp_path / "enc.npz", "cannot read")
    method = bytearray(raw)
    for sig in (b"PK\x03\x04", b"PK\x01\x02"):
        at = -1
        while (at := method.find(sig, at + 1)) >= 0:
            off = 8 if sig == b"PK\x03\x04" else 10
            method[at + off:at + off + 2] = (99).to_bytes(2, "little")  # unknown compression
    (tmp_path / "method.npz").write_bytes(bytes(method))
    _load_error(tmp_path / "method.npz", "cannot read")
    desc, members = _model_members(NETS["mlp"])
    deflated = bytearray(_write(tmp_path / "d.npz", desc, members, zipfile.ZIP_DEFLATED)
                         .read_bytes())
    first = deflated.find(b"PK\x03\x04")
    start = first + 30 + int.from_bytes(deflated[first + 26:first + 28], "little")
    deflated[start:start + 4] = b"\xff\xff\xff\xff"  # a broken deflate stream
    (tmp_path / "zlib.npz").write_bytes(bytes(deflated))
    _load_error(tmp_path / "zlib.npz", "cannot read")


def _edit(desc, **changes):
    out = json.loads(json.dumps(desc))
    for path, value in changes.items():
        node, keys = out, path.split("__")
        for k in keys[:-1]:
            node = node[int(k)] if isinstance(node, list) else node[k]
        last = keys[-1]
        if value is KeyError:
            del node[last]
        elif isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value
    return out


@pytest.mark.parametrize("change,match", [
    ({"nodes__0__in_channels": 3}, "declared"),
    ({"nodes__0__kernel_size": [3, 2]}, "declared"),
    ({"nodes__0__out_channels": 4}, "declared"),
    ({"nodes__8__in_features": 5}, "declared"),
    ({"nodes__0__stride": [0, 1]}, "stride"),
    ({"nodes__0__stride": True}, "bad 'stride'"),
    ({"nodes__0__padding": [1.5, 1]}, "bad 'padding'"),
    ({"nodes__0__padding": "1"}, "bad 'padding'"),
    ({"nodes__0__kernel_size": KeyError}, "lacks 'kernel_size'"),
    ({"nodes__2__kernel_size": [0, 2]}, "kernel_size"),
    ({"nodes__2__kernel_size": [[2], 2]}, "bad 'kernel_size'"),
    ({"nodes__2__padding": [5, 5]}, "at most half"),
    ({"nodes__1__kind": "softmax"}, "unknown kind"),
    ({"nodes__1": "relu"}, "unknown kind"),
    ({"nodes": []}, "1 to"),
    ({"nodes": {"0": "relu"}}, "1 to"),
    ({"input_shape": [3, 6, 6]}, "input channels"),
    ({"input_shape": [2, 6, -6]}, "input_shape"),
    ({"input_shape": [2, 6, 2**40]}, "input_shape"),
    ({"input_shape": "2,6,6"}, "input_shape"),
    ({"version": 3}, "version"),
    ({"format": "keras"}, "not a relprop model description"),
])
def test_inconsistent_descriptions_raise_value_error(tmp_path, change, match):
    desc, members = _model_members()
    _load_error(_write(tmp_path / "m.npz", _edit(desc, **change), members), match)


@pytest.mark.parametrize("edit,match", [
    (lambda m: m.pop("0.weight.npy"), "missing weight"),
    (lambda m: m.update({"0.bias.npy": _npy(np.ones(4))}), "bias must have shape"),
    (lambda m: m.update({"0.weight.npy": _npy(np.ones((3, 2, 3)))}), "!= declared"),
    (lambda m: m.update({"0.weight.npy": _npy(np.ones((3, 2, 3, 3), dtype=bool))}), "bool"),
    (lambda m: m.update({"0.weight.npy": _npy(np.ones((3, 2, 3, 3), dtype=complex))}), "numeric"),
    (lambda m: m.update({"0.weight.npy": _npy(np.zeros((2,), dtype=[("a", "<f4")]))}), "numeric"),
    (lambda m: m.update({"0.weight.npy": _npy(np.full((3, 2, 3, 3), np.nan))}), "NaN"),
    (lambda m: m.update({"99.weight.npy": _npy(np.ones(2))}), "unexpected arrays"),
    (lambda m: m.update({"notes.txt": b"hello"}), "not a relprop model file"),
    (lambda m: m.update({"0.weight.npy": _npy(np.ones(3))[:-5]}), "truncated|bytes hold"),
    (lambda m: m.update({"0.weight.npy": b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'  \n"}),
     "cannot read|header"),
    (lambda m: m.update({"0.weight.npy": b"\x93NUMPY\x03\x00" + bytes(12)}), "version"),
])
def test_inconsistent_arrays_raise_value_error(tmp_path, edit, match):
    desc, members = _model_members()
    edit(members)
    _load_error(_write(tmp_path / "m.npz", desc, members), match)


@pytest.mark.parametrize("meta,match", [
    (b"\xff\xfe not utf-8", "cannot read"),
    (b"{not json", "cannot read"),
    (b"[" * 100_000 + b"]" * 100_000, "cannot read"),  # recursion in the JSON parser
    (b"[1, 2]", "not a relprop model description"),
    (b"null", "not a relprop model description"),
])
def test_malformed_descriptions_raise_value_error(tmp_path, meta, match):
    _, members = _model_members()
    _load_error(_write(tmp_path / "m.npz", meta, members), match)


def test_counts_are_bounded(tmp_path, monkeypatch):
    desc, members = _model_members(NETS["mlp"])
    monkeypatch.setattr(rp_network, "MAX_NODES", 2)
    _load_error(_write(tmp_path / "layers.npz", desc, members), "1 to 2 entries")
    monkeypatch.setattr(rp_network, "MAX_DESCRIPTION_BYTES", 16)
    _load_error(_write(tmp_path / "desc.npz", desc, members), "more than the 16 allowed")
    path = tmp_path / "dup.npz"
    _write(path, desc, members)
    with pytest.warns(UserWarning, match="Duplicate name"), zipfile.ZipFile(path, "a") as zf:
        zf.writestr("0.weight.npy", _npy(np.zeros((4, 5))))
    _load_error(path, "uniquely named")


@pytest.mark.parametrize("n", [10**6, 2**40])
def test_absurd_thread_counts_raise_instead_of_killing_the_process(n):
    # libgomp ends the process ("Thread creation failed") when it cannot create the threads
    old = rp.get_num_threads()
    with pytest.raises(ValueError, match="threads is more than"):
        rp.set_num_threads(n)
    assert rp.get_num_threads() == old
    with pytest.raises(ValueError, match="threads is more than"):
        rp.ops.fma_peak_gflops(n)


def test_window_parameters_beyond_int32_are_refused():
    # padding 2**62 with stride 2**62 gives a 3-pixel output, yet h + 2 * padding overflows
    # int64 in the kernels' window geometry
    w = np.ones((1, 1, 3, 3))
    with pytest.raises(ValueError, match="stride must be at most"):
        rp.Conv2d(w, stride=2**62, padding=2**62)
    with pytest.raises(ValueError, match="padding must be at most"):
        rp.Conv2d(w, padding=(0, 2**62))
    with pytest.raises(ValueError, match="kernel_size must be at most"):
        rp.MaxPool2d((2**31, 1))
    assert rp.AvgPool2d(2**31 - 1, padding=2**30 - 1).kernel_size == (2**31 - 1,) * 2


@pytest.mark.parametrize("cls", [rp.MaxPool2d, rp.AvgPool2d])
def test_a_huge_padded_window_costs_no_more_than_the_input(cls):
    # kernel 2**31 - 1 with padding 2**30 - 1 (a model file may say so): every window covers
    # the whole 4x5 plane and two billion rows and columns of padding, which the kernels used
    # to step through one by one (about 10**10 steps per output: minutes for this call)
    k, p = 2**31 - 1, 2**30 - 1
    net = rp.Sequential([cls(k, stride=1, padding=p), rp.Flatten()], input_shape=(2, 4, 5))
    x = np.random.default_rng(0).normal(size=(3, 2, 4, 5))
    y = net(x).reshape(3, 2, 4, 5)
    planes = x.reshape(3, 2, 1, 20)
    want = planes.max(axis=-1) if cls is rp.MaxPool2d else planes.sum(axis=-1) / float(k) ** 2
    assert_allclose(y, np.broadcast_to(want[..., None], (3, 2, 1, 20)).reshape(3, 2, 4, 5),
                    rtol=1e-12)
    assert rp.gradient(net, x, np.ones((3, 40))).shape == x.shape


def _new_layer_nets():
    """One network per family of the layer types of issues 24.3 and 27."""
    r = np.random.default_rng(0)
    d = 4
    return [
        rp.Sequential([rp.Conv1d(r.normal(size=(4, 2, 3)), np.ones(4), stride=2, padding=1),
                       rp.PReLU(np.full(4, 0.2)), rp.MaxPool1d(2), rp.AvgPool1d(2, stride=1,
                                                                                padding=1),
                       rp.AdaptiveAvgPool1d(2), rp.LayerNorm(np.ones(2), np.zeros(2)),
                       rp.Hardtanh(-2, 2), rp.GELU("tanh")], input_shape=(2, 10)),
        rp.Sequential([rp.ConvTranspose2d(r.normal(size=(2, 3, 3, 3)), np.ones(3), stride=2,
                                          padding=1, output_padding=1), rp.LeakyReLU(0.1),
                       rp.Upsample(scale_factor=2, mode="bilinear"), rp.Upsample(size=(9, 9)),
                       rp.Pad((1, 1, 2, 2)), rp.Scale(np.ones((3, 1, 1))),
                       rp.LayerNorm(np.ones(3), axis="channels"), rp.SiLU()],
                      input_shape=(2, 3, 3)),
        rp.Graph([("q", rp.Dense(r.normal(size=(d, d))), ["input"]),
                  ("a", rp.Attention(2), ["q", "input", "input"]),
                  ("m", rp.Mul(), ["a", "input"]), ("p", rp.Permute((0, 2, 1)), ["m"]),
                  ("c", rp.Concat(axis=2), ["p", "p"]), ("r", rp.Reshape((-1,)), ["c"]),
                  ("s", rp.Slice(1, 0, 10), ["r"])], input_shape=(3, d), output="s"),
    ]


@pytest.mark.parametrize("k", range(3))
def test_bad_descriptions_of_new_layer_types_are_refused_or_run(tmp_path, k):
    """Every entry of every layer description set to a bad value (negative, zero, huge, of the
    wrong type) or left out: a ValueError on load, or a network that runs on its input shape;
    never another exception, and never an absurd allocation (a huge Upsample, Pad or pooling
    size is refused when the network is built)."""
    net = _new_layer_nets()[k]
    net.save(tmp_path / "ok.npz")
    desc, arrays = rp_network.read_model(tmp_path / "ok.npz")
    key = "layers" if "layers" in desc else "nodes"
    bads = [-1, 0, 1 << 40, 1 << 63, "x", None, [1, 2, 3], [], 1.5, True, [-5, -5],
            [1 << 40, 1 << 40]]
    x = np.random.default_rng(1).normal(size=(1,) + net.input_shape)
    for i, spec in enumerate(desc[key]):
        for name in [n for n in spec if n not in ("kind", "name", "inputs")]:
            for bad in bads + ["drop"]:
                d = json.loads(json.dumps(desc))
                if bad == "drop":
                    del d[key][i][name]
                else:
                    d[key][i][name] = bad
                rp_network.write_model(tmp_path / "bad.npz", d, arrays)
                try:
                    loaded = rp.load(tmp_path / "bad.npz")
                except ValueError:
                    continue
                assert (spec["kind"], name) != ("scale", "shape"), bad  # must agree with weight
                try:
                    assert np.isfinite(loaded(x)).all(), (spec["kind"], name, bad)
                except NonFiniteResult:  # LayerNorm's eps=0 (torch's too) on a padded zero
                    assert (spec["kind"], name, bad) == ("layernorm", "eps", 0)
