"""Composites: which LRP rule each layer gets (Zennit's layer maps), and the named presets."""
from __future__ import annotations

from dataclasses import fields

from . import layers as L
from ._validate import as_scalar
from .rules import (
    CPLRP,
    RULES,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Gradient,
    Identity,
    Norm,
    Rule,
    UniformSoftmax,
    ZBox,
    ZPlus,
)

COMPOSITES: dict = {}


def register_composite(name):
    def deco(fn):
        COMPOSITES[name] = fn
        return fn
    return deco


def _types(t):
    """A layer_map key as a tuple of slot names, kinds and layer classes (ValueError for a
    name no layer type takes)."""
    out = t if isinstance(t, tuple) else (t,)
    for name in out:
        if isinstance(name, str) and not L.slot_types(name):
            raise ValueError(f"unknown layer type {name!r}; use a layer class, or a slot or "
                             f"kind: {L.slot_names()}")
    return out


def _matches(layer, types):
    return any(layer.kind == t or t in layer.slots if isinstance(t, str) else isinstance(layer, t)
               for t in types)


def _check_rule(rule, where):
    if not isinstance(rule, Rule):
        raise TypeError(f"{where}: expected an LRP rule, got {type(rule).__name__}")
    return rule


class Composite:
    """Rules per node: a rule per layer type, a rule for the input layers, overrides by name.

    Parameters
    ----------
    layer_map : list of (layer types, Rule) or dict
        Types are composite slots ("dense", "convolution", "linear" = both, "activation",
        "avgpool", "maxpool", "sum", ...: each layer type lists the slots it takes, as Zennit's
        layer types), kinds ("conv2d", ...), layer classes, or tuples of these; the first
        matching entry wins.
    first_map : list of (layer types, Rule), or a Rule, optional
        For the input layers: the Dense/Conv2d nodes that read the network input with no other
        Dense/Conv2d on the way (in a chain, the first linear layer: Zennit's
        ``SpecialFirstLayerMapComposite``), those of a matching type; so EpsilonGammaBox gives
        ZBox to a first Conv2d and an MLP none.  A single Rule applies to Dense and Conv2d
        alike.
    overrides : dict {node name: Rule}, optional
        Rules for given nodes, above everything else.  In a :class:`relprop.Sequential` the
        nodes are named by layer index, and ints are accepted.
    stabilizer : float
        Stabilizer of the default rules that take one (Norm for average pooling and Add).

    Nodes without a rule get their layer type's default (``default_rule``): Norm for average
    pooling and additions, winner-take-all for max pooling, Pass for activations, Flatten,
    unfolded BatchNorm and Concat.
    """

    def __init__(self, layer_map=(), first_map=(), overrides=None, stabilizer=1e-6):
        if isinstance(layer_map, dict):
            layer_map = list(layer_map.items())
        if isinstance(first_map, Rule):
            first_map = [("linear", first_map)]
        self.layer_map = [(_types(t), _check_rule(r, "layer_map")) for t, r in layer_map]
        self.first_map = [(_types(t), _check_rule(r, "first_map")) for t, r in first_map]
        self.overrides = {}
        for k, r in (overrides or {}).items():
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise TypeError(f"overrides keys are node names (or layer indices), got {k!r}")
            self.overrides[str(k)] = _check_rule(r, f"overrides[{k!r}]")
        self.stabilizer = as_scalar(stabilizer, "stabilizer", minimum=0.0)
        self._defaults = {}

    def __repr__(self):
        return (f"{type(self).__name__}(layer_map={self.layer_map}, first_map={self.first_map}, "
                f"overrides={self.overrides})")

    def default(self, layer):
        """The rule of ``layer``'s type where the composite names none (None if it has no
        default), made once per rule name; rules with a stabilizer get the composite's."""
        name = layer.default_rule
        if name is None:
            return None
        if name not in self._defaults:
            cls = RULES[name]
            takes = "stabilizer" in {f.name for f in fields(cls)}
            self._defaults[name] = cls(stabilizer=self.stabilizer) if takes else cls()
        return self._defaults[name]

    def rules(self, net) -> list:
        """The rule of every node of ``net``, in ``net.nodes`` order (raises ValueError for a
        rule on a wrong layer)."""
        unknown = set(self.overrides) - {node.name for node in net.nodes}
        if unknown:
            raise ValueError(f"overrides name nodes {sorted(unknown)} that the network does not "
                             f"have (its nodes: {[n.name for n in net.nodes][:12]}...)")
        first = self._first_layers(net)
        out = []
        for node in net.nodes:
            layer = node.layer
            rule = self.overrides.get(node.name)
            if rule is None and node.name in first:
                rule = next((r for t, r in self.first_map if _matches(layer, t)), None)
            if rule is None:
                rule = next((r for t, r in self.layer_map if _matches(layer, t)), None)
            if rule is None:
                rule = self.default(layer)
            where = f"{'layer' if type(net).__name__ == 'Sequential' else 'node'} {node.name}"
            if rule is None:
                hint = (f"; explain a network with {type(layer).__name__} layers with the "
                        f"composite {' or '.join(map(repr, layer.composites))}"
                        if layer.composites else "")
                raise ValueError(f"no LRP rule for {where} ({layer!r}){hint}")
            if not rule.applies(layer):
                raise ValueError(f"rule {rule!r} cannot be applied to {where} ({layer!r})")
            out.append(rule)
        return out

    def _first_layers(self, net) -> set:
        """Names of the input layers whose type ``first_map`` names."""
        return {n for n in input_layers(net)
                if any(_matches(net.node(n).layer, t) for t, _ in self.first_map)}


