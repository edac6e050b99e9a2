"""Accuracy of the Winograd convolutions per layer of a model: max |y - exact| / max |exact| in
float32 for F(4x4, 3x3) and F(2x2, 3x3), forward and backward, beside the direct method's.

    python bench/winograd_accuracy.py --model vgg16
    python bench/winograd_accuracy.py --model cifar_cnn --batch 8

Each layer's input is the model's random input passed through the layers before it (float32,
after ReLU and pooling: realistic activations); the backward pass gets a normal random output
gradient.  "exact" is the float64 convolution of the same float32 values (torch's, or relprop's
direct float64 kernel without torch).  The contract of ``ops.conv2d_winograd_forward`` is
``<= 1e-5`` (``ops.WINOGRAD_RTOL``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from relprop import ops  # noqa: E402

import layers as L  # noqa: E402


def exact_conv(x, w, padding, backward=False, in_hw=None):
    """float64 convolution (forward) or its input gradient (backward) of float32 values."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    try:
        import torch

        if backward:
            shape = (x.shape[0], w.shape[1]) + tuple(in_hw)
            return torch.nn.grad.conv2d_input(shape, torch.from_numpy(w), torch.from_numpy(x),
                                              padding=padding).numpy()
        return torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w),
                                          padding=padding).numpy()
    except ImportError:
        if backward:
            return ops.conv2d_backward(x, w, in_hw, (1, 1), padding)
        return ops.conv2d_forward(x, w, None, (1, 1), padding)


def rel_err(got, want):
    return float(np.abs(got - want).max() / np.abs(want).max())


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="vgg16", choices=["vgg16", "cifar_cnn"])
    p.add_argument("--batch", type=int, default=1)
    opts = p.parse_args(argv)
    rng = np.random.default_rng(3)
    print(f"# {opts.model}, batch {opts.batch}, ISA {ops.isa()}: max|err| / max|exact|")
    print("| layer | c_in->c_out | h x w | fwd direct | fwd F4 | fwd F2 | bwd direct | bwd F4 "
          "| bwd F2 |")
    print("|---|---|---|---:|---:|---:|---:|---:|---:|")
    worst = {}
    for k, (x, w, _) in enumerate(L.layer_inputs(opts.model, opts.batch)):
        _, c_in, c_out, h, wd, pad = L.conv_layers(opts.model)[k]
        exact = exact_conv(x, w, pad)
        g = rng.standard_normal(exact.shape).astype(np.float32)
        gexact = exact_conv(g, w, pad, backward=True, in_hw=(h, wd))
        errs = [rel_err(ops.conv2d_forward(x, w, None, (1, 1), pad), exact)]
        errs += [rel_err(ops.conv2d_winograd_forward(x, w, None, pad, tile=t), exact)
                 for t in (4, 2)]
        errs += [rel_err(ops.conv2d_backward(g, w, (h, wd), (1, 1), pad), gexact)]
        errs += [rel_err(ops.conv2d_winograd_backward(g, w, (h, wd), pad, tile=t), gexact)
                 for t in (4, 2)]
        for name, e in zip(("fwd direct", "fwd F4", "fwd F2", "bwd direct", "bwd F4", "bwd F2"),
                           errs):
            worst[name] = max(worst.get(name, 0.0), e)
        print(f"| conv{k} | {c_in}->{c_out} | {h}x{wd} | "
              + " | ".join(f"{e:.1e}" for e in errs) + " |", flush=True)
    print("| worst | | | " + " | ".join(f"{worst[n]:.1e}" for n in worst) + " |")


if __name__ == "__main__":
    main()
