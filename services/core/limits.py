"""Fair limits per identity: call rates (token buckets) and concurrent streams.

One caller must not be able to take what every caller shares (issue 12, item
6). Two kinds of limit, each keyed by the caller's identity
(:func:`caller_key`), documented in docs/security.md ("Limits") and
configured in the ``scheduler`` and ``events`` sections:

* :class:`RateLimit`, a token bucket per identity: ``burst`` calls at once,
  refilled at ``rate`` per second. A call beyond it is refused with
  ``RESOURCE_EXHAUSTED`` (:class:`LimitExceeded`), a message that names the
  limit, the identity and when to retry, and the same hint in the trailing
  metadata ``retry-after`` (seconds, a decimal string). Every call counts,
  refused-as-invalid ones too. At most :data:`MAX_IDENTITIES` buckets are
  kept: beyond, the least recently used full bucket (one that says nothing a
  fresh bucket would not) is forgotten, else the least recently used one.
* :class:`StreamLimit`, open streams per identity and, optionally, in total,
  held with a ``with`` (or ``async with``) block around the stream. At the
  per-identity cap a new stream is refused, or, with ``replace_oldest``, the
  identity's oldest stream is told to end (:attr:`Slot.ended`) and the new
  one takes its place: ResultSink sessions work that way, so a minion's
  reconnect is never refused while its old stream lingers.

Refusals are counted in ``vigil_limit_refused_total{limit}``, replaced
streams in ``vigil_limit_streams_replaced_total{limit}``, open streams in
``vigil_limit_open_streams{limit}``: labelled by the limit only, never by the
identity, so the number of series stays bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Final, TypeVar

from prometheus_client import Counter, Gauge

from services.core.access.principal import CURRENT
from services.core.config.settings import EventsSettings, SchedulerSettings
from services.core.errors import ResourceExhaustedError
from services.core.pki import Identity
from services.core.tls import peer_identity

T = TypeVar("T")

#: Buckets kept per rate limit, at most (one per identity seen recently).
MAX_IDENTITIES: Final = 10_000
#: How many of the least recently used buckets are looked at for a full one to forget.
EVICTION_SCAN: Final = 64
#: The trailing metadata key of a refusal's retry hint (seconds, e.g. ``0.4``).
RETRY_AFTER: Final = "retry-after"

REFUSED = Counter(
    "vigil_limit_refused_total",
    "Calls refused (RESOURCE_EXHAUSTED) by a per-identity or total limit, by limit",
    ["limit"],
)
REPLACED = Counter(
    "vigil_limit_streams_replaced_total",
    "Streams told to end because a newer stream of the same identity took the slot, by limit",
    ["limit"],
)
OPEN_STREAMS = Gauge(
    "vigil_limit_open_streams", "Streams open under a stream limit, by limit", ["limit"]
)


# -- who is calling --------------------------------------------------------------------------


def identity_key(identity: Identity) -> str:
    """``certificate:operator/alice``; a minion's names its location: ``certificate:minion/paris/m1``."""
    if identity.location is not None:
        return f"certificate:{identity.role}/{identity.location}/{identity.name}"
    return f"certificate:{identity.role}/{identity.name}"


def certificate_key(context: Any) -> str:
    """The key of the certificate the peer proved, else of its address (plaintext mode)."""
    peer = peer_identity(context)
    if peer is not None:
        return identity_key(peer[0])
    return f"peer:{context.peer()}"


def caller_key(context: Any) -> str:
    """The limits' key for the caller of the call being served.

    The principal the access interceptor set for the call
    (:attr:`~services.core.access.principal.Principal.key`: a token, a user
    or a certificate), else the peer's certificate, else the peer's address
    (the plaintext development mode has no identities).
    """
    principal = CURRENT.get()
    if principal is not None:
        return principal.key
    return certificate_key(context)


# -- refusals --------------------------------------------------------------------------------


