"""The default batch size against fixed ones: ``rp.explain`` (LRP EpsilonPlusFlat of each
sample's predicted class) at relprop's default ``batch_size`` and at a sweep of fixed sizes, in
one process, for four cases: the bundled digits CNN at 10,000 and 200,000 samples, the
CIFAR-size CNN (``bench/models.py``) and torchvision's ResNet-18 at 64x64 (random weights,
calibrated BatchNorm) at 2,000 samples each.

Each round runs every batch size of a case once, in an order that alternates between rounds
(forward, then backward), so that all meet the machine in the same states; the table gives each
size's median rate over the rounds and their range, and the ratio of the default's median to
the best fixed size's median.  Every size must give the same bytes (kernels are
batch-invariant); the run stops if one does not.

    python bench/batch_size.py [--rounds 3] [--threads 2] [--cases digits_10k,...] [--quick]

On 2 threads of a 2-core machine the four cases take about half an hour (ResNet-18 most).
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

import relprop as rp

sys.path.insert(0, str(Path(__file__).resolve().parent))
import models as M  # noqa: E402
from layers import cpu_model  # noqa: E402

METHOD = "lrp.epsilon_plus_flat"
#: case -> (network maker, samples, fixed batch sizes of the sweep)
CASES = {
    "digits_10k": ("digits_cnn", 10_000, [32, 64, 128, 256, 512, 1024, 2048, 10_000]),
    "digits_200k": ("digits_cnn", 200_000, [64, 128, 256, 512, 1024, 2048, 8192]),
    "cifar_cnn": ("cifar_cnn", 2_000, [1, 4, 16, 32, 64, 128, 256]),
    "resnet18_64": ("resnet18_64", 2_000, [2, 8, 32, 64, 128, 256]),
}
QUICK_SAMPLES = {"digits_10k": 2_000, "digits_200k": 8_000, "cifar_cnn": 64,
                 "resnet18_64": 64}


def network(name):
    """``(network, input shape)``."""
    if name == "digits_cnn":
        return rp.models.digits_cnn(), (1, 8, 8)
    if name == "cifar_cnn":
        return M.relprop_net(name, M.weights(name)), M.MODELS[name][0]
    shape = (3, 64, 64)
    return rp.from_torch(M.torchvision_model("resnet18", shape=shape), shape), shape


def inputs(name, shape, n):
    if name == "digits_cnn":  # the bundled test digits, tiled
        digits, _ = rp.models.digits_data()
        return np.ascontiguousarray(np.resize(digits, (n,) + digits.shape[1:]))
    return M.inputs(None, n, shape=shape)


def run_case(case, rounds, quick):
    name, n, sizes = CASES[case]
    n = QUICK_SAMPLES[case] if quick else n
    sizes = sorted({min(s, n) for s in sizes})
    net, shape = network(name)
    x = inputs(name, shape, n)
    default = rp.default_batch_size(net, shape)
    configs = [("default", None)] + [(str(s), s) for s in sizes]
    rates = {label: [] for label, _ in configs}
    want = rp.explain(net, x, "pred", METHOD)  # warms up (pools, packed weights): not timed
    for r in range(rounds):
        for label, bs in (configs if r % 2 == 0 else configs[::-1]):
            t0 = time.perf_counter()
            R = rp.explain(net, x, "pred", METHOD, batch_size=bs)
            rates[label].append(n / (time.perf_counter() - t0))
            if not np.array_equal(R, want):
                sys.exit(f"{case}: batch_size={label} gave other bytes than the default")
            del R
    best_label = max((label for label, _ in configs[1:]),
                     key=lambda lb: statistics.median(rates[lb]))
    best = statistics.median(rates[best_label])
    print(f"\n{case}: {name}, {n:,} samples, {METHOD}, target 'pred'; default batch_size = "
          f"{default} (relprop.default_batch_size)")
    print("| batch_size | samples/s, median | range |")
    print("|---|---:|---:|")
    for label, _ in configs:
        med = statistics.median(rates[label])
        shown = f"default ({default})" if label == "default" else label
        mark = " (best fixed)" if label == best_label else ""
        print(f"| {shown}{mark} | {med:,.0f} | {min(rates[label]):,.0f}-"
              f"{max(rates[label]):,.0f} |")
    ratio = statistics.median(rates["default"]) / best
    print(f"default / best fixed ({best_label}): {ratio:.3f}")
    return ratio


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--cases", default=",".join(CASES),
                   help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--quick", action="store_true", help="few samples: checks the script runs")
    args = p.parse_args()
    cases = args.cases.split(",")
    unknown = [c for c in cases if c not in CASES]
    if unknown:
        p.error(f"unknown case {unknown[0]!r}; use {', '.join(CASES)}")
    rp.set_num_threads(args.threads)
    print("command: python " + " ".join(sys.argv))
    print(f"{cpu_model()}; {args.threads} threads; {args.rounds} rounds")
    rp.show_config()
    ratios = {case: run_case(case, args.rounds, args.quick) for case in cases}
    print("\ndefault / best fixed: " + ", ".join(f"{c} {r:.3f}" for c, r in ratios.items()))


if __name__ == "__main__":
    main()
