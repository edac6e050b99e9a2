"""The layer registry: every layer type is described once (relprop.layers), and the composites,
rules, importers, model files and the reference read that description; a type registered here,
in the test, is imported, saved, explained and twinned with no other module touched."""
import numpy as np
import pytest
from numpy.testing import assert_allclose

import relprop as rp
from relprop import layers as L
from relprop import reference as ref
from relprop.composites import Composite
from relprop.reference.layers import TWINS
from relprop.rules import RULES

import nets


def test_every_layer_type_is_described_once():
    assert set(L.__all__) == {cls.__name__ for cls in L.LAYER_TYPES.values()}
    assert set(L.__all__) <= set(rp.__all__)
    for kind, cls in L.LAYER_TYPES.items():
        assert cls.kind == kind and cls.slots, kind
        assert kind in TWINS, f"{kind} has no reference twin"
        if cls.default_rule is not None:
            rule = RULES[cls.default_rule]
            assert any(slot in rule.applies_to for slot in cls.slots), kind
    for entry_type in (L.TorchModule, L.TorchFunction, L.TorchMethod, L.OnnxOp):
        L.import_table(entry_type)  # raises where two types claim one name
    with pytest.raises(ValueError, match="'relu' is taken by ReLU"):
        L.register_layer(type("Other", (L.Layer,), {"kind": "relu"}))


def test_slots_name_layer_types():
    assert set(L.slot_types("linear")) == {rp.Dense, rp.Conv2d, rp.ConvTranspose2d, rp.Conv1d}
    assert L.slot_types("convolution") == (rp.Conv2d, rp.ConvTranspose2d, rp.Conv1d)
    assert L.slot_types("conv2d") == (rp.Conv2d,)  # a kind names its type
    assert {rp.ReLU, rp.ReLU6} <= set(L.slot_types("activation"))
    with pytest.raises(ValueError, match="unknown layer type 'convolutions'.*'convolution'"):
        Composite([("convolutions", rp.rules.Epsilon())])
    with pytest.raises(ValueError, match="cannot be applied to layer 1"):
        rp.lrp(rp.Sequential([rp.Dense(np.ones((2, 3))), rp.ReLU()]), np.ones((1, 3)), 0,
               Composite([("dense", rp.rules.Epsilon()), ("activation", rp.rules.Epsilon())]))


class Negate(L.Elementwise):
    """``-x``: a layer type that only this test registers."""

    kind = "test_negate"
    imports = (L.TorchFunction(("torch.neg",), ("input",), lambda a, ctx: Negate()),
               L.TorchMethod(("neg",), ("input",), lambda a, ctx: Negate()),
               L.OnnxOp(("Neg",), lambda ctx: Negate()))

    def forward(self, x):
        return -x, None

    def backward(self, g, x, state, relu_mode="gradient"):
        return -g


@pytest.fixture
def negate():
    L.register_layer(Negate)
    ref.register_twin("test_negate", forward=lambda layer, x: -x,
                      backward=lambda layer, g, xs, mode: [-g])
    try:
        yield Negate
    finally:
        del L.LAYER_TYPES["test_negate"], TWINS["test_negate"]


