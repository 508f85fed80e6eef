"""Issue 11, "no code execution from the wire": the nagios path attack is refused
by the scheduler's API (INVALID_ARGUMENT) and by the minion itself when a forged
poll request reaches it (UNKNOWN, and a canary proves nothing ran).

Real parts: the in-process scheduler over mutual TLS, the minion's real
PollRunner and MonitorSet, real subprocesses from monitoring-plugins-basic.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import stat
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from vigil.v1 import common_pb2, inventory_pb2, inventory_pb2_grpc, poll_pb2

from minion.monitors.base import PollContext, Status, Target
from minion.monitors.nagios import NagiosMonitor, plugin_dirs, set_plugin_dirs
from minion.monitors.registry import MonitorSet, set_monitors_allow
from minion.runner import PollRunner
from services.core.natsserver import NatsServer
from services.core.params.nagios import NagiosParams
from services.core.status import status_from_pb
from services.core.timeutil import set_timestamp
from tests.helpers import Stack, make_config, wait_for
from tests.pki import operator_channel

PLUGINS = "/usr/lib/nagios/plugins"

pytestmark = pytest.mark.skipif(
    not os.access(f"{PLUGINS}/check_dummy", os.X_OK), reason="monitoring-plugins-basic missing"
)


def attacks(canary: Path) -> list[tuple[str, list[str]]]:
    """Plugin names that must never run, each told to create the canary."""
    touch = ["-c", f"touch {canary}"]
    return [
        ("/bin/sh", touch),
        ("../../bin/sh", touch),
        ("check_dummy/../../../bin/sh", touch),
        ("../../../../../../bin/sh", touch),
        ("/usr/lib/nagios/plugins/../../../../bin/sh", touch),
        ("check_dummy;sh", touch),
        (" check_dummy", touch),
    ]


@pytest.fixture(autouse=True)
def only_the_system_plugins() -> Iterator[None]:
    before = plugin_dirs()
    set_plugin_dirs([PLUGINS])
    yield
    set_plugin_dirs(before)
    set_monitors_allow(None)


# -- the scheduler refuses the name ------------------------------------------------


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    cfg = make_config(tmp_path, nats_server.url, [])
    s = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        yield s
    finally:
        await s.stop()


def nagios_node(node_id: str, plugin: str, args: list[str]) -> inventory_pb2.Node:
    n = inventory_pb2.Node(id=node_id, label="attack", location="Default")
    svc = n.interfaces.add(ip="127.0.0.1").services.add(
        name="Pwn", monitor="nagios", interval=Duration(seconds=1)
    )
    svc.params.update({"plugin": plugin, "args": args})
    return n


async def test_the_api_refuses_a_plugin_that_is_not_a_file_name(
    stack: Stack, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        inv = inventory_pb2_grpc.InventoryStub(ch)
        for i, (plugin, args) in enumerate(attacks(canary)):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await inv.PutNode(
                    inventory_pb2.PutNodeRequest(node=nagios_node(f"pwn-{i}", plugin, args))
                )
            assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, plugin
            details = err.value.details() or ""
            assert "params.plugin" in details and "plugin not allowed" in details, details
        listing = await inv.ListNodes(inventory_pb2.ListNodesRequest())
        assert not [n.id for n in listing.nodes if n.id.startswith("pwn-")]
        # a plain name is accepted (it is looked up on the minion, not here)
        ok = await inv.PutNode(
            inventory_pb2.PutNodeRequest(node=nagios_node("ok-1", "check_dummy", ["0", "fine"]))
        )
        assert ok.interfaces[0].services[0].resolved.monitor == "nagios"
    assert not canary.exists()


# -- the minion refuses a forged request on its own ---------------------------------


def request(monitor: str, params: dict[str, Any], ttl: float = 10.0) -> poll_pb2.PollRequest:
    req = poll_pb2.PollRequest(
        id=secrets.token_hex(16),
        service=common_pb2.ServiceRef(node_id="n1", ip="127.0.0.1", service="Pwn"),
        location="Default",
        monitor=monitor,
        timeout=Duration(seconds=3),
    )
    req.params.update(params)
    set_timestamp(req.expires_at, time.time() + ttl)
    set_timestamp(req.sent_at, time.time())
    return req


async def run_batch(batch: poll_pb2.PollBatch) -> dict[str, poll_pb2.PollResult]:
    """Hand a forged batch to the minion's real runner, as its NATS callback does."""
    monitors = MonitorSet()
    results: dict[str, poll_pb2.PollResult] = {}
    runner = PollRunner(monitors, "paris-1", lambda r, _exp: results.__setitem__(r.request_id, r))

    class Msg:
        subject = "vigil.poll.Default"
        data = batch.SerializeToString()

    try:
        await runner.on_message(Msg())
        await wait_for(
            lambda: len(results) == len(batch.requests) or None,
            timeout=15,
            what="a result per request",
        )
    finally:
        await monitors.close()
    return results


