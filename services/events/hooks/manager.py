"""Hook management: create, list, delete, and one delivery runner per hook.

A hook keeps its creator (``owner``) and the creator's event scope; its runner
(:class:`~services.events.hooks.scoped.ScopedHookRunner`) delivers only what
that scope admits. A scoped caller manages only the hooks a
:class:`~services.events.store.hooks.HookViewer` of it sees (docs/security.md,
"Scopes"); any other is unknown to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.core.access.visibility import EventScope
from services.core.config import EventsSettings
from services.core.errors import (
    AlreadyExistsError,
    InvalidArgumentError,
    ResourceExhaustedError,
)
from services.core.errors import NotFoundError as UnknownHook
from services.core.events import EVENTS_STREAM
from services.core.tasks import Supervisor, finish_writing
from services.core.timeutil import now
from services.events.filters import Interest
from services.events.hooks.cursor import CONSUMER_PREFIX, consumer_name
from services.events.hooks.delivery import HookRunner
from services.events.hooks.guard import AddressGuard, Resolve
from services.events.hooks.scoped import ScopedHookRunner
from services.events.hooks.validation import validate_name, validate_secret, validate_url
from services.events.store.hooks import HookRow, HookStore, HookViewer

log = logging.getLogger(__name__)

#: How often changed hook statuses are written to the store.
STATUS_FLUSH = 1.0


class NameTaken(AlreadyExistsError):
    """A hook with this name exists."""


class UrlTaken(AlreadyExistsError):
    """Another hook POSTs to this URL (RackHD answers 409 for this too)."""


class TooManyHooks(ResourceExhaustedError):
    """The configured maximum number of hooks is reached."""


#: The fields UpdateHook may change (its ``update_mask`` paths).
UPDATABLE = ("name", "url", "filters", "secret")


class HookManager:
    """Hook definitions (store) and their runners (tasks)."""

    def __init__(
        self,
        js: JetStreamContext,
        store: HookStore,
        settings: EventsSettings,
        tasks: Supervisor,
        *,
        resolver: Resolve | None = None,
    ) -> None:
        self.js = js
        self.store = store
        self.settings = settings
        self.tasks = tasks
        #: Hook safety (:mod:`.guard`), shared by every runner: checks URLs at create and
        #: update, and every delivery connection. ``resolver`` (default: the event
        #: loop's getaddrinfo) does its name lookups; ``guard.resolver`` may be replaced.
        self.guard = AddressGuard(settings, resolver)
        self.runners: dict[str, HookRunner] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Seal hook secrets still in clear, start a runner per stored hook, remove
        consumers of hooks that no longer exist."""
        await self.store.open_secrets(self.settings.secret_key_file)
        rows = await self.store.all_hooks()
        known = {consumer_name(r.id) for r in rows}
        try:
            for info in await self.js.consumers_info(EVENTS_STREAM):
                name = info.name or ""
                if name.startswith(CONSUMER_PREFIX) and name not in known:
                    log.info("removing consumer %s of a deleted hook", name)
                    await self.js.delete_consumer(EVENTS_STREAM, name)
        except Exception as exc:  # housekeeping only
            log.warning("cannot clean up hook consumers: %s", exc)
        for row in rows:
            why = self.guard.static_reason(row.url)
            if why is not None:
                # Stored before hook safety (or the exemptions changed): kept, but every
                # delivery is refused ("address not allowed") until it is changed.
                log.warning(
                    "hook %s: its URL is %s: every delivery will be refused "
                    "(change the URL, or allow it with events.hooks_allow_networks / "
                    "events.hooks_allow_hosts)",
                    row.name,
                    why,
                )
            self._start(self._runner(row))
        self.tasks.spawn("hook-status", self._flush_loop(), essential=False)

    def _runner(self, row: HookRow) -> HookRunner:
        return ScopedHookRunner(row, self.js, self.store, self.settings, self.guard)

    def _start(self, runner: HookRunner) -> None:
        self.runners[runner.row.id] = runner
        self._tasks[runner.row.id] = self.tasks.spawn(
            f"hook:{runner.row.name}", runner.run(), essential=False
        )

    async def create(
        self,
        name: str,
        url: str,
        interests: Sequence[Interest],
        secret: str,
        *,
        owner: str | None = None,
        scope: EventScope | None = None,
    ) -> HookRow:
        """Validate, store, create the cursor, start delivering (only what ``scope``,
        the creator's, admits)."""
        validate_name(name)
        validate_url(url)
        validate_secret(secret)
        await self.guard.check_url(url)
        async with self._lock:
            if len(self.runners) >= self.settings.max_hooks:
                raise TooManyHooks(f"the limit of {self.settings.max_hooks} hooks is reached")
            await self._url_free(url, None)
            row = HookRow(
                id=uuid.uuid4().hex,
                name=name,
                url=url,
                secret=secret,
                filters=[i.as_dict() for i in interests],
                created_at=now(),
                owner=owner,
                scope=scope,
            )
            if not await self.store.add_hook(row):
                raise NameTaken(f"name: a hook named {name!r} exists")
            runner = self._runner(row)
            try:
                await runner.ensure_consumer(new=True)
            except BaseException:
                # Nothing half-written: no consumer, no hook.
                await self.store.delete_hook(row.id)
                raise
            self._start(runner)
        log.info("hook %s created (%s)", name, row.id)
        return replace(row)

    async def _url_free(self, url: str, hook_id: str | None) -> None:
        # Two hooks on one URL would POST every matching event twice to the same
        # receiver; like RackHD (409), refuse and name the hook that has it.
        other = await self.store.hook_with_url(url, other_than=hook_id)
        if other is not None:
            raise UrlTaken(f"url: already the URL of hook {other!r}")

    async def update(
        self,
        hook_id: str,
        paths: Sequence[str],
        *,
        name: str = "",
        url: str = "",
        interests: Sequence[Interest] = (),
        secret: str = "",
        seen_by: HookViewer | None = None,
    ) -> HookRow:
        """Change the fields named by ``paths`` (see :data:`UPDATABLE`), validated as
        :meth:`create` validates them; the hook's runner restarts on the new
        definition and continues from its cursor (nothing delivered twice on purpose,
        nothing skipped). Its owner and scope stay the creator's. A hook
        ``seen_by`` may not see is unknown."""
        if not paths:
            raise InvalidArgumentError(
                "update_mask", f"is required (paths: {', '.join(UPDATABLE)})"
            )
        for path in paths:
            if path not in UPDATABLE:
                raise InvalidArgumentError(
                    "update_mask", f"unknown path {path[:80]!r} (known: {', '.join(UPDATABLE)})"
                )
        if "name" in paths:
            validate_name(name)
        if "url" in paths:
            validate_url(url)
        if "secret" in paths:
            validate_secret(secret)
        if "url" in paths:
            await self.guard.check_url(url)
        async with self._lock:
            row = await self.store.get_hook(hook_id, seen_by=seen_by)
            if row is None:
                raise UnknownHook(f"id: no hook {hook_id!r}")
            old = self.runners.get(hook_id)
            if old is not None:
                # The live counters and cursor are newer than the stored ones.
                row = replace(old.row)
            changes: dict[str, Any] = {}
            if "name" in paths:
                changes["name"] = name
            if "url" in paths:
                await self._url_free(url, hook_id)
                changes["url"] = url
            if "filters" in paths:
                changes["filters"] = [i.as_dict() for i in interests]
            if "secret" in paths:
                changes["secret"] = secret
            updated = replace(row, **changes)
            if not await self.store.update_hook(updated):
                if await self.store.get_hook(hook_id) is None:
                    raise UnknownHook(f"id: no hook {hook_id!r}")
                raise NameTaken(f"name: a hook named {name!r} exists")
            await self._stop(hook_id)
            self._start(self._runner(updated))
        log.info("hook %s updated (%s)", updated.name, ", ".join(sorted(paths)))
        return replace(updated)

    async def _stop(self, hook_id: str) -> None:
        runner = self.runners.pop(hook_id, None)
        task = self._tasks.pop(hook_id, None)
        if task is not None:
            task.cancel()
            await asyncio.wait([task], timeout=10.0)
        if runner is not None and runner.dirty:
            # Its status would otherwise be lost with it (the flush loop no longer sees it).
            await finish_writing(
                self.store.save_hook_status(runner.row), f"hook {runner.row.name}: status"
            )

    async def delete(self, hook_id: str, *, seen_by: HookViewer | None = None) -> bool:
        """Stop delivering, forget the cursor and the definition (``False``: unknown,
        or not seen by ``seen_by``)."""
        async with self._lock:
            if seen_by is not None and await self.store.get_hook(hook_id, seen_by=seen_by) is None:
                return False
            if not await self.store.delete_hook(hook_id):
                return False
            runner = self.runners.pop(hook_id, None)
            task = self._tasks.pop(hook_id, None)
            if task is not None:
                task.cancel()
                await asyncio.wait([task], timeout=10.0)
            try:
                await self.js.delete_consumer(EVENTS_STREAM, consumer_name(hook_id))
            except NotFoundError:
                pass
            except Exception as exc:  # removed at the next start-up (see start())
                log.warning("cannot delete the consumer of hook %s: %s", hook_id, exc)
        log.info("hook %s deleted", runner.row.name if runner else hook_id)
        return True

    async def status(self, row: HookRow) -> tuple[HookRow, int, int]:
        """The freshest view of a hook: (row with live counters, backlog, in flight)."""
        runner = self.runners.get(row.id)
        if runner is None:
            return row, 0, 0
        with contextlib.suppress(Exception):
            await runner.refresh()
        live = replace(
            row,
            last_success_at=runner.row.last_success_at,
            last_error_at=runner.row.last_error_at,
            last_error=runner.row.last_error,
            delivered=runner.row.delivered,
        )
        return live, runner.backlog, len(runner.inflight)

    async def refresh_all(self) -> None:
        """Refresh every runner's backlog and cursor (best effort)."""
        for runner in list(self.runners.values()):
            with contextlib.suppress(Exception):
                await runner.refresh()

    async def flush(self) -> None:
        """Write changed statuses to the store."""
        for runner in list(self.runners.values()):
            if runner.dirty:
                runner.dirty = False
                try:
                    await finish_writing(
                        self.store.save_hook_status(runner.row), f"hook {runner.row.name}: status"
                    )
                except BaseException:  # cancelled too: the final flush must write it
                    runner.dirty = True
                    raise

    async def _flush_loop(self) -> None:
        ticks = 0
        while True:
            await asyncio.sleep(STATUS_FLUSH)
            ticks += 1
            try:
                if ticks % 5 == 0:
                    for runner in list(self.runners.values()):
                        await runner.refresh()
                await self.flush()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("cannot save hook statuses: %s", exc)
