"""NumPy twins of the layer kernels (same names and arguments as ``relprop.ops``)."""
import numpy as np


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def dense_forward(x, w, b=None, *, relu=False):
    y = x @ w.T
    y = y if b is None else y + b
    return relu_forward(y) if relu else y


def dense_backward(g, w, *, mask=None):
    gx = g @ w
    return gx if mask is None else relu_backward(gx, mask)


def dense_lrp_epsilon(r, z, a, w, eps):
    """a * ((r / stab(z)) @ w): LRP-epsilon of a dense layer."""
    return a * dense_backward(lrp_divide(r, z, eps), w)


def _out_size(h, k, s, p, d=1):
    return (h + 2 * p - d * (k - 1) - 1) // s + 1


def _groups(c_in, w, groups):
    """Per group: (input channel slice, output channel slice)."""
    o = w.shape[0]
    if groups < 1 or c_in % groups or o % groups or w.shape[1] * groups != c_in:
        raise ValueError(f"groups={groups} does not fit {c_in} input channels and weight "
                         f"{w.shape}")
    ci, co = c_in // groups, o // groups
    return [(slice(g * ci, (g + 1) * ci), slice(g * co, (g + 1) * co)) for g in range(groups)]


def conv2d_forward(x, w, b=None, stride=1, padding=0, *, dilation=1, groups=1, relu=False):
    """y[n,o,p,q] = b[o] + sum_{c,u,v} w[o,c,u,v] x_pad[n, g*C + c, p*sh+u*dh, q*sw+v*dw]
    for output channel o of group g (C = c_in // groups input channels per group)."""
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, c, h, wd = x.shape
    o, _, kh, kw = w.shape
    oh, ow = _out_size(h, kh, sh, ph, dh), _out_size(wd, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    y = np.zeros((n, o, oh, ow), dtype=x.dtype)
    for cin, cout in _groups(c, w, groups):
        for u in range(kh):
            for v in range(kw):
                patch = xp[:, cin, u * dh:u * dh + sh * (oh - 1) + 1:sh,
                           v * dw:v * dw + sw * (ow - 1) + 1:sw]
                y[:, cout] += np.einsum("nchw,oc->nohw", patch, w[cout, :, u, v])
    if b is not None:
        y += b[None, :, None, None]
    return relu_forward(y) if relu else y


def conv2d_backward(g, w, in_hw, stride=1, padding=0, *, dilation=1, groups=1, mask=None):
    """Transpose of conv2d_forward: scatter each output gradient over its receptive field (then
    the ReLU mask: 0 where mask <= 0)."""
    gx = _conv2d_backward(g, w, in_hw, stride, padding, dilation=dilation, groups=groups)
    return gx if mask is None else relu_backward(gx, mask)


def _conv2d_backward(g, w, in_hw, stride=1, padding=0, *, dilation=1, groups=1):
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    n, o, oh, ow = g.shape
    _, cg, kh, kw = w.shape
    h, wd = in_hw
    gp = np.zeros((n, cg * groups, h + 2 * ph, wd + 2 * pw), dtype=g.dtype)
    for cin, cout in _groups(cg * groups, w, groups):
        for u in range(kh):
            for v in range(kw):
                gp[:, cin, u * dh:u * dh + sh * (oh - 1) + 1:sh,
                   v * dw:v * dw + sw * (ow - 1) + 1:sw] += np.einsum(
                    "nohw,oc->nchw", g[:, cout], w[cout, :, u, v])
    return gp[:, :, ph:ph + h, pw:pw + wd]


def _pool_size(n, k, s, p, ceil_mode):
    """torch's pooling output size: ``(n + 2p - k) / s`` rounded down (or up, ``ceil_mode``)
    plus one, less a last window that would start past the input and its left padding."""
    span = n + 2 * p - k
    out = (-(-span // s) if ceil_mode else span // s) + 1
    return out - 1 if ceil_mode and (out - 1) * s >= n + p else out


def _windows(h, w, kernel, stride, padding, ceil_mode=False):
    """``(p, q, cells, padded)`` per window: its input cells and the number of its taps inside
    the zero-padded input."""
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    for p in range(_pool_size(h, kh, sh, ph, ceil_mode)):
        for q in range(_pool_size(w, kw, sw, pw, ceil_mode)):
            rows = range(p * sh - ph, p * sh - ph + kh)
            cols = range(q * sw - pw, q * sw - pw + kw)
            cells = [(i, j) for i in rows for j in cols if 0 <= i < h and 0 <= j < w]
            padded = (sum(-ph <= i < h + ph for i in rows) * sum(-pw <= j < w + pw for j in cols))
            yield p, q, cells, padded


def maxpool2d_forward(x, kernel, stride, padding=0, *, ceil_mode=False):
    """Max over each window; argmax = flat index of the first maximum (row-major)."""
    n, c, h, w = x.shape
    wins = list(_windows(h, w, kernel, stride, padding, ceil_mode))
    oh, ow = wins[-1][0] + 1, wins[-1][1] + 1
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    arg = np.empty((n, c, oh, ow), dtype=np.int64)
    for p, q, cells, _ in wins:
        vals = np.stack([x[:, :, i, j] for i, j in cells], axis=-1)
        k = vals.argmax(axis=-1)  # first maximum
        y[:, :, p, q] = np.take_along_axis(vals, k[..., None], -1)[..., 0]
        flat = np.array([i * w + j for i, j in cells])
        arg[:, :, p, q] = flat[k]
    return y, arg


def maxpool2d_backward(g, arg, in_hw, kernel, stride, padding=0, *, mask=None, ceil_mode=False):
    """Each g to its window's winner (only where mask > 0, if given)."""
    if mask is not None:
        g = np.where(mask > 0, g, 0).astype(g.dtype)
    n, c = g.shape[:2]
    h, w = in_hw
    gx = np.zeros((n, c, h * w), dtype=g.dtype)
    for a in range(n):
        for b in range(c):
            np.add.at(gx[a, b], arg[a, b].ravel(), g[a, b].ravel())
    return gx.reshape(n, c, h, w)


def avgpool2d_forward(x, kernel, stride, padding=0, *, ceil_mode=False, count_include_pad=True):
    """Window sums over the window's count: its cells in the input, plus those in the zero
    padding with ``count_include_pad`` (torch's avg_pool2d)."""
    n, c, h, w = x.shape
    wins = list(_windows(h, w, kernel, stride, padding, ceil_mode))
    y = np.zeros((n, c, wins[-1][0] + 1, wins[-1][1] + 1), dtype=x.dtype)
    for p, q, cells, padded in wins:
        y[:, :, p, q] = (sum(x[:, :, i, j] for i, j in cells)
                         / (padded if count_include_pad else len(cells)))
    return y


def avgpool2d_backward(g, in_hw, kernel, stride, padding=0, *, ceil_mode=False,
                       count_include_pad=True):
    n, c = g.shape[:2]
    gx = np.zeros((n, c) + tuple(in_hw), dtype=g.dtype)
    for p, q, cells, padded in _windows(in_hw[0], in_hw[1], kernel, stride, padding, ceil_mode):
        for i, j in cells:
            gx[:, :, i, j] += g[:, :, p, q] / (padded if count_include_pad else len(cells))
    return gx


def relu_forward(x):
    return np.maximum(x, 0)


def relu_backward(g, x, mode="gradient"):
    if mode == "gradient":
        return np.where(x > 0, g, 0)
    if mode == "deconvnet":
        return np.maximum(g, 0)
    if mode == "guided":
        return np.where((x > 0) & (g > 0), g, 0)
    raise ValueError(mode)


def stabilize(z, eps):
    """z + eps * sign(z) with sign(0) = +1."""
    return z + eps * np.where(z >= 0, 1, -1)


def lrp_divide(r, z, eps, shift=None):
    if shift is not None:
        z = z - shift
    d = stabilize(z, eps)
    safe = np.where(d == 0, 1, d)
    return np.where(d == 0, 0, r / safe)


def lrp_gamma_shares(r, p, n, gamma, eps, z=None):
    g1 = 1 + gamma
    z = p + n if z is None else z
    s1 = np.where(z > 0, lrp_divide(r, g1 * p + n, eps), 0)
    s2 = np.where(z < 0, lrp_divide(r, p + g1 * n, eps), 0)
    return np.concatenate([g1 * s1 + s2, s1 + g1 * s2], axis=1)


def lrp_alpha_beta_shares(r, p, n, alpha, beta, eps):
    return np.concatenate([alpha * lrp_divide(r, p, eps), -beta * lrp_divide(r, n, eps)], axis=1)


def conv2d_forward_split(x, w, b, split, stride=1, padding=0, *, dilation=1, groups=1):
    """The convolutions of x with the two halves w[:split] and w[split:] (biases likewise)."""
    halves = [(w[:split], None if b is None else b[:split]),
              (w[split:], None if b is None else b[split:])]
    return tuple(conv2d_forward(x, wh, bh, stride, padding, dilation=dilation, groups=groups)
                 for wh, bh in halves)


def _adaptive_window(k, n_in, n_out):
    """Rows (or columns) of window k: [floor(k n_in / n_out), ceil((k + 1) n_in / n_out))."""
    return range((k * n_in) // n_out, -((-(k + 1) * n_in) // n_out))


def adaptive_avgpool2d_forward(x, out_hw):
    """Mean of each adaptive window (torch.nn.AdaptiveAvgPool2d)."""
    oh, ow = _pair(out_hw)
    n, c, h, w = x.shape
    y = np.zeros((n, c, oh, ow), dtype=x.dtype)
    for i in range(oh):
        for j in range(ow):
            rows, cols = _adaptive_window(i, h, oh), _adaptive_window(j, w, ow)
            y[:, :, i, j] = x[:, :, rows.start:rows.stop, cols.start:cols.stop].mean(axis=(2, 3))
    return y


def adaptive_avgpool2d_backward(g, in_hw):
    """Each g[i, j] spread evenly over its window (the transpose of the mean)."""
    h, w = _pair(in_hw)
    n, c, oh, ow = g.shape
    gx = np.zeros((n, c, h, w), dtype=g.dtype)
    for i in range(oh):
        for j in range(ow):
            rows, cols = _adaptive_window(i, h, oh), _adaptive_window(j, w, ow)
            gx[:, :, rows.start:rows.stop, cols.start:cols.stop] += (
                g[:, :, i, j][:, :, None, None] / (len(rows) * len(cols)))
    return gx


def hardtanh_forward(x, min_val=-1.0, max_val=1.0):
    lo, hi = x.dtype.type(min_val), x.dtype.type(max_val)
    return np.where(x < lo, lo, np.where(x > hi, hi, x))


def hardtanh_backward(g, x, min_val=-1.0, max_val=1.0):
    lo, hi = x.dtype.type(min_val), x.dtype.type(max_val)
    return np.where((x <= lo) | (x >= hi), 0, g).astype(g.dtype)


def _interpolation(n_in, n_out, mode, align_corners, scale, dtype):
    """The matrix ``A (n_out, n_in)`` of torch's 1-D interpolation: ``out = A @ in``.  Nearest:
    ``A[d, min(floor(d * s), n_in - 1)] = 1`` with ``s`` in float32 (``1 / scale``, or
    ``n_in / n_out``; the copy and the doubling exactly); bilinear: the source position
    ``s d`` (``align_corners``, ``s = (n_in - 1) / (n_out - 1)``) or ``s (d + 0.5) - 0.5``
    clamped at 0, split between its two neighbours, in ``dtype``."""
    a = np.zeros((n_out, n_in), dtype=dtype)
    f32 = np.float32
    for d in range(n_out):
        if n_out == n_in:
            a[d, d] = 1
        elif mode == "nearest":
            if n_out == 2 * n_in:
                a[d, d // 2] = 1
                continue
            s = f32(1.0 / scale) if scale else f32(n_in) / f32(n_out)
            a[d, min(int(np.floor(f32(d) * s)), n_in - 1)] = 1
        else:
            t = np.dtype(dtype).type
            if align_corners:
                s = t(n_in - 1) / t(n_out - 1) if n_out > 1 else t(0)
                src = s * t(d)
            else:
                s = t(1.0 / scale) if scale else t(n_in) / t(n_out)
                src = max(s * (t(d) + t(0.5)) - t(0.5), t(0))
            k = min(int(np.floor(f32(src))), n_in - 1)
            lam = min(max(src - t(k), t(0)), t(1))
            a[d, k] += t(1) - lam
            a[d, min(k + 1, n_in - 1)] += lam
    return a


def upsample2d_forward(x, out_hw, mode="nearest", align_corners=False, scale=None):
    scale = (None, None) if scale is None else _pair(scale)
    ah = _interpolation(x.shape[2], out_hw[0], mode, align_corners, scale[0], x.dtype)
    aw = _interpolation(x.shape[3], out_hw[1], mode, align_corners, scale[1], x.dtype)
    return np.einsum("ih,nchw,jw->ncij", ah, x, aw)


def upsample2d_backward(g, in_hw, mode="nearest", align_corners=False, scale=None):
    scale = (None, None) if scale is None else _pair(scale)
    ah = _interpolation(in_hw[0], g.shape[2], mode, align_corners, scale[0], g.dtype)
    aw = _interpolation(in_hw[1], g.shape[3], mode, align_corners, scale[1], g.dtype)
    return np.einsum("ih,ncij,jw->nchw", ah, g, aw)


def _slopes(weight, x):
    """PReLU's slopes broadcast against x (n, c, ...): per channel, or one for all."""
    w = np.asarray(weight, dtype=x.dtype)
    return w.reshape((1, -1) + (1,) * (x.ndim - 2)) if w.size > 1 else w.reshape(())


def prelu_forward(x, weight):
    return np.where(x > 0, x, _slopes(weight, x) * x)


def prelu_backward(g, x, weight):
    return np.where(x > 0, g, _slopes(weight, g) * g)


def leaky_relu_forward(x, negative_slope=0.01):
    return np.where(x > 0, x, x * np.asarray(negative_slope, dtype=x.dtype))


def leaky_relu_backward(g, x, negative_slope=0.01):
    return np.where(x > 0, g, g * np.asarray(negative_slope, dtype=g.dtype))


def layer_norm_forward(x, weight=None, bias=None, axis=-1, eps=1e-5):
    """(y, mean, rstd) of layer normalization over ``axis``, from the definition (in float64,
    rounded to x's dtype)."""
    v = np.asarray(x, dtype=np.float64)
    mean = v.mean(axis=axis, keepdims=True)
    rstd = 1 / np.sqrt(((v - mean) ** 2).mean(axis=axis, keepdims=True) + eps)
    shape = [1] * v.ndim
    shape[axis] = -1
    w = 1.0 if weight is None else np.reshape(weight, shape)
    b = 0.0 if bias is None else np.reshape(bias, shape)
    y = (v - mean) * rstd * w + b
    return (y.astype(x.dtype), np.squeeze(mean, axis).astype(x.dtype),
            np.squeeze(rstd, axis).astype(x.dtype))


def layer_norm_backward(g, x, weight, mean, rstd, axis=-1, frozen_std=False):
    """The gradient of :func:`layer_norm_forward` w.r.t. x: the transpose of its Jacobian
    ``rstd W (I - 1/c) - rstd W xhat xhat^T / c`` per column (``frozen_std``: of ``rstd W (I -
    1/c)``, the map with the standard deviation held constant)."""
    gd = np.asarray(g, dtype=np.float64)
    r = np.expand_dims(np.asarray(rstd, dtype=np.float64), axis)
    shape = [1] * gd.ndim
    shape[axis] = -1
    w = 1.0 if weight is None else np.reshape(weight, shape).astype(np.float64)
    u = gd * w * r
    gx = u - u.mean(axis=axis, keepdims=True)
    if not frozen_std:
        xhat = (np.asarray(x, np.float64) - np.expand_dims(np.asarray(mean, np.float64), axis)) * r
        gx = gx - xhat * (u * xhat).mean(axis=axis, keepdims=True)
    return gx.astype(g.dtype)


def _heads(t, heads):
    """(n, t, heads * d) -> (n, heads, t, d) in float64."""
    n, tokens, width = t.shape
    return np.asarray(t, np.float64).reshape(n, tokens, heads, width // heads).transpose(0, 2, 1, 3)


def _merge(t):
    """(n, heads, t, d) -> (n, t, heads * d)."""
    n, heads, tokens, d = t.shape
    return t.transpose(0, 2, 1, 3).reshape(n, tokens, heads * d)


def _attention_scale(q, heads, scale):
    return 1.0 / np.sqrt(q.shape[-1] // heads) if scale is None else float(scale)


def attention_forward(q, k, v, heads, scale=None):
    """Per head ``A = softmax(scale Q K^T)`` (each row), ``O = A V``, from the definition."""
    s = _attention_scale(q, heads, scale) * np.einsum("nhid,nhjd->nhij", _heads(q, heads),
                                                       _heads(k, heads))
    e = np.exp(s - s.max(axis=-1, keepdims=True))
    a = e / e.sum(axis=-1, keepdims=True)
    out = np.einsum("nhij,nhjd->nhid", a, _heads(v, heads))
    return _merge(out).astype(q.dtype), a.astype(q.dtype)


def attention_backward(g, q, k, v, a, heads, scale=None, wanted="qkv"):
    """The gradients of :func:`attention_forward`, the softmax's through its Jacobian
    ``diag(A) - A A^T`` per row."""
    scale = _attention_scale(q, heads, scale)
    gh, qh, kh, vh = (_heads(t, heads) for t in (g, q, k, v))
    a = np.asarray(a, np.float64)
    # jac[..., i, j, k] = dA_ij / dS_ik = A_ij (delta_jk - A_ik)
    jac = a[..., :, :, None] * (np.eye(a.shape[-1]) - a[..., :, None, :])
    ga = np.einsum("nhid,nhjd->nhij", gh, vh)
    gs = scale * np.einsum("nhijk,nhij->nhik", jac, ga)
    out = {"q": np.einsum("nhij,nhjd->nhid", gs, kh), "k": np.einsum("nhij,nhid->nhjd", gs, qh),
           "v": np.einsum("nhij,nhid->nhjd", a, gh)}
    return tuple(_merge(out[c]).astype(g.dtype) if c in wanted else None for c in "qkv")


def _erfc(v):
    """erfc element by element (NumPy has none; the C library's, through math)."""
    import math

    return np.frompyfunc(math.erfc, 1, 1)(v).astype(np.float64)


def _sigmoid(v):
    """1 / (1 + e^-v) without overflow: e^-|v| in both halves."""
    t = np.exp(-np.abs(v))
    return np.where(v >= 0, 1, t) / (1 + t)


_GELU_K = np.sqrt(2 / np.pi)


def activation_forward(x, op):
    """The smooth activations, from their definitions in float64 (rounded to ``x``'s dtype)."""
    v = np.asarray(x, dtype=np.float64)
    if op == "sigmoid":
        y = _sigmoid(v)
    elif op == "silu":
        y = v * _sigmoid(v)
    elif op == "tanh":
        y = np.tanh(v)
    elif op == "gelu":
        y = v * 0.5 * _erfc(-v / np.sqrt(2))
    elif op == "gelu_tanh":  # x (1 + tanh(u)) / 2 = x sigmoid(2 u)
        y = v * _sigmoid(2 * _GELU_K * (v + 0.044715 * v ** 3))
    elif op == "hardsigmoid":
        y = np.clip(v + 3, 0, 6) / 6
    elif op == "hardswish":
        y = v * np.clip(v + 3, 0, 6) / 6
    else:
        raise ValueError(op)
    return y.astype(x.dtype)


def activation_backward(g, x, op):
    """``g`` times the derivative of :func:`activation_forward` at ``x`` (float64, rounded);
    hardsigmoid and hardswish with torch's one-sided values at their kinks."""
    v = np.asarray(x, dtype=np.float64)
    if op == "sigmoid":
        d = _sigmoid(v) * _sigmoid(-v)
    elif op == "silu":
        d = _sigmoid(v) * (1 + v * _sigmoid(-v))
    elif op == "tanh":
        d = 1 / np.cosh(v) ** 2
    elif op == "gelu":
        d = 0.5 * _erfc(-v / np.sqrt(2)) + v * np.exp(-v * v / 2) / np.sqrt(2 * np.pi)
    elif op == "gelu_tanh":
        a = 2 * _GELU_K * (v + 0.044715 * v ** 3)
        d = _sigmoid(a) + v * 2 * _GELU_K * (1 + 3 * 0.044715 * v * v) * _sigmoid(a) * _sigmoid(-a)
    elif op == "hardsigmoid":
        d = np.where((v > -3) & (v < 3), 1 / 6, 0)
    elif op == "hardswish":
        d = np.where(v <= -3, 0, np.where(v < 3, v / 3 + 0.5, 1))
    else:
        raise ValueError(op)
    return (np.asarray(g, dtype=np.float64) * d).astype(g.dtype)


def channel_affine(x, scale, shift=None):
    """x * scale[c] + shift[c] along axis 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * np.reshape(scale, shape)
    return y if shift is None else y + np.reshape(shift, shape)


# ------------------------------------------------------------------------------------------
# Winograd convolution F(m x m, 3x3), written from its definition (Lavin & Gray 2016): each
# m x m output tile is  Y = A^T [ sum_c (G g_c G^T) * (B^T d_c B) ] A  with d_c the
# (m + 2) x (m + 2) input patch under it.  Tile by tile, in float64 unless given float32.

# The transform matrices, as exact fractions, rows of B^T, G and A^T.
#   F(2x2, 3x3): Lavin & Gray's (interpolation points 0, 1, -1 and infinity).
#   F(4x4, 3x3): points 0, 1, -1, 1/2, -2 and infinity (Barabasz et al. 2020, whose float32
#   error is smaller than that of Lavin & Gray's 0, 1, -1, 2, -2): A^T[i, j] = p_j^i,
#   G[j] = (1, p_j, p_j^2) / prod_{q != p_j} (p_j - q), and B^T the matrix that makes
#   A^T [(G g) * (B^T d)] the correlation of d with g.
WINOGRAD_FRACTIONS = {
    2: {"BT": [["1", "0", "-1", "0"],
               ["0", "1", "1", "0"],
               ["0", "-1", "1", "0"],
               ["0", "1", "0", "-1"]],
        "G": [["1", "0", "0"],
              ["1/2", "1/2", "1/2"],
              ["1/2", "-1/2", "1/2"],
              ["0", "0", "1"]],
        "AT": [["1", "1", "1", "0"],
               ["0", "1", "-1", "-1"]]},
    4: {"BT": [["1", "-3/2", "-2", "3/2", "1", "0"],
               ["0", "-1", "1/2", "5/2", "1", "0"],
               ["0", "1", "-5/2", "1/2", "1", "0"],
               ["0", "-2", "-1", "2", "1", "0"],
               ["0", "1/2", "-1", "-1/2", "1", "0"],
               ["0", "1", "-3/2", "-2", "3/2", "1"]],
        "G": [["1", "0", "0"],
              ["1/3", "1/3", "1/3"],
              ["-1/3", "1/3", "-1/3"],
              ["-16/15", "-8/15", "-4/15"],
              ["1/15", "-2/15", "4/15"],
              ["0", "0", "1"]],
        "AT": [["1", "1", "1", "1", "1", "0"],
               ["0", "1", "-1", "1/2", "-2", "0"],
               ["0", "1", "1", "1/4", "4", "0"],
               ["0", "1", "-1", "1/8", "-8", "1"]]},
}


def winograd_matrices(tile):
    """``(BT, G, AT)`` of F(tile x tile, 3x3) as float64 arrays."""
    from fractions import Fraction

    return tuple(np.array([[float(Fraction(v)) for v in row]
                           for row in WINOGRAD_FRACTIONS[tile][k]])
                 for k in ("BT", "G", "AT"))


def _flipped(w):
    """w'[c, o, u, v] = w[o, c, 2-u, 2-v]: the kernel of the backward pass of a stride-1 conv."""
    return w[:, :, ::-1, ::-1].transpose(1, 0, 2, 3)


def conv2d_winograd_pack(w, tile=4, backward=False):
    """U[k, l, o, c] = (G w[o, c] G^T)[k, l] (of the flipped kernel if ``backward``)."""
    _, G, _ = winograd_matrices(tile)
    if backward:
        w = _flipped(w)
    return np.einsum("ku,ocuv,lv->kloc", G, w, G)


def _winograd(x, u, bt, at, padding, tile):
    """y of the Winograd algorithm with matrices bt, at and transformed weights u, tile by
    tile: y[:, :, tile rows, tile cols] = A^T M A,  M[n, o] = sum_c U[:, :, o, c] * V[n, c],
    V[n, c] = B^T d[n, c] B."""
    (ph, pw), m = _pair(padding), tile
    n, c, h, wd = x.shape
    a = m + 2
    oh, ow = h + 2 * ph - 2, wd + 2 * pw - 2
    th, tw = -(-oh // m), -(-ow // m)
    xp = np.zeros((n, c, th * m + 2, tw * m + 2), dtype=x.dtype)
    xp[:, :, ph:ph + h, pw:pw + wd] = x
    y = np.zeros((n, u.shape[2], th * m, tw * m), dtype=x.dtype)
    for i in range(th):
        for j in range(tw):
            d = xp[:, :, i * m:i * m + a, j * m:j * m + a]          # (n, c, a, a)
            v = bt @ d @ bt.T                                        # B^T d B
            mm = np.einsum("kloc,nckl->nokl", u, v)                  # sum over channels
            y[:, :, i * m:(i + 1) * m, j * m:(j + 1) * m] = at @ mm @ at.T
    return y[:, :, :oh, :ow]


def conv2d_winograd_forward(x, w, b=None, padding=(1, 1), packed=None, *, tile=4, split=None,
                            stride=(1, 1), relu=False):
    """Stride-1 3x3 convolution by F(tile x tile, 3x3), tile by tile."""
    assert _pair(stride) == (1, 1) and w.shape[2:] == (3, 3)
    bt, _, at = winograd_matrices(tile)
    u = conv2d_winograd_pack(w, tile) if packed is None else packed
    y = _winograd(x, u.astype(x.dtype), bt.astype(x.dtype), at.astype(x.dtype), padding, tile)
    if b is not None:
        y = y + b[None, :, None, None]
    if relu:
        y = relu_forward(y)
    return y if split is None else (y[:, :split], y[:, split:])


def conv2d_winograd_backward(g, w, in_hw, padding=(1, 1), packed=None, *, tile=4,
                             stride=(1, 1), mask=None):
    """The backward pass w.r.t. x: the Winograd convolution of g with the flipped kernel and
    padding 2 - padding (then the ReLU mask)."""
    assert _pair(stride) == (1, 1) and w.shape[2:] == (3, 3)
    (ph, pw) = _pair(padding)
    y = conv2d_winograd_forward(g, _flipped(w), None, (2 - ph, 2 - pw), packed, tile=tile)
    assert y.shape[2:] == tuple(in_hw)
    return y if mask is None else relu_backward(y, mask)


# ------------------------------------------------------------------------------------------
# Fused layer steps, written as the compositions they stand for (algorithm "winograd2" or
# "winograd4": Winograd F(2x2, 3x3) / F(4x4, 3x3); any other: the direct convolution)

def _tile(algorithm):
    return {"winograd2": 2, "winograd4": 4}.get(algorithm)


def _conv(x, w, b, stride, padding, dilation, groups, algorithm):
    if _tile(algorithm) is None:
        return conv2d_forward(x, w, b, stride, padding, dilation=dilation, groups=groups)
    return conv2d_winograd_forward(x, w, b, padding, tile=_tile(algorithm))


def _conv_t(g, w, in_hw, stride, padding, dilation, groups, algorithm, mask=None):
    if _tile(algorithm) is None:
        return conv2d_backward(g, w, in_hw, stride, padding, dilation=dilation, groups=groups,
                               mask=mask)
    return conv2d_winograd_backward(g, w, in_hw, padding, tile=_tile(algorithm), mask=mask)


def conv2d_forward_relu_maxpool(x, w, b=None, stride=1, padding=0, *, dilation=1, groups=1,
                                algorithm=None, pool=2):
    """(pooled, argmax) of the 2x2 stride-2 max pooling of relu(conv2d(x, w, b))."""
    assert _pair(pool) == (2, 2)
    y = relu_forward(_conv(x, w, b, stride, padding, dilation, groups, algorithm))
    if y.shape[2] < 2 or y.shape[3] < 2:
        shape = y.shape[:2] + (y.shape[2] // 2, y.shape[3] // 2)
        return np.zeros(shape, y.dtype), np.zeros(shape, np.int64)
    return maxpool2d_forward(y, 2, 2)


def conv2d_backward_pooled(g, argmax, w, in_hw, stride=1, padding=0, *, pooled=None, mask=None,
                           dilation=1, groups=1, algorithm=None):
    """conv2d_backward of g routed to the winners argmax (where pooled > 0, if given)."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (w.shape[2:], _pair(stride), _pair(padding),
                                              _pair(dilation))
    oh = _out_size(in_hw[0], kh, sh, ph, dh)
    ow = _out_size(in_hw[1], kw, sw, pw, dw)
    gy = maxpool2d_backward(g, argmax, (oh, ow), 2, 2, mask=pooled)
    return _conv_t(gy, w, in_hw, stride, padding, dilation, groups, algorithm, mask)


def conv2d_lrp_epsilon(r, z, a, w, eps, stride=1, padding=0, *, dilation=1, groups=1,
                       algorithm=None):
    """a * conv2d_backward(r / stab(z), w): LRP-epsilon of a convolution."""
    s = lrp_divide(r, z, eps)
    return a * _conv_t(s, w, a.shape[2:], stride, padding, dilation, groups, algorithm)


def winograd_abs(x, w, padding=(1, 1), *, tile=4, backward=False):
    """The Winograd computation with every value and matrix replaced by its absolute value:
    the scale of its rounding errors (each rounding in any stage is at most eps times the
    corresponding partial result, and propagates through the later stages' |matrices|)."""
    bt, G, at = (np.abs(a) for a in winograd_matrices(tile))
    w = np.abs(_flipped(w) if backward else w).astype(np.float64)
    if backward:
        padding = tuple(2 - p for p in _pair(padding))
    u = np.einsum("ku,ocuv,lv->kloc", G, w, G)
    return _winograd(np.abs(x).astype(np.float64), u, bt, at, padding, tile)


#: Every kernel's twin (the public functions of this module).
__all__ = [name for name, fn in list(globals().items()) if callable(fn)
           and not name.startswith("_") and getattr(fn, "__module__", None) == __name__]
