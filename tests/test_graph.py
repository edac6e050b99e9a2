"""Graph networks: construction errors, the chain as a graph, random DAGs (additions,
concatenations, fan-out, residual blocks) against the NumPy reference twin for the forward
pass, every gradient method and LRP, conservation on bias-free graphs, files and pickling."""
import pickle

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop import engine
from relprop import reference as ref

import nets
from strategies import dags


def _residual(rng, c=4, bias=True):
    b = (lambda n: rng.normal(size=n) * 0.1) if bias else (lambda n: None)
    return rp.Graph([
        ("conv1", rp.Conv2d(nets.conv_w(rng, c, 2, 3), b(c), padding=1), "input"),
        ("relu1", rp.ReLU(), "conv1"),
        ("conv2", rp.Conv2d(nets.conv_w(rng, c, c, 3), b(c), padding=1), "relu1"),
        ("relu2", rp.ReLU(), "conv2"),
        ("conv3", rp.Conv2d(nets.conv_w(rng, c, c, 1), b(c)), "relu2"),
        ("add", rp.Add(), ["conv3", "relu1"]),
        ("relu3", rp.ReLU(), "add"),
        ("side", rp.Conv2d(nets.conv_w(rng, 3, 2, 1), b(3)), "input"),
        ("cat", rp.Concat(), ["relu3", "side"]),
        ("pool", rp.GlobalAvgPool2d(), "cat"),
        ("flat", rp.Flatten(), "pool"),
        ("fc", rp.Dense(nets.dense_w(rng, 5, c + 3), b(5)), "flat"),
    ], input_shape=(2, 6, 6))


# --- construction ---------------------------------------------------------------------------
def test_graph_errors_name_the_node():
    conv = rp.Conv2d(np.ones((2, 1, 1, 1)))
    with pytest.raises(ValueError, match="node 'a'.*used twice"):
        rp.Graph([("a", conv, "input"), ("a", rp.ReLU(), "a")])
    with pytest.raises(ValueError, match="node 'input'.*used twice"):
        rp.Graph([("input", conv, "input")])
    with pytest.raises(ValueError, match="node 'b'.*unknown input 'c'"):
        rp.Graph([("a", conv, "input"), ("b", rp.ReLU(), "c")])
    with pytest.raises(ValueError, match="cycle"):
        rp.Graph([("a", rp.Add(), ["input", "b"]), ("b", rp.ReLU(), "a")], output="b")
    with pytest.raises(ValueError, match="node 'side' does not contribute"):
        rp.Graph([("a", conv, "input"), ("side", rp.ReLU(), "input"), ("b", rp.ReLU(), "a")],
                 output="b")
    with pytest.raises(ValueError, match="2 nodes that no other node reads"):
        rp.Graph([("a", conv, "input"), ("b", rp.ReLU(), "input")])
    with pytest.raises(ValueError, match="node 'add'.*two or more inputs"):
        rp.Graph([("add", rp.Add(), ["input"])])
    with pytest.raises(ValueError, match="node 'r'.*1 input"):
        rp.Graph([("r", rp.ReLU(), ["input", "input"])])
    with pytest.raises(TypeError, match="relprop layer"):
        rp.Graph([("a", "conv", "input")])
    with pytest.raises(ValueError, match=r"node 'add': Add needs inputs of one shape"):
        rp.Graph([("a", conv, "input"), ("add", rp.Add(), ["a", "input"])],
                 input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="Concat along axis 1 needs inputs that differ only on"):
        rp.Graph([("p", rp.MaxPool2d(2), "input"), ("c", rp.Concat(), ["p", "input"])],
                 input_shape=(1, 4, 4))
    with pytest.raises(ValueError, match="Sequential takes single-input layers"):
        rp.Sequential([rp.Add()])


