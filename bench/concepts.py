"""Concept relevance beside zennit-crp 0.6, in one run, on the same weights (issue 25).

* conditional: ``relprop.concepts.conditional`` of one 224x224 image under 32 conditions (one
  channel each of a hidden convolution, the class fixed) against zennit-crp's
  ``CondAttribution.__call__`` on the same (sample, condition) grid (the image repeated, as it
  requires), EpsilonPlusFlat, on VGG-16 and ResNet-50 (its ResNet canonizer);
* atlas: ``relprop.concepts.atlas`` of N CIFAR-size images (labels drawn at random) against
  ``FeatureVisualization.run`` with its defaults, on the CIFAR-size CNN of bench/models.py and
  ResNet-18 at 32x32;
* Dask: ``relprop.dask.atlas`` on a LocalCluster of 2 worker processes (one thread each)
  against 1, alternating, in one process.

Both sides run on ``--threads`` threads (torch.set_num_threads and relprop's), float32; each
timing is the median of ``--repeats`` runs, and every pair of results is compared (the largest
difference relative to the largest magnitude; the atlas: the share of top-k samples that agree,
zennit-crp breaking ties arbitrarily).  ``--quick`` runs small sizes, to check the script.

    python bench/concepts.py                # the full run (tens of minutes on 2 cores)
    python bench/concepts.py --quick        # small sizes, a minute
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))


def timed(fn, repeats):
    """``(median seconds, last result)`` of ``repeats`` calls."""
    times, out = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), out


def rel_diff(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


# --- models ---------------------------------------------------------------------------------------
def vgg16(size):
    """torchvision's VGG-16 (its random initialization), the adaptive pooling dropped (the
    identity at 224 pixels) and the first Dense sized for ``size``."""
    import torch
    import torchvision

    import relprop as rp

    torch.manual_seed(0)
    m = torchvision.models.vgg16(weights=None)
    m.avgpool = torch.nn.Identity()
    m.classifier[0] = torch.nn.Linear(512 * (size // 32) ** 2, 4096)
    for p in m.parameters():
        p.requires_grad_(False)
    return m.eval(), rp.from_torch(m.eval(), (3, size, size))


def torchvision_net(name, size, calibration=16):
    """torchvision's ``name`` with its random initialization and BatchNorm statistics of
    ``calibration`` inputs at ``size`` pixels (as bench/models.py calibrates ResNet-50), the
    BatchNorms' eps set to 0 (then relprop's fold and Zennit's merge are the same function)."""
    import torch
    import torchvision

    import relprop as rp

    torch.manual_seed(0)
    m = getattr(torchvision.models, name)(weights=None)
    for mod in m.modules():
        if isinstance(mod, torch.nn.BatchNorm2d):
            mod.momentum = 1.0
    m.train()
    with torch.no_grad():
        m(torch.from_numpy(np.random.default_rng(100).uniform(
            -2, 2, (calibration, 3, size, size)).astype(np.float32)))
    for p in m.parameters():
        p.requires_grad_(False)
    for mod in m.modules():  # Zennit's merge leaves a BatchNorm computing x / sqrt(1 + eps):
        if isinstance(mod, torch.nn.BatchNorm2d):  # eps 0 makes both hold one function
            mod.eps = 0.0
    m.eval()
    return m, rp.from_torch(m, (3, size, size))


def cifar_cnn():
    import relprop as rp

    import models as M

    m = M.torch_net("cifar_cnn", M.weights("cifar_cnn"))
    return m, rp.from_torch(m, (3, 32, 32))


def canonizers(name):
    from zennit.torchvision import ResNetCanonizer

    return [ResNetCanonizer()] if name.startswith("resnet") else []


# --- the three comparisons ----------------------------------------------------------------------
def bench_conditional(name, size, k, repeats):
    import torch
    from crp.attribution import CondAttribution
    from zennit.composites import EpsilonPlusFlat

    import relprop.concepts as rc

    if name == "vgg16":
        m, net = vgg16(size)
        node = "features.17"  # the 8th convolution
    else:
        m, net = torchvision_net(name, size)
        node = "layer3.0.conv2"  # inside a residual block: its shortcut is excluded
    x = np.random.default_rng(1).uniform(-2, 2, (1, 3, size, size)).astype(np.float32)
    conds = [{node: [c], "y": 7} for c in range(k)]
    ours_t, ours = timed(lambda: rc.conditional(net, x, conds), repeats)
    att = CondAttribution(m)
    comp = EpsilonPlusFlat(canonizers=canonizers(name))

    def peer():
        data = torch.from_numpy(x).repeat(k, 1, 1, 1).requires_grad_(True)
        return att(data, conds, comp).heatmap.numpy()

    peer_t, theirs = timed(peer, repeats)
    return {"what": f"conditional {name} {size}x{size}, {k} conditions", "relprop_s": ours_t,
            "peer_s": peer_t,
            "check": f"heatmaps differ by {rel_diff(ours.heatmap[0].sum(1), theirs):.1e}"}


def _dataset(n, seed=2):
    rng = np.random.default_rng(seed)
    return (rng.uniform(-2, 2, (n, 3, 32, 32)).astype(np.float32),
            rng.integers(0, 10, n))


