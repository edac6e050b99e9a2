"""The metrics by name and by family (what :func:`relprop.metrics.compare` and ``relprop
evaluate --metrics`` read)."""
from .complexity import completeness, complexity, non_sensitivity, sparseness
from .faithfulness import (
    abpc,
    faithfulness_correlation,
    faithfulness_estimate,
    irof,
    monotonicity,
    monotonicity_correlation,
    pixel_flipping,
    region_perturbation,
    road,
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
from .randomization import model_parameter_randomization, random_logit
from .robustness import avg_sensitivity, local_lipschitz_estimate, max_sensitivity

#: Every metric by name, with its family: "faithfulness", "robustness", "randomization",
#: "complexity", "localisation" (the localisation metrics take masks as fifth argument, the
#: robustness and randomization ones a method).
FAMILIES = {
    "faithfulness": (pixel_flipping, region_perturbation, abpc, selectivity, sensitivity_n,
                     irof, road, monotonicity, monotonicity_correlation, faithfulness_estimate,
                     faithfulness_correlation),
    "robustness": (max_sensitivity, avg_sensitivity, local_lipschitz_estimate),
    "randomization": (model_parameter_randomization, random_logit),
    "complexity": (sparseness, complexity, completeness, non_sensitivity),
    "localisation": (pointing_game, relevance_mass_accuracy, relevance_rank_accuracy,
                     top_k_intersection, attribution_localisation),
}
METRICS = {fn.__name__: fn for fns in FAMILIES.values() for fn in fns}

