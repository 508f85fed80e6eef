"""Issue 11, secrets: no API response or log line shows a service's secrets,
and hook secrets are encrypted at rest (while deliveries stay signed).

Real parts: the in-process scheduler and event service over mutual TLS, a real
NATS server, SQLite stores read back raw, a real HTTP receiver.
"""

from __future__ import annotations

import base64
import logging
import os
import sqlite3
import stat
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import pytest
import sqlalchemy as sa
from google.protobuf.duration_pb2 import Duration
from google.protobuf.json_format import MessageToDict
from vigil.v1 import (
    common_pb2,
    events_pb2,
    inventory_pb2,
    inventory_pb2_grpc,
    poller_pb2,
    poller_pb2_grpc,
)

from services.core.natsserver import NatsServer
from services.core.params.secrets import MASK, mask_params
from services.events.app import EventService
from services.events.hooks.signing import verify
from services.events.store import EventStore
from services.events.store.hooks import SEALED, HookRow, SecretBox, SecretKeyError, hooks
from tests.events.util import (
    Receiver,
    events_config,
    events_stub,
    jetstream,
    publish_raw,
    raw_event,
)
from tests.helpers import Stack, make_config, wait_for
from tests.pki import operator_channel

HTTP_PASSWORD = "http-pa55-Zq81"
BEARER = "bearer-T0k3n-77"
API_KEY = "api-k3y-xyzzy"
COMMUNITY = "c0mmunity-Kx42"
AUTH_KEY = "auth-key-Aq9w2e"
PRIV_KEY = "priv-key-Pl0kmn"
SECRETS = [HTTP_PASSWORD, BEARER, API_KEY, COMMUNITY, AUTH_KEY, PRIV_KEY]


def secret_node() -> inventory_pb2.Node:
    n = inventory_pb2.Node(id="vault", label="has secrets", location="Default")
    itf = n.interfaces.add(ip="127.0.0.1")
    services: list[tuple[str, str, dict[str, Any]]] = [
        ("Web", "http", {"port": 9, "username": "ops", "password": HTTP_PASSWORD}),
        ("Api", "http", {"port": 9, "bearer_token": BEARER, "secret_headers": {"X-Key": API_KEY}}),
        ("Snmp2", "snmp", {"port": 9, "community": COMMUNITY}),
        (
            "Snmp3",
            "snmp",
            {
                "port": 9,
                "version": "v3",
                "user": "ops",
                "auth_key": AUTH_KEY,
                "priv_key": PRIV_KEY,
            },
        ),
        ("Ref", "http", {"port": 9, "credential": "paris-web"}),
    ]
    for name, monitor, params in services:
        svc = itf.services.add(name=name, monitor=monitor, interval=Duration(seconds=60))
        svc.params.update(params)
    return n


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    cfg = make_config(tmp_path, nats_server.url, [])
    s = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        yield s
    finally:
        await s.stop()


def assert_clean(what: str, blob: bytes | str) -> None:
    data = blob.encode() if isinstance(blob, str) else blob
    for s in SECRETS:
        assert s.encode() not in data, f"{what} shows {s}"