def test_a_registered_layer_type_is_read_everywhere(negate, rng, tmp_path):
    torch = pytest.importorskip("torch")

    class M(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(4, 5), torch.nn.Linear(5, 3)

        def forward(self, x):
            return self.fc2(torch.relu(torch.neg(self.fc1(x)).neg().neg()))

    torch.manual_seed(0)
    module = M().double()
    net = rp.from_torch(module, (4,))  # the importer's tables come from the registry
    assert [layer.kind for layer in net.layers] == ["dense"] + ["test_negate"] * 3 + \
        ["relu", "dense"]
    net.save(tmp_path / "m.npz")
    back = rp.load(tmp_path / "m.npz")  # loaded by kind
    x = rng.normal(size=(3, 4))
    assert_allclose(back(x), module(torch.from_numpy(x)).detach().numpy(), rtol=1e-12)
    # the composite gives it its type's default rule (Pass: an activation), the reference its
    # twin
    R = rp.lrp(back, x, 1, "epsilon_plus")
    rules = rp.composites.EpsilonPlus().rules(back)
    seed = ref.seed(1, ref.forward(back, x)[-1], scale=True)
    assert_allclose(R, ref.lrp(back, x, seed, rules), rtol=1e-10, atol=1e-12)
    assert_allclose(rp.gradient(back, x, 1), ref.gradient(back, x, 1), rtol=1e-12)


def test_a_registered_layer_type_is_read_by_from_onnx(negate, rng):
    pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = rng.normal(size=(3, 4)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["n"], name="neg"),
         helper.make_node("MatMul", ["n", "w"], ["y"], name="fc")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
        [numpy_helper.from_array(w, "w")])
    net = rp.from_onnx(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
                       check=False)
    assert [layer.kind for layer in net.layers] == ["test_negate", "dense"]
    x = rng.normal(size=(2, 3)).astype(np.float32)
    assert_allclose(net(x), -x @ w, rtol=1e-6)


class Scaled(L.Elementwise):
    """``x * s`` for a module parameter ``s`` (only this test registers it): its converter
    reads the parameter the call gets (``ctx.parameter``)."""

    kind = "test_scaled"
    imports = (L.TorchFunction(("torch.multiply",), ("input", "other"),  # Mul has torch.mul
                               lambda a, ctx: Scaled(ctx.parameter(a["other"], "other"))),)

    def __init__(self, s):
        self.s = s

    def forward(self, x):
        return x * self.s, None

    def backward(self, g, x, state, relu_mode="gradient"):
        return g * self.s


def test_a_converter_reads_the_module_parameters_a_function_gets(rng):
    torch = pytest.importorskip("torch")

    class M(torch.nn.Module):
        def __init__(self, constant=False):
            super().__init__()
            self.fc = torch.nn.Linear(4, 3)
            self.scale = torch.nn.Parameter(torch.tensor([1.0, -2.0, 0.5]))
            self.register_buffer("stats", torch.tensor([3.0, 1.0, 2.0]))
            self.constant = constant

        def forward(self, x):
            y = torch.multiply(torch.multiply(self.fc(x), self.scale), self.stats)
            return torch.multiply(y, 2.0) if self.constant else y

    L.register_layer(Scaled)
    try:
        net = rp.from_torch(M().double(), (4,))
        assert [layer.s.tolist() for layer in net.layers[1:]] == [[1.0, -2.0, 0.5],
                                                                  [3.0, 1.0, 2.0]]
        with pytest.raises(ValueError, match="'multiply_2'.*other must be a parameter or buffer of "
                                             "the module, got 2.0"):
            rp.from_torch(M(constant=True).double(), (4,))
    finally:
        del L.LAYER_TYPES["test_scaled"]


def test_default_rules_come_from_the_layer_types(rng):
    net = rp.Sequential([rp.Conv2d(nets.conv_w(rng, 2, 3, 3)), rp.ReLU(), rp.MaxPool2d(1, 1),
                         rp.AvgPool2d(2), rp.Flatten(), rp.Dense(nets.dense_w(rng, 2, 2))],
                        input_shape=(3, 4, 4))
    rules = Composite([("linear", rp.rules.Epsilon())], stabilizer=1e-3).rules(net)
    for node, rule in zip(net.nodes, rules):
        if not node.layer.linear:
            assert rule.registry_name == node.layer.default_rule
    assert [r.stabilizer for r in rules if r.registry_name == "norm"] == [1e-3]


class Reverse(L.Layer):
    """The features of a sample in reverse order: a layer type that moves elements (only this
    test registers it)."""

    kind = "test_reverse"
    slots = ("reshape",)
    default_rule = "pass"

    def forward(self, x):
        return np.ascontiguousarray(x[:, ::-1]), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return np.ascontiguousarray(g[:, ::-1])


