"""Issue 12: people and tools. Roles against every RPC, tokens, sessions, audit events.

Everything runs against the real scheduler and event service with TLS; tokens
come from the real ``vigil.v1.Access`` API (tests/access.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from google.protobuf import message_factory
from google.protobuf.descriptor import MethodDescriptor
from vigil.v1 import (
    access_pb2,
    access_pb2_grpc,
    common_pb2,
    events_pb2,
    events_pb2_grpc,
    inventory_pb2,
    poller_pb2,
    poller_pb2_grpc,
    sink_pb2,
)

from services.core.access.permissions import AUDIT_ACTIONS, BUILTIN_ROLES, METHODS, WRITES
from services.core.access.replication import REVOKED_WITHIN
from services.core.natsserver import NatsServer
from tests import pki as test_pki
from tests.access import bearer, create_token, synced, token_channel_credentials
from tests.helpers import OPERATOR, EventCollector, Stack, make_config, wait_for

CALL_TIMEOUT = 10.0
PROTO_SERVICES = [
    access_pb2.DESCRIPTOR.services_by_name["Access"],
    events_pb2.DESCRIPTOR.services_by_name["Events"],
    inventory_pb2.DESCRIPTOR.services_by_name["Inventory"],
    poller_pb2.DESCRIPTOR.services_by_name["Poller"],
    sink_pb2.DESCRIPTOR.services_by_name["ResultSink"],
]


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    """Scheduler and event service, each with its token port (no client certificate)."""
    cfg = make_config(
        tmp_path,
        nats_server.url,
        scheduler={"probe_listen": "127.0.0.1:0"},
        events={"probe_listen": "127.0.0.1:0"},
    )
    s = await Stack(cfg, nats_server.url).start(minion_locations=())
    try:
        yield s
    finally:
        await s.stop()


def _methods() -> list[tuple[str, MethodDescriptor]]:
    return [(f"{svc.full_name}/{m.name}", m) for svc in PROTO_SERVICES for m in svc.methods]


def _server_of(full: str, stack: Stack) -> str:
    assert stack.scheduler is not None and stack.events is not None
    if full.startswith("vigil.v1.Events/"):
        return stack.events.grpc_address
    return stack.scheduler.grpc_address


async def _call(
    channel: grpc.aio.Channel, full: str, method: MethodDescriptor, token: str
) -> grpc.StatusCode:
    """Call ``full`` with an empty request; the status it ends with (OK for a stream that runs)."""
    request_cls = message_factory.GetMessageClass(method.input_type)
    response_cls = message_factory.GetMessageClass(method.output_type)
    path = f"/{full}"
    kwargs: dict[str, Any] = {
        "request_serializer": lambda m: m.SerializeToString(),
        "response_deserializer": response_cls.FromString,
    }
    try:
        if method.client_streaming:
            call = channel.stream_stream(path, **kwargs)(metadata=bearer(token), timeout=3)
            await call.done_writing()
            async for _ in call:
                break
        elif method.server_streaming:
            stream = channel.unary_stream(path, **kwargs)(
                request_cls(), metadata=bearer(token), timeout=3
            )
            async for _ in stream:
                break
        else:
            await channel.unary_unary(path, **kwargs)(
                request_cls(), metadata=bearer(token), timeout=CALL_TIMEOUT
            )
    except grpc.aio.AioRpcError as err:
        return err.code()
    return grpc.StatusCode.OK


def test_every_rpc_has_a_permission_entry() -> None:
    """A new RPC in a .proto without an entry in the permission table fails here."""
    for full, _ in _methods():
        assert full in METHODS, f"{full} has no entry in services.core.access.permissions.METHODS"
    assert set(WRITES) <= set(METHODS)


async def test_each_role_against_each_rpc(stack: Stack) -> None:
    tokens = {
        role: await create_token(stack, role, name=f"t-{role}")
        for role in BUILTIN_ROLES
        if role != "minion"  # a certificate's role (tests/trust/test_grpc_tls.py)
    }
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        for full, method in _methods():
            address = _server_of(full, stack)
            ch = channels.setdefault(address, test_pki.operator_channel(address))
            need = METHODS[full]
            for role, token in tokens.items():
                code = await _call(ch, full, method, token)
                allowed = need != "permission" or any(
                    fnmatch.fnmatchcase(full, p) for p in BUILTIN_ROLES[role]
                )
                if allowed:
                    assert code not in (
                        grpc.StatusCode.PERMISSION_DENIED,
                        grpc.StatusCode.UNAUTHENTICATED,
                    ), f"{role} should reach {full}, got {code}"
                else:
                    assert code == grpc.StatusCode.PERMISSION_DENIED, (
                        f"{role} must not reach {full}, got {code}"
                    )
    finally:
        for ch in channels.values():
            await ch.close()


async def test_viewer_reads_but_cannot_write(stack: Stack) -> None:
    assert stack.scheduler is not None
    token = await create_token(stack, "viewer", name="grafana")
    async with test_pki.operator_channel(stack.scheduler.grpc_address) as ch:
        await poller_pb2_grpc.PollerStub(ch).ListServices(
            poller_pb2.ListServicesRequest(), metadata=bearer(token), timeout=CALL_TIMEOUT
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await poller_pb2_grpc.PollerStub(ch).SetPaused(
                poller_pb2.SetPausedRequest(), metadata=bearer(token), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "vigil.v1.Poller/SetPaused" in (err.value.details() or "")
        assert "token:grafana" in (err.value.details() or "")
        who = await access_pb2_grpc.AccessStub(ch).WhoAmI(
            access_pb2.WhoAmIRequest(), metadata=bearer(token), timeout=CALL_TIMEOUT
        )
        assert (who.principal, who.role) == ("token:grafana", "viewer")
        # Without a token the operator certificate speaks: admin by default.
        who = await access_pb2_grpc.AccessStub(ch).WhoAmI(
            access_pb2.WhoAmIRequest(), timeout=CALL_TIMEOUT
        )
        assert who.role == "admin" and who.principal.startswith("certificate:operator/")


async def test_a_token_works_without_a_client_certificate_on_the_token_port(stack: Stack) -> None:
    assert stack.scheduler is not None and stack.scheduler.grpc is not None
    assert stack.events is not None and stack.events.grpc is not None
    token = await create_token(stack, "viewer")
    for grpc_server in (stack.scheduler.grpc, stack.events.grpc):
        address = grpc_server.probe_address
        assert address is not None
        async with grpc.aio.secure_channel(address, token_channel_credentials()) as ch:
            if grpc_server is stack.scheduler.grpc:
                await poller_pb2_grpc.PollerStub(ch).ListServices(
                    poller_pb2.ListServicesRequest(), metadata=bearer(token), timeout=CALL_TIMEOUT
                )
                unary = poller_pb2_grpc.PollerStub(ch).ListServices(
                    poller_pb2.ListServicesRequest(), timeout=CALL_TIMEOUT
                )
            else:
                await events_pb2_grpc.EventsStub(ch).ListEvents(
                    events_pb2.ListEventsRequest(), metadata=bearer(token), timeout=CALL_TIMEOUT
                )
                unary = events_pb2_grpc.EventsStub(ch).ListEvents(
                    events_pb2.ListEventsRequest(), timeout=CALL_TIMEOUT
                )
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await unary  # no token, no certificate
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_expired_revoked_and_forged_tokens_are_unauthenticated(stack: Stack) -> None:
    assert stack.scheduler is not None and stack.events is not None
    sched, events = stack.scheduler.grpc_address, stack.events.grpc_address
    admin = access_pb2_grpc.AccessStub
    async with test_pki.operator_channel(sched) as ch:
        await admin(ch).PutUser(
            access_pb2.PutUserRequest(name="alice", role="viewer", password="correct horse"),
            timeout=CALL_TIMEOUT,
        )
    await synced(stack)
    signer = stack.scheduler.access.signer
    # Signed by the deployment, but expired an hour ago.
    expired, _ = signer.issue("session", "alice", ttl=60, now=time.time() - 3600)
    # Same key id, another key.
    other = jwt.encode(
        {"iss": "vigil", "sub": "alice", "knd": "session", "jti": "x", "iat": int(time.time())},
        Ed25519PrivateKey.generate(),
        algorithm="EdDSA",
        headers={"kid": signer.key_id},
    )
    unsigned = jwt.encode(
        {"iss": "vigil", "sub": "alice", "knd": "session", "jti": "y", "iat": int(time.time())},
        None,
        algorithm="none",
        headers={"kid": signer.key_id},
    )
    live = await create_token(stack, "viewer", name="soon-revoked")
    for address, call in (
        (
            sched,
            lambda ch, md: poller_pb2_grpc.PollerStub(ch).ListServices(
                poller_pb2.ListServicesRequest(), metadata=md, timeout=CALL_TIMEOUT
            ),
        ),
        (
            events,
            lambda ch, md: events_pb2_grpc.EventsStub(ch).ListEvents(
                events_pb2.ListEventsRequest(), metadata=md, timeout=CALL_TIMEOUT
            ),
        ),
    ):
        async with test_pki.operator_channel(address) as ch:
            await call(ch, bearer(live))
            for token, why in (
                (expired, "token expired"),
                (other, "Signature verification failed"),
                (unsigned, "invalid token"),
                ("not-a-jwt", "not a Vigil token"),
            ):
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call(ch, bearer(token))
                assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
                assert why in (err.value.details() or ""), err.value.details()
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await call(ch, (("authorization", "Basic abc"),))
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED

    async with test_pki.operator_channel(sched) as ch:
        listed = await admin(ch).ListTokens(access_pb2.ListTokensRequest(), timeout=CALL_TIMEOUT)
        (record,) = [t for t in listed.tokens if t.name == "soon-revoked"]
        assert live not in str(listed)  # the token itself is never shown again
        await admin(ch).RevokeToken(
            access_pb2.RevokeTokenRequest(id=record.id), timeout=CALL_TIMEOUT
        )
        # Refused at once by the scheduler, which owns the snapshot...
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await poller_pb2_grpc.PollerStub(ch).ListServices(
                poller_pb2.ListServicesRequest(), metadata=bearer(live), timeout=CALL_TIMEOUT
            )
        assert err.value.details() == "bearer token refused: token revoked"

    # ... and by the event service within the documented time.
    async def refused_by_events() -> bool:
        async with test_pki.operator_channel(events) as ch:
            try:
                await events_pb2_grpc.EventsStub(ch).ListEvents(
                    events_pb2.ListEventsRequest(), metadata=bearer(live), timeout=CALL_TIMEOUT
                )
            except grpc.aio.AioRpcError as err:
                return err.code() == grpc.StatusCode.UNAUTHENTICATED
            return False

    await wait_for(
        refused_by_events, timeout=REVOKED_WITHIN, what="revocation at the event service"
    )


async def test_login_sessions_follow_the_user(stack: Stack) -> None:
    assert stack.scheduler is not None and stack.scheduler.grpc is not None
    sched = stack.scheduler.grpc_address
    async with test_pki.operator_channel(sched) as ch:
        access = access_pb2_grpc.AccessStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.PutUser(
                access_pb2.PutUserRequest(name="bob", role="operator"), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "password" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.PutUser(
                access_pb2.PutUserRequest(name="bob", role="wizard", password="12345678"),
                timeout=CALL_TIMEOUT,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "wizard" in (err.value.details() or "")
        user = await access.PutUser(
            access_pb2.PutUserRequest(name="bob", role="operator", password="s3cret-pass"),
            timeout=CALL_TIMEOUT,
        )
        assert user.role == "operator" and "s3cret" not in str(user)

    # Login is open to anyone on the token port; a wrong password is UNAUTHENTICATED.
    probe = stack.scheduler.grpc.probe_address
    assert probe is not None
    async with grpc.aio.secure_channel(probe, token_channel_credentials()) as ch:
        access = access_pb2_grpc.AccessStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.Login(
                access_pb2.LoginRequest(user="bob", password="wrong"), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.Login(
                access_pb2.LoginRequest(user="nobody", password="wrong"), timeout=CALL_TIMEOUT
            )
        assert err.value.details() == "wrong user name or password"
        session = await access.Login(
            access_pb2.LoginRequest(user="bob", password="s3cret-pass"), timeout=CALL_TIMEOUT
        )
        assert session.role == "operator"
        assert session.expire_time.seconds > time.time()
        who = await access.WhoAmI(
            access_pb2.WhoAmIRequest(), metadata=bearer(session.token), timeout=CALL_TIMEOUT
        )
        assert who.principal == "user:bob"

    # Changing the user ends its sessions; deleting it too.
    async with test_pki.operator_channel(sched) as ch:
        access = access_pb2_grpc.AccessStub(ch)
        await asyncio.sleep(1.1)  # a session issued in the same second as a change stays valid
        await access.PutUser(
            access_pb2.PutUserRequest(name="bob", role="viewer"), timeout=CALL_TIMEOUT
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.WhoAmI(
                access_pb2.WhoAmIRequest(), metadata=bearer(session.token), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "log in again" in (err.value.details() or "")
        session2 = await access.Login(
            access_pb2.LoginRequest(user="bob", password="s3cret-pass"), timeout=CALL_TIMEOUT
        )
        await access.DeleteUser(access_pb2.DeleteUserRequest(name="bob"), timeout=CALL_TIMEOUT)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.GetUser(access_pb2.GetUserRequest(name="bob"), timeout=CALL_TIMEOUT)
        assert err.value.code() == grpc.StatusCode.NOT_FOUND
        # A new user of the same name does not inherit the deleted one's sessions.
        await asyncio.sleep(1.1)
        await access.PutUser(
            access_pb2.PutUserRequest(name="bob", role="admin", password="another-pass"),
            timeout=CALL_TIMEOUT,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.WhoAmI(
                access_pb2.WhoAmIRequest(), metadata=bearer(session2.token), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_repeated_failed_logins_are_throttled(stack: Stack) -> None:
    assert stack.scheduler is not None
    limit = stack.scheduler.cfg.access.login_failures_per_minute
    async with test_pki.operator_channel(stack.scheduler.grpc_address) as ch:
        access = access_pb2_grpc.AccessStub(ch)
        await access.PutUser(
            access_pb2.PutUserRequest(name="carol", role="viewer", password="right-password"),
            timeout=CALL_TIMEOUT,
        )
        for _ in range(limit):
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await access.Login(
                    access_pb2.LoginRequest(user="carol", password="guess"), timeout=CALL_TIMEOUT
                )
            assert err.value.code() == grpc.StatusCode.UNAUTHENTICATED
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.Login(
                access_pb2.LoginRequest(user="carol", password="right-password"),
                timeout=CALL_TIMEOUT,
            )
        assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


async def test_custom_roles_and_no_escalation(stack: Stack) -> None:
    assert stack.scheduler is not None
    sched = stack.scheduler.grpc_address
    async with test_pki.operator_channel(sched) as ch:
        access = access_pb2_grpc.AccessStub(ch)
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.PutRole(
                access_pb2.PutRoleRequest(
                    role=access_pb2.Role(
                        name="bad", grants=[access_pb2.Grant(permission="vigil.v1.Nope/*")]
                    )
                ),
                timeout=CALL_TIMEOUT,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "role.grants[0].permission" in (err.value.details() or "")
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.PutRole(
                access_pb2.PutRoleRequest(role=access_pb2.Role(name="admin", grants=[])),
                timeout=CALL_TIMEOUT,
            )
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        await access.PutRole(
            access_pb2.PutRoleRequest(
                role=access_pb2.Role(
                    name="token-minter",
                    grants=[
                        access_pb2.Grant(permission="vigil.v1.Access/CreateToken"),
                        access_pb2.Grant(permission="vigil.v1.Poller/ListServices"),
                    ],
                )
            ),
            timeout=CALL_TIMEOUT,
        )
        roles = await access.ListRoles(access_pb2.ListRolesRequest(), timeout=CALL_TIMEOUT)
        assert {"viewer", "operator", "admin", "token-minter"} <= {r.name for r in roles.roles}
    minter = await create_token(stack, "token-minter", name="minter")
    async with test_pki.operator_channel(sched) as ch:
        access = access_pb2_grpc.AccessStub(ch)
        # It may hand out what it holds, not more.
        await access.CreateToken(
            access_pb2.CreateTokenRequest(name="child", role="token-minter"),
            metadata=bearer(minter),
            timeout=CALL_TIMEOUT,
        )
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.CreateToken(
                access_pb2.CreateTokenRequest(name="escalate", role="admin"),
                metadata=bearer(minter),
                timeout=CALL_TIMEOUT,
            )
        assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
        # A role still held cannot be deleted.
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await access.DeleteRole(
                access_pb2.DeleteRoleRequest(name="token-minter"), timeout=CALL_TIMEOUT
            )
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_every_write_is_audited_with_secrets_redacted(
    stack: Stack, events_seen: EventCollector
) -> None:
    assert stack.scheduler is not None
    viewer = await create_token(stack, "viewer", name="nosy")
    channels: dict[str, grpc.aio.Channel] = {}
    try:
        for full, method in _methods():
            if full not in WRITES:
                continue
            address = _server_of(full, stack)
            ch = channels.setdefault(address, test_pki.operator_channel(address))
            request_cls = message_factory.GetMessageClass(method.input_type)
            response_cls = message_factory.GetMessageClass(method.output_type)
            request = request_cls()
            if full.endswith("/Login"):
                request = access_pb2.LoginRequest(user="mallory", password="hunter2-secret")
            if full.endswith("/PutUser"):
                request = access_pb2.PutUserRequest(
                    name="dave", role="viewer", password="dave-password"
                )
            stub = ch.unary_unary(
                f"/{full}",
                request_serializer=lambda m: m.SerializeToString(),
                response_deserializer=response_cls.FromString,
            )
            # an empty request is mostly refused: that is audited too
            with contextlib.suppress(grpc.aio.AioRpcError):
                await stub(request, timeout=CALL_TIMEOUT)
        # A refused write (a viewer pausing a service) is audited as refused.
        async with test_pki.operator_channel(stack.scheduler.grpc_address) as ch:
            with pytest.raises(grpc.aio.AioRpcError):
                await poller_pb2_grpc.PollerStub(ch).SetPaused(
                    poller_pb2.SetPausedRequest(
                        service=common_pb2.ServiceRef(node_id="n1", ip="10.0.0.1", service="ICMP"),
                        paused=True,
                    ),
                    metadata=bearer(viewer),
                    timeout=CALL_TIMEOUT,
                )
    finally:
        for ch in channels.values():
            await ch.close()
    actions = set(AUDIT_ACTIONS)
    await wait_for(
        lambda: actions <= {e["action"] for e in events_seen.audit},
        timeout=20,
        what=f"an audit event for each of {sorted(actions)}",
    )
    by_action: dict[str, list[dict[str, Any]]] = {}
    for e in events_seen.audit:
        by_action.setdefault(e["action"], []).append(e)
    login = by_action["login"][0]
    assert login["data"]["request"]["password"] == "***"
    assert "hunter2" not in str(events_seen.audit)
    assert "dave-password" not in str(events_seen.audit)
    assert login["data"]["outcome"] == "UNAUTHENTICATED"
    put_user = [e for e in by_action["put-user"] if e["data"]["outcome"] == "OK"]
    assert put_user and put_user[0]["data"]["principal"].startswith("certificate:operator/")
    await wait_for(
        lambda: any(
            e["data"]["principal"] == "token:nosy" and e["data"]["outcome"] == "PERMISSION_DENIED"
            for e in by_action.get("set-paused", [])
            + [x for x in events_seen.audit if x["action"] == "set-paused"]
        ),
        what="the refused SetPaused audited",
    )
    refused = next(e for e in events_seen.audit if e["data"]["principal"] == "token:nosy")
    assert refused["severity"] == "warning"
    assert refused["nodeId"] == "n1"
    # Audit events are stored in the history like every event.
    assert stack.events is not None
    async with test_pki.operator_channel(stack.events.grpc_address) as ch:
        page = await events_pb2_grpc.EventsStub(ch).ListEvents(
            events_pb2.ListEventsRequest(type="audit", page_size=200), timeout=CALL_TIMEOUT
        )
    assert {e.action for e in page.events} >= {"put-user", "login"}


async def test_grpcurl_with_a_bearer_token_as_in_the_readme(stack: Stack) -> None:
    """With a certificate and a token on the main port; with a token alone on the token port."""
    import sys

    assert stack.scheduler is not None and stack.scheduler.grpc is not None
    grpcurl = str(Path(sys.executable).parent / "grpcurl")
    token = await create_token(stack, "viewer", name="grafana")
    pki = test_pki.current()
    ca = ["-cacert", str(pki.ca_cert_path)]
    operator = OPERATOR
    cert = ["-cert", str(pki.cert_path(operator)), "-key", str(pki.key_path(operator))]
    auth = ["-H", f"authorization: Bearer {token}"]
    probe = stack.scheduler.grpc.probe_address
    assert probe is not None

    async def run(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            grpcurl, *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
        )
        async with asyncio.timeout(60):
            out, err = await proc.communicate()
        return proc.returncode or 0, out.decode(), err.decode()

    code, out, err = await run(*ca, *cert, *auth, stack.scheduler.grpc_address, "list")
    assert code == 0, err
    assert "vigil.v1.Access" in out and "vigil.v1.Poller" in out
    code, out, err = await run(*ca, *auth, "-d", "{}", probe, "vigil.v1.Poller/ListServices")
    assert code == 0, err
    code, out, err = await run(
        *ca, *auth, "-d", '{"paused": true}', probe, "vigil.v1.Poller/SetPaused"
    )
    assert code != 0 and "PermissionDenied" in err and "vigil.v1.Poller/SetPaused" in err
    code, out, err = await run(*ca, "-d", "{}", probe, "vigil.v1.Poller/ListServices")
    assert code != 0 and "Unauthenticated" in err


async def test_nobody_publishes_an_audit_event(stack: Stack) -> None:
    assert stack.events is not None
    async with test_pki.operator_channel(stack.events.grpc_address) as ch:
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await events_pb2_grpc.EventsStub(ch).Publish(
                events_pb2.PublishRequest(event=events_pb2.Event(type="audit", action="put-node")),
                timeout=CALL_TIMEOUT,
            )
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "event.type" in (err.value.details() or "")


async def test_the_audit_trail_is_delivered_only_when_asked_for(stack: Stack) -> None:
    assert stack.scheduler is not None and stack.events is not None
    async with test_pki.operator_channel(stack.events.grpc_address) as ch:
        events = events_pb2_grpc.EventsStub(ch)
        everything = events.Subscribe(events_pb2.SubscribeRequest(), timeout=30)
        audit_only = events.Subscribe(
            events_pb2.SubscribeRequest(filters=[events_pb2.EventFilter(type="audit")]),
            timeout=30,
        )
        await everything.read()  # the stream is open (its first message)
        await audit_only.read()
        async with test_pki.operator_channel(stack.scheduler.grpc_address) as sch:
            await access_pb2_grpc.AccessStub(sch).PutUser(
                access_pb2.PutUserRequest(name="frank", role="viewer", password="frank-pass"),
                timeout=CALL_TIMEOUT,
            )
        published = await events.Publish(
            events_pb2.PublishRequest(event=events_pb2.Event(type="node", action="down")),
            timeout=CALL_TIMEOUT,
        )

        async def next_event(call: Any) -> events_pb2.Event:
            while True:
                msg = await call.read()
                if msg.HasField("event"):
                    return msg.event

        async with asyncio.timeout(15):
            first = await next_event(audit_only)
        assert (first.type, first.action) == ("audit", "put-user")
        async with asyncio.timeout(15):
            got = await next_event(everything)
        assert got.id == published.event.id  # the audit of PutUser (and Publish) is not here
        everything.cancel()
        audit_only.cancel()


async def test_parked_audit_events_are_not_shown_to_an_operator(
    tmp_path: Path, nats_server: NatsServer
) -> None:
    cfg = make_config(
        tmp_path,
        nats_server.url,
        events={"hook_max_age": "1s", "hooks_allow_networks": ["127.0.0.0/8"]},
    )
    stack = await Stack(cfg, nats_server.url).start(minion_locations=())
    try:
        assert stack.scheduler is not None and stack.events is not None
        operator = await create_token(stack, "operator", name="ops")
        async with test_pki.operator_channel(stack.events.grpc_address) as ch:
            events = events_pb2_grpc.EventsStub(ch)
            hook = await events.CreateHook(
                events_pb2.CreateHookRequest(
                    name="siem",
                    url="http://127.0.0.1:9/closed",
                    secret="a-hook-secret",
                    filters=[events_pb2.EventFilter(type="audit")],
                ),
                timeout=CALL_TIMEOUT,
            )
            async with test_pki.operator_channel(stack.scheduler.grpc_address) as sch:
                await access_pb2_grpc.AccessStub(sch).PutUser(
                    access_pb2.PutUserRequest(name="gina", role="viewer", password="gina-pass"),
                    timeout=CALL_TIMEOUT,
                )

            async def parked() -> Any:
                resp = await events.ListHookFailures(
                    events_pb2.ListHookFailuresRequest(hook_id=hook.id), timeout=CALL_TIMEOUT
                )
                return resp if resp.failures else None

            admin_view = await wait_for(parked, timeout=30, what="a parked audit delivery")
            assert admin_view.failures[0].event.data.fields["principal"].string_value
            as_operator = await events.ListHookFailures(
                events_pb2.ListHookFailuresRequest(hook_id=hook.id),
                metadata=bearer(operator),
                timeout=CALL_TIMEOUT,
            )
            shown = as_operator.failures[0].event
            assert shown.type == "audit" and shown.id == admin_view.failures[0].event.id
            assert not shown.HasField("data") and not shown.node_id
    finally:
        await stack.stop()
