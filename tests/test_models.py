"""The bundled digits models: accuracy on the fixed test split, data, and loading."""
import pathlib
import re

import numpy as np
import pytest

from relprop import models

README = (pathlib.Path(__file__).resolve().parents[1] / "README.md").read_text()


def _sklearn_split():
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    from sklearn.model_selection import train_test_split

    d = sklearn_datasets.load_digits()
    return train_test_split(d.data, d.target, test_size=0.25, random_state=0, stratify=d.target)


def test_bundled_test_split_is_sklearn_split():
    _, x_test, _, y_test = _sklearn_split()
    x, y = models.digits_data()
    np.testing.assert_array_equal(y, y_test)
    np.testing.assert_array_equal(x.reshape(len(x), 64) * 16, x_test)
    assert x.dtype == np.float32 and x.shape == (450, 1, 8, 8)
    assert 0 <= x.min() and x.max() <= 1


@pytest.mark.parametrize("load, shape", [(models.digits_cnn, (1, 8, 8)),
                                         (models.digits_mlp, (64,)),
                                         (models.digits_resnet, (1, 8, 8))])
def test_accuracy_is_the_one_readme_quotes(load, shape):
    """README's "Bundled models" gives each model's test accuracy in bold after its name."""
    quoted = re.search(rf"`relprop\.models\.{load.__name__}\(\)`.*?\*\*([\d.]+)%\*\*", README,
                       re.S)
    _, x_test, _, y_test = _sklearn_split()
    net = load()
    assert net.input_shape == shape
    x = (x_test / 16).astype(np.float32).reshape((-1,) + shape)
    scores = net(x)
    assert scores.shape == (len(x), 10)
    accuracy = np.mean(scores.argmax(axis=1) == y_test)
    assert quoted and f"{100 * accuracy:.1f}" == quoted.group(1), (accuracy, quoted)


def test_cnn_architecture():
    net = models.digits_cnn()
    kinds = [layer.kind for layer in net.layers]
    assert kinds == ["conv2d", "relu", "conv2d", "relu", "maxpool2d", "flatten", "dense", "relu",
                     "dense"]
    assert net.output_shape == (10,)


def test_resnet_is_a_graph_with_residual_additions():
    import relprop as rp

    net = models.digits_resnet()
    assert type(net) is rp.Graph and net.output_shape == (10,)
    kinds = [n.layer.kind for n in net.nodes]
    assert kinds.count("add") == 2
    assert all(n.layer.bias is None for n in net.nodes if n.layer.linear)
    adds = [n for n in net.nodes if n.layer.kind == "add"]
    # the first block adds its input (the stem's ReLU) back: a tensor read twice
    assert adds[0].inputs[1] in {n.name for n in net.nodes if n.layer.kind == "relu"}
    # bias-free: gradient x input and LRP-0 give back the score
    x, _ = models.digits_data()
    x = x[:50].astype(np.float64)
    f = net(x)[:, 3]
    assert np.allclose(rp.gradient_x_input(net, x, 3).reshape(50, -1).sum(1), f, rtol=1e-9)
    lrp0 = rp.Composite([("linear", rp.rules.Epsilon(0))], stabilizer=0.0)  # Norm(0) on sums
    c = rp.conservation(net, x, 3, rp.lrp(net, x, 3, lrp0))
    assert np.allclose(c["difference"], 0, atol=1e-9 * np.abs(f).max())


def test_mlp_flat_data_matches_image_data():
    x_img, y_img = models.digits_data()
    x_flat, y_flat = models.digits_data(flat=True)
    np.testing.assert_array_equal(x_flat, x_img.reshape(len(x_img), 64))
    np.testing.assert_array_equal(y_flat, y_img)


def test_train_split():
    pytest.importorskip("sklearn")
    x, y = models.digits_data("train")
    assert x.shape == (1347, 1, 8, 8) and y.shape == (1347,)


def test_bad_arguments():
    with pytest.raises(ValueError, match="split"):
        models.digits_data("validation")
    with pytest.raises(ValueError, match="64 pixels"):
        models.preprocess(np.zeros((3, 7)))

