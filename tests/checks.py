"""Checks that the tests of several layer types share: an element-wise kernel pair against its
twin, thread counts and torch; an imported network against torch's forward and gradient and
the reference's; the peers' LRP (Zennit) and backprop variants (Captum); ONNX files; model
files.  Each takes what varies by layer type as arguments and asserts; the peers are imported
when a check runs."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import ops
from relprop import reference as ref

from strategies import arrays, f64, with_threads

#: relprop's backprop variants and Captum's classes for them (which hook nn.ReLU modules only).
CAPTUM_BACKPROP = {"deconvnet": "Deconvolution", "guided_backprop": "GuidedBackprop"}


def elementwise_kernel(data, name, x, args, torch_fn, kinks=(0.0,), lipschitz=1.0):
    """``ops.<name>_forward(x, *args)`` and ``ops.<name>_backward(g, x, *args)``, ``g`` drawn
    from ``data``: bitwise their NumPy twins' (``relprop.reference``), on 1 and 2 threads, and
    torch's (``torch_fn(xt)`` forward, autograd backward); the backward is the transpose of the
    forward's Jacobian, by difference quotients (step 1e-3; directions 0 within 2e-3 of the
    ``kinks``) to the rounding error of an input scaled by ``lipschitz``."""
    import torch

    forward, backward = getattr(ops, f"{name}_forward"), getattr(ops, f"{name}_backward")
    g = data.draw(arrays(x.dtype, x.shape))
    y, gx = forward(x, *args), backward(g, x, *args)
    assert_array_equal(y, getattr(ref, f"{name}_forward")(x, *args))
    assert_array_equal(gx, getattr(ref, f"{name}_backward")(g, x, *args))
    for n in (1, 2):
        assert_array_equal(with_threads(n, forward, x, *args), y)
        assert_array_equal(with_threads(n, backward, g, x, *args), gx)
    xt = torch.from_numpy(x).requires_grad_()
    yt = torch_fn(xt)
    yt.backward(torch.from_numpy(g))
    assert_array_equal(y, yt.detach().numpy())
    assert_array_equal(gx, xt.grad.numpy())
    t = 1e-3
    near = np.zeros(x.shape, bool)
    for k in kinks:
        near |= abs(x - np.float64(k)) < 2 * t
    u = np.where(near, 0, data.draw(arrays(x.dtype, x.shape)))
    ju = (f64(forward(x + t * u, *args)) - f64(y)) / t
    err = np.finfo(x.dtype).eps * lipschitz * (abs(f64(x)) + t * abs(f64(u))) / t
    assert abs(np.vdot(ju, f64(g)) - np.vdot(f64(u), f64(gx))) <= np.vdot(err, abs(f64(g))) + 1e-12


def as_torch_and_reference(module, net, x, target, composite="epsilon_plus_flat"):
    """``net``, imported from the float64 torch ``module``, on ``x`` (float64): its forward and
    its gradient of ``target`` as torch's (autograd), the gradient as the reference's, and its
    LRP with ``composite`` (a name of ``relprop.composites``) as the reference's.  Returns the
    composite's rules."""
    import torch

    xt = torch.from_numpy(x).requires_grad_()
    out = module(xt)
    out[:, target].sum().backward()
    want = out.detach().numpy()
    assert_allclose(net(x), want, rtol=1e-12, atol=1e-12 * abs(want).max())
    got, want = rp.gradient(net, x, target), xt.grad.numpy()
    assert_allclose(got, want, rtol=1e-10, atol=1e-12 * abs(want).max())
    want = ref.gradient(net, x, target)
    assert_allclose(got, want, rtol=1e-10, atol=1e-13 * abs(want).max())
    composite = rp.composites.as_composite(composite)
    rules = composite.rules(net)
    want = ref.lrp(net, x, ref.seed(target, ref.forward(net, x)[-1], scale=True), rules)
    assert_allclose(rp.lrp(net, x, target, composite), want, rtol=1e-9,
                    atol=1e-12 * abs(want).max())
    return rules


def imported_as_torch(module_type, x, path, tmp_path, target=1):
    """A ``module_type()`` (float64, seed 0) imported through ``path`` (``nets.IMPORT_PATHS``),
    its forward and its gradient of ``target`` checked against torch's on ``x`` (1e-10; 1e-5
    through ONNX, whose files hold float32 weights; the ONNX importer checks itself against
    onnxruntime).  Returns the network."""
    import torch

    import nets

    torch.manual_seed(0)
    module = module_type().double().eval()
    net = nets.imported(module, x.shape[1:], path, tmp_path)
    xt = torch.from_numpy(x).requires_grad_()
    out = module(xt)
    out[:, target].sum().backward()
    tol = 1e-10 if path == "from_torch" else 1e-5
    assert_allclose(net(x), out.detach().numpy(), rtol=tol, atol=tol)
    assert_allclose(rp.gradient(net, x, target), xt.grad.numpy(), rtol=tol, atol=tol)
    return net


