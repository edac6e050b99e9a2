"""Concept relevance (relprop.concepts): against the NumPy twin of the masking
(``reference.lrp_conditional``) on random graphs, against zennit-crp 0.6 on chains and
torchvision's ResNet and VGG in float64, and conservation."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import relprop as rp
import relprop.concepts as C
from relprop import reference as ref

import nets
from strategies import dags


def _rel(got, want):
    return float(np.abs(np.asarray(got) - want).max() / np.abs(want).max())


def _draw_condition(draw, net, exclude_parallel):
    """A condition on 0-2 nodes of ``net`` (on one path when ``exclude_parallel``)."""
    shapes = net.tensor_shapes(net.input_shape)
    names = [n.name for n in net.nodes]
    picked = []
    for _ in range(draw(st.integers(0, 2))):
        name = draw(st.sampled_from(names))
        if exclude_parallel and picked:
            i, j = sorted((names.index(name), names.index(picked[0])))
            if i == j or i not in C.relevance.upstream(net.schedule, j):
                continue
        picked.append(name)
    cond = {}
    for name in picked:
        c = shapes[name][0]
        cond[name] = draw(st.lists(st.integers(0, c - 1), min_size=1, max_size=c, unique=True))
    y = draw(st.sampled_from([None, 0, 2, "pred", [0, 1]]))
    if y is not None:
        cond["y"] = y
    return cond


@given(net=dags(), data=st.data(), exclude=st.booleans(),
       composite=st.sampled_from(["epsilon_plus_flat", "epsilon_alpha2_beta1", "epsilon"]))
def test_conditional_matches_reference(net, data, exclude, composite):
    """Every sample under every condition = the twin's walk, condition by condition; the
    recorded relevance = what the twin's rule at that node read."""
    x = np.random.default_rng(1).uniform(-1, 1, (2,) + net.input_shape)
    conds = [_draw_condition(data.draw, net, exclude) for _ in range(data.draw(st.integers(1, 3)))]
    names = [n.name for n in net.nodes]
    got = C.conditional(net, x, conds, composite, record=names, exclude_parallel=exclude)
    rules = rp.composites.as_composite(composite).rules(net)
    out = ref.forward(net, x)[-1]
    np.testing.assert_allclose(got.prediction, out, rtol=1e-12, atol=1e-12)
    for j, cond in enumerate(conds):
        y = cond.get("y")
        seed = np.zeros_like(out)
        for s in range(len(x)):
            cls = [int(out[s].argmax())] if y == "pred" else [y] if isinstance(y, int) else y
            seed[s] = out[s] if y is None else 0
            if y is not None:
                seed[s, cls] = out[s, cls]
        masks = {}
        for name, chans in cond.items():
            if name != "y":
                masks[name] = np.isin(np.arange(net.tensor_shapes(net.input_shape)[name][0]),
                                      chans).astype(float)
        messages = {}
        want = ref.lrp_conditional(net, x, seed, rules, masks, exclude, messages)
        scale = max(np.abs(want).max(), 1e-30)
        assert np.abs(got.heatmap[:, j] - want).max() <= 1e-9 * scale
        for name in names:
            r = messages[name][0] if name in messages else 0 * got.relevances[name][:, j]
            assert np.abs(got.relevances[name][:, j] - r).max() <= 1e-9 * max(
                np.abs(r).max(), scale)


@pytest.mark.parametrize("exclude", [True, False])
def test_relevance_around_a_conditioned_node_is_cut_off(exclude):
    """An identity shortcut from the input around a conditioned convolution: what the addition
    sends to the input directly arrives before the walk reaches the convolution, and is cut
    off for the condition (exclude_parallel), as the twin says."""
    rng = np.random.default_rng(3)
    net = rp.Graph([("conv", rp.Conv2d(nets.conv_w(rng, 2, 2, 3), padding=1), "input"),
                    ("relu", rp.ReLU(), "conv"),
                    ("conv2", rp.Conv2d(nets.conv_w(rng, 2, 2, 1)), "relu"),
                    ("add", rp.Add(), ["conv2", "input"]),
                    ("side", rp.Conv2d(nets.conv_w(rng, 2, 2, 1)), "input"),
                    ("cat", rp.Concat(), ["add", "side"]),
                    ("flat", rp.Flatten(), "cat"),
                    ("fc", rp.Dense(nets.dense_w(rng, 3, 4 * 4 * 4)), "flat")],
                   input_shape=(2, 4, 4))
    x = rng.uniform(0, 1, (2, 2, 4, 4))
    conds = [{"conv": [0], "y": 1}, {"conv2": [1], "y": 1}, {"y": 1}]
    got = C.conditional(net, x, conds, "epsilon", exclude_parallel=exclude)
    rules = rp.composites.as_composite("epsilon").rules(net)
    out = net(x)
    seed = np.zeros_like(out)
    seed[:, 1] = out[:, 1]
    for j, cond in enumerate(conds):
        masks = {k: np.isin(np.arange(2), v).astype(float) for k, v in cond.items() if k != "y"}
        want = ref.lrp_conditional(net, x, seed, rules, masks, exclude)
        assert _rel(got.heatmap[:, j], want) <= 1e-12
    plain = rp.lrp(net, x, 1, "epsilon")
    np.testing.assert_allclose(got.heatmap[:, 2], plain, rtol=1e-12, atol=1e-15)
    for j in range(2):  # a batch of one condition cuts whole arrays instead of rows
        alone = C.conditional(net, x, conds[j:j + 1], "epsilon", exclude_parallel=exclude)
        np.testing.assert_allclose(alone.heatmap[:, 0], got.heatmap[:, j], rtol=1e-13,
                                   atol=1e-16)


