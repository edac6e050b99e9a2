"""The activation layers of one kernel pair (issue 27: GELU, SiLU, Sigmoid, Tanh, Hardsigmoid,
Hardswish), each as torch writes it (module and function) through
from_torch and both ONNX exporters: forward = torch, gradient = torch autograd (float64) and the
reference, LRP = the reference with their default rule (Pass, = Zennit's for its activations;
LRP-0 conserves on a bias-free net), deconvnet and guided backprop pass their gradient (their
rule is ReLU's only), model files.  The kernels themselves: tests/test_activations.py."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

import nets

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

#: name: (the torch module, the same as a function, the relprop layer, the kernel's op)
LAYERS = {
    "gelu": (nn.GELU, F.gelu, rp.GELU(), "gelu"),
    "gelu_tanh": (lambda: nn.GELU(approximate="tanh"), lambda x: F.gelu(x, approximate="tanh"),
                  rp.GELU("tanh"), "gelu_tanh"),
    "silu": (nn.SiLU, F.silu, rp.SiLU(), "silu"),
    "sigmoid": (nn.Sigmoid, torch.sigmoid, rp.Sigmoid(), "sigmoid"),
    "tanh": (nn.Tanh, lambda x: x.tanh(), rp.Tanh(), "tanh"),
    "hardsigmoid": (nn.Hardsigmoid, F.hardsigmoid, rp.Hardsigmoid(), "hardsigmoid"),
    "hardswish": (nn.Hardswish, F.hardswish, rp.Hardswish(), "hardswish"),
}


class Net(nn.Module):
    """Conv, the activation as a module, conv, the activation as a function, a residual sum,
    pooling, Linear."""

    def __init__(self, name, bias=True):
        super().__init__()
        module, self.fn, _, _ = LAYERS[name]
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=bias)
        self.act = module()
        self.conv2 = nn.Conv2d(6, 6, 3, padding=1, bias=bias)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(6 * 4 * 4, 4, bias=bias)

    def forward(self, x):
        y = self.act(self.conv1(x))
        y = self.fn(self.conv2(y)) + y
        return self.fc(torch.flatten(self.pool(y), 1))


def _net(name, bias=True, seed=0):
    torch.manual_seed(seed)
    return Net(name, bias).double().eval()


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_layer_runs_its_kernel(name, rng):
    layer, op = LAYERS[name][2:]
    x = rng.normal(size=(2, 5)).astype(np.float32)
    assert_array_equal(layer.forward(x)[0], ops.activation_forward(x, op))
    assert_array_equal(layer.backward(x, x, None), ops.activation_backward(x, x, op))
    assert layer.slots == ("activation",) and layer.default_rule == "pass" and layer.elementwise


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_from_torch_forward_gradient_and_lrp(name, rng):
    module = _net(name)
    net = rp.from_torch(module, (3, 8, 8))
    want = type(LAYERS[name][2])
    acts = [n for n in net.nodes if isinstance(n.layer, want)]
    assert [n.name for n in acts][0] == "act" and len(acts) == 2
    assert all(n.layer.config() == LAYERS[name][2].config() for n in acts)
    x = rng.normal(size=(3, 3, 8, 8))
    xt = torch.from_numpy(x).requires_grad_()
    out = module(xt)
    out[:, 2].sum().backward()
    assert_allclose(net(x), out.detach().numpy(), rtol=1e-12, atol=1e-13)
    # torch multiplies float64 gradients of hardsigmoid by float32(1/6), 3e-8 from 1/6
    tol = 1e-7 if name == "hardsigmoid" else 1e-10
    want_g = xt.grad.numpy()
    assert_allclose(rp.gradient(net, x, 2), want_g, rtol=0, atol=tol * np.abs(want_g).max())
    assert_allclose(rp.gradient(net, x, 2), ref.gradient(net, x, 2), rtol=1e-10, atol=1e-13)
    # float32 against torch's float32
    with torch.no_grad():
        want32 = module.float()(torch.from_numpy(x.astype(np.float32))).numpy()
    got32 = rp.from_torch(module, (3, 8, 8))(x.astype(np.float32))
    assert_allclose(got32, want32, rtol=1e-5, atol=1e-5 * np.abs(want32).max())
    # LRP: the activation slot's default (Pass), as the reference computes it
    rules = rp.composites.EpsilonPlusFlat().rules(net)
    assert {r.registry_name for n, r in zip(net.nodes, rules) if n in acts} == {"pass"}
    R = rp.lrp(net, x, 2, "epsilon_plus_flat")
    want_r = ref.lrp(net, x, ref.seed(2, ref.forward(net, x)[-1], scale=True), rules)
    assert_allclose(R, want_r, rtol=1e-9, atol=1e-12 * np.abs(want_r).max())
    # not rectifiers: deconvnet and guided backprop pass their gradient (no ReLU here)
    assert_allclose(rp.deconvnet(net, x, 2), rp.gradient(net, x, 2), rtol=1e-12, atol=1e-15)
    assert_allclose(rp.guided_backprop(net, x, 2), rp.gradient(net, x, 2), rtol=1e-12,
                    atol=1e-15)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_lrp0_conserves_on_a_bias_free_net(name, rng):
    """Pass hands the activation's relevance on whole, so LRP-0 on a bias-free network sums to
    the explained score whatever the activation (with no stabilizer at the sum and the pooling
    either)."""
    net = rp.from_torch(_net(name, bias=False), (3, 8, 8))
    x = rng.normal(size=(3, 3, 8, 8))
    R = rp.lrp(net, x, 1, rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0))
    assert_allclose(R.reshape(3, -1).sum(1), net(x)[:, 1], rtol=1e-10)


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_lrp_matches_zennit(name, rng):
    """Zennit's composites give its Activation types Pass: on a chain of modules (Zennit hooks
    modules, so a function in the forward would get the gradient there)."""
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient

    module = _net(name)
    chain = nn.Sequential(module.conv1, module.act, module.conv2, module.act, module.pool,
                          nn.Flatten(), module.fc)
    net = rp.from_torch(chain, (3, 8, 8))
    x = rng.normal(size=(2, 3, 8, 8))
    out = net(x)
    seed = np.zeros_like(out)
    seed[:, 3] = out[:, 3]
    xt = torch.from_numpy(x).requires_grad_()
    with Gradient(model=chain, composite=zc.EpsilonPlusFlat()) as attributor:
        _, want = attributor(xt, torch.from_numpy(seed))
    got = rp.lrp(net, x, seed, "epsilon_plus_flat")
    assert_allclose(got, want.detach().numpy(), rtol=1e-7, atol=1e-10 * np.abs(got).max())


@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
@pytest.mark.parametrize("name", sorted(LAYERS))
def test_from_onnx_of_both_exporters(tmp_path, rng, name, dynamo):
    pytest.importorskip("onnxruntime")
    module = _net(name).float()
    path = nets.onnx_export(module, tmp_path / "m.onnx", (3, 8, 8), dynamo=dynamo)
    net = rp.from_onnx(path)  # checks itself against onnxruntime
    want = LAYERS[name][2]
    got = [n.layer for n in net.nodes if isinstance(n.layer, type(want))]
    assert len(got) == 2 and all(g.config() == want.config() for g in got)
    x = rng.normal(size=(3, 3, 8, 8)).astype(np.float32)
    with torch.no_grad():
        expect = module(torch.from_numpy(x)).numpy()
    assert_allclose(net(x), expect, rtol=1e-5, atol=1e-5 * np.abs(expect).max())


@pytest.mark.parametrize("name", sorted(LAYERS))
def test_saved_and_loaded(tmp_path, rng, name):
    layer = LAYERS[name][2]
    net = rp.Sequential([rp.Dense(rng.normal(size=(6, 4))), layer,
                         rp.Dense(rng.normal(size=(2, 6)))], input_shape=(4,))
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert back.layers[1].config() == layer.config()
    assert back.layers[1].describe() == layer.describe()
    x = rng.normal(size=(5, 4))
    assert_array_equal(back(x), net(x))
    assert_allclose(net(x), ref.forward(net, x)[-1], rtol=1e-13)


def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="approximate must be one of"):
        rp.GELU("erf")
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("HardSigmoid", ["x"], ["y"], name="hs", alpha=0.2, beta=0.5)], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])])
    model = helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 17)])
    with pytest.raises(ValueError, match=r"'hs' \(HardSigmoid\): HardSigmoid\(alpha=0.2, "
                                         r"beta=0.5\) is not supported"):
        rp.from_onnx(model, check=False)

    class Bad(nn.Module):
        def forward(self, x):
            return F.gelu(x, approximate="fast")

    with pytest.raises(ValueError, match="torch.fx node 'gelu'.*approximate must be one of"):
        rp.from_torch(Bad(), (4,))
