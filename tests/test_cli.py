"""The ``relprop`` command line, run end to end in a subprocess on temporary folders."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import relprop
from relprop import cli, models


def run(*args, cwd=None):
    """Run ``python -m relprop.cli ARGS``; returns the CompletedProcess."""
    return subprocess.run([sys.executable, "-m", "relprop.cli", *map(str, args)], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def assert_user_error(proc, *words):
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relprop: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for w in words:
        assert w in lines[0], lines[0]


def png_size(path):
    Image = pytest.importorskip("PIL.Image")
    with Image.open(path) as im:
        return im.size, im.mode


# ------------------------------------------------------------------------------------ demo --
@pytest.mark.parametrize("model", ["digits_cnn", "digits_resnet"])
def test_demo_writes_grid_and_relevances(tmp_path, model):
    pytest.importorskip("PIL")
    out = tmp_path / "demo"
    proc = run("demo", "--out", out, "--n", 3, "--threads", 1, "--model", model)
    assert proc.returncode == 0, proc.stderr
    png, npz = out / "digits_grid.png", out / "relevance.npz"
    assert f"wrote {png}" in proc.stdout and f"wrote {npz}" in proc.stdout
    for method, _, _ in cli.DEMO_METHODS:
        assert method in proc.stdout
    cell, pad, cols = 8 * 16, 3, 1 + len(cli.DEMO_METHODS)
    (w, h), mode = png_size(png)
    assert mode == "RGB" and w == cols * (cell + pad) + pad and h > 3 * (cell + pad)
    with np.load(npz) as d:
        x, label, target = d["x"], d["label"], d["target"]
        assert x.shape == (3, 1, 8, 8) and list(label) == [0, 1, 2]
        net = getattr(models, model)()
        assert f"the bundled {cli.DEMO_MODELS[model]}" in proc.stdout
        np.testing.assert_array_equal(target, net(x).argmax(axis=1))
        for method, _, _ in cli.DEMO_METHODS:
            assert d[method].shape == (3, 1, 8, 8) and np.isfinite(d[method]).all()


# --------------------------------------------------------------------------------- explain --
def test_explain_npy_with_npz_model(tmp_path):
    pytest.importorskip("PIL")
    net = models.digits_cnn()
    net.save(tmp_path / "cnn.npz")
    x, _ = models.digits_data()
    np.save(tmp_path / "x.npy", x[:10])
    out = tmp_path / "out"
    proc = run("explain", tmp_path / "cnn.npz", tmp_path / "x.npy", "-m", "lrp.epsilon",
               "-p", "epsilon=0.01", "-o", out, "--batch-size", 4, "--threads", 1,
               "--heatmaps")  # array inputs get heatmaps on request
    assert proc.returncode == 0, proc.stderr
    R = np.load(out / "relevance.npy")
    assert R.shape == (10, 1, 8, 8) and R.dtype == np.float32
    pred = net(x[:10]).argmax(axis=1)
    # the CLI's batching and default target (the predicted class) give the library's result
    np.testing.assert_allclose(R, relprop.lrp(net, x[:10], pred, "epsilon", epsilon=0.01),
                               rtol=1e-6, atol=1e-7)
    for i in range(10):
        assert png_size(out / "heatmaps" / f"{i}.png") == ((128, 128), "RGB")
    rows = (out / "explained.csv").read_text().splitlines()
    assert rows[0] == "name,target,score,relevance_sum" and len(rows) == 11
    assert [int(r.split(",")[1]) for r in rows[1:]] == list(pred)
    assert f"wrote {out / 'relevance.npy'}" in proc.stdout


def _digits_cnn_onnx(path):
    """The bundled CNN written as ONNX with onnx.helper (Conv/Relu/MaxPool/Flatten/Gemm)."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    lin = [layer for layer in models.digits_cnn().layers if layer.linear]
    inits = []
    for k, layer in enumerate(lin):
        inits += [numpy_helper.from_array(layer.weight, f"w{k}"),
                  numpy_helper.from_array(layer.bias, f"b{k}")]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p"], name="pool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("Flatten", ["p"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "w2", "b2"], ["d"], name="fc0", transB=1),
        helper.make_node("Relu", ["d"], ["r2"], name="relu2"),
        helper.make_node("Gemm", ["r2", "w3", "b3"], ["y"], name="fc1", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "digits", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_explain_onnx_model_on_image_folder(tmp_path):
    Image = pytest.importorskip("PIL.Image")
    model = _digits_cnn_onnx(tmp_path / "digits.onnx")
    x, _ = models.digits_data()
    folder = tmp_path / "images"
    folder.mkdir()
    pixels = np.rint(x[:3, 0] * 255).astype(np.uint8)
    Image.fromarray(pixels[0]).save(folder / "a.png")                      # gray, 8x8
    Image.fromarray(pixels[1]).convert("RGB").save(folder / "b.png")      # RGB -> gray
    Image.fromarray(pixels[2]).resize((24, 24), Image.NEAREST).save(folder / "c.jpg",
                                                                    quality=95)  # resized
    (folder / "notes.txt").write_text("not an image")
    out = tmp_path / "out"
    proc = run("explain", model, folder, "-m", "gradient_x_input", "-o", out, "--overlay")
    assert proc.returncode == 0, proc.stderr
    R = np.load(out / "relevance.npy")
    assert R.shape == (3, 1, 8, 8)
    for stem in "abc":
        assert png_size(out / "heatmaps" / f"{stem}.png") == ((128, 128), "RGB")
    # the 8x8 gray PNG is read exactly as pixel / 255
    net = models.digits_cnn()
    xa = (pixels[:2].astype(np.float32) / 255)[:, None]
    want = relprop.gradient_x_input(net, xa, net(xa).argmax(axis=1))
    np.testing.assert_allclose(R[:2], want, rtol=1e-5, atol=1e-6)


def test_explain_features_without_heatmaps(tmp_path):
    x, _ = models.digits_data(flat=True)
    np.save(tmp_path / "x.npy", x[:5])
    out = tmp_path / "out"
    proc = run("explain", "digits_mlp", tmp_path / "x.npy", "-m", "gradient", "--target", 3,
               "-o", out)
    assert proc.returncode == 0, proc.stderr
    R = np.load(out / "relevance.npy")
    np.testing.assert_allclose(R, relprop.gradient(models.digits_mlp(), x[:5], 3), rtol=1e-6)
    assert not (out / "heatmaps").exists() and "no heatmap PNGs" in proc.stdout


def test_explain_gamma_box_defaults_to_input_range(tmp_path):
    x, _ = models.digits_data()
    np.save(tmp_path / "x.npy", x[:4])
    proc = run("explain", "digits_cnn", tmp_path / "x.npy", "-m", "lrp.epsilon_gamma_box",
               "-o", tmp_path / "out")
    assert proc.returncode == 0, proc.stderr
    assert "low=0" in proc.stdout and "high=1" in proc.stdout
    net = models.digits_cnn()
    want = relprop.lrp(net, x[:4], net(x[:4]).argmax(axis=1), "epsilon_gamma_box",
                       low=float(x[:4].min()), high=float(x[:4].max()))
    np.testing.assert_allclose(np.load(tmp_path / "out" / "relevance.npy"), want, rtol=1e-5,
                               atol=1e-7)


# ------------------------------------------------------------------------------------ info --
def test_info_counts_parameters_and_flops():
    proc = run("info", "digits_cnn")
    assert proc.returncode == 0, proc.stderr
    # by hand from the architecture: weights + biases; 2 FLOPs per multiply-add, 1 per
    # bias add, ReLU output and pooling window element
    params = (16 * 9 + 16) + (32 * 16 * 9 + 32) + (512 * 64 + 64) + (64 * 10 + 10)
    flops = (16 * 64 * (2 * 9 + 1) + 16 * 64 + 32 * 64 * (2 * 16 * 9 + 1) + 32 * 64
             + 32 * 16 * 4 + (2 * 512 * 64 + 64) + 64 + (2 * 64 * 10 + 10))
    assert f"parameters: {params:,}" in proc.stdout
    assert f"FLOPs per sample: {flops:,}" in proc.stdout
    assert "Conv2d 16->32 3x3" in proc.stdout and "(32, 4, 4)" in proc.stdout


def test_info_lists_every_layers_plan():
    # the algorithm of each pass of each layer with weights and its workspace, as the planner
    # gives them for one sample under the ISA in use
    proc = run("info", "digits_cnn")
    assert proc.returncode == 0, proc.stderr
    net = models.digits_cnn()
    lines = proc.stdout.splitlines()
    assert "plan (fwd / bwd)" in lines[1]
    shapes = net.tensor_shapes(net.input_shape)
    for i, node in enumerate(net.nodes):
        row = next(line for line in lines if line.startswith(f"{i:>3}  "))
        layer = node.layer
        if not layer.linear:
            assert "gemm" not in row and "winograd" not in row
            continue
        if isinstance(layer, relprop.Dense):
            assert row.rstrip().endswith("gemm                    0 / 0")
            continue
        x = (1,) + shapes[node.inputs[0]]
        fwd, bwd = (relprop.ops.conv2d_plan(x, layer.weight.shape, layer.stride, layer.padding,
                                            np.float32, backward) for backward in (False, True))
        algo = fwd.algorithm if fwd.algorithm == bwd.algorithm else \
            f"{fwd.algorithm} / {bwd.algorithm}"
        assert f"  {algo}" in row and f"{fwd.workspace_bytes:,} / {bwd.workspace_bytes:,}" in row
    assert "plans: instruction set " + relprop.ops.isa() in proc.stdout


def test_info_onnx_and_npz_without_shape(tmp_path):
    model = _digits_cnn_onnx(tmp_path / "digits.onnx")
    proc = run("info", model)
    assert proc.returncode == 0 and "input (1, 8, 8) -> output (10,)" in proc.stdout
    relprop.Sequential(models.digits_mlp().layers).save(tmp_path / "noshape.npz")
    proc = run("info", tmp_path / "noshape.npz")
    assert proc.returncode == 0 and "input shape unknown" in proc.stdout
    proc = run("info", tmp_path / "noshape.npz", "--input-shape", "64")
    assert proc.returncode == 0 and "FLOPs per sample: " in proc.stdout


# ---------------------------------------------------------------------------------- errors --
def test_user_errors_print_one_line(tmp_path):
    x = tmp_path / "x.npy"
    np.save(x, np.zeros((5, 3), np.float32))
    (tmp_path / "model.pt").write_bytes(b"\x80\x02}q\x00.")
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07\x12\x05trunc")
    out = tmp_path / "out"
    assert_user_error(run("info", tmp_path / "missing.npz"), "missing.npz", "no such")
    assert_user_error(run("info", tmp_path / "model.pt"), "unsupported model file")
    assert_user_error(run("info", tmp_path / "bad.onnx"), "bad.onnx")
    assert_user_error(run("explain", "digits_cnn", x, "-o", out), "(5, 3)", "(n, 1, 8, 8)")
    assert_user_error(run("explain", "digits_cnn", "digits", "-m", "lrp.nonsense", "-o", out),
                      "unknown method", "lrp.nonsense")
    assert_user_error(run("explain", "digits_cnn", "digits", "--target", 12, "-o", out),
                      "out of range")
    assert_user_error(run("explain", "digits_cnn", tmp_path / "nothing", "-o", out), "nothing")
    assert_user_error(run("explain", "digits_cnn", "digits", "-m", "lrp.epsilon",
                          "-p", "gamma=2", "-o", out), "gamma")
    assert_user_error(run("explain", "digits_cnn"), "required")
    (tmp_path / "afile").write_text("")  # OUTDIR a file: was "[Errno 17] File exists"
    assert_user_error(run("explain", "digits_cnn", "digits", "-o", tmp_path / "afile"),
                      "afile: the output folder exists as a file")
    assert_user_error(run("demo", "--out", tmp_path / "afile"), "exists as a file")
    assert_user_error(run("explain", "digits_cnn", "digits", "--threads", 100000, "-o", out),
                      "--threads=100000 threads is more than")  # was "n=100000"
    assert_user_error(run("frobnicate"), "frobnicate")
    assert not out.exists() or not (out / "relevance.npy").exists()


def test_bad_parameter_values_are_user_errors_checked_before_any_work(tmp_path):
    """-p values a method refuses (checked on one zero sample before the run), a target out of
    range and an output overflowing float32 are the user's: one line, status 2."""
    out = tmp_path / "out"
    assert_user_error(run("explain", "digits_cnn", "digits", "-m", "smoothgrad", "-p",
                          "seed=abc", "-o", out), "smoothgrad: ", "seed must be an int")
    assert_user_error(run("explain", "digits_cnn", "digits", "-m", "lrp.epsilon", "-p",
                          "epsilon=-1", "-o", out), "lrp.epsilon: ", "epsilon")
    assert not (out / "relevance.npy").exists()
    big = relprop.Sequential([relprop.Flatten(), relprop.Dense(np.full((10, 64), 1e38,
                                                                     np.float32))],
                             input_shape=(1, 8, 8))  # zeros pass; the digits overflow
    big.save(tmp_path / "big.npz")
    assert_user_error(run("explain", tmp_path / "big.npz", "digits", "-m", "gradient", "-o",
                          out), "samples 0..449 of INPUTS", "overflowed")


@pytest.mark.parametrize("y, words", [
    (np.array([0, 1]), ["2 labels 'y' for 4 samples 'x'"]),
    (np.array([0, 1, 2, 10]), ["label 10 is out of range for 10 outputs"]),
    (np.array([0.5, 1, 2, 3]), ["labels 'y' must be a 1-d array of ints", "float64"]),
    (np.zeros((4, 2), int), ["labels 'y' must be a 1-d array of ints", "(4, 2)"]),
])
def test_labels_that_do_not_fit_their_inputs_are_user_errors(tmp_path, y, words):
    """An .npz whose 'y' is not one class per sample of 'x': evaluate raised a traceback (status
    1) or truncated float labels silently; concepts dropped them for --target pred silently."""
    xy = tmp_path / "xy.npz"
    np.savez(xy, x=np.zeros((4, 1, 8, 8), np.float32), y=y)
    if "out of range" not in words[0]:  # concepts checks the range with its own words
        assert_user_error(run("concepts", "digits_cnn", xy, "--layers", "0", "-o",
                              tmp_path / "c"), "xy.npz: ", *words)
    assert_user_error(run("evaluate", "digits_cnn", xy, "--target", "label", "--methods",
                          "gradient", "--metrics", "sparseness"), "xy.npz: ", *words)


@pytest.mark.parametrize("flags, words", [
    (["--methods", " , "], ["--methods names no method"]),
    (["--batch-size", "0"], ["--batch-size must be at least 1, got 0"]),
])
def test_evaluate_flags_are_checked(flags, words):
    """Were a StopIteration and a ValueError traceback (status 1)."""
    args = {"--methods": "gradient", "--metrics": "sparseness", **dict(zip(flags[::2],
                                                                          flags[1::2]))}
    assert_user_error(run("evaluate", "digits_cnn", "digits", *sum(args.items(), ())), *words)


@pytest.mark.parametrize("suffix", [".npy", ".npz"])
@pytest.mark.parametrize("x, words", [
    (np.ones((2, 1, 8, 8), bool), ["INPUTS has unsupported dtype bool"]),
    (np.ones((2, 1, 8, 8), complex), ["INPUTS has unsupported dtype complex128"]),
    (np.full((2, 1, 8, 8), np.nan), ["samples 0..1 of INPUTS: sample 0 contains NaN"]),
])
def test_inputs_of_a_bad_dtype_or_values_are_user_errors_in_every_subcommand(tmp_path, suffix,
                                                                             x, words):
    """explain and concepts raised a TypeError traceback (status 1) for bool or complex INPUTS,
    and concepts a ValueError traceback for NaN ones (its chunks were read unchecked)."""
    path = tmp_path / f"x{suffix}"
    np.save(path, x) if suffix == ".npy" else np.savez(path, x=x)
    if "NaN" not in words[0]:  # evaluate checks its whole x, with the library's words
        assert_user_error(run("evaluate", "digits_cnn", path, "--methods", "gradient",
                              "--metrics", "sparseness"), *words)
    assert_user_error(run("explain", "digits_cnn", path, "-o", tmp_path / "e"), *words)
    assert_user_error(run("concepts", "digits_cnn", path, "--layers", "0", "--target", "pred",
                          "-o", tmp_path / "c"), *words)


@pytest.mark.parametrize("error", [TypeError, ValueError, MemoryError])
@pytest.mark.parametrize("where", ["method", "table"])
def test_a_bug_keeps_its_traceback(monkeypatch, tmp_path, error, where):
    """An error inside relprop while a chunk is explained or written is a bug, not a user
    mistake: it leaves main() with its traceback (a TypeError was reported as a bad -p
    parameter, any ValueError as a problem of the samples, a MemoryError as a usage error)."""
    from relprop import methods, stream

    def inject(module, name, when=lambda *a: True):
        real = getattr(module, name)

        def broken(*args, **kwargs):
            if when(*args):
                raise error("injected bug")
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, broken)

    if where == "method":  # (the one-sample check of the parameters passes)
        inject(methods, "gradient_pass", lambda net, x, *a: len(x) > 1)
    else:
        inject(stream, "table")
    with pytest.raises(error, match="injected bug"):
        cli.main(["explain", "digits_cnn", "digits", "-m", "gradient", "-o",
                  str(tmp_path / "o")])