def test_conditional_is_batch_and_thread_invariant(nthreads):
    net = nets.cnn(np.random.default_rng(0))
    x = np.random.default_rng(1).uniform(0, 1, (5,) + net.input_shape).astype(np.float32)
    conds = [{"0": [0, 2], "y": 1}, {"2": [1], "y": "pred"}, {"0": [1]}]
    whole = C.conditional(net, x, conds, record=["2"])
    parts = C.conditional(net, x, conds, record=["2"], batch_size=2)
    one = C.conditional(net, x[3:4], conds, record=["2"])
    assert np.array_equal(whole.heatmap, parts.heatmap)
    assert np.array_equal(whole.relevances["2"], parts.relevances["2"])
    assert np.array_equal(whole.heatmap[3:4], one.heatmap)


# --- conservation -------------------------------------------------------------------------------
def _bias_free_resnet():
    return rp.models.digits_resnet()  # no biases: LRP-0 conserves f exactly


def test_channels_of_a_node_without_parallel_branch_sum_to_the_heatmap():
    """Conditioned on each channel of a node every path goes through, the heatmaps add up to
    the unconditioned heatmap (the rules are linear in the relevance)."""
    net, (x, y) = _bias_free_resnet(), rp.models.digits_data()
    x, y = x[:3], int(y[0])
    node = net.nodes[0].name  # the stem: every path from the input goes through it
    c = net.tensor_shapes(net.input_shape)[node][0]
    got = C.conditional(net, x, [{node: [ch], "y": y} for ch in range(c)])
    whole = rp.lrp(net, x, y, "epsilon_plus_flat")
    np.testing.assert_allclose(got.heatmap.sum(axis=1), whole, atol=1e-5 * np.abs(whole).max())


def test_bias_free_lrp0_channel_heatmap_sums_to_its_relevance():
    net, (x, _) = _bias_free_resnet(), rp.models.digits_data()
    x = x[:2].astype(np.float64)
    node = net.nodes[0].name
    c = net.tensor_shapes(net.input_shape)[node][0]
    comp = rp.Composite([("linear", rp.rules.Epsilon(0))])
    got = C.conditional(net, x, [{node: [ch], "y": 4} for ch in range(c)], comp)
    per_channel = C.channel_relevance(net, x, 4, [node], comp, abs_norm=False)[node]
    np.testing.assert_allclose(got.heatmap.reshape(2, c, -1).sum(axis=2), per_channel,
                               rtol=1e-9, atol=1e-12)


def test_inside_a_residual_block_the_shortcut_share_is_excluded():
    """With exclude_parallel, all channels of the block's first convolution give what went
    through the block's branch: f_y less what the addition sent to the shortcut (bias-free,
    LRP-0)."""
    net, (x, _) = _bias_free_resnet(), rp.models.digits_data()
    x = x[:1].astype(np.float64)
    add = next(n for n in net.nodes if n.layer.kind == "add")
    names = [n.name for n in net.nodes]
    # the branch: the add's input that is not its shortcut (the shortcut is read elsewhere too)
    shortcut = min(add.inputs, key=lambda t: names.index(t) if t in names else -1)
    branch_conv = next(n for n in net.nodes if n.layer.kind == "conv2d"
                       and n.inputs == (shortcut,))
    c = net.tensor_shapes(net.input_shape)[branch_conv.name][0]
    comp = rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0)
    got = C.conditional(net, x, [{branch_conv.name: [ch], "y": 4} for ch in range(c)], comp)
    messages = {}
    rules = comp.rules(net)
    out = net(x)
    seed = np.zeros_like(out)
    seed[:, 4] = out[:, 4]
    ref.lrp(net, x, seed, rules, messages)
    to_shortcut = messages[add.name][1][list(add.inputs).index(shortcut)]
    branch = got.heatmap.reshape(1, c, -1).sum(axis=(1, 2))
    np.testing.assert_allclose(branch + to_shortcut.reshape(1, -1).sum(axis=1), out[:, 4],
                               rtol=1e-9)
    assert np.abs(to_shortcut).sum() > 1e-3 * np.abs(out[:, 4]).sum()  # a share was excluded


