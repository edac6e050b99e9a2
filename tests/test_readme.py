"""README's Python examples run as written and print what their comments say, and .ci/run uses
README's test command."""
import ast
import pathlib
import re
import sys

import numpy as np
from numpy.testing import assert_allclose

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
BLOCKS = re.findall(r"```python\n(.*?)```", README, re.S)
#: A print whose comment states what it prints: two equal arrays ("==", "equal"), or a shape.
EQUAL = re.compile(r"print\(.*#.*(==|\bequal\b)")
SHAPE = re.compile(r"print\(.*#\s*(\(\d+(?:, \d+)*\))")


def test_readme_python_examples_run_and_print_what_they_say():
    assert BLOCKS, "README has no Python example"
    printed = []
    ns = {"print": lambda *args: printed.append((sys._getframe(1).f_lineno, args))}
    checked = 0
    for code in BLOCKS:
        printed.clear()
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own documentation
        lines = code.splitlines()
        for lineno, args in printed:
            line = lines[lineno - 1]
            if EQUAL.search(line):
                got, want = (np.asarray(a, np.float64) for a in args)
                assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max(), err_msg=line)
                checked += 1
            elif SHAPE.search(line):
                assert args[0] == ast.literal_eval(SHAPE.search(line).group(1)), line
                checked += 1
    claims = sum(bool(EQUAL.search(line) or SHAPE.search(line))
                 for code in BLOCKS for line in code.splitlines())
    assert checked == claims >= 3, (checked, claims)


def test_readme_has_the_two_setup_commands():
    commands = {}
    for marker in ("demo-command", "test-command"):
        body = re.search(rf"<!-- {marker} -->\n```\n(.+?)\n```\n<!-- /{marker} -->", README, re.S)
        assert body and body.group(1).strip(), marker
        commands[marker] = body.group(1).strip()
    ci_lines = [line.strip() for line in (ROOT / ".ci" / "run").read_text().splitlines()]
    assert commands["test-command"] in ci_lines, "CI must run README's test command verbatim"
    # ... with strict skips (tests/conftest.py), as README says
    strict = "export RELPROP_STRICT_SKIPS=1"
    assert strict in ci_lines[:ci_lines.index(commands["test-command"])]
    assert "`.ci/run` runs exactly that second command, with `RELPROP_STRICT_SKIPS=1`" in README
