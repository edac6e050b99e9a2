"""Kernels of graph networks (ResNet, DenseNet, MobileNetV2) against their NumPy twins:
grouped, depthwise and dilated Conv2d, adaptive average pooling and the per-channel affine map
(ReLU6 runs Hardtanh's kernels: tests/test_hardtanh.py); adjoint (dot-product) tests of every
backward, thread-count invariance, every ISA this CPU supports, packing identities and the
errors on bad input."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

from strategies import DTYPES, arrays, sum_tolerance

ISAS = ops.supported_isas()


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


@pytest.fixture(params=ISAS)
def isa(request):
    old = ops.isa()
    ops.set_isa(request.param)
    yield request.param
    ops.set_isa(old)


def with_threads(n, fn):
    old = rp.get_num_threads()
    rp.set_num_threads(n)
    try:
        return fn()
    finally:
        rp.set_num_threads(old)


def out_size(h, k, s, p, d):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


# ------------------------------------------------------------------------------------------
# Conv2d with groups and dilation

@st.composite
def group_conv_problems(draw, kind=None, wide=False):
    """(x, w, b, stride, padding, dilation, groups): dense (groups 1), grouped (1 < groups <
    c_in) or depthwise (groups == c_in, channel multiplier 1 or 2), batch 1 to 3, kernels up
    to 4x4, strides and dilations 1 to 3, padding up to the dilated kernel's extent."""
    kind = kind or draw(st.sampled_from(["dense", "grouped", "depthwise"]))
    dtype = draw(DTYPES)
    if kind == "dense":
        groups, cig, cog = 1, draw(st.integers(1, 3)), draw(st.integers(1, 4))
    elif kind == "grouped":
        groups, cig, cog = draw(st.integers(2, 4)), draw(st.integers(2, 3)), draw(st.integers(1, 3))
    else:
        groups, cig, cog = draw(st.integers(2, 5)), 1, draw(st.sampled_from([1, 2]))
    n = draw(st.integers(1, 3))
    kh, kw = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    dh, dw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    ph, pw = draw(st.integers(0, dh * (kh - 1) + 1)), draw(st.integers(0, dw * (kw - 1) + 1))
    eh, ew = dh * (kh - 1) + 1, dw * (kw - 1) + 1
    h = draw(st.integers(max(1, eh - 2 * ph), max(1, eh - 2 * ph) + 8))
    w = draw(st.integers(max(1, ew - 2 * pw), max(1, ew - 2 * pw) + (60 if wide else 12)))
    x = draw(arrays(dtype, (n, groups * cig, h, w)))
    wt = draw(arrays(dtype, (groups * cog, cig, kh, kw)))
    b = draw(st.one_of(st.none(), arrays(dtype, (groups * cog,))))
    return x, wt, b, (sh, sw), (ph, pw), (dh, dw), groups


def conv_kw(d, groups):
    return dict(dilation=d, groups=groups)


def check_forward(x, w, b, s, p, d, groups):
    y = ops.conv2d_forward(x, w, b, s, p, **conv_kw(d, groups))
    want = ref.conv2d_forward(f64(x), f64(w), f64(b), s, p, **conv_kw(d, groups))
    bound = ref.conv2d_forward(abs(f64(x)), abs(f64(w)), None if b is None else abs(f64(b)), s, p,
                               **conv_kw(d, groups))
    assert y.dtype == x.dtype and y.shape == want.shape
    assert np.all(abs(y - want) <= sum_tolerance(x.dtype, w[0].size + 1, bound))
    return y


