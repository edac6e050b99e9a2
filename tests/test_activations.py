"""The smooth activations' kernels (``ops.activation_forward`` / ``activation_backward``):
against their float64 twins within an error model, on every instruction set this CPU runs, on
any thread count; float32 at least as accurate as torch's float32 kernels, measured against
float64 on a dense grid; hard sigmoid and hard swish bitwise torch's."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

from relprop import ops
from relprop import reference as ref

from strategies import DTYPES, arrays, with_threads

OPS = ops.ACTIVATIONS
#: The forward function's derivative where its twin has no closed form: central differences
#: of the float64 twin (for the conditioning of the backward pass).
_H = 1e-6


def _grad(x, op):
    return ref.activation_backward(np.ones_like(x), x, op)


def _second(x, op):
    return (_grad(x + _H, op) - _grad(x - _H, op)) / (2 * _H)


def _bound(x, op, backward, dtype):
    """The error model of a float kernel: a few roundings of the result and of the arguments
    inside it, the latter amplified by the function's conditioning ``|x f'(x)|``, plus the
    smallest normal number (results that would be subnormal are flushed to 0)."""
    x = x.astype(np.float64)
    info = np.finfo(dtype)
    if backward:
        val, slope = _grad(x, op), _second(x, op)
    else:
        val, slope = ref.activation_forward(x, op), _grad(x, op)
    return 8 * info.eps * (np.abs(val) + (1 + np.abs(x)) * np.abs(slope)) + 4 * float(info.tiny)


@given(DTYPES, st.sampled_from(OPS), st.data())
def test_kernels_match_twins_on_every_isa_and_thread_count(isa, dtype, op, data):
    shape = data.draw(st.sampled_from([(1,), (3, 5), (2, 3, 4, 5), (1, 70)]))
    x = data.draw(arrays(dtype, shape, lo=-12.0, hi=12.0))
    x.flat[:3] = [0.0, -3.0, 3.0][:x.size]  # the kinks of the hard ones
    g = data.draw(arrays(dtype, shape))
    y, gx = ops.activation_forward(x, op), ops.activation_backward(g, x, op)
    assert y.dtype == gx.dtype == dtype and y.shape == gx.shape == shape
    x64, g64 = x.astype(np.float64), g.astype(np.float64)
    want_y = ref.activation_forward(x64, op)
    want_g = ref.activation_backward(g64, x64, op)
    assert np.all(np.abs(y - want_y) <= _bound(x, op, False, dtype))
    tiny = float(np.finfo(dtype).tiny)  # g * act'(x) may round into the subnormals
    assert np.all(np.abs(gx - want_g) <= np.abs(g64) * _bound(x, op, True, dtype) + tiny)
    for n in (1, 2):
        assert_array_equal(with_threads(n, ops.activation_forward, x, op), y)
        assert_array_equal(with_threads(n, ops.activation_backward, g, x, op), gx)


@pytest.mark.parametrize("op", OPS)
def test_large_arrays_same_bits_on_any_thread_count(op, rng):
    """Several blocks of the kernel's split (8192 elements each), and a ragged end."""
    x = rng.normal(0, 3, 3 * 8192 + 77).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    y1 = with_threads(1, ops.activation_forward, x, op)
    g1 = with_threads(1, ops.activation_backward, g, x, op)
    assert_array_equal(with_threads(2, ops.activation_forward, x, op), y1)
    assert_array_equal(with_threads(2, ops.activation_backward, g, x, op), g1)
    # each element alone: the same bits in a batch of one
    for i in (0, 8191, 8192, x.size - 1):
        assert_array_equal(ops.activation_forward(x[i:i + 1], op), y1[i:i + 1])
        assert_array_equal(ops.activation_backward(g[i:i + 1], x[i:i + 1], op), g1[i:i + 1])


# --- float32 accuracy against torch's -----------------------------------------------------------
torch_ = pytest.importorskip("torch")
F = torch_.nn.functional
_TORCH = {"sigmoid": torch_.sigmoid, "silu": F.silu, "tanh": torch_.tanh, "gelu": F.gelu,
          "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"), "hardsigmoid": F.hardsigmoid,
          "hardswish": F.hardswish}


def _grid():
    rng = np.random.default_rng(7)
    return np.concatenate([np.linspace(-20, 20, 400_001), rng.normal(0, 1, 100_000),
                           rng.normal(0, 1e-3, 20_000), [0.0, -3.0, 3.0]]).astype(np.float32)


