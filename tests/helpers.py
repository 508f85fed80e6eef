"""Test helpers: real components in-process, real targets, waiting with timeouts."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client as NATS

from minion.app import Minion
from services.core import natsconn
from services.core.config import MinionSettings, VigilConfig
from services.core.pki import Identity
from services.events.app import EventService
from services.scheduler.app import Scheduler
from services.scheduler.config import parse_config
from tests import pki as test_pki


def free_port() -> int:
    """A TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def wait_for(
    predicate: Callable[[], Any] | Callable[[], Awaitable[Any]],
    timeout: float = 10.0,
    interval: float = 0.05,
    what: str = "condition",
) -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    loop = asyncio.get_running_loop()
    end = loop.time() + timeout
    while True:
        value = predicate()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        if loop.time() > end:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(interval)


def make_config(
    tmp_path: Path, nats_url: str, nodes: list[dict[str, Any]] | None = None, **sections: Any
) -> VigilConfig:
    """A config for tests: ports chosen by the OS, stores under ``tmp_path``, no metrics ports."""
    data: dict[str, Any] = {
        # The run's CA (tests/pki.py): every link is mutual TLS, as in production.
        "pki": {"dir": str(test_pki.current().dir)},
        "nats": {"url": nats_url},
        "scheduler": {
            "listen": "127.0.0.1:0",
            "probe_listen": None,
            "metrics_listen": None,
            "store_url": f"sqlite:///{tmp_path}/scheduler.db",
            "heartbeat_interval": "0.5s",
            "heartbeat_misses": 3,
            "start_splay": "0.2s",
            "status_flush_interval": "0.2s",
        },
        "events": {
            "listen": "127.0.0.1:0",
            "probe_listen": None,
            "metrics_listen": None,
            "store_url": f"sqlite:///{tmp_path}/events.db",
            # The tests' webhook receivers listen on loopback, which hook safety refuses
            # unless allowed (docs/security.md, "Hook safety"); tests/events/test_hook_safety.py
            # sets it back to [] to exercise the refusals.
            "hooks_allow_networks": ["127.0.0.0/8", "::1/128"],
        },
        "minion": {"id_file": str(tmp_path / "minion-id")},
        "defaults": {"interval": "0.5s", "timeout": "1s", "retries": 0},
        # Tests poll every half second: keep polling at that pace while DOWN too
        # (the built-in downtime model would wait 30 s).
        "packages": [
            {
                "name": "fast",
                "downtime": [{"begin": "0s", "interval": "0.5s"}],
                "retry_interval": "0.2s",
            }
        ],
        "nodes": nodes or [],
    }
    for section, values in sections.items():
        if isinstance(values, dict) and isinstance(data.get(section), dict):
            data[section].update(values)
        else:
            data[section] = values
    return parse_config(data, "<test>", env={})


class TcpTarget:
    """A TCP listener on a fixed port that can go down and come back.

    It sends ``banner`` (after ``delay`` seconds: a slow but UP service) and
    closes.
    """

    def __init__(self, port: int | None = None, banner: bytes = b"", delay: float = 0.0) -> None:
        self.port = port or free_port()
        self.banner = banner
        self.delay = delay
        self._server: asyncio.Server | None = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            if self.delay:
                await asyncio.sleep(self.delay)
            if self.banner:
                writer.write(self.banner)
                await writer.drain()
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def start(self) -> TcpTarget:
        """Listen (again) on the port."""
        self._server = await asyncio.start_server(
            self._handle, "127.0.0.1", self.port, reuse_address=True
        )
        return self

    async def stop(self) -> None:
        """Stop listening: connects are refused from now on."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None


#: The identities tests connect to NATS as, each with that role's permissions.
SCHEDULER = Identity("scheduler", "scheduler")
EVENTS = Identity("events", "events")
OPERATOR = Identity("operator", "operator")


async def nats_client(url: str, identity: Identity = OPERATOR) -> NATS:
    """A NATS client as ``identity`` (TLS with its certificate from the run's PKI).

    What it may publish and read is what that identity may in production:
    a test that plays the scheduler connects as ``SCHEDULER``.
    """
    return await natsconn.connect(
        url,
        f"test-{identity.stem}",
        transport=test_pki.material(identity),
        first_attempt_timeout=10.0,
    )


class EventCollector:
    """Collects every message on a NATS subject (JSON-decoded), as the operator.

    Audit events (one per write call the test makes) are kept apart in
    :attr:`audit`, so tests counting the events their scenario produces do not
    count their own API calls.
    """

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.subjects: list[str] = []
        self.audit: list[dict[str, Any]] = []
        self._nc: NATS | None = None

    async def start(self, url: str, subject: str = "vigil.events.>") -> EventCollector:
        self._nc = await nats_client(url, OPERATOR)

        async def on_msg(msg: Any) -> None:
            event = json.loads(msg.data)
            if isinstance(event, dict) and event.get("type") == "audit":
                self.audit.append(event)
                return
            self.subjects.append(msg.subject)
            self.events.append(event)

        await self._nc.subscribe(subject, cb=on_msg)
        await self._nc.flush()
        return self

    def find(self, **match: Any) -> list[dict[str, Any]]:
        """Events whose top-level fields equal ``match``."""
        return [e for e in self.events if all(e.get(k) == v for k, v in match.items())]

    async def stop(self) -> None:
        if self._nc is not None:
            await self._nc.close()


class Stack:
    """Scheduler, event service and minions running in this event loop."""

    def __init__(self, cfg: VigilConfig, nats_url: str) -> None:
        self.cfg = cfg
        self.nats_url = nats_url
        self.scheduler: Scheduler | None = None
        self.events: EventService | None = None
        self.minions: list[Minion] = []

    async def start(
        self, *, events: bool = True, minion_locations: tuple[str, ...] = ("Default",)
    ) -> Stack:
        if events:
            self.events = EventService(self.cfg, nats_url=self.nats_url)
            await self.events.start()
        await self.start_scheduler()
        for loc in minion_locations:
            await self.start_minion(loc)
        return self

    async def start_scheduler(self) -> Scheduler:
        self.scheduler = Scheduler(self.cfg, nats_url=self.nats_url)
        await self.scheduler.start()
        return self.scheduler

    async def start_minion(
        self, location: str = "Default", system_id: str | None = None, **settings: Any
    ) -> Minion:
        assert self.scheduler is not None
        sid = system_id or f"test-{location.lower()}-{len(self.minions)}"
        if not self.cfg.pki.plaintext_loopback_dev:
            test_pki.minion_cert(location, sid)  # as an operator would, before it starts
        m = Minion(
            MinionSettings(
                location=location,
                system_id=sid,
                scheduler=self.scheduler.grpc_address,
                **settings,
            ),
            nats_url=self.nats_url,
            pki=self.cfg.pki,
        )
        await m.start()
        self.minions.append(m)
        registry = self.scheduler.registry

        def usable() -> bool:
            session = registry.get(sid)
            return session is not None and session.open and session.nats_connected

        # Like a user, a test expects a started minion to be sent requests.
        await wait_for(usable, 10, what=f"minion {sid} in use by the scheduler")
        return m

    async def stop_minion(self, m: Minion) -> None:
        await m.stop()
        self.minions.remove(m)

    async def stop(self) -> None:
        for m in list(self.minions):
            await m.stop()
        self.minions.clear()
        if self.scheduler is not None:
            await self.scheduler.stop()
        if self.events is not None:
            await self.events.stop()
