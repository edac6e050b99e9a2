"""Reference heatmaps of a channel on its reference samples, restricted to the receptive field of
its most relevant (or most active) neuron, and their crops: zennit-crp's
``FeatureVisualization.get_max_reference(..., rf=True)`` and the crop of its plot helpers
(``crp.image.get_crop_range``)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .._common import check_batch_size, is_int
from ..composites import as_composite
from .relevance import Condition, ConditionedWalk, _node_indices

#: The defaults of zennit-crp's plot helpers: a Gaussian blur of this window (sigma = 0.15 *
#: window + 0.35, torchvision's default), and the crop keeps where the blurred, max-normalized
#: heatmap exceeds the threshold.
CROP_KERNEL = 19
CROP_THRESHOLD = 0.1


@dataclass
class References:
    """What :func:`references` returns.

    Attributes
    ----------
    node : str
    mode : str
        "relevance" or "activation".
    channels : array (m,)
    indices : array (m, k)
        The reference samples of each channel (indices into ``x``), best first.
    neurons : array (m, k)
        The flat spatial position of the neuron each heatmap starts from.
    heatmaps : array (m, k, *input_shape)
        The channel's heatmap on each reference sample, from that neuron alone.
    boxes : array (m, k, 4) of int
        ``(row1, row2, col1, col2)``: the crop of each image and heatmap is
        ``[..., row1:row2, col1:col2]`` (the whole image where nothing is cropped).
    """

    node: str
    mode: str
    channels: np.ndarray
    indices: np.ndarray
    neurons: np.ndarray
    heatmaps: np.ndarray
    boxes: np.ndarray


def references(atlas, net, x, node, channels, *, mode="relevance", crop=True,
               composite="epsilon_plus_flat", batch_size=None, crop_threshold=CROP_THRESHOLD,
               kernel_size=CROP_KERNEL, check_finite=True, **rule_params) -> References:
    """The heatmaps of channels on their reference samples, as zennit-crp's
    ``get_max_reference(channels, node, mode, (0, k), composite, rf=True)`` computes them:
    the backward pass starts at ``node``, seeded with the channel's activation at its most
    relevant (``mode="activation"``: most active) neuron in that sample and zero elsewhere, so
    the heatmap lives in that neuron's receptive field.

    Parameters
    ----------
    atlas : Atlas
        From :func:`relprop.concepts.atlas` of ``net`` on ``x`` (``node`` among its layers).
    net : Graph or Sequential
    x : array (n, *input_shape)
        The dataset the atlas was made of (only the reference samples are read: ``x[rows]``
        with an array of row indices, so a memory map or any object that indexes so works).
    node : str
    channels : int or sequence of ints
    mode : "relevance" or "activation"
    crop : bool
        Crop boxes as zennit-crp's ``vis_img_heatmap`` crops (see :func:`crop_box`); False:
        the whole image.
    composite : Composite, Rule or str
    batch_size : int, optional
        Reference samples per pass.
    crop_threshold, kernel_size : float, int
        Of :func:`crop_box`.

    Returns
    -------
    References
    """
    if mode not in ("relevance", "activation"):
        raise ValueError(f"mode must be 'relevance' or 'activation', got {mode!r}")
    if node not in atlas.layers:
        raise ValueError(f"node {node!r} is not in the atlas (its layers: {list(atlas.layers)})")
    table, neurons = ((atlas.relmax, atlas.relmax_neurons) if mode == "relevance"
                      else (atlas.actmax, atlas.actmax_neurons))
    idx_all, neu_all = table[node][0], neurons[node]
    chans = np.atleast_1d(np.asarray(channels))
    if chans.ndim != 1 or not all(is_int(c) for c in chans.tolist()):
        raise TypeError(f"channels must be an int or a list of ints, got {channels!r}")
    if len(chans) and (chans.min() < 0 or chans.max() >= len(idx_all)):
        raise ValueError(f"channel out of range for {len(idx_all)} channels: {channels!r}")
    if len(x) != atlas.n_samples:
        raise ValueError(f"x has {len(x)} samples, the atlas was made of {atlas.n_samples}")
    i = _node_indices(net, [node], "node")[node]
    rules = as_composite(composite, **rule_params).rules(net)
    walk = ConditionedWalk(net, rules, [Condition(None, {})], net.tensor_shapes(x.shape[1:]))
    idx, neu = idx_all[chans], neu_all[chans]
    m, k = idx.shape
    rows = idx.ravel()
    read = np.unique(rows)  # sorted: each reference sample read once
    xs = net.check_input(np.asarray(x[read]), check_finite)
    where = np.searchsorted(read, rows)
    step = check_batch_size(batch_size, len(rows))
    heat = np.empty((len(rows),) + xs.shape[1:], xs.dtype)
    for lo in range(0, len(rows), step):
        sl = slice(lo, min(len(rows), lo + step))
        heat[sl] = _from_neuron(walk, i, xs[where[sl]], np.repeat(chans, k)[sl],
                                neu.ravel()[sl])
    heat = heat.reshape((m, k) + xs.shape[1:])
    boxes = np.empty((m, k, 4), dtype=np.int64)
    for a in range(m):
        for b in range(k):
            h = heat[a, b]
            whole = (0, h.shape[-2], 0, h.shape[-1]) if h.ndim >= 2 else (0, 0, 0, 0)
            boxes[a, b] = (crop_box(h.sum(axis=0) if h.ndim == 3 else h, crop_threshold,
                                    kernel_size, xs[where[a * k + b]])
                           if crop and h.ndim in (2, 3) else whole)
    return References(node, mode, chans, idx, neu, heat, boxes)


def _from_neuron(walk, i, x, channels, neurons):
    """Input relevance of a walk that starts at node ``i``, seeded with its output at
    (channel, flat neuron) of each row and zero elsewhere (zennit-crp's ``mask_rf`` with
    ``start_layer``)."""

    def seed(a):
        flat = a.reshape(len(a), a.shape[1], -1)
        out = np.zeros_like(flat)
        rows = np.arange(len(a))
        out[rows, channels, neurons] = flat[rows, channels, neurons]
        return out.reshape(a.shape)

    return walk.run(x, seed, start=i)[1]


def crop_box(heatmap, threshold=CROP_THRESHOLD, kernel_size=CROP_KERNEL, image=None):
    """The crop of zennit-crp's ``vis_img_heatmap(..., rf=True)``: ``(row1, row2, col1,
    col2)`` for ``[..., row1:row2, col1:col2]``.

    The heatmap ``(h, w)`` is blurred (a ``kernel_size`` Gaussian with sigma ``0.15 *
    kernel_size + 0.35``, reflected at the borders: torchvision's ``gaussian_blur``), divided by
    its maximum (+ 1e-10), and the rows and columns where it exceeds ``threshold`` bound the
    crop (``get_crop_range``; its end indices are those of the last such row and column, which
    the slice leaves out, as zennit-crp does).  Where that is empty, or the cropped heatmap (or
    ``image``) sums to zero, the whole image: ``(0, h, 0, w)``.
    """
    h = np.asarray(heatmap, dtype=np.float64)
    blurred = gaussian_blur(h, kernel_size)
    blurred = blurred / (blurred.max() + 1e-10)
    rows, cols = np.nonzero(blurred > threshold)
    whole = (0, h.shape[0], 0, h.shape[1])
    if len(rows) == 0:
        r1, r2, c1, c2 = 0, -1, 0, -1
    else:
        r1, r2, c1, c2 = rows.min(), rows.max(), cols.min(), cols.max()
        if r1 >= r2 and c1 >= c2:
            r1, r2, c1, c2 = 0, -1, 0, -1
    r2 = r2 % h.shape[0] if r2 < 0 else r2
    c2 = c2 % h.shape[1] if c2 < 0 else c2
    if h[r1:r2, c1:c2].sum() == 0 or (image is not None and
                                       np.asarray(image)[..., r1:r2, c1:c2].sum() == 0):
        return whole
    return (int(r1), int(r2), int(c1), int(c2))


def gaussian_blur(h, kernel_size=CROP_KERNEL):
    """torchvision's ``gaussian_blur`` of a 2-d array with its default sigma: a separable
    Gaussian kernel, the borders reflected (NumPy's "reflect", also where the window is wider
    than the image, which torch refuses)."""
    sigma = 0.15 * kernel_size + 0.35
    t = np.linspace(-(kernel_size - 1) / 2, (kernel_size - 1) / 2, kernel_size)
    g = np.exp(-0.5 * (t / sigma) ** 2)
    g /= g.sum()
    r = kernel_size // 2
    p = np.pad(h, r, mode="reflect")
    rows = sum(g[j] * p[j:j + h.shape[0], :] for j in range(kernel_size))
    return sum(g[j] * rows[:, j:j + h.shape[1]] for j in range(kernel_size))
