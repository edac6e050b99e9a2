"""README's "Coming from Zennit or Captum": every row of its table, checked against the peer.

Each ``test_row_*`` builds a small torch model, its relprop twin with :func:`relprop.from_torch`,
runs the peer's call as the row writes it and the relprop call of the row, and compares them in
float64.  ``test_readme_rows_name_these_tests`` ties the table to this file: every row names one
of these tests, and every test is named by a row.
"""
import pathlib
import re

import numpy as np
import pytest
from numpy.testing import assert_allclose

import relprop as rp
from relprop.rules import Epsilon

torch = pytest.importorskip("torch")
nn = torch.nn
zc = pytest.importorskip("zennit.composites")
za = pytest.importorskip("zennit.attribution")
zcan = pytest.importorskip("zennit.canonizers")

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()
SHAPE = (3, 12, 12)


@pytest.fixture(scope="module")
def captum():
    # imported once, outside hypothesis: importing captum raises the recursion limit
    return pytest.importorskip("captum.attr")


def cnn(seed=0, max_pool=True, batch_norm=False, eps=1e-5):
    """A small VGG-style CNN in float64, eval mode: conv-relu-conv-relu-(max|avg)pool-conv-relu-
    avgpool-flatten-linear-relu-linear; with ``batch_norm``, BatchNorm (``eps``) after each
    conv and the first linear layer (random running statistics and affine parameters)."""
    torch.manual_seed(seed)

    def bn(n, kind):
        return [kind(n)] if batch_norm else []

    layers = [nn.Conv2d(3, 6, 3, padding=1), *bn(6, nn.BatchNorm2d), nn.ReLU(),
              nn.Conv2d(6, 8, 3, padding=1), *bn(8, nn.BatchNorm2d), nn.ReLU(),
              nn.MaxPool2d(2) if max_pool else nn.AvgPool2d(2),
              nn.Conv2d(8, 8, 3, padding=1), *bn(8, nn.BatchNorm2d), nn.ReLU(), nn.AvgPool2d(2),
              nn.Flatten(), nn.Linear(8 * 3 * 3, 16), *bn(16, nn.BatchNorm1d), nn.ReLU(),
              nn.Linear(16, 5)]
    model = nn.Sequential(*layers).double()
    with torch.no_grad():
        for m in model:
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.2, 0.2)
                m.eps = eps
    return model.eval()


@pytest.fixture(scope="module")
def problem():
    """(torch model, relprop twin, x in [0, 1], classes c, one-hot seed, f = net(x))."""
    model = cnn()
    net = rp.from_torch(model, SHAPE)
    x = np.random.default_rng(0).uniform(0, 1, size=(4,) + SHAPE)
    c = np.array([0, 3, 1, 4])
    f = net(x)
    onehot = np.zeros_like(f)
    onehot[np.arange(len(x)), c] = 1.0
    return model, net, x, c, onehot, f


def t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)


def zennit(attributor, model, x, seed=None, composite=None, **kw):
    """``attributor(model, composite, **kw)(x, seed)``, the relevance as NumPy."""
    with attributor(model=model, composite=composite, **kw) as a:
        _, rel = a(t(x)) if seed is None else a(t(x), torch.from_numpy(seed))
    return rel.detach().numpy()


def same(got, want, rtol=1e-9):
    """Equal to ``rtol`` relative to the largest magnitude of the peer's result (float64)."""
    assert got.dtype == np.float64 and np.isfinite(want).all()
    assert_allclose(got, want, rtol=0, atol=rtol * np.abs(want).max())


# ------------------------------------------------------------------------------- Zennit --
def test_row_zennit_gradient(problem):
    model, net, x, c, onehot, _ = problem
    same(rp.gradient(net, x, c), zennit(za.Gradient, model, x, onehot))


@pytest.mark.parametrize("name,composite,kwargs", [
    ("epsilon_plus_flat", zc.EpsilonPlusFlat, {}),
    ("epsilon_gamma_box", zc.EpsilonGammaBox, {"low": 0.0, "high": 1.0}),
    ("epsilon_alpha2_beta1", zc.EpsilonAlpha2Beta1, {})])
def test_row_zennit_composites_one_hot(problem, name, composite, kwargs):
    """One-hot attr_output: relprop with the one-hot seed as a float array, or with the int
    target divided by f_c(x)."""
    model, net, x, c, onehot, f = problem
    want = zennit(za.Gradient, model, x, onehot, composite(**kwargs))
    same(rp.lrp(net, x, onehot, name, **kwargs), want)
    scale = f[np.arange(len(x)), c].reshape(-1, 1, 1, 1)
    same(rp.lrp(net, x, c, name, **kwargs) / scale, want)


