"""Upsample (nearest and bilinear, align_corners both ways, to a size or by a scale factor):
the kernel against its NumPy twin (the interpolation matrices of torch's source positions) on
random sizes, bitwise on any thread count and batch, the adjoint identity and conservation, =
torch's interpolate (forward and float64 gradient), the layer in networks (LRP = reference and
= Zennit, which hooks no upsampling), both importers and model files."""
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
from strategies import DTYPES, arrays, f64, with_threads

SCALES = [None, 2.0, 3.0, 1.5, 2.5, 0.75, 1.7]


@st.composite
def upsample_problems(draw):
    """(x, out_hw, mode, align_corners, scale, g): torch's arguments, the output size from a
    scale factor (floor(in * scale)) or drawn."""
    dtype = draw(DTYPES)
    mode = draw(st.sampled_from(ops.UPSAMPLE_MODES))
    align = mode == "bilinear" and draw(st.booleans())
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    scale = draw(st.sampled_from(SCALES))
    if scale is None:
        out = (draw(st.integers(1, 15)), draw(st.integers(1, 15)))
    else:
        out = (int(np.floor(h * scale)), int(np.floor(w * scale)))
        if min(out) < 1:
            scale, out = None, (h, w)
    x = draw(arrays(dtype, (n, c, h, w)))
    g = draw(arrays(dtype, (n, c) + out))
    return x, out, mode, align, scale, g


@given(upsample_problems())
def test_kernel_matches_twin_bitwise_on_any_thread_count(problem):
    x, out, mode, align, scale, g = problem
    y = ops.upsample2d_forward(x, out, mode, align, scale)
    gx = ops.upsample2d_backward(g, x.shape[2:], mode, align, scale)
    assert y.shape == x.shape[:2] + out and gx.shape == x.shape and y.dtype == x.dtype
    eps = np.finfo(x.dtype).eps
    # nearest copies: exact; bilinear: four products and three sums of values <= 1
    assert_allclose(y, ref.upsample2d_forward(f64(x), out, mode, align, scale), rtol=0,
                    atol=8 * eps)
    want = ref.upsample2d_backward(f64(g), x.shape[2:], mode, align, scale)
    bound = ref.upsample2d_backward(abs(f64(g)), x.shape[2:], mode, align, scale)
    assert np.all(abs(f64(gx) - want) <= 4 * eps * (out[0] + out[1] + 2) * bound + 1e-300)
    for n in (1, 2):
        assert_array_equal(with_threads(n, ops.upsample2d_forward, x, out, mode, align, scale),
                           y)
        assert_array_equal(with_threads(n, ops.upsample2d_backward, g, x.shape[2:], mode, align,
                                        scale), gx)
    # a sample alone gives its rows of the batch; the transpose; relevance conserved (every
    # output's weights sum to one)
    assert_array_equal(ops.upsample2d_forward(x[-1:], out, mode, align, scale), y[-1:])
    assert_array_equal(ops.upsample2d_backward(g[-1:], x.shape[2:], mode, align, scale),
                       gx[-1:])
    tol = 16 * eps * (np.vdot(abs(f64(y)), abs(f64(g))) + 1e-300)
    assert abs(np.vdot(f64(y), f64(g)) - np.vdot(f64(x), f64(gx))) <= tol
    assert_allclose(f64(gx).sum(axis=(2, 3)), f64(g).sum(axis=(2, 3)), rtol=1e-4,
                    atol=64 * eps * abs(f64(g)).sum())


@pytest.mark.parametrize("kw", [
    {"scale_factor": 2, "mode": "nearest"}, {"size": (7, 9), "mode": "nearest"},
    {"scale_factor": 1.5, "mode": "nearest"}, {"scale_factor": 0.7, "mode": "nearest"},
    {"scale_factor": (2.5, 1.5), "mode": "bilinear"},
    {"scale_factor": 2, "mode": "bilinear", "align_corners": True},
    {"size": (10, 7), "mode": "bilinear", "align_corners": False},
    {"size": (3, 4), "mode": "bilinear"}, {"size": 1, "mode": "bilinear"},
    {"scale_factor": 1.7, "mode": "bilinear", "recompute_scale_factor": True}],
    ids=lambda kw: "-".join(f"{k}={v}" for k, v in kw.items()))
