"""Random relprop networks for tests, and their torch twins (same weights)."""
import functools

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
    """VGG: conv-relu-conv-relu-maxpool-conv(stride 2)-relu-avgpool-flatten-dense-relu-dense."""
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
    layers += [rp.Dense(dense_w(rng, 16, feat), b(16)), rp.ReLU(),
               rp.Dense(dense_w(rng, n_out, 16), b(n_out))]
    return rp.Sequential(layers, input_shape=(channels, size, size))


def to_torch(net, dtype="float64"):
    """A torch.nn.Sequential with the same layers and weights as ``net``."""
    import torch

    mods = []
    for layer in net.layers:
        k = layer.kind
        if k == "dense":
            m = torch.nn.Linear(layer.weight.shape[1], layer.weight.shape[0],
                                bias=layer.bias is not None)
        elif k == "conv2d":
            o, i, kh, kw = layer.weight.shape
            m = torch.nn.Conv2d(i, o, (kh, kw), stride=layer.stride, padding=layer.padding,
                                bias=layer.bias is not None)
        elif k == "relu":
            m = torch.nn.ReLU()
        elif k == "flatten":
            m = torch.nn.Flatten()
        elif k == "maxpool2d":
            m = torch.nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding,
                                   ceil_mode=layer.ceil_mode)
        elif k == "avgpool2d":
            m = torch.nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding,
                                   ceil_mode=layer.ceil_mode,
                                   count_include_pad=layer.count_include_pad)
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


# --- torchvision models for the importer tests -----------------------------------------------
#: Input size of the torchvision tests: small, so that Zennit in float64 stays fast.
TV_SIZE = 64


def merged_batchnorms(name, model):
    """Names of the BatchNorms of torchvision model ``name`` that follow a convolution whose
    output nothing else reads (relprop folds them; Zennit's canonizers merge them)."""
    from torch import nn

    bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if name.startswith("densenet"):  # the stem's and each dense layer's second BatchNorm
        return [n for n in bns if n.endswith("norm0") or n.endswith("norm2")]
    return bns


