"""Per-layer timings of one model's convolutions: the direct method against Winograd F(4x4, 3x3)
and F(2x2, 3x3), forward and backward (w.r.t. the input), with the algorithm ``auto`` picks.

    python bench/layers.py                                   # vgg16 at 224, batch 1, 1 and 2 threads
    python bench/layers.py --model cifar_cnn --batch 64 --threads 2
    python bench/layers.py --model vgg16 --batch 8 --threads 1,2 --repeats 7

Each layer gets a realistic input (the model's random input passed through the layers before
it, in float32) and a normal random output gradient; weights are bench/models.py's (He-normal).
Packed weights are made once per layer (as the layers keep them), outside the timings.  Times
are medians of interleaved repeats: every repeat runs each method once, in turn, after one
warm-up call of each.  GFLOP/s count the direct method's FLOP (2 c_in c_out 9 oh ow per
sample) for every method, so they compare speed, and ``% peak`` divides them by the measured
FMA peak of the threads used (``ops.fma_peak_gflops``).

Importable: ``conv_layers(name)``, ``time_interleaved(fns, repeats)``, ``layer_rows(...)`` and
``table(rows)`` are what bench/run.py can call.
"""
from __future__ import annotations

import argparse
import gc
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import models as M  # noqa: E402

import relprop as rp  # noqa: E402
from relprop import ops  # noqa: E402

TILES = (4, 2)


def cpu_model() -> str:
    """The CPU's model name as lscpu reports it (or platform's processor string)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return platform.processor() or "unknown"


def conv_layers(name):
    """[(index, c_in, c_out, h, w, padding)] of model `name`'s convolutions (3x3, stride 1),
    with the input size each one sees (2x2 max pools halve it)."""
    shape, spec, _ = M.MODELS[name]
    h, w = shape[1], shape[2]
    out, k = [], 0
    for s in spec:
        if s[0] == "pool":
            h, w = h // 2, w // 2
        elif s[0] == "conv":
            out.append((k, s[1], s[2], h, w, (1, 1)))
            k += 1
    return out


def layer_inputs(name, batch, seed=1):
    """The input of every conv layer of `name` for the model's random batch (float32), from a
    direct forward pass through the layers before it (conv + ReLU, 2x2 max pools)."""
    shape, spec, _ = M.MODELS[name]
    x = M.inputs(name, batch, seed)
    params = iter(M.weights(name))
    xs = []
    for s in spec:
        if s[0] == "conv":
            w, b = next(params)
            xs.append((x, w, b))
            x = ops.relu_forward(ops.conv2d_forward(x, w, b, (1, 1), (1, 1)))
        elif s[0] == "pool":
            x = ops.maxpool2d_forward(x, (2, 2), (2, 2))[0]
        else:
            break
    return xs


def time_interleaved(fns, repeats, warmup=1, clock=time.perf_counter):
    """{name: [seconds]} of `repeats` rounds that call every fn once, in turn (after `warmup`
    calls of each); garbage collection is off while a call runs."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            gc.disable()
            t0 = clock()
            fn()
            times[k].append(clock() - t0)
            gc.enable()
    return times


def layer_fns(x, w, b, g, padding, tiles=TILES):
    """The timed calls of one layer: {("fwd" | "bwd", "direct" | "f4" | "f2"): fn}, with the
    weights packed beforehand for each."""
    hw = x.shape[2:]
    pd, pb = ops.conv2d_pack(w), ops.conv2d_pack(w, True, (1, 1), padding)
    fns = {("fwd", "direct"): lambda: ops.conv2d_forward(x, w, b, (1, 1), padding, pd),
           ("bwd", "direct"): lambda: ops.conv2d_backward(g, w, hw, (1, 1), padding, pb)}
    for t in tiles:
        pf, pw = ops.conv2d_winograd_pack(w, t), ops.conv2d_winograd_pack(w, t, backward=True)
        fns[("fwd", f"f{t}")] = (lambda pf=pf, t=t:
                                 ops.conv2d_winograd_forward(x, w, b, padding, pf, tile=t))
        fns[("bwd", f"f{t}")] = (lambda pw=pw, t=t:
                                 ops.conv2d_winograd_backward(g, w, hw, padding, pw, tile=t))
    return fns


def _auto(x, w, padding, backward):
    a = ops.conv2d_algorithm(x.shape, w.shape, (1, 1), padding, x.dtype, backward=backward)
    return a.name if a.name == "direct" else f"f{a.tile}"


