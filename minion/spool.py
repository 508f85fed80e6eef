"""The store-and-forward spool: poll results kept on disk until the scheduler has them.

While a minion polls its location on its own (the central site unreachable),
every result is appended here; once the scheduler is back the spool is
replayed in order and each replayed batch, once acknowledged, is committed
(the read position moves on and fully read files are deleted).

Layout, under one directory owned by one minion::

    seg-000000000001.log   records, appended
    seg-000000000002.log   (a new file every ``segment_bytes``)
    cursor                 "<segment> <offset> <records read in it>": the replay position

A record is a 16-byte header (payload length, CRC-32 of the payload,
``finished_at`` as a double) and a serialized ``vigil.v1.PollResult``. A torn
record at the end of the last file (a crash during a write) is cut off at
start; a corrupt one elsewhere ends its file (what follows is counted lost).

Bounded twice: by size (``max_bytes``: the oldest file goes, its unread
records counted in :attr:`DiskSpool.dropped`) and by age (records older than
``max_age`` are skipped on replay and whole files of them deleted, counted in
:attr:`DiskSpool.expired`). Replay is at-least-once: a crash between sending
and committing sends a batch again, which the scheduler ignores as stale.
"""

from __future__ import annotations

import contextlib
import logging
import os
import struct
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from google.protobuf.message import DecodeError
from vigil.v1 import poll_pb2

from services.core.timeutil import from_timestamp

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IId")
#: No result is this big; a larger length means a corrupt header.
MAX_RECORD = 1 << 20
SEGMENT_PREFIX = "seg-"
SEGMENT_SUFFIX = ".log"


@dataclass(slots=True)
class _Segment:
    seq: int
    path: Path
    size: int = 0
    records: int = 0
    last_at: float = 0.0


@dataclass(frozen=True, slots=True)
class Position:
    """Where a replay stopped: segment, byte offset, records read in that segment."""

    seq: int
    offset: int
    index: int
    #: Records passed over because they were too old (counted at commit).
    expired: int = 0


