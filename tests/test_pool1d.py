"""MaxPool1d, AvgPool1d and AdaptiveAvgPool1d (the 2-D pooling kernels on (c, 1, L) planes)
against their NumPy twins (written for one axis) and torch on random geometries (ceil_mode,
count_include_pad), the transpose of the Jacobian, thread invariance; errors and model files;
every functional form through from_torch and both ONNX exporters."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

import relprop as rp
from relprop.reference.layers import twin

import checks
import nets
from strategies import DTYPES, arrays, f64, sum_tolerance, with_threads

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


@st.composite
def pool1d_problems(draw):
    """``(x, layer, torch function)``: a max or average pooling with padding at most half the
    kernel, either rounding, the padding counted or not; in ceil mode the input may be shorter
    than the padded window, as long as torch makes one output."""
    ceil = draw(st.booleans())
    k = draw(st.integers(1, 5))
    p, s = draw(st.integers(0, k // 2)), draw(st.integers(1, 3))
    length = draw(st.integers(max(1, k - 2 * p - (s - 1 if ceil else 0)), 30))
    x = draw(arrays(draw(DTYPES), (draw(st.integers(1, 3)), draw(st.integers(1, 3)), length)))
    if draw(st.booleans()):
        return x, rp.MaxPool1d(k, s, p, ceil), lambda t: F.max_pool1d(t, k, s, p, ceil_mode=ceil)
    count = draw(st.booleans())
    return (x, rp.AvgPool1d(k, s, p, ceil, count),
            lambda t: F.avg_pool1d(t, k, s, p, ceil, count))


@st.composite
def adaptive1d_problems(draw):
    x = draw(arrays(draw(DTYPES), (draw(st.integers(1, 3)), draw(st.integers(1, 3)),
                                   draw(st.integers(1, 30)))))
    out = draw(st.integers(1, 2 * x.shape[2] + 1))  # overlapping windows, repeated inputs
    return x, rp.AdaptiveAvgPool1d(out), lambda t: F.adaptive_avg_pool1d(t, out)


@given(st.one_of(pool1d_problems(), adaptive1d_problems()), st.data())
def test_layer_matches_twin_torch_and_any_thread_count(prob, data):
    x, layer, torch_fn = prob
    dtype, tw = x.dtype, twin(layer)
    y, state = layer.forward(x)
    assert y.shape == (len(x),) + layer.output_shape(x.shape[1:]) and y.dtype == dtype
    terms = x.shape[2] + 1  # at most a window's taps summed
    bound = tw.forward(layer, abs(f64(x)))
    if layer.kind == "maxpool1d":
        assert_array_equal(y, tw.forward(layer, x))
    else:
        assert np.all(abs(y - tw.forward(layer, f64(x))) <= sum_tolerance(dtype, terms, bound))
    g = data.draw(arrays(dtype, y.shape))
    gx = layer.backward(g, x, state)
    gbound = tw.backward(layer, abs(f64(g)), [x], "gradient")[0]
    assert gx.shape == x.shape
    assert np.all(abs(gx - tw.backward(layer, f64(g), [x], "gradient")[0]) <=
                  sum_tolerance(dtype, terms, gbound))
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch_fn(xt)
    yt.backward(torch.from_numpy(g))
    assert np.all(abs(f64(y) - f64(yt.detach().numpy())) <= sum_tolerance(dtype, terms, bound))
    assert np.all(abs(f64(gx) - f64(xt.grad.numpy())) <= sum_tolerance(dtype, terms, gbound))
    # the backward pass is the transpose of the Jacobian (of the linear map, or of the winners'
    # selection at x): <J u, g> = <u, J^T g>
    u = data.draw(arrays(dtype, x.shape))
    ju = (f64(u)[np.arange(len(x))[:, None, None], np.arange(x.shape[1])[None, :, None],
                 state.reshape(y.shape)] if layer.kind == "maxpool1d" else
          tw.forward(layer, f64(u)))
    scale = np.vdot(abs(ju), abs(f64(g))) + np.vdot(abs(f64(u)), abs(f64(gx)))
    assert abs(np.vdot(ju, f64(g)) - np.vdot(f64(u), f64(gx))) <= \
        4 * np.finfo(dtype).eps * terms * scale + 1e-30
    for n in (1, 2):
        assert_array_equal(with_threads(n, lambda: layer.forward(x)[0]), y)
        assert_array_equal(with_threads(n, lambda: layer.backward(g, x, state)), gx)


def test_errors_and_model_files(tmp_path, rng):
    with pytest.raises(ValueError, match=r"expects \(channels, length\) per sample"):
        rp.Sequential([rp.MaxPool1d(2)], input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="padding 2 must be at most half of kernel_size 3"):
        rp.AvgPool1d(3, padding=2)
    with pytest.raises(TypeError, match="kernel_size must be an int"):
        rp.MaxPool1d((3, 3))
    with pytest.raises(ValueError, match="no window fits the padded input"):
        rp.Sequential([rp.MaxPool1d(3, 2, ceil_mode=True)], input_shape=(1, 1))
    net = rp.Sequential([rp.MaxPool1d(3, 2, 1, ceil_mode=True),
                         rp.AvgPool1d(3, 1, 1, count_include_pad=False),
                         rp.AdaptiveAvgPool1d(4), rp.Flatten()], input_shape=(2, 12))
    back = checks.saved_and_loaded(net, tmp_path, rng.normal(size=(2, 2, 12)))
    assert [layer.describe() for layer in back.layers] == [
        "MaxPool1d 3 stride 2 pad 1 ceil", "AvgPool1d 3 stride 1 pad 1 pad uncounted",
        "AdaptiveAvgPool1d 4", "Flatten"]


class Functional(nn.Module):
    """Every functional form of a 1-D pooling and of a signal's mean, on 15 samples."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)

    def forward(self, x):
        y = self.conv(x)
        a = F.max_pool1d(y, 2, ceil_mode=True)  # 15 -> 8, not 7
        b = torch.max_pool1d(y, 3, 2, 1, 1, True)
        c = F.avg_pool1d(y, 3, 1, 1, count_include_pad=False)
        d = F.adaptive_avg_pool1d(y, 5)  # an AvgPool1d(3)
        e = F.adaptive_avg_pool1d(c, 1)
        return (a.mean(2) + b.mean(-1) + torch.mean(c, dim=-1) + d.mean(2) + e.flatten(1)
                + y.mean(-1, keepdim=True).flatten(1))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_functional_forms(tmp_path, rng, path):
    net = checks.imported_as_torch(Functional, rng.normal(size=(2, 2, 15)), path, tmp_path)
    if path == "from_torch":
        assert [n.layer.describe() for n in net.nodes][1:6] == [
            "MaxPool1d 2 stride 2 pad 0 ceil", "MaxPool1d 3 stride 2 pad 1",
            "AvgPool1d 3 stride 1 pad 1 pad uncounted", "AvgPool1d 3 stride 3 pad 0",
            "AdaptiveAvgPool1d 1"]


