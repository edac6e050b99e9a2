"""A small U-Net explains a segmentation map (issue 24.3 acceptance): two down blocks with max
pooling, a bottleneck, two up blocks (ConvTranspose2d, or bilinear and nearest Upsample each
followed by a convolution), concatenated skips, a 1x1 convolution head giving per-pixel class
scores.  Through from_torch and both ONNX exporters: the forward pass within 1e-4 of torch
(float32), float64 gradients of a region target within 1e-8 of autograd, and LRP of the region
target equal to Zennit's (float64, 1e-7) for EpsilonPlusFlat and EpsilonGammaBox, with Zennit's
SequentialMergeBatchNorm (the BatchNorms merged exactly: eps 0, dyadic statistics).  Zennit
hooks neither the upsampling, the concatenations nor the max pooling: relevance crosses them as
the gradient, as relprop's Pass and winner-take-all move it."""
import numpy as np
import pytest

import relprop as rp

import nets

torch = pytest.importorskip("torch")
zc = pytest.importorskip("zennit.composites")
from torch import nn  # noqa: E402
from zennit.canonizers import SequentialMergeBatchNorm  # noqa: E402

pytestmark = pytest.mark.slow

SHAPE = (3, 16, 16)
CLASSES = 3
COMPOSITES = {
    "epsilon_plus_flat": (lambda: rp.composites.EpsilonPlusFlat(),
                          lambda: zc.EpsilonPlusFlat(canonizers=[SequentialMergeBatchNorm()])),
    "epsilon_gamma_box": (lambda: rp.composites.EpsilonGammaBox(low=-1.0, high=1.0),
                          lambda: zc.EpsilonGammaBox(low=-1.0, high=1.0,
                                                     canonizers=[SequentialMergeBatchNorm()])),
}


def block(c_in, c_out):
    """Two 3x3 convolutions, each with a BatchNorm and a ReLU, the convolutions without bias
    (the BatchNorm's shift is the bias: folded exactly into the float32 file too)."""
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out),
                         nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
                         nn.BatchNorm2d(c_out), nn.ReLU())


class UNet(nn.Module):
    """Encoder blocks at 16 and 8 pixels, a bottleneck at 4, decoder blocks reading their skip
    and the upsampled map below concatenated, a 1x1 head."""

    def __init__(self, up="transpose", c=8):
        super().__init__()
        self.enc1, self.pool1 = block(3, c), nn.MaxPool2d(2)
        self.enc2, self.pool2 = block(c, 2 * c), nn.MaxPool2d(2)
        self.mid = block(2 * c, 4 * c)
        if up == "transpose":
            self.up2 = nn.ConvTranspose2d(4 * c, 2 * c, 2, stride=2)
            self.up1 = nn.ConvTranspose2d(2 * c, c, 2, stride=2)
        else:
            self.up2 = nn.Sequential(nn.Upsample(scale_factor=2, mode="bilinear"),
                                     nn.Conv2d(4 * c, 2 * c, 1))
            self.up1 = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(2 * c, c, 3, padding=1))
        self.dec2, self.dec1 = block(4 * c, 2 * c), block(2 * c, c)
        self.head = nn.Conv2d(c, CLASSES, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool1(e1))
        m = self.mid(self.pool2(e2))
        d2 = self.dec2(torch.cat([e2, self.up2(m)], dim=1))
        d1 = self.dec1(torch.cat([e1, self.up1(d2)], dim=1))
        return self.head(d1)


class Case(nets.ModelCase):
    """A U-Net (random weights, dyadic BatchNorms), an input, the region target of class 1 on
    a rectangle, torch's and Zennit's references, each imported network made on first use."""

    def __init__(self, up, tmp):
        super().__init__()
        torch.manual_seed(3)
        model = UNet(up)
        bns = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
        self.model = nets.dyadic_batchnorms(model, bns, 4)
        self.model64 = nets.dyadic_batchnorms(UNet(up), bns, 4).double()
        self.model64.load_state_dict(self.model.state_dict())
        self.tmp, self.shape = tmp, SHAPE
        self.x = np.random.default_rng(6).uniform(-1, 1, (2,) + SHAPE)
        with torch.no_grad():
            out = self.model64(torch.from_numpy(self.x)).numpy()
        mask = np.zeros(SHAPE[1:], bool)
        mask[3:11, 5:14] = True
        self.seed = rp.targets.region(out, 1, mask)
        self.onehot = rp.targets.region(out, 1, mask, scale=False)

    def zennit_composite(self, name):
        return COMPOSITES[name][1]()


@pytest.fixture(scope="module", params=["transpose", "upsample"])
def case(request, tmp_path_factory):
    return Case(request.param, tmp_path_factory.mktemp(request.param))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_forward_matches_torch(case, path):
    net = case.net(path)
    kinds = {n.layer.kind for n in net.nodes}
    assert {"concat", "maxpool2d"} <= kinds
    assert ("convtranspose2d" in kinds) == (case.model.up1.__class__ is nn.ConvTranspose2d)
    assert net.output_shape == (CLASSES,) + SHAPE[1:]
    assert nets.relative_error(net(case.x.astype(np.float32)), case.forward32) <= 1e-4


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_gradient_of_a_region_matches_autograd(case, path):
    got = rp.gradient(case.net(path), case.x, case.onehot)
    assert nets.relative_error(got, case.gradient64) <= 1e-8


@pytest.mark.parametrize("composite", sorted(COMPOSITES))
@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_lrp_of_a_region_matches_zennit(case, path, composite):
    want = case.zennit(composite)
    assert np.isfinite(want).all() and np.abs(want).max() > 0
    got = rp.lrp(case.net(path), case.x[:1], case.seed[:1], COMPOSITES[composite][0]())
    assert nets.relative_error(got, want) <= 1e-7
