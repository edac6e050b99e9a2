"""The ``relprop`` command line: ``demo``, ``explain``, ``verify``, ``info``, ``evaluate``,
``concepts``.

``relprop demo`` explains digits with a bundled model (the ResNet by default) under several
methods and writes a web page (``index.html``: a labelled grid of heatmaps) and a PNG grid;
``relprop explain MODEL INPUTS -m METHOD -o OUTDIR`` explains your own inputs, streaming them
chunk by chunk (``--resume``, ``--workers``; ``--report`` adds a web page);
``relprop verify OUTDIR`` checks such a folder against its checksums;
``relprop evaluate MODEL INPUTS`` compares methods by pixel flipping; ``relprop info MODEL``
lists layers, shapes, parameters and FLOPs.  Run ``relprop CMD --help``.

MODEL is a relprop ``.npz`` (``net.save``), an ``.onnx`` file (read by
:func:`relprop.from_onnx`), or the name of a bundled model (``digits_cnn``, ``digits_mlp``).

INPUTS is a ``.npy`` array ``(n, *input_shape)`` (or one sample ``input_shape``), an ``.npz``
with an array ``x``, a PNG/JPEG/BMP image, a folder of them, or ``digits`` (the bundled
digits test split).  Images are read with Pillow and converted to the model's input shape
``(c, h, w)``: to grayscale (``c == 1``) or RGB (``c == 3``), resized to ``(h, w)`` with
bilinear filtering when their size differs, and scaled to ``[0, 1]`` (pixel / 255; no
inversion), then with ``--mean``/``--std`` normalized per channel as torchvision's
``Normalize`` does (:class:`relprop.inputs.Normalization`).  Each kind of conversion (a colour
mode, a resize) is reported once on stderr as ``relprop: warning: ...`` with the images it
touched; ``--strict`` refuses such images instead.  Inputs that need other preprocessing
should be given as a ``.npy`` array.

User mistakes (a missing file, an unsupported model, a wrong input shape, an unknown method)
print one line ``relprop: error: ...`` to stderr and exit with status 2; set
``RELPROP_DEBUG=1`` for the traceback.  They are :class:`relprop.inputs.UsageError`: each
command checks the user's arguments and files before the work (:func:`user_input` turns what
the loaders and checks raise into one), so that any other exception is a bug and keeps its
traceback.  When the reader of stdout goes away (``relprop demo |
head``) a command stops quietly with status 141 (128 + SIGPIPE), as Unix tools do.

Adding a subcommand
-------------------
Write one function ``add_<name>_parser(subparsers)`` that creates the sub-parser with
``subparsers.add_parser(...)`` and sets ``func=`` (a callable taking the parsed ``args``),
then add it to :data:`SUBCOMMANDS`.  Raise :class:`UsageError` for user mistakes, and run
the steps that read the user's files or check their arguments inside ``with user_input():``.
The helpers :func:`load_model`, :func:`load_inputs` (from :mod:`relprop.inputs`) and
:func:`parse_target` read MODEL, INPUTS and ``--target`` the same way for every subcommand.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
import time

import numpy as np

# load_model and load_inputs read MODEL and INPUTS for every subcommand (see above)
from .inputs import (
    UsageError,
    _heatmap_scale,
    class_label,
    load_class_names,
    load_inputs,
    load_labels,
    load_model,
    normalization,
    user_input,
    warn_conversions,
)

#: The models ``relprop demo --model`` explains, with how the demo names them.
DEMO_MODELS = {"digits_resnet": "digits ResNet", "digits_cnn": "digits CNN"}
#: The methods of ``relprop demo``: (method, keyword arguments, column title).
DEMO_METHODS = (
    ("gradient", {}, "gradient"),
    ("gradient_x_input", {}, "gradient\nx input"),
    ("lrp.epsilon_plus_flat", {}, "LRP\nepsilon_plus_flat"),
    ("lrp.epsilon_gamma_box", {"low": 0.0, "high": 1.0}, "LRP\nepsilon_gamma_box"),
    ("lrp.epsilon_alpha2_beta1", {}, "LRP\nepsilon_alpha2_beta1"),
)
STRICT_HELP = ("refuse images whose channels or size differ from the model's input instead of "
               "converting them (converted images are named on stderr)")
#: ``--mean``/``--std`` of torchvision's ImageNet models (shown in the help).
IMAGENET_NORMALIZATION = ("0.485,0.456,0.406", "0.229,0.224,0.225")


# --------------------------------------------------------------------------------------------
# Shared helpers
# --------------------------------------------------------------------------------------------
def parse_shape(text):
    """``"1,8,8"`` -> ``(1, 8, 8)``."""
    try:
        shape = tuple(int(s) for s in text.replace("x", ",").split(",") if s.strip())
    except ValueError:
        raise UsageError(f"--input-shape must be comma-separated sizes like 1,8,8, got "
                         f"{text!r}") from None
    if not shape or any(s <= 0 for s in shape):
        raise UsageError(f"--input-shape must be positive sizes, got {text!r}")
    return shape


def parse_target(spec):
    """``--target``: None for "pred" (each sample's predicted class), else the class index."""
    if spec in (None, "pred"):
        return None
    try:
        return int(spec)
    except ValueError:
        raise UsageError(f"--target must be 'pred' or a class index, got {spec!r}") from None


def explain_target(spec):
    """``relprop explain --target``: None for "pred", a class index, or for a ``.npy`` file the
    output seeds it holds (:class:`relprop.stream.Seeds`, one per sample)."""
    if isinstance(spec, str) and spec.lower().endswith(".npy"):
        from .stream import Seeds

        with user_input("--target "):
            return Seeds(spec)
    try:
        return parse_target(spec)
    except UsageError:
        raise UsageError(f"--target must be 'pred', a class index or a .npy file of output "
                         f"seeds, got {spec!r}") from None


def check_method(name):
    """Raise ValueError unless ``name`` is a method :func:`relprop.explain` knows."""
    from .composites import COMPOSITES
    from .methods import METHODS
    from .rules import RULES

    if name in METHODS or (name.startswith("lrp.") and (name[4:] in COMPOSITES or
                                                         name[4:] in RULES)):
        return
    raise UsageError(f"unknown method {name!r}; use one of {', '.join(sorted(METHODS))}, or "
                     f"lrp.<composite> ({', '.join(sorted(COMPOSITES))}) or lrp.<rule> "
                     f"({', '.join(sorted(RULES))})")


#: Keyword arguments of the methods that ``-p`` cannot set: the command sets them itself
#: (``batch_size`` is ``--batch-size``, ``sample_offset`` each sample's index in INPUTS), or
#: they change what the method returns.
CLI_SET_PARAMETERS = ("batch_size", "sample_offset", "check_finite", "return_info", "layerwise")
#: Methods whose ``low``/``high`` default to the range of INPUTS in ``explain`` and ``evaluate``.
BOX_METHODS = ("lrp.epsilon_gamma_box", "lrp.zbox")


def method_parameters(name):
    """The parameters ``-p KEY=VALUE`` can set for the method ``name``.

    Parameters
    ----------
    name : str
        A method name of :func:`relprop.explain` ("gradient", "lrp.epsilon", ...).

    Returns
    -------
    dict
        ``{parameter: default}`` in signature order; the default is ``inspect.Parameter.empty``
        for a parameter without one.

    Raises
    ------
    ValueError
        ``name`` is not a method (see :func:`check_method`).
    """
    from .methods import parameters

    check_method(name)
    return {key: default for key, default in (parameters(name) or {}).items()
            if key not in CLI_SET_PARAMETERS}


def describe_parameters(name):
    """``-p`` parameters of the method ``name`` with their defaults, as text: ``"epsilon=1e-06,
    stabilizer=1e-06"``, or ``"no parameters"``."""
    import inspect

    parts = []
    for key, default in method_parameters(name).items():
        if name in BOX_METHODS and key in ("low", "high"):
            parts.append(f"{key}=<{'min' if key == 'low' else 'max'} of INPUTS>")
        elif default is inspect.Parameter.empty:
            parts.append(f"{key} (required)")
        else:
            parts.append(f"{key}={default!r}")
    return ", ".join(parts) if parts else "no parameters"


def check_parameters(name, keys):
    """Raise ValueError unless every ``-p`` key in ``keys`` is a parameter of the method
    ``name``; the message names the parameters the method accepts."""
    from .methods import parameters

    accepted = method_parameters(name)
    for key in keys:
        if key in accepted:
            continue
        if key == "batch_size":
            raise UsageError(f"-p batch_size: set the batch size with --batch-size; {name} "
                             f"accepts {describe_parameters(name)}")
        if key == "sample_offset" and key in (parameters(name) or {}):
            raise UsageError(f"-p sample_offset: {name} draws each sample's random numbers "
                             f"from its index in INPUTS; it accepts {describe_parameters(name)}")
        if not accepted:
            raise UsageError(f"-p {key}=...: {name} takes no parameters")
        raise UsageError(f"-p {key}=...: {name} has no parameter {key!r}; it accepts "
                         f"{describe_parameters(name)}")


def methods_help():
    """The methods of :func:`relprop.explain` and their ``-p`` parameters, one per line."""
    from .composites import COMPOSITES
    from .methods import METHODS
    from .rules import RULES

    rules = [r for r, cls in RULES.items() if "linear" in cls.applies_to]
    names = (list(METHODS) + [f"lrp.{c}" for c in COMPOSITES] + [f"lrp.{r}" for r in rules])
    width = max(map(len, names)) + 2
    lines = ["methods (-m) and their parameters (-p KEY=VALUE, defaults shown):"]
    for n in names:
        lines += textwrap.wrap(describe_parameters(n), 96, initial_indent=f"  {n:<{width}}",
                               subsequent_indent=" " * (width + 4), break_on_hyphens=False)
    return "\n".join(lines)


def _channel_values(text):
    """``--mean``/``--std``: ``"0.485,0.456,0.406"`` -> ``(0.485, 0.456, 0.406)``."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers like "
                                         f"{IMAGENET_NORMALIZATION[0]}, got {text!r}") from None


def add_image_arguments(p, pixel_units):
    """``--mean``, ``--std`` and ``--classes`` of ``explain`` and ``evaluate``; ``pixel_units``
    names the command's values that stay in pixel units under a normalization."""
    mean, std = IMAGENET_NORMALIZATION
    p.add_argument("--mean", type=_channel_values, default=None, metavar="R,G,B",
                   help="normalize image INPUTS per channel as (pixel/255 - mean) / std, as "
                        "torchvision's Normalize after ToTensor (its ImageNet models: --mean "
                        f"{mean} --std {std}); {pixel_units} stay in pixel units (pixel/255)")
    p.add_argument("--std", type=_channel_values, default=None, metavar="R,G,B",
                   help="the standard deviations of --mean's normalization")
    p.add_argument("--classes", default=None, metavar="FILE",
                   help="class names, one per line in the order of the model's outputs, shown "
                        "beside the class indices")


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


# --------------------------------------------------------------------------------------------
# relprop demo
# --------------------------------------------------------------------------------------------
def add_demo_parser(subparsers):
    p = subparsers.add_parser(
        "demo", help="explain digits with a bundled model under several methods",
        description="Explain the digits of the bundled test split with a bundled model (the "
                    "residual network digits_resnet, or digits_cnn) under "
                    "gradient, gradient x input and three LRP composites; print conservation "
                    "and throughput over all of them, and write DIR/index.html (open it in a "
                    "browser: N digits, one row each, with method names, true and predicted "
                    "class, f(x), sum R and the gap), the same grid as DIR/digits_grid.png and "
                    "the arrays as DIR/relevance.npz.")
    p.add_argument("--out", default="relprop-demo", metavar="DIR",
                   help="output folder (default: ./relprop-demo)")
    p.add_argument("--n", type=int, default=10,
                   help="digits to draw (default 10: one per class); the table covers all")
    p.add_argument("--model", choices=sorted(DEMO_MODELS), default="digits_resnet",
                   help="the bundled model to explain (default digits_resnet, a graph with "
                        "residual additions; digits_cnn is a chain)")
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


def _params_text(kw):
    """Method parameters as text: ``"low=0, high=1"``."""
    return ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in kw.items())


