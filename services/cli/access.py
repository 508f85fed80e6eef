"""``vigil login|logout|whoami``, ``vigil token``, ``vigil users``, ``vigil roles``.

Every command talks to the scheduler's ``vigil.v1.Access`` service, as whoever
the CLI finds (services/cli/grpcclient.py: a token, else the operator
certificate).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from services.cli.grpcclient import PkiDirOpt, PlaintextOpt, open_channel, session_file

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp
    from vigil.v1 import access_pb2, access_pb2_grpc

T = TypeVar("T")

DEFAULT_SCHEDULER = "127.0.0.1:50051"
SchedulerOpt = Annotated[
    str,
    typer.Option(
        "--scheduler",
        envvar="VIGIL_SCHEDULER_ADDRESS",
        help="The scheduler's gRPC host:port (its token port works too).",
    ),
]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
PasswordStdinOpt = Annotated[
    bool, typer.Option("--password-stdin", help="Read the password from standard input.")
]

token_app = typer.Typer(name="token", help="API tokens for automation.", no_args_is_help=True)
users_app = typer.Typer(
    name="users", help="Users who log in with a password.", no_args_is_help=True
)
roles_app = typer.Typer(name="roles", help="Roles: sets of permissions.", no_args_is_help=True)


@contextmanager
def _stub(
    address: str, pki_dir: Path | None, plaintext: bool, command: str
) -> Iterator[access_pb2_grpc.AccessStub]:
    """An Access client; gRPC errors become one line on stderr and exit code 1."""
    import grpc
    from vigil.v1 import access_pb2_grpc

    try:
        with open_channel(address, pki_dir, plaintext=plaintext, command=command) as channel:
            yield access_pb2_grpc.AccessStub(channel)
    except grpc.RpcError as exc:
        code = exc.code().name if hasattr(exc, "code") else "ERROR"
        details = exc.details() if hasattr(exc, "details") else str(exc)
        if code == "UNAVAILABLE":
            details = f"no scheduler at {address} ({details})"
        typer.echo(f"{command}: {code}: {details}", err=True)
        raise typer.Exit(1) from None


def _when(ts: Timestamp) -> str:
    if not ts.seconds and not ts.nanos:
        return "-"
    return datetime.fromtimestamp(ts.seconds, tz=UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _as_json(msg: Any) -> str:
    from google.protobuf.json_format import MessageToDict

    return json.dumps(MessageToDict(msg), sort_keys=True)


def _table(rows: Sequence[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        typer.echo("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())


def _password(stdin: bool, prompt: str, confirm: bool) -> str:
    if stdin:
        return sys.stdin.readline().rstrip("\n")
    return str(typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm))


def _scope(text: str | None) -> access_pb2.Scope:
    from vigil.v1 import access_pb2

    from services.core.access.permissions import DefinitionError, Scope

    if not text:
        return access_pb2.Scope()
    try:
        scope = Scope.parse(text)
    except DefinitionError as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from None
    return access_pb2.Scope(location=scope.location or "", node=scope.node or "")


def _scope_text(scope: access_pb2.Scope) -> str:
    parts = [f"location={scope.location}"] * bool(scope.location)
    parts += [f"node={scope.node}"] * bool(scope.node)
    return ",".join(parts) or "-"


def _all(call: Callable[[str], Any], field: str) -> list[Any]:
    items: list[Any] = []
    token = ""
    while True:
        resp = call(token)
        items += getattr(resp, field)
        if not (token := resp.next_page_token):
            return items


# -- login ---------------------------------------------------------------------------------


def login(
    user: Annotated[str | None, typer.Option("--user", "-u", help="Default: $USER.")] = None,
    password_stdin: PasswordStdinOpt = False,
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Exchange your password for a session token, kept in your config directory."""
    from vigil.v1 import access_pb2

    name = user or os.environ.get("USER") or ""
    if not name:
        raise typer.BadParameter("no user name (give --user)", param_hint="--user")
    password = _password(password_stdin, f"password for {name}", confirm=False)
    with _stub(scheduler, pki_dir, plaintext, "vigil login") as stub:
        resp = stub.Login(access_pb2.LoginRequest(user=name, password=password), timeout=15)
    path = session_file()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(resp.token + "\n")
    typer.echo(
        f"logged in as {name} (role {resp.role}) until {_when(resp.expire_time)}; "
        f"session kept in {path}"
    )


def logout() -> None:
    """Forget the session `vigil login` kept."""
    path = session_file()
    try:
        path.unlink()
    except FileNotFoundError:
        typer.echo("not logged in")
        return
    typer.echo(f"logged out ({path} removed)")


