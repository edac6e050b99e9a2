"""LRP rules, as defined in DESIGN.md section 4 (following Zennit 0.5.1's ``rules.py``).

A rule maps the upper relevance ``r`` of a layer's output to its input:
``rule.relevance(layer, a, z, r)`` with ``a`` the layer input and ``z`` its output, both from
the one cached forward pass.  Rules are frozen dataclasses (hashable), so the rule-modified
weights they need are made once per (layer, rule, dtype) by :meth:`Linear.modified`.

Cost of one layer, counted in GEMMs of the layer's size (the forward pass is already done):

=========== ================= =================================================================
rule        a >= 0 (after ReLU) any sign (e.g. the input layer)
=========== ================= =================================================================
Epsilon     1 (transposed)      1
ZPlus       2                   4
AlphaBeta   4                   8
Gamma       4                   8
ZBox        -                   3 (the z of the box is data independent) + 3 transposed
WSquare     1 (z is data independent, computed once per call) 
Flat        1 (as WSquare)
=========== ================= =================================================================
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import layers as L
from . import ops
from ._validate import as_float_array, as_scalar

RULES: dict = {}


def register_rule(name):
    def deco(cls):
        RULES[name] = cls
        cls.registry_name = name
        return cls
    return deco


def _pos(a):
    return np.maximum(a, 0)


def _neg(a):
    return np.minimum(a, 0)


def _nonneg(a):
    return not (a < 0).any()


def _mod(layer, dtype, key):
    """Rule-modified parameters of ``layer`` by name (cached on the layer)."""
    return layer.modified(key, _MODS[key], dtype)


_MODS = {
    "+": lambda w, b: (_pos(w), None if b is None else _pos(b)),
    "-": lambda w, b: (_neg(w), None if b is None else _neg(b)),
    "square": lambda w, b: (w * w, None if b is None else b * b),
    "ones": lambda w, b: (np.ones_like(w), None),
}


def _gamma_mods(gamma):
    return {
        ("gamma+", gamma): lambda w, b: (w + gamma * _pos(w), None if b is None else b + gamma * _pos(b)),
        ("gamma-", gamma): lambda w, b: (w + gamma * _neg(w), None if b is None else b + gamma * _neg(b)),
    }


class Rule:
    """Base class: a rule for linear layers (Dense, Conv2d)."""

    applies_to = (L.Dense, L.Conv2d)

    def relevance(self, layer, a, z, r):
        raise NotImplementedError


@register_rule("epsilon")
@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon: ``R_j = a_j sum_k w_jk R_k / stab(z_k)``, ``z = Wa + b``.  ``Epsilon(0)`` is LRP-0.

    Where a denominator is exactly 0 (only possible with epsilon = 0) the relevance of that
    output goes nowhere: its inputs get 0, not NaN (Zennit gives NaN).
    """

    epsilon: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "epsilon", as_scalar(self.epsilon, "epsilon", minimum=0.0))

    def relevance(self, layer, a, z, r):
        s = ops.lrp_divide(r, z, self.epsilon)
        return a * layer.apply_t(s, layer.params(a.dtype)[0], a.shape)


