"""Streaming throughput: ``relprop explain`` writing a .npy of digits to disk, against the best
in-process rate of the same explanation, in one process (LRP EpsilonPlusFlat of each sample's
predicted class, the bundled digits CNN; inputs: the 450 test digits tiled, slightly shifted
per copy).

Each round runs the in-process call at every batch size, then the command (``relprop.cli.main``
in this process: model and inputs opened, every chunk read, explained, written, checksummed and
recorded, as the command does after Python has started); the report gives each side's median,
the best in-process batch size, and the median and range of the rounds' ratios (streaming rate
/ best in-process rate of the same round), with the fsync calls the command made.  Both sides'
relevance must be the same bytes.

    python bench/stream.py [--samples 200000] [--threads 2] [--rounds 5]
                           [--batch-sizes 64,256,1024] [--chunk-size N]
"""
import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

import relprop as rp
from relprop import cli

METHOD = "lrp.epsilon_plus_flat"


def digits(n):
    x = rp.models.digits_data()[0]
    reps = -(-n // len(x))
    shift = np.repeat(np.arange(reps, dtype=np.float32) / (4 * reps), len(x))[:n]
    return np.tile(x, (reps, 1, 1, 1))[:n] + shift[:, None, None, None]


class FsyncCount:
    """Counts and times os.fsync while it is installed."""

    def __init__(self):
        self.calls, self.seconds, self.real = 0, 0.0, os.fsync

    def __call__(self, fd):
        t0 = time.perf_counter()
        try:
            return self.real(fd)
        finally:
            self.calls += 1
            self.seconds += time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--samples", type=int, default=200_000)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--batch-sizes", default="64,256,1024",
                    help="in-process batch sizes (comma-separated; 'none' for one batch)")
    ap.add_argument("--chunk-size", type=int, default=None,
                    help="the command's --chunk-size (default: its own)")
    args = ap.parse_args()
    sizes = [None if b.strip().lower() == "none" else int(b) for b in args.batch_sizes.split(",")]
    work = tempfile.mkdtemp(prefix="relprop-bench-stream-")
    try:
        x = digits(args.samples)
        path = os.path.join(work, "x.npy")
        np.save(path, x)
        out = os.path.join(work, "out")
        command = ["explain", "digits_cnn", path, "-m", METHOD, "-o", out, "--threads",
                   str(args.threads)] + ([] if args.chunk_size is None else
                                         ["--chunk-size", str(args.chunk_size)])
        rp.show_config()
        print(f"load average before: {os.getloadavg()}")
        print(f"command: relprop {' '.join(command)}")
        print(f"in-process: relprop.explain(net, x, 'pred', '{METHOD}', batch_size=B) on "
              f"{args.threads} thread(s), x in memory, B in {sizes}")
        net = rp.models.digits_cnn()
        rp.set_num_threads(args.threads)
        want = rp.explain(net, x[:2000], "pred", METHOD)  # warm-up
        inproc = {b: [] for b in sizes}
        stream, ratios, fsyncs = [], [], []
        for r in range(args.rounds):
            for b in sizes:
                t0 = time.perf_counter()
                want = rp.explain(net, x, "pred", METHOD, batch_size=b)
                inproc[b].append(args.samples / (time.perf_counter() - t0))
            shutil.rmtree(out, ignore_errors=True)
            count = FsyncCount()
            os.fsync = count
            sink = open(os.devnull, "w")
            saved, sys.stdout = sys.stdout, sink
            try:
                t0 = time.perf_counter()
                status = cli.main(command)
                seconds = time.perf_counter() - t0
            finally:
                sys.stdout, os.fsync = saved, count.real
                sink.close()
            assert status == 0, status
            got = np.load(os.path.join(out, "relevance.npy"), mmap_mode="r")
            assert np.array_equal(got, want), "the command's relevance differs"
            del got
            stream.append(args.samples / seconds)
            best = max(inproc[b][-1] for b in sizes)
            ratios.append(stream[-1] / best)
            fsyncs.append((count.calls, count.seconds))
            print(f"round {r + 1}: in-process " + ", ".join(
                f"B={b}: {inproc[b][-1]:,.0f}" for b in sizes) + f" samples/s; streaming "
                f"{stream[-1]:,.0f} samples/s ({ratios[-1]:.3f} of the best; {count.calls} "
                f"fsync calls, {count.seconds:.3f} s)")
        med = {b: statistics.median(v) for b, v in inproc.items()}
        best = max(med, key=med.get)
        print(f"\nmedians of {args.rounds} rounds, {args.samples:,} digits, {args.threads} "
              f"thread(s): in-process " + ", ".join(f"B={b}: {v:,.0f}" for b, v in med.items())
              + f" samples/s (best B={best}); streaming {statistics.median(stream):,.0f} "
              f"samples/s")
        print(f"streaming / best in-process, per round: median {statistics.median(ratios):.3f} "
              f"(range {min(ratios):.3f}-{max(ratios):.3f}); fsync per run: median "
              f"{statistics.median(c for c, _ in fsyncs):.0f} calls, "
              f"{statistics.median(s for _, s in fsyncs):.3f} s")
        print(f"load average after: {os.getloadavg()}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
