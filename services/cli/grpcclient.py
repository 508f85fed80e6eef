"""How the CLI reaches Vigil's gRPC servers: TLS, a certificate, and a bearer token.

The operator's certificate is found without flags where ``make run`` / ``vigil
ca`` put it: ``ca.pem``, ``operator.pem`` and ``operator-key.pem`` in
``.vigil/pki`` (or ``--pki-dir``, or ``$VIGIL_PKI_DIR``).

A bearer token, when one is found, goes with every call (it then decides who
the caller is), the first of:

1. ``$VIGIL_TOKEN``;
2. the session ``vigil login`` keeps in ``$XDG_CONFIG_HOME/vigil/token``
   (``~/.config/vigil/token``);
3. ``.vigil/admin.token`` (or ``$VIGIL_ADMIN_TOKEN_FILE``), which ``make run``
   / ``vigil up`` writes.

Without an operator certificate but with a token, the CLI connects with TLS
alone (the CA only): point it at a server's token port (``probe_listen``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import grpc

DEFAULT_PKI_DIR = Path(".vigil/pki")
#: Where ``vigil up`` writes the embedded deployment's admin token.
ADMIN_TOKEN_FILE = Path(".vigil/admin.token")
TOKEN_ENV = "VIGIL_TOKEN"
#: Another place for the admin token file than :data:`ADMIN_TOKEN_FILE`.
ADMIN_TOKEN_ENV = "VIGIL_ADMIN_TOKEN_FILE"


def session_file() -> Path:
    """Where ``vigil login`` keeps its session token (the user's config directory)."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "vigil" / "token"


def find_token() -> tuple[str, str] | None:
    """The bearer token to send and where it came from, ``None`` without one."""
    env = os.environ.get(TOKEN_ENV, "").strip()
    if env:
        return env, f"${TOKEN_ENV}"
    admin = Path(os.environ.get(ADMIN_TOKEN_ENV) or ADMIN_TOKEN_FILE)
    for path in (session_file(), admin):
        try:
            text = path.read_text().strip()
        except OSError:
            continue
        if text:
            return text, str(path)
    return None


PkiDirOpt = Annotated[
    Path | None,
    typer.Option(
        "--pki-dir",
        envvar="VIGIL_PKI_DIR",
        help="Where ca.pem, operator.pem and operator-key.pem are (default: .vigil/pki).",
        show_default=False,
    ),
]
PlaintextOpt = Annotated[
    bool,
    typer.Option(
        "--plaintext",
        help="INSECURE: no TLS, for a server in plaintext_loopback_dev mode (loopback only).",
    ),
]


def operator_credentials(pki_dir: Path | None, command: str) -> grpc.ChannelCredentials:
    """The operator's mutual-TLS channel credentials; exits (code 2) naming what is missing."""
    from services.core.tls import TlsError, TlsMaterial

    directory = pki_dir or DEFAULT_PKI_DIR
    try:
        material = TlsMaterial.load(
            directory / "ca.pem", directory / "operator.pem", directory / "operator-key.pem"
        )
    except TlsError as exc:
        typer.echo(
            f"{command}: {exc}\n  (an operator certificate: `vigil ca issue operator`; "
            "another directory: --pki-dir or VIGIL_PKI_DIR)",
            err=True,
        )
        raise typer.Exit(2) from None
    return material.channel_credentials()


def open_channel(
    address: str, pki_dir: Path | None, *, plaintext: bool = False, command: str = "vigil"
) -> grpc.Channel:
    """A blocking channel to ``address`` as the operator (``plaintext``: loopback only)."""
    import grpc

    if plaintext:
        from services.core.tls import TlsError, require_loopback

        try:
            require_loopback({"--plaintext": address})
        except TlsError as exc:
            typer.echo(f"{command}: {exc}", err=True)
            raise typer.Exit(2) from None
        return grpc.insecure_channel(address)
    token = find_token()
    directory = pki_dir or DEFAULT_PKI_DIR
    if token is not None and not (directory / "operator.pem").exists():
        # A person or tool with a token and no certificate: TLS to the token port.
        try:
            ca = (directory / "ca.pem").read_bytes()
        except OSError as exc:
            typer.echo(f"{command}: cannot read the CA certificate: {exc}", err=True)
            raise typer.Exit(2) from None
        tls = grpc.ssl_channel_credentials(root_certificates=ca)
    else:
        tls = operator_credentials(pki_dir, command)
    if token is None:
        return grpc.secure_channel(address, tls)
    creds = grpc.composite_channel_credentials(tls, grpc.access_token_call_credentials(token[0]))
    return grpc.secure_channel(address, creds)