def test_flops_per_node_and_in_all():
    """A 1x1 convolution of 2 -> 3 channels then a ReLU: 3 outputs of 2 multiply-adds and a
    bias add per pixel, and one per element for the ReLU; the FLOPs follow the input shape."""
    net = rp.Graph([("conv", rp.Conv2d(np.ones((3, 2, 1, 1)), np.zeros(3)), "input"),
                    ("relu", rp.ReLU(), "conv")])
    with pytest.raises(ValueError, match="no input shape"):
        net.flops()
    assert net.node_flops((2, 4, 5)) == [3 * 20 * (2 * 2 + 1), 3 * 20]
    assert net.flops((2, 4, 5)) == 3 * 20 * 6 and net.flops((2, 8, 5)) == 2 * 3 * 20 * 6


def test_nodes_are_put_in_topological_order_and_batchnorm_folded(rng):
    # given out of order; the BatchNorm after conv "b" (read only by it) is folded into "b",
    # the one after the Add is not (an Add is not linear) and stays an affine node
    bn = lambda: rp.BatchNorm2d(*(rng.uniform(0.5, 2, 2) for _ in range(4)))  # noqa: E731
    net = rp.Graph([("add", rp.Add(), ["bn", "input"]), ("bn", bn(), "b"),
                    ("b", rp.Conv2d(nets.conv_w(rng, 2, 2, 3), padding=1), "input"),
                    ("bn2", bn(), "add")], input_shape=(2, 5, 5))
    assert [n.name for n in net.nodes] == ["b", "add", "bn2"]
    assert net.node("add").inputs == ("b", "input")
    assert isinstance(net.node("bn2").layer, rp.BatchNorm2d)
    assert net.output == "bn2" and net.output_shape == (2, 5, 5)


def test_a_chain_as_a_graph_gives_the_same_bits_as_sequential(rng):
    seq = nets.cnn(rng)
    graph = rp.Graph([(f"l{i}", layer, "input" if i == 0 else f"l{i - 1}")
                      for i, layer in enumerate(seq.layers)], input_shape=seq.input_shape)
    x = rng.normal(size=(3,) + seq.input_shape).astype(np.float32)
    assert_array_equal(graph(x), seq(x))
    for method in ("gradient", "guided_backprop", "lrp.epsilon_plus_flat",
                   "lrp.epsilon_alpha2_beta1"):
        assert_array_equal(rp.explain(graph, x, 1, method), rp.explain(seq, x, 1, method))
    levels = rp.lrp(graph, x, 1, "epsilon_gamma_box", low=-3, high=3, layerwise=True)
    seq_levels = rp.lrp(seq, x, 1, "epsilon_gamma_box", low=-3, high=3, layerwise=True)
    assert list(levels) == ["input"] + [f"l{i}" for i in range(len(seq.layers))]
    for got, want in zip(levels.values(), seq_levels):
        assert_array_equal(got, want)


# --- random DAGs against the reference --------------------------------------------------------
def _inputs(net, n, dtype, positive=False, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n,) + net.input_shape) if positive else rng.normal(
        size=(n,) + net.input_shape)
    return x.astype(dtype)


