"""What a layer type is: the :class:`Layer` protocol every description follows, the registry
of layer types (:data:`LAYER_TYPES`, :func:`register_layer`) and the importer entries a
description lists (:class:`TorchModule`, :class:`TorchFunction`, :class:`TorchMethod`,
:class:`OnnxOp`).

A layer class *is* its type's description, read by every other module:

============================  ==================================================================
``kind``                      its name in model files and in the registry
``config()`` /                its JSON description and parameters (save), and the layer they
``arrays()`` /                describe (load)
``from_config()``
``output_shape()``,           per-sample shapes (validated), FLOPs per sample, one line for
``flops()``, ``describe()``   ``relprop info``
``forward()``, ``backward()`` the kernels of its two steps (``vjp()`` for several inputs;
/ ``vjp()``                   ``linear_backward()``: the linear map the Norm rule sees)
``slots``                     the composite slots it takes, most specific first ("convolution",
                              "dense", "linear", "activation", "avgpool", "maxpool", "sum", ...):
                              composites and rules map slots to rules, as Zennit's layer types
``elementwise``               whether Pass hands relevance straight through it (activations,
                              BatchNorm) or moves it as the gradient does (reshapes, slices,
                              concatenations, upsampling)
``default_rule``              the LRP rule it gets where a composite names none (a name of
                              :data:`relprop.rules.RULES`; None: a composite must give one)
``composites``                the composites made for networks with it (LRP's default there)
``imports``                   the torch module types, torch.fx functions and methods and ONNX
                              operators the importers map to it, each with its converter
``resolve()``                 what it becomes given the layers that feed it (a network asks
                              when it is built)
``epilogue``,                 what it may fuse with (:func:`relprop.engine.find_fusions`)
``takes_epilogue``,
``fuses_pool()``
reference twin                ``relprop.reference.layers.TWINS[kind]`` (the reference never
                              imports this package)
============================  ==================================================================

Adding a layer type is its description (a class here, registered with
:func:`register_layer`), its kernel if it is new (``relprop.ops``), its twin and its tests;
DEVELOPERS.md says how.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

#: Layer classes by ``kind`` (the name in model files), filled by :func:`register_layer`.
LAYER_TYPES: dict = {}


def register_layer(cls):
    """Class decorator: register the layer type ``cls`` under its ``kind`` (loading, slots,
    importers and the reference read the registry).  Raises ValueError for a kind taken by
    another class."""
    other = LAYER_TYPES.get(cls.kind)
    if other is not None and other is not cls:
        raise ValueError(f"layer kind {cls.kind!r} is taken by {other.__name__}")
    LAYER_TYPES[cls.kind] = cls
    return cls


def slot_types(slot) -> tuple:
    """The registered layer classes that take the composite slot ``slot`` (or whose kind it
    is), in registration order; empty for an unknown name."""
    return tuple(cls for cls in LAYER_TYPES.values() if slot in cls.slots or slot == cls.kind)


def slot_names() -> list:
    """Every slot and kind a composite or rule may name."""
    return sorted({s for cls in LAYER_TYPES.values() for s in cls.slots} | set(LAYER_TYPES))


# --- importer entries ---------------------------------------------------------------------------
# A converter returns a Layer (added reading the call's data inputs in argument order), a list
# of Layers (a chain, the first reading the data inputs), None (the call is the identity: its
# value is its first data input), or any value the importer's context made (``ctx.add(...)``
# results, tuples of them, shape values): for ONNX a tuple of tensors holds one per output of
# the node (Split), for torch it is the call's value (``torch.chunk``; indexing it with
# ``operator.getitem`` picks one).  ``ctx`` is the importer's view of the call: ``where``
# (for messages), ``shape`` (the first data input's per-sample shape), ``error(msg)`` (a
# ValueError naming the call), ``pair(v, name)``, ``add(layer, inputs)``, ``producer(tensor)``
# (the node made so far that makes a data input, None for the input) and the framework's own
# (torch: ``array(tensor)``, ``constant(v, name)``, ``parameter(v, name)`` (a module parameter
# the call reads, or one expanded over the batch: ``self.token.expand(n, -1, -1)``),
# ``is_parameter(v)``, ``describe(v)``, ``batch``, ``args`` (a module's bound arguments, with
# ``TorchModule.params``); ONNX: ``attrs``,
# ``opset``, ``const(i, what)``, ``window()``, ``targets(i)``, ``add_bias(...)``).  Names that
# the installed framework lacks are skipped.

@dataclass(frozen=True)
class TorchModule:
    """``torch.nn`` module classes by name (subclasses included); ``convert(module, ctx)``.
    A module called with one tensor needs no ``params``; one called with several arguments
    (``nn.MultiheadAttention(q, k, v, need_weights=False)``) names them in ``params`` as
    :class:`TorchFunction` does, and its converter finds them bound in ``ctx.args``."""

    names: tuple
    convert: Callable
    params: tuple = None


@dataclass(frozen=True)
class TorchFunction:
    """torch.fx ``call_function`` targets by dotted name ("torch.nn.functional.relu",
    "operator.add"); ``convert(args, ctx)`` with the arguments bound by ``params``: names, or
    ``(name, default)`` pairs, in positional order; a name with a leading ``*`` collects the
    remaining positional arguments (a list)."""

    names: tuple
    params: tuple
    convert: Callable


@dataclass(frozen=True)
class TorchMethod:
    """Tensor methods by name (``x.relu()``), bound and converted as :class:`TorchFunction`
    (the tensor is the first parameter)."""

    names: tuple
    params: tuple
    convert: Callable


@dataclass(frozen=True)
class OnnxOp:
    """ONNX operator types (default domain); ``convert(ctx)``."""

    names: tuple
    convert: Callable


def import_table(entry_type) -> dict:
    """``{name: (entry, layer class)}`` of every registered description's entries of
    ``entry_type``; raises ValueError where two descriptions claim one name."""
    table = {}
    for cls in LAYER_TYPES.values():
        for entry in vars(cls).get("imports", ()):  # a subclass lists its own
            if not isinstance(entry, entry_type):
                continue
            for name in entry.names:
                if name in table and table[name][1] is not cls:
                    raise ValueError(f"{entry_type.__name__} {name!r} is claimed by "
                                     f"{table[name][1].__name__} and {cls.__name__}")
                table[name] = (entry, cls)
    return table


# --- the protocol -------------------------------------------------------------------------------
#: The composite slots of layers whose output is non-negative where their inputs are (they move,
#: copy, pool, sum or interpolate elements with non-negative weights): ``Layer.nonnegative``.
NONNEGATIVE_SLOTS = ("reshape", "concat", "upsample", "maxpool", "avgpool", "sum")


class Layer:
    """Base class of all layers (single input unless ``n_inputs`` says otherwise): see the
    module docstring for what a layer class describes."""

    kind = "layer"
    #: Composite slots, most specific first (see :func:`slot_types`).
    slots: tuple = ()
    #: The rule a composite gives where it names none (a ``relprop.rules.RULES`` name).
    default_rule = None
    #: The composites made for networks with this layer type, where a composite must name its
    #: rule (attention: "attnlrp"): the first is LRP's default on such a network, and the hint
    #: where another composite names none.
    composites: tuple = ()
    #: Importer entries (:class:`TorchModule`, :class:`TorchFunction`, :class:`TorchMethod`,
    #: :class:`OnnxOp`).
    imports: tuple = ()
    #: Number of inputs, or None for any number >= 2 (Add, Concat).
    n_inputs = 1
    #: A linear map ``y = W x + b`` with parameters (Dense, Conv2d): what LRP's linear rules
    #: (and a composite's first layer) apply to.
    linear = False
    #: Whether the backward pass reads the values of the inputs (not only their shapes).
    backward_reads_input = False
    #: An element-wise layer (output element i is a function of input element i alone:
    #: activations, BatchNorm): the Pass rule hands relevance straight through it, while
    #: through any other layer it moves relevance as the gradient does (``backward``).
    elementwise = False
    #: An element-wise layer with ``f(0) = 0`` (ReLU, GELU, ...; not a sigmoid, not BatchNorm's
    #: shift): relevance through it is its output times a modified gradient (LRP's gradient
    #: form, :meth:`relprop.rules.Rule.gradient`).
    zero_preserving = False
    #: A layer whose output is cheap to remake from its inputs (element-wise, reshaping, sums,
    #: concatenations): the LRP walk remakes it instead of keeping it.
    remakable = False
    #: A gate: its outputs lie in (0, 1) and scale another tensor (Sigmoid, Hardsigmoid), so a
    #: product it feeds gives the other operand all relevance (``Mul.resolve``).
    gating = False
    #: Fusion traits.  ``epilogue``: the element-wise step this layer is, when the kernel that
    #: makes its input can apply it in its store ("relu"), or None.  ``takes_epilogue``: this
    #: layer's kernels apply its reader's epilogue (``forward(x, relu=True)``) and, backward, the
    #: mask of the epilogue that made its input (``backward_masked``).
    epilogue = None
    takes_epilogue = False

    # --- shapes and the two passes ----------------------------------------------------------
    def output_shape(self, *shapes) -> tuple:
        return tuple(shapes[0])

    def forward(self, *xs):
        raise NotImplementedError

    def backward(self, g, x, state, relu_mode="gradient"):
        raise NotImplementedError

    def vjp(self, g, xs, state, relu_mode="gradient"):
        """The vector-Jacobian product ``g`` -> one array per input."""
        return (self.backward(g, xs[0], state, relu_mode),)

    def linear_backward(self, g, x, state):
        """The transpose of the linear map LRP's Norm rule redistributes by, applied to ``g``:
        the gradient (``backward``) for a linear layer (pooling, a scale), and for a layer that
        is linear once a factor of its input is held constant (LayerNorm's standard deviation)
        the transpose of that map at ``x``."""
        return self.backward(g, x, state)

    def nonnegative(self, inputs) -> bool:
        """Whether every output element is >= 0 (or NaN) when the inputs ``inputs[i]`` says
        are non-negative are (one bool per input): LRP's rules with ``(z+, z-)`` parts take
        them from the forward pass where a layer's input is (``relprop.lrp.LrpStep``), decided
        from the network, not from the data, so that a sample's algorithm does not depend on
        its batch.  Here: layers that move, copy, pool, sum or interpolate with non-negative
        weights (the slots of ``NONNEGATIVE_SLOTS``) keep it."""
        return bool(inputs) and all(inputs) and any(s in NONNEGATIVE_SLOTS for s in self.slots)

    def resolve(self, producers):
        """This layer as it stands in a network, given the layers that make its inputs (one per
        input, None for the network input): itself, unless its type depends on what feeds it
        (a product takes a Sigmoid-made operand for a gate).  Called when a network is built."""
        return self

    def fuses_pool(self, pool) -> bool:
        """Whether this layer, a ReLU and ``pool`` run as one kernel (``forward_relu_pool``)."""
        return False

    # --- description --------------------------------------------------------------------------
    def config(self) -> dict:
        return {}

    def arrays(self) -> dict:
        return {}

    @classmethod
    def from_config(cls, cfg: dict, arrays: dict):
        """The layer described by ``cfg`` (its ``config()``) and ``arrays`` (its ``arrays()``);
        raises ValueError on a bad description."""
        return cls(**{k: v for k, v in cfg.items() if k in cls._config_args})

    _config_args = ()

    def flops(self, in_shapes, out_shape) -> int:
        """FLOPs for one sample (a multiply-add counts 2; adds, comparisons 1 per element)."""
        return 0

    def describe(self) -> str:
        return type(self).__name__

    def __repr__(self):
        args = ", ".join(f"{k}={v}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def _need_rank(self, shape, rank, what):
        if len(shape) != rank:
            raise ValueError(f"{self!r} expects {what} per sample (rank {rank}), got shape "
                             f"{tuple(shape)}")

    # Layers are shipped between processes (pickle) by relprop.dask: their caches and locks
    # stay behind (see Linear).
    def __getstate__(self):
        state = self.__dict__.copy()
        for key in ("_cache", "_plans", "_lock"):
            state.pop(key, None)
        return state


# --- helpers of the descriptions ----------------------------------------------------------------
def pair_text(p):
    return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"


def numel(shape):
    return int(np.prod(shape, dtype=np.int64))


def read_only(a):
    """A read-only view of ``a`` (``a`` itself keeps its flags)."""
    v = a.view()
    v.flags.writeable = False
    return v


def window_out(layer, hw, k, s, p):
    """The output size of a window ``k`` with stride ``s`` and padding ``p`` on ``hw``
    (ValueError naming ``layer`` where it does not fit)."""
    oh = (hw[0] + 2 * p[0] - k[0]) // s[0] + 1
    ow = (hw[1] + 2 * p[1] - k[1]) // s[1] + 1
    if hw[0] + 2 * p[0] < k[0] or hw[1] + 2 * p[1] < k[1] or oh < 1 or ow < 1:
        raise ValueError(f"{layer!r}: window {tuple(k)} does not fit the padded input "
                         f"({hw[0] + 2 * p[0]}, {hw[1] + 2 * p[1]})")
    return (oh, ow)


def single(v, name, ctx):
    """A torch call's 1-D argument (an int or a 1-tuple) as an int (ValueError naming the call
    for anything else)."""
    v = ctx.constant(v, name)
    if isinstance(v, (tuple, list)):
        if len(v) != 1:
            raise ctx.error(f"{name}={v} is not a 1-D value")
        v = v[0]
    return v


def plane_window(attrs):
    """The ONNX window attributes ``attrs`` of a 1-D Conv or pooling (``kernel_shape`` ``[k]``,
    ``strides``, ``dilations``, ``pads`` ``[begin, end]``) rewritten in place as those of the
    2-D window on ``(1, L)`` planes that a 1-D layer runs (what ``ctx.window()`` reads)."""
    for key in ("kernel_shape", "strides", "dilations"):
        if key in attrs:
            attrs[key] = [1] + list(attrs[key])
    if "pads" in attrs:
        pads = list(attrs["pads"])
        attrs["pads"] = [0] + pads[:len(pads) // 2] + [0] + pads[len(pads) // 2:]
    return attrs


# reading a layer's description (model files)
def _cfg_value(cfg, key, default):
    if key not in cfg:
        if default is None:
            raise ValueError(f"lacks '{key}'")
        return default
    return cfg[key]


def cfg_int(cfg, key, default=None):
    val = _cfg_value(cfg, key, default)
    if not isinstance(val, int) or isinstance(val, bool) or not 0 < val < (1 << 31):
        raise ValueError(f"has a bad '{key}': {val!r}")
    return val


def cfg_list(cfg, key):
    """A list of a model file's config (its layer's constructor checks the elements)."""
    val = cfg.get(key)
    if not isinstance(val, list):
        raise ValueError(f"has a bad '{key}': {val!r}")
    return val


def cfg_pair(cfg, key, default=None):
    val = _cfg_value(cfg, key, default)
    if isinstance(val, (list, tuple)):
        if len(val) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
            raise ValueError(f"has a bad '{key}': {val!r}")
        return tuple(val)
    if not isinstance(val, int) or isinstance(val, bool):
        raise ValueError(f"has a bad '{key}': {val!r}")
    return val
