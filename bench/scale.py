"""relprop at scale: samples/s of LRP over a dataset in this process and on a Dask LocalCluster,
and what Dask costs against in-process.

    python bench/scale.py                       # digits CNN on 100,000, CIFAR-size CNN on 20,000
    python bench/scale.py --quick               # 20,000 / 2,000 samples, 1 round
    python bench/scale.py --models digits --repeats 5 --no-cli \
        --output bench/results_scale_small_chunks.md

Every measurement runs in a fresh process (``--one``), so thread pools and caches of one
configuration never serve another; rounds interleave the configurations (rotated order) and
the report gives medians.  Each run reads the inputs from a ``.npy`` on disk and ends with the
relevance of every sample in the driver's memory:

* in-process, T threads: ``np.load``, ``relprop.explain(net, x, "pred")`` (batch 64);
* Dask, W workers x T threads (``LocalCluster(processes=True)``, started before the clock):
  ``relprop.dask.from_npy`` (workers read their chunks), ``relprop.dask.explain(net, x, "pred")``
  (batch 64 inside a task), ``compute()``; the first job on a cluster is a warm-up.  Small
  chunks run twice: as relprop.dask merges them into tasks by default, and with
  ``chunks_per_task=1`` (a task per chunk);
* what Dask alone costs for as many chunks: the same ``from_npy`` array read and copied block by
  block (``map_blocks(np.copy)``) on both cluster shapes of 2 threads, in both chunk sizes.
* Dask's overhead, paired: this VM's speed changes for tens of seconds at a time (the in-process
  2-thread job takes 1.3 s or 2.1 s for the same work, both threads busy throughout, while
  single-threaded processes keep their pace), so a fresh process per run compares runs made in
  different states.  One process per cluster therefore also alternates the in-process job (in
  that process, as many threads as the cluster) with the Dask job, ``--pairs`` times, and the
  overhead is taken from the median of the pairs' ratios.
* Scaling, paired: one cluster of 2 workers alternates jobs held to one worker and jobs spread
  over both, ``--scaling-pairs`` times, for the same reason.

The relevance of every run is hashed: all configurations must give the same bytes.  Also timed:
``relprop explain`` streaming to disk (digits only; wall clock of the command, cluster start
included, and the rate it reports).  Writes bench/results_scale.md (or --output).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
METHOD = "lrp.epsilon_plus_flat"
BATCH = 64
#: name: (samples, chunk, small chunk (about 10 ms of work on one thread) or None, description)
MODELS = {
    "digits": (100_000, 4096, 480, "bundled digits CNN (1x8x8)"),
    "cifar": (20_000, 64, None, "CIFAR-size VGG-style CNN (3x32x32, bench/models.py)"),
}
#: (label, kind, workers, threads per worker); the passive one runs with OMP_WAIT_POLICY=passive
#: (OpenMP threads that sleep at once at a barrier instead of spinning: on a shared machine a
#: spinning thread burns the time slice its preempted partner needs)
CONFIGS = [
    ("in-process, 2 threads", "local", 1, 2),
    ("in-process, 2 threads, OMP_WAIT_POLICY=passive", "local", 1, 2),
    ("in-process, 1 thread", "local", 1, 1),
    ("LocalCluster 2 workers x 1 thread", "dask", 2, 1),
    ("LocalCluster 1 worker x 2 threads", "dask", 1, 2),
    ("LocalCluster 1 worker x 1 thread", "dask", 1, 1),
]


def build_net(model):
    import relprop as rp

    if model == "digits":
        return rp.models.digits_cnn()
    sys.path.insert(0, str(HERE))
    import models as M

    return M.relprop_net("cifar_cnn", M.weights("cifar_cnn", seed=0))


def make_inputs(model, n, path):
    """Seeded inputs in [0, 1] written to ``path`` chunk by chunk."""
    import relprop as rp

    shape = (1, 8, 8) if model == "digits" else (3, 32, 32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n,) + shape)
    rng = np.random.default_rng(0)
    if model == "digits":
        x, _ = rp.models.digits_data()
        for start in range(0, n, len(x)):
            k = min(len(x), n - start)
            out[start:start + k] = np.clip(x[:k] + rng.uniform(-0.05, 0.05, x[:k].shape), 0, 1)
    else:
        for start in range(0, n, 1000):
            k = min(1000, n - start)
            out[start:start + k] = rng.random((k,) + shape, dtype=np.float32)
    out.flush()
    del out


def digest(R):
    return hashlib.sha256(np.ascontiguousarray(R).tobytes()).hexdigest()[:16]


# ------------------------------------------------------------------------------------------
# one measurement, in its own process
# ------------------------------------------------------------------------------------------
def one(args):
    import relprop as rp

    net = build_net(args.model)
    def local():
        x = np.load(args.path)
        return rp.explain(net, x, "pred", METHOD, batch_size=BATCH)

    def timed(job):
        t0 = time.perf_counter()
        out = job()
        return time.perf_counter() - t0, out

    def alternate(a, b):
        """Print ``args.pairs`` pairs of seconds ``(a, b)``, run a then b, b then a, ..., and
        the digests of their results."""
        pairs, digests = [], set()
        for i in range(args.pairs):
            first, second = (a, b) if i % 2 == 0 else (b, a)
            (t1, r1), (t2, r2) = timed(first), timed(second)
            pairs.append((t1, t2) if i % 2 == 0 else (t2, t1))
            digests |= {digest(r1), digest(r2)}
        print(json.dumps({"pairs": pairs, "digests": sorted(digests)}))

    if args.kind == "local":
        rp.set_num_threads(args.threads)
        xw = np.load(args.path, mmap_mode="r")[:2 * BATCH]
        rp.explain(net, np.asarray(xw), 0, METHOD, batch_size=BATCH)  # warm-up
        time.sleep(0.2)
        seconds, R = timed(local)
        print(json.dumps({"seconds": seconds, "n": len(R), "digest": digest(R)}))
        return
    # "dask"; "floor": Dask alone, the same chunks read and copied, no explanation; "paired",
    # "scaling": two jobs alternating
    import logging

    from distributed import Client, LocalCluster

    import relprop.dask as rd

    def job(n=None, workers=None):
        x = rd.from_npy(args.path, chunks=args.chunk)
        x = x if n is None else x[:n]  # (a slice is no longer a from_npy array)
        if args.kind == "floor":
            return x.map_blocks(np.copy).compute()
        R = rd.explain(net, x, "pred", METHOD, batch_size=BATCH,
                       chunks_per_task=args.chunks_per_task or None)
        return client.compute(R, workers=workers, allow_other_workers=False).result()

    with LocalCluster(n_workers=args.workers, threads_per_worker=args.threads,
                      processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR) as cluster, Client(cluster) as client:
        job(2 * args.chunk)  # warm-up
        if args.kind == "scaling":
            # the same cluster of 2 workers, its jobs held to one worker against spread over both
            one_worker = [sorted(client.scheduler_info()["workers"])[0]]
            job(2 * args.chunk, one_worker)
            return alternate(lambda: job(workers=one_worker), job)
        if args.kind == "paired":
            # in-process (in this process, as many threads as the cluster) against Dask
            rp.set_num_threads(args.workers * args.threads)
            local()
            time.sleep(0.2)
            return alternate(local, job)
        time.sleep(0.2)
        seconds, R = timed(job)
    print(json.dumps({"seconds": seconds, "n": len(R), "digest": digest(R)}))


def run_one(model, path, kind, workers, threads, chunk, per_task=0, passive=False, pairs=0):
    cmd = [sys.executable, __file__, "--one", "--model", model, "--path", str(path),
           "--kind", kind, "--workers", str(workers), "--threads", str(threads),
           "--chunk", str(chunk), "--chunks-per-task", str(per_task), "--pairs", str(pairs)]
    env = dict(os.environ, OMP_WAIT_POLICY="passive") if passive else None
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def run_cli(path, out, extra):
    cmd = [sys.executable, "-m", "relprop.cli", "explain", "digits_cnn", str(path), "-o", str(out),
           "-m", METHOD, "--batch-size", str(BATCH), *extra]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=7200)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr}")
    line = next(ln for ln in proc.stdout.splitlines() if ln.startswith("explained "))
    inner = float(line.split(" in ")[1].split(" s ")[0])
    return {"wall": wall, "seconds": inner, "digest": digest(np.load(Path(out, "relevance.npy")))}


# ------------------------------------------------------------------------------------------
# the driver
# ------------------------------------------------------------------------------------------
def machine():
    import relprop as rp
    from relprop import ops

    cpu = platform.processor() or "?"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines()
                   if line.startswith("Model name"))
    except (OSError, StopIteration):
        pass
    import dask
    import distributed

    return (f"- CPU: {cpu}, {os.cpu_count()} logical cores; Python {platform.python_version()}\n"
            f"- relprop {rp.__version__}: ISA {ops.isa()}, OpenMP threads default "
            f"{rp.get_num_threads()}; dask {dask.__version__}, distributed "
            f"{distributed.__version__}\n"
            f"- load average at start: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="digits,cifar")
    ap.add_argument("--repeats", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--quick", action="store_true", help="small n, one round")
    ap.add_argument("--no-small-chunks", action="store_true",
                    help="skip the runs with small chunks")
    ap.add_argument("--no-cli", action="store_true", help="skip the relprop explain runs")
    ap.add_argument("--output", default=str(HERE / "results_scale.md"))
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    for opt in ("--model", "--path", "--kind"):
        ap.add_argument(opt, help=argparse.SUPPRESS)
    ap.add_argument("--pairs", type=int, default=10,
                    help="in-process/Dask pairs per cluster for the paired overhead (default 10)")
    ap.add_argument("--scaling-pairs", type=int, default=5,
                    help="one-worker/two-worker pairs for the paired scaling (default 5)")
    for opt in ("--workers", "--threads", "--chunk", "--chunks-per-task"):
        ap.add_argument(opt, type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        return one(args)

    repeats = 1 if args.quick else args.repeats
    command = " ".join(["python bench/scale.py", *sys.argv[1:]])
    report = ["# relprop at scale: in-process and on Dask", "", f"Made by `{command}`.", "",
              machine(), "",
              f"Method {METHOD}, target: each sample's predicted class, kernel batch {BATCH}. "
              f"Medians of {repeats} interleaved round(s); every run in a fresh process. "
              "Overhead: 1 - (Dask samples/s) / (in-process samples/s on as many threads, "
              "default OpenMP settings; in brackets against OMP_WAIT_POLICY=passive); "
              "scaling: 2 workers x 1 thread against 1 worker x 1 thread.", ""]
    print("\n".join(report), flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="relprop-scale-"))
    for model in args.models.split(","):
        n, chunk, small, desc = MODELS[model]
        if args.quick:
            n //= 5 if model == "digits" else 10
        path = tmp / f"{model}.npy"
        make_inputs(model, n, path)
        runs = [(label, kind, w, t, chunk, 0) for label, kind, w, t in CONFIGS]
        if small and not args.no_small_chunks:
            for per_task, how in ((0, "merged into tasks (default)"), (1, "a task per chunk")):
                runs += [(f"{label}, chunks of {small}, {how}", kind, w, t, small, per_task)
                         for label, kind, w, t in CONFIGS if kind == "dask" and w * t == 2]
            runs += [(f"floor {w}x{t} {c}", "floor", w, t, c, 0) for c in (chunk, small)
                     for w, t in ((2, 1), (1, 2))]
        times = {r[0]: [] for r in runs}
        digests = set()
        for rnd in range(repeats):
            order = runs[rnd % len(runs):] + runs[:rnd % len(runs)]
            for label, kind, w, t, c, per_task in order:
                res = run_one(model, path, kind, w, t, c, per_task, passive="passive" in label)
                times[label].append(res["seconds"])
                if kind != "floor":
                    digests.add(res["digest"])
                print(f"  {model} round {rnd + 1}: {label}: {n / res['seconds']:,.0f} samples/s "
                      f"(load {os.getloadavg()[0]:.1f})", flush=True)
        # paired, for the models with small chunks (the CIFAR-size CNN's would take 20 min)
        paired = {}
        for w, t in ((2, 1), (1, 2)) if small and not args.no_small_chunks else ():
            for c in (chunk, small):
                res = run_one(model, path, "paired", w, t, c, pairs=1 if args.quick else args.pairs)
                paired[w, t, c] = res["pairs"]
                digests.update(res["digests"])
                print(f"  {model} paired {w}x{t}, chunks of {c}: "
                      + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in res["pairs"]), flush=True)
        # scaling, paired: one cluster of 2 workers, jobs held to one worker or spread over both
        res = run_one(model, path, "scaling", 2, 1, chunk,
                      pairs=1 if args.quick else args.scaling_pairs)
        scaling_pairs = res["pairs"]
        digests.update(res["digests"])
        print(f"  {model} scaling pairs: "
              + ", ".join(f"{a:.2f}/{b:.2f}" for a, b in scaling_pairs), flush=True)
        rate = {k: n / statistics.median(v) for k, v in times.items()}
        lines = [f"## {desc}, {n:,} samples", "",
                 f"Chunks of {chunk} samples (tasks), {-(-n // chunk)} tasks"
                 + (f"; small chunks: {small} samples, "
                    f"{1000 * small / rate['in-process, 1 thread']:.1f} ms of work each on one "
                    "thread (in-process rate)" if small and not args.no_small_chunks else "")
                 + f". Relevance identical in every run: {'yes' if len(digests) == 1 else 'NO'}.",
                 "", "| configuration | samples/s | s per chunk per thread | Dask overhead "
                 "vs in-process | runs (s) |", "|---|---:|---:|---:|---|"]
        for label, kind, w, t, c, _ in runs:
            if kind == "floor":
                continue
            r = rate[label]
            ref = rate["in-process, 2 threads" if w * t == 2 else "in-process, 1 thread"]
            over = "" if kind == "local" else f"{100 * (1 - r / ref):+.0f}%"
            if kind == "dask" and w * t == 2:
                passive = rate["in-process, 2 threads, OMP_WAIT_POLICY=passive"]
                over += f" ({100 * (1 - r / passive):+.0f}% vs passive)"
            per_chunk = c / (r / (w * t))
            lines.append(f"| {label} | {r:,.0f} | {per_chunk * 1000:.0f} ms | {over} | "
                         + ", ".join(f"{s:.2f}" for s in times[label]) + " |")
        scaling = rate["LocalCluster 2 workers x 1 thread"] / rate[
            "LocalCluster 1 worker x 1 thread"]
        lines += ["", f"Scaling, 2 worker processes against 1 (1 thread each): **{scaling:.2f}x**; "
                  f"in-process 2 threads against 1: "
                  f"{rate['in-process, 2 threads'] / rate['in-process, 1 thread']:.2f}x.", "",
                  "Scaling, paired: one LocalCluster of 2 workers x 1 thread runs the job "
                  "alternately held to one worker "
                  "(`client.compute(R, workers=[w])`) and spread over both, so both sides of a "
                  "pair meet the machine in the same state; median of the pairs' ratios "
                  f"(one worker's time / both workers' time) over {len(scaling_pairs)} pairs: "
                  f"**{statistics.median(a / b for a, b in scaling_pairs):.2f}x** (per pair: "
                  + ", ".join(f"{a / b:.2f}" for a, b in scaling_pairs) + ").", ""]
        if paired:
            lines += ["Dask's overhead, paired: in one process, a LocalCluster and the in-process "
                      "job on as many threads alternate (in-process then Dask, Dask then "
                      "in-process, ...), so both sides of a pair meet the machine in the same "
                      "state; overhead = 1 - 1 / (median of the pairs' Dask/in-process time "
                      "ratios), with the middle half of the pairs' overheads beside it (to "
                      "whole percents: pairs of one run spread over tens of percents). Chunks "
                      "merged into tasks as by default.", "",
                      "| cluster | chunks | pairs | in-process (s, median) | Dask (s, median) | "
                      "overhead (middle half) | per pair |", "|---|---:|---:|---:|---:|---:|---|"]
            for (w, t, c), prs in paired.items():
                ratio = statistics.median(b / a for a, b in prs)
                overs = [100 * (1 - a / b) for a, b in prs]
                q1, _, q3 = statistics.quantiles(overs, n=4) if len(prs) > 1 else overs * 3
                lines.append(f"| {w} worker{'s' if w > 1 else ''} x {t} "
                             f"thread{'s' if t > 1 else ''} | {c} | {len(prs)} | "
                             f"{statistics.median(a for a, _ in prs):.2f} | "
                             f"{statistics.median(b for _, b in prs):.2f} | "
                             f"**{100 * (1 - 1 / ratio):+.0f}%** ({q1:+.0f}% to {q3:+.0f}%) | "
                             + ", ".join(f"{o:+.0f}%" for o in overs) + " |")
            lines.append("")
        if small and not args.no_small_chunks:
            local = statistics.median(times["in-process, 2 threads"])
            lines += ["What Dask alone costs: the same inputs read and copied chunk by chunk "
                      "(`map_blocks(np.copy)`, no explanation) and gathered, against the "
                      "in-process explanation on 2 threads:", ""]
            for w, t in ((2, 1), (1, 2)):
                floor = {c: statistics.median(times[f"floor {w}x{t} {c}"]) for c in (chunk, small)}
                extra = (floor[small] - floor[chunk]) / (-(-n // small) + n // -chunk)
                lines.append(f"- {w} worker{'s' if w > 1 else ''} x {t} thread"
                             f"{'s' if t > 1 else ''}: {1000 * floor[chunk]:.0f} ms in chunks of "
                             f"{chunk} ({100 * floor[chunk] / local:.0f}% of in-process), "
                             f"{1000 * floor[small]:.0f} ms in chunks of {small} "
                             f"({100 * floor[small] / local:.0f}%): {1000 * extra:.2f} ms per "
                             "extra chunk.")
            lines.append("")
        if model == "digits" and not args.no_cli:
            cli = {"relprop explain --threads 2": ["--threads", "2"],
                   "relprop explain --workers 2 --threads 1": ["--workers", "2", "--threads", "1"],
                   "relprop explain --workers 1 --threads 2": ["--workers", "1", "--threads", "2"]}
            res = {k: [] for k in cli}
            for _ in range(repeats):
                for label, extra in cli.items():
                    out = tmp / "cli-out"
                    r = run_cli(path, out, extra)
                    res[label].append(r)
                    digests.add(r["digest"])
            lines += [f"`relprop explain` streaming the same {n:,} digits to disk "
                      "(relevance.npy, explained.csv, progress record; chunks of "
                      f"{min(4096, n)}): the rate the command reports, and the wall clock of the "
                      "whole command (Python start, and the cluster's start and stop, "
                      "included). Same bytes as above: "
                      f"{'yes' if len(digests) == 1 else 'NO'}.", "",
                      "| command | samples/s (reported) | wall clock (s) |", "|---|---:|---:|"]
            for label, rs in res.items():
                s = statistics.median(r["seconds"] for r in rs)
                wall = statistics.median(r["wall"] for r in rs)
                lines.append(f"| `{label}` | {n / s:,.0f} | {wall:.1f} |")
            lines.append("")
        print("\n".join(lines), flush=True)
        report += lines
        path.unlink()
    report += [f"Load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}."]
    Path(args.output).write_text("\n".join(report) + "\n")
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
