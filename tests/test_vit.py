"""torchvision's Vision Transformer (issue 27) at a small size: the import through torch.fx
(patch embedding, tokens, class token, position embedding, encoder blocks, the head's token),
its forward pass and gradient against torch, and the constant operands of Add and Concat that
its class token and position embedding are."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import reference as ref


def _constants_graph(rng, dtype=np.float64):
    """An addition of a constant and concatenations with constants before, between and after
    the inputs, on (tokens, features) samples."""
    c = rng.normal(size=(4, 3)).astype(dtype)
    return rp.Graph([
        ("shift", rp.Add(constant=c), ["input"]),
        ("row", rp.Add(constant=rng.normal(size=3)), ["shift"]),  # broadcast over the tokens
        ("token", rp.Concat(1, [rng.normal(size=(1, 3)), None]), ["row"]),
        ("dense", rp.Dense(rng.normal(size=(3, 3))), ["token"]),
        ("both", rp.Concat(1, [None, rng.normal(size=(2, 3)), None]), ["token", "dense"]),
        ("flat", rp.Flatten(), ["both"]), ("head", rp.Dense(rng.normal(size=(2, 36))), ["flat"])],
        input_shape=(4, 3))


def test_constant_operands_match_the_reference(rng, tmp_path):
    net = _constants_graph(rng)
    x = rng.normal(size=(3, 4, 3))
    assert_allclose(net(x), ref.forward(net, x)[-1], rtol=1e-13)
    assert_allclose(rp.gradient(net, x, 1), ref.gradient(net, x, 1), rtol=1e-12, atol=1e-14)
    rules = rp.composites.as_composite("epsilon").rules(net)
    want = ref.lrp(net, x, ref.seed(1, ref.forward(net, x)[-1], scale=True), rules)
    assert_allclose(rp.lrp(net, x, 1, "epsilon"), want, rtol=1e-9, atol=1e-12)
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")
    assert_array_equal(back(x), net(x))
    assert [n.layer.config() for n in back.nodes] == [n.layer.config() for n in net.nodes]
    # float32 data with float64 constants: computed in float32
    assert net(x.astype(np.float32)).dtype == np.float32


def test_constant_operand_errors():
    with pytest.raises(TypeError, match="list of operands"):
        rp.Concat(1, [np.ones((1, 3))])
    with pytest.raises(TypeError, match="list of operands"):
        rp.Concat(1, {0: np.ones((1, 3))})
    with pytest.raises(ValueError, match="broadcasts to without growing"):
        rp.Graph([("a", rp.Add(constant=np.ones((2, 4, 3))), ["input"])], input_shape=(4, 3))
    with pytest.raises(ValueError, match="differ only on that axis"):
        rp.Graph([("c", rp.Concat(1, [np.ones((1, 2)), None]), ["input"])], input_shape=(4, 3))
    with pytest.raises(ValueError, match="takes 1 input"):
        rp.Graph([("a", rp.Add(constant=np.ones(3)), ["input", "input"])], input_shape=(4, 3))


torch = pytest.importorskip("torch")
vision_transformer = pytest.importorskip("torchvision.models.vision_transformer")


def vit(seed=0, dtype=torch.float64):
    """torchvision's VisionTransformer at a small size (32x32 images, patches of 8, two blocks
    of two heads), its parameters random (the class token too, which torchvision starts at 0)."""
    torch.manual_seed(seed)
    m = vision_transformer.VisionTransformer(image_size=32, patch_size=8, num_layers=2,
                                             num_heads=2, hidden_dim=16, mlp_dim=32,
                                             num_classes=10)
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return m.to(dtype).eval()


def test_imports_torchvisions_vit(rng):
    module = vit()
    net = rp.from_torch(module, (3, 32, 32))
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count("attention") == 2 and kinds.count("layernorm") == 5
    assert kinds.count("gelu") == 2 and kinds.count("conv2d") == 1
    token = next(n.layer for n in net.nodes if n.layer.kind == "concat")
    assert_array_equal(token.constants[0], module.class_token.detach().numpy()[0])
    pos = next(n.layer for n in net.nodes if getattr(n.layer, "constant", None) is not None)
    assert_array_equal(pos.constant, module.encoder.pos_embedding.detach().numpy()[0])
    x = rng.uniform(-1, 1, size=(2, 3, 32, 32))
    xt = torch.from_numpy(x).requires_grad_()
    out = module(xt)
    out[:, 3].sum().backward()
    assert_allclose(net(x), out.detach().numpy(), rtol=1e-12, atol=1e-13)
    g = rp.gradient(net, x, 3)
    assert_allclose(g, xt.grad.numpy(), rtol=1e-8, atol=1e-8 * np.abs(g).max())
    with torch.no_grad():
        want32 = module.float()(torch.from_numpy(x.astype(np.float32))).numpy()
    assert_allclose(net(x.astype(np.float32)), want32, atol=2e-5 * np.abs(want32).max())


def _lxt_patched(module):
    """``module`` with LXT 2.1's patches for torchvision's vision_transformer (the map
    ``lxt.efficient.monkey_patch(vision_transformer)`` applies: ``models/vit_torch.py``'s
    ``cp_LRP``, GELU's identity rule, LayerNorm's detached standard deviation, CP-LRP's detached
    queries and keys) applied to its instances, not to the classes (which would change torch
    for every later test)."""
    import types

    models = pytest.importorskip("lxt.efficient.models")
    for cls, patch in models.get_default_map(vision_transformer).items():
        fn, keep = patch.args[0], patch.keywords.get("keep_original", False)
        for m in module.modules():
            if isinstance(m, cls):
                if keep:
                    m.original_forward = m.forward
                m.forward = types.MethodType(fn, m)
    return module


def test_attnlrp_is_lxts_gradient_x_input(rng):
    """relprop's "attnlrp" with a class target (one-hot times f_c) = LXT's ``x * x.grad`` after
    ``y[0, c].backward()`` on torchvision's ViT patched by LXT (float64)."""
    net = rp.from_torch(vit(), (3, 32, 32))
    module = _lxt_patched(vit())
    x = rng.uniform(-1, 1, size=(1, 3, 32, 32))
    for c in (3, 7):
        xt = torch.from_numpy(x).requires_grad_()
        module(xt)[0, c].backward()
        want = (xt * xt.grad).detach().numpy()
        R = rp.lrp(net, x, c, "attnlrp")
        # the same algorithm (a modified gradient, LXT's 1e-10 in GELU's quotient): rounding
        assert_allclose(R, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
    assert (R != want).any()  # (two computations, not one: rounding differs)


def test_attnlrp_matches_the_reference(rng):
    net = rp.from_torch(vit(), (3, 32, 32))
    x = rng.uniform(-1, 1, size=(1, 3, 32, 32))
    for name in ("attnlrp",):
        rules = rp.composites.as_composite(name).rules(net)
        want = ref.lrp(net, x, ref.seed(5, ref.forward(net, x)[-1], scale=True), rules)
        assert_allclose(rp.lrp(net, x, 5, name), want, rtol=1e-9, atol=1e-12 * abs(want).max())


def test_attnlrp_is_a_transformers_default(rng, tmp_path):
    net = rp.from_torch(vit(), (3, 32, 32))
    x = rng.uniform(-1, 1, size=(1, 3, 32, 32))
    want = rp.lrp(net, x, 2, "attnlrp")
    assert_array_equal(rp.lrp(net, x, 2), want)
    assert_array_equal(rp.explain(net, x, 2), want)
    assert rp.methods.lrp_method(net) == "lrp.attnlrp"
    with pytest.raises(ValueError, match="node encoder.layers.encoder_layer_0.self_attention."
                                         "attention .*with the composite 'attnlrp'"):
        rp.lrp(net, x, 2, "epsilon_plus_flat")
    # relprop explain: the same default, from a model file
    from relprop import cli

    net.save(tmp_path / "vit.npz")
    np.save(tmp_path / "x.npy", x)
    assert cli.main(["explain", str(tmp_path / "vit.npz"), str(tmp_path / "x.npy"),
                     "--target", "2", "-o", str(tmp_path / "out")]) == 0
    assert_allclose(np.load(tmp_path / "out" / "relevance.npy"), want, rtol=1e-12, atol=0)


@pytest.mark.parametrize("heads, tq, tk, dk, dv, scale", [(1, 3, 4, 2, 3, None),
                                                          (3, 5, 2, 4, 2, 0.7)])
def test_attnlrp_full_rules_match_their_definitions(rng, heads, tq, tk, dk, dv, scale):
    """AttnLRP's uniform and softmax rules (relprop: gradient x input with LXT's factors) = the
    reference written from the rules' definitions (contributions, per sample and head), and
    their conservation: the values take half the relevance, the queries and keys the same
    amount, their sum what the softmax rule leaves of the other half."""
    layer = rp.Attention(heads, scale)
    q, k = rng.normal(size=(2, tq, heads * dk)), rng.normal(size=(2, tk, heads * dk))
    v = rng.normal(size=(2, tk, heads * dv))
    z, state = layer.forward(q, k, v)
    r = rng.normal(size=z.shape)
    got = rp.rules.UniformSoftmax(0.0).relevance(layer, (q, k, v), z, r, state=state)
    want = ref.uniform_softmax(q, k, v, r, heads, scale, 0.0)
    for g, w in zip(got, want):
        assert_allclose(g, w, rtol=1e-9, atol=1e-12 * np.abs(w).max())
    total = r.sum((1, 2))
    rq, rk, rv = (t.sum((1, 2)) for t in got)
    assert_allclose(rv, total / 2, rtol=1e-12)
    assert_allclose(rq, rk, rtol=1e-10)
    # the softmax rule's sum: S R_A summed less (A S summed) (R_A summed), per row
    s = _scores(q, k, heads, scale)
    a = state.reshape(s.shape)
    ra = np.einsum("nhik,nkhj,nihj->nhik", a, v.reshape(2, tk, heads, dv),
                   (r / z).reshape(2, tq, heads, dv)) / 2
    left = (s * ra).sum((1, 2, 3)) - ((a * s).sum(3) * ra.sum(3)).sum((1, 2))
    assert_allclose(rq + rk, left, rtol=1e-9)


def _scores(q, k, heads, scale):
    """The scores ``scale Q_h K_h^T``, (n, heads, tq, tk)."""
    n, tq, d = q.shape
    dk = d // heads
    scale = 1 / np.sqrt(dk) if scale is None else scale
    qh, kh = q.reshape(n, tq, heads, dk), k.reshape(n, -1, heads, dk)
    return scale * np.einsum("nihd,nkhd->nhik", qh, kh)


def _lxt_attnlrp(module):
    """``module`` with LXT's AttnLRP rules inside attention, as ``lxt.efficient.patches``'
    ``wrap_attention_forward`` puts them around the attention function of its transformers
    models (the gradient of the values divided by 2, of the queries and keys by 4), here around
    nn.MultiheadAttention, and LXT's vit_torch patches elsewhere."""
    import types

    rules = pytest.importorskip("lxt.efficient.rules")
    _lxt_patched(module)

    def forward(self, query, key, value, *args, **kwargs):
        return self.original_forward(rules.divide_gradient(query, 4),
                                     rules.divide_gradient(key, 4),
                                     rules.divide_gradient(value, 2), *args, **kwargs)

    for m in module.modules():
        if isinstance(m, torch.nn.MultiheadAttention):
            m.forward = types.MethodType(forward, m)
    return module


def test_attnlrp_full_on_vit_is_lxts_attnlrp_and_the_reference(rng):
    net = rp.from_torch(vit(), (3, 32, 32))
    module = _lxt_attnlrp(vit())
    x = rng.uniform(-1, 1, size=(1, 3, 32, 32))
    xt = torch.from_numpy(x).requires_grad_()
    module(xt)[0, 4].backward()
    want = (xt * xt.grad).detach().numpy()
    R = rp.lrp(net, x, 4, "attnlrp_full")
    assert_allclose(R, want, rtol=1e-10, atol=1e-12 * np.abs(want).max())
    assert np.abs(R - rp.lrp(net, x, 4, "attnlrp")).max() > 1e-3 * np.abs(R).max()
    rules = rp.composites.as_composite("attnlrp_full").rules(net)
    ref_R = ref.lrp(net, x, ref.seed(4, ref.forward(net, x)[-1], scale=True), rules)
    assert_allclose(R, ref_R, rtol=1e-9, atol=1e-12 * np.abs(ref_R).max())


def test_attnlrp_conserves_without_biases_and_constants(rng):
    """With every bias, LayerNorm shift, class token and position embedding zero, "attnlrp"
    conserves the class score (each rule is LRP-0 on a map without bias) but for the share
    ``1e-10 / (a + 1e-10)`` that LXT's identity rule keeps at each GELU input ``a`` (2e-10 of
    the score here), which the conservation report shows; pixel flipping runs on the
    transformer."""
    module = vit()
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("bias") or name in ("class_token", "encoder.pos_embedding"):
                p.zero_()
    net = rp.from_torch(module, (3, 32, 32))
    x = rng.uniform(-1, 1, size=(2, 3, 32, 32))
    R = rp.lrp(net, x, 6)
    report = rp.conservation(net, x, 6, R)
    assert_allclose(report["relevance"], net(x)[:, 6], rtol=1e-8)
    assert_allclose(report["difference"], 0, atol=1e-8 * np.abs(net(x)[:, 6]).max())
    # with Pass for GELU (R_in = R_out) it conserves to rounding
    exact = rp.composites.Composite([("attention", rp.rules.CPLRP(0.0)),
                                     ("linear", rp.rules.Epsilon(0.0)),
                                     ("layernorm", rp.rules.Norm(0.0))], stabilizer=0.0)
    report = rp.conservation(net, x, 6, rp.lrp(net, x, 6, exact))
    assert_allclose(report["difference"], 0, atol=1e-12 * np.abs(net(x)[:, 6]).max())
    curve = rp.metrics.pixel_flipping(net, x, R, 6, steps=4, patch=8).curves
    assert_allclose(curve[:, 0], net(x)[:, 6], rtol=1e-12)
    assert_allclose(curve[:, -1], net(np.zeros_like(x))[:, 6], rtol=1e-12)


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript", "dynamo"])
def test_onnx_export_of_attention_is_refused_with_advice(tmp_path, dynamo):
    pytest.importorskip("onnx")
    import warnings

    path = tmp_path / "vit.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(vit(dtype=torch.float32), torch.zeros(1, 3, 32, 32), path,
                          dynamo=dynamo, input_names=["x"], dynamic_axes={"x": {0: "n"}})
    with pytest.raises(ValueError, match="Softmax is only supported as the last.*from_torch"):
        rp.from_onnx(path)


