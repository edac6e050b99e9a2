"""Layers: the nodes of a :class:`relprop.Graph` (and of its chain, :class:`relprop.Sequential`).

Each layer class is the one description of its type (:mod:`relprop.layers.base` lists what it
holds), registered by kind in :data:`LAYER_TYPES`; the families live in their own modules:

* :mod:`~relprop.layers.linear` - Dense, Conv2d (weights; the GEMM and convolution kernels);
* :mod:`~relprop.layers.pooling` - MaxPool2d, AvgPool2d, GlobalAvgPool2d, AdaptiveAvgPool2d
  and their 1-D forms;
* :mod:`~relprop.layers.activations` - ReLU, ReLU6;
* :mod:`~relprop.layers.shape` - Flatten;
* :mod:`~relprop.layers.merges` - Add, Concat, Mul;
* :mod:`~relprop.layers.normalization` - BatchNorm1d/2d, LayerNorm, Scale;
* :mod:`~relprop.layers.attention` - Attention (multi-head scaled dot-product).

Composites and rules read the layer types' slots (:func:`slot_types`), the importers build
their dispatch tables from the registry (:func:`import_table`), the engine reads the fusion
traits, and ``relprop.reference`` keeps a twin per kind.
"""
from __future__ import annotations

from . import (  # noqa: F401 (the registry)
    activations,
    attention,
    linear,
    merges,
    normalization,
    pooling,
    shape,
)
from .activations import Elementwise  # noqa: F401
from .base import (  # noqa: F401
    LAYER_TYPES,
    Layer,
    OnnxOp,
    TorchFunction,
    TorchMethod,
    TorchModule,
    import_table,
    register_layer,
    slot_names,
    slot_types,
)
from .linear import (  # noqa: F401
    CONV_ALGORITHMS,
    Linear,
    get_conv_algorithm,
    release_memory,
    set_conv_algorithm,
)
from .pooling import AvgPool, Pool  # noqa: F401

# The public layer classes are the registered types: a new one needs no line here.
globals().update({cls.__name__: cls for cls in LAYER_TYPES.values()})
__all__ = sorted(cls.__name__ for cls in LAYER_TYPES.values())