def test_pass_moves_relevance_with_the_elements(rng):
    """Pass hands relevance straight through element-wise layers and moves it as the gradient
    does through layers that move elements (here a reversal, where passing it unchanged would
    give it to the wrong inputs): LRP-0 stays gradient x input, and the reference agrees."""
    L.register_layer(Reverse)
    ref.register_twin("test_reverse", forward=lambda layer, x: x[:, ::-1],
                      backward=lambda layer, g, xs, mode: [g[:, ::-1]])
    try:
        net = rp.Sequential([rp.Dense(nets.dense_w(rng, 6, 4)), rp.ReLU(), Reverse(),
                             rp.Dense(nets.dense_w(rng, 3, 6))], input_shape=(4,))
        x = rng.normal(size=(5, 4))
        comp = Composite([("linear", rp.rules.Epsilon(0))])
        assert [r.registry_name for r in comp.rules(net)][1:3] == ["pass", "pass"]
        R = rp.lrp(net, x, 2, comp)
        assert_allclose(R, rp.gradient_x_input(net, x, 2), rtol=1e-10, atol=1e-12)
        seed = ref.seed(2, ref.forward(net, x)[-1], scale=True)
        assert_allclose(R, ref.lrp(net, x, seed, comp.rules(net)), rtol=1e-10, atol=1e-12)
    finally:
        del L.LAYER_TYPES["test_reverse"], TWINS["test_reverse"]


class Half(L.Layer):
    """The first or second half of a sample's features: a layer type (only this test registers
    it) whose importer entries make both halves at once, a tuple (``x.unsafe_chunk(2, 1)``, an
    ONNX node of two outputs)."""

    kind = "test_half"
    slots = ("reshape",)
    default_rule = "pass"
    _config_args = ("which",)
    imports = (L.TorchMethod(("unsafe_chunk",), ("input", "chunks", ("dim", 0)),
                             lambda a, ctx: (ctx.add(Half(0)), ctx.add(Half(1)))),
               L.OnnxOp(("TestHalves",), lambda ctx: (ctx.add(Half(0)), ctx.add(Half(1)))))

    def __init__(self, which=0):
        self.which = which

    def config(self):
        return {"which": self.which}

    def output_shape(self, shape):
        return (shape[0] // 2,)

    def forward(self, x):
        k = x.shape[1] // 2
        return np.ascontiguousarray(x[:, self.which * k:(self.which + 1) * k]), None

    def backward(self, g, x, state, relu_mode="gradient"):
        out, k = np.zeros(x.shape, g.dtype), x.shape[1] // 2
        out[:, self.which * k:(self.which + 1) * k] = g
        return out


def test_a_converter_makes_one_tensor_per_output(rng):
    """A converter's tuple: torch's value of the call (its items picked by getitem), one
    tensor per output of an ONNX node."""
    pytest.importorskip("onnx")
    torch = pytest.importorskip("torch")
    from onnx import TensorProto, helper, numpy_helper

    L.register_layer(Half)
    ref.register_twin("test_half", forward=lambda layer, x: Half.forward(layer, x)[0],
                      backward=lambda layer, g, xs, mode: [Half.backward(layer, g, xs[0], None)])
    try:
        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.fc1, self.fc2 = torch.nn.Linear(2, 3), torch.nn.Linear(2, 3)

            def forward(self, x):
                halves = x.unsafe_chunk(2, 1)
                return self.fc1(halves[0]) + self.fc2(torch.relu(halves[1]))

        torch.manual_seed(0)
        module = M().double()
        net = rp.from_torch(module, (4,))
        assert sorted(n.layer.kind for n in net.nodes).count("test_half") == 2
        x = rng.normal(size=(5, 4))
        xt = torch.from_numpy(x).requires_grad_()
        module(xt)[:, 1].sum().backward()
        assert_allclose(rp.gradient(net, x, 1), xt.grad.numpy(), rtol=1e-12)

        w1, w2 = (rng.normal(size=(2, 3)).astype(np.float32) for _ in range(2))
        graph = helper.make_graph(
            [helper.make_node("TestHalves", ["x"], ["a", "b"], name="halves", domain="test"),
             helper.make_node("MatMul", ["a", "w1"], ["y1"], name="fc1"),
             helper.make_node("MatMul", ["b", "w2"], ["y2"], name="fc2"),
             helper.make_node("Add", ["y1", "y2"], ["y"], name="add")], "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])],
            [numpy_helper.from_array(w1, "w1"), numpy_helper.from_array(w2, "w2")])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                        helper.make_opsetid("test", 1)])
        net = rp.from_onnx(model, check=False)
        x = x.astype(np.float32)
        assert_allclose(net(x), x[:, :2] @ w1 + x[:, 2:] @ w2, rtol=1e-5)
    finally:
        del L.LAYER_TYPES["test_half"], TWINS["test_half"]


