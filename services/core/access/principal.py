"""Who is calling: a :class:`Principal`, with the grants it holds, set per call.

The access interceptor proves the caller (a bearer token, else a client
certificate), builds its principal and sets :data:`CURRENT` for the call; the
servicers read it with :func:`caller` to filter what the caller may see
(:meth:`Principal.visibility`) and limits key on :attr:`Principal.key`.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from typing import Final, Literal

from services.core.access.permissions import ANYWHERE, Grant, Scope

Kind = Literal["user", "token", "certificate", "development"]


@dataclass(frozen=True, slots=True)
class Visibility:
    """What a caller may see for one method: everything, or what some scope covers.

    ``scopes`` are alternatives (any one covering an item is enough); a
    visibility with ``everything`` ignores them. ``restriction`` is the token's
    own scope, which every item must also lie in.
    """

    everything: bool
    scopes: tuple[Scope, ...] = ()
    restriction: Scope = ANYWHERE

    def sees(self, location: str | None, node_id: str | None) -> bool:
        """Whether the caller may see something at ``location`` on ``node_id``."""
        if not self.restriction.covers(location, node_id):
            return False
        return self.everything or any(s.covers(location, node_id) for s in self.scopes)

    @property
    def unrestricted(self) -> bool:
        """Sees everything: no filtering needed."""
        return self.everything and self.restriction.unrestricted

    @property
    def location(self) -> str | None:
        """The one location this caller is limited to, if it is limited to exactly one."""
        locations = {s.location for s in self._all()}
        if len(locations) == 1:
            return next(iter(locations))
        return None

    def _all(self) -> list[Scope]:
        if self.everything:
            return [self.restriction]
        return [self.restriction, *self.scopes]


NOTHING: Final = Visibility(everything=False)


@dataclass(frozen=True, slots=True)
class Principal:
    """A proven caller: a user, an API token, or a certificate mapped to a role."""

    kind: Kind
    name: str
    role: str
    grants: tuple[Grant, ...]
    #: An API token's own scope: everything it sees must also lie inside it.
    restriction: Scope = ANYWHERE
    #: The token id (``jti``) when proven by a token, for audit and revocation.
    token_id: str | None = None
    extra: dict[str, str] = field(default_factory=dict, compare=False, hash=False)

    @property
    def key(self) -> str:
        """A stable key for this caller: audit records, limits, paging-token binding."""
        return f"{self.kind}:{self.name}"

    def __str__(self) -> str:
        return self.key

    def visibility(self, method: str) -> Visibility:
        """What the caller may see through ``method`` (nothing without a matching grant)."""
        matching = [g for g in self.grants if g.matches(method)]
        if not matching:
            return NOTHING
        if any(g.scope.unrestricted for g in matching):
            return Visibility(everything=True, restriction=self.restriction)
        return Visibility(
            everything=False,
            scopes=tuple(g.scope for g in matching),
            restriction=self.restriction,
        )

    def may(self, method: str) -> bool:
        """Whether any grant covers ``method`` (possibly only inside a scope)."""
        return any(g.matches(method) for g in self.grants)


#: Loopback development mode (plaintext, no identities): every caller is this.
DEVELOPMENT: Final = Principal(
    kind="development",
    name="plaintext-loopback",
    role="admin",
    grants=(Grant("vigil.v1.*/*"),),
)

#: The principal of the call being served (set by the access interceptor).
CURRENT: contextvars.ContextVar[Principal | None] = contextvars.ContextVar(
    "vigil_principal", default=None
)


def caller() -> Principal:
    """The principal of the call being served.

    Outside an intercepted call (the loopback plaintext mode has no access
    checks) this is :data:`DEVELOPMENT`.
    """
    return CURRENT.get() or DEVELOPMENT
