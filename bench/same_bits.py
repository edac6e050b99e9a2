"""Same bits before and after a change: every method's output on the bundled models and on
torchvision's ResNet-18 and MobileNetV2 (random weights, float32), saved by one build and
compared bitwise by another.

    python bench/same_bits.py save before.npz        # on the old build
    python bench/same_bits.py compare before.npz     # on the new one: lists every difference

A refactor that keeps the algorithms must keep every array bitwise; ``compare`` exits with
status 1 and names the (model, method) pairs that differ, with their largest difference.
``--isa`` runs under another instruction set (``avx2``, ``generic``), ``--models`` picks a
subset.
"""
from __future__ import annotations

import argparse
import sys

import numpy as np

import relprop as rp
from relprop import ops

#: method name -> parameters (kept small: two samples per model, few noisy copies / steps)
METHODS = {
    "forward": {},
    "gradient": {}, "sensitivity": {}, "gradient_x_input": {}, "deconvnet": {},
    "guided_backprop": {}, "taylor": {}, "smoothgrad": {"n": 3, "seed": 0},
    "integrated_gradients": {"steps": 4},
    "lrp.epsilon_plus_flat": {}, "lrp.epsilon_plus": {}, "lrp.epsilon_alpha2_beta1": {},
    "lrp.epsilon_alpha2_beta1_flat": {}, "lrp.epsilon_gamma_box": {"low": -3.0, "high": 3.0},
    "lrp.epsilon": {}, "lrp.zplus": {}, "lrp.alpha_beta": {}, "lrp.gamma": {},
    "lrp.wsquare": {}, "lrp.flat": {},
}


def _torchvision(name, shape):
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None).eval()
    for m in model.modules():  # realistic BatchNorm statistics (not mean 0, variance 1)
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return rp.from_torch(model, shape)


def models():
    """name -> (network, input of two samples)"""
    from relprop import models as M

    rng = np.random.default_rng(0)
    x_cnn = M.digits_data()[0][:2]
    return {
        "digits_cnn": lambda: (M.digits_cnn(), x_cnn),
        "digits_resnet": lambda: (M.digits_resnet(), x_cnn),
        "digits_mlp": lambda: (M.digits_mlp(), x_cnn.reshape(2, -1)),
        "resnet18": lambda: (_torchvision("resnet18", (3, 224, 224)),
                             rng.uniform(-2, 2, (2, 3, 224, 224)).astype(np.float32)),
        "mobilenet_v2": lambda: (_torchvision("mobilenet_v2", (3, 96, 96)),
                                 rng.uniform(-2, 2, (2, 3, 96, 96)).astype(np.float32)),
    }


def outputs(names):
    out = {}
    for name in names:
        net, x = models()[name]()
        target = np.argmax(net(x), axis=1)
        for method, params in METHODS.items():
            if method == "forward":
                y = net(x)
            else:
                y = rp.explain(net, x, target, method, **params)
            out[f"{name}/{method}"] = np.asarray(y)
            print(f"{name:14s} {method:32s} {y.dtype} {y.shape}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("action", choices=["save", "compare"])
    p.add_argument("file")
    p.add_argument("--isa", default=None)
    p.add_argument("--models", default=",".join(models()))
    opts = p.parse_args(argv)
    if opts.isa:
        ops.set_isa(opts.isa)
    print(f"# ISA {ops.isa()}")
    got = outputs(opts.models.split(","))
    if opts.action == "save":
        np.savez(opts.file, **got)
        return 0
    with np.load(opts.file) as saved:
        want = {k: saved[k] for k in saved.files}
    bad = 0
    for key, y in got.items():
        if key not in want:
            print(f"MISSING in {opts.file}: {key}")
            continue
        w = want[key]
        if y.shape != w.shape or y.dtype != w.dtype or not np.array_equal(y, w, equal_nan=True):
            bad += 1
            diff = np.max(np.abs(y.astype(np.float64) - w)) if y.shape == w.shape else np.nan
            print(f"DIFFERS {key}: max |diff| {diff:.3g} (max |y| {np.max(np.abs(w)):.3g})")
    print(f"{len(got) - bad} of {len(got)} arrays bitwise equal")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
