"""Render relevance maps as RGB images: a symmetric blue-white-red colormap, overlays, grids, PNG.

Everything here is NumPy and the standard library (:func:`save_png` writes PNG files with
``zlib``; :func:`write_html` writes a labelled grid of them as a plain HTML page); only a
colormap name other than the built-in ones needs matplotlib.

Colours are scaled per sample by the largest magnitude ``max |R|``: with the default
``cmap="bwr"``, ``R = 0`` is exactly white ``(255, 255, 255)``, ``R = +max|R|`` pure red
``(255, 0, 0)`` and ``R = -max|R|`` pure blue ``(0, 0, 255)``, linear in between.

Example
-------
>>> import relprop, relprop.render as rr
>>> net = relprop.models.digits_cnn(); x, y = relprop.models.digits_data()
>>> R = relprop.lrp(net, x[:8], y[:8], "epsilon_plus_flat")
>>> rr.save_png("heatmaps.png", rr.grid(rr.heatmap(R), scale=16))  # doctest: +SKIP
"""
from __future__ import annotations

import html
import os
import struct
import zlib
from dataclasses import dataclass
from urllib.parse import quote

import numpy as np

from .methods import pool_channels

#: Built-in colormaps: value in [-1, 1] -> RGB in [0, 1].
CMAPS = ("bwr", "gray")


def _bwr(v):
    """Blue (-1) - white (0) - red (+1), linear in each half; 0 maps to exactly white."""
    pos, neg = np.clip(v, 0, 1), np.clip(-v, 0, 1)
    return np.stack([1 - neg, 1 - pos - neg, 1 - pos], axis=-1)


def _gray(v):
    """Black (-1) to white (+1)."""
    g = (np.clip(v, -1, 1) + 1) / 2
    return np.stack([g, g, g], axis=-1)


def _colormap(name):
    if name == "bwr":
        return _bwr
    if name == "gray":
        return _gray
    if not isinstance(name, str):
        raise TypeError(f"cmap must be a colormap name, got {type(name).__name__}")
    try:
        import matplotlib
    except ImportError:
        raise ImportError(f"colormap {name!r} needs matplotlib (pip install matplotlib); "
                          f"built-in colormaps: {', '.join(CMAPS)}") from None
    try:
        cm = matplotlib.colormaps[name]
    except KeyError:
        raise ValueError(f"unknown colormap {name!r}; built-in: {', '.join(CMAPS)}, or any "
                         "matplotlib colormap name") from None
    return lambda v: cm((np.clip(v, -1, 1) + 1) / 2)[..., :3]


def _maps(R, pool):
    """Relevance as a batch of 2-D maps (n, h, w), and whether the input was a single map."""
    R = np.asarray(R)
    if R.dtype.kind not in "iuf":
        raise TypeError(f"R must be a real array, got dtype {R.dtype}")
    if R.ndim == 2:
        return R[None].astype(np.float64), True
    if R.ndim == 3:
        return R.astype(np.float64), False
    if R.ndim == 4:
        return pool_channels(R.astype(np.float64), pool), False
    raise ValueError(f"R must be a map (h, w), a batch of maps (n, h, w) or of images "
                     f"(n, c, h, w); got shape {R.shape}")


def _scale(maps, symmetric):
    """Per-sample scaling of (n, h, w) maps to [-1, 1]."""
    if not np.isfinite(maps).all():
        raise ValueError("R contains NaN or infinite values")
    if symmetric:
        m = np.abs(maps).max(axis=(1, 2), keepdims=True)
        return maps / np.where(m > 0, m, 1)
    lo = maps.min(axis=(1, 2), keepdims=True)
    hi = maps.max(axis=(1, 2), keepdims=True)
    span = np.where(hi > lo, hi - lo, 1)
    return np.where(hi > lo, 2 * (maps - lo) / span - 1, 0)


def _to_uint8(rgb):
    return np.rint(np.clip(rgb, 0, 1) * 255).astype(np.uint8)


