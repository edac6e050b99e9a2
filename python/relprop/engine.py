"""The gradient pass every gradient-based method runs: one forward pass, then the
vector-Jacobian product of the output seed down to the input."""
from __future__ import annotations

from ._common import seed


def gradient_pass(net, x, target, relu_mode="gradient"):
    """``dF/dx`` with ``F = sum(seed * f(x))`` (``relu_mode``: "gradient", "deconvnet" or
    "guided"); ``x`` as ``net.check_input`` returns it."""
    return net.vjp(x, lambda out: seed(target, out, scale=False), relu_mode)[1]


def score_and_grad(net, x, target):
    """``(F(x) per sample, dF/dx)`` with ``F = sum(seed * f(x))``, from one forward-backward
    pass."""
    seeds = []

    def make_seed(out):
        seeds.append(seed(target, out, scale=False))
        return seeds[0]

    out, g = net.vjp(x, make_seed)
    score = (seeds[0] * out).reshape(len(x), -1).sum(axis=1)
    return score, g
