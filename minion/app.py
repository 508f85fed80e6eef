"""The minion process: wire up, serve, shut down.

    NATS  vigil.poll.<location>  (queue group: one minion of the location per request)
          vigil.poll.<location>.<system_id>  (requests aimed at this minion)
            │
            ▼
    PollRunner (deadlines, retries, concurrency cap) ──► SinkClient ──► scheduler gRPC
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from pathlib import Path

from vigil.v1 import sink_pb2

import minion
from minion.monitors import registry
from minion.monitors.registry import MonitorSet
from minion.runner import PollRunner
from minion.sink_client import SinkClient
from services.common import natsconn
from services.common.config import NODE_ID_RE, MinionSettings
from services.common.tasks import Supervisor
from services.common.timeutil import set_timestamp
from services.common.timeutil import now as wall_now

log = logging.getLogger(__name__)

POLL_PREFIX = "vigil.poll"


def load_system_id(settings: MinionSettings) -> str:
    """The configured id, else the one kept in ``id_file``, else a new one written there."""
    if settings.system_id:
        return settings.system_id
    path = Path(settings.id_file)
    try:
        existing = path.read_text().strip()
        if NODE_ID_RE.fullmatch(existing):
            return existing
        log.warning("%s holds an invalid system id %r; generating a new one", path, existing)
    except OSError:
        pass
    new_id = f"minion-{uuid.uuid4().hex[:12]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new_id + "\n")
    return new_id


class Minion:
    """Owns the NATS subscriptions, the runner and the scheduler session."""

    def __init__(self, settings: MinionSettings, *, nats_url: str) -> None:
        self.settings = settings
        self.nats_url = nats_url
        self.location = settings.location
        self.system_id = load_system_id(settings)
        self.monitors = MonitorSet()
        self.tasks = Supervisor("minion")
        hello = sink_pb2.MinionHello(
            system_id=self.system_id,
            location=self.location,
            version=minion.__version__,
            monitors=registry.available(),
        )
        self.sink = SinkClient(settings.scheduler, hello, self._heartbeat, buffer_size=settings.result_buffer)
        self.runner = PollRunner(
            self.monitors, self.system_id, self.sink.submit, max_in_flight=settings.max_in_flight
        )
        self._nc: natsconn.NATS | None = None
        self._subs: list[object] = []

    def _heartbeat(self) -> sink_pb2.Heartbeat:
        hb = sink_pb2.Heartbeat(
            in_flight=self.runner.in_flight,
            polls_done=self.runner.stats.done,
            nats_connected=bool(self._nc and self._nc.is_connected and self._subs),
            dropped_expired=self.runner.stats.dropped_expired,
        )
        set_timestamp(hb.sent_at, wall_now())
        return hb

    @property
    def subjects(self) -> tuple[str, str]:
        """The location subject and this minion's own subject."""
        return f"{POLL_PREFIX}.{self.location}", f"{POLL_PREFIX}.{self.location}.{self.system_id}"

    async def start(self) -> None:
        """Connect to NATS and the scheduler; start taking requests."""
        self.tasks.spawn("sink", self.sink.run())
        self._nc = nc = await natsconn.connect(self.nats_url, f"vigil-minion-{self.system_id}")
        shared, own = self.subjects
        limits = {"pending_msgs_limit": 10_000, "pending_bytes_limit": 64 << 20}
        self._subs = [
            await nc.subscribe(shared, queue=f"vigil-minions-{self.location}", cb=self.runner.on_message, **limits),
            await nc.subscribe(own, cb=self.runner.on_message, **limits),
        ]
        await nc.flush(timeout=5)
        log.info(
            "minion %s at location %s: NATS %s, scheduler %s, monitors %s",
            self.system_id,
            self.location,
            self.nats_url,
            self.settings.scheduler,
            ", ".join(registry.available()),
        )

    async def stop(self, drain_timeout: float = 10.0) -> None:
        """Stop taking requests, finish in-flight polls (bounded), flush results, disconnect."""
        for sub in self._subs:
            try:
                await sub.unsubscribe()  # type: ignore[attr-defined]
            except Exception:
                pass
        self._subs = []
        await self.runner.drain(drain_timeout)
        if self.sink.connected.is_set():
            await self.sink.flush(timeout=5.0)
        await self.tasks.close()
        if self._nc is not None:
            try:
                await asyncio.wait_for(self._nc.close(), 5.0)
            except Exception:
                pass
        await self.monitors.close()
        log.info("minion %s stopped (%d polls done)", self.system_id, self.runner.stats.done)
