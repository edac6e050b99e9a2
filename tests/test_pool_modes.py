"""Pooling with torch's ``ceil_mode`` (max and average) and ``count_include_pad=False``
(average): the kernels against their NumPy twins and torch on random geometries (the last
windows reaching past the padding, a window larger than the padded input), the transpose of
the Jacobian, thread invariance; the layers in networks against torch autograd, the reference
and Zennit, through from_torch (modules and functions) and both ONNX exporters; model files;
and the fused convolution + ReLU + 2x2 max pooling, which floor mode only may take."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

import checks
import nets
from strategies import DTYPES, arrays, f64, sum_tolerance, with_threads

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


@st.composite
def pool_problems(draw):
    """``(x shape, kernel, stride, padding, ceil_mode, count_include_pad)``: padding at most half
    the kernel; in ceil mode the input may be smaller than the padded window, as long as torch
    makes one output."""
    ceil = draw(st.booleans())
    k = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    p = draw(st.integers(0, k[0] // 2)), draw(st.integers(0, k[1] // 2))
    s = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    hw = tuple(draw(st.integers(max(1, kk - 2 * pp - (ss - 1 if ceil else 0)), 11))
               for kk, pp, ss in zip(k, p, s))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3))) + hw
    return shape, k, s, p, ceil, draw(st.booleans())


def _torch_grad(fn, x, g):
    xt = torch.from_numpy(x).requires_grad_()
    y = fn(xt)
    y.backward(torch.from_numpy(g))
    return y.detach().numpy(), xt.grad.numpy()


@given(pool_problems(), DTYPES, st.data())
def test_max_pooling_matches_twin_torch_and_any_thread_count(prob, dtype, data):
    shape, k, s, p, ceil, _ = prob
    x = data.draw(arrays(dtype, shape))
    y, arg = ops.maxpool2d_forward(x, k, s, p, ceil_mode=ceil)
    y_ref, arg_ref = ref.maxpool2d_forward(x, k, s, p, ceil_mode=ceil)
    assert_array_equal(y, y_ref)
    assert_array_equal(arg, arg_ref)  # the first maximum in row-major window order
    g = data.draw(arrays(dtype, y.shape))
    gx = ops.maxpool2d_backward(g, arg, shape[2:], k, s, p, ceil_mode=ceil)
    want = ref.maxpool2d_backward(f64(g), arg_ref, shape[2:], k, s, p, ceil_mode=ceil)
    bound = ref.maxpool2d_backward(abs(f64(g)), arg_ref, shape[2:], k, s, p, ceil_mode=ceil)
    assert np.all(abs(gx - want) <= sum_tolerance(dtype, k[0] * k[1], bound))
    yt, gt = _torch_grad(lambda t: F.max_pool2d(t, k, s, p, ceil_mode=ceil), x, g)
    assert_array_equal(y, yt)
    assert np.all(abs(gx - gt) <= sum_tolerance(dtype, k[0] * k[1], bound))
    # the backward pass is the transpose of the Jacobian, the selection of each window's winner
    u = data.draw(arrays(dtype, shape))
    ju = np.take_along_axis(f64(u).reshape(shape[:2] + (-1,)), arg.reshape(y.shape[:2] + (-1,)),
                            axis=2)
    scale = np.vdot(abs(ju), abs(f64(g).reshape(ju.shape)))
    assert abs(np.vdot(ju, f64(g).reshape(ju.shape)) - np.vdot(f64(u), f64(gx))) <= \
        4 * np.finfo(dtype).eps * g.size * scale + 1e-30
    for n in (1, 2):
        yn, argn = with_threads(n, ops.maxpool2d_forward, x, k, s, p, ceil_mode=ceil)
        assert_array_equal(yn, y)
        assert_array_equal(argn, arg)
        assert_array_equal(with_threads(n, ops.maxpool2d_backward, g, arg, shape[2:], k, s, p,
                                        ceil_mode=ceil), gx)


@given(pool_problems(), DTYPES, st.data())
def test_average_pooling_matches_twin_torch_and_any_thread_count(prob, dtype, data):
    shape, k, s, p, ceil, count = prob
    mode = dict(ceil_mode=ceil, count_include_pad=count)
    x = data.draw(arrays(dtype, shape))
    y = ops.avgpool2d_forward(x, k, s, p, **mode)
    want = ref.avgpool2d_forward(f64(x), k, s, p, **mode)
    bound = ref.avgpool2d_forward(abs(f64(x)), k, s, p, **mode)
    terms = k[0] * k[1] + 1
    assert y.dtype == dtype and y.shape == want.shape
    assert np.all(abs(y - want) <= sum_tolerance(dtype, terms, bound))
    g = data.draw(arrays(dtype, y.shape))
    gx = ops.avgpool2d_backward(g, shape[2:], k, s, p, **mode)
    want = ref.avgpool2d_backward(f64(g), shape[2:], k, s, p, **mode)
    bound = ref.avgpool2d_backward(abs(f64(g)), shape[2:], k, s, p, **mode)
    assert np.all(abs(gx - want) <= sum_tolerance(dtype, terms, bound))
    yt, gt = _torch_grad(lambda t: F.avg_pool2d(t, k, s, p, **mode), x, g)
    assert np.all(abs(y - yt) <= sum_tolerance(dtype, terms, abs(f64(yt)) + bound.max()))
    assert np.all(abs(gx - gt) <= sum_tolerance(dtype, terms, bound))
    # the adjoint identity <pool(x), g> = <x, pool^T(g)>
    lhs, rhs = np.vdot(f64(y), f64(g)), np.vdot(f64(x), f64(gx))
    scale = np.vdot(abs(f64(y)), abs(f64(g))) + np.vdot(abs(f64(x)), abs(f64(gx)))
    assert abs(lhs - rhs) <= 4 * np.finfo(dtype).eps * terms * scale + 1e-30
    for n in (1, 2):
        assert_array_equal(with_threads(n, ops.avgpool2d_forward, x, k, s, p, **mode), y)
        assert_array_equal(with_threads(n, ops.avgpool2d_backward, g, shape[2:], k, s, p, **mode),
                           gx)


def test_ceil_mode_sizes_are_torchs():
    """Rounded up, less a last window that would start past the input and its left padding:
    5 -> 2 (k 3, s 3, p 1; not 3), and a 3x3 window on a 2x2 input gives one output."""
    for (h, k, s, p), size in [((5, 3, 3, 1), 2), ((12, 3, 2, 0), 6), ((2, 3, 2, 0), 1),
                               ((11, 3, 2, 0), 5), ((6, 3, 2, 1), 4)]:
        x = np.ones((1, 1, h, h))
        assert F.max_pool2d(torch.from_numpy(x), k, s, p, ceil_mode=True).shape[2] == size
        assert ops.maxpool2d_forward(x, (k, k), (s, s), (p, p), ceil_mode=True)[0].shape[2] == size
        assert ops.avgpool2d_forward(x, (k, k), (s, s), (p, p), ceil_mode=True).shape[2] == size
        assert rp.MaxPool2d(k, s, p, ceil_mode=True).output_shape((1, h, h)) == (1, size, size)
    with pytest.raises(ValueError, match="larger than the padded input"):
        ops.maxpool2d_forward(np.ones((1, 1, 1, 1)), (3, 3), (2, 2), (0, 0), ceil_mode=True)
    with pytest.raises(ValueError, match="no window fits"):
        rp.MaxPool2d(3, 2, ceil_mode=True).output_shape((1, 1, 1))
    with pytest.raises(TypeError, match="ceil_mode must be a bool"):
        rp.MaxPool2d(3, ceil_mode="yes")
    with pytest.raises(TypeError, match="count_include_pad must be a bool"):
        rp.AvgPool2d(3, count_include_pad=None)


class Net(nn.Module):
    """Every pooling mode, as modules and as functions, on a 12x12 input: max ceil 12 -> 6,
    average ceil without the padding counted 6 -> 4, functional max ceil with padding 4 -> 3,
    functional average without the padding counted 3 -> 3, then a mean head."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.pool2 = nn.AvgPool2d(3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        self.conv3 = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        y = self.pool1(self.relu(self.conv1(x)))
        y = self.pool2(self.relu(self.conv2(y)))
        y = F.max_pool2d(self.relu(self.conv3(y)), 3, 2, 1, ceil_mode=True)
        y = F.avg_pool2d(y, 3, 1, 1, count_include_pad=False)
        return self.fc(y.mean((2, 3)))


