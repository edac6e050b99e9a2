"""LayerNorm over a sample's last axis (ViT's tokens, torch.nn.LayerNorm) or its channels (NCHW,
as ConvNeXt normalizes): the kernels against their twins (forward, gradient and the map with the
standard deviation held constant), difference quotients, thread and batch invariance; the layer
through from_torch (module and F.layer_norm) and both ONNX exporters = torch; LRP = the reference
and = LXT's layer_norm_forward (the standard deviation detached) in its Gradient*Input
framework; LRP-0 conserves without biases; model files and errors."""
import types

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref
from relprop.rules import Epsilon

import checks
import nets
from strategies import DTYPES, arrays, with_threads


@st.composite
def problems(draw):
    dtype = draw(DTYPES)
    shape = draw(st.sampled_from([(2, 5), (3, 4, 7), (2, 6, 3, 5), (1, 70), (2, 3, 300)]))
    axis = draw(st.sampled_from([-1, 1]))
    c = shape[axis]
    x = draw(arrays(dtype, shape, lo=-3.0, hi=3.0)) + draw(st.sampled_from([0.0, 5.0]))
    w = draw(st.one_of(st.none(), arrays(dtype, (c,), lo=-2.0, hi=2.0)))
    b = draw(st.one_of(st.none(), arrays(dtype, (c,))))
    g = draw(arrays(dtype, shape))
    eps = draw(st.sampled_from([1e-5, 1e-6, 0.1]))
    return x.astype(dtype), w, b, g, axis, eps


@given(problems())
def test_kernels_match_twins(problem):
    x, w, b, g, axis, eps = problem
    tol = dict(rtol=1e-12, atol=1e-12) if x.dtype == np.float64 else dict(rtol=4e-7, atol=4e-7)
    y, mean, rstd = ops.layer_norm_forward(x, w, b, axis, eps)
    want = ref.layer_norm_forward(x, w, b, axis, eps)
    scale = (1 if w is None else np.abs(w).max()) * np.abs(want[0]).max() + 1
    assert_allclose(y, want[0], rtol=tol["rtol"], atol=tol["atol"] * scale)
    assert_allclose(mean, want[1], **tol)
    assert_allclose(rstd, want[2], **tol)
    for frozen in (False, True):
        gx = ops.layer_norm_backward(g, x, w, mean, rstd, axis, frozen_std=frozen)
        # the twin from the kernel's own (rounded) statistics
        want_g = ref.layer_norm_backward(g, x, w, mean, rstd, axis, frozen_std=frozen)
        gscale = np.abs(g).max() * (1 if w is None else np.abs(w).max()) * np.abs(rstd).max()
        assert_allclose(gx, want_g, rtol=tol["rtol"], atol=4 * tol["atol"] * (gscale + 1e-30))
        for n in (1, 2):
            assert_array_equal(with_threads(n, ops.layer_norm_backward, g, x, w, mean, rstd,
                                            axis, frozen_std=frozen), gx)
    for n in (1, 2):
        assert_array_equal(with_threads(n, ops.layer_norm_forward, x, w, b, axis, eps)[0], y)
    # a sample alone: the same bits as in the batch
    assert_array_equal(ops.layer_norm_forward(x[-1:], w, b, axis, eps)[0], y[-1:])


@pytest.mark.parametrize("axis,shape", [(-1, (3, 4, 9)), (1, (2, 5, 4, 3))])
def test_gradient_is_the_jacobian_transpose(rng, axis, shape):
    """Difference quotients of the forward pass (float64) against the backward pass, and the
    frozen map's transpose against the twin's map with the standard deviation held."""
    x = rng.normal(size=shape) + 2
    w, b = rng.normal(size=shape[axis]), rng.normal(size=shape[axis])
    g, u = rng.normal(size=shape), rng.normal(size=shape)
    _, mean, rstd = ops.layer_norm_forward(x, w, b, axis)
    gx = ops.layer_norm_backward(g, x, w, mean, rstd, axis)
    h = 1e-6
    ju = (ops.layer_norm_forward(x + h * u, w, b, axis)[0]
          - ops.layer_norm_forward(x - h * u, w, b, axis)[0]) / (2 * h)
    assert np.vdot(ju, g) == pytest.approx(np.vdot(u, gx), rel=1e-7)
    layer = rp.LayerNorm(w, b, axis="channels" if axis == 1 else "last")
    au = ref.TWINS["layernorm"].linear(layer, x, u)
    frozen = ops.layer_norm_backward(g, None, w, None, rstd, axis, frozen_std=True)
    assert np.vdot(au, g) == pytest.approx(np.vdot(u, frozen), rel=1e-10)


