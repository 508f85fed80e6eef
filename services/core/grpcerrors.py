"""Domain errors → gRPC status codes: one table, shared by every servicer.

Handlers (and the domain code they call) raise the errors of
:mod:`services.core.errors` (or :class:`~services.core.paging.PageError`);
:func:`handle_errors` and :func:`handle_stream_errors` abort the call with the
code :data:`STATUS_CODES` gives and the error's message unchanged. Anything
not in the table propagates as it would without the decorator.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.core.errors import (
    AlreadyExistsError,
    DeadlineExceededError,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
)
from services.core.paging import PageError

R = TypeVar("R")
Ctx = grpc.aio.ServicerContext[Any, Any]

#: The status each kind of domain error gets; a subclass gets its nearest base's.
STATUS_CODES: dict[type[Exception], grpc.StatusCode] = {
    InvalidArgumentError: grpc.StatusCode.INVALID_ARGUMENT,
    PageError: grpc.StatusCode.INVALID_ARGUMENT,
    NotFoundError: grpc.StatusCode.NOT_FOUND,
    AlreadyExistsError: grpc.StatusCode.ALREADY_EXISTS,
    FailedPreconditionError: grpc.StatusCode.FAILED_PRECONDITION,
    ResourceExhaustedError: grpc.StatusCode.RESOURCE_EXHAUSTED,
    PermissionDeniedError: grpc.StatusCode.PERMISSION_DENIED,
    UnauthenticatedError: grpc.StatusCode.UNAUTHENTICATED,
    UnavailableError: grpc.StatusCode.UNAVAILABLE,
    DeadlineExceededError: grpc.StatusCode.DEADLINE_EXCEEDED,
}


def status_code(exc: BaseException) -> grpc.StatusCode | None:
    """The status for ``exc`` from :data:`STATUS_CODES`, or ``None`` if it is not a domain error."""
    return next((STATUS_CODES[c] for c in type(exc).__mro__ if c in STATUS_CODES), None)


def handle_errors(
    fn: Callable[[Any, Any, Ctx], Awaitable[R]],
) -> Callable[[Any, Any, Ctx], Awaitable[R]]:
    """Decorate a coroutine handler so that domain errors end the call with their status."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> R:
        try:
            return await fn(self, request, context)
        except Exception as exc:
            code = status_code(exc)
            if code is None:
                raise
            await context.abort(code, str(exc))
        raise AssertionError("unreachable")  # abort raises

    return wrapper


def handle_stream_errors(
    fn: Callable[[Any, Any, Ctx], AsyncIterator[R]],
) -> Callable[[Any, Any, Ctx], AsyncIterator[R]]:
    """The same for an async-generator handler (a streaming response)."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: Ctx) -> AsyncIterator[R]:
        items = fn(self, request, context)
        try:
            async for item in items:
                yield item
        except Exception as exc:
            code = status_code(exc)
            if code is None:
                raise
            await context.abort(code, str(exc))
        finally:
            # A cancelled call must still run the handler's own clean-up now, not at GC.
            aclose = getattr(items, "aclose", None)
            if aclose is not None:
                await aclose()

    return wrapper
