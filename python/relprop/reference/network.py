"""Reference forward/backward passes through a relprop network (a graph: its nodes in order,
each reading named tensors) and the gradient methods.

Layers are read through their public attributes (``kind``, ``weight``, ``bias``, ``stride``,
``padding``, ``kernel_size``, ...); nothing of relprop's compute path is used.
"""
import numpy as np

from . import ops


def _window(layer, shape):
    if layer.kind == "globalavgpool2d":
        hw = tuple(shape[-2:])
        return hw, hw, (0, 0)
    return layer.kernel_size, layer.stride, layer.padding


def _conv_kw(layer):
    """Dilation and groups of a Conv2d, where they differ from the defaults."""
    kw = {}
    if getattr(layer, "dilation", (1, 1)) != (1, 1):
        kw["dilation"] = layer.dilation
    if getattr(layer, "groups", 1) != 1:
        kw["groups"] = layer.groups
    return kw


def _affine(layer, dtype):
    """``(s, t)`` of an unfolded BatchNorm: ``y = x * s + t`` per channel."""
    s = layer.scale / np.sqrt(layer.var + layer.eps)
    return s.astype(dtype), (layer.shift - layer.mean * s).astype(dtype)


def layer_forward(layer, *xs):
    k = layer.kind
    x = xs[0]
    if k == "dense":
        return ops.dense_forward(x, layer.weight.astype(x.dtype), _b(layer, x.dtype))
    if k == "conv2d":
        return ops.conv2d_forward(x, layer.weight.astype(x.dtype), _b(layer, x.dtype),
                                  layer.stride, layer.padding, **_conv_kw(layer))
    if k == "relu":
        return ops.relu_forward(x)
    if k == "relu6":
        return ops.relu6_forward(x)
    if k == "flatten":
        return x.reshape(len(x), -1)
    if k == "maxpool2d":
        return ops.maxpool2d_forward(x, *_window(layer, x.shape))[0]
    if k in ("avgpool2d", "globalavgpool2d"):
        return ops.avgpool2d_forward(x, *_window(layer, x.shape))
    if k == "adaptiveavgpool2d":
        return ops.adaptive_avgpool2d_forward(x, layer.output_size)
    if k.startswith("batchnorm"):
        s, t = _affine(layer, x.dtype)
        return ops.channel_affine(x, s, t)
    if k == "add":
        return sum(xs[1:], xs[0])
    if k == "concat":
        return np.concatenate(xs, axis=1)
    raise ValueError(f"reference: unknown layer {k}")


def _b(layer, dtype):
    return None if layer.bias is None else layer.bias.astype(dtype)


def layer_backward(layer, g, xs, relu_mode="gradient"):
    """The vector-Jacobian product w.r.t. each input (a list)."""
    k = layer.kind
    x = xs[0]
    if k == "dense":
        return [ops.dense_backward(g, layer.weight.astype(g.dtype))]
    if k == "conv2d":
        return [ops.conv2d_backward(g, layer.weight.astype(g.dtype), x.shape[2:], layer.stride,
                                    layer.padding, **_conv_kw(layer))]
    if k == "relu":
        return [ops.relu_backward(g, x, relu_mode)]
    if k == "relu6":
        return [ops.relu6_backward(g, x, relu_mode)]
    if k == "flatten":
        return [g.reshape(x.shape)]
    if k == "maxpool2d":
        _, arg = ops.maxpool2d_forward(x, *_window(layer, x.shape))
        return [ops.maxpool2d_backward(g, arg, x.shape[2:], *_window(layer, x.shape))]
    if k in ("avgpool2d", "globalavgpool2d"):
        return [ops.avgpool2d_backward(g, x.shape[2:], *_window(layer, x.shape))]
    if k == "adaptiveavgpool2d":
        return [ops.adaptive_avgpool2d_backward(g, x.shape[2:])]
    if k.startswith("batchnorm"):
        return [ops.channel_affine(g, _affine(layer, g.dtype)[0])]
    if k == "add":
        return [g for _ in xs]
    if k == "concat":
        bounds = np.cumsum([0] + [a.shape[1] for a in xs])
        return [g[:, lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    raise ValueError(f"reference: unknown layer {k}")


def _tensors(net):
    """Tensor names in the order of relprop's numbering: the input, then every node."""
    return [net.input_name] + [node.name for node in net.nodes]


def forward(net, x):
    """Every tensor's value: ``acts[0] = x``, ``acts[i + 1]`` = output of node i (in a chain,
    of layer i)."""
    vals = {net.input_name: np.asarray(x)}
    for node in net.nodes:
        vals[node.name] = layer_forward(node.layer, *(vals[t] for t in node.inputs))
    return [vals[t] for t in _tensors(net)]


def backward(net, acts, g, relu_mode="gradient"):
    """The vector-Jacobian product of ``g`` down to the input: nodes in reverse order, each
    tensor's gradient the sum over its readers."""
    vals = dict(zip(_tensors(net), acts))
    grads = {net.output: g}
    for node in reversed(net.nodes):
        gin = layer_backward(node.layer, grads.pop(node.name), [vals[t] for t in node.inputs],
                             relu_mode)
        for t, gt in zip(node.inputs, gin):
            grads[t] = grads[t] + gt if t in grads else gt
    return grads[net.input_name]


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
            cols = ops.conv2d_forward(basis, w, None, layer.stride, layer.padding,
                                      **_conv_kw(layer))
            b = np.zeros(w.shape[0]) if layer.bias is None else layer.bias.astype(dtype)
            bias = np.broadcast_to(b[:, None, None], cols.shape[1:]).ravel()
    else:
        cols = layer_forward(layer, basis)
        bias = np.zeros(cols[0].size)
    return cols.reshape(size, -1).T.copy(), np.asarray(bias, dtype=dtype).copy()
