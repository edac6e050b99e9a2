"""NumPy twins of the layer kernels (same names and arguments as ``relprop.ops``)."""
import numpy as np


def _pair(v):
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def dense_forward(x, w, b=None):
    y = x @ w.T
    return y if b is None else y + b


def dense_backward(g, w):
    return g @ w


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


def conv2d_forward(x, w, b=None, stride=1, padding=0, *, dilation=1, groups=1):
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
    return y


def conv2d_backward(g, w, in_hw, stride=1, padding=0, *, dilation=1, groups=1):
    """Transpose of conv2d_forward: scatter each output gradient over its receptive field."""
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


def _windows(h, w, kernel, stride, padding):
    (kh, kw), (sh, sw), (ph, pw) = _pair(kernel), _pair(stride), _pair(padding)
    for p in range(_out_size(h, kh, sh, ph)):
        for q in range(_out_size(w, kw, sw, pw)):
            cells = [(i, j) for i in range(p * sh - ph, p * sh - ph + kh)
                     for j in range(q * sw - pw, q * sw - pw + kw) if 0 <= i < h and 0 <= j < w]
            yield p, q, cells


def maxpool2d_forward(x, kernel, stride, padding=0):
    """Max over each window; argmax = flat index of the first maximum (row-major)."""
    n, c, h, w = x.shape
    wins = list(_windows(h, w, kernel, stride, padding))
    oh, ow = wins[-1][0] + 1, wins[-1][1] + 1
    y = np.empty((n, c, oh, ow), dtype=x.dtype)
    arg = np.empty((n, c, oh, ow), dtype=np.int64)
    for p, q, cells in wins:
        vals = np.stack([x[:, :, i, j] for i, j in cells], axis=-1)
        k = vals.argmax(axis=-1)  # first maximum
        y[:, :, p, q] = np.take_along_axis(vals, k[..., None], -1)[..., 0]
        flat = np.array([i * w + j for i, j in cells])
        arg[:, :, p, q] = flat[k]
    return y, arg


def maxpool2d_backward(g, arg, in_hw, kernel, stride, padding=0):
    n, c = g.shape[:2]
    h, w = in_hw
    gx = np.zeros((n, c, h * w), dtype=g.dtype)
    for a in range(n):
        for b in range(c):
            np.add.at(gx[a, b], arg[a, b].ravel(), g[a, b].ravel())
    return gx.reshape(n, c, h, w)


def avgpool2d_forward(x, kernel, stride, padding=0):
    """Window sums over kh*kw (zero padding counted)."""
    kh, kw = _pair(kernel)
    n, c, h, w = x.shape
    wins = list(_windows(h, w, kernel, stride, padding))
    y = np.zeros((n, c, wins[-1][0] + 1, wins[-1][1] + 1), dtype=x.dtype)
    for p, q, cells in wins:
        y[:, :, p, q] = sum(x[:, :, i, j] for i, j in cells) / (kh * kw)
    return y


def avgpool2d_backward(g, in_hw, kernel, stride, padding=0):
    kh, kw = _pair(kernel)
    n, c = g.shape[:2]
    gx = np.zeros((n, c) + tuple(in_hw), dtype=g.dtype)
    for p, q, cells in _windows(in_hw[0], in_hw[1], kernel, stride, padding):
        for i, j in cells:
            gx[:, :, i, j] += g[:, :, p, q] / (kh * kw)
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


def relu6_forward(x):
    return np.clip(x, 0, 6)


def relu6_backward(g, x, mode="gradient"):
    inside = (x > 0) & (x < 6)
    if mode == "gradient":
        return np.where(inside, g, 0)
    if mode == "deconvnet":
        return np.maximum(g, 0)
    if mode == "guided":
        return np.where(inside & (g > 0), g, 0)
    raise ValueError(mode)


def channel_affine(x, scale, shift=None):
    """x * scale[c] + shift[c] along axis 1."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    y = x * np.reshape(scale, shape)
    return y if shift is None else y + np.reshape(shift, shape)
