"""Where Winograd beats the direct convolution, per instruction set: a grid of stride-1 3x3
layers (channels x image size x batch), forward and backward, timed with the direct method,
F(4x4, 3x3) and F(2x2, 3x3); then the crossover thresholds of the planner's rule fitted to
those times, printed as the ISA's table (``relprop.ops.isa_table()["winograd"]``, kept in
``cpp/src/isa_table.cpp``) beside the table the build has.

    python bench/winograd_crossover.py --isa avx512,avx2,generic --repeats 7 \
        --save bench/winograd_crossover.json        # measure (generic only to check the model)
    python bench/winograd_crossover.py --fit bench/winograd_crossover.json   # the tables again

(bench/winograd_crossover.md: the last run's output, the machine and what was decided.)

The rule (``relprop.ops.conv2d_plan`` for float32 with ``algorithm="auto"``), per sample and
never per batch: direct if the pass reads or writes fewer than ``min_channels`` channels or a
sample takes fewer than ``min_macs`` multiply-adds; else F(4x4) if a sample has at least
``f4_min_tiles`` of its 4x4 tiles; else F(2x2) if it has ``f2_min_tiles`` 2x2 tiles; else
direct.  The fit picks, per ISA, the thresholds that minimize the geometric mean of
``time(chosen) / time(fastest)`` over the grid (both batch sizes and directions), so the
rule is the one this grid says is best where a per-sample rule must pick one algorithm for
every batch.

An ISA that is not measured (``--derive generic``, the default: the baseline build runs on
CPUs this bench does not see) gets its table from a cost model instead, marked "not
measured": a pass's time is ``macs / R + elements / V + c`` (the GEMM's multiply-adds, the
elements the transforms or the im2col panels touch, and a fixed cost per call), with
``R``, ``V``, ``c`` fitted to the measured ISA ``--model-from`` (relative least squares over
every pass and algorithm); the derived ISA's ``R`` and ``V`` are those times its vector width
over the measured one's (the table's depthwise ``lanes``), ``c`` unchanged; the thresholds
are then fitted to the modeled times of the same grid.  Where the derived ISA could be run,
the report shows how the derived thresholds do on its measured times.

Timing on a shared machine is noisy: ``--clock thread`` (the default) times the calling
thread's CPU time on 1 thread (a core taken away by another process does not count), and every
time is the median of interleaved repeats.  The ISAs are measured one after another in one
process (``relprop.ops.set_isa``).
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
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
SIZES = (5, 7, 10, 14, 20, 28, 56, 112, 224)
BATCHES = (1, 8)
#: Candidate thresholds of the fit.
CANDIDATES = {"min_channels": (1, 4, 8, 16, 32), "min_macs": tuple(2 ** k for k in range(12, 23)),
              "f4_min_tiles": (1, 4, 9, 16, 25, 36, 49, 64, 10 ** 9),
              "f2_min_tiles": (1, 4, 9, 16, 25, 36, 49, 64, 10 ** 9)}


def grid(max_gflop):
    for c in CHANNELS:
        for hw in SIZES:
            for n in BATCHES:
                if 2 * 9 * c * c * hw * hw * n * 1e-9 <= max_gflop:
                    yield c, c, hw, n
    for c_in, c_out, hw, n in [(3, 64, 224, 1), (3, 64, 32, 8), (64, 8, 56, 8), (8, 64, 56, 8),
                               (16, 128, 28, 8), (128, 16, 28, 8), (512, 64, 14, 8),
                               (64, 512, 14, 8), (4, 64, 56, 1), (64, 4, 56, 1)]:
        yield c_in, c_out, hw, n


def measure(isa, opts, clock):
    """[{c_in, c_out, hw, n, pass, ms: {direct, f4, f2}}] under ``isa``."""
    ops.set_isa(isa)
    rng = np.random.default_rng(0)
    rows = []
    for c_in, c_out, hw, n in grid(opts.max_gflop):
        x = np.maximum(rng.standard_normal((n, c_in, hw, hw)), 0).astype(np.float32)
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2 / (9 * c_in))).astype(np.float32)
        g = rng.standard_normal((n, c_out, hw, hw)).astype(np.float32)
        times = L.time_interleaved(L.layer_fns(x, w, None, g, (1, 1)), opts.repeats, clock=clock)
        for d in ("fwd", "bwd"):
            ms = {m: statistics.median(times[(d, m)]) * 1e3 for m in ("direct", "f4", "f2")}
            rows.append({"c_in": c_in, "c_out": c_out, "hw": hw, "n": n, "pass": d, "ms": ms})
            print(f"{isa:7s} {c_in:4d} {c_out:4d} {hw:4d} {n:2d} {d} | "
                  + " ".join(f"{ms[m]:9.3f}" for m in ("direct", "f4", "f2")), flush=True)
    return rows


def choose(row, t):
    """The algorithm ("direct", "f4", "f2") the rule with thresholds ``t`` picks for ``row``
    (padding 1: the pass's output is hw x hw; backward reads c_out and writes c_in)."""
    cin, cout = (row["c_out"], row["c_in"]) if row["pass"] == "bwd" else (row["c_in"],
                                                                         row["c_out"])
    hw = row["hw"]
    if min(cin, cout) < t["min_channels"] or 9 * cin * cout * hw * hw < t["min_macs"]:
        return "direct"
    if math.ceil(hw / 4) ** 2 >= t["f4_min_tiles"]:
        return "f4"
    if math.ceil(hw / 2) ** 2 >= t["f2_min_tiles"]:
        return "f2"
    return "direct"


def loss(rows, t):
    """Geometric mean of time(chosen) / time(fastest) over ``rows``."""
    return math.exp(statistics.fmean(math.log(r["ms"][choose(r, t)] / min(r["ms"].values()))
                                     for r in rows))


def fit(rows):
    """The thresholds of :data:`CANDIDATES` with the least :func:`loss` (ties: the first in
    the candidates' order, the most conservative)."""
    best = None
    for values in itertools.product(*CANDIDATES.values()):
        t = dict(zip(CANDIDATES, values))
        score = loss(rows, t)
        if best is None or score < best[0] - 1e-12:
            best = (score, t)
    return best


#: The cost model's terms: multiply-adds and elements of the direct method and of Winograd's
#: (their GEMMs differ in shape, their element passes in kind), and a cost per call of each.
TERMS = ("direct macs", "winograd macs", "direct elements", "winograd elements",
         "direct call", "winograd call")
RATE_TERMS = 4  # the first four scale with the vector width, the calls' costs do not


def work(row, alg):
    """The cost model's features of ``row``'s pass by ``alg`` (see :data:`TERMS`)."""
    cin, cout = (row["c_out"], row["c_in"]) if row["pass"] == "bwd" else (row["c_in"],
                                                                         row["c_out"])
    n, hw = row["n"], row["hw"]
    if alg == "direct":  # im2col panels of 9 cin values per output pixel
        return 9 * cin * cout * n * hw * hw, 0, 9 * cin * n * hw * hw, 0, 1, 0
    m = int(alg[1])
    points = n * math.ceil(hw / m) ** 2 * (m + 2) ** 2  # transform points of the batch
    return 0, points * cin * cout, 0, points * (cin + cout), 0, 1


def cost_model(rows):
    """The cost per unit of each of :data:`TERMS` in ms, fitted by least squares to every pass
    and algorithm of ``rows`` relative to each time, and the geometric mean of the model's time
    over the measured one's (|log|)."""
    feats, times = [], []
    for r in rows:
        for alg, ms in r["ms"].items():
            feats.append(work(r, alg))
            times.append(ms)
    a = np.array(feats, float) / np.array(times)[:, None]
    coef = np.maximum(np.linalg.lstsq(a, np.ones(len(times)), rcond=None)[0], 0)
    err = math.exp(statistics.fmean(abs(math.log(max(f @ coef, 1e-12) / t))
                                    for f, t in zip(np.array(feats, float), times)))
    return tuple(coef), err


def modeled(rows, coef, scale):
    """``rows`` with the times of the cost model ``coef`` whose rates are ``scale`` times as
    fast."""
    unit = np.array(coef) / np.array([scale] * RATE_TERMS + [1] * (len(TERMS) - RATE_TERMS))
    return [{**r, "ms": {alg: float(np.array(work(r, alg), float) @ unit) for alg in r["ms"]}}
            for r in rows]


def lanes(isa):
    return ops.isa_table(isa)["depthwise"]["float32"]["lanes"]


def derive(isa, base, rows, measured=None):
    """The table of ``isa`` from the cost model fitted to ``base``'s measured ``rows``; with
    ``measured`` (``isa``'s own times, where this machine runs it) how it does on those."""
    coef, err = cost_model(rows)
    scale = lanes(isa) / lanes(base)
    score, t = fit(modeled(rows, coef, scale))
    print(f"\n## {isa} (not measured: cost model of {base}'s times, rates x {scale:g})")
    print(f"model of {base} (ms per 1e6 multiply-adds or elements, ms per call): "
          + ", ".join(f"{k} {c * (1 if k.endswith('call') else 1e6):.4g}"
                      for k, c in zip(TERMS, coef))
          + f"; model / measured, geometric mean of |log|: {err:.3f}")
    print(f"derived: {t}  (on the modeled times: {score:.4f})")
    built = ops.isa_table(isa)["winograd"]
    print(f"built:   { {k: built[k] for k in CANDIDATES} }  measured={built['measured']}")
    print(f"         {built['source']}")
    if measured:
        own_score, own = fit(measured)
        print(f"check on {isa}'s measured times: derived {loss(measured, t):.4f}, fitted to "
              f"them {own} {own_score:.4f}")
    return t


def differences(rows, old, new):
    """Where the rules ``old`` and ``new`` choose differently: how many passes, and
    time(old's choice) / time(new's) over them (median, range): how clear a change would be."""
    ratios = [r["ms"][choose(r, old)] / r["ms"][choose(r, new)] for r in rows
              if choose(r, old) != choose(r, new)]
    if not ratios:
        return "the two rules choose alike on every pass"
    return (f"they differ on {len(ratios)} of {len(rows)} passes: time(built) / time(fitted) "
            f"median {statistics.median(ratios):.3f}, from {min(ratios):.3f} to "
            f"{max(ratios):.3f}")


def report(isa, rows, cpu):
    score, t = fit(rows)
    built = ops.isa_table(isa)["winograd"]
    rule = {k: built[k] for k in CANDIDATES}
    print(f"\n## {isa} ({cpu}; {len(rows)} passes; thread CPU time, medians)")
    print(f"fitted: {t}  (time / fastest, geometric mean: {score:.4f})")
    print(f"built:  {rule}  measured={built['measured']}  ({loss(rows, rule):.4f})")
    print(f"        {built['source']}")
    print(differences(rows, rule, t))
    direct = loss(rows, {**t, "min_channels": 10 ** 9})
    f4 = loss(rows, {"min_channels": 1, "min_macs": 1, "f4_min_tiles": 1, "f2_min_tiles": 1})
    print(f"always direct: {direct:.4f}, always F(4x4) where it applies: {f4:.4f}")
    return t


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--isa", default=",".join(ops.supported_isas()),
                   help="comma-separated ISAs to measure (default: every supported one)")
    p.add_argument("--clock", choices=["wall", "thread"], default="thread")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--max-gflop", type=float, default=6.0,
                   help="skip layers of more direct-method GFLOP than this")
    p.add_argument("--save", metavar="FILE.json", help="write the times there")
    p.add_argument("--fit", metavar="FILE.json", help="fit saved times instead of measuring")
    p.add_argument("--derive", default="generic",
                   help="comma-separated ISAs whose table comes from the cost model")
    p.add_argument("--model-from", default="avx2",
                   help="the measured ISA the cost model is fitted to")
    opts = p.parse_args(argv)
    rp.set_num_threads(1)
    clock = time.thread_time if opts.clock == "thread" else time.perf_counter
    if opts.fit:
        data = json.loads(Path(opts.fit).read_text())
    else:
        data = {"cpu": L.cpu_model(), "clock": opts.clock, "repeats": opts.repeats, "isas": {}}
        for isa in opts.isa.split(","):
            data["isas"][isa] = measure(isa, opts, clock)
            if opts.save:
                Path(opts.save).write_text(json.dumps(data))
    derived = [isa for isa in opts.derive.split(",") if isa]
    for isa, rows in data["isas"].items():
        if isa not in derived:
            report(isa, rows, data["cpu"])
    if derived and opts.model_from in data["isas"]:
        for isa in derived:
            derive(isa, opts.model_from, data["isas"][opts.model_from], data["isas"].get(isa))


if __name__ == "__main__":
    main()
