"""How the CLI reaches Vigil's gRPC servers: as an operator, with mutual TLS.

The operator's certificate is found without flags where ``make run`` / ``vigil
ca`` put it: ``ca.pem``, ``operator.pem`` and ``operator-key.pem`` in
``.vigil/pki`` (or ``--pki-dir``, or ``$VIGIL_PKI_DIR``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
    import grpc

DEFAULT_PKI_DIR = Path(".vigil/pki")

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
    return grpc.secure_channel(address, operator_credentials(pki_dir, command))
