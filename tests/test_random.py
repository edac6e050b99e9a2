"""The random-draw scheme of relprop._random: a sample's draws depend on (seed, sample index)."""
import numpy as np
import pytest

from relprop import _random


def test_sample_stream_is_numpys_spawned_child():
    # the documented equivalence: sample i's stream is child i of SeedSequence(seed).spawn()
    children = np.random.SeedSequence(1234).spawn(5)
    for i, child in enumerate(children):
        want = np.random.default_rng(child).standard_normal(7)
        got = _random.sample_rng(1234, i).standard_normal(7)
        np.testing.assert_array_equal(got, want)


def test_streams_differ_by_sample_seed_and_stream():
    draw = [_random.sample_rng(s, i, *k).random(4) for s, i, k in
            [(0, 0, ()), (0, 1, ()), (1, 0, ()), (0, 0, (1,))]]
    for a in range(len(draw)):
        for b in range(a + 1, len(draw)):
            assert not np.array_equal(draw[a], draw[b])


def test_per_sample_is_independent_of_the_cut():
    whole = _random.per_sample(7, range(10), lambda g: g.standard_normal(3))
    parts = np.concatenate([_random.per_sample(7, range(a, b), lambda g: g.standard_normal(3))
                            for a, b in [(0, 3), (3, 4), (4, 10)]])
    np.testing.assert_array_equal(parts, whole)


def test_check_seed():
    assert _random.check_seed(5) == 5
    assert isinstance(_random.check_seed(None), int)
    assert _random.check_seed(None) != _random.check_seed(None)
    g = np.random.default_rng(0)
    assert _random.check_seed(g) is g
    with pytest.raises(TypeError, match="relprop.dask.explain: seed must be an int"):
        _random.check_seed(g, chunked="relprop.dask.explain")
    with pytest.raises(TypeError, match="seed must be an int"):
        _random.check_seed(1.5)
    with pytest.raises(TypeError, match="seed must be an int"):
        _random.check_seed(True)
    with pytest.raises(ValueError, match="seed must be >= 0"):
        _random.check_seed(-1)


def test_check_offset():
    assert _random.check_offset(np.int64(3)) == 3
    with pytest.raises(ValueError, match="sample_offset must be >= 0"):
        _random.check_offset(-2)
    with pytest.raises(TypeError, match="sample_offset must be an int"):
        _random.check_offset(2.0)


def test_sample_indices():
    np.testing.assert_array_equal(_random.sample_indices(np.int64(3), 4), [3, 4, 5, 6])
    np.testing.assert_array_equal(_random.sample_indices([7, 7, 2], 3), [7, 7, 2])
    assert _random.sample_indices(np.arange(2, dtype=np.uint8), 2).dtype == np.int64
    for bad, err, match in [(2.0, TypeError, "an int .* or an array of ints"),
                            (np.array([1.0, 2.0]), TypeError, "an array of ints"),
                            (True, TypeError, "an array of ints"),
                            ([1, 2], ValueError, r"shape \(3,\) for 3 samples"),
                            ([1, -1, 0], ValueError, "sample_offset must be >= 0"),
                            (-1, ValueError, "sample_offset must be >= 0")]:
        with pytest.raises(err, match=match):
            _random.sample_indices(bad, 3)


def test_no_two_kinds_of_draws_share_a_stream(rng):
    """A metric's draws, the randomized parameters and a method's own draws (stream ()) come
    from distinct streams: random_logit re-explaining with SmoothGrad, or a fill next to
    SmoothGrad's noise, would otherwise reuse the method's numbers for the same sample (the
    fill's and random_logit's streams: tests/test_evaluate.py, tests/test_metrics_quantus.py)."""
    import nets
    streams = [(), *[(s,) for s in (_random.SUBSETS, _random.NOISE, _random.FILL,
                                    _random.CLASSES, _random.PARAMETERS)]]
    assert len(set(streams)) == len(streams)
    # Graph.randomized: node j's parameters from (seed, j, PARAMETERS), not sample j's stream
    net = nets.mlp(rng, (6, 5, 4))
    j = next(k for k, layer in enumerate(net.layers) if layer.arrays())
    name = net.nodes[j].name
    got = net.randomized([name], seed=11).layers[j].arrays()
    draw = _random.sample_rng(11, j, _random.PARAMETERS)
    for key, a in net.layers[j].arrays().items():
        np.testing.assert_array_equal(got[key], draw.choice(a.ravel(), size=a.shape))