@pytest.mark.parametrize("name", ["attnlrp", "attnlrp_full"])
def test_attnlrp_runs_as_a_modified_gradient(rng, name):
    """Every rule of "attnlrp" has a gradient form, so LRP walks ``g`` (``R = t * g`` at every
    tensor ``t``) and returns ``x * g``: equal to the relevance form (which divides each ``R``
    by its ``z``) in float64, tensor by tensor, and what ``rp.lrp`` returns."""
    import importlib

    L = importlib.import_module("relprop.lrp")
    net = rp.from_torch(vit(), (3, 32, 32))
    rules = rp.composites.as_composite(name).rules(net)
    assert all(r.has_gradient(node.layer) for r, node in zip(rules, net.nodes))
    x = rng.uniform(-1, 1, size=(2, 3, 32, 32))
    form = L._lrp(net, x, 4, rules, gradient=True)
    relevance = L._lrp(net, x, 4, rules, gradient=False)
    assert_allclose(form, relevance, rtol=0, atol=1e-12 * np.abs(relevance).max())
    assert_array_equal(rp.lrp(net, x, 4, name), form)
    layers = rp.lrp(net, x, 4, name, layerwise=True)
    for t, want in zip(layers.values(), L._lrp(net, x, 4, rules, True, gradient=False)):
        assert_allclose(t, want, rtol=0, atol=1e-12 * max(np.abs(want).max(), 1e-300))
    assert_array_equal(layers[net.input_name], form)


