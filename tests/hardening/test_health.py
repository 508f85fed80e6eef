"""Hardening (issue 10): health and metrics tell the truth about what cannot work.

Defect 11: ``vigil_scheduler_outbox_events`` is set before a refused batch raises.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from services.core.events import make_event
from services.core.natsserver import NatsServer
from services.scheduler import metrics
from services.scheduler.outbox import OutboxRelay
from services.scheduler.store import SchedulerStore
from tests.helpers import SCHEDULER, nats_client


def _outbox_gauge() -> float:
    value = REGISTRY.get_sample_value("vigil_scheduler_outbox_events")
    assert value is not None
    return value


async def test_outbox_gauge_counts_events_jetstream_refused(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    """No VIGIL_INGEST stream: every publish fails, and the gauge shows the two waiting."""
    store = SchedulerStore(f"sqlite:///{tmp_path}/scheduler.db")
    await store.open()
    nc = await nats_client(nats_server.url, SCHEDULER)
    try:
        async with store.transaction() as tx:
            await tx.enqueue([make_event("node", "added", source="test") for _ in range(2)])
        relay = OutboxRelay(store, nc.jetstream())
        metrics.OUTBOX.set(0)
        with pytest.raises(ConnectionError, match="2 of 2 event"):
            await relay.relay_once()
        assert _outbox_gauge() == 2
        assert await store.outbox_size() == 2
    finally:
        await nc.close()
        await store.close()
