"""Shape operations, each sample alone: Reshape (and Flatten, its common case): the samples'
elements in C order, read into another per-sample shape; Permute: the samples' axes in another
order; Slice: a range of one axis; Pad: zeros around (or crops of) the trailing axes."""
from __future__ import annotations

import numpy as np

from .._validate import as_int, as_ints
from .base import (
    Layer,
    OnnxOp,
    TorchFunction,
    TorchMethod,
    TorchModule,
    cfg_int,
    cfg_list,
    numel,
    register_layer,
)
from .merges import batch_axis


def reshape_layer(shape, target):
    """The layer that reshapes samples of ``shape`` to ``target``: None (the identity), Flatten
    (to one axis) or Reshape."""
    target = tuple(int(v) for v in target)
    if target == tuple(shape):
        return None
    return Flatten() if len(target) == 1 else Reshape(target)


def _torch_target(target, ctx, what):
    """The per-sample shape of ``x.view(*target)``: its leading entry must be the batch size
    (``x.size(0)``) or -1 standing for it."""
    if len(target) == 1 and isinstance(target[0], (list, tuple)):
        target = target[0]
    target = [ctx.constant(v, "the target shape") for v in target]
    lead, rest = (target[0], target[1:]) if target else (None, [])
    ok = all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in rest) and \
        (lead is ctx.batch or (lead == -1 and -1 not in rest))
    per = _per_sample(list(rest), numel(ctx.shape)) if ok else None
    if per is None:
        raise ctx.error(f"{what} to {tuple(target)} from per-sample shape {tuple(ctx.shape)} "
                        "mixes samples (its leading dimension must be the batch: x.size(0), "
                        "x.shape[0] or -1); relprop reshapes each sample alone")
    return per


def _torch_reshape(a, ctx):
    """``x.view(*shape)``, ``x.reshape(shape)``, ``torch.reshape(x, shape)``."""
    return reshape_layer(ctx.shape, _torch_target(a["shape"], ctx, "reshape"))


def _torch_flatten(shape, start, end, ctx):
    """``torch.flatten(x, start_dim, end_dim)``: the axes from ``start_dim`` to ``end_dim``
    merged (never the batch axis)."""
    rank = len(shape) + 1
    start = batch_axis(ctx.constant(start, "start_dim"), rank, ctx, "start_dim")
    end = batch_axis(ctx.constant(end, "end_dim"), rank, ctx, "end_dim")
    if start > end:
        raise ctx.error(f"flatten from dimension {start} to {end}: start_dim must not follow "
                        "end_dim")
    merged = numel(shape[start - 1:end])
    return reshape_layer(shape, tuple(shape[:start - 1]) + (merged,) + tuple(shape[end:]))


def _torch_unflatten(shape, dim, sizes, ctx):
    """``x.unflatten(dim, sizes)`` / ``nn.Unflatten``: axis ``dim`` split into ``sizes`` (one of
    them may be -1)."""
    k = batch_axis(ctx.constant(dim, "dim"), len(shape) + 1, ctx, "dim") - 1
    split = _per_sample(list(ctx.constant(tuple(sizes), "sizes")), shape[k])
    if split is None:
        raise ctx.error(f"unflatten of dimension {k + 1} (size {shape[k]}) into {tuple(sizes)} "
                        "does not fit")
    return reshape_layer(shape, tuple(shape[:k]) + split + tuple(shape[k + 1:]))


def _torch_unsqueeze(a, ctx):
    shape = ctx.shape
    k = batch_axis(ctx.constant(a["dim"], "dim"), len(shape) + 2, ctx, "dim") - 1
    return reshape_layer(shape, tuple(shape[:k]) + (1,) + tuple(shape[k:]))


def _torch_squeeze(a, ctx):
    """``x.squeeze(dim)``: the named axes of size 1 dropped (others kept, as torch keeps them);
    without ``dim`` refused (it would drop the batch axis of a single sample too)."""
    shape, dims = ctx.shape, ctx.constant(a["dim"], "dim")
    if dims is None:
        raise ctx.error("squeeze() without dims would also squeeze the batch axis of a single "
                        "sample; name the dims (x.squeeze(2))")
    return _squeezed(shape, dims, ctx)


