"""Capped exponential back-off with jitter, for every retry loop of Vigil."""

from __future__ import annotations

import asyncio
import random


class Backoff:
    """Delays of ``initial``, doubling up to ``cap``, each jittered by ±``jitter``.

    Jitter keeps many clients (minions after a scheduler restart, hooks after
    a receiver outage) from retrying in lock-step.

    With ``equal_jitter`` each delay is drawn from ``[delay/2, delay]``
    instead ("equal jitter"): never longer than the nominal delay, so a
    retry budget planned on the nominal delays (a hook's maximum age) holds.
    """

    def __init__(
        self,
        initial: float = 0.5,
        cap: float = 10.0,
        jitter: float = 0.2,
        *,
        equal_jitter: bool = False,
    ) -> None:
        self.initial = initial
        self.cap = cap
        self.jitter = jitter
        self.equal_jitter = equal_jitter
        self._delay = initial

    def next(self) -> float:
        """The delay to wait now; the following one doubles (up to the cap)."""
        if self.equal_jitter:
            delay = self._delay / 2 + random.uniform(0, self._delay / 2)
        else:
            delay = self._delay * random.uniform(1 - self.jitter, 1 + self.jitter)
        self._delay = min(self.cap, self._delay * 2)
        return delay

    def reset(self) -> None:
        """Back to the initial delay (after a success)."""
        self._delay = self.initial

    async def sleep(self) -> float:
        """Wait the next delay; returns it."""
        delay = self.next()
        await asyncio.sleep(delay)
        return delay