# --- arguments ----------------------------------------------------------------------------------
def test_a_folded_batchnorm_means_its_convolution():
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                      nn.Linear(4 * 6 * 6, 3)).eval()
    net = rp.from_torch(m, (1, 8, 8))
    x = np.random.default_rng(0).uniform(size=(2, 1, 8, 8)).astype(np.float32)
    by_bn = C.conditional(net, x, [{"1": [2], "y": 1}], record=["1"])
    by_conv = C.conditional(net, x, [{"0": [2], "y": 1}], record=["0"])
    assert np.array_equal(by_bn.heatmap, by_conv.heatmap)
    assert np.array_equal(by_bn.relevances["1"], by_conv.relevances["0"])


@pytest.mark.parametrize("conds, exc, match", [
    ([], ValueError, "conditions is empty"),
    ("y", TypeError, "list of dicts"),
    ([["0"]], TypeError, "condition 0: a condition is a dict"),
    ([{"nope": [0]}], ValueError, "condition 0: no node 'nope'"),
    ([{"0": [9]}], ValueError, "node .0.: channel 9 is out of range for 6 channels"),
    ([{"0": ["a"]}], TypeError, "channels must be ints"),
    ([{"y": 1}, {"y": 7}], ValueError, "condition 1: class 7 is out of range for 5"),
    ([{"y": "best"}], ValueError, "'y' must be an int, a list of ints or 'pred'"),
    ([{"y": 1.5}], TypeError, "'y' must be an int"),
])
def test_bad_conditions_are_refused(conds, exc, match):
    net = nets.cnn(np.random.default_rng(0), channels=1, size=8)
    x = np.zeros((1,) + net.input_shape)
    with pytest.raises(exc, match=match):
        C.conditional(net, x, conds)


def test_parallel_nodes_in_one_condition_are_refused():
    rng = np.random.default_rng(0)
    net = rp.Graph([("a", rp.Conv2d(nets.conv_w(rng, 2, 1, 3), padding=1), "input"),
                    ("b", rp.Conv2d(nets.conv_w(rng, 2, 1, 1)), "input"),
                    ("add", rp.Add(), ["a", "b"]), ("flat", rp.Flatten(), "add"),
                    ("fc", rp.Dense(nets.dense_w(rng, 3, 2 * 4 * 4)), "flat")],
                   input_shape=(1, 4, 4))
    x = rng.uniform(size=(1, 1, 4, 4))
    with pytest.raises(ValueError, match="nodes 'a' and 'b' are parallel"):
        C.conditional(net, x, [{"a": [0], "b": [1], "y": 0}])
    masked = C.conditional(net, x, [{"a": [0], "b": [1], "y": 0}], exclude_parallel=False)
    rules = rp.composites.as_composite("epsilon_plus_flat").rules(net)
    seed = np.zeros((1, 3))
    seed[0, 0] = net(x)[0, 0]
    want = ref.lrp_conditional(net, x, seed, rules, {"a": [1, 0], "b": [0, 1]}, False)
    np.testing.assert_allclose(masked.heatmap[:, 0], want, rtol=1e-12, atol=1e-15)


# --- zennit-crp ---------------------------------------------------------------------------------
class _Crp:
    """zennit-crp's CondAttribution returning the input gradient whole (its default sums the
    channels), on the (sample, condition) grid: one call per condition with as many copies of
    it as samples (zennit-crp pairs data and conditions one to one when their counts agree)."""

    def __init__(self, model):
        from crp.attribution import CondAttribution

        class Full(CondAttribution):
            def heatmap_modifier(self, data, on_device=None):
                return data.grad.detach()

        self.att = Full(model)

    def __call__(self, x, conds, composite, record=()):
        import torch

        heat, rels = [], {}
        for cond in conds:
            data = torch.from_numpy(x).requires_grad_(True)
            kw = {} if "y" in cond else {"init_rel": lambda f: f}
            res = self.att(data, [cond] * len(x), composite, record_layer=list(record), **kw)
            heat.append(res.heatmap.numpy())
            for name, r in res.relevances.items():
                rels.setdefault(name, []).append(r.numpy())
        return np.stack(heat, 1), {name: np.stack(r, 1) for name, r in rels.items()}


def _check_crp(net, model, x, conds, composite, zennit_composite, record):
    pytest.importorskip("crp")
    heat, rels = _Crp(model)(x, conds, zennit_composite, record)
    got = C.conditional(net, x, conds, composite, record=record)
    assert np.abs(heat).max() > 0
    assert _rel(got.heatmap, heat) <= 1e-7
    for name in record:
        # zennit-crp records twice the relevance at a conditioned node (torch 2.x runs its
        # retain_grad hook in the partial and in the final backward pass)
        twice = np.array([name in c for c in conds]).reshape((1, -1) + (1,) * (
            rels[name].ndim - 2))
        want = np.where(twice, rels[name] / 2, rels[name])
        assert np.abs(got.relevances[name] - want).max() <= 1e-7 * np.abs(heat).max() + \
            1e-7 * np.abs(want).max()
    return got


