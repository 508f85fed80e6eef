"""``vigil users|login|whoami|token|roles|logout`` against the real scheduler."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from services.cli.grpcclient import session_file
from services.cli.main import app
from services.core.natsserver import NatsServer
from tests.access import synced
from tests.helpers import Stack, make_config


@pytest.fixture
async def stack(tmp_path: Path, nats_server: NatsServer) -> AsyncIterator[Stack]:
    cfg = make_config(tmp_path, nats_server.url)
    s = await Stack(cfg, nats_server.url).start(minion_locations=())
    try:
        yield s
    finally:
        await s.stop()


async def vigil(
    *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> tuple[int, str, str]:
    """Run the CLI in a thread (it makes blocking gRPC calls)."""
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), input=stdin, env=env)
    return result.exit_code, result.stdout, result.stderr


async def test_a_user_logs_in_and_an_admin_manages_tokens(stack: Stack) -> None:
    assert stack.scheduler is not None
    at = ["--scheduler", stack.scheduler.grpc_address]
    # The operator certificate (admin by default) creates a user.
    code, out, err = await vigil(
        "users",
        "add",
        "erin",
        "--role",
        "operator",
        "--password-stdin",
        *at,
        stdin="erins-password\n",
    )
    assert code == 0, err
    assert "user erin (role operator) saved" in out
    code, out, err = await vigil("users", "list", *at)
    assert code == 0 and "erin" in out and "operator" in out

    code, out, err = await vigil(
        "login", "--user", "erin", "--password-stdin", *at, stdin="wrong\n"
    )
    assert code == 1 and "UNAUTHENTICATED" in err
    code, out, err = await vigil(
        "login", "--user", "erin", "--password-stdin", *at, stdin="erins-password\n"
    )
    assert code == 0, err
    path = session_file()
    assert path.stat().st_mode & 0o777 == 0o600
    assert "erins-password" not in path.read_text()
    # From now on every command speaks as erin, without flags.
    code, out, err = await vigil("whoami", *at)
    assert code == 0, err
    assert out.startswith("user:erin (role operator")
    code, out, err = await vigil("token", "create", "--role", "viewer", "--name", "grafana", *at)
    assert code == 1 and "PERMISSION_DENIED" in err and "vigil.v1.Access/CreateToken" in err
    code, out, err = await vigil("logout")
    assert code == 0 and not path.exists()

    # Back to the admin certificate: a scoped, expiring token, shown once.
    code, out, err = await vigil(
        "token",
        "create",
        "--role",
        "viewer",
        "--name",
        "grafana",
        "--scope",
        "location=paris",
        "--expires",
        "90d",
        *at,
    )
    assert code == 0, err
    token = out.strip()
    assert token.count(".") == 2  # a JWT
    assert "location=paris" in err
    code, out, err = await vigil("token", "list", *at)
    assert code == 0 and "grafana" in out and "location=paris" in out
    assert token not in out
    await synced(stack)
    code, out, err = await vigil("whoami", *at, env={"VIGIL_TOKEN": token})
    assert code == 0, err
    assert out.startswith("token:grafana (role viewer, scope location=paris)")
    code, out, err = await vigil("token", "revoke", "grafana", *at)
    assert code == 0, err
    code, out, err = await vigil("whoami", *at, env={"VIGIL_TOKEN": token})
    assert code == 1 and "token revoked" in err
    code, out, err = await vigil(
        "token", "create", "--role", "viewer", "--name", "x", "--scope", "planet=mars", *at
    )
    assert code == 2 and "planet=mars" in err


async def test_custom_roles_from_the_cli(stack: Stack) -> None:
    assert stack.scheduler is not None
    at = ["--scheduler", stack.scheduler.grpc_address]
    code, out, err = await vigil(
        "roles",
        "put",
        "paris-ops",
        "--grant",
        "vigil.v1.Poller/*@location=paris",
        "--grant",
        "vigil.v1.Events/Subscribe",
        *at,
    )
    assert code == 0, err
    code, out, err = await vigil("roles", "list", *at)
    assert code == 0
    assert "paris-ops" in out and "vigil.v1.Poller/*  [location=paris]" in out
    assert "viewer (built in)" in out
    code, out, err = await vigil("roles", "put", "bad", "--grant", "vigil.v1.Poller/Nope", *at)
    assert code == 1 and "INVALID_ARGUMENT" in err and "matches no RPC" in err
    code, out, err = await vigil("roles", "rm", "paris-ops", *at)
    assert code == 0, err
    assert os.environ.get("VIGIL_TOKEN") is None
