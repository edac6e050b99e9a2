"""relprop: fast, faithful explanations of ReLU networks on the CPU.

Networks are graphs of layers (:class:`Graph`: Dense, Conv2d, ReLU, pooling, Add, Concat, ...:
the layer types of :mod:`relprop.layers`)
or their chain special case :class:`Sequential`; the methods (gradient family, Taylor, LRP with
Zennit-compatible rules and composites, deconvnet, guided backprop) run on C++/OpenMP kernels
with a NumPy twin in :mod:`relprop.reference`.
"""
from __future__ import annotations

from . import composites, rules, targets
from . import layers as _layers
from ._common import default_batch_size
from ._core import __version__
from .averaged import integrated_gradients, smoothgrad
from .composites import Composite
from .graph import Graph, Node, Sequential, Trace, load
from .layers import get_conv_algorithm, release_memory, set_conv_algorithm
from .lrp import conservation, lrp
from .methods import (
    METHODS,
    TaylorInfo,
    deconvnet,
    explain,
    gradient,
    gradient_x_input,
    guided_backprop,
    pool_channels,
    sensitivity,
    taylor,
)
from .ops import get_num_threads, set_num_threads


def show_config(file=None, peak=False) -> dict:
    """Print (and return) version, GEMM instruction set, OpenMP support, thread count and the
    CPU's cache sizes (which :func:`default_batch_size` reads).

    Parameters
    ----------
    file : file-like, optional
        Where to print (default: stdout).
    peak : bool
        Also measure the float32 FMA peak (GFLOP/s) of the instruction set in use on the
        current thread count (``fma_peak_gflops``); takes about half a second.
    """
    from . import _core, ops
    from ._common import cache_sizes

    cfg = {"version": __version__, "isa": ops.isa(), "supported_isas": ops.supported_isas(),
           "openmp": bool(_core.openmp), "threads": get_num_threads(),
           "caches": {f"L{level}": size for level, size in cache_sizes().items()}}
    if peak:
        cfg["fma_peak_gflops"] = round(ops.fma_peak_gflops(), 1)
    print("\n".join(f"{k}: {v}" for k, v in cfg.items()), file=file)
    return cfg


_LAZY_SUBMODULES = ("models", "render", "plot", "cli", "stream", "dask", "evaluate",
                    "concepts", "metrics")
#: Names imported on first use, from the submodule that defines them: ``import relprop`` stays
#: light (tests/test_import.py lists what it may not import).
_LAZY_NAMES = {"from_onnx": "importers", "from_sklearn": "importers", "from_torch": "importers",
               "GaussianPrior": "prototypes", "Prototypes": "prototypes",
               "activation_maximization": "prototypes"}


def __getattr__(name):
    """Submodules (``relprop.models``, ``relprop.render``, ...) and the names of
    :data:`_LAZY_NAMES` imported on first use."""
    import importlib

    if name in _LAZY_SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        value = getattr(importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__) | set(_LAZY_SUBMODULES))


# every registered layer type (relprop.layers.__all__): a new one needs no line here
_layer_types = _layers.__all__
globals().update({name: getattr(_layers, name) for name in _layer_types})

__all__ = [
    "GaussianPrior", "Prototypes", "activation_maximization", "evaluate", "integrated_gradients",
    "smoothgrad",
    *_layer_types, "Composite", "Graph", "METHODS", "Node", "Sequential", "TaylorInfo", "Trace",
    "__version__", "composites", "conservation", "deconvnet", "default_batch_size", "explain",
    "from_onnx", "from_sklearn", "from_torch", "get_num_threads",
    "gradient", "gradient_x_input", "guided_backprop", "load", "lrp", "pool_channels",
    "release_memory", "rules", "sensitivity", "set_num_threads", "show_config", "targets", "taylor",
    "get_conv_algorithm", "set_conv_algorithm",
]
