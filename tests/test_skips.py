"""Strict skips (``RELPROP_STRICT_SKIPS=1``, set by ``.ci/run``): a skip without a platform
reason fails the run, a missing module included; without the switch, skips stay skips.

Each test runs pytest in a subprocess on probe tests beside a copy of ``tests/conftest.py``.
"""
import os
import pathlib
import re
import shutil
import subprocess
import sys

HERE = pathlib.Path(__file__).resolve().parent

PROBES = {
    "test_probe.py": '''import pytest


def test_runs():
    pass

def test_skips_without_a_reason_of_the_platform():
    pytest.skip("chromium is not installed")

def test_misses_a_module():
    pytest.importorskip("relprop_no_such_module")

@pytest.mark.skipif(True, reason="platform: needs another operating system")
def test_skips_for_the_platform():
    pass
''',
    "test_probe_module.py": '''import pytest

pytest.importorskip("relprop_no_such_module")

def test_never_collected():
    pass
''',
}


def _outcomes(tmp_path, strict):
    for name, text in PROBES.items():
        (tmp_path / name).write_text(text)
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    env = {k: v for k, v in os.environ.items() if k != "RELPROP_STRICT_SKIPS"}
    if strict:
        env["RELPROP_STRICT_SKIPS"] = "1"
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           "--continue-on-collection-errors", str(tmp_path)], cwd=tmp_path,
                          env=env, capture_output=True, text=True, timeout=300)
    last = proc.stdout.splitlines()[-1]  # "2 failed, 1 passed, 1 skipped, 1 error in 0.5s"
    counts = {word: int(n) for n, word in re.findall(r"(\d+) (\w+?)s?\b", last)}
    return proc, counts


def test_strict_skips_fail_unless_the_platform_lacks_something(tmp_path):
    proc, counts = _outcomes(tmp_path, strict=True)
    assert proc.returncode == 1, proc.stdout
    assert counts == {"failed": 2, "passed": 1, "skipped": 1, "error": 1}, proc.stdout
    out = proc.stdout
    assert "FAILED test_probe.py::test_skips_without_a_reason_of_the_platform" in out
    assert "FAILED test_probe.py::test_misses_a_module" in out
    assert "ERROR test_probe_module.py" in out
    for reason in ("chromium is not installed", "could not import 'relprop_no_such_module'"):
        assert f"without a 'platform: ' reason: {reason}" in out, out
    assert "SKIPPED [1] test_probe.py:13: platform: needs another operating system" in out
    assert "RELPROP_STRICT_SKIPS=1: 1 skipped, each for a platform reason" in out


def test_skips_stay_skips_without_the_switch(tmp_path):
    proc, counts = _outcomes(tmp_path, strict=False)
    assert proc.returncode == 0, proc.stdout
    assert counts == {"passed": 1, "skipped": 4}, proc.stdout
    assert "RELPROP_STRICT_SKIPS" not in proc.stdout

