"""relprop's explanations inside Quantus: :func:`explain_func` has the signature of Quantus's
``explain_func`` argument, so that Quantus users evaluate relprop's explanations with Quantus's
metrics::

    import quantus, relprop.quantus
    metric = quantus.MaxSensitivity(nr_samples=10)
    scores = metric(model, x, y, a, explain_func=relprop.quantus.explain_func,
                    explain_func_kwargs={"method": "lrp.epsilon_plus_flat"})

It imports the torch model it is given at every call (:func:`relprop.from_torch`): Quantus's
model parameter randomization changes one model in place between calls, so a network kept
from an earlier call would explain stale weights.
"""
from __future__ import annotations

import numpy as np

#: Keyword arguments Quantus adds to ``explain_func_kwargs`` itself, which do not concern
#: relprop (it runs on the CPU).
QUANTUS_KEYS = ("device",)


def explain_func(model, inputs, targets, method="lrp.epsilon_plus_flat", **kwargs):
    """Explain ``model`` at ``inputs`` for ``targets`` with relprop (Quantus's
    ``explain_func`` signature).

    Parameters
    ----------
    model : torch.nn.Module or relprop network
        A torch model is imported with :func:`relprop.from_torch` at every call (with the
        input shape of ``inputs``), in float32 as Quantus computes.
    inputs : array (n, *input_shape)
        Converted to float32 (as Quantus's ``torch.Tensor(x)``).
    targets : int array (n,) or int
        The explained classes.
    method : str
        A :func:`relprop.explain` name; ``kwargs`` are its parameters (``device``, which
        Quantus adds, is ignored).

    Returns
    -------
    float32 array shaped like ``inputs``
    """
    from . import explain, from_torch
    from .graph import Graph

    x = np.asarray(inputs, dtype=np.float32)
    params = {k: v for k, v in kwargs.items() if k not in QUANTUS_KEYS}
    net = model if isinstance(model, Graph) else from_torch(model, tuple(x.shape[1:]))
    t = np.asarray(targets)
    target = int(t) if t.ndim == 0 else t.astype(np.int64).reshape(-1)
    return np.asarray(explain(net, x, target, method=method, **params), dtype=np.float32)