def _layers(name, net):
    if name == "cifar_cnn":
        return [n.name for n in net.nodes if n.layer.kind == "conv2d"][-3:]
    return ["layer1.1.conv2", "layer2.1.conv2", "layer3.1.conv2", "layer4.1.conv2"]


def bench_atlas(name, n, repeats, batch_size):
    import torch
    from crp.attribution import CondAttribution
    from crp.concepts import ChannelConcept
    from crp.helper import load_maximization
    from crp.visualization import FeatureVisualization
    from zennit.composites import EpsilonPlusFlat

    import relprop.concepts as rc

    m, net = cifar_cnn() if name == "cifar_cnn" else torchvision_net(name, 32)
    x, y = _dataset(n)
    layers = _layers(name, net)
    ours_t, ours = timed(lambda: rc.atlas(net, x, layers, labels=y, k=8,
                                          batch_size=batch_size), repeats)
    xt = torch.from_numpy(x)
    data = [(xt[i], int(y[i])) for i in range(n)]
    with tempfile.TemporaryDirectory() as tmp:
        def peer():
            fv = FeatureVisualization(CondAttribution(m), data,
                                      {name: ChannelConcept() for name in layers}, path=tmp)
            fv.run(EpsilonPlusFlat(canonizers=canonizers(name)), 0, n, batch_size=batch_size)
            return fv

        with _quiet():
            peer_t, fv = timed(peer, repeats)
        agree = []
        for layer in layers:
            d, _, _ = load_maximization(fv.RelMax.PATH, layer)
            agree.append(np.mean(ours.relmax[layer][0] == d[:8].T))
    return {"what": f"atlas {name} 32x32, {n} images, {len(layers)} layers", "relprop_s": ours_t,
            "peer_s": peer_t, "check": f"top-8 samples agree at {100 * min(agree):.1f}%+"}


def bench_dask(name, n, repeats, batch_size):
    from distributed import Client, LocalCluster

    import relprop.concepts as rc
    import relprop.dask as rd

    _, net = cifar_cnn() if name == "cifar_cnn" else torchvision_net(name, 32)
    x, y = _dataset(n)
    layers = _layers(name, net)
    want = rc.atlas(net, x, layers, labels=y, k=8, batch_size=batch_size)
    with tempfile.TemporaryDirectory() as tmp:
        np.save(os.path.join(tmp, "x.npy"), x)
        xs = rd.from_npy(os.path.join(tmp, "x.npy"), chunks=max(batch_size, n // 16))
        with _quiet(), LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                    dashboard_address=None) as c1, Client(c1) as one_worker, \
                LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                             dashboard_address=None) as c2, Client(c2) as two_workers:
            def job(client):
                with client.as_current():
                    return rd.atlas(net, xs, layers, labels=y, k=8, batch_size=batch_size)

            one, two = [], []
            for _ in range(repeats):  # alternating: both meet the machine in the same state
                t = time.perf_counter()
                job(one_worker)
                one.append(time.perf_counter() - t)
                t = time.perf_counter()
                got = job(two_workers)
                two.append(time.perf_counter() - t)
    same = all(np.array_equal(got.relmax[k][0], want.relmax[k][0]) and
               np.array_equal(got.class_relevance[k], want.class_relevance[k]) for k in layers)
    return {"what": f"relprop.dask.atlas {name}, {n} images: 2 workers / 1 worker",
            "relprop_s": statistics.median(two), "peer_s": statistics.median(one),
            "check": f"bitwise the in-process atlas: {same}"}


class _quiet:
    """Silence tqdm's bars and the peers' warnings."""

    def __enter__(self):
        self.stderr = sys.stderr
        sys.stderr = open(os.devnull, "w")
        self.w = warnings.catch_warnings()
        self.w.__enter__()
        warnings.simplefilter("ignore")
        return self

    def __exit__(self, *exc):
        sys.stderr.close()
        sys.stderr = self.stderr
        self.w.__exit__(*exc)
        return False


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="small sizes (checks the script)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--only", default="conditional,atlas,dask")
    args = p.parse_args(argv)
    import torch

    import relprop as rp

    torch.set_num_threads(args.threads)
    rp.set_num_threads(args.threads)
    size, k = (64, 8) if args.quick else (224, 32)
    n = 128 if args.quick else 2000
    reps = 1 if args.quick else args.repeats
    print(f"relprop {rp.__version__}, torch {torch.__version__}, threads {args.threads}; "
          f"load {os.getloadavg()[0]:.1f}")
    rows = []
    only = set(args.only.split(","))
    if "conditional" in only:
        for name in ("vgg16", "resnet50"):
            rows.append(bench_conditional(name, size, k, reps))
            print(_row(rows[-1]), flush=True)
    if "atlas" in only:
        for name in ("cifar_cnn", "resnet18"):
            rows.append(bench_atlas(name, n, reps, 64))
            print(_row(rows[-1]), flush=True)
    if "dask" in only:
        rows.append(bench_dask("cifar_cnn", n, reps, 64))
        print(_row(rows[-1]), flush=True)
    print(f"load {os.getloadavg()[0]:.1f} (numbers from a shared machine are noise)")


def _row(r):
    return (f"{r['what']}: relprop {r['relprop_s']:.2f} s, other {r['peer_s']:.2f} s, "
            f"{r['peer_s'] / r['relprop_s']:.2f}x; {r['check']}")


if __name__ == "__main__":
    main()
