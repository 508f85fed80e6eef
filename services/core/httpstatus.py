"""The small HTTP side of each service: Prometheus ``/metrics`` and ``/healthz``.

Also :class:`HealthState`, the one place a service records why it cannot do
its work (a store that refuses writes, a JetStream stream that is gone): both
``/healthz`` and the gRPC health service report from it, so the two never
disagree and each answer names the reasons.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from services.core.tasks import wait_set

log = logging.getLogger(__name__)


class HealthState:
    """Named problems a service has now; healthy when there are none.

    Parts of a service call :meth:`set` when they find a problem and
    :meth:`clear` when it is gone; :meth:`follow` mirrors the result onto the
    gRPC health service. Setting is synchronous (callable from anywhere in
    the loop) and cheap when nothing changes.
    """

    def __init__(self) -> None:
        self._problems: dict[str, str] = {}
        self._changed = asyncio.Event()

    def set(self, key: str, reason: str) -> None:
        """Record (or update) problem ``key`` with a reason an operator can act on."""
        if self._problems.get(key) != reason:
            if key not in self._problems:
                log.warning("unhealthy: %s", reason)
            self._problems[key] = reason
            self._changed.set()

    def clear(self, key: str) -> None:
        """Problem ``key`` is gone."""
        reason = self._problems.pop(key, None)
        if reason is not None:
            log.info("healthy again: no longer %s", reason)
            self._changed.set()

    def has(self, key: str) -> bool:
        """Whether problem ``key`` is present."""
        return key in self._problems

    @property
    def problems(self) -> list[str]:
        """The reasons, in the order they arose."""
        return list(self._problems.values())

    @property
    def healthy(self) -> bool:
        """No problem recorded."""
        return not self._problems

    async def follow(self, apply: Callable[[bool], Awaitable[None]], interval: float = 5.0) -> None:
        """Call ``apply(healthy)`` now and at each change, for ever (a task of its owner).

        The periodic re-apply (every ``interval`` seconds) is a safety net for a
        change that raced the previous call.
        """
        while True:
            self._changed.clear()
            await apply(self.healthy)
            await wait_set(self._changed, interval)


class StatusServer:
    """Serves metrics and a liveness answer; ``healthy`` and ``state`` decide the latter.

    ``/healthz`` answers 200 ``ok`` only when ``healthy()`` is true and ``state``
    (if given) has no problem; otherwise 503 with one reason per line.
    """

    def __init__(
        self,
        listen: str,
        healthy: Callable[[], bool] = lambda: True,
        state: HealthState | None = None,
    ) -> None:
        self.listen = listen
        self._healthy = healthy
        self._state = state
        self._runner: web.AppRunner | None = None
        self.port = 0

    async def start(self) -> int:
        """Bind and serve; returns the port."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        host, _, port = self.listen.rpartition(":")
        site = web.TCPSite(self._runner, host.strip("[]"), int(port))
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        self.port = sockets[0].getsockname()[1] if sockets else int(port)
        return self.port

    async def _metrics(self, _req: web.Request) -> web.Response:
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _req: web.Request) -> web.Response:
        reasons = [] if self._healthy() else ["a task of the service has failed"]
        if self._state is not None:
            reasons += self._state.problems
        if not reasons:
            return web.Response(text="ok\n")
        return web.Response(status=503, text="unhealthy\n" + "".join(f"{r}\n" for r in reasons))

    async def stop(self) -> None:
        """Stop serving."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
