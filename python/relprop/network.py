"""`Sequential` networks: validation, the cached forward pass, save and load."""
from __future__ import annotations

import json
import math
import os
import tokenize
import zipfile
import zlib
from dataclasses import dataclass

import numpy as np
from numpy.lib import format as npy

from . import layers as L
from ._common import map_batches, shape_only
from ._validate import as_float_array, check_size

FORMAT_VERSION = 1
#: Bounds on what a model file may declare (checked before anything is read or built): layers,
#: parameters of all arrays together, bytes of the JSON description.
MAX_LAYERS = 10_000
MAX_PARAM_ELEMENTS = 1 << 31
MAX_DESCRIPTION_BYTES = 1 << 24


@dataclass
class Trace:
    """A forward pass that keeps what every backward pass needs.

    ``inputs[i]`` is the input of layer ``i`` (so ``inputs[i + 1]`` is its output, the
    pre-activation ``z`` of a linear layer), ``states[i]`` its extra state (pooling winners),
    ``output`` the network output ``f(x)``.
    """

    inputs: list
    states: list
    output: np.ndarray


class Sequential:
    """A feed-forward network: layers applied in order.

    Parameters
    ----------
    layers : sequence of Layer
        Dense, Conv2d, ReLU, MaxPool2d, AvgPool2d, GlobalAvgPool2d, Flatten; BatchNorm1d/2d are
        folded into the Dense/Conv2d right before them.
    input_shape : tuple of int, optional
        Shape of one sample, e.g. ``(3, 32, 32)``.  When given, the layers are checked against
        it now, and inputs are checked against it on every call.

    Raises
    ------
    ValueError
        A BatchNorm that cannot be folded, or layers whose shapes do not chain (the message
        names the layer).
    """

    def __init__(self, layers, input_shape=None):
        folded = []
        for layer in layers:
            if not isinstance(layer, L.Layer):
                raise TypeError(f"Sequential takes relprop layers, got {type(layer).__name__}")
            if isinstance(layer, L.BatchNorm):
                if not folded:
                    raise ValueError(f"{layer!r} at the start of the network cannot be folded")
                folded[-1] = layer.fold_into(folded[-1])
            else:
                folded.append(layer)
        if not folded:
            raise ValueError("Sequential needs at least one layer")
        self.layers = tuple(folded)
        self.input_shape = None
        self.output_shape = None
        if input_shape is not None:
            shape = tuple(int(s) for s in input_shape)
            if not shape or any(s <= 0 for s in shape):
                raise ValueError(f"input_shape must be positive sizes, got {tuple(input_shape)}")
            self.output_shape = self.shapes(shape)[-1]
            self.input_shape = shape

    # --- shapes -----------------------------------------------------------------------------
    def shapes(self, input_shape) -> list:
        """Per-sample shapes: of the input, then after every layer."""
        shapes = [tuple(input_shape)]
        for i, layer in enumerate(self.layers):
            try:
                shapes.append(tuple(int(s) for s in layer.output_shape(shapes[-1])))
            except ValueError as exc:
                raise ValueError(f"layer {i}: {exc}") from None
        return shapes

    @property
    def linear_layers(self):
        return [i for i, layer in enumerate(self.layers) if layer.linear]

    def __len__(self):
        return len(self.layers)

    def __repr__(self):
        body = ",\n".join(f"  ({i}) {layer!r}" for i, layer in enumerate(self.layers))
        shape = f", input_shape={self.input_shape}" if self.input_shape else ""
        return f"Sequential(\n{body}\n{shape})"

    # --- forward ----------------------------------------------------------------------------
    def check_input(self, x, check_finite=True, name="x"):
        """Validate ``x`` (n, *input_shape) and return it as a C-contiguous float array."""
        arr = as_float_array(x, name, check_finite=check_finite)
        if arr.ndim < 2:
            raise ValueError(f"{name} must be a batch (n, *sample_shape), got shape {arr.shape}; "
                             "use x[None] for one sample")
        if arr.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch (shape {arr.shape})")
        if self.input_shape is not None and arr.shape[1:] != self.input_shape:
            raise ValueError(f"{name} has shape {arr.shape} but the network expects "
                             f"(n, {', '.join(map(str, self.input_shape))})")
        shapes = self.shapes(arr.shape[1:])
        for s in shapes:
            check_size((arr.shape[0],) + s, "an activation")
        return arr

    def trace(self, x, check_finite=True) -> Trace:
        """Forward pass keeping every layer's input and state (see :class:`Trace`)."""
        x = self.check_input(x, check_finite)
        inputs, states = [], []
        for layer in self.layers:
            inputs.append(x)
            x, state = layer.forward(x)
            states.append(state)
        inputs.append(x)
        _check_overflow(inputs[0], x)
        return Trace(inputs, states, x)

    def forward(self, x, check_finite=True, batch_size=None):
        """Output scores ``f(x)`` (logits), shape ``(n, *output_shape)``.

        ``batch_size`` runs the batch in chunks of that many samples.  A finite ``x`` whose
        scores overflow to inf/NaN raises ``ValueError`` (whatever ``check_finite``, which
        governs the check of ``x`` only)."""
        x = self.check_input(x, check_finite)

        def run(xc, _):
            for layer in self.layers:
                xc, _ = layer.forward(xc)
            return xc

        return map_batches(run, x, 0, batch_size)  # raises ValueError on an overflow

    __call__ = forward

    def backward(self, trace: Trace, seed, relu_mode="gradient", stop=0):
        """Vector-Jacobian product of ``seed`` (shaped like the output) down to layer ``stop``'s
        input.  ``relu_mode`` is "gradient", "deconvnet" or "guided"."""
        g = seed
        for i in range(len(self.layers) - 1, stop - 1, -1):
            g = self.layers[i].backward(g, trace.inputs[i], trace.states[i], relu_mode)
        return g

    def vjp(self, x, make_seed, relu_mode="gradient"):
        """Forward pass, then the vector-Jacobian product of ``make_seed(output)`` down to the
        input: ``(output, g)``, as ``backward(trace(x), ...)`` but keeping only what the
        backward pass reads (the inputs of ReLUs, pooling winners; the shape of the rest) and
        letting go of each as soon as the backward pass is past it, so that the peak memory is
        about half and the freed buffers serve the next ones.  ``x`` as :meth:`check_input`
        returns it."""
        x0, kept = x, []
        for layer in self.layers:
            y, state = layer.forward(x)
            kept.append((x if layer.backward_reads_input else shape_only(x), state))
            x = y
        _check_overflow(x0, x)
        g = make_seed(x)
        for i in range(len(self.layers) - 1, -1, -1):
            xi, state = kept.pop()
            g = self.layers[i].backward(g, xi, state, relu_mode)
            del xi, state
        return x, g

    # --- files ------------------------------------------------------------------------------
    def save(self, path):
        """Write the network to ``path`` (.npz: parameters plus a JSON description)."""
        desc = {"format": "relprop", "version": FORMAT_VERSION,
                "input_shape": list(self.input_shape) if self.input_shape else None,
                "layers": []}
        arrays = {}
        for i, layer in enumerate(self.layers):
            desc["layers"].append({"kind": layer.kind, **layer.config()})
            for name, arr in layer.arrays().items():
                arrays[f"{i}.{name}"] = arr
        meta = np.frombuffer(json.dumps(desc).encode(), dtype=np.uint8)
        with open(os.fspath(path), "wb") as fh:
            np.savez(fh, __relprop__=meta, **arrays)