def test_unknown_method_parameter_names_the_accepted_ones(tmp_path):
    """-p eps=0.1 printed "Epsilon.__init__() got an unexpected keyword argument 'eps'"."""
    out = tmp_path / "out"
    for method, key, accepted in [
            ("lrp.epsilon", "eps", ["epsilon=1e-06"]),
            ("lrp.epsilon_gamma_box", "eps", ["low=", "high=", "epsilon=1e-06", "gamma=0.25",
                                              "stabilizer=1e-06"]),
            ("smoothgrad", "noise_level", ["n=16", "sigma=0.15", "seed=None"]),
            ("lrp.alpha_beta", "a", ["alpha=2.0", "beta=1.0"])]:
        proc = run("explain", "digits_cnn", "digits", "-m", method, "-p", f"{key}=0.1", "-o", out)
        assert_user_error(proc, method, repr(key), *accepted)
        assert "unexpected keyword" not in proc.stderr
    assert_user_error(run("explain", "digits_cnn", "digits", "-m", "gradient", "-p", "eps=1",
                          "-o", out), "gradient takes no parameters")
    assert_user_error(run("explain", "digits_cnn", "digits", "-p", "batch_size=8", "-o", out),
                      "--batch-size")
    assert not out.exists()


def _methods_listing(text):
    """``{method: parameter text}`` from the method table at the end of ``explain --help``."""
    lines = text.split("methods (-m) and their parameters")[1].splitlines()[1:]
    listing, last = {}, None
    for line in lines:
        if line.startswith("  ") and not line.startswith("    "):
            last, _, rest = line.strip().partition(" ")
            listing[last] = rest.strip()
        elif line.strip():
            listing[last] += " " + line.strip()
    return listing


