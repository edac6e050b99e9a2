"""relprop's LRP against Zennit 0.5.1 on identical weights (every rule and composite), with the
direct and the Winograd convolutions.

Runs where torch and zennit are installed (the `crosscheck` extra; CI installs them).
"""
import numpy as np
import pytest

import relprop as rp
from relprop import rules as R

import nets

torch = pytest.importorskip("torch")
zc = pytest.importorskip("zennit.composites")
zr = pytest.importorskip("zennit.rules")
from zennit.attribution import Gradient  # noqa: E402
from zennit.types import Linear as ZLinear  # noqa: E402

RULES = {
    "epsilon0": (R.Epsilon(0.0), lambda: zr.Epsilon(epsilon=0.0)),
    "epsilon": (R.Epsilon(0.25), lambda: zr.Epsilon(epsilon=0.25)),
    "zplus": (R.ZPlus(), lambda: zr.ZPlus()),
    "alpha2beta1": (R.AlphaBeta(2, 1), lambda: zr.AlphaBeta(alpha=2, beta=1)),
    "alpha1beta0": (R.AlphaBeta(1, 0), lambda: zr.AlphaBeta(alpha=1, beta=0)),
    "gamma": (R.Gamma(0.25), lambda: zr.Gamma(gamma=0.25)),
    "gamma_big": (R.Gamma(2.0), lambda: zr.Gamma(gamma=2.0)),
    "zbox": (R.ZBox(-2.0, 3.0), lambda: zr.ZBox(low=-2.0, high=3.0)),
    "wsquare": (R.WSquare(), lambda: zr.WSquare()),
    "flat": (R.Flat(), lambda: zr.Flat()),
}

COMPOSITES = {
    "epsilon_plus": ({}, lambda: zc.EpsilonPlus()),
    "epsilon_plus_flat": ({}, lambda: zc.EpsilonPlusFlat()),
    "epsilon_alpha2_beta1": ({}, lambda: zc.EpsilonAlpha2Beta1()),
    "epsilon_alpha2_beta1_flat": ({}, lambda: zc.EpsilonAlpha2Beta1Flat()),
    "epsilon_gamma_box": ({"low": -3.0, "high": 3.0},
                          lambda: zc.EpsilonGammaBox(low=-3.0, high=3.0)),
    "epsilon_plus_eps": ({"epsilon": 0.1}, lambda: zc.EpsilonPlus(epsilon=0.1)),
}


def _models(rng):
    mlp = nets.mlp(rng, (20, 32, 24, 6))
    cnn = nets.cnn(rng, channels=3, size=12, n_out=6)  # conv, maxpool, strided conv, avgpool, dense
    return {"mlp": mlp, "cnn": cnn}


def _zennit(tnet, composite, x, seed):
    xt = torch.from_numpy(x).requires_grad_()
    with Gradient(model=tnet, composite=composite) as attributor:
        _, rel = attributor(xt, torch.from_numpy(seed))
    return rel.detach().numpy()


def _compare(net, x, spec, zennit_composite, dtype):
    x = x.astype(dtype)
    out = net(x)
    seed = np.zeros_like(out)
    pick = np.arange(len(x)), np.arange(len(x)) % out.shape[1]
    seed[pick] = out[pick]
    got = rp.lrp(net, x, seed, spec)
    tnet = nets.to_torch(net, "float64" if dtype == np.float64 else "float32")
    want = _zennit(tnet, zennit_composite, x, seed)
    assert got.dtype == dtype and np.isfinite(want).all()
    rel = np.abs(got - want).max() / np.abs(want).max()
    assert rel < (1e-9 if dtype == np.float64 else 1e-3), rel
    return rel


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("name", sorted(RULES))
def test_rule_matches_zennit(name, model, dtype, conv_algorithm):
    rng = np.random.default_rng(7)
    net = _models(rng)[model]
    ours, theirs = RULES[name]
    composite = zc.LayerMapComposite(layer_map=zc.layer_map_base() + [(ZLinear, theirs())])
    x = rng.uniform(-1, 1, size=(4,) + net.input_shape)
    _compare(net, x, ours, composite, dtype)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("model", ["mlp", "cnn"])
@pytest.mark.parametrize("name", sorted(COMPOSITES))
def test_composite_matches_zennit(name, model, dtype, conv_algorithm):
    rng = np.random.default_rng(11)
    net = _models(rng)[model]
    kwargs, theirs = COMPOSITES[name]
    registered = name if name in rp.composites.COMPOSITES else "epsilon_plus"
    ours = rp.composites.COMPOSITES[registered](**kwargs)
    x = rng.uniform(-1, 1, size=(4,) + net.input_shape)
    _compare(net, x, ours, theirs(), dtype)


def test_global_average_pooling_matches_zennit(conv_algorithm):
    rng = np.random.default_rng(3)
    net = rp.Sequential([rp.Conv2d(nets.conv_w(rng, 5, 2, 3), rng.normal(size=5) * 0.1, padding=1),
                         rp.ReLU(), rp.GlobalAvgPool2d(), rp.Flatten(),
                         rp.Dense(nets.dense_w(rng, 3, 5), rng.normal(size=3) * 0.1)],
                        input_shape=(2, 7, 7))
    x = rng.uniform(-1, 1, size=(3, 2, 7, 7))
    _compare(net, x, rp.composites.EpsilonPlusFlat(), zc.EpsilonPlusFlat(), np.float64)