def torchvision_model(name, seed=0):
    """torchvision's ``name`` with random weights, in eval mode, for a TV_SIZE x TV_SIZE input.

    Every BatchNorm gets random running statistics and affine parameters; the merged ones
    (:func:`merged_batchnorms`) get ``eps = 0`` and values on a coarse dyadic grid, so that
    ``weight / sqrt(var)`` is a power of two and folding them is exact in float32 as in float64
    (the ONNX files are float32: relprop, torch and Zennit then hold the same parameters).
    VGG's and AlexNet's AdaptiveAvgPool2d is replaced by nn.Identity and the first classifier
    layer sized for the feature map of a TV_SIZE input (at 224 pixels that pooling is the
    identity, which relprop skips and Zennit gives the Norm rule; its non-identity cases are
    tested on their own).  GoogLeNet comes without its auxiliary heads (eval mode never runs
    them), as Inception v3."""
    import torch
    import torchvision
    from torch import nn

    torch.manual_seed(seed)
    kwargs = ({"aux_logits": False, "init_weights": True}
              if name in ("googlenet", "inception_v3") else {})
    model = getattr(torchvision.models, name)(weights=None, **kwargs)
    if name.startswith("vgg"):
        model.avgpool = nn.Identity()
        model.classifier[0] = nn.Linear(512 * (TV_SIZE // 32) ** 2, 4096)
    elif name == "alexnet":
        model.avgpool = nn.Identity()
        model.classifier[1] = nn.Linear(256, 4096)
    return dyadic_batchnorms(model, merged_batchnorms(name, model), seed + 1).eval()


def dyadic_batchnorms(model, merged, seed):
    """``model`` with every BatchNorm's (1-D and 2-D) running statistics and affine parameters
    random, the ``merged`` ones (names) with ``eps = 0`` and values on a coarse dyadic grid, so
    that ``weight / sqrt(var)`` is a power of two and folding them is exact in float32 as in
    float64."""
    import torch
    from torch import nn

    merged = set(merged)
    gen = torch.Generator().manual_seed(seed)

    def grid(lo, hi, step, n):  # values lo, lo + step, ..., hi
        k = int(round((hi - lo) / step))
        return lo + step * torch.randint(0, k + 1, (n,), generator=gen).float()

    with torch.no_grad():
        for bn_name, m in model.named_modules():
            if not isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                continue
            c = m.num_features
            root = grid(0.5, 2.0, 1 / 16, c)  # sqrt(running_var)
            sign = torch.where(torch.rand(c, generator=gen) < 0.2, -1.0, 1.0)
            scale = sign * 2.0 ** torch.randint(-1, 2, (c,), generator=gen).float()
            m.running_var.copy_(root ** 2)
            m.weight.copy_(scale * root)  # weight / sqrt(var) = scale
            m.running_mean.copy_(grid(-1, 1, 1 / 32, c))
            m.bias.copy_(grid(-1, 1, 1 / 32, c))
            if bn_name in merged:
                m.eps = 0.0
    return model.eval()


def torch_branchy(bias=True, seed=0):
    """A torch module whose forward uses what from_torch reads besides modules: ``+`` of two
    tensors, ``torch.cat(..., 1)``, functional relu and pools, ``view(x.size(0), -1)``, a
    module applied twice; with ``bias=False`` it has no bias and no BatchNorm."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
            self.bn = nn.BatchNorm2d(8) if bias else nn.Identity()
            self.relu = nn.ReLU()
            self.block = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1, bias=bias), nn.ReLU(),
                                       nn.Conv2d(8, 8, 3, padding=1, bias=bias))
            self.side = nn.Conv2d(8, 4, 1, bias=bias)
            self.drop = nn.Dropout(0.5)
            self.fc = nn.Linear(12 * 4 * 4, 5, bias=bias)

        def forward(self, x):
            x = self.relu(self.bn(self.stem(x)))
            y = self.relu(self.block(x) + x)
            z = torch.cat([y, F.relu(self.side(x))], 1)
            z = F.max_pool2d(z, 2)
            z = F.avg_pool2d(z, 2)
            z = F.adaptive_avg_pool2d(z, (4, 4))  # the identity here: skipped
            return self.fc(self.drop(z.view(z.size(0), -1)))

    torch.manual_seed(seed)
    return Branchy().eval()


def onnx_export(module, path, shape, dynamo=True, batch=2):
    """``module`` (in float32) written to ``path`` by torch's ONNX exporter with a dynamic
    batch: the torch.export-based one (``dynamo=True``, torch's default) or the
    TorchScript-based one (``dynamo=False``)."""
    import warnings

    import torch

    x = torch.zeros((batch,) + tuple(shape))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(module, (x,), str(path), dynamo=True, input_names=["x"],
                              dynamic_shapes=({0: torch.export.Dim("n")},),
                              external_data=False, verbose=False)
        else:
            torch.onnx.export(module, (x,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "n"}})
    return path


def imported(module, shape, path, tmp_path):
    """``module`` (a float64 torch module) through ``path``: "from_torch" (the module itself),
    "onnx_dynamo" or "onnx_legacy" (a float32 copy exported with a dynamic batch, then read
    by from_onnx, which checks itself against onnxruntime)."""
    import copy

    import torch

    if path == "from_torch":
        return rp.from_torch(module, shape)
    if any(p.dtype != torch.float32 for p in module.parameters()):
        module = copy.deepcopy(module).float()
    file = onnx_export(module, tmp_path / f"{path}.onnx", shape, dynamo=path == "onnx_dynamo")
    return rp.from_onnx(file)


#: The three ways a torch module reaches relprop.
IMPORT_PATHS = ("from_torch", "onnx_dynamo", "onnx_legacy")


def relative_error(got, want):
    """The largest difference relative to the largest magnitude of ``want``."""
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


class ModelCase:
    """A torch model (``model`` in float32, ``model64`` in float64) on samples of ``shape``, an
    input ``x``, the seeds ``onehot`` (of the gradient) and ``seed`` (of Zennit's LRP), and
    what the tests compare with, each made on first use: torch's float32 forward, its float64
    gradient, Zennit's relevance of the first sample (the composite ``zennit_composite(name)``
    gives), and the networks imported through each of ``IMPORT_PATHS`` (ONNX files in
    ``tmp``).  Subclasses set those attributes and ``zennit_composite``.  (The caches are on
    the instance: functools.lru_cache on a method would keep every case, and its networks,
    alive until the end of the session.)"""

    def __init__(self):
        self._zennit, self._nets = {}, {}

    @functools.cached_property
    def forward32(self):
        import torch

        with torch.no_grad():
            return self.model(torch.from_numpy(self.x.astype(np.float32))).numpy()

    @functools.cached_property
    def gradient64(self):
        import torch

        xt = torch.from_numpy(self.x).requires_grad_(True)
        (self.model64(xt) * torch.from_numpy(self.onehot)).sum().backward()
        return xt.grad.numpy()

    def zennit(self, composite):
        import torch
        from zennit.attribution import Gradient

        if composite not in self._zennit:
            xt = torch.from_numpy(self.x[:1]).requires_grad_(True)
            with Gradient(model=self.model64,
                          composite=self.zennit_composite(composite)) as attributor:
                _, rel = attributor(xt, torch.from_numpy(self.seed[:1]))
            self._zennit[composite] = rel.detach().numpy()
        return self._zennit[composite]

    def net(self, path):
        if path not in self._nets:
            self._nets[path] = imported(self.model, self.shape, path, self.tmp)
        return self._nets[path]
