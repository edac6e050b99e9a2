"""Hardtanh: the kernel against its NumPy twin and torch (any bounds, infinite ones too, inputs
exactly at a bound), the layer in networks against the reference (gradient, LRP), both
importers (nn.Hardtanh, F.hardtanh, torch.clamp and x.clamp with one or two bounds, ONNX Clip
of both exporters; ReLU and ReLU6 keep their kinds), model files, and the peers: torch autograd
for the gradient, Zennit for LRP (its Pass rule for activations), Captum for deconvnet and
guided backprop (which override ReLU modules only: a Hardtanh passes its gradient)."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops

import checks
import nets
from strategies import DTYPES, arrays

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

INF = float("inf")
BOUNDS = [(-1.0, 1.0), (0.0, 6.0), (-2.5, 0.5), (-INF, 1.0), (-1.0, INF), (0.25, 3.0)]


@given(DTYPES, st.sampled_from(BOUNDS), st.data())
def test_kernel_matches_twin_and_torch(dtype, bounds, data):
    lo, hi = bounds
    shape = data.draw(st.sampled_from([(1,), (3, 5), (2, 3, 4, 5), (1, 70)]))
    x = data.draw(arrays(dtype, shape, lo=-4.0, hi=4.0))
    x.flat[:2] = [lo if np.isfinite(lo) else 0.0, hi if np.isfinite(hi) else 0.0][:x.size]
    checks.elementwise_kernel(data, "hardtanh", x, (lo, hi), lambda xt: F.hardtanh(xt, lo, hi),
                              kinks=bounds)  # torch's gradient at the bounds is 0, as relprop's


def test_nan_and_errors():
    x = np.array([np.nan, -2.0, 3.0])
    assert_array_equal(ops.hardtanh_forward(x, -1.0, 2.0), [np.nan, -1.0, 2.0])
    assert_array_equal(ops.hardtanh_backward(np.ones(3), x, -1.0, 2.0), [1.0, 0.0, 0.0])
    with pytest.raises(ValueError, match="shape"):
        ops.hardtanh_backward(x, x[:2])
    with pytest.raises(TypeError, match="float32"):
        ops.hardtanh_backward(x, x.astype(np.float32))
    with pytest.raises(ValueError, match="min_val < max_val, got 1.0 and 1.0"):
        rp.Hardtanh(1.0, 1.0)
    with pytest.raises(ValueError, match="min_val must be finite, got nan"):
        rp.Hardtanh(np.nan, 1.0)
    with pytest.raises(TypeError, match="max_val must be a real number"):
        rp.Hardtanh(0.0, "6")


class Net(nn.Module):
    """Every spelling of a clamp: nn.Hardtanh, F.hardtanh (keywords), torch.clamp with a lower
    bound only, x.clamp with an upper one, torch.clamp_min and x.clamp_max, ReLU6 as
    Hardtanh(0, 6) and clamp(0, 6), ReLU as clamp(0) and clamp_min(0); a ReLU module for the
    backprop variants."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.act1 = nn.Hardtanh(-1.0, 2.0)
        self.pool = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.six = nn.Hardtanh(0.0, 6.0)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(8 * 4 * 4, 5)

    def forward(self, x):
        y = self.pool(self.act1(self.conv1(x)))
        z = self.conv2(y)
        y = (F.hardtanh(z, min_val=-0.5, max_val=0.5) + torch.clamp(z, min=-0.2) + y
             + torch.clamp_min(z, -0.3) + z.clamp_max(0.4) + z.clamp_min(0))
        # (a clamp right before another: torch 2.14's dynamo exporter merges the two Clips into
        # one whose bounds it never writes, a file onnxruntime refuses)
        y = self.six(y) + torch.clamp(y, 0, 6) + torch.clamp(y, 0) + y.clamp(max=1.5)
        return self.fc(torch.flatten(self.relu(y), 1))


KINDS = [("act1", "hardtanh", (-1.0, 2.0)), ("hardtanh", "hardtanh", (-0.5, 0.5)),
         ("clamp", "hardtanh", (-0.2, INF)), ("clamp_min", "hardtanh", (-0.3, INF)),
         ("clamp_max", "hardtanh", (-INF, 0.4)), ("clamp_min_1", "relu", None),
         ("six", "relu6", None), ("clamp_1", "relu6", None),
         ("clamp_2", "relu", None), ("clamp_3", "hardtanh", (-INF, 1.5))]


def _net(seed=0):
    torch.manual_seed(seed)
    return Net().double().eval()


def _kinds(net):
    return [(n.name, n.layer.kind, (n.layer.min_val, n.layer.max_val)
             if n.layer.kind == "hardtanh" else None)
            for n in net.nodes if n.layer.kind in ("hardtanh", "relu6") or
            n.name.startswith("clamp")]


def test_from_torch_gradient_and_reference(rng):
    module = _net()
    net = rp.from_torch(module, (3, 8, 8))
    assert _kinds(net) == KINDS
    x = rng.normal(size=(4, 3, 8, 8))
    rules = checks.as_torch_and_reference(module, net, x, 2)
    assert {r.registry_name for n, r in zip(net.nodes, rules) if n.layer.kind == "hardtanh"} \
        == {"pass"}  # the activation slot's default