def input_layers(net) -> set:
    """Names of the Dense/Conv2d nodes that read the network input with no other Dense/Conv2d
    on the way (a composite's "first layer")."""
    reached, found = {net.input_name}, set()
    for node in net.nodes:  # topological order
        if any(t in reached for t in node.inputs):
            if node.layer.linear:
                found.add(node.name)
            else:
                reached.add(node.name)
    return found


def default_composite(net) -> str:
    """The composite LRP uses on ``net`` where none is named: the first that a layer type of the
    network is made for (``Layer.composites``: "attnlrp" for a transformer's attention), else
    "epsilon_plus_flat"."""
    return next((n.layer.composites[0] for n in net.nodes if n.layer.composites),
                "epsilon_plus_flat")


def as_composite(spec, **kwargs) -> Composite:
    """A Composite from a Composite, a single Rule (every Dense and Conv2d), or a name of
    :data:`COMPOSITES` / :data:`relprop.rules.RULES` (``kwargs`` go to its constructor)."""
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, Rule):
        return Composite([("linear", spec)])
    if isinstance(spec, str):
        if spec in COMPOSITES:
            return COMPOSITES[spec](**kwargs)
        if spec in RULES:
            return as_composite(RULES[spec](**kwargs))
        raise ValueError(f"unknown LRP rule or composite {spec!r}; "
                         f"composites: {sorted(COMPOSITES)}, rules: {sorted(RULES)}")
    raise TypeError(f"expected a Composite, a Rule or a name, got {type(spec).__name__}")


#: Where Zennit 0.5.1 hooks no rule (no module of its types runs there), relevance crosses as
#: the gradient: the products of two tensors (squeeze-and-excitation), the products with a
#: parameter (layer scale) and LayerNorm.  The CNN composites' ``zennit_compat=True`` gives them
#: the Gradient rule, to compare with Zennit; by default they keep their conserving rules
#: (Product, Norm).
ZENNIT_UNHOOKED = ("product", "scale", "layernorm")


def _zennit(layer_map, zennit_compat):
    """``layer_map``, with ``zennit_compat`` preceded by the Gradient rule for what Zennit
    hooks no rule on (:data:`ZENNIT_UNHOOKED`)."""
    return [(ZENNIT_UNHOOKED, Gradient())] + layer_map if zennit_compat else layer_map