def _decision_margin(net, acts):
    """How close the forward pass comes to a decision that the gradient pass depends on
    discontinuously, relative to the scale of the tensor decided on: a ReLU's, LeakyReLU's or
    PReLU's input to 0 (a ReLU6's to 0 and 6, a Hardtanh's to its bounds), the largest value of
    a max-pooling window to the runner-up.  Exact zeros and ties (outputs of a ReLU read by a
    ReLU or a pooling) are decided alike in every precision.  (The sign tests of deconvnet and
    guided backprop on the gradient are continuous: ``max(g, 0)``.)"""
    vals = dict(zip([net.input_name] + [node.name for node in net.nodes], acts))
    margin = np.inf
    for node in net.nodes:
        z, layer = vals[node.inputs[0]], node.layer
        if layer.kind in ("relu", "leaky_relu", "prelu"):
            gaps = np.abs(z)
        elif layer.kind == "relu6":
            gaps = np.minimum(np.abs(z), np.abs(z - 6))
        elif layer.kind == "hardtanh":
            gaps = np.minimum(np.abs(z - layer.min_val), np.abs(z - layer.max_val))
        elif layer.kind == "maxpool2d":
            (ph, pw), (sh, sw) = layer.padding, layer.stride
            zp = np.pad(z, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
            win = np.lib.stride_tricks.sliding_window_view(zp, layer.kernel_size, axis=(2, 3))
            win = np.sort(win[:, :, ::sh, ::sw].reshape(win.shape[:2] + (-1, win[0, 0, 0, 0].size)))
            gaps = win[..., -1] - win[..., -2]
        else:
            continue
        gaps = gaps[gaps > 0]
        if gaps.size:
            margin = min(margin, gaps.min() / np.abs(z).max())
    return margin


@given(net=dags(extended=True), dtype=st.sampled_from([np.float32, np.float64]),
       mode=st.sampled_from(["gradient", "deconvnet", "guided"]))
def test_dag_forward_and_gradients_match_reference(net, dtype, mode, conv_algorithm):
    x = _inputs(net, 3, dtype)
    acts = ref.forward(net, x.astype(np.float64))
    # float32 rounding (about 1e-6 of a tensor's scale here) decides as float64 does unless a
    # ReLU input or a pooling window's top two lie closer than that
    assume(dtype == np.float64 or _decision_margin(net, acts) > 1e-4)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    out = net(x)
    assert out.dtype == dtype
    assert_allclose(out, acts[-1], **tol)
    seed = np.random.default_rng(1).normal(size=out.shape)
    g = rp.gradient(net, x, seed.astype(dtype)) if mode == "gradient" else (
        rp.deconvnet if mode == "deconvnet" else rp.guided_backprop)(net, x, seed.astype(dtype))
    assert g.shape == x.shape and g.dtype == dtype
    assert_allclose(g, ref.backward(net, acts, seed, mode), **tol)


@given(net=dags(extended=True), dtype=st.sampled_from([np.float32, np.float64]),
       mode=st.sampled_from(["gradient", "deconvnet", "guided"]))
def test_fused_nodes_give_the_bits_of_the_nodes_apart(net, dtype, mode, conv_algorithm):
    """The forward pass and the gradient fuse Dense/Conv2d + ReLU (+ 2x2 max pooling) and the
    ReLU masks of the backward pass into single kernels: bitwise as every node alone."""
    x = _inputs(net, 3, dtype)
    apart = engine.GradientStep(mode)  # no fusions
    out, saved = engine.forward_pass(net, x, apart)
    assert_array_equal(net(x), out)
    seed = np.random.default_rng(1).normal(size=out.shape).astype(dtype)
    want = engine.backward_walk(net, apart, saved, seed)
    assert_array_equal(net.vjp(x, lambda _: seed, mode)[1], want)


def test_fusions_are_found_where_a_node_alone_reads_a_tensor(rng):
    conv = rp.Conv2d(rng.normal(size=(2, 1, 3, 3)), padding=1)
    dense = rp.Dense(rng.normal(size=(3, 8)))
    net = rp.Graph([("c1", conv, "input"), ("r1", rp.ReLU(), "c1"), ("p1", rp.MaxPool2d(2), "r1"),
                    ("c2", conv.with_parameters(rng.normal(size=(2, 2, 3, 3)), None), "p1"),
                    ("r2", rp.ReLU(), "c2"), ("c3", conv.with_parameters(
                        rng.normal(size=(2, 2, 3, 3)), None), "r2"),
                    ("a", rp.Add(), ["c3", "r2"]),  # r2 has two readers: c3 does not mask it
                    ("r3", rp.ReLU(), "a"), ("c4", conv.with_parameters(
                        rng.normal(size=(2, 2, 3, 3)), None), "r3"),  # reads r3 alone
                    ("f", rp.Flatten(), "c4"), ("d", dense, "f")],
                   input_shape=(1, 4, 4))
    f = net.fusions()
    named = {k: {net.nodes[i].name for i in getattr(f, k)} for k in
             ("relu", "pool", "through", "pool_through", "masked", "mask_through")}
    assert named == {"relu": {"c2"}, "pool": {"c1"}, "through": {"r2"},
                     "pool_through": {"r1", "p1"}, "masked": {"c4"}, "mask_through": {"r3"}}
    # deconvnet and guided backprop keep the ReLUs' own backward steps: no pooling fusion
    g = net.fusions(gradient=False)
    assert {net.nodes[i].name for i in g.relu} == {"c1", "c2"} and not g.pool and not g.masked


COMPOSITES = [("epsilon", {}), ("epsilon_plus_flat", {}),
              ("epsilon_gamma_box", dict(low=-3, high=3)), ("epsilon_alpha2_beta1", {}),
              ("epsilon_plus", {})]


@given(net=dags(extended=True), composite=st.sampled_from(COMPOSITES), positive=st.booleans())
def test_dag_lrp_matches_reference_tensor_by_tensor(net, composite, positive, conv_algorithm):
    name, kw = composite
    x = _inputs(net, 2, np.float64, positive)
    rules = rp.composites.COMPOSITES[name](**kw).rules(net) if name != "epsilon" else \
        rp.composites.as_composite("epsilon").rules(net)
    f = net(x)
    want_in = ref.lrp(net, x, ref.seed(1, f, scale=True), rules)
    got = rp.lrp(net, x, 1, name, layerwise=True, **kw)
    # error relative to the relevance's scale: Winograd's transforms mix an output's terms
    # with its neighbours', so an element that cancels carries its neighbours' rounding
    assert_allclose(got["input"], want_in, rtol=1e-9, atol=1e-9 * np.abs(want_in).max())
    assert_allclose(rp.lrp(net, x, 1, name, **kw), got["input"], rtol=0, atol=0)


@given(net=dags(bias=False, extended=True, homogeneous=True))
def test_bias_free_dags_conserve(net):
    x = _inputs(net, 3, np.float64, positive=True)
    f = net(x)[:, 2]
    # gradient x input sums to the score (positively homogeneous, piecewise linear)
    assert_allclose(rp.gradient_x_input(net, x, 2).reshape(3, -1).sum(1), f, rtol=1e-9,
                    atol=1e-12)
    # LRP-0 with Norm(0) on additions and average pooling: every node passes on exactly what it
    # gets (checked node by node on the reference's messages), and relprop's input relevance
    # equals the reference's
    comp = rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0)
    rules = comp.rules(net)
    messages = {}
    want = ref.lrp(net, x, ref.seed(2, net(x), scale=True), rules, messages)
    for name, (r, sent) in messages.items():
        assert_allclose(sum(s.reshape(3, -1).sum(1) for s in sent), r.reshape(3, -1).sum(1),
                        rtol=1e-9, atol=1e-10, err_msg=name)
    got = rp.lrp(net, x, 2, comp)
    assert_allclose(got, want, rtol=1e-9, atol=1e-12)
    assert_allclose(got.reshape(3, -1).sum(1), f, rtol=1e-8, atol=1e-10)


