"""Fuzz ``relprop.load`` (.npz model files) for a fixed time budget.

    pip install atheris                          # optional: coverage-guided (libFuzzer)
    python tests/fuzz/fuzz_load.py -max_total_time=60

Without atheris the same command runs a plain random-mutation loop (see ``_harness.py``).
The property: ``load`` returns a Sequential or raises ValueError, never anything else (no
zipfile/OSError/KeyError/..., no crash, no unbounded allocation: libFuzzer's default
``-rss_limit_mb=2048`` turns one into a finding); a network it returns runs a forward pass or
raises ValueError/MemoryError.

The first byte of an input picks what the rest is:

* 0: a whole .npz file (mutated zip bytes: the zip and .npy parsers);
* 1: the JSON model description, zipped with the arrays of a seed model with correct CRCs (the
  description checks);
* 2: one .npy member (the second byte picks which) zipped with the other members of a seed
  model (the array header and shape checks).

Seeds, written into the corpus directory when it is empty: valid files of an MLP and of a CNN
with every layer kind, in each mode.
"""
from __future__ import annotations

import io
import os
import sys
import tempfile
import zipfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import numpy as np  # noqa: E402

import relprop  # noqa: E402

import _harness  # noqa: E402

_TMP = tempfile.mkdtemp(prefix="relprop-fuzz-load-")
_PATH = os.path.join(_TMP, "model.npz")


def seed_models():
    rng = np.random.default_rng(0)
    mlp = relprop.Sequential([relprop.Dense(rng.normal(size=(4, 6)).astype(np.float32),
                                            np.zeros(4, np.float32)), relprop.ReLU(),
                              relprop.Dense(rng.normal(size=(3, 4)).astype(np.float32))],
                             input_shape=(6,))
    cnn = relprop.Sequential([
        relprop.Conv2d(rng.normal(size=(3, 2, 3, 3)), rng.normal(size=3), stride=1, padding=1),
        relprop.ReLU(), relprop.MaxPool2d(2), relprop.AvgPool2d(2, stride=1, padding=1),
        relprop.GlobalAvgPool2d(), relprop.Flatten(), relprop.Dense(rng.normal(size=(2, 3)))],
        input_shape=(2, 6, 6))
    return [mlp, cnn]


def _npz_bytes(net):
    net.save(_PATH)
    with open(_PATH, "rb") as fh:
        return fh.read()


def _members(raw):
    with zipfile.ZipFile(io.BytesIO(raw)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


SEED_FILES = [_npz_bytes(net) for net in seed_models()]
SEED_MEMBERS = [_members(raw) for raw in SEED_FILES]


def _zip(members):
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        for name, data in members:
            zf.writestr(name, data)
    return buf.getvalue()


def file_from_input(data: bytes) -> bytes:
    """The .npz bytes an input stands for (see the module docstring)."""
    if not data:
        return b""
    mode, rest = data[0] % 3, data[1:]
    if mode == 0:
        return rest
    base = SEED_MEMBERS[data[0] // 3 % len(SEED_MEMBERS)]
    if mode == 1:
        from numpy.lib import format as npy

        buf = io.BytesIO()
        npy.write_array(buf, np.frombuffer(rest, dtype=np.uint8), allow_pickle=False)
        return _zip([(n, buf.getvalue() if n == "__relprop__.npy" else d) for n, d in base])
    if not rest:
        return _zip(base)
    which = rest[0] % len(base)
    return _zip([(n, rest[1:] if i == which else d) for i, (n, d) in enumerate(base)])


def seeds():
    out = []
    for k, (raw, members) in enumerate(zip(SEED_FILES, SEED_MEMBERS)):
        out.append(bytes([3 * k]) + raw)
        desc = dict(members)["__relprop__.npy"]
        from numpy.lib import format as npy

        meta = npy.read_array(io.BytesIO(desc), allow_pickle=False).tobytes()
        out.append(bytes([3 * k + 1]) + meta)
        for i, (_, d) in enumerate(members):
            out.append(bytes([3 * k + 2, i]) + d)
    return out


def test_one_input(data: bytes) -> None:
    with open(_PATH, "wb") as fh:
        fh.write(file_from_input(data))
    try:
        net = relprop.load(_PATH)
    except ValueError:
        return
    assert isinstance(net, relprop.Sequential)
    if net.input_shape is not None and np.prod(net.input_shape) <= 1 << 16:
        x = np.ones((1,) + net.input_shape, dtype=np.float32)
        try:
            net.forward(x)
        except (ValueError, MemoryError):
            pass


if __name__ == "__main__":
    _harness.main("load", test_one_input, seeds)
