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


# ----------------------------------------------------------------- "Coming from Quantus" --
def test_row_black_baseline(grey):
    """Quantus's "black" is each sample's minimum over all of x (its default baseline):
    relprop's fill="min"; relprop's fill=0.0 is another baseline."""
    model, net, x, a, y = grey
    want = quantus.PixelFlipping(features_in_step=8, **PLAIN)(model, x, y, a, softmax=False)
    close(M.pixel_flipping(net, x, a, y, steps=8, fill="min").curves[:, 1:], want)
    zero = M.pixel_flipping(net, x, a, y, steps=8, fill=0.0).curves[:, 1:]
    assert np.abs(zero - np.array(want)).max() > 1e-3


@pytest.mark.parametrize("name,cls,kw", [
    ("pixel_flipping", "PixelFlipping", {"features_in_step": 8}),
    ("selectivity", "Selectivity", {"patch_size": 4}),
    ("sensitivity_n", "SensitivityN", {"features_in_step": 8, "return_aggregate": False}),
])
def test_row_softmax(grey, name, cls, kw):
    """Quantus scores softmax(f) by default in its perturbation metrics; relprop explains and
    scores logits unless softmax=True."""
    model, net, x, a, y = grey
    want = getattr(quantus, cls)(**PLAIN, **kw)(model, x, y, a)  # Quantus's default softmax
    steps = {"patch": 4} if name == "selectivity" else {"steps": 8}
    got = getattr(M, name)(net, x, a, y, fill="min", softmax=True, **steps)
    close(got.correlations if name == "sensitivity_n" else got.curves[:, 1:], want)


def test_row_batch_wide_normalise(grey):
    """Quantus's default normalise divides every attribution by the largest magnitude in the
    whole batch, so one sample's scores move with another's attributions; relprop's do not."""
    model, net, x, a, y = grey
    kw = {"disable_warnings": True}
    alone = quantus.RandomLogit(num_classes=5, **kw)(model, x[:2], y[:2], a[:2], **EXPLAIN)
    b = a[:2].copy()
    b[1] *= 100.0
    moved = quantus.RandomLogit(num_classes=5, **kw)(model, x[:2], y[:2], b, **EXPLAIN)
    assert abs(alone[0] - moved[0]) > 1e-3  # sample 0 changed with sample 1's attributions
    classes = np.array([1, 0])  # (Quantus re-seeds: its draws here, see test_random_logit)
    got = [M.random_logit(net, x[:2], r, y[:2], method=METHOD, classes=classes).scores[0]
           for r in (a[:2], b)]
    assert got[0] == got[1]


def test_row_region_curves_without_the_unperturbed_point(rgb):
    """Quantus's region curves are the drops f(x) - f(x after k regions) for k = 1..K;
    relprop's curves are the scores for k = 0..K (curves[:, 0] = f(x))."""
    model, net, x, a, y = rgb
    want = np.array(quantus.RegionPerturbation(patch_size=4, regions_evaluation=5, **PLAIN)(
        model, x, y, a, softmax=False))
    got = M.region_perturbation(net, x, a, y, regions=5, patch=4, fill="min")
    assert want.shape == (3, 5) and got.curves.shape == (3, 6)
    close(got.curves[:, 0], model(torch.tensor(x)).detach().numpy()[np.arange(3), y])
    close(got.curves[:, :1] - got.curves[:, 1:], want)


def test_row_channels_apart(rgb):
    """Quantus's per-feature metrics rank channel values: the first step of one feature
    changes one channel of a pixel.  relprop ranks pixels (all channels) unless
    channels="apart"."""
    model, net, x, a, y = rgb
    seen = []
    from quantus.functions import perturb_func

    original = perturb_func.batch_baseline_replacement_by_indices

    def spy(arr, indices, **kw):
        out = original(arr=arr, indices=indices, **kw)
        seen.append(out.copy())
        return out

    want = quantus.PixelFlipping(features_in_step=12, perturb_func=spy, **PLAIN)(
        model, x, y, a, softmax=False)
    changed = (seen[0] != x.reshape(3, -1)).reshape(x.shape)
    assert changed.sum(axis=(1, 2, 3)).tolist() == [12] * 3
    assert changed.any(axis=1).sum() > 12  # the 12 values lie in more than 12 / 3 pixels
    close(M.pixel_flipping(net, x, a, y, steps=36, fill="min", channels="apart").curves[:, 1:],
          want)
    together = M.pixel_flipping(net, x, a, y, steps=12, fill="min").curves[:, 1:]
    assert not np.allclose(together, np.array(want)[:, 2::3], rtol=1e-3)


