"""torchvision's networks through every importer: ``from_torch`` directly and ``from_onnx`` on
the files of both of torch's exporters (``dynamo=True``, the default, and ``dynamo=False``),
with a dynamic batch.  Random weights, BatchNorm statistics and affine parameters randomized
(:func:`nets.torchvision_model`).  Expected values come from torch (forward pass in float32,
autograd in float64) and Zennit 0.5.1 (LRP in float64), with the canonizers that say what
relprop does:

* ResNet, ResNeXt and Wide ResNet (torchvision's ResNet with grouped or wider bottlenecks):
  Zennit's ResNetCanonizer (BatchNorms merged, the residual sum through Zennit's Sum, which its
  composites give the Norm rule);
* RegNetX: Conv-BN pairs merged (SequentialMergeBatchNorm), the residual sum of each block
  routed through Zennit's Sum by :class:`ResidualSumCanonizer`;
* VGG: its VGGCanonizer (BatchNorms merged); AlexNet: none;
* DenseNet: the stem's BatchNorm and each dense layer's second one merged into the conv before
  it (NamedMergeBatchNorm), the others left to Zennit's Pass rule; the functional relu and
  adaptive_avg_pool2d of its forward swapped for modules, which Zennit's hooks see;
* MobileNetV2 and MnasNet: Conv-BN pairs merged (SequentialMergeBatchNorm), the
  inverted-residual addition routed through Zennit's Sum by :class:`ResidualSumCanonizer`
  (written here, as Zennit's ResNet one), the functional pool (MnasNet: ``x.mean([2, 3])``)
  swapped for a module;
* GoogLeNet: each BasicConv2d's BatchNorm merged into its conv (NamedMergeBatchNorm); its
  functional relu needs no module (the rules after it give no relevance where it is 0);
* Inception v3: as GoogLeNet, and the functional 3x3 average pool of its A, C and E blocks run
  as a module (:class:`ModulePoolCanonizer`), which Zennit gives the Norm rule as relprop does
  (its functional max pools pass the gradient in both: winner-take-all);
* SqueezeNet: none (its poolings are modules);
* ShuffleNetV2: Conv-BN pairs merged (SequentialMergeBatchNorm), its ``x.mean([2, 3])`` swapped
  for a module; its channel shuffles (view, transpose, view), chunks and concatenations are
  functions Zennit does not hook, so relevance crosses them as the gradient, as relprop's Pass
  moves it.

Where Zennit merges a BatchNorm it leaves it computing ``x / sqrt(1 + eps)``: the merged ones
have ``eps = 0`` in these models (relprop folds exactly).
"""
import json
import os
from unittest import mock

import numpy as np
import pytest

import relprop as rp

import nets

torch = pytest.importorskip("torch")
pytest.importorskip("torchvision")
zc = pytest.importorskip("zennit.composites")
from torch import nn  # noqa: E402
from zennit.attribution import Gradient  # noqa: E402
from zennit.canonizers import AttributeCanonizer, NamedMergeBatchNorm, SequentialMergeBatchNorm  # noqa: E402
from zennit.layer import Sum  # noqa: E402
from zennit.torchvision import ResNetCanonizer, VGGCanonizer  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_torch_thread")]

MODELS = ["resnet18", "resnet50", "densenet121", "mobilenet_v2", "vgg11_bn", "alexnet",
          "squeezenet1_0", "squeezenet1_1", "googlenet", "mnasnet0_5", "shufflenet_v2_x0_5",
          "shufflenet_v2_x1_0", "resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf",
          "inception_v3"]
PATHS = ["from_torch", "onnx_dynamo", "onnx_legacy"]
#: Models read through from_torch and the default exporter's files only (issue 24's zoo
#: acceptance; the legacy exporter's nodes are those of the models above)
DEFAULT_EXPORTER_ONLY = {"resnext50_32x4d", "wide_resnet50_2", "regnet_x_400mf", "inception_v3"}
CASES = [(m, p) for m in MODELS for p in PATHS
         if not (p == "onnx_legacy" and m in DEFAULT_EXPORTER_ONLY)]
