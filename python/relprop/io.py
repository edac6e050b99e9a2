"""Model files: a network as an ``.npz`` of its parameters plus a JSON description, read back
without ever unpickling.

Format version 2 describes a graph: ``{"format": "relprop", "version": 2, "network":
"graph"|"sequential", "input_shape": [...]|null, "input_name": "input", "output": name,
"nodes": [{"name", "kind", "inputs", **layer.config()}, ...]}``, with node ``i``'s arrays stored
as ``"{i}.{array name}"``.  Files of version 1 (a list of ``"layers"``, written by relprop 0.1
before graphs) still load, as :class:`relprop.Sequential`.
"""
from __future__ import annotations

import json
import math
import os
import tokenize
import zipfile
import zlib

import numpy as np
from numpy.lib import format as npy

from . import layers as L
from .graph import Graph, Node, Sequential

FORMAT_VERSION = 2
#: Bounds on what a model file may declare (checked before anything is read or built): nodes,
#: parameters of all arrays together, bytes of the JSON description.
MAX_NODES = 10_000
MAX_PARAM_ELEMENTS = 1 << 31
MAX_DESCRIPTION_BYTES = 1 << 24


def save(net, path):
    """Write ``net`` (a Graph or Sequential) to ``path`` (see the module docstring)."""
    if not isinstance(net, Graph):
        raise TypeError(f"save expects a relprop network, got {type(net).__name__}")
    desc = {"format": "relprop", "version": FORMAT_VERSION,
            "network": "sequential" if isinstance(net, Sequential) else "graph",
            "input_shape": list(net.input_shape) if net.input_shape else None,
            "input_name": net.input_name, "output": net.output, "nodes": []}
    arrays = {}
    for i, node in enumerate(net.nodes):
        desc["nodes"].append({"name": node.name, "kind": node.layer.kind,
                              "inputs": list(node.inputs), **node.layer.config()})
        for name, arr in node.layer.arrays().items():
            arrays[f"{i}.{name}"] = arr
    meta = np.frombuffer(json.dumps(desc).encode(), dtype=np.uint8)
    with open(os.fspath(path), "wb") as fh:
        np.savez(fh, __relprop__=meta, **arrays)


def load(path) -> Graph:
    """Read a network written by :meth:`Graph.save` (a :class:`Graph`, or a :class:`Sequential`
    if one was saved).

    Never unpickles, and checks what the file declares before reading it: at most
    :data:`MAX_NODES` nodes, :data:`MAX_PARAM_ELEMENTS` numeric parameters in all, a
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
    if len(infos) > 8 * MAX_NODES + 1 or len(set(names)) != len(names) or not all(
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


def _from_description(desc, arrays, path) -> Graph:
    if not isinstance(desc, dict) or desc.get("format") != "relprop":
        raise ValueError(f"{path}: not a relprop model description")
    version = desc.get("version")
    if version not in (1, FORMAT_VERSION):
        raise ValueError(f"{path}: unsupported model format version {version!r} (this relprop "
                         f"reads versions 1 and {FORMAT_VERSION})")
    key = "layers" if version == 1 else "nodes"
    specs = desc.get(key)
    if not isinstance(specs, list) or not 0 < len(specs) <= MAX_NODES:
        raise ValueError(f"{path}: '{key}' must be a list of 1 to {MAX_NODES} entries")
    shape = desc.get("input_shape")
    if shape is not None and (not isinstance(shape, list) or not 0 < len(shape) <= 8 or
                              not all(isinstance(s, int) and 0 < s < (1 << 31) for s in shape)):
        raise ValueError(f"{path}: bad input_shape {shape!r}")
    layers, used = [], set()
    for i, spec in enumerate(specs):
        kind = spec.get("kind") if isinstance(spec, dict) else None
        cls = L.LAYER_TYPES.get(kind) if isinstance(kind, str) else None
        if cls is None:
            raise ValueError(f"{path}: entry {i} has an unknown kind {kind!r}")
        mine = {k.split(".", 1)[1]: v for k, v in arrays.items() if k.split(".", 1)[0] == str(i)}
        try:
            layer = cls.from_config(spec, mine)
        except (ValueError, TypeError) as exc:
            raise ValueError(f"{path}: entry {i} ({kind}): {exc}") from None
        used.update(f"{i}.{k}" for k in layer.arrays())
        layers.append(layer)
    extra = set(arrays) - used
    if extra:
        raise ValueError(f"{path}: unexpected arrays {sorted(extra)[:5]}")
    try:
        if version == 1 or desc.get("network") == "sequential":
            return Sequential(layers, input_shape=shape)
        nodes = []
        for spec, layer in zip(specs, layers):
            name, inputs = spec.get("name"), spec.get("inputs")
            if not isinstance(inputs, list):
                raise ValueError(f"node {name!r} has no list of inputs")
            nodes.append(Node(name, layer, tuple(inputs)))
        kw = {"input_name": desc.get("input_name", "input"), "output": desc.get("output")}
        return Graph(nodes, input_shape=shape, **kw)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"{path}: {exc}") from None
