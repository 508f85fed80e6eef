"""Property tests of every gRPC request of every service against a running stack.

Each request message is generated from its protobuf descriptor (random
values, missing fields, oversized strings, odd unicode, extreme numbers,
unknown enum numbers) and sent over the operator's mutual-TLS channel (a
minion's certificate for ResultSink/Connect). Every answer must be OK or a
status the API documents, never UNKNOWN or INTERNAL (an unhandled exception
in a servicer), and afterwards the server still answers health and a real
poll.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Iterator
from typing import Any

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import assume, given
from vigil.v1 import (
    access_pb2,
    access_pb2_grpc,
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    inventory_pb2,
    inventory_pb2_grpc,
    poller_pb2,
    poller_pb2_grpc,
    sink_pb2,
    sink_pb2_grpc,
)

from tests import pki as test_pki
from tests.fuzz.stackthread import NODE_ID, SERVICE, StackThread
from tests.fuzz.strategies import messages

#: What a well-behaved server may answer to a bad (or good) request.
ACCEPTED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.PERMISSION_DENIED,
    grpc.StatusCode.UNAUTHENTICATED,
}
#: Streams (and PollNow, which waits for a minion's answer) may also run out of the client's time.
ACCEPTED_WAITING = ACCEPTED | {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}

REF = common_pb2.ServiceRef(node_id=NODE_ID, ip="127.0.0.1", service=SERVICE)

SERVICES: list[tuple[Any, str, Any]] = [
    (poller_pb2, "Poller", poller_pb2_grpc.PollerStub),
    (inventory_pb2, "Inventory", inventory_pb2_grpc.InventoryStub),
    (events_pb2, "Events", events_pb2_grpc.EventsStub),
    (access_pb2, "Access", access_pb2_grpc.AccessStub),
]
METHODS = [
    pytest.param(module, service, stub, method, id=f"{service}.{method.name}")
    for module, service, stub in SERVICES
    for method in module.DESCRIPTOR.services_by_name[service].methods
]


def _touches_fuzz_node(method: str, msg: Message) -> bool:
    """Whether ``msg`` would replace or delete the node the run polls before and after."""
    if method == "PutNode":
        return msg.node.id == NODE_ID  # type: ignore[attr-defined,no-any-return]
    if method == "DeleteNode":
        return msg.id == NODE_ID  # type: ignore[attr-defined,no-any-return]
    return False


def _code(call: Any) -> grpc.StatusCode:
    try:
        call()
    except grpc.RpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def _unary(rpc: Any, msg: Message) -> Any:
    return lambda: rpc(msg, timeout=10)


def _server_stream(rpc: Any, msg: Message) -> Any:
    def call() -> None:
        stream = rpc(msg, timeout=0.5)
        try:
            for _ in itertools.islice(stream, 1):
                pass
        finally:
            stream.cancel()

    return call


def assert_alive(fuzz: StackThread) -> None:
    """Both servers answer health, a real poll comes back UP and the history answers."""
    for address in (fuzz.scheduler_address, fuzz.events_address):
        with grpc.secure_channel(address, test_pki.operator_credentials()) as ch:
            reply = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(), timeout=10
            )
            assert reply.status == health_pb2.HealthCheckResponse.SERVING, address
    with grpc.secure_channel(fuzz.scheduler_address, test_pki.operator_credentials()) as ch:
        poller = poller_pb2_grpc.PollerStub(ch)
        # The run may have paused it (SetPaused is fuzzed too): resume it first.
        poller.SetPaused(poller_pb2.SetPausedRequest(service=REF, paused=False), timeout=10)
        polled = poller.PollNow(poller_pb2.PollNowRequest(service=REF), timeout=15)
        assert polled.service.last_poll_status == common_pb2.POLL_STATUS_UP, polled
    with grpc.secure_channel(fuzz.events_address, test_pki.operator_credentials()) as ch:
        events_pb2_grpc.EventsStub(ch).ListEvents(
            events_pb2.ListEventsRequest(page_size=1), timeout=10
        )


@pytest.mark.parametrize(("module", "service", "stub_class", "method"), METHODS)
def test_operator_requests(
    fuzz_stack: StackThread,
    module: Any,
    service: str,
    stub_class: Any,
    method: MethodDescriptor,
) -> None:
    address = fuzz_stack.events_address if service == "Events" else fuzz_stack.scheduler_address
    seen: dict[grpc.StatusCode, int] = {}
    with grpc.secure_channel(
        address,
        test_pki.operator_credentials(),
        options=[("grpc.max_send_message_length", 16 * 1024 * 1024)],
    ) as ch:
        rpc = getattr(stub_class(ch), method.name)
        accepted = (
            ACCEPTED_WAITING if method.server_streaming or method.name == "PollNow" else ACCEPTED
        )

        @given(messages(method.input_type))
        def run(msg: Message) -> None:
            assume(not _touches_fuzz_node(method.name, msg))
            call = _server_stream(rpc, msg) if method.server_streaming else _unary(rpc, msg)
            code = _code(call)
            seen[code] = seen.get(code, 0) + 1
            assert code in accepted, f"{service}.{method.name} answered {code} to {msg!r:.2000}"

        run()
    assert_alive(fuzz_stack)


def test_result_sink_connect(fuzz_stack: StackThread) -> None:
    """A minion (its own certificate) sending generated session messages gets proper statuses."""
    identity = test_pki.minion_cert("Default", "fuzz-sink")
    credentials = test_pki.material(identity).channel_credentials()
    with grpc.secure_channel(fuzz_stack.scheduler_address, credentials) as ch:
        connect = sink_pb2_grpc.ResultSinkStub(ch).Connect
        from hypothesis import strategies as st

        @given(st.lists(messages(sink_pb2.MinionMessage.DESCRIPTOR), min_size=1, max_size=4))
        def run(batch: list[sink_pb2.MinionMessage]) -> None:
            def call() -> None:
                replies: Iterator[Any] = connect(iter(batch), timeout=2)
                for _ in itertools.islice(replies, 10):
                    pass

            code = _code(call)
            assert code in ACCEPTED_WAITING, f"Connect answered {code} to {batch!r:.2000}"

        run()
    assert_alive(fuzz_stack)


def _assert_invalid_argument(calls: list[tuple[str, Any]]) -> None:
    """Each call fails with INVALID_ARGUMENT whose message names its field."""
    for field, call in calls:
        with pytest.raises(grpc.RpcError) as err:
            call()
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (field, err.value)
        assert field in (err.value.details() or ""), err.value.details()


def test_out_of_range_timestamps_are_invalid_argument(fuzz_stack: StackThread) -> None:
    """Found by this fuzzing: a Timestamp outside years 1…9999 was UNKNOWN (a datetime ValueError)."""
    far = Timestamp(seconds=2**40)
    with grpc.secure_channel(fuzz_stack.scheduler_address, test_pki.operator_credentials()) as ch:
        poller = poller_pb2_grpc.PollerStub(ch)
        inventory = inventory_pb2_grpc.InventoryStub(ch)
        calls: list[tuple[str, Any]] = [
            (
                "until",
                lambda: poller.ListResults(poller_pb2.ListResultsRequest(until=far), timeout=10),
            ),
            (
                "node.maintenance.start",
                lambda: inventory.PutNode(
                    inventory_pb2.PutNodeRequest(
                        node=inventory_pb2.Node(
                            id="fuzz-ts",
                            maintenance=[inventory_pb2.MaintenanceWindow(start=far, end=far)],
                        )
                    ),
                    timeout=10,
                ),
            ),
        ]
        _assert_invalid_argument(calls)
    with grpc.secure_channel(fuzz_stack.events_address, test_pki.operator_credentials()) as ch:
        events = events_pb2_grpc.EventsStub(ch)
        calls = [
            (
                "since",
                lambda: events.ListEvents(events_pb2.ListEventsRequest(since=far), timeout=10),
            ),
            (
                "created_at",
                lambda: events.Publish(
                    events_pb2.PublishRequest(
                        event=events_pb2.Event(
                            id=str(uuid.uuid4()), type="node", action="up", created_at=far
                        )
                    ),
                    timeout=10,
                ),
            ),
        ]
        _assert_invalid_argument(calls)