class RmsNorm(L.Layer):
    """``x / s(x)`` with ``s = sqrt(mean(x^2) + 1)`` per sample: a layer linear once ``s`` is
    held constant (only this test registers it)."""

    kind = "test_rms_norm"
    slots = ("sum",)  # a slot whose default rule is Norm
    default_rule = "norm"

    @staticmethod
    def scale(x):
        return np.sqrt((x * x).mean(axis=1, keepdims=True) + 1)

    def forward(self, x):
        return x / self.scale(x), None

    def backward(self, g, x, state, relu_mode="gradient"):
        s = self.scale(x)
        return g / s - x * (g * x).mean(axis=1, keepdims=True) / s ** 3

    def linear_backward(self, g, x, state):
        return g / self.scale(x)


def test_norm_redistributes_by_the_layers_linear_map(rng):
    """The Norm rule takes a layer's linear_backward (here with the scale frozen, which passes
    relevance straight through: R_x = x (r / y) / s = r), not its gradient; the reference, by
    the twin's frozen map, agrees."""
    L.register_layer(RmsNorm)
    ref.register_twin("test_rms_norm", forward=lambda layer, x: x / RmsNorm.scale(x),
                      backward=lambda layer, g, xs, mode: [RmsNorm().backward(g, xs[0], None)],
                      linear=lambda layer, a, v: v / RmsNorm.scale(a))
    try:
        net = rp.Sequential([rp.Dense(nets.dense_w(rng, 6, 4)), RmsNorm(),
                             rp.Dense(nets.dense_w(rng, 3, 6))], input_shape=(4,))
        x = rng.normal(size=(5, 4))
        comp = Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0)
        levels = rp.lrp(net, x, 1, comp, layerwise=True)
        assert_allclose(levels[1], levels[2], rtol=1e-12)  # straight through
        seed = ref.seed(1, ref.forward(net, x)[-1], scale=True)
        assert_allclose(levels[0], ref.lrp(net, x, seed, comp.rules(net)), rtol=1e-10)
    finally:
        del L.LAYER_TYPES["test_rms_norm"], TWINS["test_rms_norm"]


class DenseT(L.Linear):
    """``y = x W + b`` with the weight ``(in, out)``: a linear layer type (only this test
    registers it) whose weight keeps its outputs on axis 1, as ConvTranspose2d's does; the
    rules' stacked weights stack its inputs, and it runs the two halves apart."""

    kind = "test_dense_t"
    slots = ("dense", "linear")
    takes_epilogue = False

    def __init__(self, weight, bias=None):
        super().__init__(weight, bias, 2, outputs=np.shape(weight)[1])

    def output_shape(self, shape):
        return (self.weight.shape[1],)

    def apply(self, x, w, b, exact=False, relu=False):
        return x @ w if b is None else x @ w + b

    def apply_t(self, g, w, x_shape, exact=False, mask=None):
        return g @ w.T

    def apply_split(self, x, w, b, exact=False):
        (w1, w2), (b1, b2) = np.split(w, 2), (None, None) if b is None else np.split(b, 2)
        return self.apply(x, w1, b1), self.apply(x, w2, b2)

    def apply_t_stacked(self, g, w, x_shape, exact=False):
        (w1, w2), (g1, g2) = np.split(w, 2), np.split(g, 2, axis=1)
        return g1 @ w1.T + g2 @ w2.T

    def lrp_epsilon(self, r, z, a, w, eps, exact=False):
        return a * self.apply_t(rp.ops.lrp_divide(r, z, eps), w, a.shape)


