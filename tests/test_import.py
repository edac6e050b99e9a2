"""``import relprop`` stays light: NumPy is its only run-time dependency, and the optional parts
(importers, evaluation, prototypes, pictures, the command line, Dask) and the heavy modules of
the standard library are imported on first use.  Checked on the modules a fresh process holds
after ``import relprop`` beyond those of ``import numpy`` (not on time, which a shared machine
makes noise of: ``python bench/import_time.py`` measures it)."""
import subprocess
import sys

import relprop

#: Modules (and their submodules) that ``import relprop`` must not import.
HEAVY = {
    # extras and peers
    "torch", "torchvision", "onnx", "onnxruntime", "sklearn", "scipy", "matplotlib", "PIL",
    "dask", "distributed", "tqdm", "zennit", "captum",
    # the standard library's heavy ones (zipfile alone brings shutil, bz2, lzma, pathlib, ...)
    "zipfile", "shutil", "pathlib", "urllib", "bz2", "lzma", "asyncio", "concurrent",
    "subprocess", "argparse", "tempfile", "multiprocessing", "email", "http",
    # relprop's parts that are imported when used
    "relprop.importers", "relprop.evaluate", "relprop.prototypes", "relprop.models",
    "relprop.render", "relprop.plot", "relprop.cli", "relprop.stream", "relprop.dask",
    "relprop.inputs", "relprop.reference", "relprop.metrics", "relprop.quantus",
}


def _fresh(code):
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.split()


def test_import_relprop_imports_nothing_heavy():
    added = _fresh("import numpy, sys; before = set(sys.modules); import relprop; "
                   "print(*sorted(set(sys.modules) - before))")
    assert {"relprop", "relprop.layers", "relprop._core"} <= set(added)  # the check sees them
    heavy = [m for m in added if any(m == h or m.startswith(h + ".") for h in HEAVY)]
    assert not heavy, f"import relprop imports {heavy}: import them where they are used"


def test_lazy_names_are_there_when_used():
    added = _fresh("import sys, relprop; before = set(sys.modules); relprop.from_onnx; "
                   "relprop.activation_maximization; relprop.evaluate.pixel_flipping; "
                   "from relprop import from_torch, GaussianPrior; "
                   "print(*sorted(set(sys.modules) - before))")
    assert {"relprop.importers", "relprop.prototypes", "relprop.evaluate"} <= set(added)
    for name in relprop.__all__:
        assert getattr(relprop, name) is not None, name
    assert set(relprop.__all__) <= set(dir(relprop))
