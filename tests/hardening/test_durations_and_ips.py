"""Hardening (issue 10): durations in range, addresses checked, URLs without passwords.

Defect 3: every duration is at most 366 days (a protobuf ``Duration`` always
carries it) and poll intervals and TTLs at least 100 ms; ``vigil check`` and
``PutNode`` refuse the rest naming the key, and ``ListServices`` answers for
every accepted value.
Defect 5: an address that is not one is INVALID_ARGUMENT naming the field.
Defect 13: a rejected URL is repeated with its password as ``***``.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.duration_pb2 import Duration
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import TypeAdapter
from vigil.v1 import common_pb2, inventory_pb2, inventory_pb2_grpc, poller_pb2, poller_pb2_grpc

from services.core.config import ConfigError, load_config
from services.core.durations import MAX_DURATION, MIN_POLL_INTERVAL, PollInterval
from services.core.natsserver import NatsServer
from services.core.timeutil import from_duration, to_duration
from tests.helpers import Stack, make_config
from tests.pki import operator_channel


def vigil(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the ``vigil`` CLI in a child process (bounded)."""
    return subprocess.run(
        [sys.executable, "-m", "services.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
    )


NODE = """
nodes:
  - id: web-1
    interfaces:
      - ip: 10.0.0.5
        services:
          - {{name: HTTP, monitor: tcp, params: {{port: 80}}, interval: {value}}}
"""


# --- defect 3: durations ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("999999999999999999w", "must be at most 366d"),
        ("600000w", "must be at most 366d"),
        ('"0.001s"', "must be at least 100ms"),
    ],
)
def test_vigil_check_refuses_an_interval_out_of_range_naming_the_key(
    tmp_path: Path, value: str, problem: str
) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(NODE.format(value=value))
    out = vigil("check", str(path))
    assert out.returncode == 2, out.stdout + out.stderr
    assert f"nodes[0].interfaces[0].services[0].interval: {problem}" in out.stderr


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("scheduler:\n  heartbeat_interval: 400d\n", "scheduler.heartbeat_interval"),
        ("scheduler:\n  status_flush_interval: 600000w\n", "scheduler.status_flush_interval"),
        ("scheduler:\n  results_retention: 367d\n", "scheduler.results_retention"),
        ("scheduler:\n  start_splay: 999999999999999999w\n", "scheduler.start_splay"),
        ("events:\n  hook_timeout: 400d\n", "events.hook_timeout"),
        ("events:\n  hook_max_age: 53w\n", "events.hook_max_age"),
        ("events:\n  stream_max_age: 400d\n", "events.stream_max_age"),
        ("minion:\n  drain_timeout: 400d\n", "minion.drain_timeout"),
        ("minion:\n  autonomous_after: 400d\n", "minion.autonomous_after"),
        ("defaults:\n  timeout: 400d\n", "defaults.timeout"),
        ("defaults:\n  ttl: 50ms\n", "defaults.ttl"),
        ("defaults:\n  interval: 10ms\n", "defaults.interval"),
        ("locations:\n  paris: {ttl: 400d}\n", "locations.paris.ttl"),
        ("packages:\n  - {name: p, retry_interval: 1ms}\n", "packages[0].retry_interval"),
        ("packages:\n  - {name: p, interval: 400d}\n", "packages[0].interval"),
        (
            "packages:\n  - {name: p, downtime: [{begin: 0s, interval: 1ms}]}\n",
            "packages[0].downtime[0].interval",
        ),
        (
            "packages:\n  - {name: p, downtime: [{begin: 0s, interval: 1m}, "
            "{begin: 400d, stop: true}]}\n",
            "packages[0].downtime[1].begin",
        ),
        (
            "packages:\n  - name: p\n    services: [{name: S, monitor: noop, ttl: 1ms}]\n",
            "packages[0].services[0].ttl",
        ),
    ],
)
def test_every_duration_has_a_range_and_the_message_names_the_key(
    tmp_path: Path, text: str, key: str
) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=re.escape(f"{key}: must")):
        load_config(path, env={})


