"""Sequential: shapes, errors naming the layer, BatchNorm folding, save/load, torch agreement."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import reference as ref

import nets


def test_forward_matches_reference(rng):
    net = nets.cnn(rng)
    x = rng.normal(size=(3, 3, 12, 12))
    assert_allclose(net(x), ref.forward(net, x)[-1], rtol=1e-12, atol=1e-12)
    assert net(x).shape == (3,) + net.output_shape


@pytest.mark.parametrize("mode", ["gradient", "deconvnet", "guided"])
def test_vjp_is_backward_of_the_trace_keeping_only_what_it_reads(rng, mode):
    cnn = nets.cnn(rng)  # conv, relu, max and average pooling, flatten, dense
    gap = rp.Sequential([rp.Conv2d(nets.conv_w(rng, 4, 3, 3), padding=1), rp.ReLU(),
                         rp.GlobalAvgPool2d(), rp.Flatten(), rp.Dense(nets.dense_w(rng, 3, 4)),
                         rp.ReLU()])  # a ReLU on top: it reads the output
    for net in (cnn, gap):
        x = rng.normal(size=(4, 3, 12, 12)).astype(np.float32)
        tr = net.trace(x)
        s = rng.normal(size=tr.output.shape).astype(np.float32)
        out, g = net.vjp(x, lambda o: s, mode)  # noqa: B023 - called by vjp, before it returns
        assert_array_equal(out, tr.output)
        assert_array_equal(g, net.backward(tr, s, mode))
    # vjp hands every other layer a stand-in with the shape of its input and no values
    assert [type(layer).__name__ for layer in cnn.layers + gap.layers
            if layer.backward_reads_input] == ["ReLU"] * 6


def test_shapes_are_validated_when_built():
    with pytest.raises(ValueError, match=r"layer 1: Dense.*expects \(\.\.\., 5\)"):
        rp.Sequential([rp.Dense(np.ones((4, 3))), rp.Dense(np.ones((2, 5)))], input_shape=(3,))
    with pytest.raises(ValueError, match="layer 0: Conv2d.*4 input channels"):
        rp.Sequential([rp.Conv2d(np.ones((2, 4, 3, 3)))], input_shape=(3, 8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        rp.Sequential([rp.MaxPool2d(5)], input_shape=(1, 3, 3))


def test_shapes_checked_on_call_without_input_shape(rng):
    net = rp.Sequential([rp.Flatten(), rp.Dense(np.ones((2, 12)))])
    assert net(np.ones((1, 3, 4))).shape == (1, 2)
    with pytest.raises(ValueError, match="layer 1: Dense"):
        net(np.ones((1, 5)))


def _bn_params(rng, c):
    return (rng.uniform(0.5, 2, c), rng.normal(size=c), rng.normal(size=c), rng.uniform(0.5, 2, c))


def test_batchnorm_is_folded_exactly(rng):
    w, b = rng.normal(size=(4, 3, 3, 3)), rng.normal(size=4)
    scale, shift, mean, var = _bn_params(rng, 4)
    net = rp.Sequential([rp.Conv2d(w, b, padding=1),
                         rp.BatchNorm2d(scale, shift, mean, var, eps=1e-3), rp.ReLU()])
    assert len(net.layers) == 2
    x = rng.normal(size=(2, 3, 5, 5))
    z = ref.conv2d_forward(x, w, b, 1, 1)
    bn = ((z - mean[:, None, None]) / np.sqrt(var[:, None, None] + 1e-3) * scale[:, None, None]
          + shift[:, None, None])
    assert_allclose(net(x), np.maximum(bn, 0), rtol=1e-12, atol=1e-12)


def test_batchnorm1d_folds_into_dense(rng):
    w = rng.normal(size=(4, 3))
    scale, shift, mean, var = _bn_params(rng, 4)
    net = rp.Sequential([rp.Dense(w), rp.BatchNorm1d(scale, shift, mean, var)])
    x = rng.normal(size=(5, 3))
    assert_allclose(net(x), (x @ w.T - mean) / np.sqrt(var + 1e-5) * scale + shift, rtol=1e-12)


def test_batchnorm_that_cannot_be_folded_must_fit(rng):
    bn = rp.BatchNorm2d(*_bn_params(rng, 3))
    with pytest.raises(ValueError, match="layer 1: BatchNorm2d.*expects 3 channels"):
        rp.Sequential([rp.Conv2d(np.ones((4, 3, 1, 1))), bn], input_shape=(3, 4, 4))
    with pytest.raises(ValueError, match="layer 0: BatchNorm2d.*rank 3"):
        rp.Sequential([bn, rp.Flatten()], input_shape=(3,))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_save_load_round_trip(tmp_path, rng, dtype):
    net = nets.cnn(rng)
    net = rp.Sequential([type(layer)(**{}) if not layer.linear and not hasattr(layer, "kernel_size")
                         else layer for layer in net.layers], input_shape=net.input_shape)
    path = tmp_path / "m.npz"
    net.save(path)
    back = rp.load(path)
    assert [layer.kind for layer in back.layers] == [layer.kind for layer in net.layers]
    assert back.input_shape == net.input_shape
    x = rng.normal(size=(2, 3, 12, 12)).astype(dtype)
    assert_array_equal(back(x), net(x))


def test_load_rejects_bad_files(tmp_path, rng):
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match="cannot read"):
        rp.load(bad)
    np.savez(tmp_path / "plain.npz", a=np.ones(3))
    with pytest.raises(ValueError, match="not a relprop model"):
        rp.load(tmp_path / "plain.npz")
    np.savez(tmp_path / "obj.npz", __relprop__=np.array([{"a": 1}], dtype=object))
    with pytest.raises(ValueError):
        rp.load(tmp_path / "obj.npz")  # object arrays would need pickle: refused
    good = tmp_path / "good.npz"
    nets.mlp(rng).save(good)
    data = good.read_bytes()
    (tmp_path / "trunc.npz").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError):
        rp.load(tmp_path / "trunc.npz")


def test_forward_and_gradient_match_torch(rng):
    torch = pytest.importorskip("torch")
    net = nets.cnn(rng)
    tnet = nets.to_torch(net)
    x = rng.normal(size=(4, 3, 12, 12))
    xt = torch.from_numpy(x).requires_grad_()
    out = tnet(xt)
    assert_allclose(net(x), out.detach().numpy(), rtol=1e-10, atol=1e-12)
    out[:, 2].sum().backward()
    assert_allclose(rp.gradient(net, x, 2), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    # float32 path against torch in float32
    t32 = nets.to_torch(net, "float32")
    x32 = x.astype(np.float32)
    xt32 = torch.from_numpy(x32).requires_grad_()
    o32 = t32(xt32)
    o32[:, 1].sum().backward()
    net32 = rp.Sequential(
        [layer if not layer.linear else type(layer)(
            layer.weight.astype(np.float32),
            None if layer.bias is None else layer.bias.astype(np.float32),
            **({} if layer.kind == "dense" else {"stride": layer.stride, "padding": layer.padding}))
         for layer in net.layers], input_shape=net.input_shape)
    assert_allclose(net32(x32), o32.detach().numpy(), rtol=1e-4, atol=1e-5)
    assert_allclose(rp.gradient(net32, x32, 1), xt32.grad.numpy(), rtol=1e-4, atol=1e-5)


def _packed(layer):
    """Whether any plan of ``layer`` keeps a packing."""
    return any(plan._packed is not None for plan in layer._plans.values())


def test_small_batches_use_packed_dense_weights_with_the_same_bits(rng):
    # Dense layers' plans keep packed weights for batches of at most PACK_MAX_BATCH samples: a
    # sample's scores, gradient and LRP relevance must not depend on that (batch invariance)
    from relprop import plans

    net = nets.mlp(rng, sizes=(64, 300, 200, 10))
    x = rng.uniform(-1, 1, (40, 64)).astype(np.float32)
    rp.release_memory()
    assert all(not _packed(layer) for layer in net.layers if isinstance(layer, rp.Dense))
    big = plans.PACK_MAX_BATCH + 1
    for fn in (lambda xs: net.forward(xs), lambda xs: rp.gradient(net, xs, 1),
               lambda xs: rp.lrp(net, xs, 1, "epsilon_plus_flat"),
               lambda xs: rp.lrp(net, xs, 1, "zplus")):
        full = fn(x[:big])
        for i in (0, 7, big - 1):
            assert_array_equal(fn(x[i:i + 1]), full[i:i + 1])
    assert all(_packed(layer) for layer in net.layers if isinstance(layer, rp.Dense))
    rp.release_memory()
    assert all(not _packed(layer) for layer in net.layers if isinstance(layer, rp.Dense))


def test_small_calls_use_packed_conv_weights_with_the_same_bits(rng):
    from relprop import plans

    net = nets.cnn(rng)  # 12x12 inputs: a sample is 144 output pixels of the first conv
    x = rng.uniform(-1, 1, (9, 3, 12, 12)).astype(np.float32)
    rp.release_memory()
    convs = [layer for layer in net.layers if isinstance(layer, rp.Conv2d)]
    assert 9 * 144 > plans.PACK_MAX_PIXELS  # the whole batch is packed per call
    for fn in (lambda xs: net.forward(xs), lambda xs: rp.lrp(net, xs, 1, "epsilon_gamma_box",
                                                             low=-1.0, high=1.0),
               lambda xs: rp.lrp(net, xs, 1, "epsilon_alpha2_beta1")):
        full = fn(x)
        for i in (0, 8):
            assert_array_equal(fn(x[i:i + 1]), full[i:i + 1])
    assert all(_packed(layer) for layer in convs)
    rp.release_memory()
    assert not any(_packed(layer) for layer in convs)


def test_parameters_are_read_only(rng):
    w = rng.normal(size=(3, 4))
    layer = rp.Dense(w, np.zeros(3))
    with pytest.raises(ValueError, match="read-only"):
        layer.weight[0, 0] = 1.0
    with pytest.raises(ValueError, match="read-only"):
        layer.bias[0] = 1.0
    with pytest.raises(AttributeError):
        layer.weight = w
    w[0, 0] = 5.0  # the caller's own array keeps its flags
