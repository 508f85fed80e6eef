"""Hypothesis profiles for the fuzz tests.

CI runs a bounded number of examples (the ``ci`` profile, the default);
``make fuzz`` sets ``VIGIL_FUZZ_EXAMPLES`` to run many more locally.
No deadline: the gRPC and NATS examples go through real servers, whose
latency on a shared machine says nothing about the code under test.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from tests.fuzz.stackthread import StackThread

#: How many examples each fuzz test runs (``make fuzz`` raises it).
EXAMPLES = int(os.environ.get("VIGIL_FUZZ_EXAMPLES", "0") or 0)

settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    derandomize=False,
)
settings.register_profile(
    "fuzz",
    max_examples=EXAMPLES or 2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
settings.load_profile("fuzz" if EXAMPLES else "ci")


@pytest.fixture(scope="module")
def fuzz_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StackThread]:
    """One running stack (NATS, scheduler, events, a minion) for a whole fuzz module."""
    running = StackThread(tmp_path_factory.mktemp("fuzz-stack")).start()
    try:
        yield running
    finally:
        running.stop()
