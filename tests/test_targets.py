"""The target "pred": each sample's predicted class, in every method, from the explanation's own
forward pass where the method evaluates the network at ``x`` and from ``x``'s classes where it
evaluates it elsewhere (Taylor's root, SmoothGrad's copies, Integrated Gradients' path, pixel
flipping)."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
from relprop.evaluate import compare, conservation_report, pixel_flipping
from relprop.methods import METHODS
from relprop.stream import explain_chunk

import nets

KWARGS = {"smoothgrad": {"n": 4, "seed": 0}, "integrated_gradients": {"steps": 8},
          "lrp.epsilon_gamma_box": {"low": 0.0, "high": 1.0}}
ALL = sorted(METHODS) + ["lrp.epsilon_plus_flat", "lrp.epsilon", "lrp.epsilon_alpha2_beta1",
                         "lrp.epsilon_gamma_box"]


@pytest.fixture(scope="module")
def problem():
    """The bundled digits CNN (biases), test digits whose top class leads by a margin no
    rounding can cross, and their predicted classes."""
    net = rp.models.digits_cnn()
    x, _ = rp.models.digits_data()
    top2 = np.sort(net(x), axis=1)[:, -2:]
    x = x[top2[:, 1] - top2[:, 0] > 1e-3 * np.abs(top2[:, 1]).max()][:40]
    classes = net(x).argmax(axis=1)
    assert len(x) == 40 and len(set(classes)) > 5
    return net, x, classes


@pytest.mark.parametrize("method", ALL)
@pytest.mark.parametrize("batch_size", [None, 7])
def test_pred_explains_each_samples_predicted_class(problem, method, batch_size):
    net, x, classes = problem
    kw = dict(KWARGS.get(method, {}), batch_size=batch_size)
    assert_array_equal(rp.explain(net, x, "pred", method, **kw),
                       rp.explain(net, x, classes, method, **kw))


def test_pred_away_from_x_is_the_class_at_x(problem):
    """Taylor's zero root and the start of Integrated Gradients' path predict other classes
    than x (the biases decide there), so a "pred" resolved at those points would differ."""
    net, x, classes = problem
    assert (net(x * 2.0**-20).argmax(axis=1) != classes).any()
    for method in ("taylor", "integrated_gradients"):
        kw = KWARGS.get(method, {})
        assert_array_equal(rp.explain(net, x, "pred", method, **kw),
                           rp.explain(net, x, classes, method, **kw))


def test_pred_in_the_evaluations(problem):
    net, x, classes = problem
    R = rp.explain(net, x, classes, "lrp.epsilon")
    filled = net(np.zeros_like(x)).argmax(axis=1)
    assert (filled != classes).any()  # the last step of pixel flipping predicts other classes
    for order in ("most_relevant_first", "least_relevant_first"):
        got = pixel_flipping(net, x, R, "pred", steps=6, order=order, batch_size=50)
        want = pixel_flipping(net, x, R, classes, steps=6, order=order, batch_size=50)
        assert_array_equal(got.curves, want.curves)
    assert_array_equal(conservation_report(net, x, "pred").rel_error,
                       conservation_report(net, x, classes).rel_error)
    methods = ["gradient", "lrp.epsilon"]
    got = compare(net, x[:6], "pred", methods, steps=3)
    want = compare(net, x[:6], classes[:6], methods, steps=3)
    assert got.metrics == want.metrics and got.metrics
    for key, res in want.results.items():
        if res is not None:
            assert_array_equal(got.results[key].scores, res.scores)


@pytest.mark.parametrize("method", ALL)
def test_streamed_chunks_score_the_class_they_explain(problem, method):
    """``relprop explain``'s chunks read the predicted classes and their scores from the
    explanation's forward pass: the classes and scores of ``net(x)``, and the relevance of an
    explicit target."""
    net, x, classes = problem
    kw = KWARGS.get(method, {})
    R, out = explain_chunk(net, x, None, method, kw, batch_size=7)
    assert_array_equal(out.argmax(axis=1), classes)
    f = net(x)  # (the explanation's forward pass may run another conv algorithm: rounding)
    assert_allclose(out, f, rtol=0, atol=1e-5 * np.abs(f).max())
    assert_array_equal(R, rp.explain(net, x, classes, method, batch_size=7, **kw))
    R3, out3 = explain_chunk(net, x, 3, method, kw, batch_size=7)
    assert_allclose(out3, f, rtol=0, atol=1e-5 * np.abs(f).max())
    assert_array_equal(R3, rp.explain(net, x, 3, method, batch_size=7, **kw))


def test_bad_string_targets(problem):
    net, x, _ = problem
    with pytest.raises(ValueError, match="'pred', got 'predicted'"):
        rp.explain(net, x, "predicted", "gradient")
    with pytest.raises(ValueError, match="'pred', got 'max'"):
        rp.explain(net, x, "max", "lrp.epsilon")
    rng = np.random.default_rng(0)
    maps = rp.Sequential([rp.Conv2d(nets.conv_w(rng, 2, 1, 3), None, padding=1)],
                         input_shape=(1, 8, 8))
    for method in ("gradient", "taylor", "lrp.epsilon"):
        with pytest.raises(ValueError, match=r"'pred' needs an output of shape \(n, n_out\)"):
            rp.explain(maps, x[:2], "pred", method)
