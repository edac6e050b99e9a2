"""Random draws that depend only on (seed, sample index): the same bits however a job is cut.

Every method that draws random numbers (SmoothGrad's noise, pixel flipping's uniform fill,
activation maximization's starting points, the metrics' subsets and noise) draws what belongs
to sample ``i`` of the whole input from that sample's own stream:

    numpy.random.default_rng(numpy.random.SeedSequence(seed, spawn_key=(i, *stream)))

which is the ``i``-th child of ``SeedSequence(seed).spawn(...)`` (NumPy's documented way to
make independent streams), so a user can reproduce any sample's draws with NumPy alone.
``i`` is the sample's index in the whole input: an in-process call on a slice of a dataset
passes ``sample_offset=`` (the index of its first sample); streaming, ``--workers`` and
``relprop.dask`` pass the chunk's offset.  A call whose samples are not consecutive in the
whole input (a metric re-explaining perturbed copies, several per sample) passes each
sample's index instead (``sample_offset=`` an int array, :func:`sample_indices`).  ``stream``
separates the draws of different kinds
for one sample (a metric's subsets and its noise).  Chunk size, batch size, workers, threads
and resume therefore never change a draw.

A ``numpy.random.Generator`` passed as ``seed`` still works in-process (draws are taken from it
in sample order, sample-major), but it cannot be split across chunks: chunked paths refuse it
(:func:`check_seed` with ``chunked=``).
"""
from __future__ import annotations

import numbers

import numpy as np

#: The streams of one sample's draws (``stream`` in :func:`sample_rng`), in one table so that no
#: two kinds of draws share numbers.  A method's own draws (SmoothGrad's noise, activation
#: maximization's starting points, the random baseline attribution) use the sample's stream
#: ``()``; a metric's draws use theirs, so that a metric re-explaining with SmoothGrad never
#: reuses its method's noise: random subsets, noise (then the step or run), uniform fill values,
#: ``random_logit``'s other class; ``Graph.randomized`` draws node ``j``'s parameters from the
#: stream ``(PARAMETERS,)`` of index ``j``.
SUBSETS, NOISE, FILL, CLASSES, PARAMETERS = 1, 2, 3, 4, 5


def check_seed(seed, *, chunked=None):
    """``seed`` validated: an int >= 0 or a ``numpy.random.Generator``; None becomes a fresh int
    (from the operating system's entropy, drawn once, so one call's samples all use it).

    ``chunked``: the name of a path that cuts the input into pieces run apart (e.g.
    "relprop.dask.explain"); a Generator is then refused with the reason, since its draws
    would depend on the cut."""
    if seed is None:
        return int(np.random.SeedSequence().entropy % (1 << 63))
    if isinstance(seed, np.random.Generator):
        if chunked:
            raise TypeError(f"{chunked}: seed must be an int (or None), not a "
                            "numpy.random.Generator: the input is cut into chunks, and a "
                            "generator's draws would depend on the cut; an int seed draws each "
                            "sample's numbers from (seed, sample index)")
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (numbers.Integral, np.integer)):
        raise TypeError(f"seed must be an int, None or a numpy.random.Generator, got "
                        f"{type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    return int(seed)


def check_offset(sample_offset):
    """``sample_offset`` validated: the index of a call's first sample in the whole input."""
    if isinstance(sample_offset, (bool, np.bool_)) or not isinstance(
            sample_offset, (numbers.Integral, np.integer)):
        raise TypeError(f"sample_offset must be an int, got {type(sample_offset).__name__}")
    if sample_offset < 0:
        raise ValueError(f"sample_offset must be >= 0, got {sample_offset}")
    return int(sample_offset)


def sample_indices(sample_offset, n):
    """The indices in the whole input of a call's ``n`` samples, int64 ``(n,)``:
    ``sample_offset + arange(n)`` for an int, or ``sample_offset`` itself as each sample's index
    (a sequence of ``n`` ints >= 0)."""
    if isinstance(sample_offset, (numbers.Integral, np.integer)) and not isinstance(
            sample_offset, (bool, np.bool_)):
        return check_offset(sample_offset) + np.arange(n, dtype=np.int64)
    idx = np.asarray(sample_offset) if isinstance(sample_offset, (list, tuple, np.ndarray)) \
        else None
    if idx is None or idx.dtype.kind not in "iu":
        raise TypeError(f"sample_offset must be an int (the first sample's index) or an array "
                        f"of ints (each sample's index), got {type(sample_offset).__name__}"
                        + ("" if idx is None else f" of {idx.dtype}"))
    if idx.shape != (n,):
        raise ValueError(f"sample_offset as an array holds each sample's index: shape ({n},) "
                         f"for {n} samples, got {idx.shape}")
    if n and idx.min() < 0:
        raise ValueError(f"sample_offset must be >= 0, got {int(idx.min())}")
    return idx.astype(np.int64)


def sample_rng(seed, index, *stream) -> np.random.Generator:
    """The generator of sample ``index`` (in the whole input) for an int ``seed``; with a
    Generator ``seed``, that generator (draws in call order)."""
    if isinstance(seed, np.random.Generator):
        return seed
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(int(index),)
                                                        + tuple(int(s) for s in stream)))


def per_sample(seed, indices, draw, *stream):
    """``np.stack([draw(sample_rng(seed, i, *stream)) for i in indices])``: one draw per sample
    (``indices`` are indices in the whole input, offset included)."""
    return np.stack([draw(sample_rng(seed, i, *stream)) for i in indices])
