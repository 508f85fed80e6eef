"""Who a minion is: its system id and the TLS material that proves it.

Shared by the single-process minion, the parent of a multi-process one and
each of its workers: they are one identity (one certificate, one system id,
one location).
"""

from __future__ import annotations

import logging
import uuid
from pathlib import Path

from services.core.config import MinionSettings, PkiSettings
from services.core.ids import NODE_ID_RE
from services.core.pki import Identity
from services.core.tls import (
    PLAINTEXT,
    PLAINTEXT_WARNING,
    TlsError,
    TlsMaterial,
    Transport,
    require_loopback,
    transport_for,
)

log = logging.getLogger(__name__)


def load_system_id(settings: MinionSettings) -> str:
    """The configured id, else the one kept in ``id_file``, else a new one written there."""
    if settings.system_id:
        return settings.system_id
    path = Path(settings.id_file)
    try:
        existing = path.read_text().strip()
        if NODE_ID_RE.fullmatch(existing):
            return existing
        log.warning("%s holds an invalid system id %r; generating a new one", path, existing)
    except OSError:
        pass
    new_id = f"minion-{uuid.uuid4().hex[:12]}"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(new_id + "\n")
    return new_id


def minion_transport(
    settings: MinionSettings, pki: PkiSettings, nats_url: str
) -> tuple[Identity | None, Transport]:
    """Who this minion is and the TLS material it proves it with.

    A minion's identity is its certificate. With an explicit ``pki.cert`` (a
    site bundle), location and system id come from the certificate; values
    set in the configuration must agree. With only ``pki.dir``, the system id
    comes from the configuration (or ``id_file``) and the certificate is
    ``minion-<location>-<system_id>.pem`` there. In the plaintext development
    mode there is no identity (``None``) and every address must be loopback.
    Raises :class:`~services.core.tls.TlsError` naming what is wrong.
    """
    addresses = {"minion.scheduler": settings.scheduler, "nats.url": nats_url}
    if pki.plaintext_loopback_dev:
        require_loopback(addresses)
        log.warning(PLAINTEXT_WARNING)
        return None, PLAINTEXT
    if pki.cert:
        base = Path(pki.dir)
        material = TlsMaterial.load(
            pki.ca or base / "ca.pem",
            pki.cert,
            pki.key or Path(pki.cert).with_name(Path(pki.cert).stem + "-key.pem"),
            revoked=base / "revoked.json",
        )
        identity = material.identity
        if identity.role != "minion":
            raise TlsError(f"{pki.cert}: a {identity.role} certificate, not a minion's")
        given = settings.model_fields_set
        for key, ours in (("location", identity.location), ("system_id", identity.name)):
            value = getattr(settings, key)
            if key in given and value is not None and value != ours:
                raise TlsError(
                    f"minion.{key} is {value!r} but the certificate {pki.cert} is for "
                    f"{identity} ({key} {ours!r}); a minion is who its certificate says"
                )
        return identity, material
    identity = Identity.minion(settings.location, load_system_id(settings))
    transport = transport_for(pki, identity, addresses)
    return identity, transport
