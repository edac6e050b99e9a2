"""relprop.metrics against Quantus 0.6.0: for every metric, both libraries get the same model
(a small torch CNN, imported with ``from_torch``), inputs, attributions, target and
perturbation choices, and must give the same per-sample scores within 1e-4 of the largest
magnitude (float32, as Quantus computes).  Quantus's random draws are recorded (its NumPy
generator patched) and passed to relprop through ``subsets=``/``noise=``/``classes=``; the
robustness and randomization metrics re-explain inside Quantus with
``relprop.quantus.explain_func``.  The ``test_row_*`` tests hold the rows of the README's
"Coming from Quantus" table.
"""
import contextlib
import copy

import numpy as np
import pytest

import relprop as rp
import relprop.metrics as M
import relprop.quantus as RQ

torch = pytest.importorskip("torch")
quantus = pytest.importorskip("quantus")

# Quantus warns of what these tests do on purpose (empty masks: NaN, 0 / 0)
pytestmark = [pytest.mark.filterwarnings("ignore::UserWarning:quantus.*"),
              pytest.mark.filterwarnings("ignore::RuntimeWarning:quantus.*")]

METHOD = "lrp.epsilon_plus_flat"
#: Quantus's own defaults that relprop does not share, switched off where a test compares
#: numbers: batch-wide normalisation (see test_row_batch_wide_normalise).
PLAIN = {"normalise": False, "disable_warnings": True}


@pytest.fixture(scope="module", autouse=True)
def trapz_shim():
    """Quantus calls np.trapz, which NumPy 2.4 removed (test_row_np_trapz)."""
    had = hasattr(np, "trapz")
    if not had:
        np.trapz = np.trapezoid
    yield
    if not had:
        del np.trapz


