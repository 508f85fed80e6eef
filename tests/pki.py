"""The test suite's PKI: one CA for the whole run, certificates on demand.

Every link in the suite runs with mutual TLS, as in production. The session
fixture in tests/conftest.py creates the CA and the service identities once
and points ``VIGIL_PKI_DIR`` at them, so every configuration the tests parse
(and every child process they start) finds its certificate there. A minion's
certificate is issued by :func:`minion_cert` before the minion starts, as an
operator would with ``vigil ca issue minion``.

NATS knows an identity only from its server configuration, so whoever issues
or revokes here tells the running test servers (:func:`changed`): the
``nats_server`` fixture subscribes with :func:`on_change` and reloads, and
a minion started next finds its user there.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import grpc

from services.core.pki import Identity, Pki
from services.core.tls import TlsMaterial

ENV = "VIGIL_PKI_DIR"
SERVICES = (
    Identity("scheduler", "scheduler"),
    Identity("events", "events"),
    Identity("nats", "nats"),
    Identity("operator", "operator"),
)


def create(directory: Path) -> Pki:
    """A new CA in ``directory`` with a certificate for every service identity."""
    pki = Pki(directory)
    pki.init()
    for identity in SERVICES:
        pki.issue(identity)
    return pki


#: Called after identities were issued or revoked (running NATS servers reload).
_listeners: list[Callable[[], None]] = []


def on_change(listener: Callable[[], None]) -> Callable[[], None]:
    """Call ``listener`` whenever an identity is issued or revoked; returns the unsubscriber."""
    _listeners.append(listener)
    return lambda: _listeners.remove(listener)


def changed() -> None:
    """Tell the listeners (each returns once the change took effect)."""
    for listener in list(_listeners):
        listener()


def _ensure(identity: Identity) -> None:
    pki = current()
    before = pki.load(identity)
    issued = pki.ensure(identity)
    if before is None or before.serial_number != issued.serial:
        changed()


def revoke(identity: Identity) -> int:
    """Revoke ``identity``'s certificate (running NATS servers refuse it on return)."""
    serial = current().revoke(identity)
    changed()
    return serial


def current() -> Pki:
    """The run's PKI (the session fixture sets ``VIGIL_PKI_DIR``)."""
    return Pki(os.environ[ENV])


def material(identity: Identity) -> TlsMaterial:
    """``identity``'s TLS material from the run's PKI, issued first if missing."""
    _ensure(identity)
    pki = current()
    return TlsMaterial.load(pki.ca_cert_path, pki.cert_path(identity), pki.key_path(identity))


def minion_cert(location: str, system_id: str) -> Identity:
    """Make sure the minion ``system_id`` of ``location`` has a certificate."""
    identity = Identity.minion(location, system_id)
    _ensure(identity)
    return identity


def operator_credentials(name: str = "operator") -> grpc.ChannelCredentials:
    """What an operator's gRPC client presents (mutual TLS).

    ``name`` picks another operator identity (issued on first use), for tests
    that need two callers apart (per-identity limits).
    """
    return material(Identity("operator", name)).channel_credentials()


def operator_channel(address: str, name: str = "operator") -> grpc.aio.Channel:
    """An operator's mutual-TLS channel to a Vigil gRPC server (use with ``async with``)."""
    return grpc.aio.secure_channel(address, operator_credentials(name))
