"""Targets: what an explanation explains.

Every method takes ``target``: a class (an int, or one per sample), ``"pred"`` (each sample's
predicted class), or a float seed array shaped like the output, used as the output relevance
(LRP) or gradient seed directly.  Classes need an output of scores ``(n, n_out)``; a network
with a dense output, such as a segmentation network's per-pixel class scores ``(n, classes, h,
w)``, explains a seed array, which :func:`region` builds for a class on a region.
"""
from __future__ import annotations

import numpy as np

from ._common import is_int


def region(output, cls, mask, scale=True):
    """The seed that explains class ``cls`` on the region ``mask`` of a dense output: the
    output at ``cls`` on the mask, zero elsewhere (one-hot at ``cls`` on the mask times the
    output: relprop's class-target convention, so that LRP's relevance starts as, and sums to
    about, the region's score ``sum(f_cls over mask)``).

    Parameters
    ----------
    output : array (n, classes, *spatial)
        The network's output on the samples to explain (``net(x)``).
    cls : int or sequence of n ints
        The class explained (the same for every sample, or one per sample).
    mask : array of bools or 0/1
        The region: ``spatial``, ``(n, *spatial)`` or ``(n, 1, *spatial)`` (or with 1 for n:
        the same region for every sample); non-zero marks the region.
    scale : bool
        True (default): times the output (LRP's seed); False: the one-hot mask alone (the seed
        of the gradient family, whose explained score is then ``sum(f_cls over mask)`` too).

    Returns
    -------
    seed : array (n, classes, *spatial), the output's float dtype

    Raises
    ------
    ValueError
        An output that is not dense (``(n, classes, ...)`` with at least one axis after the
        classes), a class out of range, or a mask that does not fit.
    TypeError
        A non-float output, a class that is not an int, a mask that is not boolean or 0/1.
    """
    out = np.asarray(output)
    if out.dtype.kind != "f":
        raise TypeError(f"output must be a float array (net(x)), got dtype {out.dtype}")
    if out.ndim < 3:
        raise ValueError(f"region needs a dense output (n, classes, *spatial), got shape "
                         f"{out.shape}; for class scores (n, n_out) pass the class itself")
    n, n_cls, spatial = out.shape[0], out.shape[1], out.shape[2:]
    if is_int(cls):
        classes = np.full(n, int(cls), dtype=np.int64)
    else:
        classes = np.asarray(cls)
        if classes.dtype.kind not in "iu" or classes.shape != (n,):
            raise TypeError(f"cls must be an int or {n} ints (one per sample), got {cls!r}")
        classes = classes.astype(np.int64)
    bad = (classes < 0) | (classes >= n_cls)
    if bad.any():
        raise ValueError(f"class {int(classes[bad][0])} is out of range for {n_cls} classes "
                         f"(valid: 0..{n_cls - 1})")
    m = np.asarray(mask)
    if m.dtype != bool:
        if m.dtype.kind not in "biuf" or not np.isin(m, (0, 1)).all():
            raise TypeError(f"mask must be boolean or 0/1, got dtype {m.dtype}")
        m = m.astype(bool)
    if m.ndim == len(spatial) + 2 and m.shape[1] == 1:  # (n, 1, *spatial)
        m = m[:, 0]
    if m.ndim == len(spatial):
        m = m[None]
    if m.ndim != len(spatial) + 1 or m.shape[1:] != spatial or m.shape[0] not in (1, n):
        raise ValueError(f"mask of shape {np.shape(mask)} does not fit the output {out.shape}: "
                         f"give {spatial}, {(n,) + spatial} or {(n, 1) + spatial}")
    seed = np.zeros_like(out)
    rows = np.arange(n)
    picked = np.broadcast_to(m, (n,) + spatial)
    seed[rows, classes] = np.where(picked, out[rows, classes] if scale else 1, 0)
    return seed