@register_composite("epsilon_plus")
def EpsilonPlus(epsilon=1e-6, stabilizer=1e-6, zennit_compat=False):
    """ZPlus for Conv2d, Epsilon for Dense."""
    return Composite(_zennit([("convolution", ZPlus(stabilizer)), ("dense", Epsilon(epsilon))],
                             zennit_compat),
                     stabilizer=stabilizer)


@register_composite("epsilon_plus_flat")
def EpsilonPlusFlat(epsilon=1e-6, stabilizer=1e-6, zennit_compat=False):
    """Flat for the first linear layer, ZPlus for other Conv2d, Epsilon for other Dense."""
    return Composite(_zennit([("convolution", ZPlus(stabilizer)), ("dense", Epsilon(epsilon))],
                             zennit_compat),
                     first_map=Flat(stabilizer), stabilizer=stabilizer)


@register_composite("epsilon_gamma_box")
def EpsilonGammaBox(low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6, zennit_compat=False):
    """ZBox(low, high) for the first Conv2d, Gamma for other Conv2d, Epsilon for Dense."""
    return Composite(_zennit([("convolution", Gamma(gamma, stabilizer)),
                              ("dense", Epsilon(epsilon))], zennit_compat),
                     first_map=[("convolution", ZBox(low, high, stabilizer))],
                     stabilizer=stabilizer)


@register_composite("epsilon_alpha2_beta1")
def EpsilonAlpha2Beta1(epsilon=1e-6, stabilizer=1e-6, zennit_compat=False):
    """AlphaBeta(2, 1) for Conv2d, Epsilon for Dense."""
    return Composite(_zennit([("convolution", AlphaBeta(2, 1, stabilizer)),
                              ("dense", Epsilon(epsilon))], zennit_compat),
                     stabilizer=stabilizer)


@register_composite("epsilon_alpha2_beta1_flat")
def EpsilonAlpha2Beta1Flat(epsilon=1e-6, stabilizer=1e-6, zennit_compat=False):
    """Flat for the first linear layer, AlphaBeta(2, 1) for other Conv2d, Epsilon for Dense."""
    return Composite(_zennit([("convolution", AlphaBeta(2, 1, stabilizer)),
                              ("dense", Epsilon(epsilon))], zennit_compat),
                     first_map=Flat(stabilizer), stabilizer=stabilizer)


@register_composite("attnlrp")
def AttnLRP(epsilon=0.0, stabilizer=0.0):
    """LXT 2.1's rules for torchvision's ViT (``lxt.efficient``'s ``vit_torch`` patch): CP-LRP
    inside attention (relevance to the values only), linear layers as gradient x input
    (Epsilon(0)), LayerNorm by the identity rule (Norm with its standard deviation held
    constant), additions by Norm, LXT's identity rule for GELU (:class:`Identity`).  With the
    defaults (no stabilizer) every rule has a gradient form and the relevance is computed as
    LXT's ``x * x.grad`` (:func:`relprop.lrp.lrp`)."""
    return Composite([("attention", CPLRP(stabilizer)), ("linear", Epsilon(epsilon)),
                      ("layernorm", Norm(stabilizer)), ("activation", Identity())],
                     stabilizer=stabilizer)


@register_composite("attnlrp_full")
def AttnLRPFull(epsilon=0.0, stabilizer=0.0):
    """"attnlrp" with AttnLRP's rules inside attention instead of CP-LRP: the uniform rule on
    the two products and the softmax rule (:class:`relprop.rules.UniformSoftmax`), so the queries
    and keys receive relevance too."""
    return Composite([("attention", UniformSoftmax(stabilizer)), ("linear", Epsilon(epsilon)),
                      ("layernorm", Norm(stabilizer)), ("activation", Identity())],
                     stabilizer=stabilizer)
