"""Importers: torch, ONNX and scikit-learn models give the same outputs in relprop as in their
own framework (the peer computes the expected values), and unsupported models fail clearly."""
import importlib
import warnings

import numpy as np
import pytest

import relprop

import nets


def _optional(name):
    try:
        return importlib.import_module(name)
    except ImportError:
        return None


torch = _optional("torch")
onnx = _optional("onnx")
sklearn_nn = _optional("sklearn.neural_network")
needs_torch = pytest.mark.skipif(torch is None, reason="needs torch")
needs_onnx = pytest.mark.skipif(onnx is None, reason="needs onnx")
needs_sklearn = pytest.mark.skipif(sklearn_nn is None, reason="needs scikit-learn")
nn = torch.nn if torch is not None else None


def _rel_err(got, want):
    return np.abs(np.asarray(got, np.float64) - want).max() / np.abs(want).max()


# ----------------------------------------------------------------------------------- torch --
def _with_running_stats(module, shape, seed=0):
    """Give every BatchNorm non-trivial running statistics and affine parameters."""
    gen = torch.Generator().manual_seed(seed)
    module.train()
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                m.momentum = 1.0
                if m.affine:
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                    m.bias.uniform_(-0.5, 0.5, generator=gen)
        module(torch.rand((16,) + shape, generator=gen) * 2 - 0.5)
    return module.eval()


def _torch_cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 6, 3, stride=2, padding=1), nn.BatchNorm2d(6), nn.ReLU(),
        nn.Sequential(nn.Conv2d(6, 8, (3, 2), padding=(1, 0), bias=False),
                      nn.BatchNorm2d(8, affine=False), nn.ReLU(inplace=True)),
        nn.Dropout2d(0.3), nn.MaxPool2d(2, stride=1), nn.AvgPool2d(2, padding=1),
        nn.Identity(), nn.Flatten(),
        nn.Linear(8 * 3 * 2, 12), nn.BatchNorm1d(12), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(12, 5),
    )


CNN_SHAPE = (3, 12, 10)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_from_torch_matches_torch(dtype):
    dtype = getattr(torch, dtype)
    module = _with_running_stats(_torch_cnn(), CNN_SHAPE).to(dtype)
    net = relprop.from_torch(module, CNN_SHAPE)
    # BatchNorm folded, Dropout/Identity skipped
    assert [layer.kind for layer in net.layers] == ["conv2d", "relu", "conv2d", "relu",
                                                   "maxpool2d", "avgpool2d", "flatten", "dense",
                                                   "relu", "dense"]
    x = np.random.default_rng(1).uniform(-1, 2, (7,) + CNN_SHAPE)
    x = x.astype(np.float32 if dtype == torch.float32 else np.float64)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    got = net(x)
    assert got.dtype == x.dtype
    assert _rel_err(got, want) <= (1e-5 if dtype == torch.float32 else 1e-12)


@needs_torch
def test_from_torch_gradient_matches_autograd():
    module = _with_running_stats(_torch_cnn(), CNN_SHAPE).double()
    net = relprop.from_torch(module, CNN_SHAPE)
    x = np.random.default_rng(2).uniform(0, 1, (4,) + CNN_SHAPE)
    xt = torch.from_numpy(x).requires_grad_(True)
    module(xt)[:, 3].sum().backward()
    np.testing.assert_allclose(relprop.gradient(net, x, 3), xt.grad.numpy(), rtol=1e-9,
                               atol=1e-12)


