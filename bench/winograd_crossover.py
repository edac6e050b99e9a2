"""Where Winograd beats the direct convolution: a grid of stride-1 3x3 layers (channels x image
size x batch), forward and backward, timed with the direct method, F(4x4, 3x3) and F(2x2, 3x3).
The rule of ``relprop.ops.conv2d_algorithm`` was read off this table; rerun it to check the
rule on another machine.

    python bench/winograd_crossover.py --threads 1 --clock thread   # robust on a busy machine
    python bench/winograd_crossover.py --threads 2

``--clock thread`` times the calling thread's CPU time (1 thread only: unaffected by other
processes taking the core away); ``wall`` (default) the elapsed time.  Medians of interleaved
repeats (``--stat min``: minima, which filter out the time slices a busy machine takes away
from one of several threads).  Each line gives the times in ms, the fastest method and what
``auto`` picks.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import relprop as rp  # noqa: E402
from relprop import ops  # noqa: E402

import layers as L  # noqa: E402

CHANNELS = (8, 16, 32, 64, 128, 256, 512)
SIZES = (7, 14, 28, 56, 112, 224)
BATCHES = (1, 8)


def grid(max_gflop):
    for c in CHANNELS:
        for hw in SIZES:
            for n in BATCHES:
                if 2 * 9 * c * c * hw * hw * n * 1e-9 <= max_gflop:
                    yield c, c, hw, n
    for c_in, c_out, hw, n in [(3, 64, 224, 1), (3, 64, 32, 8), (64, 8, 56, 8), (8, 64, 56, 8),
                               (16, 128, 28, 8), (128, 16, 28, 8), (512, 64, 14, 8),
                               (64, 512, 14, 8)]:
        yield c_in, c_out, hw, n


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--clock", choices=["wall", "thread"], default="wall")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="statistic of the repeats (min filters out a busy machine's preemptions)")
    p.add_argument("--max-gflop", type=float, default=6.0,
                   help="skip layers of more direct-method GFLOP than this")
    opts = p.parse_args(argv)
    if opts.clock == "thread" and opts.threads != 1:
        p.error("--clock thread needs --threads 1")
    rp.set_num_threads(opts.threads)
    clock = time.thread_time if opts.clock == "thread" else time.perf_counter
    print(f"# {L.cpu_model()}, ISA {ops.isa()}, {opts.threads} thread(s), clock {opts.clock}, "
          f"{opts.stat} of {opts.repeats} interleaved repeats")
    print("# c_in c_out hw n pass | direct f4 f2 (ms) | best auto")
    rng = np.random.default_rng(0)
    for c_in, c_out, hw, n in grid(opts.max_gflop):
        x = np.maximum(rng.standard_normal((n, c_in, hw, hw)), 0).astype(np.float32)
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))).astype(np.float32)
        g = rng.standard_normal((n, c_out, hw, hw)).astype(np.float32)
        times = L.time_interleaved(L.layer_fns(x, w, None, g, (1, 1)), opts.repeats, clock=clock)
        for d in ("fwd", "bwd"):
            stat = statistics.median if opts.stat == "median" else min
            ms = {m: stat(times[(d, m)]) * 1e3 for m in ("direct", "f4", "f2")}
            best = min(ms, key=ms.get)
            auto = L._auto(x, w, (1, 1), d == "bwd")
            print(f"{c_in:4d} {c_out:4d} {hw:4d} {n:2d} {d} | "
                  + " ".join(f"{ms[m]:9.3f}" for m in ("direct", "f4", "f2"))
                  + f" | {best:6s} {auto:6s}" + ("" if best == auto else "  <-"), flush=True)


if __name__ == "__main__":
    main()
