"""Hypothesis strategies for kernel problems, and the error-model tolerance."""
import numpy as np
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

DTYPES = st.sampled_from([np.float32, np.float64])


def arrays(dtype, shape, lo=-1.0, hi=1.0):
    width = 32 if dtype == np.float32 else 64
    return hnp.arrays(dtype, shape, elements=st.floats(lo, hi, width=width, allow_subnormal=False))


def sum_tolerance(dtype, terms, bound):
    """Each of ``terms`` additions may add a rounding error of eps * bound (XNNPACK's model),
    and each product may underflow (absolute error up to the smallest normal number)."""
    info = np.finfo(dtype)
    return 4 * info.eps * terms * np.asarray(bound, dtype=np.float64) + terms * float(info.tiny)


@st.composite
def window_problems(draw, max_k=4, wide=False):
    """(n, c, h, w, kh, kw, stride, padding) with a window that fits the padded input.

    ``wide``: rows of 10 to 48 pixels (few of them) and kernels up to 7x7, so that output rows
    are longer than a GEMM strip (16 lanes) and strips lie inside one row or across two."""
    n = draw(st.integers(1, 3))
    c = draw(st.integers(1, 4))
    if wide:
        max_k = 7
    kh, kw = draw(st.integers(1, max_k)), draw(st.integers(1, max_k))
    ph, pw = draw(st.integers(0, kh // 2)), draw(st.integers(0, kw // 2))
    h = draw(st.integers(max(1, kh - 2 * ph), 9 if not wide else max(kh, 4)))
    w = draw(st.integers(max(1, kw - 2 * pw), 9) if not wide else st.integers(max(10, kw), 48))
    sh, sw = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    return n, c, h, w, (kh, kw), (sh, sw), (ph, pw)


@st.composite
def conv_problems(draw, wide=False):
    n, c, h, w, k, s, p = draw(window_problems(wide=wide))
    dtype = draw(DTYPES)
    c_out = draw(st.integers(1, 5))
    x = draw(arrays(dtype, (n, c, h, w)))
    wt = draw(arrays(dtype, (c_out, c) + k))
    b = draw(st.one_of(st.none(), arrays(dtype, (c_out,))))
    return x, wt, b, s, p


@st.composite
def dense_problems(draw):
    dtype = draw(DTYPES)
    n, i, o = draw(st.integers(1, 6)), draw(st.integers(1, 40)), draw(st.integers(1, 20))
    x = draw(arrays(dtype, (n, i)))
    w = draw(arrays(dtype, (o, i)))
    b = draw(st.one_of(st.none(), arrays(dtype, (o,))))
    return x, w, b


@st.composite
def winograd_problems(draw, wide=False, max_c=6):
    """(x, w, b, padding, tile) of a stride-1 3x3 convolution with padding 0..2 per direction.

    ``wide``: rows of 40 to 90 pixels (10 to 45 tiles), so that the transforms run their
    vector loops as well as their tails."""
    dtype = draw(DTYPES)
    tile = draw(st.sampled_from([2, 4]))
    n = draw(st.integers(1, 3))
    c_in, c_out = draw(st.integers(1, max_c)), draw(st.integers(1, max_c))
    ph, pw = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    h = draw(st.integers(max(1, 3 - 2 * ph), 5 if wide else 14))
    w = draw(st.integers(40, 90) if wide else st.integers(max(1, 3 - 2 * pw), 14))
    x = draw(arrays(dtype, (n, c_in, h, w)))
    wt = draw(arrays(dtype, (c_out, c_in, 3, 3)))
    b = draw(st.one_of(st.none(), arrays(dtype, (c_out,))))
    return x, wt, b, (ph, pw), tile
