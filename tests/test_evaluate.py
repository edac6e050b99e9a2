"""Pixel flipping, conservation reports and the comparison table: reference twin, NumPy peers,
and the signal on the bundled digits CNN (explanations beat a random attribution)."""
import argparse
import io

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from numpy.testing import assert_allclose

import relprop as rp
from relprop import cli
from relprop import reference as ref
from relprop.reference import extra as ref_extra

import nets


@st.composite
def flip_problems(draw):
    """A net, inputs, a relevance map with ties (integer values), a target, steps, patch, fill
    and a batch_size."""
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if draw(st.booleans()):
        net = nets.mlp(rng, tuple(draw(st.lists(st.integers(2, 10), min_size=2, max_size=3))))
        patch = 1
    else:
        net = nets.cnn(rng, channels=draw(st.integers(1, 2)), size=draw(st.integers(6, 9)),
                       n_out=3)
        patch = draw(st.integers(1, 4))
    n = draw(st.integers(1, 3))
    x = rng.normal(size=(n,) + net.input_shape)
    R = np.round(3 * rng.normal(size=x.shape))  # integers: exact sums, real ties
    n_out = net.output_shape[0]
    target = draw(st.one_of(st.integers(0, n_out - 1),
                            st.lists(st.integers(0, n_out - 1), min_size=n, max_size=n)))
    fill = draw(st.sampled_from(["zero", "const", "mean", "array"]))
    return net, x, R, target, patch, fill, draw(st.one_of(st.none(), st.integers(1, 9)))


def _fill_array(x, fill):
    if fill == "zero":
        return 0.0, np.zeros_like(x)
    if fill == "const":
        return -0.5, np.full_like(x, -0.5)
    if fill == "mean":
        axes = (2, 3) if x.ndim == 4 else tuple(range(1, x.ndim))
        return "mean", np.broadcast_to(x.mean(axis=axes, keepdims=True), x.shape)
    img = np.linspace(-1, 1, x[0].size).reshape(x.shape[1:])
    return img, np.broadcast_to(img, x.shape)


