"""Shared test configuration: hypothesis profiles, the thread-count and instruction-set
fixtures."""
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


@pytest.fixture
def rng():
    return np.random.default_rng(0xDEADBEEF)


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