def _ulps(got, want, floor):
    """``|got - want|`` in float32 ulps of ``max(|want|, floor)``: relative error, with values
    below ``floor`` (the subnormals, a derivative's roots) measured against ``floor``."""
    scale = np.maximum(np.abs(want), floor).astype(np.float32)
    return np.abs(got.astype(np.float64) - want) / np.spacing(scale).astype(np.float64)


@pytest.mark.parametrize("op", OPS)
def test_float32_at_least_as_accurate_as_torch(isa, op):
    """Largest error in ulps against the float64 twin, forward (relative, values down to 2^-100)
    and backward (relative, derivatives measured down to 2^-10, below which torch's and relprop's
    errors are absolute): relprop's at most torch's (or 1 ulp) plus 1 ulp."""
    x = _grid()
    xt = torch_.from_numpy(x).requires_grad_()
    yt = _TORCH[op](xt)
    yt.backward(torch_.ones_like(yt))
    x64 = x.astype(np.float64)
    want_y, want_g = ref.activation_forward(x64, op), _grad(x64, op)
    ours_y = _ulps(ops.activation_forward(x, op), want_y, 2.0 ** -100).max()
    ours_g = _ulps(ops.activation_backward(np.ones_like(x), x, op), want_g, 2.0 ** -10).max()
    torch_y = _ulps(yt.detach().numpy(), want_y, 2.0 ** -100).max()
    torch_g = _ulps(xt.grad.numpy(), want_g, 2.0 ** -10).max()
    assert ours_y <= max(torch_y, 1.0) + 1.0, (ours_y, torch_y)
    assert ours_g <= max(torch_g, 1.0) + 1.0, (ours_g, torch_g)


@pytest.mark.parametrize("op", ["hardsigmoid", "hardswish"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_hard_activations_are_torch_bitwise(op, dtype):
    """Forward bitwise; the backward pass with torch's values at the kinks -3 and 3 (float64
    within 1e-7: torch multiplies float64 gradients of hardsigmoid by float32(1/6), 3e-8 from
    1/6)."""
    x = np.concatenate([np.linspace(-5, 5, 10_001), [-3.0, 3.0, -1.5, 0.0]]).astype(dtype)
    g = np.random.default_rng(1).normal(size=x.shape).astype(dtype)
    xt = torch_.from_numpy(x).requires_grad_()
    yt = _TORCH[op](xt)
    yt.backward(torch_.from_numpy(g))
    assert_array_equal(ops.activation_forward(x, op), yt.detach().numpy())
    gx = ops.activation_backward(g, x, op)
    if dtype == np.float32:
        assert_array_equal(gx, xt.grad.numpy())
    else:
        assert_allclose(gx, xt.grad.numpy(), rtol=1e-7, atol=0)


def test_nan_and_errors():
    x = np.array([np.nan, -1.0, 2.0], dtype=np.float32)
    for op in OPS:
        assert np.isnan(ops.activation_forward(x, op)[0])
        assert np.isnan(ops.activation_backward(np.ones_like(x), x, op)[0])
    with pytest.raises(ValueError, match="op must be one of"):
        ops.activation_forward(x, "softplus")
    with pytest.raises(ValueError, match="shape"):
        ops.activation_backward(x, x[:2], "silu")
    with pytest.raises(TypeError, match="float32"):
        ops.activation_backward(x, x.astype(np.float64), "gelu")


def test_every_isa_gives_the_same_bits(rng):
    """The loops are compiled without contraction into fused multiply-adds, so the vector code of
    every instruction set (and its scalar remainder) rounds as the portable one."""
    x = np.concatenate([rng.normal(0, 4, 20_001), np.linspace(-30, 30, 20_001)]).astype(np.float32)
    g = rng.normal(size=x.shape).astype(np.float32)
    old = ops.isa()
    got = {}
    try:
        for name in ops.supported_isas():
            ops.set_isa(name)
            got[name] = [(ops.activation_forward(x, op), ops.activation_backward(g, x, op))
                         for op in OPS]
    finally:
        ops.set_isa(old)
    for results in got.values():
        for (y, gx), (y0, g0) in zip(results, got["generic"]):
            assert_array_equal(y, y0)
            assert_array_equal(gx, g0)