def _check_overflow(x, out):
    """Raise ValueError where a finite input ``x`` gave a non-finite output (an overflow)."""
    if not np.isfinite(out).all() and np.isfinite(x).all():
        raise ValueError(f"the forward pass overflowed: a finite input gave inf/NaN outputs in "
                         f"{out.dtype} (inputs or weights too large; float64 has more range)")


def _get(cfg, key, kind, types=(int,)):
    if key not in cfg:
        raise ValueError(f"model file: layer '{kind}' lacks '{key}'")
    val = cfg[key]
    if isinstance(val, list):
        if len(val) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) for v in val):
            raise ValueError(f"model file: layer '{kind}' has a bad '{key}': {val!r}")
        return tuple(val)
    if not isinstance(val, types) or isinstance(val, bool):
        raise ValueError(f"model file: layer '{kind}' has a bad '{key}': {val!r}")
    return val


def load(path) -> Sequential:
    """Read a network written by :meth:`Sequential.save`.

    Never unpickles, and checks what the file declares before reading it: at most
    :data:`MAX_LAYERS` layers, :data:`MAX_PARAM_ELEMENTS` numeric parameters in all, a
    description of at most :data:`MAX_DESCRIPTION_BYTES`; shapes must agree with the
    description.  A corrupted, truncated or inconsistent file raises ``ValueError`` (a missing
    one ``FileNotFoundError``).
    """
    try:
        with open(os.fspath(path), "rb") as fh, zipfile.ZipFile(fh) as zf:
            desc, arrays = _read_npz(zf, path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError,
            NotImplementedError, zlib.error, UnicodeDecodeError, json.JSONDecodeError,
            OverflowError) as exc:  # RuntimeError: an encrypted entry, or a RecursionError (json)
        raise ValueError(f"{path}: cannot read model file ({type(exc).__name__}: {exc})") from None
    return _from_description(desc, arrays, path)