def check_backward(x, w, g, s, p, d, groups):
    """gx against the reference within a sum of (c_out/groups)*kh*kw terms, and adjoint."""
    y = ops.conv2d_forward(x, w, None, s, p, **conv_kw(d, groups))
    gx = ops.conv2d_backward(g, w, x.shape[2:], s, p, **conv_kw(d, groups))
    want = ref.conv2d_backward(f64(g), f64(w), x.shape[2:], s, p, **conv_kw(d, groups))
    bound = ref.conv2d_backward(abs(f64(g)), abs(f64(w)), x.shape[2:], s, p, **conv_kw(d, groups))
    terms = w.shape[0] // groups * w.shape[2] * w.shape[3]
    assert gx.dtype == g.dtype and gx.shape == x.shape
    assert np.all(abs(gx - want) <= sum_tolerance(g.dtype, terms, bound))
    # <conv(x), g> == <x, conv^T(g)>, each side within its sum's error bound
    lhs, rhs = np.vdot(f64(y), f64(g)), np.vdot(f64(x), f64(gx))
    scale = np.vdot(abs(f64(y)), abs(f64(g))) + np.vdot(abs(f64(x)), abs(f64(gx)))
    eps = np.finfo(x.dtype).eps
    assert abs(lhs - rhs) <= 4 * eps * (w[0].size + terms + y.size) * scale + 1e-30


@given(st.one_of(group_conv_problems(), group_conv_problems("depthwise", wide=True)))
def test_grouped_dilated_conv_forward_matches_reference(p):
    x, w, b, s, pad, d, groups = p
    check_forward(x, w, b, s, pad, d, groups)


@given(st.one_of(group_conv_problems(), group_conv_problems("depthwise", wide=True)),
       st.integers(0, 2**31))
def test_grouped_dilated_conv_backward_matches_reference_and_is_adjoint(p, seed):
    x, w, _, s, pad, d, groups = p
    y = ops.conv2d_forward(x, w, None, s, pad, **conv_kw(d, groups))
    g = np.random.default_rng(seed).uniform(-1, 1, y.shape).astype(x.dtype)
    check_backward(x, w, g, s, pad, d, groups)


