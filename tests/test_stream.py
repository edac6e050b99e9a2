"""``relprop explain`` streaming to disk (relprop.stream): lazy inputs, bitwise the in-process
result for any chunking, bounded memory, and runs killed at any moment then resumed equal to a
clean run.  Expected values come from in-process relprop calls or from a clean run."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import relprop
from relprop import models, stream

TIMEOUT = 600


def run(*args, timeout=TIMEOUT):
    """``python -m relprop.cli ARGS``; the CompletedProcess (TimeoutExpired if it hangs)."""
    return subprocess.run([sys.executable, "-m", "relprop.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


#: Runs relprop's CLI after arranging to SIGKILL itself at one point of the chunk commit:
#: argv[1] the point, argv[2] the chunk (counted from 1 in this process), then the CLI's args.
KILLER = r"""
import os, signal, sys
from relprop import cli, stream

point, at = sys.argv[1], int(sys.argv[2])
seen = {"write": 0, "record": 0}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

orig_write, orig_pwrite, orig_record = (stream.OutputFolder.write, stream._pwrite_all,
                                        stream._write_json_atomic)

def write(self, start, R, rows):
    seen["write"] += 1
    if point == "relevance-written" and seen["write"] == at:
        stream._pwrite_all = lambda *a: (orig_pwrite(*a), die())
    orig_write(self, start, R, rows)
    if seen["write"] == at and point in ("csv-written", "csv-half-written"):
        self._csv.flush()
        if point == "csv-half-written":
            size = self._csv.tell()
            os.ftruncate(self._csv.fileno(), size - 9)  # a row cut in the middle
        die()