async def test_a_forged_batch_runs_nothing(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    # "sh" is a plain name (the scheduler cannot know what the minion has) but
    # not in the minion's plugin directories
    named = [*attacks(canary), ("sh", ["-c", f"touch {canary}"])]
    reqs = [request("nagios", {"plugin": p, "args": a}) for p, a in named]
    good = request("nagios", {"plugin": "check_dummy", "args": ["0", "still works"]})
    batch = poll_pb2.PollBatch(requests=[*reqs, good], scheduler_id="forged")
    results = await run_batch(batch)
    for req in reqs:
        res = results[req.id]
        assert status_from_pb(res.status) is Status.UNKNOWN, res.reason
        assert "plugin not allowed: " in res.reason, res.reason
    assert status_from_pb(results[good.id].status) is Status.UP
    assert results[good.id].reason == "OK: still works"
    await asyncio.sleep(0.2)  # anything started would have touched it by now
    assert not canary.exists()


async def test_the_monitor_checks_even_params_that_skipped_validation(tmp_path: Path) -> None:
    """Defence in depth: params built without the schema (model_construct) are
    checked again where the program would be started."""
    canary = tmp_path / "canary"
    mon = NagiosMonitor()
    loop = asyncio.get_running_loop()
    for plugin, args in attacks(canary):
        params = NagiosParams.model_construct(
            plugin=plugin, args=args, timeout=None, max_output_bytes=4096, env={}, credential=None
        )
        ctx = PollContext(deadline=loop.time() + 3, timeout=3)
        out = await mon.poll(Target("127.0.0.1"), params, ctx)
        assert out.status is Status.UNKNOWN
        assert out.reason.startswith("plugin not allowed: "), out.reason
    # an environment that would load other code is refused before anything runs
    params = NagiosParams.model_construct(
        plugin="check_dummy",
        args=["0"],
        timeout=None,
        max_output_bytes=4096,
        env={"LD_PRELOAD": str(tmp_path / "evil.so")},
        credential=None,
    )
    out = await mon.poll(Target("127.0.0.1"), params, PollContext(loop.time() + 3, 3))
    assert out.status is Status.UNKNOWN and "not allowed: LD_PRELOAD" in out.reason
    assert not canary.exists()


async def test_a_plugin_outside_the_directories_runs_only_once_configured(tmp_path: Path) -> None:
    """Only entries of the configured directories are reachable; another
    directory holding a shell is not, unless the minion's own settings add it."""
    mine = tmp_path / "plugins"
    mine.mkdir()
    shutil.copy(f"{PLUGINS}/check_dummy", mine / "check_mine")
    (mine / "check_mine").chmod(stat.S_IRWXU)
    canary = tmp_path / "canary"
    req = request("nagios", {"plugin": "check_mine", "args": ["0", "mine"]})
    res = (await run_batch(poll_pb2.PollBatch(requests=[req])))[req.id]
    assert "plugin not allowed: check_mine" in res.reason
    set_plugin_dirs([PLUGINS, str(mine)])
    res = (await run_batch(poll_pb2.PollBatch(requests=[req])))[req.id]
    assert status_from_pb(res.status) is Status.UP and res.reason == "OK: mine"
    assert not canary.exists()


async def test_the_plugin_gets_a_minimal_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("VIGIL_EVENTS_SECRET_KEY", "must-not-leak")
    monkeypatch.setenv("LD_LIBRARY_PATH", "/nowhere")
    mine = tmp_path / "plugins"
    mine.mkdir()
    script = mine / "check_env"
    script.write_text("#!/bin/sh\necho \"OK $(env | sort | tr '\\n' ' ')\"\n")
    script.chmod(stat.S_IRWXU)
    set_plugin_dirs([str(mine)])
    req = request("nagios", {"plugin": "check_env", "env": {"VIGIL_SITE": "paris"}})
    res = (await run_batch(poll_pb2.PollBatch(requests=[req])))[req.id]
    assert status_from_pb(res.status) is Status.UP, res.reason
    names = {kv.split("=", 1)[0] for kv in res.reason.removeprefix("OK ").split()}
    assert names <= {"PATH", "LANG", "LC_ALL", "VIGIL_SITE", "PWD", "SHLVL", "_"}, names
    assert "must-not-leak" not in res.reason


async def test_monitors_outside_the_allow_list_are_unknown(tmp_path: Path) -> None:
    canary = tmp_path / "canary"
    set_monitors_allow(["tcp", "noop"])
    nagios = request("nagios", {"plugin": "check_dummy", "args": ["0"]})
    invented = request("no-such-monitor", {"anything": 1})
    noop = request("noop", {})
    results = await run_batch(poll_pb2.PollBatch(requests=[nagios, invented, noop]))
    for req in (nagios, invented):
        res = results[req.id]
        assert status_from_pb(res.status) is Status.UNKNOWN
        assert res.reason == f"monitor not allowed on this minion: {req.monitor}"
    assert status_from_pb(results[noop.id].status) is Status.UP
    assert not canary.exists()