#: Input sizes other than TV_SIZE: the smallest whose last feature map is 2x2 (Inception v3
#: accepts 75, the others any size, with a 1x1 map: its global average pool is then the
#: identity, which relprop skips while Zennit gives it the Norm rule, whose stabilizer moves
#: the relevance by up to 3.6e-7 of its largest value on RegNetX at 32 pixels)
SIZES = {"resnext50_32x4d": 33, "wide_resnet50_2": 33, "regnet_x_400mf": 33,
         "inception_v3": 107}
COMPOSITES = {
    "epsilon_plus_flat": (lambda: rp.composites.EpsilonPlusFlat(),
                          lambda c: zc.EpsilonPlusFlat(canonizers=c)),
    "epsilon_gamma_box": (lambda: rp.composites.EpsilonGammaBox(low=-3.0, high=3.0),
                          lambda c: zc.EpsilonGammaBox(low=-3.0, high=3.0, canonizers=c)),
    "epsilon_alpha2_beta1": (lambda: rp.composites.EpsilonAlpha2Beta1(),
                             lambda c: zc.EpsilonAlpha2Beta1(canonizers=c)),
}
SHAPE = (3, nets.TV_SIZE, nets.TV_SIZE)
TARGETS = [7, 421]  # one class per sample; LRP explains the first sample (Zennit is slow)


# --- Zennit's side ------------------------------------------------------------------------------
class ResidualSumCanonizer(AttributeCanonizer):
    """MobileNetV2's ``x + conv(x)``, MnasNet's ``layers(x) + x`` and RegNet's ``x + f(x)`` or
    ``proj(x) + f(x)`` through a Sum module (Zennit's composites give it Norm), as Zennit's
    ResNet canonizers do for the residual blocks."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        from torchvision.models.mnasnet import _InvertedResidual
        from torchvision.models.mobilenetv2 import InvertedResidual
        from torchvision.models.regnet import ResBottleneckBlock

        if isinstance(module, InvertedResidual) and module.use_res_connect:
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        if isinstance(module, _InvertedResidual) and module.apply_residual:
            return {"forward": cls.mnasnet_forward.__get__(module), "canonizer_sum": Sum()}
        if isinstance(module, ResBottleneckBlock):
            return {"forward": cls.regnet_forward.__get__(module), "canonizer_sum": Sum()}
        return None

    @staticmethod
    def forward(self, x):
        return self.canonizer_sum(torch.stack([x, self.conv(x)], dim=-1))

    @staticmethod
    def mnasnet_forward(self, x):
        return self.canonizer_sum(torch.stack([self.layers(x), x], dim=-1))

    @staticmethod
    def regnet_forward(self, x):
        skip = x if self.proj is None else self.proj(x)
        return self.activation(self.canonizer_sum(torch.stack([skip, self.f(x)], dim=-1)))

    def copy(self):
        return ResidualSumCanonizer()


class ModulePoolCanonizer(AttributeCanonizer):
    """DenseNet's, MobileNetV2's, MnasNet's and ShuffleNetV2's forward with their functional
    relu and global average pool (MnasNet, ShuffleNetV2: a mean over height and width) as
    modules, and Inception v3's blocks with their functional 3x3 average pool as a module, so
    that Zennit's hooks see them (Pass for the relu, Norm for the pools; DESIGN 2.1)."""

    def __init__(self):
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        from torchvision.models import DenseNet, MNASNet, MobileNetV2, ShuffleNetV2
        from torchvision.models.inception import InceptionA, InceptionC, InceptionE

        if isinstance(module, (InceptionA, InceptionC, InceptionE)):
            return {"_forward": cls.inception_forward.__get__(module),
                    "canonizer_pool": nn.AvgPool2d(3, stride=1, padding=1)}
        if isinstance(module, DenseNet):
            return {"forward": cls.densenet_forward.__get__(module), "canonizer_relu": nn.ReLU(),
                    "canonizer_pool": nn.AdaptiveAvgPool2d((1, 1))}
        if isinstance(module, MobileNetV2):
            return {"forward": cls.mobilenet_forward.__get__(module),
                    "canonizer_pool": nn.AdaptiveAvgPool2d((1, 1))}
        if isinstance(module, MNASNet):
            return {"forward": cls.mnasnet_forward.__get__(module),
                    "canonizer_pool": nn.AdaptiveAvgPool2d((1, 1))}
        if isinstance(module, ShuffleNetV2):
            return {"forward": cls.shufflenet_forward.__get__(module),
                    "canonizer_pool": nn.AdaptiveAvgPool2d((1, 1))}
        return None

    @staticmethod
    def densenet_forward(self, x):
        out = self.canonizer_pool(self.canonizer_relu(self.features(x)))
        return self.classifier(torch.flatten(out, 1))

    @staticmethod
    def mobilenet_forward(self, x):
        out = self.canonizer_pool(self.features(x))
        return self.classifier(torch.flatten(out, 1))

    @staticmethod
    def mnasnet_forward(self, x):
        return self.classifier(torch.flatten(self.canonizer_pool(self.layers(x)), 1))

    @staticmethod
    def shufflenet_forward(self, x):
        x = self.maxpool(self.conv1(x))
        x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
        return self.fc(torch.flatten(self.canonizer_pool(x), 1))

    @staticmethod
    def inception_forward(self, x):
        """torchvision's own block, its ``F.avg_pool2d(x, 3, 1, 1)`` run by the module."""
        from torchvision.models import inception

        with mock.patch.object(inception, "F", _AvgPoolAs(self.canonizer_pool)):
            return type(self)._forward(self, x)

    def copy(self):
        return ModulePoolCanonizer()