def record(path, obj, durable=True):
    counts = path.endswith("progress.json") and obj["done"] > seen.get("done", 0)
    if counts:  # the record that counts a new chunk (not a sync point's)
        seen["record"] += 1
        seen["done"] = obj["done"]
    if counts and seen["record"] == at:
        if point == "data-synced":  # the chunk's data are written, the record is not yet
            die()
        if point == "record-tmp-written":  # the new record written beside the old one
            with open(path + ".tmp", "w") as fh:
                fh.write(str(obj)[: len(str(obj)) // 2])
            die()
    orig_record(path, obj, durable)

stream.OutputFolder.write = write
stream._write_json_atomic = record
sys.exit(cli.main(sys.argv[3:]))
"""


def run_killed(point, at, *args):
    proc = subprocess.run([sys.executable, "-c", KILLER, point, str(at), *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == -signal.SIGKILL, (proc.returncode, proc.stderr)
    return proc


@pytest.fixture(scope="module")
def digits_npy(tmp_path_factory):
    """2000 digits (the test split repeated with a small per-copy shift) as a .npy file."""
    x, _ = models.digits_data()
    reps = -(-2000 // len(x))
    shift = np.repeat(np.arange(reps, dtype=np.float32) / (4 * reps), len(x))[:2000]
    big = np.tile(x, (reps, 1, 1, 1))[:2000] + shift[:, None, None, None]
    path = tmp_path_factory.mktemp("data") / "digits.npy"
    np.save(path, big)
    return path, big


def read_out(out):
    return (out / "relevance.npy").read_bytes(), (out / "explained.csv").read_bytes()


def record(out):
    return json.loads((out / "progress.json").read_text())


# ------------------------------------------------------------------------------- readers --
@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16])
def test_npyfile_reads_rows_like_numpy(tmp_path, dtype):
    a = (np.arange(7 * 3 * 4 * 5) % 251).astype(dtype).reshape(7, 3, 4, 5)
    np.save(tmp_path / "a.npy", a)
    f = stream.NpyFile(tmp_path / "a.npy")
    assert f.shape == a.shape and f.dtype == a.dtype and len(f) == 7
    for start, stop in [(0, 7), (2, 5), (6, 7), (3, 3), (5, 99)]:
        np.testing.assert_array_equal(f.read(start, stop), a[start:stop], strict=True)
    for key in [slice(1, 6), (slice(None, 4), 2), -1, 0, (slice(2, 7), slice(None), 1, 3),
                np.array([5, 1, 3])]:
        np.testing.assert_array_equal(f[key], a[key], strict=True)
    # Fortran order: rows are not contiguous on disk; still the same values
    np.save(tmp_path / "f.npy", np.asfortranarray(a))
    np.testing.assert_array_equal(stream.NpyFile(tmp_path / "f.npy").read(2, 6), a[2:6])


def test_npyfile_errors(tmp_path):
    np.save(tmp_path / "a.npy", np.zeros((10, 4), np.float32))
    data = (tmp_path / "a.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(data[:-20])  # truncated: the header still says 10 rows
    with pytest.raises(ValueError, match="t.npy"):
        stream.NpyFile(tmp_path / "t.npy").read(0, 10)
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(ValueError, match="not a readable .npy"):
        stream.NpyFile(tmp_path / "junk.npy")
    np.save(tmp_path / "o.npy", np.array([1, "a"], dtype=object))
    with pytest.raises(ValueError, match="o.npy"):
        stream.NpyFile(tmp_path / "o.npy")
    np.save(tmp_path / "s.npy", np.float32(3))  # a 0-d array: no samples, no len()
    with pytest.raises(TypeError, match="0-dimensional"):
        len(stream.NpyFile(tmp_path / "s.npy"))
    proc = run("explain", "digits_cnn", tmp_path / "s.npy", "-o", tmp_path / "out")
    assert proc.returncode == 2, proc.stderr  # was an IndexError traceback
    assert "INPUTS has shape () but the model expects (n, 1, 8, 8)" in proc.stderr


def test_open_inputs_is_lazy_for_npy_and_image_folders(tmp_path, digits_npy):
    path, x = digits_npy
    net = models.digits_cnn()
    inputs = stream.open_inputs(path, net)
    assert isinstance(inputs, stream.NpyInputs) and inputs.n == len(x)
    np.testing.assert_array_equal(inputs.read(1990, 2000), x[1990:])
    assert inputs.names(8, 10) == ["0008", "0009"]
    Image = pytest.importorskip("PIL.Image")
    folder = tmp_path / "img"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.rint(x[i, 0] * 255).astype(np.uint8)).save(folder / f"d{i}.png")
    imgs = stream.open_inputs(folder, net)
    assert imgs.images and imgs.n == 3 and imgs.names(1, 3) == ["d1", "d2"]
    np.testing.assert_array_equal(
        imgs.read(0, 2), np.rint(x[:2] * 255).astype(np.uint8).astype(np.float32) / 255)


# ---------------------------------------------------------------------------- streaming --
def test_stream_equals_in_process_for_any_chunking(tmp_path, digits_npy):
    path, x = digits_npy
    net = models.digits_cnn()
    pred = net(x).argmax(axis=1)
    want = relprop.explain(net, x, pred, "lrp.epsilon_gamma_box", low=0.0, high=1.0)
    outs = []
    for chunk, batch, threads in [(2000, 2000, 2), (333, 64, 1), (1, 1, 2)]:
        out = tmp_path / f"out{chunk}"
        args = ["explain", "digits_cnn", path, "-m", "lrp.epsilon_gamma_box", "-p", "low=0",
                "-p", "high=1", "-o", out, "--chunk-size", chunk, "--batch-size", batch,
                "--threads", threads]
        if chunk == 1:  # one sample per chunk: only the first 40 samples, from an .npy of 40
            np.save(tmp_path / "x40.npy", x[:40])
            args[2] = tmp_path / "x40.npy"
        proc = run(*args)
        assert proc.returncode == 0, proc.stderr
        R = np.load(out / "relevance.npy", mmap_mode="r")
        np.testing.assert_array_equal(R, want[:len(R)], strict=True)
        rows = (out / "explained.csv").read_text().splitlines()
        assert rows[0] == "name,target,score,relevance_sum" and len(rows) == len(R) + 1
        assert [int(r.split(",")[1]) for r in rows[1:]] == list(pred[:len(R)])
        scores = net(x[:len(R)])[np.arange(len(R)), pred[:len(R)]]
        np.testing.assert_allclose([float(r.split(",")[2]) for r in rows[1:]], scores,
                                   rtol=1e-5)
        rec = record(out)
        assert rec["done"] == rec["n"] == len(R)
        outs.append(out)
    assert (outs[0] / "explained.csv").read_bytes() == (outs[1] / "explained.csv").read_bytes()


def test_array_inputs_get_heatmaps_only_on_request(tmp_path, digits_npy):
    pytest.importorskip("PIL")
    path, x = digits_npy
    np.save(tmp_path / "x.npy", x[:5])
    proc = run("explain", "digits_cnn", tmp_path / "x.npy", "-o", tmp_path / "a")
    assert proc.returncode == 0, proc.stderr
    assert not (tmp_path / "a" / "heatmaps").exists() and "--heatmaps" in proc.stdout
    proc = run("explain", "digits_cnn", tmp_path / "x.npy", "-o", tmp_path / "b", "--heatmaps")
    assert proc.returncode == 0, proc.stderr
    assert sorted(os.listdir(tmp_path / "b" / "heatmaps")) == [f"{i}.png" for i in range(5)]
    x64, _ = models.digits_data(flat=True)
    np.save(tmp_path / "f.npy", x64[:3])
    proc = run("explain", "digits_mlp", tmp_path / "f.npy", "-o", tmp_path / "c", "--heatmaps")
    assert proc.returncode == 2 and "heatmaps need image inputs" in proc.stderr


def test_nan_chunk_is_an_error_naming_the_samples(tmp_path, digits_npy):
    _, x = digits_npy
    bad = x[:300].copy()
    bad[217, 0, 4, 4] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    out = tmp_path / "out"
    proc = run("explain", "digits_cnn", tmp_path / "bad.npy", "-o", out, "--chunk-size", 100)
    assert proc.returncode == 2
    assert "samples 200..299" in proc.stderr and "NaN" in proc.stderr
    assert record(out)["done"] == 200  # the chunks before it are kept


# ------------------------------------------------------------------------------- resume --
def test_resume_after_a_kill_at_every_point_of_a_commit(tmp_path, digits_npy):
    pytest.importorskip("PIL")
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:250])
    args = ["explain", "digits_cnn", tmp_path / "x.npy", "-m", "lrp.epsilon_plus_flat",
            "-o", None, "--chunk-size", 60, "--heatmaps", "--threads", 1]
    clean = tmp_path / "clean"
    args[args.index("-o") + 1] = clean
    assert run(*args).returncode == 0
    for point in ("relevance-written", "csv-written", "csv-half-written", "data-synced",
                  "record-tmp-written"):
        for at in (1, 3):
            out = tmp_path / f"{point}-{at}"
            args[args.index("-o") + 1] = out
            run_killed(point, at, *args)
            # the chunk in flight is not counted: `at - 1` chunks are done
            assert record(out)["done"] == 60 * (at - 1), point
            proc = run(*args, "--resume")
            assert proc.returncode == 0, proc.stderr
            assert f"{60 * (at - 1)} of 250 samples were done" in proc.stdout
            assert read_out(out) == read_out(clean), (point, at)
            for name in os.listdir(clean / "heatmaps"):
                assert (out / "heatmaps" / name).read_bytes() == \
                    (clean / "heatmaps" / name).read_bytes()
            assert not (out / "progress.json.tmp").exists()


@pytest.mark.slow
def test_resume_after_kills_at_random_moments(tmp_path, digits_npy):
    _, x = digits_npy
    big = np.tile(x, (15, 1, 1, 1))  # 30,000 digits
    np.save(tmp_path / "x.npy", big)
    args = ["explain", "digits_cnn", tmp_path / "x.npy", "-m", "gradient_x_input",
            "-o", tmp_path / "clean", "--chunk-size", 700, "--threads", 1]
    t0 = time.perf_counter()
    assert run(*args).returncode == 0
    whole = time.perf_counter() - t0  # kills land within a run's time, however fast
    args[args.index("-o") + 1] = out = tmp_path / "out"
    rng = np.random.default_rng(7)
    kills = 0
    for attempt in range(12):
        proc = subprocess.Popen([sys.executable, "-m", "relprop.cli", *map(str, args),
                                 *(["--resume"] if attempt else [])],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        time.sleep(rng.uniform(0.2, 0.8) * whole)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate(timeout=TIMEOUT)
        if proc.returncode == 0:
            break
        if (out / "progress.json").exists():
            done = record(out)["done"]  # whole chunks, or all (the last chunk is partial)
            assert done % 700 == 0 or done == len(big), done
    assert kills >= 1
    proc = run(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert read_out(out) == read_out(tmp_path / "clean")


def test_resume_with_other_arguments_is_refused(tmp_path, digits_npy):
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:200])
    np.save(tmp_path / "y.npy", x[:200] * 0.5)
    base = ["explain", "digits_cnn", tmp_path / "x.npy", "-m", "lrp.epsilon", "-p", "epsilon=0.1",
            "-o", tmp_path / "out", "--chunk-size", 50]
    run_killed("data-synced", 2, *base)
    assert record(tmp_path / "out")["done"] == 50
    changes = {
        "method": ("lrp.epsilon", "lrp.epsilon_plus_flat"),
        "params.epsilon": ("epsilon=0.1", "epsilon=0.2"),
        "inputs.path": (tmp_path / "x.npy", tmp_path / "y.npy"),
        "model.name": ("digits_cnn", "digits_mlp"),
        "chunk_size": (50, 60),
    }
    for what, (old, new) in changes.items():
        args = [new if a == old else a for a in base]
        if what == "model.name":  # the MLP takes (n, 64): give it flat inputs of its own
            np.save(tmp_path / "flat.npy", x[:200].reshape(200, 64))
            args[2] = tmp_path / "flat.npy"
        proc = run(*args, "--resume")
        assert proc.returncode == 2, (what, proc.stdout)
        assert "holds a run with other arguments" in proc.stderr and what in proc.stderr, \
            proc.stderr
    # the same arguments with other threads and batch size resume
    proc = run(*base, "--resume", "--threads", 1, "--batch-size", 7)
    assert proc.returncode == 0, proc.stderr
    net = models.digits_cnn()
    want = relprop.lrp(net, x[:200], net(x[:200]).argmax(axis=1), "epsilon", epsilon=0.1)
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "relevance.npy"), want)
    # a finished run has nothing left to do; without --resume an interrupted one starts over
    proc = run(*base, "--resume")
    assert proc.returncode == 0 and "nothing to do" in proc.stdout
    run_killed("data-synced", 1, *base)
    proc = run(*base)
    assert proc.returncode == 0 and "starting over" in proc.stdout
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "relevance.npy"), want)


def test_resume_refuses_damaged_outputs(tmp_path, digits_npy):
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:100])
    args = ["explain", "digits_cnn", tmp_path / "x.npy", "-o", tmp_path / "out",
            "--chunk-size", 30]
    run_killed("data-synced", 3, *args)
    (tmp_path / "out" / "explained.csv").write_text("name,target\n")
    proc = run(*args, "--resume")
    assert proc.returncode == 2 and "explained.csv is shorter" in proc.stderr
    (tmp_path / "out" / "progress.json").write_text("{}")
    proc = run(*args, "--resume")
    assert proc.returncode == 2 and "not a relprop progress record" in proc.stderr


def _overwrite(path, offset, data):
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(data)


def _chunk_offsets(out, i):
    """(relevance.npy offset, explained.csv offset) of chunk i's first bytes."""
    rec = record(out)
    start, _, c0 = rec["chunks"][i][:3]
    rel = np.load(out / "relevance.npy", mmap_mode="r")
    return int(rel.offset) + start * rel[0].nbytes, c0


def finished_run(tmp_path, x):
    """``relprop explain``'s arguments for ``x`` in chunks of 60 into tmp_path/out, run once."""
    np.save(tmp_path / "x.npy", x)
    args = ["explain", "digits_cnn", tmp_path / "x.npy", "-o", tmp_path / "out",
            "--chunk-size", 60]
    assert run(*args).returncode == 0
    return args


def edit_record(out, change):
    rec = record(out)
    change(rec)
    (out / "progress.json").write_text(json.dumps(rec))


def test_resume_verifies_the_chunks_and_recomputes_the_damaged(tmp_path, digits_npy):
    """A few bytes overwritten inside relevance.npy or explained.csv after a finished run:
    --resume finds them against the chunks' checksums and recomputes those chunks in place (it
    kept the damaged bytes, status 0); relprop verify reports them (status 1)."""
    pytest.importorskip("PIL")
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:250])
    args = ["explain", "digits_cnn", tmp_path / "x.npy", "-o", None, "--chunk-size", 60,
            "--heatmaps"]
    args[4] = clean = tmp_path / "clean"
    assert run(*args).returncode == 0
    proc = run("verify", clean)
    assert proc.returncode == 0 and "all 5 chunk(s) match their checksums" in proc.stdout, proc
    args[4] = out = tmp_path / "out"
    assert run(*args).returncode == 0
    rel_at, _ = _chunk_offsets(out, 1)
    _, csv_at = _chunk_offsets(out, 3)
    _overwrite(out / "relevance.npy", rel_at + 100, b"\x00\x01\x02\x03")
    csv = (out / "explained.csv").read_bytes()
    _overwrite(out / "explained.csv", csv_at, b"X" if csv[csv_at:csv_at + 1] != b"X" else b"Y")
    (out / "heatmaps" / "070.png").unlink()
    proc = run("verify", out)
    assert proc.returncode == 1, proc
    assert "chunk 1 (samples 60..119): relevance.npy differ" in proc.stdout, proc.stdout
    assert "chunk 3 (samples 180..239): explained.csv differ" in proc.stdout, proc.stdout
    proc = run(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "verified all 5 chunks" in proc.stdout
    assert "chunk 1 (samples 60..119) did not match its checksum (relevance.npy): " \
        "recomputed" in proc.stdout, proc.stdout
    assert "chunk 3 (samples 180..239) did not match its checksum (explained.csv)" in proc.stdout
    assert read_out(out) == read_out(clean)
    assert (out / "heatmaps" / "070.png").read_bytes() == \
        (clean / "heatmaps" / "070.png").read_bytes()
    assert run("verify", out).returncode == 0


def test_resume_verifies_the_last_two_chunks_when_all_would_cost_too_much(tmp_path,
                                                                          digits_npy):
    """Verifying every chunk costs more than a tenth of the run so far (the record says the
    run took no time): the last two are verified, damage before them is left to relprop
    verify."""
    args = finished_run(tmp_path, digits_npy[1][:250])
    clean = read_out(tmp_path / "out")
    edit_record(tmp_path / "out", lambda rec: rec.update(seconds=0.0))
    early, _ = _chunk_offsets(tmp_path / "out", 0)
    late, _ = _chunk_offsets(tmp_path / "out", 3)
    for at in (early, late):
        _overwrite(tmp_path / "out" / "relevance.npy", at, b"\xff" * 8)
    proc = run(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "verified the last 2 of 5 chunks" in proc.stdout, proc.stdout
    assert "chunk 3 (samples 180..239) did not match" in proc.stdout
    assert "chunk 0 " not in proc.stdout
    rel, csv = read_out(tmp_path / "out")
    assert rel != clean[0] and csv == clean[1]
    proc = run("verify", tmp_path / "out")
    assert proc.returncode == 1 and "chunk 0 (samples 0..59): relevance.npy" in proc.stdout


def test_resume_refuses_a_chunk_recomputed_other_than_its_checksum(tmp_path, digits_npy):
    args = finished_run(tmp_path, digits_npy[1][:150])
    # chunk 1's relevance checksum, no longer that of its bytes
    edit_record(tmp_path / "out", lambda rec: rec["chunks"][1].__setitem__(4, ~rec["chunks"][1][4]))
    proc = run(*args, "--resume")
    assert proc.returncode == 2
    assert "chunk 1 (samples 60..119) was recomputed with other bytes than its checksums" \
        in proc.stderr, proc.stderr
    proc = run("verify", tmp_path / "nothing")
    assert proc.returncode == 2 and "no progress record" in proc.stderr


def test_verify_checks_what_lies_outside_the_chunks(tmp_path, digits_npy):
    """relprop verify checks everything: the CSV header, bytes after relevance.npy's array and,
    after a finished run, after the last chunk's rows (all passed as matching: only the chunks
    were checked); --resume repairs them to the clean run's bytes."""
    args = finished_run(tmp_path, digits_npy[1][:150])
    out = tmp_path / "out"
    clean = read_out(out)
    _overwrite(out / "explained.csv", 0, b"nome")
    with open(out / "explained.csv", "ab") as fh:
        fh.write(b"extra,1,2,3\n")
    with open(out / "relevance.npy", "ab") as fh:
        fh.write(bytes(256))
    proc = run("verify", out)
    assert proc.returncode == 1, proc
    for problem in ("explained.csv: its header is not 'name,target,score,relevance_sum'",
                    "relevance.npy: 38,784 bytes, its array 38,528",
                    "explained.csv: 12 bytes after the last chunk's rows", "3 problem(s)"):
        assert problem in proc.stdout, proc.stdout
    proc = run(*args, "--resume")
    assert proc.returncode == 0 and "relevance.npy: 38,784 bytes, its array 38,528: repaired" \
        in proc.stdout, proc.stdout
    assert read_out(out) == clean and (out / "relevance.npy").stat().st_size == 38_528
    assert run("verify", out).returncode == 0
    (out / "explained.csv").unlink()  # a missing file is damage too (status 1), not an error
    proc = run("verify", out)
    assert proc.returncode == 1 and "explained.csv: missing or unreadable" in proc.stdout, proc


def test_chunks_after_the_last_sync_point_are_verified_on_resume(tmp_path, digits_npy):
    """After an OS crash, chunks counted after the last sync point may not be on disk: --resume
    verifies them even when verifying all would cost too much (here: a run that took no time),
    and recomputes those that do not match."""
    args = finished_run(tmp_path, digits_npy[1][:300])
    out = tmp_path / "out"
    clean = read_out(out)
    rec = record(out)
    edit_record(out, lambda rec: rec.update(seconds=0.0, synced=rec["chunks"][1][1]))
    rel_at, _ = _chunk_offsets(out, 2)  # chunk 2 of 5: after the sync point, not the last two
    _overwrite(out / "relevance.npy", rel_at, bytes(60 * 256))  # never reached the disk
    proc = run(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "verified the last 3 of 5 chunks" in proc.stdout, proc.stdout
    assert "chunk 2 (samples 120..179) did not match its checksum" in proc.stdout
    assert read_out(out) == clean and rec["synced"] == 300


def test_an_unreadable_record_falls_back_to_the_last_sync_point(tmp_path, digits_npy):
    args = finished_run(tmp_path, digits_npy[1][:300])
    out = tmp_path / "out"
    clean = read_out(out)
    (out / "progress.json").write_bytes(b"")  # the crash lost its contents
    proc = run(*args, "--resume")
    assert proc.returncode == 0, proc.stderr
    assert "continuing from the last sync point" in proc.stdout
    assert read_out(out) == clean and record(out)["done"] == 300


def test_a_run_fsyncs_at_sync_points_not_per_chunk(tmp_path, digits_npy, monkeypatch):
    """50 chunks, sync points far apart: the data and the records are fsynced at the start and
    at the end (four fsyncs per chunk before), and the files are those of a run that syncs
    after every chunk."""
    calls = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (calls.append(fd), real(fd))[1])
    x = digits_npy[1][:500]
    net = models.digits_cnn()
    kw = dict(method="gradient", params={}, chunk_size=10, log=lambda m: None)
    monkeypatch.setattr(stream, "SYNC_SECONDS", 1e9)
    stream.explain_to_folder(net, stream.ArrayInputs(x, {"name": "x"}), tmp_path / "a", **kw)
    assert len(calls) <= 6, len(calls)
    monkeypatch.setattr(stream, "SYNC_SECONDS", 0.0)
    monkeypatch.setattr(stream, "SYNC_SHARE", 1e12)  # a sync point after every chunk
    stream.explain_to_folder(net, stream.ArrayInputs(x, {"name": "x"}), tmp_path / "b", **kw)
    assert len(calls) > 100
    assert read_out(tmp_path / "a") == read_out(tmp_path / "b")
    assert record(tmp_path / "a")["synced"] == 500


def test_resume_without_a_record_starts(tmp_path, digits_npy):
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:20])
    proc = run("explain", "digits_cnn", tmp_path / "x.npy", "-o", tmp_path / "o", "--resume")
    assert proc.returncode == 0 and "starting from the beginning" in proc.stdout
    assert record(tmp_path / "o")["done"] == 20


