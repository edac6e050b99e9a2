"""Attention (multi-head scaled dot-product, the core of torch.nn.MultiheadAttention): the
kernels against their twins (hypothesis: shapes, heads, scales, dtypes, every ISA) and torch's
scaled_dot_product_attention, difference quotients, thread and batch invariance; the layer in a
transformer block through from_torch (the module's in- and out-projections as Dense layers):
forward and float64 gradient = torch autograd = the reference; model files and errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

import checks
from strategies import DTYPES, arrays, with_threads


@st.composite
def problems(draw):
    dtype = draw(DTYPES)
    n, tq, tk = draw(st.integers(1, 3)), draw(st.integers(1, 9)), draw(st.integers(1, 9))
    heads, dk, dv = draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 4))
    q = draw(arrays(dtype, (n, tq, heads * dk), lo=-2.0, hi=2.0))
    k = draw(arrays(dtype, (n, tk, heads * dk), lo=-2.0, hi=2.0))
    v = draw(arrays(dtype, (n, tk, heads * dv)))
    g = draw(arrays(dtype, (n, tq, heads * dv)))
    scale = draw(st.sampled_from([None, 0.5, 2.0]))
    return q, k, v, g, heads, scale


def _tolerances(q, k, v, heads, scale):
    """Bounds of the float32 kernel's error against the float64 twin on the same inputs: the
    scores' sums of dk products (|dS| <= dk eps scale sum |q||k|), a softmax row (relative error
    2 |dS| + (tk + 3) eps), the weighted sum of tk values; float64: 1e-12 relative."""
    if q.dtype == np.float64:
        return 1e-12, 1e-12
    eps, dk, tk = np.finfo(np.float32).eps, q.shape[-1] // heads, k.shape[1]
    s = 1 / np.sqrt(dk) if scale is None else scale
    ds = 2 * dk * eps * s * dk * np.abs(q).max() * np.abs(k).max()
    da = 4 * (2 * ds + (tk + 3) * eps)
    return da, 4 * (da + tk * eps) * max(np.abs(v).max(), 1e-30)


def _gradient_bounds(q, k, v, g, heads, scale):
    """Error bounds of the gradients (gq, gk, gv): 8 eps times the number of terms on the way
    times the largest magnitudes the sums meet: |gA| <= dv |g| |v|, |gS| <= 2 scale |gA| per
    weight (rows of weights sum to 1, each at most 1)."""
    eps = np.finfo(q.dtype).eps
    tq, tk, dk, dv = q.shape[1], k.shape[1], q.shape[2] // heads, v.shape[2] // heads
    s = 1 / np.sqrt(dk) if scale is None else scale
    mq, mk, mv, mg = (np.abs(t).max() for t in (q, k, v, g))
    gs = 2 * s * dv * mg * mv
    terms = 8 * eps * (tq + tk + dk + dv)
    return terms * gs * mk, terms * gs * mq * tq, terms * mg * tq


@given(problems())
def test_kernels_match_twins(problem):
    q, k, v, g, heads, scale = problem
    out, a = ops.attention_forward(q, k, v, heads, scale)
    want, want_a = ref.attention_forward(q.astype(np.float64), k.astype(np.float64),
                                         v.astype(np.float64), heads, scale)
    tol_a, tol_o = _tolerances(q, k, v, heads, scale)
    assert_allclose(a, want_a, rtol=0, atol=tol_a)
    assert_allclose(out, want, rtol=0, atol=tol_o + 1e-12 * np.abs(want).max())
    grads = ops.attention_backward(g, q, k, v, a, heads, scale)
    # the twin from the kernel's own (rounded) weights
    wants = ref.attention_backward(g.astype(np.float64), q.astype(np.float64),
                                   k.astype(np.float64), v.astype(np.float64),
                                   a.astype(np.float64), heads, scale)
    for got, want_g, bound in zip(grads, wants, _gradient_bounds(q, k, v, g, heads, scale)):
        assert got.dtype == q.dtype
        assert_allclose(got, want_g, rtol=0, atol=bound)
    assert_array_equal(ops.attention_backward(g, q, k, v, a, heads, scale, "v")[2], grads[2])
    assert ops.attention_backward(g, q, k, v, a, heads, scale, "v")[:2] == (None, None)
    for nt in (1, 2):
        got = with_threads(nt, ops.attention_forward, q, k, v, heads, scale)
        assert_array_equal(got[0], out)
        assert_array_equal(got[1], a)
        for x, y in zip(with_threads(nt, ops.attention_backward, g, q, k, v, a, heads, scale),
                        grads):
            assert_array_equal(x, y)
    # a sample alone: the same bits as in the batch
    assert_array_equal(ops.attention_forward(q[-1:], k[-1:], v[-1:], heads, scale)[0], out[-1:])


def test_every_isa_gives_the_bits_of_its_twin_bound(isa, rng):
    """Each instruction set: the float32 kernels within the error bound of the float64 twin (the
    softmax's exponentials are the activations' exp, the same bits on every ISA)."""
    q, k, v = (rng.uniform(-2, 2, (2, 11, 12)).astype(np.float32) for _ in range(3))
    out, a = ops.attention_forward(q, k, v, 3)
    want, want_a = ref.attention_forward(*(t.astype(np.float64) for t in (q, k, v)), 3)
    tol_a, tol_o = _tolerances(q, k, v, 3, None)
    assert_allclose(a, want_a, rtol=0, atol=tol_a)
    assert_allclose(out, want, rtol=0, atol=tol_o)


def test_gradient_is_the_jacobian_transpose(rng):
    """Difference quotients of the forward pass (float64) against the backward pass."""
    q, k, v = (rng.normal(size=(2, 4, 6)) for _ in range(3))
    k, v = k[:, :3], v[:, :3]
    out, a = ops.attention_forward(q, k, v, 2, 0.7)
    g = rng.normal(size=out.shape)
    grads = ops.attention_backward(g, q, k, v, a, 2, 0.7)
    h = 1e-6
    for i, x in enumerate((q, k, v)):
        u = rng.normal(size=x.shape)
        plus, minus = [list((q, k, v)) for _ in range(2)]
        plus[i], minus[i] = x + h * u, x - h * u
        ju = (ops.attention_forward(*plus, 2, 0.7)[0] - ops.attention_forward(*minus, 2, 0.7)[0])
        assert np.vdot(ju / (2 * h), g) == pytest.approx(np.vdot(u, grads[i]), rel=1e-7)


def test_rows_with_nan_stay_nan():
    q = np.zeros((1, 2, 2))
    k = np.array([[[0.0, 1.0], [np.nan, 0.0], [1.0, 1.0]]])
    v = np.ones((1, 3, 2))
    for dtype in (np.float32, np.float64):
        out, a = ops.attention_forward(q.astype(dtype), k.astype(dtype), v.astype(dtype), 1)
        assert np.isnan(out).all() and np.isnan(a).all()


# --- torch ----------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def test_kernels_match_torch(rng):
    n, tq, tk, heads, dk, dv = 2, 5, 7, 3, 4, 2
    q, k = rng.normal(size=(n, tq, heads * dk)), rng.normal(size=(n, tk, heads * dk))
    v, g = rng.normal(size=(n, tk, heads * dv)), rng.normal(size=(n, tq, heads * dv))
    ts = [torch.from_numpy(t).requires_grad_() for t in (q, k, v)]

    def split(t, d):
        return t.reshape(n, -1, heads, d).transpose(1, 2)

    o = F.scaled_dot_product_attention(split(ts[0], dk), split(ts[1], dk), split(ts[2], dv))
    o = o.transpose(1, 2).reshape(n, tq, heads * dv)
    o.backward(torch.from_numpy(g))
    out, a = ops.attention_forward(q, k, v, heads)
    assert_allclose(out, o.detach().numpy(), rtol=1e-13, atol=1e-14)
    for got, t in zip(ops.attention_backward(g, q, k, v, a, heads), ts):
        assert_allclose(got, t.grad.numpy(), rtol=1e-12, atol=1e-13)


class Block(nn.Module):
    """A transformer encoder block as torchvision's ViT writes it (pre-norm, batch-first
    nn.MultiheadAttention called with need_weights=False, residual additions) on (tokens,
    features) samples, with a linear head on the first token; ``cross``: the keys and values of
    another width (kdim = vdim, separate projection weights), ``bias``: the projections'
    biases."""

    def __init__(self, d=8, heads=2, cross=False, bias=True):
        super().__init__()
        self.embed = nn.Linear(5, d)
        self.ln = nn.LayerNorm(d)
        self.cross = nn.Linear(5, 6) if cross else None
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True, bias=bias,
                                          kdim=6 if cross else None, vdim=6 if cross else None)
        self.mlp = nn.Sequential(nn.Linear(d, 12), nn.GELU(), nn.Linear(12, d))
        self.head = nn.Linear(d, 3)

    def forward(self, x):
        h = self.embed(x)
        z = self.ln(h)
        kv = z if self.cross is None else self.cross(x)
        a, _ = self.attn(z, kv, kv, need_weights=False)
        h = h + a
        h = h + self.mlp(h)
        return self.head(h[:, 0])


def _block(seed=0, **kw):
    torch.manual_seed(seed)
    return Block(**kw).double().eval()


@pytest.mark.parametrize("kw", [{}, {"cross": True}, {"bias": False}],
                         ids=["self", "cross", "no-bias"])
def test_from_torch_forward_and_gradient(rng, kw):
    module = _block(**kw)
    net = rp.from_torch(module, (4, 5))
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count("attention") == 1
    names = [n.name for n in net.nodes]
    assert {"attn.q_proj", "attn.k_proj", "attn.v_proj", "attn.attention",
            "attn.out_proj"} <= set(names)
    x = rng.normal(size=(3, 4, 5))
    checks.as_torch_and_reference(module, net, x, 2, "attnlrp")
    checks.float32_as_torch(net, module.float(), x)


def test_saved_and_loaded(tmp_path, rng):
    net = rp.from_torch(_block(), (4, 5))
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    x = rng.normal(size=(2, 4, 5))
    assert_array_equal(back(x), net(x))
    layer = rp.Attention(3, scale=0.25)
    assert rp.Attention.from_config(layer.config(), {}).config() == {"heads": 3, "scale": 0.25}


class Masked(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.attn = nn.MultiheadAttention(4, 2, **kw)

    def forward(self, x):
        mask = torch.zeros(3, 3, dtype=torch.bool) if self.attn.batch_first else None
        return self.attn(x, x, x, attn_mask=mask, need_weights=False)[0][:, 0]


def test_errors():
    with pytest.raises(ValueError, match="module 'attn' .*batch_first=False"):
        rp.from_torch(Masked().eval(), (3, 4))
    with pytest.raises(ValueError, match="module 'attn' .*attention masks .attn_mask"):
        rp.from_torch(Masked(batch_first=True).eval(), (3, 4))
    with pytest.raises(ValueError, match=r"needs queries \(tq, 2 \* dk\)"):
        rp.Graph([("a", rp.Attention(2), ["input", "input", "input"])], input_shape=(3, 5))
    with pytest.raises(ValueError, match="heads"):
        rp.Attention(0)