def depthwise_widths(dtype):
    """Output row lengths around the depthwise kernel's blocking under the ISA in use: rows of
    one lane, a vector, several rows per register block, a whole block, and longer rows."""
    blk = ops.isa_table()["depthwise"][np.dtype(dtype).name]
    lanes, nb = blk["lanes"], blk["vectors"]
    return sorted({1, max(1, lanes // 2 - 1), lanes // 2, lanes - 1, lanes, lanes + 1,
                   2 * lanes - 1, 2 * lanes + 3, nb * lanes, nb * lanes + lanes // 2 + 1})


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k, s, pad, d, mult", [(3, 1, 1, 1, 1), (3, 2, 1, 1, 1), (3, 1, 2, 2, 2),
                                                (5, 2, 2, 1, 1), (3, 3, 0, 2, 2), (1, 2, 0, 1, 2),
                                                (3, 1, 0, 1, 1),
                                                ((2, 3), (1, 2), (1, 0), (3, 1), 1)])
def test_depthwise_every_isa_and_row_length(isa, dtype, k, s, pad, d, mult):
    # MobileNetV2's 3x3 stride 1 and 2, dilations, multipliers, and output rows of every length
    # around the kernel's vector blocking, on each ISA; both passes against the reference.
    # lanes + 3 channels: small planes run channel-blocked (a vector per pixel), in one full
    # block of channels and one of 3
    pair = lambda v: (v, v) if isinstance(v, int) else tuple(v)  # noqa: E731
    k, s, pad, d = pair(k), pair(s), pair(pad), pair(d)
    rng = np.random.default_rng(7)
    c = ops.isa_table()["depthwise"][np.dtype(dtype).name]["lanes"] + 3
    w = rng.uniform(-1, 1, (c * mult, 1) + k).astype(dtype)
    b = rng.uniform(-1, 1, c * mult).astype(dtype)
    for ow in depthwise_widths(dtype):
        for oh in (1, 3):
            h = (oh - 1) * s[0] + d[0] * (k[0] - 1) + 1 - 2 * pad[0]
            wd = (ow - 1) * s[1] + d[1] * (k[1] - 1) + 1 - 2 * pad[1]
            if h < 1 or wd < 1:
                continue
            x = rng.uniform(-1, 1, (1 + oh % 2, c, h, wd)).astype(dtype)
            y = check_forward(x, w, b, s, pad, d, c)
            assert y.shape[2:] == (oh, ow)
            g = rng.uniform(-1, 1, y.shape).astype(dtype)
            check_backward(x, w, g, s, pad, d, c)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("c_in, c_out, groups, k, s, pad, d", [
    (8, 12, 4, 3, 1, 1, 1),    # backward through the flipped kernel
    (4, 64, 2, 3, 1, 1, 1),    # few inputs per group: col2im
    (6, 6, 3, 3, 2, 1, 1),     # strided: col2im
    (8, 16, 2, 3, 1, 2, 2),    # dilated, flipped
    (8, 16, 4, 3, 2, 2, 2),    # dilated and strided
    (6, 9, 3, 1, 1, 0, 1),     # 1x1: the group's channels read as a matrix
    (4, 8, 1, 3, 1, 3, 3),     # dense, dilated, padding = dilation*(k - 1): flipped
    (4, 8, 1, 3, 1, 4, 2),     # padding beyond it: col2im
])
@pytest.mark.parametrize("n", [1, 2])
def test_grouped_conv_paths_every_isa(isa, dtype, c_in, c_out, groups, k, s, pad, d, n):
    rng = np.random.default_rng(c_in * c_out + groups)
    x = rng.uniform(-1, 1, (n, c_in, 11, 37)).astype(dtype)
    w = rng.uniform(-1, 1, (c_out, c_in // groups, k, k)).astype(dtype)
    b = rng.uniform(-1, 1, c_out).astype(dtype)
    y = check_forward(x, w, b, (s, s), (pad, pad), (d, d), groups)
    g = rng.uniform(-1, 1, y.shape).astype(dtype)
    check_backward(x, w, g, (s, s), (pad, pad), (d, d), groups)
    # packed weights give the same bits
    kw = conv_kw((d, d), groups)
    fp = ops.conv2d_pack(w, **kw)
    assert_array_equal(ops.conv2d_forward(x, w, b, s, pad, fp, **kw), y)
    bp = ops.conv2d_pack(w, True, s, pad, **kw)
    assert_array_equal(ops.conv2d_backward(g, w, x.shape[2:], s, pad, bp, **kw),
                       ops.conv2d_backward(g, w, x.shape[2:], s, pad, **kw))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_group_blocks_are_independent_convolutions(isa, dtype):
    # one implicit GEMM per group on channel slices: each group's output is the dense
    # convolution of its slices, bitwise (the same GEMM on the same data)
    rng = np.random.default_rng(2)
    x = rng.uniform(-1, 1, (2, 12, 15, 21)).astype(dtype)
    w = rng.uniform(-1, 1, (9, 4, 3, 3)).astype(dtype)
    b = rng.uniform(-1, 1, 9).astype(dtype)
    y = ops.conv2d_forward(x, w, b, (1, 2), (1, 1), dilation=(2, 1), groups=3)
    for gi in range(3):
        xs, ws, bs = x[:, 4 * gi:4 * gi + 4], w[3 * gi:3 * gi + 3], b[3 * gi:3 * gi + 3]
        assert_array_equal(y[:, 3 * gi:3 * gi + 3],
                           ops.conv2d_forward(xs, ws, bs, (1, 2), (1, 1), dilation=(2, 1)))


@given(st.one_of(group_conv_problems("dense"), group_conv_problems("grouped"),
                 group_conv_problems("depthwise")), st.integers(1, 2), st.integers(1, 2))
def test_forward_split_gives_the_two_halves(p, a, b_):
    x, w0, b0, s, pad, d, groups = p
    # stacked weights [w1; w2]: halves of a * groups and b_ * groups output channels
    rng = np.random.default_rng(x.size)
    w = rng.uniform(-1, 1, ((a + b_) * groups,) + w0.shape[1:]).astype(x.dtype)
    b = None if b0 is None else rng.uniform(-1, 1, w.shape[0]).astype(x.dtype)
    split = a * groups
    kw = conv_kw(d, groups)
    top, bottom = ops.conv2d_forward_split(x, w, b, split, s, pad, **kw)
    # each output row is the same sum as in a convolution of its half alone (GEMM rows and
    # depthwise planes do not depend on their neighbours)
    for got, sl in ((top, slice(None, split)), (bottom, slice(split, None))):
        assert_array_equal(got, ops.conv2d_forward(x, w[sl], None if b is None else b[sl], s,
                                                   pad, **kw))
    want = ref.conv2d_forward_split(f64(x), f64(w), f64(b), split, s, pad, **kw)
    bound = ref.conv2d_forward_split(abs(f64(x)), abs(f64(w)), None if b is None else abs(f64(b)),
                                     split, s, pad, **kw)
    for got, wt, bd in zip((top, bottom), want, bound):
        assert got.shape == wt.shape
        assert np.all(abs(got - wt) <= sum_tolerance(x.dtype, w[0].size + 1, bd))
    if groups == 1:  # the full output cut in two
        full = ops.conv2d_forward(x, w, b, s, pad, **kw)
        assert_array_equal(top, full[:, :split])
        assert_array_equal(bottom, full[:, split:])


def test_forward_split_packing_rules():
    x = np.ones((1, 4, 6, 6))
    dw = np.ones((8, 1, 3, 3))  # depthwise halves of 4 + 4 filters: the packing of w is used
    a, b = ops.conv2d_forward_split(x, dw, None, 4, groups=4, packed=ops.conv2d_pack(dw, groups=4))
    assert_array_equal(a, ops.conv2d_forward(x, dw[:4], None, groups=4))
    gw = np.ones((8, 2, 3, 3))  # two groups of two channels: the stacked rows are packed per call
    with pytest.raises(ValueError, match="packed=None"):
        ops.conv2d_forward_split(x, gw, None, 4, groups=2, packed=ops.conv2d_pack(gw, groups=2))
    with pytest.raises(ValueError, match="multiples of groups=2"):
        ops.conv2d_forward_split(x, np.ones((6, 2, 3, 3)), None, 3, groups=2)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packings_for_other_groups_or_dilation_are_refused(isa, dtype):
    w = np.ones((8, 2, 3, 3), dtype)
    x = np.ones((1, 8, 9, 9), dtype)
    g = np.ones((1, 8, 7, 7), dtype)
    refused = [  # (packing, call)
        (ops.conv2d_pack(w, groups=2), lambda p: ops.conv2d_forward(x, w, packed=p, groups=4)),
        (ops.conv2d_pack(w, groups=4, dilation=2),
         lambda p: ops.conv2d_forward(x, w, packed=p, groups=4)),
        (ops.conv2d_pack(w, True, groups=4), lambda p: ops.conv2d_backward(
            g, w, (9, 9), packed=p, groups=2)),
        (ops.conv2d_pack(w, True, groups=4, dilation=(1, 2)), lambda p: ops.conv2d_backward(
            g, w, (9, 9), packed=p, groups=4)),
    ]
    # a depthwise packing (w as is) for the grouped GEMM of the same shape, and back
    w1 = np.ones((8, 1, 3, 3), dtype)
    refused.append((ops.conv2d_pack(w1, groups=8),
                    lambda p: ops.conv2d_forward(np.ones((1, 1, 9, 9), dtype), w1, packed=p)))
    refused.append((ops.conv2d_pack(w1, groups=8),
                    lambda p: ops.conv2d_backward(g, w1, (9, 9), packed=p, groups=8)))
    for packed, call in refused:
        with pytest.raises(ValueError, match="packed for"):
            call(packed)
    p = ops.conv2d_pack(w, True, groups=4, dilation=(1, 2))
    assert (p.groups, p.dilation) == (4, (1, 2)) and "groups=4" in repr(p)
    assert ops.conv2d_pack(w1, groups=8).gemm == "conv2d_depthwise_forward"
    assert ops.conv2d_pack(w1, True, groups=8).gemm == "conv2d_depthwise_backward"


def test_bad_conv_input_names_the_value():
    x, w = np.ones((1, 6, 8, 8)), np.ones((6, 2, 3, 3))
    cases = [
        (dict(groups=4), ValueError, "groups=4"),                  # 6 channels, groups 4
        (dict(groups=2), ValueError, r"weight.shape\[1\]=2 must equal 3"),
        (dict(groups=0), ValueError, "groups must be >= 1"),
        (dict(dilation=0), ValueError, "dilation must be >= 1"),
        (dict(padding=(-1, 0)), ValueError, "padding must be >= 0"),
        (dict(dilation=(5, 1)), ValueError, r"dilated to \(11, 3\)"),
        (dict(groups=2.0), TypeError, "groups must be an integer"),
    ]
    for kwargs, exc, match in cases:
        with pytest.raises(exc, match=match):
            ops.conv2d_forward(x, w, **{"groups": 3, **kwargs})
    with pytest.raises(ValueError, match=r"weight.shape\[0\]=5"):
        ops.conv2d_forward(x, np.ones((5, 2, 3, 3)), groups=3)
    with pytest.raises(TypeError, match="dtype float32 but x has dtype float64"):
        ops.conv2d_forward(x, w.astype(np.float32), groups=3)
    with pytest.raises(TypeError, match="dtype float32 but g has dtype float64"):
        ops.conv2d_backward(np.ones((1, 6, 6, 6)), w.astype(np.float32), (8, 8), groups=3)
    with pytest.raises(ValueError, match=r"weight.shape\[0\]=5"):
        ops.conv2d_backward(np.ones((1, 5, 6, 6)), np.ones((5, 2, 3, 3)), (8, 8), groups=3)
    with pytest.raises(ValueError, match="grad spatial shape"):
        ops.conv2d_backward(np.ones((1, 6, 6, 6)), w, (8, 8), dilation=2, groups=3)
    with pytest.raises(ValueError, match="groups=4"):
        ops.conv2d_pack(np.ones((6, 2, 3, 3)), groups=4)


def test_depthwise_and_grouped_match_torch():
    torch = pytest.importorskip("torch")
    F = torch.nn.functional
    rng = np.random.default_rng(3)
    for c, cm, groups, s, p, d in [(32, 1, 32, 1, 1, 1), (16, 2, 16, 2, 1, 1), (24, 1, 24, 1, 2, 2),
                                   (32, 2, 8, 1, 1, 1), (16, 1, 4, 2, 2, 2)]:
        x = rng.standard_normal((2, c, 13, 29))
        w = rng.standard_normal((c * cm, c // groups, 3, 3))
        b = rng.standard_normal(c * cm)
        tx = torch.tensor(x, requires_grad=True)
        ty = F.conv2d(tx, torch.tensor(w), torch.tensor(b), s, p, d, groups)
        y = ops.conv2d_forward(x, w, b, s, p, dilation=d, groups=groups)
        assert_allclose(y, ty.detach().numpy(), rtol=1e-10, atol=1e-10)
        g = rng.standard_normal(y.shape)
        ty.backward(torch.tensor(g))
        assert_allclose(ops.conv2d_backward(g, w, (13, 29), s, p, dilation=d, groups=groups),
                        tx.grad.numpy(), rtol=1e-10, atol=1e-10)


# ------------------------------------------------------------------------------------------
# Adaptive average pooling, channel affine

@st.composite
def adaptive_problems(draw):
    dtype = draw(DTYPES)
    n, c = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    oh, ow = draw(st.integers(1, 14)), draw(st.integers(1, 14))  # also larger than the input
    return draw(arrays(dtype, (n, c, h, w))), (oh, ow)


@given(adaptive_problems(), st.integers(0, 2**31))
def test_adaptive_avgpool_matches_reference_and_is_adjoint(p, seed):
    x, out_hw = p
    h, w = x.shape[2:]
    y = ops.adaptive_avgpool2d_forward(x, out_hw)
    want = ref.adaptive_avgpool2d_forward(f64(x), out_hw)
    bound = ref.adaptive_avgpool2d_forward(abs(f64(x)), out_hw)
    assert y.dtype == x.dtype and y.shape == x.shape[:2] + out_hw
    assert np.all(abs(y - want) <= sum_tolerance(x.dtype, h * w + 2, bound))
    g = np.random.default_rng(seed).uniform(-1, 1, y.shape).astype(x.dtype)
    gx = ops.adaptive_avgpool2d_backward(g, (h, w))
    want = ref.adaptive_avgpool2d_backward(f64(g), (h, w))
    bound = ref.adaptive_avgpool2d_backward(abs(f64(g)), (h, w))
    assert gx.shape == x.shape
    assert np.all(abs(gx - want) <= sum_tolerance(x.dtype, out_hw[0] * out_hw[1] + 2, bound))
    lhs, rhs = np.vdot(f64(y), f64(g)), np.vdot(f64(x), f64(gx))
    scale = np.vdot(abs(f64(y)), abs(f64(g))) + np.vdot(abs(f64(x)), abs(f64(gx)))
    assert abs(lhs - rhs) <= 8 * np.finfo(x.dtype).eps * (h * w + y.size) * scale + 1e-30


def test_adaptive_avgpool_windows_as_torch():
    # windows [floor(i*H/oh), ceil((i+1)*H/oh)): 5 -> 3 overlaps, 2 -> 5 repeats pixels
    x = np.arange(5.0).reshape(1, 1, 1, 5)
    assert_allclose(ops.adaptive_avgpool2d_forward(x, (1, 3)), [[[[0.5, 2.0, 3.5]]]])
    x = np.array([[[[1.0, 2.0]]]])
    assert_allclose(ops.adaptive_avgpool2d_forward(x, (1, 5)), [[[[1.0, 1.0, 1.5, 2.0, 2.0]]]])
    assert_allclose(ops.adaptive_avgpool2d_backward(np.ones((1, 1, 1, 5)), (1, 2)),
                    [[[[2.5, 2.5]]]])
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for h, w, oh, ow in [(7, 7, 1, 1), (7, 9, 3, 4), (5, 3, 8, 7), (13, 6, 6, 13)]:
        x = rng.standard_normal((2, 3, h, w))
        assert_allclose(ops.adaptive_avgpool2d_forward(x, (oh, ow)),
                        torch.nn.functional.adaptive_avg_pool2d(torch.tensor(x), (oh, ow)).numpy(),
                        rtol=1e-12, atol=1e-14)


def test_adaptive_avgpool_bad_input():
    with pytest.raises(ValueError, match="out_hw must be >= 1"):
        ops.adaptive_avgpool2d_forward(np.ones((1, 1, 4, 4)), (0, 2))
    with pytest.raises(ValueError, match="4 dimensions"):
        ops.adaptive_avgpool2d_forward(np.ones((1, 4, 4)), 2)
    with pytest.raises(ValueError, match="in_hw must be >= 1"):
        ops.adaptive_avgpool2d_backward(np.ones((1, 1, 2, 2)), (-1, 4))
    with pytest.raises(TypeError, match="dtype int64"):
        ops.adaptive_avgpool2d_forward(np.ones((1, 1, 4, 4), np.int64), 2)


@given(DTYPES, st.sampled_from([(3, 4), (2, 3, 5), (1, 4, 3, 2), (2, 3, 2, 2, 3), (2, 5, 4099)]),
       st.booleans(), st.data())
def test_channel_affine_matches_reference_and_is_adjoint(dtype, shape, with_shift, data):
    x = data.draw(arrays(dtype, shape))
    scale = data.draw(arrays(dtype, (shape[1],), lo=-3.0, hi=3.0))
    shift = data.draw(arrays(dtype, (shape[1],))) if with_shift else None
    y = ops.channel_affine(x, scale, shift)
    want = ref.channel_affine(f64(x), f64(scale), f64(shift))
    bound = ref.channel_affine(abs(f64(x)), abs(f64(scale)), None if shift is None
                               else abs(f64(shift)))
    assert y.dtype == dtype and y.shape == shape
    assert np.all(abs(y - want) <= sum_tolerance(dtype, 2, bound))
    g = data.draw(arrays(dtype, shape))
    gx = ops.channel_affine(g, scale)  # the backward
    lhs, rhs = np.vdot(f64(ops.channel_affine(x, scale)), f64(g)), np.vdot(f64(x), f64(gx))
    scale_ = np.vdot(abs(f64(x)), abs(f64(gx))) + np.vdot(abs(f64(y)), abs(f64(g)))
    assert abs(lhs - rhs) <= 4 * np.finfo(dtype).eps * (x.size + 2) * scale_ + 1e-30


def test_channel_affine_bad_input():
    x = np.ones((2, 3, 4))
    with pytest.raises(ValueError, match=r"scale must have shape \(3,\)"):
        ops.channel_affine(x, np.ones(4))
    with pytest.raises(ValueError, match=r"shift must have shape \(3,\)"):
        ops.channel_affine(x, np.ones(3), np.ones((3, 1)))
    with pytest.raises(ValueError, match="channel axis"):
        ops.channel_affine(np.ones(3), np.ones(3))
    with pytest.raises(TypeError, match="scale has dtype float32"):
        ops.channel_affine(x, np.ones(3, np.float32))
    assert_array_equal(ops.channel_affine(x, [1.0, 2.0, 3.0]), x * np.array([1, 2, 3])[:, None])


# ------------------------------------------------------------------------------------------
# Threads

def _graph_kernels_once(rng, dtype):
    u = lambda *shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    out = []
    for n in (1, 3):
        x = u(n, 24, 21, 19)
        for groups, cm, s, p, d in [(24, 1, 1, 1, 1), (24, 2, 2, 1, 1), (24, 1, 1, 2, 2),
                                    (4, 1, 1, 1, 1), (6, 2, 2, 2, 2), (1, 1, 1, 2, 2)]:
            w = u(24 * cm, 24 // groups, 3, 3)
            y = ops.conv2d_forward(x, w, u(24 * cm), s, p, dilation=d, groups=groups)
            out += [y, ops.conv2d_backward(u(*y.shape), w, (21, 19), s, p, dilation=d,
                                           groups=groups)]
            if cm == 2 or groups == 1:
                out += list(ops.conv2d_forward_split(x, w, None, 24 * cm // 2, s, p, dilation=d,
                                                     groups=groups))
        big = u(1, 20, 112, 112)  # planes of many vectors
        wb = u(20, 1, 3, 3)
        out += [ops.conv2d_forward(big, wb, None, 2, 1, groups=20),
                ops.conv2d_backward(u(1, 20, 112, 112), wb, (112, 112), 1, 1, groups=20)]
        out += [ops.adaptive_avgpool2d_forward(x, (5, 7)),
                ops.adaptive_avgpool2d_backward(u(n, 24, 30, 4), (21, 19)),
                ops.hardtanh_forward(7 * x, 0.0, 6.0), ops.hardtanh_backward(x, 7 * x, 0.0, 6.0),
                ops.channel_affine(big, u(20), u(20)), ops.channel_affine(x[:, :, 0, 0], u(24))]
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_thread_count(isa, dtype):
    runs = [with_threads(t, lambda: _graph_kernels_once(np.random.default_rng(1), dtype))
            for t in (1, 2, 0)]
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert_array_equal(a, b)


def test_depthwise_rows_do_not_depend_on_batch(isa):
    rng = np.random.default_rng(4)
    x = rng.uniform(-1, 1, (5, 16, 30, 30)).astype(np.float32)
    w = rng.uniform(-1, 1, (32, 1, 3, 3)).astype(np.float32)
    full = ops.conv2d_forward(x, w, None, 2, 1, groups=16)
    assert_array_equal(ops.conv2d_forward(x[3:4], w, None, 2, 1, groups=16), full[3:4])
    g = rng.uniform(-1, 1, full.shape).astype(np.float32)
    assert_array_equal(ops.conv2d_backward(g[1:2], w, (30, 30), 2, 1, groups=16),
                       ops.conv2d_backward(g, w, (30, 30), 2, 1, groups=16)[1:2])


def test_scratch_failure_in_depthwise_is_memory_error():
    # a failed allocation of the depthwise kernel's per-thread buffers (planes of 3 MB) must
    # come out as MemoryError, not end the process
    from relprop import _core

    x = np.ones((1, 2, 600, 600))
    w = np.ones((2, 1, 3, 3))
    _core._fail_scratch_allocations(True)
    try:
        with pytest.raises(MemoryError):
            ops.conv2d_forward(x, w, None, 1, 4, dilation=4, groups=2)
    finally:
        _core._fail_scratch_allocations(False)
    assert ops.conv2d_forward(x, w, None, 1, 4, dilation=4, groups=2).shape == x.shape
