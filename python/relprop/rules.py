"""LRP rules, as defined in DESIGN.md section 4 (following Zennit 0.5.1's ``rules.py``).

A rule maps the upper relevance ``r`` of a node's output to its input(s):
``rule.relevance(layer, a, z, r, parts, state)`` with ``a`` the layer input (a tuple of inputs
for Add and Concat, and then the result is a tuple too), ``z`` its output and ``state`` its
forward state (max pooling's winners), all from the one forward pass of the LRP walk
(:mod:`relprop.engine`).  Rules are frozen dataclasses; the rule-modified
weights they need are made once per (layer, modification, dtype) by :meth:`Linear.modified` and
cached on the layer.

Rules with ``uses_parts`` (ZPlus, AlphaBeta, Gamma) get ``parts = (z+, z-)`` when the layer input
is non-negative by the network (every layer after a ReLU, :meth:`Layer.nonnegative`; decided
from the graph, not from the data, so the batch never changes a sample's algorithm): the walk's
forward pass then runs the layer as one
GEMM on the stacked weights ``[W+; W-]`` (biases ``[b+; b-]``), written straight into two
outputs ``z+ = W+ a + b+`` and ``z- = W- a + b-``, and takes ``z = z+ + z-``, so no rule needs a
second forward pass (ZPlus, which reads only ``z+``, runs ``[W; W+]`` for ``z`` and ``z+``).
Cost of one layer in GEMMs of the layer's size, forward included (the FLOP floor):

=========== ============================= ==================================================
rule        a >= 0 (after ReLU)            any sign (the input layer)
=========== ============================= ==================================================
Epsilon     2: forward + transposed        2
ZPlus       3: [W; W+] (2) + 1 transposed  1 + 2 (W+ a+, W- a-) + 2 transposed
AlphaBeta   4: [W+; W-] (2) + 2            1 + 2 (four half GEMMs) + 4 (two stacked transposed)
Gamma       4: [W+; W-] (2) + 2            1 + 2 + 4, as AlphaBeta
ZBox        -                              1 + 2 transposed (the box term is one sample's)
WSquare     -                              1 + 1 (z is data independent: one sample's)
Flat        -                              as WSquare
=========== ============================= ==================================================

Memory: :meth:`Rule.reads` says which of ``a`` and ``z`` a rule reads, so the walk keeps only
those (and drops each layer's share as soon as its relevance is computed).

The gradient form: a rule without a stabilizer that is ``R_in = a * M^T (R / z)`` for a linear
map ``M`` (Epsilon(0), Norm(0), CP-LRP(0), the uniform softmax rule with no stabilizer,
winner-take-all, Pass) is, with ``R = z * g`` at every tensor, the map ``g -> M^T g``
(:meth:`Rule.gradient`; Pass through an element-wise layer ``g -> g * y / x``).  Where every rule
of a walk has it, LRP is ``x * g`` of that modified gradient, as LXT computes it
(:func:`relprop.lrp.lrp`): no quotient ``R / z`` is formed, so a unit whose ``z`` is near 0
amplifies no rounding error (DESIGN.md, "LRP as a modified gradient").
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

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


# Stacked parameters: two weight arrays concatenated along axis 0 (the output axis of Dense
# and Conv2d; ConvTranspose2d's (in, out, kh, kw) stacks its inputs, and runs the halves apart)
# and their biases concatenated, each half taken back by its own length.
def _stack(w, b):
    """``[W+; W-]`` and ``[b+; b-]``."""
    return (np.concatenate([_pos(w), _neg(w)]),
            None if b is None else np.concatenate([_pos(b), _neg(b)]))


def signed_params(layer, dtype):
    """``(w2, b2, (w+, b+), (w-, b-))``: the stacked weights and views of their two halves."""
    w2, b2 = layer.modified("+-", _stack, dtype)
    wp, wn = np.split(w2, 2)
    bp, bn = (None, None) if b2 is None else np.split(b2, 2)
    return w2, b2, (wp, bp), (wn, bn)


def _with_plus(w, b):
    """``[W; W+]`` and ``[b; b+]``."""
    return (np.concatenate([w, _pos(w)]),
            None if b is None else np.concatenate([b, _pos(b)]))


def plus_params(layer, dtype):
    """``(w2, b2, w+)``: the stacked ``[W; W+]``, ``[b; b+]`` and a view of ``W+``."""
    w2, b2 = layer.modified("0+", _with_plus, dtype)
    return w2, b2, w2[w2.shape[0] // 2:]


def split_forward(layer, a, both=True, exact=False):
    """The layer on ``a >= 0`` as one GEMM on stacked weights: ``z+ = W+ a + b+`` and
    ``z- = W- a + b-`` from ``[W+; W-]``, returned as ``z = z+ + z-`` and ``(z+, z-)``; with
    ``both=False``, ``z = W a + b`` and ``z+`` from ``[W; W+]``, returned as ``z, (z+, None)``.
    Two GEMM units either way."""
    if both:
        w2, b2, _, _ = signed_params(layer, a.dtype)
        zp, zn = layer.apply_split(a, w2, b2, exact)
        return zp + zn, (zp, zn)
    w2, b2, _ = plus_params(layer, a.dtype)
    z, zp = layer.apply_split(a, w2, b2)
    return z, (zp, None)


def _times(a, c):
    """``a * c`` written into ``c`` (a fresh kernel output): one activation-sized array less."""
    return np.multiply(c, a, out=c)


def _quotient(num, den):
    """``num / den``, 0 where ``den`` is 0 (the gradient forms' ratios of element-wise layers)."""
    return np.divide(num, den, out=np.zeros_like(num), where=den != 0)


def _swapped(w, b):
    """``[W-; W+]`` (no bias): applied transposed to stacked shares ``[u; v]`` it gives
    ``W-^T u + W+^T v``."""
    return np.concatenate([_neg(w), _pos(w)]), None


def _signed_z(layer, a, exact=False):
    """For an input of any sign: ``z+ = W+ a+ + b+ + W- a-`` and ``z- = W- a+ + b- + W+ a-``
    (four GEMMs of half the stacked size)."""
    _, _, (wp, bp), (wn, bn) = signed_params(layer, a.dtype)
    ap, an = _pos(a), _neg(a)
    zp = layer.apply(ap, wp, bp, exact)
    zp += layer.apply(an, wn, None, exact)
    zn = layer.apply(ap, wn, bn, exact)
    zn += layer.apply(an, wp, None, exact)
    return zp, zn


def _stacked_relevance(layer, a, shares, swapped=False, exact=False):
    """``a * (W+^T u + W-^T v)`` for stacked shares ``[u; v]``, one transposed GEMM on
    ``[W+; W-]`` (``a * (W-^T u + W+^T v)`` on ``[W-; W+]`` with ``swapped``): the input
    relevance of AlphaBeta and Gamma for ``a >= 0``."""
    w2 = (layer.modified("-+", _swapped, a.dtype)[0] if swapped
          else signed_params(layer, a.dtype)[0])
    return _times(a, layer.apply_t_stacked(shares, w2, a.shape, exact))


def _signed_t(layer, a, shares, exact=False):
    """``a+ (W+^T u + W-^T v) + a- (W-^T u + W+^T v)``: :func:`_stacked_relevance` for an input
    of any sign."""
    out = _stacked_relevance(layer, _pos(a), shares, exact=exact)
    out += _stacked_relevance(layer, _neg(a), shares, swapped=True, exact=exact)
    return out


class Rule:
    """Base class: a rule for linear layers (Dense, Conv2d)."""

    #: The composite slots (``relprop.layers.slot_types``) of the layers the rule applies to.
    applies_to = ("linear",)
    uses_parts = False
    #: Whether the rule's layer runs the direct method (see AlphaBeta and ZBox), whatever the
    #: convolution algorithm.
    exact = False

    def applies(self, layer) -> bool:
        """Whether the rule applies to ``layer`` (one of its slots is in ``applies_to``)."""
        return any(slot in self.applies_to for slot in layer.slots)

    def reads(self, parts=False):
        """What :meth:`relevance` reads of the forward pass: ``"a"`` (the layer input) and/or
        ``"z"`` (its output); ``parts`` says whether it gets ``(z+, z-)``.  The LRP walk keeps
        only these (others get an array of the right shape and dtype but no data); the node's
        forward state is always kept."""
        return "az"

    def relevance(self, layer, a, z, r, parts=None, state=None):
        raise NotImplementedError

    def has_gradient(self, layer) -> bool:
        """Whether the rule has a gradient form (:meth:`gradient`) on ``layer``: rules with a
        stabilizer have none (their quotient is not ``R / z``), nor has a subclass that
        redefines :meth:`relevance` without its gradient."""
        owner = next(c for c in type(self).__mro__ if "relevance" in c.__dict__)
        return (("gradient" in owner.__dict__ or "_gradient_applies" in owner.__dict__)
                and self._gradient_applies(layer))

    def _gradient_applies(self, layer):
        return False

    def gradient_reads(self, layer):
        """What :meth:`gradient` reads of the forward pass: "a" (the input values) where the
        layer's backward pass reads them, "z" (the output) where the rule needs it."""
        return "a" if layer.backward_reads_input else ""

    def gradient(self, layer, a, z, g, state=None):
        """The rule as a modified gradient (where :meth:`has_gradient`): with ``R = z * g`` at the
        layer's output, one array per input ``h`` (None for an input that receives nothing)
        such that :meth:`relevance` gives ``a * h``; here the layer's vector-Jacobian product,
        the map of Epsilon(0) and winner-take-all."""
        return layer.vjp(g, a if isinstance(a, tuple) else (a,), state)


def _check_stabilizer(rule, name="stabilizer"):
    object.__setattr__(rule, name, as_scalar(getattr(rule, name), name, minimum=0.0))


@register_rule("epsilon")
@dataclass(frozen=True)
class Epsilon(Rule):
    """LRP-epsilon: ``R_j = a_j sum_k w_jk R_k / stab(z_k)``, ``z = Wa + b``.

    ``Epsilon(0)`` is LRP-0.  Where a denominator is exactly 0 (only possible with epsilon = 0)
    the relevance of that output goes nowhere: its inputs get 0, not NaN (Zennit gives NaN).
    """

    epsilon: float = 1e-6

    def __post_init__(self):
        _check_stabilizer(self, "epsilon")

    def _gradient_applies(self, layer):
        return self.epsilon == 0

    def relevance(self, layer, a, z, r, parts=None, state=None):
        return layer.lrp_epsilon(r, z, a, layer.params(a.dtype)[0], self.epsilon)


@register_rule("alpha_beta")
@dataclass(frozen=True)
class AlphaBeta(Rule):
    """LRP-alpha-beta: ``alpha * [z+ shares] - beta * [z- shares]`` with
    ``z+ = W+ a+ + b+ + W- a-`` and ``z- = W- a+ + b- + W+ a-``; needs alpha - beta = 1."""

    alpha: float = 2.0
    beta: float = 1.0
    stabilizer: float = 1e-6
    uses_parts = True

    @property
    def exact(self):
        return bool(self.beta)

    def __post_init__(self):
        alpha = as_scalar(self.alpha, "alpha")
        beta = as_scalar(self.beta, "beta")
        if alpha < 0 or beta < 0:
            raise ValueError(f"AlphaBeta needs alpha, beta >= 0, got alpha={alpha}, beta={beta}")
        if alpha - beta != 1:
            raise ValueError(f"AlphaBeta needs alpha - beta == 1, got alpha={alpha}, beta={beta}")
        object.__setattr__(self, "alpha", alpha)
        object.__setattr__(self, "beta", beta)
        _check_stabilizer(self)

    def reads(self, parts=False):
        return "a" if parts else "az"

    # With beta > 0 the layer runs the direct method (exact=True): z- is a sum of non-positive
    # terms, exactly 0 for a unit whose negative weights meet only zero inputs, and its share
    # -beta r / stab(z-) is then huge but multiplies only exact zeros.  Winograd's transforms
    # mix terms of both signs: such a z- comes out as rounding noise and the huge share leaks
    # into neighbouring inputs (errors of 1e-3 of the map's largest value on vgg16).  z+ has no
    # such unit (where z+ = 0, z <= 0, the ReLU output is 0 and so is the relevance it gets).

    def forward_parts(self, layer, a):
        """``z`` and ``parts`` for ``a >= 0`` (ZPlus needs only ``z+``)."""
        return split_forward(layer, a, both=bool(self.beta), exact=bool(self.beta))

    def relevance(self, layer, a, z, r, parts=None, state=None):
        eps, alpha, beta = self.stabilizer, self.alpha, self.beta
        if parts is not None:  # a >= 0: z+ and z- come from the walk's stacked forward
            if not beta:
                return layer.lrp_epsilon(r, parts[0], a, plus_params(layer, a.dtype)[2], eps)
            shares = ops.lrp_alpha_beta_shares(r, parts[0], parts[1], alpha, beta, eps)
            return _stacked_relevance(layer, a, shares, exact=True)
        ap, an = _pos(a), _neg(a)
        if not beta:  # z+ only: two half-size GEMMs
            _, _, (wp, bp), (wn, _) = signed_params(layer, a.dtype)
            sp = ops.lrp_divide(r, layer.apply(ap, wp, bp) + layer.apply(an, wn, None), eps)
            return ap * layer.apply_t(sp, wp, a.shape) + an * layer.apply_t(sp, wn, a.shape)
        zp, zn = _signed_z(layer, a, exact=True)
        return _signed_t(layer, a, ops.lrp_alpha_beta_shares(r, zp, zn, alpha, beta, eps),
                         exact=True)


@register_rule("zplus")
@dataclass(frozen=True)
class ZPlus(AlphaBeta):
    """LRP-z+ (AlphaBeta with alpha=1, beta=0): ``z+ = W+ a+ + b+ + W- a-``;
    ``R_j = a+_j sum w+ R/stab(z+) + a-_j sum w- R/stab(z+)``."""

    stabilizer: float = 1e-6
    alpha: float = 1.0
    beta: float = 0.0

    def __init__(self, stabilizer=1e-6):
        object.__setattr__(self, "stabilizer", stabilizer)
        object.__setattr__(self, "alpha", 1.0)
        object.__setattr__(self, "beta", 0.0)
        self.__post_init__()

    def __repr__(self):
        return f"ZPlus(stabilizer={self.stabilizer})"


@register_rule("gamma")
@dataclass(frozen=True)
class Gamma(Rule):
    """LRP-gamma: ``W1 = W + gamma W+``, ``W2 = W + gamma W-``; outputs with ``z > 0`` use the
    denominator ``W1 a+ + b1 + W2 a-``, outputs with ``z < 0`` use ``W2 a+ + b2 + W1 a-``.

    Both are combinations of ``[W+; W-]`` applied to ``a+`` and ``a-``, so the rule runs on the
    stacked weights: ``W1 = (1+gamma) W+ + W-`` and ``W2 = W+ + (1+gamma) W-``.
    """

    gamma: float = 0.25
    stabilizer: float = 1e-6
    uses_parts = True

    def __post_init__(self):
        _check_stabilizer(self, "gamma")
        _check_stabilizer(self)

    def reads(self, parts=False):
        return "a" if parts else "az"

    def forward_parts(self, layer, a):
        return split_forward(layer, a)

    def relevance(self, layer, a, z, r, parts=None, state=None):
        eps = self.stabilizer
        if parts is not None:  # a >= 0: one element-wise pass makes the stacked shares
            shares = ops.lrp_gamma_shares(r, parts[0], parts[1], self.gamma, eps)
            return _stacked_relevance(layer, a, shares)
        # z+ and z- of any-sign input: the denominators are (1+gamma) z+ + z- and z+ + (1+gamma) z-
        zp, zn = _signed_z(layer, a)
        return _signed_t(layer, a, ops.lrp_gamma_shares(r, zp, zn, self.gamma, eps, z=z))


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
    exact = True

    def __post_init__(self):
        lo = as_float_array(self.low, "low", dtype=np.float64)
        hi = as_float_array(self.high, "high", dtype=np.float64)
        try:
            bad = np.any(lo > hi)
        except ValueError:
            raise ValueError(f"low {lo.shape} and high {hi.shape} must have compatible "
                             "shapes") from None
        if bad:
            raise ValueError("ZBox needs low <= high")
        object.__setattr__(self, "low", lo)
        object.__setattr__(self, "high", hi)
        _check_stabilizer(self)

    def relevance(self, layer, a, z, r, parts=None, state=None):
        dt = a.dtype
        lo = np.ascontiguousarray(_bound(self.low, a.shape, "low")[None], dtype=dt)
        hi = np.ascontiguousarray(_bound(self.high, a.shape, "high")[None], dtype=dt)
        _, _, (wp, bp), (wn, bn) = signed_params(layer, dt)
        # the direct method (exact=True): z - z_box and the two terms below cancel heavily, and
        # the direct method's rounding is 5x smaller than Winograd's (a first layer, few input
        # channels, runs direct anyway)
        zb = layer.apply(lo, wp, bp, True) + layer.apply(hi, wn, bn, True)  # independent of a
        s = ops.lrp_divide(r, z, self.stabilizer, shift=zb)
        # a W^T s - l W+^T s - h W-^T s, with W = W+ + W-
        return ((a - lo) * layer.apply_t(s, wp, a.shape, True)
                + (a - hi) * layer.apply_t(s, wn, a.shape, True))


class _Uniform(Rule):
    """Rules whose ``z = W' 1 + b'`` does not depend on the input (WSquare, Flat)."""

    @staticmethod
    def modify(w, b):
        raise NotImplementedError

    def reads(self, parts=False):
        return ""

    def relevance(self, layer, a, z, r, parts=None, state=None):
        w, b = layer.modified(type(self).__name__, self.modify, a.dtype)
        ones = np.ones((1,) + a.shape[1:], dtype=a.dtype)
        # z is one sample's: 1 / stab(z) once, then a broadcast product (no batch-sized z)
        inv = ops.lrp_divide(np.ones_like(r[:1]), layer.apply(ones, w, b), self.stabilizer)
        return layer.apply_t(np.multiply(r, inv), w, a.shape)


@register_rule("wsquare")
@dataclass(frozen=True)
class WSquare(_Uniform):
    """LRP-w^2: ``z = (W*W) 1 + b*b``; ``R_j = sum_k w_jk^2 R_k / stab(z_k)``."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_stabilizer(self)

    @staticmethod
    def modify(w, b):
        return w * w, None if b is None else b * b


@register_rule("flat")
@dataclass(frozen=True)
class Flat(_Uniform):
    """LRP-flat: as WSquare with every weight 1 and no bias (relevance spread evenly over the
    receptive field)."""

    stabilizer: float = 1e-6

    def __post_init__(self):
        _check_stabilizer(self)

    @staticmethod
    def modify(w, b):
        return np.ones_like(w), None


@register_rule("norm")
@dataclass(frozen=True)
class Norm(Rule):
    """For average pooling and additions: Epsilon with the layer as the linear map,
    ``R_j = a_j sum_k p_jk R_k / stab(z_k)``; for ``Add`` that is ``R_i = x_i R / stab(sum x)``
    (Zennit's Norm rule, which its ResNet canonizer gives the residual sums).  The map is the
    layer's ``linear_backward`` (transposed): its gradient, or, for a layer linear once a factor
    is held constant, that map (LayerNorm with its standard deviation frozen)."""

    stabilizer: float = 1e-6
    applies_to = ("avgpool", "sum", "layernorm", "scale")

    def __post_init__(self):
        _check_stabilizer(self)

    def reads(self, parts=False):
        return "a"  # z, a pooling or a sum of a, is made again from it (bitwise the same)

    def relevance(self, layer, a, z, r, parts=None, state=None):
        if z is None:
            z = layer.forward(*(a if isinstance(a, tuple) else (a,)))[0]
        s = ops.lrp_divide(r, z, self.stabilizer)
        if isinstance(a, tuple):  # several inputs: their vjp may share s, so no in-place product
            return tuple(np.multiply(x, g) for x, g in zip(a, layer.vjp(s, a, state)))
        return _times(a, layer.linear_backward(s, a, state))

    def _gradient_applies(self, layer):
        return self.stabilizer == 0

    def gradient_reads(self, layer):
        return "a"  # the map may be taken at the input (linear_backward)

    def gradient(self, layer, a, z, g, state=None):
        if isinstance(a, tuple):
            return layer.vjp(g, a, state)
        return (layer.linear_backward(g, a, state),)


@register_rule("cp_lrp")
@dataclass(frozen=True)
class CPLRP(Rule):
    """CP-LRP for attention (Ali et al. 2022, "XAI for Transformers: Better Explanations through
    Conservative Propagation"; LXT's ``cp_multi_head_attention_forward``): the attention weights
    ``A`` are held constant, so each head's output ``A V_h`` is a linear map of the values and
    ``R_v = v * A^T (R / stab(z))`` head by head; the queries and keys receive no relevance
    (None: the walk skips the nodes that only make them)."""

    stabilizer: float = 1e-6
    applies_to = ("attention",)

    def __post_init__(self):
        _check_stabilizer(self)

    def relevance(self, layer, a, z, r, parts=None, state=None):
        s = ops.lrp_divide(r, z, self.stabilizer)
        return None, None, _times(a[2], layer.vjp(s, a, state, wanted="v")[2])

    def _gradient_applies(self, layer):
        return self.stabilizer == 0

    def gradient(self, layer, a, z, g, state=None):
        return None, None, layer.vjp(g, a, state, wanted="v")[2]


@register_rule("uniform_softmax")
@dataclass(frozen=True)
class UniformSoftmax(CPLRP):
    """AttnLRP's rules inside attention (Achtibat et al., ICML 2024): the uniform rule on the
    products ``A V_h`` and ``Q_h K_h^T`` (each operand takes half the relevance of a product,
    split by its contributions ``x_i y_k / z``), the softmax rule on ``A = softmax(S)``
    (``R_S = S * (R_A - A * rowsum(R_A))``).  Only the output's denominator is stabilized (the
    inner ones are gradient x input, as LXT computes them): with ``s = R / stab(z)`` and the
    attention's gradients ``(gq, gk, gv)`` of ``s``, ``R_v = v * gv / 2``, ``R_q = q * gq / 4``
    and ``R_k = k * gk / 4`` (LXT's ``divide_gradient`` of value by 2, query and key by 4).
    The values keep half the relevance; the softmax rule, like a bias, absorbs part of the
    other half."""

    def relevance(self, layer, a, z, r, parts=None, state=None):
        s = ops.lrp_divide(r, z, self.stabilizer)
        shares = zip(a, layer.vjp(s, a, state), (0.25, 0.25, 0.5))
        return tuple(_times(x, np.multiply(g, f, out=g)) for x, g, f in shares)

    def gradient(self, layer, a, z, g, state=None):
        return tuple(np.multiply(h, f, out=h) for h, f in zip(layer.vjp(g, a, state),
                                                            (0.25, 0.25, 0.5)))


@register_rule("winner_take_all")
@dataclass(frozen=True)
class WinnerTakeAll(Rule):
    """For max poolings (2-D, 1-D): all relevance of a window goes to its winning input (the
    gradient, with the winners of the forward pass)."""

    applies_to = ("maxpool",)

    def reads(self, parts=False):
        return ""

    def _gradient_applies(self, layer):
        return True  # the winner's input is the output: R = z * g moves as g does

    def relevance(self, layer, a, z, r, parts=None, state=None):
        return layer.backward(r, a, state)


@register_rule("pass")
@dataclass(frozen=True)
class Pass(Rule):
    """Relevance passes through unchanged: straight through element-wise layers (activations,
    unfolded BatchNorm: ``layer.elementwise``), and with the elements through layers that move,
    copy or drop them (reshapes, slices, concatenations, upsampling), as their gradient moves it
    (Zennit's behaviour for what it does not hook: the gradient).  Interpolations whose weights
    sum to one, nearest copies and permutations conserve it; what a slice or a crop drops is
    lost."""

    applies_to = ("activation", "reshape", "batchnorm", "concat", "upsample")

    def reads(self, parts=False):
        return ""

    def relevance(self, layer, a, z, r, parts=None, state=None):
        if isinstance(a, tuple):
            return layer.vjp(r, a, state)
        if layer.elementwise:
            return r
        return layer.backward(r, a, state)

    def _gradient_applies(self, layer):
        # R = z * g cannot hold relevance where a = 0 and z = f(0) != 0 (a sigmoid, a shift)
        return not layer.elementwise or layer.zero_preserving

    def gradient_reads(self, layer):
        return "az" if layer.elementwise else super().gradient_reads(layer)

    def gradient(self, layer, a, z, g, state=None):
        if not layer.elementwise:  # elements moved, copied or dropped: R = z * g moves as g
            return super().gradient(layer, a, z, g, state)
        # R_in = R_out: a * h = z * g, so h = g * z / a (0 where a = 0: there z = f(0) = 0
        # carries no relevance, the layer being zero_preserving)
        return (_times(g, _quotient(z, a)),)


@register_rule("identity")
@dataclass(frozen=True)
class Identity(Rule):
    """LXT's identity rule for element-wise activations (``identity_rule_implicit``: the
    gradient ``f(x) / (x + epsilon)``): ``R_in = R_out * a / (a + epsilon)``, which is Pass's
    ``R_in = R_out`` but where ``|a|`` is within a few ``epsilon`` of 0; 0 where ``a + epsilon``
    is 0.  The activations' rule of "attnlrp", so that it is LXT's to the last digits."""

    epsilon: float = 1e-10
    applies_to = ("activation",)

    def __post_init__(self):
        _check_stabilizer(self, "epsilon")

    def reads(self, parts=False):
        return "a"

    def relevance(self, layer, a, z, r, parts=None, state=None):
        return _times(r, _quotient(a, a + self.epsilon))

    def _gradient_applies(self, layer):
        return layer.zero_preserving

    def gradient_reads(self, layer):
        return "az"

    def gradient(self, layer, a, z, g, state=None):
        return (_times(g, _quotient(z, a + self.epsilon)),)


@register_rule("product")
@dataclass(frozen=True)
class Product(Rule):
    """For the product of two tensors (Mul): a gate (the operand a Sigmoid or Hardsigmoid made,
    ``Mul.gate``) gets no relevance and the other operand all of it, the gate held constant (as
    LXT's CP-LRP treats gated units; a squeeze-and-excitation branch receives nothing); without
    a gate, half to each operand (AttnLRP's uniform rule).  An operand broadcast over the other
    gets its relevance summed over the broadcast axes.  Conserving."""

    applies_to = ("product",)

    def reads(self, parts=False):
        return ""

    def relevance(self, layer, a, z, r, parts=None, state=None):
        from .layers.merges import reduce_to

        gate = layer.gate if layer.gate in (0, 1) else None
        if gate is not None:
            out = [None, None]  # the gate's branch receives nothing (its rules do not run)
            out[1 - gate] = reduce_to(r, a[1 - gate].shape[1:])
            return tuple(out)
        half = r * np.asarray(0.5, dtype=r.dtype)
        return reduce_to(half, a[0].shape[1:]), reduce_to(half.copy(), a[1].shape[1:])


@register_rule("gradient")
@dataclass(frozen=True)
class Gradient(Rule):
    """Relevance crosses the layer as the gradient does, ``R_x = J^T R`` (its vector-Jacobian
    product at the layer's inputs): what Zennit 0.5.1 does at every operation it hooks no rule
    on, so the composites' ``zennit_compat=True`` gives it to the products of two tensors
    (``R_x = s R``, ``R_s = x R``: squeeze-and-excitation), the products with a parameter
    (``w R``: layer scale) and LayerNorm.  Not conserving."""

    applies_to = ("product", "scale", "layernorm")

    def reads(self, parts=False):
        return "a"

    def relevance(self, layer, a, z, r, parts=None, state=None):
        if isinstance(a, tuple):
            return layer.vjp(r, a, state)
        return layer.backward(r, a, state)
