"""A hook's definition checked field by field; errors name the field."""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from services.core.errors import InvalidArgumentError

NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_URL = 2048


def validate_url(url: str) -> str:
    """An http(s) URL with a host and no credentials; raises :class:`InvalidArgumentError`."""
    if not url:
        raise InvalidArgumentError("url", "is required")
    if len(url) > MAX_URL:
        raise InvalidArgumentError("url", f"longer than {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidArgumentError("url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgumentError("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        shown = parts.scheme or "none"
        raise InvalidArgumentError("url", f"scheme {shown!r} is not allowed (http or https only)")
    if not parts.hostname:
        raise InvalidArgumentError("url", "has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgumentError(
            "url", "must not carry credentials (the hook's secret signs every delivery)"
        )
    if port == 0:
        raise InvalidArgumentError("url", "port 0 is not valid")
    return url


def validate_name(name: str) -> str:
    """1-64 letters, digits, ``-``, ``_``, ``.``."""
    if not name:
        raise InvalidArgumentError("name", "is required")
    if not NAME_RE.fullmatch(name):
        raise InvalidArgumentError(
            "name", f"{name[:80]!r} must be 1-64 letters, digits, '-', '_' or '.'"
        )
    return name


def validate_secret(secret: str) -> str:
    """8-256 printable characters."""
    if not 8 <= len(secret) <= 256:
        raise InvalidArgumentError("secret", "must be 8 to 256 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in secret):
        raise InvalidArgumentError("secret", "contains control characters")
    return secret