MODES = [("maxpool2d", True, None), ("avgpool2d", True, False), ("maxpool2d", True, None),
         ("avgpool2d", False, False), ("globalavgpool2d", None, None)]


def _modes(net):
    return [(n.layer.kind, getattr(n.layer, "ceil_mode", None),
             getattr(n.layer, "count_include_pad", None))
            for n in net.nodes if "pool" in n.layer.kind]


def _net(dtype=torch.float64):
    torch.manual_seed(0)
    return Net().to(dtype).eval()


def test_from_torch_gradient_lrp_and_reference(rng):
    module = _net()
    net = rp.from_torch(module, (3, 12, 12))
    assert _modes(net) == MODES
    checks.as_torch_and_reference(module, net, rng.normal(size=(2, 3, 12, 12)), 3)


@pytest.mark.parametrize("composite,kw", [("EpsilonPlusFlat", {}),
                                          ("EpsilonGammaBox", {"low": -3.0, "high": 3.0})],
                         ids=["epsilon_plus_flat", "epsilon_gamma_box"])
def test_lrp_matches_zennit(rng, composite, kw):
    """Zennit hooks modules: its Norm rule for the average pooling module and the gradient
    (winner takes all) for the max pooling, on a chain of modules."""
    m = _net()
    chain = nn.Sequential(m.conv1, m.relu, m.pool1, m.conv2, m.relu, m.pool2, nn.Flatten(),
                          nn.Linear(8 * 4 * 4, 5).double())
    net = rp.from_torch(chain, (3, 12, 12))
    checks.lrp_as_zennit(chain, net, rng.normal(size=(1, 3, 12, 12)), 2, composite, **kw)


