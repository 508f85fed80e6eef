"""The access snapshot travels from the scheduler to the event service through NATS KV.

The bucket ``vigil_access`` (stream ``KV_vigil_access``, one value per key)
holds one key, ``snapshot``: the latest :class:`AccessSnapshot` as JSON. The
scheduler writes it after every change (:class:`SnapshotPublisher`); the event
service reads it every :data:`MIRROR_INTERVAL` seconds and switches when the
revision is newer (:class:`SnapshotMirror`). A revoked token is therefore
refused by the event service within :data:`REVOKED_WITHIN` seconds while NATS
is up; while NATS is down the mirror keeps the last snapshot it had.

Only the scheduler may write the bucket and only the two services may read it
(NATS permissions, :mod:`services.core.natsauth`): the snapshot holds no secret,
but whoever could write it could let in any token.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Final

from nats.errors import NoRespondersError
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from services.core.access.tokens import AccessSnapshot, TokenVerifier
from services.core.backoff import Backoff
from services.core.tasks import wait_set

log = logging.getLogger(__name__)

BUCKET: Final = "vigil_access"
STREAM: Final = f"KV_{BUCKET}"
SUBJECT: Final = f"$KV.{BUCKET}.snapshot"
#: How often the event service looks for a newer snapshot (seconds).
MIRROR_INTERVAL: Final = 1.0
#: A revocation reaches every server within this long while NATS is up (documented).
REVOKED_WITHIN: Final = 5.0
MAX_SNAPSHOT_BYTES: Final = 8 << 20


def bucket_config() -> StreamConfig:
    """The KV bucket as a stream (what ``nats kv add vigil_access --history 1`` creates)."""
    return StreamConfig(
        name=STREAM,
        description="Vigil access snapshot (who may use which token)",
        subjects=[f"$KV.{BUCKET}.>"],
        retention=RetentionPolicy.LIMITS,
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.NEW,
        allow_direct=True,
        allow_rollup_hdrs=True,
        deny_delete=True,
        max_msg_size=MAX_SNAPSHOT_BYTES,
    )


class SnapshotPublisher:
    """Writes the newest snapshot to the bucket; retries until NATS takes it."""

    def __init__(self, js: JetStreamContext) -> None:
        self.js = js
        self._latest: AccessSnapshot | None = None
        self._wake = asyncio.Event()
        self.published_revision = 0

    def offer(self, snapshot: AccessSnapshot) -> None:
        """Publish ``snapshot`` soon (a newer offer replaces one not yet sent)."""
        self._latest = snapshot
        self._wake.set()

    async def run(self) -> None:
        """For ever: publish what was offered; on failure retry with back-off.

        The current snapshot is also written again every 60 s, so a bucket lost
        with a NATS restart is filled again without waiting for a change.
        """
        backoff = Backoff()
        while True:
            await wait_set(self._wake, 60.0)
            self._wake.clear()
            snapshot = self._latest
            if snapshot is None:
                continue
            try:
                await self.js.publish(SUBJECT, json.dumps(snapshot.to_json()).encode(), timeout=5.0)
            except Exception as exc:
                delay = backoff.next()
                log.warning(
                    "cannot publish the access snapshot (%s); retrying in %.1fs", exc, delay
                )
                await asyncio.sleep(delay)
                self._wake.set()
                continue
            backoff.reset()
            self.published_revision = snapshot.revision


class SnapshotMirror:
    """Keeps a :class:`TokenVerifier` on the newest published snapshot."""

    def __init__(self, js: JetStreamContext, verifier: TokenVerifier) -> None:
        self.js = js
        self.verifier = verifier
        self._complained = False

    async def fetch(self) -> bool:
        """Look once; whether a newer snapshot was taken."""
        try:
            msg = await self.js.get_last_msg(STREAM, SUBJECT, direct=True)
        except (NotFoundError, NoRespondersError):
            # No scheduler has published yet (no bucket: nobody answers a direct get).
            return False
        data = msg.data or b""
        try:
            snapshot = AccessSnapshot.from_json(json.loads(data))
        except ValueError as exc:
            log.error("ignoring a malformed access snapshot (%d bytes): %s", len(data), exc)
            return False
        if snapshot.revision <= self.verifier.snapshot.revision:
            return False
        self.verifier.load(snapshot)
        log.info(
            "access snapshot %d: %d users, %d tokens, %d custom roles",
            snapshot.revision,
            len(snapshot.users),
            len(snapshot.tokens),
            len(snapshot.roles),
        )
        return True

    async def run(self, interval: float = MIRROR_INTERVAL) -> None:
        """For ever: :meth:`fetch` every ``interval`` seconds; errors are logged once per outage."""
        while True:
            try:
                await self.fetch()
                self._complained = False
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not self._complained:
                    log.warning("cannot read the access snapshot (%s); keeping the last one", exc)
                    self._complained = True
            await asyncio.sleep(interval)
