"""Localisation: does the explanation fall on the object?  Each metric takes the object's
masks as its fifth argument, ``(n, *input_shape)`` or, for images, ``(n, 1, h, w)``.  Images
are compared pixel by pixel: the relevance summed over channels, a pixel inside the mask when
any of its channels is.  A sample with an empty mask scores NaN.

References
----------
.. [Zhang2018] J. Zhang et al., "Top-down neural attention by excitation backprop", IJCV 2018
   (pointing game).
.. [Arras2022] L. Arras, A. Osman, W. Samek, "CLEVR-XAI: a benchmark dataset for the ground
   truth evaluation of neural network explanations", Information Fusion 2022 (relevance mass
   and rank accuracy).
.. [Theiner2021] J. Theiner, E. Mueller-Budack, R. Ewerth, "Interpretable semantic photo
   geolocalization", WACV 2022 (top-k intersection).
.. [Kohlbrenner2020] M. Kohlbrenner et al., "Towards best practice in explaining neural network
   decisions with LRP", IJCNN 2020 (attribution localisation).
"""
from __future__ import annotations

import numpy as np

from .._validate import as_float_array, as_int
from ._base import Result, check_inputs, is_image


def _maps(net, x, R, masks, check_finite):
    """``(relevance (n, d) float64, masks (n, d) bool)``: pixel maps for images."""
    x, R = check_inputs(net, x, R, check_finite)
    m = np.asarray(masks)
    if m.dtype == bool:
        m = m.astype(np.float64)
    m = as_float_array(m, "masks")
    pixel = is_image(x) and m.shape == (len(x), 1) + x.shape[2:]
    if m.shape != x.shape and not pixel:
        want = f" or {(len(x), 1) + x.shape[2:]}" if is_image(x) else ""
        raise ValueError(f"masks have shape {m.shape}; they must be shaped like x {x.shape}"
                         f"{want}")
    if not np.isin(m, (0.0, 1.0)).all():
        raise ValueError("masks must hold 0/1 or False/True only")
    n = len(x)
    if is_image(x):
        return (R.sum(axis=1, dtype=np.float64).reshape(n, -1),
                m.max(axis=1).reshape(n, -1) > 0)
    return R.reshape(n, -1).astype(np.float64), m.reshape(n, -1) > 0


def _empty_nan(scores, masks):
    scores = scores.astype(np.float64)
    scores[masks.sum(axis=1) == 0] = np.nan
    return scores


def _top(a, k):
    """The indices of the ``k`` largest values of each row, largest first (ties to the lower
    index)."""
    return np.argsort(-a, axis=1, kind="stable")[:, :k]


def pointing_game(net, x, R, target, masks, *, check_finite=True):
    """Pointing game [Zhang2018]_: 1.0 when a pixel of largest relevance lies in the mask
    (any of them, when several tie), else 0.0.

    Parameters
    ----------
    net : Sequential or Graph
        Checks ``x``; ``target`` is not used (the signature is that of every metric).
    x : array (n, *input_shape)
    R : array shaped like ``x`` (or ``(n, 1, h, w)``)
    target : ignored
    masks : array (n, *input_shape) or (n, 1, h, w) of 0/1
    check_finite : bool

    Returns
    -------
    Result
        ``scores`` (n,), higher is better.
    """
    a, m = _maps(net, x, R, masks, check_finite)
    hit = np.any(m & (a == a.max(axis=1, keepdims=True)), axis=1)
    return Result(_empty_nan(hit, m), "higher")


def relevance_mass_accuracy(net, x, R, target, masks, *, check_finite=True):
    """Relevance mass accuracy [Arras2022]_: the relevance inside the mask over the total,
    ``sum(R in mask) / sum(R)``.

    Parameters
    ----------
    As for :func:`pointing_game`.

    Returns
    -------
    Result
        ``scores`` (n,), higher is better.
    """
    a, m = _maps(net, x, R, masks, check_finite)
    with np.errstate(invalid="ignore", divide="ignore"):
        return Result(_empty_nan((a * m).sum(axis=1) / a.sum(axis=1), m), "higher")


def relevance_rank_accuracy(net, x, R, target, masks, *, check_finite=True):
    """Relevance rank accuracy [Arras2022]_: the share of the ``K`` pixels of largest
    relevance that lie in the mask, ``K`` the mask's size.

    Parameters
    ----------
    As for :func:`pointing_game`.

    Returns
    -------
    Result
        ``scores`` (n,), higher is better.
    """
    a, m = _maps(net, x, R, masks, check_finite)
    size = m.sum(axis=1)
    order = np.argsort(-a, axis=1, kind="stable")
    inside = np.take_along_axis(m, order, axis=1) & (np.arange(a.shape[1]) < size[:, None])
    with np.errstate(invalid="ignore", divide="ignore"):
        return Result(_empty_nan(inside.sum(axis=1) / size, m), "higher")


def top_k_intersection(net, x, R, target, masks, k=1000, *, concept_influence=False,
                       check_finite=True):
    """Top-k intersection [Theiner2021]_: the share of the ``k`` pixels of largest relevance
    that lie in the mask; with ``concept_influence``, divided by the mask's share of the
    pixels.

    Parameters
    ----------
    net, x, R, target, masks, check_finite
        As for :func:`pointing_game`.
    k : int
        Fewer than the pixels of a sample.
    concept_influence : bool

    Returns
    -------
    Result
        ``scores`` (n,), higher is better.
    """
    a, m = _maps(net, x, R, masks, check_finite)
    k = as_int(k, "k", minimum=1)
    if k >= a.shape[1]:
        raise ValueError(f"k must be smaller than the {a.shape[1]} pixels (or features) of a "
                         f"sample, got {k}")
    share = np.take_along_axis(m, _top(a, k), axis=1).mean(axis=1)
    if concept_influence:
        with np.errstate(invalid="ignore", divide="ignore"):
            share = share * a.shape[1] / m.sum(axis=1)
    return Result(_empty_nan(share, m), "higher")


def attribution_localisation(net, x, R, target, masks, *, weighted=False, positive=False,
                             check_finite=True):
    """Attribution localisation [Kohlbrenner2020]_: the relevance inside the mask over the
    total, ``sum(R in mask) / (sum(R) + 1e-9)``, NaN where that exceeds 1 (negative relevance
    outside); ``weighted`` multiplies by the mask's share of the pixels.  Meant for
    non-negative maps: pass ``|R|``, or ``positive=True`` to clip negative relevance to 0.

    Parameters
    ----------
    net, x, R, target, masks, check_finite
        As for :func:`pointing_game`.
    weighted : bool
    positive : bool

    Returns
    -------
    Result
        ``scores`` (n,), higher is better.
    """
    a, m = _maps(net, x, R, masks, check_finite)
    if positive:
        a = np.clip(a, 0, None)
    ratio = (a * m).sum(axis=1) / (a.sum(axis=1) + 1e-9)
    ratio[ratio > 1] = np.nan
    if weighted:
        ratio = ratio * m.sum(axis=1) / a.shape[1]
    return Result(_empty_nan(ratio, m), "higher")


#: This module's family and its metrics, in order (:data:`relprop.metrics.FAMILIES`).
FAMILY = "localisation"
FUNCTIONS = (pointing_game, relevance_mass_accuracy, relevance_rank_accuracy,
             top_k_intersection, attribution_localisation)
