"""The incremental forward pass of the ordered perturbation metrics.

A step of pixel flipping or region perturbation changes a few regions of the input; only the
outputs whose receptive field meets them change in the layers after it, a cone that widens
layer by layer.  :class:`Cone` keeps, per sample, the activations of the network's leading chain
of local layers (windows: convolutions and poolings; element-wise layers: activations,
BatchNorm), recomputes after each step only the changed cone from those cached activations,
and runs the rest of the network (the *suffix*, from where a region's cone covers half the
map, or from the first layer that is not local) on the updated activation.  The steps of all
samples of a group go through the network together.

A window layer is read from its description: ``config()`` with ``kernel_size``, ``stride``,
``padding`` (and ``dilation``); any other key (an option the cone does not know) ends the
chain.  The cone of output rows ``[o0, o1)`` reads input rows ``[a0, a1)``, ``a0 = o0 s - p``
rounded down to a multiple of the stride (at least 0) and ``a1 = (o1 - 1) s - p + (k - 1) d +
1`` (at most the input's size); the layer runs unchanged on that crop (its own padding), and
its crop output ``j`` is output ``a0 / s + j``: outputs whose window lies inside the crop, or
reaches past an edge of the input where the crop's padding is the input's, are exact.  The
others (windows cut by the crop's edge inside the input) are not kept.

Bits: a crop's output is the layer's function of the same input values; with the direct
convolution (``relprop.set_conv_algorithm("direct")``, and always in float64) each output is
the same sum in the same order as in the full pass, so the scores are bitwise those of the full
passes.  With the default algorithm choice a crop (a small image) may run another algorithm
than the full map (Winograd's tiles): then the scores agree within Winograd's float32 contract
(``docs/DESIGN.md``, section 2.5).
"""
from __future__ import annotations

import numpy as np

#: The keys of a window layer's ``config()`` the cone knows (shape, geometry, algorithm).
WINDOW_KEYS = {"kernel_size", "stride", "padding", "dilation", "in_channels", "out_channels",
               "groups", "algorithm"}
#: The suffix starts where a region's cone covers this share of the map.
SPLIT_SHARE = 0.5
#: Cached activations of one group of samples (bytes).
GROUP_BYTES = 512 << 20


def _pair(v, default):
    if v is None:
        return default
    return (int(v[0]), int(v[1])) if isinstance(v, (list, tuple)) else (int(v), int(v))


