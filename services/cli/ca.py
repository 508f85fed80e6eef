"""``vigil ca``: the operator's side of the deployment's PKI.

The CA lives in one directory (``.vigil/pki`` by default, ``$VIGIL_PKI_DIR``
or ``--dir``); :mod:`services.core.pki` does the cryptography, this module is
the command line around it: create the CA, issue, list, revoke and renew
certificates, write a site's bundle, and write nats-server's configuration.

Every command prints where it wrote what and which identity a certificate
names, never a key. Every failure is one line on stderr and exit code 2.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, cast

import typer
import yaml
from cryptography import x509

from services.core.config import MinionConfig
from services.core.durations import format_duration, parse_duration
from services.core.pki import (
    LEAF_DAYS,
    ROLES,
    Identity,
    Issued,
    Pki,
    PkiError,
    Role,
    fingerprint,
    parse_uri,
    write_atomic,
)

app = typer.Typer(
    name="ca",
    help="The deployment's certificate authority: init, issue, bundle, list, revoke, renew, "
    "nats-config (docs/security.md).",
    no_args_is_help=True,
)

DEFAULT_DIR = Path(".vigil/pki")
#: What the minion's own files are called inside a bundle directory.
BUNDLE_CONFIG = "minion.yaml"

DirOpt = Annotated[
    Path,
    typer.Option(
        "--dir",
        envvar="VIGIL_PKI_DIR",
        help="The CA directory (default: $VIGIL_PKI_DIR, .vigil/pki).",
    ),
]
DaysOpt = Annotated[
    str, typer.Option("--days", help=f"Lifetime of the certificate in days (default {LEAF_DAYS}).")
]
HostsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--host",
        help="A DNS name or IP address the server is reached at (repeat; localhost is implied).",
    ),
]


class CaError(Exception):
    """A ``vigil ca`` command cannot do what was asked; the message says why."""


# Required values and numbers are checked here rather than by Click, whose usage
# errors are a multi-line panel: every error of `vigil ca` is one line, exit code 2.


def required(**values: str | None) -> list[str]:
    """The values, in order; :class:`CaError` naming the first one missing."""
    for name, value in values.items():
        if not value:
            what = name if name.startswith("--") else name.upper()
            raise CaError(f"missing {what} (see --help)")
    return [v for v in values.values() if v]


def whole_number(option: str, text: str) -> int:
    """``text`` as an integer; :class:`CaError` naming ``option`` otherwise."""
    try:
        return int(text)
    except ValueError:
        raise CaError(f"{option} {text!r}: not a whole number") from None


def fail(message: str) -> typer.Exit:
    """Print ``message`` as one line on stderr; the caller raises the returned exit (code 2)."""
    typer.echo(f"vigil ca: {' '.join(message.split())}", err=True)
    return typer.Exit(2)


@contextmanager
def _errors() -> Iterator[None]:
    """Every expected failure becomes one line and exit code 2, never a traceback."""
    from services.core.tls import TlsError

    try:
        yield
    except (CaError, PkiError, TlsError) as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        raise fail(f"{where}{exc.strerror or exc}") from None


def _pki(directory: Path, *, need_ca: bool = True) -> Pki:
    pki = Pki(directory)
    if need_ca and not pki.exists():
        raise CaError(
            f"{directory}: no CA here (create one with `vigil ca init --dir {directory}`)"
        )
    return pki


def _when(t: dt.datetime) -> str:
    return t.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M UTC")


def identity_for(
    role: str, name: str | None = None, location: str | None = None, system_id: str | None = None
) -> Identity:
    """The identity ``vigil ca issue ROLE ...`` means; raises :class:`CaError` on a bad mix."""
    if role not in ROLES:
        raise CaError(f"unknown role {role!r} (one of {', '.join(ROLES)})")
    if role == "minion":
        if name is not None:
            raise CaError("a minion is named by --location and --system-id, not --name")
        if not location or not system_id:
            raise CaError("a minion needs --location and --system-id")
        return Identity.minion(location, system_id)
    if location is not None or system_id is not None:
        raise CaError(f"--location and --system-id are for minions only, not {role}")
    return Identity(cast(Role, role), name or role)


#: nats-server knows its users from its configuration, written from this directory.
NATS_HINT = (
    "  NATS admits a new identity once its configuration is regenerated and reloaded: "
    "vigil ca nats-config --dir {dir} --out FILE ... && nats-server --signal reload "
    "(vigil up does both itself)"
)


def _report(verb: str, issued: Issued) -> None:
    typer.echo(
        f"{verb} {issued.identity} (serial {issued.serial:x}, expires {_when(issued.not_after)})"
    )
    typer.echo(f"  certificate: {issued.cert}")
    typer.echo(f"  key:         {issued.key} (mode 0600; keep it on the machine that uses it)")


# --- init ---------------------------------------------------------------------------


@app.command("init")
def init(
    directory: DirOpt = DEFAULT_DIR,
    exist_ok: Annotated[
        bool,
        typer.Option("--exist-ok", help="A CA already there is fine (keep it, change nothing)."),
    ] = False,
) -> None:
    """Create the CA (ca.pem, ca-key.pem). Refuses to replace an existing one."""
    with _errors():
        pki = Pki(directory)
        if pki.exists() and exist_ok:
            typer.echo(f"CA exists: {pki.ca_cert_path} (kept)")
            return
        path = pki.init()
        cert = pki.ca_cert()
        typer.echo(f"created the CA: {path} (expires {_when(cert.not_valid_after_utc)})")
        typer.echo(f"  its key: {pki.ca_key_path} (mode 0600; it never leaves this directory)")
        typer.echo(f"  sha256:  {fingerprint(cert)}")


# --- issue ----------------------------------------------------------------------------


@app.command("issue")
def issue(
    role: Annotated[
        str | None, typer.Argument(help="scheduler, events, nats, operator or minion.")
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="The identity's name (default: the role).")
    ] = None,
    hosts: HostsOpt = None,
    days: DaysOpt = str(LEAF_DAYS),
    location: Annotated[str | None, typer.Option("--location", help="A minion's location.")] = None,
    system_id: Annotated[
        str | None, typer.Option("--system-id", help="A minion's system id.")
    ] = None,
    ensure: Annotated[
        bool,
        typer.Option(
            "--ensure",
            help="Only if missing, revoked, near expiry or not covering --host (idempotent).",
        ),
    ] = False,
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Issue a certificate and key for an identity (replacing the file of an earlier one)."""
    with _errors():
        identity = identity_for(required(role=role)[0], name, location, system_id)
        lifetime = whole_number("--days", days)
        pki = _pki(directory)
        if ensure:
            before = pki.load(identity)
            issued = pki.ensure(identity, hosts=hosts or (), days=lifetime)
            fresh = before is None or before.serial_number != issued.serial
            _report("issued" if fresh else "kept", issued)
        else:
            _report("issued", pki.issue(identity, hosts=hosts or (), days=lifetime))
        if identity.role in ("minion", "operator", "scheduler", "events"):
            typer.echo(NATS_HINT.format(dir=directory))


