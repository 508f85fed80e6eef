"""Request problems → gRPC status codes, in one place.

Handlers raise :class:`InvalidArgument` (or :class:`~services.core.paging.PageError`)
and :class:`NotFound`; the :func:`handle_errors` decorator turns them into
``INVALID_ARGUMENT`` / ``NOT_FOUND`` with the message naming the field.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from services.core.paging import PageError

log = logging.getLogger(__name__)

R = TypeVar("R")


class InvalidArgument(ValueError):
    """A request field is wrong; the message names it (``field: problem``)."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(LookupError):
    """The request names something that does not exist."""


def handle_errors(
    fn: Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]],
) -> Callable[[Any, Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[R]]:
    """Decorate a unary handler so that request errors get their proper status."""

    @functools.wraps(fn)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> R:
        try:
            return await fn(self, request, context)
        except (InvalidArgument, PageError) as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        except NotFound as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        raise AssertionError("unreachable")  # abort raises

    return wrapper
