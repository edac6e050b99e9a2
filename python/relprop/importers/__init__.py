"""Import trained models from PyTorch, ONNX and scikit-learn.

* :func:`from_torch` reads any ``torch.nn.Module`` that ``torch.fx`` can trace (torchvision's
  ResNets, DenseNets, MobileNetV2, VGGs, AlexNet, and user modules with ``+``, ``torch.cat``,
  ``torch.flatten``, functional activations and pools);
* :func:`from_onnx` reads ONNX graphs, those of both of torch's exporters included;
* :func:`from_sklearn` reads fitted ``MLPClassifier``/``MLPRegressor`` models.

A model whose layers form a chain comes back as a :class:`relprop.Sequential` (layers named by
index, as always); any other as a :class:`relprop.Graph` whose nodes are named after the
source (module paths, torch.fx names, ONNX node names).  BatchNorms right after a Dense/Conv2d
are folded into it; others stay affine nodes.  Each importer then checks itself: the relprop
forward pass on a fixed probe input must match the source framework (the torch module in eval
mode, onnxruntime when it is installed, scikit-learn's ``predict_proba``/``predict``) within
``rtol`` of the largest output magnitude, else ``ValueError``.  The frameworks are imported
lazily, inside the functions: ``import relprop`` does not import torch or onnx.
"""
from __future__ import annotations

from ._common import CHECK_RTOL
from .onnx import from_onnx
from .sklearn import from_sklearn
from .torch import from_torch

__all__ = ["CHECK_RTOL", "from_onnx", "from_sklearn", "from_torch"]
