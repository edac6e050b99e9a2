"""Products (issue 27): ``Mul``, the element-wise product of two tensors broadcast against each
other (squeeze-and-excitation ``x * s``: the operand a Sigmoid or Hardsigmoid makes is a gate,
which gets no relevance; any other product splits it in halves), and ``Scale``, the product
with a parameter (ConvNeXt's layer scale: a linear map, the Norm rule).  Both against their
twins on random broadcast shapes, gradients against finite differences and torch autograd, LRP
against the reference and conserving on bias-free networks, the importers (torch.fx and both
ONNX exporters: ``x * sigmoid(x)`` is a SiLU), model files and bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import reference as ref
from relprop.reference.layers import twin

import nets
from strategies import DTYPES, arrays

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


# --- the layers against their twins -----------------------------------------------------------
@st.composite
def broadcast_pairs(draw):
    """Two per-sample shapes that broadcast against each other (each axis of one of them 1 at
    random, leading axes of one of them dropped at random), a batch and a dtype."""
    full = draw(st.lists(st.integers(1, 4), min_size=1, max_size=4))
    shapes = []
    for _ in range(2):
        s = [1 if draw(st.booleans()) else d for d in full]
        shapes.append(tuple(s[draw(st.integers(0, len(s) - 1)):]))
    n, dtype = draw(st.integers(1, 3)), draw(DTYPES)
    a = draw(arrays(dtype, (n,) + shapes[0]))
    b = draw(arrays(dtype, (n,) + shapes[1]))
    g = draw(arrays(dtype, (n,) + np.broadcast_shapes(shapes[0], shapes[1])))
    return a, b, g


@given(broadcast_pairs())
def test_mul_matches_its_twin(problem):
    a, b, g = problem
    layer = rp.Mul()
    y = layer.forward(a, b)[0]
    assert y.shape == (len(a),) + layer.output_shape(a.shape[1:], b.shape[1:])
    assert_array_equal(y, twin(layer).forward(layer, a, b))
    got, want = layer.vjp(g, (a, b), None), twin(layer).backward(layer, g, [a, b], "gradient")
    for gx, wx, x in zip(got, want, (a, b)):
        assert gx.shape == x.shape and gx.dtype == x.dtype
        tol = 4 * np.finfo(a.dtype).eps * g.size
        assert_allclose(gx, wx, rtol=tol, atol=tol)
    # the adjoint identity: <d(a*b), g> = <da, ga> + <db, gb>, in float64
    a64, b64, g64 = (v.astype(np.float64) for v in (a, b, g))
    da, db = np.cos(np.arange(a.size)).reshape(a.shape), np.sin(np.arange(b.size)).reshape(b.shape)
    mul = twin(layer).forward
    lhs = np.vdot(mul(layer, da, b64) + mul(layer, a64, db), g64)
    ga, gb = layer.vjp(g64, (a64, b64), None)
    assert_allclose(lhs, np.vdot(da, ga) + np.vdot(db, gb), atol=1e-12 * max(1, g.size))


@st.composite
def scale_problems(draw):
    """A sample shape, a weight that broadcasts to it without growing it (per channel
    (c, 1, 1), per last-axis feature, a scalar, the whole shape), a batch and a dtype."""
    shape = tuple(draw(st.lists(st.integers(1, 4), min_size=1, max_size=3)))
    kind = draw(st.sampled_from(["channel", "last", "scalar", "full", "mixed"]))
    if kind == "channel":
        w_shape = (shape[0],) + (1,) * (len(shape) - 1)
    elif kind == "last":
        w_shape = shape[-1:]
    elif kind == "scalar":
        w_shape = ()
    elif kind == "full":
        w_shape = shape
    else:
        w_shape = tuple(1 if draw(st.booleans()) else d for d in shape)[
            draw(st.integers(0, len(shape) - 1)):]
    dtype = draw(DTYPES)
    x = draw(arrays(dtype, (draw(st.integers(1, 3)),) + shape))
    w = draw(arrays(np.float64, w_shape, -2.0, 2.0))
    return x, w


@given(scale_problems())
def test_scale_matches_its_twin(problem):
    x, w = problem
    layer = rp.Scale(w)
    assert layer.output_shape(x.shape[1:]) == x.shape[1:]
    y = layer.forward(x)[0]
    assert y.dtype == x.dtype
    assert_array_equal(y, twin(layer).forward(layer, x))  # one rounding of one product each
    assert_array_equal(layer.backward(x, x, None), twin(layer).backward(layer, x, [x], "")[0])


# --- networks with products -------------------------------------------------------------------
class SE(nn.Module):
    """A conv, its activation, a squeeze-and-excitation gate (pooling, two 1x1 convs, the
    gate's activation, ``scale * x`` as torchvision writes it), a product of two activations
    (no gate), a layer scale, a residual sum, pooling, Linear."""

    def __init__(self, gate=nn.Sigmoid, bias=True):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.act = nn.SiLU()
        self.fc1 = nn.Conv2d(6, 3, 1, bias=bias)
        self.fc2 = nn.Conv2d(3, 6, 1, bias=bias)
        self.gate = gate()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.layer_scale = nn.Parameter(torch.linspace(-1.5, 2.0, 6).reshape(6, 1, 1))
        self.fc = nn.Linear(6, 4, bias=bias)

    def forward(self, x):
        y = self.act(self.conv(x))
        s = self.gate(self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(y, 1)))))
        y = s * y
        z = self.conv2(y) * torch.tanh(y)  # a product of two activations: the uniform rule
        y = y + self.layer_scale * z * 0.5
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(y, 1), 1))


def _se(gate=nn.Sigmoid, bias=True, seed=0):
    torch.manual_seed(seed)
    return SE(gate, bias).double().eval()


def _products(net):
    return [n.layer for n in net.nodes if isinstance(n.layer, rp.Mul)]


@pytest.mark.parametrize("gate", [nn.Sigmoid, nn.Hardsigmoid])
def test_from_torch_forward_gradient_and_lrp(gate, rng):
    module = _se(gate)
    net = rp.from_torch(module, (3, 6, 6))
    assert [m.gate for m in _products(net)] == [0, None]  # the gate first: scale * y
    assert sum(isinstance(n.layer, rp.Scale) for n in net.nodes) == 2  # the parameter, 0.5
    x = rng.normal(size=(3, 3, 6, 6))
    xt = torch.from_numpy(x).requires_grad_()
    out = module(xt)
    out[:, 1].sum().backward()
    assert_allclose(net(x), out.detach().numpy(), rtol=1e-12, atol=1e-14)
    want = xt.grad.numpy()
    tol = 1e-7 if gate is nn.Hardsigmoid else 1e-10  # torch's float32(1/6) (test_smooth_layers)
    assert_allclose(rp.gradient(net, x, 1), want, rtol=0, atol=tol * np.abs(want).max())
    assert_allclose(rp.gradient(net, x, 1), ref.gradient(net, x, 1), rtol=1e-10, atol=1e-14)
    # one direction of finite differences through the products' broadcasts
    u = np.cos(np.arange(x.size)).reshape(x.shape)
    h = 1e-5
    fd = (net(x + h * u)[:, 1].sum() - net(x - h * u)[:, 1].sum()) / (2 * h)
    assert_allclose(np.vdot(rp.gradient(net, x, 1), u), fd, rtol=1e-7)
    for name in ("epsilon_plus_flat", "epsilon_gamma_box"):
        kw = {"low": -3.0, "high": 3.0} if name == "epsilon_gamma_box" else {}
        rules = rp.composites.COMPOSITES[name](**kw).rules(net)
        assert {r.registry_name for n, r in zip(net.nodes, rules)
                if n.layer.kind in ("mul", "scale")} == {"product", "norm"}
        got = rp.lrp(net, x, 1, name, **kw)
        want_r = ref.lrp(net, x, ref.seed(1, ref.forward(net, x)[-1], scale=True), rules)
        assert_allclose(got, want_r, rtol=1e-9, atol=1e-12 * np.abs(want_r).max())


def test_the_gate_gets_no_relevance_and_the_uniform_rule_halves(rng):
    """Node by node: a gated product hands its relevance whole to the gated operand (the gate
    branch's nodes get none), an ungated one half to each (summed over what broadcast), and a
    Scale keeps it (Norm, stabilizer 0)."""
    net = rp.from_torch(_se(), (3, 6, 6))
    x = rng.normal(size=(2, 3, 6, 6))
    comp = rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0)
    R = rp.lrp(net, x, 2, comp, layerwise=True)
    gated, ungated = [n for n in net.nodes if isinstance(n.layer, rp.Mul)]
    s, y = gated.inputs
    assert not R[s].any() and not R[net.node(s).inputs[0]].any()  # the whole gate branch
    assert_allclose(R[y], R[gated.name], rtol=0, atol=0)
    a, b = ungated.inputs
    assert_allclose(R[a].reshape(2, -1).sum(1), R[ungated.name].reshape(2, -1).sum(1) / 2,
                    rtol=1e-12)
    assert_allclose(R[b], R[ungated.name] / 2, rtol=1e-15)
    for node in net.nodes:
        if isinstance(node.layer, rp.Scale):
            assert_allclose(R[node.inputs[0]], R[node.name], rtol=1e-12)


@pytest.mark.parametrize("gate", [nn.Sigmoid, nn.Hardsigmoid])
def test_lrp0_conserves_on_a_bias_free_net(gate, rng):
    net = rp.from_torch(_se(gate, bias=False), (3, 6, 6))
    x = rng.normal(size=(3, 3, 6, 6))
    R = rp.lrp(net, x, 0, rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0))
    assert_allclose(R.reshape(3, -1).sum(1), net(x)[:, 0], rtol=1e-10)


def test_a_gate_is_what_a_gating_layer_makes_in_any_network(tmp_path, rng):
    """A user's Graph resolves the gate as the importers do: the operand made by a Sigmoid or
    Hardsigmoid when exactly one is; two gates or none make the uniform rule; an explicit gate
    stays; all of it kept by model files."""
    d = 4
    w = rng.normal(size=(d, d))
    nodes = [("a", rp.Dense(w), ["input"]), ("s", rp.Sigmoid(), ["a"]),
             ("t", rp.Hardsigmoid(), ["a"]), ("g", rp.Mul(), ["input", "s"]),
             ("u", rp.Mul(), ["s", "t"]), ("v", rp.Mul(), ["a", "input"]),
             ("e", rp.Mul(1), ["a", "input"]), ("sum", rp.Add(), ["g", "u", "v", "e"])]
    net = rp.Graph(nodes, input_shape=(d,))
    assert [net.node(k).layer.gate for k in "guve"] == [1, None, None, 1]
    assert net.node("g").layer.describe() == "Mul (input 1 gates)"
    x = rng.normal(size=(2, d))
    assert_allclose(net(x), ref.forward(net, x)[-1], rtol=1e-13)
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert [back.node(k).layer.gate for k in "guve"] == [1, None, None, 1]
    assert_array_equal(back(x), net(x))


def test_saved_and_loaded(tmp_path, rng):
    net = rp.from_torch(_se(nn.Hardsigmoid), (3, 6, 6))
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert [m.gate for m in _products(back)] == [0, None]
    assert [n.layer.describe() for n in back.nodes] == [n.layer.describe() for n in net.nodes]
    x = rng.normal(size=(2, 3, 6, 6))
    assert_array_equal(back(x), net(x))
    assert_array_equal(rp.lrp(back, x, 1), rp.lrp(net, x, 1))


# --- ONNX -------------------------------------------------------------------------------------
@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
@pytest.mark.parametrize("gate", [nn.Sigmoid, nn.Hardsigmoid])
def test_from_onnx_of_both_exporters(tmp_path, rng, gate, dynamo):
    pytest.importorskip("onnxruntime")
    module = _se(gate).float()
    path = nets.onnx_export(module, tmp_path / "m.onnx", (3, 6, 6), dynamo=dynamo)
    net = rp.from_onnx(path)  # checks itself against onnxruntime
    assert [m.gate for m in _products(net)] == [0, None]
    assert sum(isinstance(n.layer, rp.Scale) for n in net.nodes) in (1, 2)  # constants fold
    x = rng.normal(size=(3, 3, 6, 6)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert_allclose(net(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
def test_onnx_silu_is_a_silu(tmp_path, rng, dynamo):
    """``Mul(x, Sigmoid(x))`` is read as one SiLU of x (its kernel, its Pass rule)."""
    pytest.importorskip("onnxruntime")
    torch.manual_seed(0)
    module = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.SiLU(), nn.Conv2d(4, 2, 3)).eval()
    path = nets.onnx_export(module, tmp_path / "m.onnx", (3, 6, 6), dynamo=dynamo)
    net = rp.from_onnx(path)
    assert [n.layer.kind for n in net.nodes] == ["conv2d", "silu", "conv2d"]
    x = rng.normal(size=(2, 3, 6, 6)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert_allclose(net(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_bad_input_is_refused(rng):
    with pytest.raises(ValueError, match="Mul gate must be 'auto', None, 0 or 1"):
        rp.Mul(2)
    with pytest.raises(ValueError, match="Mul gate must be"):
        rp.Mul(True)
    with pytest.raises(ValueError, match="broadcast against each other"):
        rp.Graph([("m", rp.Mul(), ["input", "d"]), ("d", rp.Dense(np.ones((3, 4))), ["input"])],
                 input_shape=(4,), output="m")
    with pytest.raises(ValueError, match="does not broadcast against samples of shape"):
        rp.Sequential([rp.Scale(np.ones((2, 3)))], input_shape=(3,))
    with pytest.raises(ValueError, match="weight"):
        rp.Scale(np.array([np.nan]))

    class Outer(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(2, 3, 4))

        def forward(self, x):
            return x * self.w

    with pytest.raises(ValueError, match=r"factor of shape \(2, 3, 4\) has more axes than the"):
        rp.from_torch(Outer(), (4,))


def test_zennit_compat_crosses_products_as_the_gradient(rng):
    """``zennit_compat=True``: the products (gated or not), the layer scales and the LayerNorms
    get the Gradient rule (what Zennit does where it hooks no rule), = the reference; the gate
    branch then receives relevance."""
    net = rp.from_torch(_se(), (3, 6, 6))
    x = rng.normal(size=(2, 3, 6, 6))
    comp = rp.composites.EpsilonPlusFlat(zennit_compat=True)
    rules = comp.rules(net)
    assert {r.registry_name for n, r in zip(net.nodes, rules)
            if n.layer.kind in ("mul", "scale")} == {"gradient"}
    assert {r.registry_name for n, r in zip(net.nodes, rp.composites.EpsilonPlusFlat().rules(net))
            if n.layer.kind == "mul"} == {"product"}
    got = rp.lrp(net, x, 1, comp)
    want = ref.lrp(net, x, ref.seed(1, ref.forward(net, x)[-1], scale=True), rules)
    assert_allclose(got, want, rtol=1e-9, atol=1e-12 * np.abs(want).max())
    R = rp.lrp(net, x, 1, comp, layerwise=True)
    gated = next(n for n in net.nodes if isinstance(n.layer, rp.Mul) and n.layer.gate == 0)
    assert np.abs(R[gated.inputs[0]]).max() > 0
    assert not np.allclose(got, rp.lrp(net, x, 1, "epsilon_plus_flat"))