@needs_torch
def test_from_torch_global_pool_and_training_mode_restored():
    torch.manual_seed(3)
    module = nn.Sequential(nn.Conv2d(2, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d((1, 1)),
                           nn.Flatten(), nn.Linear(4, 3))
    module.train()
    net = relprop.from_torch(module, (2, 6, 6))
    assert module.training and all(m.training for m in module.modules())
    assert net.layers[2].kind == "globalavgpool2d"
    x = np.random.default_rng(0).standard_normal((3, 2, 6, 6)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert _rel_err(net(x), want) <= 1e-5


@needs_torch
def test_from_torch_adaptive_pool_as_fixed_pooling():
    torch.manual_seed(4)
    module = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d((2, 3)),
                           nn.AdaptiveAvgPool2d((2, 3)), nn.Flatten(), nn.Linear(18, 2))
    net = relprop.from_torch(module, (2, 4, 6))
    assert [layer.kind for layer in net.layers] == ["conv2d", "relu", "avgpool2d", "flatten",
                                                   "dense"]
    assert net.layers[2].kernel_size == (2, 2)  # the second pool is the identity: dropped
    x = np.random.default_rng(5).standard_normal((3, 2, 4, 6)).astype(np.float32)
    with torch.no_grad():
        want = module(torch.from_numpy(x)).numpy()
    assert _rel_err(net(x), want) <= 1e-5


@needs_torch
def test_from_torch_same_padding_and_single_module():
    module = nn.Sequential(nn.Conv2d(1, 2, 5, padding="same"), nn.ReLU())
    net = relprop.from_torch(module, (1, 7, 7))
    assert net.layers[0].padding == (2, 2)
    lin = nn.Linear(4, 2)
    assert relprop.from_torch(lin, (4,)).layers[0].kind == "dense"


@needs_torch
@pytest.mark.parametrize("module, shape, match", [
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.Sequential(nn.ELU())), (4,),
     r"module '1\.0' \(ELU\): the activation ELU is not supported"),
    (lambda: nn.Sequential(nn.Linear(4, 4), nn.Hardshrink()), (4,),
     r"module '1' \(Hardshrink\): the activation Hardshrink is not supported"),
    (lambda: nn.Sequential(nn.Conv2d(2, 2, 3, padding=1, padding_mode="reflect")), (2, 8, 8),
     "padding_mode"),
    (lambda: nn.Sequential(nn.Conv2d(1, 1, 4, padding="same")), (1, 8, 8), "asymmetric"),
    (lambda: nn.Sequential(nn.MaxPool2d(2, return_indices=True)), (1, 5, 5), "return_indices"),
    (lambda: nn.Sequential(nn.MaxPool2d(3, dilation=2)), (1, 8, 8), "dilation"),
    (lambda: nn.Sequential(nn.AvgPool2d(3, padding=1, divisor_override=2)), (1, 8, 8),
     "divisor_override"),
    (lambda: nn.Sequential(nn.Flatten(0)), (4,), "start_dim"),
    (lambda: nn.Sequential(nn.BatchNorm2d(4, track_running_stats=False)), (4, 3, 3),
     "track_running_stats"),
    (lambda: nn.Sequential(nn.Linear(4, 3)), (5,), "module '0' .*expects"),
])
def test_from_torch_unsupported(module, shape, match):
    with pytest.raises(ValueError, match=match):
        relprop.from_torch(module(), shape)


@needs_torch
def test_from_torch_constant_offset_names_the_node():
    class Shifted(nn.Sequential):
        def forward(self, x):
            return super().forward(x) + 1.0

    for check in (True, False):
        with pytest.raises(ValueError, match=r"torch.fx node 'add'.*adds tensor '0' and 1.0"):
            relprop.from_torch(Shifted(nn.Linear(4, 3)), (4,), check=check)


@needs_torch
def test_from_torch_not_a_module():
    with pytest.raises(TypeError, match="torch.nn.Module"):
        relprop.from_torch([1, 2], (4,))
    with pytest.raises(ValueError, match="GRU"):
        relprop.from_torch(nn.GRU(4, 4), (4,))


@needs_torch
def test_from_torch_chain_is_a_sequential():
    module = _with_running_stats(_torch_cnn(), CNN_SHAPE)
    net = relprop.from_torch(module, CNN_SHAPE)
    assert type(net) is relprop.Sequential
    assert [n.name for n in net.nodes] == [str(i) for i in range(len(net.nodes))]


BRANCHY_SHAPE = (3, 16, 16)


