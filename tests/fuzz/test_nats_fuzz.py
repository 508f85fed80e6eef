"""Raw NATS payloads thrown at the minion and the event service, as the scheduler identity.

The scheduler may publish on ``vigil.poll.<location>`` (the minion's intake)
and ``vigil.ingest.scheduler`` (the event service's raw events), so that is
who sends the barrage: random bytes, truncated protobuf or JSON, and valid
messages with missing or extreme fields. Every payload must be accounted for
by a counter (malformed, received, rejected, processed, duplicate), and after
the barrage a real poll still comes back UP and a real event is still
published.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from hypothesis import assume, given
from hypothesis import strategies as st
from nats.aio.client import Client as NATS
from vigil.v1 import common_pb2, poll_pb2, poller_pb2, poller_pb2_grpc

from services.core.events import CATALOGUE, SEVERITIES
from services.core.timeutil import TIMESTAMP_MAX_SECONDS, TIMESTAMP_MIN_SECONDS
from services.core.wire import poll_subject
from tests import pki as test_pki
from tests.events.util import publish_raw, raw_event
from tests.fuzz.stackthread import NODE_ID, SERVICE, StackThread
from tests.fuzz.strategies import TEXT, messages
from tests.helpers import SCHEDULER, EventCollector, nats_client, wait_for

REF = common_pb2.ServiceRef(node_id=NODE_ID, ip="127.0.0.1", service=SERVICE)

#: ``expires_at`` values: missing, past, a second or two ahead, and the extremes.
_EXPIRY = st.sampled_from(["unset", "zero", "min", "max", "past", "soon", "huge"])


def _expiry(kind: str) -> float | None:
    now = time.time()
    return {
        "unset": None,
        "zero": 0.0,
        "min": float(TIMESTAMP_MIN_SECONDS),
        "max": float(TIMESTAMP_MAX_SECONDS),
        "past": now - 5,
        "soon": now + 1.5,
        "huge": float(2**62),
    }[kind]


@st.composite
def poll_batches(draw: st.DrawFn) -> bytes:
    """A PollBatch with generated requests, serialised."""
    batch = draw(messages(poll_pb2.PollBatch.DESCRIPTOR))
    assert isinstance(batch, poll_pb2.PollBatch)
    for req in batch.requests:
        when = _expiry(draw(_EXPIRY))
        req.ClearField("expires_at")
        if when is not None:
            req.expires_at.seconds = int(when)
        if when is not None and when > time.time() + 2:
            # A request that may run for ages would only fill the minion (the
            # scheduler, which sets TTLs, is trusted): far-future ones name no monitor.
            req.monitor = "fuzz-no-such-monitor"
    return batch.SerializeToString()


@st.composite
def truncated(draw: st.DrawFn, whole: st.SearchStrategy[bytes]) -> bytes:
    """A prefix of a valid payload (a message cut in transit)."""
    data = draw(whole)
    return data[: draw(st.integers(0, max(len(data) - 1, 0)))]


poll_payloads = st.one_of(
    st.binary(max_size=512),
    truncated(poll_batches()),
    poll_batches(),
)


def _expected_minion_counts(payload: bytes) -> tuple[int, int]:
    """(malformed messages, requests received) the minion must count for ``payload``."""
    try:
        batch = poll_pb2.PollBatch.FromString(payload)
    except DecodeError:
        return 1, 0
    if not batch.requests:
        return 1, 0  # a batch of nothing is not a poll message either
    return 0, len(batch.requests)


def _poll_real(fuzz: StackThread) -> None:
    with grpc.secure_channel(fuzz.scheduler_address, test_pki.operator_credentials()) as ch:
        polled = poller_pb2_grpc.PollerStub(ch).PollNow(
            poller_pb2.PollNowRequest(service=REF), timeout=15
        )
        assert polled.service.last_poll_status == common_pb2.POLL_STATUS_UP, polled


def test_minion_poll_payloads(fuzz_stack: StackThread) -> None:
    assert fuzz_stack.stack is not None and fuzz_stack.nats is not None
    minion = fuzz_stack.stack.minions[0]
    stats = minion.runner.stats
    nc: NATS = fuzz_stack.run(nats_client(fuzz_stack.nats.url, SCHEDULER))
    subject = poll_subject("Default")
    malformed0, received0 = stats.malformed, stats.received
    expected = {"malformed": 0, "received": 0}

    @given(poll_payloads)
    def run(payload: bytes) -> None:
        # The client itself refuses what exceeds the server's max_payload: nothing to learn.
        assume(len(payload) < nc.max_payload)
        fuzz_stack.run(nc.publish(subject, payload))
        bad, received = _expected_minion_counts(payload)
        expected["malformed"] += bad
        expected["received"] += received

    try:
        run()
        fuzz_stack.run(nc.flush(timeout=10))

        def counted() -> bool:
            return stats.malformed - malformed0 >= expected["malformed"] and (
                stats.received - received0 >= expected["received"]
            )

        fuzz_stack.run(wait_for(counted, 20, what=f"the minion to count {expected}"))
        # Requests without id or expires_at count as malformed too: at least the messages.
        assert stats.malformed - malformed0 >= expected["malformed"]
    finally:
        fuzz_stack.run(nc.close())
    _poll_real(fuzz_stack)


_TYPES = sorted({t for t, _ in CATALOGUE})
_ACTIONS = sorted({a for _, a in CATALOGUE})
_JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False),
    TEXT,
)
_JSON = st.recursive(
    _JSON_SCALARS,
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=20,
)


@st.composite
def raw_events(draw: st.DrawFn) -> bytes:
    """A raw event of the catalogue with fields missing, replaced or extreme."""
    event: dict[str, Any] = raw_event(
        draw(st.sampled_from(_TYPES)), draw(st.sampled_from(_ACTIONS)), node="fuzz-node"
    )
    for key in list(event):
        if draw(st.integers(0, 4)) == 0:
            del event[key]
    extra = {
        "id": st.one_of(TEXT, st.uuids().map(str)),
        "severity": st.one_of(st.sampled_from(sorted(SEVERITIES)), TEXT),
        "createdAt": st.one_of(
            TEXT, st.sampled_from(["1970-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "0001-01-01"])
        ),
        "nodeId": TEXT,
        "location": TEXT,
        "typeId": TEXT,
        "version": st.one_of(TEXT, st.integers()),
        "data": _JSON,
        "source": TEXT,
    }
    for key, values in extra.items():
        if draw(st.integers(0, 3)) == 0:
            event[key] = draw(values)
    return json.dumps(event).encode()


ingest_payloads = st.one_of(
    st.binary(max_size=512),
    truncated(raw_events()),
    raw_events(),
    _JSON.map(lambda v: json.dumps(v).encode()),
    st.just(b"[" * 100_000),  # deep nesting
)


def test_event_ingest_payloads(fuzz_stack: StackThread) -> None:
    assert fuzz_stack.stack is not None and fuzz_stack.nats is not None
    events = fuzz_stack.stack.events
    assert events is not None and events.ingestor is not None
    ingestor = events.ingestor
    nc: NATS = fuzz_stack.run(nats_client(fuzz_stack.nats.url, SCHEDULER))
    js = nc.jetstream()
    collector: EventCollector = fuzz_stack.run(EventCollector().start(fuzz_stack.nats.url))

    def accounted() -> int:
        return ingestor.processed + ingestor.rejected + ingestor.duplicates

    before = accounted()
    sent = [0]

    @given(ingest_payloads)
    def run(payload: bytes) -> None:
        assume(len(payload) < nc.max_payload)
        fuzz_stack.run(publish_raw(js, payload))
        sent[0] += 1

    try:
        run()
        fuzz_stack.run(
            wait_for(
                lambda: accounted() - before >= sent[0],
                30,
                what=f"the event service to account for {sent[0]} raw event(s)",
            )
        )
        # A real event still flows: ingested, normalized and published on vigil.events.>.
        real = raw_event("service", "lost", node="fuzz-real")
        fuzz_stack.run(publish_raw(js, real))
        fuzz_stack.run(
            wait_for(lambda: collector.find(id=real["id"]), 20, what="the real event published")
        )
    finally:
        fuzz_stack.run(collector.stop())
        fuzz_stack.run(nc.close())
    _poll_real(fuzz_stack)
    assert uuid.UUID(real["id"])
