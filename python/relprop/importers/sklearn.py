"""Import a fitted scikit-learn ``MLPClassifier``/``MLPRegressor``."""
from __future__ import annotations

import numpy as np

from .. import layers as L
from ..graph import Sequential
from ._common import CHECK_RTOL, probe, self_check, softmax


def from_sklearn(mlp, *, check=True, rtol=CHECK_RTOL) -> Sequential:
    """A relprop network from a fitted scikit-learn ``MLPClassifier`` or ``MLPRegressor``.

    The network outputs the scores before the output activation (the logits of a classifier:
    before softmax, or before the logistic function of a binary/multilabel classifier).  Only
    ``activation="relu"`` is supported.  ``coefs_[i]`` of shape ``(in, out)`` becomes the Dense
    weight ``coefs_[i].T``.

    Parameters
    ----------
    mlp : sklearn.neural_network.MLPClassifier or MLPRegressor
    check : bool
        Compare the output activation of relprop's scores with ``predict_proba`` (classifier)
        or ``predict`` (regressor) on a probe input.
    rtol : float
        Tolerance of the check, relative to the largest output magnitude.

    Returns
    -------
    Sequential

    Raises
    ------
    ValueError
        Another activation, an unfitted model, or a failed self-check.
    TypeError
        Not an MLPClassifier/MLPRegressor.
    """
    from sklearn.neural_network import MLPClassifier, MLPRegressor

    if not isinstance(mlp, (MLPClassifier, MLPRegressor)):
        raise TypeError("from_sklearn expects an MLPClassifier or MLPRegressor, got "
                        f"{type(mlp).__name__}")
    if mlp.activation != "relu":
        raise ValueError(f"{type(mlp).__name__} has activation={mlp.activation!r}; relprop "
                         "supports 'relu' only")
    if not hasattr(mlp, "coefs_"):
        raise ValueError(f"{type(mlp).__name__} is not fitted (no coefs_)")
    layers = []
    for i, (w, b) in enumerate(zip(mlp.coefs_, mlp.intercepts_)):
        if i:
            layers.append(L.ReLU())
        layers.append(L.Dense(np.array(w.T), np.array(b)))
    net = Sequential(layers, input_shape=(mlp.coefs_[0].shape[0],))
    if check:
        x = probe(net.input_shape, net.layers[0].weight.dtype, n=4)
        z = net(x)
        act = mlp.out_activation_
        if act == "softmax":
            got, want = softmax(z), mlp.predict_proba(x)
        elif act == "logistic":
            p = 1.0 / (1.0 + np.exp(-z.astype(np.float64)))
            got = np.hstack([1 - p, p]) if p.shape[1] == 1 else p
            want = mlp.predict_proba(x)
        elif act == "identity":
            got, want = z, np.asarray(mlp.predict(x)).reshape(z.shape)
        else:
            raise ValueError(f"{type(mlp).__name__} has an unsupported output activation "
                             f"{act!r}")
        self_check(got, want, "scikit-learn", rtol)
    return net