def test_the_longest_and_shortest_accepted_values_still_load(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(
        "defaults: {interval: 366d, ttl: 100ms}\nscheduler: {results_retention: 366d}\n"
    )
    cfg = load_config(path, env={})
    assert cfg.defaults.interval == MAX_DURATION
    assert cfg.defaults.ttl == MIN_POLL_INTERVAL


@settings(max_examples=300, deadline=None)
@given(
    st.one_of(
        st.floats(min_value=MIN_POLL_INTERVAL, max_value=MAX_DURATION),
        st.integers(min_value=1, max_value=int(MAX_DURATION)),
        st.sampled_from(["366d", "52w2d", "100ms", "8784h", "527040m"]),
    )
)
def test_every_accepted_duration_converts_to_a_valid_protobuf_duration(value: object) -> None:
    seconds = TypeAdapter(PollInterval).validate_python(value)
    msg = poller_pb2.ServiceStatus(interval=to_duration(seconds))
    # What grpcurl does: the JSON mapping checks the protobuf Duration range.
    json_format.MessageToJson(msg)
    assert poller_pb2.ServiceStatus.FromString(msg.SerializeToString()) == msg
    assert abs(from_duration(msg.interval) - seconds) < 1e-6


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    node = {
        "id": "n1",
        "interfaces": [
            {
                "ip": "::1",
                "services": [
                    {"name": "Year", "monitor": "noop", "interval": "366d", "ttl": "1s"},
                    {"name": "Fast", "monitor": "noop", "interval": "100ms"},
                ],
            }
        ],
    }
    cfg = make_config(tmp_path, nats_server.url, [node])
    s = await Stack(cfg, nats_server.url).start(events=False)
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def channel(stack: Stack) -> AsyncIterator[grpc.aio.Channel]:
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        yield ch


async def test_list_services_answers_for_the_extreme_accepted_intervals(
    channel: grpc.aio.Channel,
) -> None:
    poller = poller_pb2_grpc.PollerStub(channel)
    resp = await poller.ListServices(poller_pb2.ListServicesRequest(), timeout=10)
    shown = {s.service.service: from_duration(s.interval) for s in resp.services}
    assert shown == {"Year": MAX_DURATION, "Fast": MIN_POLL_INTERVAL}
    json_format.MessageToJson(resp)


@pytest.mark.parametrize(
    ("field", "duration", "problem"),
    [
        ("interval", Duration(seconds=600000 * 604800), "must be at most 366d"),
        ("interval", Duration(seconds=2**62), "must be at most 366d"),
        ("interval", Duration(nanos=1_000_000), "must be at least 100ms"),
        ("ttl", Duration(nanos=1_000_000), "must be at least 100ms"),
        ("timeout", Duration(seconds=400 * 86400), "must be at most 366d"),
        ("timeout", Duration(seconds=-5), "must not be negative"),
    ],
)
async def test_put_node_refuses_a_duration_out_of_range_naming_the_field(
    channel: grpc.aio.Channel, field: str, duration: Duration, problem: str
) -> None:
    inventory = inventory_pb2_grpc.InventoryStub(channel)
    svc = inventory_pb2.MonitoredService(name="Noop", monitor="noop")
    getattr(svc, field).CopyFrom(duration)
    node = inventory_pb2.Node(
        id="api-1", interfaces=[inventory_pb2.Interface(ip="127.0.0.1", services=[svc])]
    )
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inventory.PutNode(inventory_pb2.PutNodeRequest(node=node), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert err.value.details() == f"node.interfaces[0].services[0].{field}: {problem}"
    poller = poller_pb2_grpc.PollerStub(channel)
    resp = await poller.ListServices(poller_pb2.ListServicesRequest(), timeout=10)
    assert {s.service.node_id for s in resp.services} == {"n1"}  # nothing half-written


# --- defect 5: addresses ---------------------------------------------------------------

BAD_IPS = ["not-an-ip", "999.1.1.1", "10.0.0.1/8", "::g", " 10.0.0.1"]


@pytest.mark.parametrize("ip", BAD_IPS)
async def test_an_invalid_ip_is_invalid_argument_naming_the_field(
    channel: grpc.aio.Channel, ip: str
) -> None:
    poller = poller_pb2_grpc.PollerStub(channel)
    ref = common_pb2.ServiceRef(node_id="n1", ip=ip, service="Year")
    calls: list[tuple[str, Any]] = [
        ("service.ip", poller.GetService(poller_pb2.GetServiceRequest(service=ref), timeout=10)),
        ("service.ip", poller.PollNow(poller_pb2.PollNowRequest(service=ref), timeout=10)),
        (
            "service.ip",
            poller.SetPaused(poller_pb2.SetPausedRequest(service=ref, paused=True), timeout=10),
        ),
        ("ip", poller.ListResults(poller_pb2.ListResultsRequest(ip=ip), timeout=10)),
    ]
    for field, call in calls:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await call
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT, field
        assert err.value.details() == f"{field}: {ip!r} is not an IP address"
    inventory = inventory_pb2_grpc.InventoryStub(channel)
    node = inventory_pb2.Node(id="api-1", interfaces=[inventory_pb2.Interface(ip=ip)])
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await inventory.PutNode(inventory_pb2.PutNodeRequest(node=node), timeout=10)
    assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert (err.value.details() or "").startswith(
        f"node.interfaces[0].ip: {ip!r} is not an IP address"
    )


async def test_a_valid_ip_in_another_spelling_finds_the_service(
    channel: grpc.aio.Channel,
) -> None:
    poller = poller_pb2_grpc.PollerStub(channel)
    ref = common_pb2.ServiceRef(node_id="n1", ip="0:0:0::1", service="Year")
    got = await poller.GetService(poller_pb2.GetServiceRequest(service=ref), timeout=10)
    assert got.service.ip == "::1"
    ok = await poller.ListResults(poller_pb2.ListResultsRequest(ip="0::1"), timeout=10)
    assert all(r.service.ip == "::1" for r in ok.results)
    missing = common_pb2.ServiceRef(node_id="n1", ip="10.9.9.9", service="Year")
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await poller.GetService(poller_pb2.GetServiceRequest(service=missing), timeout=10)
    assert err.value.code() is grpc.StatusCode.NOT_FOUND


# --- defect 13: credentials in URLs ----------------------------------------------------


def test_vigil_check_never_repeats_the_password_of_a_rejected_nats_url(tmp_path: Path) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text("{}\n")
    out = vigil("check", str(path), env={"VIGIL_NATS_URL": "http://user:password@x"})
    assert out.returncode == 2, out.stdout + out.stderr
    assert "password" not in out.stdout + out.stderr
    assert "nats.url: 'http://user:***@x' is not a NATS URL" in out.stderr


@pytest.mark.parametrize(
    ("env", "text", "shown"),
    [
        ({"VIGIL_NATS_URL": "http://user:s3cr3t@x"}, "", "nats.url: 'http://user:***@x'"),
        (
            {"VIGIL_NATS_URL": "nats://ok:1@a:4222,nats://tok3n:s3cr3t@b/x"},
            "",
            "'nats://tok3n:***@b/x'",
        ),
        ({"VIGIL_NATS_URL": "ftp://s3cr3t@x"}, "", "'ftp://***@x'"),
        (
            {"VIGIL_STORE_URL": "mysql://vigil:s3cr3t@db/vigil"},
            "",
            "scheduler.store_url: 'mysql://vigil:***@db/vigil'",
        ),
        (
            {},
            "events:\n  store_url: 'oracle://vigil:s3cr3t@db:1521/x'\n",
            "events.store_url: 'oracle://vigil:***@db:1521/x'",
        ),
        ({}, "nats:\n  url: 'http://u:pa/s3cr3t@h'\n", "nats.url: 'http://u:***@h'"),
        (
            {"VIGIL_SCHEDULER_ADDRESS": "admin:s3cr3t@sched:50051"},
            "",
            "minion.scheduler: 'admin:***@sched:50051': 'admin:***@sched' is not a host name",
        ),
    ],
)
def test_the_loader_masks_the_password_of_every_rejected_url(
    tmp_path: Path, env: dict[str, str], text: str, shown: str
) -> None:
    path = tmp_path / "vigil.yaml"
    path.write_text(text or "{}\n")
    with pytest.raises(ConfigError) as err:
        load_config(path, env=env)
    assert "s3cr3t" not in str(err.value)
    assert shown in str(err.value)
