"""Per-layer timings of one model's convolutions: the direct method against Winograd F(4x4, 3x3)
and F(2x2, 3x3), forward and backward (w.r.t. the input), with the algorithm ``auto`` picks.

    python bench/layers.py                          # vgg16 at 224, batch 1, 1 and 2 threads
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

import relprop as rp  # noqa: E402
from relprop import ops  # noqa: E402

import models as M  # noqa: E402

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
    a = ops.conv2d_plan(x.shape, w.shape, (1, 1), padding, x.dtype, backward)
    return f"f{a.tile}" if a.tile else "direct"


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


def _rate(r, seconds):
    """GFLOP/s of row ``r``'s layer in ``seconds`` (direct-method FLOP) and % of the FMA peak."""
    if seconds is None:
        return "-"
    gf = r["flop"] / seconds * 1e-9
    return f"{gf:,.0f} ({100 * gf / r['peak']:.0f}%)"


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
            wino = [ms[m] for m in ("f4", "f2") if ms[m] is not None]
            best = ms["direct"] / min(wino) if wino else float("nan")
            lines.append(
                f"| {r['model']} conv{r['layer']} | {r['c_in']}->{r['c_out']} | "
                f"{r['h']}x{r['w']} | {r['batch']} | {r['threads']} | {d} | "
                + " | ".join("-" if ms[m] is None else f"{ms[m] * 1e3:.2f}"
                             for m in ("direct", "f4", "f2"))
                + " | " + " | ".join(_rate(r, ms[m]) for m in ("direct", "f4", "f2"))
                + f" | {best:.2f} | {r['auto_' + d]} |")
    return "\n".join(lines)


def header(threads, peaks):
    import io

    buf = io.StringIO()
    cfg = rp.show_config(file=buf)
    lines = [f"- CPU: {cpu_model()} ({platform.machine()}), "
             f"{len(__import__('os').sched_getaffinity(0))} logical cores available",
             "- relprop: " + ", ".join(f"{k} {v}" for k, v in cfg.items()),
             "- measured FMA peak (float32, " + ops.isa() + "): "
             + ", ".join(f"{peaks[t]:.0f} GFLOP/s on {t} thread(s)" for t in threads)]
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# Per-layer steps of a whole model (bench/run.py --layers MODEL): each linear layer with the
# element-wise steps the fused kernels take over, as the engine runs them today (separate
# passes) and as one fused kernel call.


class Block:
    """A linear layer of a model with what follows it (ReLU, 2x2 max pooling) and the data one
    forward pass gives it (float32): its input x, output z (pre-activation), ReLU output y and
    pooled output / winners."""

    def __init__(self, index, layer, relu, pool, x):
        self.index, self.layer, self.relu, self.pool, self.x = index, layer, relu, pool, x
        self.conv = isinstance(layer, rp.Conv2d)
        w, b = layer.params(x.dtype)
        self.w, self.b = w, b
        self.z = layer.forward(x)[0]
        self.y = ops.relu_forward(self.z) if relu else self.z
        self.pooled = self.arg = None
        if pool:
            self.pooled, self.arg = ops.maxpool2d_forward(self.y, (2, 2), (2, 2), (0, 0))
        self.out = self.pooled if pool else self.y
        self.below = None  # the Block before (its ReLU's backward is fused into this one's)

    def plan(self, backward=False, w=None):
        """The layer's plan of the pass (relprop.plans) with its weights or ``w``."""
        return self.layer.plan(self.w if w is None else w, self.x.shape, backward)

    def algorithm(self, backward=False):
        if not self.conv:
            return "dense" if len(self.x) > 1 else "dense (gemv)"
        return self.plan(backward).algorithm

    def packed(self, role, w=None):
        """The packing the layer's plan keeps for this call (None: packed per call)."""
        return self.plan(role == "backward", w).packing(len(self.x))

    def macs(self):
        """Multiply-adds of the layer (direct method) for the whole batch."""
        if self.conv:
            return self.w.size * self.z.shape[2] * self.z.shape[3] * len(self.x)
        return self.w.size * len(self.x)



