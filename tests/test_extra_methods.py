"""SmoothGrad and Integrated Gradients: reference twins, batching, completeness, errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import relprop as rp
from relprop import reference as ref
from relprop.averaged import QUADRATURES
from relprop.reference import extra as ref_extra

import nets


@st.composite
def problems(draw, bias=True):
    """A small random MLP or CNN, a batch, a target (int, per-sample ints or a float seed) and a
    batch_size (None or 1..7 rows)."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        net = nets.mlp(rng, tuple(draw(st.lists(st.integers(1, 10), min_size=2, max_size=4))),
                       bias=bias)
    else:
        net = nets.cnn(rng, bias=bias, channels=draw(st.integers(1, 2)),
                       size=draw(st.integers(6, 8)), n_out=draw(st.integers(1, 3)))
    n = draw(st.integers(1, 3))
    x = rng.normal(size=(n,) + net.input_shape)
    n_out = net.output_shape[0]
    kind = draw(st.sampled_from(["int", "ints", "seed"]))
    if kind == "int":
        target = draw(st.integers(0, n_out - 1))
    elif kind == "ints":
        target = draw(st.lists(st.integers(0, n_out - 1), min_size=n, max_size=n))
    else:
        target = rng.normal(size=(n, n_out))
    return net, x, target, draw(st.one_of(st.none(), st.integers(1, 7)))


@given(problem=problems(), n=st.integers(1, 5), sigma=st.floats(0, 0.5), seed=st.integers(0, 99))
def test_smoothgrad_matches_reference(problem, n, sigma, seed):
    net, x, target, batch_size = problem
    got = rp.smoothgrad(net, x, target, n=n, sigma=sigma, seed=seed, batch_size=batch_size)
    want = ref_extra.smoothgrad(net, x, target, n, sigma, seed)
    assert got.shape == x.shape and got.dtype == np.float64
    assert_allclose(got, want, rtol=1e-9, atol=1e-12 * (np.abs(want).max() + 1))


def test_smoothgrad_float32_and_explain(rng):
    net = nets.cnn(rng)
    x = rng.normal(size=(4, 3, 12, 12))
    want = ref_extra.smoothgrad(net, x, [0, 1, 2, 3], 6, 0.2, 7)
    got = rp.explain(net, x.astype(np.float32), [0, 1, 2, 3], method="smoothgrad", n=6,
                     sigma=0.2, seed=7, batch_size=5)
    assert got.dtype == np.float32
    assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


def test_smoothgrad_bits_depend_on_the_seed_and_sample_index_only(rng):
    """Sample i's noise comes from (seed, sample_offset + i): the same bits for any batch
    size (a sample's copies cut between batches of rows included), thread count, and for any
    slice of the input explained with its offset, samples in any order with their indices;
    identical samples at other indices get other noise; a Generator seed still works
    in-process (blocks drawn sample after sample)."""
    net = rp.models.digits_cnn()
    x = rp.models.digits_data()[0][:23]
    x[7] = x[3]
    kw = dict(n=5, sigma=0.3, seed=9)
    whole = rp.smoothgrad(net, x, "pred", **kw)
    assert_allclose(whole, ref_extra.smoothgrad(net, x.astype(np.float64),
                                                net(x).argmax(axis=1), 5, 0.3, 9),
                    rtol=2e-3, atol=2e-4 * np.abs(whole).max())
    assert not np.array_equal(whole[3], whole[7])
    old = rp.get_num_threads()
    try:
        for threads in (1, 2):
            rp.set_num_threads(threads)
            for batch_size in (1, 3, 7, 64):  # rows of (sample, copy); 5 copies per sample
                np.testing.assert_array_equal(
                    rp.smoothgrad(net, x, "pred", batch_size=batch_size, **kw), whole,
                    strict=True)
            for a, b in ((0, 4), (4, 5), (5, 23), (11, 17)):
                got = rp.explain(net, x[a:b], "pred", "smoothgrad", sample_offset=a, **kw)
                np.testing.assert_array_equal(got, whole[a:b], strict=True)
            pick = [11, 3, 3, 20]  # each sample's own index: its noise in the whole
            got = rp.smoothgrad(net, x[pick], "pred", sample_offset=pick, batch_size=4, **kw)
            np.testing.assert_array_equal(got, whole[pick], strict=True)
    finally:
        rp.set_num_threads(old)
    g = rp.smoothgrad(net, x, 1, n=5, sigma=0.3, seed=np.random.default_rng(4), batch_size=4)
    assert_allclose(g, ref_extra.smoothgrad(net, x.astype(np.float64), 1, 5, 0.3,
                                            np.random.default_rng(4)),
                    rtol=2e-3, atol=2e-4 * np.abs(g).max())


