"""Activation maximization and the Gaussian prior: reference twin, scikit-learn/SciPy peers,
and the behaviour on the bundled digits CNN."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import relprop as rp
from relprop import reference as ref
from relprop.reference import extra as ref_extra

import nets


@settings(max_examples=25)
@given(n=st.integers(3, 30), d=st.integers(1, 6), shrinkage=st.floats(0.05, 1.0),
       seed=st.integers(0, 2**32 - 1))
def test_gaussian_prior_matches_sklearn_and_scipy(n, d, shrinkage, seed):
    covariance = pytest.importorskip("sklearn.covariance")
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)) * rng.uniform(0.1, 3, size=d) + rng.normal(size=d)
    prior = rp.GaussianPrior.fit(X.reshape(n, d, 1), shrinkage=shrinkage, weight=0.5)
    peer = covariance.ShrunkCovariance(shrinkage=shrinkage).fit(X)
    assert_allclose(prior.mean, peer.location_, rtol=1e-12, atol=1e-12)
    assert_allclose(prior.covariance, peer.covariance_, rtol=1e-10, atol=1e-12)
    assert_allclose(prior.precision, peer.precision_, rtol=1e-7, atol=1e-9)
    q = rng.normal(size=(4, d))
    mvn = stats.multivariate_normal(peer.location_, peer.covariance_)
    assert_allclose(prior.neg_log_density(q[:, :, None]), -mvn.logpdf(q), rtol=1e-9)
    # the gradient, by central differences of SciPy's density
    h = 1e-5
    fd = np.stack([(mvn.logpdf(q - h * e) - mvn.logpdf(q + h * e)) / (2 * h)
                   for e in np.eye(d)], axis=1)
    assert_allclose(prior.grad_neg_log_density(q[:, :, None])[:, :, 0], fd, rtol=1e-5,
                    atol=1e-6 * (np.abs(fd).max() + 1))


def test_gaussian_prior_errors():
    with pytest.raises(ValueError, match="at least 2 samples"):
        rp.GaussianPrior.fit(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="singular"):
        rp.GaussianPrior.fit(np.ones((5, 3)), shrinkage=0.0)
    with pytest.raises(ValueError, match=r"shrinkage must be in \[0, 1\]"):
        rp.GaussianPrior.fit(np.eye(3), shrinkage=1.5)
    prior = rp.GaussianPrior.fit(np.random.default_rng(0).normal(size=(6, 4)))
    with pytest.raises(ValueError, match=r"fitted to samples of shape \(4,\)"):
        prior.neg_log_density(np.zeros((2, 5)))


@st.composite
def am_problems(draw):
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        net = nets.mlp(rng, tuple(draw(st.lists(st.integers(2, 10), min_size=2, max_size=3))))
    else:
        net = nets.cnn(rng, channels=1, size=draw(st.integers(6, 8)), n_out=3)
    n_out = net.output_shape[0]
    targets = draw(st.lists(st.integers(0, n_out - 1), min_size=1, max_size=4))
    return net, targets, rng


@settings(max_examples=20)
@given(problem=am_problems(), steps=st.integers(1, 12), l2=st.floats(0, 0.5),
       init=st.sampled_from(["mean", "array", "random"]), use_prior=st.booleans())
def test_activation_maximization_matches_reference(problem, steps, l2, init, use_prior):
    net, targets, rng = problem
    shape = net.input_shape
    full = (len(targets),) + shape
    prior = None
    if use_prior:
        prior = rp.GaussianPrior.fit(rng.uniform(-1, 1, size=(20,) + shape), shrinkage=0.3,
                                     weight=0.1)
    low, high = -1.0, rng.uniform(0.5, 1.5)
    x_init = rng.uniform(-1, 1, size=shape) if init == "array" else init
    res = rp.activation_maximization(net, targets, steps=steps, lr=0.05, l2=l2, low=low,
                                     high=high, init=x_init, prior=prior, seed=3)
    # the start point and the l2 center, as documented
    mid = (np.full(shape, (low + high) / 2) if prior is None else prior.mean.reshape(shape))
    center = np.broadcast_to(x_init if init == "array" else mid, full)
    # "random": class c starts from its own stream, (seed, c)
    start = (np.stack([np.random.default_rng(np.random.SeedSequence(3, spawn_key=(c,))).uniform(
        low, high, size=shape) for c in targets]) if init == "random" else center)
    want, trace = ref_extra.activation_maximization(
        net, targets, center, start, steps, 0.05, l2, low, high,
        None if prior is None else (prior.mean, prior.precision, prior.weight))
    assert res.prototypes.shape == full and res.scores.shape == (steps, len(targets))
    assert_allclose(res.prototypes, want, rtol=1e-7, atol=1e-9)
    assert_allclose(res.scores, trace, rtol=1e-9, atol=1e-9)
    assert_allclose(res.final_scores, ref.forward(net, want)[-1][np.arange(len(targets)),
                                                                targets], rtol=1e-7, atol=1e-9)


def test_activation_maximization_box_per_channel(rng):
    net = nets.cnn(rng, channels=2, size=6, n_out=3)
    low = np.array([-1.0, 0.0]).reshape(2, 1, 1)
    high = np.array([0.0, 2.0]).reshape(2, 1, 1)
    res = rp.activation_maximization(net, [0, 1, 2], steps=20, lr=0.5, low=low, high=high)
    p = res.prototypes
    assert (p[:, 0] >= -1).all() and (p[:, 0] <= 0).all()
    assert (p[:, 1] >= 0).all() and (p[:, 1] <= 2).all()


def test_random_starts_depend_on_the_class_only(rng):
    """init="random": a class's start comes from (seed, class), so its prototype is the same
    bits whatever other classes are asked for, in any order, on any thread count; a Generator
    seed still works (starts drawn in the order of the targets)."""
    net = nets.cnn(rng, channels=1, size=6, n_out=4)
    kw = dict(steps=6, lr=0.1, init="random", seed=11, dtype=np.float32)
    whole = rp.activation_maximization(net, [0, 1, 2, 3], **kw).prototypes
    old = rp.get_num_threads()
    try:
        for threads in (1, 2):
            rp.set_num_threads(threads)
            for targets in ([2], [3, 1], [1, 3, 0, 2, 2]):
                got = rp.activation_maximization(net, targets, **kw).prototypes
                np.testing.assert_array_equal(got, whole[targets], strict=True)
    finally:
        rp.set_num_threads(old)
    res = rp.activation_maximization(net, [3, 1], steps=1, lr=0.0, init="random",
                                     seed=np.random.default_rng(5))
    g = np.random.default_rng(5)
    start = np.stack([g.uniform(0, 1, size=net.input_shape) for _ in range(2)])
    assert_allclose(res.scores[0], ref.forward(net, start)[-1][[0, 1], [3, 1]], rtol=1e-12)


@pytest.mark.parametrize("kwargs,err,match", [
    ({"targets": [0, 11]}, ValueError, "out of range"),
    ({"targets": 1.5}, TypeError, "targets must be an int"),
    ({"targets": []}, TypeError, "non-empty"),
    ({"targets": 0, "low": 1.0, "high": 0.0}, ValueError, "low must be <= high"),
    ({"targets": 0, "init": np.zeros(5)}, ValueError, r"init has shape \(5,\)"),
    ({"targets": 0, "init": "zeros"}, ValueError, "init must be"),
    ({"targets": 0, "steps": 0}, ValueError, "steps must be >= 1"),
    ({"targets": 0, "prior": "gauss"}, TypeError, "GaussianPrior"),
    ({"targets": 0, "dtype": np.int32}, TypeError, "float32 or float64"),
])
def test_activation_maximization_errors(rng, kwargs, err, match):
    net = nets.mlp(rng, (6, 8, 10))
    with pytest.raises(err, match=match):
        rp.activation_maximization(net, **kwargs)


def test_activation_maximization_needs_an_input_shape(rng):
    net = rp.Sequential([rp.Dense(rng.normal(size=(3, 4)))])
    with pytest.raises(ValueError, match="needs input_shape"):
        rp.activation_maximization(net, 0)
    assert rp.activation_maximization(net, 0, input_shape=(4,), steps=2).prototypes.shape == (1, 4)


# --- the bundled digits CNN ------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from relprop.models import digits_cnn, digits_data

    x, y = digits_data("test")
    return digits_cnn(), x.astype(np.float64), y


@pytest.fixture(scope="module")
def plain_prototypes(digits):
    net, x, _ = digits
    return rp.activation_maximization(net, range(10), steps=100, init=x.mean(axis=0))


@pytest.mark.slow
def test_digit_prototypes_are_classified_as_their_class(digits, plain_prototypes):
    net, _, _ = digits
    p = plain_prototypes.prototypes
    assert p.min() >= 0 and p.max() <= 1
    out = ref.forward(net, p)[-1]
    np.testing.assert_array_equal(out.argmax(axis=1), np.arange(10))
    assert_allclose(plain_prototypes.final_scores, out[np.arange(10), np.arange(10)], rtol=1e-6)


def test_digit_prototype_scores_rise(digits, plain_prototypes):
    s = plain_prototypes.scores  # (steps, classes)
    assert (s[-1] > s[0] + 5).all()
    blocks = s.reshape(10, 10, -1).mean(axis=1)  # means over 10-step blocks: smoothed trace
    assert (np.diff(blocks, axis=0) > 0).mean() >= 0.9
    assert (np.diff(blocks.mean(axis=1)) > 0).all()  # averaged over classes: increasing


def test_digit_prototypes_with_the_prior_are_closer_to_the_class_means(digits,
                                                                      plain_prototypes):
    """The 'expert' density term keeps prototypes near real digits: the distance of each
    prototype to the mean test image of its class shrinks, on average over classes."""
    net, x, y = digits
    prior = rp.GaussianPrior.fit(x, shrinkage=0.1, weight=0.2)
    res = rp.activation_maximization(net, range(10), steps=100, init=x.mean(axis=0),
                                     prior=prior)
    class_means = np.stack([x[y == c].mean(axis=0) for c in range(10)])

    def dist(p):
        return np.sqrt(((p - class_means) ** 2).reshape(10, -1).sum(axis=1))

    with_prior, without = dist(res.prototypes), dist(plain_prototypes.prototypes)
    assert with_prior.mean() < 0.75 * without.mean()
    assert (with_prior < without).mean() >= 0.8
    # ... and they still are prototypes of their classes
    out = ref.forward(net, res.prototypes)[-1]
    assert (out.argmax(axis=1) == np.arange(10)).mean() >= 0.9
