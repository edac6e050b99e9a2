"""The gradient family (sensitivity, gradient x input, simple Taylor, deconvnet, guided backprop)
and :func:`explain`, every method by name.

Every method takes ``(net, x, target)`` and returns an array shaped like ``x`` (float dtype of
``x``); see :func:`relprop._common.seed` for ``target``.  ``batch_size=`` processes the batch
in chunks so that memory stays bounded.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np

from . import composites
from ._common import Predicted, is_pred, map_batches, predicted
from ._validate import as_float_array, as_int, as_scalar
from .averaged import integrated_gradients, smoothgrad
from .engine import gradient_pass, score_and_grad
from .lrp import lrp


def _method(relu_mode, post=None):
    def run(net, x, target, *, batch_size=None, check_finite=True):
        x = net.check_input(x, check_finite)

        def one(xc, tc):
            g = gradient_pass(net, xc, tc, relu_mode)
            return g if post is None else post(xc, g)

        return map_batches(one, x, target, batch_size, net=net)

    return run


def _doc(fn, name, text):
    fn.__name__ = fn.__qualname__ = name  # names it in Python's own argument errors
    fn.__doc__ = text + """

    Parameters
    ----------
    net : Sequential
    x : array (n, *input_shape)
    target : int, sequence of n ints, float array (n, n_out), or "pred"
        The explained output: one class for all, one per sample, each sample's predicted class
        ("pred", from this pass's own forward pass), or a seed used directly.
    batch_size : int, optional
        Process this many samples at a time (default: :func:`relprop.default_batch_size` of
        ``net``; the result does not depend on it).
    check_finite : bool
        Raise ValueError on NaN/Inf in ``x`` (default).

    Returns
    -------
    array shaped like ``x``
    """
    return fn


gradient = _doc(_method("gradient"), "gradient",
                "Sensitivity ``dF/dx`` with ``F = sum(seed * f(x))``.")
sensitivity = _doc(_method("gradient", lambda x, g: g * g), "sensitivity",
                   "Sensitivity analysis: the squared gradient ``(dF/dx)**2``.")
gradient_x_input = _doc(_method("gradient", lambda x, g: x * g), "gradient_x_input",
                        "Gradient x input ``x * dF/dx``; for a bias-free ReLU network its sum "
                        "equals ``F(x)``.")
deconvnet = _doc(_method("deconvnet"), "deconvnet",
                 "DeconvNet: a gradient pass whose ReLU backward is ``max(0, g)``.")
guided_backprop = _doc(_method("guided"), "guided_backprop",
                       "Guided backprop: ReLU backward is ``g * (z > 0) * (g > 0)``.")


@dataclass
class TaylorInfo:
    """What :func:`taylor` reports besides the relevance.

    root : the root point used, shaped like x.
    root_score : ``F(root)`` per sample (the residual of the root search; 0 for an exact root).
    error : ``F(x) - sum(R)`` per sample (the first-order error of the decomposition).
    steps : Newton steps taken (``root="nearest"``), else 0.
    """

    root: np.ndarray
    root_score: np.ndarray
    error: np.ndarray
    steps: int


def _sum(a):
    return a.reshape(a.shape[0], -1).sum(axis=1)


#: Scale of the point ``eps * x`` at which ``root="zero"`` takes the gradient.
ZERO_ROOT_SCALE = 2.0 ** -20


def taylor(net, x, target, root="zero", *, max_steps=50, tol=1e-5, return_info=False,
           batch_size=None, check_finite=True):
    """Simple Taylor decomposition ``R = dF/dx|_root * (x - root)``.

    Parameters
    ----------
    root : array, "zero" or "nearest"
        An array shaped like ``x`` (or one sample, broadcast); ``"zero"``: the limit point
        ``eps * x, eps -> 0`` (the gradient is taken at ``2**-20 * x``, so a bias-free ReLU
        network gives gradient x input); ``"nearest"``: Newton steps along the gradient from
        ``x`` until ``|F(root)| <= tol * max(|F(x)|, 1)`` or ``max_steps``.
    return_info : bool
        Also return a :class:`TaylorInfo` (root, residual ``F(root)``, error ``F(x) - sum R``).

    The other parameters are those of :func:`relprop.gradient`.
    """
    x = net.check_input(x, check_finite)
    max_steps = as_int(max_steps, "max_steps", minimum=0)
    tol = as_scalar(tol, "tol", minimum=0.0)
    mode = root if isinstance(root, str) else "array"
    if isinstance(root, str):
        if root not in ("zero", "nearest"):
            raise ValueError(f"root must be an array, 'zero' or 'nearest', got {root!r}")
        root_arr = None
    else:
        root_arr = as_float_array(root, "root", dtype=x.dtype)
        try:
            root_arr = np.ascontiguousarray(np.broadcast_to(root_arr, x.shape))
        except ValueError:
            raise ValueError(f"root has shape {root_arr.shape}, not broadcastable to x "
                             f"{x.shape}") from None
    target = predicted(net, x, target, batch_size)  # the class at x, not at the root
    infos = []

    def one(xc, tc, rc):
        steps = 0
        if mode == "zero":
            r0 = xc * xc.dtype.type(ZERO_ROOT_SCALE)
            _, g = score_and_grad(net, r0, tc)
            r0 = np.zeros_like(xc)
        elif mode == "nearest":
            r0 = xc.copy()
            fx = None
            for steps in range(max_steps + 1):
                f, g = score_and_grad(net, r0, tc)
                if fx is None:
                    fx = np.abs(f)
                gn = _sum(g * g)
                active = (np.abs(f) > tol * np.maximum(fx, 1)) & (gn > 0)
                if steps == max_steps or not active.any():
                    break
                step = np.where(active, f / np.where(gn > 0, gn, 1), 0)
                r0 = r0 - step.reshape((-1,) + (1,) * (xc.ndim - 1)).astype(xc.dtype) * g
        else:
            r0 = rc
            _, g = score_and_grad(net, r0, tc)
        rel = g * (xc - r0)
        if return_info:
            f_root = score_and_grad(net, r0, tc)[0]
            f_x, _ = score_and_grad(net, xc, tc)
            infos.append(TaylorInfo(r0, f_root, f_x - _sum(rel), steps))
        return rel

    # (batches side by side, except when their infos are collected in order)
    rel = map_batches(one, x, target, batch_size, root_arr, net=net, side_by_side=not return_info)
    if not return_info:
        return rel
    info = TaylorInfo(np.concatenate([i.root for i in infos]),
                      np.concatenate([i.root_score for i in infos]),
                      np.concatenate([i.error for i in infos]), max(i.steps for i in infos))
    return rel, info


def pool_channels(R, how="sum"):
    """Pool a relevance map ``(n, c, h, w)`` over channels to ``(n, h, w)``.

    ``how``: "sum" (keeps conservation), "abs" (sum of magnitudes) or "max" (largest magnitude,
    with its sign).
    """
    R = np.asarray(R)
    if R.ndim != 4:
        raise ValueError(f"pool_channels expects (n, c, h, w), got shape {R.shape}")
    if how == "sum":
        return R.sum(axis=1)
    if how == "abs":
        return np.abs(R).sum(axis=1)
    if how == "max":
        idx = np.abs(R).argmax(axis=1)[:, None]
        return np.take_along_axis(R, idx, axis=1)[:, 0]
    raise ValueError(f"how must be 'sum', 'abs' or 'max', got {how!r}")


METHODS = {
    "gradient": gradient,
    "sensitivity": sensitivity,
    "gradient_x_input": gradient_x_input,
    "taylor": taylor,
    "deconvnet": deconvnet,
    "guided_backprop": guided_backprop,
    "smoothgrad": smoothgrad,
    "integrated_gradients": integrated_gradients,
}


def explain(net, x, target, method="lrp", **kwargs):
    """Explain ``net``'s output ``target`` at ``x`` with a method given by name.

    ``method`` is one of :data:`METHODS` ("gradient", "sensitivity", "gradient_x_input",
    "taylor", "deconvnet", "guided_backprop", ...), ``"lrp.<name>"`` with a composite or rule
    name ("lrp.epsilon_plus_flat", "lrp.epsilon_gamma_box", "lrp.epsilon", "lrp.attnlrp", ...)
    or ``"lrp"``, the network's default composite (:func:`lrp_method`).  ``kwargs`` go
    to the method (for LRP: ``batch_size``, ``check_finite``, and the composite's parameters,
    e.g. ``low``/``high`` for epsilon_gamma_box).  ``target="pred"`` explains each sample's
    predicted class without a forward pass of its own.
    """
    if not isinstance(method, str):
        raise TypeError(f"method must be a string, got {type(method).__name__}")
    method = lrp_method(net, method)
    if method.startswith("lrp."):
        _check_params(method, kwargs)
        return lrp(net, x, target, method[4:], **kwargs)
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; use one of {sorted(METHODS)} or "
                         f"'lrp.<composite or rule>' ({sorted(composites.COMPOSITES)})")
    _check_params(method, kwargs)
    return METHODS[method](net, x, target, **kwargs)


def lrp_method(net, method="lrp"):
    """``method`` with "lrp" named: ``"lrp.<the network's default composite>"``
    ("lrp.epsilon_plus_flat", "lrp.attnlrp" for a transformer:
    :func:`relprop.composites.default_composite`); any other name as it is."""
    return f"lrp.{composites.default_composite(net)}" if method == "lrp" else method


def explain_and_output(net, x, target, method="lrp", **kwargs):
    """:func:`explain` and the network's output at ``x``: ``(R, out)``, ``out`` of shape
    ``(n, *output_shape)``.  For ``target="pred"`` the output is that of the explanation's own
    forward pass (no second one); for other targets one more forward pass computes it."""
    if is_pred(target):
        pred = Predicted()
        R = explain(net, x, pred, method, **kwargs)
        return R, np.concatenate(pred.outputs)
    R = explain(net, x, target, method, **kwargs)
    return R, net.forward(x, batch_size=kwargs.get("batch_size"), check_finite=False)


def parameters(method):
    """``{parameter: default}`` of the keyword parameters :func:`explain` passes on for the
    method named ``method``, in signature order (for "lrp.<name>": LRP's own, then the
    composite's or rule's constructor's); ``inspect.Parameter.empty`` for none.  None for an
    unknown name, or when the last callee takes any keyword."""
    if method.startswith("lrp."):
        maker = composites.COMPOSITES.get(method[4:]) or composites.RULES.get(method[4:])
        callees = None if maker is None else (lrp, maker)  # each passes **kwargs to the next
    else:
        callees = (METHODS[method],) if method in METHODS else None
    if callees is None:
        return None
    sigs = [inspect.signature(fn).parameters for fn in callees]
    if any(p.kind is p.VAR_KEYWORD for p in sigs[-1].values()):
        return None
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    return {name: p.default for sig in sigs for name, p in sig.items()
            if p.kind in kinds and name not in _POSITIONAL}


#: Arguments that :func:`explain` passes itself, never among a method's keyword parameters.
_POSITIONAL = ("net", "x", "target", "rule_or_composite")


def _check_params(method, kwargs):
    """TypeError naming ``method`` and the parameters it takes when ``kwargs`` holds others
    (an unknown method is left to its own error)."""
    taken = parameters(method)
    unknown = [] if taken is None else sorted(set(kwargs) - set(taken))
    if unknown:
        raise TypeError(f"method {method!r} takes no parameter "
                        f"{', '.join(map(repr, unknown))}; its parameters: {', '.join(taken)}")
