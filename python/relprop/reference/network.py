"""Reference forward/backward passes through a relprop network and the gradient methods.

Layers are read through their public attributes (``kind``, ``weight``, ``bias``, ``stride``,
``padding``, ``kernel_size``); nothing of relprop's compute path is used.
"""
import numpy as np

from . import ops


def _window(layer, shape):
    if layer.kind == "globalavgpool2d":
        hw = tuple(shape[-2:])
        return hw, hw, (0, 0)
    return layer.kernel_size, layer.stride, layer.padding


def layer_forward(layer, x):
    k = layer.kind
    if k == "dense":
        return ops.dense_forward(x, layer.weight.astype(x.dtype), _b(layer, x.dtype))
    if k == "conv2d":
        return ops.conv2d_forward(x, layer.weight.astype(x.dtype), _b(layer, x.dtype),
                                  layer.stride, layer.padding)
    if k == "relu":
        return ops.relu_forward(x)
    if k == "flatten":
        return x.reshape(len(x), -1)
    if k == "maxpool2d":
        return ops.maxpool2d_forward(x, *_window(layer, x.shape))[0]
    if k in ("avgpool2d", "globalavgpool2d"):
        return ops.avgpool2d_forward(x, *_window(layer, x.shape))
    raise ValueError(f"reference: unknown layer {k}")


def _b(layer, dtype):
    return None if layer.bias is None else layer.bias.astype(dtype)


def layer_backward(layer, g, x, relu_mode="gradient"):
    k = layer.kind
    if k == "dense":
        return ops.dense_backward(g, layer.weight.astype(g.dtype))
    if k == "conv2d":
        return ops.conv2d_backward(g, layer.weight.astype(g.dtype), x.shape[2:], layer.stride,
                                   layer.padding)
    if k == "relu":
        return ops.relu_backward(g, x, relu_mode)
    if k == "flatten":
        return g.reshape(x.shape)
    if k == "maxpool2d":
        _, arg = ops.maxpool2d_forward(x, *_window(layer, x.shape))
        return ops.maxpool2d_backward(g, arg, x.shape[2:], *_window(layer, x.shape))
    if k in ("avgpool2d", "globalavgpool2d"):
        return ops.avgpool2d_backward(g, x.shape[2:], *_window(layer, x.shape))
    raise ValueError(f"reference: unknown layer {k}")


def forward(net, x):
    """All activations: ``acts[0] = x``, ``acts[i + 1]`` = output of layer i."""
    acts = [np.asarray(x)]
    for layer in net.layers:
        acts.append(layer_forward(layer, acts[-1]))
    return acts


def backward(net, acts, g, relu_mode="gradient"):
    for i in range(len(net.layers) - 1, -1, -1):
        g = layer_backward(net.layers[i], g, acts[i], relu_mode)
    return g


def seed(target, out, scale=False):
    """One-hot seed (times the output when ``scale``) for int / per-sample ints; arrays as is."""
    t = np.asarray(target)
    if t.dtype.kind == "f":
        return t.astype(out.dtype)
    s = np.zeros_like(out)
    for n, c in enumerate(np.broadcast_to(t, (len(out),))):
        s[n, c] = out[n, c] if scale else 1
    return s


def gradient(net, x, target, relu_mode="gradient"):
    acts = forward(net, x)
    return backward(net, acts, seed(target, acts[-1]), relu_mode)


def sensitivity(net, x, target):
    return gradient(net, x, target) ** 2


def gradient_x_input(net, x, target):
    return x * gradient(net, x, target)


def deconvnet(net, x, target):
    return gradient(net, x, target, "deconvnet")


def guided_backprop(net, x, target):
    return gradient(net, x, target, "guided")


def taylor(net, x, target, root):
    """``dF/dx at root * (x - root)`` for an explicit root array."""
    return gradient(net, root, target) * (x - root)


def as_matrix(layer, in_shape, dtype=np.float64, weight=None):
    """A linear layer (or average pooling) as a dense matrix ``M (out_size, in_size)`` acting on
    one flattened sample, and its bias as a vector ``(out_size,)`` (Zennit's ``as_matrix``).

    ``weight`` replaces the layer's weight (to materialize rule-modified weights).
    """
    size = int(np.prod(in_shape))
    basis = np.eye(size, dtype=dtype).reshape((size,) + tuple(in_shape))
    k = layer.kind
    if k in ("dense", "conv2d"):
        w = (layer.weight if weight is None else weight).astype(dtype)
        if k == "dense":
            cols = ops.dense_forward(basis, w)
            bias = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.astype(dtype)
        else:
            cols = ops.conv2d_forward(basis, w, None, layer.stride, layer.padding)
            b = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.astype(dtype)
            bias = np.broadcast_to(b[:, None, None], cols.shape[1:]).ravel()
    else:
        cols = layer_forward(layer, basis)
        bias = np.zeros(cols[0].size)
    return cols.reshape(size, -1).T.copy(), np.asarray(bias, dtype=dtype).copy()