def close(got, want, tol=1e-4):
    """Equal within ``tol`` of the largest magnitude (NaN where the other is NaN)."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, (got.shape, want.shape)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    scale = max(np.abs(want[ok]).max(initial=0.0), 1e-12)
    assert np.abs(got[ok] - want[ok]).max(initial=0.0) <= tol * scale, (got, want)


@contextlib.contextmanager
def recorded(name):
    """The values ``numpy.random.<name>`` returns while the block runs, in call order."""
    original, calls = getattr(np.random, name), []

    def record(*args, **kwargs):
        out = original(*args, **kwargs)
        calls.append(np.array(out))
        return out

    setattr(np.random, name, record)
    try:
        yield calls
    finally:
        setattr(np.random, name, original)


def cnn(channels, size, n_out=5, seed=0):
    torch.manual_seed(seed)
    model = torch.nn.Sequential(
        torch.nn.Conv2d(channels, 6, 3, padding=1), torch.nn.ReLU(),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Flatten(), torch.nn.Linear(8 * (size // 2) ** 2, n_out)).eval()
    return model, rp.from_torch(model, (channels, size, size))


def problem(n, channels, size, seed=1):
    """Inputs in [0, 1) (minimum above 0, so that Quantus's "black" is not 0) and normal
    attributions (no ties), float32."""
    r = np.random.default_rng(seed)
    x = r.uniform(0.05, 1, (n, channels, size, size)).astype(np.float32)
    return x, r.normal(size=x.shape).astype(np.float32)


@pytest.fixture(scope="module")
def grey():
    """1 channel of 8x8: Quantus's per-feature metrics and ROAD/IROF need one channel."""
    model, net = cnn(1, 8)
    x, a = problem(4, 1, 8)
    return model, net, x, a, np.array([0, 1, 2, 3])


@pytest.fixture(scope="module")
def rgb():
    """3 channels of 12x12."""
    model, net = cnn(3, 12)
    x, a = problem(3, 3, 12, seed=2)
    return model, net, x, a, np.array([0, 4, 2])


# --------------------------------------------------------------------------- faithfulness --
def test_pixel_flipping(grey):
    model, net, x, a, y = grey
    want = quantus.PixelFlipping(features_in_step=4, **PLAIN)(model, x, y, a, softmax=False)
    auc = quantus.PixelFlipping(features_in_step=4, return_auc_per_sample=True, **PLAIN)(
        model, x, y, a, softmax=False)
    got = M.pixel_flipping(net, x, a, y, steps=16, fill="min")
    close(got.curves[:, 1:], want)
    close(got.quantus_auc, auc)


@pytest.mark.parametrize("order", ["morf", "lerf"])
def test_region_perturbation(rgb, order):
    # patches of 5 on 12x12: Quantus pads to 15 (1 before, 2 after); relprop's grid is the same
    model, net, x, a, y = rgb
    want = quantus.RegionPerturbation(patch_size=5, regions_evaluation=6, order=order,
                                      **PLAIN)(model, x, y, a, softmax=False)
    got = M.region_perturbation(net, x, a, y, regions=6, patch=5, fill="min",
                                order=M.ORDERS[order == "lerf"])
    close(got.curves[:, :1] - got.curves[:, 1:], want)
    close(got.quantus_auc, np.trapezoid(want, axis=1))


def test_abpc(rgb):
    """The area between Quantus's least- and most-relevant-first region curves (its curves are
    drops from f(x), the unperturbed point left out: put it back)."""
    model, net, x, a, y = rgb
    fx = model(torch.tensor(x)).detach().numpy()[np.arange(3), y].astype(np.float64)
    area = {}
    for order in ("morf", "lerf"):
        drops = np.array(quantus.RegionPerturbation(patch_size=4, regions_evaluation=9,
                                                    order=order, **PLAIN)(
            model, x, y, a, softmax=False))
        curve = np.concatenate((fx[:, None], fx[:, None] - drops), axis=1)
        area[order] = np.trapezoid(curve, dx=1 / 9, axis=1)
    got = M.abpc(net, x, a, y, regions=9, patch=4, fill="min")
    close(got.scores, area["lerf"] - area["morf"])


def test_selectivity(rgb):
    model, net, x, a, y = rgb
    want = quantus.Selectivity(patch_size=5, **PLAIN)(model, x, y, a, softmax=False)
    got = M.selectivity(net, x, a, y, patch=5, fill="min")
    close(got.curves[:, 1:], want)
    close(got.quantus_auc, np.trapezoid(want, axis=1))


def test_sensitivity_n(grey):
    model, net, x, a, y = grey
    want = quantus.SensitivityN(features_in_step=4, return_aggregate=False, **PLAIN)(
        model, x, y, a, softmax=False)
    got = M.sensitivity_n(net, x, a, y, steps=16, fill="min")
    close(got.correlations, want)


def test_irof(grey):
    """SLIC superpixels (scikit-image, as Quantus); Quantus runs sample by sample, where its
    batch padding cannot touch the score (test_row_irof_batch_padding)."""
    model, net = cnn(1, 16)
    x, a = problem(3, 1, 16, seed=3)
    y = np.array([1, 0, 2])
    want = quantus.IROF(perturb_baseline=0.0, return_aggregate=False, **PLAIN)(
        model, x, y, a, softmax=False, batch_size=1)
    got = M.irof(net, x, a, y, fill=0.0, segmentation="slic")
    assert got.segmentation == "slic"
    close(got.counts - got.quantus_auc, want)


def test_road(grey):
    """Quantus's imputation noise recorded and passed in; the per-sample outcome (still the
    target class?) and the accuracy per percentage."""
    model, net = cnn(1, 16)
    x, a = problem(5, 1, 16, seed=4)
    y = net(x).argmax(axis=1)
    y[0] = (y[0] + 1) % 5  # a sample whose target is not its class: never "correct"
    pcts = [3, 20, 50, 90]
    metric = quantus.ROAD(percentages=pcts, **PLAIN)
    seen = {}
    post = metric.custom_postprocess

    def keep(**kw):  # Quantus's per-sample outcomes, before it averages them
        seen["results"] = metric.evaluation_scores[0].copy()
        return post(**kw)

    metric.custom_postprocess = keep
    with recorded("randn") as draws:
        want = metric(model, x, y, a, softmax=False)
    order = np.argsort(-a.reshape(5, -1), axis=1, kind="stable")
    noise = np.zeros((5, 4, 1, 256))
    for j, p in enumerate(pcts):
        for i in range(5):  # Quantus: percentage after percentage, sample after sample
            noise[i, j][:, order[i, :int(256 * p / 100)]] = draws[j * 5 + i]
    got = M.road(net, x, a, y, percentages=pcts, noise=noise.reshape(5, 4, 1, 16, 16))
    np.testing.assert_array_equal(got.correct, seen["results"].astype(bool))
    close(got.accuracy, list(want.values()))


def test_impute_is_quantus_noisy_linear_imputation(rng):
    from quantus.functions.perturb_func import noisy_linear_imputation

    image = rng.uniform(size=(2, 7, 9))
    pixels = rng.choice(63, 25, replace=False)
    with recorded("randn") as draws:
        want = noisy_linear_imputation(image, pixels, noise=0.3)
    got = M.impute(image, pixels, 0.3 * draws[0])
    np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)


