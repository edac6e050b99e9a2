"""The benchmark models, with seeded random weights built in NumPy (He-normal, so activations
keep their scale through deep stacks and never become subnormal), as relprop networks and as
identical torch modules; and four torchvision graphs (ResNet-50, MobileNetV2, EfficientNet-B0,
ConvNeXt-Tiny) with torchvision's
initialization and realistic BatchNorm statistics, imported with ``relprop.from_torch``."""
from __future__ import annotations

import numpy as np

# (kind, args): ("conv", c_in, c_out) 3x3 stride 1 padding 1 + ReLU; ("pool",) 2x2 max pool;
# ("flatten",); ("dense", in, out) (+ ReLU unless it is the last layer)
_VGG16_CONVS = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M"]


def _convs(channels, c_in):
    spec = []
    for c in channels:
        if c == "M":
            spec.append(("pool",))
        else:
            spec.append(("conv", c_in, c))
            c_in = c
    return spec


def _dense(sizes):
    return [("dense", a, b) for a, b in zip(sizes[:-1], sizes[1:])]


MODELS = {
    # name: (input shape, layer spec, large batch)
    "mlp": ((784,), _dense([784, 1024, 1024, 1024, 10]), 256),
    "cifar_cnn": ((3, 32, 32), _convs([64, 64, "M", 128, 128, "M", 256, 256, "M"], 3)
                  + [("flatten",)] + _dense([256 * 4 * 4, 512, 10]), 64),
    "vgg16": ((3, 224, 224), _convs(_VGG16_CONVS, 3) + [("flatten",)]
              + _dense([512 * 7 * 7, 4096, 4096, 1000]), 8),
    # torchvision graphs: the spec names the torchvision model
    "resnet50": ((3, 224, 224), "torchvision", 8),
    "mobilenet_v2": ((3, 224, 224), "torchvision", 8),
    # beyond piecewise-linear (issue 27): SiLU and sigmoid gates; GELU, LayerNorm, layer scale
    "efficientnet_b0": ((3, 224, 224), "torchvision", 8),
    "convnext_tiny": ((3, 224, 224), "torchvision", 8),
}
#: (batch, threads) pairs measured for the torchvision graphs: batch 1 on one thread and on two,
#: the large batch on two (issues 24 and 27 set their targets at batches 1 and 8 on 2 threads)
GRAPH_RUNS = [(1, 1), (1, 2), (8, 2)]


def is_graph(name):
    return MODELS[name][1] == "torchvision"


def torchvision_model(name, seed=0, calibration=16, shape=None):
    """torchvision's ``name`` with its own random initialization and realistic BatchNorm
    statistics: the running mean and variance of every BatchNorm are those of its input on
    ``calibration`` images (uniform in [-2, 2], of ``shape``, by default that of MODELS; one
    pass in training mode with momentum 1), so each BatchNorm normalizes as a trained one does;
    eval mode, no gradients for parameters."""
    import torch
    import torchvision

    torch.manual_seed(seed)
    model = getattr(torchvision.models, name)(weights=None)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = 1.0
    x = torch.from_numpy(inputs(name, calibration, seed=seed + 100, shape=shape))
    model.train()
    with torch.no_grad():
        model(x)
    for p in model.parameters():
        p.requires_grad_(False)
    return model.eval()


def weights(name, seed=0):
    """[(weight, bias)] per conv/dense layer of model `name`, float32 (for a torchvision graph:
    the torch module, see :func:`torchvision_model`)."""
    if is_graph(name):
        return torchvision_model(name, seed)
    rng = np.random.default_rng(seed)
    out = []
    for layer in MODELS[name][1]:
        if layer[0] == "conv":
            _, c_in, c_out = layer
            fan_in = c_in * 9
            w = rng.standard_normal((c_out, c_in, 3, 3), dtype=np.float32)
        elif layer[0] == "dense":
            _, fan_in, c_out = layer
            w = rng.standard_normal((c_out, fan_in), dtype=np.float32)
        else:
            continue
        w *= np.float32(np.sqrt(2.0 / fan_in))
        b = (0.01 * rng.standard_normal(c_out, dtype=np.float32)).astype(np.float32)
        out.append((w, b))
    return out


def relprop_net(name, params):
    import relprop as rp

    if is_graph(name):
        return rp.from_torch(params, MODELS[name][0])
    shape, spec, _ = MODELS[name]
    layers, it = [], iter(params)
    dense = [i for i, s in enumerate(spec) if s[0] == "dense"]
    for i, s in enumerate(spec):
        if s[0] == "conv":
            w, b = next(it)
            layers += [rp.Conv2d(w, b, stride=1, padding=1), rp.ReLU()]
        elif s[0] == "pool":
            layers.append(rp.MaxPool2d(2))
        elif s[0] == "flatten":
            layers.append(rp.Flatten())
        else:
            w, b = next(it)
            layers.append(rp.Dense(w, b))
            if i != dense[-1]:
                layers.append(rp.ReLU())
    return rp.Sequential(layers, input_shape=shape)


def torch_net(name, params):
    import torch
    from torch import nn

    if is_graph(name):
        return params
    _, spec, _ = MODELS[name]
    mods, it = [], iter(params)
    dense = [i for i, s in enumerate(spec) if s[0] == "dense"]
    for i, s in enumerate(spec):
        if s[0] == "conv":
            w, b = next(it)
            conv = nn.Conv2d(s[1], s[2], 3, padding=1)
            conv.weight.data = torch.from_numpy(w.copy())
            conv.bias.data = torch.from_numpy(b.copy())
            mods += [conv, nn.ReLU()]
        elif s[0] == "pool":
            mods.append(nn.MaxPool2d(2))
        elif s[0] == "flatten":
            mods.append(nn.Flatten())
        else:
            w, b = next(it)
            lin = nn.Linear(s[1], s[2])
            lin.weight.data = torch.from_numpy(w.copy())
            lin.bias.data = torch.from_numpy(b.copy())
            mods.append(lin)
            if i != dense[-1]:
                mods.append(nn.ReLU())
    return nn.Sequential(*mods).eval()


def inputs(name, batch, seed=1, shape=None):
    """Inputs in [-2, 2] (inside EpsilonGammaBox's box [-3, 3]) of model ``name``'s shape (or
    ``shape``)."""
    shape = MODELS[name][0] if shape is None else tuple(shape)
    rng = np.random.default_rng(seed)
    return rng.uniform(-2, 2, (batch,) + shape).astype(np.float32)


def forward_macs(net):
    """Multiply-adds of one sample's forward pass through the Dense and Conv2d nodes: the total
    and one entry per node (in ``net.nodes`` order)."""
    import relprop as rp

    shapes = net.tensor_shapes(net.input_shape)
    per_node = []
    for node in net.nodes:
        layer = node.layer
        if isinstance(layer, rp.Dense):
            per_node.append(layer.weight.size)
        elif isinstance(layer, rp.Conv2d):
            per_node.append(layer.weight.size * int(np.prod(shapes[node.name][1:])))
        else:
            per_node.append(0)
    return sum(per_node), per_node