def test_attnlrp_in_float32_follows_float64(rng):
    """float32 "attnlrp" (the gradient form: no quotient ``R / z`` is formed) within float32
    rounding of float64, sample by sample (on vit_b_16 the relevance form was 8e-4 off on 2 of
    8 random samples, the gradient form 2e-6: bench/vit.py's comparison)."""
    module = vit()
    net64 = rp.from_torch(module, (3, 32, 32))
    net32 = rp.from_torch(module.float(), (3, 32, 32))
    x = rng.uniform(-1, 1, size=(8, 3, 32, 32))
    want = rp.lrp(net64, x, 4)
    got = rp.lrp(net32, x.astype(np.float32), 4)
    assert got.dtype == np.float32
    scale = np.abs(want).max(axis=(1, 2, 3))
    assert (np.abs(got - want).max(axis=(1, 2, 3)) / scale).max() < 1e-5


def test_gradient_form_needs_every_rule_without_a_stabilizer():
    """A stabilizer, or Pass through a layer with ``f(0) != 0``, leaves the relevance form."""
    gelu, sigmoid = rp.GELU(), rp.Sigmoid()
    bn = rp.BatchNorm2d(np.ones(2), np.ones(2), np.zeros(2), np.ones(2))
    assert rp.rules.Pass().has_gradient(gelu) and not rp.rules.Pass().has_gradient(sigmoid)
    assert not rp.rules.Pass().has_gradient(bn)
    assert rp.rules.Identity().has_gradient(gelu)
    assert rp.rules.Epsilon(0.0).has_gradient(None) and not rp.rules.Epsilon().has_gradient(None)
    assert rp.rules.Norm(0.0).has_gradient(None) and not rp.rules.Norm().has_gradient(None)
    assert not rp.rules.ZPlus().has_gradient(None)
    assert rp.Hardtanh(-1, 1).zero_preserving and not rp.Hardtanh(0.5, 1).zero_preserving

    class Halved(rp.rules.Pass):  # a new relevance, no gradient form of its own
        def relevance(self, layer, a, z, r, parts=None, state=None):
            return r / 2

    assert not Halved().has_gradient(gelu)