@pytest.mark.parametrize("rule", [rp.rules.Epsilon(0.01), rp.rules.ZPlus(), rp.rules.Gamma(0.3),
                                  rp.rules.AlphaBeta(2, 1), rp.rules.WSquare(), rp.rules.Flat(),
                                  rp.rules.ZBox(-2.0, 2.0)], ids=lambda r: type(r).__name__)
def test_rules_on_a_layer_whose_weight_keeps_outputs_elsewhere(rule, rng):
    """Every linear rule stacks rule-modified weights along axis 0 and takes each half of the
    biases by its own length, and the layer runs stacked weights its own way: a layer whose
    weight is (in, out) with in != out gets the numbers of Dense on the transposed weight,
    and of the reference."""
    L.register_layer(DenseT)
    ref.register_twin("test_dense_t", forward=lambda layer, x: x @ layer.weight + layer.bias,
                      backward=lambda layer, g, xs, mode: [g @ layer.weight.T],
                      apply=lambda layer, x, w, b: x @ w if b is None else x @ w + b)
    try:
        w1, w2 = rng.normal(size=(5, 7)), rng.normal(size=(7, 3))
        b1, b2 = rng.normal(size=7), rng.normal(size=3)
        net = rp.Sequential([DenseT(w1, b1), rp.ReLU(), DenseT(w2, b2)], input_shape=(5,))
        dense = rp.Sequential([rp.Dense(w1.T, b1), rp.ReLU(), rp.Dense(w2.T, b2)],
                              input_shape=(5,))
        x = rng.normal(size=(4, 5))
        comp = Composite([("linear", rule)])
        R = rp.lrp(net, x, 1, comp)
        assert_allclose(R, rp.lrp(dense, x, 1, comp), rtol=1e-12, atol=1e-12)
        seed = ref.seed(1, ref.forward(net, x)[-1], scale=True)
        assert_allclose(R, ref.lrp(net, x, seed, comp.rules(net)), rtol=1e-9, atol=1e-12)
    finally:
        del L.LAYER_TYPES["test_dense_t"], TWINS["test_dense_t"]


def test_batchnorm_folds_only_where_the_weight_keeps_outputs_on_axis_0(rng):
    """A BatchNorm scales a layer's outputs: folded into Dense and Conv2d (outputs on axis 0),
    not into a layer whose weight keeps them elsewhere, even where the sizes agree."""
    bn = rp.BatchNorm(rng.uniform(1, 2, 5), np.zeros(5), np.zeros(5), np.ones(5))
    assert bn.can_fold_into(rp.Dense(rng.normal(size=(5, 5))))
    assert not bn.can_fold_into(DenseT(rng.normal(size=(5, 5))))


class Bilinear(L.Layer):
    """``y_k = x1 A_k x2 + b_k`` of two data tensors (``torch.nn.Bilinear``): a layer type of a
    module called with several arguments (only this test registers it); with a parameter as the
    second operand the map is linear in the first: a Dense."""

    kind = "test_bilinear"
    slots = ("sum",)
    n_inputs = 2
    backward_reads_input = True
    imports = (L.TorchModule(("Bilinear",), lambda m, ctx: Bilinear.convert(m, ctx),
                             params=("input1", "input2")),)

    def __init__(self, a, b):
        self.a, self.b = a, b

    @staticmethod
    def convert(m, ctx):
        a, b = ctx.array(m.weight), ctx.array(m.bias)
        if ctx.is_parameter(ctx.args["input2"]):  # one operand fixed: linear in the other
            x2 = ctx.parameter(ctx.args["input2"], "input2")
            return rp.Dense(np.einsum("kij,j->ki", a, x2[0]), b)
        return Bilinear(a, b)

    def output_shape(self, s1, s2):
        return (self.a.shape[0],)

    def forward(self, x1, x2):
        return np.einsum("ni,kij,nj->nk", x1, self.a, x2) + self.b, None

    def vjp(self, g, xs, state, relu_mode="gradient"):
        x1, x2 = xs
        return (np.einsum("nk,kij,nj->ni", g, self.a, x2),
                np.einsum("nk,kij,ni->nj", g, self.a, x1))