def _insert_x(arr, indices, source, **kwargs):
    """The perturbation Quantus's Monotonicity means: write x's values (not the baseline's)."""
    out = arr.copy()
    rows = np.arange(len(arr))[:, None]
    out[rows, indices] = source[rows, indices]
    return out


def test_monotonicity(grey):
    model, net, x, a, y = grey
    want = quantus.Monotonicity(features_in_step=4, abs=False, perturb_func=_insert_x,
                                perturb_func_kwargs={"source": x.reshape(4, -1)}, **PLAIN)(
        model, x, y, a, softmax=False)
    got = M.monotonicity(net, x, a, y, steps=16, fill="min")
    np.testing.assert_array_equal(got.scores, np.array(want, dtype=np.float64))
    black = np.broadcast_to(x.reshape(4, -1).min(axis=1).reshape(4, 1, 1, 1), x.shape)
    close(got.curves[:, 0], model(torch.tensor(black)).detach().numpy()[np.arange(4), y])


def test_monotonicity_on_a_monotonic_model():
    """A model whose score is the sum of its inputs: inserting values above the baseline in
    any order raises it, so every attribution is monotonic (in both libraries)."""
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 2, bias=False)).eval()
    with torch.no_grad():
        model[1].weight.fill_(1.0)
    net = rp.from_torch(model, (1, 4, 4))
    x, a = problem(3, 1, 4, seed=5)
    want = quantus.Monotonicity(features_in_step=2, abs=False, perturb_func=_insert_x,
                                perturb_func_kwargs={"source": x.reshape(3, -1)}, **PLAIN)(
        model, x, np.zeros(3, int), a, softmax=False)
    got = M.monotonicity(net, x, a, 0, steps=8, fill="min")
    assert want == [True] * 3
    np.testing.assert_array_equal(got.scores, [1.0, 1.0, 1.0])


def test_monotonicity_correlation(grey):
    model, net, x, a, y = grey
    with recorded("uniform") as draws:  # one value per sample, per step and run
        want = quantus.MonotonicityCorrelation(features_in_step=8, nr_samples=5, abs=False,
                                               **PLAIN)(model, x, y, a, softmax=False)
    noise = np.stack(draws).reshape(8, 5, 4).transpose(2, 0, 1)
    got = M.monotonicity_correlation(net, x, a, y, steps=8, runs=5, noise=noise)
    close(got.scores, want)


def test_faithfulness_estimate(grey):
    model, net, x, a, y = grey
    want = quantus.FaithfulnessEstimate(features_in_step=4, **PLAIN)(model, x, y, a,
                                                                     softmax=False)
    got = M.faithfulness_estimate(net, x, a, y, steps=16, fill="min")
    close(got.scores, want)


@pytest.mark.parametrize("channels", ["together", "apart"])
def test_faithfulness_correlation(grey, rgb, channels):
    model, net, x, a, y = grey if channels == "together" else rgb
    n = len(x)
    with recorded("choice") as draws:
        want = quantus.FaithfulnessCorrelation(nr_runs=10, subset_size=5,
                                               return_aggregate=False, **PLAIN)(
            model, x, y, a, softmax=False)
    subsets = np.stack(draws).reshape(10, n, 5).transpose(1, 0, 2)
    got = M.faithfulness_correlation(net, x, a, y, runs=10, subset=5, fill="min",
                                     subsets=subsets, channels=channels)
    close(got.scores, want)


