"""Webhooks: every matching event POSTed at least once, surviving restarts.

Each hook has a **durable JetStream consumer** on ``VIGIL_EVENTS``
(``vigil-hook-<id>``), created with the hook (delivering events published
from then on): the consumer *is* the hook's cursor, kept by NATS across
restarts of this service. A :class:`HookRunner` task per hook pulls from it,
filters in-process (``filter_subject`` cannot express globs or locations),
acknowledges what does not match, and POSTs the rest, at most
``hook_max_in_flight`` at a time. An event is acknowledged only once the
receiver answered 2xx, or once the delivery was parked as failed in the store:
a crash or restart in between makes JetStream redeliver it (after
``hook_ack_wait``), hence *at least once*.

A POST carries the event's JSON (exactly as published on NATS) and the
headers ``X-Vigil-Event-Id``, ``X-Vigil-Event-Sequence``, ``X-Vigil-Hook-Id``,
``X-Vigil-Attempt`` and ``X-Vigil-Signature: sha256=<hex HMAC-SHA256 of the
body keyed by the hook's secret>``. Failures (timeout, connection error, any
non-2xx) are retried with exponential back-off and jitter until
``hook_max_age`` after the event was published; then the delivery is parked in
``hook_failures`` (``ListHookFailures``) and the cursor moves on.

Every hook has its own task, HTTP session and connection pool, so a slow or
dead receiver only ever holds up its own deliveries.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import hmac
import logging
import random
import re
import uuid
from collections.abc import Sequence
from dataclasses import replace
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import NotFoundError
from pydantic import ValidationError

from services.core.backoff import Backoff
from services.core.config import EventsSettings
from services.core.events import EVENTS_STREAM, EVENTS_SUBJECT_PREFIX, Event
from services.core.grpcerrors import InvalidArgument
from services.core.tasks import Supervisor, finish_writing
from services.core.timeutil import now
from services.events import metrics
from services.events.filters import Interest, matches_any
from services.events.store import EventStore, HookFailureRow, HookRow

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Vigil-Signature"
EVENT_ID_HEADER = "X-Vigil-Event-Id"
SEQUENCE_HEADER = "X-Vigil-Event-Sequence"
HOOK_ID_HEADER = "X-Vigil-Hook-Id"
ATTEMPT_HEADER = "X-Vigil-Attempt"
USER_AGENT = "vigil-events/1"
CONSUMER_PREFIX = "vigil-hook-"
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
MAX_URL = 2048
#: Parked deliveries kept per hook (the oldest are trimmed beyond).
KEEP_FAILURES = 10_000
#: How often changed hook statuses are written to the store.
STATUS_FLUSH = 1.0


class NameTaken(Exception):
    """A hook with this name exists."""


class TooManyHooks(Exception):
    """The configured maximum number of hooks is reached."""


def sign(secret: str, body: bytes) -> str:
    """The ``X-Vigil-Signature`` value for ``body``: ``sha256=<hex>``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(secret: str, body: bytes, signature: str) -> bool:
    """Receiver side: whether ``signature`` is the right one for ``body`` (constant time)."""
    return hmac.compare_digest(sign(secret, body), signature)


