"""The gradient family: reference twins, finite differences, the tutorial's identities."""
import numpy as np
import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import reference as ref

import nets


@st.composite
def random_nets(draw, bias=True):
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    kind = draw(st.sampled_from(["mlp", "cnn"]))
    if kind == "mlp":
        sizes = tuple(draw(st.lists(st.integers(1, 12), min_size=2, max_size=4)))
        net = nets.mlp(rng, sizes, bias=bias)
    else:
        net = nets.cnn(rng, bias=bias, channels=draw(st.integers(1, 3)),
                       size=draw(st.integers(6, 10)), n_out=draw(st.integers(1, 4)))
    n = draw(st.integers(1, 3))
    x = rng.normal(size=(n,) + net.input_shape)
    n_out = net.output_shape[0]
    target = draw(st.one_of(st.integers(0, n_out - 1),
                            st.lists(st.integers(0, n_out - 1), min_size=n, max_size=n)))
    return net, x, target


METHODS = [(rp.gradient, ref.gradient), (rp.sensitivity, ref.sensitivity),
           (rp.gradient_x_input, ref.gradient_x_input), (rp.deconvnet, ref.deconvnet),
           (rp.guided_backprop, ref.guided_backprop)]


@pytest.mark.parametrize("method,twin", METHODS, ids=lambda m: getattr(m, "__name__", ""))
@given(problem=random_nets(), dtype=st.sampled_from([np.float32, np.float64]))
def test_methods_match_reference(method, twin, problem, dtype):
    net, x, target = problem
    x = x.astype(dtype)
    got = method(net, x, target)
    want = twin(net, x.astype(np.float64), target)
    assert got.dtype == dtype and got.shape == x.shape
    tol = 1e-10 if dtype == np.float64 else 2e-4
    assert_allclose(got, want, rtol=tol, atol=tol * (np.abs(want).max() + 1e-3))


def _min_abs_preactivation(net, x):
    acts = ref.forward(net, x)
    return min(np.abs(acts[i + 1]).min() for i, layer in enumerate(net.layers) if layer.linear)


@given(problem=random_nets(), seed=st.integers(0, 2**31))
def test_gradient_matches_central_differences(problem, seed):
    net, x, target = problem
    assume(_min_abs_preactivation(net, x) > 1e-3)  # stay off ReLU kinks
    u = np.random.default_rng(seed).normal(size=x.shape)
    h = 1e-6
    s = ref.seed(target, net(x))
    fd = ((s * net(x + h * u)).sum() - (s * net(x - h * u)).sum()) / (2 * h)
    got = np.vdot(rp.gradient(net, x, target), u)
    assert abs(got - fd) <= 1e-5 * (abs(fd) + np.abs(u).sum() * 1e-3)


@given(problem=random_nets(bias=False))
def test_gradient_x_input_sums_to_output_without_bias(problem):
    """The tutorial: for a bias-free ReLU network, sum_i x_i df/dx_i = f(x)."""
    net, x, target = problem
    f = (ref.seed(target, net(x)) * net(x)).sum(axis=1)
    R = rp.gradient_x_input(net, x, target)
    assert_allclose(R.reshape(len(x), -1).sum(axis=1), f, rtol=1e-9, atol=1e-12)


def test_taylor_zero_root_is_gradient_x_input_without_bias(rng):
    net = nets.cnn(rng, bias=False)
    x = rng.normal(size=(3, 3, 12, 12))
    assert_allclose(rp.taylor(net, x, 1, root="zero"), rp.gradient_x_input(net, x, 1), rtol=1e-9,
                    atol=1e-12)


def test_taylor_explicit_root_matches_reference(rng):
    net = nets.mlp(rng)
    x = rng.normal(size=(4, 12))
    root = rng.normal(size=(4, 12)) * 0.1
    assert_allclose(rp.taylor(net, x, [0, 1, 2, 3], root=root),
                    ref.taylor(net, x, [0, 1, 2, 3], root), rtol=1e-10, atol=1e-12)


def test_taylor_nearest_root_conserves_up_to_its_residual(rng):
    net = nets.mlp(rng, (8, 10, 10, 3))
    x = rng.normal(size=(20, 8))
    R, info = rp.taylor(net, x, 0, root="nearest", return_info=True, tol=1e-8, max_steps=100)
    f, f_root = ref.forward(net, x)[-1][:, 0], ref.forward(net, info.root)[-1][:, 0]
    # the root found is a root, and R is the decomposition at it
    assert np.all(np.abs(f_root) <= 1e-8 * np.maximum(np.abs(f), 1))
    assert_allclose(info.root_score, f_root, rtol=1e-9, atol=1e-12)
    assert_allclose(R, ref.taylor(net, x, 0, info.root), rtol=1e-10, atol=1e-12)
    assert_allclose(info.error, f - R.sum(axis=1), rtol=1e-9, atol=1e-12)
    # a ReLU net is piecewise linear: where x and its root share the activation pattern the
    # first-order error is zero, so sum R = f(x) - f(root) (3 or 4 of these 20 samples, as the
    # ISA's kernels round the search's steps: the root found differs in its last bits)
    same = [i for i in range(len(x))
            if all(np.array_equal(a[i] > 0, b[i] > 0) for a, b in
                   zip(ref.forward(net, x)[1:], ref.forward(net, info.root)[1:]))]
    assert same, "no sample shares its root's activation pattern: nothing to check"
    assert_allclose(R.sum(axis=1)[same], f[same] - f_root[same], rtol=1e-8, atol=1e-10)


@pytest.mark.parametrize("method", [rp.gradient, rp.gradient_x_input, rp.guided_backprop])
def test_methods_do_not_depend_on_thread_count(rng, method):
    net = nets.cnn(rng)
    x = rng.normal(size=(6, 3, 12, 12)).astype(np.float32)
    old = rp.get_num_threads()
    try:
        rp.set_num_threads(1)
        a = method(net, x, 2)
        rp.set_num_threads(2)
        b = method(net, x, 2)
    finally:
        rp.set_num_threads(old)
    assert_array_equal(a, b)


def test_batch_size_chunks_give_the_same_result(rng):
    net = nets.cnn(rng)
    x = rng.normal(size=(7, 3, 12, 12))
    t = [0, 1, 2, 3, 4, 0, 1]
    assert_allclose(rp.gradient(net, x, t, batch_size=3), rp.gradient(net, x, t), rtol=1e-13,
                    atol=1e-15)
    assert_allclose(rp.taylor(net, x, 2, root="nearest", batch_size=2),
                    rp.taylor(net, x, 2, root="nearest"), rtol=1e-9, atol=1e-12)


def test_array_target_is_the_seed(rng):
    net = nets.mlp(rng)
    x = rng.normal(size=(3, 12))
    seed = rng.normal(size=(3, 4))
    acts = ref.forward(net, x)
    assert_allclose(rp.gradient(net, x, seed), ref.backward(net, acts, seed), rtol=1e-10,
                    atol=1e-12)