def test_derived_box_bounds_are_kept_for_resume(tmp_path, digits_npy):
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:120])
    args = ["explain", "digits_cnn", tmp_path / "x.npy", "-m", "lrp.epsilon_gamma_box",
            "-o", tmp_path / "o", "--chunk-size", 50]
    run_killed("data-synced", 2, *args)
    derived = record(tmp_path / "o")["derived"]
    assert derived == {"low": float(x[:120].min()), "high": float(x[:120].max())}
    proc = run(*args, "--resume")
    assert proc.returncode == 0 and f"high={derived['high']:g}" in proc.stdout
    net = models.digits_cnn()
    want = relprop.lrp(net, x[:120], net(x[:120]).argmax(axis=1), "epsilon_gamma_box",
                       **derived)
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "relevance.npy"), want)


def test_random_methods_give_the_in_process_bits_for_any_chunking_and_a_resume(tmp_path,
                                                                              digits_npy):
    """SmoothGrad draws each sample's noise from (seed, its index in INPUTS): chunks of 150,
    64 and 16 and a run resumed after a kill give bytes equal to one in-process call (the noise
    used to restart in every chunk: relevance 0.99 apart where the largest is 7.1); without
    -p seed the run draws one, says so and keeps it for --resume."""
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:150])
    net = models.digits_cnn()
    want = relprop.smoothgrad(net, x[:150], "pred", n=3, seed=4)
    base = ["explain", "digits_cnn", tmp_path / "x.npy", "-m", "smoothgrad", "-p", "n=3",
            "-p", "seed=4", "-o", None, "--chunk-size", None]
    outs = []
    for chunk in (150, 64, 16):
        out = tmp_path / f"c{chunk}"
        base[-3], base[-1] = out, chunk
        proc = run(*base, "--batch-size", 5)
        assert proc.returncode == 0, proc.stderr
        np.testing.assert_array_equal(np.load(out / "relevance.npy"), want, strict=True)
        outs.append(read_out(out))
    assert outs[0] == outs[1] == outs[2]
    base[-3] = out = tmp_path / "resumed"
    run_killed("data-synced", 3, *base)
    assert record(out)["done"] == 32
    assert run(*base, "--resume").returncode == 0
    assert read_out(out) == outs[0]
    # no seed: one is drawn for the run, logged, and kept by --resume
    unseeded = [a for a in base if a not in ("-p", "seed=4")][:5] + ["-p", "n=3"] + base[-4:]
    unseeded[unseeded.index("-o") + 1] = out = tmp_path / "unseeded"
    run_killed("data-synced", 2, *unseeded)
    seed = record(out)["derived"]["seed"]
    proc = run(*unseeded, "--resume")
    assert proc.returncode == 0 and f"seed={seed} (drawn at random" in proc.stdout, proc.stdout
    np.testing.assert_array_equal(np.load(out / "relevance.npy"),
                                  relprop.smoothgrad(net, x[:150], "pred", n=3, seed=seed))


