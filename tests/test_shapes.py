"""Per-sample tensors of any rank, and the layers that move their elements: Concat along any
axis, Reshape (and Flatten), Permute, Slice, Pad. Each against its NumPy twin (forward, the
vector-Jacobian product by the adjoint identity, LRP), torch (forward and float64 autograd
through from_torch) and both ONNX exporters, and through model files."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop.reference.network import layer_backward, layer_forward

import checks
import nets
from strategies import with_threads

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional


def _adjoint(layer, xs, rng):
    """``<layer(xs), g> = sum_i <x_i, vjp(g)_i>`` for a layer linear in its inputs."""
    y = layer.forward(*xs)[0]
    g = rng.normal(size=y.shape)
    back = layer.vjp(g, xs, None)
    assert_allclose(np.vdot(y, g), sum(np.vdot(x, b) for x, b in zip(xs, back)), rtol=1e-12)
    return y, back


# --- Concat along any axis ----------------------------------------------------------------------
def test_concat_along_any_axis_matches_twin_and_is_adjoint(rng):
    for shapes, axis in [([(2, 3, 4, 5), (2, 3, 1, 5)], 2), ([(2, 3, 4, 5)] * 3, 3),
                         ([(2, 4, 2, 3, 3), (2, 4, 1, 3, 3)], 2), ([(3, 2), (3, 5)], 1)]:
        xs = [rng.normal(size=s) for s in shapes]
        layer = rp.Concat(axis)
        y, back = _adjoint(layer, xs, rng)
        assert_array_equal(y, layer_forward(layer, *xs))
        assert_array_equal(y, np.concatenate(xs, axis=axis))
        for b, want in zip(layer.vjp(y, xs, None), layer_backward(layer, y, xs)):
            assert b.flags.c_contiguous
            assert_array_equal(b, want)
        assert layer.output_shape(*(s[1:] for s in shapes)) == y.shape[1:]
    with pytest.raises(ValueError, match=r"along axis 2 needs inputs that differ only on that"):
        rp.Concat(2).output_shape((3, 4, 5), (2, 4, 5))
    with pytest.raises(ValueError, match="axis must be >= 1"):
        rp.Concat(0)


class Cat(nn.Module):
    """Concatenations along the height (dim 2), the width (dim -1) and the features of a
    flattened pair."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(3, 4, (3, 1), stride=(3, 1))
        self.c = nn.Conv2d(3, 4, (1, 3))
        self.fc = nn.Linear(4 * 8 * 5 + 4 * 6 * 8, 3)

    def forward(self, x):
        a = torch.relu(self.a(x))
        h = torch.cat([a, torch.relu(self.b(x))], dim=2)
        w = torch.cat((self.c(x), a), -1)
        return self.fc(torch.cat([h.flatten(1), torch.relu(w).flatten(1)], 1))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_concat_along_any_axis_imported(tmp_path, rng, path):
    torch.manual_seed(0)
    module = Cat().double().eval()
    net = nets.imported(module, (3, 6, 5), path, tmp_path)
    axes = sorted(n.layer.axis for n in net.nodes if n.layer.kind == "concat")
    assert axes == [1, 2, 3]
    x = rng.normal(size=(3, 3, 6, 5))
    back = checks.path_checks(module, net, x, 1, path, tmp_path)
    if path == "from_torch":
        assert [n.layer.describe() for n in back.nodes if n.layer.kind == "concat"][:2] == \
            ["Concat axis 2", "Concat axis 3"]


def test_concat_of_the_batch_axis_is_refused():
    class M(nn.Module):
        def forward(self, x):
            return torch.cat([x, x], 0)

    with pytest.raises(ValueError, match=r"node 'cat'.*dim=0 is not supported: it must name an "
                                         r"axis of the samples \(1..3 or -3..-1\)"):
        rp.from_torch(M(), (2, 3, 3))


# --- Reshape ------------------------------------------------------------------------------------
def test_reshape_layer_matches_twin(rng):
    layer = rp.Reshape((2, -1, 5))
    assert layer.output_shape((6, 2, 5)) == (2, 6, 5)
    x = rng.normal(size=(3, 6, 2, 5))
    y, _ = layer.forward(x)
    assert_array_equal(y, layer_forward(layer, x))
    assert_array_equal(y, x.reshape(3, 2, 6, 5))
    g = rng.normal(size=y.shape)
    assert_array_equal(layer.backward(g, x, None), layer_backward(layer, g, [x])[0])
    assert layer.describe() == "Reshape to (2, -1, 5)"
    assert isinstance(rp.Flatten(), rp.Reshape) and rp.Flatten().config() == {}
    with pytest.raises(ValueError, match=r"cannot hold per-sample shape \(7,\)"):
        layer.output_shape((7,))
    with pytest.raises(ValueError, match="at most one of them -1"):
        rp.Reshape((-1, -1))
    with pytest.raises(TypeError, match="sequence of ints"):
        rp.Reshape(3)