def test_row_monotonicity_defect(grey):
    """Quantus's Monotonicity writes the baseline into the baseline image: its curve is flat
    and every attribution, even the negated one, is monotonic.  relprop inserts x's values
    (the published metric; Quantus agrees given that perturb_func, test_monotonicity)."""
    model, net, x, a, y = grey
    for attribution in (a, -a):
        want = quantus.Monotonicity(features_in_step=4, abs=False, **PLAIN)(
            model, x, y, attribution, softmax=False)
        assert want == [True] * 4
    got = M.monotonicity(net, x, a, y, steps=16, fill="min")
    assert got.scores.tolist() != [1.0] * 4


def test_row_completeness_exact_equality():
    """Quantus's Completeness tests float equality: gradient x input of a bias-free ReLU
    network conserves f(x) - f(0) up to rounding, which Quantus calls incomplete; relprop
    reports the gap and a tolerance (rtol=1e-4)."""
    torch.manual_seed(3)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32, bias=False),
                                torch.nn.ReLU(), torch.nn.Linear(32, 4, bias=False)).eval()
    net = rp.from_torch(model, (1, 8, 8))
    x, _ = problem(6, 1, 8, seed=8)
    y = np.arange(6) % 4
    a = rp.gradient_x_input(net, x, y)
    want = quantus.Completeness(perturb_baseline=0.0, **PLAIN)(model, x, y, a, softmax=False)
    got = M.completeness(net, x, a, y, fill=0.0)
    assert not all(want) and got.scores.tolist() == [1.0] * 6
    assert np.all(np.abs(got.gaps) <= got.tolerance)


def test_row_np_trapz(grey, monkeypatch):
    """Quantus's IROF (and get_auc_score, return_auc_per_sample) call np.trapz, which NumPy
    2.4 removed; relprop's areas work with today's NumPy."""
    model, net = cnn(1, 16)
    x, a = problem(2, 1, 16, seed=3)
    monkeypatch.delattr(np, "trapz", raising=False)
    if np.lib.NumpyVersion(np.__version__) < "2.4.0":
        pytest.skip("this NumPy still has np.trapz")
    with pytest.raises(AttributeError, match="trapz"):
        quantus.IROF(perturb_baseline=0.0, **PLAIN)(model, x, np.array([0, 1]), a,
                                                    softmax=False)
    assert np.isfinite(M.irof(net, x, a, [0, 1], fill=0.0).quantus_auc).all()


def test_row_random_logit_reseeds(grey):
    """Quantus's RandomLogit calls np.random.seed(42) for every batch: the samples at the same
    place of each batch get the same other class.  relprop draws sample i's from (seed, i)."""
    model, net, x, a, y = grey
    y = np.zeros(4, int)
    with recorded("randint") as draws:
        quantus.RandomLogit(num_classes=5, **PLAIN)(model, x, y, a, softmax=False,
                                                    batch_size=2, **EXPLAIN)
    assert_equal = np.testing.assert_array_equal
    assert_equal(draws[0], draws[1])
    got = M.random_logit(net, x, a, y, method=METHOD, seed=9)
    drawn = [np.random.default_rng(np.random.SeedSequence(9, spawn_key=(i, 4))).integers(4)
             for i in range(4)]
    assert_equal(got.classes, np.array(drawn) + 1)  # every class but 0


def test_row_mprt_reinitialization(grey):
    """Quantus re-initializes torch modules (reset_parameters after torch.manual_seed(seed +
    1)); relprop's Graph.randomized redraws each array from its own entries, a different draw
    (test_model_parameter_randomization passes Quantus's networks through nets=)."""
    from quantus.helpers.model.pytorch_model import PyTorchModel

    model, net, x, _, y = grey
    name, reset = next(iter(PyTorchModel(copy.deepcopy(model)).get_random_layer_generator()))
    theirs = reset[int(name)].weight.detach().numpy()
    ours = net.randomized([net.nodes[-1].name], seed=42).layers[-1].weight
    original = model[int(name)].weight.detach().numpy()
    assert np.isin(ours, original).all() and not np.isin(theirs, original).any()


