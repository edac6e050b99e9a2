"""relprop.metrics beyond the numbers of Quantus (tests/test_metrics_quantus.py): random draws
as a function of (seed, sample index), batch invariance, the reference twin of the ordered
perturbations, the statistics against SciPy and scikit-image, ``Graph.randomized``, the model
parameter randomization test on relprop's own randomization, and errors."""
import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp
import relprop.metrics as M
from relprop.reference import extra as ref_extra

import nets


@pytest.fixture(scope="module")
def cnn():
    rng = np.random.default_rng(11)
    net = nets.cnn(rng, channels=1, size=8, n_out=4)
    x = rng.uniform(0, 1, (6, 1, 8, 8)).astype(np.float32)
    return net.with_input_shape((1, 8, 8)), x, rng.normal(size=x.shape).astype(np.float32)


METHOD = {"method": "gradient_x_input"}
#: ... re-explaining with a method that draws random numbers too
SMOOTHGRAD = {"method": "smoothgrad", "n": 2}
#: Every metric that draws random numbers, with small settings ("name/method": the metric
#: re-explaining with that method).
RANDOM = {
    "max_sensitivity/smoothgrad": dict(runs=3, **SMOOTHGRAD),
    "local_lipschitz_estimate/smoothgrad": dict(runs=2, **SMOOTHGRAD),
    "random_logit/smoothgrad": dict(**SMOOTHGRAD),
    "model_parameter_randomization/smoothgrad": dict(nodes=["0"], **SMOOTHGRAD),
    "pixel_flipping": dict(steps=8, fill="uniform"),
    "faithfulness_correlation": dict(runs=5, subset=6),
    "monotonicity_correlation": dict(steps=4, runs=3),
    "road": dict(percentages=[10, 50]),
    "max_sensitivity": dict(runs=3, **METHOD),
    "avg_sensitivity": dict(runs=3, **METHOD),
    "local_lipschitz_estimate": dict(runs=3, **METHOD),
    "random_logit": dict(**METHOD),
    "completeness": dict(fill="uniform"),
    "non_sensitivity": dict(fill="uniform", patch=4),
}


@pytest.mark.parametrize("name", sorted(RANDOM))
def test_draws_depend_on_the_sample_index_only(cnn, name):
    """A slice with its sample_offset gets the rows of the whole call, and the batch size
    changes nothing: the same bits."""
    net, x, R = cnn
    fn, kw = getattr(M, name.split("/")[0]), RANDOM[name]
    t = np.array([0, 1, 2, 3, 0, 1])
    whole = fn(net, x, R, t, seed=5, **kw)
    part = fn(net, x[2:], R[2:], t[2:], seed=5, sample_offset=2, batch_size=3, **kw)
    other = fn(net, x, R, t, seed=6, **kw)
    changed = False
    for field in type(whole).per_sample_fields():
        assert_array_equal(getattr(part, field), getattr(whole, field)[2:])
        changed |= not np.array_equal(getattr(other, field), getattr(whole, field),
                                      equal_nan=True)
    assert changed


def test_a_random_method_re_explains_each_sample_with_its_draws(cnn):
    """A metric that re-explains with SmoothGrad draws the noise of every row, perturbed copies
    included, as its sample's (seed, sample_offset + i): unperturbed, the re-explanation is R
    itself, for any batch size (the method used to draw a fresh seed on every call, so no two
    runs agreed and the change was never zero)."""
    net, x, R = cnn
    t = np.array([0, 1, 2, 3])
    kw = dict(seed=5, sample_offset=2, batch_size=3, method="smoothgrad", n=3)
    R = rp.smoothgrad(net, x[2:], t, n=3, seed=5, sample_offset=2)
    for fn in (M.max_sensitivity, M.avg_sensitivity):
        assert_array_equal(fn(net, x[2:], R, t, runs=2, radius=0.0, **kw).values, 0.0)
    assert_array_equal(M.local_lipschitz_estimate(net, x[2:], R, t, runs=2, std=0.0,
                                                  **kw).values, 0.0)
    mprt = M.model_parameter_randomization(net, x[2:], R, t, nodes=[], similarity_func="pearson",
                                           absolute=False, **kw)
    assert_allclose(mprt.similarities[:, 0], 1.0, rtol=1e-12)  # "original": R again
    g = [M.max_sensitivity(net, x[2:], R, t, runs=2, seed=np.random.default_rng(1),
                           batch_size=b, method="smoothgrad", n=3).values for b in (3, None)]
    assert_array_equal(g[0], g[1])  # a Generator: perturbations in row order, any batch
    other = np.array([1, 2, 3, 0])  # R of the other classes: what random_logit re-explains
    Rc = rp.smoothgrad(net, x[2:], other, n=3, seed=5, sample_offset=2)
    assert_allclose(M.random_logit(net, x[2:], Rc, t, classes=other, **kw).scores, 1.0,
                    rtol=1e-12)


