"""Reference forward/backward passes through a relprop network (a graph: its nodes in order,
each reading named tensors) and the gradient methods.

Each layer runs through the twin of its kind (:mod:`relprop.reference.layers`); nothing of
relprop's compute path is used.
"""
import numpy as np

from .layers import twin


def layer_forward(layer, *xs):
    """The output of ``layer`` on its inputs (its twin's forward pass)."""
    return twin(layer).forward(layer, *xs)


def layer_backward(layer, g, xs, relu_mode="gradient"):
    """The vector-Jacobian product w.r.t. each input (a list)."""
    return list(twin(layer).backward(layer, g, xs, relu_mode))


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
    apply = twin(layer).apply
    if apply is not None:
        w = (layer.weight if weight is None else weight).astype(dtype)
        cols = apply(layer, basis, w, None)
        b = None if layer.bias is None else layer.bias.astype(dtype)
        # the bias where the layer puts it (channels, or a Dense's last axis): its image of 0
        bias = apply(layer, np.zeros((1,) + tuple(in_shape), dtype), w, b).ravel()
    else:
        cols = layer_forward(layer, basis)
        bias = np.zeros(cols[0].size)
    return cols.reshape(size, -1).T.copy(), np.asarray(bias, dtype=dtype).copy()


def frozen_matrices(layer, a):
    """The linear map of a layer whose twin gives one (``Twin.linear``: LayerNorm with its
    standard deviation held constant), made at each sample of ``a``: ``(n, out_size, in_size)``
    on flattened samples."""
    lin = twin(layer).linear
    shape = a.shape[1:]
    size = int(np.prod(shape))
    basis = np.eye(size, dtype=a.dtype).reshape((size,) + shape)
    return np.stack([lin(layer, np.broadcast_to(a[i], basis.shape), basis).reshape(size, -1).T
                     for i in range(len(a))])
