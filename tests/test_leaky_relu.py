"""LeakyReLU: the kernel against its NumPy twin and torch, the layer in networks against the
reference (gradient, LRP), both importers, model files, and the peers: torch autograd for the
gradient, Zennit for LRP (its Pass rule for activations), Captum for deconvnet and guided
backprop (which override ReLU modules only: a LeakyReLU passes its gradient)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import relprop as rp
from relprop import ops

import checks
import nets
from strategies import DTYPES, arrays

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


@given(DTYPES, st.sampled_from([0.01, 0.2, 0.0, -0.5, 1.5]), st.data())
def test_kernel_matches_twin_and_torch(dtype, slope, data):
    shape = data.draw(st.sampled_from([(1,), (3, 5), (2, 3, 4, 5), (1, 70)]))
    x = data.draw(arrays(dtype, shape, lo=-4.0, hi=4.0))
    x.flat[:2] = [0.0, -0.0][:x.size]  # the kink: torch's gradient there is the slope's
    checks.elementwise_kernel(data, "leaky_relu", x, (slope,),
                              lambda xt: F.leaky_relu(xt, slope), lipschitz=1 + abs(slope))


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
    rules = checks.as_torch_and_reference(module, net, x, 2)
    assert [r.registry_name for n, r in zip(net.nodes, rules) if n.layer.kind == "leaky_relu"] \
        == ["pass"] * 2  # the activation slot's default
    # LRP-0 is gradient x input, as for ReLU: leaky(z) = leaky'(z) z
    checks.lrp0_is_gradient_x_input(net, x, 2)


def test_zero_root_taylor_is_gradient_x_input_without_biases(rng):
    """A bias-free LeakyReLU network is positively homogeneous (f(t x) = t f(x), t > 0), as a
    ReLU network: Taylor's "zero" root gives gradient x input, and sum R = f_t(x)."""
    net = rp.from_torch(_net(bias=False), (3, 8, 8))
    checks.zero_root_taylor(net, rng.normal(size=(3, 3, 8, 8)), 1)


def test_lrp_matches_zennit(rng):
    # Zennit hooks modules, so F.leaky_relu and the residual sum of Net would get the gradient
    # there (relprop: Pass, Norm): compare on a chain of modules
    module = _net()
    chain = nn.Sequential(module.conv1, module.act1, module.pool, nn.Flatten(), module.fc)
    checks.lrp_as_zennit(chain, rp.from_torch(chain, (3, 8, 8)), rng.normal(size=(2, 3, 8, 8)), 3)


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
    assert sorted(n.layer.negative_slope for n in net.nodes if n.layer.kind == "leaky_relu") \
        == pytest.approx([0.05, 0.2])
    checks.float32_as_torch(net, module, rng.normal(size=(3, 3, 8, 8)).astype(np.float32))


def test_saved_and_loaded(tmp_path, rng):
    net = rp.Sequential([rp.Dense(rng.normal(size=(6, 4))), rp.LeakyReLU(0.3),
                         rp.Dense(rng.normal(size=(2, 6)))], input_shape=(4,))
    back = checks.saved_and_loaded(net, tmp_path, rng.normal(size=(5, 4)))
    assert back.layers[1].negative_slope == 0.3 and back.layers[1].describe() == "LeakyReLU 0.3"
