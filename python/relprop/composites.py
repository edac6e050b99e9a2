"""Composites: which LRP rule each layer gets (Zennit's layer maps), and the named presets."""
from __future__ import annotations

from . import layers as L
from .rules import RULES, Epsilon, Flat, Gamma, AlphaBeta, Norm, Pass, Rule, WinnerTakeAll, ZBox, ZPlus

COMPOSITES: dict = {}

_KINDS = {"dense": L.Dense, "conv2d": L.Conv2d, "linear": (L.Dense, L.Conv2d),
          "maxpool2d": L.MaxPool2d, "avgpool2d": L.AvgPool2d, "globalavgpool2d": L.GlobalAvgPool2d}


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
    """Rules per layer: a rule per layer type, a rule for the first linear layer, overrides.

    Parameters
    ----------
    layer_map : list of (layer types, Rule) or dict
        Types are layer classes or names ("dense", "conv2d", "linear", "avgpool2d", ...);
        the first matching entry wins.
    first_map : list of (layer types, Rule), or a Rule, optional
        For the first layer matching one of these types (Zennit's ``SpecialFirstLayerMapComposite``).
        A single Rule applies to the first Dense or Conv2d.
    overrides : dict {layer index: Rule}, optional
        Rules for given layer indices, above everything else.
    stabilizer : float
        Stabilizer of the default Norm rule of average pooling layers.

    Pooling layers without a rule keep their defaults: Norm for average pooling, winner-take-all
    for max pooling.  ReLU and Flatten pass relevance through.
    """

    def __init__(self, layer_map=(), first_map=(), overrides=None, stabilizer=1e-6):
        if isinstance(layer_map, dict):
            layer_map = list(layer_map.items())
        if isinstance(first_map, Rule):
            first_map = [((L.Dense, L.Conv2d), first_map)]
        self.layer_map = [(_types(t), _check_rule(r, "layer_map")) for t, r in layer_map]
        self.first_map = [(_types(t), _check_rule(r, "first_map")) for t, r in first_map]
        self.overrides = {int(k): _check_rule(r, f"overrides[{k}]")
                          for k, r in (overrides or {}).items()}
        self.defaults = [((L.AvgPool2d, L.GlobalAvgPool2d), Norm(stabilizer)),
                         ((L.MaxPool2d,), WinnerTakeAll()), ((L.ReLU, L.Flatten), Pass())]

    def __repr__(self):
        return (f"{type(self).__name__}(layer_map={self.layer_map}, first_map={self.first_map}, "
                f"overrides={self.overrides})")

    def rules(self, net) -> list:
        """The rule of every layer of ``net`` (raises ValueError for a rule on a wrong layer)."""
        out, first_done = [], False
        for i, layer in enumerate(net.layers):
            rule = self.overrides.get(i)
            if rule is None and not first_done:
                rule = next((r for t, r in self.first_map if isinstance(layer, t)), None)
                first_done = rule is not None
            if rule is None:
                rule = next((r for t, r in self.layer_map + self.defaults if isinstance(layer, t)),
                            None)
            if rule is None:
                raise ValueError(f"no LRP rule for layer {i} ({layer!r})")
            if not isinstance(layer, rule.applies_to):
                raise ValueError(f"rule {rule!r} cannot be applied to layer {i} ({layer!r})")
            out.append(rule)
        for i in self.overrides:
            if not 0 <= i < len(net.layers):
                raise ValueError(f"override for layer {i}, but the network has {len(net.layers)} layers")
        return out


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
        raise ValueError(f"unknown LRP rule or composite {spec!r}; composites: {sorted(COMPOSITES)}, "
                         f"rules: {sorted(RULES)}")
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
