"""Model files: the ``.npz`` container of a network's parameters and its JSON description,
read without ever unpickling and with every declared size checked before anything is read.

This module knows the container only; :mod:`relprop.graph` maps networks to descriptions and
back (:meth:`relprop.Graph.save`, :func:`relprop.load`).
"""
from __future__ import annotations

import json
import math
import os
import tokenize
import zlib

import numpy as np
from numpy.lib import format as npy

#: Bounds on what a model file may declare (checked before anything is read or built): nodes,
#: parameters of all arrays together, bytes of the JSON description.
MAX_NODES = 10_000
MAX_PARAM_ELEMENTS = 1 << 31
MAX_DESCRIPTION_BYTES = 1 << 24


def write_model(path, desc: dict, arrays: dict):
    """Write the description ``desc`` (JSON-able) and the ``arrays`` to ``path``: an ``.npz``
    (``numpy.load`` reads it) whose bytes are a function of its contents (every entry dated
    1980-01-01, where ``numpy.savez`` writes the time), so that the same network or atlas
    gives the same file."""
    import zipfile  # here: see read_model

    meta = np.frombuffer(json.dumps(desc, sort_keys=True).encode(), dtype=np.uint8)
    with open(os.fspath(path), "wb") as fh, zipfile.ZipFile(fh, "w", zipfile.ZIP_STORED,
                                                             allowZip64=True) as zf:
        for name, arr in [("__relprop__", meta)] + list(arrays.items()):
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            with zf.open(info, "w", force_zip64=True) as out:
                npy.write_array(out, np.asanyarray(arr), allow_pickle=False)


def read_model(path):
    """``(description, arrays)`` of a model file.

    Never unpickles, and checks what the file declares before reading it: at most
    :data:`MAX_NODES` nodes' worth of entries, :data:`MAX_PARAM_ELEMENTS` numeric parameters in
    all, a description of at most :data:`MAX_DESCRIPTION_BYTES`.  A corrupted or truncated file
    raises ``ValueError`` (a missing one ``FileNotFoundError``).
    """
    import zipfile  # here: it brings shutil, bz2, lzma, pathlib, ... (tests/test_import.py)

    try:
        with open(os.fspath(path), "rb") as fh, zipfile.ZipFile(fh) as zf:
            return _read_npz(zf, path)
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, RuntimeError,
            NotImplementedError, zlib.error, UnicodeDecodeError, json.JSONDecodeError,
            OverflowError) as exc:  # RuntimeError: an encrypted entry, or a RecursionError (json)
        raise ValueError(f"{path}: cannot read model file ({type(exc).__name__}: {exc})") from None


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