def _torch_chain():
    """A float64 torch chain (conv, ReLU, conv, ReLU, max pool, Dense, ReLU, Dense) on 8x8
    images and its relprop import (nodes named by the module positions)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 12),
                      nn.ReLU(), nn.Linear(12, 5)).double().eval()
    return m, rp.from_torch(m, (3, 8, 8))


def test_conditional_matches_zennit_crp_on_a_chain():
    pytest.importorskip("torch")
    zc = pytest.importorskip("zennit.composites")

    m, net = _torch_chain()
    x = np.random.default_rng(0).uniform(0, 1, (2, 3, 8, 8))
    conds = [{"2": [1, 3], "y": 2}, {"6": list(range(7)), "2": [0, 1, 2], "y": 2},
             {"6": [5], "y": 4}]
    _check_crp(net, m, x, conds[:1] + conds[2:], "epsilon_plus_flat", zc.EpsilonPlusFlat(),
               ["2", "6", "0"])
    _check_crp(net, m, x, conds[1:2], rp.composites.EpsilonGammaBox(low=0, high=1),
               zc.EpsilonGammaBox(low=0, high=1),
               ["2", "6"])
    # no "y": the whole output is the seed (zennit-crp's init_rel=lambda f: f)
    _check_crp(net, m, x, [{"2": [1]}, {"2": [4]}], "epsilon_plus_flat", zc.EpsilonPlusFlat(),
               ["2"])


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn"])
def test_conditional_matches_zennit_crp_on_torchvision(name):
    pytest.importorskip("torchvision")
    zc = pytest.importorskip("zennit.composites")
    from zennit.torchvision import ResNetCanonizer, VGGCanonizer

    model = nets.torchvision_model(name).double()
    size = nets.TV_SIZE  # at 32 pixels ResNet's last pooling is the identity: relprop skips it
    net = rp.from_torch(model, (3, size, size))
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, size, size))
    if name.startswith("resnet"):
        # inside a residual block (its shortcut excluded), and two nodes on one path, one of
        # them a BatchNorm folded into its convolution
        conds = [{"layer2.0.conv1": [1, 3], "y": 2}, {"layer2.0.conv1": [0, 5], "y": 7}]
        conds2 = [{"layer3.0.bn2": [4, 9, 17], "layer2.0.conv1": [1, 3, 8], "y": 7}]
        record = ["layer2.0.conv1", "layer1.1.conv2", "layer2.0.downsample.0", "layer3.0.conv1"]
        canonizers = [ResNetCanonizer()]
    else:
        conds = [{"features.4": [1, 3], "y": 2}, {"features.4": [0], "y": 7}]
        conds2 = [{"features.12": list(range(0, 256, 2)), "features.4": list(range(0, 128, 2)),
                   "y": 7}]
        record = ["features.4", "features.8", "features.0"]
        canonizers = [VGGCanonizer()]
    got = _check_crp(net, model, x, conds, "epsilon_plus_flat",
                     zc.EpsilonPlusFlat(canonizers=canonizers), record)
    if name.startswith("resnet"):  # the shortcut around the conditioned node gets nothing
        assert not got.relevances["layer2.0.downsample.0"].any()
    _check_crp(net, model, x, conds2, "epsilon_plus_flat",
               zc.EpsilonPlusFlat(canonizers=canonizers), record[:2])


def test_aliases_name_nodes_and_survive_save_and_load(tmp_path):
    """The module paths of an imported chain and the names of folded BatchNorms stay usable
    in conditions, also after the model file round trip."""
    torch = pytest.importorskip("torch")
    from torch import nn

    torch.manual_seed(0)
    features = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Dropout())
    m = nn.Sequential(features, nn.Flatten(), nn.Linear(4 * 6 * 6, 3)).eval()
    net = rp.from_torch(m, (1, 8, 8))  # a chain: nodes named by position
    assert net.node_name("0.1") == "0" and net.node_name("0.2") == "1"  # the BN folded
    assert net.node_name("2") == "2"  # a node's own name wins over an alias (torch's Linear)
    net.save(tmp_path / "m.npz")
    again = rp.load(tmp_path / "m.npz")
    assert again.aliases == net.aliases
    rng = np.random.default_rng(0)
    graph = rp.Graph([("conv", rp.Conv2d(nets.conv_w(rng, 2, 1, 3)), "input"),
                      ("bn", rp.BatchNorm2d(np.ones(2), np.zeros(2), np.zeros(2), np.ones(2)),
                       "conv"),
                      ("flat", rp.Flatten(), "bn"),
                      ("fc", rp.Dense(nets.dense_w(rng, 3, 2 * 6 * 6)), "flat")],
                     input_shape=(1, 8, 8), aliases={"head": "fc"})
    assert graph.aliases == {"bn": "conv", "head": "fc"}
    graph.save(tmp_path / "g.npz")
    assert rp.load(tmp_path / "g.npz").node_name("bn") == "conv"
    with pytest.raises(KeyError, match="no node 'nope'"):
        graph.node_name("nope")


# --- atlas --------------------------------------------------------------------------------------
def _atlas_equal(a, b):
    assert a.layers == b.layers and a.k == b.k and a.n_samples == b.n_samples
    for name in a.layers:
        for x, y in ((a.relmax, b.relmax), (a.actmax, b.actmax)):
            assert np.array_equal(x[name][0], y[name][0]) and np.array_equal(x[name][1], y[name][1])
        assert np.array_equal(a.relmax_neurons[name], b.relmax_neurons[name])
        assert np.array_equal(a.actmax_neurons[name], b.actmax_neurons[name])
        assert np.array_equal(a.class_relevance[name], b.class_relevance[name])
    assert np.array_equal(a.class_counts, b.class_counts)


def _digits_atlas(**kw):
    net, (x, y) = rp.models.digits_resnet(), rp.models.digits_data()
    return rc_atlas(net, x[:150], ["block1.conv1", "block2.conv2", "fc"], labels=y[:150], k=6,
                    **kw)


def rc_atlas(*args, **kw):
    return C.atlas(*args, **kw)


def test_atlas_is_batch_and_thread_invariant(nthreads):
    whole = _digits_atlas()
    for bs in (9, 64):
        _atlas_equal(whole, _digits_atlas(batch_size=bs))


def test_atlas_class_relevance_is_the_mean_channel_relevance_per_label():
    net, (x, y) = rp.models.digits_resnet(), rp.models.digits_data()
    x, y = x[:150].astype(np.float64), y[:150]
    got = C.atlas(net, x, ["block2.conv2"], labels=y, k=3)
    rel = C.channel_relevance(net, x, y, ["block2.conv2"])["block2.conv2"]
    want = np.stack([rel[y == c].mean(axis=0) if (y == c).any() else np.zeros(rel.shape[1])
                     for c in range(10)])
    np.testing.assert_allclose(got.class_relevance["block2.conv2"], want, rtol=1e-12, atol=1e-15)
    assert np.array_equal(got.class_counts, np.bincount(y, minlength=10))
    # the ranking is that of the channel relevance: best first, ties to the lower index
    order = np.lexsort((np.arange(len(x))[:, None].repeat(rel.shape[1], 1), -rel), axis=0)[:3]
    assert np.array_equal(got.relmax["block2.conv2"][0], order.T)


def test_atlas_ties_go_to_the_lower_sample_index():
    net, (x, y) = rp.models.digits_resnet(), rp.models.digits_data()
    x = np.concatenate([x[:5], x[:5], x[:5]])  # every sample three times: exact ties
    y = np.concatenate([y[:5]] * 3)
    got = C.atlas(net, x, ["block2.conv1"], labels=y, k=3, batch_size=4)
    idx, val = got.relmax["block2.conv1"]
    assert (val[:, 0] == val[:, 1]).all() and (val[:, 1] == val[:, 2]).all()
    first = idx[:, 0]
    assert (first < 5).all()  # the first copy wins, then the others in order
    assert ((idx[:, 1] == first + 5) | (val[:, 0] == 0)).all()
    assert (np.diff(idx, axis=1) > 0).all()


def test_atlas_saves_and_loads_without_pickle(tmp_path):
    a = _digits_atlas()
    a.save(tmp_path / "atlas.npz")
    with np.load(tmp_path / "atlas.npz", allow_pickle=False) as f:
        assert "relmax.0.indices" in f.files
    _atlas_equal(a, C.Atlas.load(tmp_path / "atlas.npz"))
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="bad.npz"):
        C.Atlas.load(tmp_path / "bad.npz")
    net = rp.models.digits_resnet()
    net.save(tmp_path / "model.npz")
    with pytest.raises(ValueError, match="not a relprop atlas"):
        C.Atlas.load(tmp_path / "model.npz")


@pytest.mark.parametrize("kw, exc, match", [
    ({"labels": None}, ValueError, "target='label' needs labels="),
    ({"labels": np.zeros(3, int)}, ValueError, "labels has 3 entries for 10 samples"),
    ({"labels": np.zeros(10)}, TypeError, "labels must be a 1-d array of ints"),
    ({"labels": np.full(10, 10)}, ValueError, "label 10 is out of range for 10 outputs"),
    ({"target": "best"}, ValueError, "target must be 'label', 'pred' or a class"),
    ({"target": 11}, ValueError, "target 11 is out of range"),
    ({"target": "pred", "k": 0}, ValueError, "k"),
    ({"target": "pred", "layers": ["nope"]}, ValueError, "no node 'nope'"),
])
def test_bad_atlas_arguments_are_refused(kw, exc, match):
    net, (x, _) = rp.models.digits_resnet(), rp.models.digits_data()
    kw = {"layers": ["fc"], **kw}
    with pytest.raises(exc, match=match):
        C.atlas(net, x[:10], **kw)


def test_atlas_matches_zennit_crp_feature_visualization(tmp_path):
    """zennit-crp's FeatureVisualization.run with its defaults (ChannelConcept, max_target
    "sum", abs_norm) on the same data: the same top-k samples per channel (where values are
    not tied: zennit-crp breaks ties arbitrarily), the same values and the same most relevant
    (active) neurons."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("crp")
    zc = pytest.importorskip("zennit.composites")
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.helper import load_maximization
    from crp.visualization import FeatureVisualization

    m, net = _torch_chain()
    n, k, layers = 60, 8, ["0", "2", "6"]
    x = torch.rand(n, 3, 8, 8, dtype=torch.float64)
    y = torch.randint(0, 5, (n,))
    fv = FeatureVisualization(CondAttribution(m), [(x[i], int(y[i])) for i in range(n)],
                              {name: ChannelConcept() for name in layers}, path=tmp_path)
    fv.run(zc.EpsilonPlusFlat(), 0, n, batch_size=16)
    got = C.atlas(net, x.numpy(), layers, labels=y.numpy(), k=k, batch_size=16)
    for name in layers:
        for table, neurons, maxi in ((got.relmax, got.relmax_neurons, fv.RelMax),
                                     (got.actmax, got.actmax_neurons, fv.ActMax)):
            d, v, rf = (a[:k].T for a in load_maximization(maxi.PATH, name))
            assert np.abs(table[name][1] - v).max() <= 1e-12
            _, full_v, _ = load_maximization(maxi.PATH, name)
            tied = np.array([[np.sum(np.abs(full_v[:, c] - val) <= 1e-12) > 1 for val in row]
                             for c, row in enumerate(v)])
            assert (~tied).sum() > 0.3 * tied.size
            assert np.array_equal(table[name][0][~tied], d[~tied])
            assert np.array_equal(neurons[name][~tied], rf[~tied])


