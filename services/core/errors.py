"""Domain errors: what went wrong with a request, in terms a servicer can report.

Domain code raises these (never gRPC statuses); every servicer turns them
into status codes through the one table in :mod:`services.core.grpcerrors`.
The message is what the client is told, so it names the field or the thing.
This module imports nothing, so the lowest layers can raise them too.
"""

from __future__ import annotations


class DomainError(Exception):
    """A request that cannot be served as asked; the message is shown to the client."""


class InvalidArgumentError(DomainError, ValueError):
    """A request field is wrong; the message names it (``field: problem``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem


class NotFoundError(DomainError, LookupError):
    """The request names something that does not exist."""


class AlreadyExistsError(DomainError):
    """The request would create something that exists already."""


class FailedPreconditionError(DomainError):
    """The target is in a state that does not allow the request (e.g. read-only)."""


class PermissionDeniedError(DomainError):
    """The caller is proven but may not do this (outside its role or scope)."""


class UnauthenticatedError(DomainError):
    """The caller's proof (password, token) is not accepted."""


class ResourceExhaustedError(DomainError):
    """A configured limit is reached, or a client could not keep up."""


class UnavailableError(DomainError):
    """A dependency (NATS, the store, …) cannot serve now; retrying may succeed."""


class DeadlineExceededError(DomainError):
    """The answer did not come within the time the request allows."""
