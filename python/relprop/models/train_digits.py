"""Train the bundled digits models and write them as relprop package data.

Run ``python -m relprop.models.train_digits [--out DIR] [--models NAMES]`` (needs torch and
scikit-learn; CPU, about a minute on two cores; without them it says how to install them and
exits with status 2).  The script is deterministic: fixed seeds, one thread,
``torch.use_deterministic_algorithms``.  It writes

* ``digits_cnn.npz`` - Conv2d(1,16,3,p1)-ReLU-Conv2d(16,32,3,p1)-ReLU-MaxPool2d(2)-Flatten-
  Dense(512,64)-ReLU-Dense(64,10), trained with torch (Adam), imported with
  :func:`relprop.from_torch`;
* ``digits_mlp.npz`` - scikit-learn ``MLPClassifier(hidden_layer_sizes=(64,), activation="relu")``,
  imported with :func:`relprop.from_sklearn`;
* ``digits_resnet.npz`` - a small ResNet (:func:`resnet_module`: two residual blocks, no biases),
  trained with torch (Adam, cosine schedule, 40 epochs), imported with
  :func:`relprop.from_torch` as a :class:`relprop.Graph`;
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


def resnet_module():
    """The digits ResNet: a stem Conv2d(1,32,3)-ReLU, a residual block at 32 channels and one at
    64 channels with stride 2 (its shortcut a strided 1x1 Conv2d), each two 3x3 convolutions
    with a ReLU between, added to the shortcut, then ReLU; AdaptiveAvgPool2d(1), flatten,
    Linear(64, 10).  No biases and no BatchNorm, so LRP-0 conserves the score exactly and
    gradient x input sums to it (a trained BatchNorm folds into biases that take a share).
    """
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in, c_out, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
            self.relu = nn.ReLU()
            self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
            self.shortcut = None
            if stride != 1 or c_in != c_out:
                self.shortcut = nn.Conv2d(c_in, c_out, 1, stride, bias=False)

        def forward(self, x):
            out = self.conv2(self.relu(self.conv1(x)))
            return self.relu(out + (x if self.shortcut is None else self.shortcut(x)))

    class DigitsResNet(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(1, 32, 3, 1, 1, bias=False), nn.ReLU())
            self.block1 = Block(32, 32, 1)
            self.block2 = Block(32, 64, 2)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(64, 10, bias=False)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.block2(self.block1(self.stem(x)))), 1))

    return DigitsResNet()


def train(make_module, x_train, y_train, epochs=EPOCHS, lr=1e-3, cosine=False):
    """``make_module()`` trained with Adam on the images (seeded before the module is made, one
    thread, deterministic); ``cosine``: cosine annealing of the learning rate to 0."""
    import torch

    torch.manual_seed(SEED)
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    net = make_module()
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, epochs) if cosine else None
    x = torch.from_numpy(x_train.reshape(-1, 1, 8, 8).astype(np.float32) / 16)
    y = torch.from_numpy(y_train)
    gen = torch.Generator().manual_seed(SEED)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for i in range(0, len(x), BATCH):
            idx = perm[i:i + BATCH]
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            loss.backward()
            opt.step()
        if sched is not None:
            sched.step()
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


#: The torch models: (module factory, training options); digits_mlp is scikit-learn's.
MODELS = {"digits_cnn": (cnn_module, {}), "digits_mlp": (None, {}),
          "digits_resnet": (resnet_module, {"epochs": 40, "lr": 5e-3, "cosine": True})}


def main(argv=None):
    import relprop
    from relprop.importers import from_sklearn, from_torch

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.dirname(os.path.abspath(__file__)),
                   help="output folder (default: the relprop.models package)")
    p.add_argument("--models", default=",".join(MODELS),
                   help=f"comma-separated subset of {', '.join(MODELS)} (default: all)")
    args = p.parse_args(argv)
    names = args.models.split(",")
    if not set(names) <= set(MODELS):
        p.error(f"--models: unknown {sorted(set(names) - set(MODELS))}; use {', '.join(MODELS)}")
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

    for name in names:
        if name == "digits_mlp":
            mlp = from_sklearn(train_mlp(x_train, y_train))
            net = relprop.Sequential([type(layer)(layer.weight.astype(np.float32),
                                                  layer.bias.astype(np.float32))
                                      if layer.linear else layer for layer in mlp.layers],
                                     input_shape=mlp.input_shape)
            x = x_test
        else:
            make, kw = MODELS[name]
            net = from_torch(train(make, x_train, y_train, **kw), (1, 8, 8))
            x = x_test.reshape(-1, 1, 8, 8)
        net.save(os.path.join(args.out, f"{name}.npz"))
        acc = float((net(x.astype(np.float32) / 16).argmax(axis=1) == y_test).mean())
        print(f"{name}: test accuracy {acc:.4f} ({len(y_test)} samples)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
