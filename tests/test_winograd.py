"""Winograd convolution F(m x m, 3x3) against its NumPy twin (tile by tile from the definition)
and the direct convolution: error-model tolerances, the accuracy contract on realistic layers,
adjointness, invariance to threads, batch and block size, packings and bad inputs."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_array_equal

from relprop import _core, ops
from relprop import reference as ref
from relprop.reference import ops as ref_ops

from strategies import f64, sum_tolerance, winograd_problems, with_threads

ISAS = ops.supported_isas()


def winograd_tolerance(dtype, c_sum, tile, bound):
    """The error model: every rounding in the input transform (two passes of alpha = tile + 2
    terms), the GEMM (c_sum terms), the output transform (two passes) and the weight and bias
    roundings is at most eps times the matching partial result of the computation in absolute
    values (`bound`, from reference.winograd_abs), and propagates linearly."""
    return sum_tolerance(dtype, c_sum + 4 * (tile + 2) + 2, bound)


def check_forward(got, x, w, b, pad, tile):
    want = ref.conv2d_winograd_forward(f64(x), f64(w), f64(b), pad, tile=tile)
    bound = ref.winograd_abs(x, w, pad, tile=tile)
    if b is not None:
        bound = bound + np.abs(f64(b))[None, :, None, None]
    assert got.dtype == x.dtype and got.shape == want.shape
    assert np.all(np.abs(got - want) <= winograd_tolerance(x.dtype, w.shape[1], tile, bound))


# ------------------------------------------------------------------------------------------
# the twin

@pytest.mark.parametrize("tile", [2, 4])
def test_transform_matrices_compute_the_correlation_exactly(tile):
    # y_i = sum_k g_k d_{i+k} = A^T [(G g) * (B^T d)] is bilinear in (g, d): exact on the unit
    # vectors (in rational arithmetic) means exact for all; 2-D nests it in each direction.
    mats = {k: [[Fraction(v) for v in row] for row in rows]
            for k, rows in ref_ops.WINOGRAD_FRACTIONS[tile].items()}
    bt, g_, at = mats["BT"], mats["G"], mats["AT"]
    a = tile + 2
    assert len(bt) == a and len(g_) == a and len(at) == tile
    for k in range(3):
        for j in range(a):
            gg = [g_[r][k] for r in range(a)]   # G e_k
            bd = [bt[r][j] for r in range(a)]   # B^T e_j
            y = [sum(at[i][r] * gg[r] * bd[r] for r in range(a)) for i in range(tile)]
            assert y == [1 if j == i + k else 0 for i in range(tile)], (k, j)


@given(st.one_of(winograd_problems(), winograd_problems(wide=True)))
def test_reference_twin_is_the_convolution(p):
    x, w, b = (f64(v) for v in p[:3])
    pad, tile = p[3:]
    want = ref.conv2d_forward(x, w, b, 1, pad)
    got = ref.conv2d_winograd_forward(x, w, b, pad, tile=tile)
    bound = ref.winograd_abs(x, w, pad, tile=tile) + (0 if b is None else np.abs(b)[:, None, None])
    assert np.all(np.abs(got - want) <= winograd_tolerance(np.float64, w.shape[1], tile, bound))
    g = np.cos(np.arange(want.size)).reshape(want.shape)
    gx = ref.conv2d_winograd_backward(g, w, x.shape[2:], pad, tile=tile)
    bound = ref.winograd_abs(g, w, pad, tile=tile, backward=True)
    assert np.all(np.abs(gx - ref.conv2d_backward(g, w, x.shape[2:], 1, pad))
                  <= winograd_tolerance(np.float64, w.shape[0], tile, bound))


# ------------------------------------------------------------------------------------------
# the kernels against the twin

@given(st.one_of(winograd_problems(), winograd_problems(wide=True)))
def test_winograd_forward_matches_reference(p):
    x, w, b, pad, tile = p
    check_forward(ops.conv2d_winograd_forward(x, w, b, pad, tile=tile), x, w, b, pad, tile)


@given(st.one_of(winograd_problems(), winograd_problems(wide=True)), st.integers(0, 2**31))
def test_winograd_backward_matches_reference_and_is_adjoint(p, seed):
    x, w, _, pad, tile = p
    y = ops.conv2d_winograd_forward(x, w, None, pad, tile=tile)
    g = np.random.default_rng(seed).uniform(-1, 1, y.shape).astype(x.dtype)
    got = ops.conv2d_winograd_backward(g, w, x.shape[2:], pad, tile=tile)
    want = ref.conv2d_winograd_backward(f64(g), f64(w), x.shape[2:], pad, tile=tile)
    bound = ref.winograd_abs(g, w, pad, tile=tile, backward=True)
    assert got.dtype == x.dtype and got.shape == x.shape
    assert np.all(np.abs(got - want) <= winograd_tolerance(x.dtype, w.shape[0], tile, bound))
    # adjoint: <conv(x), g> == <x, conv^T(g)>
    lhs, rhs = np.vdot(f64(y), f64(g)), np.vdot(f64(x), f64(got))
    scale = np.vdot(np.abs(f64(y)), np.abs(f64(g))) + np.vdot(np.abs(f64(x)), np.abs(f64(got)))
    assert abs(lhs - rhs) <= 1e-4 * scale + 1e-12


@given(winograd_problems(), st.integers(2, 40), st.data())
def test_winograd_split_is_the_full_output_cut_in_two(p, c_out, data):
    x, w0, b0, pad, tile = p
    rng = np.random.default_rng(c_out)
    w = rng.uniform(-1, 1, (c_out,) + w0.shape[1:]).astype(x.dtype)
    b = None if b0 is None else rng.uniform(-1, 1, c_out).astype(x.dtype)
    split = data.draw(st.integers(1, c_out - 1))
    top, bottom = ops.conv2d_winograd_forward(x, w, b, pad, tile=tile, split=split)
    full = ops.conv2d_winograd_forward(x, w, b, pad, tile=tile)
    assert_array_equal(top, full[:, :split])
    assert_array_equal(bottom, full[:, split:])


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("c_in, c_out, h, w, pad", [
    (1, 1, 1, 1, (1, 1)),      # one pixel, one (cut) tile
    (3, 5, 3, 3, (0, 0)),      # one output pixel
    (5, 7, 19, 17, (1, 1)),
    (4, 6, 8, 70, (2, 0)),     # wide rows: the transforms' vector loops
    (13, 29, 9, 11, (0, 2)),   # more rows than one GEMM tile, cut strips
])
def test_every_isa_matches_reference(isa, tile, c_in, c_out, h, w, pad):
    rng = np.random.default_rng(c_in * c_out + h)
    for dtype in (np.float32, np.float64):
        x = rng.uniform(-1, 1, (2, c_in, h, w)).astype(dtype)
        wt = rng.uniform(-1, 1, (c_out, c_in, 3, 3)).astype(dtype)
        b = rng.uniform(-1, 1, c_out).astype(dtype)
        check_forward(ops.conv2d_winograd_forward(x, wt, b, pad, tile=tile), x, wt, b, pad, tile)
        y = ref.conv2d_forward(f64(x), f64(wt), None, 1, pad)
        g = rng.uniform(-1, 1, y.shape).astype(dtype)
        got = ops.conv2d_winograd_backward(g, wt, (h, w), pad, tile=tile)
        bound = ref.winograd_abs(g, wt, pad, tile=tile, backward=True)
        want = ref.conv2d_backward(f64(g), f64(wt), (h, w), 1, pad)
        assert np.all(np.abs(got - want) <= winograd_tolerance(dtype, c_out, tile, bound))


# ------------------------------------------------------------------------------------------
# the accuracy contract

@pytest.mark.parametrize("tile", [4, 2])
@pytest.mark.parametrize("c_in, c_out, hw", [(3, 64, 32), (64, 64, 24), (256, 64, 16),
                                             (512, 48, 14), (48, 512, 8)])
def test_accuracy_contract_on_realistic_layers(isa, tile, c_in, c_out, hw):
    # He-initialized weights, inputs after a ReLU (the first layer: an image in [-2, 2]),
    # float32: max|y - exact| <= WINOGRAD_RTOL * max|exact|, forward and backward (normal
    # gradients; the backward pass reduces over c_out).  Lavin & Gray's points for F(4x4) fail
    # this at c_in = 512 (about 2e-5); these measure up to about 7e-6.
    rng = np.random.default_rng(c_in + hw)
    x = rng.standard_normal((2, c_in, hw, hw))
    x = rng.uniform(-2, 2, x.shape) if c_in == 3 else np.maximum(x, 0)
    x = x.astype(np.float32)
    w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))).astype(np.float32)
    b = (0.01 * rng.standard_normal(c_out)).astype(np.float32)
    exact = ref.conv2d_forward(f64(x), f64(w), f64(b), 1, 1)
    err = np.abs(ops.conv2d_winograd_forward(x, w, b, tile=tile) - exact).max()
    assert err <= ops.WINOGRAD_RTOL * np.abs(exact).max()
    g = rng.standard_normal(exact.shape).astype(np.float32)
    exact = ref.conv2d_backward(f64(g), f64(w), (hw, hw), 1, 1)
    err = np.abs(ops.conv2d_winograd_backward(g, w, (hw, hw), tile=tile) - exact).max()
    assert err <= ops.WINOGRAD_RTOL * np.abs(exact).max()


# ------------------------------------------------------------------------------------------
# invariance: threads, batch, block size, packing

def _cases(dtype, tile):
    rng = np.random.default_rng(11)
    u = lambda *shape: rng.uniform(-1, 1, shape).astype(dtype)  # noqa: E731
    out = []
    for n, c_in, c_out, h, w, pad in [(3, 16, 20, 13, 17, (1, 1)), (1, 24, 40, 30, 30, (0, 2)),
                                      (4, 8, 8, 9, 70, (2, 1))]:
        x, wt, b = u(n, c_in, h, w), u(c_out, c_in, 3, 3), u(c_out)
        g = u(n, c_out, h + 2 * pad[0] - 2, w + 2 * pad[1] - 2)
        out.append((x, wt, b, g, pad))
    return out


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_do_not_depend_on_threads_or_block_size(isa, dtype, tile):
    for x, w, b, g, pad in _cases(dtype, tile):
        hw = x.shape[2:]
        runs = []
        # block sizes that make every block a task (1, 3) or give each thread a share of the
        # output channels of every block (0, 24: fewer than two blocks per thread); twice, as
        # a race between threads shows only sometimes
        for nt in (1, 2, 2):
            for block_tiles in (0, 1, 3, 24):
                runs.append((_core.conv2d_winograd_forward(x, w, b, pad, tile, 0, nt, None,
                                                           block_tiles),
                             _core.conv2d_winograd_backward(g, w, hw, pad, tile, nt, None,
                                                            block_tiles)))
        runs.append((with_threads(0, ops.conv2d_winograd_forward, x, w, b, pad, tile=tile),
                     with_threads(0, ops.conv2d_winograd_backward, g, w, hw, pad, tile=tile)))
        for y, gx in runs[1:]:
            assert_array_equal(y, runs[0][0])
            assert_array_equal(gx, runs[0][1])


@pytest.mark.parametrize("tile", [2, 4])
def test_samples_do_not_depend_on_the_batch(isa, tile):
    for x, w, b, g, pad in _cases(np.float32, tile):
        full = ops.conv2d_winograd_forward(x, w, b, pad, tile=tile)
        gfull = ops.conv2d_winograd_backward(g, w, x.shape[2:], pad, tile=tile)
        for i in range(x.shape[0]):
            assert_array_equal(ops.conv2d_winograd_forward(x[i:i + 1], w, b, pad, tile=tile),
                               full[i:i + 1])
            assert_array_equal(ops.conv2d_winograd_backward(g[i:i + 1], w, x.shape[2:], pad,
                                                            tile=tile), gfull[i:i + 1])


@pytest.mark.parametrize("tile", [2, 4])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_packed_weights_give_the_same_bits(isa, dtype, tile):
    for x, w, b, g, pad in _cases(dtype, tile):
        fwd, bwd = ops.conv2d_winograd_pack(w, tile), ops.conv2d_winograd_pack(w, tile, True)
        assert (fwd.isa, fwd.gemm, fwd.dtype, fwd.shape) == (
            isa, f"conv2d_winograd_forward_f{tile}", np.dtype(dtype).name, w.shape)
        assert bwd.gemm == f"conv2d_winograd_backward_f{tile}" and not fwd.data.flags.writeable
        assert_array_equal(ops.conv2d_winograd_forward(x, w, b, pad, fwd, tile=tile),
                           ops.conv2d_winograd_forward(x, w, b, pad, tile=tile))
        split = w.shape[0] // 2
        for got, want in zip(ops.conv2d_winograd_forward(x, w, b, pad, fwd, tile=tile,
                                                         split=split),
                             ops.conv2d_winograd_forward(x, w, b, pad, tile=tile, split=split)):
            assert_array_equal(got, want)
        hw = x.shape[2:]
        assert_array_equal(ops.conv2d_winograd_backward(g, w, hw, pad, bwd, tile=tile),
                           ops.conv2d_winograd_backward(g, w, hw, pad, tile=tile))


# ------------------------------------------------------------------------------------------
# bad inputs

def test_packings_of_other_weights_tiles_or_directions_are_refused(isa):
    # The transformed weights are packed in strips of the ISA's mr rows (c_out forward, c_in
    # backward): 1 and mr rows pack to the same size, so the size alone proves nothing.
    mr = ops.isa_table()["gemm"]["float32"]["mr"]
    assert mr > 1
    ones = lambda *shape: np.ones(shape, np.float32)  # noqa: E731
    x = ones(1, 2, 6, 6)
    small, big = ones(1, 2, 3, 3), ones(mr, 2, 3, 3)
    assert ops.conv2d_winograd_pack(small).data.size == ops.conv2d_winograd_pack(big).data.size
    with pytest.raises(ValueError, match="do not match"):
        ops.conv2d_winograd_forward(x, big, packed=ops.conv2d_winograd_pack(small))
    small, big = ones(2, 1, 3, 3), ones(2, mr, 3, 3)
    assert (ops.conv2d_winograd_pack(small, backward=True).data.size
            == ops.conv2d_winograd_pack(big, backward=True).data.size)
    with pytest.raises(ValueError, match="do not match"):
        ops.conv2d_winograd_backward(ones(1, 2, 6, 6), big, (6, 6),
                                     packed=ops.conv2d_winograd_pack(small, backward=True))
    w = ones(4, 2, 3, 3)
    with pytest.raises(ValueError, match="conv2d_winograd_forward_f2"):  # another tile
        ops.conv2d_winograd_forward(x, w, packed=ops.conv2d_winograd_pack(w, 2))
    with pytest.raises(ValueError, match="conv2d_winograd_backward_f4"):  # another direction
        ops.conv2d_winograd_forward(x, w, packed=ops.conv2d_winograd_pack(w, 4, True))
    sq = ones(2, 2, 3, 3)  # forward and backward packings of a square weight have one size
    with pytest.raises(ValueError, match="conv2d_winograd_forward_f4"):
        ops.conv2d_winograd_backward(ones(1, 2, 6, 6), sq, (6, 6),
                                     packed=ops.conv2d_winograd_pack(sq))
    with pytest.raises(ValueError, match="conv2d_forward"):  # a direct-convolution packing
        ops.conv2d_winograd_forward(x, w, packed=ops.conv2d_pack(w))
    with pytest.raises(ValueError, match="do not match"):  # the other dtype
        ops.conv2d_winograd_forward(x, w, packed=ops.conv2d_winograd_pack(w.astype(np.float64)))
    with pytest.raises(TypeError, match="conv2d_pack"):
        ops.conv2d_winograd_forward(x, w, packed=np.ones(10, np.float32))
    others = [i for i in ISAS if i != isa]
    if others:
        ops.set_isa(others[0])
        try:
            packed = ops.conv2d_winograd_pack(w)
        finally:
            ops.set_isa(isa)
        with pytest.raises(ValueError, match="packed for ISA"):
            ops.conv2d_winograd_forward(x, w, packed=packed)


@pytest.mark.parametrize("call, match", [
    (lambda x, w: ops.conv2d_winograd_forward(x, w, stride=2), "stride"),
    (lambda x, w: ops.conv2d_winograd_forward(x, w, stride=(1, 2)), "stride"),
    (lambda x, w: ops.conv2d_winograd_backward(np.ones((1, 4, 6, 6)), w, (6, 6), stride=2),
     "stride"),
    (lambda x, w: ops.conv2d_winograd_forward(x, np.ones((4, 2, 5, 5))), "3x3"),
    (lambda x, w: ops.conv2d_winograd_forward(x, np.ones((4, 2, 3, 1))), "3x3"),
    (lambda x, w: ops.conv2d_winograd_backward(np.ones((1, 4, 4, 4)), np.ones((4, 2, 5, 5)),
                                               (6, 6)), "3x3"),
    (lambda x, w: ops.conv2d_winograd_pack(np.ones((4, 2, 1, 1))), "3x3"),
    (lambda x, w: ops.conv2d_winograd_forward(x, w, padding=3), "padding"),
    (lambda x, w: ops.conv2d_winograd_forward(x, w, padding=(0, 3)), "padding"),
    (lambda x, w: ops.conv2d_winograd_forward(x, w, padding=-1), "padding"),
    (lambda x, w: ops.conv2d_winograd_forward(x, w, tile=3), "tile"),
    (lambda x, w: ops.conv2d_winograd_forward(x, w, tile=6), "tile"),
    (lambda x, w: ops.conv2d_winograd_pack(w, tile=8), "tile"),
    (lambda x, w: ops.conv2d_winograd_forward(x, w, split=4), "split"),
    (lambda x, w: ops.conv2d_winograd_forward(x, np.ones((4, 3, 3, 3))), "channels"),
    (lambda x, w: ops.conv2d_winograd_forward(np.ones((1, 2, 1, 2)), w, padding=0), "larger than"),
    (lambda x, w: ops.conv2d_winograd_backward(np.ones((1, 4, 5, 6)), w, (6, 6)), "grad"),
    (lambda x, w: ops.conv2d_winograd_backward(np.ones((1, 3, 6, 6)), w, (6, 6)), "grad"),
])
def test_bad_inputs_raise_value_error(call, match):
    x, w = np.ones((1, 2, 6, 6)), np.ones((4, 2, 3, 3))
    with pytest.raises(ValueError, match=match):
        call(x, w)
