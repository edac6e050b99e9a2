"""Shared test configuration: hypothesis profiles and the thread-count fixture."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile("ci", max_examples=40, derandomize=True, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=20, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("long", max_examples=500, deadline=None)
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