def _squeezed(shape, dims, ctx):
    dims = [dims] if isinstance(dims, (int, np.integer)) else list(dims)
    axes = {batch_axis(d, len(shape) + 1, ctx, "dim") - 1 for d in dims}
    return reshape_layer(shape, [v for k, v in enumerate(shape) if k not in axes or v != 1])


def _onnx_flatten(ctx):
    axis = ctx.attrs.get("axis", 1)
    if axis != 1:
        raise ctx.error(f"axis={axis} is not supported (only 1: Flatten with another axis mixes "
                        "the batch with the samples' axes)")
    return reshape_layer(ctx.shape, (numel(ctx.shape),))


def _per_sample(rest, n):
    """The per-sample shape ``rest`` (one -1 resolved) for samples of ``n`` elements, or None
    where ``rest`` does not hold ``n`` elements."""
    if rest.count(-1) > 1 or any(v == 0 or v < -1 for v in rest):
        return None
    if -1 in rest:
        known = numel([v for v in rest if v != -1])
        if n % known:
            return None
        rest = [n // known if v == -1 else v for v in rest]
    return tuple(rest) if numel(rest) == n else None


def onnx_target(ctx):
    """The per-sample target shape of an ONNX Reshape (input 1, a constant for each batch size
    of ``ctx.worlds``) whose leading dimension is the batch: ``-1`` or the batch size itself
    (computed from the input's shape).  In a file with a dynamic batch axis, a leading constant
    that does not follow the batch is the export batch baked in by the exporter (what the
    model computed in Python from ``x.size(0)``): batch-preserving, and recorded with
    ``ctx.bake``.  Returns ``(shape, fixed)``: ``fixed`` where the file's batch is fixed and the
    target names it (relprop cannot tell there whether the model keeps samples apart at other
    batch sizes).  ValueError for a target that mixes samples."""
    n = numel(ctx.shape)
    targets = ctx.targets(1, "the target shape")
    resolved = []
    for t, b in zip(targets, ctx.worlds):
        if not ctx.attrs.get("allowzero", 0):  # a 0 copies the input's dimension
            full = (b,) + tuple(ctx.shape)
            t = [full[k] if v == 0 and k < len(full) else v for k, v in enumerate(t)]
        rest = _per_sample(t[1:], n) if t and (t[0] != -1 or -1 not in t[1:]) else None
        resolved.append((t[0] if t else None, rest))
    (lead, rest), (lead2, rest2) = resolved
    follows = all(v in (-1, b) for v, b in zip((lead, lead2), ctx.worlds))
    baked = ctx.dynamic and lead == lead2 != -1
    if rest is None or rest != rest2 or not (follows or baked):
        raise ctx.error(f"Reshape to {targets[0]} from per-sample shape {tuple(ctx.shape)} mixes "
                        "samples (its leading dimension is not the batch); relprop reshapes each "
                        "sample alone")
    if baked:
        ctx.bake(lead)
    return rest, lead != -1 and not ctx.dynamic


def _onnx_reshape(ctx):
    """Reshape to a constant target whose leading dimension is the batch (:func:`onnx_target`).
    In a file whose batch is fixed, only the flatten and the identity (read as ever) take it
    from the file; other targets need a file with a dynamic batch axis."""
    target, fixed = onnx_target(ctx)
    if fixed and len(target) != 1 and target != tuple(ctx.shape):
        b = ctx.worlds[0]
        raise ctx.error(f"Reshape to per-sample shape {target} in a file whose batch is fixed at "
                        f"{b}: relprop cannot tell whether the model keeps samples apart at "
                        "other batch sizes; export it with a dynamic batch axis "
                        "(torch.onnx.export(..., dynamic_axes={'x': {0: 'n'}}), or "
                        "dynamic_shapes with dynamo=True)")
    return reshape_layer(ctx.shape, target)


def _onnx_axes(ctx):
    """The ``axes`` of a Squeeze/Unsqueeze: input 1 from opset 13, an attribute before."""
    axes = ctx.const(1, "axes", required=False) if ctx.opset >= 13 else \
        ctx.attrs.get("axes", None)
    return None if axes is None else [int(a) for a in np.asarray(axes).reshape(-1)]


def _onnx_squeeze(ctx):
    shape, axes = ctx.shape, _onnx_axes(ctx)
    if axes is None:  # every axis of size 1 but the batch's
        return reshape_layer(shape, [v for v in shape if v != 1])
    rank = len(shape) + 1
    bad = [a for a in axes if not -rank <= a < rank or (a % rank and shape[a % rank - 1] != 1)]
    if bad:
        raise ctx.error(f"Squeeze of axes {axes} of per-sample shape {tuple(shape)}: axis "
                        f"{bad[0]} is not an axis of size 1")
    return _squeezed(shape, axes, ctx)


def _onnx_unsqueeze(ctx):
    shape, axes = ctx.shape, _onnx_axes(ctx)
    if axes is None:
        raise ctx.error("missing axes")
    rank = len(shape) + 1 + len(axes)
    out = list(shape)
    for k in sorted(batch_axis(a, rank, ctx, "axes") for a in axes):
        out.insert(k - 1, 1)
    return reshape_layer(shape, out)


_FLATTEN = (("input", ("start_dim", 0), ("end_dim", -1)),
            lambda a, ctx: _torch_flatten(ctx.shape, a["start_dim"], a["end_dim"], ctx))
_UNFLATTEN = (("input", "dim", "sizes"),
              lambda a, ctx: _torch_unflatten(ctx.shape, a["dim"], a["sizes"], ctx))
_SQUEEZE = (("input", ("dim", None)), _torch_squeeze)
_UNSQUEEZE = (("input", "dim"), _torch_unsqueeze)


@register_layer
class Reshape(Layer):
    """Each sample's elements, in C order, read into the per-sample shape ``shape`` (one entry
    may be -1: what the others leave), as ``x.reshape(n, *shape)`` (``x.view``, ``torch.flatten``
    of some axes, ``unflatten``, ``unsqueeze``, ``squeeze``: relprop never moves data across
    samples).

    Gradient and relevance (Pass) are reshaped back."""

    kind = "reshape"
    slots = ("reshape",)
    default_rule = "pass"
    remakable = True
    imports = (
        TorchModule(("Unflatten",), lambda m, ctx: _torch_unflatten(
            ctx.shape, m.dim, m.unflattened_size, ctx)),
        TorchFunction(("torch.reshape",), ("input", "shape"), _torch_reshape),
        TorchMethod(("view", "reshape"), ("input", "*shape"), _torch_reshape),
        TorchMethod(("unflatten",), *_UNFLATTEN),
        TorchFunction(("torch.unflatten",), *_UNFLATTEN),
        TorchFunction(("torch.squeeze",), *_SQUEEZE),
        TorchMethod(("squeeze",), *_SQUEEZE),
        TorchFunction(("torch.unsqueeze",), *_UNSQUEEZE),
        TorchMethod(("unsqueeze",), *_UNSQUEEZE),
        OnnxOp(("Reshape",), _onnx_reshape),
        OnnxOp(("Squeeze",), _onnx_squeeze),
        OnnxOp(("Unsqueeze",), _onnx_unsqueeze),
    )

    def __init__(self, shape):
        shape = as_ints(shape, "Reshape shape")
        if not shape or shape.count(-1) > 1 or any(v == 0 or v < -1 for v in shape):
            raise ValueError(f"Reshape shape must be positive sizes, at most one of them -1, got "
                             f"{shape}")
        self.shape = shape

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_list(cfg, "shape"))

    def config(self):
        return {"shape": list(self.shape)}

    def describe(self):
        return f"Reshape to {self.shape}"

    def output_shape(self, shape):
        out = _per_sample(list(self.shape), numel(shape))
        if out is None:
            raise ValueError(f"{self!r} cannot hold per-sample shape {tuple(shape)} "
                             f"({numel(shape)} elements)")
        return out

    def forward(self, x):
        return x.reshape((x.shape[0],) + self.output_shape(x.shape[1:])), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return g.reshape(x.shape)