def test_row_zennit_seed_scaled_by_output(problem):
    """relprop's int target is Zennit's call with ``onehot * model(x)`` as attr_output."""
    model, net, x, c, onehot, f = problem
    want = zennit(za.Gradient, model, x, onehot * f, zc.EpsilonPlusFlat())
    same(rp.lrp(net, x, c, "epsilon_plus_flat"), want)


def test_row_zennit_without_attr_output(problem):
    """No attr_output: Zennit seeds with the whole output (the identity of the output)."""
    model, net, x, _, _, f = problem
    want = zennit(za.Gradient, model, x, None, zc.EpsilonPlusFlat())
    same(rp.lrp(net, x, net(x), "epsilon_plus_flat"), want)


@pytest.mark.parametrize("eps", [0.0, 1e-5])
def test_row_zennit_batch_norm_canonizer(problem, eps):
    """relprop folds BatchNorm exactly; Zennit's merge leaves each BatchNorm computing
    ``x / sqrt(1 + eps)`` (it resets the statistics to mean 0, variance 1 but keeps eps), so the
    maps agree to 1e-9 for eps = 0 and to about eps/2 per BatchNorm layer otherwise."""
    _, _, x, c, onehot, _ = problem
    model = cnn(seed=1, batch_norm=True, eps=eps)
    n_bn = sum(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in model)
    net = rp.from_torch(model, SHAPE)  # BatchNorm folded into the layer before
    assert n_bn == 4 and not any("batchnorm" in layer.kind for layer in net.layers)
    for name, composite, kwargs in [("epsilon_plus_flat", zc.EpsilonPlusFlat, {}),
                                    ("epsilon_gamma_box", zc.EpsilonGammaBox,
                                     {"low": 0.0, "high": 1.0})]:
        comp = composite(canonizers=[zcan.SequentialMergeBatchNorm()], **kwargs)
        want = zennit(za.Gradient, model, x, onehot, comp)
        got = rp.lrp(net, x, onehot, name, **kwargs)
        if eps == 0:
            same(got, want)
        else:
            rel = np.abs(got - want).max() / np.abs(want).max()
            assert 1e-3 * eps < rel <= n_bn * eps, rel


@pytest.mark.parametrize("n_iter", [1, 7, 20])
def test_row_zennit_integrated_gradients(problem, n_iter):
    """Zennit's path points are ``linspace(1/n, 1, n)``: relprop's riemann_right."""
    model, net, x, c, onehot, _ = problem
    want = zennit(za.IntegratedGradients, model, x, onehot, n_iter=n_iter)
    same(rp.integrated_gradients(net, x, c, steps=n_iter, quadrature="riemann_right"), want)


@pytest.mark.parametrize("method,composite", [("deconvnet", "DeconvNet"),
                                              ("guided_backprop", "GuidedBackprop")])
def test_row_zennit_deconvnet_guided_backprop(problem, method, composite):
    model, net, x, c, onehot, _ = problem
    want = zennit(za.Gradient, model, x, onehot, getattr(zc, composite)())
    same(getattr(rp, method)(net, x, c), want)


def test_row_zennit_smoothgrad_differs(problem, monkeypatch):
    """Not the same numbers, and why: given relprop's noise draws, Zennit's SmoothGrad of n_iter
    points is ``((n_iter - 1) * relprop's smoothgrad of n_iter - 1 points + gradient) / n_iter``:
    the same noise scale, but Zennit evaluates its last point without noise."""
    model, net, x, c, onehot, _ = problem
    n_iter, sigma, seed = 5, 0.2, 3
    ours = rp.smoothgrad(net, x, c, n=n_iter - 1, sigma=sigma, seed=seed)
    # relprop's draws: sample i's copies are one block from SeedSequence(seed, spawn_key=(i,))
    noise = np.stack([np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(i,)))
                      .standard_normal((n_iter - 1,) + SHAPE) for i in range(len(x))])
    draws = iter(range(n_iter - 1))
    monkeypatch.setattr(torch, "randn_like", lambda a: torch.from_numpy(noise[:, next(draws)]))
    want = zennit(za.SmoothGrad, model, x, onehot, noise_level=sigma, n_iter=n_iter)
    same(((n_iter - 1) * ours + rp.gradient(net, x, c)) / n_iter, want)
    assert np.abs(ours - want).max() > 1e-3 * np.abs(want).max()  # so they do differ