@pytest.mark.parametrize("path", nets.IMPORT_PATHS[1:])
def test_from_onnx_of_both_exporters(tmp_path, rng, path):
    pytest.importorskip("onnxruntime")
    module = _net()
    net = nets.imported(module, (3, 12, 12), path, tmp_path)  # checks itself: onnxruntime
    assert _modes(net) == MODES
    checks.float32_as_torch(net, module, rng.normal(size=(3, 3, 12, 12)).astype(np.float32))


def test_importers_drop_modes_that_change_nothing(rng):
    """ceil_mode where the sizes round alike, count_include_pad=False without padding: the
    plain pooling (so a 2x2 max pooling after a convolution and its ReLU still fuses)."""
    module = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(),
                           nn.MaxPool2d(2, ceil_mode=True),
                           nn.AvgPool2d(2, count_include_pad=False, ceil_mode=True)).double()
    net = rp.from_torch(module, (2, 8, 8))
    assert [n.layer.describe() for n in net.nodes[2:]] == [
        "MaxPool2d 2 stride 2 pad 0", "AvgPool2d 2 stride 2 pad 0"]
    assert net.fusions().pool


def test_fused_convolution_pooling_keeps_to_floor_mode(rng):
    """A 2x2 stride-2 max pooling in ceil mode on an odd map has a last window of one column:
    the fused kernel (floor mode) must not stand for it."""
    w = rng.normal(size=(4, 2, 3, 3))
    net = rp.Sequential([rp.Conv2d(w, padding=1), rp.ReLU(), rp.MaxPool2d(2, ceil_mode=True),
                         rp.Flatten(), rp.Dense(rng.normal(size=(3, 4 * 4 * 4)))],
                        input_shape=(2, 7, 7))
    assert not net.fusions().pool
    x = rng.normal(size=(2, 2, 7, 7))
    assert_allclose(net(x), ref.forward(net, x)[-1], rtol=1e-12)
    assert_allclose(rp.gradient(net, x, 1), ref.gradient(net, x, 1), rtol=1e-10, atol=1e-13)


def test_saved_and_loaded(tmp_path, rng):
    net = rp.Sequential([rp.MaxPool2d(3, 2, ceil_mode=True),
                         rp.AvgPool2d(3, 2, 1, ceil_mode=True, count_include_pad=False),
                         rp.AvgPool2d(3, 1, 1, count_include_pad=False), rp.Flatten()],
                        input_shape=(2, 12, 12))
    back = checks.saved_and_loaded(net, tmp_path, rng.normal(size=(2, 2, 12, 12)))
    assert [layer.describe() for layer in back.layers[:3]] == [
        "MaxPool2d 3 stride 2 pad 0 ceil", "AvgPool2d 3 stride 2 pad 1 ceil pad uncounted",
        "AvgPool2d 3 stride 1 pad 1 pad uncounted"]


class Functional(nn.Module):
    """Every functional form of a 2-D pooling and of a mean head, on a 9x9 map."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        a = F.max_pool2d(y, 3, 2, ceil_mode=True)
        b = torch.max_pool2d(y, 3, 3, 1, 1, True)
        c = F.avg_pool2d(y, kernel_size=3, stride=2, padding=1, ceil_mode=True,
                         count_include_pad=False)
        d = F.adaptive_avg_pool2d(c, 1)
        e = F.adaptive_avg_pool2d(y, (3, 3))
        return (a.mean((2, 3)) + b.mean([2, 3]) + torch.mean(d, dim=(-2, -1))
                + torch.flatten(e.mean(dim=[2, 3], keepdim=True), 1))


FUNCTIONAL_POOLS = sorted([
    "MaxPool2d 3 stride 2 pad 0",  # ceil mode dropped: 9 -> 4 either way
    "MaxPool2d 3 stride 3 pad 1 ceil",  # 9 -> 4, not 3
    "AvgPool2d 3 stride 2 pad 1 pad uncounted", "GlobalAvgPool2d", "AvgPool2d 3 stride 3 pad 0",
    "GlobalAvgPool2d", "GlobalAvgPool2d", "GlobalAvgPool2d"])  # the mean heads


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_functional_forms(tmp_path, rng, path):
    net = checks.imported_as_torch(Functional, rng.normal(size=(2, 3, 9, 9)), path, tmp_path)
    pools = sorted(n.layer.describe() for n in net.nodes if "Pool" in n.layer.describe())
    assert pools == FUNCTIONAL_POOLS