@settings(max_examples=15)
@given(net=dags(extended=True))
def test_dag_gradient_matches_central_differences(net):
    x = _inputs(net, 1, np.float64, seed=3)
    acts = ref.forward(net, x)
    # off kinks the directional derivative is exact up to O(h^2); a decision within h of
    # changing (a kink) makes the two differ by O(1)
    assume(_decision_margin(net, acts) > 1e-4)
    u = np.random.default_rng(4).normal(size=x.shape)
    h = 1e-6
    fd = (net(x + h * u)[0, 0] - net(x - h * u)[0, 0]) / (2 * h)
    g = rp.gradient(net, x, 0)
    assert_allclose(g, ref.backward(net, acts, ref.seed(0, acts[-1])), rtol=1e-10, atol=1e-12)
    assert abs(np.vdot(g, u) - fd) <= 1e-5 * max(1.0, abs(fd))


def test_results_do_not_depend_on_the_thread_count(rng):
    net = _residual(rng)
    x = rng.normal(size=(5, 2, 6, 6)).astype(np.float32)
    old = rp.get_num_threads()
    try:
        runs = []
        for t in (1, 2):
            rp.set_num_threads(t)
            runs.append([rp.gradient(net, x, 2), rp.lrp(net, x, 2, "epsilon_gamma_box", low=-3,
                                                        high=3)])
    finally:
        rp.set_num_threads(old)
    for a, b in zip(*runs):
        assert_array_equal(a, b)


