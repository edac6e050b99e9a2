"""Inputs the fuzz harnesses once broke, replayed: each must now load cleanly or raise
ValueError."""
import pathlib
import sys

import pytest

FUZZ = pathlib.Path(__file__).resolve().parent / "fuzz"
ONNX_CASES = sorted((FUZZ / "regressions" / "onnx").glob("*"))


@pytest.mark.parametrize("case", ONNX_CASES, ids=lambda p: p.name)
def test_onnx_fuzz_regression(case):
    pytest.importorskip("onnx")
    sys.path.insert(0, str(FUZZ))
    try:
        import fuzz_onnx
    finally:
        sys.path.remove(str(FUZZ))
    fuzz_onnx.test_one_input(case.read_bytes())  # raises on a finding
