"""Image models as people have them (issue 24.5): a torchvision-style model trained on
mean/std-normalized inputs explains a folder of PNGs with ``--mean``/``--std`` and names its
classes with ``--classes``.  The normalization the tests expect is torchvision's own
(``ToTensor`` then ``Normalize``), the bounds and fills are converted by hand."""
import csv
import html

import numpy as np
import pytest

import relprop as rp
from relprop import cli, render
from relprop.inputs import HEATMAP_PIXELS

torch = pytest.importorskip("torch")
transforms = pytest.importorskip("torchvision.transforms")
Image = pytest.importorskip("PIL.Image")

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
NORM = ["--mean", ",".join(map(str, MEAN)), "--std", ",".join(map(str, STD))]
#: Class names with a comma and a quote, as ImageNet's have ("tench, Tinca tinca").
CLASSES = ["tench, Tinca tinca", "goldfish", 'the "ox"', "briard", "tabby cat"]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A tiny torchvision-style classifier saved as .npz, a folder of four RGB PNGs, and a
    class-name file; returns ``(folder, model path, classes path, torch module)``."""
    d = tmp_path_factory.mktemp("images")
    torch.manual_seed(0)
    module = torch.nn.Sequential(
        torch.nn.Conv2d(3, 6, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(6, 8, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 5)).eval()
    rp.from_torch(module, (3, 8, 8)).save(d / "model.npz")
    folder = d / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for i in range(4):
        Image.fromarray(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)).save(folder / f"p{i}.png")
    (d / "classes.txt").write_text("\n".join(f"  {c}" for c in CLASSES) + "\n\n")
    return folder, d / "model.npz", d / "classes.txt", module


def png(path):
    with Image.open(path) as im:
        im.load()
        return im


def rows_of(path):
    """The rows of a CSV file."""
    with open(path, newline="") as fh:
        return list(csv.reader(fh))


def pixels(folder):
    """The PNGs as torchvision's ToTensor reads them: (n, 3, 8, 8) float32 in [0, 1]."""
    to_tensor = transforms.ToTensor()
    return np.stack([to_tensor(png(folder / f"p{i}.png")).numpy() for i in range(4)])


def normalized(folder):
    """The PNGs as ToTensor + Normalize(MEAN, STD) give them to a torchvision model."""
    t = transforms.Compose([transforms.ToTensor(), transforms.Normalize(MEAN, STD)])
    return np.stack([t(png(folder / f"p{i}.png")).numpy() for i in range(4)])


def explain(tmp_path, files, *args):
    folder, model, _, _ = files
    out = tmp_path / "out"
    assert cli.main(["explain", str(model), str(folder), "-o", str(out), "--threads", "1",
                     *map(str, args)]) == 0
    return out


def test_readers_normalize_as_torchvision(files):
    folder, model, _, _ = files
    net = rp.load(model)
    want = normalized(folder)
    x, names = rp.inputs.load_inputs(str(folder), net, mean=MEAN, std=STD)
    np.testing.assert_array_equal(x, want)
    assert names == ["p0", "p1", "p2", "p3"]
    inputs = rp.stream.open_inputs(str(folder), net, mean=MEAN, std=STD)
    np.testing.assert_array_equal(inputs.read(1, 3), want[1:3])
    np.testing.assert_allclose(inputs.pixels(want), pixels(folder), atol=1e-6)
    with pytest.raises(ValueError, match="mean and std go together"):
        rp.inputs.read_images([], (3, 8, 8), mean=MEAN)
    with pytest.raises(ValueError, match="std must be positive"):
        rp.inputs.read_images([], (3, 8, 8), mean=MEAN, std=(1, 0, 1))
    with pytest.raises(ValueError, match="3 finite value"):
        rp.inputs.read_images([], (3, 8, 8), mean=(0.5, 0.5), std=STD)
    with pytest.raises(ValueError, match="normalize images"):
        rp.stream.open_inputs(str(model), net, mean=MEAN, std=STD)


def test_explain_with_mean_std_is_explaining_the_normalized_array(tmp_path, files):
    folder, model, _, module = files
    net = rp.load(model)
    x = normalized(folder)
    out = explain(tmp_path, files, "-m", "lrp.epsilon_plus_flat", "--overlay", *NORM)
    R = np.load(out / "relevance.npy")
    np.testing.assert_array_equal(R, rp.explain(net, x, "pred", "lrp.epsilon_plus_flat"))
    rows = rows_of(out / "explained.csv")
    pred = module(torch.from_numpy(x)).argmax(1).numpy()  # torch's predictions on its inputs
    assert [int(r[1]) for r in rows[1:]] == pred.tolist()
    # the overlay shows the un-normalized image under the heatmap
    scale = HEATMAP_PIXELS // 8
    want = render.upscale(render.heatmap(R, overlay=pixels(folder)), scale)
    for i in range(4):
        got = np.asarray(png(out / "heatmaps" / f"p{i}.png"))
        assert np.abs(got.astype(int) - want[i]).max() <= 1


