"""The metrics by name and by family (what :func:`relprop.metrics.compare` and ``relprop
evaluate --metrics`` read), from the families' modules."""
from . import complexity, faithfulness, localisation, randomization, robustness

#: Every metric by name, with its family: "faithfulness", "robustness", "randomization",
#: "complexity", "localisation" (the localisation metrics take masks as fifth argument, the
#: robustness and randomization ones a method).
FAMILIES = {m.FAMILY: m.FUNCTIONS for m in (faithfulness, robustness, randomization, complexity,
                                            localisation)}
METRICS = {fn.__name__: fn for fns in FAMILIES.values() for fn in fns}
