"""Issue 10, defect 7: a minion never reports itself ready while its NATS connection cannot deliver.

nats-py 2.16 leaves the future of a flush that timed out in its list of
pings; the late PONG then raises InvalidStateError in ``_process_pong`` and
ends the client's read loop, while the client still says it is connected:
no request reaches the minion until missed pings are noticed (30-40 s). A
partition does exactly this (a drain or flush during the cut times out, the
PONG comes after the heal). Here a real nats-server is paused (SIGSTOP) for
the length of a flush timeout, which gives the same sequence.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import nats.errors
import pytest

from services.core.natsserver import NatsServer
from tests.helpers import Stack, make_config, wait_for
from tests.minions.util import tcp_node

#: After the server answers again, requests must reach the minion within this long.
RECOVERY_BOUND = 8.0


async def test_a_flush_that_timed_out_does_not_leave_the_minion_deaf(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    target = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = target.sockets[0].getsockname()[1]
    nodes = [tcp_node("n1", port, interval="500ms", ttl="1s")]
    stack = await Stack(make_config(tmp_path, nats_server.url, nodes), nats_server.url).start(
        events=False
    )
    try:
        (m,) = stack.minions
        nc = m._nc
        assert nc is not None and nats_server.proc is not None
        await wait_for(lambda: m.runner.stats.done >= 2, what="polls before")

        pid = nats_server.proc.pid
        for _ in range(3):
            os.kill(pid, signal.SIGSTOP)
            try:
                await nc.flush(timeout=1)
            except nats.errors.TimeoutError:
                break
            finally:
                os.kill(pid, signal.SIGCONT)
            # A PONG already on its way can answer our PING (nats-py pairs them in order).
        else:
            pytest.fail("no flush timed out while the server was paused")

        # Deaf and saying so, or hearing: never deaf while reporting NATS connected.
        reading = nc._reading_task
        lies: list[str] = []
        done = m.runner.stats.done
        loop = asyncio.get_running_loop()
        end = loop.time() + RECOVERY_BOUND
        while m.runner.stats.done < done + 2 and loop.time() < end:
            task = m._nc._reading_task if m._nc is not None else None
            if m._heartbeat().nats_connected and (task is None or task.done()):
                lies.append(f"at +{RECOVERY_BOUND - (end - loop.time()):.1f}s")
            await asyncio.sleep(0.05)
        assert m.runner.stats.done >= done + 2, (
            f"no request reached the minion within {RECOVERY_BOUND}s of the server answering "
            f"again (read loop {'ended' if reading is not None and reading.done() else 'alive'})"
        )
        assert not lies, f"reported nats_connected with a dead read loop {lies[:3]}"
    finally:
        await stack.stop()
        target.close()
