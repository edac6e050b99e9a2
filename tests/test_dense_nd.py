"""Dense on the last axis of per-sample tensors of any rank, ``(n, ..., D)`` (a Linear applied
per token or per pixel): forward and float64 gradient = torch, every LRP rule = Zennit's on the
same module (Zennit's rules apply to a Linear on any input shape) and = the reference, both ONNX
exporters, a sample's bits those of its row in a batch."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import reference as ref
from relprop import rules as R

import nets

torch = pytest.importorskip("torch")
nn = torch.nn

SHAPES = [(4, 6), (2, 3, 6)]  # (tokens, features), (height, width, channels)


class PerRow(nn.Module):
    """Linear, ReLU, Linear on the last axis, then a flatten and a Linear head."""

    def __init__(self, shape, bias=True):
        super().__init__()
        rows = int(np.prod(shape[:-1]))
        self.fc1 = nn.Linear(shape[-1], 8, bias=bias)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(8, 5, bias=bias)
        self.flat = nn.Flatten()
        self.head = nn.Linear(rows * 5, 3, bias=bias)

    def forward(self, x):
        return self.head(self.flat(self.fc2(self.act(self.fc1(x)))))


def _module(shape, bias=True, seed=0):
    torch.manual_seed(seed)
    return PerRow(shape, bias).double().eval()


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_and_gradient_match_torch(shape, rng):
    module = _module(shape)
    net = rp.from_torch(module, shape)
    assert isinstance(net, rp.Sequential) and net.layers[0].kind == "dense"
    assert net.tensor_shapes(shape)["1"] == shape[:-1] + (8,)
    x = rng.normal(size=(3,) + shape)
    xt = torch.from_numpy(x).requires_grad_()
    out = module(xt)
    out[:, 1].sum().backward()
    assert_allclose(net(x), out.detach().numpy(), rtol=1e-12, atol=1e-13)
    assert_allclose(rp.gradient(net, x, 1), xt.grad.numpy(), rtol=1e-10, atol=1e-13)
    assert net.node_flops(shape)[0] == int(np.prod(shape[:-1])) * (2 * 6 * 8 + 8)
    # a sample alone gives its row of the batch, bit for bit (float32, every row of the GEMM)
    x32 = x.astype(np.float32)
    assert_array_equal(rp.gradient(net, x32[1:2], 1), rp.gradient(net, x32, 1)[1:2])
    assert_array_equal(net(x32[2:]), net(x32)[2:])


def _rules(low, high):
    """(relprop composite, Zennit composite) pairs: each rule on every Linear, and the
    first-layer rules on the first."""
    import zennit.rules as Z
    from zennit.composites import LayerMapComposite, SpecialFirstLayerMapComposite
    from zennit.rules import Pass
    from zennit.types import Activation

    pairs = [(R.Epsilon(1e-3), Z.Epsilon(1e-3)), (R.ZPlus(), Z.ZPlus()),
             (R.Gamma(0.25), Z.Gamma(0.25)), (R.AlphaBeta(2, 1), Z.AlphaBeta(2, 1))]
    out = [(rp.Composite([("dense", ours)]),
            LayerMapComposite([(Activation, Pass()), (nn.Linear, theirs)]))
           for ours, theirs in pairs]
    firsts = [(R.Flat(), Z.Flat()), (R.WSquare(), Z.WSquare()),
              (R.ZBox(-3.0, 3.0), Z.ZBox(low=low, high=high))]
    out += [(rp.Composite([("dense", R.Epsilon())], first_map=ours),
             SpecialFirstLayerMapComposite([(Activation, Pass()), (nn.Linear, Z.Epsilon())],
                                           [(nn.Linear, theirs)])) for ours, theirs in firsts]
    return out


@pytest.mark.parametrize("shape", SHAPES)
def test_every_rule_matches_zennit_and_the_reference(shape, rng):
    pytest.importorskip("zennit")
    from zennit.attribution import Gradient

    module = _module(shape)
    net = rp.from_torch(module, shape)
    x = rng.uniform(-2, 2, size=(2,) + shape)
    out = net(x)
    seed = np.zeros_like(out)
    seed[:, 2] = out[:, 2]
    xt = torch.from_numpy(x).requires_grad_()
    low, high = torch.full_like(xt, -3.0), torch.full_like(xt, 3.0)
    for ours, theirs in _rules(low, high):
        with Gradient(model=module, composite=theirs) as attributor:
            _, want = attributor(xt, torch.from_numpy(seed))
        got = rp.lrp(net, x, seed, ours)
        want = want.detach().numpy()
        assert_allclose(got, want, rtol=1e-7, atol=1e-9 * np.abs(want).max()), ours
        mine = ref.lrp(net, x, seed, ours.rules(net))
        assert_allclose(got, mine, rtol=1e-9, atol=1e-12 * np.abs(mine).max()), ours


@pytest.mark.parametrize("shape", SHAPES)
def test_lrp0_conserves_without_biases(shape, rng):
    net = rp.from_torch(_module(shape, bias=False), shape)
    x = rng.normal(size=(3,) + shape)
    got = rp.lrp(net, x, 0, rp.Composite([("linear", R.Epsilon(0))]))
    assert_allclose(got.reshape(3, -1).sum(1), net(x)[:, 0], rtol=1e-10)


@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
def test_both_onnx_exporters(tmp_path, rng, dynamo):
    pytest.importorskip("onnxruntime")
    shape = SHAPES[1]
    module = _module(shape).float()
    net = rp.from_onnx(nets.onnx_export(module, tmp_path / "m.onnx", shape, dynamo=dynamo))
    assert net.tensor_shapes(shape)[net.nodes[0].name] == shape[:-1] + (8,)
    x = rng.normal(size=(3,) + shape).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert_allclose(net(x), want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_wrong_last_axis_is_refused():
    with pytest.raises(ValueError, match=r"expects \(\.\.\., 6\) per sample \(its last axis\), "
                                         r"got \(4, 5\)"):
        rp.Sequential([rp.Dense(np.ones((3, 6)))], input_shape=(4, 5))