# ------------------------------------------------------------------------------- Captum --
def test_row_captum_saliency(problem, captum):
    model, net, x, c, _, _ = problem
    sal = captum.Saliency(model)
    same(np.abs(rp.gradient(net, x, c)), sal.attribute(t(x), target=c.tolist()).detach().numpy())
    same(rp.gradient(net, x, c),
         sal.attribute(t(x), target=c.tolist(), abs=False).detach().numpy())


def test_row_captum_input_x_gradient(problem, captum):
    model, net, x, c, _, _ = problem
    want = captum.InputXGradient(model).attribute(t(x), target=c.tolist()).detach().numpy()
    same(rp.gradient_x_input(net, x, c), want)


def test_row_captum_integrated_gradients(problem, captum):
    """Captum's defaults: n_steps=50, method="gausslegendre" (zero baseline)."""
    model, net, x, c, _, _ = problem
    want = captum.IntegratedGradients(model).attribute(t(x), target=c.tolist()).detach().numpy()
    # Captum computes its Gauss-Legendre points and weights in float32-rounded steps
    same(rp.integrated_gradients(net, x, c, steps=50, quadrature="gausslegendre"), want,
         rtol=1e-7)


@pytest.mark.parametrize("method,name", [("guided_backprop", "GuidedBackprop"),
                                         ("deconvnet", "Deconvolution")])
def test_row_captum_guided_backprop_deconvolution(problem, captum, method, name):
    model, net, x, c, _, _ = problem
    with pytest.warns(UserWarning, match="backward hooks on ReLU"):
        want = getattr(captum, name)(model).attribute(t(x), target=c.tolist())
    same(getattr(rp, method)(net, x, c), want.detach().numpy())


class _NoFlattenModule(nn.Module):
    """Captum's LRP refuses nn.Flatten (no rule): the same layers, flattening in forward."""

    def __init__(self, model):
        super().__init__()
        cut = next(i for i, m in enumerate(model) if isinstance(m, nn.Flatten))
        self.features, self.classifier = model[:cut], model[cut + 1:]

    def forward(self, x):
        return self.classifier(self.features(x).flatten(1))


CAPTUM_LRP = rp.Composite([("linear", Epsilon(1e-9))], stabilizer=1e-9)


def test_row_captum_lrp(problem, captum):
    """Captum's LRP with its default rules (EpsilonRule, epsilon 1e-9, on every layer) on a
    network without max pooling."""
    _, _, x, c, _, _ = problem
    model = cnn(seed=2, max_pool=False)
    net = rp.from_torch(model, SHAPE)
    want = captum.LRP(_NoFlattenModule(model)).attribute(t(x), target=c.tolist())
    same(rp.lrp(net, x, c, CAPTUM_LRP), want.detach().numpy())


def test_row_captum_lrp_max_pooling_differs(problem, captum):
    """With max pooling, Captum's EpsilonRule scales the winner's relevance by z / (z + 1e-9)
    where relprop (as Zennit) passes it whole: a relative difference of about 1e-9 / z."""
    model, net, x, c, _, _ = problem
    want = captum.LRP(_NoFlattenModule(model)).attribute(t(x), target=c.tolist())
    want = want.detach().numpy()
    got = rp.lrp(net, x, c, CAPTUM_LRP)
    same(got, want, rtol=1e-5)
    assert np.abs(got - want).max() > 1e-12 * np.abs(want).max()  # not bitwise the same


# ------------------------------------------------------------------------------- README --
def _readme_table():
    section = README.split("## Coming from Zennit or Captum", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("|")]
    assert rows[0].startswith("| their call |") and rows[1].startswith("|---")
    return [[cell.strip() for cell in row.strip("|").split(" | ")] for row in rows[2:]]


def test_readme_rows_name_these_tests():
    cited = []
    for row in _readme_table():
        assert len(row) == 3, row
        names = re.findall(r"`(test_row_\w+)`", row[2])
        assert names, f"README row without a test: {row}"
        cited += names
    tests = {name for name in globals() if name.startswith("test_row_")}
    assert set(cited) <= tests, set(cited) - tests
    assert tests <= set(cited), f"tests no README row names: {tests - set(cited)}"
