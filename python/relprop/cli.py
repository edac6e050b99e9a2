"""The ``relprop`` command line: ``demo``, ``explain``, ``info``, ``evaluate``.

``relprop demo`` explains digits with the bundled CNN under several methods and writes a PNG
grid; ``relprop explain MODEL INPUTS -m METHOD -o OUTDIR`` explains your own inputs;
``relprop info MODEL`` lists layers, shapes, parameters and FLOPs.  Run ``relprop CMD --help``.

MODEL is a relprop ``.npz`` (``net.save``), an ``.onnx`` file (read by
:func:`relprop.from_onnx`), or the name of a bundled model (``digits_cnn``, ``digits_mlp``).

INPUTS is a ``.npy`` array ``(n, *input_shape)`` (or one sample ``input_shape``), an ``.npz``
with an array ``x``, a PNG/JPEG/BMP image, a folder of them, or ``digits`` (the bundled
digits test split).  Images are read with Pillow and converted to the model's input shape
``(c, h, w)``: to grayscale (``c == 1``) or RGB (``c == 3``), resized to ``(h, w)`` with
bilinear filtering when their size differs, and scaled to ``[0, 1]`` (pixel / 255; no mean
or std normalization, no inversion).  Inputs that need other preprocessing should be given
as a ``.npy`` array.

User mistakes (a missing file, an unsupported model, a wrong input shape, an unknown method)
print one line ``relprop: error: ...`` to stderr and exit with status 2; set
``RELPROP_DEBUG=1`` for the traceback.

Adding a subcommand
-------------------
Write one function ``add_<name>_parser(subparsers)`` that creates the sub-parser with
``subparsers.add_parser(...)`` and sets ``func=`` (a callable taking the parsed ``args``),
then add it to :data:`SUBCOMMANDS`.  Raise ``ValueError`` for user mistakes.  The helpers
:func:`load_model`, :func:`load_inputs` and :func:`resolve_target` (or :func:`parse_target`) read
MODEL, INPUTS and ``--target`` the same way for every subcommand.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np

#: Image file types read from an INPUTS folder.
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
BUNDLED_MODELS = ("digits_cnn", "digits_mlp")
#: The methods of ``relprop demo``: (method, keyword arguments, column title).
DEMO_METHODS = (
    ("gradient", {}, "gradient"),
    ("gradient_x_input", {}, "gradient\nx input"),
    ("lrp.epsilon_plus_flat", {}, "LRP\nepsilon_plus_flat"),
    ("lrp.epsilon_gamma_box", {"low": 0.0, "high": 1.0}, "LRP\nepsilon_gamma_box"),
    ("lrp.epsilon_alpha2_beta1", {}, "LRP\nepsilon_alpha2_beta1"),
)
#: Heatmap PNGs are upscaled (nearest neighbour) to about this many pixels on their long side.
HEATMAP_PIXELS = 128


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
def parse_shape(text):
    """``"1,8,8"`` -> ``(1, 8, 8)``."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise ValueError(f"--input-shape must be comma-separated sizes like 1,8,8, got "
                         f"{text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise ValueError(f"--input-shape must be positive sizes, got {text!r}")
    return shape


def load_model(spec, input_shape=None):
    """A network from a bundled model name, a relprop ``.npz`` or an ``.onnx`` file.

    ``input_shape`` (a tuple) is required for an ``.npz`` saved without one, and must agree
    with the model's own when it has one.
    """
    from .graph import Sequential
    from .io import load

    if spec in BUNDLED_MODELS:
        from . import models

        net = getattr(models, spec)()
    else:
        if not os.path.exists(spec):
            raise ValueError(f"{spec}: no such model file")
        if os.path.isdir(spec):
            raise ValueError(f"{spec}: is a folder, not a model file")
        suffix = os.path.splitext(spec)[1].lower()
        if suffix == ".npz":
            net = load(spec)
        elif suffix == ".onnx":
            from .importers import from_onnx

            net = from_onnx(spec)
        else:
            raise ValueError(f"{spec}: unsupported model file type {suffix or '(none)'!r}; use a "
                             "relprop .npz (net.save) or an .onnx file (for PyTorch: "
                             "relprop.from_torch(module, shape).save(path))")
    if input_shape is not None:
        if net.input_shape is not None and tuple(input_shape) != net.input_shape:
            raise ValueError(f"--input-shape {tuple(input_shape)} disagrees with the model's "
                             f"input shape {net.input_shape}")
        net = Sequential(net.layers, input_shape=input_shape)
    return net