@register_rule("zplus")
@dataclass(frozen=True)
class ZPlus(Rule):
    """LRP-z+ (alpha=1, beta=0): ``z+ = W+ a+ + b+ + W- a-``;
    ``R_j = a+_j sum w+ R/stab(z+) + a-_j sum w- R/stab(z+)``."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "stabilizer", as_scalar(self.stabilizer, "stabilizer", minimum=0.0))

    def relevance(self, layer, a, z, r):
        return AlphaBeta(1.0, 0.0, self.stabilizer).relevance(layer, a, z, r)


@register_rule("alpha_beta")
@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta: ``alpha * [z+ shares] - beta * [z- shares]`` with
    ``z+ = W+ a+ + b+ + W- a-`` and ``z- = W- a+ + b- + W+ a-``; needs alpha - beta = 1."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        alpha = as_scalar(self.alpha, "alpha")
        beta = as_scalar(self.beta, "beta")
        if alpha < 0 or beta < 0:
            raise ValueError(f"AlphaBeta needs alpha, beta >= 0, got alpha={alpha}, beta={beta}")
        if alpha - beta != 1:
            raise ValueError(f"AlphaBeta needs alpha - beta == 1, got alpha={alpha}, beta={beta}")
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)
        object.__setattr__(self, "stabilizer", as_scalar(self.stabilizer, "stabilizer", minimum=0.0))

    def relevance(self, layer, a, z, r):
        dt, eps = a.dtype, self.stabilizer
        wp, bp = _mod(layer, dt, "+")
        wn, bn = _mod(layer, dt, "-")
        fwd, bwd = layer.apply, lambda s, w: layer.apply_t(s, w, a.shape)
        if _nonneg(a):  # a- = 0: one GEMM per sign
            rel = a * bwd(ops.lrp_divide(r, fwd(a, wp, bp), eps), wp)
            if self.beta:
                rel = self.alpha * rel - self.beta * a * bwd(ops.lrp_divide(r, fwd(a, wn, bn), eps), wn)
            return rel
        ap, an = _pos(a), _neg(a)
        sp = ops.lrp_divide(r, fwd(ap, wp, bp) + fwd(an, wn, None), eps)
        rel = ap * bwd(sp, wp) + an * bwd(sp, wn)
        if self.beta:
            sn = ops.lrp_divide(r, fwd(ap, wn, bn) + fwd(an, wp, None), eps)
            rel = self.alpha * rel - self.beta * (ap * bwd(sn, wn) + an * bwd(sn, wp))
        return rel


@register_rule("gamma")
@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-gamma: ``W1 = W + gamma W+``, ``W2 = W + gamma W-``; outputs with ``z > 0`` use the
    denominator ``W1 a+ + b1 + W2 a-``, outputs with ``z < 0`` use ``W2 a+ + b2 + W1 a-``."""

    gamma: float = 0.25
    stabilizer: float = 1e-6

    def __post_init__(self):
        object.__setattr__(self, "gamma", as_scalar(self.gamma, "gamma", minimum=0.0))
        object.__setattr__(self, "stabilizer", as_scalar(self.stabilizer, "stabilizer", minimum=0.0))

    def relevance(self, layer, a, z, r):
        dt, eps = a.dtype, self.stabilizer
        mods = _gamma_mods(self.gamma)
        (k1, f1), (k2, f2) = mods.items()
        w1, b1 = layer.modified(k1, f1, dt)
        w2, b2 = layer.modified(k2, f2, dt)
        fwd, bwd = layer.apply, lambda s, w: layer.apply_t(s, w, a.shape)
        rp = np.where(z > 0, r, 0).astype(dt, copy=False)
        rn = np.where(z < 0, r, 0).astype(dt, copy=False)
        if _nonneg(a):
            s1 = ops.lrp_divide(rp, fwd(a, w1, b1), eps)
            s2 = ops.lrp_divide(rn, fwd(a, w2, b2), eps)
            return a * (bwd(s1, w1) + bwd(s2, w2))
        ap, an = _pos(a), _neg(a)
        s1 = ops.lrp_divide(rp, fwd(ap, w1, b1) + fwd(an, w2, None), eps)
        s2 = ops.lrp_divide(rn, fwd(ap, w2, b2) + fwd(an, w1, None), eps)
        return ap * (bwd(s1, w1) + bwd(s2, w2)) + an * (bwd(s1, w2) + bwd(s2, w1))


def _bound(v, a_shape, name):
    """A box bound: scalar, per-channel ``(C,)`` or per-sample-shaped, broadcast to one sample."""
    arr = as_float_array(v, name, dtype=np.float64)
    sample = a_shape[1:]
    if arr.ndim == 0:
        return np.full(sample, float(arr))
    if arr.ndim == 1 and arr.shape[0] == sample[0]:
        return np.broadcast_to(arr.reshape((-1,) + (1,) * (len(sample) - 1)), sample)
    if arr.shape == tuple(sample):
        return arr
    raise ValueError(f"{name} has shape {arr.shape}; expected a scalar, ({sample[0]},) per channel "
                     f"or {tuple(sample)}")


