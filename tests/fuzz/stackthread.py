"""A real nats-server and the in-process Stack, running in an event loop of their own thread.

Hypothesis drives synchronous tests, so the fuzz tests send their calls from
the test thread (sync gRPC, or coroutines submitted to this loop) while the
servers under test keep running in the background loop for the whole module.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine
from pathlib import Path
from typing import Any, TypeVar

from services.core.natsserver import NatsServer
from tests import pki as test_pki
from tests.helpers import Stack, TcpTarget, make_config

T = TypeVar("T")

#: The node every fuzz run keeps (its TCP service is polled before and after the barrage).
NODE_ID = "fuzz-n1"
SERVICE = "Echo"


class StackThread:
    """NATS, scheduler, event service and one minion in a background event loop."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self.loop.run_forever, name="fuzz-stack", daemon=True
        )
        self.nats: NatsServer | None = None
        self.stack: Stack | None = None
        self.target: TcpTarget | None = None
        self._unsubscribe: Any = None

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60.0) -> T:
        """Run ``coro`` in the stack's loop and wait (bounded) for its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def start(self) -> StackThread:
        """Start everything; raises if any part fails to start in time."""
        self._thread.start()
        self.nats = NatsServer(self.tmp / "nats", pki=test_pki.current()).start()
        self._unsubscribe = test_pki.on_change(self.nats.reload)
        self.run(self._start())
        return self

    async def _start(self) -> None:
        assert self.nats is not None
        self.target = await TcpTarget().start()
        node = {
            "id": NODE_ID,
            "interfaces": [
                {
                    "ip": "127.0.0.1",
                    "services": [
                        {"name": SERVICE, "monitor": "tcp", "params": {"port": self.target.port}}
                    ],
                }
            ],
        }
        cfg = make_config(
            self.tmp,
            self.nats.url,
            [node],
            defaults={"interval": "1h", "timeout": "1s", "retries": 0},
            # No rate limits per identity (docs/security.md, "Limits"): every fuzzed call
            # must reach its handler's checks, not stop at RESOURCE_EXHAUSTED after the burst.
            scheduler={"poll_now_rate": None},
            events={"publish_rate": None, "hook_write_rate": None},
        )
        self.stack = await Stack(cfg, self.nats.url).start()

    @property
    def scheduler_address(self) -> str:
        """The scheduler's gRPC address."""
        assert self.stack is not None and self.stack.scheduler is not None
        return self.stack.scheduler.grpc_address

    @property
    def events_address(self) -> str:
        """The event service's gRPC address."""
        assert self.stack is not None and self.stack.events is not None
        return self.stack.events.grpc_address

    def stop(self) -> None:
        """Stop everything that started (bounded waits)."""
        try:
            if self.stack is not None:
                self.run(self.stack.stop())
            if self.target is not None:
                self.run(self.target.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)
            if self._unsubscribe is not None:
                self._unsubscribe()
            if self.nats is not None:
                self.nats.stop()