def test_explain_help_lists_methods_and_their_parameters():
    import ast

    proc = run("explain", "--help")
    assert proc.returncode == 0, proc.stderr
    positionals = proc.stdout.split("positional arguments:")[1].split("options:")[0]
    for name in ("MODEL", "INPUTS"):
        assert re.search(rf"^  {name} +\S", positionals, re.M), positionals
    listing = _methods_listing(proc.stdout)
    names = set(relprop.METHODS) | {f"lrp.{c}" for c in relprop.composites.COMPOSITES}
    assert names <= set(listing) and "lrp.epsilon" in listing and "lrp.zplus" in listing
    assert listing["lrp.epsilon"] == "epsilon=1e-06"
    assert listing["gradient"] == "no parameters"
    assert listing["smoothgrad"] == "n=16, sigma=0.15, seed=None"
    assert listing["lrp.epsilon_gamma_box"].startswith("low=<min of INPUTS>, high=<max of INPUTS>")
    # every listed parameter is one the method takes, and the listed default is accepted
    net = models.digits_cnn()
    x = models.digits_data()[0][:2]
    for method, params in listing.items():
        kwargs = {}
        for item in params.split(", ") if params != "no parameters" else []:
            key, _, value = item.partition("=")
            kwargs[key] = float(x.min() if key == "low" else x.max()) if value.startswith("<") \
                else ast.literal_eval(value)
        R = relprop.explain(net, x, 3, method, **kwargs)
        assert R.shape == x.shape, method