def _read_npz(zf, path):
    """The JSON description and the arrays of an open model file, every size checked first."""
    infos = zf.infolist()
    names = [i.filename for i in infos]
    if len(infos) > 2 * MAX_LAYERS + 1 or len(set(names)) != len(names) or not all(
            n.endswith(".npy") for n in names):
        raise ValueError(f"{path}: not a relprop model file ({len(names)} entries; each must be "
                         "a uniquely named .npy array)")
    entries = {n[:-4]: i for n, i in zip(names, infos)}
    if "__relprop__" not in entries:
        raise ValueError(f"{path}: not a relprop model file (no '__relprop__' entry)")
    meta = _read_entry(zf, entries.pop("__relprop__"), path, MAX_DESCRIPTION_BYTES)
    if meta.dtype != np.uint8 or meta.ndim != 1:
        raise ValueError(f"{path}: malformed model description")
    desc = json.loads(meta.tobytes().decode())
    arrays, budget = {}, MAX_PARAM_ELEMENTS
    for name, info in entries.items():
        arrays[name] = _read_entry(zf, info, path, budget)
        budget -= arrays[name].size
    return desc, arrays


def _read_entry(zf, info, path, max_elements):
    """One .npy entry.  Its header (dtype, shape) is checked against ``max_elements`` and the
    entry's size before any data are read, and memory grows only with the data actually there;
    object arrays are refused (never unpickled)."""
    with zf.open(info) as f:
        version = npy.read_magic(f)
        if version not in ((1, 0), (2, 0)):
            raise ValueError(f"{path}: entry {info.filename!r} has .npy version {version}")
        read_header = npy.read_array_header_1_0 if version == (1, 0) else npy.read_array_header_2_0
        try:
            shape, fortran, dtype = read_header(f)
        except (SyntaxError, tokenize.TokenError) as exc:  # NumPy's header parser lets these out
            raise ValueError(f"{path}: entry {info.filename!r} has a malformed .npy header "
                             f"({type(exc).__name__})") from None
        count = math.prod(shape)
        if dtype.kind not in "biuf" or dtype.itemsize > 8 or min(shape, default=0) < 0:
            raise ValueError(f"{path}: entry {info.filename!r} has dtype {dtype} and shape "
                             f"{shape}; a model file holds numeric arrays")
        nbytes = count * dtype.itemsize
        if count > max_elements or nbytes > info.file_size:
            raise ValueError(f"{path}: entry {info.filename!r} declares shape {shape} ({count} "
                             f"elements): more than the {max_elements} allowed, or more than its "
                             f"{info.file_size} bytes hold")
        data = f.read(nbytes)
    if len(data) != nbytes:
        raise ValueError(f"{path}: entry {info.filename!r} is truncated ({len(data)} of {nbytes} "
                         "bytes)")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C").copy()


def _from_description(desc, arrays, path) -> Sequential:
    if not isinstance(desc, dict) or desc.get("format") != "relprop":
        raise ValueError(f"{path}: not a relprop model description")
    if desc.get("version") != FORMAT_VERSION:
        raise ValueError(f"{path}: unsupported model format version {desc.get('version')!r}")
    specs = desc.get("layers")
    if not isinstance(specs, list) or not 0 < len(specs) <= MAX_LAYERS:
        raise ValueError(f"{path}: 'layers' must be a list of 1 to {MAX_LAYERS} layers")
    built = []
    used = set()
    for i, spec in enumerate(specs):
        kind = spec.get("kind") if isinstance(spec, dict) else None
        cls = L.LAYER_TYPES.get(kind)
        if cls is None:
            raise ValueError(f"{path}: layer {i} has an unknown kind {kind!r}")
        try:
            if cls.linear:
                w = arrays.get(f"{i}.weight")
                if w is None:
                    raise ValueError("missing weight")
                b = arrays.get(f"{i}.bias")
                used.update({f"{i}.weight", f"{i}.bias"})
                if cls is L.Dense:
                    layer = L.Dense(w, b)
                    want = (_get(spec, "out_features", kind), _get(spec, "in_features", kind))
                    if layer.weight.shape != want:
                        raise ValueError(f"weight shape {layer.weight.shape} != declared {want}")
                else:
                    layer = L.Conv2d(w, b, _get(spec, "stride", kind), _get(spec, "padding", kind))
                    k = _get(spec, "kernel_size", kind)
                    want = (_get(spec, "out_channels", kind), _get(spec, "in_channels", kind),
                            *(k if isinstance(k, tuple) else (k, k)))
                    if layer.weight.shape != want:
                        raise ValueError(f"weight shape {layer.weight.shape} != declared {want}")
            elif kind in ("maxpool2d", "avgpool2d"):
                layer = cls(_get(spec, "kernel_size", kind), _get(spec, "stride", kind),
                            _get(spec, "padding", kind))
            else:
                layer = cls()
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: layer {i} ({kind}): {exc}") from None
        built.append(layer)
    extra = set(arrays) - used
    if extra:
        raise ValueError(f"{path}: unexpected arrays {sorted(extra)[:5]}")
    shape = desc.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or not 0 < len(shape) <= 8 or
                              not all(isinstance(s, int) and 0 < s < (1 << 31) for s in shape)):
        raise ValueError(f"{path}: bad input_shape {shape!r}")
    return Sequential(built, input_shape=shape)
