"""README's performance section speaks of the project: what was measured, on which CPU, when,
and how to reproduce it, in agreement with the report it quotes (bench/results.md)."""
import pathlib
import re

ROOT = pathlib.Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
RESULTS = (ROOT / "bench" / "results.md").read_text()


def _section(title):
    return README.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def test_performance_section_says_what_where_when_and_how():
    perf = _section("Performance")
    assert "What was measured" in perf and "How to reproduce" in perf
    assert re.search(r"\b20\d\d-\d\d-\d\d\b", perf), "the date of the quoted run"
    assert "python bench/run.py" in perf and "bench/results.md" in perf
    # the machine as the report records it
    cpu = re.search(r"^- CPU: (.+?), (\d+) logical cores", RESULTS, re.M)
    assert cpu and cpu.group(1) in perf and f"{cpu.group(2)} vCPUs" in perf
    peak = re.search(r"FMA peak .*?: ([\d.]+) GFLOP/s per core; ([\d.]+) GFLOP/s", RESULTS)
    assert peak and f"{peak.group(1)} GFLOP/s per core and {peak.group(2)}" in perf
    for peer in re.search(r"^- peers: (.+)$", RESULTS, re.M).group(1).split(", "):
        name, version = peer.split(" ")
        if name in ("zennit", "captum"):
            assert version.rsplit(".", 1)[0] in perf, peer


def test_readme_does_not_cite_issue_tracker_numbers():
    """The README speaks of the project, not of its issue tracker ("issue 4's targets")."""
    assert not re.search(r"\bissues? #?\d", README, re.I), re.findall(r".{30}issues? #?\d.{20}",
                                                                     README, re.I)


def test_every_bench_command_is_listed_for_a_rerun():
    """bench/README.md lists every bench script, and every bench command that README quotes
    (a number's command) runs a script that exists and is in that list."""
    listed = (ROOT / "bench" / "README.md").read_text()
    scripts = {p.name for p in (ROOT / "bench").glob("*.py")}
    assert {s for s in scripts if f"`{s}`" not in listed} == set()
    quoted = set(re.findall(r"python bench/(\w+\.py)", README))
    assert quoted and quoted <= scripts, quoted - scripts
    for command in re.findall(r"`(python bench/[^`]+)`", README):
        assert " ".join(command.split()) in listed, command
