"""Without an optional package, relprop says which one and how to install it.

Each test runs Python in a subprocess whose ``PYTHONPATH`` starts with a folder holding a stand-in
package that fails to import exactly as a missing one does (``ModuleNotFoundError: No module
named '...'``), so the installed package is never reached.
"""
import importlib.util
import os
import subprocess
import sys

import pytest


def _without(tmp_path, *modules):
    """An environment in which importing each of ``modules`` fails as if it were not installed."""
    stubs = tmp_path / "missing"
    for m in modules:
        (stubs / m).mkdir(parents=True)
        (stubs / m / "__init__.py").write_text(
            f"raise ModuleNotFoundError(\"No module named '{m}'\", name={m!r})\n")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(stubs)] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


def _run(env, *args, cwd=None):
    return subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300)


@pytest.mark.parametrize("module", ["onnx", "sklearn"])
def test_stub_hides_the_installed_package(tmp_path, module):
    """The stand-in works: an installed package cannot be imported under it."""
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed: nothing to hide")
    proc = _run(_without(tmp_path, module), "-c", f"import {module}")
    assert proc.returncode == 1 and f"No module named '{module}'" in proc.stderr


@pytest.mark.parametrize("command", ["info", "explain"])
def test_onnx_model_without_onnx_says_pip_install_extra(tmp_path, command):
    model = tmp_path / "model.onnx"
    model.write_bytes(b"\x08\x07")  # never read: relprop needs onnx first
    args = [model] if command == "info" else [model, "digits", "-o", tmp_path / "out"]
    proc = _run(_without(tmp_path, "onnx"), "-m", "relprop.cli", command, *args)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("relprop: error: "), proc.stderr
    assert "pip install 'relprop[onnx]'" in lines[0] and "onnx" in lines[0]


def test_from_onnx_without_onnx_raises_import_error_with_install_command(tmp_path):
    code = ("import relprop\n"
            "try:\n"
            "    relprop.from_onnx('model.onnx')\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    proc = _run(_without(tmp_path, "onnx"), "-c", code, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "No module named 'onnx'" in proc.stdout
    assert "pip install 'relprop[onnx]'" in proc.stdout


def test_train_digits_without_scikit_learn_says_how_to_install_it(tmp_path):
    out = tmp_path / "out"
    proc = _run(_without(tmp_path, "sklearn"), "-m", "relprop.models.train_digits", "--out", out)
    assert proc.returncode == 2, proc
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("relprop.models.train_digits: error: ")
    assert "scikit-learn" in lines[0] and "pip install scikit-learn" in lines[0]
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir())  # nothing written


def test_digits_train_split_without_scikit_learn(tmp_path):
    code = ("from relprop.models import digits_data\n"
            "x, y = digits_data('test')\n"
            "print(x.shape)\n"
            "try:\n"
            "    digits_data('train')\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    proc = _run(_without(tmp_path, "sklearn"), "-c", code)
    assert proc.returncode == 0, proc.stderr
    shape, message = proc.stdout.strip().splitlines()
    assert shape == str((450, 1, 8, 8))  # the test split ships with relprop
    assert "pip install scikit-learn" in message and "No module named 'sklearn'" in message


def test_road_without_scipy_says_pip_install_extra(tmp_path):
    code = ("import numpy as np, relprop.metrics as M\n"
            "try:\n"
            "    M.impute(np.zeros((1, 4, 4)), [5])\n"
            "except ImportError as exc:\n"
            "    print(exc)\n")
    proc = _run(_without(tmp_path, "scipy"), "-c", code)
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'relprop[metrics]'" in proc.stdout
    assert "No module named 'scipy'" in proc.stdout
