"""Conv2d's algorithms in the layers: "auto" / "direct" / "winograd" dispatch to the kernels,
the process-wide override, the rules that keep the direct method, and every method's map with
Winograd against the direct float64 map."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

import nets


@pytest.fixture(autouse=True)
def _reset():
    yield
    rp.set_conv_algorithm(None)


def _layer(rng, algorithm="auto", c=16, **kw):
    return rp.Conv2d(nets.conv_w(rng, c, c, 3), rng.normal(size=c) * 0.1, padding=1,
                     algorithm=algorithm, **kw)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_layers_run_the_algorithm_they_are_given(rng, dtype):
    layer = _layer(rng, "winograd")
    w, b = layer.params(dtype)
    x = rng.uniform(0, 1, (2, 16, 12, 12)).astype(dtype)
    g = rng.normal(size=(2, 16, 12, 12)).astype(dtype)
    # "winograd" takes the tile "auto" would choose, and F(4x4) where "auto" stays direct
    tiles = [ops.conv2d_plan(x.shape, w.shape, 1, 1, dtype, backward, request="auto").tile or 4
             for backward in (False, True)]
    wino = ops.conv2d_winograd_forward(x, w, b, (1, 1), tile=tiles[0])
    direct = ops.conv2d_forward(x, w, b, (1, 1), (1, 1))
    assert not np.array_equal(wino, direct)  # so that the checks below tell them apart
    assert_array_equal(layer.forward(x)[0], wino)
    assert_array_equal(layer.backward(g, x, None),
                       ops.conv2d_winograd_backward(g, w, (12, 12), (1, 1), tile=tiles[1]))
    for got, want in zip(layer.apply_split(x, w, b),  # the two halves of the outputs
                         ops.conv2d_winograd_forward(x, w, b, (1, 1), tile=tiles[0], split=8)):
        assert_array_equal(got, want)
    assert_array_equal(layer.forward(x, exact=True)[0], direct)  # what AlphaBeta/ZBox ask for
    rp.set_conv_algorithm("direct")  # the process-wide override wins over the layer's own
    assert_array_equal(layer.forward(x)[0], direct)
    rp.set_conv_algorithm(None)
    assert_array_equal(_layer(rng, "direct").with_parameters(w, b).forward(x)[0], direct)
    auto = layer.with_parameters(w, b)
    auto.algorithm = "auto"
    alg = ops.conv2d_plan(x.shape, w.shape, (1, 1), (1, 1), dtype)
    want = direct if alg.tile is None else ops.conv2d_winograd_forward(x, w, b, (1, 1),
                                                                       tile=alg.tile)
    assert_array_equal(auto.forward(x)[0], want)


def test_winograd_only_where_it_applies(rng):
    with pytest.raises(ValueError, match="algorithm='winograd' needs a 3x3 kernel, stride 1"):
        rp.Conv2d(nets.conv_w(rng, 4, 4, 3), stride=2, algorithm="winograd")
    with pytest.raises(ValueError, match="algorithm must be one of"):
        rp.Conv2d(nets.conv_w(rng, 4, 4, 3), algorithm="fft")
    with pytest.raises(ValueError, match="conv algorithm must be one of"):
        rp.set_conv_algorithm("fft")
    rp.set_conv_algorithm("winograd")  # a strided layer stays direct
    layer = rp.Conv2d(nets.conv_w(rng, 4, 4, 3), stride=2, padding=1)
    x = rng.normal(size=(1, 4, 9, 9))
    assert_array_equal(layer.forward(x)[0],
                       ops.conv2d_forward(x, layer.weight, None, (2, 2), (1, 1)))
    assert rp.get_conv_algorithm() == "winograd"


def test_the_algorithm_is_saved(tmp_path, rng):
    net = rp.Sequential([_layer(rng, "winograd"), rp.ReLU(), _layer(rng, "direct"),
                         _layer(rng)], input_shape=(16, 6, 6))
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert ([layer.algorithm for layer in back.layers if layer.linear]
            == ["winograd", "direct", "auto"])
    assert "algorithm" not in back.layers[3].config()  # the default is not written


def test_small_calls_keep_winograd_packings(rng):
    layer = _layer(rng, "winograd")
    x = rng.uniform(0, 1, (1, 16, 8, 8)).astype(np.float32)
    rp.release_memory()
    y = layer.forward(x)[0]
    g = layer.backward(np.ones_like(y), x, None)
    w, b = layer.params(np.float32)
    tile = ops.conv2d_plan(x.shape, w.shape, 1, 1, np.float32).tile or 4
    kept = [p._packed for p in layer._plans.values() if p._packed is not None]
    assert sorted(k.gemm for k in kept) == [f"conv2d_winograd_backward_f{tile}",
                                             f"conv2d_winograd_forward_f{tile}"]
    assert_array_equal(y, ops.conv2d_winograd_forward(x, w, b, (1, 1), tile=tile))
    assert_array_equal(g, ops.conv2d_winograd_backward(np.ones_like(y), w, (8, 8), (1, 1),
                                                       tile=tile))
    rp.release_memory()
    assert all(p._packed is None for p in layer._plans.values())


def test_a_sample_does_not_depend_on_its_batch_with_auto(rng):
    # "auto" chooses from the layer and one sample's size: the batch never changes the bits
    net = rp.Sequential([_layer(rng, c=16), rp.ReLU(), _layer(rng, c=16), rp.ReLU(),
                         rp.MaxPool2d(2), _layer(rng, c=16), rp.ReLU(), rp.Flatten(),
                         rp.Dense(nets.dense_w(rng, 4, 16 * 64))], input_shape=(16, 16, 16))
    x = rng.uniform(0, 1, (40, 16, 16, 16)).astype(np.float32)
    assert ops.conv2d_plan(x.shape, (16, 16, 3, 3), 1, 1, np.float32).tile is not None
    for fn in (net.forward, lambda xs: rp.gradient(net, xs, 1),
               lambda xs: rp.lrp(net, xs, 1, "epsilon_plus_flat")):
        full = fn(x)
        for i in (0, 39):
            assert_array_equal(fn(x[i:i + 1]), full[i:i + 1])
        assert_array_equal(fn(x[3:20]), full[3:20])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size", [1, 2, 3, 5])
def test_planes_smaller_than_a_strip_give_the_bits_of_one_sample(rng, dtype, size):
    """Output planes of fewer pixels than a strip of the GEMM's micro-kernel (down to 1x1) are
    multiplied with the batch's samples side by side (conv2d.cpp's run_gathered): every pass
    (forward, the split forward of ZPlus, the flipped backward, LRP-epsilon; grouped, strided
    and dilated layers among them) gives each sample bitwise what it gives alone, and the
    float64 reference's numbers.  (With 1x1 inputs of 3 values, some samples are non-negative
    and others not: AlphaBeta takes its z+ and z- parts where the network, not the batch's
    data, says the input is non-negative.)"""
    def conv(i, o, **kw):
        return rp.Conv2d(rng.normal(size=(o, i // kw.get("groups", 1), 3, 3)) / 6,
                         rng.normal(size=o) * 0.1, **kw)

    net = rp.Sequential([conv(3, 8, padding=1), rp.ReLU(), conv(8, 8, padding=1, groups=2),
                         rp.ReLU(), conv(8, 8, padding=2, dilation=2), rp.ReLU(),
                         conv(8, 8, padding=1, stride=2), rp.ReLU(), rp.Flatten(),
                         rp.Dense(rng.normal(size=(4, 8 * ((size + 1) // 2) ** 2)))],
                        input_shape=(3, size, size))
    net = rp.Sequential([_cast(layer, dtype) for layer in net.layers], input_shape=net.input_shape)
    x = rng.uniform(-1, 1, (7, 3, size, size)).astype(dtype)
    for fn in (net.forward, lambda xs: rp.gradient(net, xs, 1),
               lambda xs: rp.lrp(net, xs, 1, "epsilon_plus_flat"),
               lambda xs: rp.lrp(net, xs, 1, "epsilon_alpha2_beta1"),
               lambda xs: rp.lrp(net, xs, 1, "epsilon")):
        full = fn(x)
        for i in range(len(x)):
            assert_array_equal(fn(x[i:i + 1]), full[i:i + 1])
    if dtype == np.float64:
        assert_allclose(net.forward(x), ref.forward(net, x)[-1], rtol=1e-12, atol=1e-14)


def _cnn(rng):
    """A CIFAR-style VGG with He-initialized weights (the benchmark's cifar_cnn, smaller)."""
    def conv(i, o):
        return rp.Conv2d(rng.normal(size=(o, i, 3, 3)) * np.sqrt(2 / (9 * i)),
                         rng.normal(size=o) * 0.01, padding=1)

    layers = [conv(3, 32), rp.ReLU(), conv(32, 32), rp.ReLU(), rp.MaxPool2d(2),
              conv(32, 64), rp.ReLU(), conv(64, 64), rp.ReLU(), rp.MaxPool2d(2), rp.Flatten(),
              rp.Dense(rng.normal(size=(10, 64 * 16)) * np.sqrt(2 / 1024), None)]
    return rp.Sequential([_cast(layer, np.float32) for layer in layers], input_shape=(3, 16, 16))


def _cast(layer, dtype):
    """``layer`` with its weight and bias in ``dtype`` (a layer without parameters as it is)."""
    if not layer.linear:
        return layer
    return layer.with_parameters(layer.weight.astype(dtype),
                                 None if layer.bias is None else layer.bias.astype(dtype))


def _decisions(net, x):
    """Every ReLU's sign pattern and every max pooling's winners, per sample."""
    tr = net.trace(x)
    masks = [a > 0 for a in tr.inputs[1:] if a.ndim == 4]
    wins = [s for s in tr.states if s is not None]
    return [tuple(m[i] for m in masks) + tuple(w[i] for w in wins) for i in range(len(x))]


METHODS = [("gradient", {}), ("gradient_x_input", {}), ("lrp.epsilon_plus_flat", {}),
           ("lrp.epsilon_gamma_box", {"low": -2.0, "high": 2.0}),
           ("lrp.epsilon_alpha2_beta1", {}), ("lrp.epsilon_plus", {})]


@pytest.mark.parametrize("algorithm", ["auto", "winograd"])
@pytest.mark.parametrize("method,kw", METHODS, ids=[m for m, _ in METHODS])
def test_maps_with_winograd_match_the_direct_float64_map(algorithm, method, kw):
    """Each sample's float32 map with Winograd lies within 1e-3 of its largest value of the
    float64 map of the direct method, where both take the same decisions: a ReLU whose input
    rounds to the other side of 0, or a max pooling whose two largest inputs swap, changes a
    gradient-like map by percents (as an input perturbation of 1e-6 does, with any algorithm),
    so those samples are the ones a rounding error model does not cover."""
    rng = np.random.default_rng(5)
    net = _cnn(rng)
    net64 = rp.Sequential([_cast(layer, np.float64) for layer in net.layers],
                          input_shape=net.input_shape)
    x = rng.uniform(-1.5, 1.5, (12,) + net.input_shape).astype(np.float32)
    t = np.arange(12) % 10
    rp.set_conv_algorithm("direct")
    want = rp.explain(net64, x.astype(np.float64), t, method, **kw)
    exact = _decisions(net64, x.astype(np.float64))
    rp.set_conv_algorithm(algorithm)
    got = rp.explain(net, x, t, method, **kw)
    same = [all(np.array_equal(a, b) for a, b in zip(d, e))
            for d, e in zip(_decisions(net, x), exact)]
    assert sum(same) >= 6, "too few samples with the same decisions to test anything"
    for i in np.flatnonzero(same):
        err = np.abs(got[i] - want[i]).max() / np.abs(want[i]).max()
        assert err <= 1e-3, (i, err)
