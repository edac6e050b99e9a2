"""Train the bundled digits models and write them as relprop package data.

Run ``python -m relprop.models.train_digits [--out DIR]`` (needs torch and scikit-learn; CPU,
about a minute on two cores; without them it says how to install them and exits with
status 2).  The script is deterministic: fixed seeds, one thread,
``torch.use_deterministic_algorithms``.  It writes

* ``digits_cnn.npz`` - Conv2d(1,16,3,p1)-ReLU-Conv2d(16,32,3,p1)-ReLU-MaxPool2d(2)-Flatten-
  Dense(512,64)-ReLU-Dense(64,10), trained with torch (Adam), imported with
  :func:`relprop.from_torch`;
* ``digits_mlp.npz`` - scikit-learn ``MLPClassifier(hidden_layer_sizes=(64,), activation="relu")``,
  imported with :func:`relprop.from_sklearn`;
* ``digits_test.npz`` - the test split as raw uint8 pixels (0..16) and labels, so that
  :func:`relprop.models.digits_data` needs no scikit-learn;

and prints the test accuracy of each model computed with relprop's forward pass.
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

import numpy as np

SEED = 0
EPOCHS = 40
BATCH = 64


#: The packages training needs, with how to install them.
REQUIREMENTS = (("sklearn", "scikit-learn", "pip install scikit-learn (or pip install "
                 "'relprop[test]')"),
                ("torch", "torch", "pip install torch (the tests pin torch==2.14.1)"))


def require(module):
    """Import ``module`` (a key of :data:`REQUIREMENTS`) or raise ImportError saying how to
    install it."""
    import importlib

    _, package, how = next(r for r in REQUIREMENTS if r[0] == module)
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise ImportError(f"the digits training data and models need {package} ({exc}): "
                          f"{how}") from None


def split():
    """The fixed stratified split: (X_train, X_test, y_train, y_test), raw pixels 0..16.

    Raises ImportError (naming the install command) without scikit-learn.
    """
    require("sklearn")
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    return train_test_split(d.data.astype(np.uint8), d.target.astype(np.int64), test_size=0.25,
                            random_state=0, stratify=d.target)


def cnn_module():
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(512, 64), nn.ReLU(),
        nn.Linear(64, 10),
    )


def train_cnn(x_train, y_train):
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    net = cnn_module()
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.from_numpy(x_train.reshape(-1, 1, 8, 8).astype(np.float32) / 16)
    y = torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    net.train()
    for _ in range(EPOCHS):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
    return net.eval()


def train_mlp(x_train, y_train):
    from sklearn.exceptions import ConvergenceWarning
    from sklearn.neural_network import MLPClassifier

    mlp = MLPClassifier(hidden_layer_sizes=(64,), activation="relu", max_iter=300,
                        random_state=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        mlp.fit(x_train.astype(np.float32) / 16, y_train)
    return mlp


def main(argv=None):
    import relprop
    from relprop.importers import from_sklearn, from_torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                   help="output folder (default: the relprop.models package)")
    args = p.parse_args(argv)
    try:  # both before anything is written
        for module, _, _ in REQUIREMENTS:
            require(module)
    except ImportError as exc:
        print(f"relprop.models.train_digits: error: {exc}", file=sys.stderr)
        return 2
    x_train, x_test, y_train, y_test = split()
    os.makedirs(args.out, exist_ok=True)
    np.savez_compressed(os.path.join(args.out, "digits_test.npz"),
                        x=x_test.reshape(-1, 8, 8), y=y_test.astype(np.uint8))

    cnn = from_torch(train_cnn(x_train, y_train), (1, 8, 8))
    mlp = from_sklearn(train_mlp(x_train, y_train))
    mlp = relprop.Sequential([type(layer)(layer.weight.astype(np.float32),
                                          layer.bias.astype(np.float32))
                              if layer.linear else layer for layer in mlp.layers],
                             input_shape=mlp.input_shape)
    for name, net, x in (("digits_cnn", cnn, x_test.reshape(-1, 1, 8, 8)),
                         ("digits_mlp", mlp, x_test)):
        net.save(os.path.join(args.out, f"{name}.npz"))
        acc = float((net(x.astype(np.float32) / 16).argmax(axis=1) == y_test).mean())
        print(f"{name}: test accuracy {acc:.4f} ({len(y_test)} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
