"""The web pages of ``relprop demo`` and ``relprop explain --report``: parsed, checked against
the reference forward pass, and rendered by a real browser (headless Chromium).

The browser tests need ``chromium`` (Debian's package; ``.ci/run`` installs it when missing) and
skip without it (and fail under ``RELPROP_STRICT_SKIPS=1``, as in CI).
"""
import html.parser
import os
import pathlib
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from relprop import models, render
from relprop import reference as ref

Image = pytest.importorskip("PIL.Image")

DEMO_HEADS = ["digit", "input", "gradient", "gradient_x_input", "lrp.epsilon_plus_flat",
              "lrp.epsilon_gamma_box", "lrp.epsilon_alpha2_beta1"]


def run(*args):
    return subprocess.run([sys.executable, "-m", "relprop.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


class Table(html.parser.HTMLParser):
    """The page's table as rows of cells: ``{"tag", "lines", "imgs", "class"}``, where
    ``lines`` holds the text of the cell split at ``<br>`` and block elements, and ``imgs``
    the ``src`` of its images; plus whether the page has a script or a non-relative URL."""

    def __init__(self):
        super().__init__()
        self.rows, self.cell, self.script, self.absolute = [], None, False, []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "script":
            self.script = True
        for key in ("src", "href"):
            if key in attrs and (re.match(r"^[a-z]+:", attrs[key]) or
                                 attrs[key].startswith("/")):
                self.absolute.append(attrs[key])
        if tag == "tr":
            self.rows.append([])
        elif tag in ("td", "th") and self.rows:
            self.cell = {"tag": tag, "lines": [""], "imgs": [], "class": attrs.get("class", "")}
            self.rows[-1].append(self.cell)
        elif self.cell is not None and tag in ("br", "div", "span"):
            self.cell["lines"].append("")
        if self.cell is not None and tag == "img":
            self.cell["imgs"].append(attrs["src"])

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self.cell is not None:
            self.cell["lines"] = [t.strip() for t in self.cell["lines"] if t.strip()]
            self.cell = None

    def handle_data(self, data):
        if self.cell is not None:
            self.cell["lines"][-1] += data


def parse(page):
    t = Table()
    t.feed(pathlib.Path(page).read_text(encoding="utf-8"))
    assert not t.script and not t.absolute, (t.script, t.absolute)
    return t


def read_png(path):
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def number(lines, label):
    """The number after ``label`` in a cell's caption lines."""
    (line,) = [t for t in lines if t.startswith(label + " ")]
    return float(line[len(label) + 1:])


def check_colours(png, R, block):
    """Each ``block x block`` square of the heatmap image is red where the relevance map
    (channels summed) is positive, blue where negative (both beyond 1% of the largest
    magnitude, so that the colour differs from white by more than rounding) and white where
    zero."""
    rgb = read_png(png)
    r = R.sum(axis=0)
    assert rgb.shape == (r.shape[0] * block, r.shape[1] * block, 3)
    centre = rgb[block // 2::block, block // 2::block].astype(int)
    big = np.abs(r) > 0.01 * np.abs(r).max()
    pos, neg = big & (r > 0), big & (r < 0)
    assert pos.any() or neg.any()  # (an LRP-z+ map may have no negative part at all)
    assert (centre[pos][:, 0] == 255).all() and (centre[pos][:, 2] < 255).all()
    assert (centre[neg][:, 2] == 255).all() and (centre[neg][:, 0] < 255).all()
    assert (centre[r == 0] == 255).all()


# --------------------------------------------------------------------------- write_html --
def test_write_html_writes_images_beside_the_page(tmp_path):
    img = np.zeros((4, 6, 3), np.uint8)
    img[:, :3, 0] = 255
    page = render.write_html(
        tmp_path / "index.html",
        ["row", "picture", "<b>text</b>"],
        [[render.Cell(image=img, lines=("f(x) 1.5",), kind="heatmap"), "a & b"]],
        row_heads=["first\nsecond"], title="t<1>")
    t = parse(page)
    head, row = t.rows
    assert [c["lines"] for c in head] == [["row"], ["picture"], ["<b>text</b>"]]
    assert row[0]["tag"] == "th" and row[0]["lines"] == ["first", "second"]
    (src,) = row[1]["imgs"]
    assert src == "cells/r0c0.png" and row[1]["lines"] == ["f(x) 1.5"]
    np.testing.assert_array_equal(read_png(tmp_path / src), img)
    assert row[2]["lines"] == ["a & b"]
    text = pathlib.Path(page).read_text()
    assert "<title>t&lt;1&gt;</title>" in text and 'width="6" height="4"' in text
    with pytest.raises(ValueError, match="row 0 has 1 cells for 2 columns"):
        render.write_html(tmp_path / "x.html", ["a", "b"], [["only one"]], title="x")


# --------------------------------------------------------------------------------- demo --
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "out"
    proc = run("demo", "--n", 3, "--out", out, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    return out, proc.stdout


def test_demo_says_what_the_table_and_the_pictures_cover(demo):
    """The demo said "explaining 10 digits" and then printed a table over all 450."""
    _, stdout = demo
    lines = stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("method "))
    before = " ".join(lines[header - 2:header])
    assert "all 450 test digits" in before and not re.search(r"explaining \d+ digits", stdout)
    pictures = [line for line in lines if line.startswith("Pictures:")]
    assert len(pictures) == 1 and "3 of those digits" in pictures[0]
    assert any("index.html" in line for line in lines)


def test_demo_page_is_a_labelled_grid(demo):
    out, _ = demo
    t = parse(out / "index.html")
    head, rows = t.rows[0], t.rows[1:]
    assert [c["lines"][0] for c in head] == DEMO_HEADS
    assert head[DEMO_HEADS.index("lrp.epsilon_gamma_box")]["lines"][1] == "low=0, high=1"
    net = models.digits_resnet()  # the demo's default
    x_all, y_all = models.digits_data()
    idx = [int(np.flatnonzero(y_all == k)[0]) for k in range(3)]  # one digit per class
    x = x_all[idx].astype(np.float64)
    out_ref = ref.forward(net, x)[-1]
    pred = out_ref.argmax(axis=1)
    saved = np.load(out / "relevance.npz")
    np.testing.assert_array_equal(saved["x"], x_all[idx])
    np.testing.assert_allclose(saved["gradient"], ref.gradient(net, x, pred), rtol=1e-4,
                               atol=1e-6)
    assert len(rows) == 3
    for i, row in enumerate(rows):
        assert row[0]["tag"] == "th"
        assert row[0]["lines"][:2] == [f"true {y_all[idx[i]]}", f"predicted {pred[i]}"]
        (src,) = row[1]["imgs"]
        assert read_png(out / src).shape == (96, 96, 3)
        for method, cell in zip(DEMO_HEADS[2:], row[2:]):
            (src,) = cell["imgs"]
            assert not os.path.isabs(src) and (out / src).is_file()
            R = saved[method][i]
            check_colours(out / src, R, 12)
            f, s, gap = (number(cell["lines"], k) for k in ("f(x)", "sum R", "gap"))
            assert abs(f - out_ref[i, pred[i]]) <= 5e-4
            assert abs(s - R.sum()) <= 5e-4 + 1e-5 * abs(R.sum())
            assert abs(gap - (out_ref[i, pred[i]] - R.sum())) <= 1e-3


# ------------------------------------------------------------------------------ explain --
@pytest.fixture(scope="module")
def explained(tmp_path_factory):
    folder = tmp_path_factory.mktemp("explain")
    x, y = models.digits_data()
    np.savez(folder / "labelled.npz", x=x[:5], y=y[:5])
    out = folder / "out"
    proc = run("explain", "digits_cnn", folder / "labelled.npz", "-m", "lrp.epsilon", "-p",
               "epsilon=0.01", "-o", out, "--report", "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out / 'index.html'}" in proc.stdout
    return folder, out, x[:5], y[:5]


def test_explain_report_rows_are_the_samples(explained):
    _, out, x, y = explained
    t = parse(out / "index.html")
    head, rows = t.rows[0], t.rows[1:]
    assert [c["lines"][0] for c in head] == ["sample", "input", "heatmap", "label", "target",
                                             "predicted", "f(x)", "sum R", "gap"]
    assert head[2]["lines"][1] == "lrp.epsilon (epsilon=0.01)"
    net = models.digits_cnn()
    scores = ref.forward(net, x.astype(np.float64))[-1]
    pred = scores.argmax(axis=1)
    R = np.load(out / "relevance.npy")
    assert len(rows) == 5
    for i, row in enumerate(rows):
        name, inp, heat, label, target, predicted, f, s, gap = row
        assert name["lines"] == [str(i)]
        assert inp["imgs"] == [f"inputs/{i}.png"] and heat["imgs"] == [f"heatmaps/{i}.png"]
        assert read_png(out / inp["imgs"][0]).shape == (128, 128, 3)
        check_colours(out / heat["imgs"][0], R[i], 16)
        assert (label["lines"], target["lines"], predicted["lines"]) == \
            ([str(y[i])], [str(pred[i])], [str(pred[i])])
        np.testing.assert_allclose(float(f["lines"][0]), scores[i, pred[i]], rtol=1e-5)
        np.testing.assert_allclose(float(s["lines"][0]), R[i].sum(dtype=np.float64), rtol=1e-5,
                                   atol=1e-6)
        np.testing.assert_allclose(float(gap["lines"][0]), scores[i, pred[i]] - R[i].sum(),
                                   rtol=1e-4, atol=1e-5)


def test_explain_report_without_labels_and_with_a_fixed_target(explained, tmp_path):
    folder, _, x, _ = explained
    np.save(tmp_path / "x.npy", x[:3])
    out = tmp_path / "out"
    proc = run("explain", "digits_cnn", tmp_path / "x.npy", "-m", "gradient", "--target", 7,
               "-o", out, "--report")
    assert proc.returncode == 0, proc.stderr
    rows = parse(out / "index.html").rows[1:]
    pred = ref.forward(models.digits_cnn(), x[:3].astype(np.float64))[-1].argmax(axis=1)
    assert [[c["lines"][0] for c in r[3:6]] for r in rows] == \
        [["unknown", "7", str(p)] for p in pred]


def test_explain_report_draws_feature_vectors_as_strips(tmp_path):
    x, y = models.digits_data(flat=True)
    np.savez(tmp_path / "flat.npz", x=x[:2], y=y[:2])
    out = tmp_path / "out"
    proc = run("explain", "digits_mlp", tmp_path / "flat.npz", "-m", "gradient", "-o", out,
               "--report")
    assert proc.returncode == 0, proc.stderr
    rows = parse(out / "index.html").rows[1:]
    R = np.load(out / "relevance.npy")
    for i, row in enumerate(rows):
        strip = read_png(out / row[2]["imgs"][0])
        assert strip.shape == (16, 64 * 4, 3)
        check_colours(out / row[2]["imgs"][0], R[i].reshape(1, 1, 64).repeat(4, axis=1), 4)


# ------------------------------------------------------------------------------ browser --
def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (CI installs it: .ci/run)")
    return exe


def screenshot(page, png, profile, size=(1400, 1100)):
    """``chromium --headless --screenshot`` of ``page`` opened from its folder (file://)."""
    proc = subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", f"--user-data-dir={profile}", f"--screenshot={png}",
         f"--window-size={size[0]},{size[1]}", pathlib.Path(page).resolve().as_uri()],
        capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and os.path.isfile(png), proc.stderr[-2000:]
    return read_png(png).astype(int)


def red_and_blue(rgb):
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return (r > 200) & (g < 120) & (b < 120), (b > 200) & (r < 120) & (g < 120)


@pytest.mark.parametrize("which", ["demo", "explain"])
def test_page_renders_heatmaps_in_a_browser(demo, explained, tmp_path, which):
    """The page opened from its folder shows its heatmaps: where the screenshot differs from
    one taken with the images moved away (the heatmap region: the layout keeps its size),
    there are red and blue pixels, at least one 12x12 block (one input pixel) of each."""
    out = demo[0] if which == "demo" else explained[1]
    page = tmp_path / "site" / "index.html"
    shutil.copytree(out, page.parent)
    shown = screenshot(page, tmp_path / "shown.png", tmp_path / "profile")
    for folder in ("cells", "heatmaps", "inputs"):
        if (page.parent / folder).exists():
            shutil.move(page.parent / folder, tmp_path / f"moved-{folder}")
    blank = screenshot(page, tmp_path / "blank.png", tmp_path / "profile")
    assert shown.shape == blank.shape
    region = (shown != blank).any(axis=-1)
    red, blue = red_and_blue(shown)
    assert (red & region).sum() >= 144 and (blue & region).sum() >= 144, \
        ((red & region).sum(), (blue & region).sum())
    red_b, blue_b = red_and_blue(blank)
    assert not (red_b & region).any() and not (blue_b & region).any()


# ----------------------------------------------------------------------------- evaluate --
EVAL_METRICS = ["pixel_flipping", "abpc", "road", "model_parameter_randomization",
                "faithfulness_correlation"]


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate") / "report"
    proc = run("evaluate", "digits_cnn", "digits", "--limit", 8, "--methods",
               "lrp.epsilon_plus_flat,random", "--metrics", ",".join(EVAL_METRICS),
               "--steps", 8, "--patch", 2, "--set", "regions=6", "--set", "subset=8",
               "--report", out)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {out / 'index.html'}" in proc.stdout
    return out, proc.stdout


def _svgs(page):
    """The page's charts: per ``<svg>``, its title and its polylines' points ``(k, 2)``."""
    text = pathlib.Path(page).read_text()
    charts = []
    for svg in re.findall(r"<svg.*?</svg>", text, re.S):
        title = re.search(r'font-size="13">([^<]*)</text>', svg).group(1)
        lines = [np.array([[float(v) for v in p.split(",")] for p in pts.split()])
                 for pts in re.findall(r'<polyline points="([^"]*)"', svg)]
        charts.append((title, lines))
    return charts


def test_evaluate_report_has_the_printed_table_and_the_curves(evaluated):
    out, stdout = evaluated
    t = parse(out / "index.html")
    head, rows = t.rows[0], t.rows[1:]
    assert [c["lines"][0] for c in head] == ["method"] + EVAL_METRICS
    printed = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
               for line in stdout.splitlines() if line.startswith("| ") and "---" not in line}
    for row in rows:
        method = row[0]["lines"][0]
        assert [c["lines"][0] for c in row[1:]] == printed[method]
    assert printed["random"][EVAL_METRICS.index("model_parameter_randomization")] == "n/a"
    # the curves: one line per method (two for abpc), at the mean curve of relprop.metrics
    import relprop as rp

    net = models.digits_cnn()
    x = models.digits_data()[0][:8]
    pred = net(x).argmax(axis=1)
    R = rp.explain(net, x, pred, method="lrp.epsilon_plus_flat")
    charts = dict(_svgs(out / "index.html"))
    assert set(charts) == {"pixel_flipping", "abpc", "road", "model_parameter_randomization"}
    assert [len(lines) for lines in charts.values()] == [2, 4, 2, 1]
    want = rp.metrics.pixel_flipping(net, x, R, pred, steps=8, patch=2).curves.mean(axis=0)
    got = charts["pixel_flipping"][0]
    assert got.shape == (9, 2) and np.all(np.diff(got[:, 0]) > 0)
    fit = np.polyfit(want, got[:, 1], 1)  # pixel height is an affine map of the value ...
    assert fit[0] < 0 and np.abs(np.polyval(fit, want) - got[:, 1]).max() < 0.1  # ... going up
    layers = rp.metrics.model_parameter_randomization(net, x, R, pred).layers
    assert len(charts["model_parameter_randomization"][0]) == len(layers)


def test_evaluate_report_renders_its_charts_in_a_browser(evaluated, tmp_path):
    """In the screenshot, the first two line colours (one per method) are drawn, and they
    vanish from a copy of the page without its figures."""
    out, _ = evaluated
    page = tmp_path / "site" / "index.html"
    shutil.copytree(out, page.parent)
    shown = screenshot(page, tmp_path / "shown.png", tmp_path / "profile", size=(1400, 2400))
    text = page.read_text()
    page.write_text(re.sub(r'<div class="figures">.*?</div>\n', "", text, flags=re.S))
    blank = screenshot(page, tmp_path / "blank.png", tmp_path / "profile", size=(1400, 2400))

    def near(rgb, colour):
        want = np.array([int(colour[i:i + 2], 16) for i in (1, 3, 5)])
        return (np.abs(rgb - want).max(axis=-1) <= 24).sum()

    for colour in render.LINE_COLOURS[:2]:
        assert near(shown, colour) >= 300, colour
        assert near(blank, colour) == 0, colour
