"""The fused layer steps (GEMM epilogues and prologues, conv + ReLU + 2x2 max pooling, the
backward pass from the pooled gradient, LRP-epsilon) against the unfused compositions they
stand for (bitwise), against their NumPy twins (error model), for every instruction set; thread
and batch invariance; NaN, ties and zero denominators; bad inputs."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from relprop import _core, ops
from relprop import reference as ref

from strategies import (
    DTYPES,
    arrays,
    conv_problems,
    dense_problems,
    f64,
    sum_tolerance,
    winograd_problems,
    with_threads,
)

P2 = ((2, 2), (2, 2), (0, 0))  # the fused pooling: window, stride, padding



def wino(tile):
    """The algorithm of Winograd's tile (None: the direct method, the planner's choice)."""
    return None if tile is None else f"winograd{tile}"

def signed(rng, shape, dtype, zeros=0.2):
    """Uniform values in [-1, 1] with a share of exact zeros (ReLU kinks, masks, ties, zero
    denominators)."""
    a = rng.uniform(-1, 1, shape)
    a[rng.random(shape) < zeros] = 0
    return a.astype(dtype)


@st.composite
def grouped_conv_problems(draw):
    """(x, w, b, stride, padding, dilation, groups): grouped, depthwise (any multiplier) and
    dilated convolutions besides plain ones."""
    dtype = draw(DTYPES)
    groups = draw(st.sampled_from([1, 1, 2, 3]))
    cg = draw(st.integers(1, 3))
    depthwise = draw(st.booleans())
    c = groups * cg if not depthwise else draw(st.integers(2, 4))
    groups = c if depthwise else groups
    og = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    d = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    eh, ew = d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1
    h = draw(st.integers(max(1, eh - 2 * ph), 11))
    w = draw(st.integers(max(1, ew - 2 * pw), 11))
    s = (draw(st.integers(1, 2)), draw(st.integers(1, 2)))
    n = draw(st.integers(1, 2))
    x = draw(arrays(dtype, (n, c, h, w)))
    wt = draw(arrays(dtype, (groups * og, c // groups, kh, kw)))
    b = draw(st.one_of(st.none(), arrays(dtype, (groups * og,))))
    return x, wt, b, s, (ph, pw), d, groups


def conv_kw(d, groups):
    return {"dilation": d, "groups": groups}


# ------------------------------------------------------------------------------------------
# Dense


@given(dense_problems(), st.integers(0, 2**31))
def test_dense_epilogues_are_the_unfused_passes(isa, p, seed):
    x, w, b = p
    rng = np.random.default_rng(seed)
    y = ops.dense_forward(x, w, b)
    assert_array_equal(ops.dense_forward(x, w, b, relu=True), ops.relu_forward(y))
    g = signed(rng, y.shape, x.dtype)
    mask = signed(rng, x.shape, x.dtype)
    assert_array_equal(ops.dense_backward(g, w, mask=mask),
                       ops.relu_backward(ops.dense_backward(g, w), mask))
    for eps in (0.0, 1e-6, 0.25):
        z = signed(rng, y.shape, x.dtype)  # exact zeros: 0 where the denominator is 0
        want = x * ops.dense_backward(ops.lrp_divide(g, z, eps), w)
        assert_array_equal(ops.dense_lrp_epsilon(g, z, x, w, eps), want)


@given(dense_problems(), st.integers(0, 2**31))
def test_dense_fused_match_reference(p, seed):
    x, w, b = p
    rng = np.random.default_rng(seed)
    terms = x.shape[1] + 1
    want = ref.dense_forward(f64(x), f64(w), f64(b), relu=True)
    bound = ref.dense_forward(np.abs(f64(x)), np.abs(f64(w)), None if b is None else np.abs(f64(b)))
    got = ops.dense_forward(x, w, b, relu=True)
    assert np.all(np.abs(got - want) <= sum_tolerance(x.dtype, terms, bound))
    g = signed(rng, (x.shape[0], w.shape[0]), x.dtype)
    z = (rng.uniform(0.5, 1, g.shape) * np.where(rng.random(g.shape) < .5, 1, -1)).astype(x.dtype)
    want = ref.dense_lrp_epsilon(f64(g), f64(z), f64(x), f64(w), 1e-3)
    s = np.abs(ref.lrp_divide(f64(g), f64(z), 1e-3))
    bound = np.abs(f64(x)) * (s @ np.abs(f64(w)))
    got = ops.dense_lrp_epsilon(g, z, x, w, 1e-3)
    assert np.all(np.abs(got - want) <= sum_tolerance(x.dtype, w.shape[0] + 2, bound))
    mask = signed(rng, x.shape, x.dtype)
    got = ops.dense_backward(g, w, mask=mask)
    want = ref.dense_backward(f64(g), f64(w), mask=f64(mask))
    bound = np.abs(f64(g)) @ np.abs(f64(w))
    assert np.all(np.abs(got - want) <= sum_tolerance(x.dtype, w.shape[0], bound))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_dense_epilogues_across_cache_blocks(isa, dtype):
    # m, n, k beyond the register tile and the mc / nc / kc blocks of the ISA in use: the
    # epilogue runs once, on the last block of steps, after every partial sum
    blk = ops.isa_table()["gemm"][np.dtype(dtype).name]
    rng = np.random.default_rng(5)
    n, i, o = 2 * blk["mr"] + 1, 2 * blk["kc"] + 3, blk["nc"] + blk["nr"] + 1
    x, w, b = signed(rng, (n, i), dtype), signed(rng, (o, i), dtype), signed(rng, o, dtype)
    assert_array_equal(ops.dense_forward(x, w, b, relu=True),
                       ops.relu_forward(ops.dense_forward(x, w, b)))
    g, mask = signed(rng, (n, i), dtype), signed(rng, (n, o), dtype)
    wt = np.ascontiguousarray(w.T)  # (i, o): dense_backward's gx is (n, o), k = i steps
    assert_array_equal(ops.dense_backward(g, wt, mask=mask),
                       ops.relu_backward(ops.dense_backward(g, wt), mask))
    z = signed(rng, (n, i), dtype)
    assert_array_equal(ops.dense_lrp_epsilon(g, z, mask, wt, 1e-4),
                       mask * ops.dense_backward(ops.lrp_divide(g, z, 1e-4), wt))
    for packed_f, packed_b in [(ops.dense_pack(w, True), ops.dense_pack(wt, False))]:
        assert_array_equal(ops.dense_forward(x, w, b, packed_f, relu=True),
                           ops.dense_forward(x, w, b, relu=True))
        assert_array_equal(ops.dense_backward(g, wt, packed_b, mask=mask),
                           ops.dense_backward(g, wt, mask=mask))
        assert_array_equal(ops.dense_lrp_epsilon(g, z, mask, wt, 1e-4, packed_b),
                           ops.dense_lrp_epsilon(g, z, mask, wt, 1e-4))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_epilogue_keeps_nan_and_makes_positive_zeros(isa, dtype):
    x = np.array([[1.0, np.nan, 0.0], [-1.0, 2.0, 0.0]], dtype)
    w = np.array([[1.0, 0.0, 0.0], [-1.0, 0.0, 0.0], [0.0, 0.0, 1.0]], dtype)
    b = np.array([0.0, -0.0, -0.0], dtype)
    y = ops.dense_forward(x, w, b, relu=True)
    want = ops.relu_forward(ops.dense_forward(x, w, b))
    assert_array_equal(y, want)
    assert np.isnan(y[0, 0]) and np.isnan(y[0, 1])
    assert not np.signbit(y).any()  # relu_forward gives +0, never -0
    g = np.array([[np.nan, -0.0, 3.0], [1.0, 1.0, 1.0]], dtype)
    mask = np.array([[np.nan, 1.0, 0.0], [-0.0, 2.0, -1.0]], dtype)
    eye = np.eye(3, dtype=dtype)
    assert_array_equal(ops.dense_backward(g, eye, mask=mask),
                       ops.relu_backward(ops.dense_backward(g, eye), mask))


# ------------------------------------------------------------------------------------------
# Convolutions: epilogues


@given(st.one_of(conv_problems(), conv_problems(wide=True)), st.integers(0, 2**31))
def test_conv_epilogues_are_the_unfused_passes(isa, p, seed):
    x, w, b, s, pad = p
    rng = np.random.default_rng(seed)
    hw = x.shape[2:]
    y = ops.conv2d_forward(x, w, b, s, pad)
    assert_array_equal(ops.conv2d_forward(x, w, b, s, pad, relu=True), ops.relu_forward(y))
    g = signed(rng, y.shape, x.dtype)
    mask = signed(rng, x.shape, x.dtype)
    assert_array_equal(ops.conv2d_backward(g, w, hw, s, pad, mask=mask),
                       ops.relu_backward(ops.conv2d_backward(g, w, hw, s, pad), mask))
    for eps in (0.0, 0.01):
        z = signed(rng, y.shape, x.dtype)
        assert_array_equal(ops.conv2d_lrp_epsilon(g, z, x, w, eps, s, pad),
                           x * ops.conv2d_backward(ops.lrp_divide(g, z, eps), w, hw, s, pad))


@given(grouped_conv_problems(), st.integers(0, 2**31))
def test_grouped_depthwise_dilated_conv_epilogues(isa, p, seed):
    x, w, b, s, pad, d, groups = p
    rng = np.random.default_rng(seed)
    kw = conv_kw(d, groups)
    hw = x.shape[2:]
    y = ops.conv2d_forward(x, w, b, s, pad, **kw)
    assert_array_equal(ops.conv2d_forward(x, w, b, s, pad, relu=True, **kw), ops.relu_forward(y))
    g = signed(rng, y.shape, x.dtype)
    mask = signed(rng, x.shape, x.dtype)
    gx = ops.conv2d_backward(g, w, hw, s, pad, **kw)
    assert_array_equal(ops.conv2d_backward(g, w, hw, s, pad, mask=mask, **kw),
                       ops.relu_backward(gx, mask))
    z = signed(rng, y.shape, x.dtype)
    assert_array_equal(ops.conv2d_lrp_epsilon(g, z, x, w, 1e-3, s, pad, **kw),
                       x * ops.conv2d_backward(ops.lrp_divide(g, z, 1e-3), w, hw, s, pad, **kw))
    # packed weights give the same bits
    pb = ops.conv2d_pack(w, True, s, pad, **kw)
    assert_array_equal(ops.conv2d_backward(g, w, hw, s, pad, pb, mask=mask, **kw),
                       ops.conv2d_backward(g, w, hw, s, pad, mask=mask, **kw))
    pooled, arg = ops.conv2d_forward_relu_maxpool(x, w, b, s, pad, **kw)
    if min(y.shape[2:]) >= 2:
        want_p, want_a = ops.maxpool2d_forward(ops.relu_forward(y), *P2)
        assert_array_equal(pooled, want_p)
        assert_array_equal(arg, want_a)
        gp = signed(rng, pooled.shape, x.dtype)
        gy = ops.relu_backward(ops.maxpool2d_backward(gp, arg, y.shape[2:], *P2), y)
        assert_array_equal(
            ops.conv2d_backward_pooled(gp, arg, w, hw, s, pad, pooled=pooled, mask=mask, **kw),
            ops.relu_backward(ops.conv2d_backward(gy, w, hw, s, pad, **kw), mask))
    else:
        assert pooled.size == 0 and arg.size == 0


@given(st.one_of(winograd_problems(), winograd_problems(wide=True)), st.integers(0, 2**31))
def test_winograd_epilogues_are_the_unfused_passes(isa, p, seed):
    x, w, b, pad, tile = p
    rng = np.random.default_rng(seed)
    hw = x.shape[2:]
    y = ops.conv2d_winograd_forward(x, w, b, pad, tile=tile)
    assert_array_equal(ops.conv2d_winograd_forward(x, w, b, pad, tile=tile, relu=True),
                       ops.relu_forward(y))
    g = signed(rng, y.shape, x.dtype)
    mask = signed(rng, x.shape, x.dtype)
    assert_array_equal(ops.conv2d_winograd_backward(g, w, hw, pad, tile=tile, mask=mask),
                       ops.relu_backward(ops.conv2d_winograd_backward(g, w, hw, pad, tile=tile),
                                         mask))
    z = signed(rng, y.shape, x.dtype)
    assert_array_equal(
        ops.conv2d_lrp_epsilon(g, z, x, w, 1e-2, 1, pad, algorithm=wino(tile)),
        x * ops.conv2d_winograd_backward(ops.lrp_divide(g, z, 1e-2), w, hw, pad, tile=tile))


# ------------------------------------------------------------------------------------------
# Convolution + ReLU + 2x2 max pooling, and its backward pass


def check_pooled(x, w, b, s, pad, rng, tile=None, **kw):
    """The fused forward and backward passes against the unfused compositions, bitwise."""
    hw = x.shape[2:]
    if tile is None:
        y = ops.conv2d_forward(x, w, b, s, pad, **kw)
    else:
        y = ops.conv2d_winograd_forward(x, w, b, pad, tile=tile)
    pooled, arg = ops.conv2d_forward_relu_maxpool(x, w, b, s, pad, algorithm=wino(tile), **kw)
    assert pooled.shape == arg.shape == y.shape[:2] + (y.shape[2] // 2, y.shape[3] // 2)
    assert arg.dtype == np.int64
    if min(y.shape[2:]) < 2:
        assert pooled.size == 0
        return
    want_p, want_a = ops.maxpool2d_forward(ops.relu_forward(y), *P2)
    assert_array_equal(pooled, want_p)
    assert_array_equal(arg, want_a)
    gp = signed(rng, pooled.shape, x.dtype)
    mask = signed(rng, x.shape, x.dtype)
    gy = ops.relu_backward(ops.maxpool2d_backward(gp, arg, y.shape[2:], *P2), y)
    assert_array_equal(ops.maxpool2d_backward(gp, arg, y.shape[2:], *P2, mask=pooled), gy)
    if tile is None:
        want = ops.conv2d_backward(gy, w, hw, s, pad, **kw)
    else:
        want = ops.conv2d_winograd_backward(gy, w, hw, pad, tile=tile)
    got = ops.conv2d_backward_pooled(gp, arg, w, hw, s, pad, pooled=pooled, algorithm=wino(tile),
                                     **kw)
    assert_array_equal(got, want)
    got = ops.conv2d_backward_pooled(gp, arg, w, hw, s, pad, pooled=pooled, mask=mask,
                                     algorithm=wino(tile), **kw)
    assert_array_equal(got, ops.relu_backward(want, mask))
    # without pooled: no ReLU between the convolution and the pooling
    gy = ops.maxpool2d_backward(gp, arg, y.shape[2:], *P2)
    if tile is None:
        want = ops.conv2d_backward(gy, w, hw, s, pad, **kw)
    else:
        want = ops.conv2d_winograd_backward(gy, w, hw, pad, tile=tile)
    assert_array_equal(ops.conv2d_backward_pooled(gp, arg, w, hw, s, pad, algorithm=wino(tile),
                                                  **kw), want)


@given(st.one_of(conv_problems(), conv_problems(wide=True)), st.floats(-1, 0.5),
       st.integers(0, 2**31))
def test_conv_relu_maxpool_is_the_unfused_composition(isa, p, shift, seed):
    x, w, b, s, pad = p
    # a negative bias shift makes many ReLU outputs 0: ties that go to the first window element
    b = (np.zeros(w.shape[0], x.dtype) if b is None else b) + x.dtype.type(shift)
    check_pooled(x, w, b, s, pad, np.random.default_rng(seed))


@given(st.one_of(winograd_problems(), winograd_problems(wide=True)), st.floats(-1, 0.5),
       st.integers(0, 2**31))
def test_winograd_relu_maxpool_is_the_unfused_composition(isa, p, shift, seed):
    x, w, b, pad, tile = p
    b = (np.zeros(w.shape[0], x.dtype) if b is None else b) + x.dtype.type(shift)
    check_pooled(x, w, b, 1, pad, np.random.default_rng(seed), tile=tile)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("tile", [None, 2, 4])
def test_relu_maxpool_keeps_nan_winners(isa, dtype, tile):
    rng = np.random.default_rng(3)
    x = signed(rng, (2, 3, 12, 14), dtype)
    x[0, 1, 4, 5] = np.nan
    x[1, :, 7:9, 2:4] = np.nan
    w, b = signed(rng, (5, 3, 3, 3), dtype), signed(rng, 5, dtype)
    pooled, arg = ops.conv2d_forward_relu_maxpool(x, w, b, 1, 1, algorithm=wino(tile))
    assert np.isnan(pooled).any()
    check_pooled(x, w, b, 1, 1, rng, tile=tile)


@pytest.mark.parametrize("c_out", [1, 17, 64])
@pytest.mark.parametrize("hw", [(2, 2), (9, 7), (40, 33), (5, 300)])
def test_relu_maxpool_bands_and_channel_splits(isa, c_out, hw):
    # tall and wide images (several bands of pooled rows; one pooled row per band where the
    # rows are wide), few and many channels (thread splits of the channels), 1x1 and strided
    rng = np.random.default_rng(c_out * hw[0])
    for k, s, pad in [(3, 1, 1), (1, 1, 0), (3, 2, 1)]:
        x = signed(rng, (3, 4, *hw), np.float32)
        w, b = signed(rng, (c_out, 4, k, k), np.float32), signed(rng, c_out, np.float32)
        for nt in (1, 2):
            with_threads(nt, check_pooled, x, w, b, s, pad, rng)


def test_relu_maxpool_bitwise_the_same_for_any_threads_batch_and_packing(isa):
    rng = np.random.default_rng(11)
    x = signed(rng, (3, 8, 21, 19), np.float32)
    w, b = signed(rng, (24, 8, 3, 3), np.float32), signed(rng, 24, np.float32)
    for tile in (None, 2, 4):
        full = with_threads(1, ops.conv2d_forward_relu_maxpool, x, w, b, 1, 1,
                            algorithm=wino(tile))
        gp = signed(rng, full[0].shape, np.float32)
        back = with_threads(1, ops.conv2d_backward_pooled, gp, full[1], w, x.shape[2:], 1, 1,
                            pooled=full[0], mask=x, algorithm=wino(tile))
        packed = (ops.conv2d_pack(w) if tile is None else ops.conv2d_winograd_pack(w, tile))
        packed_b = (ops.conv2d_pack(w, True, 1, 1) if tile is None
                    else ops.conv2d_winograd_pack(w, tile, backward=True))
        for nt in (2, 0):
            got = with_threads(nt, ops.conv2d_forward_relu_maxpool, x, w, b, 1, 1, packed,
                               algorithm=wino(tile))
            assert_array_equal(got[0], full[0])
            assert_array_equal(got[1], full[1])
            assert_array_equal(with_threads(nt, ops.conv2d_backward_pooled, gp, full[1], w,
                                            x.shape[2:], 1, 1, packed_b, pooled=full[0], mask=x,
                                            algorithm=wino(tile)), back)
        for i in range(len(x)):
            one = ops.conv2d_forward_relu_maxpool(x[i:i + 1], w, b, 1, 1, algorithm=wino(tile))
            assert_array_equal(one[0], full[0][i:i + 1])
            assert_array_equal(one[1], full[1][i:i + 1])
            assert_array_equal(ops.conv2d_backward_pooled(
                gp[i:i + 1], full[1][i:i + 1], w, x.shape[2:], 1, 1, pooled=full[0][i:i + 1],
                mask=x[i:i + 1], algorithm=wino(tile)), back[i:i + 1])
        if tile:  # every Winograd block size (tasks of blocks, or of channels per block)
            for nt in (1, 2):
                for block_tiles in (1, 3, 24):
                    got = _core.conv2d_forward_relu_maxpool(
                        x, w, b, (1, 1), (1, 1), nt, None, (1, 1), 1,
                        ops.CONV_ALGORITHMS.index(wino(tile)), block_tiles)
                    assert_array_equal(got[0], full[0])
                    assert_array_equal(got[1], full[1])


def test_fused_epilogues_do_not_depend_on_threads(isa):
    rng = np.random.default_rng(2)
    x = signed(rng, (4, 6, 15, 13), np.float32)
    w, b = signed(rng, (10, 6, 3, 3), np.float32), signed(rng, 10, np.float32)
    g = signed(rng, (4, 10, 15, 13), np.float32)
    xd, wd, bd = signed(rng, (37, 300), np.float32), signed(rng, (70, 300), np.float32), None
    gd = signed(rng, (37, 70), np.float32)
    cases = [
        lambda: ops.conv2d_forward(x, w, b, 1, 1, relu=True),
        lambda: ops.conv2d_backward(g, w, x.shape[2:], 1, 1, mask=x),
        lambda: ops.conv2d_lrp_epsilon(g, g, x, w, 1e-3, 1, 1),
        lambda: ops.conv2d_winograd_forward(x, w, b, 1, tile=4, relu=True),
        lambda: ops.conv2d_winograd_backward(g, w, x.shape[2:], 1, tile=2, mask=x),
        lambda: ops.conv2d_lrp_epsilon(g, g, x, w, 1e-3, 1, 1, algorithm=wino(4)),
        lambda: ops.dense_forward(xd, wd, bd, relu=True),
        lambda: ops.dense_backward(gd, wd, mask=xd),
        lambda: ops.dense_lrp_epsilon(gd, gd, xd, wd, 0.0),
    ]
    for case in cases:
        one = with_threads(1, case)
        for nt in (2, 0):
            assert_array_equal(with_threads(nt, case), one)


# ------------------------------------------------------------------------------------------
# Against the NumPy twins (the fused ops must also be the right maths, not only the same as
# the unfused ops)


@given(st.one_of(conv_problems(), conv_problems(wide=True)), st.integers(0, 2**31))
def test_conv_fused_match_reference(p, seed):
    x, w, b, s, pad = p
    rng = np.random.default_rng(seed)
    hw = x.shape[2:]
    tol_terms = w[0].size + 1
    want = ref.conv2d_forward(f64(x), f64(w), f64(b), s, pad, relu=True)
    bound = ref.conv2d_forward(np.abs(f64(x)), np.abs(f64(w)),
                               None if b is None else np.abs(f64(b)), s, pad)
    got = ops.conv2d_forward(x, w, b, s, pad, relu=True)
    assert np.all(np.abs(got - want) <= sum_tolerance(x.dtype, tol_terms, bound))
    g = signed(rng, got.shape, x.dtype)
    z = rng.uniform(0.5, 1, got.shape) * np.where(rng.random(got.shape) < .5, 1, -1)
    z = z.astype(x.dtype)
    want = ref.conv2d_lrp_epsilon(f64(g), f64(z), f64(x), f64(w), 1e-3, s, pad)
    sabs = np.abs(ref.lrp_divide(f64(g), f64(z), 1e-3))
    bound = np.abs(f64(x)) * ref.conv2d_backward(sabs, np.abs(f64(w)), hw, s, pad)
    got = ops.conv2d_lrp_epsilon(g, z, x, w, 1e-3, s, pad)
    terms = w.shape[0] * w.shape[2] * w.shape[3] + 2
    assert np.all(np.abs(got - want) <= sum_tolerance(x.dtype, terms, bound))
    y = ops.conv2d_forward(x, w, b, s, pad)
    if min(y.shape[2:]) >= 2:
        pooled, arg = ops.conv2d_forward_relu_maxpool(x, w, b, s, pad)
        # the reference pools the float64 convolution: compare values within the error model,
        # and the winners where the window's maximum is unambiguous
        want_p, want_a = ref.conv2d_forward_relu_maxpool(f64(x), f64(w), f64(b), s, pad)
        bound_p = ref.maxpool2d_forward(
            ref.conv2d_forward(np.abs(f64(x)), np.abs(f64(w)),
                               None if b is None else np.abs(f64(b)), s, pad), 2, 2)[0]
        tol = sum_tolerance(x.dtype, tol_terms, bound_p)
        assert np.all(np.abs(pooled - want_p) <= tol)
        n, c, ph, pw = pooled.shape
        y64 = ref.relu_forward(ref.conv2d_forward(f64(x), f64(w), f64(b), s, pad))
        top = np.sort(y64[:, :, :2 * ph, :2 * pw].reshape(n, c, ph, 2, pw, 2)
                      .transpose(0, 1, 2, 4, 3, 5).reshape(n, c, ph, pw, 4))
        clear = (top[..., 3] - top[..., 2] > 2 * tol) & (top[..., 3] > tol)
        assert_array_equal(arg[clear], want_a[clear])
        gp = signed(rng, pooled.shape, x.dtype)
        mask = signed(rng, x.shape, x.dtype)
        # with the relprop winners, the twin's backward pass is the same maths
        got = ops.conv2d_backward_pooled(gp, arg, w, hw, s, pad, pooled=pooled, mask=mask)
        want = ref.conv2d_backward_pooled(f64(gp), arg, f64(w), hw, s, pad, pooled=f64(pooled),
                                          mask=f64(mask))
        bound = ref.conv2d_backward_pooled(np.abs(f64(gp)), arg, np.abs(f64(w)), hw, s, pad)
        assert np.all(np.abs(got - want) <= sum_tolerance(x.dtype, terms, bound))


@given(winograd_problems(), st.integers(0, 2**31))
def test_winograd_fused_match_reference(p, seed):
    x, w, b, pad, tile = p
    rng = np.random.default_rng(seed)
    got = ops.conv2d_winograd_forward(x, w, b, pad, tile=tile, relu=True)
    want = ref.conv2d_winograd_forward(f64(x), f64(w), f64(b), pad, tile=tile, relu=True)
    bound = ref.winograd_abs(x, w, pad, tile=tile)
    if b is not None:
        bound = bound + np.abs(f64(b))[None, :, None, None]
    tol = sum_tolerance(x.dtype, w.shape[1] + 4 * (tile + 2) + 2, bound)
    assert np.all(np.abs(got - want) <= tol)
    if min(got.shape[2:]) >= 2:
        pooled, _ = ops.conv2d_forward_relu_maxpool(x, w, b, 1, pad, algorithm=wino(tile))
        want_p, _ = ref.conv2d_forward_relu_maxpool(f64(x), f64(w), f64(b), 1, pad,
                                                    algorithm=wino(tile))
        assert np.all(np.abs(pooled - want_p) <= ref.maxpool2d_forward(tol, 2, 2)[0])
    g = signed(rng, got.shape, x.dtype)
    mask = signed(rng, x.shape, x.dtype)
    gx = ops.conv2d_winograd_backward(g, w, x.shape[2:], pad, tile=tile, mask=mask)
    want = ref.conv2d_winograd_backward(f64(g), f64(w), x.shape[2:], pad, tile=tile,
                                        mask=f64(mask))
    bound = ref.winograd_abs(g, w, pad, tile=tile, backward=True)
    assert np.all(np.abs(gx - want) <= sum_tolerance(x.dtype, w.shape[0] + 4 * (tile + 2) + 2,
                                                     bound))


def test_reference_twins_are_the_compositions():
    # the twins of the fused steps, checked once against the plain twins they are written from
    rng = np.random.default_rng(9)
    x, w, b = rng.normal(size=(2, 3, 9, 8)), rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    y = ref.conv2d_forward(x, w, b, 1, 1)
    pooled, arg = ref.conv2d_forward_relu_maxpool(x, w, b, 1, 1)
    want_p, want_a = ref.maxpool2d_forward(np.maximum(y, 0), 2, 2)
    assert_array_equal(pooled, want_p)
    assert_array_equal(arg, want_a)
    g = rng.normal(size=pooled.shape)
    gy = np.zeros(y.shape)
    for n, c, i, j in np.ndindex(*g.shape):
        a = arg[n, c, i, j]
        if pooled[n, c, i, j] > 0:
            gy[n, c, a // y.shape[3], a % y.shape[3]] += g[n, c, i, j]
    assert_array_equal(ref.conv2d_backward_pooled(g, arg, w, (9, 8), 1, 1, pooled=pooled),
                       ref.conv2d_backward(gy, w, (9, 8), 1, 1))


# ------------------------------------------------------------------------------------------
# Bad inputs


def test_fused_ops_reject_bad_inputs():
    x = np.ones((2, 3, 8, 8), np.float32)
    w = np.ones((4, 3, 3, 3), np.float32)
    g = np.ones((2, 4, 8, 8), np.float32)
    pooled, arg = ops.conv2d_forward_relu_maxpool(x, w, None, 1, 1)
    with pytest.raises(ValueError, match="mask must have shape"):
        ops.conv2d_backward(g, w, (8, 8), 1, 1, mask=np.ones((2, 3, 8, 7), np.float32))
    with pytest.raises(TypeError, match="mask has dtype float64"):
        ops.conv2d_backward(g, w, (8, 8), 1, 1, mask=np.ones((2, 3, 8, 8)))
    with pytest.raises(ValueError, match="mask must have shape"):
        ops.dense_backward(np.ones((2, 4), np.float32), np.ones((4, 5), np.float32),
                           mask=np.ones((2, 4), np.float32))
    with pytest.raises(ValueError, match="pool"):
        ops.conv2d_forward_relu_maxpool(x, w, None, 1, 1, pool=3)
    with pytest.raises(ValueError, match="'winograd4' cannot run the forward pass of a 5x5"):
        ops.conv2d_forward_relu_maxpool(x, np.ones((4, 3, 5, 5), np.float32), None, 1, 2,
                                        algorithm=wino(4))
    with pytest.raises(ValueError, match="stride"):
        ops.conv2d_forward_relu_maxpool(x, w, None, 2, 1, algorithm=wino(4))
    with pytest.raises(ValueError, match="algorithm must be one of"):
        ops.conv2d_lrp_epsilon(g, g, x, w, 0.1, 1, 1, algorithm=wino(3))
    with pytest.raises(ValueError, match="grad must have shape"):
        ops.conv2d_backward_pooled(g, arg, w, (8, 8), 1, 1)
    with pytest.raises(ValueError, match="argmax must have the shape"):
        ops.conv2d_backward_pooled(np.ones_like(pooled), arg[:, :2], w, (8, 8), 1, 1)
    with pytest.raises(TypeError, match="int64"):
        ops.conv2d_backward_pooled(np.ones_like(pooled), arg.astype(np.int32), w, (8, 8), 1, 1)
    with pytest.raises(ValueError, match="pooled must have shape"):
        ops.conv2d_backward_pooled(np.ones_like(pooled), arg, w, (8, 8), 1, 1, pooled=g)
    with pytest.raises(ValueError, match="r must have shape"):
        ops.conv2d_lrp_epsilon(g[:, :, :7], g, x, w, 0.1, 1, 1)
    with pytest.raises(ValueError, match="z must have shape"):
        ops.dense_lrp_epsilon(np.ones((2, 4), np.float32), np.ones((2, 5), np.float32),
                              np.ones((2, 5), np.float32), np.ones((4, 5), np.float32), 0.1)
    with pytest.raises(ValueError, match="disjoint windows"):
        ops.maxpool2d_backward(pooled, arg, (8, 8), (3, 3), (2, 2), (1, 1), mask=pooled)
    with pytest.raises(ValueError, match="one output"):
        ops.conv2d_winograd_forward(x, w, None, 1, relu=True, split=2)
    with pytest.raises(ValueError, match="packed"):
        ops.conv2d_forward_relu_maxpool(x, w, None, 1, 1, ops.conv2d_winograd_pack(w, 4))
    with pytest.raises(ValueError, match="packed"):
        ops.conv2d_forward_relu_maxpool(x, w, None, 1, 1, ops.conv2d_pack(w), algorithm=wino(4))


def test_core_rejects_unvalidated_fused_input():
    # the bindings convert nothing: a transposed view or a mixed dtype is a TypeError
    g = np.ones((3, 4), np.float32)
    w = np.ones((4, 5), np.float32)
    with pytest.raises(TypeError):
        _core.dense_backward(g, w, 1, None, np.ones((5, 3), np.float32).T)
    with pytest.raises(TypeError):
        _core.dense_lrp_epsilon(g, g.astype(np.float64), np.ones((3, 5), np.float32), w, 0.1, 1)


# ------------------------------------------------------------------------------------------
# Max pooling's row path (any window up to 64 taps, column stride up to 4): the winners of the
# generic loops, bitwise


@st.composite
def pooling_problems(draw):
    """(x, kernel, stride, padding) on wide rows, with ties (few distinct values), NaN and
    infinities."""
    dtype = draw(DTYPES)
    kh, kw = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    sh, sw = draw(st.integers(1, 4)), draw(st.integers(1, 5))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 12))
    w = draw(st.integers(max(1, kw - 2 * pw), 70))
    n, c = draw(st.integers(1, 2)), draw(st.integers(1, 3))
    values = st.sampled_from([-2.0, -1.0, 0.0, -0.0, 1.0, 3.0, np.inf, -np.inf, np.nan])
    x = draw(st.one_of(arrays(dtype, (n, c, h, w)),
                       hnp_arrays(dtype, (n, c, h, w), values)))
    return x, (kh, kw), (sh, sw), (ph, pw)


def hnp_arrays(dtype, shape, elements):
    from hypothesis.extra import numpy as hnp

    return hnp.arrays(dtype, shape, elements=elements)


@given(pooling_problems())
def test_maxpool_rows_match_reference(p):
    x, k, s, pad = p
    y, arg = ops.maxpool2d_forward(x, k, s, pad)
    y_ref, arg_ref = ref.maxpool2d_forward(x, k, s, pad)
    assert_array_equal(y, y_ref)
    assert_array_equal(arg, arg_ref)  # the first maximum (and the first NaN) wins


def test_maxpool_3x3_stride2_stem(isa):
    # ResNet's stem pooling on a realistic plane, with ties (a ReLU's zeros) and a NaN
    rng = np.random.default_rng(4)
    for dtype in (np.float32, np.float64):
        x = np.maximum(rng.standard_normal((2, 5, 112, 112)), 0).astype(dtype)
        x[1, 2, 50, 51] = np.nan
        for k, s, pad in [((3, 3), (2, 2), (1, 1)), ((3, 3), (2, 2), (0, 0)),
                          ((3, 3), (1, 1), (1, 1)), ((2, 3), (2, 3), (1, 1))]:
            xs = np.ascontiguousarray(x[:, :, :23, :37])
            y, arg = ops.maxpool2d_forward(xs, k, s, pad)
            y_ref, arg_ref = ref.maxpool2d_forward(xs, k, s, pad)
            assert_array_equal(y, y_ref)
            assert_array_equal(arg, arg_ref)
        one = with_threads(1, ops.maxpool2d_forward, x, (3, 3), (2, 2), (1, 1))
        two = with_threads(2, ops.maxpool2d_forward, x, (3, 3), (2, 2), (1, 1))
        assert_array_equal(one[0], two[0])
        assert_array_equal(one[1], two[1])
        assert np.isnan(one[0][1, 2]).any()


# ------------------------------------------------------------------------------------------
# Batch-1 Dense (GEMV paths): bitwise the rows of the batched GEMM, packed or not


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("n_in,n_out", [(1, 1), (7, 3), (300, 70), (777, 1031), (40, 33000)])
def test_one_sample_dense_is_its_row_of_the_batch(isa, dtype, n_in, n_out):
    # one sample takes the GEMV paths (row-major w read in rank-1 updates; w^T with A packed
    # first); its bits must be those of its row in any batch, with every epilogue and the
    # LRP prologue, for any thread count (33000 outputs: more than one chunk of block sums)
    rng = np.random.default_rng(n_in * n_out)
    x, w = signed(rng, (5, n_in), dtype), signed(rng, (n_out, n_in), dtype)
    b = signed(rng, n_out, dtype)
    g, z = signed(rng, (5, n_out), dtype), signed(rng, (5, n_out), dtype)
    wt = np.ascontiguousarray(w.T)  # as a backward weight: rows of n_out
    gt, zt = signed(rng, (5, n_in), dtype), signed(rng, (5, n_in), dtype)
    pf, pb = ops.dense_pack(w, True), ops.dense_pack(wt, False)
    calls = [
        lambda s: ops.dense_forward(x[s], w, b),
        lambda s: ops.dense_forward(x[s], w, b, relu=True),
        lambda s: ops.dense_forward(x[s], w, None, pf, relu=True),
        lambda s: ops.dense_backward(g[s], w),
        lambda s: ops.dense_backward(g[s], w, mask=x[s]),
        lambda s: ops.dense_backward(gt[s], wt, pb, mask=g[s]),
        lambda s: ops.dense_lrp_epsilon(g[s], z[s], x[s], w, 1e-3),
        lambda s: ops.dense_lrp_epsilon(gt[s], zt[s], g[s], wt, 0.0, pb),
    ]
    for call in calls:
        full = with_threads(1, call, slice(None))
        for nt in (1, 2):
            for i in (0, 3):
                assert_array_equal(with_threads(nt, call, slice(i, i + 1)), full[i:i + 1])
