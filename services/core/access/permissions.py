"""What each RPC needs, and what each built-in role may do.

A **permission** is a gRPC method pattern, ``vigil.v1.Poller/ListServices`` or
``vigil.v1.Poller/*`` (``fnmatch`` globbing on the full method name without the
leading slash). A **grant** is a permission with an optional **scope**: a
location and/or a node-id glob; a scoped grant lets the caller see and act on
only what belongs to that scope.

Every RPC a Vigil server offers is listed in :data:`METHODS`, with what it
needs: ``open`` (anyone: health, login), ``authenticated`` (any proven caller:
reflection, WhoAmI) or ``permission`` (a grant matching the method). A method
missing from the table is refused to everyone (fail closed), and a test fails
when a ``.proto`` gains an RPC this table does not name.
"""

from __future__ import annotations

import fnmatch
import re
from dataclasses import dataclass
from typing import Final, Literal

from services.core.ids import LOCATION_RE

Need = Literal["open", "authenticated", "permission"]

POLLER: Final = "vigil.v1.Poller"
INVENTORY: Final = "vigil.v1.Inventory"
EVENTS: Final = "vigil.v1.Events"
ACCESS: Final = "vigil.v1.Access"
SINK: Final = "vigil.v1.ResultSink"
HEALTH: Final = "grpc.health.v1.Health"
REFLECTION_V1A: Final = "grpc.reflection.v1alpha.ServerReflection"
REFLECTION_V1: Final = "grpc.reflection.v1.ServerReflection"

#: Calls that change something: each one is audited (who, what, outcome).
WRITES: Final[frozenset[str]] = frozenset(
    {
        f"{INVENTORY}/PutNode",
        f"{INVENTORY}/DeleteNode",
        f"{POLLER}/PollNow",
        f"{POLLER}/SetPaused",
        f"{EVENTS}/Publish",
        f"{EVENTS}/CreateHook",
        f"{EVENTS}/UpdateHook",
        f"{EVENTS}/DeleteHook",
        f"{ACCESS}/Login",
        f"{ACCESS}/PutUser",
        f"{ACCESS}/DeleteUser",
        f"{ACCESS}/PutRole",
        f"{ACCESS}/DeleteRole",
        f"{ACCESS}/CreateToken",
        f"{ACCESS}/RevokeToken",
    }
)


def audit_action(method: str) -> str:
    """``vigil.v1.Poller/SetPaused`` → ``set-paused``: the action of its ``audit`` event."""
    rpc = method.rpartition("/")[2]
    return re.sub(r"(?<!^)(?=[A-Z])", "-", rpc).lower()


#: Every audit action (``audit <action>`` events), from the audited RPCs.
AUDIT_ACTIONS: Final[dict[str, str]] = {audit_action(m): m for m in sorted(WRITES)}

#: Every RPC of every Vigil server → what it needs (see the module docstring).
METHODS: Final[dict[str, Need]] = {
    f"{HEALTH}/Check": "open",
    f"{HEALTH}/Watch": "open",
    f"{HEALTH}/List": "open",
    f"{REFLECTION_V1A}/ServerReflectionInfo": "authenticated",
    f"{REFLECTION_V1}/ServerReflectionInfo": "authenticated",
    f"{ACCESS}/Login": "open",
    f"{ACCESS}/WhoAmI": "authenticated",
    **{f"{INVENTORY}/{m}": "permission" for m in ("PutNode", "GetNode", "ListNodes", "DeleteNode")},
    **{
        f"{POLLER}/{m}": "permission"
        for m in (
            "ListServices",
            "GetService",
            "PollNow",
            "SetPaused",
            "ListOutages",
            "ListResults",
            "ListMinions",
        )
    },
    **{
        f"{EVENTS}/{m}": "permission"
        for m in (
            "Publish",
            "Subscribe",
            "ListEvents",
            "CreateHook",
            "ListHooks",
            "DeleteHook",
            "UpdateHook",
            "ListHookFailures",
        )
    },
    **{
        f"{ACCESS}/{m}": "permission"
        for m in (
            "PutUser",
            "GetUser",
            "ListUsers",
            "DeleteUser",
            "PutRole",
            "ListRoles",
            "DeleteRole",
            "CreateToken",
            "ListTokens",
            "RevokeToken",
        )
    },
    f"{SINK}/Connect": "permission",
}

_VIEW = [
    f"{POLLER}/ListServices",
    f"{POLLER}/GetService",
    f"{POLLER}/ListOutages",
    f"{POLLER}/ListResults",
    f"{POLLER}/ListMinions",
    f"{INVENTORY}/GetNode",
    f"{INVENTORY}/ListNodes",
    f"{EVENTS}/Subscribe",
    f"{EVENTS}/ListEvents",
]
_OPERATE = [
    *_VIEW,
    f"{POLLER}/PollNow",
    f"{POLLER}/SetPaused",
    f"{EVENTS}/CreateHook",
    f"{EVENTS}/ListHooks",
    f"{EVENTS}/UpdateHook",
    f"{EVENTS}/DeleteHook",
    f"{EVENTS}/ListHookFailures",
]