@register_layer
class Flatten(Reshape):
    """C-order flatten of all but the batch axis: ``Reshape((-1,))``."""

    kind = "flatten"
    imports = (
        TorchModule(("Flatten",), lambda m, ctx: _torch_flatten(ctx.shape, m.start_dim,
                                                                m.end_dim, ctx)),
        TorchFunction(("torch.flatten",), *_FLATTEN),
        TorchMethod(("flatten",), *_FLATTEN),
        OnnxOp(("Flatten",), _onnx_flatten),
    )

    def __init__(self):
        super().__init__((-1,))

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls()

    def config(self):
        return {}

    def describe(self):
        return "Flatten"

    def output_shape(self, shape):
        return (numel(shape),)

    def forward(self, x):
        return x.reshape(x.shape[0], -1), None


def permute_layer(dims):
    """Permute(dims), or None where ``dims`` keeps every axis in place."""
    dims = tuple(int(d) for d in dims)
    return None if dims == tuple(range(len(dims))) else Permute(dims)


def _batch_dims(dims, rank, ctx, what):
    """``dims`` (ints, negative counting from the end) as non-negative axes of a batch of
    ``rank`` axes; the batch axis may only stay where it is."""
    out = [d + rank if isinstance(d, (int, np.integer)) and d < 0 else d for d in dims]
    if sorted(out) != list(range(rank)):
        raise ctx.error(f"{what} {tuple(dims)} is not a permutation of the {rank} axes")
    if out[0] != 0:
        raise ctx.error(f"{what} {tuple(dims)} moves the batch axis; relprop permutes the axes "
                        "of each sample (the first entry must be 0)")
    return out