def test_a_generator_seed_is_refused_with_the_reason(tmp_path, digits_npy):
    """Chunks are explained apart, so a numpy.random.Generator's draws would depend on the
    cut: explain_to_folder refuses it before any work (the CLI's -p seed is an int)."""
    _, x = digits_npy
    with pytest.raises(stream.UsageError, match="relprop explain: seed must be an int .* "
                                                "would depend on the cut"):
        stream.explain_to_folder(models.digits_cnn(), stream.ArrayInputs(x[:20], {"name": "x"}),
                                 tmp_path / "o", method="smoothgrad",
                                 params={"seed": np.random.default_rng(0)}, log=lambda m: None)
    assert not (tmp_path / "o" / "relevance.npy").exists()


# ------------------------------------------------------------------------------- memory --
#: The CLI, then its peak RSS: VmHWM of /proc/self/status (ru_maxrss would count the memory of
#: the pytest process the child was forked from).
PEAK_RSS = ("import sys; from relprop.cli import main; rc = main(sys.argv[1:]); "
            "print([l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]); "
            "sys.exit(rc)")


def peak_rss_mb(*args):
    proc = subprocess.run([sys.executable, "-c", PEAK_RSS, *map(str, args)],
                          capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, proc.stderr
    return int(proc.stdout.split("VmHWM:")[1].split()[0]) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists("/proc/self/status"),
                    reason="platform: reads VmHWM from /proc (Linux)")