@given(st.lists(st.floats(-1, 1) | st.floats(-1e-300, 1e-300), min_size=1, max_size=30),
       st.integers(1, 29))
def test_exact_sums_do_not_depend_on_grouping(values, cut):
    """The class sums behind Atlas.class_relevance are integer sums of the shares rounded to
    multiples of 2**-52: any grouping of partial sums gives the same means (a float
    accumulation would depend on the grouping)."""
    from fractions import Fraction

    from relprop.concepts.maximization import ExactSum

    v = np.array(values, dtype=np.float64)[:, None]
    groups = np.arange(len(v)) % 2
    whole = ExactSum.of(v, groups, 2)
    parts = ExactSum.of(v[:cut], groups[:cut], 2) + ExactSum.of(v[cut:], groups[cut:], 2)
    counts = np.bincount(groups, minlength=2)
    assert np.array_equal(whole.mean(counts), parts.mean(counts))
    for g in range(2):
        if counts[g]:
            exact = sum((Fraction(int(np.rint(a * 2.0**52)), 2**52) for a in v[groups == g, 0]),
                        Fraction(0)) / int(counts[g])
            assert abs(whole.mean(counts)[g, 0] - float(exact)) <= 2 ** -50 * abs(float(exact))


# --- relprop.dask.atlas -------------------------------------------------------------------------
@pytest.mark.parametrize("chunks, split_every, scheduler", [
    (13, 2, "threads"), (64, 8, "sync"), (150, 8, "threads"), ((100, 7, 43), 3, "processes")])