def _torch_permute(a, ctx):
    dims = a["dims"]
    if len(dims) == 1 and isinstance(dims[0], (list, tuple)):
        dims = dims[0]
    dims = [ctx.constant(d, "dims") for d in dims]
    return permute_layer(_batch_dims(dims, len(ctx.shape) + 1, ctx, "permute"))


def _torch_transpose(a, ctx):
    rank = len(ctx.shape) + 1
    d0, d1 = (batch_axis(ctx.constant(a[k], k), rank, ctx, k) for k in ("dim0", "dim1"))
    dims = list(range(rank))
    dims[d0], dims[d1] = d1, d0
    return permute_layer(dims)


def _torch_movedim(a, ctx):
    rank = len(ctx.shape) + 1
    src, dst = (ctx.constant(a[k], k) for k in ("source", "destination"))
    src, dst = ([v] if isinstance(v, (int, np.integer)) else list(v) for v in (src, dst))
    if len(src) != len(dst):
        raise ctx.error(f"movedim of {src} to {dst}: as many sources as destinations needed")
    src = [batch_axis(v, rank, ctx, "source") for v in src]
    dst = [batch_axis(v, rank, ctx, "destination") for v in dst]
    dims = [None] * rank
    for s, d in zip(src, dst):
        dims[d] = s
    rest = iter(k for k in range(rank) if k not in src)
    return permute_layer([next(rest) if d is None else d for d in dims])


def _onnx_transpose(ctx):
    rank = len(ctx.shape) + 1
    perm = ctx.attrs.get("perm", list(range(rank))[::-1])
    return permute_layer(_batch_dims(list(perm), rank, ctx, "perm"))


_PERMUTE = (("input", "*dims"), _torch_permute)
_TRANSPOSE = (("input", "dim0", "dim1"), _torch_transpose)
_MOVEDIM = (("input", "source", "destination"), _torch_movedim)


@register_layer
class Permute(Layer):
    """The axes of each sample in another order: ``x.permute(dims)``, ``dims`` a permutation of
    the batch's axes that leaves the batch axis first (``dims[0] == 0``); ``x.transpose``,
    ``x.movedim`` and ONNX Transpose are permutations too.

    Gradient and relevance (Pass) are permuted back."""

    kind = "permute"
    slots = ("reshape",)
    default_rule = "pass"
    remakable = True
    imports = (
        TorchFunction(("torch.permute",), ("input", "dims"), _torch_permute),
        TorchMethod(("permute",), *_PERMUTE),
        TorchFunction(("torch.transpose", "torch.swapaxes", "torch.swapdims"), *_TRANSPOSE),
        TorchMethod(("transpose", "swapaxes", "swapdims"), *_TRANSPOSE),
        TorchFunction(("torch.movedim", "torch.moveaxis"), *_MOVEDIM),
        TorchMethod(("movedim", "moveaxis"), *_MOVEDIM),
        OnnxOp(("Transpose",), _onnx_transpose),
    )

    def __init__(self, dims):
        dims = as_ints(dims, "Permute dims")
        if sorted(dims) != list(range(len(dims))) or len(dims) < 2 or dims[0] != 0:
            raise ValueError(f"Permute dims must be a permutation of 0..{len(dims) - 1} that "
                             f"leaves the batch axis 0 first, got {dims}")
        self.dims = dims
        self.inverse = tuple(int(d) for d in np.argsort(dims))

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_list(cfg, "dims"))

    def config(self):
        return {"dims": list(self.dims)}

    def describe(self):
        return f"Permute {self.dims}"

    def output_shape(self, shape):
        self._need_rank(shape, len(self.dims) - 1, f"{len(self.dims) - 1} axes")
        return tuple(shape[d - 1] for d in self.dims[1:])

    def forward(self, x):
        return np.ascontiguousarray(x.transpose(self.dims)), None

    def backward(self, g, x, state, relu_mode="gradient"):
        return np.ascontiguousarray(g.transpose(self.inverse))


