"""``vigil hooks`` and ``vigil sniff`` against a running event service and NATS."""

from __future__ import annotations

import asyncio
import json

import pytest
from typer.testing import CliRunner

from services.cli.main import app
from services.cli.sniff import pretty_line, run_sniff
from services.core.natsserver import NatsServer
from services.events.app import EventService
from tests.events.util import Receiver, jetstream, publish_raw, raw_event
from tests.helpers import wait_for


async def vigil(*args: str) -> tuple[int, str, str]:
    """Run the CLI in a thread (it runs its own event loop / blocking gRPC)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    return result.exit_code, result.stdout, result.stderr


async def test_hooks_add_list_rm(service: EventService) -> None:
    receiver = await Receiver().start()
    addr = ["--events", service.grpc_address]
    try:
        code, out, err = await vigil(
            "hooks",
            "add",
            receiver.url,
            "--name",
            "cli",
            "-f",
            "type=node,node=n*",
            "-f",
            "severity=critical",
            *addr,
        )
        assert code == 0, err
        assert out.startswith("hook cli created: ")
        secret = err.split("not shown again): ", 1)[1].strip()
        assert len(secret) >= 24

        code, out, _ = await vigil("hooks", "list", *addr)
        assert code == 0
        assert "cli" in out
        assert "type=node,node=n* | severity=critical" in out
        assert secret not in out

        code, out, _ = await vigil("hooks", "list", "--json", *addr)
        listed = json.loads(out.splitlines()[0])
        assert listed["name"] == "cli"
        assert listed["filters"] == [{"type": "node", "nodeId": "n*"}, {"severity": "critical"}]

        async with jetstream(service.nats_url) as js:
            await publish_raw(js, raw_event("node", "down", "n1"))
        await wait_for(lambda: receiver.requests, what="delivery to the CLI-made hook")

        code, out, err = await vigil("hooks", "failures", "cli", *addr)
        assert code == 0
        assert "0 of 0 parked" in err

        code, out, err = await vigil(
            "hooks", "add", "ftp://x/", "--name", "bad", "--secret", "12345678", *addr
        )
        assert code == 1
        assert "INVALID_ARGUMENT: url: scheme 'ftp' is not allowed" in err
        code, _, err = await vigil(
            "hooks", "add", receiver.url, "--name", "x", "-f", "colour=red", *addr
        )
        assert code == 2
        assert "colour=red" in err

        code, out, _ = await vigil("hooks", "rm", "cli", *addr)
        assert code == 0
        assert out.strip() == "hook cli deleted"
        code, out, _ = await vigil("hooks", "list", *addr)
        assert out.strip() == "no hooks"
        code, _, err = await vigil("hooks", "rm", "cli", *addr)
        assert code == 1
        assert "no hook with id or name 'cli'" in err
    finally:
        await receiver.stop()


async def test_hooks_without_a_service_says_so() -> None:
    code, _, err = await vigil("hooks", "list", "--events", "127.0.0.1:1")
    assert code == 1
    assert "UNAVAILABLE" in err


async def test_sniff_prints_json_lines_or_pretty_lines(
    nats_server: NatsServer, service: EventService, capsys: pytest.CaptureFixture[str]
) -> None:
    sniff = asyncio.create_task(
        run_sniff(nats_server.url, "vigil.events.node.>", pretty=False, count=2)
    )
    pretty = asyncio.create_task(run_sniff(nats_server.url, "vigil.events.>", pretty=True, count=2))
    err = ""

    def ready() -> bool:
        # Each prints "watching" once its subscription is registered with the server.
        nonlocal err
        err += capsys.readouterr().err
        return err.count("vigil sniff: watching") == 2

    await wait_for(ready, what="both sniffers subscribed")
    events = [
        raw_event("node", "down", "n1", data={"reason": "ping timeout"}),
        raw_event("node", "up", "n1"),
    ]
    async with jetstream(nats_server.url) as js:
        for e in events:
            await publish_raw(js, e)
    async with asyncio.timeout(10):
        assert await sniff == 0
        assert await pretty == 0
    lines = capsys.readouterr().out.splitlines()
    as_json = [json.loads(line) for line in lines if line.startswith("{")]
    assert [e["id"] for e in as_json] == [e["id"] for e in events]
    readable = [line for line in lines if not line.startswith("{")]
    assert len(readable) == 2
    assert " critical    node down n1 @Default  ping timeout" in readable[0]


def test_pretty_line_forms() -> None:
    summary = {
        "type": "summary",
        "action": "updated",
        "severity": "information",
        "createdAt": "T",
        "typeId": "summary",
        "data": {"locations": {"paris": {"up": 2, "down": 1}}, "total": {"up": 2, "down": 1}},
    }
    assert pretty_line("s", json.dumps(summary).encode()).endswith(
        "total 2 up/1 down  (paris 2 up/1 down)"
    )
    notice = {"source": "x", "field": "type", "reason": "type: unknown event type 'v'"}
    assert pretty_line("vigil.rejected.x", json.dumps(notice).encode()) == (
        "rejected from x: type: unknown event type 'v'"
    )
    assert pretty_line("s", b"\x00junk") == "s: b'\\x00junk'"


async def test_hooks_update_changes_only_what_is_given(service: EventService) -> None:
    """``vigil hooks update`` sends a field mask: the URL moves, the filters stay."""
    old, new = await Receiver().start(), await Receiver().start()
    addr = ["--events", service.grpc_address]
    try:
        code, _, err = await vigil(
            "hooks",
            "add",
            old.url,
            "--name",
            "upd",
            "-f",
            "type=node",
            "--secret",
            "s3cret-key",
            *addr,
        )
        assert code == 0, err
        code, out, err = await vigil("hooks", "update", "upd", "--url", new.url, *addr)
        assert code == 0, err
        assert out.strip() == "hook upd updated (url)"
        code, out, _ = await vigil("hooks", "list", "--json", *addr)
        listed = json.loads(out.splitlines()[0])
        assert listed["url"] == new.url
        assert listed["filters"] == [{"type": "node"}]
        async with jetstream(service.nats_url) as js:
            await publish_raw(js, raw_event("node", "down", "n1"))
        await wait_for(lambda: new.requests, what="delivery to the new URL")
        assert not old.requests

        code, _, err = await vigil("hooks", "update", "upd", "--new-secret", *addr)
        assert code == 0, err
        secret = err.split("not shown again): ", 1)[1].strip()
        code, out, _ = await vigil("hooks", "list", *addr)
        assert secret not in out

        code, _, err = await vigil("hooks", "update", "upd", *addr)
        assert code == 2
        assert "nothing to change" in err
        code, _, err = await vigil("hooks", "update", "upd", "-f", "node=[x", *addr)
        assert code == 1
        assert "INVALID_ARGUMENT: filters[0].node_id:" in err
        code, _, err = await vigil("hooks", "update", "nosuch", "--url", new.url, *addr)
        assert code == 1
        assert "no hook" in err
    finally:
        await old.stop()
        await new.stop()