def test_row_absolute_values(grey, masks):
    """Quantus takes |a| by default in AttributionLocalisation (and Monotonicity,
    MonotonicityCorrelation, NonSensitivity, Sparseness, Complexity, MPRT); relprop takes R
    as given where the definition does not say |R|: pass np.abs(R)."""
    model, net, x, a, y = grey
    want = quantus.AttributionLocalisation(**PLAIN)(model, x, y, a, masks)
    close(M.attribution_localisation(net, x, np.abs(a), y, masks).scores, want)


def test_row_irof_batch_padding():
    """Quantus's IROF pads the curves of a batch to the largest segment count and takes
    np.trapz over the padding: a sample's score depends on its batch.  relprop's does not
    (with the same segments, given to both)."""
    model, net = cnn(1, 16)
    x, a = problem(2, 1, 16, seed=3)
    y = np.array([0, 1])
    segments = np.stack([M.segment(x[:1], "grid")[0][0] // 4, M.segment(x[:1], "grid")[0][0]])
    from quantus.helpers import utils

    def given(batch):  # Quantus segments sample after sample: hand it ours in turn
        pending = list(batch)
        return lambda img, segmentation_method: pending.pop(0)

    metric = quantus.IROF(perturb_baseline=0.0, return_aggregate=False, **PLAIN)
    original = utils.get_superpixel_segments
    try:
        utils.get_superpixel_segments = given(segments)
        together = metric(model, x, y, a, softmax=False)
        utils.get_superpixel_segments = given(segments[:1])
        alone = metric(model, x[:1], y[:1], a[:1], softmax=False)
    finally:
        utils.get_superpixel_segments = original
    got = M.irof(net, x, a, y, segments=segments, fill=0.0)
    assert got.segmentation == "given" and got.counts.tolist() == [16, 64]
    close(got.counts[:1] - got.quantus_auc[:1], alone)
    assert abs(together[0] - alone[0]) > 1e-3



def test_row_road_reads_the_first_batch():
    """Quantus's ROAD reports the accuracy of its first batch only (batch_size samples);
    relprop's accuracy is over all samples (here: those of the first batch, to compare)."""
    model, net = cnn(1, 16)
    x, a = problem(5, 1, 16, seed=4)
    y = net(x).argmax(axis=1)
    y[:2] = (y[:2] + 1) % 5
    with recorded("randn") as draws:
        want = quantus.ROAD(percentages=[50], **PLAIN)(model, x, y, a, softmax=False,
                                                       batch_size=2)
    noise = np.zeros((5, 1, 1, 256))
    order = np.argsort(-a.reshape(5, -1), axis=1, kind="stable")
    for i in range(5):
        noise[i, 0][:, order[i, :128]] = draws[i]
    got = M.road(net, x, a, y, percentages=[50], noise=noise.reshape(5, 1, 1, 16, 16))
    assert want[50] == got.correct[:2].mean() == 0.0 and got.accuracy[0] > 0


def test_row_attribution_localisation_weighted(grey, masks):
    """Quantus's weighted AttributionLocalisation divides the mask's size by x_batch[2:].size
    (the batch without its first two samples), so the score depends on the batch size;
    relprop weighs by the mask's share of the pixels."""
    model, net, x, a, y = grey
    b = np.abs(a)
    four = quantus.AttributionLocalisation(weighted=True, **PLAIN)(model, x, y, b, masks)
    three = quantus.AttributionLocalisation(weighted=True, **PLAIN)(model, x[:3], y[:3],
                                                                    b[:3], masks[:3])
    assert abs(four[0] - three[0]) > 1e-3
    plain = quantus.AttributionLocalisation(**PLAIN)(model, x, y, b, masks)
    share = masks.reshape(4, -1).mean(axis=1)
    close(M.attribution_localisation(net, x, b, y, masks, weighted=True).scores,
          np.array(plain) * share)
