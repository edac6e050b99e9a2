"""The default batch size (``batch_size=None``): relprop.default_batch_size(net) samples per
batch, chosen from the network alone, and the same bits as any other batch size."""
import numpy as np
import pytest
from numpy.testing import assert_array_equal

import relprop as rp
from relprop import _common


def conv_net(rng):
    """A CNN on 3 x 32 x 32 images with a default batch of a few samples (a sample's work is
    large against the fixed costs of a batch)."""
    w = lambda *s: rng.normal(size=s).astype(np.float32) / np.sqrt(np.prod(s[1:]))  # noqa: E731
    return rp.Sequential([
        rp.Conv2d(w(32, 3, 3, 3), rng.normal(size=32) * 0.1, padding=1), rp.ReLU(),
        rp.Conv2d(w(32, 32, 3, 3), padding=1), rp.ReLU(), rp.MaxPool2d(2),
        rp.Conv2d(w(32, 32, 3, 3), padding=1), rp.ReLU(), rp.GlobalAvgPool2d(), rp.Flatten(),
        rp.Dense(w(10, 32)),
    ], input_shape=(3, 32, 32))


#: every method by name, with parameters that keep it quick (and seeds)
CALLS = {
    "gradient": {}, "sensitivity": {}, "gradient_x_input": {}, "deconvnet": {},
    "guided_backprop": {}, "taylor": {"root": "nearest", "max_steps": 2},
    "smoothgrad": {"n": 3, "seed": 1}, "integrated_gradients": {"steps": 3},
    "lrp.epsilon_plus_flat": {}, "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
    "lrp.epsilon_alpha2_beta1": {},
}


def test_every_method_has_a_call_here():
    assert set(CALLS) >= set(rp.METHODS)


@pytest.mark.parametrize("method", sorted(CALLS))
def test_the_default_batch_gives_the_bits_of_any_batch(method):
    rng = np.random.default_rng(0)
    net = conv_net(rng)
    default = rp.default_batch_size(net)
    x = rng.uniform(-1, 1, (2 * default + 1,) + net.input_shape).astype(np.float32)
    assert 1 < default < len(x)  # the default cuts x: batches of default, default, 1
    assert_array_equal(rp.explain(net, x, "pred", method, **CALLS[method]),
                       rp.explain(net, x, "pred", method, batch_size=len(x), **CALLS[method]))


def test_the_default_batch_is_the_methods_batch(monkeypatch):
    """``batch_size=None`` runs batches of default_batch_size samples (for the forward pass,
    layerwise LRP and Taylor with its report too), and the same bits as one batch."""
    rng = np.random.default_rng(1)
    net = conv_net(rng)
    x = rng.uniform(-1, 1, (7,) + net.input_shape).astype(np.float32)
    monkeypatch.setattr(_common, "default_batch_size", lambda net, shape, dtype: 3)
    seen = []
    real = _common.finite_result
    monkeypatch.setattr(_common, "finite_result",
                        lambda fn, xc, *a: seen.append(len(xc)) or real(fn, xc, *a))
    want = rp.gradient(net, x, 2, batch_size=7)
    seen.clear()
    assert_array_equal(rp.gradient(net, x, 2), want)
    assert sorted(seen) == [1, 3, 3]
    seen.clear()
    out = net(x)
    assert sorted(seen) == [1, 3, 3]
    assert_array_equal(out, net(x, batch_size=7))
    rel, info = rp.taylor(net, x, 2, "nearest", max_steps=1, return_info=True)
    assert_array_equal(rel, rp.taylor(net, x, 2, "nearest", max_steps=1, batch_size=7))
    assert len(info.root) == 7
    layers = rp.lrp(net, x, 2, layerwise=True)
    for a, b in zip(layers, rp.lrp(net, x, 2, layerwise=True, batch_size=7)):
        assert_array_equal(a, b)


def test_small_networks_run_their_default_batches_side_by_side():
    """The digits CNN's default batch amortizes a batch's fixed costs (at least 16 times their
    FLOPs in work) and still runs side by side, a batch per thread (SAMPLE_PARALLEL_FLOPS)."""
    net = rp.models.digits_cnn()
    flops = net.flops()
    weights = sum(a.nbytes for layer in net.layers for a in layer.arrays().values())
    fixed = len(net.nodes) * _common.NODE_FLOPS + weights * _common.WEIGHT_FLOPS_PER_BYTE
    batch = rp.default_batch_size(net)
    assert batch * flops >= 4 * fixed
    assert batch * flops <= _common.SAMPLE_PARALLEL_FLOPS


def test_split_batches_hold_the_fixed_costs_of_every_thread():
    """A network whose samples are too large to run side by side has its batches' kernels split
    over the threads while their fixed costs run on one: its default grows with the threads; a
    small network's batches run side by side, a thread each, and its default does not."""
    rng = np.random.default_rng(2)
    big = rp.Sequential([rp.Conv2d(rng.normal(size=(64, 3, 3, 3)), padding=1), rp.ReLU(),
                         rp.Conv2d(rng.normal(size=(64, 64, 3, 3)), padding=1), rp.ReLU(),
                         rp.GlobalAvgPool2d(), rp.Flatten(), rp.Dense(rng.normal(size=(10, 64)))],
                        input_shape=(3, 64, 64))
    assert big.flops() > _common.SAMPLE_PARALLEL_FLOPS
    small = rp.models.digits_cnn()
    try:
        rp.set_num_threads(1)
        one = rp.default_batch_size(big), rp.default_batch_size(small)
        rp.set_num_threads(4)
        four = rp.default_batch_size(big), rp.default_batch_size(small)
    finally:
        rp.set_num_threads(0)
    assert 3 * one[0] <= four[0] <= 5 * one[0]
    assert four[1] == one[1]


def test_the_default_batch_is_checked():
    net = rp.Sequential([rp.Flatten(), rp.Dense(np.ones((2, 4)))])
    with pytest.raises(ValueError, match="no input shape"):
        rp.default_batch_size(net)
    assert rp.default_batch_size(net, (4,)) >= 1