class MaxHeads(nn.Module):
    """Adaptive and global max poolings, 1-D and 2-D: each is a MaxPool whose windows tile the
    input (the output size divides it)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv1d(2, 4, 3, padding=1)
        self.amp1 = nn.AdaptiveMaxPool1d(4)  # 12 -> 4: MaxPool1d(3)
        self.amp2 = nn.AdaptiveMaxPool2d(1)  # (4, 1, 12) -> (4, 1, 1): MaxPool2d((1, 12))

    def forward(self, x):
        y = self.conv(x)
        a = self.amp1(y).amax(-1)  # a signal's global max: MaxPool1d(4)
        b = F.adaptive_max_pool1d(y, 1).flatten(1)  # MaxPool1d(12)
        c = self.amp2(y[:, :, None]).flatten(1)
        d = torch.amax(F.adaptive_max_pool2d(y.unsqueeze(2), (1, 6)), (2, 3))
        return a + b + c + d


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_adaptive_and_global_max_pooling(tmp_path, rng, path):
    net = checks.imported_as_torch(MaxHeads, rng.normal(size=(3, 2, 12)), path, tmp_path, target=2)
    if path == "from_torch":
        assert [n.layer.describe() for n in net.nodes if "Pool" in n.layer.describe()] == [
            "MaxPool1d 3 stride 3 pad 0", "MaxPool1d 4 stride 4 pad 0",
            "MaxPool1d 12 stride 12 pad 0", "MaxPool2d 1x12 stride 1x12 pad 0",
            "MaxPool2d 1x2 stride 1x2 pad 0", "MaxPool2d 1x6 stride 1x6 pad 0"]


def test_adaptive_max_pooling_refused_where_windows_overlap():
    class Overlap(nn.Module):
        def forward(self, x):
            return F.adaptive_max_pool1d(x, 5)

    with pytest.raises(ValueError, match=r"adaptive max pooling to 5 of per-sample shape "
                                         r"\(2, 12\) is not supported \(only to sizes that "
                                         r"divide the input's\)"):
        rp.from_torch(Overlap(), (2, 12))
    with pytest.raises(ValueError, match="return_indices=True is not supported"):
        rp.from_torch(nn.AdaptiveMaxPool1d(3, return_indices=True), (2, 12))
