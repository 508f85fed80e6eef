"""Access control for people and tools: principals, roles, permissions, tokens."""

from services.core.access.permissions import (
    BUILTIN_ROLES,
    METHODS,
    WRITES,
    DefinitionError,
    Grant,
    Scope,
)
from services.core.access.principal import (
    CURRENT,
    DEVELOPMENT,
    Principal,
    Visibility,
    caller,
)

__all__ = [
    "BUILTIN_ROLES",
    "CURRENT",
    "DEVELOPMENT",
    "METHODS",
    "WRITES",
    "DefinitionError",
    "Grant",
    "Principal",
    "Scope",
    "Visibility",
    "caller",
]
