"""Operator plans: the planner's choice of each convolution pass's algorithm (the rule written
out here from DESIGN.md, with the thresholds of each ISA's table), the kernels running the
algorithm they are given (and refusing one that cannot run the pass), the plans a layer makes
once and caches, and the table of every ISA."""
import math

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

import nets


def rule(c_in, hw, w_shape, stride, padding, dilation, groups, dtype, backward, request, table):
    """The planner's rule as DESIGN.md states it (padding symmetric, square images)."""
    c_out, _, kh, kw = w_shape
    if groups > 1 and groups == c_in:
        return "depthwise"
    winograd = ((kh, kw) == (3, 3) and stride == 1 and dilation == 1 and groups == 1
                and padding <= 2)
    if winograd and request != "direct":
        t = table["winograd"]
        oh = hw if backward else hw + 2 * padding - 2
        cin, cout = (c_out, c_in) if backward else (c_in, c_out)
        tile = 0
        if (np.dtype(dtype) == np.float32 and min(cin, cout) >= t["min_channels"]
                and 9 * cin * cout * oh * oh >= t["min_macs"]):
            if math.ceil(oh / 4) ** 2 >= t["f4_min_tiles"]:
                tile = 4
            elif math.ceil(oh / 2) ** 2 >= t["f2_min_tiles"]:
                tile = 2
        if request == "winograd" and not tile:
            tile = 4
        if tile:
            return f"winograd{tile}"
    one = (kh, kw) == (1, 1) and stride == 1
    if not backward:
        return "gemm1x1" if one and padding == 0 else "gemm"
    flips = (stride == 1 and padding <= dilation * (kh - 1)
             and c_in // groups * 8 > c_out // groups)
    return ("gemm1x1" if one else "flipped") if flips else "col2im"


LAYERS = [  # c_in, hw, w_shape, stride, padding, dilation, groups
    (64, 56, (64, 64, 3, 3), 1, 1, 1, 1), (64, 13, (64, 64, 3, 3), 1, 1, 1, 1),
    (64, 12, (64, 64, 3, 3), 1, 1, 1, 1), (64, 7, (64, 64, 3, 3), 1, 1, 1, 1),
    (64, 6, (64, 64, 3, 3), 1, 1, 1, 1), (64, 5, (64, 64, 3, 3), 1, 0, 1, 1),
    (16, 9, (16, 16, 3, 3), 1, 2, 1, 1), (8, 9, (8, 8, 3, 3), 1, 1, 1, 1),
    (3, 224, (64, 3, 3, 3), 1, 1, 1, 1), (64, 56, (4, 64, 3, 3), 1, 1, 1, 1),
    (512, 7, (512, 512, 3, 3), 1, 1, 1, 1), (256, 28, (512, 256, 3, 3), 2, 1, 1, 1),
    (3, 224, (64, 3, 7, 7), 2, 3, 1, 1), (64, 56, (256, 64, 1, 1), 1, 0, 1, 1),
    (256, 56, (64, 256, 1, 1), 1, 0, 1, 1), (256, 56, (512, 256, 1, 1), 2, 0, 1, 1),
    (32, 28, (32, 1, 3, 3), 1, 1, 1, 32), (32, 28, (64, 1, 3, 3), 2, 1, 1, 32),
    (16, 20, (32, 4, 3, 3), 1, 1, 1, 4), (16, 20, (16, 16, 3, 3), 1, 2, 2, 1),
    (16, 20, (16, 16, 3, 3), 1, 3, 1, 1), (16, 20, (16, 16, 5, 5), 1, 2, 1, 1),
]


@pytest.mark.parametrize("request_", ["auto", "direct", "winograd"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_plans_follow_the_rule_and_the_table(isa, dtype, request_):
    table = ops.isa_table()
    for c_in, hw, w_shape, s, p, d, groups in LAYERS:
        for backward in (False, True):
            want = rule(c_in, hw, w_shape, s, p, d, groups, dtype, backward, request_, table)
            for n in (1, 3, 64):  # never the batch
                plan = ops.conv2d_plan((n, c_in, hw, hw), w_shape, s, p, dtype, backward,
                                       dilation=d, groups=groups, request=request_)
                assert plan.algorithm == want, (c_in, hw, w_shape, s, p, d, groups, backward)
            assert plan.tile == {"winograd4": 4, "winograd2": 2}.get(want)
            assert plan.packed_bytes > 0


def test_the_winograd_crossovers_decide_at_their_thresholds(isa):
    # every image size up to 40 and channel counts around the thresholds: each crossover of
    # the table is met on both sides
    table = ops.isa_table()
    seen = set()
    for c in (4, 7, 8, 9, 16, 64, 256):
        for hw in range(1, 41):
            for backward in (False, True):
                got = ops.conv2d_plan((c, hw, hw), (c, c, 3, 3), 1, 1, np.float32,
                                      backward).algorithm
                assert got == rule(c, hw, (c, c, 3, 3), 1, 1, 1, 1, np.float32, backward,
                                   "auto", table), (c, hw, backward)
                seen.add(got)
    assert {"winograd4", "gemm"} <= seen


def test_the_table_of_every_isa():
    for isa in ops.supported_isas():
        t = ops.isa_table(isa)
        assert t["isa"] == isa
        for dtype in ("float32", "float64"):
            g = t["gemm"][dtype]
            assert g["mc"] % g["mr"] == 0 and g["nc"] % g["nr"] == 0 and g["kc"] > 0
            assert t["depthwise"][dtype]["lanes"] >= 1 and t["depthwise"][dtype]["vectors"] >= 1
        w = t["winograd"]
        assert set(w) == {"min_channels", "min_macs", "f4_min_tiles", "f2_min_tiles", "measured",
                          "source"}
        assert w["source"].startswith("measured on " if w["measured"] else "not measured: ")
    assert ops.isa_table() == ops.isa_table(ops.isa())
    with pytest.raises(ValueError, match="unknown ISA"):
        ops.isa_table("neon")


ALGORITHM_CASES = [  # (c_in, hw, w_shape, stride, padding, groups): every algorithm of a pass
    (8, 9, (8, 8, 3, 3), 1, 1, 1),       # gemm; flipped, col2im; winograd
    (8, 9, (16, 8, 1, 1), 1, 0, 1),      # gemm1x1, gemm; gemm1x1, col2im
    (8, 9, (16, 1, 3, 3), 2, 1, 8),      # depthwise
]


def _run(data, w, hw, s, p, groups, backward, algo, packed=None):
    """The pass of ``algo``: forward on ``data = x``, backward on ``data = g``."""
    if backward:
        return ops.conv2d_backward(data, w, (hw, hw), s, p, packed, groups=groups,
                                   algorithm=algo)
    return ops.conv2d_forward(data, w, None, s, p, packed, groups=groups, algorithm=algo)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_kernels_run_every_algorithm_that_applies(isa, dtype):
    rng = np.random.default_rng(3)
    tol = 1e-4 if dtype == np.float32 else 1e-12
    for c_in, hw, w_shape, s, p, groups in ALGORITHM_CASES:
        x = rng.uniform(-1, 1, (2, c_in, hw, hw)).astype(dtype)
        w = rng.uniform(-1, 1, w_shape).astype(dtype)
        y = ref.conv2d_forward(f64(x), f64(w), None, s, p, groups=groups)
        g = rng.uniform(-1, 1, y.shape).astype(dtype)
        gx = ref.conv2d_backward(f64(g), f64(w), (hw, hw), s, p, groups=groups)
        for backward, data, want in ((False, x, y), (True, g, gx)):
            pass_ = "backward" if backward else "forward"
            for algo in ops.CONV_ALGORITHMS:
                args = (w, hw, s, p, groups, backward, algo)
                if algo not in _applicable(c_in, hw, w_shape, s, p, groups, backward):
                    with pytest.raises(ValueError, match=f"'{algo}' cannot run the {pass_}"):
                        _run(data, *args)
                    continue
                got = _run(data, *args)
                assert_allclose(got, want, rtol=tol, atol=tol * np.abs(want).max())
                packed = ops.conv2d_pack(w, backward, s, p, groups=groups, algorithm=algo)
                assert_array_equal(_run(data, *args, packed), got)  # the same bits, packed


def f64(a):
    return np.asarray(a, dtype=np.float64)


def _applicable(c_in, hw, w_shape, s, p, groups, backward):
    """The algorithms that can run the pass, as DESIGN.md lists them."""
    c_out, _, kh, kw = w_shape
    if groups == c_in > 1:
        return {"depthwise"}
    out = {"winograd2", "winograd4"} if (kh, kw) == (3, 3) and s == 1 and groups == 1 \
        and p <= 2 else set()
    one = (kh, kw) == (1, 1) and s == 1
    if not backward:
        return out | {"gemm"} | ({"gemm1x1"} if one and p == 0 else set())
    flips = s == 1 and p <= kh - 1 and c_in // groups * 8 > c_out // groups
    return out | {"col2im"} | ({"gemm1x1" if one else "flipped"} if flips else set())


def test_layers_plan_once_per_sample_shape(rng):
    layer = rp.Conv2d(nets.conv_w(rng, 16, 16, 3), padding=1)
    w = layer.params(np.float32)[0]
    x = rng.uniform(0, 1, (5, 16, 12, 12)).astype(np.float32)
    plan = layer.plan(w, x.shape)
    assert layer.plan(w, (1,) + x.shape[1:]) is plan  # the batch is no part of the key
    assert layer.plan(w, x.shape, backward=True) is not plan
    assert plan.algorithm == ops.conv2d_plan(x.shape, w.shape, 1, 1, np.float32).algorithm
    assert layer.plan(w, x.shape, exact=True).algorithm == "gemm"
    assert_array_equal(layer.forward(x)[0],
                       ops.conv2d_forward(x, w, None, 1, 1, algorithm=plan.algorithm))
    rp.set_conv_algorithm("direct")
    try:
        assert layer.plan(w, x.shape).algorithm == "gemm"
    finally:
        rp.set_conv_algorithm(None)
    assert layer.plan(w, x.shape) is plan
    dense = rp.Dense(nets.dense_w(rng, 4, 6))
    assert dense.plan(dense.params(np.float64)[0], (3, 6)).algorithm == "gemm"


def test_every_layer_with_weights_has_its_plans(rng):
    # Conv1d runs as the Conv2d of its (c, 1, L) planes and ConvTranspose2d as its adjoint
    # convolution's other pass: Graph.plans (relprop info) gives those convolutions' plans
    c1 = rp.Conv1d(rng.standard_normal((6, 2, 3)).astype(np.float32), padding=1)
    ct = rp.ConvTranspose2d(rng.standard_normal((6, 4, 2, 2)).astype(np.float32), stride=2)
    net = rp.Sequential([c1, rp.Reshape((6, 4, 4)), ct], input_shape=(2, 16))
    got = [tuple((p.algorithm, p.workspace_bytes) for p in pair)
           for pair in net.plans() if pair[0] is not None]
    want = [tuple((lambda q: (q.algorithm, q.workspace_bytes))(
        ops.conv2d_plan(x, w.shape, s, p, np.float32, backward)) for backward in bwd)
        for x, w, s, p, bwd in [((1, 2, 1, 16), c1.weight[:, :, None], (1, 1), (0, 1),
                                 (False, True)),
                                ((1, 4, 8, 8), ct.weight, (2, 2), (0, 0), (True, False))]]
    assert got == want
