"""The GEMM core against NumPy (float64) on awkward shapes, for every instruction set this CPU
supports; thread-count and batch invariance; the ISA switch and its errors."""
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

from strategies import sum_tolerance

ISAS = ops.supported_isas()
# sizes around the register tiles (4x8, 6x16, 12x32) and cache blocks, primes, 1
SIZES = st.one_of(st.integers(1, 40), st.sampled_from([1, 2, 5, 6, 7, 12, 13, 16, 17, 31, 33,
                                                       47, 97, 130]))


def operands(m, n, k, dtype, trans_a, trans_b, seed):
    rng = np.random.default_rng(seed)
    a = rng.uniform(-1, 1, (k, m) if trans_a else (m, k)).astype(dtype)
    b = rng.uniform(-1, 1, (n, k) if trans_b else (k, n)).astype(dtype)
    return a, b


def check_product(c, a, b, trans_a, trans_b):
    """c against the float64 product within the error model of a k-term sum."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    a64, b64 = (a64.T if trans_a else a64), (b64.T if trans_b else b64)
    want = a64 @ b64
    assert c.dtype == a.dtype and c.shape == want.shape
    bound = np.abs(a64) @ np.abs(b64)
    assert np.all(np.abs(c - want) <= sum_tolerance(a.dtype, a64.shape[1], bound))


@given(m=SIZES, n=SIZES, k=st.one_of(st.just(0), SIZES), dtype=st.sampled_from([np.float32,
       np.float64]), trans_a=st.booleans(), trans_b=st.booleans(), seed=st.integers(0, 2**32 - 1))
def test_gemm_matches_numpy(m, n, k, dtype, trans_a, trans_b, seed):
    a, b = operands(m, n, k, dtype, trans_a, trans_b, seed)
    check_product(ops.gemm(a, b, trans_a, trans_b), a, b, trans_a, trans_b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("m,n,k", [(1, 1, 1), (1, 1000, 1), (1000, 1, 3), (3, 5, 0), (1, 1, 700),
                                   (13, 29, 257), (97, 53, 1031)])
def test_every_isa_matches_numpy(isa, m, n, k, dtype):
    for trans_a, trans_b in [(False, False), (True, False), (False, True), (True, True)]:
        a, b = operands(m, n, k, dtype, trans_a, trans_b, seed=m * n + k)
        check_product(ops.gemm(a, b, trans_a, trans_b), a, b, trans_a, trans_b)


def test_gemm_spans_every_cache_block(isa):
    # m, n, k larger than the mc, nc and kc blocks of every ISA, none a multiple of a tile
    a, b = operands(203, 2113, 611, np.float32, False, True, seed=7)
    check_product(ops.gemm(a, b, False, True), a, b, False, True)


def test_every_isa_close_to_generic(isa):
    a, b = operands(61, 77, 389, np.float32, False, False, seed=3)
    got = ops.gemm(a, b)
    ops.set_isa("generic")
    want = ops.gemm(a, b)
    bound = np.abs(a.astype(np.float64)) @ np.abs(b.astype(np.float64))
    assert np.all(np.abs(got - want) <= 2 * sum_tolerance(np.float32, 389, bound))


def test_k_zero_gives_zeros():
    c = ops.gemm(np.ones((3, 0), np.float32), np.ones((0, 4), np.float32))
    assert_array_equal(c, np.zeros((3, 4), np.float32))


def _with_threads(n, fn):
    old = rp.get_num_threads()
    rp.set_num_threads(n)
    try:
        return fn()
    finally:
        rp.set_num_threads(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(isa, dtype):
    rng = np.random.default_rng(11)
    u = lambda *shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    cases = []
    for m, n, k in [(5, 3001, 300), (301, 7, 300), (131, 257, 517), (1, 4099, 33)]:
        a, b = u(m, k), u(k, n)
        cases.append(lambda a=a, b=b: ops.gemm(a, b))
        cases.append(lambda a=a, b=b: ops.gemm(b, a, True, True))
    x, w, bias, gd = u(9, 300), u(67, 300), u(67), u(9, 67)
    cases.append(lambda: ops.dense_forward(x, w, bias))
    cases.append(lambda: ops.dense_backward(gd, w))
    for n in (1, 3, 4):  # one sample (GEMM split), odd and even batches (samples split)
        xc, wc, bc = u(n, 5, 13, 11), u(7, 5, 3, 3), u(7)
        w16, g16 = u(40, 5, 3, 3), u(n, 40, 13, 11)  # few inputs: backward through col2im
        cases.append(lambda g16=g16, w16=w16: ops.conv2d_backward(g16, w16, (13, 11), (1, 1),
                                                                  (1, 1)))
        for stride, pad in [((1, 1), (1, 1)), ((2, 1), (0, 1)), ((1, 1), (0, 0))]:
            y = ops.conv2d_forward(xc, wc, bc, stride, pad)
            g = u(*y.shape)
            cases.append(lambda xc=xc, wc=wc, bc=bc, s=stride, p=pad:
                         ops.conv2d_forward(xc, wc, bc, s, p))
            cases.append(lambda g=g, wc=wc, s=stride, p=pad:
                         ops.conv2d_backward(g, wc, (13, 11), s, p))
        w1 = u(8, 5, 1, 1)
        cases.append(lambda xc=xc, w1=w1: ops.conv2d_forward(xc, w1, None))
    for case in cases:
        one, two = _with_threads(1, case), _with_threads(2, case)
        assert_array_equal(one, two)


@pytest.mark.parametrize("c_in,c_out,k,stride,pad", [
    (5, 7, 3, 1, 1),    # stride 1: backward as the flipped convolution
    (2, 16, 3, 1, 1),   # few input channels: backward through col2im
    (3, 64, 3, 1, 0),
    (4, 6, 3, 2, 1),    # strided: col2im
    (6, 9, 1, 1, 0),    # 1x1: x read as a matrix
    (3, 5, (2, 4), (1, 2), (1, 2)),
])
@pytest.mark.parametrize("n", [1, 3])
def test_conv_paths_match_reference(isa, c_in, c_out, k, stride, pad, n):
    rng = np.random.default_rng(c_in * c_out)
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    k, stride, pad = pair(k), pair(stride), pair(pad)
    x = rng.uniform(-1, 1, (n, c_in, 19, 17))
    w = rng.uniform(-1, 1, (c_out, c_in) + k)
    b = rng.uniform(-1, 1, c_out)
    for dtype in (np.float32, np.float64):
        xs, ws, bs = x.astype(dtype), w.astype(dtype), b.astype(dtype)
        y = ops.conv2d_forward(xs, ws, bs, stride, pad)
        want = ref.conv2d_forward(x, w, b, stride, pad)
        bound = ref.conv2d_forward(np.abs(x), np.abs(w), np.abs(b), stride, pad)
        assert np.all(np.abs(y - want) <= sum_tolerance(dtype, w[0].size + 1, bound))
        g = rng.uniform(-1, 1, y.shape)
        gx = ops.conv2d_backward(g.astype(dtype), ws, x.shape[2:], stride, pad)
        want = ref.conv2d_backward(g, w, x.shape[2:], stride, pad)
        bound = ref.conv2d_backward(np.abs(g), np.abs(w), x.shape[2:], stride, pad)
        terms = c_out * w.shape[2] * w.shape[3]
        assert np.all(np.abs(gx - want) <= sum_tolerance(dtype, terms, bound))


def test_rows_do_not_depend_on_batch_size(isa):
    rng = np.random.default_rng(5)
    x, w = rng.uniform(-1, 1, (37, 513)).astype(np.float32), rng.uniform(-1, 1, (300, 513))
    w = w.astype(np.float32)
    full = ops.dense_forward(x, w)
    for i in (0, 17, 36):
        assert_array_equal(ops.dense_forward(x[i:i + 1], w), full[i:i + 1])
    xc = rng.uniform(-1, 1, (5, 3, 10, 10)).astype(np.float32)
    wc = rng.uniform(-1, 1, (6, 3, 3, 3)).astype(np.float32)
    assert_array_equal(ops.conv2d_forward(xc[2:3], wc, None, (1, 1), (1, 1)),
                       ops.conv2d_forward(xc, wc, None, (1, 1), (1, 1))[2:3])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n, i, o", [(1, 1, 1), (1, 784, 1024), (3, 37, 301), (17, 513, 300),
                                     (2, 600, 5)])
def test_packed_dense_weights_give_the_same_bits(isa, dtype, n, i, o):
    rng = np.random.default_rng(n + i + o)
    x, w = rng.uniform(-1, 1, (n, i)).astype(dtype), rng.uniform(-1, 1, (o, i)).astype(dtype)
    b, g = rng.uniform(-1, 1, o).astype(dtype), rng.uniform(-1, 1, (n, o)).astype(dtype)
    assert_array_equal(ops.dense_forward(x, w, b, packed=ops.dense_pack(w, True)),
                       ops.dense_forward(x, w, b))
    assert_array_equal(ops.dense_backward(g, w, packed=ops.dense_pack(w, False)),
                       ops.dense_backward(g, w))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_in, c_out, k, stride, pad", [(3, 8, 3, 1, 1), (5, 13, 3, 2, 0),
                                                         (7, 4, 1, 1, 0), (2, 30, 5, 1, 2)])
def test_packed_conv_weights_give_the_same_bits(isa, dtype, c_in, c_out, k, stride, pad):
    rng = np.random.default_rng(c_in * c_out + k)
    x = rng.uniform(-1, 1, (2, c_in, 11, 9)).astype(dtype)
    w = rng.uniform(-1, 1, (c_out, c_in, k, k)).astype(dtype)
    b = rng.uniform(-1, 1, c_out).astype(dtype)
    s, p = (stride, stride), (pad, pad)
    packed = ops.conv2d_pack(w)
    assert_array_equal(ops.conv2d_forward(x, w, b, s, p, packed=packed),
                       ops.conv2d_forward(x, w, b, s, p))
    split = c_out // 2
    for got, want in zip(ops.conv2d_forward_split(x, w, b, split, s, p, packed=packed),
                         ops.conv2d_forward_split(x, w, b, split, s, p)):
        assert_array_equal(got, want)
    # the backward pass: flipped kernel (stride 1, c_in * 8 > c_out) or W^T and col2im
    y = ops.conv2d_forward(x, w, b, s, p)
    g = rng.uniform(-1, 1, y.shape).astype(dtype)
    got = ops.conv2d_backward(g, w, x.shape[2:], s, p, packed=ops.conv2d_pack(w, True, s, p))
    assert_array_equal(got, ops.conv2d_backward(g, w, x.shape[2:], s, p))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_conv_loop_orders_give_the_same_bits(isa, dtype):
    # with the weights packed whole and the image's strips streamed, the driver runs C strip
    # by strip when the packed weights are small and block of steps by block otherwise
    # (128 x 576 floats: 295 KiB); each output channel gets the same sums in the same order
    rng = np.random.default_rng(3)
    x = rng.uniform(-1, 1, (2, 64, 20, 20)).astype(dtype)
    w = rng.uniform(-1, 1, (128, 64, 3, 3)).astype(dtype)
    full = ops.conv2d_forward(x, w, None, (1, 1), (1, 1))
    for lo, hi in ((0, 16), (16, 64), (64, 128)):
        assert_array_equal(full[:, lo:hi], ops.conv2d_forward(x, w[lo:hi], None, (1, 1), (1, 1)))
    want = ref.conv2d_forward(x.astype(np.float64), w.astype(np.float64), None, (1, 1), (1, 1))
    assert_allclose(full, want, rtol=1e-4 if dtype == np.float32 else 1e-10,
                    atol=1e-3 if dtype == np.float32 else 1e-10)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packings_of_other_weights_are_refused(isa, dtype):
    # Packed panels are padded to the register tile, so weights of different shapes can pack to
    # the same size: the shapes below are chosen from this ISA's tile so that each pair does,
    # and a check of the size alone would let the wrong weights through.
    blocks = ops.isa_table()["gemm"][np.dtype(dtype).name]
    mr, nr = blocks["mr"], blocks["nr"]
    assert mr > 1 and nr > 1
    ones = lambda *shape: np.ones(shape, dtype)  # noqa: E731

    def refused(call, packed, match="do not match"):
        with pytest.raises(ValueError, match=match):
            call(packed)

    # dense forward packs w.T (in, out) in strips of nr columns: out = 1 and out = nr
    small, big = ones(1, 3), ones(nr, 3)
    assert ops.dense_pack(small, True).data.size == ops.dense_pack(big, True).data.size
    refused(lambda p: ops.dense_forward(ones(2, 3), big, packed=p), ops.dense_pack(small, True))
    # dense backward packs w (out, in) in strips of nr columns: in = 1 and in = nr
    small, big = ones(3, 1), ones(3, nr)
    assert ops.dense_pack(small, False).data.size == ops.dense_pack(big, False).data.size
    refused(lambda p: ops.dense_backward(ones(2, 3), big, packed=p), ops.dense_pack(small, False))
    # conv forward packs w (c_out, c_in*kh*kw) in strips of mr rows: c_out = 1 and c_out = mr
    small, big = ones(1, 2, 3, 3), ones(mr, 2, 3, 3)
    assert ops.conv2d_pack(small).data.size == ops.conv2d_pack(big).data.size
    refused(lambda p: ops.conv2d_forward(ones(1, 2, 5, 5), big, packed=p), ops.conv2d_pack(small))
    refused(lambda p: ops.conv2d_forward_split(ones(1, 2, 5, 5), big, None, 1, packed=p),
            ops.conv2d_pack(small))
    # conv backward, flipped kernel (stride 1) packs (c_in, c_out*kh*kw) in strips of mr rows
    small, big = ones(1, 1, 3, 3), ones(1, mr, 3, 3)
    assert ops.conv2d_pack(small, True).gemm == "conv2d_backward_flipped"
    assert ops.conv2d_pack(small, True).data.size == ops.conv2d_pack(big, True).data.size
    refused(lambda p: ops.conv2d_backward(ones(1, 1, 3, 3), big, (5, 5), packed=p),
            ops.conv2d_pack(small, True))
    # conv backward with stride 2 packs W^T (c_in*kh*kw, c_out) in strips of mr rows
    small, big = ones(1, 1, 1, 1), ones(1, mr, 1, 1)
    s2 = (2, 2)
    assert ops.conv2d_pack(small, True, s2).gemm == "conv2d_backward"
    assert ops.conv2d_pack(small, True, s2).data.size == ops.conv2d_pack(big, True, s2).data.size
    refused(lambda p: ops.conv2d_backward(ones(1, 1, 3, 3), big, (5, 5), s2, packed=p),
            ops.conv2d_pack(small, True, s2))
    # the same shape in the other dtype packs to the same number of elements
    other = np.float64 if dtype == np.float32 else np.float32
    w = ones(4, 3)
    refused(lambda p: ops.dense_forward(ones(2, 3), w, packed=p),
            ops.dense_pack(w.astype(other), True))


def test_packings_for_another_gemm_or_isa_are_refused():
    w = np.ones((4, 3), dtype=np.float32)
    packed = ops.dense_pack(w, True)
    assert (packed.isa, packed.gemm, packed.dtype, packed.shape) == (ops.isa(), "dense_forward",
                                                                      "float32", (4, 3))
    assert not packed.data.flags.writeable
    with pytest.raises(TypeError, match="dense_pack or conv2d_pack"):
        ops.dense_forward(np.ones((1, 3), np.float32), w, packed=np.ones(16, np.float32))
    old = ops.isa()
    others = [i for i in ISAS if i != old]
    if others:
        try:
            ops.set_isa(others[0])
            packed = ops.dense_pack(w, True)
        finally:
            ops.set_isa(old)
        with pytest.raises(ValueError, match="packed for ISA"):
            ops.dense_forward(np.ones((1, 3), np.float32), w, packed=packed)
    # packings for another GEMM are refused, also where the shapes agree (square weights)
    sq = np.ones((6, 6), dtype=np.float32)
    with pytest.raises(ValueError, match="dense_forward"):
        ops.dense_backward(np.ones((1, 6), np.float32), sq, packed=ops.dense_pack(sq, True))
    w4 = np.ones((4, 4, 1, 1), dtype=np.float32)  # flipped backward GEMM: (4, 4) like forward
    g4, hw = np.ones((1, 4, 5, 5), np.float32), (5, 5)
    with pytest.raises(ValueError, match="conv2d_forward"):
        ops.conv2d_backward(g4, w4, hw, packed=ops.conv2d_pack(w4))
    with pytest.raises(ValueError, match="conv2d_backward_flipped"):
        ops.conv2d_forward(g4, w4, packed=ops.conv2d_pack(w4, True))
    with pytest.raises(ValueError, match="conv2d_backward"):  # W^T (stride 2) for a flipped one
        ops.conv2d_backward(g4, w4, hw, packed=ops.conv2d_pack(w4, True, (2, 2)))


def test_set_isa_switches_and_validates():
    old = ops.isa()
    try:
        for name in ISAS:
            ops.set_isa(name)
            assert ops.isa() == name
        ops.set_isa("auto")
        assert ops.isa() == ISAS[-1]
    finally:
        ops.set_isa(old)
    with pytest.raises(ValueError, match="unknown ISA 'sse9'"):
        ops.set_isa("sse9")
    with pytest.raises(TypeError):
        ops.set_isa(2)
    for name in {"avx2", "avx512"} - set(ISAS):
        with pytest.raises(ValueError, match="not supported"):
            ops.set_isa(name)
    assert ops.isa() == old
    assert "generic" in ISAS


def _import_with_isa(value):
    env = dict(os.environ, RELPROP_ISA=value)
    code = "import relprop.ops as o; print(o.isa())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          timeout=120)


@pytest.mark.parametrize("name", ISAS)
def test_environment_variable_selects_isa(name):
    out = _import_with_isa(name)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == name


def test_environment_variable_rejects_bad_values():
    out = _import_with_isa("fastest")
    assert out.returncode != 0
    assert "ValueError: RELPROP_ISA=fastest" in out.stderr
    for name in {"avx2", "avx512"} - set(ISAS):
        out = _import_with_isa(name)
        assert out.returncode != 0 and "not supported by this CPU" in out.stderr


def test_fma_peak_is_measured():
    peak = ops.fma_peak_gflops(1)
    assert np.isfinite(peak) and peak > 0
    with pytest.raises(ValueError):
        ops.fma_peak_gflops(0)
