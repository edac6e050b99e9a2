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
