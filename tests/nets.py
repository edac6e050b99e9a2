"""Random relprop networks for tests, and their torch twins (same weights)."""
import numpy as np

import relprop as rp


def conv_w(rng, o, i, k, scale=None):
    scale = scale if scale is not None else 1.0 / np.sqrt(i * k * k)
    return rng.normal(size=(o, i, k, k)) * scale


def dense_w(rng, o, i):
    return rng.normal(size=(o, i)) / np.sqrt(i)


def mlp(rng, sizes=(12, 16, 10, 4), bias=True):
    layers = []
    for k, (i, o) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers.append(rp.Dense(dense_w(rng, o, i), rng.normal(size=o) * 0.1 if bias else None))
        if k < len(sizes) - 2:
            layers.append(rp.ReLU())
    return rp.Sequential(layers, input_shape=(sizes[0],))


def cnn(rng, bias=True, channels=3, size=12, n_out=5):
    """VGG-style: conv-relu-conv-relu-maxpool-conv(stride 2)-relu-avgpool-flatten-dense-relu-dense."""
    b = (lambda n: rng.normal(size=n) * 0.1) if bias else (lambda n: None)
    layers = [
        rp.Conv2d(conv_w(rng, 6, channels, 3), b(6), padding=1), rp.ReLU(),
        rp.Conv2d(conv_w(rng, 8, 6, 3), b(8), padding=1), rp.ReLU(),
        rp.MaxPool2d(2),
        rp.Conv2d(conv_w(rng, 8, 8, 3), b(8), stride=2, padding=1), rp.ReLU(),
        rp.AvgPool2d(2, stride=1),
        rp.Flatten(),
    ]
    net = rp.Sequential(layers, input_shape=(channels, size, size))
    feat = int(np.prod(net.output_shape))
    layers += [rp.Dense(dense_w(rng, 16, feat), b(16)), rp.ReLU(), rp.Dense(dense_w(rng, n_out, 16), b(n_out))]
    return rp.Sequential(layers, input_shape=(channels, size, size))


def to_torch(net, dtype="float64"):
    """A torch.nn.Sequential with the same layers and weights as ``net``."""
    import torch

    mods = []
    for layer in net.layers:
        k = layer.kind
        if k == "dense":
            m = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0], bias=layer.bias is not None)
        elif k == "conv2d":
            o, i, kh, kw = layer.weight.shape
            m = torch.nn.Conv2d(i, o, (kh, kw), stride=layer.stride, padding=layer.padding,
                                bias=layer.bias is not None)
        elif k == "relu":
            m = torch.nn.ReLU()
        elif k == "flatten":
            m = torch.nn.Flatten()
        elif k == "maxpool2d":
            m = torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding)
        elif k == "avgpool2d":
            m = torch.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, count_include_pad=True)
        elif k == "globalavgpool2d":
            m = torch.nn.AdaptiveAvgPool2d(1)
        else:
            raise ValueError(k)
        mods.append(m)
    seq = torch.nn.Sequential(*mods).to(getattr(torch, dtype)).eval()
    with torch.no_grad():
        for layer, m in zip(net.layers, seq):
            if layer.linear:
                m.weight.copy_(torch.from_numpy(layer.weight.astype(np.float64)))
                if layer.bias is not None:
                    m.bias.copy_(torch.from_numpy(layer.bias.astype(np.float64)))
    return seq