class _AvgPoolAs:
    """torch.nn.functional with ``avg_pool2d`` answered by ``pool`` (a module of its
    geometry)."""

    def __init__(self, pool):
        self.pool = pool

    def __getattr__(self, name):
        return getattr(torch.nn.functional, name)

    def avg_pool2d(self, x, kernel_size, stride, padding):
        assert (kernel_size, stride, padding) == (3, 1, 1)
        return self.pool(x)


def canonizers(name, model):
    if name.startswith(("resnet", "resnext", "wide_resnet")):
        return [ResNetCanonizer()]
    if name.startswith("regnet"):
        return [SequentialMergeBatchNorm(), ResidualSumCanonizer()]
    if name.startswith("vgg"):
        return [VGGCanonizer()]
    if name.startswith("densenet"):
        merges = [((n[:-len("norm0")] + "conv0",) if n.endswith("norm0") else
                   (n[:-len("norm2")] + "conv1",), n) for n in nets.merged_batchnorms(name, model)]
        return [NamedMergeBatchNorm(merges), ModulePoolCanonizer()]
    if name.startswith("mobilenet") or name.startswith("mnasnet"):
        return [SequentialMergeBatchNorm(), ResidualSumCanonizer(), ModulePoolCanonizer()]
    if name.startswith("shufflenet"):  # the shuffles, chunks and concatenations: gradients
        return [SequentialMergeBatchNorm(), ModulePoolCanonizer()]
    if name in ("googlenet", "inception_v3"):
        convs = [n for n, m in model.named_modules() if type(m).__name__ == "BasicConv2d"]
        merge = NamedMergeBatchNorm([((n + ".conv",), n + ".bn") for n in convs])
        return [merge] + ([ModulePoolCanonizer()] if name == "inception_v3" else [])
    return []


# --- one model, built once ----------------------------------------------------------------------
class Case(nets.ModelCase):
    """A torchvision model with its inputs, references and imported networks, each made on
    first use."""

    def __init__(self, name, tmp):
        super().__init__()
        self.name, self.tmp = name, tmp
        size = SIZES.get(name, nets.TV_SIZE)
        self.shape = (3, size, size)
        self.model = nets.torchvision_model(name)
        self.model64 = nets.torchvision_model(name).double()
        rng = np.random.default_rng(5)
        self.x = rng.uniform(-1, 1, (len(TARGETS),) + self.shape)
        self.seed = self.onehot = np.eye(1000)[TARGETS]

    def zennit_composite(self, name):
        return COMPOSITES[name][1](canonizers(self.name, self.model64))


#: the Case of the model under test (the tests run model by model): one model's networks alive
CURRENT = {}


@pytest.fixture(scope="module", params=CASES, ids="-".join)
def case_path(request, tmp_path_factory):
    """``(case, path)``: a model's Case, shared by its paths, and the importer's path."""
    name, path = request.param
    if name not in CURRENT:
        CURRENT.clear()
        CURRENT[name] = Case(name, tmp_path_factory.mktemp(name))
    return CURRENT[name], path


@pytest.fixture(scope="module", autouse=True)
def release_the_last_case():
    yield
    CURRENT.clear()