@needs_torch
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_from_torch_graph_names_and_matches_torch(dtype):
    module = _with_running_stats(nets.torch_branchy(), BRANCHY_SHAPE).to(getattr(torch, dtype))
    module.train()
    net = relprop.from_torch(module, BRANCHY_SHAPE)
    assert module.training and all(m.training for m in module.modules())  # mode kept
    assert type(net) is relprop.Graph
    assert [(n.name, n.layer.kind, n.inputs) for n in net.nodes] == [
        ("stem", "conv2d", ("input",)),  # the BatchNorm folded in
        ("relu", "relu", ("stem",)),
        ("block.0", "conv2d", ("relu",)), ("block.1", "relu", ("block.0",)),
        ("block.2", "conv2d", ("block.1",)),
        ("add", "add", ("block.2", "relu")),
        ("relu_1", "relu", ("add",)),  # the module relu applied again: torch.fx's name
        ("side", "conv2d", ("relu",)),
        ("relu_2", "relu", ("side",)),  # F.relu
        ("cat", "concat", ("relu_1", "relu_2")),
        ("max_pool2d", "maxpool2d", ("cat",)),
        ("avg_pool2d", "avgpool2d", ("max_pool2d",)),  # the identity adaptive pool skipped
        ("view", "flatten", ("avg_pool2d",)),  # Dropout skipped
        ("fc", "dense", ("view",)),
    ]
    module.eval()
    x = np.random.default_rng(1).uniform(-1, 1, (3,) + BRANCHY_SHAPE).astype(dtype)
    xt = torch.from_numpy(x).requires_grad_(True)
    out = module(xt)
    out[:, 2].sum().backward()
    got = net(x)
    assert got.dtype == x.dtype
    assert _rel_err(got, out.detach().numpy()) <= (1e-5 if dtype == "float32" else 1e-12)
    if dtype == "float64":
        np.testing.assert_allclose(relprop.gradient(net, x, 2), xt.grad.numpy(), rtol=1e-9,
                                   atol=1e-12)


@needs_torch
def test_from_torch_activation_and_pool_spellings():
    import torch.nn.functional as F

    class Spellings(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=2, dilation=2, groups=2)
            self.act = nn.Hardtanh(0.0, 6.0)

        def forward(self, x):
            x = self.act(self.conv(x))
            x = F.relu6(x) + torch.clamp(x, 0, 6) + F.hardtanh(x, 0.0, 6.0) + x.clamp(min=0)
            x = torch.relu(x).relu()
            x = F.adaptive_avg_pool2d(x, 1)
            return torch.flatten(x, 1)

    net = relprop.from_torch(Spellings(), (2, 5, 5), check=False)  # kernels: see the kernels branch
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds == ["conv2d", "relu6", "relu6", "relu6", "add", "relu6", "add", "relu", "add",
                     "relu", "relu", "globalavgpool2d", "flatten"]
    conv = net.nodes[0].layer
    assert (conv.groups, conv.dilation, conv.padding) == (2, (2, 2), (2, 2))


@needs_torch
def test_from_torch_unsupported_graph_parts_name_the_node():
    import torch.nn.functional as F

    def module(forward, **parts):
        class M(nn.Module):
            def __init__(self):
                super().__init__()
                self.conv = nn.Conv2d(2, 2, 1)
                for k, v in parts.items():
                    setattr(self, k, v)

            def forward(self, x):
                return forward(self, x)
        return M()

    cases = [
        (lambda s, x: torch.erf(s.conv(x)), r"node 'erf'.*function torch.erf is not"),
        (lambda s, x: s.conv(x).exp(), r"node 'exp'.*method .exp\(\) is not"),
        (lambda s, x: torch.cat([s.conv(x), x], 0), "node 'cat'.*dim=0"),
        (lambda s, x: torch.flatten(s.conv(x), 0), "node 'flatten'.*start_dim=0"),
        (lambda s, x: s.conv(x).view(2, x.size(0), -1), r"node 'view'.*mixes samples"),
        (lambda s, x: s.conv(x) / 2, "node 'truediv'.*operator.truediv is not supported"),
        (lambda s, x: F.elu(s.conv(x)), "elu is not supported"),
        (lambda s, x: F.hardtanh(s.conv(x), 1.0, -1.0),
         r"hardtanh\(1.0, -1.0\): Hardtanh needs min_val < max_val"),
        (lambda s, x: torch.clamp(s.conv(x), min=s.offset), "min must be a constant"),
    ]
    for forward, match in cases:
        with pytest.raises(ValueError, match=match):
            relprop.from_torch(module(forward, offset=nn.Parameter(torch.ones(2, 1, 1)),
                                      wide=nn.Parameter(torch.ones(3, 2, 4, 4))), (2, 4, 4))

    def data_dependent(s, x):
        y = s.conv(x)
        return y if y.sum() > 0 else -y

    with pytest.raises(ValueError, match="torch.fx cannot trace M"):
        relprop.from_torch(module(data_dependent), (2, 4, 4))

    class TwoInputs(nn.Module):
        def forward(self, x, y):
            return x + y

    with pytest.raises(ValueError, match="one input tensor"):
        relprop.from_torch(TwoInputs(), (2,))

    class Nothing(nn.Module):
        def forward(self, x):
            return torch.flatten(x, 1)

    with pytest.raises(ValueError, match="no layers"):
        relprop.from_torch(Nothing(), (4,))