def test_200000_digits_stream_in_bounded_memory(tmp_path, digits_npy):
    _, x = digits_npy
    big = np.lib.format.open_memmap(tmp_path / "x.npy", mode="w+", dtype=np.float32,
                                    shape=(200_000, 1, 8, 8))
    for start in range(0, 200_000, 2000):
        big[start:start + 2000] = x
    big.flush()
    del big
    np.save(tmp_path / "small.npy", np.tile(x, (10, 1, 1, 1)))  # 20,000
    common = ["-m", "lrp.epsilon_plus_flat", "--threads", 1]
    rss_big = peak_rss_mb("explain", "digits_cnn", tmp_path / "x.npy", "-o", tmp_path / "big",
                          *common)
    rss_small = peak_rss_mb("explain", "digits_cnn", tmp_path / "small.npy", "-o",
                            tmp_path / "small", *common)
    assert rss_big < 400, rss_big
    # bounded by the chunk, not the number of samples: 10x the samples, about the same peak
    # (measured: +14 MB, glibc keeping freed heap, which malloc_trim gives back; holding the
    # relevance or the inputs of 180,000 more samples would add 46 MB each)
    assert rss_big < rss_small + 30, (rss_small, rss_big)
    R = np.load(tmp_path / "big" / "relevance.npy", mmap_mode="r")
    net = models.digits_cnn()
    for start in (0, 96_000, 198_000):  # spot checks against in-process calls
        xs = x[:2000]
        np.testing.assert_array_equal(
            R[start:start + 2000], relprop.explain(net, xs, net(xs).argmax(axis=1)))
    with open(tmp_path / "big" / "explained.csv") as fh:
        assert sum(1 for _ in fh) == 200_001
    print(f"peak RSS: {rss_small:.0f} MB for 20,000 digits, {rss_big:.0f} MB for 200,000")


