"""``vigil hooks add|list|update|rm|failures``: manage the event service's webhooks."""

from __future__ import annotations

import json
import secrets
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from services.cli.grpcclient import PkiDirOpt, PlaintextOpt, open_channel

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp
    from vigil.v1 import events_pb2, events_pb2_grpc

# grpc and the generated code are imported inside the commands: `vigil --help`
# and the other commands stay quick to start.

app = typer.Typer(
    name="hooks",
    help="Webhooks: every matching event POSTed (signed, at least once) to a URL.",
    no_args_is_help=True,
)

DEFAULT_ADDRESS = "127.0.0.1:50052"
AddressOpt = Annotated[
    str,
    typer.Option(
        "--events", envvar="VIGIL_EVENTS_ADDRESS", help="The event service's gRPC host:port."
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
#: ``--filter`` keys → EventFilter fields.
FILTER_KEYS = {
    "type": "type",
    "action": "action",
    "severity": "severity",
    "node": "node_id",
    "node_id": "node_id",
    "nodeId": "node_id",
    "location": "location",
}


def parse_filter(text: str) -> events_pb2.EventFilter:
    """``type=service,node=web-*`` → an EventFilter (fields AND)."""
    from vigil.v1 import events_pb2

    fields: dict[str, str] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or key not in FILTER_KEYS or not value:
            raise typer.BadParameter(
                f"{part!r}: expected KEY=VALUE, KEY one of type, action, severity, node, location",
                param_hint="--filter",
            )
        fields[FILTER_KEYS[key]] = value
    return events_pb2.EventFilter(**fields)


def _filter_text(f: events_pb2.EventFilter) -> str:
    pairs = [("type", f.type), ("action", f.action), ("severity", f.severity), ("node", f.node_id)]
    pairs.append(("location", f.location))
    return ",".join(f"{k}={v}" for k, v in pairs if v)


def _when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@contextmanager
def _stub(
    address: str, pki_dir: Path | None, plaintext: bool = False
) -> Iterator[events_pb2_grpc.EventsStub]:
    """An operator's client (mutual TLS); gRPC errors become one line on stderr and exit code 1."""
    import grpc
    from vigil.v1 import events_pb2_grpc

    try:
        with open_channel(address, pki_dir, plaintext=plaintext, command="vigil hooks") as channel:
            yield events_pb2_grpc.EventsStub(channel)
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "ERROR"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == "UNAVAILABLE":
            details = f"no event service at {address} ({details})"
        typer.echo(f"vigil hooks: {code}: {details}", err=True)
        raise typer.Exit(1) from None


def _all_hooks(stub: events_pb2_grpc.EventsStub) -> list[events_pb2.Hook]:
    from vigil.v1 import events_pb2

    hooks: list[events_pb2.Hook] = []
    token = ""
    while True:
        resp = stub.ListHooks(
            events_pb2.ListHooksRequest(page_size=1000, page_token=token), timeout=10
        )
        hooks += resp.hooks
        if not (token := resp.next_page_token):
            return hooks


def _resolve(stub: events_pb2_grpc.EventsStub, ref: str) -> events_pb2.Hook:
    for h in _all_hooks(stub):
        if ref in (h.id, h.name):
            return h
    typer.echo(f"vigil hooks: no hook with id or name {ref!r}", err=True)
    raise typer.Exit(1)


def _as_json(msg: Any) -> str:
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(msg), sort_keys=True)


@app.command("add")
def add(
    url: Annotated[str, typer.Argument(help="Where to POST: http:// or https://.")],
    name: Annotated[
        str, typer.Option("--name", "-n", help="Unique name (letters, digits, '-', '_', '.').")
    ],
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            "-f",
            help="KEY=VALUE[,KEY=VALUE...] (keys: type, action, severity, node, location; "
            "values exact or glob). Fields of one --filter AND; several --filter OR; "
            "none: every event.",
        ),
    ] = None,
    secret: Annotated[
        str | None,
        typer.Option(
            envvar="VIGIL_HOOK_SECRET",
            help="HMAC-SHA256 key (8-256 chars); generated when omitted.",
        ),
    ] = None,
    events: AddressOpt = DEFAULT_ADDRESS,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Register a webhook."""
    from vigil.v1 import events_pb2

    flts = [parse_filter(f) for f in filters or []]
    generated = secret is None
    key = secret if secret is not None else secrets.token_urlsafe(24)
    with _stub(events, pki_dir, plaintext) as stub:
        hook = stub.CreateHook(
            events_pb2.CreateHookRequest(name=name, url=url, filters=flts, secret=key), timeout=10
        )
    if generated:
        # The only time it is shown: the service never returns it.
        typer.echo(f"secret (store it now, it is not shown again): {key}", err=True)
    if as_json:
        typer.echo(_as_json(hook))
    else:
        typer.echo(f"hook {hook.name} created: {hook.id}")


@app.command("list")
def list_hooks(
    events: AddressOpt = DEFAULT_ADDRESS,
    as_json: JsonOpt = False,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Show every webhook with its delivery status."""
    with _stub(events, pki_dir, plaintext) as stub:
        hooks = _all_hooks(stub)
    if as_json:
        for h in hooks:
            typer.echo(_as_json(h))
        return
    if not hooks:
        typer.echo("no hooks")
        return
    rows = [
        (
            "ID",
            "NAME",
            "URL",
            "FILTERS",
            "DELIVERED",
            "FAILED",
            "BACKLOG",
            "LAST SUCCESS",
            "LAST ERROR",
        )
    ]
    for h in hooks:
        st = h.status
        rows.append(
            (
                h.id,
                h.name,
                h.url,
                " | ".join(_filter_text(f) for f in h.filters) or "*",
                str(st.delivered),
                str(st.failed),
                str(st.backlog),
                _when(st.last_success_at),
                f"{_when(st.last_error_at)} {st.last_error}" if st.last_error else "-",
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)) + "  " + r[-1])