def test_integrated_gradients_bits_do_not_depend_on_batch_size():
    """A sample's path points are summed in point order, one at a time, also when a batch of
    rows cuts them apart (they were summed per chunk of rows, then added: other rounding)."""
    net = rp.models.digits_cnn()
    x = rp.models.digits_data()[0][:9]
    whole = rp.integrated_gradients(net, x, "pred", steps=7)
    for batch_size in (1, 4, 10, 63):
        np.testing.assert_array_equal(
            rp.integrated_gradients(net, x, "pred", steps=7, batch_size=batch_size), whole,
            strict=True)


def test_smoothgrad_without_noise_is_the_gradient(rng):
    net = nets.mlp(rng)
    x = rng.normal(size=(5, 12))
    assert_allclose(rp.smoothgrad(net, x, 2, n=3, sigma=0.0), ref.gradient(net, x, 2),
                    rtol=1e-12, atol=1e-14)


def test_smoothgrad_noise_scales_with_the_input_range(rng):
    """The noise is sigma times each sample's range: scaling a sample of a bias-free net by c
    scales its noisy copies by c, and leaves a ReLU network's gradient at them unchanged."""
    net = nets.mlp(rng, bias=False)
    x = rng.normal(size=(1, 12))
    a = rp.smoothgrad(net, x, 1, n=8, sigma=0.3, seed=3)
    b = rp.smoothgrad(net, 1000 * x, 1, n=8, sigma=0.3, seed=3)
    assert_allclose(b, a, rtol=1e-9, atol=1e-12)
    assert_allclose(a, ref_extra.smoothgrad(net, x, 1, 8, 0.3, 3), rtol=1e-9)


@pytest.mark.parametrize("method", sorted(QUADRATURES))
@given(problem=problems(), steps=st.integers(2, 6),
       baseline=st.sampled_from(["none", "scalar", "sample", "batch"]))
def test_integrated_gradients_matches_reference(method, problem, steps, baseline):
    net, x, target, batch_size = problem
    rng = np.random.default_rng(steps)
    base = {"none": None, "scalar": 0.25, "sample": rng.normal(size=x.shape[1:]),
            "batch": rng.normal(size=x.shape)}[baseline]
    got = rp.integrated_gradients(net, x, target, baseline=base, steps=steps, quadrature=method,
                                  batch_size=batch_size)
    want = ref_extra.integrated_gradients(net, x, target, 0.0 if base is None else base,
                                          steps, method)
    assert got.shape == x.shape and got.dtype == np.float64
    assert_allclose(got, want, rtol=1e-9, atol=1e-12 * (np.abs(want).max() + 1))


@pytest.mark.parametrize("method,steps,degree", [
    ("riemann_trapezoid", 2, 1), ("riemann_middle", 1, 1), ("riemann_left", 1, 0),
    ("riemann_right", 1, 0), ("gausslegendre", 1, None)])
def test_quadratures_integrate_polynomials_up_to_their_degree(method, steps, degree):
    """The reference rules are right: exact for polynomials up to their degree (Gauss-Legendre
    on s points: 2s - 1) on [0, 1], where the integral of t^p is 1 / (p + 1); the package's
    points and weights are the reference's."""
    for s in (steps, steps + 1, 17):
        alphas, weights = ref_extra.quadrature(method, s)
        assert len(alphas) == len(weights) == s and 0 <= alphas.min() <= alphas.max() <= 1
        for p in range(2 * s if degree is None else degree + 1):
            assert abs(weights @ alphas ** p - 1 / (p + 1)) < 1e-12, (s, p)
        got_alphas, got_weights = QUADRATURES[method](s)
        assert_allclose(got_alphas, alphas, rtol=0, atol=1e-14)
        assert_allclose(got_weights, weights, rtol=0, atol=1e-14)


def _explained(net, x, target):
    out = ref.forward(net, x)[-1]
    return (ref.seed(target, out) * out).sum(axis=1)


