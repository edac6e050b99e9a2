"""LeakyReLU: the kernel against its NumPy twin and torch, the layer in networks against the
reference (gradient, LRP), both importers, model files, and the peers: torch autograd for the
gradient, Zennit for LRP (its Pass rule for activations), Captum for deconvnet and guided
backprop (which override ReLU modules only: a LeakyReLU passes its gradient)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

from strategies import DTYPES, arrays, f64, with_threads

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


@given(DTYPES, st.sampled_from([0.01, 0.2, 0.0, -0.5, 1.5]), st.data())
def test_kernel_matches_twin_and_torch(dtype, slope, data):
    shape = data.draw(st.sampled_from([(1,), (3, 5), (2, 3, 4, 5), (1, 70)]))
    x = data.draw(arrays(dtype, shape, lo=-4.0, hi=4.0))
    x.flat[:2] = [0.0, -0.0][:x.size]  # the kink: torch's gradient there is the slope's
    g = data.draw(arrays(dtype, shape))
    y = ops.leaky_relu_forward(x, slope)
    gx = ops.leaky_relu_backward(g, x, slope)
    assert_array_equal(y, ref.leaky_relu_forward(x, slope))
    assert_array_equal(gx, ref.leaky_relu_backward(g, x, slope))
    for n in (1, 2):
        assert_array_equal(with_threads(n, ops.leaky_relu_forward, x, slope), y)
        assert_array_equal(with_threads(n, ops.leaky_relu_backward, g, x, slope), gx)
    xt = torch.from_numpy(x).requires_grad_()
    yt = F.leaky_relu(xt, slope)
    yt.backward(torch.from_numpy(g))
    assert_array_equal(y, yt.detach().numpy())
    assert_array_equal(gx, xt.grad.numpy())
    # the gradient is the transpose of the Jacobian (difference quotients away from 0)
    u = np.where(abs(x) < 2e-3, 0, data.draw(arrays(dtype, shape)))
    t = 1e-3
    ju = (f64(ops.leaky_relu_forward(x + t * u, slope)) - f64(y)) / t
    err = np.finfo(dtype).eps * (1 + abs(slope)) * (abs(f64(x)) + t * abs(f64(u))) / t
    assert abs(np.vdot(ju, f64(g)) - np.vdot(f64(u), f64(gx))) <= np.vdot(err, abs(f64(g))) + 1e-12


def test_nan_and_errors():
    x = np.array([np.nan, -2.0, 3.0])
    assert_array_equal(ops.leaky_relu_forward(x, 0.5), [np.nan, -1.0, 3.0])
    with pytest.raises(ValueError, match="shape"):
        ops.leaky_relu_backward(x, x[:2])
    with pytest.raises(TypeError, match="float32"):
        ops.leaky_relu_backward(x, x.astype(np.float32))
    with pytest.raises(ValueError, match="negative_slope must be finite"):
        rp.LeakyReLU(np.inf)
    with pytest.raises(TypeError, match="negative_slope must be a real number"):
        rp.LeakyReLU("0.1")


class Net(nn.Module):
    """Conv, LeakyReLU (module), pooling, conv, F.leaky_relu, a ReLU, a residual sum."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.act1 = nn.LeakyReLU(0.2)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 5, bias=bias)

    def forward(self, x):
        y = self.pool(self.act1(self.conv1(x)))
        y = self.relu(F.leaky_relu(self.conv2(y), 0.05) + y)
        return self.fc(torch.flatten(y, 1))


def _net(bias=True, seed=0):
    torch.manual_seed(seed)
    return Net(bias).double().eval()


