"""Conv1d: the layer (the 2-D kernels on (c, 1, L) planes) against its NumPy twin and torch on
random shapes, strides, paddings, dilations and groups, the adjoint identity, thread
invariance; in networks (BatchNorm1d folded into it, F.conv1d with the module's parameters)
against torch autograd, the reference and Zennit (whose Convolution type covers Conv1d: the
composites' convolution slot), through from_torch and both ONNX exporters; model files."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import reference as ref
from relprop.reference.layers import twin

import nets
from strategies import DTYPES, arrays, f64, sum_tolerance, with_threads

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


@st.composite
def conv1d_problems(draw):
    """``(x, layer)``: groups 1 to 3 (depthwise among them), kernels 1 to 5, strides and
    dilations 1 to 3, padding up to the dilated kernel's extent, lengths that fit."""
    dtype = draw(DTYPES)
    groups = draw(st.integers(1, 3))
    cg, og = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    k, s, d = draw(st.integers(1, 5)), draw(st.integers(1, 3)), draw(st.integers(1, 3))
    extent = d * (k - 1) + 1
    p = draw(st.integers(0, extent))
    length = draw(st.integers(max(1, extent - 2 * p), 40))
    x = draw(arrays(dtype, (draw(st.integers(1, 3)), cg * groups, length)))
    w = draw(arrays(dtype, (og * groups, cg, k)))
    b = draw(st.one_of(st.none(), arrays(dtype, (og * groups,))))
    return x, rp.Conv1d(w, b, s, p, d, groups)


@given(conv1d_problems(), st.data())
def test_layer_matches_twin_torch_and_any_thread_count(prob, data):
    x, layer = prob
    dtype, tw = x.dtype, twin(layer)
    terms = int(np.prod(layer.weight.shape[1:])) + 1
    # |W| and |b|: the twin on them bounds each sum's terms
    bounds = layer.with_parameters(abs(f64(layer.weight)),
                                   None if layer.bias is None else abs(f64(layer.bias)))
    y = layer.forward(x)[0]
    assert y.dtype == dtype and y.shape == (len(x),) + layer.output_shape(x.shape[1:])
    tol = sum_tolerance(dtype, terms, tw.forward(bounds, abs(f64(x))))
    assert np.all(abs(y - tw.forward(layer, f64(x))) <= tol)
    g = data.draw(arrays(dtype, y.shape))
    gx = layer.backward(g, x, None)
    assert gx.shape == x.shape
    gtol = sum_tolerance(dtype, terms, tw.backward(bounds, abs(f64(g)), [x], "gradient")[0])
    assert np.all(abs(gx - tw.backward(layer, f64(g), [x], "gradient")[0]) <= gtol)
    xt = torch.from_numpy(f64(x)).requires_grad_()
    yt = F.conv1d(xt, torch.tensor(f64(layer.weight)),  # (copies: the layer's are read-only)
                  None if layer.bias is None else torch.tensor(f64(layer.bias)),
                  layer.stride, layer.padding, layer.dilation, layer.groups)
    yt.backward(torch.from_numpy(f64(g)))
    assert np.all(abs(y - yt.detach().numpy()) <= tol)
    assert np.all(abs(gx - xt.grad.numpy()) <= gtol)
    # the adjoint identity <conv(x), g> = <x, conv^T(g)> (without the bias)
    y0 = layer.apply(x, layer.weight, None)
    lhs, rhs = np.vdot(f64(y0), f64(g)), np.vdot(f64(x), f64(gx))
    scale = np.vdot(abs(f64(y0)), abs(f64(g))) + np.vdot(abs(f64(x)), abs(f64(gx)))
    assert abs(lhs - rhs) <= 4 * np.finfo(dtype).eps * terms * scale + 1e-30
    for n in (1, 2):
        assert_array_equal(with_threads(n, lambda: layer.forward(x)[0]), y)
        assert_array_equal(with_threads(n, lambda: layer.backward(g, x, None)), gx)


def test_errors_name_the_layer():
    with pytest.raises(ValueError, match="weight must have 3 dimensions"):
        rp.Conv1d(np.ones((2, 2, 3, 3)))
    with pytest.raises(ValueError, match="groups=2 needs a number of output channels"):
        rp.Conv1d(np.ones((3, 1, 3)), groups=2)
    with pytest.raises(ValueError, match=r"expects \(channels, length\) per sample"):
        rp.Sequential([rp.Conv1d(np.ones((2, 1, 3)))], input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="expects 1 input channels"):
        rp.Sequential([rp.Conv1d(np.ones((2, 1, 3)))], input_shape=(2, 8))
    with pytest.raises(ValueError, match=r"kernel 3 \(extent 5\) does not fit the padded input "
                                         r"\(4\)"):
        rp.Sequential([rp.Conv1d(np.ones((2, 1, 3)), dilation=2)], input_shape=(1, 4))


LENGTH = 24


