"""The store-and-forward spool: poll results kept on disk until the scheduler has them.

While a minion polls its location on its own (the central site unreachable),
every result is appended here; once the scheduler is back the spool is
replayed in order and each replayed batch, once acknowledged, is committed
(its rows are deleted).

The store is one SQLite database under one directory owned by one minion::

    spool.db (+ -wal, -shm)   table ``results(seq, at, crc, payload)``

``seq`` orders the results (``AUTOINCREMENT``: never reused, so a position
read before rows were dropped never matches newer ones), ``at`` is the
result's ``finished_at`` (indexed, for the age bound), ``payload`` a
serialized ``vigil.v1.PollResult`` and ``crc`` its CRC-32.

Guarantees:

* **Crash mid-write**: every write is one transaction in WAL mode
  (``synchronous=NORMAL``); a minion killed during one loses that write only,
  and SQLite rolls the torn tail of the log back at the next open.
* **Integrity**: SQLite checks its own structure (``quick_check`` at open; a
  store that fails it is moved aside as ``spool.db.corrupt`` and a new one
  started). SQLite does not checksum row contents, so each payload keeps its
  CRC-32: a record that fails it (or does not decode) is passed over on
  replay and counted in :attr:`DiskSpool.dropped`.
* **Bounded** by size (``max_bytes`` of records: the oldest are deleted,
  ``segment_bytes`` at a time, and counted in :attr:`DiskSpool.dropped`) and
  by age (records older than ``max_age`` are deleted on replay and counted in
  :attr:`DiskSpool.expired`).
* Replay is at-least-once: a crash between sending and committing sends a
  batch again, which the scheduler ignores as stale.

Why stdlib ``sqlite3`` in a worker thread rather than ``aiosqlite``: the
same synchronous methods serve callers without an event loop (tests, tools
reading a spool) and the minion, which reaches them only through the
``*_async`` methods (:func:`asyncio.to_thread`, one at a time, in call
order), so no file I/O runs on its event loop. A spool write is one short
transaction; a thread hop per batch is all it needs, where ``aiosqlite``
would add a thread per connection and an async-only API. The minion's
polls hand results over with :meth:`DiskSpool.submit` (bounded, never
blocks); :meth:`DiskSpool.run` writes them in batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import sqlite3
import struct
import threading
import time
import zlib
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ParamSpec, TypeVar

from google.protobuf.message import DecodeError
from vigil.v1 import poll_pb2

from services.core.tasks import wait_set
from services.core.timeutil import from_timestamp

log = logging.getLogger(__name__)

DB_FILE = "spool.db"
SCHEMA_VERSION = 1
#: What SQLite stores per row besides the payload (row header, seq, at, crc, the
#: entry in the ``at`` index, page slack; measured ~60), counted against
#: ``max_bytes`` so that the bound tracks the file.
ROW_OVERHEAD = 64
PAGE = 4096
#: The former format (``seg-<n>.log`` files of length/CRC/time-headed records, and a
#: ``cursor`` file), taken over at open by :meth:`DiskSpool._import_segments`.
_SEGMENT = "seg-"
_HEADER = struct.Struct(">IId")
#: Results handed over by :meth:`DiskSpool.submit` and not written yet; beyond
#: this (the disk far slower than the polls) the newest are dropped and counted.
STAGE_MAX = 10_000
#: Most results written in one transaction.
WRITE_BATCH = 1000

_P = ParamSpec("_P")
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Position:
    """Where a replay read stopped: the last ``seq`` it covered."""

    seq: int
    #: Records passed over because they failed their CRC or did not decode
    #: (counted dropped at commit).
    unreadable: int = 0


class DiskSpool:
    """A bounded, replayable SQLite queue of poll results.

    The plain methods block (they do file I/O) and are thread-safe; code on an
    event loop uses their ``*_async`` forms and :meth:`submit`.
    """

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int,
        max_age: float,
        segment_bytes: int | None = None,
        open_existing: bool = True,
    ) -> None:
        """``open_existing``: open a store already on disk now (it blocks); when
        ``False``, :meth:`open_async` does it."""
        self.directory = Path(directory)
        self.path = self.directory / DB_FILE
        self.max_bytes = max_bytes
        self.max_age = max_age
        #: The size bound frees this much at a time, so that a full spool does not
        #: pay a delete for every append.
        self.segment_bytes = segment_bytes or max(16 << 10, min(4 << 20, max_bytes // 8))
        self._db: sqlite3.Connection | None = None
        self._lock = threading.Lock()
        self._async_lock = asyncio.Lock()
        self._unread = 0
        self._bytes = 0
        self.appended = 0
        #: Unread records lost to the size bound, to corruption or to a failed write.
        self.dropped = 0
        #: Unread records older than ``max_age``, deleted.
        self.expired = 0
        #: Results dropped because :meth:`submit` found ``STAGE_MAX`` waiting.
        self.stage_overflows = 0
        self._staged: deque[poll_pb2.PollResult] = deque()
        self._have_staged = asyncio.Event()
        # Nothing is created on disk before the first result: most minions never spool.
        if open_existing and self._exists():
            self.open()

    # -- start-up ------------------------------------------------------------------------

    def open(self) -> None:
        """Open the store if it is on disk (a corrupt one is moved aside)."""
        with self._lock:
            if self._db is None and self._exists():
                self._connect()

    def _connect(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        try:
            self._db = self._init_db()
        except sqlite3.OperationalError:
            raise  # cannot open it (permissions, disk): not a reason to throw it away
        except sqlite3.DatabaseError as exc:
            self._move_aside(exc)
            self._db = self._init_db()
        self._import_segments(self._db)
        if self._unread:
            log.info("spool %s: %d result(s) waiting to be replayed", self.directory, self._unread)

    def _init_db(self) -> sqlite3.Connection:
        # Autocommit mode: every transaction below is explicit (see _tx).
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            (check,) = db.execute("PRAGMA quick_check").fetchone()
            if check != "ok":
                raise sqlite3.DatabaseError(f"quick_check: {check}")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"unknown spool schema version {version}")
            # Only takes effect before the first table: lets deleted pages go back to the OS.
            db.execute("PRAGMA auto_vacuum = INCREMENTAL")
            db.execute("PRAGMA journal_mode = WAL")
            # WAL + NORMAL: a process crash loses no committed write; a power cut
            # may lose the last ones but never corrupts the store.
            db.execute("PRAGMA synchronous = NORMAL")
            # The log is folded into the database every quarter of the bound (at most
            # 4 MiB, SQLite's default), and cut back to that size: it stays small beside it.
            wal_pages = max(4, min(1000, self.max_bytes // PAGE // 4))
            db.execute(f"PRAGMA wal_autocheckpoint = {wal_pages}")
            db.execute(f"PRAGMA journal_size_limit = {wal_pages * PAGE}")
            db.execute(
                "CREATE TABLE IF NOT EXISTS results ("
                " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
                " at REAL NOT NULL, crc INTEGER NOT NULL, payload BLOB NOT NULL)"
            )
            db.execute("CREATE INDEX IF NOT EXISTS results_at ON results(at)")
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            count, size = db.execute(
                "SELECT COUNT(*), COALESCE(SUM(length(payload)), 0) FROM results"
            ).fetchone()
        except BaseException:
            db.close()
            raise
        self._unread = count
        self._bytes = size + count * ROW_OVERHEAD
        return db

    def _exists(self) -> bool:
        return self.path.exists() or any(self.directory.glob(f"{_SEGMENT}*.log"))

    def _import_segments(self, db: sqlite3.Connection) -> None:
        """Take over what the former spool format (record files) left unread, once."""
        segments = sorted(self.directory.glob(f"{_SEGMENT}*.log"))
        if not segments:
            return
        try:
            seq, offset, _ = (int(x) for x in (self.directory / "cursor").read_text().split())
        except (OSError, ValueError):
            seq, offset = 0, 0
        rows: list[tuple[float, int, bytes]] = []
        for path in segments:
            digits = path.name[len(_SEGMENT) : -len(".log")]
            if not digits.isdigit():
                continue
            number = int(digits)
            data = path.read_bytes()
            pos = offset if number == seq else 0
            while number >= seq and pos + _HEADER.size <= len(data):
                length, crc, at = _HEADER.unpack_from(data, pos)
                payload = data[pos + _HEADER.size : pos + _HEADER.size + length]
                if len(payload) < length or zlib.crc32(payload) != crc:
                    break  # torn or corrupt: the rest of that file was lost before too
                rows.append((at, crc, payload))
                pos += _HEADER.size + length
        db.execute("BEGIN IMMEDIATE")
        db.executemany("INSERT INTO results (at, crc, payload) VALUES (?, ?, ?)", rows)
        db.execute("COMMIT")
        self._unread += len(rows)
        self._bytes += sum(len(p) + ROW_OVERHEAD for _, _, p in rows)
        for path in [*segments, self.directory / "cursor"]:
            with contextlib.suppress(OSError):
                path.unlink()
        log.info(
            "spool %s: %d result(s) taken over from the former format", self.directory, len(rows)
        )

    def _move_aside(self, exc: Exception) -> None:
        """The store cannot be read: keep it for a look (one copy), start a new one."""
        log.error(
            "spool %s is corrupt (%s): moved aside as %s.corrupt; "
            "the result(s) in it are lost (%d counted)",
            self.directory,
            exc,
            DB_FILE,
            self._unread,
        )
        self.dropped += self._unread
        self._unread = self._bytes = 0
        if self._db is not None:
            with contextlib.suppress(sqlite3.Error):
                self._db.close()
            self._db = None
        os.replace(self.path, self.path.with_name(DB_FILE + ".corrupt"))
        for suffix in ("-wal", "-shm"):
            with contextlib.suppress(OSError):
                self.path.with_name(DB_FILE + suffix).unlink()

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        """The connection inside one write transaction (the lock held), opening it if need be."""
        with self._lock:
            if self._db is None:
                self._connect()
            db = self._db
            assert db is not None
            db.execute("BEGIN IMMEDIATE")
            try:
                yield db
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    # -- writing ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Results on disk not replayed (committed) yet."""
        return self._unread

    @property
    def size_bytes(self) -> int:
        """Bytes of the records kept, as counted against ``max_bytes``."""
        return self._bytes

    def append(self, result: poll_pb2.PollResult) -> None:
        """Keep one result (its ``finished_at`` orders and ages it)."""
        self.append_many([result])

    def append_many(self, results: Iterable[poll_pb2.PollResult]) -> None:
        """Keep results, in order, in one transaction."""
        now = time.time()
        rows = []
        for r in results:
            payload = r.SerializeToString()
            at = from_timestamp(r.finished_at) if r.HasField("finished_at") else now
            rows.append((at, zlib.crc32(payload), payload))
        if not rows:
            return
        with self._tx() as db:
            db.executemany("INSERT INTO results (at, crc, payload) VALUES (?, ?, ?)", rows)
            self._unread += len(rows)
            self.appended += len(rows)
            self._bytes += sum(len(p) + ROW_OVERHEAD for _, _, p in rows)
            self._enforce_size(db)

    def _enforce_size(self, db: sqlite3.Connection) -> None:
        if self._bytes <= self.max_bytes:
            return
        goal = self._bytes - max(0, self.max_bytes - self.segment_bytes)
        freed, last = 0, 0
        for seq, length in db.execute("SELECT seq, length(payload) FROM results ORDER BY seq"):
            freed += length + ROW_OVERHEAD
            last = seq
            if freed >= goal:
                break
        gone = self._delete(db, "seq <= ?", last)
        self.dropped += gone
        if gone:
            log.warning("spool %s full: dropped %d oldest result(s)", self.directory, gone)

    def _delete(self, db: sqlite3.Connection, where: str, arg: float) -> int:
        """Delete rows (counted off pending and size); how many went."""
        lengths = db.execute(f"DELETE FROM results WHERE {where} RETURNING length(payload)", (arg,))
        sizes = [n for (n,) in lengths]
        self._unread -= len(sizes)
        self._bytes -= sum(sizes) + len(sizes) * ROW_OVERHEAD
        return len(sizes)

    def expire(self, wall: float | None = None) -> None:
        """Delete the results older than ``max_age``."""
        if self._db is None:
            return
        horizon = (wall if wall is not None else time.time()) - self.max_age
        with self._tx() as db:
            self.expired += self._delete(db, "at < ?", horizon)

    # -- replay ----------------------------------------------------------------------------

    def read(
        self, limit: int, wall: float | None = None
    ) -> tuple[list[poll_pb2.PollResult], Position]:
        """Up to ``limit`` results, oldest first, and where they end.

        Nothing is consumed until :meth:`commit`; results older than
        ``max_age`` are deleted first (counted expired). A store that cannot
        be read returns nothing (see :meth:`commit_expired`).
        """
        if self._db is None:
            return [], Position(0)
        try:
            self.expire(wall)
            with self._lock:
                assert self._db is not None
                rows = self._db.execute(
                    "SELECT seq, crc, payload FROM results ORDER BY seq LIMIT ?", (limit,)
                ).fetchall()
        except sqlite3.OperationalError:
            raise  # busy, I/O: the caller tries again later
        except sqlite3.DatabaseError as exc:
            log.error("spool %s cannot be read: %s", self.directory, exc)
            return [], Position(0)
        out: list[poll_pb2.PollResult] = []
        unreadable = 0
        for _seq, crc, payload in rows:
            try:
                if zlib.crc32(payload) != crc:
                    raise DecodeError("CRC mismatch")
                out.append(poll_pb2.PollResult.FromString(payload))
            except DecodeError as exc:
                unreadable += 1
                log.warning("spool %s: an unreadable record is skipped (%s)", self.directory, exc)
        return out, Position(rows[-1][0] if rows else 0, unreadable)

    def commit(self, pos: Position) -> None:
        """The results up to ``pos`` are delivered: delete them."""
        if self._db is None or pos.seq <= 0:
            return
        with self._tx() as db:
            gone = self._delete(db, "seq <= ?", pos.seq)
        # Counted once: a position committed again (or dropped meanwhile) deletes nothing.
        if gone:
            self.dropped += pos.unreadable
        if not self._unread:
            self._vacuum()

    def _vacuum(self) -> None:
        """Give the pages of a drained spool back to the file system."""
        with self._lock, contextlib.suppress(sqlite3.Error):
            assert self._db is not None
            self._db.execute("PRAGMA incremental_vacuum")

    def commit_expired(self, pos: Position) -> None:
        """:meth:`read` returned no result up to ``pos`` (only unreadable records): move on.

        When that moves nothing although results are counted, the store cannot
        be read: it is moved aside (its results counted dropped) and a new one
        started, so that a reader never spins on it.
        """
        before = self.pending
        self.commit(pos)
        if before and self.pending >= before:
            with self._lock:
                self._move_aside(sqlite3.DatabaseError(f"{before} result(s) cannot be read"))

    def close(self) -> None:
        """Write what was submitted, then close the store."""
        self._write_staged()
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None

    # -- from an event loop ----------------------------------------------------------------

    async def _off_loop(self, fn: Callable[_P, _T], *args: _P.args, **kw: _P.kwargs) -> _T:
        """Run a blocking method in a worker thread, after the ones called before it."""
        async with self._async_lock:
            return await asyncio.to_thread(fn, *args, **kw)

    async def open_async(self) -> None:
        """:meth:`open`, off the event loop."""
        await self._off_loop(self.open)

    async def read_async(
        self, limit: int, wall: float | None = None
    ) -> tuple[list[poll_pb2.PollResult], Position]:
        """:meth:`read`, off the event loop."""
        return await self._off_loop(self.read, limit, wall)

    async def commit_async(self, pos: Position) -> None:
        """:meth:`commit`, off the event loop."""
        await self._off_loop(self.commit, pos)

    async def commit_expired_async(self, pos: Position) -> None:
        """:meth:`commit_expired`, off the event loop."""
        await self._off_loop(self.commit_expired, pos)

    async def close_async(self) -> None:
        """:meth:`close`, off the event loop."""
        await self._off_loop(self.close)

    def submit(self, result: poll_pb2.PollResult) -> None:
        """Hand a result over to :meth:`run` to be written (never blocks).

        Beyond ``STAGE_MAX`` waiting, the result is dropped and counted.
        """
        if len(self._staged) >= STAGE_MAX:
            self.dropped += 1
            self.stage_overflows += 1
            if self.stage_overflows % 1000 == 1:  # a line per thousand, not per result
                log.error("spool %s: writes fall behind; results dropped", self.directory)
            return
        self._staged.append(result)
        self._have_staged.set()

    async def flush(self) -> None:
        """Write what was submitted so far."""
        await self._off_loop(self._write_staged)

    def _write_staged(self) -> int:
        written = 0
        while self._staged:
            batch = [self._staged.popleft() for _ in range(min(WRITE_BATCH, len(self._staged)))]
            try:
                self.append_many(batch)
            except (OSError, sqlite3.Error) as exc:
                self.dropped += len(batch)
                log.error("cannot spool %d result(s) to %s: %s", len(batch), self.directory, exc)
                continue
            written += len(batch)
        return written

    async def run(self, on_written: Callable[[], None] | None = None) -> None:
        """Write submitted results, in batches, for ever; ``on_written`` after each write."""
        while True:
            self._have_staged.clear()
            if not self._staged:
                await wait_set(self._have_staged, 1.0)
                continue
            if await self._off_loop(self._write_staged) and on_written is not None:
                on_written()
