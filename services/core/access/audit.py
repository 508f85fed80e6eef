"""Audit events: one ``audit <rpc>`` event per call that changes something.

The interceptor hands an :class:`~services.core.grpcauth.AuditRecord` to its
process's sink, which turns it into an event with :func:`audit_event` and
queues it on the process's durable event path (the scheduler's outbox, the
event service's ingest stream). Refused calls are audited too (severity
``warning``). Only callers who may list users (admins) see audit events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Final

from services.core.access.permissions import ACCESS, AUDIT_ACTIONS, audit_action
from services.core.access.principal import Principal
from services.core.events import Event, make_event

if TYPE_CHECKING:
    from services.core.grpcauth import AuditRecord

AUDIT_TYPE: Final = "audit"
#: Whoever may call this may see audit events.
AUDIT_READER_PERMISSION: Final = f"{ACCESS}/ListUsers"


__all__ = ["AUDIT_ACTIONS", "AUDIT_TYPE", "audit_action", "audit_event", "may_read_audit"]


def may_read_audit(principal: Principal) -> bool:
    """Whether ``principal`` may see audit events (unscoped ``Access/ListUsers``)."""
    return principal.visibility(AUDIT_READER_PERMISSION).unrestricted


def audit_event(record: AuditRecord, source: str) -> Event:
    """The event that records ``record``."""
    return make_event(
        AUDIT_TYPE,
        audit_action(record.method),
        source=source,
        type_id=record.method,
        node_id=record.node_id,
        location=record.location,
        severity="information" if record.outcome == "OK" else "warning",
        principal=record.principal,
        rpc=record.method,
        outcome=record.outcome,
        message=record.message or None,
        request=record.request,
        peer=record.peer,
    )