def _image_files(folder):
    files = sorted(f for f in os.listdir(folder)
                   if f.lower().endswith(IMAGE_SUFFIXES) and not f.startswith("."))
    if not files:
        raise ValueError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
    return [os.path.join(folder, f) for f in files]


def read_images(paths, input_shape):
    """Images as a float32 batch ``(n, *input_shape)`` in ``[0, 1]`` (see the module docstring).

    ``input_shape`` must be ``(1, h, w)`` (grayscale) or ``(3, h, w)`` (RGB).
    """
    if input_shape is None or len(input_shape) != 3 or input_shape[0] not in (1, 3):
        raise ValueError(f"images can feed models with input shape (1, h, w) or (3, h, w); this "
                         f"model takes {input_shape}: give INPUTS as a .npy array instead")
    try:
        from PIL import Image, UnidentifiedImageError
    except ImportError:
        raise ImportError("reading images needs Pillow: pip install pillow "
                          "(or pip install 'relprop[plot]')") from None
    c, h, w = input_shape
    out = np.empty((len(paths), c, h, w), dtype=np.float32)
    for i, path in enumerate(paths):
        try:
            with Image.open(path) as im:
                im = im.convert("L" if c == 1 else "RGB")
                if im.size != (w, h):
                    im = im.resize((w, h), Image.Resampling.BILINEAR)
                a = np.asarray(im, dtype=np.float32) / 255.0
        except (UnidentifiedImageError, OSError) as exc:
            raise ValueError(f"{path}: not a readable image ({exc})") from None
        out[i] = a[None] if c == 1 else a.transpose(2, 0, 1)
    return out


def load_inputs(spec, net):
    """``(x, names)``: the INPUTS of a subcommand as an array ``(n, *input_shape)`` and a name
    per sample (image file stems, or zero-padded indices).  Arrays are memory-mapped."""
    if spec == "digits":
        from .models import digits_data

        flat = net.input_shape is not None and len(net.input_shape) == 1
        x = digits_data("test", flat=flat)[0]
    elif not os.path.exists(spec):
        raise ValueError(f"{spec}: no such file or folder")
    elif os.path.isdir(spec) or spec.lower().endswith(IMAGE_SUFFIXES):
        paths = _image_files(spec) if os.path.isdir(spec) else [spec]
        names = [os.path.splitext(os.path.basename(p))[0] for p in paths]
        return read_images(paths, net.input_shape), names
    elif spec.lower().endswith(".npy"):
        try:
            x = np.load(spec, mmap_mode="r", allow_pickle=False)
        except (ValueError, OSError) as exc:
            raise ValueError(f"{spec}: not a readable .npy array ({exc})") from None
    elif spec.lower().endswith(".npz"):
        try:
            with np.load(spec, allow_pickle=False) as d:
                if "x" not in d.files:
                    raise ValueError(f"{spec}: an .npz of inputs needs an array 'x'; it has "
                                     f"{d.files}")
                x = d["x"]
        except (OSError, EOFError) as exc:
            raise ValueError(f"{spec}: not a readable .npz file ({exc})") from None
    else:
        raise ValueError(f"{spec}: INPUTS must be a .npy/.npz array, an image, a folder of "
                         "images or 'digits'")
    if net.input_shape is not None and x.shape == net.input_shape:
        x = x[None]
    if net.input_shape is not None and x.shape[1:] != net.input_shape:
        raise ValueError(f"{spec}: INPUTS has shape {x.shape} but the model expects "
                         f"(n, {', '.join(map(str, net.input_shape))})")
    if x.ndim < 2 or x.shape[0] == 0:
        raise ValueError(f"{spec}: INPUTS must be a non-empty batch (n, ...), got shape {x.shape}")
    width = len(str(len(x) - 1))
    return x, [f"{i:0{width}d}" for i in range(len(x))]


def parse_target(spec):
    """``--target``: None for "pred" (each sample's predicted class), else the class index."""
    if spec in (None, "pred"):
        return None
    try:
        return int(spec)
    except ValueError:
        raise ValueError(f"--target must be 'pred' or a class index, got {spec!r}") from None


def resolve_target(spec, net, x, batch_size=None):
    """``--target`` for the inputs ``x``: the predicted classes (n,) for "pred", else an int."""
    fixed = parse_target(spec)
    if fixed is not None:
        return fixed
    n = len(x)
    bs = n if batch_size is None else batch_size
    return np.concatenate([net.forward(np.asarray(x[i:i + bs])).reshape(
        min(bs, n - i), -1).argmax(axis=1) for i in range(0, n, bs)])