@register_rule("zbox")
@dataclass(frozen=True, eq=False)
class ZBox(Rule):
    """LRP-z^B for inputs bounded by ``low <= x <= high`` (scalars or per-channel arrays):
    ``z = (Wa + b) - (W+ l + b+) - (W- h + b-)``;
    ``R_j = a_j sum w R/stab(z) - l_j sum w+ R/stab(z) - h_j sum w- R/stab(z)``."""

    low: object = 0.0
    high: object = 1.0
    stabilizer: float = 1e-6

    def __post_init__(self):
        lo = as_float_array(self.low, "low", dtype=np.float64)
        hi = as_float_array(self.high, "high", dtype=np.float64)
        try:
            bad = np.any(lo > hi)
        except ValueError:
            raise ValueError(f"low {lo.shape} and high {hi.shape} must have compatible shapes") from None
        if bad:
            raise ValueError("ZBox needs low <= high")
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)
        object.__setattr__(self, "stabilizer", as_scalar(self.stabilizer, "stabilizer", minimum=0.0))

    def relevance(self, layer, a, z, r):
        dt, eps = a.dtype, self.stabilizer
        lo = np.ascontiguousarray(_bound(self.low, a.shape, "low")[None], dtype=dt)
        hi = np.ascontiguousarray(_bound(self.high, a.shape, "high")[None], dtype=dt)
        w, _ = layer.params(dt)
        wp, bp = _mod(layer, dt, "+")
        wn, bn = _mod(layer, dt, "-")
        zb = layer.apply(lo, wp, bp) + layer.apply(hi, wn, bn)  # one sample: independent of a
        s = ops.lrp_divide(r, z - zb, eps)
        return (a * layer.apply_t(s, w, a.shape) - lo * layer.apply_t(s, wp, a.shape)
                - hi * layer.apply_t(s, wn, a.shape))


class _Uniform(Rule):
    """Rules whose ``z = W' 1 + b'`` does not depend on the input (WSquare, Flat)."""

    mod = ""

    def relevance(self, layer, a, z, r):
        w, b = _mod(layer, a.dtype, self.mod)
        ones = np.ones((1,) + a.shape[1:], dtype=a.dtype)
        d = np.ascontiguousarray(np.broadcast_to(layer.apply(ones, w, b), r.shape))
        return layer.apply_t(ops.lrp_divide(r, d, self.stabilizer), w, a.shape)


@register_rule("wsquare")
@dataclass(frozen=True)
class WSquare(_Uniform):
    """LRP-w^2: ``z = (W*W) 1 + b*b``; ``R_j = sum_k w_jk^2 R_k / stab(z_k)``."""

    stabilizer: float = 1e-6
    mod = "square"

    def __post_init__(self):
        object.__setattr__(self, "stabilizer", as_scalar(self.stabilizer, "stabilizer", minimum=0.0))


@register_rule("flat")
@dataclass(frozen=True)
class Flat(_Uniform):
    """LRP-flat: as WSquare with every weight 1 and no bias (relevance spread evenly over the
    receptive field)."""

    stabilizer: float = 1e-6
    mod = "ones"

    def __post_init__(self):
        object.__setattr__(self, "stabilizer", as_scalar(self.stabilizer, "stabilizer", minimum=0.0))


@register_rule("norm")
@dataclass(frozen=True)
class Norm(Rule):
    """For AvgPool2d/GlobalAvgPool2d: Epsilon with the pooling as the linear map,
    ``R_j = a_j sum_k p_jk R_k / stab(z_k)``."""

    stabilizer: float = 1e-6
    applies_to = (L.AvgPool2d, L.GlobalAvgPool2d)

    def __post_init__(self):
        object.__setattr__(self, "stabilizer", as_scalar(self.stabilizer, "stabilizer", minimum=0.0))

    def relevance(self, layer, a, z, r):
        return a * layer.backward(ops.lrp_divide(r, z, self.stabilizer), a, None)


@register_rule("winner_take_all")
@dataclass(frozen=True)
class WinnerTakeAll(Rule):
    """For MaxPool2d: all relevance of a window goes to its winning input (the gradient).

    The LRP walk applies it with the pooling winners of the forward pass (see ``lrp.lrp``).
    """

    applies_to = (L.MaxPool2d,)


@register_rule("pass")
@dataclass(frozen=True)
class Pass(Rule):
    """ReLU and Flatten: relevance passes through unchanged (reshaped)."""

    applies_to = (L.ReLU, L.Flatten)

    def relevance(self, layer, a, z, r):
        return r.reshape(a.shape)
