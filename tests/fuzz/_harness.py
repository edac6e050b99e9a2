"""Shared driver of the fuzz harnesses: atheris (libFuzzer) when installed, else a plain loop.

A harness defines ``test_one_input(data: bytes)`` (raise on a finding) and ``seeds()`` (a list
of valid inputs), then calls :func:`main`.  Command line, as libFuzzer's:

    python tests/fuzz/fuzz_load.py -max_total_time=60 [-runs=N] [-seed=S] [CORPUS_DIR ...]

Without a corpus directory the harness uses ``$TMPDIR/relprop-fuzz-corpus/<name>/``, writing
its seeds there first when it is empty.  A finding is saved as ``crash-<sha1>`` in the current
directory (libFuzzer's naming, also in the fallback loop); rerun one input with
``python tests/fuzz/fuzz_load.py crash-<sha1>``.

The fallback loop (no atheris): random mutations of corpus entries (bit flips, byte
changes, insertions, deletions, truncations, duplicated chunks, splices of two entries,
interesting integers), without coverage feedback.
"""
from __future__ import annotations

import hashlib
import os
import random
import struct
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))


def _flag(argv, name, default):
    for a in argv:
        if a.startswith(f"-{name}="):
            return int(a.split("=", 1)[1])
    return default


def _corpus_dirs(argv):
    return [a for a in argv[1:] if not a.startswith("-") and os.path.isdir(a)]


def _files(argv):
    return [a for a in argv[1:] if not a.startswith("-") and os.path.isfile(a)]


def write_seeds(directory, seeds):
    """Write ``seeds`` into ``directory`` (named by content hash) if it holds no inputs yet."""
    os.makedirs(directory, exist_ok=True)
    if os.listdir(directory):
        return
    for s in seeds:
        with open(os.path.join(directory, hashlib.sha1(s).hexdigest()), "wb") as fh:
            fh.write(s)


def _save_crash(data):
    path = f"crash-{hashlib.sha1(data).hexdigest()}"
    with open(path, "wb") as fh:
        fh.write(data)
    return path


_INTERESTING = [0, 1, 2, 7, 8, 0x7F, 0x80, 0xFF, 0x100, 0x7FFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF,
                2**31, 2**32 - 1, 2**63 - 1]


def mutate(data: bytes, other: bytes, rng: random.Random) -> bytes:
    """One to four random edits of ``data`` (``other``: a second corpus entry, for splices)."""
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        op = rng.randrange(8)
        pos = rng.randrange(len(b) + 1)
        if op == 0 and b:  # flip a bit
            i = rng.randrange(len(b))
            b[i] ^= 1 << rng.randrange(8)
        elif op == 1 and b:  # random byte
            b[rng.randrange(len(b))] = rng.randrange(256)
        elif op == 2:  # insert bytes
            b[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 8)))
        elif op == 3 and b:  # delete a range
            del b[pos:pos + rng.randint(1, 64)]
        elif op == 4:  # truncate
            del b[pos:]
        elif op == 5 and b:  # duplicate a chunk
            j = rng.randrange(len(b))
            b[pos:pos] = b[j:j + rng.randint(1, 64)]
        elif op == 6 and other:  # splice with another entry
            j = rng.randrange(len(other))
            b[pos:] = other[j:]
        elif op == 7 and len(b) >= 8:  # an interesting little-endian integer
            v = rng.choice(_INTERESTING)
            width = rng.choice([1, 2, 4, 8])
            i = rng.randrange(len(b) - width + 1)
            b[i:i + width] = struct.pack("<Q", v % 2**64)[:width]
    return bytes(b)


def _fallback(test_one_input, corpus, argv):
    budget = _flag(argv, "max_total_time", 60)
    runs = _flag(argv, "runs", -1)
    rng = random.Random(_flag(argv, "seed", int(time.time())))
    entries = [open(os.path.join(d, f), "rb").read() for d in corpus for f in sorted(os.listdir(d))]
    entries = entries or [b""]
    start, done = time.monotonic(), 0
    print(f"fallback fuzzer (no atheris): {len(entries)} corpus entries, {budget} s", flush=True)
    while time.monotonic() - start < budget and done != runs:
        data = mutate(rng.choice(entries), rng.choice(entries), rng)
        try:
            test_one_input(data)
        except BaseException:
            traceback.print_exc()
            print(f"== finding saved as {_save_crash(data)}", flush=True)
            raise
        done += 1
        if done % 1000 == 0:
            print(f"#{done} in {time.monotonic() - start:.0f} s", flush=True)
    print(f"Done {done} runs in {time.monotonic() - start:.0f} s", flush=True)


def main(name, test_one_input, seeds):
    """Run the harness ``name`` over ``argv``: reproduce files, or fuzz a corpus directory."""
    argv = list(sys.argv)
    files = _files(argv)
    if files:  # reproduce given inputs
        for f in files:
            with open(f, "rb") as fh:
                test_one_input(fh.read())
            print(f"{f}: no finding")
        return
    corpus = _corpus_dirs(argv)
    if not corpus:
        corpus = [os.path.join(tempfile.gettempdir(), "relprop-fuzz-corpus", name)]
        argv.append(corpus[0])
    write_seeds(corpus[0], seeds())
    try:
        import atheris
    except ImportError:
        _fallback(test_one_input, corpus, argv)
        return
    atheris.instrument_all()  # coverage of relprop and of the parsers it relies on
    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()
