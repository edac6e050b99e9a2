"""Matplotlib figures of explanations (needs matplotlib, imported when a function is called).

* :func:`explanations` - a grid of inputs and their heatmaps, one row per sample and one
  column per method;
* :func:`features` - relevance per input feature as a bar or pie chart, for inputs with few
  features (decomposition methods such as LRP and gradient x input split the explained score
  over the features, so the bars add up to it).

Figures are built with :class:`matplotlib.figure.Figure` (no pyplot state): save them with
``fig.savefig(path)``, or show them in a notebook by returning them.
"""
from __future__ import annotations

import numpy as np

from . import render


def _figure(**kw):
    try:
        from matplotlib.figure import Figure
    except ImportError:
        raise ImportError("relprop.plot needs matplotlib: pip install matplotlib "
                          "(or pip install 'relprop[plot]')") from None
    return Figure(**kw)


def explanations(x, relevances, *, titles=None, labels=None, cmap="bwr", pool="sum",
                 invert_input=False, cell=1.4):
    """A grid of input/heatmap pairs: row i shows ``x[i]`` then each method's heatmap.

    Parameters
    ----------
    x : array (n, c, h, w) or (n, h, w)
        The explained inputs.
    relevances : array shaped like ``x``, or dict {method name: array}
        One or several explanations of ``x``.
    titles : list of str, optional
        Column titles for the heatmaps (default: the dict keys, or "relevance").
    labels : sequence of n str, optional
        Row labels (e.g. "label 3, predicted 3").
    cmap, pool
        As in :func:`relprop.render.heatmap`.
    invert_input : bool
        Show high input values dark.
    cell : float
        Size of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure
    """
    if isinstance(relevances, dict):
        names, maps = list(relevances), list(relevances.values())
    else:
        names, maps = ["relevance"], [relevances]
    if titles is not None:
        if len(titles) != len(maps):
            raise ValueError(f"{len(titles)} titles for {len(maps)} explanations")
        names = list(titles)
    x = np.asarray(x)
    n = x.shape[0]
    for name, R in zip(names, maps):
        if np.shape(R)[0] != n:
            raise ValueError(f"explanation {name!r} has {np.shape(R)[0]} samples, x has {n}")
    if labels is not None and len(labels) != n:
        raise ValueError(f"{len(labels)} labels for {n} samples")
    inputs = render.image(x, invert=invert_input)
    heat = [render.heatmap(R, cmap=cmap, pool=pool) for R in maps]
    cols = 1 + len(maps)
    fig = _figure(figsize=(cell * cols, cell * n), layout="constrained")
    axes = np.asarray(fig.subplots(n, cols, squeeze=False))
    for i in range(n):
        panels = [inputs[i]] + [h[i] for h in heat]
        for j, img in enumerate(panels):
            ax = axes[i, j]
            ax.imshow(img, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if i == 0:
                ax.set_title("input" if j == 0 else names[j - 1], fontsize=8)
        if labels is not None:
            axes[i, 0].set_ylabel(str(labels[i]), fontsize=8)
    return fig


def features(R, names=None, *, kind="bar", ax=None, title=None):
    """Relevance per feature of one sample, as a bar or pie chart.

    Bars are red for positive and blue for negative relevance.  A pie shows the share of each
    feature in ``sum |R|`` (a pie cannot show signs; the labels carry them).

    Parameters
    ----------
    R : array (d,) or (1, d)
        Relevance of one sample over d features (use up to about 30).
    names : sequence of d str, optional
        Feature names (default "x0", "x1", ...).
    kind : {"bar", "pie"}
    ax : matplotlib Axes, optional
        Draw here; else a new figure is made.
    title : str, optional

    Returns
    -------
    matplotlib.axes.Axes
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim == 2 and R.shape[0] == 1:
        R = R[0]
    if R.ndim != 1 or R.size == 0:
        raise ValueError(f"features takes the relevance of one sample (d,) or (1, d), got shape "
                         f"{np.shape(R)}")
    if not np.isfinite(R).all():
        raise ValueError("R contains NaN or infinite values")
    names = [f"x{i}" for i in range(R.size)] if names is None else [str(s) for s in names]
    if len(names) != R.size:
        raise ValueError(f"{len(names)} names for {R.size} features")
    if kind not in ("bar", "pie"):
        raise ValueError(f"kind must be 'bar' or 'pie', got {kind!r}")
    if ax is None:
        fig = _figure(figsize=(6, max(2.0, 0.3 * R.size + 1)), layout="constrained")
        ax = fig.add_subplot()
    colors = np.where(R >= 0, "tab:red", "tab:blue")
    if kind == "bar":
        pos = np.arange(R.size)
        ax.barh(pos, R, color=colors)
        ax.set_yticks(pos, names)
        ax.invert_yaxis()
        ax.axvline(0, color="black", linewidth=0.8)
        ax.set_xlabel(f"relevance (sum {R.sum():.4g})")
    else:
        mag = np.abs(R)
        if mag.sum() == 0:
            raise ValueError("all relevances are zero: nothing to show in a pie chart")
        keep = mag > 0
        labels = [f"{n} ({'+' if r >= 0 else '-'}{abs(r):.3g})"
                  for n, r in zip(np.asarray(names)[keep], R[keep])]
        ax.pie(mag[keep], labels=labels, colors=colors[keep],
               wedgeprops={"edgecolor": "white"})
    if title:
        ax.set_title(title)
    return ax
