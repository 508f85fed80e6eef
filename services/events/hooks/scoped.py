"""A hook's deliveries carry only what its creator could read (docs/security.md, "Scopes").

:class:`ScopedHookRunner` is the :class:`~services.events.hooks.delivery.HookRunner`
every hook runs: before the hook's own filters, an event its stored
:class:`~services.core.access.visibility.EventScope` does not admit is
acknowledged and skipped, and a summary is delivered sanitized (the body that
is signed, POSTed and, if given up, parked is the sanitized one).
"""

from __future__ import annotations

import dataclasses

import aiohttp
from nats.aio.msg import Msg
from pydantic import ValidationError

from services.core.events import Event
from services.events.hooks.delivery import HookRunner
from services.events.store.hooks import hook_scope


class ScopedHookRunner(HookRunner):
    """A hook runner that delivers only what the hook's scope admits."""

    async def _take(self, m: Msg, session: aiohttp.ClientSession) -> None:
        scope = hook_scope(self.row)
        if scope.unrestricted:
            await super()._take(m, session)
            return
        try:
            event = Event.model_validate_json(m.data)
        except ValidationError:
            await super()._take(m, session)  # logged, acknowledged and skipped there
            return
        if not scope.admits(event):
            await m.ack()
            return
        shown = scope.shown(event)
        if shown is not event:
            m = dataclasses.replace(m, data=shown.to_json())
        await super()._take(m, session)