@settings(max_examples=30)
@given(problem=flip_problems(), steps=st.one_of(st.none(), st.integers(1, 7)))
def test_pixel_flipping_matches_reference(problem, steps):
    net, x, R, target, patch, fill, batch_size = problem
    fill_arg, fill_arr = _fill_array(x, fill)
    res = rp.evaluate.pixel_flipping(net, x, R, target, steps=steps, patch=patch, fill=fill_arg,
                                     batch_size=batch_size)
    n_regions = (-(-x.shape[2] // patch) * -(-x.shape[3] // patch) if x.ndim == 4
                 else x[0].size)
    k = n_regions if steps is None else steps
    want = ref_extra.pixel_flipping(net, x, R, target, k, patch, fill_arr)
    assert res.curves.shape == (len(x), k + 1)
    assert_allclose(res.curves, want, rtol=1e-9, atol=1e-12)
    assert_allclose(res.fractions, np.linspace(0, 1, k + 1), rtol=1e-12)
    assert_allclose(res.auc, np.trapezoid(want, np.linspace(0, 1, k + 1), axis=1), rtol=1e-9,
                    atol=1e-12)


def test_least_relevant_first_is_most_relevant_first_of_minus_r(rng):
    net = nets.cnn(rng)
    x = rng.normal(size=(2, 3, 12, 12))
    R = np.round(3 * rng.normal(size=x.shape))  # integers: exact sums, real ties
    res = rp.evaluate.pixel_flipping(net, x, R, [1, 2], steps=6, patch=3,
                                     order="least_relevant_first")
    want = ref_extra.pixel_flipping(net, x, -R, [1, 2], 6, 3, np.zeros_like(x))
    assert_allclose(res.curves, want, rtol=1e-9, atol=1e-12)


def test_pixel_flipping_uniform_fill(rng):
    """'uniform' noise stays in each sample's range and is drawn per sample from (seed, its
    index in the whole input), with NumPy's own SeedSequence children: the end point is the
    score of an input fully replaced by that noise, the start point the score of x; a slice
    with its sample_offset gets the same rows."""
    net = nets.mlp(rng, (5, 8, 3))
    x = rng.normal(size=(4, 5))
    R = rng.normal(size=x.shape)
    res = rp.evaluate.pixel_flipping(net, x, R, 2, fill="uniform", seed=1)
    out = ref.forward(net, x)[-1]
    assert_allclose(res.curves[:, 0], out[:, 2], rtol=1e-12)
    noise = np.stack([np.random.default_rng(np.random.SeedSequence(1, spawn_key=(i, 3))).random(5)
                      for i in range(4)])
    lo, hi = x.min(axis=1, keepdims=True), x.max(axis=1, keepdims=True)
    assert_allclose(res.curves[:, -1], ref.forward(net, lo + (hi - lo) * noise)[-1][:, 2],
                    rtol=1e-9)
    part = rp.evaluate.pixel_flipping(net, x[2:], R[2:], 2, fill="uniform", seed=1,
                                      sample_offset=2)
    np.testing.assert_array_equal(part.curves, res.curves[2:])


@pytest.mark.parametrize("kwargs,err,match", [
    ({"R": np.zeros((2, 5))}, ValueError, r"R has shape \(2, 5\)"),
    ({"patch": 2}, ValueError, "patch=2 needs images"),
    ({"order": "random"}, ValueError, "order must be one of"),
    ({"fill": "median"}, ValueError, "fill must be"),
    ({"fill": np.zeros(3)}, ValueError, r"fill has shape \(3,\)"),
    ({"steps": 0}, ValueError, "steps must be >= 1"),
    ({"target": [0, 1, 2]}, ValueError, "3 classes for a batch of 2"),
])
def test_pixel_flipping_errors(rng, kwargs, err, match):
    net = nets.mlp(rng, (6, 8, 3))
    args = {"R": np.zeros((2, 6)), "target": 0, **kwargs}
    with pytest.raises(err, match=match):
        rp.evaluate.pixel_flipping(net, rng.normal(size=(2, 6)), args.pop("R"),
                                   args.pop("target"), **args)


def test_conservation_report_matches_reference(rng):
    net = nets.cnn(rng)
    x = rng.normal(size=(5, 3, 12, 12))
    target = [0, 1, 2, 3, 4]
    rep = rp.evaluate.conservation_report(net, x, target, method="gradient_x_input",
                                          batch_size=2)
    out = ref.forward(net, x)[-1]
    score = out[np.arange(5), target]
    rel = ref.gradient_x_input(net, x, target).reshape(5, -1).sum(axis=1)
    err = np.abs(score - rel)
    assert_allclose(rep.score, score, rtol=1e-12)
    assert_allclose(rep.relevance, rel, rtol=1e-9)
    s = rep.summary()
    assert s["n"] == 5 and s["method"] == "gradient_x_input"
    assert_allclose([s["mean_abs"], s["max_abs"]], [err.mean(), err.max()], rtol=1e-9)
    assert_allclose([s["mean_rel"], s["max_rel"]],
                    [(err / np.abs(score)).mean(), (err / np.abs(score)).max()], rtol=1e-9)
    assert "gradient_x_input: n=5" in str(rep)


def test_conservation_report_lrp0_bias_free_is_exact(rng):
    """LRP-0 on a bias-free ReLU net without average pooling conserves the score."""
    net = nets.mlp(rng, (12, 16, 10, 4), bias=False)
    x = rng.normal(size=(20, 12))
    rep = rp.evaluate.conservation_report(net, x, 1, method="lrp.epsilon", epsilon=0.0)
    assert rep.max_abs <= 1e-9 * np.abs(rep.score).max()


def test_compare_table_and_markdown(rng):
    net = nets.cnn(rng)
    x = rng.normal(size=(3, 3, 12, 12))
    table = rp.evaluate.compare(net, x, [0, 1, 2], ["gradient_x_input", "lrp.epsilon", "random"],
                                ["pixel_flipping", "max_sensitivity"], steps=4, patch=3, runs=2)
    assert table.methods == ["gradient_x_input", "lrp.epsilon", "random"]
    R = ref.gradient_x_input(net, x, [0, 1, 2])
    want = ref_extra.pixel_flipping(net, x, R, [0, 1, 2], 4, 3, np.zeros_like(x))
    auc = np.trapezoid(want, np.linspace(0, 1, 5), axis=1).mean()
    assert_allclose(table.value("gradient_x_input", "pixel_flipping"), auc, rtol=1e-9)
    assert table.results[("random", "max_sensitivity")] is None  # nothing to re-explain
    md = table.to_markdown().splitlines()
    assert md[0] == ("| method | pixel_flipping (lower is better) | max_sensitivity (lower is "
                     "better) |")
    assert len(md) == 2 + 3 and md[-1].startswith("| random |") and md[-1].endswith("| n/a |")


@pytest.mark.parametrize("kwargs,match", [
    ({"metrics": ["nope"]}, "unknown metric 'nope'"),
    ({"metrics": ["pointing_game"]}, "needs the masks"),
    ({"metrics": ["pixel_flipping"], "runs": 3}, "no metric of .* takes runs"),
])
def test_compare_errors(rng, kwargs, match):
    net = nets.mlp(rng, (6, 8, 3))
    with pytest.raises(ValueError, match=match):
        rp.metrics.compare(net, rng.normal(size=(2, 6)), 0, ["gradient"], **kwargs)


@pytest.mark.parametrize("methods, metrics", [
    ([], ["sparseness"]), (["gradient"], []), ("gradient", ["sparseness"]),
    (["gradient"], "sparseness"), (["gradient", "gradient"], ["sparseness"]),
])
def test_compare_needs_distinct_methods_and_metrics(rng, methods, metrics):
    """No method gave an empty Comparison whose table raised StopIteration; a string was taken
    letter by letter; a name given twice overwrote its first results."""
    net = nets.mlp(rng, (6, 8, 3))
    with pytest.raises(ValueError, match="must be a non-empty sequence of distinct names"):
        rp.metrics.compare(net, rng.normal(size=(2, 6)), 0, methods, metrics)


# --- the bundled digits CNN ------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits():
    from relprop.models import digits_cnn, digits_data

    x, y = digits_data("test")
    return digits_cnn(), x[:120], y[:120]


@pytest.mark.parametrize("method", ["lrp.epsilon", "lrp.epsilon_plus_flat", "gradient_x_input"])
def test_explanations_beat_random_attribution_on_digits(digits, method):
    """Removing the pixels an explanation ranks most relevant first destroys the score faster
    than removing pixels in a random order (averaged over 120 test digits, 16 steps of 4
    pixels)."""
    net, x, y = digits
    R = rp.explain(net, x, y, method=method)
    random_R = np.random.default_rng(0).random(x.shape)
    got = rp.evaluate.pixel_flipping(net, x, R, y, steps=16)
    rand = rp.evaluate.pixel_flipping(net, x, random_R, y, steps=16)
    assert got.mean_auc < rand.mean_auc - 1.0
    assert (got.auc < rand.auc).mean() > 0.8


def _run_cli(argv):
    parser = argparse.ArgumentParser(prog="relprop")
    cli.add_evaluate_parser(parser.add_subparsers())
    args = parser.parse_args(["evaluate"] + argv)
    out = io.StringIO()
    assert args.func(args, file=out) == 0
    return out.getvalue()


def _row(text, method):
    """The cells of ``method``'s row of a printed table."""
    (line,) = [t for t in text.splitlines() if t.startswith(f"| {method} |")]
    return [c.strip() for c in line.split("|")[2:-1]]


def test_cli_evaluate_on_bundled_model(digits):
    net, x, y = digits
    text = _run_cli(["digits_cnn", "digits", "--limit", "12", "--methods",
                     "gradient_x_input,random", "--steps", "8", "--target", "label",
                     "--metrics", "pixel_flipping,faithfulness_estimate"])
    lines = text.splitlines()
    assert lines[1] == ("| method | pixel_flipping (lower is better) | faithfulness_estimate "
                        "(higher is better) |")
    x64 = x[:12].astype(np.float64)
    R = ref.gradient_x_input(net, x64, y[:12])
    want = ref_extra.pixel_flipping(net, x64, R, y[:12], 8, 1, np.zeros(x[:12].shape))
    auc = np.trapezoid(want, np.linspace(0, 1, 9), axis=1).mean()
    assert_allclose(float(_row(text, "gradient_x_input")[0]), auc, rtol=1e-3)
    assert lines[4].startswith("| random |")


def test_cli_evaluate_on_files(tmp_path, rng):
    net = nets.mlp(rng, (6, 8, 3))
    net.save(tmp_path / "m.npz")
    np.savez(tmp_path / "in.npz", x=rng.normal(size=(4, 6)), y=np.array([0, 1, 2, 0]))
    np.save(tmp_path / "in.npy", rng.normal(size=(4, 6)))
    for inputs, target in (("in.npz", "label"), ("in.npy", "1"), ("in.npy", "pred")):
        text = _run_cli([str(tmp_path / "m.npz"), str(tmp_path / inputs), "--methods",
                         "gradient", "--target", target, "--fill", "mean",
                         "--metrics", "pixel_flipping,sparseness"])
        assert "| gradient |" in text and "fill=mean" in text
    with pytest.raises(ValueError, match="--target label needs INPUTS with labels"):
        _run_cli([str(tmp_path / "m.npz"), str(tmp_path / "in.npy"), "--target", "label"])
    with pytest.raises(ValueError, match="unknown method 'lrp.nope'"):
        _run_cli([str(tmp_path / "m.npz"), str(tmp_path / "in.npy"), "--methods", "lrp.nope"])
    with pytest.raises(ValueError, match="unknown metric 'nope'"):
        _run_cli([str(tmp_path / "m.npz"), str(tmp_path / "in.npy"), "--metrics", "nope"])


def test_cli_evaluate_metric_families_parameters_and_masks(tmp_path):
    """--metrics takes families, --set gives a parameter to the metrics that take it, --masks
    feeds the localisation metrics: the numbers of relprop.metrics on the same inputs."""
    from relprop.models import digits_cnn, digits_data

    x, y = digits_data("test")
    x = x[:6]
    masks = (x > 0.5).astype(np.float32)
    np.save(tmp_path / "masks.npy", masks)
    text = _run_cli(["digits_cnn", "digits", "--limit", "6", "--methods", "gradient",
                     "--metrics", "localisation,max_sensitivity", "--masks",
                     str(tmp_path / "masks.npy"), "--set", "runs=3", "--set", "k=5"])
    net = digits_cnn()
    pred = ref.forward(net, x.astype(np.float64))[-1].argmax(axis=1)
    R = rp.gradient(net, x, pred)
    cells = _row(text, "gradient")
    assert len(cells) == 6
    want = rp.metrics.relevance_mass_accuracy(net, x, R, pred, masks).mean
    assert_allclose(float(cells[1]), want, rtol=1e-3)
    want = rp.metrics.top_k_intersection(net, x, R, pred, masks, k=5).mean
    assert_allclose(float(cells[3]), want, rtol=1e-3)
    want = rp.metrics.max_sensitivity(net, x, R, pred, method="gradient", runs=3).mean
    assert_allclose(float(cells[5]), want, rtol=1e-3)


def test_relprop_evaluate_command(capsys):
    assert cli.main(["evaluate", "digits_mlp", "digits", "--limit", "10", "--steps", "4",
                     "--methods", "lrp.epsilon,random", "--metrics", "pixel_flipping"]) == 0
    out = capsys.readouterr().out
    assert "| lrp.epsilon |" in out and "| random |" in out
    assert cli.main(["evaluate", "digits_mlp", "digits", "--methods", "nope"]) == 2
    assert "unknown method 'nope'" in capsys.readouterr().err
    # metric parameters the metrics refuse are usage errors, found on one sample before the
    # work (the re-explaining metrics run there too)
    for bad, message in ((["--metrics", "faithfulness_correlation", "--set", "subset=100"],
                          "subset must be smaller than the 64 regions"),
                         (["--metrics", "max_sensitivity", "--set", "runs=0"],
                          "runs must be >= 1")):
        assert cli.main(["evaluate", "digits_cnn", "digits", "--limit", "3", "--methods",
                         "random,gradient", *bad]) == 2
        assert message in capsys.readouterr().err


def test_cli_evaluate_on_the_bundled_graph():
    # the residual network: pixel flipping of LRP on a graph, against the reference twin
    from relprop.models import digits_data, digits_resnet

    net = digits_resnet()
    x, y = digits_data("test")
    x = x[:6]
    text = _run_cli(["digits_resnet", "digits", "--limit", "6", "--methods",
                     "lrp.epsilon_plus_flat", "--steps", "4", "--target", "label",
                     "--metrics", "pixel_flipping"])
    rules = rp.composites.as_composite("epsilon_plus_flat").rules(net)
    x64 = x.astype(np.float64)
    R = ref.lrp(net, x64, ref.seed(y[:6], ref.forward(net, x64)[-1], scale=True), rules)
    want = ref_extra.pixel_flipping(net, x64, R, y[:6], 4, 1, np.zeros(x.shape))
    auc = np.trapezoid(want, np.linspace(0, 1, 5), axis=1).mean()
    assert_allclose(float(_row(text, "lrp.epsilon_plus_flat")[0]), auc, rtol=1e-3)