class DiskSpool:
    """An append-only, bounded, replayable file queue of poll results."""

    def __init__(
        self,
        directory: str | Path,
        *,
        max_bytes: int,
        max_age: float,
        segment_bytes: int | None = None,
    ) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.max_age = max_age
        self.segment_bytes = segment_bytes or max(16 << 10, min(4 << 20, max_bytes // 8))
        self._segments: list[_Segment] = []
        self._cursor = Position(1, 0, 0)
        self._unread = 0
        self.appended = 0
        #: Unread records lost to the size bound (or to corruption).
        self.dropped = 0
        #: Unread records older than ``max_age``, skipped or deleted.
        self.expired = 0
        self._opened = False
        # Nothing is created on disk before the first result: most minions never spool.
        if self.directory.is_dir():
            self._open()

    # -- start-up ------------------------------------------------------------------------

    def _open(self) -> None:
        self._opened = True
        self.directory.mkdir(parents=True, exist_ok=True)
        seqs = sorted(
            int(p.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)])
            for p in self.directory.glob(f"{SEGMENT_PREFIX}*{SEGMENT_SUFFIX}")
            if p.name[len(SEGMENT_PREFIX) : -len(SEGMENT_SUFFIX)].isdigit()
        )
        self._cursor = self._load_cursor()
        for i, seq in enumerate(seqs):
            seg = _Segment(seq, self._path(seq))
            self._scan(seg, last=i == len(seqs) - 1)
            self._segments.append(seg)
        if not self._segments:
            seq = max(1, self._cursor.seq)
            self._segments.append(_Segment(seq, self._path(seq)))
            self._segments[0].path.touch()
        first = self._segments[0]
        if self._cursor.seq < first.seq or self._segment(self._cursor.seq) is None:
            self._cursor = Position(first.seq, 0, 0)
        cur = self._segment(self._cursor.seq)
        assert cur is not None
        if self._cursor.offset > cur.size or self._cursor.index > cur.records:
            self._cursor = Position(cur.seq, 0, 0)
        self._unread = (
            sum(s.records for s in self._segments if s.seq >= self._cursor.seq) - self._cursor.index
        )
        if self._unread:
            log.info("spool %s: %d result(s) waiting to be replayed", self.directory, self._unread)

    def _scan(self, seg: _Segment, *, last: bool) -> None:
        good = 0
        with seg.path.open("rb") as f:
            data = f.read()
        pos = 0
        while pos + HEADER.size <= len(data):
            length, crc, at = HEADER.unpack_from(data, pos)
            end = pos + HEADER.size + length
            if (
                length > MAX_RECORD
                or end > len(data)
                or zlib.crc32(data[pos + HEADER.size : end]) != crc
            ):
                break
            seg.records += 1
            seg.last_at = max(seg.last_at, at)
            pos = good = end
        if good < len(data):
            if last:
                log.warning("spool %s: cutting a torn record off %s", self.directory, seg.path.name)
                with seg.path.open("r+b") as f:
                    f.truncate(good)
            else:
                log.warning(
                    "spool %s: %s is corrupt after byte %d; the rest is lost",
                    self.directory,
                    seg.path.name,
                    good,
                )
        seg.size = good

    def _load_cursor(self) -> Position:
        try:
            seq, offset, index = (int(x) for x in (self.directory / "cursor").read_text().split())
            return Position(seq, offset, index)
        except (OSError, ValueError):
            return Position(0, 0, 0)

    def _save_cursor(self) -> None:
        tmp = self.directory / "cursor.tmp"
        tmp.write_text(f"{self._cursor.seq} {self._cursor.offset} {self._cursor.index}\n")
        os.replace(tmp, self.directory / "cursor")

    def _path(self, seq: int) -> Path:
        return self.directory / f"{SEGMENT_PREFIX}{seq:012d}{SEGMENT_SUFFIX}"

    def _segment(self, seq: int) -> _Segment | None:
        for s in self._segments:
            if s.seq == seq:
                return s
        return None

    # -- writing ---------------------------------------------------------------------------

    @property
    def pending(self) -> int:
        """Results not replayed (committed) yet."""
        return self._unread

    @property
    def size_bytes(self) -> int:
        """Bytes on disk."""
        return sum(s.size for s in self._segments)

    def append(self, result: poll_pb2.PollResult) -> None:
        """Keep one result (its ``finished_at`` orders and ages it)."""
        if not self._opened:
            self._open()
        payload = result.SerializeToString()
        at = from_timestamp(result.finished_at) if result.HasField("finished_at") else time.time()
        tail = self._segments[-1]
        if tail.size >= self.segment_bytes:
            tail = self._roll()
        record = HEADER.pack(len(payload), zlib.crc32(payload), at) + payload
        # One write per record, no userspace buffer: a crash of the minion loses at most
        # the record being written (cut off at the next start).
        with tail.path.open("ab", buffering=0) as f:
            f.write(record)
        tail.size += len(record)
        tail.records += 1
        tail.last_at = max(tail.last_at, at)
        self._unread += 1
        self.appended += 1
        self._enforce_size()

    def _roll(self) -> _Segment:
        seg = _Segment(self._segments[-1].seq + 1, self._path(self._segments[-1].seq + 1))
        seg.path.touch()
        self._segments.append(seg)
        return seg

    def _enforce_size(self) -> None:
        while self.size_bytes > self.max_bytes and len(self._segments) > 1:
            self._drop_first(expired=False)

    def _drop_first(self, *, expired: bool) -> None:
        seg = self._segments.pop(0)
        unread = 0
        if seg.seq > self._cursor.seq:
            unread = seg.records
        elif seg.seq == self._cursor.seq:
            unread = seg.records - self._cursor.index
        if seg.seq >= self._cursor.seq:
            self._cursor = Position(self._segments[0].seq, 0, 0)
            self._save_cursor()
        self._unread -= unread
        if expired:
            self.expired += unread
        else:
            self.dropped += unread
            if unread:
                log.warning("spool %s full: dropped %d oldest result(s)", self.directory, unread)
        with contextlib.suppress(OSError):
            seg.path.unlink()

    def expire(self, wall: float | None = None) -> None:
        """Delete whole files whose newest record is older than ``max_age``."""
        if not self._opened:
            return
        horizon = (wall if wall is not None else time.time()) - self.max_age
        while len(self._segments) > 1 and self._segments[0].last_at < horizon:
            self._drop_first(expired=True)

    # -- replay ----------------------------------------------------------------------------

    def read(
        self, limit: int, wall: float | None = None
    ) -> tuple[list[poll_pb2.PollResult], Position]:
        """Up to ``limit`` results from the replay position, oldest first, and where they end.

        Nothing moves until :meth:`commit`. Results older than ``max_age`` are
        passed over (counted when committed).
        """
        if not self._opened:
            return [], self._cursor
        self.expire(wall)
        horizon = (wall if wall is not None else time.time()) - self.max_age
        out: list[poll_pb2.PollResult] = []
        pos = self._cursor
        expired = 0
        for seg in self._segments:
            if seg.seq < pos.seq:
                continue
            if seg.seq > pos.seq:
                pos = Position(seg.seq, 0, 0, expired)
            if pos.offset >= seg.size:
                continue
            with seg.path.open("rb") as f:
                f.seek(pos.offset)
                data = f.read(seg.size - pos.offset)
            off, index = 0, pos.index
            while off + HEADER.size <= len(data) and len(out) < limit:
                length, _crc, at = HEADER.unpack_from(data, off)
                end = off + HEADER.size + length
                if end > len(data):
                    break
                chunk = data[off + HEADER.size : end]
                off, index = end, index + 1
                if at < horizon:
                    expired += 1
                    continue
                try:
                    out.append(poll_pb2.PollResult.FromString(chunk))
                except DecodeError:
                    expired += 1  # checked by CRC at start; only a bug gets here
            pos = Position(seg.seq, pos.offset + off, index, expired)
            if len(out) >= limit:
                break
        return out, pos

    def commit(self, pos: Position) -> None:
        """The results up to ``pos`` are delivered: move on, delete files fully read."""
        cur = self._cursor
        if not self._opened:
            return
        if pos.seq < cur.seq or (pos.seq == cur.seq and pos.offset <= cur.offset):
            return  # already past it (a file was dropped meanwhile)
        if self._segment(pos.seq) is None:
            return
        passed = (
            sum(s.records for s in self._segments if cur.seq <= s.seq < pos.seq)
            - cur.index
            + pos.index
        )
        self._unread = max(0, self._unread - passed)
        self.expired += pos.expired
        self._cursor = Position(pos.seq, pos.offset, pos.index)
        while self._segments[0].seq < pos.seq:
            seg = self._segments.pop(0)
            with contextlib.suppress(OSError):
                seg.path.unlink()
        head = self._segments[0]
        if len(self._segments) > 1 and self._cursor.offset >= head.size:
            # Fully read and no longer written to: start the next file.
            self._segments.pop(0)
            with contextlib.suppress(OSError):
                head.path.unlink()
            self._cursor = Position(self._segments[0].seq, 0, 0)
        tail = self._segments[-1]
        if self._cursor.seq == tail.seq and self._cursor.offset >= tail.size:
            self._unread = 0  # at the end: nothing can be left (whatever the counts said)
        self._save_cursor()

    def commit_expired(self, pos: Position) -> None:
        """:meth:`read` returned no result up to ``pos`` (only expired records): move on.

        When that moves nothing although results are counted, they cannot be
        read: they are counted dropped, so that a reader never spins on them.
        """
        before = self.pending
        self.commit(pos)
        if before and self.pending >= before:
            log.error("spool %s: %d result(s) counted but unreadable", self.directory, before)
            self.dropped += before
            self._unread = 0

    def close(self) -> None:
        """Persist the replay position."""
        if self._opened:
            self._save_cursor()