def test_image_folder_errors(tmp_path):
    pytest.importorskip("PIL")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_user_error(run("explain", "digits_cnn", empty, "-o", tmp_path / "o"), "no images")
    (empty / "broken.png").write_bytes(b"not a png")
    assert_user_error(run("explain", "digits_cnn", empty, "-o", tmp_path / "o"), "broken.png")
    assert_user_error(run("explain", "digits_mlp", empty, "-o", tmp_path / "o"),
                      "(1, h, w) or (3, h, w)")


def test_image_conversions_are_reported_once_per_kind(tmp_path):
    """A 37x50 RGB PNG was explained as an 8x8 grayscale digit without a word."""
    Image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "images"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for name in ("p1", "p2"):  # two 37x50 RGB photos: colour and size differ
        pixels = rng.integers(0, 256, (50, 37, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{name}.png")
    alpha = rng.integers(0, 256, (8, 8, 4), dtype=np.uint8)
    Image.fromarray(alpha).save(folder / "q.png")  # RGBA, the right size
    Image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8)).save(folder / "r.png")  # as is
    for chunk in ("64", "1"):  # whole, or an image per chunk: still one warning per kind
        proc = run("explain", "digits_cnn", folder, "-m", "gradient", "-o", tmp_path / "out",
                   "--chunk-size", chunk)
        assert proc.returncode == 0, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert all(line.startswith("relprop: warning: ") for line in lines), lines
        rgb = [line for line in lines if "from RGB to" in line]
        rgba = [line for line in lines if "RGBA" in line]
        size = [line for line in lines if "resized" in line]
        assert len(lines) == 3 and len(rgb) == len(rgba) == len(size) == 1, lines
        assert "2 image(s)" in rgb[0] and "p1.png, p2.png" in rgb[0] and "grayscale" in rgb[0]
        assert "1 image(s)" in rgba[0] and "q.png" in rgba[0]
        assert "2 image(s) to 8x8" in size[0] and "p1.png (37x50)" in size[0]
        assert "r.png" not in proc.stderr
    # --strict refuses the first image that needs converting, and explains nothing, even when
    # it is not in the first chunk
    (folder / "a.png").write_bytes((folder / "r.png").read_bytes())  # fits, sorts first
    proc = run("explain", "digits_cnn", folder, "-m", "gradient", "-o", tmp_path / "strict",
               "--strict", "--chunk-size", 1)
    assert_user_error(proc, "p1.png", "37x50", "RGB", "(1, 8, 8)", "--strict")
    assert not (tmp_path / "strict" / "relevance.npy").exists()
    proc = run("evaluate", "digits_cnn", folder, "--methods", "gradient", "--strict")
    assert_user_error(proc, "p1.png", "--strict")
    # images that fit pass --strict without a warning
    proc = run("explain", "digits_cnn", folder / "r.png", "-m", "gradient", "-o",
               tmp_path / "fits", "--strict")
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_adding_a_subcommand(monkeypatch, capsys):
    def add_hello_parser(subparsers):
        p = subparsers.add_parser("hello")
        p.add_argument("model")
        p.set_defaults(func=lambda args: print(len(cli.load_model(args.model))))

    monkeypatch.setattr(cli, "SUBCOMMANDS", cli.SUBCOMMANDS + [add_hello_parser])
    assert cli.main(["hello", "digits_mlp"]) == 0
    assert capsys.readouterr().out == "3\n"
    assert cli.main(["hello", "nonexistent.npz"]) == 2
    err = capsys.readouterr().err
    assert err == "relprop: error: nonexistent.npz: no such model file\n"