def model_blocks(name, batch, seed=1):
    """The Blocks of model `name` for its random batch."""
    params = M.weights(name)
    net = M.relprop_net(name, params)
    x = M.inputs(name, batch, seed)
    layers = list(net.layers)
    blocks, i = [], 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, (rp.Conv2d, rp.Dense)):
            relu = i + 1 < len(layers) and isinstance(layers[i + 1], rp.ReLU)
            pool = relu and i + 2 < len(layers) and isinstance(layers[i + 2], rp.MaxPool2d)
            blk = Block(len(blocks), layer, relu, pool, x)
            blk.below = blocks[-1] if blocks else None
            blocks.append(blk)
            x = blk.out
            i += 1 + relu + pool
        else:  # Flatten
            x = layer.forward(x)[0]
            i += 1
    return blocks


def block_fns(blk, rng):
    """{(step, "unfused" | "fused"): fn} of one Block: the forward pass (linear layer, ReLU,
    pooling), the gradient's backward pass (the pooling's backward above the layer, the
    layer's, the ReLU's backward below it: what the fused call takes over) and the relevance
    step of EpsilonPlusFlat (ZPlus for Conv2d, Epsilon for Dense; the first layer's Flat is not
    touched by the fusions: None)."""
    layer, x, w, b = blk.layer, blk.x, blk.w, blk.b
    conv, hw = blk.conv, x.shape[2:]
    fns = {}
    geom = dict(dilation=layer.dilation, groups=layer.groups) if conv else {}
    algo_f, algo_b = (blk.algorithm(False), blk.algorithm(True)) if conv else (None, None)
    pf, pb = blk.packed("forward"), blk.packed("backward")

    def unfused_forward():
        z = layer.apply(x, w, b)
        y = ops.relu_forward(z) if blk.relu else z
        if blk.pool:
            return ops.maxpool2d_forward(y, (2, 2), (2, 2), (0, 0))
        return y

    def fused_forward():
        if blk.pool:
            return ops.conv2d_forward_relu_maxpool(x, w, b, layer.stride, layer.padding, pf,
                                                   algorithm=algo_f, **geom)
        if not conv:
            return ops.dense_forward(x, w, b, pf, relu=blk.relu)
        return ops.conv2d_forward(x, w, b, layer.stride, layer.padding, pf, relu=blk.relu,
                                  algorithm=algo_f, **geom)

    fns[("forward", "unfused")], fns[("forward", "fused")] = unfused_forward, fused_forward

    g_out = rng.standard_normal(blk.out.shape).astype(x.dtype)
    below = blk.below
    mask = x if below is not None and below.relu else None
    # the unfused engine: the pooling's backward, this ReLU's backward is the layer above's;
    # here: [maxpool backward] -> (ReLU backward of this layer: fused by the layer above, so it
    # is not counted here) -> the layer's backward -> the ReLU backward of the layer below, at
    # the resolution the engine runs it (before that layer's pooling's backward)
    g_y = (ops.maxpool2d_backward(g_out, blk.arg, blk.y.shape[2:], (2, 2), (2, 2), (0, 0))
           if blk.pool else g_out)
    if below is not None and below.relu and below.pool:
        g_below = rng.standard_normal(below.y.shape).astype(x.dtype)
    else:
        g_below = None

    def unfused_backward():
        g = g_out
        if blk.pool:
            g = ops.maxpool2d_backward(g, blk.arg, blk.y.shape[2:], (2, 2), (2, 2), (0, 0))
        gx = layer.apply_t(g, w, x.shape)
        if mask is not None:
            if g_below is not None:  # the ReLU below runs on the unpooled gradient
                return ops.relu_backward(g_below, below.z)
            return ops.relu_backward(gx, below.z)
        return gx

    def fused_backward():
        if blk.pool:
            return ops.conv2d_backward_pooled(g_out, blk.arg, w, hw, layer.stride, layer.padding,
                                              pb, mask=mask, algorithm=algo_b, **geom)
        if not conv:
            return ops.dense_backward(g_out, w, pb, mask=mask)
        return ops.conv2d_backward(g_y, w, hw, layer.stride, layer.padding, pb, mask=mask,
                                   algorithm=algo_b, **geom)

    fns[("gradient", "unfused")], fns[("gradient", "fused")] = unfused_backward, fused_backward

    if below is not None:  # EpsilonPlusFlat: ZPlus (Conv2d), Epsilon (Dense)
        from relprop import rules as R

        eps = 1e-6
        if conv:
            w2, b2, wr = R.plus_params(layer, x.dtype)
            zr = layer.apply_split(x, w2, b2)[1]  # z+
        else:
            wr, zr = w, blk.z
        r = rng.standard_normal(zr.shape).astype(x.dtype)
        pr = blk.packed("backward", wr)
        algo_r = blk.plan(True, wr).algorithm if conv else None

        def unfused_lrp():
            s = ops.lrp_divide(r, zr, eps)
            c = layer.apply_t(s, wr, x.shape)
            return np.multiply(c, x, out=c)

        def fused_lrp():
            if conv:
                return ops.conv2d_lrp_epsilon(r, zr, x, wr, eps, layer.stride, layer.padding, pr,
                                              algorithm=algo_r, **geom)
            return ops.dense_lrp_epsilon(r, zr, x, wr, eps, pr)

        fns[("lrp", "unfused")], fns[("lrp", "fused")] = unfused_lrp, fused_lrp
    return fns