def test_progress_without_tqdm(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "tqdm", None)
    bar = stream.Progress(100, 20, "m", enabled=True)
    bar.update(80)
    bar.close()
    err = capsys.readouterr().err
    assert "100/100 samples" in err and "samples/s" in err and "ETA" in err


# ------------------------------------------------------------------------- on a cluster --
def test_cli_on_a_local_cluster_resumes_a_local_run(tmp_path, digits_npy):
    """A seeded SmoothGrad run killed in this process and resumed on 2 workers: the bytes of
    an uninterrupted local run, the relevance of one in-process call."""
    pytest.importorskip("distributed")
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:1000])
    args = ["explain", "digits_cnn", tmp_path / "x.npy", "-m", "smoothgrad", "-p", "n=2",
            "-p", "seed=7", "-o", None, "--chunk-size", 128]
    args[args.index("-o") + 1] = tmp_path / "clean"
    assert run(*args, "--threads", 1).returncode == 0
    args[args.index("-o") + 1] = tmp_path / "out"
    run_killed("data-synced", 3, *args)
    proc = run(*args, "--resume", "--workers", 2, "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    assert "2 Dask worker(s)" in proc.stdout
    assert read_out(tmp_path / "out") == read_out(tmp_path / "clean")
    np.testing.assert_array_equal(np.load(tmp_path / "out" / "relevance.npy"), relprop.smoothgrad(
        models.digits_cnn(), x[:1000], "pred", n=2, seed=7), strict=True)


def test_cli_on_a_local_cluster_gives_a_random_methods_in_process_bits(tmp_path, digits_npy):
    pytest.importorskip("distributed")
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:150])
    proc = run("explain", "digits_cnn", tmp_path / "x.npy", "-m", "smoothgrad", "-p", "n=3",
               "-p", "seed=4", "-o", tmp_path / "o", "--chunk-size", 16, "--workers", 2,
               "--threads", 1)
    assert proc.returncode == 0, proc.stderr
    want = relprop.smoothgrad(models.digits_cnn(), x[:150], "pred", n=3, seed=4)
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "relevance.npy"), want, strict=True)


