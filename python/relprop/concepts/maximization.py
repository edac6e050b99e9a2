"""Relevance and activation maximization over a dataset: the concept :class:`Atlas`.

Per channel of every named node, the ``k`` samples in which the channel is most relevant (and
most active), ranked as zennit-crp's ``FeatureVisualization`` ranks them with its defaults
(``ChannelConcept``, ``max_target="sum"``, ``abs_norm=True``); ties go to the lower sample
index.  A dataset is processed chunk by chunk, and every partial result (the top-k tables of
a chunk, the exact sums behind ``class_relevance``) merges with any other in any grouping to
the same bits: the atlas depends neither on batch nor chunk sizes, threads or workers.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .._common import (
    PRED,
    _batch_threads,
    _side_by_side,
    check_batch_size,
    is_int,
    pred_classes,
)
from .._validate import as_int
from ..composites import as_composite
from .relevance import Condition, ConditionedWalk, _node_indices, channel_sums

#: The atlas file format (``Atlas.save``): a ``relprop.io`` container whose description is
#: ``{"format": "relprop-atlas", "version": 1, "layers": [...], "k", "n_samples", "target",
#: "abs_norm", "n_classes"}`` and whose arrays are ``"{mode}.{i}.{indices|values|neurons}"``
#: for mode ``relmax``/``actmax`` and layer ``i``, ``"class_relevance.{i}"`` and
#: ``"class_counts"``.
ATLAS_VERSION = 1
LABEL = "label"


@dataclass
class Atlas:
    """Reference samples of every channel of some nodes over a dataset.

    Attributes
    ----------
    layers : tuple of str
        The nodes, as named in :func:`atlas`.
    relmax, actmax : dict of str to (indices, values)
        Per node, arrays ``(C, k)``: the ``k`` sample indices (in the whole dataset) in which
        each channel's relevance (activation) is highest, best first, and those values (the
        channel's sum over space, divided by the sample's sum over channels of absolute values
        when ``abs_norm``); ties to the lower sample index.  ``k`` is at most the number of
        samples.
    relmax_neurons, actmax_neurons : dict of str to array (C, k)
        The flat position (over the node's spatial axes; 0 for a Dense node) of the channel's
        most relevant (most active) neuron in each of those samples: where
        :func:`relprop.concepts.references` seeds its receptive-field heatmaps.
    class_relevance : dict of str to array (n_classes, C)
        Per explained class (the label, the prediction or the fixed class), the mean over the
        samples explained for it of each channel's relevance share (the abs-normalized channel
        relevance, whatever ``abs_norm``; 0 for a class without samples).
    class_counts : array (n_classes,)
        How many samples were explained for each class.
    n_samples : int
    target : str or int
        "label", "pred" or the class.
    abs_norm : bool
    """

    layers: tuple
    relmax: dict
    actmax: dict
    relmax_neurons: dict
    actmax_neurons: dict
    class_relevance: dict
    class_counts: np.ndarray
    n_samples: int
    target: object
    abs_norm: bool = True
    k: int = field(default=0)

    def save(self, path):
        """Write the atlas to ``path`` (.npz, loadable with ``allow_pickle=False``)."""
        from ..io import write_model

        desc = {"format": "relprop-atlas", "version": ATLAS_VERSION, "layers": list(self.layers),
                "k": self.k, "n_samples": self.n_samples, "target": self.target,
                "abs_norm": self.abs_norm, "n_classes": len(self.class_counts)}
        arrays = {"class_counts": self.class_counts}
        for i, name in enumerate(self.layers):
            for mode, table, neurons in (("relmax", self.relmax, self.relmax_neurons),
                                         ("actmax", self.actmax, self.actmax_neurons)):
                arrays[f"{mode}.{i}.indices"], arrays[f"{mode}.{i}.values"] = table[name]
                arrays[f"{mode}.{i}.neurons"] = neurons[name]
            arrays[f"class_relevance.{i}"] = self.class_relevance[name]
        write_model(path, desc, arrays)

    @classmethod
    def load(cls, path) -> Atlas:
        """Read an atlas written by :meth:`save` (never unpickles; a damaged file raises
        ValueError)."""
        from ..io import read_model

        desc, arrays = read_model(path)
        try:
            if desc.get("format") != "relprop-atlas" or desc.get("version") != ATLAS_VERSION:
                raise ValueError("not a relprop atlas (version 1)")
            layers = tuple(desc["layers"])
            tables = {m: ({}, {}) for m in ("relmax", "actmax")}
            rel = {}
            for i, name in enumerate(layers):
                for mode, (table, neurons) in tables.items():
                    table[name] = (arrays[f"{mode}.{i}.indices"], arrays[f"{mode}.{i}.values"])
                    neurons[name] = arrays[f"{mode}.{i}.neurons"]
                rel[name] = arrays[f"class_relevance.{i}"]
            return cls(layers, tables["relmax"][0], tables["actmax"][0], tables["relmax"][1],
                       tables["actmax"][1], rel, arrays["class_counts"],
                       int(desc["n_samples"]), desc["target"], bool(desc["abs_norm"]),
                       int(desc["k"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            raise ValueError(f"{path}: not a relprop atlas ({type(exc).__name__}: {exc})") \
                from None


def atlas(net, x, layers, composite="epsilon_plus_flat", *, target=LABEL, labels=None, k=8,
          abs_norm=True, batch_size=None, check_finite=True, **rule_params) -> Atlas:
    """Relevance and activation maximization: the concept atlas of a dataset.

    Each sample is explained for its target (one LRP pass, zennit-crp's
    ``FeatureVisualization.run`` with ``CondAttribution`` and conditions ``{"y": label}``); per
    channel of each named node, the channel's relevance is the relevance arriving at the node's
    output summed over space and its activation the node's output (before any following ReLU)
    summed over space, each divided by the sample's sum over channels of absolute values (+
    1e-10) when ``abs_norm`` (zennit-crp's ``max_target="sum"``, ``abs_norm=True``).

    Parameters
    ----------
    net : Graph or Sequential
    x : array (n, *input_shape)
        The dataset (a NumPy array or memory map: read ``batch_size`` samples at a time).
    layers : sequence of str
        Node names or aliases.
    composite : Composite, Rule or str
    target : "label", "pred" or int
        "label" (default, as zennit-crp uses the dataset's labels): ``labels`` required.
    labels : array (n,) of ints, optional
    k : int
        Reference samples kept per channel.
    abs_norm : bool
    batch_size : int, optional
        Samples per pass (and per chunk in memory); 256 by default.
    check_finite : bool

    Returns
    -------
    Atlas
    """
    if not hasattr(x, "shape") or len(x.shape) < 2:
        raise ValueError(f"x must be a batch (n, *input_shape), got {type(x).__name__}")
    part = AtlasBuilder(net, x.shape[1:], layers, composite, target, k, abs_norm,
                        check_finite, **rule_params)
    n = x.shape[0]
    labels = part.check_labels(labels, n)
    step = check_batch_size(batch_size, 256)
    starts = range(0, n, step)

    def run(start):
        stop = min(n, start + step)
        return part(x[start:stop], start, None if labels is None else labels[start:stop])

    # small batches run side by side, a batch per thread (as the methods' batches do)
    threads = _batch_threads(net, x, len(starts), min(step, n))
    acc = None
    for chunk in (map(run, starts) if threads == 1 else _side_by_side(run, starts, threads)):
        acc = chunk if acc is None else acc.merge(chunk)
    return acc.finish(part)


class AtlasBuilder:
    """What :func:`atlas` (and ``relprop.dask.atlas``) run per chunk: checked arguments, and a
    call ``(x_chunk, first sample index, labels_chunk) -> Partial``."""

    def __init__(self, net, sample_shape, layers, composite, target, k, abs_norm,
                 check_finite=True, **rule_params):
        self.net = net
        self.shapes = net.tensor_shapes(tuple(sample_shape))
        self.nodes = _node_indices(net, layers, "layers")
        if not self.nodes:
            raise ValueError("layers names no node")
        out = self.shapes[net.output]
        if len(out) != 1:
            raise ValueError(f"atlas needs an output of shape (n, n_classes), the network's is "
                             f"(n, {', '.join(map(str, out))})")
        self.n_classes = out[0]
        if isinstance(target, str):
            if target not in (LABEL, PRED):
                raise ValueError(f"target must be 'label', 'pred' or a class, got {target!r}")
        elif not is_int(target):
            raise TypeError(f"target must be 'label', 'pred' or a class, got {target!r}")
        elif not 0 <= target < self.n_classes:
            raise ValueError(f"target {target} is out of range for {self.n_classes} outputs")
        self.target = target if isinstance(target, str) else int(target)
        self.k = as_int(k, "k", minimum=1)
        self.abs_norm = bool(abs_norm)
        self.check_finite = check_finite
        rules = as_composite(composite, **rule_params).rules(net)
        self.walk = ConditionedWalk(net, rules, [Condition(None, {})], self.shapes)
        #: what makes the same builder elsewhere: AtlasBuilder(net, shape, *spec[:-1], **spec[-1])
        self.spec = (tuple(self.nodes), composite, self.target, self.k, self.abs_norm,
                     dict(rule_params))

    def run(self, x, start, labels, batch_size):
        """The :class:`Partial` of ``x`` (samples ``start:start + len(x)``), in passes of at
        most ``batch_size`` samples."""
        acc = None
        for lo in range(0, len(x), batch_size):
            hi = min(len(x), lo + batch_size)
            part = self(x[lo:hi], start + lo, None if labels is None else labels[lo:hi])
            acc = part if acc is None else acc.merge(part)
        return acc

    def check_labels(self, labels, n):
        if self.target != LABEL:
            return None if labels is None else self._labels(labels, n)
        if labels is None:
            raise ValueError("target='label' needs labels= (one class per sample), or pass "
                             "target='pred'")
        return self._labels(labels, n)

    def _labels(self, labels, n):
        y = np.asarray(labels)
        if y.ndim != 1 or y.dtype.kind not in "iu":
            raise TypeError(f"labels must be a 1-d array of ints, got dtype {y.dtype} and shape "
                            f"{y.shape}")
        if len(y) != n:
            raise ValueError(f"labels has {len(y)} entries for {n} samples")
        if len(y) and (y.min() < 0 or y.max() >= self.n_classes):
            bad = int(y[(y < 0) | (y >= self.n_classes)][0])
            raise ValueError(f"label {bad} is out of range for {self.n_classes} outputs")
        return y.astype(np.int64)

    def __call__(self, x, start, labels=None) -> Partial:
        x = self.net.check_input(np.asarray(x), self.check_finite)
        if labels is not None:
            labels = self._labels(labels, len(x))
        classes = []

        def make_seed(out):
            if self.target == LABEL:
                c = labels
            elif self.target == PRED:
                c = pred_classes(PRED, out)
            else:
                c = np.full(len(out), self.target)
            classes.append(np.asarray(c, dtype=np.int64))
            s = np.zeros_like(out)
            rows = np.arange(len(out))
            s[rows, classes[0]] = out[rows, classes[0]]
            return s

        ids = set(self.nodes.values())
        _, _, rel, act = self.walk.run(x, make_seed, ids, ids)
        index = np.arange(start, start + len(x), dtype=np.int64)
        counts = np.bincount(classes[0], minlength=self.n_classes).astype(np.int64)
        part = Partial({}, {}, counts, self.k)
        for name, i in self.nodes.items():
            r, a = rel[i], act[i]
            rs, as_ = channel_sums(r, self.abs_norm), channel_sums(a, self.abs_norm)
            part.tables[name] = (_top(rs, index, _argmax(r), self.k),
                                 _top(as_, index, _argmax(a), self.k))
            shares = rs if self.abs_norm else channel_sums(r, True)
            part.sums[name] = ExactSum.of(shares.astype(np.float64), classes[0], self.n_classes)
        return part


@dataclass
class Partial:
    """The atlas of some samples: top-k tables per node and mode, exact class sums, counts.
    :meth:`merge` is associative and commutative, bit for bit."""

    tables: dict  # name -> (relevance table, activation table); a table: (values, index, neuron)
    sums: dict  # name -> ExactSum (n_classes, C)
    counts: np.ndarray  # (n_classes,)
    k: int

    def merge(self, other) -> Partial:
        tables = {name: tuple(_merge(a, b, self.k) for a, b in zip(t, other.tables[name]))
                  for name, t in self.tables.items()}
        sums = {name: s + other.sums[name] for name, s in self.sums.items()}
        return Partial(tables, sums, self.counts + other.counts, self.k)

    def finish(self, builder) -> Atlas:
        tables = {"rel": ({}, {}), "act": ({}, {})}
        rel_class = {}
        for name in builder.nodes:
            for mode, (v, i, nrn) in zip(("rel", "act"), self.tables[name]):
                tables[mode][0][name] = (i.T.copy(), v.T.copy())
                tables[mode][1][name] = nrn.T.copy()
            rel_class[name] = self.sums[name].mean(self.counts)
        n = int(self.counts.sum())
        k = tables["rel"][0][next(iter(builder.nodes))][0].shape[1]
        return Atlas(tuple(builder.nodes), tables["rel"][0], tables["act"][0], tables["rel"][1],
                     tables["act"][1], rel_class, self.counts.copy(), n, builder.target,
                     builder.abs_norm, k)


def _argmax(r):
    """Per sample and channel, the flat spatial position of the largest value (the first)."""
    flat = r.reshape(r.shape[0], r.shape[1], -1)
    return flat.argmax(axis=2).astype(np.int64)


def _top(values, index, neurons, k):
    """The top-k table of one chunk: ``(values, sample index, neuron)``, each ``(k', C)``
    (k' = min(k, rows)), best first per channel, ties to the lower index."""
    return _select(values, np.broadcast_to(index[:, None], values.shape), neurons, k)


def _select(values, index, neurons, k):
    # rank by value (descending), then sample index (ascending): a total order, so any
    # grouping of merges gives the same table
    order = np.lexsort((index, -values), axis=0)[:k]
    take = lambda a: np.take_along_axis(a, order, axis=0)  # noqa: E731
    return take(values), take(index), take(neurons)


def _merge(a, b, k):
    return _select(*(np.concatenate([u, v]) for u, v in zip(a, b)), k)


class ExactSum:
    """Sums per (group, column) of values in [-1, 1] (channel relevance shares), each rounded to
    a multiple of 2**-52 and added as integers (two int64 limbs: ``hi * 2**32 + lo``): adding
    partial sums in any grouping gives the same integers, so the means over a dataset do not
    depend on how it was cut."""

    SCALE = 2.0 ** 52
    ROWS = 1024  # rows summed in one int64 pass: 1024 * 2**52 < 2**63

    def __init__(self, hi, lo):
        self.hi, self.lo = hi, lo  # int64 (groups, columns); lo in [0, 2**32)

    @classmethod
    def of(cls, values, groups, n_groups):
        """``values`` (rows, columns) in [-1, 1], summed per group (``groups``: each row's)."""
        q = np.rint(np.clip(values, -1, 1) * cls.SCALE).astype(np.int64)
        out = cls(*(np.zeros((n_groups, values.shape[1]), dtype=np.int64) for _ in range(2)))
        for lo in range(0, len(q), cls.ROWS):
            s = np.zeros_like(out.hi)
            np.add.at(s, groups[lo:lo + cls.ROWS], q[lo:lo + cls.ROWS])
            out = out + cls(s >> 32, s & 0xFFFFFFFF)
        return out

    def __add__(self, other):
        lo = self.lo + other.lo
        return ExactSum(self.hi + other.hi + (lo >> 32), lo & 0xFFFFFFFF)

    def mean(self, counts):
        """The means (0 where a group has no rows): a function of the exact sums."""
        total = self.hi * 2.0 ** -20 + self.lo * 2.0 ** -52
        c = np.asarray(counts, dtype=np.float64)[:, None]
        return np.divide(total, c, out=np.zeros_like(total), where=c > 0)