STEPS = ("forward", "gradient", "lrp")


def step_rows(name, batch, threads, repeats, peaks, clock=time.perf_counter, log=None):
    """One row per Block and thread count: median times of each step, unfused and fused."""
    rng = np.random.default_rng(3)
    rows = []
    blocks = model_blocks(name, batch)
    for blk in blocks:
        fns = block_fns(blk, rng)
        for t in threads:
            rp.set_num_threads(t)
            times = time_interleaved(fns, repeats, clock=clock)
            row = {"model": name, "block": blk, "batch": batch, "threads": t, "peak": peaks[t],
                   "flop": 2.0 * blk.macs()}
            for key, ts in times.items():
                row[key] = statistics.median(ts)
            rows.append(row)
            if log:
                print(f"{name} {describe(blk)} t={t} " + " ".join(
                    f"{k[0]}/{k[1]}={v * 1e3:.3f}ms" for k, v in row.items()
                    if isinstance(k, tuple)), file=log, flush=True)
    return rows


def describe(blk):
    layer = blk.layer
    if blk.conv:
        o, c = blk.w.shape[:2]
        text = f"conv{blk.index} {c * layer.groups}->{o} {blk.x.shape[2]}x{blk.x.shape[3]}"
    else:
        text = f"dense{blk.index} {blk.w.shape[1]}->{blk.w.shape[0]}"
    return text + (" +relu" if blk.relu else "") + (" +pool" if blk.pool else "")


def step_table(rows):
    """A Markdown table: per layer and thread count, each step's median ms unfused (the
    engine's separate passes today) and fused (one kernel), the fused GFLOP/s (direct-method
    FLOP of the layer's GEMM; the LRP step and the gradient's backward step each count one
    GEMM of the layer) and % of the FMA peak, the speed-up, and the algorithm; totals last."""
    head = ("| layer | batch | threads | step | algorithm | unfused ms | fused ms "
            "| fused / unfused | fused GFLOP/s | % peak |")
    lines = [head, "|---|---:|---:|---|---|---:|---:|---:|---:|---:|"]
    totals = {}
    for r in rows:
        blk = r["block"]
        for step in STEPS:
            if (step, "fused") not in r:
                continue
            un, fu = r[(step, "unfused")], r[(step, "fused")]
            key = (r["batch"], r["threads"], step)
            tot = totals.setdefault(key, [0.0, 0.0])
            tot[0] += un
            tot[1] += fu
            gf = r["flop"] / fu * 1e-9
            alg = blk.algorithm(step != "forward")
            if step == "forward" and (blk.relu or blk.pool):
                alg += " +relu" + ("+pool" if blk.pool else "")
            lines.append(f"| {r['model']} {describe(blk)} | {r['batch']} | {r['threads']} | {step} "
                         f"| {alg} | {un * 1e3:.3f} | {fu * 1e3:.3f} | {un / fu:.2f}x "
                         f"| {gf:,.0f} | {100 * gf / r['peak']:.0f}% |")
    for (batch, t, step), (un, fu) in totals.items():
        lines.append(f"| **all layers** | {batch} | {t} | {step} | | {un * 1e3:.3f} | "
                     f"{fu * 1e3:.3f} | {un / fu:.2f}x | | |")
    return "\n".join(lines)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16", choices=["vgg16", "cifar_cnn", "mlp"])
    p.add_argument("--steps", action="store_true",
                   help="every layer's forward, gradient and LRP step, unfused and fused "
                        "(any model), instead of the conv algorithms")
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
    if opts.steps:
        rows = step_rows(opts.model, opts.batch, threads, opts.repeats, peaks, clock=clock,
                         log=sys.stderr)
        print(step_table(rows))
        return rows
    rows = layer_rows(opts.model, opts.batch, threads, opts.repeats, peaks, tiles, layers,
                      log=sys.stderr, clock=clock)
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
