"""relprop beside its peers, in one process: samples/s of every method on three chains (an MLP,
a CIFAR-size CNN, VGG-16) and four torchvision graphs (ResNet-50, MobileNetV2, EfficientNet-B0,
ConvNeXt-Tiny: batch 1 on one and two threads, batch 8 on two; Zennit with its canonizers), the GEMM
core against NumPy, and the peak memory of an LRP call.

    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/run.py            # full (~30 min)
    env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE python bench/run.py --quick    # < 2 min
    python bench/run.py --models mlp,cifar_cnn --threads 1
    python bench/run.py --layers cifar_cnn --threads 1,2 --clock wall      # per-layer table

``--layers MODEL`` prints (and writes only with --output) a per-layer table of one model instead:
for every Dense/Conv2d with the ReLU and max pooling after it, the forward step, the gradient's
backward step and EpsilonPlusFlat's relevance step, each as the engine runs it today (separate
element-wise passes) and as one fused kernel call, with time, GFLOP/s, % of peak and the
algorithm (bench/layers.py --steps), at batch 1 and the model's large batch.

Prints a Markdown report and writes it to bench/results.md (or --output).  Times are wall-clock
medians of repeats after one warm-up call (which also builds relprop's cached rule weights and
Zennit's hooks).  torch runs with as many threads as relprop.  GFLOP/s count each method at its
FLOP floor (multiples of the forward pass per layer: forward 1, gradient and gradient x input
2; LRP rules Epsilon 2, ZPlus 3, Gamma and AlphaBeta 4, ZBox 3, Flat 1), and % of peak divides
them by threads x the measured per-core FMA peak.

OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE, where set, slow NumPy's sgemm down: unset them for runs
that compare with NumPy (the report prints the kernel threadpoolctl sees).
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import relprop as rp  # noqa: E402
from relprop import ops  # noqa: E402

import models as M  # noqa: E402

LRP_METHODS = {
    "lrp.epsilon_plus_flat": ("epsilon_plus_flat", {}, "EpsilonPlusFlat"),
    "lrp.epsilon_gamma_box": ("epsilon_gamma_box", {"low": -3.0, "high": 3.0}, "EpsilonGammaBox"),
    "lrp.epsilon_alpha2_beta1": ("epsilon_alpha2_beta1", {}, "EpsilonAlpha2Beta1"),
}
METHODS = ["forward", "gradient", "gradient_x_input", *LRP_METHODS, "lrp.epsilon"]
RULE_COST = {"Epsilon": 2, "ZPlus": 3, "Gamma": 4, "AlphaBeta": 4, "ZBox": 3, "Flat": 1,
             "WSquare": 1}
CAPTUM_EPS = 1e-9  # Captum's LRP: EpsilonRule(1e-9) on every Linear/Conv2d


# ------------------------------------------------------------------------------------------
# timing

def median_time(fn, repeats, budget, warmup=1, settle=0.2):
    """Median wall time of fn() over up to `repeats` calls (at least 2 if time allows).

    Sleeps `settle` seconds first: thread pools of the library timed before (OpenBLAS, torch's
    and relprop's OpenMP) spin for a while after their last call and would steal cores.
    """
    time.sleep(settle)
    for _ in range(warmup):
        fn()
    times, start = [], time.perf_counter()
    while len(times) < repeats:
        gc.disable()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        gc.enable()
        if len(times) >= 2 and time.perf_counter() - start > budget:
            break
    return statistics.median(times)


def fmt(v, digits=3):
    if v is None:
        return "-"
    if v >= 100:
        return f"{v:,.0f}"
    return f"{v:.{digits}g}"


# ------------------------------------------------------------------------------------------
# peers

def _try_import(name):
    try:
        return __import__(name, fromlist=["_"])
    except Exception:  # noqa: BLE001 - a missing or broken optional peer is skipped
        return None


class Peers:
    """Callables of torch / Zennit / Captum / the NumPy reference for one model and batch."""

    def __init__(self, name, params, net, x, target, use_reference):
        self.torch = _try_import("torch")
        self.zennit = _try_import("zennit.composites") if self.torch else None
        self.captum = _try_import("captum.attr") if self.torch else None
        self.reference = _try_import("relprop.reference") if use_reference else None
        self.name, self.net, self.x, self.target = name, net, x, target
        if self.torch:
            torch = self.torch
            self.model = M.torch_net(name, params)
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.xt = torch.from_numpy(x)
            n_out = net(x[:1]).shape[1]
            self.onehot = torch.zeros(len(x), n_out)
            self.onehot[torch.arange(len(x)), torch.as_tensor(target)] = 1.0

    def _grad(self):
        torch = self.torch
        xt = self.xt.clone().requires_grad_()
        out = self.model(xt)
        (g,) = torch.autograd.grad(out, xt, self.onehot)
        return xt, g

    def torch_fn(self, method):
        if not self.torch:
            return None
        torch = self.torch
        if method == "forward":
            def fwd():
                with torch.inference_mode():
                    return self.model(self.xt)
            return fwd
        if method == "gradient":
            return lambda: self._grad()[1]
        if method == "gradient_x_input":
            def gxi():
                xt, g = self._grad()
                return xt.detach() * g
            return gxi
        return None

    def zennit_fn(self, method, stack):
        if not self.zennit or method not in LRP_METHODS:
            return None
        from zennit.attribution import Gradient

        _, kw, cls = LRP_METHODS[method]
        composite = getattr(self.zennit, cls)(canonizers=self.canonizers(), **kw)
        attributor = Gradient(model=self.model, composite=composite)
        stack.append(attributor)
        attributor.__enter__()
        onehot = self.onehot

        def run():
            return attributor(self.xt.clone().requires_grad_(), lambda out: onehot * out)[1]
        return run

    def canonizers(self):
        """Zennit's canonizers for the graphs: its ResNet canonizer (BatchNorms merged, the
        residual sums through its Sum layer, as relprop's Add), and for MobileNetV2 its
        BatchNorm merging (Zennit has no canonizer for the inverted-residual sum; the tests'
        one does not change the cost), and so for EfficientNet-B0 and ConvNeXt-Tiny (relprop's
        default rules there are its conserving ones, Zennit's the gradient across the
        squeeze-and-excitation products and LayerNorms: the same cost)."""
        if self.name == "resnet50":
            from zennit.torchvision import ResNetCanonizer

            return [ResNetCanonizer()]
        if self.name in ("mobilenet_v2", "efficientnet_b0", "convnext_tiny"):
            from zennit.canonizers import SequentialMergeBatchNorm

            return [SequentialMergeBatchNorm()]
        return None

    def captum_fn(self, method):
        if not self.captum:
            return None
        target = self.torch.as_tensor(self.target)
        if method == "gradient":
            sal = self.captum.Saliency(self.model)
            return lambda: sal.attribute(self.xt.clone().requires_grad_(), target=target,
                                         abs=False)
        if method == "gradient_x_input":
            ixg = self.captum.InputXGradient(self.model)
            return lambda: ixg.attribute(self.xt.clone().requires_grad_(), target=target)
        if method == "lrp.epsilon":
            try:
                from captum.attr._utils.lrp_rules import IdentityRule
                for m in self.model.modules():
                    if isinstance(m, self.torch.nn.Flatten):
                        m.rule = IdentityRule()
                lrp = self.captum.LRP(self.model)
                lrp.attribute(self.xt[:1].clone().requires_grad_(), target=target[:1])
            except Exception as e:  # noqa: BLE001
                print(f"  (captum LRP skipped: {type(e).__name__}: {e})", file=sys.stderr)
                return None
            return lambda: lrp.attribute(self.xt.clone().requires_grad_(), target=target)
        return None

    def reference_fn(self, method):
        R = self.reference
        if R is None:
            return None
        net, x, target = self.net, self.x.astype(np.float64), self.target
        if method == "forward":
            return lambda: R.forward(net, x)[-1]
        if method == "gradient":
            return lambda: R.gradient(net, x, target)
        if method == "gradient_x_input":
            return lambda: R.gradient_x_input(net, x, target)
        if method in LRP_METHODS and all(not isinstance(layer, rp.Conv2d) for layer in net.layers):
            cname, kw, _ = LRP_METHODS[method]
            rules = rp.composites.as_composite(cname, **kw).rules(net)

            def run():
                out = R.forward(net, x)[-1]
                return R.lrp(net, x, R.seed(target, out, scale=True), rules)
            return run
        return None


def relprop_fn(method, net, x, target):
    if method == "forward":
        return lambda: net(x)
    if method == "gradient":
        return lambda: rp.gradient(net, x, target)
    if method == "gradient_x_input":
        return lambda: rp.gradient_x_input(net, x, target)
    if method == "lrp.epsilon":
        return lambda: rp.lrp(net, x, target, "epsilon", epsilon=CAPTUM_EPS)
    cname, kw, _ = LRP_METHODS[method]
    return lambda: rp.lrp(net, x, target, cname, **kw)


def flop_floor(method, net, per_layer_macs):
    """FLOP of one sample at the method's floor (see the module docstring)."""
    fwd = 2 * sum(per_layer_macs)
    if method == "forward":
        return fwd
    if method in ("gradient", "gradient_x_input"):
        return 2 * fwd
    if method == "lrp.epsilon":
        rules = rp.composites.as_composite("epsilon", epsilon=CAPTUM_EPS).rules(net)
    else:
        cname, kw, _ = LRP_METHODS[method]
        rules = rp.composites.as_composite(cname, **kw).rules(net)
    return sum(2 * macs * RULE_COST.get(type(rule).__name__, 0)
               for macs, rule in zip(per_layer_macs, rules))


# ------------------------------------------------------------------------------------------
# model table

def bench_model(name, batches, threads, peaks, opts, rows):
    params = M.weights(name)
    net = M.relprop_net(name, params)
    _, per_layer = M.forward_macs(net)
    graph = M.is_graph(name)
    for batch in batches:
        x = M.inputs(name, batch)
        n_out = net(x[:1]).shape[1]
        target = np.arange(batch) % n_out
        use_ref = (opts.reference and name != "vgg16" and not graph
                   and (batch == 1 or (name == "mlp" and not opts.quick)))
        peers = Peers(name, params, net, x, target, use_ref)
        # one warm-up for relprop only, two timed calls
        slow = (name == "vgg16" or graph) and batch > 1
        repeats = 2 if slow else opts.repeats
        # the graphs: only the (batch, threads) pairs of M.GRAPH_RUNS
        runs = [t for t in threads if not graph or (batch, t) in M.GRAPH_RUNS]
        for t in runs:
            rp.set_num_threads(t)
            if peers.torch:
                peers.torch.set_num_threads(t)
            _blas_threads(t)
            for method in METHODS:
                if method not in opts.methods:
                    continue
                row = {"model": name, "batch": batch, "threads": t, "method": method}
                sec = median_time(relprop_fn(method, net, x, target), repeats, opts.budget)
                row["relprop"] = batch / sec
                flop = flop_floor(method, net, per_layer) * batch
                row["gflops"] = flop / sec * 1e-9
                row["peak_pct"] = 100 * row["gflops"] / peaks[t]
                for peer in PEERS:
                    # one peer at a time: a Zennit attributor's hooks (and canonizers) stay on
                    # the model only while Zennit is timed
                    stack = []
                    fn = (peers.zennit_fn(method, stack) if peer == "zennit"
                          else getattr(peers, f"{peer}_fn")(method))
                    try:
                        if fn is None:
                            continue
                        reps = 1 if peer == "reference" else repeats
                        warm = 0 if peer == "reference" or slow else 1
                        row[peer] = batch / median_time(fn, reps, opts.budget, warmup=warm)
                    finally:
                        for attributor in reversed(stack):
                            attributor.__exit__(None, None, None)
                rows.append(row)
                print("  " + _row_text(row), file=sys.stderr, flush=True)


PEERS = ["reference", "torch", "zennit", "captum"]


def _row_text(r):
    peers = " ".join(f"{p}={fmt(r.get(p))}" for p in PEERS if r.get(p))
    return (f"{r['model']} b={r['batch']} t={r['threads']} {r['method']}: "
            f"relprop={fmt(r['relprop'])}/s {fmt(r['gflops'])} GFLOP/s ({r['peak_pct']:.0f}%) "
            f"{peers}")


def model_table(rows):
    head = ("| model | batch | threads | method | relprop samples/s | GFLOP/s | % peak | "
            "reference | torch | zennit | captum | x reference | x torch | x zennit | x captum |")
    lines = [head, "|" + "|".join(["---"] * 4 + ["---:"] * 11) + "|"]
    for r in rows:
        ratios = [fmt(r["relprop"] / r[p], 3) if r.get(p) else "-" for p in PEERS]
        lines.append(
            f"| {r['model']} | {r['batch']} | {r['threads']} | {r['method']} | "
            f"{fmt(r['relprop'])} | {fmt(r['gflops'])} | {r['peak_pct']:.0f} | "
            + " | ".join(fmt(r.get(p)) for p in PEERS) + " | " + " | ".join(ratios) + " |")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------
# GEMM table

def _blas_threads(t):
    try:
        import threadpoolctl
    except ImportError:
        return
    global _LIMITER
    _LIMITER = threadpoolctl.threadpool_limits(t, user_api="blas")


_LIMITER = None


def gemm_shapes(quick):
    square = [(s, s, s) for s in ((256, 512) if quick else (256, 512, 1024))]
    conv = []
    for name in (("cifar_cnn",) if quick else ("cifar_cnn", "vgg16")):
        shape, spec, _ = M.MODELS[name]  # (chains only)
        h = shape[1]
        for s in spec:
            if s[0] == "pool":
                h //= 2
            elif s[0] == "conv":
                mnk = (s[2], h * h, s[1] * 9)
                if (name, mnk) not in conv:
                    conv.append((name, mnk))
    conv = [(n, mnk) for n, mnk in conv][: (3 if quick else None)]
    return [("square", s) for s in square] + conv


def bench_gemm(threads, peaks, opts):
    rng = np.random.default_rng(0)
    rows = []
    for kind, (m, n, k) in gemm_shapes(opts.quick):
        a = rng.uniform(-1, 1, (m, k)).astype(np.float32)
        b = rng.uniform(-1, 1, (k, n)).astype(np.float32)
        flop = 2.0 * m * n * k
        reps = max(3, min(opts.repeats, int(2e10 / flop)))
        for t in threads:
            rp.set_num_threads(t)
            _blas_threads(t)
            tr = median_time(partial(ops.gemm, a, b), reps, opts.budget)
            tn = median_time(partial(np.matmul, a, b), reps, opts.budget)
            row = {"shape": kind, "m": m, "n": n, "k": k, "threads": t,
                   "relprop": flop / tr * 1e-9, "numpy": flop / tn * 1e-9}
            row["peak_pct"] = 100 * row["relprop"] / peaks[t]
            rows.append(row)
            print(f"  gemm {kind} {m}x{n}x{k} t={t}: relprop {row['relprop']:.1f} numpy "
                  f"{row['numpy']:.1f} GFLOP/s", file=sys.stderr, flush=True)
    head = ("| shape | m | n | k | threads | relprop GFLOP/s | numpy GFLOP/s | relprop/numpy "
            "| relprop % peak |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    lines = [head] + [f"| {r['shape']} | {r['m']} | {r['n']} | {r['k']} | {r['threads']} | "
                      f"{r['relprop']:.1f} | {r['numpy']:.1f} | {r['relprop'] / r['numpy']:.2f} | "
                      f"{r['peak_pct']:.0f} |" for r in rows]
    return "\n".join(lines), rows


# ------------------------------------------------------------------------------------------
# memory (in a fresh subprocess per case: ru_maxrss is a process-wide high-water mark)

def _status_kib(field):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _reset_peak():
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not possible."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _trim():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def memory_case(name, method, batch, threads):
    """Runs in a subprocess: prints a JSON line with the sizes and the growth of the peak RSS
    (VmHWM; ru_maxrss would include the parent's, it survives exec) during a cold LRP call
    (rule weights made in the call) and a warm one (made by the cold call), in MiB."""
    rp.set_num_threads(threads)
    net = M.relprop_net(name, M.weights(name))
    x = M.inputs(name, batch)
    cname, kw, _ = LRP_METHODS[method]
    target = np.zeros(batch, dtype=np.int64)
    trace = net.trace(x)
    acts = sum(a.nbytes for a in trace.inputs) + trace.output.nbytes
    del trace
    out = {"weights": sum(sum(a.nbytes for a in layer.arrays().values())
                          for layer in net.layers) / 2**20,
           "activations": acts / 2**20, "output": x.nbytes / 2**20}
    for case in ("cold", "warm"):
        gc.collect()
        rp.release_memory()  # output blocks kept by relprop's pool count as growth, not before
        _trim()
        before = _status_kib("VmRSS")
        exact = _reset_peak()
        hidden = max(0, _status_kib("VmHWM") - before)
        r = rp.lrp(net, x, target, cname, **kw)
        out[case] = max(0, _status_kib("VmHWM") - before) / 1024
        out[case + "_hidden"] = 0 if exact else hidden / 1024
        del r
    print(json.dumps(out))


def bench_memory(models, opts):
    lines = ["| model | batch | method | weights MiB | activations MiB | output MiB | "
             "peak growth MiB, cold / warm | (weights + growth) / (weights + activations + "
             "output), cold / warm |", "|---|---:|---|---:|---:|---:|---:|---:|"]
    quick = ["cifar_cnn"] if "cifar_cnn" in models else models[:1]
    for name in (quick if opts.quick else models):
        batch = M.MODELS[name][2] if not opts.quick else 16
        for method in ("lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-case",
                   json.dumps([name, method, batch, 1])]
            res = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            if res.returncode != 0:
                print(res.stderr, file=sys.stderr)
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            denom = r["weights"] + r["activations"] + r["output"]
            note = " (lower bound)" if max(r["cold_hidden"], r["warm_hidden"]) > 1 else ""
            lines.append(
                f"| {name} | {batch} | {method} | {r['weights']:.1f} | {r['activations']:.1f} | "
                f"{r['output']:.2f} | {r['cold']:.1f} / {r['warm']:.1f}{note} | "
                f"{(r['weights'] + r['cold']) / denom:.2f} / "
                f"{(r['weights'] + r['warm']) / denom:.2f} |")
            print("  memory " + lines[-1], file=sys.stderr, flush=True)
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------

def machine_info(threads):
    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    lines = [f"- CPU: {cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}",
             f"- relprop {rp.__version__}: ISA {ops.isa()} (supported: "
             f"{', '.join(ops.supported_isas())}), OpenMP {bool(rp._core.openmp)}"]
    try:
        import threadpoolctl
        for info in threadpoolctl.threadpool_info():
            if info.get("user_api") == "blas":
                lines.append(f"- NumPy {np.__version__} BLAS: {info.get('internal_api')} "
                             f"{info.get('version')}, kernel {info.get('architecture')}")
    except ImportError:
        lines.append(f"- NumPy {np.__version__} (threadpoolctl not installed: BLAS kernel unknown)")
    for var in ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE"):
        if var in os.environ:
            lines.append(f"- WARNING: {var}={os.environ[var]} is set (slows NumPy's sgemm)")
    versions = []
    for mod in ("torch", "zennit", "captum"):
        m = _try_import(mod)
        if m is not None:
            v = getattr(m, "__version__", None)
            if v is None:
                from importlib.metadata import version
                v = version(mod)
            versions.append(f"{mod} {v}")
    lines.append("- peers: " + (", ".join(versions) or "none installed"))
    return lines


def layers_report(parser, opts, argv):
    """The per-layer table of one model (bench/layers.py's steps), with the machine at the
    top."""
    import layers as LY

    if opts.layers not in M.MODELS:
        parser.error(f"unknown model {opts.layers!r}; use {', '.join(M.MODELS)}")
    threads = [int(t) for t in opts.threads.split(",")]
    if opts.clock == "thread" and threads != [1]:
        parser.error("--clock thread needs --threads 1")
    clock = time.thread_time if opts.clock == "thread" else time.perf_counter
    batches = ([int(b) for b in opts.batches.split(",")] if opts.batches
               else [1, M.MODELS[opts.layers][2]])
    repeats = opts.repeats or 11
    t_start = time.time()
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None
    info = machine_info(threads)
    info[0] = (f"- CPU: {LY.cpu_model()}, {os.cpu_count()} logical cores; "
               f"Python {platform.python_version()}")
    core = max(ops.fma_peak_gflops(1) for _ in range(3))
    peaks = {t: t * core for t in threads}
    info.append(f"- measured FMA peak (float32, {ops.isa()}): {core:.1f} GFLOP/s per core; "
                "% of peak is against threads x that")
    print("\n".join(info), file=sys.stderr)
    rows = []
    for batch in batches:
        rows += LY.step_rows(opts.layers, batch, threads, repeats, peaks, clock=clock,
                             log=sys.stderr)
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    sections = [f"# Per-layer steps: {opts.layers}", "", *info,
                f"- {'thread CPU' if opts.clock == 'thread' else 'wall-clock'} time, medians of "
                f"{repeats} interleaved repeats; unfused = the engine's separate passes today, "
                "fused = one fused kernel (bench/layers.py --steps)", "",
                LY.step_table(rows), ""]
    if load:
        sections.append(f"_System load average at start {load0[0]:.2f}, at the end "
                        f"{load[0]:.2f} (on {os.cpu_count()} cores)._")
    sections.append(f"_Run time {time.time() - t_start:.0f} s; `python bench/run.py "
                    f"{' '.join(argv if argv is not None else sys.argv[1:])}`._")
    text = "\n".join(sections) + "\n"
    print(text)
    if any(a.startswith("--output") for a in (argv if argv is not None else sys.argv[1:])):
        Path(opts.output).write_text(text)
    return rows


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small subset (< 2 min)")
    p.add_argument("--models", default=None,
                   help="comma-separated: mlp,cifar_cnn,vgg16,resnet50,mobilenet_v2,"
                        "efficientnet_b0,convnext_tiny")
    p.add_argument("--threads", default="1,2", help="comma-separated thread counts")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated methods")
    p.add_argument("--repeats", type=int, default=None, help="timed calls per measurement")
    p.add_argument("--budget", type=float, default=None, help="seconds per measurement")
    p.add_argument("--no-reference", dest="reference", action="store_false")
    p.add_argument("--no-gemm", dest="gemm", action="store_false")
    p.add_argument("--no-memory", dest="memory", action="store_false")
    p.add_argument("--output", default=str(HERE / "results.md"))
    p.add_argument("--memory-case", help=argparse.SUPPRESS)
    p.add_argument("--layers", metavar="MODEL", default=None,
                   help="only the per-layer table of MODEL (mlp, cifar_cnn, vgg16)")
    p.add_argument("--batches", default=None,
                   help="comma-separated batch sizes of --layers (default: 1 and the model's "
                        "large batch)")
    p.add_argument("--clock", choices=["wall", "thread"], default="wall",
                   help="--layers: elapsed time, or the calling thread's CPU time (--threads 1 "
                        "only: what a busy machine's other processes do not change)")
    opts = p.parse_args(argv)
    if opts.memory_case:
        memory_case(*json.loads(opts.memory_case))
        return
    if opts.layers:
        return layers_report(p, opts, argv)
    models = (opts.models.split(",") if opts.models
              else ["mlp", "cifar_cnn"] if opts.quick else list(M.MODELS))
    for m in models:
        if m not in M.MODELS:
            p.error(f"unknown model {m!r}; use {', '.join(M.MODELS)}")
    threads = [int(t) for t in opts.threads.split(",")]
    opts.methods = opts.methods.split(",")
    opts.repeats = opts.repeats or (3 if opts.quick else 7)
    opts.budget = opts.budget or (0.3 if opts.quick else 3.0)
    t_start = time.time()
    load0 = os.getloadavg() if hasattr(os, "getloadavg") else None

    info = machine_info(threads)
    # % of peak is against threads x the per-core peak (best of 3): a measurement on all cores
    # at once drops whenever another process runs, which would flatter the percentages.
    core = max(ops.fma_peak_gflops(1) for _ in range(3))
    peaks = {t: t * core for t in threads}
    info.append(f"- measured FMA peak (float32, {ops.isa()}): {core:.1f} GFLOP/s per core; "
                + ", ".join(f"{ops.fma_peak_gflops(t):.1f} GFLOP/s measured on {t} threads"
                            for t in threads if t > 1))
    print("\n".join(info), file=sys.stderr)
    sections = ["# relprop benchmark", "", *info, ""]

    if opts.gemm:
        table, _ = bench_gemm(threads, peaks, opts)
        sections += ["## GEMM core vs NumPy matmul (float32, C = A B, A and B row-major)", "",
                     table, ""]
    rows = []
    for name in models:
        if opts.quick:
            batches = [1, 8 if name == "cifar_cnn" else 64]
        else:
            batches = [1, M.MODELS[name][2]]
        bench_model(name, batches, threads, peaks, opts, rows)
    sections += ["## Methods: samples/s (higher is better); x peer = relprop speed / peer speed",
                 "", model_table(rows), ""]
    if opts.memory:
        sections += ["## Peak memory of an LRP call (1 thread, RSS high-water growth in a fresh "
                     "process; cold = rule weights made in the call, warm = already cached)", "",
                     bench_memory(models, opts), ""]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        sections.append(f"_System load average (1/5/15 min) at start {load0[0]:.2f}/{load0[1]:.2f}/"
                        f"{load0[2]:.2f}, at the end {load[0]:.2f}/{load[1]:.2f}/{load[2]:.2f} "
                        f"(on {os.cpu_count()} cores: above ~0.2 other processes share the "
                        f"cores and the timings, 2-thread ones most)._")
    sections.append(f"_Run time {time.time() - t_start:.0f} s; `python bench/run.py "
                    f"{' '.join(argv if argv is not None else sys.argv[1:])}`._")
    text = "\n".join(sections) + "\n"
    print(text)
    Path(opts.output).write_text(text)


if __name__ == "__main__":
    main()