def layer_rows(name, batch, threads, repeats, peaks, tiles=TILES, layers=None, log=None,
               clock=time.perf_counter):
    """One row per conv layer and thread count: median times of each method, forward and
    backward, and what ``auto`` picks."""
    rows = []
    rng = np.random.default_rng(7)
    for k, (x, w, b) in enumerate(layer_inputs(name, batch)):
        if layers is not None and k not in layers:
            continue
        _, c_in, c_out, h, wd, pad = conv_layers(name)[k]
        g = rng.standard_normal((batch, c_out, h, wd)).astype(np.float32)
        fns = layer_fns(x, w, b, g, pad, tiles)
        flop = 2.0 * 9 * c_in * c_out * h * wd * batch
        for t in threads:
            rp.set_num_threads(t)
            times = time_interleaved(fns, repeats, clock=clock)
            row = {"model": name, "layer": k, "c_in": c_in, "c_out": c_out, "h": h, "w": wd,
                   "batch": batch, "threads": t, "flop": flop, "peak": peaks[t],
                   "auto_fwd": _auto(x, w, pad, False), "auto_bwd": _auto(x, w, pad, True)}
            for key, ts in times.items():
                row[key] = statistics.median(ts)
            rows.append(row)
            if log:
                print(row_text(row), file=log, flush=True)
    return rows


def row_text(r):
    parts = [f"{r['model']} conv{r['layer']} {r['c_in']}->{r['c_out']} {r['h']}x{r['w']} "
             f"b={r['batch']} t={r['threads']}"]
    for d in ("fwd", "bwd"):
        parts.append(d + " " + " ".join(f"{m}={r[(d, m)] * 1e3:.2f}ms" for m in _methods(r)))
    return "  ".join(parts)


def _methods(r):
    return [m for m in ("direct", "f4", "f2") if ("fwd", m) in r]


def table(rows):
    """A Markdown table: per layer, thread count and direction, the median ms of each method,
    its GFLOP/s (direct-method FLOP) and % of the FMA peak, the speed-up of the best Winograd
    tile over direct, and the auto choice."""
    head = ("| layer | c_in->c_out | h x w | batch | threads | pass | direct ms | F4 ms | F2 ms "
            "| direct GFLOP/s (% peak) | F4 GFLOP/s (% peak) | F2 GFLOP/s (% peak) "
            "| best / direct | auto |")
    lines = [head, "|" + "|".join(["---"] * 6 + ["---:"] * 7 + ["---"]) + "|"]
    for r in rows:
        for d in ("fwd", "bwd"):
            ms = {m: r.get((d, m)) for m in ("direct", "f4", "f2")}

            def rate(m):
                if ms[m] is None:
                    return "-"
                gf = r["flop"] / ms[m] * 1e-9
                return f"{gf:,.0f} ({100 * gf / r['peak']:.0f}%)"

            wino = [ms[m] for m in ("f4", "f2") if ms[m] is not None]
            best = ms["direct"] / min(wino) if wino else float("nan")
            lines.append(
                f"| {r['model']} conv{r['layer']} | {r['c_in']}->{r['c_out']} | "
                f"{r['h']}x{r['w']} | {r['batch']} | {r['threads']} | {d} | "
                + " | ".join("-" if ms[m] is None else f"{ms[m] * 1e3:.2f}"
                             for m in ("direct", "f4", "f2"))
                + " | " + " | ".join(rate(m) for m in ("direct", "f4", "f2"))
                + f" | {best:.2f} | {r['auto_' + d]} |")
    return "\n".join(lines)


def header(threads, peaks):
    import io

    buf = io.StringIO()
    cfg = rp.show_config(file=buf)
    lines = [f"- CPU: {cpu_model()} ({platform.machine()}), {len(__import__('os').sched_getaffinity(0))} "
             "logical cores available",
             "- relprop: " + ", ".join(f"{k} {v}" for k, v in cfg.items()),
             "- measured FMA peak (float32, " + ops.isa() + "): "
             + ", ".join(f"{peaks[t]:.0f} GFLOP/s on {t} thread(s)" for t in threads)]
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16", choices=["vgg16", "cifar_cnn"])
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--layers", default=None, help="comma-separated layer indices (default all)")
    p.add_argument("--tiles", default="4,2", help="Winograd tiles to time (4, 2 or 4,2)")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="elapsed time, or the calling thread's CPU time (--threads 1 only: "
                        "what a busy machine's other processes do not change)")
    opts = p.parse_args(argv)
    threads = [int(t) for t in opts.threads.split(",")]
    if opts.clock == "thread" and threads != [1]:
        p.error("--clock thread needs --threads 1")
    clock = time.thread_time if opts.clock == "thread" else time.perf_counter
    tiles = tuple(int(t) for t in opts.tiles.split(","))
    layers = None if opts.layers is None else {int(k) for k in opts.layers.split(",")}
    peaks = {t: ops.fma_peak_gflops(t) for t in threads}
    print(header(threads, peaks))
    print(f"- {opts.model}, batch {opts.batch}, float32; medians of {opts.repeats} interleaved "
          f"repeats ({'thread CPU' if opts.clock == 'thread' else 'wall-clock'} time)\n",
          flush=True)
    rows = layer_rows(opts.model, opts.batch, threads, opts.repeats, peaks, tiles, layers,
                      log=sys.stderr, clock=clock)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
