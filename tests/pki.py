"""The test suite's PKI: one CA for the whole run, certificates on demand.

Every link in the suite runs with mutual TLS, as in production. The session
fixture in tests/conftest.py creates the CA and the service identities once
and points ``VIGIL_PKI_DIR`` at them, so every configuration the tests parse
(and every child process they start) finds its certificate there. A minion's
certificate is issued by :func:`minion_cert` before the minion starts, as an
operator would with ``vigil ca issue minion``.
"""

from __future__ import annotations

import os
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


def current() -> Pki:
    """The run's PKI (the session fixture sets ``VIGIL_PKI_DIR``)."""
    return Pki(os.environ[ENV])


def material(identity: Identity) -> TlsMaterial:
    """``identity``'s TLS material from the run's PKI, issued first if missing."""
    pki = current()
    pki.ensure(identity)
    return TlsMaterial.load(pki.ca_cert_path, pki.cert_path(identity), pki.key_path(identity))


def minion_cert(location: str, system_id: str) -> Identity:
    """Make sure the minion ``system_id`` of ``location`` has a certificate."""
    identity = Identity.minion(location, system_id)
    current().ensure(identity)
    return identity


def operator_credentials() -> grpc.ChannelCredentials:
    """What an operator's gRPC client presents (mutual TLS)."""
    return material(Identity("operator", "operator")).channel_credentials()


def operator_channel(address: str) -> grpc.aio.Channel:
    """An operator's mutual-TLS channel to a Vigil gRPC server (use with ``async with``)."""
    return grpc.aio.secure_channel(address, operator_credentials())
