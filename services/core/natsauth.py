"""The nats-server configuration: TLS, and one user per identity with its permissions.

Every client presents a certificate from the deployment's CA and nats-server
maps it to a user by its subject (``tls { verify_and_map: true }``): the user
is named by the subject exactly as nats-server prints it, which is
:attr:`~services.core.pki.Identity.subject` (``CN=<name>,OU=<unit>,O=Vigil``).
A certificate that maps to no user is refused, and there is no anonymous user,
so a client without a certificate, with one from another CA, or whose
identity was revoked cannot connect.

What each role may do (see :func:`permissions`; docs/security.md has the table):

- a minion of ``L`` with system id ``I`` subscribes to ``vigil.poll.L`` in its
  location's queue group and to ``vigil.poll.L.I``; it publishes nothing (it
  returns results over gRPC, and ``flush`` is a PING, so it needs no inbox);
- the scheduler publishes poll requests and its raw events, manages the
  ``VIGIL_INGEST`` stream, and alone writes the access snapshot (KV bucket
  ``vigil_access``);
- the event service reads ``VIGIL_INGEST``, owns ``VIGIL_EVENTS`` and their
  consumers, publishes normalized events and rejection notices, and reads the
  access snapshot;
- an operator (``vigil sniff``) only reads events and rejection notices.

Nobody deletes a stream or purges ``VIGIL_INGEST``. The event service alone may
purge ``VIGIL_EVENTS``: ``align_stream`` does, up to a sequence, when NATS lost
its data but the history did not, so that sequences never repeat.

Replies to requests (JetStream API answers, publish acknowledgements) go to a
per-identity inbox prefix (:func:`inbox_prefix`), so no identity can read
another's replies. Only the server's JetStream publishes to inboxes, and it is
not subject to these permissions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from services.core.access.replication import STREAM as ACCESS_STREAM
from services.core.access.replication import SUBJECT as ACCESS_SUBJECT
from services.core.events import (
    EVENTS_STREAM,
    EVENTS_SUBJECT_PREFIX,
    INGEST_STREAM,
    INGEST_SUBJECT_PREFIX,
    REJECTED_SUBJECT_PREFIX,
)
from services.core.pki import Identity, Pki, PkiError
from services.core.wire import POLL_SUBJECT_PREFIX, poll_queue_group, poll_subject

#: What no identity may ever do, whatever it is otherwise allowed.
ALWAYS_DENIED = ["$JS.API.STREAM.DELETE.>", f"$JS.API.STREAM.PURGE.{INGEST_STREAM}"]

#: Identities the server config holds no user for: the server itself.
_NOT_CLIENTS = ("nats",)

#: A user no Vigil certificate maps to (there is no role "none"), allowed nothing.
#: With an empty user list nats-server would require no authentication at all,
#: so the list is never empty, even when every identity is revoked.
SENTINEL_USER: dict[str, Any] = {
    "user": "CN=nobody,OU=none,O=Vigil",
    "permissions": {"publish": {"deny": [">"]}, "subscribe": {"deny": [">"]}},
}


def inbox_prefix(identity: Identity) -> str | None:
    """The reply-subject prefix ``identity``'s client uses, ``None`` if it makes no requests.

    Only the scheduler and the event service make requests (the JetStream
    API); each gets ``_INBOX.<role>.<name>`` so it reads only its own replies.
    """
    if identity.role not in ("scheduler", "events"):
        return None
    return f"_INBOX.{identity.role}.{identity.name.replace('.', '_')}"


def _stream_api(stream: str, *, manage: bool) -> list[str]:
    """The JetStream API subjects for ``stream``: info, and create/update when ``manage``."""
    api = [f"$JS.API.STREAM.INFO.{stream}"]
    if manage:
        api += [f"$JS.API.STREAM.CREATE.{stream}", f"$JS.API.STREAM.UPDATE.{stream}"]
    return api


def _consumer_api(stream: str) -> list[str]:
    """Create, inspect, read (pull), acknowledge and delete the consumers of ``stream``."""
    return [
        f"$JS.API.CONSUMER.CREATE.{stream}",
        f"$JS.API.CONSUMER.CREATE.{stream}.>",
        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.*",
        f"$JS.API.CONSUMER.INFO.{stream}.*",
        f"$JS.API.CONSUMER.DELETE.{stream}.*",
        f"$JS.API.CONSUMER.NAMES.{stream}",
        f"$JS.API.CONSUMER.LIST.{stream}",
        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.*",
        f"$JS.ACK.{stream}.>",
    ]


def permissions(identity: Identity) -> dict[str, Any]:
    """The nats-server ``permissions`` block for ``identity`` (by its role)."""
    publish: list[str] = []
    subscribe: list[str] = []
    if identity.role == "minion":
        assert identity.location is not None
        # "subject queue": the shared subject only inside the location's queue group.
        subscribe = [
            f"{poll_subject(identity.location)} {poll_queue_group(identity.location)}",
            poll_subject(identity.location, identity.name),
        ]
    elif identity.role == "scheduler":
        publish = [
            f"{POLL_SUBJECT_PREFIX}.>",
            f"{INGEST_SUBJECT_PREFIX}.scheduler",
            *_stream_api(INGEST_STREAM, manage=True),
            # the access snapshot: only the scheduler writes it
            ACCESS_SUBJECT,
            *_stream_api(ACCESS_STREAM, manage=True),
        ]
    elif identity.role == "events":
        publish = [
            f"{EVENTS_SUBJECT_PREFIX}.>",
            f"{REJECTED_SUBJECT_PREFIX}.>",
            # Events/Publish and the summary enter through the same durable path.
            f"{INGEST_SUBJECT_PREFIX}.api",
            f"{INGEST_SUBJECT_PREFIX}.events",
            *_stream_api(INGEST_STREAM, manage=True),
            *_stream_api(EVENTS_STREAM, manage=True),
            f"$JS.API.STREAM.PURGE.{EVENTS_STREAM}",
            f"$JS.API.STREAM.MSG.GET.{EVENTS_STREAM}",
            f"$JS.API.DIRECT.GET.{EVENTS_STREAM}",
            f"$JS.API.DIRECT.GET.{EVENTS_STREAM}.>",
            *_consumer_api(INGEST_STREAM),
            *_consumer_api(EVENTS_STREAM),
            # reads the access snapshot the scheduler publishes (never writes it)
            f"$JS.API.DIRECT.GET.{ACCESS_STREAM}.{ACCESS_SUBJECT}",
        ]
    elif identity.role == "operator":
        subscribe = [f"{EVENTS_SUBJECT_PREFIX}.>", f"{REJECTED_SUBJECT_PREFIX}.>"]
    if (inbox := inbox_prefix(identity)) is not None:
        subscribe.append(f"{inbox}.>")
    # An empty allow list would mean "everything" to nats-server: deny all instead.
    return {
        "publish": {"allow": publish, "deny": ALWAYS_DENIED} if publish else {"deny": [">"]},
        "subscribe": {"allow": subscribe} if subscribe else {"deny": [">"]},
    }


def users(pki: Pki) -> list[dict[str, Any]]:
    """One user per client identity with a current, unrevoked certificate in ``pki``.

    Plus :data:`SENTINEL_USER`, so that authentication stays required.
    """
    revoked = pki.revoked()
    found = [SENTINEL_USER]
    for identity, cert in pki.identities():
        if identity.role in _NOT_CLIENTS or cert.serial_number in revoked:
            continue
        found.append({"user": identity.subject, "permissions": permissions(identity)})
    return found


def server_config(
    pki: Pki,
    *,
    host: str,
    port: int,
    store_dir: Path,
    server_name: str = "vigil",
    tls_timeout: float = 5.0,
) -> str:
    """The nats-server configuration for ``pki``'s identities (JSON, which nats-server reads).

    TLS with the ``nats`` identity's certificate, client certificates required
    and mapped to users (``verify_and_map``), JetStream storing in
    ``store_dir``. Regenerate and reload it (:meth:`NatsServer.reload`) when
    identities are issued or revoked. Raises :class:`PkiError` when the CA or
    the ``nats`` certificate is missing (the server would not start).
    """
    nats = Identity("nats", "nats")
    for path, hint in (
        (pki.ca_cert_path, "vigil ca init"),
        (pki.cert_path(nats), "vigil ca issue nats"),
        (pki.key_path(nats), "vigil ca issue nats"),
    ):
        if not path.exists():
            raise PkiError(f"{path}: missing; nats-server needs it (`{hint}`)")
    config = {
        "server_name": server_name,
        "host": host,
        "port": port,
        "jetstream": {"store_dir": str(store_dir)},
        "tls": {
            "cert_file": str(pki.cert_path(nats).resolve()),
            "key_file": str(pki.key_path(nats).resolve()),
            "ca_file": str(pki.ca_cert_path.resolve()),
            "verify_and_map": True,
            # TLS before anything else, no plaintext INFO first: a client that
            # insists on it (natsconn does) cannot be talked down to plaintext.
            "handshake_first": True,
            "timeout": tls_timeout,
        },
        "authorization": {"users": users(pki)},
    }
    return json.dumps(config, indent=2) + "\n"


def write_server_config(path: Path, pki: Pki, **options: Any) -> Path:
    """Write :func:`server_config` to ``path`` (mode 0600, replaced atomically); returns it."""
    text = server_config(pki, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.chmod(0o600)
    tmp.replace(path)
    return path
