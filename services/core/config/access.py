"""The ``access:`` section: how people and tools are let in (both servers read it)."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import Field, field_validator

from services.core.config.fields import Strict
from services.core.durations import Duration

_ROLE_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
#: 1 minute to 7 days: a session longer than a week is an API token's job.
SessionTtl = Annotated[Duration, Field(ge=60, le=7 * 86400)]


class AccessSettings(Strict):
    """Users, roles and tokens live in the scheduler's store; this says how callers map.

    ``certificate_role`` is the role of an operator certificate not named in
    ``certificates`` (``null``: such a certificate grants nothing by itself, a
    bearer token is then needed too). Minion certificates always have the role
    ``minion`` (ResultSink only); the services' own certificates grant nothing.
    """

    #: The role an operator certificate stands for ("admin" keeps `make run` two commands).
    certificate_role: str | None = "admin"
    #: Operator certificate name → role, for certificates that should be less than admin.
    certificates: dict[str, str] = Field(default_factory=dict)
    #: How long a `vigil login` session lasts.
    session_ttl: SessionTtl = 12 * 3600.0
    #: The longest lifetime an API token may be created with (``null``: no upper bound).
    max_token_ttl: Duration | None = Field(default=None, gt=0)
    #: Failed logins allowed per user per minute before Login answers RESOURCE_EXHAUSTED.
    login_failures_per_minute: int = Field(default=10, ge=1, le=10_000)
    #: Where the scheduler writes an admin API token when the file does not exist yet
    #: (mode 0600; `vigil up` sets `.vigil/admin.token`). ``null``: no bootstrap token.
    bootstrap_token_file: str | None = None

    @field_validator("certificate_role")
    @classmethod
    def _role(cls, v: str | None) -> str | None:
        if v is not None and not _ROLE_RE.fullmatch(v):
            raise ValueError(f"{v[:80]!r} is not a role name (lowercase letters, digits, - and _)")
        return v

    @field_validator("certificates")
    @classmethod
    def _roles(cls, v: dict[str, str]) -> dict[str, str]:
        for name, role in v.items():
            if not _ROLE_RE.fullmatch(role):
                raise ValueError(f"{name}: {role[:80]!r} is not a role name")
        return v