def float32_as_torch(net, module, x, tol=1e-5):
    """``net`` on ``x`` in float32 (read from an ONNX file of ``module``, which holds float32
    weights, or made by from_torch in float32): torch's ``module`` on ``x`` in the module's
    dtype, to ``tol`` (relative, and of the largest output)."""
    import torch

    dtype = next(module.parameters()).dtype
    with torch.no_grad():
        want = module(torch.from_numpy(np.asarray(x)).to(dtype)).numpy()
    assert_allclose(net(np.asarray(x, np.float32)), want, rtol=tol, atol=tol * abs(want).max())


def path_checks(module, net, x, target, path, tmp_path):
    """The checks of ``net``, imported from the float64 torch ``module`` through ``path``
    (``nets.IMPORT_PATHS``): from torch, :func:`as_torch_and_reference` and
    :func:`saved_and_loaded` (returns the copy); from an ONNX file (float32 weights, checked
    against onnxruntime when read), the forward as torch's to 1e-4 (returns None)."""
    if path != "from_torch":
        float32_as_torch(net, module, x, tol=1e-4)
        return None
    as_torch_and_reference(module, net, x, target)
    return saved_and_loaded(net, tmp_path, x)


def lrp0_is_gradient_x_input(net, x, target):
    """LRP-0 (Epsilon(0) on every linear layer, no stabilizer) of a network whose activations
    are their derivative times their input, as ReLU's (relu(z) = relu'(z) z): gradient x
    input."""
    lrp0 = rp.lrp(net, x, target, rp.Composite([("linear", rp.rules.Epsilon(0))],
                                               stabilizer=0.0))
    assert_allclose(lrp0, rp.gradient_x_input(net, x, target), rtol=1e-9, atol=1e-12)


def zero_root_taylor(net, x, target):
    """Taylor's "zero" root on a positively homogeneous network (f(t x) = t f(x), t > 0: no
    biases, ReLU-like activations): gradient x input, and sum R = f_target(x)."""
    R = rp.taylor(net, x, target, root="zero")
    assert_allclose(R, rp.gradient_x_input(net, x, target), rtol=1e-9, atol=1e-12)
    assert_allclose(R.reshape(len(x), -1).sum(1), net(x)[:, target], rtol=1e-9)


def lrp_as_zennit(chain, net, x, target, composite="EpsilonPlusFlat", **kw):
    """LRP of ``target`` (seeded with its score) as Zennit's, with the composite named
    ``composite`` (a class of both ``relprop.composites`` and ``zennit.composites``, made with
    ``kw``).  ``chain`` is the torch module of ``net``, made of modules only: Zennit hooks
    modules, so a function in torch's forward would get the gradient there."""
    zc = pytest.importorskip("zennit.composites")
    import torch
    from zennit.attribution import Gradient

    out = net(x)
    seed = np.zeros_like(out)
    seed[:, target] = out[:, target]
    with Gradient(model=chain, composite=getattr(zc, composite)(**kw)) as attributor:
        _, want = attributor(torch.from_numpy(x).requires_grad_(), torch.from_numpy(seed))
    got = rp.lrp(net, x, seed, getattr(rp.composites, composite)(**kw))
    want = want.detach().numpy()
    assert_allclose(got, want, rtol=1e-7, atol=1e-10 * abs(want).max())


def backprop_as_captum(module, net, x, target, method):
    """``method`` (a key of ``CAPTUM_BACKPROP``) as Captum's on ``module`` and as the
    reference's."""
    captum = pytest.importorskip("captum.attr")
    import torch

    got = rp.explain(net, x, target, method)
    xt = torch.from_numpy(x).requires_grad_()
    with pytest.warns(UserWarning, match="backward hooks on ReLU"):
        want = getattr(captum, CAPTUM_BACKPROP[method])(module).attribute(xt, target=target)
    assert_allclose(got, want.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert_allclose(got, getattr(ref, method)(net, x, target), rtol=1e-10, atol=1e-12)


def saved_and_loaded(net, tmp_path, x):
    """``net`` written to a model file and read back: the copy's output on ``x`` is bitwise
    ``net``'s, and ``net``'s is the reference's.  Returns the copy."""
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert_array_equal(back(x), net(x))
    assert_allclose(net(x), ref.forward(net, x)[-1], rtol=1e-12)
    return back


def refused_by_from_torch(cases, shape):
    """For each ``(fn, match)`` of ``cases``, ``from_torch`` of a module computing ``fn`` (a
    function of the input, or a module) on samples of ``shape`` raises a ValueError whose
    message matches ``match``."""
    import torch

    class Apply(torch.nn.Module):
        def __init__(self, fn):
            super().__init__()
            self.fn = fn

        def forward(self, x):
            return self.fn(x)

    for fn, match in cases:
        with pytest.raises(ValueError, match=match):
            rp.from_torch(fn if isinstance(fn, torch.nn.Module) else Apply(fn), shape)
