"""Composites: which LRP rule each layer gets (Zennit's layer maps), and the named presets."""
from __future__ import annotations

from . import layers as L
from .rules import (
    RULES,
    AlphaBeta,
    Epsilon,
    Flat,
    Gamma,
    Norm,
    Pass,
    Rule,
    WinnerTakeAll,
    ZBox,
    ZPlus,
)

COMPOSITES: dict = {}

_KINDS = {"dense": L.Dense, "conv2d": L.Conv2d, "linear": (L.Dense, L.Conv2d),
          "maxpool2d": L.MaxPool2d, "avgpool2d": L.AvgPool2d, "globalavgpool2d": L.GlobalAvgPool2d,
          "adaptiveavgpool2d": L.AdaptiveAvgPool2d, "add": L.Add}


def register_composite(name):
    def deco(fn):
        COMPOSITES[name] = fn
        return fn
    return deco


def _types(t):
    if isinstance(t, str):
        if t not in _KINDS:
            raise ValueError(f"unknown layer type {t!r}; use one of {sorted(_KINDS)}")
        t = _KINDS[t]
    return t if isinstance(t, tuple) else (t,)


def _check_rule(rule, where):
    if not isinstance(rule, Rule):
        raise TypeError(f"{where}: expected an LRP rule, got {type(rule).__name__}")
    return rule


class Composite:
    """Rules per node: a rule per layer type, a rule for the input layers, overrides by name.

    Parameters
    ----------
    layer_map : list of (layer types, Rule) or dict
        Types are layer classes or names ("dense", "conv2d", "linear", "avgpool2d", "add",
        ...); the first matching entry wins.
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
        Stabilizer of the default Norm rule of average pooling and Add nodes.

    Nodes without a rule keep their defaults: Norm for average pooling and additions,
    winner-take-all for max pooling; activations, Flatten, unfolded BatchNorm and Concat pass
    relevance through.
    """

    def __init__(self, layer_map=(), first_map=(), overrides=None, stabilizer=1e-6):
        if isinstance(layer_map, dict):
            layer_map = list(layer_map.items())
        if isinstance(first_map, Rule):
            first_map = [((L.Dense, L.Conv2d), first_map)]
        self.layer_map = [(_types(t), _check_rule(r, "layer_map")) for t, r in layer_map]
        self.first_map = [(_types(t), _check_rule(r, "first_map")) for t, r in first_map]
        self.overrides = {}
        for k, r in (overrides or {}).items():
            if isinstance(k, bool) or not isinstance(k, (int, str)):
                raise TypeError(f"overrides keys are node names (or layer indices), got {k!r}")
            self.overrides[str(k)] = _check_rule(r, f"overrides[{k!r}]")
        self.defaults = [((L.AvgPool2d, L.GlobalAvgPool2d, L.AdaptiveAvgPool2d, L.Add),
                          Norm(stabilizer)),
                         ((L.MaxPool2d,), WinnerTakeAll()),
                         ((L.ReLU, L.ReLU6, L.Flatten, L.BatchNorm, L.Concat), Pass())]

    def __repr__(self):
        return (f"{type(self).__name__}(layer_map={self.layer_map}, first_map={self.first_map}, "
                f"overrides={self.overrides})")

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
                rule = next((r for t, r in self.first_map if isinstance(layer, t)), None)
            if rule is None:
                rule = next((r for t, r in self.layer_map + self.defaults if isinstance(layer, t)),
                            None)
            where = f"{'layer' if type(net).__name__ == 'Sequential' else 'node'} {node.name}"
            if rule is None:
                raise ValueError(f"no LRP rule for {where} ({layer!r})")
            if not isinstance(layer, rule.applies_to):
                raise ValueError(f"rule {rule!r} cannot be applied to {where} ({layer!r})")
            out.append(rule)
        return out


    def _first_layers(self, net) -> set:
        """Names of the input layers whose type ``first_map`` names."""
        types = tuple(t for ts, _ in self.first_map for t in ts)
        return {n for n in input_layers(net) if isinstance(net.node(n).layer, types)}


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


def as_composite(spec, **kwargs) -> Composite:
    """A Composite from a Composite, a single Rule (every Dense and Conv2d), or a name of
    :data:`COMPOSITES` / :data:`relprop.rules.RULES` (``kwargs`` go to its constructor)."""
    if isinstance(spec, Composite):
        return spec
    if isinstance(spec, Rule):
        return Composite([((L.Dense, L.Conv2d), spec)])
    if isinstance(spec, str):
        if spec in COMPOSITES:
            return COMPOSITES[spec](**kwargs)
        if spec in RULES:
            return as_composite(RULES[spec](**kwargs))
        raise ValueError(f"unknown LRP rule or composite {spec!r}; "
                         f"composites: {sorted(COMPOSITES)}, rules: {sorted(RULES)}")
    raise TypeError(f"expected a Composite, a Rule or a name, got {type(spec).__name__}")


@register_composite("epsilon_plus")
def EpsilonPlus(epsilon=1e-6, stabilizer=1e-6):
    """ZPlus for Conv2d, Epsilon for Dense."""
    return Composite([(L.Conv2d, ZPlus(stabilizer)), (L.Dense, Epsilon(epsilon))],
                     stabilizer=stabilizer)


@register_composite("epsilon_plus_flat")
def EpsilonPlusFlat(epsilon=1e-6, stabilizer=1e-6):
    """Flat for the first linear layer, ZPlus for other Conv2d, Epsilon for other Dense."""
    return Composite([(L.Conv2d, ZPlus(stabilizer)), (L.Dense, Epsilon(epsilon))],
                     first_map=Flat(stabilizer), stabilizer=stabilizer)


@register_composite("epsilon_gamma_box")
def EpsilonGammaBox(low, high, epsilon=1e-6, gamma=0.25, stabilizer=1e-6):
    """ZBox(low, high) for the first Conv2d, Gamma for other Conv2d, Epsilon for Dense."""
    return Composite([(L.Conv2d, Gamma(gamma, stabilizer)), (L.Dense, Epsilon(epsilon))],
                     first_map=[(L.Conv2d, ZBox(low, high, stabilizer))], stabilizer=stabilizer)


@register_composite("epsilon_alpha2_beta1")
def EpsilonAlpha2Beta1(epsilon=1e-6, stabilizer=1e-6):
    """AlphaBeta(2, 1) for Conv2d, Epsilon for Dense."""
    return Composite([(L.Conv2d, AlphaBeta(2, 1, stabilizer)), (L.Dense, Epsilon(epsilon))],
                     stabilizer=stabilizer)


@register_composite("epsilon_alpha2_beta1_flat")
def EpsilonAlpha2Beta1Flat(epsilon=1e-6, stabilizer=1e-6):
    """Flat for the first linear layer, AlphaBeta(2, 1) for other Conv2d, Epsilon for Dense."""
    return Composite([(L.Conv2d, AlphaBeta(2, 1, stabilizer)), (L.Dense, Epsilon(epsilon))],
                     first_map=Flat(stabilizer), stabilizer=stabilizer)