# ----------------------------------------------------------------------------- robustness --
EXPLAIN = {"explain_func": RQ.explain_func, "explain_func_kwargs": {"method": METHOD}}


@pytest.mark.parametrize("name,draw", [("max_sensitivity", "uniform"),
                                       ("avg_sensitivity", "uniform"),
                                       ("local_lipschitz_estimate", "normal")])
def test_robustness(grey, name, draw):
    """Quantus re-explains its perturbed inputs with relprop.quantus.explain_func."""
    model, net, x, _, y = grey
    a = RQ.explain_func(model, x, y, method=METHOD)
    cls = {"max_sensitivity": quantus.MaxSensitivity, "avg_sensitivity": quantus.AvgSensitivity,
           "local_lipschitz_estimate": quantus.LocalLipschitzEstimate}[name]
    with recorded(draw) as draws:
        want = cls(nr_samples=5, **PLAIN)(model, x, y, a, softmax=False, **EXPLAIN)
    noise = np.stack(draws).reshape((5, 4) + x.shape[1:]).swapaxes(0, 1)
    got = getattr(M, name)(net, x, a, y, method=METHOD, runs=5, noise=noise)
    close(got.scores, want)


def test_explain_func_is_relprop_explain(grey):
    model, net, x, _, y = grey
    np.testing.assert_array_equal(RQ.explain_func(model, x, y, method="gradient", device=None),
                                  rp.explain(net, x, y, method="gradient"))


def test_explain_func_imports_the_model_at_every_call(grey):
    """Quantus's MPRT changes one model in place between calls: the second call explains the
    new weights."""
    model, _, x, _, y = grey
    model = copy.deepcopy(model)
    before = RQ.explain_func(model, x, y, method="gradient")
    with torch.no_grad():
        model[0].weight.mul_(-2.0)
    after = RQ.explain_func(model, x, y, method="gradient")
    np.testing.assert_array_equal(after, rp.explain(rp.from_torch(model, (1, 8, 8)), x, y,
                                                    method="gradient"))
    assert not np.allclose(before, after)


# -------------------------------------------------------------------------- randomization --
@pytest.mark.parametrize("order", ["top_down", "bottom_up", "independent"])
def test_model_parameter_randomization(grey, order):
    """Quantus's randomized models (torch's reset_parameters), imported at each step."""
    from quantus.helpers.model.pytorch_model import PyTorchModel

    model, net, x, _, y = grey
    a = RQ.explain_func(model, x, y, method=METHOD)
    nets = [(name, rp.from_torch(copy.deepcopy(m), (1, 8, 8))) for name, m in
            PyTorchModel(copy.deepcopy(model)).get_random_layer_generator(order, 42)]
    want = quantus.MPRT(layer_order=order, **PLAIN)(copy.deepcopy(model), x, y, a,
                                                    softmax=False, **EXPLAIN)
    got = M.model_parameter_randomization(net, x, a, y, method=METHOD, order=order, nets=nets)
    assert got.layers == list(want)
    close(got.similarities, np.array(list(want.values())).T)


def test_random_logit(grey):
    model, net, x, _, y = grey
    a = RQ.explain_func(model, x, y, method=METHOD)
    with recorded("randint") as draws:
        want = quantus.RandomLogit(num_classes=5, **PLAIN)(model, x, y, a, softmax=False,
                                                           **EXPLAIN)
    drawn = draws[0]  # the index among the classes other than the target
    got = M.random_logit(net, x, a, y, method=METHOD, classes=drawn + (drawn >= y))
    close(got.scores, want)


# ----------------------------------------------------------------------------- complexity --
def test_sparseness(grey):
    model, net, x, a, y = grey
    peak = np.abs(a).reshape(4, -1).max(axis=1).reshape(4, 1, 1, 1)
    want = quantus.Sparseness(**PLAIN)(model, x, y, a / peak)  # scaled as relprop scales
    close(M.sparseness(net, x, a).scores, want)


