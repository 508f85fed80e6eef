"""Vigil's built-in PKI: one CA, and a certificate for every identity.

Every link is mutual TLS, so every process and person holds a certificate
from the deployment's CA. The identity a certificate names is the only
identity that counts: the scheduler takes a minion's location and system id
from its certificate, never from what the minion says.

An identity is written into the certificate twice:

- a URI SAN ``vigil://<role>/<name>``, and for a minion
  ``vigil://minion/<location>/<system_id>``, which Vigil's own servers read
  (:func:`identity_of`);
- the subject, ``CN=<name>,OU=<role>[.<location>],O=Vigil``, unique per
  identity, which nats-server maps to a user with its permissions
  (``verify_and_map``).

Files, in one directory (``.vigil/pki`` for the embedded deployment):
``ca.pem`` and ``ca-key.pem`` (the CA; its key never leaves this directory),
``<stem>.pem`` and ``<stem>-key.pem`` per identity (:attr:`Identity.stem`),
``revoked.json`` (serial numbers no longer accepted, see :func:`revoke`).
Keys are ECDSA P-256, written with mode 0600.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from services.core.ids import LOCATION_RE, NODE_ID_RE

Role = Literal["scheduler", "events", "minion", "operator", "nats"]
ROLES: tuple[Role, ...] = ("scheduler", "events", "minion", "operator", "nats")

URI_SCHEME = "vigil"
ORGANIZATION = "Vigil"
CA_DAYS = 3650
#: Leaf certificates live a year by default; :func:`needs_renewal` says when to renew.
LEAF_DAYS = 365
#: A certificate is renewed once less than this much of its life is left.
RENEW_BEFORE = dt.timedelta(days=30)

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class PkiError(Exception):
    """A PKI operation cannot be done; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a certificate speaks for.

    ``name`` is the system id for a minion, else a free name (``scheduler``,
    ``alice``, ``grafana``). ``location`` is set for minions only.
    """

    role: Role
    name: str
    location: str | None = None

    def __post_init__(self) -> None:
        if self.role not in ROLES:
            raise PkiError(f"unknown role {self.role!r} (one of {', '.join(ROLES)})")
        if self.role == "minion":
            if self.location is None or not LOCATION_RE.fullmatch(self.location):
                raise PkiError(f"a minion needs a valid location, not {self.location!r}")
            if not NODE_ID_RE.fullmatch(self.name):
                raise PkiError(f"{self.name!r} is not a valid system id")
        else:
            if self.location is not None:
                raise PkiError(f"only a minion has a location ({self.role} {self.name!r})")
            if not _NAME_RE.fullmatch(self.name):
                raise PkiError(
                    f"{self.name!r} is not a valid name (letters, digits, '-', '_', '.')"
                )

    @classmethod
    def minion(cls, location: str, system_id: str) -> Identity:
        """A minion of ``location`` with ``system_id``."""
        return cls("minion", system_id, location)

    @property
    def uri(self) -> str:
        """``vigil://<role>/<name>`` or ``vigil://minion/<location>/<system_id>``."""
        if self.role == "minion":
            return f"{URI_SCHEME}://minion/{self.location}/{self.name}"
        return f"{URI_SCHEME}://{self.role}/{self.name}"

    @property
    def unit(self) -> str:
        """The subject's OU: the role, and for a minion its location (``minion.paris``)."""
        return f"minion.{self.location}" if self.role == "minion" else self.role

    @property
    def subject(self) -> str:
        """The subject as RFC 4514 text (what nats-server's ``verify_and_map`` matches)."""
        return f"CN={self.name},OU={self.unit},O={ORGANIZATION}"

    @property
    def stem(self) -> str:
        """File name stem: ``scheduler``, ``operator``, ``minion-paris-paris-1``, ..."""
        if self.role == "minion":
            return f"minion-{self.location}-{self.name}"
        if self.name == self.role:
            return self.role
        return f"{self.role}-{self.name}"

    def __str__(self) -> str:
        return self.uri


def parse_uri(uri: str) -> Identity | None:
    """The identity a ``vigil://`` URI names, or ``None`` if it is not one."""
    m = re.fullmatch(rf"{URI_SCHEME}://([a-z]+)/([^/]+)(?:/([^/]+))?", uri)
    if not m:
        return None
    role, first, second = m.groups()
    try:
        if role == "minion":
            return Identity.minion(first, second) if second else None
        return None if second else Identity(role, first)  # type: ignore[arg-type]
    except PkiError:
        return None