def test_lrp_matches_zennit(rng):
    # Zennit hooks modules: compare on a chain of them (a functional clamp gets the gradient)
    m = _net()
    chain = nn.Sequential(m.conv1, m.act1, m.pool, m.conv2, nn.Hardtanh(-0.5, 0.5), nn.Flatten(),
                          m.fc)
    checks.lrp_as_zennit(chain, rp.from_torch(chain, (3, 8, 8)), rng.normal(size=(1, 3, 8, 8)), 3)


@pytest.mark.parametrize("method", checks.CAPTUM_BACKPROP)
def test_deconvnet_and_guided_backprop_pass_its_gradient_as_captum(rng, method):
    """Captum overrides nn.ReLU modules only; the net's Hardtanhs pass their gradient.  (Its
    ReLU6 modules would too in Captum; relprop keeps the rectifier rule for ReLU6: chain without
    them here.)"""
    m = _net()
    chain = nn.Sequential(m.conv1, m.act1, m.pool, m.conv2, nn.Hardtanh(-0.5, 0.5), m.relu,
                          nn.Flatten(), m.fc)
    net = rp.from_torch(chain, (3, 8, 8))
    checks.backprop_as_captum(chain, net, rng.normal(size=(3, 3, 8, 8)), 1, method)


@pytest.mark.parametrize("path", nets.IMPORT_PATHS[1:])
def test_from_onnx_of_both_exporters(tmp_path, rng, path):
    pytest.importorskip("onnxruntime")
    module = _net()
    net = nets.imported(module, (3, 8, 8), path, tmp_path)  # checks itself: onnxruntime
    bounds = sorted((n.layer.min_val, n.layer.max_val) for n in net.nodes
                    if n.layer.kind == "hardtanh")
    assert_allclose(bounds, sorted(b for _, k, b in KINDS if k == "hardtanh"), rtol=1e-7)
    # (the exporters may merge the equal Clip(0, 6) of self.six and torch.clamp)
    assert {n.layer.kind for n in net.nodes} >= {"relu", "relu6"}
    checks.float32_as_torch(net, module, rng.normal(size=(3, 3, 8, 8)).astype(np.float32))


def test_saved_and_loaded(tmp_path, rng):
    net = rp.Sequential([rp.Dense(rng.normal(size=(6, 4))), rp.Hardtanh(-0.5, 0.75),
                         rp.Dense(rng.normal(size=(2, 6))), rp.Hardtanh(max_val=None)],
                        input_shape=(4,))
    back = checks.saved_and_loaded(net, tmp_path, rng.normal(size=(5, 4)))
    assert [layer.describe() for layer in back.layers[1::2]] == ["Hardtanh [-0.5, 0.75]",
                                                                "Hardtanh [-1, inf]"]


def test_onnx_max_and_min_of_a_constant_are_clamps(rng):
    """Max(x, c) clamps from below, Min(x, c) from above (either operand order): the dynamo
    exporter writes torch.clamp(x, 0) as Max(x, 0).  Max of two tensors is refused."""
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    def model(nodes, consts):
        graph = helper.make_graph(
            nodes, "g", [helper.make_tensor_value_info("x", TensorProto.DOUBLE, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.DOUBLE, ["n", 4])],
            [numpy_helper.from_array(np.asarray(v, np.float64), k) for k, v in consts.items()])
        return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])

    net = rp.from_onnx(model([helper.make_node("Max", ["x", "zero"], ["m"], name="max"),
                              helper.make_node("Min", ["c", "m"], ["y"], name="min")],
                             {"zero": 0.0, "c": [2.5]}))  # = onnxruntime
    assert [layer.describe() for layer in net.layers] == ["ReLU", "Hardtanh [-inf, 2.5]"]
    with pytest.raises(ValueError, match="'max' \\(Max\\): Max is supported of one tensor"):
        rp.from_onnx(model([helper.make_node("Max", ["x", "x"], ["y"], name="max")], {}))


@pytest.mark.parametrize("method", checks.CAPTUM_BACKPROP)
def test_relu6_passes_its_gradient_under_deconvnet_and_guided_backprop(rng, method):
    """ReLU6 is Hardtanh(0, 6) with a kind of its own: Captum's hooks take nn.ReLU modules
    only, so nn.ReLU6 passes its gradient g * (0 < x < 6) there, and in relprop (it used to get
    the rectifier rules max(g, 0) and g * (0 < x < 6) * (g > 0))."""
    torch.manual_seed(1)
    chain = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU6(), nn.Conv2d(6, 6, 3),
                          nn.ReLU(), nn.Flatten(), nn.Linear(6 * 6 * 6, 4)).double().eval()
    net = rp.from_torch(chain, (3, 8, 8))
    assert [layer.kind for layer in net.layers][1] == "relu6"
    x = 4 * rng.normal(size=(3, 3, 8, 8))  # inputs on both sides of 0 and of 6
    checks.backprop_as_captum(chain, net, x, 2, method)
