"""PReLU: the kernel against its NumPy twin and torch (a slope per channel, one for all), the
layer in networks against the reference (gradient, LRP), both importers (module, functional
form with the module's parameter, ONNX PRelu of both exporters), model files, and the peers:
torch autograd for the gradient, Zennit for LRP (its Pass rule for activations), Captum for
deconvnet and guided backprop (which override ReLU modules only: a PReLU passes its
gradient)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import relprop as rp
from relprop import ops

import checks
import nets
from strategies import DTYPES, arrays, f64

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


@given(DTYPES, st.booleans(), st.data())
def test_kernel_matches_twin_and_torch(dtype, shared, data):
    shape = data.draw(st.sampled_from([(1, 1), (3, 5), (2, 3, 4, 5), (1, 70), (2, 4, 4099)]))
    x = data.draw(arrays(dtype, shape, lo=-4.0, hi=4.0))
    x.flat[:2] = [0.0, -0.0]  # the kink: torch's gradient there is the slope's
    w = data.draw(arrays(dtype, (1,) if shared else (shape[1],), lo=-1.5, hi=1.5))
    checks.elementwise_kernel(data, "prelu", x, (w,), lambda xt: F.prelu(xt, torch.from_numpy(w)),
                              lipschitz=1 + abs(f64(w)).max())


def test_nan_and_errors():
    x = np.array([[np.nan, -2.0, 3.0]])
    assert_array_equal(ops.prelu_forward(x, np.array([0.5])), [[np.nan, -1.0, 3.0]])
    with pytest.raises(ValueError, match=r"weight must have shape \(1,\) or \(3,\)"):
        ops.prelu_forward(x, np.ones(2))
    with pytest.raises(ValueError, match="shape"):
        ops.prelu_backward(x, x[:, :2], np.ones(1))
    with pytest.raises(TypeError, match="float32"):
        ops.prelu_forward(x, np.ones(1, np.float32))
    with pytest.raises(ValueError, match=r"shape \(1,\) or \(channels,\)"):
        rp.PReLU(np.ones((2, 2)))
    with pytest.raises(ValueError, match="expects 4 channels"):
        rp.Sequential([rp.PReLU(np.ones(4))], input_shape=(3, 2, 2))


class Net(nn.Module):
    """Conv, PReLU per channel (module), pooling, conv, F.prelu with one slope (the module's
    parameter), a residual sum and a ReLU, a Dense layer and a PReLU per unit."""

    def __init__(self, bias=True):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        self.act1 = nn.PReLU(8)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1, bias=bias)
        self.slope = nn.Parameter(torch.tensor([0.3]))
        self.relu = nn.ReLU()
        self.fc1 = nn.Linear(8 * 4 * 4, 6, bias=bias)
        self.act2 = nn.PReLU(6)
        self.fc2 = nn.Linear(6, 5, bias=bias)
        with torch.no_grad():  # slopes of both signs and above 1
            self.act1.weight.copy_(torch.linspace(-0.5, 1.5, 8))
            self.act2.weight.copy_(torch.linspace(0.1, -0.4, 6))

    def forward(self, x):
        y = self.pool(self.act1(self.conv1(x)))
        y = self.relu(F.prelu(self.conv2(y), self.slope) + y)
        return self.fc2(self.act2(self.fc1(torch.flatten(y, 1))))


def _net(bias=True, seed=0):
    torch.manual_seed(seed)
    return Net(bias).double().eval()


def _slopes(net):
    return [(n.name, n.layer.num_parameters) for n in net.nodes if n.layer.kind == "prelu"]


def test_from_torch_gradient_and_reference(rng):
    module = _net()
    net = rp.from_torch(module, (3, 8, 8))
    assert _slopes(net) == [("act1", 8), ("prelu", 1), ("act2", 6)]
    x = rng.normal(size=(4, 3, 8, 8))
    rules = checks.as_torch_and_reference(module, net, x, 2)
    assert [r.registry_name for n, r in zip(net.nodes, rules) if n.layer.kind == "prelu"] \
        == ["pass"] * 3  # the activation slot's default
    # LRP-0 is gradient x input, as for ReLU: prelu(z) = prelu'(z) z
    checks.lrp0_is_gradient_x_input(net, x, 2)


def test_zero_root_taylor_is_gradient_x_input_without_biases(rng):
    """A bias-free PReLU network is positively homogeneous, as a ReLU network: Taylor's "zero"
    root gives gradient x input, and sum R = f_t(x)."""
    net = rp.from_torch(_net(bias=False), (3, 8, 8))
    checks.zero_root_taylor(net, rng.normal(size=(3, 3, 8, 8)), 1)


def test_lrp_matches_zennit(rng):
    # Zennit hooks modules: compare on a chain of them (F.prelu would get the gradient there)
    m = _net()
    chain = nn.Sequential(m.conv1, m.act1, m.pool, m.conv2, nn.PReLU(8).double(), nn.Flatten(),
                          m.fc1, m.act2, m.fc2)
    checks.lrp_as_zennit(chain, rp.from_torch(chain, (3, 8, 8)), rng.normal(size=(1, 3, 8, 8)), 3)


@pytest.mark.parametrize("method", checks.CAPTUM_BACKPROP)
def test_deconvnet_and_guided_backprop_pass_its_gradient_as_captum(rng, method):
    module = _net()
    net = rp.from_torch(module, (3, 8, 8))
    checks.backprop_as_captum(module, net, rng.normal(size=(3, 3, 8, 8)), 1, method)


@pytest.mark.parametrize("path", nets.IMPORT_PATHS[1:])
def test_from_onnx_of_both_exporters(tmp_path, rng, path):
    pytest.importorskip("onnxruntime")
    module = _net()
    net = nets.imported(module, (3, 8, 8), path, tmp_path)  # checks itself: onnxruntime
    assert sorted(n for _, n in _slopes(net)) == [1, 6, 8]
    checks.float32_as_torch(net, module, rng.normal(size=(3, 3, 8, 8)).astype(np.float32))


def test_onnx_slope_shapes(rng):
    """ONNX PRelu broadcasts its slope against the input: one value, or one per channel in
    any rank that lines up with axis 1; anything else is refused."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    def model(slope):
        graph = helper.make_graph(
            [helper.make_node("PRelu", ["x", "s"], ["y"], name="act")], "g",
            [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", 3, 2, 2])],
            [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["n", 3, 2, 2])],
            [numpy_helper.from_array(slope, "s")])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    for shape in [(), (1,), (1, 1, 1), (3, 1, 1), (1, 3, 1, 1)]:
        slope = rng.uniform(-1, 1, shape) if shape not in ((), (1,), (1, 1, 1)) else \
            np.full(shape, 0.25)
        net = rp.from_onnx(model(slope))  # = onnxruntime
        assert net.layers[0].num_parameters == max(1, slope.size)
    for shape in [(2, 1), (1, 2), (3,)]:  # (3,) lines up with the width, not the channels
        with pytest.raises(ValueError, match="not one slope per channel"):
            rp.from_onnx(model(np.ones(shape)))


def test_saved_and_loaded(tmp_path, rng):
    net = rp.Sequential([rp.Dense(rng.normal(size=(6, 4))), rp.PReLU(np.linspace(-1, 1, 6)),
                         rp.Dense(rng.normal(size=(2, 6))), rp.PReLU([0.2])], input_shape=(4,))
    back = checks.saved_and_loaded(net, tmp_path, rng.normal(size=(5, 4)))
    assert [layer.describe() for layer in back.layers[1::2]] == ["PReLU 6 slopes",
                                                                "PReLU 1 slope"]
