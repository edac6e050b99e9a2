"""Bundled trained models: a small CNN, a small ResNet and an MLP for scikit-learn's 8x8 digits.

Preprocessing (the same for training, the tests and :func:`digits_data`): the 8x8 images of
``sklearn.datasets.load_digits`` (pixel values 0..16) divided by 16, so inputs lie in
``[0, 1]``, float32.  The CNN and the ResNet take ``(n, 1, 8, 8)`` (NCHW, one channel); the MLP
takes the row-major flattened ``(n, 64)``.  Both output 10 class scores (logits, before softmax).

Split: ``train_test_split(data, target, test_size=0.25, random_state=0, stratify=target)``;
the models were trained on the 1347 training samples and are evaluated on the 450 test
samples, which ship with the package (``digits_test.npz``), so :func:`digits_data` needs no
scikit-learn.

Models (test accuracy with relprop's forward pass on the 450 test samples):

* :func:`digits_cnn` - Conv2d(1,16,3,pad 1)-ReLU-Conv2d(16,32,3,pad 1)-ReLU-MaxPool2d(2)-Flatten-
  Dense(512,64)-ReLU-Dense(64,10), trained with torch (Adam, 40 epochs): 98.2%;
* :func:`digits_mlp` - Dense(64,64)-ReLU-Dense(64,10), scikit-learn ``MLPClassifier`` with relu
  (float32 weights): 97.8%;
* :func:`digits_resnet` - a :class:`relprop.Graph`: a stem Conv2d(1,32,3)-ReLU, a residual block
  at 32 channels and one at 64 channels with stride 2 (two 3x3 convolutions with a ReLU between,
  added to the shortcut, an identity or a strided 1x1 Conv2d, then ReLU), global average
  pooling, flatten, Dense(64,10); no biases, so LRP-0 conserves exactly; trained with torch
  (Adam, cosine schedule, 40 epochs): 98.4%.

They were trained by :mod:`relprop.models.train_digits` (``python -m
relprop.models.train_digits``; fixed seeds, deterministic for a given torch version, CPU) and
stored with :meth:`relprop.Graph.save`.
"""
from __future__ import annotations

import os

import numpy as np

from ..graph import Graph, Sequential, load

_HERE = os.path.dirname(os.path.abspath(__file__))

#: Per-sample input shapes of the bundled models.
CNN_INPUT_SHAPE = (1, 8, 8)
MLP_INPUT_SHAPE = (64,)
#: Digits pixel values range over 0..16; inputs are ``pixels / DIGITS_SCALE``.
DIGITS_SCALE = 16.0


def _path(name):
    return os.path.join(_HERE, name)


def digits_cnn() -> Sequential:
    """The bundled digits CNN: input ``(n, 1, 8, 8)`` in ``[0, 1]``, output 10 logits."""
    return load(_path("digits_cnn.npz"))


def digits_resnet() -> Graph:
    """The bundled digits ResNet (a :class:`relprop.Graph` with residual additions): input
    ``(n, 1, 8, 8)`` in ``[0, 1]``, output 10 logits."""
    return load(_path("digits_resnet.npz"))


def digits_mlp() -> Sequential:
    """The bundled digits MLP: input ``(n, 64)`` in ``[0, 1]``, output 10 logits."""
    return load(_path("digits_mlp.npz"))


def preprocess(pixels, flat=False) -> np.ndarray:
    """Digits pixels (0..16, any shape with 64 values per sample) as model inputs.

    Returns float32 ``pixels / 16`` shaped ``(n, 1, 8, 8)``, or ``(n, 64)`` with ``flat=True``.
    """
    x = np.asarray(pixels, dtype=np.float32) / np.float32(DIGITS_SCALE)
    if x.size % 64:
        raise ValueError(f"digits samples have 64 pixels; got an array of shape {x.shape}")
    return x.reshape((-1,) + (MLP_INPUT_SHAPE if flat else CNN_INPUT_SHAPE))


def digits_data(split="test", flat=False):
    """The digits split the bundled models were evaluated on, already preprocessed.

    Parameters
    ----------
    split : {"test", "train"}
        "test" (450 samples) ships with relprop; "train" (1347 samples) needs scikit-learn.
    flat : bool
        ``(n, 64)`` inputs for the MLP instead of ``(n, 1, 8, 8)`` for the CNN.

    Returns
    -------
    x : float32 array (n, 1, 8, 8) or (n, 64), values in [0, 1]
    y : int64 array (n,), the digit labels
    """
    if split == "test":
        with np.load(_path("digits_test.npz"), allow_pickle=False) as d:
            pixels, y = d["x"], d["y"]
    elif split == "train":
        from .train_digits import split as _split

        pixels, _, y, _ = _split()
    else:
        raise ValueError(f"split must be 'test' or 'train', got {split!r}")
    return preprocess(pixels, flat), np.asarray(y, dtype=np.int64)


__all__ = ["CNN_INPUT_SHAPE", "DIGITS_SCALE", "MLP_INPUT_SHAPE", "digits_cnn", "digits_data",
           "digits_mlp", "digits_resnet", "preprocess"]