def test_complexity(grey):
    model, net, x, a, y = grey
    close(M.complexity(net, x, a, y).scores, quantus.Complexity(**PLAIN)(model, x, y, a))


def exact_linear(n=4, seed=7):
    """A linear model and inputs whose scores every library computes exactly (small integer
    weights and bias, inputs in quarters): exact equality means the same in both."""
    r = np.random.default_rng(seed)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor(r.integers(-3, 4, (3, 16)), dtype=torch.float32))
        model[1].bias.copy_(torch.tensor(r.integers(-3, 4, 3), dtype=torch.float32))
    x = (r.integers(0, 9, (n, 1, 4, 4)) / 4).astype(np.float32)
    return model, rp.from_torch(model, (1, 4, 4)), x


def test_completeness():
    """Exact equality (rtol = atol = 0): gradient x input of a linear model sums exactly to
    f(x) - f(0); one sample is moved off by a quarter."""
    model, net, x = exact_linear()
    y = np.array([0, 1, 2, 0])
    a = rp.gradient_x_input(net, x, y)
    a[1, 0, 0, 0] += 0.25
    want = quantus.Completeness(perturb_baseline=0.0, **PLAIN)(model, x, y, a, softmax=False)
    got = M.completeness(net, x, a, y, fill=0.0, rtol=0.0)
    assert list(want) == [True, False, True, True]
    np.testing.assert_array_equal(got.scores, np.array(want, dtype=np.float64))


def test_non_sensitivity(rgb):
    model, net, x, a, y = rgb
    a = a.copy()
    a[:, :, :4] = 0.0  # irrelevant by the explanation: a band of the image
    want = quantus.NonSensitivity(**PLAIN)(model, x, y, a, softmax=False)  # on |a|
    got = M.non_sensitivity(net, x, a, y, fill="min", channels="apart")
    close(got.scores, want)


# --------------------------------------------------------------------------- localisation --
@pytest.fixture(scope="module")
def masks():
    return (np.random.default_rng(5).random((4, 1, 8, 8)) < 0.3).astype(np.float32)


@pytest.mark.parametrize("name,cls,kw", [
    ("pointing_game", "PointingGame", {}),
    ("relevance_mass_accuracy", "RelevanceMassAccuracy", {}),
    ("relevance_rank_accuracy", "RelevanceRankAccuracy", {}),
    ("top_k_intersection", "TopKIntersection", {"k": 10}),
    ("top_k_intersection", "TopKIntersection", {"k": 10, "concept_influence": True}),
    ("attribution_localisation", "AttributionLocalisation", {}),
])
def test_localisation(grey, masks, name, cls, kw):
    model, net, x, a, y = grey
    a = a.copy()
    a[0, 0, 3, 3] = 10.0 * np.abs(a).max()  # a sample whose peak lies ...
    masks = masks.copy()
    masks[0, 0, 3, 3] = 1.0  # ... in the mask
    masks[3] = 0.0  # an empty mask: NaN
    want = np.array(getattr(quantus, cls)(abs=False, **PLAIN, **kw)(model, x, y, a, masks),
                    dtype=np.float64)
    got = getattr(M, name)(net, x, a, y, masks, **kw)
    if name == "pointing_game":  # Quantus's NaN for an empty mask lands in a bool array: True
        assert want[3] == 1.0 and np.isnan(got.scores[3])
        want[3] = np.nan
    close(got.scores, want)


def test_localisation_on_rgb_pools_the_channels(rgb):
    """Images of several channels are compared pixel by pixel: relprop on (n, 3, h, w) maps
    = Quantus on the channel sums."""
    model, net, x, a, y = rgb
    masks = (np.random.default_rng(6).random((3, 1, 12, 12)) < 0.4).astype(np.float32)
    want = quantus.RelevanceMassAccuracy(**PLAIN)(model, x, y, a.sum(axis=1, keepdims=True),
                                                  masks)
    close(M.relevance_mass_accuracy(net, x, a, y, np.repeat(masks, 3, axis=1)).scores, want)
