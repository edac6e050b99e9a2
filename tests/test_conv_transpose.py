"""ConvTranspose2d: the adjoint of a Conv2d, run on that convolution's kernels with forward and
backward swapped.  Against its NumPy twin (the scatter of each input over its window) on random
geometries (stride, padding, output padding, dilation, groups) and dtypes, bitwise on any thread
count and instruction set, the adjoint identity, torch's forward and float64 gradient, every
LRP rule against the reference, Zennit's composites, both importers and model files."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import reference as ref
from relprop.reference.network import layer_backward, layer_forward

import nets
from strategies import DTYPES, arrays, f64, sum_tolerance, with_threads


@st.composite
def conv_transpose_problems(draw):
    """(layer, x, g): a ConvTranspose2d of random geometry (output padding below the stride or
    the dilation, reaching past the stride where the dilation allows), its input and an upper
    gradient."""
    dtype = draw(DTYPES)
    groups = draw(st.integers(1, 3))
    c_in, c_out = groups * draw(st.integers(1, 3)), groups * draw(st.integers(1, 3))
    k = (draw(st.integers(1, 4)), draw(st.integers(1, 4)))
    s = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    d = (draw(st.integers(1, 3)), draw(st.integers(1, 3)))
    p = tuple(draw(st.integers(0, d_ * (k_ - 1))) for k_, d_ in zip(k, d))
    op = tuple(draw(st.integers(0, max(s_, d_) - 1)) for s_, d_ in zip(s, d))
    hw = tuple(draw(st.integers(1, 6)) for _ in range(2))
    out = [(h - 1) * s_ - 2 * p_ + d_ * (k_ - 1) + op_ + 1
           for h, s_, p_, d_, k_, op_ in zip(hw, s, p, d, k, op)]
    if min(out) < 1:  # a padding larger than the output: shrink it
        p = (0, 0)
    w = draw(arrays(dtype, (c_in, c_out // groups) + k))
    b = draw(st.one_of(st.none(), arrays(dtype, (c_out,))))
    layer = rp.ConvTranspose2d(w, b, s, p, op, d, groups)
    n = draw(st.integers(1, 3))
    x = draw(arrays(dtype, (n, c_in) + hw))
    y_shape = (n,) + layer.output_shape((c_in,) + hw)
    g = draw(arrays(dtype, y_shape))
    return layer, x, g


@given(conv_transpose_problems())
def test_matches_twin_bitwise_on_any_thread_count_and_is_adjoint(problem):
    layer, x, g = problem
    y = layer.forward(x)[0]
    gx = layer.backward(g, x, None)
    assert y.shape == (len(x),) + layer.output_shape(x.shape[1:]) and y.dtype == x.dtype
    want = layer_forward(layer, f64(x))
    bound = layer_forward(rp.ConvTranspose2d(abs(f64(layer.weight)), None, layer.stride,
                                             layer.padding, layer.output_padding,
                                             layer.dilation, layer.groups), abs(f64(x)))
    bias = 0 if layer.bias is None else abs(f64(layer.bias)).reshape(-1, 1, 1)
    terms = layer.weight.shape[2] * layer.weight.shape[3] * layer.weight.shape[0] + 1
    assert np.all(abs(f64(y) - want) <= sum_tolerance(x.dtype, terms, bound + bias))
    want_gx = layer_backward(layer, f64(g), [f64(x)])[0]
    assert_allclose(gx, want_gx, rtol=1e-4 if x.dtype == np.float32 else 1e-10,
                    atol=1e-5 if x.dtype == np.float32 else 1e-12)
    for n in (1, 2):
        assert_array_equal(with_threads(n, lambda: layer.forward(x)[0]), y)
        assert_array_equal(with_threads(n, layer.backward, g, x, None), gx)
    # the backward pass is the forward pass's transpose (the bias aside); y's rounding is
    # relative to |W||x| + |b| (a bias can absorb a tiny W x whole), gx's to |x||gx|
    lin = f64(y) if layer.bias is None else f64(y) - f64(layer.bias).reshape(-1, 1, 1)
    scale = np.vdot(bound + bias, abs(f64(g))) + np.vdot(abs(f64(x)), abs(f64(gx))) + 1e-30
    tol = 1e-5 if x.dtype == np.float32 else 1e-12
    assert abs(np.vdot(lin, f64(g)) - np.vdot(f64(x), f64(gx))) <= tol * scale


def test_matches_torch_every_isa(isa, rng):
    torch = pytest.importorskip("torch")
    for cin, cout, k, s, p, op, d, g in [(4, 6, 3, 2, 1, 1, 1, 2), (3, 4, 2, 2, 0, 0, 1, 1),
                                         (2, 3, 3, 1, 3, 2, 3, 1), (4, 4, 1, 3, 0, 2, 1, 4),
                                         (5, 3, 3, 1, 1, 0, 1, 1)]:
        torch.manual_seed(cin * 7 + k)
        m = torch.nn.ConvTranspose2d(cin, cout, k, s, p, op, groups=g, dilation=d).double()
        layer = rp.ConvTranspose2d(m.weight.detach().numpy(), m.bias.detach().numpy(), s, p,
                                   op, d, g)
        x = rng.normal(size=(2, cin, 5, 4))
        xt = torch.from_numpy(x).requires_grad_()
        y = m(xt)
        gy = rng.normal(size=tuple(y.shape))
        y.backward(torch.from_numpy(gy))
        assert_allclose(layer.forward(x)[0], y.detach().numpy(), rtol=1e-12, atol=1e-12)
        assert_allclose(layer.backward(gy, x, None), xt.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_errors_and_description():
    w = np.ones((4, 3, 2, 2))
    with pytest.raises(ValueError, match=r"output_padding \(2, 2\) must be smaller than the "
                                         r"stride \(2, 2\) or the dilation"):
        rp.ConvTranspose2d(w, stride=2, output_padding=2)
    with pytest.raises(ValueError, match=r"bias must have shape \(6,\)"):
        rp.ConvTranspose2d(w, np.ones(3), groups=2)
    with pytest.raises(ValueError, match="expects 4 input channels"):
        rp.ConvTranspose2d(w).output_shape((3, 5, 5))
    layer = rp.ConvTranspose2d(w, stride=2, output_padding=1, groups=2)
    assert layer.output_shape((4, 3, 5)) == (6, 7, 11)
    assert layer.describe() == "ConvTranspose2d 4->6 2x2 stride 2 pad 0 outpad 1 groups 2"
    assert layer.slots[0] == "convolution" and type(layer) in rp.layers.slot_types("convolution")


def _net(rng, bias=True):
    """ConvTranspose2d first (the input layer), a ReLU, a second one with groups and output
    padding, a Conv2d and a Dense head."""
    b = (lambda n: rng.normal(size=n) * 0.1) if bias else (lambda n: None)
    layers = [rp.ConvTranspose2d(rng.normal(size=(3, 4, 3, 3)) / 3, b(4), stride=2, padding=1),
              rp.ReLU(),
              rp.ConvTranspose2d(rng.normal(size=(4, 2, 2, 2)) / 3, b(4), stride=2,
                                 output_padding=1, groups=2), rp.ReLU(),
              rp.Conv2d(rng.normal(size=(2, 4, 3, 3)) / 6, b(2), stride=2), rp.ReLU(),
              rp.Flatten()]
    net = rp.Sequential(layers, input_shape=(3, 3, 3))
    feat = int(np.prod(net.output_shape))
    return rp.Sequential(layers + [rp.Dense(rng.normal(size=(3, feat)) / np.sqrt(feat), b(3))],
                         input_shape=(3, 3, 3))


@pytest.mark.parametrize("rule", [rp.rules.Epsilon(0.01), rp.rules.ZPlus(), rp.rules.Gamma(0.25),
                                  rp.rules.AlphaBeta(2, 1), rp.rules.WSquare(), rp.rules.Flat(),
                                  rp.rules.ZBox(-1.0, 1.0)], ids=lambda r: type(r).__name__)
def test_every_rule_matches_the_reference(rule, rng):
    net = _net(rng)
    x = rng.uniform(-1, 1, size=(3, 3, 3, 3))
    comp = rp.Composite([("linear", rule)])
    R = rp.lrp(net, x, 2, comp)
    seed = ref.seed(2, ref.forward(net, x)[-1], scale=True)
    assert_allclose(R, ref.lrp(net, x, seed, comp.rules(net)), rtol=1e-8,
                    atol=1e-10 * abs(R).max())


def test_lrp0_is_gradient_x_input_and_conserves_without_biases(rng):
    net = _net(rng, bias=False)
    x = rng.uniform(-1, 1, size=(2, 3, 3, 3))
    R = rp.lrp(net, x, 1, rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0))
    assert_allclose(R, rp.gradient_x_input(net, x, 1), rtol=1e-9, atol=1e-12)
    assert_allclose(R.reshape(2, -1).sum(1), net(x)[:, 1], rtol=1e-9)


torch = pytest.importorskip("torch")
nn = torch.nn


class Decoder(nn.Module):
    """Transposed convolutions as a decoder writes them: a module with output padding and
    groups, F.conv_transpose2d with the module's parameters, a stride-1 3x3 one."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.up1 = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1, groups=2)
        self.w = nn.Parameter(torch.randn(4, 4, 2, 2) * 0.3)
        self.b = nn.Parameter(torch.randn(4) * 0.1)
        self.up3 = nn.ConvTranspose2d(4, 2, 3, padding=1)
        self.fc = nn.Linear(2 * 16 * 16, 3)

    def forward(self, x):
        y = torch.relu(self.up1(torch.relu(self.conv(x))))
        y = torch.relu(torch.nn.functional.conv_transpose2d(y, self.w, self.b, stride=2))
        return self.fc(torch.flatten(self.up3(y), 1))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_imported(tmp_path, rng, path):
    torch.manual_seed(0)
    module = Decoder().double().eval()
    net = nets.imported(module, (3, 4, 4), path, tmp_path)
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count("convtranspose2d") == 3
    x = rng.normal(size=(2, 3, 4, 4))
    xt = torch.from_numpy(x).requires_grad_(True)
    out = module(xt)
    if path == "from_torch":
        assert_allclose(net(x), out.detach().numpy(), rtol=1e-12, atol=1e-12)
        out[:, 1].sum().backward()
        assert_allclose(rp.gradient(net, x, 1), xt.grad.numpy(), rtol=1e-10, atol=1e-13)
        net.save(tmp_path / "m.npz")
        assert_array_equal(rp.load(tmp_path / "m.npz")(x), net(x))
    else:
        want = out.detach().numpy()
        assert_allclose(net(x.astype(np.float32)), want, rtol=1e-4, atol=1e-4 * abs(want).max())


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_matches_zennit(rng, composite):
    """Zennit's Convolution type covers ConvTranspose2d: its composites give it the rules of
    a Conv2d (the first layer's too), as relprop's convolution slot does."""
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient

    torch.manual_seed(1)
    chain = nn.Sequential(nn.ConvTranspose2d(3, 4, 3, stride=2, padding=1), nn.ReLU(),
                          nn.ConvTranspose2d(4, 4, 2, stride=2, groups=2), nn.ReLU(),
                          nn.Conv2d(4, 4, 3, stride=2), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 5)).double().eval()
    net = rp.from_torch(chain, (3, 5, 5))
    x = rng.uniform(-1, 1, size=(2, 3, 5, 5))
    out = net(x)
    seed = np.zeros_like(out)
    seed[:, 2] = out[:, 2]
    kw = {"low": -1.0, "high": 1.0} if composite == "epsilon_gamma_box" else {}
    zcomp = {"epsilon_plus_flat": zc.EpsilonPlusFlat,
             "epsilon_gamma_box": zc.EpsilonGammaBox}[composite](**kw)
    with Gradient(model=chain, composite=zcomp) as attributor:
        _, want = attributor(torch.from_numpy(x).requires_grad_(), torch.from_numpy(seed))
    got = rp.lrp(net, x, seed, composite, **kw)
    assert_allclose(got, want.detach().numpy(), rtol=1e-7, atol=1e-10 * abs(got).max())