class Net(nn.Module):
    """Conv1d with padding='same', BatchNorm1d (folded), a strided, dilated, grouped Conv1d,
    F.conv1d with the module's parameters, a Linear head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv1d(2, 6, 5, padding="same")
        self.bn = nn.BatchNorm1d(6, eps=0.0)  # eps 0: Zennit's merge is then exact
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv1d(6, 6, 3, stride=2, dilation=2, groups=3)
        self.w3 = nn.Parameter(torch.randn(4, 6, 3) * 0.3)
        self.b3 = nn.Parameter(torch.randn(4) * 0.1)
        self.fc = nn.Linear(4 * 10, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.2, 0.2)

    def forward(self, x):
        y = self.relu(self.bn(self.conv1(x)))
        y = self.relu(self.conv2(y))
        y = F.relu(F.conv1d(y, self.w3, self.b3, padding=1))
        return self.fc(torch.flatten(y, 1))


def _net(seed=0):
    torch.manual_seed(seed)
    return Net().double().eval()


def test_from_torch_gradient_lrp_and_reference(rng):
    module = _net()
    net = rp.from_torch(module, (2, LENGTH))
    assert [n.layer.describe() for n in net.nodes if n.layer.kind == "conv1d"] == [
        "Conv1d 2->6 5 stride 1 pad 2", "Conv1d 6->6 3 stride 2 pad 0 dil 2 groups 3",
        "Conv1d 6->4 3 stride 1 pad 1"]
    assert "batchnorm1d" not in [n.layer.kind for n in net.nodes]  # folded into conv1
    x = rng.normal(size=(3, 2, LENGTH))
    xt = torch.from_numpy(x).requires_grad_()
    module(xt)[:, 2].sum().backward()
    assert_allclose(rp.gradient(net, x, 2), xt.grad.numpy(), rtol=1e-10, atol=1e-12)
    assert_allclose(rp.gradient(net, x, 2), ref.gradient(net, x, 2), rtol=1e-10, atol=1e-13)
    for composite in (rp.composites.EpsilonPlusFlat(), rp.composites.EpsilonAlpha2Beta1(),
                      rp.composites.EpsilonGammaBox(low=-3.0, high=3.0)):
        rules = composite.rules(net)
        want = ref.lrp(net, x, ref.seed(2, ref.forward(net, x)[-1], scale=True), rules)
        assert_allclose(rp.lrp(net, x, 2, composite), want, rtol=1e-9,
                        atol=1e-12 * np.abs(want).max())


def _chain():
    """Net as a chain of modules, which Zennit's hooks see."""
    m = _net()
    conv3 = nn.Conv1d(6, 4, 3, padding=1).double()
    with torch.no_grad():
        conv3.weight.copy_(m.w3)
        conv3.bias.copy_(m.b3)
    return nn.Sequential(m.conv1, m.bn, m.relu, m.conv2, nn.ReLU(), conv3, nn.ReLU(),
                         nn.Flatten(), m.fc)


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box",
                                       "epsilon_alpha2_beta1"])
def test_lrp_matches_zennit(rng, composite):
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm

    chain = _chain()
    net = rp.from_torch(chain, (2, LENGTH))
    x = rng.normal(size=(1, 2, LENGTH))
    seed = np.zeros((1, 5))
    seed[0, 1] = net(x)[0, 1]
    ours, theirs = {
        "epsilon_plus_flat": (rp.composites.EpsilonPlusFlat(), zc.EpsilonPlusFlat),
        "epsilon_gamma_box": (rp.composites.EpsilonGammaBox(low=-3.0, high=3.0),
                              lambda canonizers: zc.EpsilonGammaBox(low=-3.0, high=3.0,
                                                                    canonizers=canonizers)),
        "epsilon_alpha2_beta1": (rp.composites.EpsilonAlpha2Beta1(), zc.EpsilonAlpha2Beta1),
    }[composite]
    with Gradient(model=chain, composite=theirs(canonizers=[SequentialMergeBatchNorm()])) as a:
        _, want = a(torch.from_numpy(x).requires_grad_(), torch.from_numpy(seed))
    got = rp.lrp(net, x, seed, ours)
    want = want.detach().numpy()
    assert np.abs(want).max() > 0
    assert_allclose(got, want, rtol=1e-7, atol=1e-10 * abs(want).max())


@pytest.mark.parametrize("path", nets.IMPORT_PATHS[1:])
def test_from_onnx_of_both_exporters(tmp_path, rng, path):
    pytest.importorskip("onnxruntime")
    module = _net()
    net = nets.imported(module, (2, LENGTH), path, tmp_path)  # checks itself: onnxruntime
    assert [n.layer.kind for n in net.nodes].count("conv1d") == 3
    x = rng.normal(size=(3, 2, LENGTH)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x).double()).numpy()
    assert_allclose(net(x), want, rtol=1e-5, atol=1e-5 * abs(want).max())


def test_saved_and_loaded(tmp_path, rng):
    net = rp.from_torch(_net(), (2, LENGTH))
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert [n.layer.describe() for n in back.nodes] == [n.layer.describe() for n in net.nodes]
    x = rng.normal(size=(2, 2, LENGTH))
    assert_array_equal(back(x), net(x))