#: The built-in roles: name → the permissions it grants (unscoped).
BUILTIN_ROLES: Final[dict[str, tuple[str, ...]]] = {
    "viewer": tuple(_VIEW),
    "operator": tuple(_OPERATE),
    "admin": (f"{INVENTORY}/*", f"{POLLER}/*", f"{EVENTS}/*", f"{ACCESS}/*"),
    # Minion certificates: they deliver results, nothing else.
    "minion": (f"{SINK}/Connect",),
}

ROLE_NAME_RE = re.compile(r"^[a-z][a-z0-9_-]{0,63}$")
_PATTERN_RE = re.compile(r"^vigil\.v1\.[A-Za-z*?]+/[A-Za-z*?]+$")
NODE_GLOB_MAX = 128


class DefinitionError(ValueError):
    """A permission, scope or role definition is malformed; ``field`` names what."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field


def check_pattern(pattern: str, field: str = "permission") -> str:
    """``pattern`` if it is a well-formed method pattern that matches at least one RPC."""
    if not _PATTERN_RE.fullmatch(pattern):
        raise DefinitionError(
            field,
            f"{pattern[:100]!r} is not a method pattern like 'vigil.v1.Poller/ListServices' "
            "or 'vigil.v1.Poller/*'",
        )
    if not any(fnmatch.fnmatchcase(m, pattern) for m, n in METHODS.items() if n == "permission"):
        raise DefinitionError(field, f"{pattern!r} matches no RPC")
    return pattern


@dataclass(frozen=True, slots=True)
class Scope:
    """What a scoped grant covers: one location and/or node ids matching a glob."""

    location: str | None = None
    node: str | None = None

    def __post_init__(self) -> None:
        if self.location is not None and not LOCATION_RE.fullmatch(self.location):
            raise DefinitionError("scope.location", f"{self.location[:80]!r} is not a location")
        if self.node is not None and not (0 < len(self.node) <= NODE_GLOB_MAX):
            raise DefinitionError("scope.node", f"must be 1-{NODE_GLOB_MAX} characters")

    def covers(self, location: str | None, node_id: str | None) -> bool:
        """Whether something at ``location`` on ``node_id`` lies inside this scope.

        Something with no location or node (a deployment-wide event) lies
        inside a scope only if the scope does not restrict that dimension.
        """
        if self.location is not None and location != self.location:
            return False
        return self.node is None or (
            node_id is not None and fnmatch.fnmatchcase(node_id, self.node)
        )

    @property
    def unrestricted(self) -> bool:
        """A scope that restricts nothing."""
        return self.location is None and self.node is None

    def describe(self) -> str:
        """``location=paris,node=web-*`` (empty when unrestricted)."""
        parts = []
        if self.location is not None:
            parts.append(f"location={self.location}")
        if self.node is not None:
            parts.append(f"node={self.node}")
        return ",".join(parts)

    def to_doc(self) -> dict[str, str]:
        """The stored / published form: only the dimensions it restricts."""
        doc = {}
        if self.location is not None:
            doc["location"] = self.location
        if self.node is not None:
            doc["node"] = self.node
        return doc

    @classmethod
    def from_doc(cls, doc: object) -> Scope:
        """The inverse of :meth:`to_doc`; raises ``ValueError`` for anything else."""
        if not isinstance(doc, dict) or set(doc) - {"location", "node"}:
            raise ValueError(f"not a scope: {doc!r}")
        location, node = doc.get("location"), doc.get("node")
        if not all(v is None or isinstance(v, str) for v in (location, node)):
            raise ValueError(f"not a scope: {doc!r}")
        return cls(location=location, node=node)

    @classmethod
    def parse(cls, text: str, field: str = "scope") -> Scope:
        """``location=paris``, ``node=web-*`` or both, comma-separated."""
        values: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            key, sep, value = part.partition("=")
            if not sep or key not in ("location", "node") or not value:
                raise DefinitionError(field, f"{part[:80]!r} is not location=<name> or node=<glob>")
            if key in values:
                raise DefinitionError(field, f"{key} given twice")
            values[key] = value
        return cls(location=values.get("location"), node=values.get("node"))


#: The scope that restricts nothing.
ANYWHERE: Final = Scope()


@dataclass(frozen=True, slots=True)
class Grant:
    """A permission, optionally limited to a scope."""

    permission: str
    scope: Scope = ANYWHERE

    def matches(self, method: str) -> bool:
        """Whether this grant covers ``method`` (``vigil.v1.Poller/PollNow``)."""
        return fnmatch.fnmatchcase(method, self.permission)


def builtin_grants(role: str) -> tuple[Grant, ...] | None:
    """The grants of built-in ``role``, ``None`` if it is not built in."""
    perms = BUILTIN_ROLES.get(role)
    return None if perms is None else tuple(Grant(p) for p in perms)
