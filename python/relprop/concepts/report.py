"""The atlas as a web page (``relprop concepts --report``): ``OUT/index.html``, per node a
table of its most relevant channels, each with its reference samples beside their heatmaps
(cropped to the receptive field of the channel's most relevant neuron) and its top classes.
The rows are sorted by relevance; the links above each table re-sort it (a few lines of
script reading the address's ``#sort=node:key``; without script the page keeps its order)."""
from __future__ import annotations

import html
import os

import numpy as np

from .references import references

#: Pixels of the longer side a reference picture is scaled up to (nearest neighbour).
PICTURE_PIXELS = 72
#: Classes listed per channel.
TOP_CLASSES = 3

_STYLE = """
body { font-family: sans-serif; margin: 1.5em; }
table.atlas { border-collapse: collapse; margin-bottom: 2em; }
table.atlas td, table.atlas th { border: 1px solid #ccc; padding: 4px 6px; vertical-align: top; }
figure { display: inline-block; margin: 2px 6px 2px 0; text-align: center; }
figure img { image-rendering: pixelated; border: 1px solid #eee; }
figcaption { font-size: 11px; color: #333; }
td.num { text-align: right; font-family: monospace; }
td.classes { white-space: nowrap; }
"""

_SCRIPT = """
function relpropSort() {
  var m = /sort=([^:&]+):(relevance|channel)/.exec(decodeURIComponent(location.hash));
  if (!m) return;
  var table = document.querySelector('table.atlas[data-node="' + m[1] + '"]');
  if (!table) return;
  var rows = Array.prototype.slice.call(table.querySelectorAll('tr[data-channel]'));
  rows.sort(function (a, b) {
    if (m[2] === 'channel') return a.dataset.channel - b.dataset.channel;
    return b.dataset.relevance - a.dataset.relevance || a.dataset.channel - b.dataset.channel;
  });
  rows.forEach(function (r) { r.parentNode.appendChild(r); });
}
window.addEventListener('hashchange', relpropSort);
window.addEventListener('DOMContentLoaded', relpropSort);
"""


class _Rows:
    """Samples of :class:`relprop.stream.Inputs` by index, for :func:`references`."""

    def __init__(self, inputs):
        self.inputs = inputs
        self.shape = (inputs.n,) + tuple(inputs.sample_shape)

    def __len__(self):
        return self.inputs.n

    def __getitem__(self, rows):
        rows = np.atleast_1d(rows)
        return np.stack([self.inputs.read(int(i), int(i) + 1)[0] for i in rows])


def channel_shares(atlas, node):
    """Each channel's mean relevance share over the whole dataset, ``(C,)``."""
    counts = atlas.class_counts.astype(np.float64)
    return counts @ atlas.class_relevance[node] / max(counts.sum(), 1)


def write_report(outdir, atlas, net, inputs, composite="epsilon_plus_flat", params=None, *,
                 channels=32, title="", invert=False):
    """Write ``outdir/index.html`` (and its pictures in ``outdir/report/``); returns its path.

    Parameters
    ----------
    outdir : str
    atlas : Atlas
    net : Graph or Sequential
    inputs : relprop.stream.Inputs or array (n, *input_shape)
        The samples the atlas was made of.
    composite, params
        The LRP composite of the reference heatmaps (and its parameters).
    channels : int
        Channels per node: the most relevant (by mean share over the dataset).
    title : str
    invert : bool
        Draw inputs with high values dark (digits).
    """
    from .. import render

    x = _Rows(inputs) if hasattr(inputs, "read") else np.asarray(inputs)
    pics = os.path.join(outdir, "report")
    os.makedirs(pics, exist_ok=True)
    images = len(x.shape) == 4
    body = [f"<h1>{html.escape('relprop concepts: ' + title)}</h1>",
            f"<p>The concept atlas of {atlas.n_samples} samples: per node, its most relevant "
            f"channels (of its mean relevance share over all samples, explained for target "
            f"{html.escape(str(atlas.target))}), each with the {atlas.k} samples in which it is "
            "most relevant. Beside each sample, the channel's heatmap from its most relevant "
            "neuron (red: evidence for, blue: against), both cropped to where that heatmap "
            "lies. Top classes: the classes whose samples give the channel the largest mean "
            "share.</p>"]
    for node in atlas.layers:
        share = channel_shares(atlas, node)
        order = np.lexsort((np.arange(len(share)), -share))[:channels]
        refs = references(atlas, net, x, node, order, composite=composite, crop=images,
                          **(params or {}))
        slug = "".join(ch if ch.isalnum() else "_" for ch in node)
        body.append(f'<h2 id="{html.escape(slug)}">{html.escape(node)}</h2>')
        body.append(f"<p>{len(order)} of {len(share)} channels. Sort by "
                    f'<a href="#sort={html.escape(node)}:relevance">relevance</a> or '
                    f'<a href="#sort={html.escape(node)}:channel">channel</a>.</p>')
        body.append(f'<table class="atlas" data-node="{html.escape(node)}">')
        body.append("<tr><th>channel</th><th>relevance</th><th>top classes</th>"
                    "<th>reference samples (input | heatmap)</th></tr>")
        rel_class = atlas.class_relevance[node]
        seen = atlas.class_counts > 0
        for j, c in enumerate(order):
            ranked = [k for k in np.lexsort((np.arange(len(seen)), -rel_class[:, c])) if seen[k]]
            classes = "<br>".join(f"class {k}: {rel_class[k, c]:.3g}"
                                  for k in ranked[:TOP_CLASSES])
            cells = []
            for b in range(refs.indices.shape[1]):
                idx = int(refs.indices[j, b])
                val = float(atlas.relmax[node][1][c, b])
                fig = f"#{idx}<br>{val:.3g}"
                if images:
                    r1, r2, c1, c2 = refs.boxes[j, b]
                    sample = x[np.array([idx])][0]
                    name = f"{slug}_c{c}_{b}"
                    pic = render.image(sample[None], invert=invert)[0][r1:r2, c1:c2]
                    heat = render.heatmap(refs.heatmaps[j, b][None])[0][r1:r2, c1:c2]
                    scale = max(1, PICTURE_PIXELS // max(pic.shape[:2]))
                    for kind, rgb in (("input", pic), ("heatmap", heat)):
                        render.save_png(os.path.join(pics, f"{name}_{kind}.png"),
                                        render.upscale(rgb, scale))
                    h, w = pic.shape[0] * scale, pic.shape[1] * scale
                    cells.append(
                        f'<figure><img src="report/{name}_input.png" width="{w}" '
                        f'height="{h}" alt="sample {idx}" class="input">'
                        f'<img src="report/{name}_heatmap.png" width="{w}" height="{h}" '
                        f'alt="heatmap of channel {c} on sample {idx}" class="heatmap">'
                        f"<figcaption>{fig}</figcaption></figure>")
                else:
                    cells.append(f"<figure><figcaption>{fig}</figcaption></figure>")
            body.append(f'<tr data-channel="{c}" data-relevance="{float(share[c])!r}">'
                        f'<td class="num">{c}</td><td class="num">{share[c]:.4g}</td>'
                        f'<td class="classes">{classes}</td><td>{"".join(cells)}</td></tr>')
        body.append("</table>")
    page = os.path.join(outdir, "index.html")
    with open(page, "w", encoding="utf-8") as fh:
        fh.write("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\">"
                 f"<title>{html.escape('relprop concepts: ' + title)}</title>"
                 f"<style>{_STYLE}</style><script>{_SCRIPT}</script></head><body>\n"
                 + "\n".join(body) + "\n</body></html>\n")
    return page
