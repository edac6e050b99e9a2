"""Hypothesis strategies for kernel problems, the error-model tolerance, and small helpers
of the kernel tests."""
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


#: Layer kinds :func:`dags` draws from; "extended" adds grouped/dilated convolutions, ReLU6,
#: LeakyReLU, PReLU, Hardtanh, unfolded BatchNorm and adaptive pooling.
DAG_OPS = ("conv", "relu", "pool", "add", "concat", "residual", "block")
DAG_OPS_EXTENDED = DAG_OPS + ("grouped", "dilated", "relu6", "leaky", "prelu", "hardtanh",
                              "batchnorm", "adaptive")


@st.composite
def dags(draw, bias=True, extended=False, max_ops=8, n_out=3, homogeneous=False):
    """A random ``relprop.Graph`` on small images: convolutions, ReLUs, pooling, additions of
    equal-shaped tensors (also a tensor with itself), concatenations, residual blocks, fan-out
    (any tensor, the input too, may be read several times), VGG blocks (convolution, ReLU, 2x2
    max pooling: what the engine fuses); every tensor nobody reads is pooled, flattened and
    concatenated into a final Dense (with a hidden Dense and ReLU before it or not), so every
    node reaches the output.

    ``extended`` adds grouped and depthwise convolutions (multipliers 1 and 2), dilated ones,
    ReLU6, LeakyReLU, PReLU, Hardtanh, unfolded BatchNorms and adaptive average pooling;
    ``homogeneous`` keeps the network positively homogeneous, for conservation tests: no ReLU6
    or Hardtanh (they clip), bias-free BatchNorms (shift = mean * scale / sqrt(var + eps))."""
    import relprop as rp

    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    ops = DAG_OPS_EXTENDED if extended else DAG_OPS
    if homogeneous:
        ops = tuple(o for o in ops if o not in ("relu6", "hardtanh"))
    c0, hw = draw(st.integers(1, 3)), draw(st.sampled_from([4, 5, 8]))
    shapes, readers, nodes = {"input": (c0, hw, hw)}, {"input": 0}, []

    def bias_of(n):
        return rng.normal(size=n) * 0.1 if bias else None

    def new(layer, inputs):
        name = f"n{len(nodes)}"
        inputs = list(inputs)
        shapes[name] = tuple(layer.output_shape(*(shapes[t] for t in inputs)))
        for t in inputs:
            readers[t] += 1
        readers[name] = 0
        nodes.append((name, layer, inputs))
        return name

    def conv(src, o=None, k=None, stride=1, dilation=1, groups=1, same=False):
        c, h, w = shapes[src]
        k = k or draw(st.sampled_from([1, 3]))
        o = o or draw(st.integers(1, 4)) * groups
        span = dilation * (k - 1) + 1
        pad = (span - 1) // 2 if same or min(h, w) < span or draw(st.booleans()) else 0
        wt = rng.normal(size=(o, c // groups, k, k)) / np.sqrt(c // groups * k * k)
        return new(rp.Conv2d(wt, bias_of(o), stride=stride, padding=pad, dilation=dilation,
                             groups=groups), [src])

    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(ops))
        images = [t for t, s in shapes.items() if len(s) == 3]
        src = draw(st.sampled_from(images))
        c, h, w = shapes[src]
        if op == "conv":
            conv(src, stride=2 if min(h, w) >= 4 and draw(st.booleans()) else 1)
        elif op == "grouped":  # groups == c: depthwise (multiplier 1 or 2)
            src = draw(st.sampled_from([t for t in images if shapes[t][0] >= 2] or [src]))
            c, h, w = shapes[src]
            groups = draw(st.sampled_from([g for g in range(2, c + 1) if c % g == 0] or [1]))
            conv(src, o=groups * draw(st.integers(1, 2)), groups=groups,
                 stride=2 if min(h, w) >= 4 and draw(st.booleans()) else 1)
        elif op == "dilated":
            conv(src, k=3, dilation=2)
        elif op == "relu":
            new(rp.ReLU(), [src])
        elif op == "relu6":
            new(rp.ReLU6(), [src])
        elif op == "leaky":
            new(rp.LeakyReLU(draw(st.sampled_from([0.01, 0.3]))), [src])
        elif op == "hardtanh":
            new(rp.Hardtanh(*draw(st.sampled_from([(-1.0, 1.0), (-0.5, 2.0), (-1.0, None)]))),
                [src])
        elif op == "prelu":  # a slope per channel or one for all, of either sign
            new(rp.PReLU(rng.uniform(-0.5, 1.5, draw(st.sampled_from([1, c])))), [src])
        elif op == "batchnorm":
            scale, mean, var = rng.uniform(0.5, 2, c), rng.normal(size=c), rng.uniform(0.5, 2, c)
            shift = (mean * scale / np.sqrt(var + 1e-5) if homogeneous
                     else rng.normal(size=c))
            new(rp.BatchNorm2d(scale, shift, mean, var), [src])
        elif op == "pool" and min(h, w) >= 2:
            cls = draw(st.sampled_from([rp.MaxPool2d, rp.AvgPool2d]))
            new(cls(2, stride=draw(st.sampled_from([1, 2]))), [src])
        elif op == "adaptive":
            new(rp.AdaptiveAvgPool2d((draw(st.integers(1, h + 1)), draw(st.integers(1, w + 1)))),
                [src])
        elif op == "add":
            same = [t for t in images if shapes[t] == shapes[src]]
            new(rp.Add(), [src, draw(st.sampled_from(same))])
        elif op == "concat":
            fits = [t for t in images if shapes[t][1:] == (h, w)]
            extra = draw(st.lists(st.sampled_from(fits), min_size=1, max_size=2))
            new(rp.Concat(), [src] + extra)
        elif op == "block":  # conv, ReLU and (if it fits) a 2x2 stride-2 max pooling
            groups = draw(st.sampled_from((1, c) if extended and c > 1 else (1,)))
            t = new(rp.ReLU(), [conv(src, o=groups * draw(st.integers(1, 3)), groups=groups)])
            if min(shapes[t][1:]) >= 2 and draw(st.booleans()):
                new(rp.MaxPool2d(2), [t])
        elif op == "residual":
            inner = new(rp.ReLU(), [conv(src, o=c, k=3, same=True)])
            new(rp.Add(), [conv(inner, o=c, k=1, same=True), src])
    heads = []
    for t in [t for t, r in readers.items() if r == 0]:
        if len(shapes[t]) == 3:
            t = new(rp.Flatten(), [new(rp.GlobalAvgPool2d(), [t])])
        heads.append(t)
    feat = heads[0] if len(heads) == 1 else new(rp.Concat(), heads)
    f = shapes[feat][0]
    if draw(st.booleans()):
        hidden = draw(st.integers(1, 6))
        feat = new(rp.ReLU(), [new(rp.Dense(rng.normal(size=(hidden, f)) / np.sqrt(f),
                                            bias_of(hidden)), [feat])])
        f = hidden
    new(rp.Dense(rng.normal(size=(n_out, f)) / np.sqrt(f), bias_of(n_out)), [feat])
    return rp.Graph(nodes, input_shape=(c0, hw, hw))


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


def f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def with_threads(n, fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on ``n`` threads."""
    import relprop as rp

    old = rp.get_num_threads()
    rp.set_num_threads(n)
    try:
        return fn(*args, **kwargs)
    finally:
        rp.set_num_threads(old)
