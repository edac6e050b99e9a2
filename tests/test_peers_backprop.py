"""Cross-checks against the peers on identical weights (float64): DeconvNet and guided backprop
vs Zennit's composites and Captum; gradient, gradient x input and Integrated Gradients vs
Captum."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import relprop as rp

import nets

torch = pytest.importorskip("torch")


@st.composite
def peer_problems(draw):
    """An MLP or a CNN with max and average pooling, its torch twin, inputs, per-sample ints."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        net = nets.mlp(rng, tuple(draw(st.lists(st.integers(2, 12), min_size=2, max_size=4))))
    else:
        net = nets.cnn(rng, channels=draw(st.integers(1, 3)), size=draw(st.integers(6, 10)),
                       n_out=draw(st.integers(2, 4)))
    n = draw(st.integers(1, 4))
    x = rng.normal(size=(n,) + net.input_shape)
    target = draw(st.lists(st.integers(0, net.output_shape[0] - 1), min_size=n, max_size=n))
    return net, nets.to_torch(net), x, target


@pytest.fixture(scope="module")
def captum_attr():
    # imported outside the hypothesis-wrapped tests: importing captum raises the recursion limit
    return pytest.importorskip("captum.attr")


@pytest.fixture(scope="module")
def zennit_composites():
    return pytest.importorskip("zennit.composites")


def _t(x):
    return torch.from_numpy(np.ascontiguousarray(x)).requires_grad_(True)


def _zennit(model, composite, x, target):
    from zennit.attribution import Gradient

    with Gradient(model=model, composite=composite) as attributor:
        out = model(_t(x))
        seed = torch.nn.functional.one_hot(torch.tensor(target), out.shape[1]).to(out.dtype)
        _, grad = attributor(_t(x), seed)
    return grad.detach().numpy()


def _tol(want):
    return dict(rtol=1e-9, atol=1e-11 * (np.abs(want).max() + 1))


MODIFIED = [("deconvnet", "DeconvNet", "Deconvolution"),
            ("guided_backprop", "GuidedBackprop", "GuidedBackprop")]


@pytest.mark.parametrize("method,zennit_name,captum_name", MODIFIED, ids=[m[0] for m in MODIFIED])
@settings(max_examples=15)
@given(problem=peer_problems())
def test_modified_relu_backward_matches_zennit(zennit_composites, method, zennit_name,
                                               captum_name, problem):
    net, model, x, target = problem
    want = _zennit(model, getattr(zennit_composites, zennit_name)(), x, target)
    got = getattr(rp, method)(net, x, target)
    assert_allclose(got, want, **_tol(want))


@pytest.mark.parametrize("method,zennit_name,captum_name", MODIFIED, ids=[m[0] for m in MODIFIED])
@settings(max_examples=15)
@given(problem=peer_problems())
def test_modified_relu_backward_matches_captum(captum_attr, method, zennit_name, captum_name,
                                               problem):
    net, model, x, target = problem
    with pytest.warns(UserWarning, match="backward hooks on ReLU"):
        want = getattr(captum_attr, captum_name)(model).attribute(_t(x), target=target)
    want = want.detach().numpy()
    assert_allclose(getattr(rp, method)(net, x, target), want, **_tol(want))


@pytest.mark.parametrize("method,captum_name,kwargs", [
    ("gradient", "Saliency", {"abs": False}), ("gradient_x_input", "InputXGradient", {})])
@settings(max_examples=15)
@given(problem=peer_problems())
def test_gradient_methods_match_captum(captum_attr, method, captum_name, kwargs, problem):
    net, model, x, target = problem
    want = getattr(captum_attr, captum_name)(model).attribute(_t(x), target=target, **kwargs)
    want = want.detach().numpy()
    assert_allclose(getattr(rp, method)(net, x, target), want, **_tol(want))


@pytest.mark.parametrize("quadrature", ["riemann_middle", "riemann_left", "riemann_right",
                                        "gausslegendre", "riemann_trapezoid"])
@settings(max_examples=10)
@given(problem=peer_problems(), steps=st.integers(2, 12), random_baseline=st.booleans())
def test_integrated_gradients_matches_captum(captum_attr, quadrature, problem, steps,
                                            random_baseline):
    """Same points and weights as Captum, except Captum's trapezoid, whose weights sum to
    ``1 - 1/steps`` instead of 1: there relprop's result times ``(steps - 1) / steps``."""
    net, model, x, target = problem
    base = np.random.default_rng(steps).normal(size=x.shape) if random_baseline else None
    want = captum_attr.IntegratedGradients(model).attribute(
        _t(x), baselines=None if base is None else torch.from_numpy(base), target=target,
        n_steps=steps, method=quadrature).detach().numpy()
    got = rp.integrated_gradients(net, x, target, baseline=base, steps=steps,
                                  quadrature=quadrature)
    if quadrature == "riemann_trapezoid":
        got = got * (steps - 1) / steps
    # Captum's Riemann points come from float32 torch.linspace: 1e-7 relative on the path
    assert_allclose(got, want, rtol=1e-5, atol=1e-6 * (np.abs(want).max() + 1))
