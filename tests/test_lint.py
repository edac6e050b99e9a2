"""ruff finds nothing in python/, tests/ and bench/ (the configuration is in pyproject.toml).

Skipped where ruff is not installed; the ``test`` extra installs it (in CI, with
``RELPROP_STRICT_SKIPS=1``, a missing ruff fails).
"""
import importlib.util
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
PATHS = ("python", "tests", "bench")

if importlib.util.find_spec("ruff") is None:
    pytest.skip("ruff is not installed (pip install ruff, or the test extra)",
                allow_module_level=True)


def _ruff(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "ruff", "check", "--no-cache", *args],
                          cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=300)


def test_ruff_finds_nothing():
    proc = _ruff(*PATHS)
    assert proc.returncode == 0, (f"`ruff check {' '.join(PATHS)}` found problems:\n"
                                  f"{proc.stdout}{proc.stderr}")


def test_ruff_reports_a_problem_with_this_configuration():
    """The check above can fail: the project's rules find an unused import, an unsorted import
    block and a line over 100 characters in a file of tests/."""
    source = "import sys\nimport os\n\nx = " + "1 + " * 30 + "1\n"
    proc = _ruff("--stdin-filename", "tests/probe.py", "-", stdin=source)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    found = set(re.findall(r"\b(F401|I001|E501)\b", proc.stdout))
    assert found == {"F401", "I001", "E501"}, proc.stdout


@pytest.mark.skipif(sys.version_info < (3, 11), reason="platform: tomllib needs Python 3.11")
def test_ruff_targets_the_oldest_supported_python():
    import tomllib
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    oldest = re.fullmatch(r">=\s*3\.(\d+)", config["project"]["requires-python"])
    assert oldest, config["project"]["requires-python"]
    assert config["tool"]["ruff"]["target-version"] == f"py3{oldest.group(1)}"