# --- the layer in networks ----------------------------------------------------------------------
torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


class Block(nn.Module):
    """A ViT-like MLP block on (tokens, features): Linear, then x + fc2(GELU(fc1(LN(x)))) with
    the LayerNorm as a module or as F.layer_norm of its own parameters, and a head."""

    def __init__(self, functional=False, bias=True, tokens=4, d=6):
        super().__init__()
        self.functional = functional
        self.embed = nn.Linear(5, d, bias=bias)
        self.norm = nn.LayerNorm(d, bias=bias)
        self.fc1, self.act, self.fc2 = nn.Linear(d, 8, bias=bias), nn.GELU(), nn.Linear(8, d,
                                                                                         bias=bias)
        self.head = nn.Linear(tokens * d, 3, bias=bias)
        with torch.no_grad():  # a weight and bias of the norm that are not 1 and 0
            self.norm.weight.uniform_(0.5, 1.5)
            if bias:
                self.norm.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        x = self.embed(x)
        if self.functional:
            z = F.layer_norm(x, (x.shape[-1],), self.norm.weight, self.norm.bias, 1e-5)
        else:
            z = self.norm(x)
        x = x + self.fc2(self.act(self.fc1(z)))
        return self.head(torch.flatten(x, 1))


def _block(functional=False, bias=True, seed=0):
    torch.manual_seed(seed)
    return Block(functional, bias).double().eval()


@pytest.mark.parametrize("functional", [False, True], ids=["module", "function"])
def test_from_torch_forward_gradient_and_lrp(rng, functional):
    module = _block(functional)
    net = rp.from_torch(module, (4, 5))
    norms = [n for n in net.nodes if n.layer.kind == "layernorm"]
    assert len(norms) == 1 and norms[0].layer.axis == "last"
    assert_allclose(norms[0].layer.weight, module.norm.weight.detach().numpy())
    x = rng.normal(size=(3, 4, 5))
    rules = checks.as_torch_and_reference(module, net, x, 2)
    assert [r.registry_name for n, r in zip(net.nodes, rules) if n in norms] == ["norm"]
    checks.float32_as_torch(net, module.float(), x)


def test_lrp_is_lxts_layer_norm_in_gradient_x_input(rng):
    """LXT's layer_norm_forward (the standard deviation detached), its identity rule for GELU and
    plain gradients elsewhere give x * grad: relprop's LRP-0 with Norm(0) on the sums and the
    LayerNorm and Pass for GELU (float64, with biases)."""
    patches = pytest.importorskip("lxt.efficient.patches")
    module = _block()
    net = rp.from_torch(module, (4, 5))  # before patching
    module.norm.forward = types.MethodType(patches.layer_norm_forward, module.norm)
    module.act.original_forward = module.act.forward
    module.act.forward = types.MethodType(patches.non_linear_forward, module.act)
    x = rng.normal(size=(2, 4, 5))
    for i, c in enumerate((1, 2)):
        xt = torch.from_numpy(x[i:i + 1]).requires_grad_()
        module(xt)[0, c].backward()
        want = (xt * xt.grad).detach().numpy()
        got = rp.lrp(net, x[i:i + 1], c, rp.Composite([("linear", Epsilon(0))], stabilizer=0.0))
        assert_allclose(got, want, rtol=1e-7, atol=1e-9 * np.abs(want).max())


def test_lrp0_conserves_without_biases(rng):
    net = rp.from_torch(_block(bias=False), (4, 5))
    x = rng.normal(size=(3, 4, 5))
    R = rp.lrp(net, x, 0, rp.Composite([("linear", Epsilon(0))], stabilizer=0.0))
    assert_allclose(R.reshape(3, -1).sum(1), net(x)[:, 0], rtol=1e-10)