# ----------------------------------------------------------------------------- broken pipe --
@pytest.mark.parametrize("args,unbuffered", [
    (["info", "digits_cnn"], False), (["info", "digits_cnn"], True),
    (["demo", "--n", "1", "--out", "{tmp}"], True)], ids=["info", "info-unbuffered", "demo"])
def test_closed_stdout_ends_quietly(tmp_path, args, unbuffered):
    """``relprop demo | head``: the reader of stdout goes away; relprop stops without a word on
    stderr (no 'relprop: error: [Errno 32] Broken pipe' from a print, no 'Exception ignored'
    from the last flush of a buffered stdout), status 141."""
    argv = [a.format(tmp=tmp_path / "demo") for a in args]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    if unbuffered:
        env["PYTHONUNBUFFERED"] = "1"
    with subprocess.Popen([sys.executable, "-m", "relprop.cli", *argv], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=env) as proc:
        proc.stdout.close()  # before the child writes anything: its first write meets EPIPE
        err = proc.stderr.read()
        status = proc.wait(timeout=300)
    assert status == 141, err
    assert err == ""


def test_info_and_explain_on_a_graph(tmp_path):
    # relprop info lists a graph's nodes with their inputs; explain writes its relevance
    proc = run("info", "digits_resnet")
    assert proc.returncode == 0, proc.stderr
    net = models.digits_resnet()
    add = next(n for n in net.nodes if n.layer.kind == "add")
    line = next(ln for ln in proc.stdout.splitlines() if f" {add.name} " in ln)
    assert ", ".join(add.inputs) in line and "Add" in line
    assert f"{len(net.nodes)} nodes" in proc.stdout
    out = tmp_path / "out"
    proc = run("explain", "digits_resnet", "digits", "-m", "lrp.epsilon_gamma_box", "-p", "low=0",
               "-p", "high=1", "-o", out, "--target", 4)
    assert proc.returncode == 0, proc.stderr
    x, _ = models.digits_data()
    R = np.load(out / "relevance.npy")
    np.testing.assert_allclose(R, relprop.lrp(net, x, 4, "epsilon_gamma_box", low=0.0, high=1.0),
                               rtol=1e-6, atol=1e-7)
