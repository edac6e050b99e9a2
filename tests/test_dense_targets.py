"""Targets of dense outputs (a segmentation network's per-pixel class scores): a float seed
array shaped like the output is the output relevance; rp.targets.region builds the seed of a
class on a region (one-hot at the class on the mask times the output), whose LRP relevance sums
to the region's score; class targets and "pred" on a dense output are refused with that
hint."""
import os
import re

import numpy as np
import pytest
from numpy.testing import assert_allclose, assert_array_equal

import relprop as rp

import nets


def _segmenter(rng, bias=True):
    """A tiny per-pixel classifier: conv, ReLU, max pooling, a transposed convolution back to
    the input size, a 1x1 convolution to 3 class scores per pixel."""
    b = (lambda n: rng.normal(size=n) * 0.1) if bias else (lambda n: None)
    return rp.Sequential([
        rp.Conv2d(nets.conv_w(rng, 4, 2, 3), b(4), padding=1), rp.ReLU(), rp.MaxPool2d(2),
        rp.ConvTranspose2d(rng.normal(size=(4, 4, 2, 2)) / 2, b(4), stride=2), rp.ReLU(),
        rp.Conv2d(nets.conv_w(rng, 3, 4, 1), b(3))], input_shape=(2, 6, 6))


def test_region_builds_the_class_seed_on_the_mask(rng):
    out = rng.normal(size=(2, 3, 4, 5))
    mask = rng.uniform(size=(4, 5)) < 0.5
    want = np.zeros_like(out)
    for n in range(2):
        want[n, 1][mask] = out[n, 1][mask]
    assert_array_equal(rp.targets.region(out, 1, mask), want)
    for m in (mask[None], mask[None, None], np.stack([mask, mask]), mask.astype(np.uint8)):
        assert_array_equal(rp.targets.region(out, 1, m), want)
    per_sample = rp.targets.region(out, [2, 0], np.stack([mask, ~mask]))
    assert_array_equal(per_sample[0, 2][mask], out[0, 2][mask])
    assert_array_equal(per_sample[1, 0][~mask], out[1, 0][~mask])
    assert per_sample[0, 2][~mask].tolist() == [0] * int((~mask).sum())
    assert np.count_nonzero(per_sample[:, 1]) == 0
    onehot = np.zeros_like(out)
    onehot[:, 1][:, mask] = 1
    assert_array_equal(rp.targets.region(out, 1, mask, scale=False), onehot)
    assert rp.targets.region(out.astype(np.float32), 0, mask).dtype == np.float32


def test_region_errors():
    out = np.zeros((2, 3, 4, 4))
    with pytest.raises(ValueError, match="needs a dense output"):
        rp.targets.region(np.zeros((2, 3)), 0, np.ones(3, bool))
    with pytest.raises(ValueError, match="class 3 is out of range for 3 classes"):
        rp.targets.region(out, 3, np.ones((4, 4), bool))
    with pytest.raises(ValueError, match=r"mask of shape \(4, 5\) does not fit"):
        rp.targets.region(out, 0, np.ones((4, 5), bool))
    with pytest.raises(TypeError, match="boolean or 0/1"):
        rp.targets.region(out, 0, np.full((4, 4), 0.5))
    with pytest.raises(TypeError, match="one per sample"):
        rp.targets.region(out, [0, 1, 2], np.ones((4, 4), bool))


def test_region_relevance_sums_to_the_regions_score(rng):
    """LRP-0 on a bias-free segmenter conserves: the relevance of the region seed sums to the
    class's scores summed over the region; the gradient of the unscaled seed is that sum's."""
    net = _segmenter(rng, bias=False)
    x = rng.uniform(-1, 1, size=(3, 2, 6, 6))
    out = net(x)
    mask = np.zeros((6, 6), bool)
    mask[1:4, 2:6] = True
    seed = rp.targets.region(out, 2, mask)
    score = out[:, 2][:, mask].sum(axis=1)
    R = rp.lrp(net, x, seed, rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0))
    assert_allclose(R.reshape(3, -1).sum(1), score, rtol=1e-10)
    report = rp.conservation(net, x, seed, R)
    assert_allclose(report["score"], score, rtol=1e-12)
    g = rp.gradient(net, x, rp.targets.region(out, 2, mask, scale=False))
    assert_allclose((g * x).reshape(3, -1).sum(1), score, rtol=1e-10)  # homogeneous: = f


@pytest.mark.parametrize("method", ["gradient", "lrp.epsilon_plus_flat", "smoothgrad"])
def test_class_targets_on_a_dense_output_are_refused_with_the_hint(rng, method):
    net = _segmenter(rng)
    x = rng.uniform(-1, 1, size=(2, 2, 6, 6))
    for target in ("pred", 1, [0, 1]):
        with pytest.raises(ValueError, match=r"dense output .*relprop\.targets\.region\(net\(x\), "
                                             r"cls, mask\)"):
            rp.explain(net, x, target, method)
    R = rp.explain(net, x, rp.targets.region(net(x), 1, np.ones((6, 6), bool)), method)
    assert R.shape == x.shape and np.abs(R).max() > 0