def test_default_subsets_are_the_documented_draws(cnn):
    """Sample i's subsets come from SeedSequence(seed, spawn_key=(i, 1)) (stream 1), one
    choice without replacement per run: NumPy alone reproduces them."""
    net, x, R = cnn
    subsets = np.stack([
        np.stack([rng.choice(64, 6, replace=False) for _ in range(5)])
        for rng in (np.random.default_rng(np.random.SeedSequence(3, spawn_key=(i, 1)))
                    for i in range(6))])
    a = M.faithfulness_correlation(net, x, R, 1, runs=5, subset=6, seed=3)
    b = M.faithfulness_correlation(net, x, R, 1, runs=5, subset=6, subsets=subsets)
    assert_array_equal(a.scores, b.scores)


@pytest.mark.parametrize("patch", [1, 3])
def test_pixel_maps_rank_pixels(cnn, patch):
    """R of one value per pixel (n, 1, h, w) on 3-channel images: the reference twin."""
    rng = np.random.default_rng(2)
    net = nets.cnn(rng, channels=3, size=8, n_out=4)
    x = rng.normal(size=(3, 3, 8, 8))
    R = rng.normal(size=(3, 1, 8, 8))
    got = M.pixel_flipping(net, x, R, [0, 1, 2], steps=5, patch=patch)
    n_cells = (-(-8 // patch)) ** 2
    want = ref_extra.pixel_flipping(net, x, R, [0, 1, 2], min(5, n_cells), patch,
                                    np.zeros_like(x))
    assert_allclose(got.curves, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", ["pixel_flipping", "selectivity", "sensitivity_n", "irof",
                                  "monotonicity", "faithfulness_estimate"])
def test_batch_size_changes_nothing(cnn, name):
    net, x, R = cnn
    kw = {"patch": 2} if name == "selectivity" else {}
    a = getattr(M, name)(net, x, R, 1, batch_size=5, **kw)
    b = getattr(M, name)(net, x, R, 1, **kw)
    for field in type(a).per_sample_fields():
        assert_array_equal(getattr(a, field), getattr(b, field))


# ----------------------------------------------------------------------------- statistics --
def test_statistics_are_scipys_and_scikit_images():
    stats = pytest.importorskip("scipy.stats")
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = np.round(rng.normal(size=(5, 40)), 1)  # ties for the ranks
    b = rng.normal(size=(5, 40)) + a
    assert_allclose(M._base.pearson(a, b), [stats.pearsonr(u, v)[0] for u, v in zip(a, b)],
                    rtol=1e-12)
    assert_allclose(M._base.spearman(a, b), [stats.spearmanr(u, v)[0] for u, v in zip(a, b)],
                    rtol=1e-12)
    want = [metrics.structural_similarity(u, v, data_range=max(u.max(), v.max())
                                          - min(u.min(), v.min())) for u, v in zip(a, b)]
    assert_allclose(M._base.ssim(a, b), want, rtol=1e-10)


# --------------------------------------------------------------------- Graph.randomized --
def test_randomized_redraws_each_array_from_its_own_entries():
    net = rp.models.digits_cnn()
    names = [node.name for node in net.nodes if node.layer.arrays()]
    r = net.randomized(names[-1:], seed=4)
    assert type(r) is type(net)
    for node, old in zip(r.nodes, net.nodes):
        for key, a in node.layer.arrays().items():
            b = old.layer.arrays()[key]
            if node.name == names[-1]:
                assert a.shape == b.shape and a.dtype == b.dtype and not np.array_equal(a, b)
                assert np.isin(a, b).all()  # drawn from the layer's own entries
            else:
                assert a is b
    again = net.randomized(names[-1:], seed=4)
    assert_array_equal(again.layers[-1].weight, r.layers[-1].weight)
    both = net.randomized(names, seed=4)  # a node's draw does not depend on the others
    assert_array_equal(both.layers[-1].weight, r.layers[-1].weight)
    assert not np.array_equal(net.randomized(names[-1:], seed=5).layers[-1].weight,
                              r.layers[-1].weight)


def test_randomized_graph_keeps_its_structure():
    net = rp.models.digits_resnet()
    name = next(node.name for node in net.nodes if node.layer.arrays())
    r = net.randomized([name], seed=0)
    assert isinstance(r, rp.Graph) and [n.name for n in r.nodes] == [n.name for n in net.nodes]
    x = rp.models.digits_data()[0][:4]
    assert not np.allclose(r(x), net(x))


@pytest.mark.parametrize("nodes,seed,err,match", [
    (["nope"], 0, ValueError, "cannot randomize: no node 'nope'"),
    (["1"], 0, ValueError, "has no parameters"),
    (["0"], np.random.default_rng(0), TypeError, "seed must be an int"),
])
def test_randomized_errors(nodes, seed, err, match):
    with pytest.raises(err, match=match):
        rp.models.digits_cnn().randomized(nodes, seed)


def test_mprt_on_relprop_randomization(cnn):
    """Cascading from the top: the explanation of each randomized network, compared with
    SciPy's Spearman correlation of the absolute values."""
    stats = pytest.importorskip("scipy.stats")
    net, x, _ = cnn
    t = [0, 1, 2, 3, 0, 1]
    R = rp.explain(net, x, t, method="gradient_x_input")
    got = M.model_parameter_randomization(net, x, R, t, method="gradient_x_input", seed=2)
    names = [node.name for node in net.nodes if node.layer.arrays()][::-1]
    assert got.layers == ["original"] + names
    for k in range(len(names) + 1):
        Rk = rp.explain(net.randomized(names[:k], seed=2) if k else net, x, t,
                        method="gradient_x_input")
        want = [stats.spearmanr(np.abs(a.ravel()), np.abs(b.ravel()))[0]
                for a, b in zip(R, Rk)]
        assert_allclose(got.similarities[:, k], want, rtol=1e-10)
    assert_array_equal(got.scores, got.similarities[:, -1])


# ------------------------------------------------------------------------------- segments --
def test_segment_grid_without_scikit_image(cnn, monkeypatch):
    net, x, R = cnn
    monkeypatch.setitem(__import__("sys").modules, "skimage.segmentation", None)
    segs, how = M.segment(x, "auto")
    assert how == "grid" and segs.shape == (6, 8, 8)
    # 8 x 8 pixels, about 100 segments: cells of 1 pixel
    assert_array_equal(segs[0], np.arange(64).reshape(8, 8))
    assert M.irof(net, x, R, 0).segmentation == "grid"
    with pytest.raises(ImportError, match="scikit-image"):
        M.segment(x, "slic")


# --------------------------------------------------------------------------------- errors --
@pytest.mark.parametrize("call,err,match", [
    (lambda n, x, R: M.pixel_flipping(n, x, R[:, :, :4], 0), ValueError, "R has shape"),
    (lambda n, x, R: M.pixel_flipping(n, x, R, 0, order="up"), ValueError, "order must be"),
    (lambda n, x, R: M.pixel_flipping(n, x, R, 0, channels="x"), ValueError, "channels must"),
    (lambda n, x, R: M.pixel_flipping(n, x, R, 0, fill="black"), ValueError, "fill must be"),
    (lambda n, x, R: M.pixel_flipping(n, x, R, 0, fill=object()), TypeError, "fill must be"),
    (lambda n, x, R: M.pixel_flipping(n, x, R, 9), ValueError, "out of range"),
    (lambda n, x, R: M.faithfulness_correlation(n, x, R, 0, subset=64), ValueError,
     "smaller than the 64 regions"),
    (lambda n, x, R: M.faithfulness_correlation(n, x, R, 0, runs=2, subset=3,
                                                subsets=np.zeros((6, 2, 2), int)),
     ValueError, r"subsets must be ints of shape"),
    (lambda n, x, R: M.monotonicity_correlation(n, x, R, 0, steps=2, runs=2,
                                                noise=np.zeros(3)), ValueError, "noise has"),
    (lambda n, x, R: M.road(n, x, R, np.zeros((6, 4))), ValueError, "needs classes"),
    (lambda n, x, R: M.road(n, x, R, 0, percentages=[120]), ValueError, "percentages"),
    (lambda n, x, R: M.irof(n, x, R, 0, segments=np.zeros((6, 8), int)), ValueError,
     "segments must be"),
    (lambda n, x, R: M.random_logit(n, x, R, 0, classes=np.zeros(6, int)), ValueError,
     "other than the target"),
    (lambda n, x, R: M.max_sensitivity(n, x, R, 0, runs=2, noise=np.zeros((6, 3, 1, 8, 8))),
     ValueError, "noise has shape"),
    (lambda n, x, R: M.max_sensitivity(n, x, R, 0, method="nope"), ValueError,
     "unknown method"),
    (lambda n, x, R: M.model_parameter_randomization(n, x, R, 0, order="up"), ValueError,
     "order must be"),
    (lambda n, x, R: M.top_k_intersection(n, x, R, 0, np.ones_like(x), k=64), ValueError,
     "k must be smaller"),
    (lambda n, x, R: M.pointing_game(n, x, R, 0, 2 * np.ones_like(x)), ValueError, "0/1"),
    (lambda n, x, R: M.pointing_game(n, x, R, 0, np.ones((6, 8, 8))), ValueError,
     "masks have shape"),
])
def test_errors(cnn, call, err, match):
    net, x, R = cnn
    with pytest.raises(err, match=match):
        call(net, x, R)


def test_road_and_irof_need_images():
    rng = np.random.default_rng(0)
    net = nets.mlp(rng, (6, 8, 3))
    x = rng.normal(size=(2, 6))
    for fn in (M.road, M.irof):
        with pytest.raises(ValueError, match="needs images"):
            fn(net, x, x, 0)


# ----------------------------------------------------------------- incremental forward pass --
@pytest.fixture
def cone_always(monkeypatch):
    """Steps of one region each run through the incremental forward pass on any network."""
    import relprop.metrics.faithfulness as F

    monkeypatch.setattr(F, "CONE_MIN_FLOPS", 0)
    monkeypatch.setattr(F, "CONE_MIN_SAVING", 0)


def _full_passes(monkeypatch):
    import relprop.metrics.faithfulness as F

    monkeypatch.setattr(F, "CONE_MIN_FLOPS", float("inf"))


@pytest.mark.parametrize("size,patch", [(12, 3), (13, 4), (9, 1)])
def test_cone_is_the_reference_in_float64(cone_always, size, patch):
    """Region perturbation through the cone (a stride-2 convolution, max and average pooling
    in the chain; patches that do not divide the image) = the reference twin's full passes."""
    from relprop.metrics._cone import Cone

    rng = np.random.default_rng(size)
    net = nets.cnn(rng, channels=2, size=size, n_out=4)
    assert Cone(net, net.input_shape, patch).usable
    x = rng.normal(size=(3, 2, size, size))
    R = rng.normal(size=x.shape)
    n_cells = (-(-size // patch)) ** 2
    got = M.region_perturbation(net, x, R, [0, 1, 3], regions=n_cells, patch=patch)
    want = ref_extra.pixel_flipping(net, x, R, [0, 1, 3], n_cells, patch, np.zeros_like(x))
    assert_allclose(got.curves, want, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name,kw", [
    ("region_perturbation", {"regions": 20, "patch": 2}),
    ("region_perturbation", {"regions": 20, "patch": 2, "order": "least_relevant_first"}),
    ("selectivity", {"patch": 3}),
    ("pixel_flipping", {"fill": "uniform", "channels": "apart"}),
    ("monotonicity", {"patch": 4}),
    ("faithfulness_estimate", {"patch": 3}),
    ("irof", {"segments": "per sample"}),
])
def test_cone_gives_the_bits_of_full_passes(cone_always, monkeypatch, name, kw):
    """float32 with every convolution direct: the cone's scores are bitwise those of the full
    passes (steps of one region each, every mode: remove, insert, alone, per-sample
    segments)."""
    rng = np.random.default_rng(5)
    net = nets.cnn(rng, channels=2, size=12, n_out=4)
    x = rng.normal(size=(4, 2, 12, 12)).astype(np.float32)
    R = rng.normal(size=x.shape).astype(np.float32)
    if kw.get("segments") == "per sample":  # superpixels of different counts per sample
        kw = {"segments": np.stack([(np.arange(144).reshape(12, 12) // d) % 7 * d
                                    for d in (1, 2, 3, 5)]), "fill": 0.0}
    rp.set_conv_algorithm("direct")
    try:
        cone = getattr(M, name)(net, x, R, [0, 1, 2, 3], **kw)
        _full_passes(monkeypatch)
        full = getattr(M, name)(net, x, R, [0, 1, 2, 3], **kw)
    finally:
        rp.set_conv_algorithm(None)
    for field in type(full).per_sample_fields():
        assert_array_equal(getattr(cone, field), getattr(full, field), err_msg=field)


def test_cone_with_the_default_algorithms_is_within_the_winograd_bound(cone_always, monkeypatch):
    """Full maps with Winograd where it is faster, crops direct: the curves agree within 1e-5
    of the largest score (DESIGN 2.5)."""
    rng = np.random.default_rng(6)
    net = rp.Sequential([rp.Conv2d(nets.conv_w(rng, 16, 3, 3), padding=1), rp.ReLU(),
                         rp.Conv2d(nets.conv_w(rng, 16, 16, 3), padding=1), rp.ReLU(),
                         rp.MaxPool2d(2), rp.Flatten(),
                         rp.Dense(nets.dense_w(rng, 5, 16 * 16 * 16))], input_shape=(3, 32, 32))
    x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
    R = rng.normal(size=x.shape).astype(np.float32)
    cone = M.region_perturbation(net, x, R, [0, 1], regions=16, patch=4)
    _full_passes(monkeypatch)
    full = M.region_perturbation(net, x, R, [0, 1], regions=16, patch=4)
    assert_allclose(cone.curves, full.curves, rtol=0, atol=1e-5 * np.abs(full.curves).max())


def test_cone_on_a_graph_stops_where_the_chain_branches(cone_always):
    """digits_resnet: the stem convolution feeds a residual block (two readers): the cone keeps
    the stem only, the rest runs as the suffix; float64 = the reference twin."""
    from relprop.metrics._cone import Cone

    net = rp.models.digits_resnet()
    x = rp.models.digits_data()[0][:3].astype(np.float64)
    cone = Cone(net, net.input_shape, 1)
    assert len(cone.stages) >= 1 and cone.boundary != net.output
    R = np.random.default_rng(0).normal(size=x.shape)
    got = M.pixel_flipping(net, x, R, [0, 1, 2], fill=0.0)
    want = ref_extra.pixel_flipping(net, x, R, [0, 1, 2], 64, 1, np.zeros_like(x))
    assert_allclose(got.curves, want, rtol=1e-9, atol=1e-12)
