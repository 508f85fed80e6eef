"""Background tasks with an owner.

Every long-running coroutine of a service is spawned through a
:class:`Supervisor`, which cancels them all on shutdown and treats an
unexpected exit of an essential task as fatal for the process: a poller that
has silently stopped dispatching is worse than one that crashes and is
restarted by its supervisor (compose, systemd, ``vigil up``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: At shutdown, how long a store write already under way may take to finish.
WRITE_GRACE = 3.0

log = logging.getLogger(__name__)


class Supervisor:
    """Owns a set of tasks; :attr:`failed` is set when an essential one dies."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self.failed = asyncio.Event()
        self.failure: BaseException | None = None

    def spawn(
        self, name: str, coro: Coroutine[Any, Any, Any], *, essential: bool = True
    ) -> asyncio.Task[Any]:
        """Run ``coro`` until it ends or :meth:`close` cancels it."""
        task = asyncio.create_task(coro, name=f"{self.name}:{name}")
        self._tasks.add(task)
        task.add_done_callback(lambda t: self._done(t, essential))
        return task

    def _done(self, task: asyncio.Task[Any], essential: bool) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s crashed", task.get_name(), exc_info=exc)
            if essential and self.failure is None:
                self.failure = exc
                self.failed.set()
        elif essential:
            log.debug("task %s finished", task.get_name())

    async def close(self, timeout: float = 5.0) -> None:
        """Cancel every task and wait (bounded) for them to finish."""
        tasks = list(self._tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=timeout)
            for t in pending:
                log.warning("task %s did not stop within %.1fs", t.get_name(), timeout)


async def wait_set(event: asyncio.Event, timeout: float) -> bool:
    """Wait at most ``timeout`` seconds for ``event``; ``True`` when it is set.

    Here, and with ``asyncio.timeout`` elsewhere, never ``asyncio.wait_for``:
    in Python 3.11 ``wait_for`` swallows a cancellation that arrives as the
    awaited thing completes, and a loop around it then outlives its owner
    (seen: a scheduler task still writing events after its scheduler stopped).
    """
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return event.is_set()
    return True


async def finish_writing(write: Coroutine[Any, Any, T], what: str) -> T:
    """Run a store write to its end even when the caller is cancelled.

    A transaction cancelled half-way can leave the store locked (SQLite) for
    whoever writes next, e.g. a service's final flush at shutdown. On
    cancellation the write gets :data:`WRITE_GRACE` seconds more, then the
    cancellation goes on (``what`` names the write in the log).
    """
    task = asyncio.ensure_future(write)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        done, _ = await asyncio.wait({task}, timeout=WRITE_GRACE)
        if not done:
            task.cancel()
            log.warning("%s: the write did not finish within %.1fs of shutdown", what, WRITE_GRACE)
        elif not task.cancelled() and task.exception() is not None:
            log.warning("%s: the write failed at shutdown: %r", what, task.exception())
        raise
