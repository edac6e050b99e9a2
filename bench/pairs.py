"""Paired in-process comparisons behind README's claims, LRP EpsilonPlusFlat of the bundled
digits CNN (inputs: the 450 test digits, tiled):

* ``pred``: target "pred" (each sample's predicted class, from the method's own forward pass)
  against ``rp.explain(net, x, net(x).argmax(axis=1))`` (a second forward pass); README,
  "Layer-wise relevance propagation";
* ``side-by-side``: small batches side by side, a batch per thread (the default), against batch
  by batch with both threads splitting every kernel (``SAMPLE_PARALLEL_FLOPS = 0``); README,
  "Threads".

The two sides alternate in one process (a then b, b then a, ...), so that both meet the machine
in the same state; the report gives each side's median and the median and range of the pairs'
ratios (b's time / a's time), and checks that both sides give the same bytes.

    python bench/pairs.py pred [--samples 50000] [--threads 2] [--pairs 10]
    python bench/pairs.py side-by-side [--samples 100000] [--batch-size 64]
"""
import argparse
import statistics
import time

import numpy as np

import relprop as rp
from relprop import _common

METHOD = "lrp.epsilon_plus_flat"
DEFAULT_SAMPLES = {"pred": 50_000, "side-by-side": 100_000}
DEFAULT_BATCH = {"pred": None, "side-by-side": 64}


def sides(case, net, x, batch_size):
    """``(label a, a, label b, b)``: the two jobs of ``case``; b is the one README compares
    against."""
    if case == "pred":
        def pred():
            return rp.explain(net, x, "pred", METHOD, batch_size=batch_size)

        def argmax():
            return rp.explain(net, x, net(x, batch_size=batch_size).argmax(axis=1), METHOD,
                              batch_size=batch_size)

        return "target 'pred'", pred, "target net(x).argmax(axis=1)", argmax

    def side_by_side():
        return rp.explain(net, x, "pred", METHOD, batch_size=batch_size)

    def batch_by_batch():
        saved, _common.SAMPLE_PARALLEL_FLOPS = _common.SAMPLE_PARALLEL_FLOPS, 0
        try:
            return rp.explain(net, x, "pred", METHOD, batch_size=batch_size)
        finally:
            _common.SAMPLE_PARALLEL_FLOPS = saved

    return "batches side by side", side_by_side, "batch by batch", batch_by_batch


def timed(job):
    t0 = time.perf_counter()
    out = job()
    return time.perf_counter() - t0, out


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("case", choices=sorted(DEFAULT_SAMPLES))
    p.add_argument("--samples", type=int, default=None,
                   help="digits explained (default: 50,000 for pred, 100,000 for side-by-side)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=None,
                   help="batch_size (default: relprop's for pred, 64 for side-by-side)")
    p.add_argument("--pairs", type=int, default=10)
    args = p.parse_args()
    samples = args.samples or DEFAULT_SAMPLES[args.case]
    batch = args.batch_size or DEFAULT_BATCH[args.case]
    net = rp.models.digits_cnn()
    digits, _ = rp.models.digits_data()
    x = np.ascontiguousarray(np.resize(digits, (samples,) + digits.shape[1:]))
    rp.set_num_threads(args.threads)
    rp.show_config()
    label_a, a, label_b, b = sides(args.case, net, x, batch)
    timed(a), timed(b)  # warm-up: pools, packed weights
    times_a, times_b = [], []
    for i in range(args.pairs):
        first, second = (a, b) if i % 2 == 0 else (b, a)
        (t1, r1), (t2, r2) = timed(first), timed(second)
        assert np.array_equal(r1, r2), "the two sides must give the same bytes"
        times_a.append(t1 if i % 2 == 0 else t2)
        times_b.append(t2 if i % 2 == 0 else t1)
    ratios = sorted(tb / ta for ta, tb in zip(times_a, times_b))
    print(f"\n{args.case}: {samples:,} digits, {METHOD}, {args.threads} threads, batch_size "
          f"{batch}, {args.pairs} alternating pairs (same bytes on both sides)")
    for label, t in ((label_a, times_a), (label_b, times_b)):
        print(f"  {label}: median {statistics.median(t):.2f} s "
              f"(runs {', '.join(f'{s:.2f}' for s in t)})")
    print(f"  {label_b} / {label_a}: median of the pairs {statistics.median(ratios):.2f}x "
          f"(pairs {ratios[0]:.2f}x to {ratios[-1]:.2f}x)")


if __name__ == "__main__":
    main()
