"""A 1-D CNN explains a signal (issue 24.3 acceptance): Conv1d-BatchNorm1d-ReLU blocks, MaxPool1d,
AvgPool1d, an AdaptiveAvgPool1d head and a Linear, through from_torch and both ONNX exporters:
forward = torch (float32, 1e-4), float64 gradient = autograd (1e-8), LRP = Zennit's
EpsilonPlusFlat, EpsilonGammaBox and EpsilonAlpha2Beta1 with SequentialMergeBatchNorm (float64,
1e-7), Conv1d in the composites' convolution slot as in Zennit's Convolution type."""
import copy
import functools

import numpy as np
import pytest

import relprop as rp

import nets

torch = pytest.importorskip("torch")
nn = torch.nn

LENGTH = 64


def signal_cnn():
    """A small 1-D CNN as people write them for ECG or audio: Conv1d-BatchNorm1d-ReLU blocks,
    a ceil-mode MaxPool1d (64 -> 32, not 31), an AvgPool1d, an AdaptiveAvgPool1d(1) head; the
    BatchNorms dyadic (folded exactly in float32 as in float64), float32 (the ONNX files)."""
    torch.manual_seed(3)
    model = nn.Sequential(
        nn.Conv1d(2, 8, 7, padding=3, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
        nn.MaxPool1d(3, 2, ceil_mode=True),
        nn.Conv1d(8, 16, 5, padding=2, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
        nn.AvgPool1d(2),
        nn.Conv1d(16, 16, 3, padding=1, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 4))
    nets.dyadic_batchnorms(model, {"1", "5", "9"}, seed=4)
    return model.eval()


COMPOSITES = ["epsilon_plus_flat", "epsilon_gamma_box", "epsilon_alpha2_beta1"]


@functools.cache
def _case():
    """The float32 model, its float64 copy (the same weights), an input, the class explained,
    torch's forward (float32) and gradient (float64), and Zennit's LRP per composite."""
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient
    from zennit.canonizers import SequentialMergeBatchNorm

    model = signal_cnn()
    model64 = copy.deepcopy(model).double()
    x = np.random.default_rng(7).uniform(-1, 1, (2, 2, LENGTH))
    with torch.no_grad():
        forward = model(torch.from_numpy(x.astype(np.float32))).numpy()
    target = int(forward[0].argmax())
    xt = torch.from_numpy(x).requires_grad_()
    model64(xt)[:, target].sum().backward()
    seed = np.zeros((1, 4))
    with torch.no_grad():
        seed[0, target] = model64(torch.from_numpy(x[:1]))[0, target].item()
    zennit = {}
    for name, comp in (("epsilon_plus_flat", zc.EpsilonPlusFlat),
                       ("epsilon_gamma_box", functools.partial(zc.EpsilonGammaBox, -3.0, 3.0)),
                       ("epsilon_alpha2_beta1", zc.EpsilonAlpha2Beta1)):
        with Gradient(model=model64,
                      composite=comp(canonizers=[SequentialMergeBatchNorm()])) as attributor:
            _, rel = attributor(torch.from_numpy(x[:1]).requires_grad_(), torch.from_numpy(seed))
        zennit[name] = rel.detach().numpy()
    return model, x, target, forward, xt.grad.numpy(), seed, zennit


OURS = {"epsilon_plus_flat": lambda: rp.composites.EpsilonPlusFlat(),
        "epsilon_gamma_box": lambda: rp.composites.EpsilonGammaBox(low=-3.0, high=3.0),
        "epsilon_alpha2_beta1": lambda: rp.composites.EpsilonAlpha2Beta1()}


def _rel(got, want):
    return float(np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max())


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_signal_cnn_matches_torch_and_zennit(tmp_path, path):
    model, x, target, forward, gradient, seed, zennit = _case()
    if path == "from_torch":
        net = rp.from_torch(model, (2, LENGTH))
    else:
        net = rp.from_onnx(nets.onnx_export(model, tmp_path / "m.onnx", (2, LENGTH),
                                            dynamo=path == "onnx_dynamo"))
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count("conv1d") == 3 and "batchnorm1d" not in kinds  # folded
    assert "maxpool1d" in kinds or "maxpool2d" in kinds
    assert _rel(net(x.astype(np.float32)), forward) <= 1e-4
    assert _rel(rp.gradient(net, x, target), gradient) <= 1e-8
    for name in COMPOSITES:
        want = zennit[name]
        assert np.isfinite(want).all() and np.abs(want).max() > 0
        assert _rel(rp.lrp(net, x[:1], seed, OURS[name]()), want) <= 1e-7, name