def test_resume_refuses_another_normalization(tmp_path, files, capsys):
    out = explain(tmp_path, files, "-m", "gradient", "--chunk-size", "2", *NORM)
    other = ["--mean", "0.5,0.456,0.406", "--std", ",".join(map(str, STD))]
    folder, model, _, _ = files
    argv = ["explain", str(model), str(folder), "-o", str(out), "-m", "gradient",
            "--chunk-size", "2", "--resume"]
    capsys.readouterr()
    assert cli.main(argv + other) == 2
    err = capsys.readouterr().err
    assert "other arguments" in err and "normalization.mean" in err and "0.5" in err
    assert cli.main(argv) == 2  # without a normalization
    assert "normalization" in capsys.readouterr().err
    assert cli.main(argv + NORM) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_class_names_in_explained_csv_and_report(tmp_path, files, capsys):
    folder, model, classes, _ = files
    net = rp.load(model)
    out = explain(tmp_path, files, "-m", "lrp.epsilon", "--classes", classes, "--report",
                  "--target", 3)
    rows = rows_of(out / "explained.csv")
    assert rows[0] == ["name", "target", "class", "score", "relevance_sum"]
    assert [r[:3] for r in rows[1:]] == [[f"p{i}", "3", "briard"] for i in range(4)]
    page = html.unescape((out / "index.html").read_text())
    assert page.count("<td>3 briard</td>") == 4  # the target column
    pred = net(pixels(folder)).argmax(axis=1)
    for k in set(pred.tolist()):
        assert f"<td>{k} {CLASSES[k]}</td>" in page  # the predicted column
    assert "class 3 briard for every sample" in page
    assert cli.main(["verify", str(out)]) == 0  # the header with its class column too
    # predicted classes as targets: a name with a comma and quotes round-trips through the CSV
    out2 = tmp_path / "pred"
    assert cli.main(["explain", str(model), str(folder), "-o", str(out2), "-m", "gradient",
                     "--classes", str(classes)]) == 0
    rows = rows_of(out2 / "explained.csv")
    assert [r[2] for r in rows[1:]] == [CLASSES[k] for k in pred]
    # a file of other length is refused, naming both counts
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    capsys.readouterr()
    assert cli.main(["explain", str(model), str(folder), "-o", str(tmp_path / "x"),
                     "--classes", str(tmp_path / "three.txt")]) == 2
    assert "3 class name(s), but the model has 5 outputs" in capsys.readouterr().err


def test_box_bounds_in_pixel_units_are_converted_per_channel(tmp_path, files, capsys):
    folder, model, _, module = files
    net = rp.load(model)
    x = normalized(folder)
    out = explain(tmp_path, files, "-m", "lrp.epsilon_gamma_box", "-p", "low=0.1", "-p",
                  "high=0.9", "--report", *NORM)
    low = (0.1 - np.array(MEAN)) / np.array(STD)
    high = (0.9 - np.array(MEAN)) / np.array(STD)
    R = np.load(out / "relevance.npy")
    want = rp.explain(net, x, "pred", "lrp.epsilon_gamma_box", low=low, high=high)
    np.testing.assert_allclose(R, want, rtol=1e-6, atol=1e-7)
    assert "low=[" in capsys.readouterr().out
    page = html.unescape((out / "index.html").read_text())
    assert "low=0.1, high=0.9 are in pixel units" in page
    assert f"low=[{', '.join(format(v, '.4g') for v in low)}]" in page
    # the default box is the pixel range [0, 1], converted; in float64 = Zennit's composite
    # given the per-channel bounds
    out = explain(tmp_path, files, "-m", "lrp.epsilon_gamma_box", *NORM)
    low, high = -np.array(MEAN) / STD, (1 - np.array(MEAN)) / STD
    R = np.load(out / "relevance.npy")
    np.testing.assert_allclose(
        R, rp.explain(net, x, "pred", "lrp.epsilon_gamma_box", low=low, high=high),
        rtol=1e-6, atol=1e-7)
    zc = pytest.importorskip("zennit.composites")
    from zennit.attribution import Gradient

    m64 = module.double()
    x64 = torch.from_numpy(x.astype(np.float64))
    pred = m64(x64).argmax(1)
    comp = zc.EpsilonGammaBox(low=torch.from_numpy(low).view(1, 3, 1, 1).expand_as(x64),
                              high=torch.from_numpy(high).view(1, 3, 1, 1).expand_as(x64))
    with Gradient(m64, comp) as attributor:
        _, Rz = attributor(x64, torch.eye(5, dtype=torch.float64)[pred] * m64(x64))
    net64 = rp.from_torch(m64, (3, 8, 8))
    module.float()
    got = rp.explain(net64, x.astype(np.float64), pred.numpy(), "lrp.epsilon_gamma_box",
                     low=low, high=high)
    np.testing.assert_allclose(got, Rz.numpy(), rtol=1e-7, atol=1e-10)


def test_evaluate_fill_is_in_pixel_units(files, capsys):
    folder, model, classes, _ = files
    net = rp.load(model)
    x = normalized(folder)
    fill = transforms.Normalize(MEAN, STD)(torch.full((3, 1, 1), 0.25)).numpy()
    assert cli.main(["evaluate", str(model), str(folder), "--methods", "gradient",
                     "--metrics", "pixel_flipping", "--fill", "0.25", "--classes",
                     str(classes), *NORM]) == 0
    text = capsys.readouterr().out
    want = rp.metrics.compare(net, x, "pred", ["gradient"], ["pixel_flipping"], fill=fill)
    assert f"| gradient | {want.value('gradient', 'pixel_flipping'):.4g} |" in text
    assert "in pixel units" in text and "fill=0.25" in text
    pred = net(x).argmax(axis=1)
    ks, counts = np.unique(pred, return_counts=True)
    assert "Classes explained: " + ", ".join(
        f"{k} {CLASSES[k]} ({c})" for k, c in zip(ks, counts)) in text
