"""Shared test configuration: hypothesis profiles, the thread-count and instruction-set
fixtures, and strict skips.

Strict skips: with ``RELPROP_STRICT_SKIPS=1`` in the environment (``.ci/run`` sets it: CI installs
every peer and Chromium) a test that skips fails instead, unless its reason starts with
``"platform: "``, i.e. what the operating system or the Python version lacks.  A missing peer, a
missing browser or a skip left behind then fails the run instead of hiding a failure.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

# function_scoped_fixture: the fixtures given to property tests (nthreads, conv_algorithm) set
# a process-wide mode once for all examples, which is what the tests mean
_SUPPRESS = [HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None,
                          suppress_health_check=_SUPPRESS)
settings.register_profile("dev", max_examples=20, deadline=None, suppress_health_check=_SUPPRESS)
settings.register_profile("long", max_examples=500, deadline=None,
                          suppress_health_check=_SUPPRESS)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


STRICT_SKIPS = os.environ.get("RELPROP_STRICT_SKIPS", "") not in ("", "0")
#: How a skip's reason starts when the platform lacks what the test needs (allowed in CI).
PLATFORM = "platform: "


def _skip_reason(report):
    if hasattr(report, "wasxfail"):
        return report.wasxfail
    if isinstance(report.longrepr, tuple):  # (path, line, "Skipped: <reason>")
        return report.longrepr[2].removeprefix("Skipped: ")
    return str(report.longrepr)


def _fail_unexplained_skip(report):
    if STRICT_SKIPS and report.skipped and not _skip_reason(report).startswith(PLATFORM):
        report.outcome = "failed"
        report.longrepr = (f"skipped under RELPROP_STRICT_SKIPS=1 without a {PLATFORM!r} reason: "
                           f"{_skip_reason(report)}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    _fail_unexplained_skip((yield).get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    _fail_unexplained_skip((yield).get_result())  # a module-level importorskip


def pytest_terminal_summary(terminalreporter):
    if STRICT_SKIPS:
        skipped = len(terminalreporter.stats.get("skipped", []))
        terminalreporter.write_line(f"RELPROP_STRICT_SKIPS=1: {skipped} skipped, each for a "
                                    f"platform reason; any other skip failed")


@pytest.fixture
def rng():
    return np.random.default_rng(0xDEADBEEF)


@pytest.fixture(scope="module")
def one_torch_thread():
    """torch on one thread for a module's tests: in float64 it runs small convolutions about
    three times faster on one thread than on two on the 2-core CI machine, and tens of times
    faster while other processes load both cores (its threads spin)."""
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def nthreads(request):
    import relprop

    old = relprop.get_num_threads()
    relprop.set_num_threads(request.param)
    yield request.param
    relprop.set_num_threads(old)


@pytest.fixture(params=["direct", "winograd"])
def conv_algorithm(request):
    """Run the test with every Conv2d on the direct method, then on Winograd F(4x4, 3x3)
    wherever it applies (stride-1 3x3 layers; any dtype)."""
    import relprop

    relprop.set_conv_algorithm(request.param)
    yield request.param
    relprop.set_conv_algorithm(None)


@pytest.fixture(params=__import__("relprop").ops.supported_isas())
def isa(request):
    """Each instruction set this CPU supports in turn (restored afterwards)."""
    from relprop import ops

    old = ops.isa()
    ops.set_isa(request.param)
    yield request.param
    ops.set_isa(old)
