"""The concept atlas of a dataset streamed to a folder (``relprop concepts``): INPUTS read a
chunk at a time, the running partial atlas saved after every chunk, resumable after a kill at
any moment with the same bytes.

Output folder (``OUT``):

* ``atlas.npz``: the :class:`~relprop.concepts.Atlas` (``Atlas.load``), written at the end;
* ``atlas_state.npz``: the running partial result (top-k tables and class sums of the samples
  done) with, in its description, the run's arguments, the samples done and the SHA-256 of its
  arrays.  It is replaced atomically (write, fsync, rename) after each chunk, so a run killed
  at any moment loses at most the chunk in flight; ``resume=True`` checks the arguments and
  the checksum, then continues after the samples done.  Partial results merge exactly, so
  the atlas has the same bytes whatever the interruptions, chunk sizes, threads or workers.
"""
from __future__ import annotations

import hashlib
import os
import time

import numpy as np

from ..inputs import UsageError
from .maximization import ExactSum, Partial

STATE = "atlas_state.npz"
ATLAS = "atlas.npz"
STATE_FORMAT = "relprop-concepts-state"
STATE_VERSION = 1


def _state_arrays(part, names):
    arrays = {"counts": part.counts}
    for i, name in enumerate(names):
        for mode, table in zip(("rel", "act"), part.tables[name]):
            for what, a in zip(("values", "index", "neurons"), table):
                arrays[f"{i}.{mode}.{what}"] = a
        arrays[f"{i}.sum.hi"], arrays[f"{i}.sum.lo"] = part.sums[name].hi, part.sums[name].lo
    return arrays


def _digest(arrays):
    h = hashlib.sha256()
    for key in sorted(arrays):
        a = np.ascontiguousarray(arrays[key])
        h.update(f"{key}:{a.dtype.str}:{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _write_atomic(path, write):
    """``write(tmp)``, fsync, then rename over ``path``."""
    tmp = path + ".tmp"
    write(tmp)
    with open(tmp, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(tmp, path)
    from ..stream import _fsync_dir

    _fsync_dir(os.path.dirname(path) or ".")


def save_state(outdir, run, done, part, names):
    from ..io import write_model

    arrays = _state_arrays(part, names)
    desc = {"format": STATE_FORMAT, "version": STATE_VERSION, "run": run, "done": int(done),
            "k": part.k, "sha256": _digest(arrays)}
    _write_atomic(os.path.join(outdir, STATE), lambda p: write_model(p, desc, arrays))


def load_state(outdir, run, names):
    """``(samples done, Partial or None)`` from ``OUT/atlas_state.npz``; ValueError when it was
    written with other arguments or its arrays do not match their checksum."""
    from ..io import read_model
    from ..stream import _differences

    path = os.path.join(outdir, STATE)
    if not os.path.exists(path):
        return 0, None
    try:
        desc, arrays = read_model(path)
    except ValueError as exc:
        raise UsageError(f"{exc}: the state file is damaged: start over without --resume") \
            from None
    if desc.get("format") != STATE_FORMAT or desc.get("version") != STATE_VERSION:
        raise UsageError(f"{path}: not a relprop concepts state (version {STATE_VERSION})")
    if desc.get("run") != run:
        diff = "; ".join(_differences(desc.get("run") or {}, run)[:6])
        raise UsageError(f"{path}: written by a run with other arguments ({diff}): start over "
                         "without --resume, or resume with the same arguments")
    if _digest(arrays) != desc.get("sha256"):
        raise UsageError(f"{path}: its arrays do not match their checksum: the state file is "
                         "damaged: start over without --resume")
    tables, sums = {}, {}
    for i, name in enumerate(names):
        tables[name] = tuple(tuple(arrays[f"{i}.{mode}.{what}"]
                                   for what in ("values", "index", "neurons"))
                             for mode in ("rel", "act"))
        sums[name] = ExactSum(arrays[f"{i}.sum.hi"], arrays[f"{i}.sum.lo"])
    return int(desc["done"]), Partial(tables, sums, arrays["counts"], int(desc["k"]))


def atlas_to_folder(builder, inputs, outdir, *, labels=None, chunk_size, batch_size, run,
                    resume=False, client=None, log=print):
    """Stream the atlas of ``inputs`` (:class:`relprop.stream.Inputs`) into ``outdir``.

    ``builder`` is a :class:`~relprop.concepts.maximization.AtlasBuilder`; ``run`` describes
    the arguments a resumed run must share; ``client`` (a ``distributed.Client``) runs the
    chunks as tasks, their results merged in order.  Returns ``{"atlas", "n", "done_before",
    "seconds"}``.
    """
    from ..stream import read_checked

    os.makedirs(outdir, exist_ok=True)
    names = tuple(builder.nodes)
    run = {**run, "chunk_size": int(chunk_size)}
    if resume:
        done, acc = load_state(outdir, run, names)
    else:
        done, acc = 0, None
        for f in (STATE, ATLAS):
            if os.path.exists(os.path.join(outdir, f)):
                os.remove(os.path.join(outdir, f))
    n, t0 = inputs.n, time.perf_counter()
    done_before = done
    starts = list(range(done, n, chunk_size))

    def labels_of(start, stop):
        return None if labels is None else labels[start:stop]

    if client is None:
        parts = (builder.run(read_checked(inputs, s, min(n, s + chunk_size)), s,
                             labels_of(s, min(n, s + chunk_size)), batch_size) for s in starts)
    else:
        parts = _on_cluster(client, builder, inputs, starts, chunk_size, labels_of, batch_size)
    for start, part in zip(starts, parts):
        stop = min(n, start + chunk_size)
        acc = part if acc is None else acc.merge(part)
        save_state(outdir, run, stop, acc, names)
        log(f"{stop}/{n} samples")
    if acc is None:
        raise UsageError("INPUTS has no samples")
    atlas = acc.finish(builder)
    _write_atomic(os.path.join(outdir, ATLAS), atlas.save)
    return {"atlas": atlas, "n": n, "done_before": done_before,
            "seconds": time.perf_counter() - t0}


def _on_cluster(client, builder, inputs, starts, chunk_size, labels_of, batch_size):
    """The chunks' partial results, in order, computed as tasks of ``client`` (two per worker
    thread in flight; the network sent once; each task carries its chunk)."""
    from ..dask import _atlas_block, _identity, task
    from ..stream import read_checked

    n = inputs.n
    net = client.submit(_identity, builder.net, pure=False)
    in_flight = 2 * max(1, sum(client.nthreads().values()))
    pending = []

    def submit(s):
        e = min(n, s + chunk_size)
        return client.submit(task(_atlas_block), read_checked(inputs, s, e), labels_of(s, e), s,
                             net=net, spec=builder.spec, batch_size=batch_size, pure=False)

    it = iter(starts)
    for s in it:
        pending.append(submit(s))
        if len(pending) >= in_flight:
            break
    while pending:
        fut = pending.pop(0)
        yield fut.result()
        nxt = next(it, None)
        if nxt is not None:
            pending.append(submit(nxt))
