"""Argument checks at the boundary: every user array passes through here exactly once.

Dtype rule (documented in the README): float32 and float64 are computed in their own precision;
float16, integer and unsigned inputs are converted to float32; bool, complex, object and string
arrays raise ``TypeError``.  Arrays are made C-contiguous (copied only when needed).
"""
from __future__ import annotations

import numbers
import operator
import os

import numpy as np

#: Largest number of elements relprop allocates for one array (2**34 elements, 64 GiB of
#: float32): a bigger request is a mistake, and raises before any memory is touched.
MAX_ELEMENTS = 1 << 34


def float_dtype(dtype, name: str = "input") -> np.dtype:
    """The computation dtype for an input of ``dtype`` (see the module docstring)."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f" and dtype.itemsize in (4, 8):  # either byte order: '>f8' stays float64
        return dtype.newbyteorder("=")
    if dtype.kind in "iuf" and dtype != np.longdouble:
        return np.dtype(np.float32)
    raise TypeError(f"{name} has unsupported dtype {dtype}: relprop computes in float32 or "
                    "float64 (integer and float16 inputs are converted to float32)")


def as_float_array(a, name: str, dtype=None, check_finite: bool = True) -> np.ndarray:
    """``a`` as a C-contiguous float32/float64 array (``dtype`` forces one)."""
    if isinstance(a, np.ndarray):
        arr = a
    else:
        try:
            arr = np.asarray(a)
        except (ValueError, TypeError) as exc:
            raise TypeError(f"{name} must be an array of numbers: {exc}") from None
    target = float_dtype(arr.dtype, name)  # rejects bool/complex/object even when dtype is forced
    if dtype is not None:
        target = np.dtype(dtype)
    arr = np.asarray(arr, dtype=target, order="C")
    if check_finite and not np.isfinite(arr).all():
        bad = int(np.size(arr) - np.count_nonzero(np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or infinite value(s); pass "
                         "check_finite=False to skip this check")
    return arr


def check_size(shape, what: str) -> None:
    """Raise before allocating an array whose size overflows or exceeds MAX_ELEMENTS."""
    total = 1
    for d in shape:
        total *= int(d)
    if total > MAX_ELEMENTS:
        raise MemoryError(f"{what} of shape {tuple(shape)} would need {total} elements, more than "
                          f"relprop's limit of {MAX_ELEMENTS}; use batch_size= to work in chunks")


def as_int(value, name: str, minimum: int | None = None) -> int:
    """An integer argument (bools and floats are refused)."""
    if type(value) is int:  # the common case, without the ABC checks below (kernel calls)
        if minimum is not None and value < minimum:
            raise ValueError(f"{name} must be >= {minimum}, got {value}")
        return value
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}")
    if not isinstance(value, (numbers.Integral, np.integer)):
        try:
            value = operator.index(value)
        except TypeError:
            raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    value = int(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def as_ints(values, name: str) -> tuple:
    """A sequence of integers as a tuple (``TypeError`` naming ``name`` for anything else)."""
    try:
        return tuple(as_int(v, name) for v in values)
    except TypeError:
        raise TypeError(f"{name} must be a sequence of ints, got {values!r}") from None


def as_threads(value, name: str, minimum: int = 0) -> int:
    """A thread count: OpenMP ends the whole process when it cannot create the threads it is
    asked for, so counts far beyond the machine (more than ``max(256, 4 * cpu_count)``) raise."""
    n = as_int(value, name, minimum)
    limit = max(256, 4 * (os.cpu_count() or 1))
    if n > limit:
        raise ValueError(f"{name}={n} threads is more than relprop's limit of {limit} on this "
                         f"machine ({os.cpu_count()} CPUs)")
    return n


#: Largest kernel size, stride or padding: the kernels' window geometry (``h + 2 * padding``,
#: ...) stays far from int64 overflow.
MAX_WINDOW = (1 << 31) - 1


def as_window(value, name: str, minimum: int = 0) -> int:
    """An int kernel size, stride, padding, ... (a 1-D layer's), at most MAX_WINDOW."""
    value = as_int(value, name, minimum)
    if value > MAX_WINDOW:
        raise ValueError(f"{name} must be at most {MAX_WINDOW}, got {value!r}")
    return value


def as_pair(value, name: str, minimum: int = 0) -> tuple[int, int]:
    """An int or a pair of ints (as torch's kernel_size/stride/padding), at most MAX_WINDOW."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ValueError(f"{name} must be an int or a pair, got {value!r}")
        return (as_window(value[0], name, minimum), as_window(value[1], name, minimum))
    return (as_window(value, name, minimum),) * 2


def as_scalar(value, name: str, minimum: float | None = None) -> float:
    """A finite real number."""
    if isinstance(value, bool) or not isinstance(value, (numbers.Real, np.floating, np.integer)):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not np.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