class Reshapes(nn.Module):
    """Every spelling of a per-sample reshape, through tensors of rank 2 to 5 per sample."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.unflat = nn.Unflatten(2, (4, 5))
        self.conv2 = nn.Conv2d(6, 5, 1)
        self.fc = nn.Linear(5 * 4 * 5, 3)

    def forward(self, x):
        n, c, h, w = x.size()
        y = torch.relu(self.conv(x))
        y = y.view(n, 2, 3, h, w).flatten(2, 3)                # (2, 12, 5)
        y = y.reshape(-1, 6, h * w).unsqueeze(2).squeeze(2)    # (6, 20)
        y = torch.relu(self.conv2(self.unflat(y)))              # (5, 4, 5)
        y = torch.reshape(y, (x.shape[0], 5, 20)).unflatten(-1, (4, -1))
        return self.fc(torch.flatten(y, 1))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_reshapes_imported(tmp_path, rng, path):
    torch.manual_seed(1)
    module = Reshapes().double().eval()
    net = nets.imported(module, (4, 4, 5), path, tmp_path)
    assert {n.layer.kind for n in net.nodes} >= {"reshape", "flatten"}
    x = rng.normal(size=(3, 4, 4, 5))
    if path == "from_torch":  # (the exporters merge reshapes in a row)
        ranks = {len(s) for s in net.tensor_shapes(net.input_shape).values()}
        assert ranks == {1, 2, 3, 4}
    checks.path_checks(module, net, x, 2, path, tmp_path)


def test_reshapes_that_mix_samples_are_refused(tmp_path):
    cases = [(lambda x: x.view(-1, 2), r"node 'view'.*reshape to \(-1, 2\) from per-sample shape "
                                       r"\(2, 3, 3\) mixes samples"),
             (lambda x: x.reshape(2, x.size(0), 9), "reshape to .* mixes samples"),
             (lambda x: torch.flatten(x, 0), "start_dim=0 is not supported"),
             (lambda x: x.squeeze(), "squeeze.. without dims would also squeeze the batch"),
             (lambda x: x.unsqueeze(0), "dim=0 is not supported")]

    checks.refused_by_from_torch(cases, (2, 3, 3))
    # a fixed-batch file: the flatten and the identity are read as ever, other reshapes refused
    # with the advice to export with a dynamic batch
    m = Reshapes().eval()
    path = tmp_path / "fixed.onnx"
    torch.onnx.export(m, (torch.zeros(2, 4, 4, 5),), str(path), dynamo=False, input_names=["x"])
    with pytest.raises(ValueError, match=r"Reshape to per-sample shape \(2, 3, 4, 5\) in a file "
                                         r"whose batch is fixed at 2.*dynamic_axes"):
        rp.from_onnx(path)


# --- Permute ------------------------------------------------------------------------------------
def test_permute_layer_matches_twin_and_is_adjoint(rng):
    for dims, shape in [((0, 2, 1, 3, 4), (2, 3, 4, 2, 5)), ((0, 2, 3, 1), (3, 4, 2, 5)),
                        ((0, 3, 1, 2), (1, 2, 3, 4)), ((0, 1), (4, 3))]:
        layer = rp.Permute(dims)
        x = rng.normal(size=shape)
        y, back = _adjoint(layer, (x,), rng)
        assert y.flags.c_contiguous and back[0].flags.c_contiguous
        assert_array_equal(y, layer_forward(layer, x))
        assert layer.output_shape(shape[1:]) == y.shape[1:]
        g = rng.normal(size=y.shape)
        assert_array_equal(layer.backward(g, x, None), layer_backward(layer, g, [x])[0])
    with pytest.raises(ValueError, match="leaves the batch axis 0 first"):
        rp.Permute((1, 0, 2))
    with pytest.raises(ValueError, match=r"expects 3 axes per sample \(rank 3\), got shape"):
        rp.Permute((0, 2, 1, 3)).output_shape((4, 5))


class Permutes(nn.Module):
    """ShuffleNetV2's channel shuffle, a channels-last round trip, a spatial transpose and
    movedim, between convolutions (so that a wrong order changes the numbers)."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 4, (3, 1))
        self.fc = nn.Linear(4 * 3 * 4, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        n, c, h, w = y.size()
        y = y.view(n, 3, c // 3, h, w)
        y = torch.transpose(y, 1, 2).contiguous().view(n, -1, h, w)  # channel shuffle
        y = y.permute(0, 2, 3, 1).permute((0, 3, 1, 2))             # channels last and back
        y = torch.relu(self.conv2(y.transpose(2, 3)))                 # (4, 3, 4)
        y = torch.movedim(y, 1, 3).movedim(3, 1)
        return self.fc(y.flatten(1))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_permutes_imported(tmp_path, rng, path):
    torch.manual_seed(2)
    module = Permutes().double().eval()
    net = nets.imported(module, (3, 4, 5), path, tmp_path)
    assert "permute" in {n.layer.kind for n in net.nodes}
    x = rng.normal(size=(3, 3, 4, 5))
    if path == "from_torch":
        dims = [n.layer.dims for n in net.nodes if n.layer.kind == "permute"]
        assert dims == [(0, 2, 1, 3, 4), (0, 2, 3, 1), (0, 3, 1, 2), (0, 1, 3, 2),
                        (0, 2, 3, 1), (0, 3, 1, 2)]
        R = rp.lrp(net, x, 0, "epsilon_plus_flat")
        assert_array_equal(with_threads(1, rp.lrp, net, x, 0, "epsilon_plus_flat"), R)
    checks.path_checks(module, net, x, 0, path, tmp_path)


def test_permutes_of_the_batch_axis_are_refused():
    checks.refused_by_from_torch([
        (lambda x: x.permute(1, 0, 2), r"permute \(1, 0, 2\) moves the batch axis"),
        (lambda x: x.transpose(0, 1), "dim0=0 is not supported"),
        (lambda x: x.permute(0, 1, 1), "not a permutation of the 3 axes")], (3, 4))


# --- Slice --------------------------------------------------------------------------------------
def test_slice_layer_matches_twin_and_is_adjoint(rng):
    for args, shape in [((1, 1, 5, 2), (2, 6, 3)), ((2, 0, 1), (3, 2, 4, 5)),
                        ((3, 2, 5), (1, 2, 3, 5, 2)), ((1, 3, 4), (2, 4))]:
        layer = rp.Slice(*args)
        x = rng.normal(size=shape)
        y, back = _adjoint(layer, (x,), rng)
        assert y.flags.c_contiguous
        assert_array_equal(y, layer_forward(layer, x))
        assert layer.output_shape(shape[1:]) == y.shape[1:]
        g = rng.normal(size=y.shape)
        assert_array_equal(layer.backward(g, x, None), layer_backward(layer, g, [x])[0])
    with pytest.raises(ValueError, match="stop must be >= 3"):
        rp.Slice(1, 2, 2)
    with pytest.raises(ValueError, match="does not fit per-sample shape"):
        rp.Slice(2, 0, 5).output_shape((3, 4))


class Slices(nn.Module):
    """ShuffleNetV2's chunk, torch.split into sizes and into pieces of a size, and indexing
    with steps, an int (the axis dropped), None and ... ."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 6, 3, padding=1)
        self.b = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(12 + 32 + 16, 3)

    def forward(self, x):
        y = torch.relu(self.conv(x))
        y1, y2 = y.chunk(2, dim=1)
        z = torch.cat((y1, torch.relu(self.b(y2))[:, :3]), 1)
        top, bottom = torch.split(z, [2, 4], dim=2)
        left, row = bottom[:, 1:5:2], top[:, 0]
        cols = left.split(4, -1)
        return self.fc(torch.cat([row.flatten(1), cols[0].flatten(1),
                                  cols[1][..., None].flatten(1)], 1))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_slices_imported(tmp_path, rng, path):
    torch.manual_seed(3)
    module = Slices().double().eval()
    net = nets.imported(module, (4, 6, 6), path, tmp_path)
    assert "slice" in {n.layer.kind for n in net.nodes}
    x = rng.normal(size=(3, 4, 6, 6))
    if path == "from_torch":
        assert [n.layer.describe() for n in net.nodes if n.layer.kind == "slice"] == [
            "Slice axis 1 0:3", "Slice axis 1 3:6", "Slice axis 1 0:3", "Slice axis 2 0:2",
            "Slice axis 2 2:6", "Slice axis 1 1:5:2", "Slice axis 1 0:1", "Slice axis 3 0:4",
            "Slice axis 3 4:6"]
        # relevance crosses a chunk as its gradient: each half of the chunked tensor gets what
        # its branch sent to its slice
        levels = rp.lrp(net, x, 1, "epsilon_plus_flat", layerwise=True)
        halves = [n.name for n in net.nodes if n.inputs == ("relu",)]
        assert len(halves) == 2
        assert_array_equal(levels["relu"][:, :3], levels[halves[0]])
        assert_array_equal(levels["relu"][:, 3:], levels[halves[1]])
    checks.path_checks(module, net, x, 1, path, tmp_path)


def test_slices_of_the_batch_axis_are_refused():
    checks.refused_by_from_torch([
        (lambda x: x[1:], "does not take the batch axis whole"),
        (lambda x: x.chunk(2, 0), "dim=0 is not supported"),
        (lambda x: x[:, 2:2], "is empty or reversed"),
        (lambda x: x[:, [0, 1]], r"index \[0, 1\] is not supported"),
        (lambda x: torch.split(x, [1, 1], 1), r"sizes \[1, 1\] do not add up")], (3, 4))


# --- Pad ----------------------------------------------------------------------------------------
def test_pad_layer_matches_twin_and_torch(rng):
    for pads, shape in [((1, 2, 0, 3), (2, 3, 4, 5)), ((-1, 2, 1, -2), (2, 3, 4, 5)),
                        ((2, -3), (2, 4, 6)), ((1, 1, 1, 1, 1, 1), (1, 2, 3, 4)),
                        ((0, 0, -1, 0, 2, 1), (2, 3, 4, 5))]:
        layer = rp.Pad(pads)
        x = rng.normal(size=shape)
        y, back = _adjoint(layer, (x,), rng)
        assert_array_equal(y, layer_forward(layer, x))
        assert_array_equal(y, F.pad(torch.from_numpy(x), pads).numpy())
        assert layer.output_shape(shape[1:]) == y.shape[1:]
        g = rng.normal(size=y.shape)
        assert_array_equal(layer.backward(g, x, None), layer_backward(layer, g, [x])[0])
    with pytest.raises(ValueError, match="pairs"):
        rp.Pad((1, 2, 3))
    with pytest.raises(ValueError, match="leaves nothing"):
        rp.Pad((-3, 0)).output_shape((2, 3))
    with pytest.raises(ValueError, match="pads 3 axes of a sample of 2"):
        rp.Pad((1,) * 6).output_shape((2, 3))


class Pads(nn.Module):
    """nn.ZeroPad2d, F.pad with a crop, ConstantPad1d(.., 0), and a U-Net's pad of an
    upsampled map to its skip's size from shape arithmetic."""

    def __init__(self):
        super().__init__()
        self.zero = nn.ZeroPad2d((1, 0, 2, 1))
        self.conv = nn.Conv2d(3, 4, 3, stride=2)
        self.pad1 = nn.ConstantPad1d(2, 0.0)
        self.fc = nn.Linear(4 * 9 * 10 + 8 * 9, 3)

    def forward(self, x):
        skip = torch.relu(self.zero(x))                        # (3, 9, 9)
        y = torch.relu(self.conv(skip))                         # (4, 4, 4)
        dy, dx = skip.size()[2] - y.size()[2], skip.size(3) - y.size(3)
        y = F.pad(y, [dx // 2, dx - dx // 2 + 1, dy // 2, dy - dy // 2])   # (4, 9, 10)
        z = F.pad(skip.flatten(2)[:, 0], (-1, -2))              # (81,) cropped to (78,)
        z = self.pad1(z.view(z.size(0), 6, 13))[:, :, :9]       # (6, 17), sliced to (6, 9)
        return self.fc(torch.cat([y.flatten(1), z.flatten(1), z[:, :2].flatten(1)], 1))


@pytest.mark.parametrize("path", nets.IMPORT_PATHS)
def test_pads_imported(tmp_path, rng, path):
    torch.manual_seed(4)
    module = Pads().double().eval()
    net = nets.imported(module, (3, 6, 8), path, tmp_path)
    assert "pad" in {n.layer.kind for n in net.nodes}
    x = rng.normal(size=(3, 3, 6, 8))
    if path == "from_torch":
        assert [n.layer.pads for n in net.nodes if n.layer.kind == "pad"] == [
            (1, 0, 2, 1), (2, 4, 2, 3), (-1, -2), (2, 2)]
    checks.path_checks(module, net, x, 2, path, tmp_path)


def test_pads_of_other_values_and_modes_are_refused():
    checks.refused_by_from_torch([
        (lambda x: F.pad(x, (1, 1), value=1.0), "constant 1.0 is not supported"),
        (lambda x: F.pad(x, (1, 1), mode="reflect"), "mode='reflect'"),
        (nn.ConstantPad2d(1, 2.0), "constant 2.0"),
        (nn.ReflectionPad2d(1), "ReflectionPad2d is not supported")], (2, 3, 3))