def validate_url(url: str) -> str:
    """An http(s) URL with a host and no credentials; raises :class:`InvalidArgument`."""
    if not url:
        raise InvalidArgument("url", "is required")
    if len(url) > MAX_URL:
        raise InvalidArgument("url", f"longer than {MAX_URL} characters")
    if any(c.isspace() or ord(c) < 32 for c in url):
        raise InvalidArgument("url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidArgument("url", f"not a valid URL ({exc})") from None
    if parts.scheme not in ("http", "https"):
        shown = parts.scheme or "none"
        raise InvalidArgument("url", f"scheme {shown!r} is not allowed (http or https only)")
    if not parts.hostname:
        raise InvalidArgument("url", "has no host")
    if parts.username is not None or parts.password is not None:
        raise InvalidArgument(
            "url", "must not carry credentials (the hook's secret signs every delivery)"
        )
    if port == 0:
        raise InvalidArgument("url", "port 0 is not valid")
    return url


def validate_name(name: str) -> str:
    """1-64 letters, digits, ``-``, ``_``, ``.``."""
    if not name:
        raise InvalidArgument("name", "is required")
    if not NAME_RE.fullmatch(name):
        raise InvalidArgument(
            "name", f"{name[:80]!r} must be 1-64 letters, digits, '-', '_' or '.'"
        )
    return name


def validate_secret(secret: str) -> str:
    """8-256 printable characters."""
    if not 8 <= len(secret) <= 256:
        raise InvalidArgument("secret", "must be 8 to 256 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in secret):
        raise InvalidArgument("secret", "contains control characters")
    return secret


def consumer_name(hook_id: str) -> str:
    """The durable consumer that is the hook's cursor."""
    return f"{CONSUMER_PREFIX}{hook_id}"


class HookRunner:
    """Delivers one hook's events (see the module docstring)."""

    def __init__(
        self, row: HookRow, js: JetStreamContext, store: EventStore, settings: EventsSettings
    ) -> None:
        self.row = row
        self.interests = [Interest.from_dict(f) for f in row.filters]
        self.js = js
        self.store = store
        self.settings = settings
        self.consumer = consumer_name(row.id)
        self.inflight: dict[int, asyncio.Task[None]] = {}
        self.dirty = False
        self.backlog = 0

    # -- the cursor ----------------------------------------------------------------------

    async def ensure_consumer(self, *, new: bool) -> None:
        """Create the durable consumer if missing.

        A new hook starts with the events published from now on. A missing
        consumer of an existing hook (NATS lost its data) restarts after the
        last acknowledged sequence the store remembers.
        """
        try:
            await self.js.consumer_info(EVENTS_STREAM, self.consumer)
            return
        except NotFoundError:
            pass
        if new or self.row.ack_floor <= 0:
            if not new:
                log.warning(
                    "hook %s: cursor lost; delivering events published from now on", self.row.name
                )
            policy: dict[str, Any] = {"deliver_policy": DeliverPolicy.NEW}
        else:
            log.warning(
                "hook %s: cursor lost; resuming after sequence %d",
                self.row.name,
                self.row.ack_floor,
            )
            policy = {
                "deliver_policy": DeliverPolicy.BY_START_SEQUENCE,
                "opt_start_seq": self.row.ack_floor + 1,
            }
        config = ConsumerConfig(
            name=self.consumer,
            durable_name=self.consumer,
            description=f"Vigil webhook {self.row.name}",
            ack_policy=AckPolicy.EXPLICIT,
            ack_wait=self.settings.hook_ack_wait,
            max_ack_pending=max(64, 4 * self.settings.hook_max_in_flight),
            max_deliver=-1,
            filter_subject=f"{EVENTS_SUBJECT_PREFIX}.>",
            **policy,
        )
        await self.js.add_consumer(EVENTS_STREAM, config=config)

    async def refresh(self) -> None:
        """Backlog and cursor from the consumer (for ListHooks and the store)."""
        info = await self.js.consumer_info(EVENTS_STREAM, self.consumer, timeout=2.0)
        self.backlog = int(info.num_pending or 0) + int(info.num_ack_pending or 0)
        floor = int(info.ack_floor.stream_seq) if info.ack_floor is not None else 0
        if floor > self.row.ack_floor:
            self.row.ack_floor = floor
            self.dirty = True

    # -- delivering ----------------------------------------------------------------------

    async def run(self) -> None:
        """Pull, filter and deliver until cancelled; never raises otherwise."""
        s = self.settings
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.hook_timeout),
            connector=aiohttp.TCPConnector(limit=s.hook_max_in_flight),
            headers={"User-Agent": USER_AGENT},
        )
        sub: Any = None
        backoff = Backoff()
        try:
            while True:
                if sub is None:
                    try:
                        await self.ensure_consumer(new=False)
                        sub = await self.js.pull_subscribe_bind(
                            consumer=self.consumer, stream=EVENTS_STREAM
                        )
                        backoff.reset()
                    except asyncio.CancelledError:
                        raise
                    except Exception as exc:
                        log.warning(
                            "hook %s: cannot bind its consumer (%s); retrying", self.row.name, exc
                        )
                        await backoff.sleep()
                        continue
                room = s.hook_max_in_flight - len(self.inflight)
                if room <= 0:
                    await asyncio.wait(
                        list(self.inflight.values()),
                        timeout=1.0,
                        return_when=asyncio.FIRST_COMPLETED,
                    )
                    continue
                try:
                    msgs = await sub.fetch(min(room, 64), timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    log.info("hook %s: fetch failed (%s); re-binding", self.row.name, exc)
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    sub = None
                    await backoff.sleep()
                    continue
                try:
                    for m in msgs:
                        await self._take(m, session)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    # (an ack lost with the connection: those events simply come back)
                    log.warning("hook %s: %s; re-binding", self.row.name, exc)
                    with contextlib.suppress(Exception):
                        await sub.unsubscribe()
                    sub = None
                    await backoff.sleep()
        finally:
            tasks = list(self.inflight.values())
            for t in tasks:
                t.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=5.0)
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.unsubscribe()
            await session.close()

    async def _take(self, m: Msg, session: aiohttp.ClientSession) -> None:
        seq = m.metadata.sequence.stream
        if seq in self.inflight:
            return  # redelivered while we are still working on it
        try:
            event = Event.model_validate_json(m.data)
        except ValidationError:
            log.warning(
                "hook %s: %s seq %d is not an event; skipped", self.row.name, EVENTS_STREAM, seq
            )
            await m.ack()
            return
        if not matches_any(self.interests, event):
            await m.ack()
            return
        task = asyncio.create_task(
            self._deliver(m, event, seq, session), name=f"hook:{self.row.name}:{seq}"
        )
        self.inflight[seq] = task
        task.add_done_callback(functools.partial(self._done, seq))

    def _done(self, seq: int, _task: asyncio.Task[None]) -> None:
        self.inflight.pop(seq, None)

    async def _deliver(
        self, m: Msg, event: Event, seq: int, session: aiohttp.ClientSession
    ) -> None:
        s = self.settings
        body = bytes(m.data)
        published_at = m.metadata.timestamp.timestamp()
        first_attempt = now()
        delay = s.hook_backoff_initial
        attempts = 0
        try:
            while True:
                attempts += 1
                # Restart JetStream's redelivery clock: this attempt lasts at most hook_timeout.
                with contextlib.suppress(Exception):
                    await m.in_progress()
                error = await self._post(session, body, event, seq, attempts)
                if error is None:
                    metrics.HOOK_ATTEMPTS.labels("ok").inc()
                    self.row.last_success_at = now()
                    self.row.delivered += 1
                    self.dirty = True
                    await self._ack(m)
                    return
                metrics.HOOK_ATTEMPTS.labels("error").inc()
                self.row.last_error, self.row.last_error_at = error, now()
                self.dirty = True
                age = now() - published_at
                if age >= s.hook_max_age:
                    log.warning(
                        "hook %s: giving up on event %s after %d attempt(s): %s",
                        self.row.name,
                        event.id,
                        attempts,
                        error,
                    )
                    await self._park(m, event, seq, attempts, first_attempt, error)
                    return
                # Exponential back-off with "equal jitter", never past the maximum age.
                wait = min(delay / 2 + random.uniform(0, delay / 2), s.hook_max_age - age)
                delay = min(s.hook_backoff_max, delay * 2)
                await self._sleep(m, max(wait, 0.0))
        except asyncio.CancelledError:
            raise
        except Exception:
            # Left unacknowledged: JetStream redelivers it after hook_ack_wait.
            log.exception(
                "hook %s: delivering event %s failed unexpectedly", self.row.name, event.id
            )

    async def _post(
        self, session: aiohttp.ClientSession, body: bytes, event: Event, seq: int, attempt: int
    ) -> str | None:
        headers = {
            "Content-Type": "application/json",
            EVENT_ID_HEADER: event.id,
            SEQUENCE_HEADER: str(seq),
            HOOK_ID_HEADER: self.row.id,
            ATTEMPT_HEADER: str(attempt),
            SIGNATURE_HEADER: sign(self.row.secret, body),
        }
        try:
            async with session.post(
                self.row.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                # Read (a bounded amount of) the answer so the connection can be reused.
                await resp.content.read(64 << 10)
                if 200 <= resp.status < 300:
                    return None
                return f"HTTP {resp.status} {resp.reason or ''}".strip()
        except TimeoutError:
            return f"no answer within {self.settings.hook_timeout:g}s"
        except aiohttp.ClientError as exc:
            return f"{type(exc).__name__}: {exc}"[:500]

    async def _sleep(self, m: Msg, seconds: float) -> None:
        """Wait before a retry, telling JetStream we still hold the message."""
        step = self.settings.hook_ack_wait / 3
        end = asyncio.get_running_loop().time() + seconds
        while (left := end - asyncio.get_running_loop().time()) > 0:
            await asyncio.sleep(min(step, left))
            with contextlib.suppress(Exception):
                await m.in_progress()

    async def _ack(self, m: Msg) -> None:
        try:
            await m.ack()
        except Exception as exc:  # redelivered later: a duplicate, which at-least-once allows
            log.warning("hook %s: cannot acknowledge (%s)", self.row.name, exc)

    async def _park(
        self, m: Msg, event: Event, seq: int, attempts: int, first: float, error: str
    ) -> None:
        failure = HookFailureRow(
            id=0,
            hook_id=self.row.id,
            event_id=event.id,
            seq=seq,
            attempts=attempts,
            first_attempt_at=first,
            failed_at=now(),
            last_error=error,
            payload=bytes(m.data),
        )
        backoff = Backoff()
        while True:
            try:
                await finish_writing(
                    self.store.park(failure, KEEP_FAILURES), f"hook {self.row.name}: parking"
                )
                break
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.error(
                    "hook %s: cannot park a failed delivery (%s); retrying", self.row.name, exc
                )
                await self._sleep(m, backoff.next())
        metrics.HOOK_PARKED.inc()
        self.row.failed += 1
        await self._ack(m)


class HookManager:
    """Hook definitions (store) and their runners (tasks)."""

    def __init__(
        self, js: JetStreamContext, store: EventStore, settings: EventsSettings, tasks: Supervisor
    ) -> None:
        self.js = js
        self.store = store
        self.settings = settings
        self.tasks = tasks
        self.runners: dict[str, HookRunner] = {}
        self._tasks: dict[str, asyncio.Task[Any]] = {}
        self._lock = asyncio.Lock()

    async def start(self) -> None:
        """Start a runner per stored hook; remove consumers of hooks that no longer exist."""
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
            self._start(HookRunner(row, self.js, self.store, self.settings))
        self.tasks.spawn("hook-status", self._flush_loop(), essential=False)

    def _start(self, runner: HookRunner) -> None:
        self.runners[runner.row.id] = runner
        self._tasks[runner.row.id] = self.tasks.spawn(
            f"hook:{runner.row.name}", runner.run(), essential=False
        )

    async def create(
        self, name: str, url: str, interests: Sequence[Interest], secret: str
    ) -> HookRow:
        """Validate, store, create the cursor, start delivering."""
        validate_name(name)
        validate_url(url)
        validate_secret(secret)
        async with self._lock:
            if len(self.runners) >= self.settings.max_hooks:
                raise TooManyHooks(f"the limit of {self.settings.max_hooks} hooks is reached")
            row = HookRow(
                id=uuid.uuid4().hex,
                name=name,
                url=url,
                secret=secret,
                filters=[i.as_dict() for i in interests],
                created_at=now(),
            )
            if not await self.store.add_hook(row):
                raise NameTaken(f"name: a hook named {name!r} exists")
            runner = HookRunner(row, self.js, self.store, self.settings)
            try:
                await runner.ensure_consumer(new=True)
            except BaseException:
                # Nothing half-written: no consumer, no hook.
                await self.store.delete_hook(row.id)
                raise
            self._start(runner)
        log.info("hook %s created (%s)", name, row.id)
        return replace(row)

    async def delete(self, hook_id: str) -> bool:
        """Stop delivering, forget the cursor and the definition."""
        async with self._lock:
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
