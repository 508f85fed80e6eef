"""Fixtures for the minion tests (issue 6): real nats-server, real sockets.

The parent conftest provides ``nats_server`` (a private nats-server per test)
and ``events_seen`` (every event published during the test).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.minions.util import BannerTarget


@pytest.fixture
async def banner_target() -> AsyncIterator[BannerTarget]:
    """A slow (0.4 s) TCP target that is UP."""
    target = await BannerTarget(0.4).start()
    try:
        yield target
    finally:
        await target.stop()