def test_a_killed_worker_loses_nothing(tmp_path, digits_npy):
    """relprop explain on a cluster (explain_to_folder with a client, as --workers runs it):
    a worker killed while chunks are in flight changes nothing in the output (its chunks are
    recomputed from their graphs, which carry the inputs)."""
    distributed = pytest.importorskip("distributed")
    _, x = digits_npy
    net = models.digits_cnn()
    want = relprop.explain(net, x[:1200], "pred")

    class KillOnRead(stream.ArrayInputs):
        """Kills a worker that has tasks when chunk 4 is read (chunks 0-3 are in flight)."""

        def read(self, start, stop):
            if start == 400 and not killed:
                busy = [w for w, t in client.processing().items() if t]
                pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
                os.kill(pid, signal.SIGKILL)
                killed.append(busy[0])
            return super().read(start, stop)

    killed = []
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster, timeout="60s", set_as_default=False) as client:
        res = stream.explain_to_folder(net, KillOnRead(x[:1200], {"name": "x"}), tmp_path / "o",
                                       method="lrp.epsilon_plus_flat", params={},
                                       chunk_size=100, client=client, log=lambda m: None)
    assert killed and res["n"] == 1200
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "relevance.npy"), want, strict=True)


def test_cli_on_an_existing_scheduler(tmp_path, digits_npy):
    distributed = pytest.importorskip("distributed")
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:300])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster:
        proc = run("explain", "digits_cnn", tmp_path / "x.npy", "-o", tmp_path / "o",
                   "--chunk-size", 64, "--scheduler", cluster.scheduler_address)
    assert proc.returncode == 0, proc.stderr
    net = models.digits_cnn()
    xs = x[:300]
    np.testing.assert_array_equal(np.load(tmp_path / "o" / "relevance.npy"),
                                  relprop.explain(net, xs, net(xs).argmax(axis=1)))


