"""Plain NumPy twins of relprop's kernels and methods, written for clarity, not speed.

Nothing here imports ``relprop._core``: the tests compare the compiled kernels with these
functions.  Convolutions are explicit loops over kernel offsets (Winograd's tile by tile from its
definition); LRP rules are written from their formulas on the layer's matrix (a Conv2d or an
average pooling materialized as a dense matrix per sample, Zennit's ``as_matrix``), so they share
no code path with the kernels.
"""
from .lrp import RULE_FUNCTIONS, lrp, lrp_conditional, lrp_layer, lrp_node
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
from .ops import (
    adaptive_avgpool2d_backward,
    adaptive_avgpool2d_forward,
    avgpool2d_backward,
    avgpool2d_forward,
    channel_affine,
    conv2d_backward,
    conv2d_backward_pooled,
    conv2d_forward,
    conv2d_forward_relu_maxpool,
    conv2d_forward_split,
    conv2d_lrp_epsilon,
    conv2d_winograd_backward,
    conv2d_winograd_forward,
    conv2d_winograd_pack,
    dense_backward,
    dense_forward,
    dense_lrp_epsilon,
    lrp_alpha_beta_shares,
    lrp_divide,
    lrp_gamma_shares,
    maxpool2d_backward,
    maxpool2d_forward,
    relu6_backward,
    relu6_forward,
    relu_backward,
    relu_forward,
    winograd_abs,
    winograd_matrices,
)

__all__ = [
    "RULE_FUNCTIONS", "adaptive_avgpool2d_backward", "adaptive_avgpool2d_forward", "as_matrix",
    "avgpool2d_backward", "avgpool2d_forward", "backward", "channel_affine", "conv2d_backward",
    "conv2d_backward_pooled", "conv2d_forward", "conv2d_forward_relu_maxpool",
    "conv2d_forward_split", "conv2d_lrp_epsilon", "conv2d_winograd_backward",
    "conv2d_winograd_forward", "conv2d_winograd_pack", "deconvnet", "dense_backward",
    "dense_forward", "dense_lrp_epsilon", "forward", "gradient", "gradient_x_input",
    "guided_backprop", "lrp", "lrp_conditional",
    "lrp_alpha_beta_shares", "lrp_divide", "lrp_gamma_shares", "lrp_layer", "lrp_node",
    "maxpool2d_backward", "maxpool2d_forward", "relu6_backward", "relu6_forward", "relu_backward",
    "relu_forward", "seed", "sensitivity", "taylor", "winograd_abs", "winograd_matrices",
]
