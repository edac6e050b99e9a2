"""``relprop concepts``: the atlas streamed to a folder (the in-process atlas's numbers, the same
bytes for any chunking, threads, workers, interruption and resume), and its ``--report`` page
checked in a real browser (headless Chromium, as tests/test_report.py)."""
import html.parser
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import relprop as rp
import relprop.concepts as C
from relprop.concepts import folder

LAYERS = ["block1.conv1", "block2.conv2"]


def run(*args, **kw):
    return subprocess.run([sys.executable, "-m", "relprop.cli", "concepts", *map(str, args)],
                          capture_output=True, text=True, timeout=600, **kw)


def digits_npz(tmp_path, n=450):
    x, y = rp.models.digits_data()
    path = tmp_path / "digits.npz"
    np.savez(path, x=x[:n], y=y[:n])
    return path, x[:n], y[:n]


def _same(a, b):
    assert a.layers == b.layers and a.k == b.k and a.n_samples == b.n_samples
    for name in a.layers:
        for u, v in ((a.relmax, b.relmax), (a.actmax, b.actmax)):
            assert all(np.array_equal(p, q) for p, q in zip(u[name], v[name]))
        assert np.array_equal(a.class_relevance[name], b.class_relevance[name])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("concepts")
    path, x, y = digits_npz(tmp)
    out = tmp / "out"
    proc = run("digits_resnet", path, "--layers", ",".join(LAYERS), "-o", out, "--k", 5,
               "--chunk-size", 100, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    return tmp, path, x, y, (out / "atlas.npz").read_bytes()


def test_cli_atlas_is_the_in_process_atlas(uninterrupted, tmp_path):
    tmp, path, x, y, data = uninterrupted
    (tmp_path / "a.npz").write_bytes(data)
    want = C.atlas(rp.models.digits_resnet(), x, LAYERS, labels=y, k=5)
    _same(C.Atlas.load(tmp_path / "a.npz"), want)


def test_same_bytes_for_other_chunks_and_threads(uninterrupted, tmp_path):
    _, path, _, _, data = uninterrupted
    proc = run("digits_resnet", path, "--layers", ",".join(LAYERS), "-o", tmp_path / "o",
               "--k", 5, "--chunk-size", 64, "--batch-size", 7, "--threads", 2)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "atlas.npz").read_bytes() == data