def test_dask_atlas_gives_the_in_process_bits(chunks, split_every, scheduler, tmp_path):
    dask = pytest.importorskip("dask")
    da = pytest.importorskip("dask.array")
    import relprop.dask as rd

    net, (x, y) = rp.models.digits_resnet(), rp.models.digits_data()
    x, y = x[:150], y[:150]
    want = _digits_atlas()
    np.save(tmp_path / "x.npy", x)
    xs = rd.from_npy(tmp_path / "x.npy", chunks=chunks) if isinstance(chunks, int) \
        else da.from_array(x, chunks=(chunks, 1, 8, 8))
    ys = da.from_array(y, chunks=37) if scheduler == "threads" else y
    with dask.config.set(scheduler=scheduler):
        got = rd.atlas(net, xs, ["block1.conv1", "block2.conv2", "fc"], labels=ys, k=6,
                       split_every=split_every, batch_size=16)
    _atlas_equal(want, got)


def test_dask_atlas_checks_its_arguments_before_computing():
    da = pytest.importorskip("dask.array")
    import relprop.dask as rd

    net, (x, y) = rp.models.digits_resnet(), rp.models.digits_data()
    xs = da.from_array(x[:20], chunks=10)
    with pytest.raises(ValueError, match="target='label' needs labels="):
        rd.atlas(net, xs, ["fc"])
    with pytest.raises(ValueError, match="labels has 5 entries for 20 samples"):
        rd.atlas(net, xs, ["fc"], labels=y[:5])
    with pytest.raises(ValueError, match="labels must be ints of shape"):
        rd.atlas(net, xs, ["fc"], labels=da.from_array(y[:5], chunks=5))
    with pytest.raises(ValueError, match="no node 'nope'"):
        rd.atlas(net, xs, ["nope"], target="pred")
    with pytest.raises(TypeError, match="must be a dask array"):
        rd.atlas(net, x, ["fc"], target="pred")


