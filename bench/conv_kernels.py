"""Micro-benchmark of the graph-network kernels against torch: depthwise convolutions of
MobileNetV2 (3x3, stride 1/2, padding 1), grouped and dilated convolutions, forward and
backward-data (the vector-Jacobian product w.r.t. x), at batch 1 and 8 on 1 and 2 threads.

    python bench/conv_kernels.py                       # all of it (~10 min)
    python bench/conv_kernels.py --only depthwise --threads 1 --batch 1 --dtype float32

relprop and torch run interleaved (`--calls` calls of one, then of the other, after warm-up
calls), `--rounds` rounds; the report gives the median time of one call of each (over all
rounds x calls) and their ratio (torch / relprop: > 1 means relprop is faster).  The machine is
shared and has few cores, so timings are noisy: a call during which another process takes a
core from one thread of a 2-thread region waits a whole time slice.  torch's backward-data is
``torch.ops.aten.convolution_backward`` with output_mask (True, False, False) (no weight
gradient), relprop's ``ops.conv2d_backward``.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import subprocess
import time

import numpy as np

import relprop as rp
from relprop import ops

# MobileNetV2's depthwise layers (channels, input size, stride) at 224x224
DEPTHWISE = [(32, 112, 1), (96, 112, 2), (144, 56, 1), (144, 56, 2), (192, 28, 1), (192, 28, 2),
             (384, 14, 1), (576, 14, 1), (576, 14, 2), (960, 7, 1)]
# ResNeXt-style grouped 3x3 convolutions (channels, input size, stride, groups) and dilated ones
GROUPED = [(128, 56, 1, 32), (256, 28, 1, 32), (256, 56, 2, 32), (512, 14, 1, 32), (64, 56, 1, 4)]
DILATED = [(64, 56, 1, 2), (128, 28, 1, 2), (256, 14, 1, 4)]


def cpu_name():
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        for line in out.splitlines():
            if line.startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def interleaved(fns, rounds, calls, settle):
    """Median seconds of one call of each fn over rounds x calls calls, run in turns (fn0 x
    calls, fn1 x calls, ...).

    Sleeps `settle` seconds before each turn: the OpenMP threads of the library that ran
    before (relprop's, and torch's own pool) spin for a while after their last call and would
    steal the cores of the other.  The median of single calls (not of turns) leaves out the
    calls during which another process took a core from a thread of the parallel region."""
    samples = [[] for _ in fns]
    for rnd in range(rounds + 1):
        for k, fn in enumerate(fns):
            time.sleep(settle)
            fn()  # warm-up (first round) / wake the threads
            for _ in range(calls):
                t0 = time.perf_counter()
                fn()
                if rnd:
                    samples[k].append(time.perf_counter() - t0)
    return [statistics.median(s) for s in samples]


def cases(only):
    out = []
    if only in ("all", "depthwise"):
        out += [("depthwise", c, hw, s, c, 1, 1) for c, hw, s in DEPTHWISE]
    if only in ("all", "grouped"):
        out += [("grouped", c, hw, s, g, 1, 1) for c, hw, s, g in GROUPED]
    if only in ("all", "dilated"):
        out += [("dilated", c, hw, s, 1, d, d) for c, hw, s, d in DILATED]
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="all", choices=["all", "depthwise", "grouped", "dilated"])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--batch", default="1,8")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--calls", type=int, default=5)
    ap.add_argument("--settle", type=float, default=0.05, help="seconds of sleep between turns")
    args = ap.parse_args()
    import torch
    import torch.nn.functional as F

    dtype = np.dtype(args.dtype)
    print(f"CPU: {cpu_name()}; torch {torch.__version__}; dtype {dtype}")
    rp.show_config()
    print()
    print("| kind | c | hw | stride | groups | dil | n | threads | pass | relprop us | torch us "
          "| torch/relprop |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    rng = np.random.default_rng(0)
    for nt in [int(t) for t in args.threads.split(",")]:
        rp.set_num_threads(nt)
        torch.set_num_threads(nt)
        for n in [int(b) for b in args.batch.split(",")]:
            for kind, c, hw, s, groups, d, _ in cases(args.only):
                pad = d  # 3x3 kernels: "same" padding at stride 1
                x = rng.standard_normal((n, c, hw, hw)).astype(dtype)
                w = rng.standard_normal((c, c // groups, 3, 3)).astype(dtype)
                b = rng.standard_normal(c).astype(dtype)
                kw = dict(dilation=(d, d), groups=groups)
                fp = ops.conv2d_pack(w, **kw)
                bp = ops.conv2d_pack(w, True, (s, s), (pad, pad), **kw)
                y = ops.conv2d_forward(x, w, b, (s, s), (pad, pad), fp, **kw)
                g = rng.standard_normal(y.shape).astype(dtype)
                tx, tw, tb, tg = (torch.from_numpy(a) for a in (x, w, b, g))
                with torch.no_grad():
                    yt = F.conv2d(tx, tw, tb, s, pad, d, groups)
                assert np.allclose(y, yt.numpy(), rtol=1e-3, atol=1e-4 * 9 * (c // groups))

                # B023 does not apply: the four closures are timed below, within this iteration
                def rp_fwd():
                    ops.conv2d_forward(x, w, b, (s, s), (pad, pad), fp, **kw)  # noqa: B023

                def rp_bwd():
                    ops.conv2d_backward(g, w, (hw, hw), (s, s), (pad, pad), bp, **kw)  # noqa: B023

                def t_fwd():
                    with torch.no_grad():
                        F.conv2d(tx, tw, tb, s, pad, d, groups)  # noqa: B023

                def t_bwd():
                    torch.ops.aten.convolution_backward(tg, tx, tw, None, [s, s], [pad, pad],  # noqa: B023
                                                        [d, d], False, [0, 0], groups,  # noqa: B023
                                                        [True, False, False])

                for name, mine, theirs in (("forward", rp_fwd, t_fwd),
                                           ("backward", rp_bwd, t_bwd)):
                    tm, tt = interleaved([mine, theirs], args.rounds, args.calls, args.settle)
                    print(f"| {kind} | {c} | {hw} | {s} | {groups} | {d} | {n} | {nt} | {name} "
                          f"| {tm * 1e6:,.0f} | {tt * 1e6:,.0f} | {tt / tm:.2f} |", flush=True)


if __name__ == "__main__":
    main()
