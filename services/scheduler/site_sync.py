"""Store-and-forward: what the scheduler tells a location's minions to poll on their own.

For a location with ``locations.<name>.store_and_forward: true`` the
scheduler sends the minions there the location's schedule (every service
polled there: monitor, parameters, interval, timeout, retries, TTL) over
their ResultSink session. A minion keeps it on disk and, while it cannot
reach the central site, polls it on its own and spools the results; once
back, it replays them and the ResultSink applies them at their original
times (see :mod:`services.scheduler.sink`).

The schedule of a location is built at most every ``refresh`` seconds and
identified by a digest, so that an unchanged schedule is never sent again:
minions report the digest they hold in their hello, and sessions are
re-checked on heartbeats.

A schedule carries the location's parameters, secrets included, so it goes
only to sessions of that location: the ResultSink asks for the schedule of
``session.location``, which is the location the session's certificate names
(never one the minion claims), and only when store-and-forward is on there.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from vigil.v1 import common_pb2, sink_pb2

from services.core.config import LocationSettings
from services.core.timeutil import to_duration
from services.scheduler.model import ServiceKey, ServiceRuntime

#: Services per LocationSchedule message: keeps each message far below gRPC's limits.
CHUNK = 1000


@dataclass(frozen=True, slots=True)
class LocationSchedule:
    """A location's schedule, ready to send."""

    location: str
    digest: str
    messages: tuple[sink_pb2.LocationSchedule, ...]

    @property
    def size(self) -> int:
        """Number of services."""
        return sum(len(m.services) for m in self.messages)


class SiteSync:
    """Builds (and caches) the schedules of store-and-forward locations."""

    def __init__(
        self,
        services: Mapping[ServiceKey, ServiceRuntime],
        locations: Mapping[str, LocationSettings],
        *,
        refresh: float = 30.0,
    ) -> None:
        self.services = services
        self.locations = locations
        #: How long a built schedule is reused before the inventory is looked at again.
        self.refresh = refresh
        self._cache: dict[str, tuple[float, LocationSchedule]] = {}

    def enabled(self, location: str) -> bool:
        """Whether store-and-forward is on for ``location``."""
        settings = self.locations.get(location)
        return bool(settings is not None and settings.store_and_forward)

    def schedule(self, location: str, loop_now: float) -> LocationSchedule:
        """The location's current schedule (rebuilt when older than ``refresh``)."""
        cached = self._cache.get(location)
        if cached is not None and loop_now - cached[0] < self.refresh:
            return cached[1]
        built = self._build(location)
        self._cache[location] = (loop_now, built)
        return built

    def _build(self, location: str) -> LocationSchedule:
        entries = []
        for key, rt in sorted(self.services.items()):
            spec = rt.spec
            if spec.location != location or getattr(rt, "paused", False):
                continue
            entry = sink_pb2.ScheduledService(
                service=common_pb2.ServiceRef(node_id=key.node_id, ip=key.ip, service=key.service),
                monitor=spec.monitor,
                interval=to_duration(spec.interval),
                timeout=to_duration(spec.timeout),
                retries=spec.retries,
                ttl=to_duration(spec.ttl),
            )
            entry.params.CopyFrom(rt.params_struct)
            entries.append(entry)
        h = hashlib.sha256()
        for e in entries:
            data = e.SerializeToString(deterministic=True)
            h.update(len(data).to_bytes(4, "big"))
            h.update(data)
        digest = h.hexdigest()[:32]
        count = max(1, -(-len(entries) // CHUNK))
        messages = tuple(
            sink_pb2.LocationSchedule(
                location=location,
                digest=digest,
                index=i,
                count=count,
                services=entries[i * CHUNK : (i + 1) * CHUNK],
            )
            for i in range(count)
        )
        return LocationSchedule(location, digest, messages)