async def test_no_response_or_log_line_shows_a_secret(
    stack: Stack, caplog: pytest.LogCaptureFixture
) -> None:
    # Vigil's own loggers at DEBUG, libraries at INFO (aiosqlite's DEBUG lines
    # echo SQL parameters: the stored configuration, which holds inline secrets)
    caplog.set_level(logging.INFO)
    caplog.set_level(logging.DEBUG, logger="services")
    caplog.set_level(logging.DEBUG, logger="minion")
    assert stack.scheduler is not None
    async with operator_channel(stack.scheduler.grpc_address) as ch:
        inv = inventory_pb2_grpc.InventoryStub(ch)
        poller = poller_pb2_grpc.PollerStub(ch)
        put = await inv.PutNode(inventory_pb2.PutNodeRequest(node=secret_node()))
        assert_clean("PutNode", put.SerializeToString())
        got = await inv.GetNode(inventory_pb2.GetNodeRequest(id="vault"))
        assert_clean("GetNode", got.SerializeToString())
        listed = await inv.ListNodes(inventory_pb2.ListNodesRequest())
        assert_clean("ListNodes", listed.SerializeToString())
        services = await poller.ListServices(poller_pb2.ListServicesRequest())
        assert_clean("ListServices", services.SerializeToString())
        for name in ("Web", "Api", "Snmp2", "Snmp3", "Ref"):
            one = await poller.GetService(
                poller_pb2.GetServiceRequest(
                    service=common_pb2.ServiceRef(node_id="vault", ip="127.0.0.1", service=name)
                )
            )
            assert_clean("GetService", one.SerializeToString())

        # the secrets are there, masked, in params and in resolved
        by_name = {s.name: s for s in got.interfaces[0].services}
        web = MessageToDict(by_name["Web"].params)
        assert web == {"port": 9.0, "username": "ops", "password": MASK}
        assert MessageToDict(by_name["Web"].resolved.params)["password"] == MASK
        api = MessageToDict(by_name["Api"].resolved.params)
        assert api["bearer_token"] == MASK and api["secret_headers"] == {"X-Key": MASK}
        snmp3 = MessageToDict(by_name["Snmp3"].params)
        assert (snmp3["auth_key"], snmp3["priv_key"], snmp3["user"]) == (MASK, MASK, "ops")
        assert MessageToDict(by_name["Snmp2"].resolved.params)["community"] == MASK
        assert MessageToDict(by_name["Ref"].params)["credential"] == "paris-web"

        # read-modify-write: the masked values sent back keep the stored secrets
        got.label = "relabelled"
        again = await inv.PutNode(inventory_pb2.PutNodeRequest(node=got))
        assert_clean("PutNode", again.SerializeToString())
        entry = stack.scheduler.inventory.get("vault")
        assert entry is not None and entry.node.label == "relabelled"
        kept = {s.name: s.params for s in entry.node.interfaces[0].services}
        assert kept["Web"]["password"] == HTTP_PASSWORD
        assert kept["Api"]["secret_headers"] == {"X-Key": API_KEY}
        assert (kept["Snmp3"]["auth_key"], kept["Snmp3"]["priv_key"]) == (AUTH_KEY, PRIV_KEY)
        # ...but "***" where nothing is stored is refused, not stored as the secret
        fresh = inventory_pb2.Node(id="fresh", label="x", location="Default")
        svc0 = fresh.interfaces.add(ip="127.0.0.1").services.add(name="Web", monitor="http")
        svc0.params.update({"username": "ops", "password": MASK})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inv.PutNode(inventory_pb2.PutNodeRequest(node=fresh))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "params.password" in (err.value.details() or "")

        # errors name the field, never the value
        bad = secret_node()
        bad.id = "bad"
        svc = bad.interfaces[0].services[3]
        svc.params.update({"auth_key": "short"})  # under 8 characters
        bad.interfaces[0].services[2].params.update({"community": COMMUNITY * 20})
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await inv.PutNode(inventory_pb2.PutNodeRequest(node=bad))
        assert err.value.code() is grpc.StatusCode.INVALID_ARGUMENT
        assert "auth_key" in (err.value.details() or "")
        assert_clean("an error", err.value.details() or "")
        assert "short" not in (err.value.details() or "").replace("shorter", "")
    assert_clean("the logs", caplog.text)


def test_the_schema_alone_says_what_is_secret() -> None:
    """Masking follows SecretStr fields (nested, in dicts), not a list of key names."""
    shown = mask_params(
        "http",
        {"password": "p", "username": "u", "secret_headers": {"A": "1"}, "headers": {"B": "2"}},
    )
    assert shown == {
        "password": MASK,
        "username": "u",
        "secret_headers": {"A": MASK},
        "headers": {"B": "2"},
    }
    # a key the schema does not know may be a misspelt secret: masked
    assert mask_params("snmp", {"comunity": "x", "oid": "1.3.6"}) == {
        "comunity": MASK,
        "oid": "1.3.6",
    }
    assert mask_params("no-such-monitor", {"a": "b", "c": [1]}) == {"a": MASK, "c": [MASK]}


# -- hook secrets at rest -------------------------------------------------------------

HOOK_SECRET = "hook-s3cret-correct-horse"


def raw_secrets(db: Path) -> list[tuple[str, str]]:
    with sqlite3.connect(db) as conn:
        return list(conn.execute("SELECT id, secret FROM hooks"))