def _method_title(method, kw):
    """A column head: the method name, then its parameters on a second line."""
    params = _params_text(kw)
    return method + (f"\n{params}" if params else "")


def _numbers(score, rel):
    """The caption of a heatmap: explained score, relevance sum, their gap."""
    return (f"f(x) {score:.3f}", f"sum R {rel:.3f}", f"gap {score - rel:+.3f}")


def check_run_flags(args):
    """Flags every run checks before any work: --threads, and OUTDIR (a folder or nothing)."""
    from ._validate import as_threads

    if args.threads is not None:
        with user_input():
            as_threads(args.threads, "--threads", minimum=0)
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"{args.out}: the output folder exists as a file")


def run_demo(args):
    from . import conservation, explain, get_num_threads, models, render, set_num_threads

    if args.n < 1:
        raise UsageError(f"--n must be at least 1, got {args.n}")
    check_run_flags(args)
    if args.threads is not None:
        set_num_threads(args.threads)
    net = getattr(models, args.model)()
    what = DEMO_MODELS[args.model]
    x_all, y_all = models.digits_data()
    if args.n > len(x_all):
        raise UsageError(f"--n must be at most {len(x_all)} (the digits test split), got {args.n}")
    n_all = len(x_all)
    pred_all = net.forward(x_all).argmax(axis=1)
    idx = _demo_samples(y_all, args.n)
    x, pred = x_all[idx], pred_all[idx]
    accuracy = np.mean(pred_all == y_all)
    print(f"relprop demo: the bundled {what} (test accuracy {accuracy:.1%} on the {n_all} "
          f"test digits), {get_num_threads()} thread(s)")
    print(f"\nTable: all {n_all} test digits, each explained for its predicted class\n(means "
          f"over the {n_all} digits; samples/s of explaining all of them)")
    print(f"{'method':<28}{'mean f(x)':>11}{'mean sum R':>12}{'|f - sum R|/|f|':>17}"
          f"{'samples/s':>12}")
    scale, cell_scale = 16, 12  # the PNG grid's and the web page's pixels per input pixel
    inputs = render.upscale(render.image(x, invert=True), cell_scale)
    columns, saved = [render.image(x, invert=True)], {"x": x, "label": y_all[idx], "target": pred}
    cells = [[render.Cell(image=inputs[i], alt=f"test digit {idx[i]}", kind="input")]
             for i in range(len(x))]
    for method, kw, _ in DEMO_METHODS:
        explain(net, x_all[:8], pred_all[:8], method, **kw)  # warm-up: caches, threads
        t0 = time.perf_counter()
        R_all = explain(net, x_all, pred_all, method, **kw)
        rate = n_all / max(time.perf_counter() - t0, 1e-9)
        c = conservation(net, x_all, pred_all, R_all)
        rel = np.abs(c["difference"]) / np.maximum(np.abs(c["score"]), 1e-12)
        print(f"{method:<28}{c['score'].mean():>11.3f}{c['relevance'].mean():>12.3f}"
              f"{rel.mean():>17.3g}{rate:>12,.0f}")
        heat = render.heatmap(R_all[idx])
        columns.append(heat)
        saved[method] = R_all[idx]
        for i, k in enumerate(idx):
            cells[i].append(render.Cell(image=render.upscale(heat[i], cell_scale),
                                        lines=_numbers(c["score"][k], c["relevance"][k]),
                                        alt=f"{method} heatmap of test digit {k}",
                                        kind="heatmap"))
    print("|f - sum R|/|f| is the mean relative gap between the explained score f(x) and the "
          "relevance sum\n(LRP conserves up to biases and stabilizers; gradients do not)")
    print(f"\nPictures: {len(x)} of those digits (labels {' '.join(map(str, y_all[idx]))}), "
          f"one row each: the input, then the {len(DEMO_METHODS)} methods")
    pad = 3
    rgb = render.grid(np.stack(columns, axis=1), pad=pad, pad_value=170, scale=scale)
    rgb = _titled(rgb, ["input"] + [t for _, _, t in DEMO_METHODS], 8 * scale, pad)
    os.makedirs(args.out, exist_ok=True)
    page = os.path.join(args.out, "index.html")
    render.write_html(
        page, ["digit", "input"] + [_method_title(m, kw) for m, kw, _ in DEMO_METHODS], cells,
        row_heads=[f"true {y_all[k]}\npredicted {pred_all[k]}"
                   + (" (wrong)" if pred_all[k] != y_all[k] else "") for k in idx],
        title=f"relprop demo: explanations of the bundled {what}",
        intro=[f"The bundled {what} (test accuracy {accuracy:.1%} on the {n_all} test "
               f"digits) explains {len(x)} test digits, one per row: the input, then one "
               "heatmap per method (column heads).  Every heatmap explains the digit's "
               "predicted class.",
               "Under each heatmap: f(x), the explained score (the logit of the predicted "
               "class); sum R, the sum of the relevance map; gap = f(x) - sum R.  LRP "
               "conserves the score up to what biases and stabilizers absorb (a small gap); "
               "gradient and gradient x input are not meant to.",
               f"The table that relprop demo prints covers all {n_all} test digits."])
    png = os.path.join(args.out, "digits_grid.png")
    render.save_png(png, rgb)
    npz = os.path.join(args.out, "relevance.npz")
    np.savez(npz, **saved)
    print(f"wrote {page} (open it in a browser: the pictures labelled, with f(x), sum R and "
          "the gap)")
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
        formatter_class=_HelpFormatter,
        description="Explain MODEL's output on INPUTS chunk by chunk and write "
                    "OUTDIR/relevance.npy (n, *input_shape), one heatmap PNG per image file "
                    "in OUTDIR/heatmaps/ (per sample of an array input with --heatmaps), and "
                    "OUTDIR/explained.csv (name, target, score, relevance sum); "
                    "OUTDIR/progress.json records the completed chunks for --resume.",
        epilog=methods_help())
    p.add_argument("model", metavar="MODEL",
                   help="relprop .npz (net.save), .onnx, or a bundled model: digits_cnn, "
                        "digits_mlp, digits_resnet")
    p.add_argument("inputs", metavar="INPUTS",
                   help="a .npy array (n, *input_shape), an .npz with 'x', an image, a folder "
                        "of PNG/JPEG images (converted to the model's (1|3, h, w): grayscale or "
                        "RGB, resized bilinearly, pixel/255), or 'digits'")
    p.add_argument("-m", "--method", default="lrp",
                   help="a method listed below (default lrp: LRP with the model's default "
                        "composite, lrp.epsilon_plus_flat, or lrp.attnlrp for a transformer)")
    p.add_argument("-o", "--out", required=True, metavar="OUTDIR", help="output folder")
    p.add_argument("-p", "--param", type=_param, action="append", default=[],
                   metavar="KEY=VALUE",
                   help="method parameter, repeatable (e.g. -p epsilon=0.1); the parameters of "
                        "each method are listed below")
    p.add_argument("--target", default="pred",
                   help="what to explain: 'pred' (each sample's predicted class, default), a "
                        "class index, or FILE.npy: one output seed per sample (floats shaped "
                        "like the model's output, e.g. relprop.targets.region of a "
                        "segmentation map), whose score sum(seed * f(x)) explained.csv gives")
    p.add_argument("--batch-size", type=int, default=64, help="samples per batch (default 64)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    p.add_argument("--input-shape", type=str, default=None,
                   help="per-sample shape, e.g. 1,8,8 (for an .npz model saved without one)")
    p.add_argument("--overlay", action="store_true", help="draw heatmaps over the inputs")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    add_image_arguments(p, "lrp.zbox's and lrp.epsilon_gamma_box's low/high (default 0 and 1 "
                           "with a normalization: the pixel range, converted per channel)")
    p.add_argument("--report", action="store_true",
                   help="also write OUTDIR/index.html, a page to open in a browser: per sample "
                        "the input, the heatmap, label, target and predicted class, f(x), "
                        "sum R and the gap (images in OUTDIR/inputs/ and heatmaps/)")
    from . import stream

    p.add_argument("--heatmaps", action="store_true",
                   help="also write a heatmap PNG per sample of an array input (image files "
                        "always get one)")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="samples per chunk: read, written and recorded together (default: about "
                        f"{stream.CHUNK_BYTES >> 20} MiB of inputs, at most {stream.MAX_CHUNK})")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in OUTDIR after its last completed chunk "
                        "(same arguments required)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run on a local Dask cluster of N worker processes (needs "
                        "relprop[dask]); --threads is then threads per worker")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on the Dask cluster whose scheduler is at ADDRESS "
                        "(e.g. tcp://10.0.0.1:8786)")
    p.set_defaults(func=run_explain)
    return p