def test_from_torch_gradient_and_reference(rng):
    module = _net()
    net = rp.from_torch(module, (3, 8, 8))
    slopes = [(n.name, n.layer.negative_slope) for n in net.nodes if n.layer.kind == "leaky_relu"]
    assert slopes == [("act1", 0.2), ("leaky_relu", 0.05)]
    x = rng.normal(size=(4, 3, 8, 8))
    xt = torch.from_numpy(x).requires_grad_()
    module(xt)[:, 2].sum().backward()
    assert_allclose(rp.gradient(net, x, 2), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert_allclose(rp.gradient(net, x, 2), ref.gradient(net, x, 2), rtol=1e-10, atol=1e-13)
    R = rp.lrp(net, x, 2, "epsilon_plus_flat")
    rules = rp.composites.EpsilonPlusFlat().rules(net)
    assert [r.registry_name for n, r in zip(net.nodes, rules) if n.layer.kind == "leaky_relu"] \
        == ["pass", "pass"]  # the activation slot's default
    want = ref.lrp(net, x, ref.seed(2, ref.forward(net, x)[-1], scale=True), rules)
    assert_allclose(R, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    # LRP-0 is gradient x input, as for ReLU: leaky(z) = leaky'(z) z, as relu(z) = relu'(z) z
    lrp0 = rp.lrp(net, x, 2, rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0))
    assert_allclose(lrp0, rp.gradient_x_input(net, x, 2), rtol=1e-9, atol=1e-12)


def test_zero_root_taylor_is_gradient_x_input_without_biases(rng):
    """A bias-free LeakyReLU network is positively homogeneous (f(t x) = t f(x), t > 0), as a
    ReLU network: Taylor's "zero" root gives gradient x input, and sum R = f_t(x)."""
    net = rp.from_torch(_net(bias=False), (3, 8, 8))
    x = rng.normal(size=(3, 3, 8, 8))
    R = rp.taylor(net, x, 1, root="zero")
    assert_allclose(R, rp.gradient_x_input(net, x, 1), rtol=1e-9, atol=1e-12)
    assert_allclose(R.reshape(3, -1).sum(1), net(x)[:, 1], rtol=1e-9)


def test_lrp_matches_zennit(rng):
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient

    # Zennit hooks modules, so F.leaky_relu and the residual sum of Net would get the gradient
    # there (relprop: Pass, Norm): compare on a chain of modules
    module = _net()
    chain = nn.Sequential(module.conv1, module.act1, module.pool, nn.Flatten(), module.fc)
    cnet = rp.from_torch(chain, (3, 8, 8))
    x = rng.normal(size=(2, 3, 8, 8))
    xt = torch.from_numpy(x).requires_grad_()
    cout = cnet(x)
    cseed = np.zeros_like(cout)
    cseed[:, 3] = cout[:, 3]
    with Gradient(model=chain, composite=zc.EpsilonPlusFlat()) as attributor:
        _, want = attributor(xt, torch.from_numpy(cseed))
    got = rp.lrp(cnet, x, cseed, "epsilon_plus_flat")
    assert_allclose(got, want.detach().numpy(), rtol=1e-7, atol=1e-10 * abs(got).max())


@pytest.mark.parametrize("method,captum_name", [("deconvnet", "Deconvolution"),
                                                ("guided_backprop", "GuidedBackprop")])
def test_deconvnet_and_guided_backprop_pass_its_gradient_as_captum(rng, method, captum_name):
    captum = pytest.importorskip("captum.attr")
    module = _net()
    net = rp.from_torch(module, (3, 8, 8))
    x = rng.normal(size=(3, 3, 8, 8))
    got = rp.explain(net, x, 1, method)
    xt = torch.from_numpy(x).requires_grad_()
    with pytest.warns(UserWarning, match="backward hooks on ReLU"):
        want = getattr(captum, captum_name)(module).attribute(xt, target=1)
    assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert_allclose(got, getattr(ref, method)(net, x, 1), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
def test_from_onnx_of_both_exporters(tmp_path, rng, dynamo):
    pytest.importorskip("onnxruntime")
    module = _net().float()
    path = tmp_path / "m.onnx"
    if dynamo:
        torch.onnx.export(module, (torch.zeros(2, 3, 8, 8),), str(path), dynamo=True,
                          input_names=["x"], dynamic_shapes=({0: torch.export.Dim("n")},),
                          external_data=False, verbose=False)
    else:
        torch.onnx.export(module, (torch.zeros(2, 3, 8, 8),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    net = rp.from_onnx(path)  # checks itself against onnxruntime
    assert sorted(n.layer.negative_slope for n in net.nodes if n.layer.kind == "leaky_relu") \
        == pytest.approx([0.05, 0.2])
    x = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert_allclose(net(x), want, rtol=1e-5, atol=1e-5 * abs(want).max())


def test_saved_and_loaded(tmp_path, rng):
    net = rp.Sequential([rp.Dense(rng.normal(size=(6, 4))), rp.LeakyReLU(0.3),
                         rp.Dense(rng.normal(size=(2, 6)))], input_shape=(4,))
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert back.layers[1].negative_slope == 0.3 and back.layers[1].describe() == "LeakyReLU 0.3"
    x = rng.normal(size=(5, 4))
    assert_array_equal(back(x), net(x))
    assert_allclose(net(x), ref.forward(net, x)[-1], rtol=1e-12)