async def test_hook_secrets_are_encrypted_at_rest_and_deliveries_signed(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    key_file = tmp_path / "keys" / "events.key"
    cfg = events_config(tmp_path, nats_server.url, secret_key_file=str(key_file))
    svc = EventService(cfg, nats_url=nats_server.url)
    receiver = await Receiver().start()
    await svc.start()
    try:
        async with events_stub(svc.grpc_address) as stub:
            hook = await stub.CreateHook(  # type: ignore[misc]  # the aio stub is typed sync
                events_pb2.CreateHookRequest(name="ops", url=receiver.url, secret=HOOK_SECRET)
            )
            rows = raw_secrets(tmp_path / "events.db")
            assert [r[0] for r in rows] == [hook.id]
            assert rows[0][1].startswith(SEALED)
            assert HOOK_SECRET not in rows[0][1]
            db_bytes = (tmp_path / "events.db").read_bytes()
            wal = tmp_path / "events.db-wal"
            if wal.exists():
                db_bytes += wal.read_bytes()
            assert HOOK_SECRET.encode() not in db_bytes
            async with jetstream(svc.nats_url) as js:
                await publish_raw(js, raw_event("node", "down", "n1"))
            await wait_for(lambda: receiver.requests, what="a delivery")
            headers, body = receiver.requests[0]
            assert verify(HOOK_SECRET, body, headers["X-Vigil-Signature"])
    finally:
        await svc.stop()
        await receiver.stop()
    # the key file was created, owner-only
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert len(base64.b64decode(key_file.read_text())) == 32


async def test_plaintext_rows_are_sealed_at_start_and_nothing_is_lost(tmp_path: Path) -> None:
    db = tmp_path / "events.db"
    store = EventStore(f"sqlite:///{db}")
    await store.open()
    try:
        # as an earlier version wrote it: the secret in clear
        async with store.engine.begin() as conn:
            await conn.execute(
                sa.insert(hooks).values(
                    id="h1",
                    name="legacy",
                    url="http://127.0.0.1:9/x",
                    secret=HOOK_SECRET,
                    filters="[]",
                    created_at=sa.func.current_timestamp(),
                    delivered=0,
                    ack_floor=0,
                )
            )
        assert raw_secrets(db) == [("h1", HOOK_SECRET)]
        key_file = tmp_path / "k"
        assert await store.open_secrets(str(key_file)) == 1
        [(hook_id, stored)] = raw_secrets(db)
        assert hook_id == "h1" and stored.startswith(SEALED) and HOOK_SECRET not in stored
        row = await store.get_hook("h1")
        assert row is not None and row.secret == HOOK_SECRET
        assert HOOK_SECRET not in repr(row)
        assert await store.open_secrets(str(key_file)) == 0  # idempotent
        # another key cannot open them: a clear error at start, not bad signatures later
        other = tmp_path / "other"
        with pytest.raises(SecretKeyError, match="does not open with this key"):
            await store.open_secrets(str(other))
    finally:
        await store.close()


async def test_the_key_can_come_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = base64.b64encode(os.urandom(32)).decode()
    monkeypatch.setenv("VIGIL_EVENTS_SECRET_KEY", key)
    store = EventStore(f"sqlite:///{tmp_path}/events.db")
    await store.open()
    try:
        await store.open_secrets(str(tmp_path / "unused.key"))
        assert not (tmp_path / "unused.key").exists()
        await store.add_hook(
            HookRow(
                id="h2", name="env", url="http://x", secret=HOOK_SECRET, filters=[], created_at=1
            )
        )
        [(_, stored)] = raw_secrets(tmp_path / "events.db")
        assert SecretBox(base64.b64decode(key)).open(stored, "h2") == HOOK_SECRET
        # bound to its row: moved to another hook id it does not open
        with pytest.raises(SecretKeyError):
            SecretBox(base64.b64decode(key)).open(stored, "h3")
    finally:
        await store.close()
    monkeypatch.setenv("VIGIL_EVENTS_SECRET_KEY", "not base64!")
    with pytest.raises(SecretKeyError, match="VIGIL_EVENTS_SECRET_KEY: not a base64 key"):
        SecretBox.load(tmp_path / "x")