# ------------------------------------------------------------------------------------ ONNX --
if onnx is not None:
    from onnx import TensorProto, helper, numpy_helper


def _export(module, shape, path, dynamo=True):
    """``module`` written to ``path`` by torch's ONNX exporter: the torch.export-based one
    (``dynamo=True``, torch's default; needs onnxscript) or the TorchScript-based one."""
    module.eval()
    if dynamo:
        torch.onnx.export(module, (torch.zeros((2,) + shape),), str(path), dynamo=True,
                          input_names=["x"], dynamic_shapes=({0: torch.export.Dim("n")},),
                          external_data=False, verbose=False)
    else:
        torch.onnx.export(module, (torch.zeros((2,) + shape),), str(path), dynamo=False,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return path


def _ort(path_or_model, x):
    ort = pytest.importorskip("onnxruntime")
    data = path_or_model if isinstance(path_or_model, (str, bytes)) else \
        path_or_model.SerializeToString()
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


@needs_torch
@needs_onnx
@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
def test_from_onnx_torch_export_matches_torch_and_onnxruntime(tmp_path, dynamo):
    module = _with_running_stats(_torch_cnn(), CNN_SHAPE)
    path = _export(nn.Sequential(module, nn.Softmax(dim=1)), CNN_SHAPE, tmp_path / "m.onnx",
                   dynamo)
    net = relprop.from_onnx(path)
    x = np.random.default_rng(4).uniform(-1, 2, (5,) + CNN_SHAPE).astype(np.float32)
    with torch.no_grad():
        logits = module(torch.from_numpy(x)).numpy()
    got = net(x)
    assert _rel_err(got, logits) <= 1e-5  # Softmax dropped: relprop explains the logits
    e = np.exp(got - got.max(axis=1, keepdims=True))
    np.testing.assert_allclose(e / e.sum(axis=1, keepdims=True), _ort(str(path), x), rtol=1e-5,
                               atol=1e-7)
    # also from bytes and from a ModelProto
    assert len(relprop.from_onnx(path.read_bytes())) == len(net)
    assert len(relprop.from_onnx(onnx.load(str(path)))) == len(net)


def _graph(nodes, inits, in_shape, out_shape, name="g", batch="n"):
    g = helper.make_graph(
        nodes, name, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, *out_shape])],
        [numpy_helper.from_array(np.asarray(v, np.int64 if np.asarray(v).dtype.kind == "i"
                                            else np.float32), k) for k, v in inits.items()])
    return helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])


def _handmade(rng):
    """Conv -> BatchNormalization -> Relu -> AveragePool(pads) -> MaxPool(strides 1) -> Dropout
    -> Identity -> Reshape -> MatMul + Add -> Relu -> Gemm(transB=0, alpha, beta) -> GAP-free."""
    inits = {
        "w": rng.standard_normal((4, 2, 3, 3)), "b": rng.standard_normal(4),
        "s": rng.uniform(0.5, 1.5, 4), "sh": rng.standard_normal(4),
        "m": rng.standard_normal(4), "v": rng.uniform(0.5, 2, 4),
        "shape": np.array([0, -1]), "mm": rng.standard_normal((36, 7)),
        "mb": rng.standard_normal((1, 7)), "gw": rng.standard_normal((7, 3)),
        "gb": rng.standard_normal(3),
    }
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "s", "sh", "m", "v"], ["bn"], name="bn",
                         epsilon=1e-3),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("AveragePool", ["r"], ["ap"], name="avg", kernel_shape=[2, 2],
                         strides=[2, 2], pads=[1, 1, 1, 1], count_include_pad=1),
        helper.make_node("MaxPool", ["ap"], ["mp"], name="max", kernel_shape=[2, 2]),
        helper.make_node("Dropout", ["mp"], ["d"], name="drop"),
        helper.make_node("Identity", ["d"], ["i"], name="id"),
        helper.make_node("Reshape", ["i", "shape"], ["f"], name="flat"),
        helper.make_node("MatMul", ["f", "mm"], ["mmo"], name="matmul"),
        helper.make_node("Add", ["mmo", "mb"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "gw", "gb"], ["y"], name="gemm", alpha=0.5, beta=2.0),
    ]
    return _graph(nodes, inits, (2, 7, 7), (3,))