def identity_of(cert: x509.Certificate | bytes) -> Identity | None:
    """The identity in a certificate's URI SAN (``None`` when it carries none, or several)."""
    if isinstance(cert, bytes):
        cert = x509.load_pem_x509_certificate(cert)
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    found = {
        i for u in san.get_values_for_type(x509.UniformResourceIdentifier) if (i := parse_uri(u))
    }
    return found.pop() if len(found) == 1 else None


@dataclass(frozen=True, slots=True)
class Issued:
    """Where an identity's certificate and key were written."""

    identity: Identity
    cert: Path
    key: Path
    serial: int
    not_after: dt.datetime


class Pki:
    """The CA directory: create the CA, issue, renew and revoke certificates."""

    def __init__(self, directory: str | Path) -> None:
        self.dir = Path(directory)

    # --- files ------------------------------------------------------------------

    @property
    def ca_cert_path(self) -> Path:
        """The CA certificate, which every party trusts."""
        return self.dir / "ca.pem"

    @property
    def ca_key_path(self) -> Path:
        """The CA key (only ``vigil ca`` reads it)."""
        return self.dir / "ca-key.pem"

    @property
    def revoked_path(self) -> Path:
        """The deny list: serial numbers (hex) that are no longer accepted."""
        return self.dir / "revoked.json"

    def cert_path(self, identity: Identity) -> Path:
        """Where ``identity``'s certificate lives."""
        return self.dir / f"{identity.stem}.pem"

    def key_path(self, identity: Identity) -> Path:
        """Where ``identity``'s key lives."""
        return self.dir / f"{identity.stem}-key.pem"

    def exists(self) -> bool:
        """Whether the CA has been created."""
        return self.ca_cert_path.exists() and self.ca_key_path.exists()

    # --- the CA -----------------------------------------------------------------

    def init(self, *, force: bool = False) -> Path:
        """Create the CA (refuses to replace one unless ``force``); returns ``ca.pem``."""
        if self.exists() and not force:
            raise PkiError(f"{self.dir}: a CA exists already (ca.pem); refusing to replace it")
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                x509.NameAttribute(NameOID.COMMON_NAME, "Vigil CA"),
            ]
        )
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        _write_key(self.ca_key_path, key)
        write_atomic(self.ca_cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return self.ca_cert_path

    def ca_cert(self) -> x509.Certificate:
        """The CA certificate."""
        try:
            return x509.load_pem_x509_certificate(self.ca_cert_path.read_bytes())
        except OSError as exc:
            raise PkiError(f"{self.ca_cert_path}: cannot read the CA ({exc.strerror})") from None

    def _ca_key(self) -> ec.EllipticCurvePrivateKey:
        try:
            key = serialization.load_pem_private_key(self.ca_key_path.read_bytes(), None)
        except OSError as exc:
            raise PkiError(f"{self.ca_key_path}: cannot read the CA key ({exc.strerror})") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise PkiError(f"{self.ca_key_path}: not an ECDSA key")
        return key

    # --- certificates -----------------------------------------------------------

    def issue(
        self, identity: Identity, *, hosts: Sequence[str] = (), days: int = LEAF_DAYS
    ) -> Issued:
        """Issue a certificate and key for ``identity`` (replacing any earlier one).

        ``hosts`` are the DNS names and IP addresses a server is reached at;
        scheduler, events and nats certificates get ``localhost``, 127.0.0.1
        and ::1 besides.
        """
        if days < 1 or days > CA_DAYS:
            raise PkiError(f"days must be between 1 and {CA_DAYS}")
        ca_cert, ca_key = self.ca_cert(), self._ca_key()
        key = ec.generate_private_key(ec.SECP256R1())
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(identity.uri)]
        server = identity.role in ("scheduler", "events", "nats")
        all_hosts = [*hosts, *(("localhost", "127.0.0.1", "::1") if server else ())]
        for host in dict.fromkeys(all_hosts):
            names.append(_host_name(host))
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.append(ExtendedKeyUsageOID.SERVER_AUTH)
        now = _now()
        not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name(
                    [
                        x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION),
                        x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.unit),
                        x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
                    ]
                )
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        key_path, cert_path = self.key_path(identity), self.cert_path(identity)
        _write_key(key_path, key)
        write_atomic(cert_path, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return Issued(identity, cert_path, key_path, cert.serial_number, not_after)

    def load(self, identity: Identity) -> x509.Certificate | None:
        """``identity``'s current certificate, if one was issued here."""
        try:
            return x509.load_pem_x509_certificate(self.cert_path(identity).read_bytes())
        except (OSError, ValueError):
            return None

    def ensure(
        self, identity: Identity, *, hosts: Sequence[str] = (), days: int = LEAF_DAYS
    ) -> Issued:
        """``identity``'s certificate, issued or renewed when missing, revoked or near expiry."""
        cert = self.load(identity)
        if (
            cert is not None
            and self.key_path(identity).exists()
            and not needs_renewal(cert)
            and not self.is_revoked(cert.serial_number)
            and identity_of(cert) == identity
            and _covers(cert, hosts)
        ):
            return Issued(
                identity,
                self.cert_path(identity),
                self.key_path(identity),
                cert.serial_number,
                cert.not_valid_after_utc,
            )
        return self.issue(identity, hosts=hosts, days=days)

    def identities(self) -> list[tuple[Identity, x509.Certificate]]:
        """Every identity with a certificate in this directory, and that certificate."""
        found = []
        for path in sorted(self.dir.glob("*.pem")):
            if path.name == "ca.pem" or path.name.endswith("-key.pem"):
                continue
            try:
                cert = x509.load_pem_x509_certificate(path.read_bytes())
            except ValueError:
                continue
            identity = identity_of(cert)
            if identity is not None and self.cert_path(identity) == path:
                found.append((identity, cert))
        return found

    # --- revocation ---------------------------------------------------------------

    def revoked(self) -> frozenset[int]:
        """Serial numbers no longer accepted."""
        return read_revoked(self.revoked_path)

    def is_revoked(self, serial: int) -> bool:
        """Whether ``serial`` is on the deny list."""
        return serial in self.revoked()

    def revoke(self, identity: Identity) -> int:
        """Put ``identity``'s current certificate on the deny list; returns its serial."""
        cert = self.load(identity)
        if cert is None:
            raise PkiError(f"no certificate for {identity} in {self.dir}")
        serials = set(self.revoked()) | {cert.serial_number}
        write_atomic(
            self.revoked_path,
            (json.dumps({"revoked": sorted(f"{s:x}" for s in serials)}, indent=2) + "\n").encode(),
            0o644,
        )
        return cert.serial_number


def read_revoked(path: str | Path) -> frozenset[int]:
    """The serials in a ``revoked.json`` deny list (empty when there is none)."""
    try:
        data = json.loads(Path(path).read_text())
        return frozenset(int(s, 16) for s in data.get("revoked", []))
    except FileNotFoundError:
        return frozenset()
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        raise PkiError(f"{path}: not a deny list ({exc})") from None


def needs_renewal(cert: x509.Certificate, now: dt.datetime | None = None) -> bool:
    """Whether less than :data:`RENEW_BEFORE` of ``cert``'s life is left."""
    return cert.not_valid_after_utc - (now or _now()) < RENEW_BEFORE


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 fingerprint, hex, for logs and listings."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _covers(cert: x509.Certificate, hosts: Iterable[str]) -> bool:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return not list(hosts)
    have = {str(v) for v in san.get_values_for_type(x509.DNSName)} | {
        str(v) for v in san.get_values_for_type(x509.IPAddress)
    }
    return all(str(_host_value(h)) in have for h in hosts)


def _host_value(host: str) -> str | ipaddress.IPv4Address | ipaddress.IPv6Address:
    try:
        return ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return host


def _host_name(host: str) -> x509.GeneralName:
    value = _host_value(host)
    if isinstance(value, str):
        if not re.fullmatch(r"[A-Za-z0-9*]([A-Za-z0-9.-]{0,252})", value):
            raise PkiError(f"{host!r} is not a host name or IP address")
        return x509.DNSName(value)
    return x509.IPAddress(value)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` with ``mode``, through a rename: no reader sees half a file."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    write_atomic(
        path,
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ),
        0o600,
    )