class LimitExceeded(ResourceExhaustedError):
    """A per-identity limit refused the call; ``retry_after`` is the hint in seconds, if any."""

    def __init__(self, limit: str, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        #: The limit's name (the metric label).
        self.limit = limit
        self.retry_after = retry_after


def retry_hint(seconds: float) -> float:
    """``seconds`` rounded up to the next tenth (never 0: a hint of 0 would invite a spin)."""
    return max(0.1, math.ceil(seconds * 10 - 1e-9) / 10)


def _tell_retry_after(context: Any, seconds: float) -> None:
    set_trailing = getattr(context, "set_trailing_metadata", None)
    if set_trailing is not None:
        # Kept by context.abort(), which grpcerrors calls with no metadata of its own.
        set_trailing(((RETRY_AFTER, f"{seconds:.1f}"),))


# -- rates -----------------------------------------------------------------------------------


class _Bucket:
    __slots__ = ("at", "tokens")

    def __init__(self, tokens: float, at: float) -> None:
        self.tokens = tokens
        self.at = at


class RateLimit:
    """A token bucket per identity: ``burst`` calls at once, ``rate`` more per second.

    ``rate=None`` turns the limit off. ``clock`` is monotonic seconds
    (injectable for tests); ``key`` maps a call's context to the identity.
    """

    def __init__(
        self,
        name: str,
        title: str,
        rate: float | None,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        max_identities: int = MAX_IDENTITIES,
        key: Callable[[Any], str] = caller_key,
    ) -> None:
        if rate is not None and rate <= 0:
            raise ValueError(f"{name}: rate must be positive (or None: no limit)")
        if burst < 1 or max_identities < 1:
            raise ValueError(f"{name}: burst and max_identities must be at least 1")
        self.name = name
        self.title = title
        self.rate = rate
        self.burst = burst
        self.max_identities = max_identities
        self._clock = clock
        self._key = key
        self._buckets: OrderedDict[str, _Bucket] = OrderedDict()
        #: Buckets forgotten that were not full (more than MAX_IDENTITIES busy identities).
        self.evicted_busy = 0
        REFUSED.labels(name)

    def __len__(self) -> int:
        return len(self._buckets)

    def _refill(self, bucket: _Bucket, now: float) -> None:
        assert self.rate is not None
        elapsed = max(0.0, now - bucket.at)
        bucket.tokens = min(float(self.burst), bucket.tokens + elapsed * self.rate)
        bucket.at = now

    def _full(self, bucket: _Bucket, now: float) -> bool:
        """Whether ``bucket`` has refilled to ``burst``: a fresh bucket would say the same."""
        assert self.rate is not None
        return bucket.tokens + max(0.0, now - bucket.at) * self.rate >= self.burst

    def _make_room(self, now: float) -> None:
        """Forget buckets until one more fits: a full one among the oldest, else the oldest."""
        while len(self._buckets) >= self.max_identities:
            oldest = itertools.islice(self._buckets.items(), EVICTION_SCAN)
            victim = next((k for k, b in oldest if self._full(b, now)), None)
            if victim is not None:
                del self._buckets[victim]
            else:
                self._buckets.popitem(last=False)
                self.evicted_busy += 1

    def wait(self, key: str) -> float:
        """Take a token for ``key``: 0.0 if there was one, else the seconds until there is."""
        if self.rate is None:
            return 0.0
        now = self._clock()
        bucket = self._buckets.get(key)
        if bucket is None:
            self._make_room(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        else:
            self._buckets.move_to_end(key)
            self._refill(bucket, now)
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / self.rate

    def refusal(self, key: str, wait: float) -> LimitExceeded:
        """The error for ``key``, refused for ``wait`` more seconds."""
        hint = retry_hint(wait)
        return LimitExceeded(
            self.name,
            f"{self.title} rate limit for {key}: {self.rate:g}/s, burst {self.burst}; "
            f"retry in {hint:.1f} s",
            retry_after=hint,
        )

    def admit(self, context: Any) -> None:
        """Let the call go on, or raise :class:`LimitExceeded` (and set ``retry-after``)."""
        if self.rate is None:
            return
        key = self._key(context)
        wait = self.wait(key)
        if wait > 0:
            REFUSED.labels(self.name).inc()
            error = self.refusal(key, wait)
            assert error.retry_after is not None
            _tell_retry_after(context, error.retry_after)
            raise error


# -- streams ---------------------------------------------------------------------------------


class Slot:
    """One stream held under a :class:`StreamLimit`; released when the block ends.

    :attr:`ended` is set when a newer stream of the same identity took this
    slot (``replace_oldest``): the stream should end now.
    """

    def __init__(self, limit: StreamLimit, key: str) -> None:
        self.limit = limit
        self.key = key
        self.ended = asyncio.Event()
        #: Why :attr:`ended` was set.
        self.reason = ""
        self._linked: list[asyncio.Event] = []
        self._held = True

    def end(self, reason: str) -> None:
        """Tell the stream to end (it no longer counts)."""
        self.reason = reason
        self.ended.set()
        for event in self._linked:
            event.set()

    def link(self, event: asyncio.Event) -> None:
        """Set ``event`` too when this slot ends (at once if it has)."""
        if self.ended.is_set():
            event.set()
        else:
            self._linked.append(event)

    async def unless_ended(self, aw: Awaitable[T]) -> T:
        """``await aw``, unless this slot ends first: then :class:`LimitExceeded`."""
        work: asyncio.Future[T] = asyncio.ensure_future(aw)
        stop: asyncio.Future[Any] = asyncio.ensure_future(self.ended.wait())
        pending: set[asyncio.Future[Any]] = {work, stop}
        try:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
        except BaseException:
            work.cancel()
            raise
        finally:
            stop.cancel()
        if work in done:
            return work.result()
        work.cancel()
        raise LimitExceeded(self.limit.name, self.reason)

    def release(self) -> None:
        """The stream ended (idempotent)."""
        if self._held:
            self._held = False
            self.limit._release(self)

    def __enter__(self) -> Slot:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    async def __aenter__(self) -> Slot:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.release()


class StreamLimit:
    """Open streams: at most ``per_identity`` per identity, and ``total`` over all (if set).

    :meth:`hold` takes a slot or raises :class:`LimitExceeded`; with
    ``replace_oldest`` an identity at its cap gets the slot of its oldest
    stream instead, which is told to end (:attr:`Slot.ended`).
    """

    def __init__(
        self,
        name: str,
        title: str,
        per_identity: int,
        total: int | None = None,
        *,
        replace_oldest: bool = False,
        total_message: str | None = None,
        key: Callable[[Any], str] = caller_key,
    ) -> None:
        if per_identity < 1 or (total is not None and total < 1):
            raise ValueError(f"{name}: limits must be at least 1")
        self.name = name
        self.title = title
        self.per_identity = per_identity
        self.total = total
        self.replace_oldest = replace_oldest
        self.total_message = total_message
        self._key = key
        #: Identity → its slots, oldest first (an identity without a stream has no entry).
        self._slots: dict[str, list[Slot]] = {}
        self._open = 0
        self._gauge = OPEN_STREAMS.labels(name)
        REFUSED.labels(name)
        if total is not None:
            REFUSED.labels(f"{name}_total")
        if replace_oldest:
            REPLACED.labels(name)

    @property
    def open(self) -> int:
        """Streams held now, over all identities."""
        return self._open

    def open_for(self, key: str) -> int:
        """Streams ``key`` holds now."""
        return len(self._slots.get(key, ()))

    def hold(self, context: Any) -> Slot:
        """A slot for the caller of ``context`` (use as ``with limit.hold(context):``)."""
        return self.hold_key(self._key(context))

    def hold_key(self, key: str) -> Slot:
        """A slot for ``key``; raises :class:`LimitExceeded` when a cap is reached."""
        held = self._slots.get(key, [])
        if len(held) >= self.per_identity:
            if not self.replace_oldest:
                REFUSED.labels(self.name).inc()
                raise LimitExceeded(
                    self.name,
                    f"{self.title} limit for {key}: {self.per_identity} open at once; "
                    "close one and retry",
                )
            oldest = held[0]
            self._release(oldest)
            oldest._held = False
            REPLACED.labels(self.name).inc()
            oldest.end(
                f"{self.title} of {key} replaced by a newer one "
                f"(limit {self.per_identity} per identity)"
            )
        if self.total is not None and self._open >= self.total:
            REFUSED.labels(f"{self.name}_total").inc()
            raise LimitExceeded(
                f"{self.name}_total",
                self.total_message
                or f"{self.title} limit: {self.total} open at once over all callers; retry later",
            )
        slot = Slot(self, key)
        self._slots.setdefault(key, []).append(slot)
        self._open += 1
        self._gauge.inc()
        return slot

    def _release(self, slot: Slot) -> None:
        held = self._slots.get(slot.key)
        if held is None or slot not in held:
            return
        held.remove(slot)
        if not held:
            del self._slots[slot.key]
        self._open -= 1
        self._gauge.dec()


# -- the limits of each server ---------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EventsLimits:
    """The event service's limits (``events`` settings)."""

    subscribers: StreamLimit
    publish: RateLimit
    hook_writes: RateLimit

    @classmethod
    def from_settings(cls, s: EventsSettings) -> EventsLimits:
        """The limits ``s`` configures."""
        return cls(
            subscribers=StreamLimit(
                "subscribe",
                "Subscribe stream",
                s.subscribe_per_identity,
                s.max_subscribers,
                total_message=f"too many subscribers (limit {s.max_subscribers}); retry later",
            ),
            publish=RateLimit("publish", "Publish", s.publish_rate, s.publish_burst),
            hook_writes=RateLimit(
                "hook_write", "CreateHook/UpdateHook", s.hook_write_rate, s.hook_write_burst
            ),
        )


@dataclass(frozen=True, slots=True)
class SchedulerLimits:
    """The scheduler's limits (``scheduler`` settings)."""

    poll_now: RateLimit
    sink_sessions: StreamLimit

    @classmethod
    def from_settings(cls, s: SchedulerSettings | None = None) -> SchedulerLimits:
        """The limits ``s`` configures (the defaults without it)."""
        s = s or SchedulerSettings()
        return cls(
            poll_now=RateLimit("poll_now", "PollNow", s.poll_now_rate, s.poll_now_burst),
            # Keyed by the minion's certificate, whatever principal the call maps to.
            sink_sessions=StreamLimit(
                "sink_sessions",
                "ResultSink session",
                s.sink_sessions_per_minion,
                replace_oldest=True,
                key=certificate_key,
            ),
        )