def test_layerwise_relevance_is_keyed_by_node(rng):
    net = _residual(rng, bias=False)
    x = rng.uniform(0, 1, (2, 2, 6, 6))
    comp = rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0)
    levels = rp.lrp(net, x, 4, comp, layerwise=True)
    assert list(levels) == ["input"] + [n.name for n in net.nodes]
    f = net(x)[:, 4]
    for name in ("input", "fc", "flat", "pool", "cat"):
        assert_allclose(levels[name].reshape(2, -1).sum(1), f, rtol=1e-9)
    # relu1 feeds conv2 and the addition: its relevance is the sum of both shares, and the
    # cut {relu1, side} carries everything
    cut = levels["relu1"].reshape(2, -1).sum(1) + levels["side"].reshape(2, -1).sum(1)
    assert_allclose(cut, f, rtol=1e-9)


def test_a_rule_may_send_an_input_nothing(rng):
    """A rule's result may hold None for an input that receives nothing (CP-LRP's queries and
    keys): the nodes whose output then receives nothing are skipped (their rules never run),
    their tensors hold zeros in the layerwise result, and the rest is unchanged."""

    class SecondOnly(rp.rules.Pass):  # relevance to the addition's second input alone
        applies_to = ("sum",)

        def relevance(self, layer, a, z, r, parts=None, state=None):
            return (None, r)

    class NeverRun(rp.rules.Epsilon):
        def relevance(self, layer, a, z, r, parts=None, state=None):
            raise AssertionError(f"the rule of {layer!r} ran")

    net = _residual(rng, bias=False)
    x = rng.uniform(0, 1, (2, 2, 6, 6))
    comp = rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0,
                        overrides={"add": SecondOnly(), "conv2": NeverRun(0), "conv3": NeverRun(0)})
    levels = rp.lrp(net, x, 4, comp, layerwise=True)
    for name in ("conv3", "relu2", "conv2"):
        assert_array_equal(levels[name], np.zeros((2,) + net.tensor_shapes((2, 6, 6))[name]))
    assert_array_equal(levels["relu1"], levels["add"])
    eps0 = rp.rules.Epsilon(0)
    want = (ref.lrp_layer(net.node("conv1").layer, eps0, x, levels["relu1"])
            + ref.lrp_layer(net.node("side").layer, eps0, x, levels["side"]))
    assert_allclose(levels["input"], want, rtol=1e-10, atol=1e-14)
    assert_array_equal(rp.lrp(net, x, 4, comp), levels["input"])