def test_dask_explains_dense_seeds_bitwise(rng):
    da = pytest.importorskip("dask.array")
    from relprop import dask as rd

    net = _segmenter(rng)
    x = rng.uniform(-1, 1, size=(5, 2, 6, 6))
    seeds = rp.targets.region(net(x), 2, rng.uniform(size=(5, 6, 6)) < 0.5)
    want = rp.lrp(net, x, seeds, "epsilon_plus_flat")
    got = rd.explain(net, da.from_array(x, chunks=2), seeds, "lrp.epsilon_plus_flat")
    assert_array_equal(got.compute(scheduler="sync"), want)


def _seed_run(tmp_path, rng, n=5):
    """A segmenter's model file, its inputs and the region seeds of its class-1 pixels (files
    in tmp_path), and ``relprop explain``'s arguments for them (chunks of 2 samples)."""
    net = _segmenter(rng)
    net.save(tmp_path / "seg.npz")
    x = rng.uniform(-1, 1, size=(n, 2, 6, 6)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    out = net(x)
    seeds = rp.targets.region(out, 1, out.argmax(axis=1) == 1)
    np.save(tmp_path / "seeds.npy", seeds)
    args = ["explain", str(tmp_path / "seg.npz"), str(tmp_path / "x.npy"), "-o",
            str(tmp_path / "out"), "--target", str(tmp_path / "seeds.npy"), "--chunk-size", "2"]
    return net, x, out, seeds, args


def test_cli_explains_seed_files_chunk_by_chunk(tmp_path, rng, capsys):
    """relprop explain --target SEEDS.npy: each chunk explains its samples' seeds, bitwise the
    in-process result; explained.csv's and the report's score is sum(seed * f(x)); a resumed
    run must find the same seed file."""
    import csv
    import html

    from relprop import cli

    net, x, out, seeds, args = _seed_run(tmp_path, rng)
    args += ["--report"]
    assert cli.main(args) == 0
    R = np.load(tmp_path / "out" / "relevance.npy")
    assert_array_equal(R, rp.lrp(net, x, seeds, "epsilon_plus_flat"))
    with open(tmp_path / "out" / "explained.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["target"] for r in rows] == ["seed"] * 5
    score = (seeds.astype(np.float64) * out).reshape(5, -1).sum(1)
    assert np.abs(score).min() > 0
    assert_allclose([float(r["score"]) for r in rows], score, rtol=1e-5)
    page = html.unescape((tmp_path / "out" / "index.html").read_text())
    assert "sum(seed * f(x))" in page
    for s in score:
        assert f"{s:.6g}" in page
    assert cli.main(args + ["--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    np.save(tmp_path / "seeds.npy", seeds * 2)  # another file of the same size
    st = os.stat(tmp_path / "seeds.npy")  # (written within the clock's tick of the first?)
    os.utime(tmp_path / "seeds.npy", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert cli.main(args + ["--resume"]) == 2
    assert "target" in capsys.readouterr().err


@pytest.mark.parametrize("bad, message", [
    (lambda s: s[:, :2], r"shape \(5, 3, 6, 6\); got float32 \(5, 2, 6, 6\)"),
    (lambda s: s[:4], r"shape \(5, 3, 6, 6\); got float32 \(4, 3, 6, 6\)"),
    (lambda s: s.astype(np.int32), r"needs a float array .* got int32"),
    (lambda s: np.where(np.arange(5)[:, None, None, None] == 3, np.nan, s),
     r"the seed of sample 3 contains NaN"),
    (lambda s: s.tobytes()[:50], r"not a readable \.npy"),
])
def test_cli_refuses_wrong_seed_files(tmp_path, rng, capsys, bad, message):
    from relprop import cli

    *_, seeds, args = _seed_run(tmp_path, rng)
    wrong = bad(seeds)
    if isinstance(wrong, bytes):
        (tmp_path / "seeds.npy").write_bytes(wrong)
    else:
        np.save(tmp_path / "seeds.npy", wrong)
    assert cli.main(args) == 2
    err = capsys.readouterr().err
    assert re.search(r"--target \S*seeds\.npy: .*" + message, err), err


@pytest.mark.slow
def test_cli_explains_seed_files_on_a_local_cluster(tmp_path, rng):
    """--workers: the chunks' seeds travel with them; bitwise the in-process result."""
    pytest.importorskip("distributed")
    from relprop import cli

    net, x, _, seeds, args = _seed_run(tmp_path, rng)
    assert cli.main(args + ["--workers", "1", "--threads", "1"]) == 0
    assert_array_equal(np.load(tmp_path / "out" / "relevance.npy"),
                       rp.lrp(net, x, seeds, "epsilon_plus_flat"))