def image(x, *, invert=False):
    """Input images as uint8 RGB for display, each sample scaled to its own min..max.

    Parameters
    ----------
    x : array (h, w), (n, h, w) or (n, c, h, w)
        One channel is shown in gray, three as RGB; other channel counts are averaged to gray.
    invert : bool
        Show high values dark (e.g. digits as dark ink on white).

    Returns
    -------
    uint8 array (n, h, w, 3), or (h, w, 3) for a single (h, w) image.
    """
    x = np.asarray(x, dtype=np.float64)
    single = x.ndim == 2
    if single:
        x = x[None]
    if x.ndim == 3:
        x = x[:, None]
    if x.ndim != 4:
        raise ValueError(f"x must be (h, w), (n, h, w) or (n, c, h, w); got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if x.shape[1] != 3:
        x = x.mean(axis=1, keepdims=True)
    lo = x.min(axis=(1, 2, 3), keepdims=True)
    hi = x.max(axis=(1, 2, 3), keepdims=True)
    v = (x - lo) / np.where(hi > lo, hi - lo, 1)
    if invert:
        v = 1 - v
    rgb = np.broadcast_to(v, (v.shape[0], 3) + v.shape[2:]).transpose(0, 2, 3, 1)
    out = _to_uint8(rgb)
    return out[0] if single else out


def heatmap(R, *, cmap="bwr", pool="sum", symmetric=True, overlay=None, alpha=0.7,
            invert_overlay=False):
    """Relevance maps as uint8 RGB images.

    Parameters
    ----------
    R : array (h, w), (n, h, w) or (n, c, h, w)
        Relevance; channels are pooled with :func:`relprop.pool_channels` (``pool``).
    cmap : str
        "bwr" (blue-white-red, default), "gray", or a matplotlib colormap name (evaluated on
        ``[-1, 1]`` mapped to ``[0, 1]``).
    pool : {"sum", "abs", "max"}
        How channels are pooled (see :func:`relprop.pool_channels`).
    symmetric : bool
        Scale each sample by ``max |R|`` so that 0 is the colormap's centre (white for bwr).
        With ``False`` each sample's min..max spans the whole colormap.
    overlay : array, optional
        Input images to show under the heatmap, shaped like ``R`` (``(n, c, h, w)``,
        ``(n, h, w)`` or ``(h, w)``); shown in gray (or RGB for three channels) scaled to their
        own range.  Each pixel mixes image and colour by ``alpha * |v|``, where ``v`` is the
        scaled relevance: zero relevance shows the image, the strongest the colour with opacity
        ``alpha``.
    alpha : float
        Opacity of the colour at the strongest relevance, in [0, 1].
    invert_overlay : bool
        Show the overlay's high values dark (see :func:`image`).

    Returns
    -------
    uint8 array (n, h, w, 3), or (h, w, 3) for a single (h, w) map.

    Raises
    ------
    ValueError
        Bad shapes, NaN/Inf, an unknown colormap or pooling, ``alpha`` outside [0, 1].
    """
    maps, single = _maps(R, pool)
    v = _scale(maps, symmetric)
    rgb = _colormap(cmap)(v)
    if overlay is not None:
        if not 0 <= float(alpha) <= 1:
            raise ValueError(f"alpha must be in [0, 1], got {alpha}")
        img = image(overlay, invert=invert_overlay)
        if single and img.ndim == 3:
            img = img[None]
        if img.shape[:3] != maps.shape:
            raise ValueError(f"overlay gives images of shape {img.shape[1:3]} for {img.shape[0]} "
                             f"samples, but R gives maps {maps.shape[1:]} for {maps.shape[0]}")
        w = float(alpha) * np.abs(v)[..., None]
        rgb = (1 - w) * (img / 255.0) + w * rgb
    out = _to_uint8(rgb)
    return out[0] if single else out


def grid(images, ncols=None, *, pad=1, pad_value=255, scale=1):
    """Tile RGB images into one image.

    Parameters
    ----------
    images : uint8 array (n, h, w, 3) or (rows, cols, h, w, 3), or a list of (h, w, 3)
        Images of one size.  A 5-D array gives its own rows and columns.
    ncols : int, optional
        Columns for a flat list (default: about ``sqrt(n)``).
    pad : int
        Pixels between tiles (and around), after scaling.
    pad_value : int
        Gray level of the padding.
    scale : int
        Nearest-neighbour upscaling of every tile (8x8 maps need about 16).

    Returns
    -------
    uint8 array (H, W, 3)
    """
    a = np.asarray(images)
    if a.dtype != np.uint8:
        raise TypeError(f"grid takes uint8 RGB images (from heatmap/image), got dtype {a.dtype}")
    if a.ndim == 4:
        n = a.shape[0]
        if n == 0:
            raise ValueError("grid needs at least one image")
        cols = int(ncols) if ncols else int(np.ceil(np.sqrt(n)))
        rows = -(-n // cols)
        full = np.full((rows * cols,) + a.shape[1:], pad_value, dtype=np.uint8)
        full[:n] = a
        a = full.reshape((rows, cols) + a.shape[1:])
    if a.ndim != 5 or a.shape[-1] != 3:
        raise ValueError("grid takes images (n, h, w, 3) or (rows, cols, h, w, 3); got shape "
                         f"{a.shape}")
    scale, pad = int(scale), int(pad)
    if scale < 1 or pad < 0:
        raise ValueError(f"scale must be >= 1 and pad >= 0, got scale={scale}, pad={pad}")
    if scale > 1:
        a = a.repeat(scale, axis=2).repeat(scale, axis=3)
    rows, cols, h, w, _ = a.shape
    out = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, 3), pad_value, np.uint8)
    for r in range(rows):
        for c in range(cols):
            y0, x0 = pad + r * (h + pad), pad + c * (w + pad)
            out[y0:y0 + h, x0:x0 + w] = a[r, c]
    return out