def test_layer_matches_torch_interpolate(kw, rng):
    torch = pytest.importorskip("torch")
    F = torch.nn.functional

    class M(torch.nn.Module):
        def forward(self, x):
            return F.interpolate(x, **kw)

    net = rp.from_torch(M(), (2, 5, 6))
    x = rng.normal(size=(2, 2, 5, 6))
    xt = torch.from_numpy(x).requires_grad_()
    yt = F.interpolate(xt, **kw)
    g = rng.normal(size=tuple(yt.shape))
    yt.backward(torch.from_numpy(g))
    assert_allclose(net(x), yt.detach().numpy(), rtol=1e-14, atol=1e-14)
    assert_allclose(rp.gradient(net, x, g), xt.grad.numpy(), rtol=1e-13, atol=1e-14)
    x32 = x.astype(np.float32)
    with torch.no_grad():
        want = F.interpolate(torch.from_numpy(x32), **kw).numpy()
    assert_allclose(net(x32), want, rtol=1e-6, atol=1e-6)


def test_layer_description_and_errors():
    layer = rp.Upsample(scale_factor=2)
    assert layer.output_shape((3, 4, 5)) == (3, 8, 10) and layer.describe() == "Upsample nearest x2"
    assert rp.Upsample(size=(6, 7), mode="bilinear", align_corners=True).describe() == \
        "Upsample bilinear to 6x7 align corners"
    with pytest.raises(ValueError, match="a size or a scale_factor"):
        rp.Upsample()
    with pytest.raises(ValueError, match="align_corners applies to mode='bilinear' only"):
        rp.Upsample(scale_factor=2, align_corners=True)
    with pytest.raises(ValueError, match="mode must be one of"):
        rp.Upsample(scale_factor=2, mode="bicubic")
    with pytest.raises(ValueError, match="makes no output"):
        rp.Upsample(scale_factor=0.1).output_shape((1, 3, 3))
    with pytest.raises(ValueError, match="mode must be one of"):
        ops.upsample2d_forward(np.zeros((1, 1, 2, 2)), (4, 4), "area")


torch = pytest.importorskip("torch")
nn = torch.nn
F = nn.functional


class Up(nn.Module):
    """Every spelling: nn.Upsample (nearest), F.interpolate by a size (bilinear, corners
    aligned), nn.UpsamplingBilinear2d, F.interpolate by a scale (bilinear, pixel centres),
    between convolutions."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.up = nn.Upsample(scale_factor=2)
        self.conv2 = nn.Conv2d(4, 4, 3)
        self.upb = nn.UpsamplingBilinear2d(scale_factor=2)
        self.fc = nn.Linear(4 * 14 * 14, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))                                   # (4, 4, 4)
        y = torch.relu(self.conv2(self.up(y)))                         # (4, 6, 6)
        y = F.interpolate(y, size=(5, 7), mode="bilinear", align_corners=True)
        y = F.interpolate(self.upb(y), scale_factor=1.5, mode="bilinear")   # (4, 15, 21)
        return self.fc(torch.flatten(y[:, :, :14, :14], 1))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_imported(tmp_path, rng, path):
    torch.manual_seed(0)
    module = Up().double().eval()
    net = nets.imported(module, (3, 4, 4), path, tmp_path)
    ups = [n.layer.describe() for n in net.nodes if n.layer.kind == "upsample"]
    assert len(ups) == 4
    if path == "from_torch":
        assert ups == ["Upsample nearest x2", "Upsample bilinear to 5x7 align corners",
                       "Upsample bilinear x2 align corners", "Upsample bilinear x1.5"]
    checks.path_checks(module, net, rng.normal(size=(2, 3, 4, 4)), 1, path, tmp_path)


def test_relevance_crosses_upsampling_conserved_and_as_zennit(rng):
    """LRP-0 on a bias-free chain conserves the score through upsampling (its weights sum to
    one), and EpsilonPlusFlat equals Zennit's, which hooks no Upsample module (the gradient)."""
    torch.manual_seed(2)
    chain = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, bias=False), nn.ReLU(),
                          nn.Upsample(scale_factor=2, mode="bilinear"),
                          nn.Conv2d(4, 4, 3, bias=False), nn.ReLU(), nn.Upsample(size=(9, 9)),
                          nn.Flatten(), nn.Linear(4 * 81, 3, bias=False)).double().eval()
    net = rp.from_torch(chain, (3, 4, 4))
    x = rng.uniform(-1, 1, size=(2, 3, 4, 4))
    R = rp.lrp(net, x, 0, rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0))
    assert_allclose(R.reshape(2, -1).sum(1), net(x)[:, 0], rtol=1e-10)
    checks.lrp_as_zennit(chain, net, x, 0)


def test_unsupported_interpolations_are_refused():
    checks.refused_by_from_torch([
        (lambda x, kw=kw: F.interpolate(x, **kw), match) for kw, match in [
            ({"scale_factor": 2, "mode": "bicubic"}, "mode='bicubic' is not supported"),
            ({"scale_factor": 2, "mode": "bilinear", "antialias": True}, "antialias"),
            ({"scale_factor": 2, "mode": "nearest-exact"}, "nearest-exact")]], (1, 3, 3))