class _Window:
    """The geometry of a window layer (per axis: kernel, stride, padding, dilation)."""

    def __init__(self, cfg):
        self.k = _pair(cfg["kernel_size"], None)
        self.s = _pair(cfg.get("stride"), self.k)
        self.p = _pair(cfg.get("padding"), (0, 0))
        self.d = _pair(cfg.get("dilation"), (1, 1))

    def outputs(self, r0, r1, axis, size_out):
        """The outputs along ``axis`` whose window meets input rows ``[r0, r1)``."""
        k, s, p, d = self.k[axis], self.s[axis], self.p[axis], self.d[axis]
        o0 = np.maximum(0, -((-(r0 - (k - 1) * d + p)) // s))
        o1 = np.minimum(size_out, (r1 - 1 + p) // s + 1)
        return o0, o1

    def inputs(self, o0, o1, axis, size_in):
        """The crop ``[a0, a1)`` that outputs ``[o0, o1)`` read (``a0`` a multiple of the
        stride)."""
        k, s, p, d = self.k[axis], self.s[axis], self.p[axis], self.d[axis]
        a0 = np.maximum(0, ((o0 * s - p) // s) * s)
        a1 = np.minimum(size_in, (o1 - 1) * s - p + (k - 1) * d + 1)
        return a0, a1


def _direct(layer):
    """``layer``, or a copy running the direct algorithm where its description has a choice of
    algorithm (a crop is a small image, for which the automatic choice may differ from the full
    map's, and Winograd's transformed weights would be remade for every crop shape)."""
    if getattr(layer, "algorithm", "direct") == "direct":
        return layer
    return type(layer).from_config({**layer.config(), "algorithm": "direct"}, layer.arrays())


def _window(layer):
    if getattr(layer, "n_inputs", 1) != 1:
        return None
    cfg = layer.config()
    if "kernel_size" in cfg and set(cfg) <= WINDOW_KEYS:
        return _Window(cfg)
    return None


class Cone:
    """The incremental forward pass of ``net`` on inputs of per-sample ``shape`` (images)
    whose steps change regions of about ``side`` pixels a side (``usable`` False where the
    network starts with no window layer; ``saving``: a full pass's forward FLOPs over a step's,
    estimated from the cone of one region in the middle of the image)."""

    def __init__(self, net, shape, side):
        from ..graph import Graph, Sequential

        self.net, self.shape = net, tuple(shape)
        readers = {}
        for node in net.nodes:
            for t in node.inputs:
                readers[t] = readers.get(t, 0) + 1
        shapes = net.tensor_shapes(shape)
        # per stage [full chain, geometry, crop chain]: a window layer and the element-wise layers
        # after it, as the network runs them and (the window with the direct algorithm) on crops
        self.stages = []
        tensor, h, w = net.input_name, shape[1], shape[2]
        rect = np.array([(h - side) // 2, (h + side) // 2, (w - side) // 2, (w + side) // 2])
        names, shares = [], []  # the chain's nodes; the share of each node's output in the cone
        for node in net.nodes:
            if node.inputs != (tensor,) or readers.get(tensor, 0) != 1 or node.name == net.output:
                break
            win = _window(node.layer)
            out = shapes[node.name]
            if win is not None and len(out) == 3:
                if (rect[1] - rect[0]) * (rect[3] - rect[2]) >= SPLIT_SHARE * h * w:
                    break
                r = win.outputs(rect[0], rect[1], 0, out[1]), win.outputs(rect[2], rect[3], 1,
                                                                          out[2])
                rect = np.array([r[0][0], r[0][1], r[1][0], r[1][1]])
                self.stages.append([node.layer, win, [node.layer]])
                h, w = out[1], out[2]
                share = (rect[1] - rect[0]) * (rect[3] - rect[2]) / (h * w)
            elif getattr(node.layer, "elementwise", False) and self.stages:
                self.stages[-1][2].append(node.layer)  # runs with the window before it
            else:
                break
            names.append(node.name)
            shares.append(share)
            tensor = node.name
        flops = dict(zip((node.name for node in net.nodes), net.node_flops(shape)))
        total, chain = sum(flops.values()), sum(flops[name] for name in names)
        cone = sum(flops[name] * share for name, share in zip(names, shares))
        #: The forward FLOPs of a step over those of a full pass (the cone of one region).
        self.saving = total / max(1.0, total - chain + cone)
        self.usable = bool(self.stages)
        if not self.usable:
            return
        self.boundary = tensor
        rest = [node for node in net.nodes if node.name not in set(names)]
        self.suffix = Graph(rest, shapes[tensor], input_name=tensor, output=net.output)
        self.in_shapes = [shape]
        for stage in self.stages:  # each stage runs as a chain: the engine fuses what it can
            layers = stage[2]
            stage[0] = Sequential(layers)  # on the full maps, as the network runs it
            stage[2] = Sequential([_direct(layers[0])] + layers[1:])  # on crops
            self.in_shapes.append(tuple(stage[0].tensor_shapes(self.in_shapes[-1])[
                stage[0].output]))

    def group_size(self, itemsize):
        """Samples whose cached activations fit in :data:`GROUP_BYTES`."""
        per = sum(int(np.prod(s)) for s in self.in_shapes) * itemsize
        return max(1, GROUP_BYTES // per)

    def prefix(self, x):
        """The cached activations of ``x``: the input of each stage, then the boundary."""
        acts = [x]
        for full, _, _ in self.stages:
            acts.append(full.forward(acts[-1], check_finite=False))
        return acts

    def update(self, acts, rects, keep=False):
        """Propagate changes of the input rectangles ``rects`` (rows, 4: ``r0, r1, c0, c1``;
        empty where ``r0 >= r1``) through the stages, in place; with ``keep``, returns the
        replaced regions (to restore with :meth:`restore`)."""
        undo = []
        rects = np.asarray(rects, dtype=np.int64)
        for j, (_, win, chain) in enumerate(self.stages):
            src, dst = acts[j], acts[j + 1]
            _, hin, win_w = src.shape[1:]
            _, hout, wout = dst.shape[1:]
            (o0, o1), (q0, q1) = (win.outputs(rects[:, 0], rects[:, 1], 0, hout),
                                  win.outputs(rects[:, 2], rects[:, 3], 1, wout))
            (a0, a1), (b0, b1) = win.inputs(o0, o1, 0, hin), win.inputs(q0, q1, 1, win_w)
            live = (rects[:, 0] < rects[:, 1]) & (rects[:, 2] < rects[:, 3]) & (o0 < o1) & \
                   (q0 < q1)
            keys = np.stack([a1 - a0, b1 - b0], axis=1)
            for size in np.unique(keys[live], axis=0):
                rows = np.flatnonzero(live & (keys == size).all(axis=1))
                crops = np.stack([src[i, :, a0[i]:a1[i], b0[i]:b1[i]] for i in rows])
                y = chain.forward(crops, check_finite=False)
                for n, i in enumerate(rows):
                    r, c = o0[i] - a0[i] // win.s[0], q0[i] - b0[i] // win.s[1]
                    part = y[n, :, r:r + o1[i] - o0[i], c:c + q1[i] - q0[i]]
                    region = (i, slice(None), slice(o0[i], o1[i]), slice(q0[i], q1[i]))
                    if keep:
                        undo.append((j + 1, region, dst[region].copy()))
                    dst[region] = part
            rects = np.stack([np.where(live, o0, 0), np.where(live, o1, 0),
                              np.where(live, q0, 0), np.where(live, q1, 0)], axis=1)
        return undo

    @staticmethod
    def restore(acts, undo):
        for j, region, old in reversed(undo):
            acts[j][region] = old

    def output(self, acts):
        """The network output of the cached activations: the suffix on the boundary."""
        return self.suffix.forward(acts[-1], check_finite=False)


def region_boxes(regions):
    """The bounding box ``(r0, r1, c0, c1)`` in pixels of every region of each sample (all
    channels): ``(n or 1, size, 4)``."""
    labels = regions.labels  # (n or 1, c, h, w)
    h, w = labels.shape[-2:]
    rows = np.broadcast_to(np.arange(h)[:, None], labels.shape[1:]).ravel()
    cols = np.broadcast_to(np.arange(w)[None, :], labels.shape[1:]).ravel()
    out = np.empty((len(labels), regions.size, 4), dtype=np.int64)
    for i, lab in enumerate(labels):
        flat = lab.ravel()
        box = np.tile(np.array([h, -1, w, -1]), (regions.size, 1))
        np.minimum.at(box[:, 0], flat, rows)
        np.maximum.at(box[:, 1], flat, rows)
        np.minimum.at(box[:, 2], flat, cols)
        np.maximum.at(box[:, 3], flat, cols)
        box[:, 1] += 1
        box[:, 3] += 1
        out[i] = box
    return out


def scores(cone, x, t, regions, pos, counts, fill, mode, batch_size=None):
    """The rows of :func:`relprop.metrics.faithfulness._ordered` through the cone: ``(n,
    len(counts))`` scores, the samples a group at a time (``batch_size`` samples, or as many as
    :meth:`Cone.group_size` allows), their steps one after another."""
    from ._base import element_positions

    n = len(x)
    counts = np.asarray(counts)
    below = np.concatenate(([0], counts[:-1]))
    boxes = region_boxes(regions)
    by_rank = np.argsort(pos, axis=1, kind="stable")
    fill = np.broadcast_to(fill, x.shape)
    out = np.empty((n, len(counts)))
    group = batch_size or cone.group_size(x.itemsize)
    for start in range(0, n, group):
        i = np.arange(start, min(n, start + group))
        p = element_positions(regions, pos, i)
        xi, fi = x[i], fill[i]
        if mode == "alone":
            base = xi.copy()
        elif mode == "remove":
            base = np.where(p < counts[0], fi, xi)
        else:
            base = np.where(p < counts[0], xi, fi)
        acts = cone.prefix(np.ascontiguousarray(base, dtype=x.dtype))
        box_rows = boxes if len(boxes) == 1 else boxes[i]
        steps = range(len(counts)) if mode == "alone" else range(1, len(counts))
        if mode != "alone":
            out[i, 0] = t.score(cone.output(acts), i)
        for k in steps:
            lo, hi = (below[k], counts[k]) if mode == "alone" else (counts[k - 1], counts[k])
            rect = _union(box_rows, by_rank[i, lo:hi], regions.count[i] if
                          len(regions.count) > 1 else regions.count[0], lo)
            inputs = _write(acts[0], p, lo, hi, rect, xi if mode == "insert" else fi)
            undo = cone.update(acts, rect, keep=mode == "alone")
            out[i, k] = t.score(cone.output(acts), i)
            if mode == "alone":
                cone.restore(acts, undo)
                for b, region, old in inputs:
                    acts[0][(b,) + region] = old
    return out


def _union(boxes, ranked, count, lo):
    """The bounding box of the regions ``ranked`` (rows, k) of each row (``boxes`` (1 or rows,
    size, 4); empty: ``[0, 0, 0, 0]``); regions at positions at or beyond the row's ``count``
    do not count."""
    b = boxes[0][ranked] if len(boxes) == 1 else \
        boxes[np.arange(len(ranked))[:, None], ranked]
    real = (lo + np.arange(ranked.shape[1]))[None, :] < np.asarray(count).reshape(-1, 1)
    big = np.iinfo(np.int64).max
    r0 = np.where(real, b[..., 0], big).min(axis=1, initial=big)
    r1 = np.where(real, b[..., 1], -1).max(axis=1, initial=-1)
    c0 = np.where(real, b[..., 2], big).min(axis=1, initial=big)
    c1 = np.where(real, b[..., 3], -1).max(axis=1, initial=-1)
    empty = r1 < 0
    return np.stack([np.where(empty, 0, r0), np.where(empty, 0, r1), np.where(empty, 0, c0),
                     np.where(empty, 0, c1)], axis=1)


def _write(x0, p, lo, hi, rect, new):
    """Set the elements at positions ``[lo, hi)`` of each row of ``x0`` to ``new`` (within
    ``rect``); returns what was there (``(row, region, old)``)."""
    old = []
    for b, (r0, r1, c0, c1) in enumerate(rect):
        if r0 >= r1:
            continue
        region = (slice(None), slice(r0, r1), slice(c0, c1))
        inside = p[(b,) + region]
        mask = (inside >= lo) & (inside < hi)
        was = x0[(b,) + region].copy()
        old.append((b, region, was))
        x0[(b,) + region] = np.where(mask, new[(b,) + region], was)
    return old