@pytest.mark.slow
def test_dask_atlas_on_a_cluster_of_two_workers():
    distributed = pytest.importorskip("distributed")
    da = pytest.importorskip("dask.array")
    import relprop.dask as rd

    net, (x, _) = rp.models.digits_resnet(), rp.models.digits_data()
    want = C.atlas(net, x, ["block2.conv1", "fc"], target="pred", k=5)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=None) as cluster, \
            distributed.Client(cluster):
        got = rd.atlas(net, da.from_array(x, chunks=50), ["block2.conv1", "fc"],
                       target="pred", k=5)
    _atlas_equal(want, got)


# --- references ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_references_match_zennit_crp_get_max_reference(tmp_path):
    """get_max_reference(..., rf=True) heatmaps (channels summed, as zennit-crp returns them)
    on the reference samples both pick (zennit-crp breaks ties arbitrarily), and the crops of
    its plot helper (get_crop_range of the blurred, max-normalized heatmap)."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("crp")
    zc = pytest.importorskip("zennit.composites")
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.helper import max_norm
    from crp.image import get_crop_range
    from crp.visualization import FeatureVisualization
    from torch import nn
    from torchvision.transforms.functional import gaussian_blur

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.ReLU(), nn.Conv2d(6, 8, 3, padding=1),
                      nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * 8 * 8, 5)).double().eval()
    net = rp.from_torch(m, (3, 16, 16))
    n, k, layers, channels = 40, 4, ["2", "5"], [0, 1, 3]
    x = torch.rand(n, 3, 16, 16, dtype=torch.float64)
    y = torch.randint(0, 5, (n,))
    fv = FeatureVisualization(CondAttribution(m), [(x[i], int(y[i])) for i in range(n)],
                              {name: ChannelConcept() for name in layers}, path=tmp_path)
    fv.run(zc.EpsilonPlusFlat(), 0, n, batch_size=16)
    atlas = C.atlas(net, x.numpy(), layers, labels=y.numpy(), k=k)
    compared = 0
    for name in layers:
        for mode in ("relevance", "activation"):
            want = fv.get_max_reference(channels, name, mode, (0, k), zc.EpsilonPlusFlat(),
                                        rf=True, plot_fn=None)
            got = C.references(atlas, net, x.numpy(), name, channels, mode=mode)
            assert got.heatmaps.shape == (3, k, 3, 16, 16)
            for j, c in enumerate(channels):
                data, heat = want[c]
                same = [np.array_equal(data[b].numpy(), x[got.indices[j, b]].numpy())
                        for b in range(k)]
                for b in np.flatnonzero(same):
                    h = heat[b].numpy()
                    if not np.abs(h).max() > 0:
                        continue
                    assert _rel(got.heatmaps[j, b].sum(axis=0), h) <= 1e-12
                    blurred = max_norm(gaussian_blur(heat[b][None], kernel_size=19)[0])
                    r1, r2, c1, c2 = (int(v) for v in get_crop_range(blurred, 0.1))
                    box = got.boxes[j, b]
                    assert np.array_equal(h[r1:r2, c1:c2], h[box[0]:box[1], box[2]:box[3]])
                    compared += 1
    assert compared >= 20


def test_crop_box_blurs_as_torchvision():
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from torchvision.transforms.functional import gaussian_blur as tv_blur

    from relprop.concepts.references import gaussian_blur

    h = np.random.default_rng(0).normal(size=(20, 24))
    for size in (3, 19):
        want = tv_blur(torch.from_numpy(h)[None], kernel_size=size)[0].numpy()
        np.testing.assert_allclose(gaussian_blur(h, size), want, rtol=1e-12, atol=1e-14)
    assert C.crop_box(np.zeros((8, 8))) == (0, 8, 0, 8)  # nothing to crop: the whole image


def test_references_start_at_the_neuron_and_check_their_arguments():
    """The walk from one neuron of a node: bias-free LRP-0 conserves its seed, the channel's
    activation at that neuron, down to the input."""
    net, (x, y) = _bias_free_resnet(), rp.models.digits_data()
    x, y = x[:40].astype(np.float64), y[:40]
    comp = rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0)
    atlas = C.atlas(net, x, ["block1.conv2", "fc"], comp, labels=y, k=3)
    got = C.references(atlas, net, x, "block1.conv2", [2, 5], composite=comp, crop=False)
    acts = net.trace(x).inputs[[n.name for n in net.nodes].index("block1.conv2") + 1]
    for j, c in enumerate([2, 5]):
        for b in range(3):
            a = acts[got.indices[j, b], c].ravel()[got.neurons[j, b]]
            assert got.heatmaps[j, b].sum() == pytest.approx(a, rel=1e-9, abs=1e-12)
    assert (got.boxes == [0, 8, 0, 8]).all()
    dense = C.references(atlas, net, x, "fc", 1, mode="activation")
    assert dense.heatmaps.shape == (1, 3, 1, 8, 8)
    with pytest.raises(ValueError, match="not in the atlas"):
        C.references(atlas, net, x, "block2.conv1", 0)
    with pytest.raises(ValueError, match="channel out of range"):
        C.references(atlas, net, x, "fc", 10)
    with pytest.raises(ValueError, match="mode must be"):
        C.references(atlas, net, x, "fc", 1, mode="both")
    with pytest.raises(ValueError, match="x has 10 samples, the atlas was made of 40"):
        C.references(atlas, net, x[:10], "fc", 1)


# --- attribution graph --------------------------------------------------------------------------
def _check_attribution_graph(model, net, x, composite, root, channel):
    torch = pytest.importorskip("torch")
    pytest.importorskip("crp")
    from crp.attribution import AttributionGraph, CondAttribution
    from crp.concepts import ChannelConcept
    from crp.graph import trace_model_graph
    from crp.helper import get_layer_names
    from torch import nn

    names = get_layer_names(model, [nn.Conv2d, nn.Linear])
    xt = torch.from_numpy(x)
    graph = trace_model_graph(model, xt, names)
    att = AttributionGraph(CondAttribution(model), graph, {n: ChannelConcept() for n in names})
    for target in (2, None):
        nodes, edges = att(xt.clone().requires_grad_(True), composite, channel, root, target,
                           width=[3, 2], verbose=False)
        got = C.attribution_graph(net, x, target, root, channel, width=(3, 2))
        assert sorted(got.nodes) == sorted(nodes) and len(nodes) > 4
        assert set(got.edges) == set(edges)
        for key, lower in edges.items():
            mine = {(n, c): s for n, c, s in got.edges[key]}
            assert set(mine) == {(n, c) for n, c, _ in lower}
            for n, c, s in lower:
                assert mine[n, c] == pytest.approx(s, abs=1e-9)


def test_attribution_graph_matches_zennit_crp_on_a_chain():
    pytest.importorskip("torch")
    zc = pytest.importorskip("zennit.composites")

    m, net = _torch_chain()
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, 8, 8))
    _check_attribution_graph(m, net, x, zc.EpsilonPlusFlat(), "6", 3)


@pytest.mark.slow
def test_attribution_graph_matches_zennit_crp_on_resnet18():
    pytest.importorskip("torchvision")
    zc = pytest.importorskip("zennit.composites")
    from zennit.torchvision import ResNetCanonizer

    model = nets.torchvision_model("resnet18").double()
    net = rp.from_torch(model, (3, nets.TV_SIZE, nets.TV_SIZE))
    x = np.random.default_rng(0).uniform(0, 1, (1, 3, nets.TV_SIZE, nets.TV_SIZE))
    _check_attribution_graph(model, net, x, zc.EpsilonPlusFlat(canonizers=[ResNetCanonizer()]),
                             "layer3.0.conv2", 5)


def test_attribution_graph_arguments():
    net, (x, _) = _bias_free_resnet(), rp.models.digits_data()
    got = C.attribution_graph(net, x[0], 3, "block2.conv2", 1, width=2)
    assert got.nodes[0] == ("block2.conv2", 1) and len(got.nodes) == 3
    assert [n for n, _, _ in got.edges["block2.conv2", 1]] == ["block2.conv1"] * 2
    with pytest.raises(ValueError, match="one sample"):
        C.attribution_graph(net, x[:2], 3, "block2.conv2", 1)
    with pytest.raises(ValueError, match="channel 99 is out of range"):
        C.attribution_graph(net, x[:1], 3, "block2.conv2", 99)
    with pytest.raises(TypeError, match="target must be a class"):
        C.attribution_graph(net, x[:1], "pred", "block2.conv2", 1)
    with pytest.raises(ValueError, match="width must be positive"):
        C.attribution_graph(net, x[:1], 3, "block2.conv2", 1, width=(2, 0))


def test_atlas_memory_is_one_chunk_plus_its_tables():
    """The peak (tracemalloc and relprop's counted buffers, as tests/test_memory.py measures
    it) of an atlas of 10,000 digits in chunks of 256 stays below the bound of an explanation
    in such chunks, the same for 2,000 digits; one chunk of 2,500 exceeds it.  Measured in a
    fresh interpreter: tracemalloc's peak counts every thread's allocations, and threads that
    earlier tests leave behind (a Dask client closing) allocate during the measurement."""
    code = """if True:
        import json, sys
        sys.path.insert(0, sys.argv[1])
        import numpy as np
        import relprop as rp
        from relprop import concepts as C
        from test_memory import FACTOR, activation_bytes, peak_bytes
        net, (x, y) = rp.models.digits_cnn(), rp.models.digits_data()
        peaks = []
        for n in (2000, 10_000):
            X, Y = np.resize(x, (n,) + x.shape[1:]), np.resize(y, n)
            peaks.append(peak_bytes(lambda: C.atlas(net, X, ["0", "2"], labels=Y,
                                                    batch_size=256))[1])
        whole = peak_bytes(lambda: C.atlas(net, X[:2500], ["0", "2"], labels=Y[:2500],
                                           batch_size=2500))[1]
        print(json.dumps([FACTOR * activation_bytes(net, 256), peaks, whole]))
    """
    out = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    limit, peaks, whole = json.loads(out.stdout.splitlines()[-1])
    assert max(peaks) < limit and peaks[1] < 1.1 * peaks[0], (peaks, limit)
    assert whole > limit