def check_method(name):
    """Raise ValueError unless ``name`` is a method :func:`relprop.explain` knows."""
    from .composites import COMPOSITES
    from .methods import METHODS
    from .rules import RULES

    if name in METHODS or (name.startswith("lrp.") and (name[4:] in COMPOSITES or
                                                         name[4:] in RULES)):
        return
    raise ValueError(f"unknown method {name!r}; use one of {', '.join(sorted(METHODS))}, or "
                     f"lrp.<composite> ({', '.join(sorted(COMPOSITES))}) or lrp.<rule> "
                     f"({', '.join(sorted(RULES))})")


def _param(text):
    key, sep, value = text.partition("=")
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    for conv in (int, float):
        try:
            return key, conv(value)
        except ValueError:
            pass
    return key, value


def _progress(total, desc):
    """A tqdm bar on stderr when tqdm is installed and stderr is a terminal, else None."""
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm(total=total, desc=desc, unit="sample", disable=None, file=sys.stderr,
                leave=False)


def _heatmap_scale(input_shape):
    return max(1, HEATMAP_PIXELS // max(input_shape[-2:]))


# --------------------------------------------------------------------------------------------
# relprop demo
# --------------------------------------------------------------------------------------------
def add_demo_parser(subparsers):
    p = subparsers.add_parser(
        "demo", help="explain digits with the bundled CNN under several methods",
        description="Explain digits of the bundled test split with the bundled CNN under "
                    "gradient, gradient x input and three LRP composites; write a PNG grid "
                    "(one row per digit) and print conservation and throughput.")
    p.add_argument("--out", default="relprop-demo", metavar="DIR",
                   help="output folder (default: ./relprop-demo)")
    p.add_argument("--n", type=int, default=10, help="digits to show (default 10: one per class)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    p.set_defaults(func=run_demo)
    return p


def _demo_samples(y, n):
    """Indices of n test digits cycling through the classes 0..9."""
    picked, used = [], set()
    for k in range(n):
        candidates = [i for i in np.flatnonzero(y == k % 10) if i not in used]
        if not candidates:
            candidates = [i for i in range(len(y)) if i not in used]
        picked.append(candidates[0])
        used.add(candidates[0])
    return np.array(picked)


def _titled(rgb, titles, cell, pad):
    """``rgb`` with a row of column titles on top, drawn with Pillow's default font (without
    Pillow, ``rgb`` as it is)."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        return rgb

    try:
        font = ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1
        font = ImageFont.load_default()
    head = 34
    im = Image.new("RGB", (rgb.shape[1], rgb.shape[0] + head), "white")
    im.paste(Image.fromarray(rgb), (0, head))
    draw = ImageDraw.Draw(im)
    for j, t in enumerate(titles):
        x0 = pad + j * (cell + pad) + cell // 2
        draw.multiline_text((x0, head // 2), t, fill="black", font=font, anchor="mm",
                            align="center")
    return np.asarray(im)


def run_demo(args):
    from . import conservation, explain, get_num_threads, models, render, set_num_threads

    if args.n < 1:
        raise ValueError(f"--n must be at least 1, got {args.n}")
    if args.threads is not None:
        set_num_threads(args.threads)
    net = models.digits_cnn()
    x_all, y_all = models.digits_data()
    if args.n > len(x_all):
        raise ValueError(f"--n must be at most {len(x_all)} (the digits test split), got {args.n}")
    pred_all = net.forward(x_all).argmax(axis=1)
    idx = _demo_samples(y_all, args.n)
    x, pred = x_all[idx], pred_all[idx]
    print(f"relprop demo: bundled digits CNN (test accuracy {np.mean(pred_all == y_all):.1%} on "
          f"{len(x_all)} digits), {get_num_threads()} thread(s)")
    print(f"explaining {len(x)} digits (labels {' '.join(map(str, y_all[idx]))}) for their "
          "predicted class")
    print(f"\n{'method':<28}{'mean f(x)':>11}{'mean sum R':>12}{'|f - sum R|/|f|':>17}"
          f"{'samples/s':>12}")
    columns, saved = [render.image(x, invert=True)], {"x": x, "label": y_all[idx], "target": pred}
    for method, kw, _ in DEMO_METHODS:
        explain(net, x_all[:8], pred_all[:8], method, **kw)  # warm-up: caches, threads
        t0 = time.perf_counter()
        R_all = explain(net, x_all, pred_all, method, **kw)
        rate = len(x_all) / max(time.perf_counter() - t0, 1e-9)
        c = conservation(net, x_all, pred_all, R_all)
        rel = np.abs(c["difference"]) / np.maximum(np.abs(c["score"]), 1e-12)
        print(f"{method:<28}{c['score'].mean():>11.3f}{c['relevance'].mean():>12.3f}"
              f"{rel.mean():>17.3g}{rate:>12,.0f}")
        columns.append(render.heatmap(R_all[idx]))
        saved[method] = R_all[idx]
    scale, pad = 16, 3
    cells = np.stack(columns, axis=1)  # (rows, cols, h, w, 3)
    rgb = render.grid(cells, pad=pad, pad_value=170, scale=scale)
    rgb = _titled(rgb, ["input"] + [t for _, _, t in DEMO_METHODS], 8 * scale, pad)
    os.makedirs(args.out, exist_ok=True)
    png = os.path.join(args.out, "digits_grid.png")
    render.save_png(png, rgb)
    npz = os.path.join(args.out, "relevance.npz")
    np.savez(npz, **saved)
    print("\nconservation: |f - sum R|/|f| is the mean relative gap between the explained score "
          "and the\nrelevance sum over the test split (LRP conserves up to biases and "
          "stabilizers; gradients do not)")
    print(f"wrote {png} ({rgb.shape[1]}x{rgb.shape[0]} px: input, then "
          f"{len(DEMO_METHODS)} methods; red = evidence for the class, blue = against)")
    print(f"wrote {npz} (inputs, labels, targets and each method's relevance)")
    return 0


# --------------------------------------------------------------------------------------------
# relprop explain
# --------------------------------------------------------------------------------------------
def add_explain_parser(subparsers):
    p = subparsers.add_parser(
        "explain", help="explain a model's predictions on your inputs",
        description="Explain MODEL's output on INPUTS chunk by chunk and write "
                    "OUTDIR/relevance.npy (n, *input_shape), one heatmap PNG per image input "
                    "in OUTDIR/heatmaps/ (per sample of an array input with --heatmaps), and "
                    "OUTDIR/explained.csv (name, target, score, relevance sum); "
                    "OUTDIR/progress.json records the completed chunks for --resume.",
        epilog="MODEL: relprop .npz, .onnx, or digits_cnn/digits_mlp.  INPUTS: .npy/.npz "
               "array (n, *input_shape), an image, a folder of PNG/JPEG images (converted to "
               "the model's (1|3, h, w): grayscale or RGB, resized bilinearly, pixel/255), or "
               "'digits'.")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("inputs", metavar="INPUTS")
    p.add_argument("-m", "--method", default="lrp.epsilon_plus_flat",
                   help="gradient, gradient_x_input, taylor, ..., or lrp.<composite or rule> "
                        "(default lrp.epsilon_plus_flat)")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("-p", "--param", type=_param, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="method parameter, repeatable (e.g. -p epsilon=0.1; for "
                        "lrp.epsilon_gamma_box/zbox low and high default to the range of INPUTS)")
    p.add_argument("--target", default="pred",
                   help="class to explain: 'pred' (each sample's predicted class, default) or "
                        "an index")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (default 64)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    p.add_argument("--input-shape", type=str, default=None,
                   help="per-sample shape, e.g. 1,8,8 (for an .npz model saved without one)")
    p.add_argument("--overlay", action="store_true", help="draw heatmaps over the inputs")
    from .stream import add_stream_arguments

    add_stream_arguments(p)  # --heatmaps --chunk-size --resume --workers --scheduler
    p.set_defaults(func=run_explain)
    return p


def run_explain(args):
    """Streams chunk by chunk, in this process or on Dask: see :mod:`relprop.stream`."""
    from .stream import cli_explain

    return cli_explain(args)


# --------------------------------------------------------------------------------------------
# relprop info
# --------------------------------------------------------------------------------------------
def add_info_parser(subparsers):
    p = subparsers.add_parser(
        "info", help="layers, shapes, parameters and FLOPs of a model",
        description="Print MODEL's layers with their output shapes, parameter counts and FLOPs "
                    "per sample (a multiply-add counts as 2 FLOPs; bias adds, ReLU and pooling "
                    "comparisons/adds count 1 per element).")
    p.add_argument("model", metavar="MODEL", help="relprop .npz, .onnx, or digits_cnn/digits_mlp")
    p.add_argument("--input-shape", type=str, default=None,
                   help="per-sample shape, e.g. 1,8,8 (for an .npz model saved without one)")
    p.set_defaults(func=run_info)
    return p


def describe(layer):
    """A short description of a layer, e.g. ``Conv2d 1->16 3x3 stride 1 pad 1``."""
    from . import layers as L

    def pair(p):
        return str(p[0]) if p[0] == p[1] else f"{p[0]}x{p[1]}"

    if isinstance(layer, L.Dense):
        return f"Dense {layer.in_features}->{layer.out_features}"
    if isinstance(layer, L.Conv2d):
        o, i, kh, kw = layer.weight.shape
        return (f"Conv2d {i}->{o} {kh}x{kw} stride {pair(layer.stride)} "
                f"pad {pair(layer.padding)}")
    if isinstance(layer, (L.MaxPool2d, L.AvgPool2d)):
        return (f"{type(layer).__name__} {pair(layer.kernel_size)} stride {pair(layer.stride)} "
                f"pad {pair(layer.padding)}")
    return type(layer).__name__


def layer_flops(layer, in_shape, out_shape):
    """FLOPs of one layer for one sample (see ``relprop info --help``)."""
    from . import layers as L

    n_out = int(np.prod(out_shape))
    if isinstance(layer, L.Dense):
        return 2 * layer.weight.size + (n_out if layer.bias is not None else 0)
    if isinstance(layer, L.Conv2d):
        per_out = 2 * int(np.prod(layer.weight.shape[1:]))
        return n_out * per_out + (n_out if layer.bias is not None else 0)
    if isinstance(layer, (L.MaxPool2d, L.AvgPool2d)):
        return n_out * layer.kernel_size[0] * layer.kernel_size[1]
    if isinstance(layer, L.GlobalAvgPool2d):
        return int(np.prod(in_shape))
    if isinstance(layer, L.ReLU):
        return n_out
    return 0


def run_info(args):
    shape = parse_shape(args.input_shape) if args.input_shape else None
    net = load_model(args.model, shape)
    shapes = net.shapes(net.input_shape) if net.input_shape is not None else None
    print(f"{args.model}: {len(net)} layers"
          + (f", input {net.input_shape} -> output {net.output_shape}" if shapes else
             ", input shape unknown (pass --input-shape for shapes and FLOPs)"))
    print(f"{'#':>3}  {'layer':<36}{'output shape':<18}{'params':>10}{'FLOPs':>14}")
    total_p = total_f = 0
    for i, layer in enumerate(net.layers):
        params = sum(int(a.size) for a in layer.arrays().values())
        total_p += params
        if shapes:
            flops = layer_flops(layer, shapes[i], shapes[i + 1])
            total_f += flops
            out, f = str(shapes[i + 1]), f"{flops:,}"
        else:
            out, f = "?", "?"
        print(f"{i:>3}  {describe(layer):<36}{out:<18}{params:>10,}{f:>14}")
    dtypes = sorted({str(l.weight.dtype) for l in net.layers if l.linear})
    print(f"parameters: {total_p:,} ({', '.join(dtypes)})")
    if shapes:
        print(f"FLOPs per sample: {total_f:,} (forward pass; a multiply-add counts as 2)")
    return 0


# --------------------------------------------------------------------------------------------
# relprop evaluate (defined in relprop.evaluate)
# --------------------------------------------------------------------------------------------
def add_evaluate_parser(subparsers):
    """``relprop evaluate MODEL INPUTS``: see :func:`relprop.evaluate.add_evaluate_parser`."""
    from .evaluate import add_evaluate_parser as add

    return add(subparsers)


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
#: One entry per subcommand: ``add(subparsers)`` creates it and sets ``func``.
SUBCOMMANDS = [add_demo_parser, add_explain_parser, add_info_parser, add_evaluate_parser]


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other relprop error."""

    def error(self, message):
        self.exit(2, f"relprop: error: {message} (see '{self.prog} --help')\n")


def build_parser():
    from . import __version__

    parser = _Parser(prog="relprop", description="Explain ReLU networks: LRP, gradients, Taylor. "
                                                 "Run 'relprop demo' to start.")
    parser.add_argument("--version", action="version", version=f"relprop {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in SUBCOMMANDS:
        add(sub)
    return parser


def main(argv=None):
    """Run the ``relprop`` command; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, OSError, ImportError, MemoryError) as exc:
        if os.environ.get("RELPROP_DEBUG"):
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"relprop: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("relprop: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