def test_resume_after_an_interruption_gives_the_same_bytes(uninterrupted, tmp_path):
    """In process: the run stops after its second chunk was saved (and once with a half-written
    state file beside it, as a kill during the write leaves), then --resume finishes it."""
    _, path, _, _, data = uninterrupted
    out = tmp_path / "out"
    args = ["digits_resnet", path, "--layers", ",".join(LAYERS), "-o", out, "--k", 5,
            "--chunk-size", 100]
    calls = []

    def stop_after_two(msg):
        calls.append(msg)
        if len(calls) == 2:
            raise KeyboardInterrupt

    real = folder.atlas_to_folder

    def interrupted(*a, **kw):
        kw["log"] = stop_after_two
        return real(*a, **kw)

    folder.atlas_to_folder = interrupted
    try:
        from relprop import cli

        assert cli.main(["concepts", *map(str, args)]) == 130  # "relprop: interrupted"
    finally:
        folder.atlas_to_folder = real
    assert not (out / "atlas.npz").exists() and (out / folder.STATE).exists()
    (out / (folder.STATE + ".tmp")).write_bytes(b"half a file")
    proc = run(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "after 200 done before" in proc.stdout
    assert (out / "atlas.npz").read_bytes() == data
    proc = run(*args, "--resume")  # all done: the same file again
    assert "nothing to do" in proc.stdout and (out / "atlas.npz").read_bytes() == data


def test_resume_after_sigkill_gives_the_same_bytes(uninterrupted, tmp_path):
    """A real kill (SIGKILL) once the first chunks are saved, wherever the run then is."""
    _, path, _, _, data = uninterrupted
    out = tmp_path / "out"
    args = ["digits_resnet", path, "--layers", ",".join(LAYERS), "-o", out, "--k", 5,
            "--chunk-size", 20, "--threads", 1]
    proc = subprocess.Popen([sys.executable, "-m", "relprop.cli", "concepts", *map(str, args)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not (out / folder.STATE).exists() and proc.poll() is None and \
            time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    again = run(*args, "--resume")
    assert again.returncode == 0, again.stderr
    assert (out / "atlas.npz").read_bytes() == data


def test_resume_refuses_other_arguments_and_a_damaged_state(uninterrupted, tmp_path):
    _, path, _, _, _ = uninterrupted
    out = tmp_path / "out"
    base = ["digits_resnet", path, "--layers", ",".join(LAYERS), "-o", out, "--chunk-size", 100]
    assert run(*base, "--k", 5).returncode == 0
    proc = run(*base, "--k", 6, "--resume")
    assert proc.returncode == 2 and "k: 5 in OUTDIR, 6 now" in proc.stderr
    state = out / folder.STATE
    raw = bytearray(state.read_bytes())
    pos = raw.rfind(b"\x93NUMPY")  # inside the last array's data (the zip's CRC sees it)
    raw[pos + 200] ^= 0xFF
    state.write_bytes(bytes(raw))
    proc = run(*base, "--k", 5, "--resume")
    assert proc.returncode == 2 and "the state file is damaged" in proc.stderr
    # an array rewritten with a valid container: the checksum in the description sees it
    from relprop.io import read_model, write_model

    assert run(*base, "--k", 5).returncode == 0
    desc, arrays = read_model(state)
    arrays["counts"] = arrays["counts"] + 1
    write_model(state, desc, arrays)
    proc = run(*base, "--k", 5, "--resume")
    assert proc.returncode == 2 and "do not match their checksum" in proc.stderr


@pytest.mark.parametrize("args, message", [
    (["--layers", "nope"], "no node 'nope'"),
    (["--layers", "fc", "--k", "0"], "--k must be at least 1"),
    (["--layers", "fc", "--target", "label", "--input-shape", "1,8,8"], None),
])
def test_cli_errors(tmp_path, args, message):
    x, _ = rp.models.digits_data()
    np.save(tmp_path / "x.npy", x[:10])
    proc = run("digits_resnet", tmp_path / "x.npy", "-o", tmp_path / "o", *args)
    assert proc.returncode == 2
    assert (message or "has no labels") in proc.stderr


@pytest.mark.slow
def test_two_workers_give_the_same_bytes(uninterrupted, tmp_path):
    pytest.importorskip("distributed")
    _, path, _, _, data = uninterrupted
    proc = run("digits_resnet", path, "--layers", ",".join(LAYERS), "-o", tmp_path / "o",
               "--k", 5, "--chunk-size", 100, "--workers", 2, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "o" / "atlas.npz").read_bytes() == data


# --- the report ---------------------------------------------------------------------------------
class Rows(html.parser.HTMLParser):
    """Per table (node), its rows: channel, the images' sources and the captions' samples."""

    def __init__(self):
        super().__init__()
        self.tables, self.row, self.caption = {}, None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "table":
            self.node = attrs["data-node"]
            self.tables[self.node] = []
        elif tag == "tr" and "data-channel" in attrs:
            self.row = {"channel": int(attrs["data-channel"]), "imgs": [], "samples": [],
                        "relevance": float(attrs["data-relevance"])}
            self.tables[self.node].append(self.row)
        elif tag == "img" and self.row is not None:
            self.row["imgs"].append(attrs["src"])
        elif tag == "figcaption":
            self.caption = True

    def handle_endtag(self, tag):
        if tag == "figcaption":
            self.caption = False

    def handle_data(self, data):
        if self.caption and data.startswith("#"):
            self.row["samples"].append(int(data[1:]))


def parse_rows(text):
    p = Rows()
    p.feed(text)
    return p.tables


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("report")
    path, x, y = digits_npz(tmp, 200)
    out = tmp / "out"
    proc = run("digits_resnet", path, "--layers", ",".join(LAYERS), "-o", out, "--k", 3,
               "--report", "--report-channels", 6, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    return out, x, y


def test_report_lists_each_channels_references(reported):
    out, x, y = reported
    atlas = C.Atlas.load(out / "atlas.npz")
    tables = parse_rows((out / "index.html").read_text())
    assert list(tables) == LAYERS
    for node, rows in tables.items():
        share = atlas.class_counts @ atlas.class_relevance[node] / atlas.n_samples
        want = np.argsort(-share, kind="stable")[:6]
        assert [r["channel"] for r in rows] == list(want)  # sorted by relevance
        for r in rows:
            assert r["samples"] == list(atlas.relmax[node][0][r["channel"]])
            assert len(r["imgs"]) == 6 and all((out / s).is_file() for s in r["imgs"])


def chromium():
    exe = shutil.which("chromium") or shutil.which("chromium-browser")
    if exe is None:
        pytest.skip("chromium is not installed (CI installs it: .ci/run)")
    return exe


def browser(url, profile, *flags):
    return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                           "--hide-scrollbars", "--no-first-run", f"--user-data-dir={profile}",
                           *flags, url], capture_output=True, text=True, timeout=120)


def test_report_sorts_in_a_browser(reported, tmp_path):
    """The page's links re-sort a table: Chromium's DOM after the script ran, for the address
    with #sort=node:channel, lists that table by channel and leaves the other as it was."""
    out, _, _ = reported
    url = (out / "index.html").as_uri()
    dom = browser(f"{url}#sort={LAYERS[1]}:channel", tmp_path / "p", "--dump-dom").stdout
    tables = parse_rows(dom)
    static = parse_rows((out / "index.html").read_text())
    channels = [r["channel"] for r in tables[LAYERS[1]]]
    assert channels == sorted(channels) and channels != [r["channel"] for r in
                                                          static[LAYERS[1]]]
    assert [r["channel"] for r in tables[LAYERS[0]]] == [r["channel"] for r in static[LAYERS[0]]]


def test_report_shows_its_heatmaps_in_a_browser(reported, tmp_path):
    """The screenshot has the heatmaps' red where the pictures are, and none without them."""
    Image = pytest.importorskip("PIL.Image")
    out, _, _ = reported
    site = tmp_path / "site"
    shutil.copytree(out, site)

    def shot(name):
        png = tmp_path / name
        browser((site / "index.html").as_uri(), tmp_path / "p", f"--screenshot={png}",
                "--window-size=1200,1400")
        with Image.open(png) as im:
            return np.asarray(im.convert("RGB")).astype(int)

    shown = shot("shown.png")
    shutil.move(site / "report", tmp_path / "moved")
    blank = shot("blank.png")
    red = (shown[..., 0] == 255) & (shown[..., 1] < 200) & (shown[..., 2] < 200)
    assert red.sum() >= 500
    assert not ((blank[..., 0] == 255) & (blank[..., 1] < 200) & (blank[..., 2] < 200)).any()
    assert re.search(r"<script>", (out / "index.html").read_text())
    assert not [s for s in re.findall(r'src="([^"]+)"', (out / "index.html").read_text())
                if os.path.isabs(s) or ":" in s]
