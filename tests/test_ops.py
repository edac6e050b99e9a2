"""Every kernel against its NumPy twin, adjoint (dot-product) tests, thread invariance."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

from strategies import arrays, conv_problems, dense_problems, sum_tolerance, window_problems


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def check_sum(got, x, w, b, fwd, terms):
    """got vs the float64 reference, within the error model of a sum of `terms` products."""
    want = fwd(f64(x), f64(w), f64(b))
    bound = fwd(np.abs(f64(x)), np.abs(f64(w)), None if b is None else np.abs(f64(b)))
    assert got.dtype == x.dtype and got.shape == want.shape
    assert np.all(np.abs(got - want) <= sum_tolerance(x.dtype, terms, bound))


@given(dense_problems())
def test_dense_forward_matches_reference(p):
    x, w, b = p
    check_sum(ops.dense_forward(x, w, b), x, w, b, ref.dense_forward, x.shape[1] + 1)


@given(dense_problems())
def test_dense_backward_matches_reference(p):
    x, w, _ = p
    g = np.cos(np.arange(x.shape[0] * w.shape[0])).reshape(x.shape[0], w.shape[0]).astype(x.dtype)
    got = ops.dense_backward(g, w)
    check_sum(got, g, w, None, lambda g_, w_, _: ref.dense_backward(g_, w_), w.shape[0])


@given(st.one_of(conv_problems(), conv_problems(wide=True)))
def test_conv2d_forward_matches_reference(p):
    x, w, b, s, pad = p
    fwd = lambda x_, w_, b_: ref.conv2d_forward(x_, w_, b_, s, pad)  # noqa: E731
    check_sum(ops.conv2d_forward(x, w, b, s, pad), x, w, b, fwd, w[0].size + 1)


@given(conv_problems(), st.integers(2, 40), st.data())
def test_conv2d_forward_split_is_the_full_output_cut_in_two(p, c_out, data):
    # one GEMM on stacked weights written to two outputs: rows of whole tiles go to either,
    # a tile across the cut goes through a local tile; bitwise the plain forward's output
    x, w0, b0, s, pad = p
    rng = np.random.default_rng(c_out)
    w = rng.uniform(-1, 1, (c_out,) + w0.shape[1:]).astype(x.dtype)
    b = None if b0 is None else rng.uniform(-1, 1, c_out).astype(x.dtype)
    split = data.draw(st.integers(1, c_out - 1))
    top, bottom = ops.conv2d_forward_split(x, w, b, split, s, pad)
    full = ops.conv2d_forward(x, w, b, s, pad)
    assert_array_equal(top, full[:, :split])
    assert_array_equal(bottom, full[:, split:])
    ref_top, ref_bottom = ref.conv2d_forward_split(f64(x), f64(w), f64(b), split, s, pad)
    tol = 1e-4 if x.dtype == np.float32 else 1e-10
    assert_allclose(top, ref_top, rtol=tol, atol=tol * w[0].size)
    assert_allclose(bottom, ref_bottom, rtol=tol, atol=tol * w[0].size)


def test_conv2d_forward_split_rejects_a_bad_split():
    x, w = np.ones((1, 2, 5, 5)), np.ones((4, 2, 3, 3))
    for split in (0, 4, -1):
        with pytest.raises(ValueError, match="split"):
            ops.conv2d_forward_split(x, w, None, split)


@given(st.one_of(conv_problems(), conv_problems(wide=True)), st.integers(0, 2**31))
def test_conv2d_backward_matches_reference_and_is_adjoint(p, seed):
    x, w, _, s, pad = p
    y = ops.conv2d_forward(x, w, None, s, pad)
    g = np.random.default_rng(seed).uniform(-1, 1, y.shape).astype(x.dtype)
    got = ops.conv2d_backward(g, w, x.shape[2:], s, pad)
    bwd = lambda g_, w_, _: ref.conv2d_backward(g_, w_, x.shape[2:], s, pad)  # noqa: E731
    check_sum(got, g, w, None, bwd, w.shape[0] * w.shape[2] * w.shape[3])
    # adjoint: <conv(x), g> == <x, conv^T(g)>
    lhs, rhs = np.vdot(f64(y), f64(g)), np.vdot(f64(x), f64(got))
    scale = np.vdot(np.abs(f64(y)), np.abs(f64(g))) + np.vdot(np.abs(f64(x)), np.abs(f64(got)))
    assert abs(lhs - rhs) <= 1e-4 * scale + 1e-12


@given(window_problems(), st.sampled_from([np.float32, np.float64]), st.data())
def test_pooling_matches_reference(prob, dtype, data):
    n, c, h, w, k, s, pad = prob
    x = data.draw(arrays(dtype, (n, c, h, w)))
    y, arg = ops.maxpool2d_forward(x, k, s, pad)
    y_ref, arg_ref = ref.maxpool2d_forward(x, k, s, pad)
    assert_array_equal(y, y_ref)
    assert_array_equal(arg, arg_ref)  # ties go to the first maximum, as in torch
    g = np.linspace(-1, 1, y.size).reshape(y.shape).astype(dtype)
    assert_allclose(ops.maxpool2d_backward(g, arg, (h, w), k, s, pad),
                    ref.maxpool2d_backward(g, arg_ref, (h, w), k, s, pad), rtol=1e-6, atol=1e-6)
    tol = dict(rtol=1e-5, atol=1e-6) if dtype == np.float32 else dict(rtol=1e-12, atol=1e-14)
    ya = ops.avgpool2d_forward(x, k, s, pad)
    assert_allclose(ya, ref.avgpool2d_forward(x, k, s, pad), **tol)
    ga = np.linspace(-1, 1, ya.size).reshape(ya.shape).astype(dtype)
    assert_allclose(ops.avgpool2d_backward(ga, (h, w), k, s, pad),
                    ref.avgpool2d_backward(ga, (h, w), k, s, pad), **tol)


@given(st.sampled_from([np.float32, np.float64]), st.data())
def test_elementwise_match_reference(dtype, data):
    shape = data.draw(st.sampled_from([(1,), (3, 5), (2, 3, 4, 5)]))
    x = data.draw(arrays(dtype, shape))
    g = data.draw(arrays(dtype, shape))
    assert_array_equal(ops.relu_forward(x), ref.relu_forward(x))
    for mode in ("gradient", "deconvnet", "guided"):
        assert_array_equal(ops.relu_backward(g, x, mode), ref.relu_backward(g, x, mode))
    shift = data.draw(arrays(dtype, (1,) + shape[1:]))
    for eps in (0.0, 1e-6, 0.25):
        assert_allclose(ops.lrp_divide(g, x, eps), ref.lrp_divide(g, x, dtype(eps)), rtol=1e-6)
        # z - shift (one sample, broadcast): bitwise the division of the difference
        assert_array_equal(ops.lrp_divide(g, x, eps, shift), ops.lrp_divide(g, x - shift, eps))
        assert_allclose(ops.lrp_divide(g, x, eps, shift),
                        ref.lrp_divide(g, x, dtype(eps), shift), rtol=1e-6)


def test_lrp_divide_shift_must_be_one_sample():
    r = np.ones((3, 4))
    for bad in (np.ones((3, 4)), np.ones(4), np.ones((1, 5))):
        with pytest.raises(ValueError, match="one sample"):
            ops.lrp_divide(r, r, 0.1, bad)


@given(st.sampled_from([np.float32, np.float64]), st.data())
def test_stacked_shares_match_reference(dtype, data):
    shape = data.draw(st.sampled_from([(1, 1), (3, 5), (1, 4, 3, 2), (2, 3, 4, 5)]))
    r = data.draw(arrays(dtype, shape))
    # z+ >= 0 and z- <= 0 as the rules give them, with exact zeros (z = 0, 0 denominators)
    p = np.maximum(data.draw(arrays(dtype, shape)), 0)
    n = np.minimum(data.draw(arrays(dtype, shape)), 0)
    tol = dict(rtol=1e-5, atol=0) if dtype == np.float32 else dict(rtol=1e-12, atol=0)
    for eps in (0.0, 1e-6, 0.25):
        for gamma in (0.0, 0.25, 2.0):
            got = ops.lrp_gamma_shares(r, p, n, gamma, eps)
            assert got.shape == (shape[0], 2 * shape[1]) + shape[2:] and got.dtype == dtype
            assert_allclose(got, ref.lrp_gamma_shares(r, p, n, dtype(gamma), dtype(eps)), **tol)
            # the sign of a given z (the layer output) selects the denominator instead of p + n
            z = data.draw(arrays(dtype, shape))
            assert_allclose(ops.lrp_gamma_shares(r, p, n, gamma, eps, z=z),
                            ref.lrp_gamma_shares(r, p, n, dtype(gamma), dtype(eps), z=z), **tol)
        for alpha, beta in ((1.0, 0.0), (2.0, 1.0)):
            assert_allclose(ops.lrp_alpha_beta_shares(r, p, n, alpha, beta, eps),
                            ref.lrp_alpha_beta_shares(r, p, n, dtype(alpha), dtype(beta),
                                                      dtype(eps)), **tol)


def test_stacked_shares_reject_mismatched_shapes():
    r = np.ones((2, 3))
    with pytest.raises(ValueError, match="same shape"):
        ops.lrp_gamma_shares(r, np.ones((2, 4)), r, 0.25, 1e-6)
    with pytest.raises(ValueError, match="sample and a channel axis"):
        ops.lrp_alpha_beta_shares(np.ones(3), np.ones(3), np.ones(3), 2.0, 1.0, 1e-6)


def test_lrp_divide_zero_denominator_gives_zero():
    r = np.array([1.0, -2.0, 3.0])
    z = np.array([0.0, 0.0, 2.0])
    assert_array_equal(ops.lrp_divide(r, z, 0.0), [0.0, 0.0, 1.5])
    # sign(0) = +1: 0 is stabilized upwards
    assert_allclose(ops.lrp_divide(r, z, 0.5), [2.0, -4.0, 1.2])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_maxpool_2x2_fast_path_keeps_first_max_and_nan(dtype):
    # the 2x2 / stride-2 / unpadded kernel has its own vector code: every width from 2 to 21
    # (vector lanes and the scalar tail), odd heights, many ties (few distinct values), NaN and
    # infinities
    rng = np.random.default_rng(7)
    values = np.array([-np.inf, -1.0, 0.0, 0.0, 1.0, 1.0, np.inf, np.nan], dtype=dtype)
    for w in range(2, 22):
        x = rng.choice(values, size=(3, 2, 5 + w % 3, w))
        y, arg = ops.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
        y_ref, arg_ref = ref.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
        assert_array_equal(y, y_ref)
        assert_array_equal(arg, arg_ref)


def _kernels_once(rng, dtype):
    x = rng.normal(size=(5, 7, 19, 17)).astype(dtype)
    w = rng.normal(size=(9, 7, 3, 3)).astype(dtype)
    y = ops.conv2d_forward(x, w, None, (2, 1), (1, 1))
    d = rng.normal(size=(64, 300)).astype(dtype)
    dw = rng.normal(size=(70, 300)).astype(dtype)
    return [y, ops.conv2d_backward(y, w, x.shape[2:], (2, 1), (1, 1)),
            ops.dense_forward(d, dw), ops.dense_backward(ops.dense_forward(d, dw), dw),
            ops.maxpool2d_forward(x, (3, 3), (2, 2), (1, 1))[0],
            ops.avgpool2d_forward(x, (3, 2), (1, 2), (1, 0))]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(dtype):
    old = rp.get_num_threads()
    try:
        runs = []
        for t in (1, 2, 0):
            rp.set_num_threads(t)
            runs.append(_kernels_once(np.random.default_rng(1), dtype))
    finally:
        rp.set_num_threads(old)
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert_array_equal(a, b)


def test_core_rejects_unvalidated_input():
    """The binding converts nothing: a wrong dtype or a non-contiguous view is a TypeError."""
    from relprop import _core

    x = np.ones((2, 3), dtype=np.float32)
    with pytest.raises(TypeError):
        _core.dense_forward(x, np.ones((4, 3), dtype=np.float64), None, 1)
    with pytest.raises(TypeError):
        _core.dense_forward(np.ones((3, 2), dtype=np.float32).T, np.ones((4, 3), np.float32),
                            None, 1)
    with pytest.raises(ValueError, match="weight.shape"):
        _core.dense_forward(x, np.ones((4, 5), dtype=np.float32), None, 1)


def test_kernel_entry_points_take_any_layout_and_name_bad_dtypes():
    """Every kernel entry point of relprop.ops takes a non-contiguous float array (copied to
    C order), and refuses other dtypes, or operands of the other precision, with a TypeError
    naming the operand (not pybind's 'incompatible function arguments', nor a silent cast)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(4, 6, 6, 3)).transpose(0, 3, 1, 2)  # float64, not C-contiguous
    assert not x.flags.c_contiguous
    assert_array_equal(ops.relu_forward(x), np.maximum(x, 0))
    assert_array_equal(ops.relu_backward(x, x), x * (x > 0))
    y, argmax = ops.maxpool2d_forward(x, (2, 2), (2, 2))
    assert_array_equal(y, ops.maxpool2d_forward(np.ascontiguousarray(x), (2, 2), (2, 2))[0])
    assert_array_equal(ops.avgpool2d_forward(x, (2, 2), (2, 2)),
                       ops.avgpool2d_forward(np.ascontiguousarray(x), (2, 2), (2, 2)))
    a, w = rng.normal(size=(5, 4)).T, rng.normal(size=(3, 5))
    assert_allclose(ops.dense_forward(a, w), a @ w.T, rtol=1e-12)
    assert_allclose(ops.gemm(a, w.T), a @ w.T, rtol=1e-12)
    with pytest.raises(TypeError, match="x has dtype int64"):
        ops.relu_forward(np.arange(4))
    with pytest.raises(TypeError, match="x has dtype float32 but g has dtype float64"):
        ops.relu_backward(x, x.astype(np.float32))
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.relu_backward(x, x, "guided-backprop")
    with pytest.raises(TypeError, match="w has dtype float32 but x has dtype float64"):
        ops.dense_forward(a, w.astype(np.float32))
    with pytest.raises(TypeError, match="w has dtype float32 but g has dtype float64"):
        ops.dense_backward(a @ w.T, w.astype(np.float32))
    with pytest.raises(TypeError, match="b has dtype float32 but a has dtype float64"):
        ops.gemm(a, w.T.astype(np.float32))
    with pytest.raises(TypeError, match="r has dtype int64"):
        ops.lrp_divide(np.arange(3), np.ones(3), 0.0)
    with pytest.raises(TypeError, match="g has dtype int64"):
        ops.avgpool2d_backward(np.zeros((1, 1, 2, 2), np.int64), (4, 4), (2, 2), (2, 2))