def test_composites_map_graph_nodes(rng):
    net = _residual(rng)
    comp = rp.composites.EpsilonGammaBox(low=-1, high=1)
    rules = dict(zip([n.name for n in net.nodes], comp.rules(net)))
    # both convolutions that read the input are "first layers"
    assert type(rules["conv1"]).__name__ == "ZBox" and type(rules["side"]).__name__ == "ZBox"
    assert type(rules["conv2"]).__name__ == "Gamma"
    assert type(rules["add"]).__name__ == "Norm" and type(rules["cat"]).__name__ == "Pass"
    assert type(rules["fc"]).__name__ == "Epsilon"
    over = rp.Composite([("linear", rp.rules.Epsilon())], overrides={"conv2": rp.rules.ZPlus()})
    assert type(dict(zip([n.name for n in net.nodes], over.rules(net)))["conv2"]).__name__ == \
        "ZPlus"
    # an MLP's first layer is a Dense: EpsilonGammaBox's ZBox (for a Conv2d) goes nowhere
    assert [type(r).__name__ for r in comp.rules(nets.mlp(rng))] == ["Epsilon", "Pass"] * 2 + \
        ["Epsilon"]
    with pytest.raises(ValueError, match="overrides name nodes \\['nope'\\]"):
        rp.Composite([], overrides={"nope": rp.rules.ZPlus()}).rules(net)
    with pytest.raises(ValueError, match="cannot be applied to node add"):
        rp.Composite([("linear", rp.rules.Epsilon())],
                     overrides={"add": rp.rules.ZPlus()}).rules(net)


# --- files and pickling -----------------------------------------------------------------------
def test_graph_save_load_and_pickle_round_trip(tmp_path, rng):
    net = _residual(rng)
    x = rng.normal(size=(2, 2, 6, 6))
    net.save(tmp_path / "g.npz")
    for back in (rp.load(tmp_path / "g.npz"), pickle.loads(pickle.dumps(net))):
        assert type(back) is rp.Graph
        assert [(n.name, n.layer.kind, n.inputs) for n in back.nodes] == \
            [(n.name, n.layer.kind, n.inputs) for n in net.nodes]
        assert back.input_shape == net.input_shape
        assert_array_equal(back(x), net(x))
        assert_array_equal(rp.lrp(back, x, 1), rp.lrp(net, x, 1))
        with pytest.raises(ValueError, match="read-only"):
            back.node("conv1").layer.weight[0, 0, 0, 0] = 1.0


def test_version_1_files_still_load(tmp_path, rng):
    # the format before graphs: a list of layers, arrays "{index}.{name}"
    import json

    net = nets.cnn(rng)
    desc = {"format": "relprop", "version": 1, "input_shape": list(net.input_shape),
            "layers": [{"kind": layer.kind, **layer.config()} for layer in net.layers]}
    arrays = {f"{i}.{k}": v for i, layer in enumerate(net.layers)
              for k, v in layer.arrays().items()}
    with open(tmp_path / "v1.npz", "wb") as fh:
        np.savez(fh, __relprop__=np.frombuffer(json.dumps(desc).encode(), np.uint8), **arrays)
    back = rp.load(tmp_path / "v1.npz")
    assert type(back) is rp.Sequential
    x = rng.normal(size=(2,) + net.input_shape)
    assert_array_equal(back(x), net(x))


@pytest.mark.parametrize("edit,match", [
    (lambda d: d["nodes"][1].update(inputs=["nowhere"]), "unknown input 'nowhere'"),
    (lambda d: d["nodes"][1].update(inputs="conv1"), "no list of inputs"),
    (lambda d: d["nodes"][2].update(name="conv1"), "used twice"),
    (lambda d: d["nodes"][0].update(inputs=["relu1"]), "cycle"),
    (lambda d: d.update(output="conv2"), "does not contribute"),
])
def test_graph_files_with_bad_structure_raise(tmp_path, rng, edit, match):
    import json
    import zipfile

    net = _residual(rng)
    net.save(tmp_path / "g.npz")
    with zipfile.ZipFile(tmp_path / "g.npz") as zf:
        members = {i.filename: zf.read(i) for i in zf.infolist()}
    desc = json.loads(np.load(tmp_path / "g.npz")["__relprop__"].tobytes())
    edit(desc)
    buf = tmp_path / "meta.npy"
    np.save(buf, np.frombuffer(json.dumps(desc).encode(), np.uint8))
    members["__relprop__.npy"] = buf.read_bytes()
    with zipfile.ZipFile(tmp_path / "bad.npz", "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    with pytest.raises(ValueError, match=match):
        rp.load(tmp_path / "bad.npz")