class ChannelNorm(nn.Module):
    """ConvNeXt's LayerNorm2d: the channels of NCHW normalized, between two permutes."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.norm = nn.LayerNorm(6, eps=1e-6, bias=bias)
        self.conv2 = nn.Conv2d(6, 4, 1, bias=bias)
        with torch.no_grad():
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x):
        y = self.norm(self.conv1(x).permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        return self.conv2(y).mean((2, 3))


def _channel_graph(m):
    """The relprop network of ChannelNorm, node by node (the permutes become the channel axis)."""
    p = {k: v.detach().numpy() for k, v in m.state_dict().items()}
    return rp.Graph([
        ("conv1", rp.Conv2d(p["conv1.weight"], p.get("conv1.bias"), padding=1), "input"),
        ("norm", rp.LayerNorm(p["norm.weight"], p.get("norm.bias"), eps=1e-6, axis="channels"),
         "conv1"),
        ("conv2", rp.Conv2d(p["conv2.weight"], p.get("conv2.bias")), "norm"),
        ("pool", rp.GlobalAvgPool2d(), "conv2"), ("flat", rp.Flatten(), "pool")],
        input_shape=(3, 5, 5))


def test_channels_of_nchw_as_convnext(rng):
    torch.manual_seed(1)
    module = ChannelNorm().double().eval()
    net = _channel_graph(module)
    x = rng.normal(size=(2, 3, 5, 5))
    xt = torch.from_numpy(x).requires_grad_()
    out = module(xt)
    out[:, 3].sum().backward()
    assert_allclose(net(x), out.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert_allclose(rp.gradient(net, x, 3), xt.grad.numpy(), rtol=1e-10, atol=1e-13)
    comp = rp.composites.EpsilonGammaBox(low=-3.0, high=3.0)
    want = ref.lrp(net, x, ref.seed(3, ref.forward(net, x)[-1], scale=True), comp.rules(net))
    assert_allclose(rp.lrp(net, x, 3, comp), want, rtol=1e-9, atol=1e-12 * abs(want).max())
    free = _channel_graph(ChannelNorm(bias=False).double().eval())
    R = rp.lrp(free, x, 1, rp.Composite([("linear", Epsilon(0))], stabilizer=0.0))
    assert_allclose(R.reshape(2, -1).sum(1), free(x)[:, 1], rtol=1e-10)


@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
def test_both_onnx_exporters(tmp_path, rng, dynamo):
    pytest.importorskip("onnxruntime")
    module = _block().float()
    net = rp.from_onnx(nets.onnx_export(module, tmp_path / "m.onnx", (4, 5), dynamo=dynamo))
    norms = [n.layer for n in net.nodes if n.layer.kind == "layernorm"]
    assert len(norms) == 1 and norms[0].eps == pytest.approx(1e-5)
    x = rng.normal(size=(3, 4, 5)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert_allclose(net(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_saved_and_loaded(tmp_path, rng):
    for layer in (rp.LayerNorm(rng.normal(size=6), rng.normal(size=6), 1e-6),
                  rp.LayerNorm(features=6, axis="channels")):
        net = rp.Sequential([layer, rp.Flatten(), rp.Dense(rng.normal(size=(2, 12)))],
                            input_shape=(6, 2) if layer.axis == "channels" else (2, 6))
        net.save(tmp_path / "m.npz")
        back = rp.load(tmp_path / "m.npz")
        assert back.layers[0].config() == layer.config()
        x = rng.normal(size=(3,) + net.input_shape)
        assert_array_equal(back(x), net(x))
        assert_allclose(net(x), ref.forward(net, x)[-1], rtol=1e-12)


def test_errors():
    with pytest.raises(ValueError, match="axis must be one of"):
        rp.LayerNorm(np.ones(3), axis=2)
    with pytest.raises(ValueError, match="1-D of one length"):
        rp.LayerNorm(np.ones(3), np.ones(4))
    with pytest.raises(ValueError, match="give features"):
        rp.LayerNorm()
    with pytest.raises(ValueError, match="expects 4 features on its last axis"):
        rp.Sequential([rp.LayerNorm(np.ones(4))], input_shape=(4, 3))
    with pytest.raises(ValueError, match=r"module 'norm' \(LayerNorm\): LayerNorm over the last 2"):
        rp.from_torch(_Two().eval(), (3, 4))


class _Two(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = nn.LayerNorm((3, 4))

    def forward(self, x):
        return self.norm(x)
