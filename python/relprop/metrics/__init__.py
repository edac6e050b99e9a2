"""Evaluation metrics: which explanation is right, with the numbers of Quantus 0.6.

Every metric takes ``(net, x, R, target, ...)``, the network, the inputs ``(n,
*input_shape)``, the explanation ``R`` to evaluate (shaped like ``x``; for images also one value
per pixel, ``(n, 1, h, w)``) and the explained output ``target`` (an int, one int per sample,
a float seed array ``(n, n_out)`` or "pred"), and returns a result whose ``scores`` hold one
number per sample (``better`` says whether higher or lower is better); metrics with curves
also return ``curves`` ``(n, steps + 1)``, the explained score after 0, 1, ..., steps steps.

* faithfulness: :func:`pixel_flipping`, :func:`region_perturbation`, :func:`abpc`,
  :func:`selectivity`, :func:`sensitivity_n`, :func:`irof`, :func:`road`,
  :func:`monotonicity`, :func:`monotonicity_correlation`, :func:`faithfulness_estimate`,
  :func:`faithfulness_correlation`;
* robustness (re-explaining perturbed inputs with ``method=`` and its parameters):
  :func:`max_sensitivity`, :func:`avg_sensitivity`, :func:`local_lipschitz_estimate`;
* randomization: :func:`model_parameter_randomization`, :func:`random_logit`;
* complexity and axioms: :func:`sparseness`, :func:`complexity`, :func:`completeness`,
  :func:`non_sensitivity`;
* localisation, given the object's masks as fifth argument: :func:`pointing_game`,
  :func:`relevance_mass_accuracy`, :func:`relevance_rank_accuracy`,
  :func:`top_k_intersection`, :func:`attribution_localisation`.

Random draws (noise, subsets, uniform fills) follow :mod:`relprop._random`: sample ``i``'s
draws are a function of ``(seed, sample_offset + i)``, those of a method that a metric
re-explains with (SmoothGrad) too, for every perturbed copy of the sample; the draws
themselves can be passed in (``subsets=``, ``noise=``), e.g. those Quantus made.  The exact
definitions, and how they relate to Quantus's, are in each function's docstring and
``docs/DESIGN.md`` (section 2.5).
"""
from ._base import ORDERS, Curves, Result
from ._registry import FAMILIES, METRICS
from .comparison import DEFAULT_METHODS, DEFAULT_METRICS, Comparison, compare
from .complexity import (
    Completeness,
    NonSensitivity,
    completeness,
    complexity,
    non_sensitivity,
    sparseness,
)
from .faithfulness import (
    ABPC,
    IROF,
    ROAD,
    Correlation,
    Monotonicity,
    SensitivityN,
    abpc,
    faithfulness_correlation,
    faithfulness_estimate,
    impute,
    irof,
    monotonicity,
    monotonicity_correlation,
    pixel_flipping,
    region_perturbation,
    road,
    segment,
    selectivity,
    sensitivity_n,
)
from .localisation import (
    attribution_localisation,
    pointing_game,
    relevance_mass_accuracy,
    relevance_rank_accuracy,
    top_k_intersection,
)
from .randomization import MPRT, RandomLogit, model_parameter_randomization, random_logit
from .robustness import Sensitivity, avg_sensitivity, local_lipschitz_estimate, max_sensitivity

__all__ = ["DEFAULT_METHODS", "DEFAULT_METRICS", "FAMILIES", "METRICS", "ORDERS", "Comparison",
           "Curves", "Result", "compare", "impute", "segment", "pixel_flipping",
           "region_perturbation", "abpc", "selectivity", "sensitivity_n", "irof", "road",
           "monotonicity", "monotonicity_correlation", "faithfulness_estimate",
           "faithfulness_correlation", "max_sensitivity", "avg_sensitivity",
           "local_lipschitz_estimate", "model_parameter_randomization", "random_logit",
           "sparseness", "complexity", "completeness", "non_sensitivity", "pointing_game",
           "relevance_mass_accuracy", "relevance_rank_accuracy", "top_k_intersection",
           "attribution_localisation", "ABPC", "Completeness", "Correlation", "IROF", "MPRT",
           "Monotonicity", "NonSensitivity", "ROAD", "RandomLogit", "Sensitivity", "SensitivityN"]