def _set_isa(name):
    from relprop import ops

    ops.set_isa(name)


def test_cli_refuses_a_worker_of_another_instruction_set(tmp_path, digits_npy):
    distributed = pytest.importorskip("distributed")
    from relprop import ops

    others = [i for i in ops.supported_isas() if i != ops.isa()]
    if not others:
        pytest.skip("platform: this CPU runs one instruction set only (none to switch a worker to)")
    _, x = digits_npy
    np.save(tmp_path / "x.npy", x[:300])
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=True,
                                  dashboard_address=":0") as cluster, \
            distributed.Client(cluster) as client:
        client.run(_set_isa, others[0])
        proc = run("explain", "digits_cnn", tmp_path / "x.npy", "-o", tmp_path / "o",
                   "--chunk-size", 100, "--scheduler", cluster.scheduler_address)
    v = relprop.__version__
    assert proc.returncode == 2, proc.stderr
    assert f"runs relprop {v} on {others[0]}, the client relprop {v} on {ops.isa()}" \
        in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "o" / "relevance.npy").exists()


def test_cli_refuses_a_server_that_is_not_a_scheduler(tmp_path, digits_npy):
    """--scheduler pointing at another protocol's server: a clear error at once (a Client read
    its bytes as a frame length of exabytes, then took 20 s to close itself)."""
    pytest.importorskip("distributed")
    import socket
    import threading

    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]

    def answer():  # an HTTP server's reply to whatever comes
        while True:
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                conn.recv(1 << 16)
                conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n" * 64)

    threading.Thread(target=answer, daemon=True).start()
    try:
        path, _ = digits_npy
        proc = run("explain", "digits_cnn", path, "-o", tmp_path / "o", "--scheduler",
                   f"tcp://127.0.0.1:{port}", timeout=120)
        assert proc.returncode == 2, proc.stderr
        # the server's answer was read and refused (not a connection that timed out)
        assert "cannot reach the Dask scheduler (not a Dask scheduler" in proc.stderr
        assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    finally:
        server.close()


def test_cluster_flag_errors(tmp_path, digits_npy):
    pytest.importorskip("distributed")
    path, _ = digits_npy
    out = tmp_path / "o"
    proc = run("explain", "digits_cnn", path, "-o", out, "--workers", 2, "--scheduler",
               "tcp://127.0.0.1:1")
    assert proc.returncode == 2 and "exclude each other" in proc.stderr
    proc = run("explain", "digits_cnn", path, "-o", out, "--workers", 0)
    assert proc.returncode == 2 and "--workers must be at least 1" in proc.stderr
    # a refused port or a bad address, said as such (a Client would retry until it timed out)
    for address, cause in [("tcp://127.0.0.1:9", "Connection refused"),
                           ("127.0.0.1:9", "Connection refused"),
                           ("nonsense", "missing port number"),
                           ("tcp://localhost", "missing port number")]:
        proc = run("explain", "digits_cnn", path, "-o", out, "--scheduler", address,
                   timeout=120)  # an error, not a hang
        assert proc.returncode == 2, proc.stderr
        assert f"--scheduler {address}: cannot reach the Dask scheduler (" in proc.stderr
        assert cause in proc.stderr and "Timed out" not in proc.stderr, proc.stderr
        assert "Traceback" not in proc.stderr and "Exception ignored" not in proc.stderr
    assert not (out / "relevance.npy").exists()
