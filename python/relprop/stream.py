"""Explaining datasets larger than memory: inputs read chunk by chunk, an output folder written
chunk by chunk with a progress record, and the loop that runs the chunks in this process or on
a Dask cluster (``relprop explain``; see :func:`explain_to_folder`).

Output folder (``OUTDIR``):

* ``relevance.npy`` ``(n, *input_shape)``, created with :func:`numpy.lib.format.open_memmap`
  and filled chunk by chunk (positional writes, never mapped: memory stays bounded by the chunk);
  read it with ``np.load(path, mmap_mode="r")``.
* ``explained.csv`` (name, target, score, relevance sum), appended per chunk: the target is
  the class explained (its score ``f_t(x)``), or ``seed`` for a seed array of ``--target
  FILE.npy`` (its score ``sum(seed * f(x))``).
* ``heatmaps/NAME.png`` per image input (per sample of an array input with ``heatmaps=True``).
* ``progress.json``, the progress record: the run's arguments, the samples done, and each
  completed chunk's place in the files with the CRC-32 of its bytes there.
* ``progress.synced.json``, the record as of the last sync point.

What must be durable, in which order:

* A kill (SIGKILL, the OOM killer, Ctrl-C) leaves everything already written in the page
  cache, so only the order of the writes matters: a chunk's relevance and CSV rows are
  written first, then ``progress.json`` is replaced (write a temporary file, rename) to count
  it.  A run killed at any moment loses at most the chunk in flight and never counts a partly
  written chunk as done, without any fsync.
* An operating system crash or power loss can lose or reorder what was not yet synced.  A
  sync point (every :data:`SYNC_SECONDS` or more, so that syncing takes at most
  :data:`SYNC_SHARE` of the run; and at the end) fsyncs both data files, then records the
  samples now durable (``synced``) in ``progress.synced.json``, written durably (fsync, rename,
  fsync of the folder).  Chunks counted after it may not have reached the disk: ``--resume``
  always verifies those against their checksums (and the last two, or all when cheap) and
  recomputes any that do not match; a ``progress.json`` the crash left unreadable is replaced
  by ``progress.synced.json``.  So a crash loses at most the chunks since the last sync point,
  and never counts damaged bytes as done.

``resume=True`` continues after the last completed chunk, and refuses a record written with
other arguments.

A chunk is explained by :func:`explain_chunk` in this process, or by
:func:`relprop.dask.explain` on a ``dask.distributed`` client (:class:`DaskRunner`: the network
is sent once, each chunk's inputs travel in its graph, results are written in order).  Results
are bitwise the same either way, for any chunk, batch or thread count, so a run may be resumed
with other threads, batch size or workers.
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import zlib
from collections import deque

import numpy as np

from ._common import PRED, NonFiniteResult
from ._validate import float_dtype
from .inputs import CHUNK_BYTES, MAX_CHUNK, NpyFile, UsageError, default_chunk_size, user_input  # noqa: F401 (API)

#: The progress record's file name and format tag.
RECORD = "progress.json"
#: The record as of the last sync point (written durably).
SYNCED = "progress.synced.json"
RECORD_FORMAT = "relprop-explain-progress"
RECORD_VERSION = 2
#: The first line of ``explained.csv`` (the chunks' rows follow it).
CSV_HEADER = b"name,target,score,relevance_sum\n"
#: --resume verifies every written chunk when that is estimated (from the last two) to take at
#: most this share of the run's time so far, else the last two only.
VERIFY_SHARE = 0.1
#: Sync points (fsync of the data, then a durable record): at least this many seconds apart,
#: and further apart when they are slow, so that they take at most SYNC_SHARE of the run.
SYNC_SECONDS = 1.0
SYNC_SHARE = 0.01


# --------------------------------------------------------------------------------------------
# Inputs, read lazily
# --------------------------------------------------------------------------------------------
def _file_identity(path):
    st = os.stat(path)
    return {"path": os.path.abspath(path), "bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


class Inputs:
    """INPUTS of ``relprop explain``, read chunk by chunk.

    Attributes: ``n`` samples, ``sample_shape``, ``images`` (True for image files, which get a
    heatmap each), ``identity`` (what a resumed run must find unchanged).
    """

    images = False

    def __len__(self):
        return self.n

    def read(self, start, stop) -> np.ndarray:
        """Samples ``start:stop`` as an array ``(stop - start, *sample_shape)``."""
        raise NotImplementedError

    def pixels(self, x) -> np.ndarray:
        """Samples ``x`` read from here as they are shown (images un-normalized)."""
        return x

    def names(self, start, stop) -> list:
        """A name per sample (image file stems, or zero-padded indices)."""
        width = len(str(self.n - 1))
        return [f"{i:0{width}d}" for i in range(start, stop)]


class ArrayInputs(Inputs):
    """An array in memory (or memory-mapped): the bundled digits, an ``.npz``, one sample."""

    def __init__(self, x, identity):
        self.x, self.n, self.sample_shape = x, len(x), tuple(x.shape[1:])
        self.identity = identity

    def read(self, start, stop):
        return np.asarray(self.x[start:stop])


class NpyInputs(Inputs):
    """A ``.npy`` file of samples, read with :class:`NpyFile` (bounded memory)."""

    def __init__(self, path):
        self.file = NpyFile(path)
        self.n = self.file.shape[0] if self.file.ndim else 0  # (0-d: refused by the caller)
        self.sample_shape = self.file.shape[1:]
        self.identity = _file_identity(path)

    def read(self, start, stop):
        return self.file.read(start, stop)


class ImageInputs(Inputs):
    """Image files, decoded a chunk at a time (see :func:`relprop.inputs.read_images`) and
    normalized with ``normalization`` (a :class:`relprop.inputs.Normalization`, or None)."""

    images = True

    def __init__(self, paths, sample_shape, identity, strict=False, normalization=None):
        self.paths, self.n, self.sample_shape = list(paths), len(paths), tuple(sample_shape)
        self.identity, self.strict = identity, strict
        self.normalization = normalization
        if normalization is not None:
            self.identity = {**identity, "normalization": normalization.identity()}
        #: the conversions made so far (see :func:`relprop.inputs.read_images`)
        self.conversions = {}

    def read(self, start, stop):
        from .inputs import read_images

        norm = self.normalization
        return read_images(self.paths[start:stop], self.sample_shape, self.strict,
                           conversions=self.conversions,
                           mean=None if norm is None else norm.mean,
                           std=None if norm is None else norm.std)

    def pixels(self, x):
        return x if self.normalization is None else self.normalization.pixels(x)

    def names(self, start, stop):
        return [os.path.splitext(os.path.basename(p))[0] for p in self.paths[start:stop]]


@user_input()
def open_inputs(spec, net, strict=False, mean=None, std=None) -> Inputs:
    """INPUTS as :class:`Inputs`, checked against the network's input shape but not read yet
    (a ``.npy`` file and image folders are read chunk by chunk; an ``.npz`` and ``digits`` are
    loaded whole).  With ``strict``, images that would need converting are refused now (their
    headers are read), before any work.  Images are normalized with ``mean`` and ``std`` (see
    :func:`relprop.inputs.read_images`; part of the inputs' ``identity``); arrays are refused
    with them.

    Raises
    ------
    ValueError
        A missing or unreadable file, no images in a folder, a shape the network does not
        take, (``strict``) an image of other channels or size, or ``mean``/``std`` that are
        bad or given for an array.
    """
    from .inputs import (
        _image_files,
        _is_images,
        _only_images,
        check_images,
        load_inputs,
        normalization,
        read_images,
    )

    spec = os.fspath(spec)
    _only_images(spec, mean, std)
    if _is_images(spec):
        paths = _image_files(spec) if os.path.isdir(spec) else [spec]
        read_images([], net.input_shape)  # checks the input shape (and Pillow) now
        norm = normalization(mean, std, net.input_shape)
        if strict:
            check_images(paths, net.input_shape)
        if os.path.isdir(spec):
            names = "\n".join(os.path.basename(p) for p in paths)
            stats = [os.stat(p) for p in paths]
            identity = {"path": os.path.abspath(spec), "files": len(paths),
                        "names_sha256": hashlib.sha256(names.encode()).hexdigest(),
                        "bytes": sum(s.st_size for s in stats),
                        "mtime_ns": max(s.st_mtime_ns for s in stats)}
        else:
            identity = _file_identity(spec)
        return ImageInputs(paths, net.input_shape, identity, strict, norm)
    if spec.lower().endswith(".npy") and os.path.isfile(spec):
        inputs = NpyInputs(spec)
        shape = inputs.file.shape
        if len(shape) >= 2 and shape[0] > 0 and (net.input_shape is None or
                                                 shape[1:] == net.input_shape):
            with user_input():
                float_dtype(inputs.file.dtype, f"{spec}: INPUTS")
            return inputs  # a batch: read chunk by chunk
    # anything else (and the error messages) as every subcommand reads INPUTS; not used for a
    # .npy batch because it makes a name per sample
    x, _ = load_inputs(spec, net)
    if spec.lower().endswith(".npy"):
        return ArrayInputs(np.asarray(x), _file_identity(spec))  # one sample
    identity = {"name": "digits"} if spec == "digits" else _file_identity(spec)
    return ArrayInputs(x, identity)


class Seeds:
    """The target of ``relprop explain --target FILE.npy``: one output seed per sample (a float
    array shaped like the network's output, used as the output relevance or gradient seed; for
    a dense output built with :func:`relprop.targets.region`), read chunk by chunk.

    Raises
    ------
    ValueError
        An unreadable file.
    UsageError
        (:meth:`check`) Not a float array of one seed per sample of INPUTS; (:meth:`read`)
        seeds with NaN or infinite values.
    """

    def __init__(self, path):
        self.path = os.fspath(path)
        self.file = NpyFile(self.path)
        self.identity = _file_identity(self.path)

    def check(self, net, inputs):
        """Refuse seeds that are not ``(n, *output_shape)`` floats for these INPUTS."""
        out = net.tensor_shapes(inputs.sample_shape)[net.output]
        want = (inputs.n,) + tuple(out)
        if self.file.dtype.kind != "f" or self.file.shape != want:
            raise UsageError(f"--target {self.path}: needs a float array of one output seed per "
                             f"sample of INPUTS, shape {want}; got {self.file.dtype} "
                             f"{self.file.shape}")

    def read(self, start, stop):
        """The seeds of samples ``start:stop``, checked as :func:`read_checked` checks INPUTS."""
        where = f"--target {self.path}: samples {start}..{stop - 1}"
        with user_input(f"{where}: "):
            seeds = self.file.read(start, stop)
        bad = ~np.isfinite(seeds.reshape(len(seeds), -1)).all(axis=1)
        if bad.any():
            raise UsageError(f"--target {self.path}: the seed of sample "
                             f"{start + int(np.argmax(bad))} contains NaN or infinite values")
        return seeds


def chunk_target(target, start, stop):
    """The target of samples ``start:stop``: a class or None (each sample's predicted class)
    as given, or those samples' seeds."""
    return target.read(start, stop) if isinstance(target, Seeds) else target


def seed_scores(seeds, out):
    """``sum(seed * f(x))`` per sample (float64, (n,)): the score explained for output seeds."""
    return (np.asarray(seeds, np.float64) * out).reshape(len(out), -1).sum(axis=1)


def model_identity(spec, input_shape=None):
    """What identifies MODEL for a resumed run: a bundled model's name, else the file's path
    and SHA-256 (so a retrained model in the same file is noticed)."""
    from .inputs import BUNDLED_MODELS

    spec = os.fspath(spec)
    if spec in BUNDLED_MODELS:
        out = {"name": spec}
    else:
        h = hashlib.sha256()
        with open(spec, "rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                h.update(block)
        out = {"path": os.path.abspath(spec), "sha256": h.hexdigest()}
    if input_shape is not None:
        out["input_shape"] = list(input_shape)
    return out


@user_input()
def input_range(inputs, chunk_size):
    """``(min, max)`` over all of ``inputs``, reading one chunk at a time."""
    lo, hi = np.inf, -np.inf
    for start in range(0, inputs.n, chunk_size):
        x = inputs.read(start, min(inputs.n, start + chunk_size))
        lo, hi = min(lo, float(np.min(x))), max(hi, float(np.max(x)))
    return lo, hi


# --------------------------------------------------------------------------------------------
# One chunk
# --------------------------------------------------------------------------------------------
def _at(method, params, start):
    """``params`` for the chunk of samples from ``start``: a method that draws random numbers
    gets ``sample_offset=start``."""
    from .methods import parameters

    if "sample_offset" in (parameters(method) or {}):
        return {**params, "sample_offset": start}
    return params


def table(R, out, target):
    """The columns of ``explained.csv`` for a chunk's relevance ``R`` and network output
    ``out``: ``(targets, scores, sums)``, the explained classes (``target``, or each sample's
    predicted class for None) and their scores ``f_t(x)``, or for the chunk's seeds (an array)
    "seed" and ``sum(seed * f(x))``, and the relevance sums, each (n,)."""
    n = len(R)
    sums = R.reshape(n, -1).sum(axis=1, dtype=np.float64)
    if isinstance(target, np.ndarray):
        return ["seed"] * n, seed_scores(target, out), sums
    scores = out.reshape(n, -1)
    classes = scores.argmax(axis=1) if target is None else np.full(n, target, dtype=np.int64)
    return classes, scores[np.arange(n), classes].astype(np.float64), sums


def explain_chunk(net, x, target, method, params, batch_size=None, start=0):
    """Explain one chunk, samples ``start:start + len(x)`` of the input, in this process:
    ``(R, out)``, the relevance and the network's output (that of the explanation's own
    forward pass for ``target`` None, each sample's predicted class).  A method that draws
    random numbers gets ``sample_offset=start``."""
    from .methods import explain_and_output

    return explain_and_output(net, x, PRED if target is None else target, method,
                              batch_size=batch_size, **_at(method, params, start))


# --------------------------------------------------------------------------------------------
# Runners: the chunks in this process or on a Dask client
# --------------------------------------------------------------------------------------------
class LocalRunner:
    """Runs each chunk in this process, when its result is asked for."""

    window = 1

    def __init__(self, net, method, params, batch_size):
        self.args = (net, method, params, batch_size)

    def submit(self, x, target, start):
        """Samples ``x`` from ``start`` on, explained for ``target`` (theirs: a class, None
        or their seeds)."""
        net, method, params, batch_size = self.args

        class Lazy:
            def result(self_):
                return explain_chunk(net, x, target, method, params, batch_size, start)

        return Lazy()

    def cancel(self, pending):
        pass


class DaskRunner:
    """Runs each chunk as a :func:`relprop.dask.explain` job on a ``dask.distributed`` client,
    a window of them in flight.

    The chunk's inputs travel from this process in its graph (the workers need not see this
    machine's files, and a chunk whose worker dies is recomputed from the graph); the network
    is shipped once (:mod:`relprop.dask`), and every task checks its worker's relprop version
    and instruction set.
    """

    def __init__(self, client, net, method, params, batch_size):
        self.client = client
        self.window = max(2, 2 * sum(client.nthreads().values()) + 1)
        self.args = (net, method, params, batch_size)

    def submit(self, x, target, start):
        import dask
        import dask.array as da

        from . import dask as rd

        net, method, params, batch_size = self.args
        # the chunk travels in its graph, on purpose: no large-graph warning for it
        with self.client.as_current(), dask.config.set(
                {"distributed.admin.large-graph-warning-threshold": "4GiB"}):
            R, out = rd.explain(net, da.from_array(x, chunks=x.shape),
                                PRED if target is None else target, method,
                                return_output=True, batch_size=batch_size,
                                **_at(method, params, start))
            futures = self.client.compute([R, out])

        class Both:
            def result(self_):
                return tuple(f.result() for f in futures)

            def cancel(self_):
                self.client.cancel(futures)

        return Both()

    def cancel(self, pending):
        for job in pending:
            job.cancel()


# --------------------------------------------------------------------------------------------
# The output folder
# --------------------------------------------------------------------------------------------
def _fsync_dir(path):
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_json_atomic(path, obj, durable=True):
    """Replace ``path`` by ``obj`` as JSON: a temporary file renamed over it, so readers find
    the old or the new record, never a mix.  ``durable``: fsync the file before the rename and
    the folder after it (else a crash may lose the new record, or leave it unreadable)."""
    tmp = path + ".tmp"
    with open(tmp, "w") as fh:
        json.dump(obj, fh, sort_keys=True, separators=(",", ":"))
        fh.write("\n")
        if durable:
            fh.flush()
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_dir(os.path.dirname(path) or ".")


def _pwrite_all(fd, data, offset):
    view = memoryview(data).cast("B")
    while view:
        k = os.pwrite(fd, view, offset)
        view, offset = view[k:], offset + k


def _crc(fd, offset, size):
    """CRC-32 of ``size`` bytes of ``fd`` from ``offset`` (None when the file is shorter)."""
    crc = 0
    while size > 0:
        block = os.pread(fd, min(size, 1 << 24), offset)
        if not block:
            return None
        crc = zlib.crc32(block, crc)
        offset, size = offset + len(block), size - len(block)
    return crc


def csv_header(named=False):
    """The first line of ``explained.csv`` (bytes): :data:`CSV_HEADER`, or with class names
    (``named``) a ``class`` column, the target's name, after the target."""
    return CSV_HEADER.replace(b"target,", b"target,class,") if named else CSV_HEADER


def _named(run):
    """Whether the run (its record's ``run``) names its classes in ``explained.csv``."""
    return "class_names_sha256" in run


def _csv_field(text):
    """``text`` as a CSV field (quoted when it holds a comma, a quote or a line break)."""
    return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\r\n') else text


def csv_text(names, classes, scores, sums, class_names=None):
    """The rows of ``explained.csv`` for a chunk, as bytes (with ``class_names``, a list of
    names by class index, the target's name after its index)."""
    classes = np.asarray(classes).tolist()
    named = ([""] * len(classes) if class_names is None else  # (no name for a "seed")
             [(_csv_field(class_names[c]) if isinstance(c, int) else "") + "," for c in classes])
    return "".join(map("{},{},{}{:.6g},{:.6g}\n".format, map(_csv_field, names), classes, named,
                       np.asarray(scores).tolist(), np.asarray(sums).tolist())).encode()


class Checker:
    """Compares the chunks of a run's files with the checksums of its progress record.

    Each entry of the record's ``chunks`` is ``[start, stop, csv_start, csv_stop, rel_crc,
    csv_crc]``: samples ``start:stop`` fill rows ``start:stop`` of ``relevance.npy`` and bytes
    ``csv_start:csv_stop`` of ``explained.csv``, whose CRC-32 are ``rel_crc`` and ``csv_crc``.
    """

    def __init__(self, outdir, rec):
        self.chunks = [tuple(int(v) for v in c) for c in rec.get("chunks", [])]
        rel = np.load(os.path.join(outdir, "relevance.npy"), mmap_mode="r", allow_pickle=False)
        self.shape, self.dtype, self.offset = rel.shape, rel.dtype, int(rel.offset)
        self.row_bytes = int(np.prod(rel.shape[1:], dtype=np.int64)) * rel.dtype.itemsize
        del rel
        self.paths = [os.path.join(outdir, name) for name in ("relevance.npy", "explained.csv")]
        self.header = csv_header(_named(rec.get("run", {})))
        self.bytes = sum((c[1] - c[0]) * self.row_bytes + c[3] - c[2] for c in self.chunks)

    def damaged(self, chunk):
        """The files (names) whose bytes of ``chunk`` differ from its checksums."""
        start, stop, c0, c1, rel_crc, csv_crc = chunk
        out = []
        for path, offset, size, crc in (
                (self.paths[0], self.offset + start * self.row_bytes,
                 (stop - start) * self.row_bytes, rel_crc), (self.paths[1], c0, c1 - c0, csv_crc)):
            fd = os.open(path, os.O_RDONLY)
            try:
                if _crc(fd, offset, size) != crc:
                    out.append(os.path.basename(path))
            finally:
                os.close(fd)
        return out

    def check(self, indices):
        """``[(index, files)]`` of the chunks at ``indices`` that differ from their checksums."""
        return [(i, bad) for i in indices for bad in [self.damaged(self.chunks[i])] if bad]

    def frame(self, complete):
        """What lies outside the chunks, as problems (text): ``explained.csv``'s header,
        ``relevance.npy``'s length (its array, nothing after), and for a ``complete`` run bytes
        of ``explained.csv`` after the last chunk's rows (an interrupted run may hold the rows
        of the chunk in flight there; --resume drops them)."""
        out = []
        with open(self.paths[1], "rb") as fh:
            head = fh.read(len(self.header))
        if head != self.header:
            out.append(f"explained.csv: its header is not {self.header.decode().strip()!r}")
        want = self.offset + self.shape[0] * self.row_bytes
        have = os.path.getsize(self.paths[0])
        if have != want:
            out.append(f"relevance.npy: {have:,} bytes, its array {want:,}")
        end = self.chunks[-1][3] if self.chunks else len(self.header)
        have = os.path.getsize(self.paths[1])
        if complete and have > end:
            out.append(f"explained.csv: {have - end:,} bytes after the last chunk's rows")
        return out


def describe_chunk(i, chunk):
    return f"chunk {i} (samples {chunk[0]}..{chunk[1] - 1})"


def read_record(outdir):
    """The progress record of ``outdir`` (a dict), or None when there is none.  When
    ``progress.json`` is unreadable (a crash before it reached the disk), the record of the last
    sync point, ``progress.synced.json``, stands in (its ``"from_sync_point"`` is True).

    Raises UsageError for a record that is not one.
    """
    path = os.path.join(outdir, RECORD)
    if not os.path.exists(path):
        return None
    try:
        return _load_record(path)
    except UsageError:
        synced = os.path.join(outdir, SYNCED)
        if not os.path.exists(synced):
            raise
    rec = _load_record(synced)
    rec["from_sync_point"] = True
    return rec


def _load_record(path):
    try:
        with open(path) as fh:
            rec = json.load(fh)
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: not a readable progress record ({exc})") from None
    if not isinstance(rec, dict) or rec.get("format") != RECORD_FORMAT:
        raise UsageError(f"{path}: not a relprop progress record")
    if rec.get("version") != RECORD_VERSION:
        raise UsageError(f"{path}: progress record version {rec.get('version')!r}; this relprop "
                         f"reads version {RECORD_VERSION} (start over without --resume)")
    return rec


def _differences(old, new, prefix=""):
    """Human-readable differences between two run descriptions."""
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a!r} in OUTDIR, {b!r} now")
    return out


class OutputFolder:
    """``relevance.npy``, ``explained.csv``, ``heatmaps/`` and the progress record of a run.

    Parameters
    ----------
    outdir : str
    run : dict
        The run's arguments (JSON-able): a resumed run must have the same.
    n : int
        Samples in the run.
    """

    def __init__(self, outdir, run, n):
        self.outdir, self.run, self.n = os.fspath(outdir), run, int(n)
        self.header = csv_header(_named(run))
        self.rel_path = os.path.join(self.outdir, "relevance.npy")
        self.csv_path = os.path.join(self.outdir, "explained.csv")
        self.heat_dir = os.path.join(self.outdir, "heatmaps")
        self.record_path = os.path.join(self.outdir, RECORD)
        self.synced_path = os.path.join(self.outdir, SYNCED)
        self.done = self.synced = 0
        self._last_sync, self._sync_seconds = time.perf_counter(), 0.0
        self.derived = {}
        self._rel_fd = self._csv = None

    # -- resume ---------------------------------------------------------------------------
    def resume_point(self, log=print):
        """Check the record against this run and the written chunks against their checksums:
        ``(done, derived, damaged)`` to continue from, or None when OUTDIR holds no run.
        ``damaged`` lists ``(index, files)`` of the chunks whose bytes differ (see
        :meth:`rewrite`): the last two chunks are always verified, all of them when that is
        estimated to take at most :data:`VERIFY_SHARE` of the run's time so far.  Raises
        UsageError when OUTDIR holds a run with other arguments or damaged files."""
        rec = read_record(self.outdir)
        if rec is None:
            return None
        diff = _differences(rec.get("run", {}), self.run)
        if diff:
            raise UsageError(f"--resume: {self.outdir} holds a run with other arguments ("
                             + "; ".join(diff) + "); rerun with the same arguments, or without "
                             "--resume to start over")
        done, csv_bytes = int(rec["done"]), int(rec["csv_bytes"])
        if not 0 <= done <= self.n:
            raise UsageError(f"{self.record_path}: {done} samples done of {self.n}")
        damaged = []
        if done > 0:
            try:
                self.checker = Checker(self.outdir, rec)
            except (OSError, ValueError) as exc:
                raise UsageError(f"--resume: {self.rel_path} is missing or damaged ({exc}); "
                                 "start over without --resume") from None
            shape, dtype = tuple(rec["shape"]), np.dtype(rec["dtype"])
            if self.checker.shape != shape or self.checker.dtype != dtype:
                raise UsageError(f"--resume: {self.rel_path} has shape {self.checker.shape} and "
                                 f"dtype {self.checker.dtype}, the progress record says {shape} "
                                 f"{dtype}; start over without --resume")
            self._rel_offset, self.shape, self.dtype = self.checker.offset, shape, dtype
            size = os.path.getsize(self.csv_path) if os.path.exists(self.csv_path) else -1
            if size < csv_bytes:
                raise UsageError(f"--resume: {self.csv_path} is shorter than the progress "
                                 "record says; start over without --resume")
            if rec.get("from_sync_point"):
                log(f"--resume: {self.record_path} is unreadable (a crash?): continuing from "
                    f"the last sync point, {SYNCED}")
            damaged = self._verify(float(rec.get("seconds", 0.0)), int(rec.get("synced", 0)),
                                   log)
            self._repair_frame(log)
            self._open(csv_bytes)
        self.done, self.derived, self._csv_bytes = done, dict(rec.get("derived", {})), csv_bytes
        self.synced = int(rec.get("synced", 0))
        self.chunks = list(self.checker.chunks) if done else []
        self.seconds = float(rec.get("seconds", 0.0))
        if rec.get("from_sync_point"):  # the record OUTDIR holds again
            self.shape, self.dtype = tuple(rec["shape"]), np.dtype(rec["dtype"])
            self._write_record()
        return done, self.derived, damaged

    def _verify(self, seconds, synced, log):
        """The damaged chunks among those counted after the last sync point and the last two,
        or among all when that is cheap enough."""
        checker, t0 = self.checker, time.perf_counter()
        count = len(checker.chunks)
        first = min([count - 2] + [i for i, c in enumerate(checker.chunks) if c[1] > synced])
        damaged = checker.check(range(max(0, first), count))
        last = checker.chunks[max(0, first):]
        took = time.perf_counter() - t0
        tail = sum((c[1] - c[0]) * checker.row_bytes + c[3] - c[2] for c in last)
        estimate = took * (checker.bytes - tail) / max(tail, 1)
        if first > 0 and estimate <= VERIFY_SHARE * seconds:
            damaged = checker.check(range(first)) + damaged
            log(f"--resume: verified all {count} chunks written against their checksums")
        elif first > 0:
            log(f"--resume: verified the last {count - first} of {count} chunks written "
                f"against their checksums (all would take about {estimate:.1f} s; relprop "
                "verify OUTDIR checks them all)")
        return damaged

    def _repair_frame(self, log):
        """Rewrite a damaged CSV header and cut bytes after relevance.npy's array (what
        :meth:`Checker.frame` finds outside the chunks; the CSV's tail goes in :meth:`_open`)."""
        for problem in self.checker.frame(complete=False):
            log(f"--resume: {problem}: repaired")
        with open(self.csv_path, "r+b") as fh:
            if fh.read(len(self.header)) != self.header:
                fh.seek(0)
                fh.write(self.header)
        want = self.checker.offset + self.checker.shape[0] * self.checker.row_bytes
        if os.path.getsize(self.rel_path) > want:
            os.truncate(self.rel_path, want)

    def previous_progress(self):
        """``(done, n)`` of the run OUTDIR holds (whatever its arguments), or None."""
        try:
            rec = read_record(self.outdir)
        except ValueError:
            return None
        return None if rec is None else (rec.get("done"), rec.get("n"))

    # -- a new run ------------------------------------------------------------------------
    def start(self, sample_shape, dtype, derived):
        """Start a new run: drop any old record, create ``relevance.npy`` ``(n,
        *sample_shape)`` and the CSV header, and record zero samples done."""
        self.chunks, self.seconds = [], 0.0
        os.makedirs(self.outdir, exist_ok=True)
        for path in (self.record_path, self.synced_path):
            for p in (path, path + ".tmp"):
                if os.path.exists(p):
                    os.remove(p)
        self.shape, self.dtype = (self.n,) + tuple(sample_shape), np.dtype(dtype)
        rel = np.lib.format.open_memmap(self.rel_path, mode="w+", dtype=self.dtype,
                                        shape=self.shape)
        self._rel_offset = int(rel.offset)
        del rel
        with open(self.csv_path, "wb") as fh:
            fh.write(self.header)
        self.done, self.derived = 0, dict(derived)
        self._open(os.path.getsize(self.csv_path))
        self._write_record()

    def _open(self, csv_bytes):
        self._rel_fd = os.open(self.rel_path, os.O_WRONLY)
        self._csv = open(self.csv_path, "r+b")
        self._csv.truncate(csv_bytes)  # rows of a chunk in flight when the last run stopped
        self._csv.seek(csv_bytes)
        self._csv_bytes = csv_bytes

    # -- chunks ---------------------------------------------------------------------------
    def write(self, start, R, text):
        """Write the relevance and the CSV rows (bytes) of samples ``start:start + len(R)``
        (not yet committed)."""
        if start != self.done:
            raise ValueError(f"chunks must be written in order: got samples from {start}, "
                             f"{self.done} are done")
        R = self._fits(start, R)
        _pwrite_all(self._rel_fd, R, self._rel_offset + start * self._row_bytes(R))
        self._csv.write(text)
        self._pending = [start, start + len(R), self._csv_bytes, self._csv_bytes + len(text),
                         zlib.crc32(R), zlib.crc32(text)]

    def _fits(self, start, R):
        R = np.ascontiguousarray(R, dtype=self.dtype)
        if R.shape[1:] != self.shape[1:] or start + len(R) > self.n:
            raise ValueError(f"a chunk of shape {R.shape} at {start} does not fit "
                             f"{self.rel_path} {self.shape}")
        return R

    def _row_bytes(self, R):
        return R[0].nbytes if len(R) else 0

    def commit(self, seconds):
        """Record the written chunk as done (``seconds``: the run's time so far, all runs of it
        together), after its bytes reached the operating system; a sync point when one is due
        (see the module docstring)."""
        chunk = self._pending
        self._csv.flush()
        self.done, self._csv_bytes, self.seconds = chunk[1], chunk[3], seconds
        self.chunks.append(chunk)
        self._write_record(durable=False)
        now = time.perf_counter()
        if now - self._last_sync >= max(SYNC_SECONDS, self._sync_seconds / SYNC_SHARE):
            self.sync()

    def sync(self):
        """A sync point: the data files made durable, then ``synced`` recorded durably."""
        if self._rel_fd is None or self.synced == self.done:
            return
        t0 = time.perf_counter()
        self._csv.flush()
        os.fsync(self._rel_fd)
        os.fsync(self._csv.fileno())
        self.synced = self.done
        self._write_record(durable=False)
        _write_json_atomic(self.synced_path, self._record(), durable=True)
        self._last_sync = time.perf_counter()
        self._sync_seconds = self._last_sync - t0

    def rewrite(self, i, R, text):
        """Write chunk ``i`` again (recomputed: its bytes must match its checksums, else
        UsageError naming it) and make it durable."""
        start, stop, c0, c1, rel_crc, csv_crc = self.chunks[i]
        R = self._fits(start, R)
        if len(R) != stop - start or zlib.crc32(R) != rel_crc or zlib.crc32(text) != csv_crc:
            raise UsageError(f"--resume: {describe_chunk(i, self.chunks[i])} was recomputed with "
                             "other bytes than its checksums say (other INPUTS, model or "
                             "relprop?); start over without --resume")
        _pwrite_all(self._rel_fd, R, self._rel_offset + start * self._row_bytes(R))
        _pwrite_all(self._csv.fileno(), text, c0)
        os.fsync(self._rel_fd)
        os.fsync(self._csv.fileno())

    def _record(self):
        return {"format": RECORD_FORMAT, "version": RECORD_VERSION, "run": self.run,
                "derived": self.derived, "n": self.n, "done": self.done, "synced": self.synced,
                "shape": list(self.shape), "dtype": self.dtype.str, "csv_bytes": self._csv_bytes,
                "seconds": self.seconds, "chunks": self.chunks}

    def _write_record(self, durable=True):
        _write_json_atomic(self.record_path, self._record(), durable)

    def close(self):
        """A last sync point, then the files closed."""
        if self._rel_fd is not None:
            self.sync()
            os.close(self._rel_fd)
            self._rel_fd = None
        if self._csv is not None:
            self._csv.close()
            self._csv = None


# --------------------------------------------------------------------------------------------
# Progress
# --------------------------------------------------------------------------------------------
class Progress:
    """A progress bar on stderr (samples/s and ETA): tqdm when it is installed, else one line
    rewritten at most once a second; shown only when stderr is a terminal."""

    def __init__(self, total, initial, desc, enabled=None):
        self.total, self.count = total, initial
        tty = sys.stderr.isatty() if enabled is None else enabled
        self.bar = None
        self.plain = False
        if not tty:
            return
        try:
            from tqdm import tqdm
        except ImportError:
            self.plain = True
            self.t0, self.start, self.shown = time.perf_counter(), initial, 0.0
            return
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit="sample",
                        unit_scale=True, file=sys.stderr, leave=False, dynamic_ncols=True)

    def update(self, k):
        self.count += k
        if self.bar is not None:
            self.bar.update(k)
        elif self.plain:
            now = time.perf_counter()
            if now - self.shown >= 1.0 or self.count == self.total:
                rate = (self.count - self.start) / max(now - self.t0, 1e-9)
                eta = (self.total - self.count) / rate if rate > 0 else float("inf")
                eta_s = "?" if not np.isfinite(eta) else time.strftime("%H:%M:%S",
                                                                       time.gmtime(eta))
                sys.stderr.write(f"\r{self.count}/{self.total} samples, {rate:,.0f} samples/s, "
                                 f"ETA {eta_s}  ")
                sys.stderr.flush()
                self.shown = now

    def close(self):
        if self.bar is not None:
            self.bar.close()
        elif self.plain:
            sys.stderr.write("\n")


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------
def read_checked(inputs, start, stop):
    """Samples ``start:stop`` of INPUTS, checked: a file that cannot be read or NaN/Inf values
    are the user's :class:`UsageError`, naming the samples."""
    where = f"samples {start}..{stop - 1} of INPUTS"
    with user_input(f"{where}: "):
        x = inputs.read(start, stop)
    if x.dtype.kind in "fc":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise UsageError(f"{where}: sample {start + int(np.argmax(bad))} contains NaN or "
                             "infinite values")
    return x


def explain_to_folder(net, inputs, outdir, *, method, params, target=None, chunk_size=None,
                      batch_size=None, heatmaps=None, overlay=False, resume=False, run=None,
                      client=None, derive=None, why=None, class_names=None, log=print,
                      progress=None):
    """Explain ``inputs`` chunk by chunk into ``outdir`` (see the module docstring).

    Parameters
    ----------
    net : Graph
    inputs : Inputs
        From :func:`open_inputs`.
    outdir : str
    method : str
        A :func:`relprop.explain` name; ``params`` its keyword arguments.
    target : int, None or Seeds
        The class to explain, None for each sample's predicted class, or a :class:`Seeds`
        file of output seeds (checked against ``net`` and ``inputs`` here).
    chunk_size : int, optional
        Samples per chunk (written and recorded together); :func:`default_chunk_size` by
        default.  ``batch_size`` bounds the samples per kernel call within a chunk.
    heatmaps : bool, optional
        Write a heatmap PNG per sample (default: for image files only); ``overlay`` (which
        implies heatmaps) draws them over the inputs.
    resume : bool
        Continue the run recorded in ``outdir`` (it must have the same ``run``).
    run : dict, optional
        What identifies the run besides the arguments above (model and inputs).
    client : distributed.Client, optional
        Run the chunks on this Dask client instead of this process.
    derive : callable, optional
        ``derive() -> dict`` of parameters computed from the inputs for a new run (e.g. the
        input range); a resumed run takes them from the record, as it takes the ``seed`` that
        a new run draws for a random method given none.
    why : dict, optional
        Per derived parameter, where its value comes from (logged; default "the range of
        INPUTS").
    class_names : list of str, optional
        A name per class (output index): ``explained.csv`` gets a ``class`` column.
    log : callable
        Where messages go.
    progress : bool, optional
        Show a progress bar (default: when stderr is a terminal).

    Returns
    -------
    dict
        ``n``, ``done_before`` (samples a resumed run found done), ``seconds``, ``rate``,
        ``heatmaps`` (PNG count or 0), ``derived``, and the output paths.
    """
    from . import render
    from ._random import check_seed
    from ._validate import as_int
    from .methods import parameters

    n = inputs.n
    random = "seed" in (parameters(method) or {})
    with user_input():
        chunk = default_chunk_size(inputs.sample_shape) if chunk_size is None else as_int(
            chunk_size, "chunk_size", minimum=1)
        if batch_size is not None:
            batch_size = as_int(batch_size, "batch_size", minimum=1)
    if random and params.get("seed") is not None:  # (None: drawn below, once for the run)
        with user_input(f"{method}: "):
            check_seed(params["seed"], chunked="relprop explain")
    heatmaps = bool(inputs.images if heatmaps is None else heatmaps) or bool(overlay)
    if heatmaps and len(inputs.sample_shape) != 3:
        raise UsageError(f"heatmaps need image inputs (n, c, h, w); these are "
                         f"{(n,) + tuple(inputs.sample_shape)}")
    run = dict(run or {})
    if isinstance(target, Seeds):
        target.check(net, inputs)
    recorded = ("pred" if target is None else target.identity if isinstance(target, Seeds)
                else int(target))
    run.update({"method": method, "params": dict(params), "target": recorded, "n": n,
                "sample_shape": list(inputs.sample_shape), "chunk_size": chunk,
                "heatmaps": bool(heatmaps), "overlay": bool(overlay)})
    if class_names is not None:  # (they are in explained.csv)
        run["class_names_sha256"] = hashlib.sha256("\n".join(class_names).encode()).hexdigest()
    run = json.loads(json.dumps(run))  # as it will read back
    from . import __version__
    run["relprop"] = __version__
    out = OutputFolder(outdir, run, n)
    done, derived, damaged = 0, None, []
    if resume:
        point = out.resume_point(log)
        if point is None:
            log(f"--resume: no progress record in {out.outdir}: starting from the beginning")
        else:
            done, derived, damaged = point
            log(f"--resume: {done} of {n} samples were done; continuing")
    else:
        prev = out.previous_progress()
        if prev is not None and prev[0] != prev[1]:
            log(f"{out.outdir} holds an interrupted run ({prev[0]} of {prev[1]} samples); "
                "starting over (pass --resume to continue it)")
    if derived is None:
        derived = derive() if derive is not None else {}
        if random and params.get("seed") is None:  # one seed for every chunk, kept for resume
            derived["seed"] = check_seed(None)
    why = {"seed": "drawn at random", **(why or {})}
    for key, v in derived.items():
        value = (v if isinstance(v, int) else format(v, "g") if np.ndim(v) == 0 else
                 "[" + ", ".join(format(e, ".6g") for e in v) + "]")
        log(f"{method}: {key}={value} ({why.get(key, 'the range of INPUTS')}; set it with "
            f"-p {key}=...)")
    params = {**params, **derived}
    if n > done:  # the method, its parameters and the target, checked now on one zero sample
        with user_input(f"{method}: "):
            explain_chunk(net, np.zeros((1,) + tuple(inputs.sample_shape), np.float32),
                          chunk_target(target, 0, 1), method, params, batch_size)
    if heatmaps:
        from .inputs import _heatmap_scale

        scale = _heatmap_scale(inputs.sample_shape)
        os.makedirs(out.heat_dir, exist_ok=True)

    runner = (LocalRunner(net, method, params, batch_size) if client is None else
              DaskRunner(client, net, method, params, batch_size))

    def draw(R, xb, names):
        rgb = render.heatmap(R, overlay=None if xb is None else inputs.pixels(xb))
        for i, name in enumerate(names):
            render.save_png(os.path.join(out.heat_dir, f"{name}.png"),
                            render.upscale(rgb[i], scale))

    def submit(start, stop):
        """Chunk ``start:stop`` read and submitted: ``(inputs, job)``."""
        xb = read_checked(inputs, start, stop)
        return xb, runner.submit(xb, chunk_target(target, start, stop), start)

    def explained(fut, start, stop):
        """A chunk's relevance and CSV rows (bytes), from its runner's result (its seeds read
        again: a window of chunks in flight holds none)."""
        try:
            R, outputs = fut.result()
        except NonFiniteResult as exc:  # finite inputs, a result beyond the dtype's range
            raise UsageError(f"samples {start}..{stop - 1} of INPUTS: {exc}") from exc
        names = inputs.names(start, stop)
        return R, names, csv_text(names, *table(R, outputs, chunk_target(target, start, stop)),
                                  class_names)

    for i, files in damaged:  # recomputed in place: the bytes must match their checksums
        start, stop = out.chunks[i][:2]
        xb, fut = submit(start, stop)
        R, names, text = explained(fut, start, stop)
        out.rewrite(i, R, text)
        if heatmaps:
            draw(R, xb if overlay else None, names)
        log(f"--resume: {describe_chunk(i, out.chunks[i])} did not match its checksum "
            f"({', '.join(files)}): recomputed")
    starts = list(range(done, n, chunk))
    bar = Progress(n, done, method, progress) if len(starts) > 1 else None
    pending = deque()
    started = done > 0
    t0, before = time.perf_counter(), out.seconds if started else 0.0
    try:
        it = iter(starts)
        while True:
            while len(pending) < runner.window:
                start = next(it, None)
                if start is None:
                    break
                stop = min(n, start + chunk)
                xb, fut = submit(start, stop)
                pending.append((start, stop, xb if heatmaps and overlay else None, fut))
                del xb
            if not pending:
                break
            start, stop, xb, fut = pending.popleft()
            R, names, text = explained(fut, start, stop)
            if not started:
                out.start(inputs.sample_shape, R.dtype, derived)
                started = True
            out.write(start, R, text)
            if heatmaps:
                draw(R, xb, names)
            out.commit(before + time.perf_counter() - t0)
            del R, xb
            if bar is not None:
                bar.update(stop - start)
    except BaseException:
        runner.cancel([p[3] for p in pending])
        raise
    finally:
        if bar is not None:
            bar.close()
        out.close()
    seconds = time.perf_counter() - t0
    return {"n": n, "done_before": done, "seconds": seconds,
            "rate": (n - done) / max(seconds, 1e-9), "heatmaps": n if heatmaps else 0,
            "derived": derived, "relevance": out.rel_path, "csv": out.csv_path,
            "heat_dir": out.heat_dir, "chunk_size": chunk}