# the errors, for the record (RELPROP_TV_REPORT=path.json writes them)
ERRORS = {}


def _record(case, path, what, err):
    ERRORS.setdefault(f"{case.name}/{path}", {})[what] = err
    out = os.environ.get("RELPROP_TV_REPORT")
    if out:
        with open(out, "w") as f:
            json.dump(ERRORS, f, indent=1, sort_keys=True)


def test_forward_matches_torch(case_path):
    case, path = case_path
    net = case.net(path)
    assert isinstance(net, rp.Graph)
    got = net(case.x.astype(np.float32))
    assert got.dtype == np.float32
    err = nets.relative_error(got, case.forward32)
    _record(case, path, "forward", err)
    assert err <= 1e-4
    # the dynamic batch: one sample alone gives its row of the batch
    np.testing.assert_allclose(net(case.x[1:].astype(np.float32))[0], got[1], rtol=1e-5,
                               atol=1e-5 * np.abs(got).max())


def test_gradient_matches_autograd(case_path):
    case, path = case_path
    got = rp.gradient(case.net(path), case.x, case.seed)
    err = nets.relative_error(got, case.gradient64)
    _record(case, path, "gradient", err)
    assert err <= 1e-9


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
def test_lrp_matches_zennit(case_path, composite):
    case, path = case_path
    want = case.zennit(composite)
    assert np.isfinite(want).all() and np.abs(want).max() > 0
    got = rp.lrp(case.net(path), case.x[:1], case.seed[:1], COMPOSITES[composite][0]())
    err = nets.relative_error(got, want)
    _record(case, path, composite, err)
    assert err <= 1e-7


def test_identity_adaptive_pool_is_skipped_by_every_importer(tmp_path):
    """AlexNet unmodified at 224 pixels: its AdaptiveAvgPool2d(6) gets a 6x6 map, the identity,
    which from_torch and both ONNX files (an AveragePool with a 1x1 window) skip alike."""
    import torchvision

    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    shape = (3, 224, 224)
    x = np.random.default_rng(0).uniform(-1, 1, (2,) + shape).astype(np.float32)
    with torch.no_grad():
        want = model(torch.from_numpy(x)).numpy()
    nets_ = [rp.from_torch(model, shape)]
    for dynamo in (True, False):
        nets_.append(rp.from_onnx(nets.onnx_export(model, tmp_path / f"alexnet_{dynamo}.onnx",
                                                   shape, dynamo)))
    for net in nets_:
        assert [layer.kind for layer in net.layers][12:15] == ["maxpool2d", "flatten", "dense"]
        assert nets.relative_error(net(x), want) <= 1e-4


def test_upsampling_adaptive_pool_matches_torch_and_zennit():
    """VGG11-BN unmodified at 64 pixels: its AdaptiveAvgPool2d(7) spreads a 2x2 map over 7x7,
    an AdaptiveAvgPool2d node (neither exporter writes it as plain ONNX: from_torch only),
    given the Norm rule by relprop's composites and Zennit's alike."""
    import torchvision

    torch.manual_seed(0)
    model = nets.torchvision_model("vgg11_bn")
    unmodified = torchvision.models.vgg11_bn(weights=None)
    unmodified.features.load_state_dict(model.features.state_dict())  # as in the matrix
    model = unmodified.eval().double()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eps = 0.0
    net = rp.from_torch(model, SHAPE)
    assert "adaptiveavgpool2d" in [layer.kind for layer in net.layers]
    x = np.random.default_rng(1).uniform(-1, 1, (1,) + SHAPE)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = model(xt)
    out[0, 3].backward()
    assert nets.relative_error(net(x), out.detach().numpy()) <= 1e-12
    assert nets.relative_error(rp.gradient(net, x, 3), xt.grad.numpy()) <= 1e-9
    seed = np.eye(1000)[[3]]
    xt = torch.from_numpy(x).requires_grad_(True)
    with Gradient(model=model, composite=zc.EpsilonPlusFlat(canonizers=[VGGCanonizer()])) as a:
        _, want = a(xt, torch.from_numpy(seed))
    got = rp.lrp(net, x, seed, rp.composites.EpsilonPlusFlat())
    assert nets.relative_error(got, want.detach().numpy()) <= 1e-7