@pytest.mark.parametrize("method", sorted(QUADRATURES))
def test_integrated_gradients_complete_on_a_linear_net(rng, method):
    """No ReLU: the gradient is constant on the path, every rule is exact."""
    net = rp.Sequential([rp.Dense(rng.normal(size=(7, 9)), rng.normal(size=7)),
                         rp.Dense(rng.normal(size=(3, 7)), rng.normal(size=3))])
    x, base = rng.normal(size=(4, 9)), rng.normal(size=(4, 9))
    R = rp.integrated_gradients(net, x, [0, 1, 2, 0], baseline=base, steps=3, quadrature=method)
    want = _explained(net, x, [0, 1, 2, 0]) - _explained(net, base, [0, 1, 2, 0])
    assert_allclose(R.sum(axis=1), want, rtol=1e-10)


@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_integrated_gradients_completeness(kind):
    """sum(IG) = F(x) - F(x') up to the discretization error, which shrinks with the steps."""
    rng = np.random.default_rng(5)
    net = nets.mlp(rng, (12, 32, 32, 4)) if kind == "mlp" else nets.cnn(rng)
    x = rng.normal(size=(6,) + net.input_shape)
    base = 0.1 * rng.normal(size=x.shape)
    want = _explained(net, x, 1) - _explained(net, base, 1)
    errors = []
    for steps in (4, 256):
        R = rp.integrated_gradients(net, x, 1, baseline=base, steps=steps, batch_size=500)
        errors.append(np.abs(R.reshape(len(x), -1).sum(axis=1) - want))
    scale = np.abs(want).max()
    assert errors[1].max() <= 0.02 * scale
    assert errors[1].sum() < errors[0].sum()


def test_integrated_gradients_float32(rng):
    net = nets.cnn(rng)
    x = rng.normal(size=(2, 3, 12, 12))
    want = ref_extra.integrated_gradients(net, x, 3, 0.0, 8, "gausslegendre")
    got = rp.explain(net, x.astype(np.float32), 3, method="integrated_gradients", steps=8,
                     quadrature="gausslegendre")
    assert got.dtype == np.float32
    assert_allclose(got, want, rtol=1e-3, atol=1e-4 * np.abs(want).max())


@pytest.mark.parametrize("call,err,match", [
    (lambda net, x: rp.smoothgrad(net, x, 0, n=0), ValueError, "n must be >= 1"),
    (lambda net, x: rp.smoothgrad(net, x, 0, sigma=-1.0), ValueError, "sigma must be >= 0"),
    (lambda net, x: rp.smoothgrad(net, x, [0, 1], n=2), ValueError, "2 entries for a batch of 3"),
    (lambda net, x: rp.smoothgrad(net, x, 9), ValueError, "out of range"),
    (lambda net, x: rp.smoothgrad(net, x, 0, batch_size=0), ValueError, "batch_size"),
    (lambda net, x: rp.smoothgrad(net, x, 0, seed=1.5), TypeError, "seed must be an int"),
    (lambda net, x: rp.smoothgrad(net, x, 0, seed=-1), ValueError, "seed must be >= 0"),
    (lambda net, x: rp.smoothgrad(net, x, 0, sample_offset=-1), ValueError,
     "sample_offset must be >= 0"),
    (lambda net, x: rp.smoothgrad(net, x[:, :5], 0), ValueError, r"\(n, 12\)"),
    (lambda net, x: rp.integrated_gradients(net, x, 0, quadrature="simpson"), ValueError,
     "quadrature must be one of"),
    (lambda net, x: rp.integrated_gradients(net, x, 0, steps=1), ValueError, "steps >= 2"),
    (lambda net, x: rp.integrated_gradients(net, x, 0, steps=0, quadrature="riemann_middle"),
     ValueError, "steps must be >= 1"),
    (lambda net, x: rp.integrated_gradients(net, x, 0, baseline=np.zeros(5)), ValueError,
     r"baseline has shape \(5,\)"),
    (lambda net, x: rp.integrated_gradients(net, x, 0, baseline="zeros"), TypeError, "dtype"),
    (lambda net, x: rp.integrated_gradients(net, x, 0, steps=2.5), TypeError, "steps"),
])
def test_bad_arguments(rng, call, err, match):
    net = nets.mlp(rng)
    with pytest.raises(err, match=match):
        call(net, rng.normal(size=(3, 12)))


def test_overflow_raises_instead_of_returning_inf():
    net = rp.Sequential([rp.Dense(np.full((2, 3), 1e20, dtype=np.float32))])
    seed = np.array([[1e30, 0.0]], dtype=np.float32)
    with pytest.raises(ValueError, match="overflowed"):
        rp.smoothgrad(net, np.ones((1, 3), np.float32), seed, n=2, seed=0)
    with pytest.raises(ValueError, match="overflowed"):
        rp.integrated_gradients(net, np.ones((1, 3), np.float32), seed, steps=2)