#: ``explain --report`` draws non-image inputs of up to this many features as a strip.
MAX_STRIP_FEATURES = 4096


def _strip(rgb):
    """Images ``(n, 1, d, 3)`` of d features as strips about 256 px wide and 16 px high."""
    s = max(1, 256 // rgb.shape[-2])
    return np.repeat(np.repeat(rgb, s, axis=-2), 16, axis=-3)


def explain_report(args, net, inputs, kwargs, class_names=None, notes=()):
    """Write ``OUTDIR/index.html`` for ``relprop explain --report`` from the run's files
    (``explained.csv``, ``relevance.npy``, the heatmaps) and INPUTS, read chunk by chunk;
    returns its path.  ``kwargs``: the method's parameters as the user gave them (or their
    defaults); ``class_names``: a name per class; ``notes``: paragraphs for the page's
    introduction."""
    import csv

    from . import render
    from .stream import Seeds, seed_scores

    fixed = explain_target(args.target)
    seeds = isinstance(fixed, Seeds)
    shape = tuple(inputs.sample_shape)
    images = len(shape) == 3
    n_features = None if images else int(np.prod(shape))
    drawn = images or n_features <= MAX_STRIP_FEATURES
    rows = []
    with open(os.path.join(args.out, "explained.csv"), newline="") as fh:
        for name, target, *_ in list(csv.reader(fh))[1:]:
            rows.append([name, target if seeds else int(target), None, None, None])
    rel_all = np.load(os.path.join(args.out, "relevance.npy"), mmap_mode="r")
    heat_dir, input_dir = (os.path.join(args.out, d) for d in ("heatmaps", "inputs"))
    if drawn:
        os.makedirs(heat_dir, exist_ok=True)
        os.makedirs(input_dir, exist_ok=True)
    scale = _heatmap_scale(shape) if images else 1
    step = max(1, args.batch_size)
    for start in range(0, len(rows), step):
        stop = min(len(rows), start + step)
        xb = inputs.read(start, stop)
        out = net.forward(xb)
        scores = out.reshape(stop - start, -1)
        if seeds:  # no single predicted class
            explained = seed_scores(fixed.read(start, stop), out)
        for i in range(start, stop):  # f(x) and sum R in full (the CSV rounds them)
            row = rows[i]
            row[2:] = ["-" if seeds else int(scores[i - start].argmax()),
                       float(explained[i - start] if seeds else scores[i - start, row[1]]),
                       float(np.sum(rel_all[i], dtype=np.float64))]
        if not drawn:
            continue
        if images:  # the run drew the heatmaps
            pics = render.image(inputs.pixels(xb), invert=args.inputs == "digits")
        else:
            view_x = xb.reshape(stop - start, 1, 1, -1)
            view_r = np.asarray(rel_all[start:stop]).reshape(stop - start, 1, 1, -1)
            heat = _strip(render.heatmap(view_r, overlay=view_x if args.overlay else None))
            pics = _strip(render.image(view_x))
        for i in range(start, stop):
            name = rows[i][0]
            if not images:
                render.save_png(os.path.join(heat_dir, f"{name}.png"), heat[i - start])
            render.save_png(os.path.join(input_dir, f"{name}.png"),
                            render.upscale(pics[i - start], scale))
    del rel_all
    try:  # the report's label column only: INPUTS' labels that do not fit are left out
        labels = load_labels(args.inputs, len(rows))
    except UsageError:
        labels = None
    params = _params_text(kwargs)
    method = args.method + (f" ({params})" if params else "")
    columns = ["sample"] + (["input", f"heatmap\n{method}"] if drawn else []) + \
        ["label", "target", "predicted", "f(x)", "sum R", "gap"]
    cells = []
    for k, (name, target, pred, score, rel) in enumerate(rows):
        row = []
        if drawn:
            row += [render.Cell(src=f"inputs/{name}.png", alt=f"input {name}", kind="input"),
                    render.Cell(src=f"heatmaps/{name}.png", alt=f"heatmap of {name}",
                                kind="heatmap")]
        label = "unknown" if labels is None else class_label(int(labels[k]), class_names)
        row += [label, class_label(target, class_names), class_label(pred, class_names)]
        row += [render.Cell(lines=(f"{v:.6g}",), kind="num") for v in (score, rel, score - rel)]
        cells.append(row)
    intro = [f"{args.model} explained on {args.inputs} with {method}: {len(rows)} sample(s), "
             "one per row.  Target: " + ("each sample's predicted class." if fixed is None
                                          else f"the output seeds of {args.target} (f(x): "
                                          "sum(seed * f(x)))." if seeds
                                          else f"class {class_label(fixed, class_names)} for "
                                          "every sample."),
             "f(x) is the explained score (the target's output); sum R, the sum of the "
             "relevance; gap = f(x) - sum R.  LRP conserves the score up to what biases and "
             "stabilizers absorb (a small gap); the gradient family is not meant to.",
             "label: the labels that come with INPUTS ('y' of an .npz, or the digits'); "
             "unknown otherwise.", *notes]
    if not drawn:
        intro.append(f"No pictures: inputs of {n_features} features are neither images nor "
                     f"at most {MAX_STRIP_FEATURES} features (relevance.npy has the relevance).")
    elif n_features is not None:
        intro.append(f"Inputs of {n_features} features are drawn as strips, one cell per "
                     "feature in order.")
    page = os.path.join(args.out, "index.html")
    return render.write_html(page, columns, cells, row_heads=[r[0] for r in rows],
                             title=f"relprop explain: {args.method}", intro=intro,
                             legend=drawn)


def _cluster(args):
    """A context manager giving a distributed Client (or None) for ``--workers``/``--scheduler``."""
    if args.workers is None and args.scheduler is None:
        return contextlib.nullcontext(None)
    if args.workers is not None and args.scheduler is not None:
        raise UsageError("--workers and --scheduler exclude each other: --workers starts a local "
                         "cluster, --scheduler uses an existing one")
    if args.scheduler is not None and args.threads is not None:
        raise UsageError("--threads does not apply with --scheduler (the cluster's workers have "
                         "their own thread counts)")
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers must be at least 1, got {args.workers}")
    try:
        import logging

        from distributed import Client, LocalCluster
    except ImportError:
        raise UsageError("--workers and --scheduler need Dask: pip install 'relprop[dask]'") \
            from None

    @contextlib.contextmanager
    def cm():
        if args.scheduler is not None:
            try:
                _reach(args.scheduler, SCHEDULER_TIMEOUT)
                client = Client(args.scheduler, timeout=SCHEDULER_TIMEOUT, set_as_default=False)
            except (OSError, TimeoutError, ValueError) as exc:
                raise UsageError(f"--scheduler {args.scheduler}: cannot reach the Dask "
                                 f"scheduler ({exc})") from None
            with client:
                if not client.nthreads():
                    raise UsageError(f"--scheduler {args.scheduler}: the Dask cluster has no "
                                     "workers")
                yield client
            return
        threads = args.threads or max(1, (os.cpu_count() or 1) // args.workers)
        with LocalCluster(n_workers=args.workers, threads_per_worker=threads, processes=True,
                          dashboard_address=":0", silence_logs=logging.ERROR) as cluster, \
                Client(cluster, set_as_default=False) as client:
            yield client

    return cm()


@contextlib.contextmanager
def _mismatch_as_error(client):
    """A cluster job's :class:`relprop.dask.ClusterMismatch` (a worker of another relprop or
    instruction set) as the command's error."""
    if client is None:
        yield
        return
    from .dask import ClusterMismatch

    try:
        yield
    except ClusterMismatch as exc:
        raise UsageError(str(exc)) from exc


#: Seconds to wait for a --scheduler to answer.
SCHEDULER_TIMEOUT = 10


def _reach(address, timeout):
    """Ask a ``tcp://`` ``address`` who it is before a ``distributed.Client`` exists: a
    malformed address raises ValueError, a port that refuses OSError at once, a server that is
    not a Dask scheduler (or does not answer within ``timeout``) ValueError.  (A Client that
    fails to connect retries until its timeout, and then spends twice as long closing itself
    when it is collected; a server of another protocol can make it read a frame length of
    exabytes.)"""
    import asyncio
    import socket

    from distributed.comm import connect
    from distributed.comm.addressing import parse_address, parse_host_port

    scheme, location = parse_address(address)
    if scheme != "tcp":  # TLS, UCX, ...: left to the Client (and the cluster's own settings)
        return
    # a refused port at once (connect() retries until its timeout)
    socket.create_connection(parse_host_port(location), timeout=timeout).close()

    async def identity():
        comm = await connect(address, timeout=timeout)
        try:
            await comm.write({"op": "identity"})
            return await asyncio.wait_for(comm.read(), timeout)
        finally:
            comm.abort()

    try:
        answer = asyncio.run(identity())
    except (OSError, ValueError, TimeoutError, asyncio.TimeoutError):
        raise
    except Exception:  # whatever another protocol's bytes make of the handshake
        raise ValueError("not a Dask scheduler: its answer is not Dask's protocol") from None
    if not isinstance(answer, dict) or answer.get("type") != "Scheduler":
        raise ValueError(f"not a Dask scheduler (it answered {str(answer)[:80]!r})")


def cli_explain(args):
    """``relprop explain`` with parsed ``args``, streamed chunk by chunk in this process or on
    Dask (see :mod:`relprop.stream`):
    returns ``(net, inputs, params)`` (the parameters with those derived from the inputs)."""
    from . import set_num_threads
    from .methods import lrp_method
    from .stream import (
        ImageInputs,
        default_chunk_size,
        explain_to_folder,
        input_range,
        model_identity,
        open_inputs,
    )

    if args.method != "lrp":  # else the model's default composite, checked once it is loaded
        check_method(args.method)
        check_parameters(args.method, [key for key, _ in args.param])
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.chunk_size is not None and args.chunk_size < 1:
        raise UsageError(f"--chunk-size must be at least 1, got {args.chunk_size}")
    distributed = args.workers is not None or args.scheduler is not None
    check_run_flags(args)
    cluster = _cluster(args)  # checks the flags before any work
    if args.threads is not None and not distributed:
        set_num_threads(args.threads)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    net = load_model(args.model, shape)
    if args.method == "lrp":
        args.method = lrp_method(net)
        check_parameters(args.method, [key for key, _ in args.param])
    inputs = open_inputs(args.inputs, net, args.strict, args.mean, args.std)
    class_names = None if args.classes is None else load_class_names(args.classes, net)
    fixed = explain_target(args.target)
    params = dict(args.param)
    chunk = args.chunk_size or default_chunk_size(inputs.sample_shape)
    norm = getattr(inputs, "normalization", None)
    box, normalized_box = box_bounds(args.method, params, norm)

    def derive():
        out = {}
        if box is not None:
            out = normalized_box
        elif args.method in BOX_METHODS:
            missing = [k for k in ("low", "high") if k not in params]
            if missing:
                lo, hi = input_range(inputs, chunk)
                for key, v in (("low", lo), ("high", hi)):
                    if key in missing:
                        out[key] = v
        return out

    def log(msg):
        print(msg, flush=True)

    run = {"model": model_identity(args.model, shape), "inputs": inputs.identity}
    with cluster as client, _mismatch_as_error(client):
        if client is not None:
            where = (f"{len(client.nthreads())} Dask worker(s), "
                     f"{sum(client.nthreads().values())} thread(s)")
            log(f"running on {where}")
        res = explain_to_folder(
            net, inputs, args.out, method=args.method, params=params, target=fixed,
            chunk_size=chunk, batch_size=args.batch_size,
            heatmaps=args.heatmaps or (args.report and len(inputs.sample_shape) == 3) or None,
            overlay=args.overlay, resume=args.resume, run=run, client=client,
            derive=derive, class_names=class_names, log=log,
            why={k: f"{k}={v:g} in pixel units, normalized per channel"
                 for k, v in (box or {}).items()})
    if isinstance(inputs, ImageInputs):
        warn_conversions(inputs.conversions, inputs.sample_shape)
    n, done = res["n"], res["done_before"]
    what = f"{n - done} input(s)" + (f" (after {done} done before)" if done else "")
    if done == n:
        print(f"nothing to do: all {n} input(s) were done")
    else:
        print(f"explained {what} of {args.inputs} with {args.method} in {res['seconds']:.2f} s "
              f"({res['rate']:,.0f} samples/s, files included)")
    print(f"wrote {res['relevance']} {(n,) + tuple(inputs.sample_shape)}")
    if res["heatmaps"]:
        print(f"wrote {n} heatmap PNG(s) to {res['heat_dir']}{os.sep}")
    elif len(inputs.sample_shape) == 3:
        print("no heatmap PNGs for array inputs (pass --heatmaps for one PNG per sample)")
    else:
        print(f"no heatmap PNGs: inputs of shape {tuple(inputs.sample_shape)} are not images "
              "(relevance.npy has the relevance per feature)")
    print(f"wrote {res['csv']}" + (" (with the targets' class names)" if class_names else ""))
    shown = {**params, **res["derived"], **(box or {})}  # low/high in pixel units
    notes = [] if norm is None else [f"Inputs {norm.describe()}; the pictures show them in "
                                     "pixels."] + box_notes(box, res["derived"])
    return net, inputs, shown, class_names, notes


def box_bounds(method, params, norm):
    """``(pixels, normalized)``: the bounds ``{"low": .., "high": ..}`` of a box method under
    the normalization ``norm`` in pixel units (given in ``params``, else 0 and 1: the pixel
    range) and converted per channel; ``(None, None)`` for other methods or no normalization."""
    if norm is None or method not in BOX_METHODS:
        return None, None
    pixels = {"low": params.get("low", 0.0), "high": params.get("high", 1.0)}
    return pixels, {key: norm.bounds(v) for key, v in pixels.items()}


def box_notes(box, converted):
    """The box bounds ``box`` (pixel units) and ``converted`` (on the normalized inputs) in
    words (none without a box)."""
    if box is None:
        return []
    low, high = (", ".join(format(v, ".4g") for v in converted[k]) for k in ("low", "high"))
    return [f"The box bounds low={box['low']:g}, high={box['high']:g} are in pixel units "
            f"(pixel/255); on the normalized inputs they are low=[{low}], high=[{high}] per "
            "channel."]


def run_explain(args):
    net, inputs, params, class_names, notes = cli_explain(args)
    if args.report:
        page = explain_report(args, net, inputs, params, class_names, notes)
        print(f"wrote {page} (open it in a browser: input, heatmap, classes, f(x), sum R and "
              "the gap per sample)")
    return 0


# --------------------------------------------------------------------------------------------
# relprop verify
# --------------------------------------------------------------------------------------------
def add_verify_parser(subparsers):
    p = subparsers.add_parser(
        "verify", help="check an explain run's output folder against its checksums",
        description="Check OUTDIR, the output folder of 'relprop explain', against its "
                    "progress record: relevance.npy's shape and type, and the bytes of every "
                    "completed chunk in relevance.npy and explained.csv against the chunk's "
                    "CRC-32, the CSV header, and that nothing follows the array or (for a "
                    "finished run) the last chunk's rows.  Prints what it found; exit status 0 "
                    "when everything matches, 1 "
                    "when something is damaged ('relprop explain ... --resume' with the run's "
                    "arguments recomputes damaged chunks).  Heatmap PNGs are not checked.")
    p.add_argument("out", metavar="OUTDIR", help="the output folder of a relprop explain run")
    p.set_defaults(func=run_verify)
    return p


def run_verify(args):
    from .stream import RECORD, Checker, describe_chunk, read_record

    rec = read_record(args.out)
    if rec is None:
        raise UsageError(f"{args.out}: no progress record ({RECORD}): not the output folder of "
                         "a relprop explain run")
    run, done, n = rec.get("run", {}), int(rec["done"]), int(rec["n"])
    state = "complete" if done == n else "interrupted: 'relprop explain ... --resume' continues it"
    print(f"{args.out}: relprop explain with {run.get('method')}, {done} of {n} samples done in "
          f"{len(rec.get('chunks', []))} chunk(s) ({state})")
    try:
        checker = Checker(args.out, rec)
    except (OSError, ValueError) as exc:
        print(f"relevance.npy: missing or damaged ({' '.join(str(exc).split())})")
        return 1
    problems = []
    if checker.shape != tuple(rec["shape"]) or checker.dtype != np.dtype(rec["dtype"]):
        problems.append(f"relevance.npy: shape {checker.shape} and dtype {checker.dtype}, the "
                        f"progress record says {tuple(rec['shape'])} {np.dtype(rec['dtype'])}")
    try:
        problems += checker.frame(complete=done == n)
        for i, files in checker.check(range(len(checker.chunks))):
            problems.append(f"{describe_chunk(i, checker.chunks[i])}: {' and '.join(files)} "
                            "differ(s) from its checksum")
    except OSError as exc:  # as relevance.npy above: --resume cannot continue, start over
        print(f"explained.csv: missing or unreadable ({' '.join(str(exc).split())})")
        return 1
    for line in problems:
        print(line)
    if problems:
        print(f"damaged: {len(problems)} problem(s); 'relprop explain' with the run's arguments "
              "and --resume repairs them (it recomputes damaged chunks)")
        return 1
    print(f"all {len(checker.chunks)} chunk(s) match their checksums "
          f"({checker.bytes:,} bytes of relevance.npy and explained.csv)")
    return 0


# --------------------------------------------------------------------------------------------
# relprop info
# --------------------------------------------------------------------------------------------
def add_info_parser(subparsers):
    p = subparsers.add_parser(
        "info", help="layers (or graph nodes), shapes, parameters, FLOPs and plans of a model",
        description="Print MODEL's layers, or for a graph its nodes with their inputs, with "
                    "output shapes, parameter counts and FLOPs per sample (a multiply-add counts "
                    "as 2 FLOPs; bias adds, ReLU, additions and pooling comparisons/adds count 1 "
                    "per element), and the plan of each layer with weights for that input "
                    "shape under the instruction set in use: the algorithm of its forward and "
                    "backward pass and the bytes of workspace each call takes per thread "
                    "(besides its output, its packed weights and the GEMM's thread buffers).")
    p.add_argument("model", metavar="MODEL", help="relprop .npz, .onnx, or digits_cnn/digits_mlp")
    p.add_argument("--input-shape", type=str, default=None,
                   help="per-sample shape, e.g. 1,8,8 (for an .npz model saved without one)")
    p.set_defaults(func=run_info)
    return p


def _plan_text(plans):
    """'algorithm (fwd / bwd)' and 'workspace bytes (fwd / bwd)' of a node's plans."""
    fwd, bwd = plans
    if fwd is None:
        return "", ""
    algo = fwd.algorithm if fwd.algorithm == bwd.algorithm else f"{fwd.algorithm} / {bwd.algorithm}"
    return algo, f"{fwd.workspace_bytes:,} / {bwd.workspace_bytes:,}"


def run_info(args):
    from . import ops
    from .graph import Sequential

    shape = parse_shape(args.input_shape) if args.input_shape else None
    net = load_model(args.model, shape)
    shapes = net.tensor_shapes(net.input_shape) if net.input_shape is not None else None
    chain = isinstance(net, Sequential)
    print(f"{args.model}: {len(net)} {'layers' if chain else 'nodes'}"
          + (f", input {net.input_shape} -> output {net.output_shape}" if shapes else
             ", input shape unknown (pass --input-shape for shapes, FLOPs and plans)"))
    name_w = max(4, *(len(n.name) for n in net.nodes)) + 2
    head = f"{'#':>3}  " + ("" if chain else f"{'node':<{name_w}}{'inputs':<{2 * name_w}}")
    print(f"{head}{'layer':<36}{'output shape':<18}{'params':>10}{'FLOPs':>14}"
          + (f"  {'plan (fwd / bwd)':<24}{'workspace B (fwd / bwd)'}" if shapes else ""))
    total_p = 0
    flops = net.node_flops() if shapes else None
    plans = net.plans() if shapes else None
    for i, node in enumerate(net.nodes):
        layer = node.layer
        params = sum(int(a.size) for a in layer.arrays().values())
        total_p += params
        where = "" if chain else f"{node.name:<{name_w}}{', '.join(node.inputs):<{2 * name_w}}"
        if shapes:
            algo, work = _plan_text(plans[i])
            print(f"{i:>3}  {where}{layer.describe():<36}{str(shapes[node.name]):<18}"
                  f"{params:>10,}{flops[i]:>14,}  {algo:<24}{work}".rstrip())
        else:
            print(f"{i:>3}  {where}{layer.describe():<36}{'?':<18}{params:>10,}{'?':>14}")
    dtypes = sorted({str(n.layer.weight.dtype) for n in net.nodes if n.layer.linear})
    print(f"parameters: {total_p:,} ({', '.join(dtypes)})")
    if shapes:
        print(f"FLOPs per sample: {sum(flops):,} (forward pass; a multiply-add counts as 2)")
        print(f"plans: instruction set {ops.isa()}, for one sample's shape (relprop.ops."
              "conv2d_plan; the batch never changes them)")
    return 0


# --------------------------------------------------------------------------------------------
# relprop evaluate
# --------------------------------------------------------------------------------------------
def add_evaluate_parser(subparsers):
    """``relprop evaluate MODEL INPUTS``: every method under every metric
    (:func:`relprop.metrics.compare`)."""
    from .metrics import DEFAULT_METHODS, FAMILIES, ORDERS

    families = ", ".join(f"{k} ({', '.join(f.__name__ for f in v)})" for k, v in
                         FAMILIES.items())
    p = subparsers.add_parser(
        "evaluate", help="score explanation methods with evaluation metrics (relprop.metrics)",
        formatter_class=_HelpFormatter,
        description="Explain INPUTS with several methods, score every explanation with every "
                    "metric and print a markdown table: a row per method, a column per metric "
                    "(the mean score over the inputs, or the metric's batch statistic) with "
                    "the direction of 'better'.  'random' is a random attribution, the "
                    "baseline a useful explanation must beat.  --report also writes a web page "
                    "with the table and the metrics' curves.",
        epilog=f"metrics (--metrics, by name or by family): {families}")
    p.add_argument("model", metavar="MODEL",
                   help="relprop .npz, .onnx, or a bundled model: digits_cnn, digits_mlp")
    p.add_argument("inputs", metavar="INPUTS",
                   help="a .npy array (n, *input_shape), an .npz with 'x' (and labels 'y'), "
                        "images, or 'digits' (the bundled digits test split)")
    p.add_argument("--target", default="pred",
                   help="'pred' (the predicted class, default), 'label' (the labels of INPUTS: "
                        "'y' of an .npz, or the digits') or a class index")
    p.add_argument("--methods", default=",".join(DEFAULT_METHODS),
                   help="comma-separated method names (relprop.explain names, and 'random'; "
                        "lrp.epsilon_gamma_box and lrp.zbox get low/high = the range of INPUTS); "
                        f"default {','.join(DEFAULT_METHODS)}")
    p.add_argument("--metrics", default="faithfulness",
                   help="comma-separated metric names or families (listed below; default "
                        "faithfulness, in which monotonicity_correlation (100 random values per "
                        "step) and road (a sparse solve per sample and percentage) take the "
                        "longest)")
    p.add_argument("--limit", type=int, default=None, help="use the first LIMIT inputs only")
    p.add_argument("--steps", type=int, default=None,
                   help="perturbation steps (default: each metric's)")
    p.add_argument("--patch", type=int, default=None,
                   help="region side in pixels (images; default: each metric's)")
    p.add_argument("--fill", default=None,
                   help="value of perturbed pixels: a number, 'mean', 'min' or 'uniform' "
                        "(default: each metric's)")
    p.add_argument("--order", choices=ORDERS, default=None,
                   help="for the metrics that take an order (default: each metric's)")
    p.add_argument("--set", type=_param, action="append", default=[], metavar="KEY=VALUE",
                   dest="params",
                   help="a metric parameter, repeatable, given to the metrics that take it "
                        "(e.g. --set runs=10 --set subset=16)")
    p.add_argument("--masks", default=None, metavar="FILE",
                   help="a .npy of object masks (n, *input_shape) or (n, 1, h, w), for the "
                        "localisation metrics")
    p.add_argument("--seed", type=int, default=0,
                   help="seeds the random baseline, smoothgrad and the metrics' draws "
                        "(default 0)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="rows per batched pass (default: about 256 MiB of activations)")
    p.add_argument("--report", default=None, metavar="DIR",
                   help="also write DIR/index.html: the table and each metric's mean curve "
                        "per method (open it in a browser)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    add_image_arguments(p, "--fill numbers and the box methods' low/high (0 and 1)")
    p.set_defaults(func=run_evaluate)
    return p


def parse_metrics(text):
    """``--metrics``: names and families, in order, without repeats."""
    from .metrics import FAMILIES, METRICS

    out = []
    for item in (s.strip() for s in text.split(",")):
        if not item:
            continue
        if item in FAMILIES:
            names = [f.__name__ for f in FAMILIES[item]]
        elif item in METRICS:
            names = [item]
        else:
            raise UsageError(f"unknown metric {item!r}; use one of {', '.join(METRICS)} or a "
                             f"family: {', '.join(FAMILIES)}")
        out += [m for m in names if m not in out]
    if not out:
        raise UsageError("--metrics names no metric")
    return out


def run_evaluate(args, file=None):
    """Run ``relprop evaluate`` with parsed ``args``: print the comparison table (and write
    the report); returns 0."""
    from .metrics import compare

    methods = list(dict.fromkeys(m.strip() for m in args.methods.split(",") if m.strip()))
    for m in methods:
        if m != "random":
            check_method(m)
    if not methods:
        raise UsageError("--methods names no method")
    metrics = parse_metrics(args.metrics)
    for flag, v in (("--limit", args.limit), ("--batch-size", args.batch_size)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be at least 1, got {v}")
    if args.report is not None and os.path.exists(args.report) and \
            not os.path.isdir(args.report):
        raise UsageError(f"{args.report}: the report folder exists as a file")
    net = load_model(args.model)
    x_all = load_inputs(args.inputs, net, args.strict, args.mean, args.std)[0]
    x = np.asarray(x_all[:args.limit])
    with user_input():
        norm = normalization(args.mean, args.std, net.input_shape)
    class_names = None if args.classes is None else load_class_names(args.classes, net)
    if args.target == "label":
        out = net.output_shape
        labels = load_labels(args.inputs, len(x_all), out[0] if out and len(out) == 1 else None)
        if labels is None:
            raise UsageError("--target label needs INPUTS with labels ('y' in an .npz, or "
                             "'digits')")
        target = np.asarray(labels[:len(x)], dtype=np.int64)
    else:
        target = parse_target(args.target)
        target = "pred" if target is None else target
    with user_input(f"--masks {args.masks}: "):
        masks = None if args.masks is None else np.load(args.masks, allow_pickle=False)[:len(x)]
    params = {k: v for k, v in (("steps", args.steps), ("patch", args.patch),
                                ("order", args.order)) if v is not None}
    if args.fill is not None:
        try:
            params["fill"] = float(args.fill)
        except ValueError:
            params["fill"] = args.fill
    params.update(dict(args.params))
    fill = params.get("fill")
    if norm is not None and not isinstance(fill, (str, type(None))):  # pixel units
        params["fill"] = np.asarray(norm.bounds(fill), x.dtype).reshape(-1, 1, 1)
    kwargs = {"smoothgrad": {"seed": args.seed}}
    box = box_bounds(BOX_METHODS[0], {}, norm)[1] or {"low": float(x.min()),
                                                       "high": float(x.max())}
    kwargs.update({m: box for m in BOX_METHODS})  # as 'relprop explain' does
    # the metrics, their parameters, the target and the masks, checked on one sample (with a
    # method that explains, so that the metrics that re-explain run too)
    probe = [next((m for m in methods if m != "random"), "random")]
    with user_input():
        compare(net, x[:1], target if np.ndim(target) == 0 else target[:1], probe, metrics,
                masks=None if masks is None else masks[:1], seed=args.seed,
                method_kwargs=kwargs, **params)
    table = compare(net, x, target, methods, metrics, masks=masks, seed=args.seed,
                    batch_size=args.batch_size, method_kwargs=kwargs, **params)
    if fill is not None:  # as given (pixel units)
        params["fill"] = table.settings["fill"] = fill
    shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "each metric's defaults"
    head = f"{args.model} on {len(x)} inputs of {args.inputs}: target={args.target}, {shown}"
    notes = [] if norm is None else [f"Inputs {norm.describe()}; --fill numbers and the box "
                                     "methods' low=0, high=1 are in pixel units."]
    if class_names is not None:
        notes.append("Classes explained: " + _classes_explained(net, x, target, class_names))
    print("\n".join([head] + notes), file=file)
    print(table.to_markdown(), file=file)
    if args.report is not None:
        page = table.write_html(os.path.join(args.report, "index.html"),
                                title=f"relprop evaluate: {args.model} on {args.inputs}",
                                notes=notes)
        print(f"wrote {page} (open it in a browser: the table and the metrics' curves)",
              file=file)
    return 0


def _classes_explained(net, x, target, class_names):
    """The classes that ``target`` (an index, an array of them or "pred") explains on ``x``,
    with their counts, in words: ``"226 briard (3), 281 tabby (1)"``."""
    if isinstance(target, str):
        target = net.forward(x).reshape(len(x), -1).argmax(axis=1)
    classes, counts = np.unique(np.broadcast_to(target, (len(x),)), return_counts=True)
    return ", ".join(f"{class_label(int(k), class_names)} ({c})" for k, c in zip(classes, counts))


# --------------------------------------------------------------------------------------------
# relprop concepts
# --------------------------------------------------------------------------------------------
def add_concepts_parser(subparsers):
    p = subparsers.add_parser(
        "concepts", help="the concept atlas of a dataset: each channel's most relevant samples",
        formatter_class=_HelpFormatter,
        description="Relevance maximization (Concept Relevance Propagation): explain each "
                    "sample of INPUTS and write OUT/atlas.npz, per channel of every node of "
                    "--layers the K samples in which it is most relevant and most active, as "
                    "relprop.concepts.atlas (Atlas.load reads it).  INPUTS are read a chunk at "
                    "a time and OUT/atlas_state.npz keeps the samples done, for --resume.")
    p.add_argument("model", metavar="MODEL",
                   help="relprop .npz (net.save), .onnx, or a bundled model: digits_cnn, "
                        "digits_mlp, digits_resnet")
    p.add_argument("inputs", metavar="INPUTS",
                   help="as for relprop explain: a .npy, an .npz with 'x' (and labels 'y'), "
                        "images, a folder of images, or 'digits'")
    p.add_argument("--layers", required=True,
                   help="comma-separated node names (relprop info MODEL lists them; the module "
                        "paths of an imported model work too)")
    p.add_argument("-o", "--out", required=True, metavar="OUT", help="output folder")
    p.add_argument("--k", type=int, default=8, help="reference samples per channel (default 8)")
    p.add_argument("--target", default=None,
                   help="'label' (the labels of INPUTS: the default when it has them), 'pred' "
                        "(the default otherwise) or a class index")
    p.add_argument("--composite", default="epsilon_plus_flat",
                   help="LRP composite or rule (default epsilon_plus_flat)")
    p.add_argument("-p", "--param", type=_param, action="append", default=[],
                   metavar="KEY=VALUE", help="composite parameter, repeatable")
    p.add_argument("--batch-size", type=int, default=64, help="samples per pass (default 64)")
    p.add_argument("--chunk-size", type=int, default=None, metavar="N",
                   help="samples per chunk: read, merged and recorded together (default 1024)")
    p.add_argument("--threads", type=int, default=None, help="kernel threads (default: all)")
    p.add_argument("--input-shape", type=str, default=None,
                   help="per-sample shape, e.g. 1,8,8 (for an .npz model saved without one)")
    p.add_argument("--strict", action="store_true", help=STRICT_HELP)
    p.add_argument("--report", action="store_true",
                   help="also write OUT/index.html, a page to open in a browser: per node and "
                        "channel its reference samples beside their heatmaps (cropped to the "
                        "receptive field of the channel's most relevant neuron) and its top "
                        "classes, sortable by relevance")
    p.add_argument("--report-channels", type=int, default=32, metavar="N",
                   help="channels per node on the page: the N most relevant (default 32)")
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in OUT after its last completed chunk "
                        "(same arguments required)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="run on a local Dask cluster of N worker processes (needs relprop[dask])")
    p.add_argument("--scheduler", default=None, metavar="ADDRESS",
                   help="run on the Dask cluster whose scheduler is at ADDRESS")
    p.set_defaults(func=run_concepts)
    return p


#: Samples per chunk of ``relprop concepts`` unless --chunk-size says otherwise.
CONCEPTS_CHUNK = 1024


def run_concepts(args):
    from . import set_num_threads
    from .concepts.folder import atlas_to_folder
    from .concepts.maximization import AtlasBuilder
    from .stream import model_identity, open_inputs

    for flag, v in (("--k", args.k), ("--batch-size", args.batch_size),
                    ("--chunk-size", args.chunk_size), ("--report-channels",
                                                        args.report_channels)):
        if v is not None and v < 1:
            raise UsageError(f"{flag} must be at least 1, got {v}")
    check_run_flags(args)
    cluster = _cluster(args)
    if args.threads is not None and args.workers is None and args.scheduler is None:
        set_num_threads(args.threads)
    shape = parse_shape(args.input_shape) if args.input_shape else None
    net = load_model(args.model, shape)
    inputs = open_inputs(args.inputs, net, args.strict)
    labels = load_labels(args.inputs, inputs.n)
    target = args.target or ("label" if labels is not None else "pred")
    if target not in ("label", "pred"):
        target = parse_target(target)
    if target == "label" and labels is None:
        raise UsageError(f"--target label: {args.inputs} has no labels (an .npz with 'y', or "
                         "digits); use --target pred")
    layers = [name.strip() for name in args.layers.split(",") if name.strip()]
    params = dict(args.param)
    with user_input():
        builder = AtlasBuilder(net, inputs.sample_shape, layers, args.composite, target,
                               args.k, True, **params)
        labels = builder.check_labels(labels if target == "label" else None, inputs.n)
    run = {"model": model_identity(args.model, shape), "inputs": inputs.identity,
           "layers": list(builder.nodes), "k": args.k, "target": target,
           "composite": args.composite, "params": params}
    with cluster as client, _mismatch_as_error(client):
        res = atlas_to_folder(builder, inputs, args.out, labels=labels,
                              chunk_size=args.chunk_size or CONCEPTS_CHUNK,
                              batch_size=args.batch_size, run=run, resume=args.resume,
                              client=client, log=lambda msg: None)
    atlas, n, done = res["atlas"], res["n"], res["done_before"]
    if done == n:
        print(f"nothing to do: all {n} input(s) were done")
    else:
        print(f"atlas of {n - done} input(s)" + (f" (after {done} done before)" if done else "")
              + f" of {args.inputs} in {res['seconds']:.2f} s: {len(layers)} node(s), "
              f"{args.k} reference(s) per channel, target {target}")
    print(f"wrote {os.path.join(args.out, 'atlas.npz')}")
    if args.report:
        from .concepts.report import write_report

        page = write_report(args.out, atlas, net, inputs, args.composite, params,
                            channels=args.report_channels, title=f"{args.model} on "
                            f"{args.inputs}", invert=args.inputs == "digits")
        print(f"wrote {page} (open it in a browser: per channel its reference samples, their "
              "heatmaps and its top classes)")
    return 0


# --------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------
#: One entry per subcommand: ``add(subparsers)`` creates it and sets ``func``.
SUBCOMMANDS = [add_demo_parser, add_explain_parser, add_verify_parser, add_info_parser,
               add_evaluate_parser,
               add_concepts_parser]


class _HelpFormatter(argparse.HelpFormatter):
    """argparse's help formatter, except that the lines of indented blocks (tables in a
    description or epilog) are kept as they are; other paragraphs are wrapped."""

    def _fill_text(self, text, width, indent):
        blocks = []
        for block in text.split("\n\n"):
            if "\n  " in block or block.startswith("  "):
                blocks.append("\n".join(indent + line for line in block.splitlines()))
            else:
                blocks.append(super()._fill_text(block, width, indent))
        return "\n\n".join(blocks)


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


#: Exit status when the reader of stdout has gone (``relprop demo | head``): 128 + SIGPIPE, what
#: a shell reports for a Unix tool that SIGPIPE ended.
EXIT_BROKEN_PIPE = 141


def _stdout_gone():
    """Point stdout at /dev/null so that the interpreter's last flush of the closed pipe does not
    print "Exception ignored ... BrokenPipeError"; returns :data:`EXIT_BROKEN_PIPE`."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a file descriptor
        pass
    return EXIT_BROKEN_PIPE


def main(argv=None):
    """Run the ``relprop`` command; returns the exit status.

    When the reader of stdout goes away (``relprop demo | head``) the command stops quietly
    with status 141, as Unix tools do.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status = int(args.func(args) or 0)
        sys.stdout.flush()  # a closed pipe shows here, not at interpreter exit
        return status
    except BrokenPipeError:
        return _stdout_gone()
    except (UsageError, OSError) as exc:  # anything else is a bug: its traceback shows
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
