"""README's Python examples run as written, and .ci/run uses README's test command."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_readme_python_examples_run():
    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert blocks, "README has no Python example"
    ns = {}
    for code in blocks:
        exec(compile(code, "README.md", "exec"), ns)  # noqa: S102 - our own documentation


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
