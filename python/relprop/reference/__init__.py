"""Plain NumPy twins of relprop's kernels and methods, written for clarity, not speed.

Nothing here imports ``relprop._core``: the tests compare the compiled kernels with these
functions.  Convolutions are explicit loops over kernel offsets (Winograd's tile by tile from its
definition); LRP rules are written from their formulas on the layer's matrix (a Conv2d or an
average pooling materialized as a dense matrix per sample, Zennit's ``as_matrix``), so they share
no code path with the kernels.
"""
from . import ops
from .layers import TWINS, register_twin
from .lrp import RULE_FUNCTIONS, lrp, lrp_conditional, lrp_layer, lrp_node, uniform_softmax
from .network import (
    as_matrix,
    backward,
    deconvnet,
    forward,
    gradient,
    gradient_x_input,
    guided_backprop,
    seed,
    sensitivity,
    taylor,
)
from .ops import *  # noqa: F401,F403 (every kernel's twin, under the kernel's name)

__all__ = ["RULE_FUNCTIONS", "TWINS", "as_matrix", "backward", "deconvnet", "forward", "gradient",
           "gradient_x_input", "guided_backprop", "lrp", "lrp_conditional", "lrp_layer", "lrp_node",
           "register_twin", "seed", "sensitivity", "taylor", "uniform_softmax", *ops.__all__]
