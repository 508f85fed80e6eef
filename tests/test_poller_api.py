"""The operators' gRPC API: status codes, paging, reflection and health."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from vigil.v1 import common_pb2, poller_pb2, poller_pb2_grpc

from services.core.natsserver import NatsServer
from services.core.pki import Identity
from tests import pki as test_pki
from tests.helpers import Stack, make_config, wait_for
from tests.pki import operator_channel

GRPCURL = str(Path(sys.executable).parent / "grpcurl")


def nodes(count: int) -> list[dict[str, object]]:
    return [
        {
            "id": f"node-{i:02d}",
            "interfaces": [
                {
                    "ip": "127.0.0.1",
                    "services": [
                        {"name": "Noop", "monitor": "noop"},
                        {"name": "Noop2", "monitor": "noop"},
                    ],
                }
            ],
        }
        for i in range(count)
    ]


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    cfg = make_config(tmp_path, nats_server.url, nodes(7))
    s = await Stack(cfg, nats_server.url).start(events=False)
    try:
        yield s
    finally:
        await s.stop()


@pytest.fixture
async def poller(stack: Stack) -> AsyncIterator[poller_pb2_grpc.PollerStub]:
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        yield poller_pb2_grpc.PollerStub(ch)


async def test_list_services_pages_through_everything_once(
    poller: poller_pb2_grpc.PollerStub,
) -> None:
    seen: list[tuple[str, str]] = []
    token = ""
    pages = 0
    while True:
        resp = await poller.ListServices(
            poller_pb2.ListServicesRequest(page_size=3, page_token=token)
        )
        assert resp.total_size == 14
        seen += [(s.service.node_id, s.service.service) for s in resp.services]
        pages += 1
        token = resp.next_page_token
        if not token:
            break
    assert pages == 5
    assert len(seen) == 14 == len(set(seen))
    assert seen == sorted(seen)


async def test_list_services_reports_state_and_filters(
    stack: Stack, poller: poller_pb2_grpc.PollerStub
) -> None:
    async def all_up() -> bool:
        resp = await poller.ListServices(
            poller_pb2.ListServicesRequest(status=common_pb2.POLL_STATUS_UP)
        )
        return resp.total_size == 14

    await wait_for(all_up, what="every service UP")
    resp = await poller.ListServices(poller_pb2.ListServicesRequest(node_id="node-03"))
    assert resp.total_size == 2
    s = resp.services[0]
    assert s.status == common_pb2.POLL_STATUS_UP
    assert s.last_poll_status == common_pb2.POLL_STATUS_UP
    assert s.last_poll_at.seconds > 0
    assert s.monitor == "noop"
    assert s.location == "Default"
    assert s.interval.ToTimedelta().total_seconds() == 0.5


@pytest.mark.parametrize(
    ("call", "request_", "code", "field"),
    [
        ("GetService", poller_pb2.GetServiceRequest(), grpc.StatusCode.INVALID_ARGUMENT, "service"),
        (
            "GetService",
            poller_pb2.GetServiceRequest(
                service=common_pb2.ServiceRef(node_id="node-01", service="Noop")
            ),
            grpc.StatusCode.INVALID_ARGUMENT,
            "service.ip",
        ),
        (
            "GetService",
            poller_pb2.GetServiceRequest(
                service=common_pb2.ServiceRef(node_id="nope", ip="127.0.0.1", service="Noop")
            ),
            grpc.StatusCode.NOT_FOUND,
            "nope/127.0.0.1/Noop",
        ),
        (
            "ListServices",
            poller_pb2.ListServicesRequest(page_size=-1),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_size",
        ),
        (
            "ListServices",
            poller_pb2.ListServicesRequest(page_token="garbage!"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
        (
            "ListServices",
            poller_pb2.ListServicesRequest(status=42),
            grpc.StatusCode.INVALID_ARGUMENT,
            "status",
        ),
        (
            "ListOutages",
            poller_pb2.ListOutagesRequest(state=9),
            grpc.StatusCode.INVALID_ARGUMENT,
            "state",
        ),
        (
            "ListOutages",
            poller_pb2.ListOutagesRequest(page_token="eyJwIjoxfQ"),
            grpc.StatusCode.INVALID_ARGUMENT,
            "page_token",
        ),
    ],
)
async def test_bad_requests_get_proper_status(
    poller: poller_pb2_grpc.PollerStub,
    call: str,
    request_: object,
    code: grpc.StatusCode,
    field: str,
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await getattr(poller, call)(request_)
    assert err.value.code() == code
    assert field in (err.value.details() or "")


async def test_page_token_is_bound_to_its_filters(poller: poller_pb2_grpc.PollerStub) -> None:
    first = await poller.ListServices(
        poller_pb2.ListServicesRequest(page_size=1, node_id="node-01")
    )
    assert first.next_page_token
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await poller.ListServices(
            poller_pb2.ListServicesRequest(
                page_size=1, node_id="node-02", page_token=first.next_page_token
            )
        )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "other filters" in (err.value.details() or "")


async def test_list_minions_shows_the_connected_minion(poller: poller_pb2_grpc.PollerStub) -> None:
    resp = await poller.ListMinions(poller_pb2.ListMinionsRequest())
    assert resp.total_size == 1
    m = resp.minions[0]
    assert m.location == "Default"
    assert m.status == poller_pb2.MINION_STATUS_UP
    assert {"tcp", "http", "noop"} <= set(m.monitors)


async def test_health_reports_serving(stack: Stack) -> None:
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for name in ("", "vigil.v1.Poller", "vigil.v1.ResultSink"):
            resp = await stub.Check(health_pb2.HealthCheckRequest(service=name))
            assert resp.status == health_pb2.HealthCheckResponse.SERVING


def tls_args() -> list[str]:
    """grpcurl's flags for the operator's mutual TLS (as in the README)."""
    pki = test_pki.current()
    operator = Identity("operator", "operator")
    return [
        "-cacert", str(pki.ca_cert_path),
        "-cert", str(pki.cert_path(operator)),
        "-key", str(pki.key_path(operator)),
    ]  # fmt: skip


async def grpcurl(*args: str) -> tuple[int, str, str]:
    """Run grpcurl (as the operator) without blocking the loop that serves the call."""
    proc = await asyncio.create_subprocess_exec(
        GRPCURL, *tls_args(), *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    return proc.returncode or 0, out.decode(), err.decode()


async def test_grpcurl_lists_services_and_calls_with_json(stack: Stack) -> None:
    """What an operator does with no .proto files at hand: reflection."""
    assert stack.scheduler is not None
    addr = stack.scheduler.grpc_address
    code, out, err = await grpcurl(addr, "list")
    assert code == 0, err
    assert {"vigil.v1.Poller", "vigil.v1.ResultSink", "grpc.health.v1.Health"} <= set(out.split())
    code, out, err = await grpcurl(
        "-d",
        '{"pageSize": 2, "nodeId": "node-04"}',
        addr,
        "vigil.v1.Poller/ListServices",
    )
    assert code == 0, err
    assert json.loads(out)["total_size"] == 2
    code, out, err = await grpcurl(
        "-d", '{"service": {"node_id": "x"}}', addr, "vigil.v1.Poller/GetService"
    )
    assert code != 0
    assert "InvalidArgument" in err
    assert "service.ip: is required" in err