def upscale(rgb, scale):
    """Nearest-neighbour upscaling of an image (h, w, 3) or a batch (n, h, w, 3)."""
    rgb = np.asarray(rgb)
    scale = int(scale)
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}")
    return rgb.repeat(scale, axis=-3).repeat(scale, axis=-2)


def png_bytes(rgb) -> bytes:
    """A uint8 image ``(h, w, 3)`` (RGB) or ``(h, w)`` (gray) encoded as PNG (zlib, no filter).

    Written with the standard library only, so heatmaps can be saved without Pillow.
    """
    rgb = np.asarray(rgb)
    if rgb.dtype != np.uint8:
        raise TypeError(f"PNG images must be uint8, got dtype {rgb.dtype}")
    if not (rgb.ndim == 2 or (rgb.ndim == 3 and rgb.shape[2] == 3)) or 0 in rgb.shape:
        raise ValueError(f"a PNG image must be (h, w, 3) or (h, w), got shape {rgb.shape}")
    h, w = rgb.shape[:2]
    rows = np.ascontiguousarray(rgb).reshape(h, -1)
    raw = np.concatenate([np.zeros((h, 1), np.uint8), rows], axis=1).tobytes()  # filter 0

    def chunk(tag, data):
        return (struct.pack(">I", len(data)) + tag + data +
                struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if rgb.ndim == 3 else 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) +
            chunk(b"IDAT", zlib.compress(raw, 6)) + chunk(b"IEND", b""))


def save_png(path, rgb):
    """Write a uint8 RGB image ``(h, w, 3)`` (or gray ``(h, w)``) to a PNG file.

    Needs no Pillow (see :func:`png_bytes`).

    Raises
    ------
    TypeError, ValueError
        Not a uint8 image of that shape.
    """
    data = png_bytes(rgb)
    with open(os.fspath(path), "wb") as fh:
        fh.write(data)