@app.command("update")
def update(
    hook: Annotated[str, typer.Argument(help="Id or name of the hook.")],
    url: Annotated[str | None, typer.Option("--url", help="The new URL.")] = None,
    name: Annotated[str | None, typer.Option("--name", "-n", help="The new name.")] = None,
    filters: Annotated[
        list[str] | None,
        typer.Option(
            "--filter",
            "-f",
            help="Replace the filters (as for add; several --filter OR).",
        ),
    ] = None,
    all_events: Annotated[
        bool, typer.Option("--all-events", help="Remove every filter: every event.")
    ] = False,
    secret: Annotated[
        str | None,
        typer.Option(
            "--secret", help="The new HMAC-SHA256 key (8-256 chars); see also --new-secret."
        ),
    ] = None,
    new_secret: Annotated[
        bool, typer.Option("--new-secret", help="Generate a new key and print it once.")
    ] = False,
    events: AddressOpt = DEFAULT_ADDRESS,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Change a webhook: only what is given changes (an UpdateHook field mask)."""
    from google.protobuf.field_mask_pb2 import FieldMask
    from vigil.v1 import events_pb2

    if filters and all_events:
        raise typer.BadParameter("give --filter or --all-events, not both", param_hint="--filter")
    if secret is not None and new_secret:
        raise typer.BadParameter("give --secret or --new-secret, not both", param_hint="--secret")
    paths: list[str] = []
    request = events_pb2.UpdateHookRequest()
    if url is not None:
        paths.append("url")
        request.url = url
    if name is not None:
        paths.append("name")
        request.name = name
    if filters or all_events:
        paths.append("filters")
        request.filters.extend(parse_filter(f) for f in filters or [])
    key = secrets.token_urlsafe(24) if new_secret else secret
    if key is not None:
        paths.append("secret")
        request.secret = key
    if not paths:
        raise typer.BadParameter(
            "nothing to change: give --url, --name, --filter, --all-events, --secret or "
            "--new-secret"
        )
    request.update_mask.CopyFrom(FieldMask(paths=paths))
    with _stub(events, pki_dir, plaintext) as stub:
        request.id = _resolve(stub, hook).id
        updated = stub.UpdateHook(request, timeout=15)
    if new_secret:
        # The only time it is shown: the service never returns it.
        typer.echo(f"secret (store it now, it is not shown again): {key}", err=True)
    if as_json:
        typer.echo(_as_json(updated))
    else:
        typer.echo(f"hook {updated.name} updated ({', '.join(paths)})")


@app.command("rm")
def remove(
    hook: Annotated[str, typer.Argument(help="Id or name of the hook.")],
    events: AddressOpt = DEFAULT_ADDRESS,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Delete a webhook (its cursor and parked deliveries go with it)."""
    from vigil.v1 import events_pb2

    with _stub(events, pki_dir, plaintext) as stub:
        found = _resolve(stub, hook)
        stub.DeleteHook(events_pb2.DeleteHookRequest(id=found.id), timeout=15)
    typer.echo(f"hook {found.name} deleted")


@app.command("failures")
def failures(
    hook: Annotated[str, typer.Argument(help="Id or name of the hook.")],
    limit: Annotated[int, typer.Option(help="At most this many, newest first.")] = 50,
    events: AddressOpt = DEFAULT_ADDRESS,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Deliveries given up after retrying for the maximum age (JSON lines)."""
    from vigil.v1 import events_pb2

    with _stub(events, pki_dir, plaintext) as stub:
        found = _resolve(stub, hook)
        resp = stub.ListHookFailures(
            events_pb2.ListHookFailuresRequest(
                hook_id=found.id, page_size=max(1, min(limit, 1000))
            ),
            timeout=10,
        )
    for f in resp.failures:
        sys.stdout.write(_as_json(f) + "\n")
    typer.echo(f"{len(resp.failures)} of {resp.total_size} parked deliveries", err=True)