@needs_onnx
def test_from_onnx_handmade_graph_matches_onnxruntime():
    rng = np.random.default_rng(5)
    model = _handmade(rng)
    net = relprop.from_onnx(model)
    assert [layer.kind for layer in net.layers] == ["conv2d", "relu", "avgpool2d", "maxpool2d",
                                                   "flatten", "dense", "relu", "dense"]
    x = rng.standard_normal((6, 2, 7, 7)).astype(np.float32)
    assert _rel_err(net(x), _ort(model, x)) <= 1e-5


@needs_onnx
def test_from_onnx_gemm_transb_and_global_pool():
    rng = np.random.default_rng(6)
    model = _graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", strides=[2, 2]),
         helper.make_node("GlobalAveragePool", ["c"], ["g"], name="gap"),
         helper.make_node("Flatten", ["g"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="gemm", transB=1)],
        {"w": rng.standard_normal((5, 3, 3, 3)), "gw": rng.standard_normal((2, 5)),
         "gb": rng.standard_normal((1, 2))}, (3, 9, 9), (2,))
    net = relprop.from_onnx(model)
    x = rng.standard_normal((4, 3, 9, 9)).astype(np.float32)
    assert _rel_err(net(x), _ort(model, x)) <= 1e-5


@needs_onnx
@pytest.mark.parametrize("shape,kind", [((3, 9, 9), "MaxPool2d 9"), ((3, 9), "MaxPool1d 9")])
def test_from_onnx_global_max_pool(shape, kind):
    """GlobalMaxPool (other exporters than torch's write it) of an image or a signal is the max
    pooling whose window is the whole input."""
    rng = np.random.default_rng(6)
    model = _graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1] * 2 * len(shape[1:])),
         helper.make_node("GlobalMaxPool", ["c"], ["g"], name="gmp"),
         helper.make_node("Flatten", ["g"], ["f"], name="flat"),
         helper.make_node("Gemm", ["f", "gw", "gb"], ["y"], name="gemm", transB=1)],
        {"w": rng.standard_normal((5, 3) + (3,) * len(shape[1:])),
         "gw": rng.standard_normal((2, 5)), "gb": rng.standard_normal((1, 2))}, shape, (2,))
    net = relprop.from_onnx(model)
    assert net.nodes[1].layer.describe().startswith(kind + " stride")
    x = rng.standard_normal((4,) + shape).astype(np.float32)
    assert _rel_err(net(x), _ort(model, x)) <= 1e-5


@needs_onnx
def test_from_onnx_export_batch_baked_into_a_dynamic_batch_file():
    """torch's exporters write what a model computes in Python from the batch size as
    constants: a Reshape to (2, -1) in a file with a dynamic batch axis is a flatten of each
    sample (the self-check runs at that batch, where onnxruntime can run the file), while two
    different baked batches, or a leading constant in a fixed-batch file that is not its batch,
    mix samples and are refused."""
    rng = np.random.default_rng(7)

    def model(targets, batch="n"):
        inits = {"w": rng.standard_normal((3, 2, 3, 3)), "mm": rng.standard_normal((27, 4))}
        nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv")]
        for k, t in enumerate(targets):
            inits[f"t{k}"] = np.array(t)
            nodes.append(helper.make_node("Reshape", [nodes[-1].output[0], f"t{k}"], [f"r{k}"],
                                          name=f"reshape{k}"))
        nodes.append(helper.make_node("MatMul", [nodes[-1].output[0], "mm"], ["y"], name="fc"))
        return _graph(nodes, inits, (2, 5, 5), (4,), batch=batch)

    baked = model([[2, -1], [0, 27]])
    net = relprop.from_onnx(baked)  # onnxruntime at batch 2
    assert [layer.kind for layer in net.layers] == ["conv2d", "flatten", "dense"]
    x = rng.standard_normal((5, 2, 5, 5)).astype(np.float32)
    rows = np.concatenate([_ort(baked, x[i:i + 2]) for i in (0, 2)] + [net(x[4:])])
    assert _rel_err(net(x), rows) <= 1e-5
    with pytest.raises(ValueError, match=r"'reshape1' \(Reshape\): holds the batch size 3 as a "
                                         "constant where the batch belongs, and another node "
                                         "holds 2"):
        relprop.from_onnx(model([[2, 27], [3, 27]]))
    fixed = model([[2, -1]], batch=2)  # a fixed batch: its own
    assert [layer.kind for layer in relprop.from_onnx(fixed).layers][1] == "flatten"
    with pytest.raises(ValueError, match=r"'reshape0' \(Reshape\): Reshape to \[4, -1\] from "
                                         r"per-sample shape \(3, 3, 3\) mixes samples"):
        relprop.from_onnx(model([[4, -1]], batch=2), check=False)


