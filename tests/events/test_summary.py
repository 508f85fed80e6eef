"""Summary events: counts of services per state per location, only when they change."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.core.natsserver import NatsServer
from services.events.app import EventService
from tests.events.util import events_config, jetstream, publish_raw, raw_event
from tests.helpers import EventCollector, wait_for


def summaries(seen: EventCollector) -> list[dict[str, Any]]:
    return [e["data"] for e in seen.find(type="summary", action="updated")]


async def test_summary_counts_services_per_state_per_location(
    tmp_path: Path, nats_server: NatsServer, events_seen: EventCollector
) -> None:
    cfg = events_config(tmp_path, nats_server.url, summary_interval="0.2s")
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        assert svc.summary is not None
        await wait_for(lambda: svc.summary and svc.summary.ticks >= 2, what="two ticks")
        assert summaries(events_seen) == []  # nothing known: nothing to say
        async with jetstream(nats_server.url) as js:
            for e in (
                raw_event("service", "lost", "web-1", location="paris", service="HTTP"),
                raw_event("outage", "opened", "web-1", location="paris", service="HTTP"),
                raw_event("service", "lost", "web-2", location="paris", service="HTTP"),
                raw_event("service", "lost", "db-1", location="london", service="PG"),
                raw_event("service", "regained", "db-1", location="london", service="PG"),
                raw_event("node", "down", "web-3", location="paris"),  # not a service
            ):
                await publish_raw(js, e)
        expected = {
            "locations": {"paris": {"up": 0, "down": 2}, "london": {"up": 1, "down": 0}},
            "total": {"up": 1, "down": 2},
        }
        # (a tick between two ingest batches may have summarised part of them first)
        await wait_for(lambda: summaries(events_seen)[-1:] == [expected], what="the summary")
        # Unchanged counts: ticks go by, no new summary.
        emitted = len(summaries(events_seen))
        ticks = svc.summary.ticks
        await wait_for(
            lambda: svc.summary and svc.summary.ticks >= ticks + 3, what="three more ticks"
        )
        assert len(summaries(events_seen)) == emitted
        summary_event = events_seen.find(type="summary")[0]
        assert summary_event["severity"] == "information"
        assert summary_event["source"] == "events"

        async with jetstream(nats_server.url) as js:
            await publish_raw(
                js, raw_event("service", "regained", "web-2", location="paris", service="HTTP")
            )
            # An unmanaged close forgets the service.
            closed = raw_event("outage", "closed", "db-1", location=None, service="PG")
            closed["data"]["reason"] = "unmanaged"
            await publish_raw(js, closed)
        await wait_for(
            lambda: summaries(events_seen)[-1]["locations"] == {"paris": {"up": 1, "down": 1}},
            what="a summary without london",
        )

        # Node-outage processing: web-2's node goes down (no event of web-2's own) ...
        async with jetstream(nats_server.url) as js:
            await publish_raw(js, raw_event("node", "down", "web-2", location="paris"))
        await wait_for(
            lambda: summaries(events_seen)[-1]["locations"] == {"paris": {"up": 0, "down": 2}},
            what="web-2 down with its node",
        )
        # ... comes back; web-1 is deleted while down.
        async with jetstream(nats_server.url) as js:
            await publish_raw(js, raw_event("node", "up", "web-2", location="paris"))
            await publish_raw(
                js, raw_event("service", "deleted", "web-1", location="paris", service="HTTP")
            )
        await wait_for(
            lambda: summaries(events_seen)[-1]["locations"] == {"paris": {"up": 1, "down": 0}},
            what="web-2 up again, web-1 gone",
        )
        emitted = len(summaries(events_seen))
    finally:
        await svc.stop()

    # After a restart the counts (kept with the history) are unchanged: no summary repeats.
    svc = EventService(cfg, nats_url=nats_server.url)
    await svc.start()
    try:
        assert svc.summary is not None
        assert svc.summary.counts() == {"paris": {"up": 1, "down": 0}}
        await wait_for(
            lambda: svc.summary and svc.summary.ticks >= 3, what="three ticks after the restart"
        )
        assert len(summaries(events_seen)) == emitted
    finally:
        await svc.stop()