# --- bundle ---------------------------------------------------------------------------


@app.command("bundle")
def bundle(
    role: Annotated[str | None, typer.Argument(help="minion (a site's bundle).")] = None,
    location: Annotated[
        str | None, typer.Option("--location", help="The minion's location (required).")
    ] = None,
    system_id: Annotated[
        str | None, typer.Option("--system-id", help="The minion's system id (required).")
    ] = None,
    nats: Annotated[
        str | None,
        typer.Option("--nats", help="NATS URL as the site reaches it (tls://host:4222; required)."),
    ] = None,
    scheduler: Annotated[
        str | None,
        typer.Option(
            "--scheduler", help="The scheduler's gRPC host:port as the site reaches it (required)."
        ),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="The directory to write (new or empty; required).")
    ] = None,
    days: DaysOpt = str(LEAF_DAYS),
    absolute: Annotated[
        bool,
        typer.Option(
            "--absolute",
            help="Write absolute paths in minion.yaml (default: relative to the bundle "
            "directory, so it can be copied anywhere; `vigil minion --bundle DIR` resolves them).",
        ),
    ] = False,
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Write everything a site needs into one directory: CA, cert, key, minion.yaml."""
    with _errors():
        if required(role=role)[0] != "minion":
            raise CaError(f"only a minion has a bundle, not {role!r}")
        given = required(
            **{"--location": location, "--system-id": system_id, "--nats": nats},
            **{"--scheduler": scheduler, "--out": str(out) if out else None},
        )
        assert out is not None and nats is not None and scheduler is not None
        identity = Identity.minion(*given[:2])
        lifetime = whole_number("--days", days)
        pki = _pki(directory)
        files = write_bundle(
            pki, identity, out, nats=nats, scheduler=scheduler, days=lifetime, absolute=absolute
        )
        typer.echo(f"bundle for {identity} in {out}:")
        for what, path in files.items():
            typer.echo(f"  {what + ':':<12} {path}")
        typer.echo(f"copy {out} to the site, then run: vigil minion --bundle {out.name or out}")
        typer.echo(NATS_HINT.format(dir=directory))


def write_bundle(
    pki: Pki,
    identity: Identity,
    out: Path,
    *,
    nats: str,
    scheduler: str,
    days: int = LEAF_DAYS,
    absolute: bool = False,
) -> dict[str, Path]:
    """Issue ``identity`` a certificate and write a site's bundle into ``out``; returns the files.

    The configuration is validated before anything is written, so a bad NATS
    URL or scheduler address leaves no half bundle behind.
    """
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise CaError(f"{out}: exists and is not an empty directory; refusing to overwrite")
    base = out.resolve() if absolute else Path()
    ca_name, cert_name, key_name = "ca.pem", f"{identity.stem}.pem", f"{identity.stem}-key.pem"
    document: dict[str, Any] = {
        "pki": {
            "ca": str(base / ca_name),
            "cert": str(base / cert_name),
            "key": str(base / key_name),
        },
        "nats": {"url": nats},
        "minion": {
            "location": identity.location,
            "system_id": identity.name,
            "scheduler": scheduler,
        },
    }
    _validate_minion(document, out / BUNDLE_CONFIG)
    if not nats.startswith(("tls://", "wss://")):
        raise CaError(f"--nats {nats!r}: a site talks to NATS over TLS (tls://host:4222)")
    issued = pki.issue(identity, days=days)
    out.mkdir(parents=True, exist_ok=True)
    os.chmod(out, 0o700)
    _copy(pki.ca_cert_path, out / ca_name, 0o644)
    _copy(issued.cert, out / cert_name, 0o644)
    _copy(issued.key, out / key_name, 0o600)
    header = (
        f"# Vigil minion {identity.name} at location {identity.location}, written by "
        f"`vigil ca bundle` on {_when(dt.datetime.now(dt.UTC))}.\n"
        "# The minion's identity is its certificate; location and system_id must agree with it.\n"
        "# Relative paths are relative to this directory: start with `vigil minion --bundle DIR`.\n"
    )
    config = out / BUNDLE_CONFIG
    _write_text(config, header + yaml.safe_dump(document, sort_keys=False), 0o644)
    return {
        "ca": out / ca_name,
        "certificate": out / cert_name,
        "key": out / key_name,
        "config": config,
    }


def _validate_minion(document: dict[str, Any], source: Path) -> None:
    from services.core.config import ConfigError, parse_document

    try:
        parse_document(MinionConfig, document, str(source), env={})
    except ConfigError as exc:
        raise CaError(str(exc)) from None


def resolve_bundle(cfg: MinionConfig, bundle_dir: Path) -> MinionConfig:
    """``cfg`` (read from ``bundle_dir``/minion.yaml) with relative pki paths made absolute.

    A bundle names its files relative to its own directory, so it can be
    copied anywhere; ``vigil minion --bundle DIR`` resolves them against DIR.
    """
    updates = {
        key: str(bundle_dir / value)
        for key in ("ca", "cert", "key")
        if (value := getattr(cfg.pki, key)) is not None and not Path(value).is_absolute()
    }
    return cfg.model_copy(update={"pki": cfg.pki.model_copy(update=updates)})


# --- list -----------------------------------------------------------------------------


def _state(cert: x509.Certificate, revoked: frozenset[int], now: dt.datetime) -> str:
    if cert.serial_number in revoked:
        return "revoked"
    left = cert.not_valid_after_utc - now
    if left <= dt.timedelta(0):
        return "expired"
    if left < dt.timedelta(days=30):
        return f"renew (in {format_duration(left.total_seconds())})"
    return "valid"


@app.command("list")
def list_(
    directory: DirOpt = DEFAULT_DIR,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Every identity with a certificate here: serial, expiry, revoked or not."""
    with _errors():
        pki = _pki(directory, need_ca=False)
        if not pki.ca_cert_path.exists():
            raise CaError(f"{directory}: no CA here (create one with `vigil ca init`)")
        revoked = pki.revoked()
        now = dt.datetime.now(dt.UTC)
        rows = []
        for identity, cert in pki.identities():
            rows.append(
                {
                    "identity": str(identity),
                    "file": pki.cert_path(identity).name,
                    "serial": f"{cert.serial_number:x}",
                    "expires": _when(cert.not_valid_after_utc),
                    "state": _state(cert, revoked, now),
                }
            )
        if as_json:
            for row in rows:
                typer.echo(json.dumps(row))
            return
        if not rows:
            typer.echo(f"no certificates in {directory} (issue one with `vigil ca issue`)")
            return
        headers = {k: k.upper() for k in rows[0]}
        widths = {k: max(len(headers[k]), *(len(r[k]) for r in rows)) for k in headers}
        for row in [headers, *rows]:
            typer.echo("  ".join(row[k].ljust(widths[k]) for k in headers).rstrip())
        if revoked - {int(r["serial"], 16) for r in rows}:
            typer.echo(
                f"(and {len(revoked - {int(r['serial'], 16) for r in rows})} revoked serials of replaced certificates)"
            )


