"""Delivering one hook's events: pull from its cursor, filter, POST, retry, park.

See :mod:`services.events.hooks` for the guarantees.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any

import aiohttp
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from pydantic import ValidationError

from services.core.backoff import Backoff
from services.core.config import EventsSettings
from services.core.events import EVENTS_STREAM, Event
from services.core.tasks import finish_writing
from services.core.timeutil import now
from services.events import metrics
from services.events.filters import Interest, matches_any
from services.events.hooks.cursor import consumer_name, ensure_consumer, position
from services.events.hooks.guard import (
    ADDRESS_NOT_ALLOWED,
    AddressGuard,
    GuardedResolver,
    describe,
    failure_class,
    http_failure,
)
from services.events.hooks.signing import SIGNATURE_HEADER, sign
from services.events.store.hooks import HookFailureRow, HookRow, HookStore

log = logging.getLogger(__name__)

EVENT_ID_HEADER = "X-Vigil-Event-Id"
SEQUENCE_HEADER = "X-Vigil-Event-Sequence"
HOOK_ID_HEADER = "X-Vigil-Hook-Id"
ATTEMPT_HEADER = "X-Vigil-Attempt"
USER_AGENT = "vigil-events/1"
#: Parked deliveries kept per hook (the oldest are trimmed beyond).
KEEP_FAILURES = 10_000


class HookRunner:
    """Delivers one hook's events (see the module docstring)."""

    def __init__(
        self,
        row: HookRow,
        js: JetStreamContext,
        store: HookStore,
        settings: EventsSettings,
        guard: AddressGuard | None = None,
    ) -> None:
        self.row = row
        self.interests = [Interest.from_dict(f) for f in row.filters]
        self.js = js
        self.store = store
        self.settings = settings
        #: Every connection's address is checked by it (see :mod:`.guard`).
        self.guard = guard or AddressGuard(settings)
        self.consumer = consumer_name(row.id)
        self.inflight: dict[int, asyncio.Task[None]] = {}
        self.dirty = False
        self.backlog = 0

    # -- the cursor ----------------------------------------------------------------------

    async def ensure_consumer(self, *, new: bool) -> None:
        """Create the hook's cursor if missing (see :func:`.cursor.ensure_consumer`)."""
        await ensure_consumer(self.js, self.row, self.settings, new=new)

    async def refresh(self) -> None:
        """Backlog and cursor from the consumer (for ListHooks and the store)."""
        self.backlog, floor = await position(self.js, self.row.id)
        if floor > self.row.ack_floor:
            self.row.ack_floor = floor
            self.dirty = True

    # -- delivering ----------------------------------------------------------------------

    async def run(self) -> None:
        """Pull, filter and deliver until cancelled; never raises otherwise."""
        s = self.settings
        session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=s.hook_timeout),
            connector=aiohttp.TCPConnector(
                limit=s.hook_max_in_flight,
                # Names are resolved by the guard only, on every new connection, and the
                # connection goes to exactly an address it checked (no DNS cache: a
                # rebinding answer is checked like the first one).
                resolver=GuardedResolver(self.guard),
                use_dns_cache=False,
            ),
            headers={"User-Agent": USER_AGENT},
            trust_env=False,  # no proxy from the environment: it would connect for us
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
        backoff = Backoff(s.hook_backoff_initial, s.hook_backoff_max, equal_jitter=True)
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
                # Never waiting past the maximum age.
                wait = min(backoff.next(), s.hook_max_age - age)
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
        # An IP-literal URL never reaches the resolver: judged here, before every attempt.
        why = self.guard.literal_reason(self.row.url)
        if why is not None:
            log.debug("hook %s: attempt %d refused: %s", self.row.name, attempt, why)
            return ADDRESS_NOT_ALLOWED
        # What is stored and shown is a generic class (see .guard), never the
        # receiver's text: no reason phrase, no body, no exception message.
        try:
            async with session.post(
                self.row.url, data=body, headers=headers, allow_redirects=False
            ) as resp:
                # Read (a bounded amount of) the answer so the connection can be reused.
                await resp.content.read(64 << 10)
                if 200 <= resp.status < 300:
                    return None
                return http_failure(resp.status)
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            error = failure_class(exc)
            log.debug("hook %s: attempt %d: %s (%s)", self.row.name, attempt, error, describe(exc))
            return error

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