# --------------------------------------------------------------------------------------------
# HTML pages: a labelled grid of images and numbers
# --------------------------------------------------------------------------------------------
@dataclass
class Cell:
    """One cell of :func:`write_html`: an image and/or lines of text.

    Attributes
    ----------
    image : uint8 array (h, w, 3), optional
        Written by :func:`write_html` as a PNG file beside the page.
    src : str, optional
        Or an image file already written, as a path relative to the page's folder.
    lines : sequence of str
        Text under the image (or the cell's text).
    alt : str
        The image's text alternative.
    kind : str
        A CSS class: "heatmap" or "input" for images, "num" for right-aligned numbers.
    """

    image: np.ndarray | None = None
    src: str | None = None
    lines: tuple = ()
    alt: str = ""
    kind: str = ""


_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Helvetica, Arial, sans-serif;
       margin: 1.5em; color: #111; background: #fff; }
h1 { font-size: 1.3em; margin: 0 0 .4em 0; }
p.intro { max-width: 60em; margin: .2em 0; line-height: 1.35; }
table.grid { border-collapse: collapse; margin-top: 1em; }
table.grid th, table.grid td { border: 1px solid #bbb; padding: 4px 6px; vertical-align: top;
                               text-align: center; }
table.grid thead th { background: #eee; font-weight: 600; }
table.grid th.row { background: #f6f6f6; text-align: left; white-space: nowrap; }
table.grid td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
table.grid img { display: block; margin: 0 auto; image-rendering: pixelated; }
.lines { font-size: .8em; font-variant-numeric: tabular-nums; white-space: nowrap;
         margin-top: 3px; line-height: 1.3; }
.sub { display: block; font-weight: normal; font-size: .8em; color: #444; }
.legend span { display: inline-block; width: 1em; height: 1em; vertical-align: middle;
               border: 1px solid #999; margin: 0 .25em 0 .75em; }
.figures { display: flex; flex-wrap: wrap; gap: 1em; margin-top: 1.5em; }
figure { margin: 0; }
figcaption { font-size: .9em; max-width: 30em; }
"""

#: The colours of :func:`line_chart`'s lines, in order (distinct for readers with the common
#: colour-vision deficiencies: Okabe and Ito's palette), then repeated dashed.
LINE_COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442",
                "#000000")


def _ticks(lo, hi, k=5):
    """About ``k`` round tick values covering ``[lo, hi]``."""
    span = hi - lo
    step = 10 ** np.floor(np.log10(span / k))
    step *= next(m for m in (1, 2, 2.5, 5, 10) if span / (step * m) <= k)
    ticks = np.arange(np.ceil(lo / step) * step, hi + step / 2, step)
    return np.where(np.abs(ticks) < step * 1e-9, 0.0, ticks)  # no "-0"


def line_chart(series, xs, *, title, xlabel, ylabel, xticklabels=None, width=460,
               height=300):
    """An SVG line chart (a string to put into a page): one line per series.

    Parameters
    ----------
    series : sequence of (str, array (k,))
        Each line's name (in the legend) and values at ``xs`` (NaN values are left out).
    xs : array (k,)
    title, xlabel, ylabel : str
    xticklabels : sequence of str, optional
        Labels of the points of ``xs`` (e.g. layer names) instead of numeric ticks.
    width, height : int
        Pixels.

    Returns
    -------
    str
        ``<svg>...</svg>``: lines in :data:`LINE_COLOURS` (the 9th and later dashed), axes
        with ticks, and a legend below the plot.
    """
    xs = np.asarray(xs, dtype=np.float64)
    ys = [np.asarray(v, dtype=np.float64) for _, v in series]
    finite = np.concatenate([v[np.isfinite(v)] for v in ys] + [np.zeros(0)])
    lo, hi = (finite.min(), finite.max()) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-12:
        lo, hi = lo - 0.5, hi + 0.5
    pad = 0.05 * (hi - lo)
    lo, hi = lo - pad, hi + pad
    x0, x1 = float(xs.min()), float(xs.max()) if xs.max() > xs.min() else float(xs.min()) + 1
    left, right, top = 62, 12, 28
    legend_h = 16 * len(series) + 8
    plot_h = height - top - 44
    total_h = height + legend_h

    def px(x):
        return left + (x - x0) / (x1 - x0) * (width - left - right)

    def py(y):
        return top + (hi - y) / (hi - lo) * plot_h

    esc = html.escape
    parts = [f'<svg width="{width}" height="{total_h}" '
             f'viewBox="0 0 {width} {total_h}" font-family="sans-serif" font-size="11">',
             f'<text x="{width / 2:.1f}" y="16" text-anchor="middle" font-size="13">'
             f'{esc(title)}</text>',
             f'<rect x="{left}" y="{top}" width="{width - left - right}" height="{plot_h}" '
             'fill="none" stroke="#888"/>']
    for t in _ticks(lo, hi):
        parts.append(f'<line x1="{left - 4}" x2="{left}" y1="{py(t):.1f}" y2="{py(t):.1f}" '
                     f'stroke="#888"/><text x="{left - 6}" y="{py(t) + 4:.1f}" '
                     f'text-anchor="end">{t:.4g}</text>')
    ticks = (list(zip(xs, xticklabels)) if xticklabels is not None else
             [(t, f"{t:.3g}") for t in _ticks(x0, x1)])
    for t, label in ticks:
        parts.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{top + plot_h}" '
                     f'y2="{top + plot_h + 4}" stroke="#888"/><text x="{px(t):.1f}" '
                     f'y="{top + plot_h + 16}" text-anchor="middle">{esc(str(label))}</text>')
    parts.append(f'<text x="{(left + width - right) / 2:.1f}" y="{top + plot_h + 32}" '
                 f'text-anchor="middle">{esc(xlabel)}</text>')
    parts.append(f'<text transform="translate(14 {top + plot_h / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{esc(ylabel)}</text>')
    for k, ((name, _), v) in enumerate(zip(series, ys)):
        colour = LINE_COLOURS[k % len(LINE_COLOURS)]
        dash = ' stroke-dasharray="6 3"' if k >= len(LINE_COLOURS) else ""
        ok = np.isfinite(v)
        points = " ".join(f"{px(a):.1f},{py(b):.1f}" for a, b in zip(xs[ok], v[ok]))
        parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" '
                     f'stroke-width="2"{dash}><title>{esc(name)}</title></polyline>')
        ly = height + 16 * k
        parts.append(f'<line x1="{left}" x2="{left + 24}" y1="{ly}" y2="{ly}" '
                     f'stroke="{colour}" stroke-width="2"{dash}/><text x="{left + 30}" '
                     f'y="{ly + 4}">{esc(name)}</text>')
    parts.append("</svg>")
    return "".join(parts)



def _png_size(path):
    """``(width, height)`` from a PNG file's header, or None (not a readable PNG)."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(24)
    except OSError:
        return None
    if len(head) < 24 or head[:8] != b"\x89PNG\r\n\x1a\n" or head[12:16] != b"IHDR":
        return None
    return struct.unpack(">II", head[16:24])


def _text(lines):
    return "<br>".join(html.escape(str(t)) for t in lines)


def _head(text):
    """A column or row head: the first line, then the others in smaller print."""
    lines = str(text).split("\n")
    sub = "".join(f'<span class="sub">{html.escape(t)}</span>' for t in lines[1:])
    return html.escape(lines[0]) + sub


def _figures(figures):
    if not figures:
        return ""
    items = "".join(f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>\n"
                    for svg, caption in figures)
    return f'<div class="figures">\n{items}</div>\n'


def write_html(path, columns, rows, *, title, intro=(), row_heads=None, images_dir="cells",
               legend=True, figures=()):
    """Write a labelled grid of images and numbers as one plain HTML page (no JavaScript).

    Images given as arrays are written as PNG files (:func:`save_png`, no Pillow) into
    ``images_dir`` beside the page and referenced by relative paths, so the folder can be
    opened in any browser, moved or zipped.

    Parameters
    ----------
    path : str or os.PathLike
        The page to write (e.g. ``out/index.html``).
    columns : sequence of str
        Column heads; a ``"\\n"`` starts a smaller second line.  With ``row_heads``, the first
        head is that of the row-head column.
    rows : sequence of sequences of Cell or str
        One entry per column (after the row head); a str is a text cell.
    title : str
    intro : sequence of str
        Paragraphs above the grid.
    row_heads : sequence of str, optional
        A head per row (e.g. ``"label 3\\npredicted 3"``).
    images_dir : str
        Folder (relative to the page) for the images given as arrays.  Every image gets the
        width and height of its PNG file, so the layout stays when an image is missing.
    legend : bool
        Show the colour legend of :func:`heatmap` (red = positive, white = 0, blue = negative).
    figures : sequence of (str, str)
        ``(svg, caption)`` pairs shown below the table (e.g. from :func:`line_chart`).

    Returns
    -------
    str
        ``path``.

    Raises
    ------
    ValueError
        A row whose cell count differs from the columns', or row heads that do not match the
        rows.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    n_cols = len(columns) - (row_heads is not None)
    if row_heads is not None and len(row_heads) != len(rows):
        raise ValueError(f"{len(row_heads)} row heads for {len(rows)} rows")
    body = []
    for i, row in enumerate(rows):
        if len(row) != n_cols:
            raise ValueError(f"row {i} has {len(row)} cells for {n_cols} columns")
        tds = [] if row_heads is None else \
            [f'<th scope="row" class="row">{_head(row_heads[i])}</th>']
        for j, cell in enumerate(row):
            if not isinstance(cell, Cell):
                cell = Cell(lines=(str(cell),))
            src = cell.src
            if cell.image is not None:
                os.makedirs(os.path.join(folder, images_dir), exist_ok=True)
                src = f"{images_dir}/r{i}c{j}.png"
                save_png(os.path.join(folder, images_dir, f"r{i}c{j}.png"), cell.image)
            if src is not None:
                # width and height keep the layout when an image is missing or still loading
                wh = _png_size(os.path.join(folder, *src.split("/")))
                size = f' width="{wh[0]}" height="{wh[1]}"' if wh else ""
                inner = (f'<img src="{html.escape(quote(src.replace(os.sep, "/")))}"{size} '
                         f'alt="{html.escape(cell.alt)}" class="{html.escape(cell.kind)}">')
                if cell.lines:
                    inner += f'<div class="lines">{_text(cell.lines)}</div>'
            else:
                inner = _text(cell.lines)
            cls = f' class="{html.escape(cell.kind)}"' if cell.kind else ""
            tds.append(f"<td{cls}>{inner}</td>")
        body.append("<tr>" + "".join(tds) + "</tr>")
    heads = "".join(f'<th scope="col">{_head(c)}</th>' for c in columns)
    paras = "".join(f'<p class="intro">{html.escape(t)}</p>' for t in intro)
    if legend:
        paras += ('<p class="intro legend">Colours:<span style="background:#f00"></span>'
                  'evidence for the explained class'
                  '<span style="background:#fff"></span>no relevance'
                  '<span style="background:#00f"></span>evidence against it.</p>')
    page = (f'<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
            f'<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n'
            f'<h1>{html.escape(title)}</h1>\n{paras}\n'
            f'<table class="grid">\n<thead><tr>{heads}</tr></thead>\n<tbody>\n'
            + "\n".join(body) + "\n</tbody>\n</table>\n" + _figures(figures)
            + "</body>\n</html>\n")
    with open(path, "w", encoding="utf-8") as fh:
        fh.write(page)
    return path

