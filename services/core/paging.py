"""AIP-158 paging: ``page_size`` and opaque ``page_token`` → ``next_page_token``.

A token carries the position (a key to continue after) and a fingerprint of
the request's filters; reusing it with other filters is ``INVALID_ARGUMENT``,
as AIP-158 asks. The fingerprint also binds the token to the caller
(:func:`~services.core.access.principal.caller`: its key and its token's scope),
so a token issued to one identity is ``INVALID_ARGUMENT`` for another: a page
is never continued under someone else's visibility.
"""

from __future__ import annotations

import base64
import hashlib
import json
from collections.abc import Callable
from typing import Any

from services.core.access.principal import caller

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000


class PageError(ValueError):
    """A page request is malformed; ``field`` names the offending request field."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def page_size(requested: int) -> int:
    """The effective page size: default when 0, capped at the maximum."""
    if requested < 0:
        raise PageError("page_size", "must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def _fingerprint(filters: Any) -> str:
    who = caller()
    identity = [who.key, who.restriction.describe()]
    blob = json.dumps([identity, filters], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def encode_token(position: Any, filters: Any) -> str:
    """An opaque token for continuing after ``position`` under ``filters``."""
    blob = json.dumps({"p": position, "f": _fingerprint(filters)}, separators=(",", ":"))
    return base64.urlsafe_b64encode(blob.encode()).decode().rstrip("=")


def _decode(token: str, filters: Any, fits: Callable[[Any], bool]) -> Any:
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        data = json.loads(base64.urlsafe_b64decode(padded.encode()))
        position, fingerprint = data["p"], data["f"]
    except (ValueError, KeyError, TypeError):
        raise PageError("page_token", "not a token this server issued") from None
    if fingerprint != _fingerprint(filters):
        raise PageError(
            "page_token", "was issued for a request with other filters or to another caller"
        )
    if not fits(position):
        # Well-formed, but not a position this list hands out: never let it reach a query.
        raise PageError("page_token", "not a token this server issued")
    return position


def decode_int(token: str, filters: Any) -> int | None:
    """The numeric position in ``token`` (an id or sequence); ``None`` for an empty token."""
    value: int | None = _decode(
        token, filters, lambda p: isinstance(p, int) and not isinstance(p, bool)
    )
    return value


def decode_str(token: str, filters: Any) -> str | None:
    """The string position in ``token`` (a name); ``None`` for an empty token."""
    value: str | None = _decode(token, filters, lambda p: isinstance(p, str))
    return value


def decode_strs(token: str, filters: Any, count: int) -> list[str] | None:
    """A position of ``count`` strings (a composite key); ``None`` for an empty token."""
    value: list[str] | None = _decode(
        token,
        filters,
        lambda p: isinstance(p, list) and len(p) == count and all(isinstance(x, str) for x in p),
    )
    return value