@needs_onnx
def test_from_onnx_folds_mod_on_constants():
    """The TorchScript exporter computes nn.Unflatten's target with Mod: fmod=0 takes the sign
    of the divisor, fmod=1 that of the dividend (C's fmod)."""
    rng = np.random.default_rng(8)

    def model(fmod):
        inits = {"w": rng.standard_normal((4, 2, 3, 3)), "a": np.array([-9]),
                 "b": np.array([45]), "lead": np.array([-1]), "mm": rng.standard_normal((36, 2))}
        return _graph([helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
                       helper.make_node("Mod", ["a", "b"], ["m"], name="mod", fmod=fmod),
                       helper.make_node("Concat", ["lead", "m"], ["t"], name="target", axis=0),
                       helper.make_node("Reshape", ["c", "t"], ["f"], name="flat"),
                       helper.make_node("MatMul", ["f", "mm"], ["y"], name="fc")],
                      inits, (2, 5, 5), (2,))

    net = relprop.from_onnx(model(0))  # -9 mod 45 = 36: a flatten
    assert [layer.kind for layer in net.layers] == ["conv2d", "flatten", "dense"]
    with pytest.raises(ValueError, match=r"Reshape to \[-1, -9\]"):  # fmod(-9, 45) = -9
        relprop.from_onnx(model(1), check=False)


def _chain(op, **attrs):
    return _graph([helper.make_node("Relu", ["x"], ["r"], name="first"),
                   helper.make_node(op, ["r"], ["y"], name="the_node", **attrs)], {}, (4,), (4,))


@needs_onnx
def test_from_onnx_unsupported_operator_names_op_and_node():
    with pytest.raises(ValueError, match=r"'the_node'.*Softplus"):
        relprop.from_onnx(_chain("Softplus"))


@needs_onnx
def test_from_onnx_softmax_must_be_last():
    model = _graph([helper.make_node("Softmax", ["x"], ["s"], name="sm"),
                    helper.make_node("Relu", ["s"], ["y"], name="relu")], {}, (4,), (4,))
    with pytest.raises(ValueError, match="Softmax is only supported as the last node"):
        relprop.from_onnx(model)


@needs_onnx
def test_from_onnx_residual_add_is_a_graph():
    model = _graph([helper.make_node("Relu", ["x"], ["r"], name="relu"),
                    helper.make_node("Add", ["r", "x"], ["y"], name="residual")],
                   {}, (4,), (4,))
    net = relprop.from_onnx(model)
    assert isinstance(net, relprop.Graph) and not isinstance(net, relprop.Sequential)
    assert [(n.name, n.layer.kind, n.inputs) for n in net.nodes] == [
        ("relu", "relu", ("input",)), ("residual", "add", ("relu", "input"))]
    x = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    np.testing.assert_allclose(net(x), _ort(model, x), rtol=1e-6)


@needs_onnx
def test_from_onnx_unsupported_attributes():
    rng = np.random.default_rng(7)
    w = {"w": rng.standard_normal((2, 2, 3, 3))}
    cases = [
        (dict(pads=[1, 1, 0, 0]), "symmetric"),
        (dict(group=3), "groups=3"),
    ]
    for attrs, match in cases:
        model = _graph([helper.make_node("Conv", ["x", "w"], ["y"], name="cv", **attrs)], w,
                       (2, 8, 8), (2, 6, 6))
        with pytest.raises(ValueError, match=match):
            relprop.from_onnx(model, check=False)
    model = _graph([helper.make_node("MaxPool", ["x"], ["y"], name="mp", kernel_shape=[2, 2],
                                     storage_order=1)], {}, (1, 5, 5), (1, 2, 2))
    with pytest.raises(ValueError, match="storage_order"):
        relprop.from_onnx(model)
    model = _graph([helper.make_node("Flatten", ["x"], ["y"], name="fl", axis=2)], {},
                   (2, 3), (6,))
    with pytest.raises(ValueError, match="axis"):
        relprop.from_onnx(model)