def whoami(
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Who the scheduler takes you for, and what you may do."""
    from vigil.v1 import access_pb2

    with _stub(scheduler, pki_dir, plaintext, "vigil whoami") as stub:
        who = stub.WhoAmI(access_pb2.WhoAmIRequest(), timeout=10)
    if as_json:
        typer.echo(_as_json(who))
        return
    typer.echo(f"{who.principal} (role {who.role}, scope {_scope_text(who.scope)})")
    for g in who.grants:
        scope = _scope_text(g.scope)
        typer.echo(f"  {g.permission}" + (f"  [{scope}]" if scope != "-" else ""))


# -- tokens --------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    role: Annotated[str, typer.Option("--role", "-r", help="viewer, operator, admin or custom.")],
    name: Annotated[str, typer.Option("--name", "-n", help="What the token is for.")],
    scope: Annotated[
        str | None,
        typer.Option("--scope", help="location=<name>[,node=<glob>]: see only that."),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime, e.g. 90d (default: none).")
    ] = None,
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Create an API token and print it (once: only its id is stored)."""
    from google.protobuf.duration_pb2 import Duration
    from vigil.v1 import access_pb2

    from services.core.durations import parse_duration

    request = access_pb2.CreateTokenRequest(name=name, role=role, scope=_scope(scope))
    if expires:
        try:
            seconds = parse_duration(expires)
        except ValueError as exc:
            raise typer.BadParameter(str(exc), param_hint="--expires") from None
        request.ttl.CopyFrom(Duration(seconds=int(seconds)))
    with _stub(scheduler, pki_dir, plaintext, "vigil token create") as stub:
        resp = stub.CreateToken(request, timeout=10)
    typer.echo(
        f"token {resp.token.id} ({name}, role {role}, scope {_scope_text(resp.token.scope)}, "
        f"expires {_when(resp.token.expire_time)}); it is shown only now:",
        err=True,
    )
    typer.echo(resp.secret)


@token_app.command("list")
def token_list(
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show every API token (never the tokens themselves)."""
    from vigil.v1 import access_pb2

    with _stub(scheduler, pki_dir, plaintext, "vigil token list") as stub:
        tokens = _all(
            lambda t: stub.ListTokens(
                access_pb2.ListTokensRequest(page_size=1000, page_token=t), timeout=10
            ),
            "tokens",
        )
    if as_json:
        for t in tokens:
            typer.echo(_as_json(t))
        return
    if not tokens:
        typer.echo("no tokens")
        return
    rows = [("ID", "NAME", "ROLE", "SCOPE", "CREATED", "EXPIRES", "BY")]
    rows += [
        (
            t.id,
            t.name,
            t.role,
            _scope_text(t.scope),
            _when(t.create_time),
            _when(t.expire_time),
            t.created_by,
        )
        for t in tokens
    ]
    _table(rows)


@token_app.command("revoke")
def token_revoke(
    ref: Annotated[str, typer.Argument(help="The token's id or name (a name must be unique).")],
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Revoke an API token; every server refuses it within seconds."""
    from vigil.v1 import access_pb2

    with _stub(scheduler, pki_dir, plaintext, "vigil token revoke") as stub:
        tokens = _all(
            lambda t: stub.ListTokens(
                access_pb2.ListTokensRequest(page_size=1000, page_token=t), timeout=10
            ),
            "tokens",
        )
        matches = [t for t in tokens if ref in (t.id, t.name)]
        if not matches:
            typer.echo(f"vigil token revoke: no token with id or name {ref!r}", err=True)
            raise typer.Exit(1)
        if len(matches) > 1:
            ids = ", ".join(t.id for t in matches)
            typer.echo(
                f"vigil token revoke: {ref!r} names several tokens ({ids}); give an id", err=True
            )
            raise typer.Exit(1)
        stub.RevokeToken(access_pb2.RevokeTokenRequest(id=matches[0].id), timeout=10)
    typer.echo(f"token {matches[0].id} ({matches[0].name}) revoked")


# -- users ---------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    role: Annotated[str, typer.Option("--role", "-r", help="viewer, operator, admin or custom.")],
    password_stdin: PasswordStdinOpt = False,
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Create a user (asks for the password), or reset an existing one's role and password."""
    from vigil.v1 import access_pb2

    password = _password(password_stdin, f"password for {name}", confirm=not password_stdin)
    with _stub(scheduler, pki_dir, plaintext, "vigil users add") as stub:
        user = stub.PutUser(
            access_pb2.PutUserRequest(name=name, role=role, password=password), timeout=15
        )
    typer.echo(f"user {user.name} (role {user.role}) saved")


@users_app.command("set")
def users_set(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    role: Annotated[str | None, typer.Option("--role", "-r", help="A new role.")] = None,
    disabled: Annotated[
        bool | None, typer.Option("--disable/--enable", help="Lock the user out, or let in.")
    ] = None,
    password: Annotated[bool, typer.Option("--password", help="Set a new password.")] = False,
    password_stdin: PasswordStdinOpt = False,
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Change a user's role, password or disabled flag (its sessions end)."""
    from vigil.v1 import access_pb2

    with _stub(scheduler, pki_dir, plaintext, "vigil users set") as stub:
        current = stub.GetUser(access_pb2.GetUserRequest(name=name), timeout=10)
        secret = (
            _password(password_stdin, f"new password for {name}", confirm=not password_stdin)
            if password or password_stdin
            else ""
        )
        user = stub.PutUser(
            access_pb2.PutUserRequest(
                name=name,
                role=role or current.role,
                password=secret,
                disabled=current.disabled if disabled is None else disabled,
            ),
            timeout=15,
        )
    state = "disabled" if user.disabled else "enabled"
    typer.echo(f"user {user.name} (role {user.role}, {state}) saved")


@users_app.command("list")
def users_list(
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show every user."""
    from vigil.v1 import access_pb2

    with _stub(scheduler, pki_dir, plaintext, "vigil users list") as stub:
        users = _all(
            lambda t: stub.ListUsers(
                access_pb2.ListUsersRequest(page_size=1000, page_token=t), timeout=10
            ),
            "users",
        )
    if as_json:
        for u in users:
            typer.echo(_as_json(u))
        return
    if not users:
        typer.echo("no users")
        return
    rows = [("NAME", "ROLE", "STATE", "UPDATED")]
    rows += [
        (u.name, u.role, "disabled" if u.disabled else "enabled", _when(u.update_time))
        for u in users
    ]
    _table(rows)


@users_app.command("rm")
def users_rm(
    name: Annotated[str, typer.Argument(help="The user's name.")],
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Delete a user; its sessions end."""
    from vigil.v1 import access_pb2

    with _stub(scheduler, pki_dir, plaintext, "vigil users rm") as stub:
        stub.DeleteUser(access_pb2.DeleteUserRequest(name=name), timeout=10)
    typer.echo(f"user {name} deleted")


# -- roles ---------------------------------------------------------------------------------


def _grant(text: str) -> access_pb2.Grant:
    """``vigil.v1.Poller/*`` or ``vigil.v1.Poller/*@location=paris,node=web-*``."""
    from vigil.v1 import access_pb2

    permission, _, scope = text.partition("@")
    return access_pb2.Grant(permission=permission.strip(), scope=_scope(scope or None))


@roles_app.command("put")
def roles_put(
    name: Annotated[str, typer.Argument(help="The role's name (lowercase).")],
    grants: Annotated[
        list[str],
        typer.Option(
            "--grant",
            "-g",
            help="PERMISSION[@location=L,node=GLOB], e.g. 'vigil.v1.Poller/*@location=paris'.",
        ),
    ],
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Create or replace a custom role."""
    from vigil.v1 import access_pb2

    role = access_pb2.Role(name=name, grants=[_grant(g) for g in grants])
    with _stub(scheduler, pki_dir, plaintext, "vigil roles put") as stub:
        stub.PutRole(access_pb2.PutRoleRequest(role=role), timeout=10)
    typer.echo(f"role {name} saved ({len(grants)} grant(s))")


@roles_app.command("list")
def roles_list(
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Show the built-in and custom roles with their permissions."""
    from vigil.v1 import access_pb2

    with _stub(scheduler, pki_dir, plaintext, "vigil roles list") as stub:
        roles = stub.ListRoles(access_pb2.ListRolesRequest(), timeout=10).roles
    for r in roles:
        if as_json:
            typer.echo(_as_json(r))
            continue
        typer.echo(f"{r.name}{' (built in)' if r.builtin else ''}")
        for g in r.grants:
            scope = _scope_text(g.scope)
            typer.echo(f"  {g.permission}" + (f"  [{scope}]" if scope != "-" else ""))


@roles_app.command("rm")
def roles_rm(
    name: Annotated[str, typer.Argument(help="The custom role's name.")],
    scheduler: SchedulerOpt = DEFAULT_SCHEDULER,
    pki_dir: PkiDirOpt = None,
    plaintext: PlaintextOpt = False,
) -> None:
    """Delete a custom role that no user or token holds."""
    from vigil.v1 import access_pb2

    with _stub(scheduler, pki_dir, plaintext, "vigil roles rm") as stub:
        stub.DeleteRole(access_pb2.DeleteRoleRequest(name=name), timeout=10)
    typer.echo(f"role {name} deleted")
