"""The CNN families of issue 27 beyond piecewise-linear networks, torchvision's
efficientnet_b0 (SiLU, sigmoid squeeze-and-excitation gates, stochastic depth),
mobilenet_v3_small (Hardswish, Hardsigmoid gates), convnext_tiny (depthwise 7x7, permutes,
LayerNorm over channels and features, GELU, layer scale, stochastic depth) and regnet_y_400mf
(sigmoid gates), through from_torch: random weights and BatchNorms (:func:`nets.torchvision_model`),
eval mode, float64, one 32x32 sample.

* forward = torch; gradient, gradient x input, SmoothGrad (its noise redrawn here from the
  documented streams) and Integrated Gradients (Gauss-Legendre) = torch autograd within 1e-8
  of the largest value;
* ``zennit_compat=True`` (the gradient across the SE products, layer scales and LayerNorms,
  which Zennit hooks no rule on) = Zennit 0.5.1 in float64 within 1e-7 (EpsilonPlusFlat,
  EpsilonGammaBox), its BatchNorms merged (SequentialMergeBatchNorm) and the residual sums
  routed through its Sum (:class:`ResidualSumCanonizer`, written here as Zennit's ResNet one);
* default LRP (DESIGN 2.6: Pass for the activations, the Product rule for the gates, Norm for
  LayerNorm, layer scale, pooling and residual sums): on a bias-free copy (biases, BatchNorm
  shifts and means, LayerNorm biases zero) the relevance sums to ``f_c`` with LRP-0 on the
  convolutions and Dense layers and no stabilizer.  (ZPlus does not conserve on these models:
  a depthwise 3x3 window of signed inputs (after SiLU, Hardswish, GELU) has ``z+ = 0`` wherever
  each tap's weight and input differ in sign, about one output in 2^9, one in 2^4 at a corner,
  and the relevance there is dropped: 1.5% of it at one of efficientnet_b0's layers.)
"""
import copy

import numpy as np
import pytest

import relprop as rp

import nets

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
from torch import nn  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

MODELS = ["efficientnet_b0", "mobilenet_v3_small", "convnext_tiny", "regnet_y_400mf"]
SIZE = 32  # each model's strides reduce it to 1x1
SHAPE = (3, SIZE, SIZE)


class ExactHardsigmoid(nn.Module):
    """torch's float64 gradient of Hardsigmoid is float32(1/6) (3e-8 from 1/6,
    test_smooth_layers.py); the same function written with relu6 has the exact one."""

    def forward(self, x):
        return nn.functional.relu6(x + 3) / 6


def exact_autograd_model(model):
    """``model`` for torch's autograd: its Hardsigmoids as :class:`ExactHardsigmoid`."""
    model = copy.deepcopy(model)
    for name, m in list(model.named_modules()):
        if isinstance(m, nn.Hardsigmoid):
            parent, _, leaf = name.rpartition(".")
            setattr(model.get_submodule(parent), leaf, ExactHardsigmoid())
    return model


def bias_free(model):
    """A copy of ``model`` with every bias, BatchNorm shift and mean and LayerNorm bias zero."""
    model = copy.deepcopy(model)
    with torch.no_grad():
        for m in model.modules():
            if getattr(m, "bias", None) is not None:
                m.bias.zero_()
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.zero_()
    return model


@pytest.fixture(scope="module", params=MODELS)
def case(request):
    model = nets.torchvision_model(request.param).double()
    net = rp.from_torch(model, SHAPE, check=False)  # the tests compare with torch themselves
    x = np.random.default_rng(3).normal(size=(1,) + SHAPE)
    return request.param, model, net, x