@needs_onnx
def test_from_onnx_malformed_files(tmp_path):
    good = _chain("Relu").SerializeToString()
    bad = tmp_path / "truncated.onnx"
    bad.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match="truncated.onnx"):
        relprop.from_onnx(bad)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\xff\x00 this is not a protobuf \x13\x37" * 10)
    with pytest.raises(ValueError, match="junk.onnx"):
        relprop.from_onnx(junk)
    with pytest.raises(FileNotFoundError):
        relprop.from_onnx(tmp_path / "missing.onnx")
    with pytest.raises(TypeError):
        relprop.from_onnx(42)


@needs_torch
@needs_onnx
@pytest.mark.parametrize("dynamo", [True, False], ids=["torch.export", "torchscript"])
def test_from_onnx_graph_of_both_exporters(tmp_path, dynamo):
    module = _with_running_stats(nets.torch_branchy(), BRANCHY_SHAPE)
    path = _export(module, BRANCHY_SHAPE, tmp_path / "g.onnx", dynamo)
    ops_in_file = {n.op_type for n in onnx.load(str(path)).graph.node}
    if not dynamo:  # view(x.size(0), -1): a shape subgraph, folded
        assert {"Shape", "Gather", "Concat", "Reshape"} <= ops_in_file
    net = relprop.from_onnx(path)
    assert type(net) is relprop.Graph
    torch_net = relprop.from_torch(module, BRANCHY_SHAPE)
    assert [n.layer.kind for n in net.nodes] == [n.layer.kind for n in torch_net.nodes]
    for n in (1, 4):  # a dynamic batch
        x = np.random.default_rng(n).uniform(-1, 1, (n,) + BRANCHY_SHAPE).astype(np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        assert _rel_err(net(x), want) <= 1e-5


def _conservation_paths():
    paths = [pytest.param("torch", marks=needs_torch)]
    for dynamo in (True, False):
        paths.append(pytest.param(dynamo, id=f"onnx-dynamo={dynamo}",
                                  marks=[needs_torch, needs_onnx]))
    return paths


@pytest.mark.parametrize("path", _conservation_paths())
def test_bias_free_imported_graph_conserves(tmp_path, path):
    from relprop import reference as ref

    module = nets.torch_branchy(bias=False, seed=3).double()
    if path == "torch":
        net = relprop.from_torch(module, BRANCHY_SHAPE)
    else:
        onnx_path = _export(module.float(), BRANCHY_SHAPE, tmp_path / "b.onnx", path)
        module.double()
        net = relprop.from_onnx(onnx_path)
    assert {"add", "concat"} <= {n.layer.kind for n in net.nodes}
    assert all(n.layer.bias is None for n in net.nodes if n.layer.linear)
    x = np.random.default_rng(2).uniform(0, 1, (3,) + BRANCHY_SHAPE)
    with torch.no_grad():
        f = module(torch.from_numpy(x)).numpy()[:, 2]
    # gradient x input sums to the score (positively homogeneous, piecewise linear)
    np.testing.assert_allclose(relprop.gradient_x_input(net, x, 2).reshape(3, -1).sum(1), f,
                               rtol=1e-9, atol=1e-12)
    # LRP-0 (Norm(0) on additions and pooling): every node passes on what it gets, checked
    # node by node on the reference's messages; relprop's input relevance is the reference's
    comp = relprop.Composite([("linear", relprop.rules.Epsilon(0))], stabilizer=0.0)
    messages = {}
    want = ref.lrp(net, x, ref.seed(2, net(x), scale=True), comp.rules(net), messages)
    assert len(messages) == len(net.nodes)
    for name, (r, sent) in messages.items():
        np.testing.assert_allclose(sum(m.reshape(3, -1).sum(1) for m in sent),
                                   r.reshape(3, -1).sum(1), rtol=1e-9, atol=1e-10, err_msg=name)
    got = relprop.lrp(net, x, 2, comp)
    np.testing.assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got.reshape(3, -1).sum(1), f, rtol=1e-8, atol=1e-10)