def _pieces(size, sizes, ctx, what):
    """``(start, stop)`` of consecutive pieces of the given ``sizes`` covering ``size``."""
    if any(s < 0 for s in sizes) or sum(sizes) != size:
        raise ctx.error(f"{what} sizes {list(sizes)} do not add up to the axis' {size}")
    bounds = np.cumsum([0] + list(sizes))
    return [(int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:])]


def _split(ctx, axis, sizes, what):
    """One Slice per piece of ``axis`` (an axis of the batch), as a tuple of tensors (an empty
    piece refused)."""
    size = ctx.shape[axis - 1]
    pieces = _pieces(size, sizes, ctx, what)
    if any(a == b for a, b in pieces):
        raise ctx.error(f"{what} into pieces {list(sizes)} makes an empty piece; not supported")
    return tuple(ctx.add(Slice(axis, a, b)) for a, b in pieces)


def _chunk_sizes(size, chunks):
    """torch.chunk's pieces: ``ceil(size / chunks)`` each, the last one what remains."""
    step = -(-size // chunks)
    return [min(step, size - k) for k in range(0, size, step)]


def _torch_chunk(a, ctx):
    axis = batch_axis(ctx.constant(a["dim"], "dim"), len(ctx.shape) + 1, ctx, "dim")
    chunks = as_int(ctx.constant(a["chunks"], "chunks"), "chunks", minimum=1)
    return _split(ctx, axis, _chunk_sizes(ctx.shape[axis - 1], chunks), "chunk")


def _torch_split(a, ctx):
    axis = batch_axis(ctx.constant(a["dim"], "dim"), len(ctx.shape) + 1, ctx, "dim")
    size, sizes = ctx.shape[axis - 1], ctx.constant(a["split_size_or_sections"], "split sizes")
    if isinstance(sizes, (int, np.integer)):
        step = as_int(sizes, "split_size", minimum=1)
        sizes = [min(step, size - k) for k in range(0, size, step)]
    return _split(ctx, axis, [int(s) for s in sizes], "split")


def _torch_getitem(a, ctx):
    """``x[index]`` with slices (step >= 1), ints, None and ``...`` on the axes of each sample
    (the batch axis taken whole): Slices, then a Reshape dropping the int-indexed axes and
    adding the None ones."""
    index = a["index"] if isinstance(a["index"], tuple) else (a["index"],)
    shape = tuple(ctx.shape)
    index = [ctx.constant(k, "an index") for k in index]
    if any(k is Ellipsis for k in index):
        at = index.index(Ellipsis)
        fill = len(shape) + 1 - sum(k is not None for k in index if k is not Ellipsis)
        index = index[:at] + [slice(None)] * fill + index[at + 1:]
    if not index or index[0] != slice(None):
        raise ctx.error(f"the index {a['index']!r} does not take the batch axis whole "
                        "(x[:, ...]); relprop indexes the axes of each sample")
    layers, out, axis = [], [], 1
    for k in index[1:]:
        if k is None:
            out.append(1)
            continue
        if axis > len(shape):
            raise ctx.error(f"too many indices for per-sample shape {shape}")
        size = shape[axis - 1]
        if isinstance(k, slice):
            start, stop, step = k.indices(size)
            if step < 1 or start >= stop:
                raise ctx.error(f"the slice {k} of an axis of {size} is empty or reversed; not "
                                "supported")
            layers.append(slice_layer(axis, start, stop, step, size))
            out.append(len(range(start, stop, step)))
        elif isinstance(k, (int, np.integer)) and not isinstance(k, bool):
            if not -size <= k < size:
                raise ctx.error(f"index {k} is out of range for an axis of {size}")
            layers.append(slice_layer(axis, k % size, k % size + 1, 1, size))
        else:
            raise ctx.error(f"index {k!r} is not supported (slices, ints, None and ...)")
        axis += 1
    out += list(shape[axis - 1:])
    kept = [layer for layer in layers if layer is not None]
    return kept + [reshape_layer(_sliced(shape, kept), out)]


def _sliced(shape, slices):
    for layer in slices:
        shape = layer.output_shape(shape)
    return shape


def _onnx_split(ctx):
    rank = len(ctx.shape) + 1
    axis = batch_axis(ctx.attrs.get("axis", 0), rank, ctx, "axis")
    size, n = ctx.shape[axis - 1], len(ctx.node.output)
    sizes = ctx.const(1, "split", required=False) if ctx.opset >= 13 else \
        ctx.attrs.get("split", None)
    if sizes is not None:
        sizes = [int(s) for s in np.asarray(sizes).reshape(-1)]
    elif "num_outputs" in ctx.attrs:
        sizes = _chunk_sizes(size, int(ctx.attrs["num_outputs"]))
    else:
        if size % n:
            raise ctx.error(f"cannot split an axis of {size} into {n} equal pieces")
        sizes = [size // n] * n
    return _split(ctx, axis, sizes, "Split")


def _onnx_slice(ctx):
    if ctx.opset < 10:
        starts, ends = ctx.attrs["starts"], ctx.attrs["ends"]
        axes, steps = ctx.attrs.get("axes"), None
    else:
        starts, ends = ctx.const(1, "starts"), ctx.const(2, "ends")
        axes, steps = ctx.const(3, "axes", required=False), ctx.const(4, "steps", required=False)
    starts, ends = (np.asarray(v).reshape(-1).tolist() for v in (starts, ends))
    rank = len(ctx.shape) + 1
    axes = list(range(len(starts))) if axes is None else np.asarray(axes).reshape(-1).tolist()
    steps = [1] * len(starts) if steps is None else np.asarray(steps).reshape(-1).tolist()
    layers = []
    for start, end, ax, step in zip(starts, ends, axes, steps):
        ax = ax + rank if ax < 0 else ax
        if step < 1:
            raise ctx.error(f"steps {steps} are not supported (only positive steps)")
        if ax == 0:  # the batch axis, only whole
            if start == 0 and end >= 2 ** 31 - 1 and step == 1:
                continue
            raise ctx.error("slices the batch axis; relprop slices the axes of each sample")
        ax = batch_axis(ax, rank, ctx, "axes")
        size = ctx.shape[ax - 1]
        lo, hi = (min(max(v + size if v < 0 else v, 0), size) for v in (start, end))
        if lo >= hi:
            raise ctx.error(f"the slice {start}:{end} of an axis of {size} is empty")
        layers.append(slice_layer(ax, lo, hi, step, size))
    return layers


def _onnx_gather(ctx):
    """Gather of one constant index on an axis of each sample (``x[:, 0]``): a Slice, and the
    axis dropped where the index is a scalar."""
    shape, rank = tuple(ctx.shape), len(ctx.shape) + 1
    axis = batch_axis(ctx.attrs.get("axis", 0), rank, ctx, "axis")
    index = ctx.const(1, "indices")
    if index.size != 1:
        raise ctx.error(f"Gather of {index.size} indices on data is not supported (one index)")
    size = shape[axis - 1]
    k = int(index.reshape(-1)[0]) % size
    out = shape[:axis - 1] + (1,) * index.ndim + shape[axis:]
    return [slice_layer(axis, k, k + 1, 1, size),
            reshape_layer(shape[:axis - 1] + (1,) + shape[axis:], out)]


def slice_layer(axis, start, stop, step, size):
    """Slice(axis, start, stop, step), or None where it takes the whole axis of ``size``."""
    if (start, step) == (0, 1) and stop == size:
        return None
    return Slice(axis, start, min(stop, size), step)


_CHUNK = (("input", "chunks", ("dim", 0)), _torch_chunk)
_SPLIT = (("input", "split_size_or_sections", ("dim", 0)), _torch_split)


@register_layer
class Slice(Layer):
    """The elements ``start:stop:step`` of axis ``axis`` of the batch (an axis of each sample:
    ``axis >= 1``; ``0 <= start < stop``, ``step >= 1``), as ``x[:, ..., start:stop:step]``.
    ``torch.chunk``/``split`` make one per piece, indexing ``x[:, 2:5]``, ``x[:, 0]`` (with a
    Reshape dropping the axis) and ONNX Split/Slice/Gather (one index) theirs.

    The gradient, and relevance (Pass), go back to the sliced elements; the others get zero
    from this node (what another slice of the same tensor reads reaches it from that one)."""

    kind = "slice"
    slots = ("reshape",)
    default_rule = "pass"
    remakable = True
    imports = (
        TorchFunction(("torch.chunk",), *_CHUNK),
        TorchMethod(("chunk",), *_CHUNK),
        TorchFunction(("torch.split",), ("tensor", "split_size_or_sections", ("dim", 0)),
                      _torch_split),
        TorchMethod(("split",), *_SPLIT),
        TorchFunction(("operator.getitem",), ("input", "index"), _torch_getitem),
        OnnxOp(("Split",), _onnx_split),
        OnnxOp(("Slice",), _onnx_slice),
        OnnxOp(("Gather",), _onnx_gather),
    )

    def __init__(self, axis, start, stop, step=1):
        self.axis = as_int(axis, "axis", minimum=1)
        self.start = as_int(start, "start", minimum=0)
        self.stop = as_int(stop, "stop", minimum=self.start + 1)
        self.step = as_int(step, "step", minimum=1)
        self._index = (slice(None),) * self.axis + (slice(self.start, self.stop, self.step),)

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_int(cfg, "axis"), cfg.get("start", 0), cfg_int(cfg, "stop"),
                   cfg_int(cfg, "step", 1))

    def config(self):
        cfg = {"axis": self.axis, "start": self.start, "stop": self.stop}
        if self.step != 1:
            cfg["step"] = self.step
        return cfg

    def describe(self):
        step = f":{self.step}" if self.step != 1 else ""
        return f"Slice axis {self.axis} {self.start}:{self.stop}{step}"

    def output_shape(self, shape):
        if len(shape) < self.axis or shape[self.axis - 1] < self.stop:
            raise ValueError(f"{self!r} does not fit per-sample shape {tuple(shape)}")
        k = self.axis - 1
        return tuple(shape[:k]) + (len(range(self.start, self.stop, self.step)),) + \
            tuple(shape[k + 1:])

    def forward(self, x):
        return np.ascontiguousarray(x[self._index]), None

    def backward(self, g, x, state, relu_mode="gradient"):
        out = np.zeros(x.shape, dtype=g.dtype)
        out[self._index] = g
        return out


def _torch_pad_value(value, ctx):
    if value not in (None, 0, 0.0):
        raise ctx.error(f"padding with the constant {value} is not supported (only zeros: a "
                        "constant would be an input relprop cannot explain)")


def _torch_pad(a, ctx):
    if a["mode"] != "constant":
        raise ctx.error(f"mode={a['mode']!r} is not supported (only constant zero padding)")
    _torch_pad_value(ctx.constant(a["value"], "value"), ctx)
    return pad_layer(ctx, ctx.constant(a["pad"], "pad"))


def _torch_pad_module(m, ctx):
    _torch_pad_value(getattr(m, "value", 0), ctx)
    return pad_layer(ctx, m.padding)


def pad_layer(ctx, pads):
    """Pad(pads) on the importer's input, or None where every amount is 0."""
    pads = tuple(int(p) for p in pads)
    try:
        layer = Pad(pads)
        layer.output_shape(ctx.shape)
    except (ValueError, TypeError) as exc:
        raise ctx.error(str(exc)) from None
    return None if not any(pads) else layer


def _onnx_pad(ctx):
    mode = ctx.attrs.get("mode", b"constant")
    if (mode.decode() if isinstance(mode, bytes) else mode) != "constant":
        raise ctx.error(f"mode={mode!r} is not supported (only constant zero padding)")
    if ctx.opset < 11:
        pads, value, axes = ctx.attrs.get("pads"), ctx.attrs.get("value", 0.0), None
    else:
        pads = ctx.const(1, "pads")
        value = ctx.const(2, "constant_value", required=False)
        axes = ctx.const(3, "axes", required=False)
    value = 0.0 if value is None or np.asarray(value).size == 0 else \
        float(np.asarray(value).reshape(-1)[0])
    if value != 0:
        raise ctx.error(f"padding with the constant {value} is not supported (only zeros)")
    rank = len(ctx.shape) + 1
    pads = [int(p) for p in np.asarray(pads).reshape(-1)]
    axes = list(range(rank)) if axes is None else [int(a) % rank
                                                   for a in np.asarray(axes).reshape(-1)]
    k = len(axes)
    begin, end = [0] * rank, [0] * rank
    for ax, b, e in zip(axes, pads[:k], pads[k:]):
        begin[ax], end[ax] = b, e
    if begin[0] or end[0]:
        raise ctx.error("pads the batch axis; relprop pads the axes of each sample")
    first = next((ax for ax in range(1, rank) if begin[ax] or end[ax]), rank)
    return pad_layer(ctx, [v for ax in range(rank - 1, first - 1, -1)
                           for v in (begin[ax], end[ax])])


_PAD_MODULES = tuple(f"{kind}Pad{d}d" for kind in ("Zero", "Constant") for d in (1, 2, 3))


@register_layer
class Pad(Layer):
    """Zero padding of each sample's trailing axes, ``pads`` as torch's ``F.pad``: ``(left,
    right)`` of the last axis, then ``(top, bottom)`` of the one before, and so on; a negative
    amount crops (``nn.ZeroPad2d``, ``ConstantPad*d(.., 0)``, ONNX Pad of zeros).

    The gradient, and relevance (Pass: Zennit hooks no padding), go back to the input elements
    (the padded zeros' share is dropped, as what a crop removes)."""

    kind = "pad"
    slots = ("reshape",)
    default_rule = "pass"
    remakable = True
    imports = (
        TorchModule(_PAD_MODULES, _torch_pad_module),
        TorchFunction(("torch.nn.functional.pad",),
                      ("input", "pad", ("mode", "constant"), ("value", None)), _torch_pad),
        OnnxOp(("Pad",), _onnx_pad),
    )

    def __init__(self, pads):
        pads = as_ints(pads, "Pad pads")
        if not pads or len(pads) % 2:
            raise ValueError(f"Pad pads must be (before, after) pairs, last axis first, got "
                             f"{pads}")
        self.pads = pads

    @classmethod
    def from_config(cls, cfg, arrays):
        return cls(cfg_list(cfg, "pads"))

    def config(self):
        return {"pads": list(self.pads)}

    def describe(self):
        return f"Pad {self.pads}"

    def _widths(self, rank):
        """``(before, after)`` per axis of a sample of ``rank`` axes."""
        k = len(self.pads) // 2
        if k > rank:
            raise ValueError(f"{self!r} pads {k} axes of a sample of {rank}")
        pairs = [(self.pads[2 * i], self.pads[2 * i + 1]) for i in range(k)][::-1]
        return [(0, 0)] * (rank - k) + pairs

    def output_shape(self, shape):
        widths = self._widths(len(shape))
        if any(n + min(b, 0) + min(a, 0) < 0 for n, (b, a) in zip(shape, widths)):
            raise ValueError(f"{self!r} crops more than per-sample shape {tuple(shape)} holds "
                             "(a negative pad may remove at most its axis' elements)")
        out = tuple(n + b + a for n, (b, a) in zip(shape, widths))
        if min(out) < 1:
            raise ValueError(f"{self!r} leaves nothing of per-sample shape {tuple(shape)}")
        return out

    def _regions(self, shape):
        """The input elements kept and where they go in the output (index tuples)."""
        src, dst = [slice(None)], [slice(None)]
        for n, (b, a) in zip(shape, self._widths(len(shape))):
            src.append(slice(max(-b, 0), n - max(-a, 0)))
            dst.append(slice(max(b, 0), max(b, 0) + n - max(-b, 0) - max(-a, 0)))
        return tuple(src), tuple(dst)

    def forward(self, x):
        y = np.zeros((len(x),) + self.output_shape(x.shape[1:]), dtype=x.dtype)
        src, dst = self._regions(x.shape[1:])
        y[dst] = x[src]
        return y, None

    def backward(self, g, x, state, relu_mode="gradient"):
        gx = np.zeros(x.shape, dtype=g.dtype)
        src, dst = self._regions(x.shape[1:])
        gx[src] = g[dst]
        return gx