# --- revoke ---------------------------------------------------------------------------


def find_identity(pki: Pki, target: str) -> Identity:
    """The identity ``target`` names: a file stem, a file name or a ``vigil://`` URI."""
    known = pki.identities()
    by_uri = parse_uri(target)
    stem = target.removesuffix(".pem")
    for identity, _cert in known:
        if identity == by_uri or identity.stem == stem:
            return identity
    listed = ", ".join(i.stem for i, _ in known) or "none"
    raise CaError(f"no certificate for {target!r} in {pki.dir} (known: {listed})")


def revocation_note(directory: Path) -> str:
    """What the running services do about a revocation, with their documented bounds."""
    from services.core.grpcauth import REVOKED_CUT_WITHIN, REVOKED_REFRESH

    return (
        f"the scheduler and the event service re-read revoked.json every {REVOKED_REFRESH:g}s: "
        f"they refuse new calls with it from then on and cut its open streams within "
        f"{REVOKED_CUT_WITHIN:g}s (UNAUTHENTICATED). NATS needs its configuration regenerated "
        f"and reloaded: vigil ca nats-config --dir {directory} --out FILE ... && "
        "nats-server --signal reload (vigil up does both itself)"
    )


@app.command("revoke")
def revoke(
    target: Annotated[
        str | None,
        typer.Argument(help="The file stem (minion-paris-paris-1) or vigil:// identity."),
    ] = None,
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Put an identity's current certificate on the deny list (revoked.json)."""
    with _errors():
        pki = _pki(directory)
        identity = find_identity(pki, required(target=target)[0])
        cert = pki.load(identity)
        if cert is not None and pki.is_revoked(cert.serial_number):
            typer.echo(f"{identity}: serial {cert.serial_number:x} is revoked already")
            return
        serial = pki.revoke(identity)
        typer.echo(f"revoked {identity} (serial {serial:x}), in {pki.revoked_path}")
        typer.echo(revocation_note(directory))


# --- renew ----------------------------------------------------------------------------


def hosts_of(cert: x509.Certificate) -> list[str]:
    """The DNS names and IP addresses a certificate covers (kept on renewal)."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(v) for v in san.get_values_for_type(x509.DNSName)] + [
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    ]


def lifetime_days(cert: x509.Certificate) -> int:
    """A certificate's lifetime in whole days (a renewal keeps it)."""
    life = cert.not_valid_after_utc - cert.not_valid_before_utc
    return max(1, round(life / dt.timedelta(days=1)))


def _duration(text: str) -> dt.timedelta:
    try:
        return dt.timedelta(seconds=parse_duration(text))
    except ValueError as exc:
        raise CaError(f"--within {text!r}: {exc}") from None


@app.command("renew")
def renew(
    within: Annotated[
        str, typer.Option("--within", help="Renew what expires within this long (30d, 12h).")
    ] = "30d",
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Re-issue every certificate that expires soon (same identity, hosts and lifetime)."""
    with _errors():
        window = _duration(within)
        pki = _pki(directory)
        revoked = pki.revoked()
        now = dt.datetime.now(dt.UTC)
        renewed = 0
        for identity, cert in pki.identities():
            if cert.not_valid_after_utc - now >= window:
                continue
            if cert.serial_number in revoked:
                typer.echo(f"skipped {identity}: revoked (give it a new one with `vigil ca issue`)")
                continue
            _report("renewed", pki.issue(identity, hosts=hosts_of(cert), days=lifetime_days(cert)))
            renewed += 1
        if not renewed:
            typer.echo(f"nothing to renew: every certificate has more than {within} left")
        else:
            typer.echo(
                "minions present a renewed certificate from their next session, without a "
                "restart; restart the scheduler and the event service to serve theirs, and "
                "reload nats-server (nats-server --signal reload) for its own"
            )


# --- nats-config ----------------------------------------------------------------------


@app.command("nats-config")
def nats_config(
    out: Annotated[
        Path | None, typer.Option("--out", help="Where to write the nats-server config (required).")
    ] = None,
    host: Annotated[
        str, typer.Option("--host", help="Address nats-server listens on.")
    ] = "127.0.0.1",
    port: Annotated[str, typer.Option("--port", help="Client port.")] = "4222",
    store_dir: Annotated[
        Path, typer.Option("--store-dir", help="JetStream storage directory.")
    ] = Path(".vigil/nats"),
    http: Annotated[
        str | None,
        typer.Option(
            "--http",
            help="Serve nats-server's monitoring page (plain HTTP, /healthz) on this host:port; "
            "keep it on loopback (default: none).",
        ),
    ] = None,
    directory: DirOpt = DEFAULT_DIR,
) -> None:
    """Write nats-server's configuration: TLS, verify_and_map, a user per identity here."""
    from services.core import natsauth

    with _errors():
        required(**{"--out": str(out) if out else None})
        assert out is not None
        number = whole_number("--port", port)
        if not 0 < number < 65536:
            raise CaError(f"--port {port}: not a port number (1-65535)")
        pki = _pki(directory, need_ca=False)
        if not pki.ca_cert_path.exists():
            raise CaError(f"{directory}: no ca.pem here (create the CA with `vigil ca init`)")
        if not pki.cert_path(Identity("nats", "nats")).exists():
            raise CaError(
                f"{directory}: no certificate for nats-server "
                "(issue it with `vigil ca issue nats --host <its host name>`)"
            )
        text = natsauth.server_config(pki, host=host, port=number, store_dir=store_dir)
        if http is not None:
            text = with_monitoring(text, http)
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_text(out, text if text.endswith("\n") else text + "\n", 0o644)
        # Identities only: the server's list also holds a sentinel user no certificate maps to.
        users = sum(1 for u in natsauth.users(pki) if u is not natsauth.SENTINEL_USER)
        typer.echo(f"wrote {out}: TLS on {host}:{port}, {users} identities from {directory}")
        typer.echo("a running nats-server takes it on reload: nats-server --signal reload")


def with_monitoring(config: str, http: str) -> str:
    """``config`` (nats-server's, in JSON) with its monitoring page on ``http`` (host:port)."""
    from pydantic import TypeAdapter, ValidationError

    from services.core.config import HostPort

    try:
        TypeAdapter(HostPort).validate_python(http)
    except ValidationError as exc:
        raise CaError(f"--http {http!r}: {exc.errors()[0]['msg']}") from None
    document = json.loads(config)
    document["http"] = http
    return json.dumps(document, indent=2) + "\n"


# --- files ----------------------------------------------------------------------------


def _write_text(path: Path, text: str, mode: int) -> None:
    # Through a rename: a reader (nats-server reloading, a minion starting) never sees half.
    write_atomic(path, text.encode(), mode)


def _copy(src: Path, dst: Path, mode: int) -> None:
    _write_text(dst, src.read_text(), mode)