def _rel(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def test_forward_and_gradients_match_autograd(case):
    name, model, net, x = case
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    assert _rel(net(x), out) <= 1e-12
    c = int(out.argmax())
    # torch's rows: x, SmoothGrad's noisy copies, IG's path points; one backward pass
    n, sigma, seed, steps = 3, 0.1, 5, 3
    noise = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(0,))) \
        .standard_normal((n,) + SHAPE)
    noisy = x + sigma * (x.max() - x.min()) * noise
    alphas, weights = np.polynomial.legendre.leggauss(steps)
    alphas, weights = (1 + alphas) / 2, weights / 2
    path = alphas.reshape(-1, 1, 1, 1) * x
    rows = torch.from_numpy(np.concatenate([x, noisy, path])).requires_grad_()
    exact_autograd_model(model)(rows)[:, c].sum().backward()
    g = rows.grad.numpy()
    want = {"gradient": g[:1], "gradient_x_input": x * g[:1],
            "smoothgrad": g[1:1 + n].mean(0, keepdims=True),
            "integrated_gradients": x * np.tensordot(weights, g[1 + n:], 1)[None]}
    got = {"gradient": rp.gradient(net, x, c), "gradient_x_input": rp.gradient_x_input(net, x, c),
           "smoothgrad": rp.smoothgrad(net, x, c, n=n, sigma=sigma, seed=seed),
           "integrated_gradients": rp.integrated_gradients(net, x, c, steps=steps,
                                                           quadrature="gausslegendre")}
    errors = {k: _rel(got[k], want[k]) for k in want}
    assert max(errors.values()) <= 1e-8, errors


def test_default_lrp_conserves_without_biases(case):
    name, model, _, x = case
    net = rp.from_torch(bias_free(model), SHAPE, check=False)
    kinds = {"mul": "product", "scale": "norm", "layernorm": "norm", "silu": "pass",
             "gelu": "pass", "hardswish": "pass", "sigmoid": "pass", "hardsigmoid": "pass",
             "add": "norm", "globalavgpool2d": "norm"}
    rules = rp.composites.EpsilonPlusFlat().rules(net)
    seen = {n.layer.kind: r.registry_name for n, r in zip(net.nodes, rules)
            if n.layer.kind in kinds}
    assert seen == {k: v for k, v in kinds.items() if k in seen} and len(seen) >= 4
    if name != "convnext_tiny":
        assert any(n.layer.kind == "mul" and n.layer.gate == 0 for n in net.nodes)
    out = net(x)[0]
    c = int(out.argmax())
    lrp0 = rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0)
    assert abs(rp.lrp(net, x, c, lrp0).sum() - out[c]) <= 1e-9 * abs(out[c])


# torch.export takes 30-50 s per model on a loaded 2-core machine: it runs on the two models
# whose patterns are new to it here (SiLU; permutes, LayerNorm, layer scale); the others'
# operators have their own tests (test_smooth_layers.py, test_products.py)
ONNX_CASES = [(name, False) for name in MODELS] + [("efficientnet_b0", True),
                                                    ("convnext_tiny", True)]


@pytest.mark.parametrize("name, dynamo", ONNX_CASES, ids=[
    f"{n}-{'torch.export' if d else 'torchscript'}" for n, d in ONNX_CASES])
def test_onnx_files_of_both_exporters(name, dynamo, tmp_path):
    """The exporters' files give from_torch's network: the same layers (SiLU written as
    Mul(x, Sigmoid(x)) read as one, the gates resolved, the layer scales), the same outputs."""
    pytest.importorskip("onnxruntime")
    model = nets.torchvision_model(name)
    path = nets.onnx_export(model, tmp_path / "m.onnx", SHAPE, dynamo=dynamo)
    got = rp.from_onnx(path)  # checks itself against onnxruntime

    def layers(g):
        return sorted(n.layer.describe() for n in g.nodes if n.layer.kind != "permute")

    assert layers(got) == layers(rp.from_torch(model, SHAPE, check=False))
    x = np.random.default_rng(3).normal(size=(1,) + SHAPE).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    assert _rel(got(x), want) <= 1e-4