def test_modules_of_several_arguments_shape_checks_and_expanded_parameters(rng):
    """from_torch reads modules called with several tensors (``TorchModule.params``, keywords
    too), a parameter expanded over the batch (``p.expand(x.size(0), -1)``), and the checks
    torch.fx records on shapes (``torch._assert(x.shape[1] == 4, ...)``, evaluated now)."""
    torch = pytest.importorskip("torch")

    class M(torch.nn.Module):
        def __init__(self, fixed=False, batch=True):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(4, 3), torch.nn.Linear(4, 2)
            self.bil = torch.nn.Bilinear(3, 2, 5)
            self.token = torch.nn.Parameter(torch.randn(1, 2))
            self.fixed, self.batch = fixed, batch

        def forward(self, x):
            torch._assert(x.shape[1] == 4, "four features")
            if self.fixed:
                return self.bil(self.fc1(x), self.token.expand(x.shape[0] if self.batch else 3,
                                                               -1))
            return self.bil(self.fc1(x), input2=self.fc2(x))

    L.register_layer(Bilinear)
    try:
        torch.manual_seed(0)
        for fixed in (False, True):
            module = M(fixed).double().eval()
            net = rp.from_torch(module, (4,))
            assert ("test_bilinear" in [n.layer.kind for n in net.nodes]) != fixed
            x = rng.normal(size=(3, 4))
            xt = torch.from_numpy(x).requires_grad_()
            out = module(xt)
            out[:, 1].sum().backward()
            assert_allclose(net(x), out.detach().numpy(), rtol=1e-12)
            assert_allclose(rp.gradient(net, x, 1), xt.grad.numpy(), rtol=1e-12)
        with pytest.raises(ValueError, match="_assert.*assertion fails on the input shape "
                                             r"\(5,\): four features"):
            rp.from_torch(M().double(), (5,))
        with pytest.raises(ValueError, match=r"expand of attribute 'token' of shape \(1, 2\) "
                                             r"to \(3, -1\).*over the batch only"):
            rp.from_torch(M(True, batch=False).double(), (4,))
    finally:
        del L.LAYER_TYPES["test_bilinear"]


class Follow(L.Elementwise):
    """The identity, which remembers the kind of the layer that feeds it (only this test
    registers it): a layer type that depends on its producer."""

    kind = "test_follow"

    def __init__(self, after=None):
        self.after = after

    def config(self):
        return {"after": self.after}

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg.get("after"))

    def resolve(self, producers):
        kind = "input" if producers[0] is None else producers[0].kind
        return self if self.after == kind else Follow(kind)

    def forward(self, x):
        return x, None

    def backward(self, g, x, state, relu_mode="gradient"):
        return g


def test_layers_resolve_from_their_producers(rng, tmp_path):
    """A network asks each layer what it is given the layers that feed it (Layer.resolve), in
    Graph and Sequential alike, and model files keep the answer."""
    L.register_layer(Follow)
    ref.register_twin("test_follow", forward=lambda layer, x: x,
                      backward=lambda layer, g, xs, mode: [g])
    try:
        net = rp.Sequential([Follow(), rp.Dense(nets.dense_w(rng, 3, 4)), Follow(), rp.ReLU(),
                             Follow("relu")], input_shape=(4,))
        assert [layer.after for layer in net.layers if layer.kind == "test_follow"] == \
            ["input", "dense", "relu"]
        graph = rp.Graph([("a", Follow(), "input"), ("b", rp.ReLU(), "a"),
                          ("c", Follow(), "b")])
        assert graph.node("c").layer.after == "relu" and graph.node("a").layer.after == "input"
        net.save(tmp_path / "m.npz")
        assert [layer.config() for layer in rp.load(tmp_path / "m.npz").layers] == \
            [layer.config() for layer in net.layers]
    finally:
        del L.LAYER_TYPES["test_follow"], TWINS["test_follow"]