@needs_onnx
def test_from_onnx_graph_errors_name_the_node():
    rng = np.random.default_rng(3)
    w = {"w": rng.standard_normal((2, 2, 1, 1)), "c": rng.standard_normal((1, 2, 3, 3)),
         "lo": np.array(-1.0), "hi": np.array(1.0), "zero": np.array(0.0), "six": np.array(6.0)}

    def model(nodes, opset=17):
        m = _graph(nodes, w, (2, 3, 3), (2, 3, 3))
        m.opset_import[0].version = opset
        return m

    cycle = model([helper.make_node("Add", ["x", "b"], ["a"], name="first"),
                   helper.make_node("Relu", ["a"], ["b"], name="second"),
                   helper.make_node("Relu", ["b"], ["y"], name="out")])
    with pytest.raises(ValueError, match=r"cycle through ONNX node 'first' \(Add\), ONNX node "
                                         r"'second' \(Relu\)"):
        relprop.from_onnx(cycle)
    cases = [
        ([helper.make_node("Clip", ["x", "hi", "lo"], ["y"], name="clip")],
         r"'clip' \(Clip\): Clip\(min=1.0, max=-1.0\): Hardtanh needs min_val < max_val"),
        ([helper.make_node("Elu", ["x"], ["y"], name="elu")],
         r"'elu' \(Elu\): the activation Elu is not supported"),
        ([helper.make_node("Concat", ["x", "x"], ["y"], name="cat", axis=0)],
         r"'cat' \(Concat\): axis=0 is not supported"),
        ([helper.make_node("Add", ["x", "c"], ["y"], name="offset")],
         r"'offset' \(Add\): adds a constant"),
        ([helper.make_node("Div", ["x", "c"], ["y"], name="scale")],
         r"'scale' \(Div\): unsupported ONNX operator 'Div'"),
    ]
    for nodes, match in cases:
        with pytest.raises(ValueError, match=match):
            relprop.from_onnx(model(nodes), check=False)
    # Clip(0, 6) is ReLU6; an Identity of an initializer is that initializer
    net = relprop.from_onnx(model([
        helper.make_node("Identity", ["w"], ["w2"], name="alias"),
        helper.make_node("Conv", ["x", "w2"], ["conv"], name="conv"),
        helper.make_node("Clip", ["conv", "zero", "six"], ["y"], name="relu6")]), check=False)
    assert type(net) is relprop.Sequential  # a chain
    assert [layer.kind for layer in net.layers] == ["conv2d", "relu6"]


# --------------------------------------------------------------------------------- sklearn --
def _fit(est, x, y):
    from sklearn.exceptions import ConvergenceWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        return est.fit(x, y)


def _numpy_forward(mlp, x):
    a = x
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        a = a @ w + b
        if i < len(mlp.coefs_) - 1:
            a = np.maximum(a, 0)
    return a


@needs_sklearn
@pytest.mark.parametrize("n_classes", [2, 4])
def test_from_sklearn_classifier(n_classes):
    rng = np.random.default_rng(8)
    x = rng.standard_normal((60, 5))
    y = rng.integers(0, n_classes, 60)
    mlp = _fit(sklearn_nn.MLPClassifier(hidden_layer_sizes=(8, 6), max_iter=50, random_state=0),
               x, y)
    net = relprop.from_sklearn(mlp)
    logits = net(x)
    np.testing.assert_allclose(logits, _numpy_forward(mlp, x), rtol=1e-5, atol=1e-9)
    if n_classes == 2:
        p = 1 / (1 + np.exp(-logits[:, 0]))
        prob = np.stack([1 - p, p], axis=1)
    else:
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        prob = e / e.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(prob, mlp.predict_proba(x), rtol=1e-5, atol=1e-9)


@needs_sklearn
def test_from_sklearn_regressor():
    rng = np.random.default_rng(9)
    x = rng.standard_normal((40, 3))
    mlp = _fit(sklearn_nn.MLPRegressor(hidden_layer_sizes=(5,), max_iter=50, random_state=0),
               x, x.sum(axis=1))
    net = relprop.from_sklearn(mlp)
    np.testing.assert_allclose(net(x)[:, 0], mlp.predict(x), rtol=1e-5, atol=1e-9)


@needs_sklearn
def test_from_sklearn_refuses():
    x = np.random.default_rng(10).standard_normal((20, 3))
    tanh = _fit(sklearn_nn.MLPClassifier(hidden_layer_sizes=(4,), activation="tanh", max_iter=5),
                x, x[:, 0] > 0)
    with pytest.raises(ValueError, match="activation='tanh'"):
        relprop.from_sklearn(tanh)
    with pytest.raises(ValueError, match="not fitted"):
        relprop.from_sklearn(sklearn_nn.MLPClassifier())
    with pytest.raises(TypeError, match="MLPClassifier or MLPRegressor"):
        relprop.from_sklearn(object())