# --- zennit_compat = Zennit ------------------------------------------------------------------
def _residual_sum_canonizer():
    """A Zennit canonizer that routes the four families' residual additions through
    ``zennit.layer.Sum`` (which its composites give the Norm rule), as its ResNet canonizer
    does for ResNets."""
    from torchvision.models.convnext import CNBlock
    from torchvision.models.efficientnet import MBConv
    from torchvision.models.mobilenetv3 import InvertedResidual
    from torchvision.models.regnet import ResBottleneckBlock
    from zennit.canonizers import AttributeCanonizer
    from zennit.layer import Sum

    def added(self, a, b):
        return self.canonizer_sum(torch.stack([a, b], dim=-1))

    def mbconv(self, x):  # efficientnet's MBConv, mobilenet_v3's InvertedResidual
        return added(self, self.stochastic_depth(self.block(x))
                     if hasattr(self, "stochastic_depth") else self.block(x), x)

    def cnblock(self, x):
        return added(self, self.stochastic_depth(self.layer_scale * self.block(x)), x)

    def regnet(self, x):
        return self.activation(added(self, x if self.proj is None else self.proj(x), self.f(x)))

    def attribute_map(name, module):
        if isinstance(module, (MBConv, InvertedResidual)) and module.use_res_connect:
            forward = mbconv
        elif isinstance(module, CNBlock):
            forward = cnblock
        elif isinstance(module, ResBottleneckBlock):
            forward = regnet
        else:
            return None
        return {"forward": forward.__get__(module), "canonizer_sum": Sum()}

    class ResidualSumCanonizer(AttributeCanonizer):
        def __init__(self):
            super().__init__(attribute_map)

        def copy(self):
            return ResidualSumCanonizer()

    return ResidualSumCanonizer()


def identity_pools_skipped(model, x):
    """A copy of ``model`` whose AdaptiveAvgPool2d modules that meet a 1x1 map (the identity:
    the last stages' squeeze-and-excitation pools and the head's at 32 pixels) are
    nn.Identity, as every relprop importer skips them (DESIGN 2.1); Zennit would give them
    Norm, whose stabilizer changes ``R`` by ``1e-6 / |a|``."""
    model = copy.deepcopy(model)
    ones = []
    hooks = [m.register_forward_hook(
        lambda m, inp, out, name=name: ones.append(name) if inp[0].shape[-2:] == (1, 1) else None)
        for name, m in model.named_modules() if isinstance(m, nn.AdaptiveAvgPool2d)]
    with torch.no_grad():
        model(torch.from_numpy(x))
    for h in hooks:
        h.remove()
    assert ones
    for name in ones:
        parent, _, leaf = name.rpartition(".")
        setattr(model.get_submodule(parent), leaf, nn.Identity())
    return model


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "epsilon_gamma_box"])
def test_zennit_compat_matches_zennit(case, composite):
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm

    name, model, net, x = case
    kw = {"low": -3.0, "high": 3.0} if composite == "epsilon_gamma_box" else {}
    out = net(x)
    seed = np.zeros_like(out)
    c = int(out.argmax())
    seed[0, c] = out[0, c]
    zennit_model = identity_pools_skipped(model, x)
    canonizers = [SequentialMergeBatchNorm(), _residual_sum_canonizer()]
    zcomp = {"epsilon_plus_flat": zc.EpsilonPlusFlat,
             "epsilon_gamma_box": zc.EpsilonGammaBox}[composite](canonizers=canonizers, **kw)
    xt = torch.from_numpy(x).requires_grad_()
    with Gradient(model=zennit_model, composite=zcomp) as attributor:
        _, want = attributor(xt, torch.from_numpy(seed))
    want = want.detach().numpy()
    levels = rp.lrp(net, x, seed, composite, zennit_compat=True, layerwise=True, **kw)
    got = levels[net.input_name]
    assert np.isfinite(want).all()
    if name == "convnext_tiny" and composite == "epsilon_plus_flat":
        # the stem's LayerNorm crossed as a gradient sends relevance that sums to zero over
        # the channels of each pixel, which Flat on the non-overlapping 4x4 stem adds up:
        # both heatmaps are rounding noise
        stem = np.abs(levels["features.0.0"]).max()
        assert np.abs(got).max() <= 1e-12 * stem and np.abs(want).max() <= 1e-12 * stem
        return
    assert _rel(got, want) <= 1e-7
