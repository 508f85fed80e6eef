"""The on-disk store-and-forward spool: order, commit, bounds, crashes."""

from __future__ import annotations

import contextlib
import shutil
import sqlite3
import struct
import time
import zlib
from pathlib import Path

from vigil.v1 import common_pb2, poll_pb2

from minion.spool import DB_FILE, DiskSpool
from services.core.timeutil import set_timestamp


def result(i: int, at: float | None = None) -> poll_pb2.PollResult:
    r = poll_pb2.PollResult(
        request_id=f"r{i}",
        service=common_pb2.ServiceRef(node_id="n", ip="10.0.0.1", service="S"),
        status=common_pb2.POLL_STATUS_UP,
        reason="x" * 100,
    )
    set_timestamp(r.finished_at, at if at is not None else time.time())
    return r


def ids(results: list[poll_pb2.PollResult]) -> list[str]:
    return [r.request_id for r in results]


def rows_on_disk(directory: Path) -> int:
    """Records in the store, read by another connection (as a tool would)."""
    with contextlib.closing(sqlite3.connect(directory / DB_FILE)) as db:
        (count,) = db.execute("SELECT COUNT(*) FROM results").fetchone()
    return int(count)


def test_nothing_on_disk_until_the_first_result(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "s", max_bytes=1 << 20, max_age=3600)
    assert spool.pending == 0
    assert spool.read(10)[0] == []
    assert not (tmp_path / "s").exists()


def test_replay_in_order_and_commit_moves_on(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600, segment_bytes=2000)
    for i in range(50):
        spool.append(result(i))
    assert spool.pending == 50
    assert rows_on_disk(tmp_path) == 50  # on disk, not only in memory
    first, pos = spool.read(20)
    assert ids(first) == [f"r{i}" for i in range(20)]
    again, _ = spool.read(20)
    assert ids(again) == ids(first)  # nothing moves before the commit
    spool.commit(pos)
    assert spool.pending == 30
    rest, pos = spool.read(100)
    assert ids(rest) == [f"r{i}" for i in range(20, 50)]
    spool.commit(pos)
    assert spool.pending == 0
    assert spool.read(10)[0] == []
    assert rows_on_disk(tmp_path) == 0  # committed records are deleted


def test_position_survives_a_restart(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600, segment_bytes=2000)
    for i in range(30):
        spool.append(result(i))
    _, pos = spool.read(12)
    spool.commit(pos)
    spool.close()
    reopened = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600, segment_bytes=2000)
    assert reopened.pending == 18
    assert ids(reopened.read(100)[0]) == [f"r{i}" for i in range(12, 30)]
    reopened.append(result(30))
    assert ids(reopened.read(100)[0])[-1] == "r30"


def test_size_bound_drops_the_oldest_and_counts(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=64 << 10, max_age=3600, segment_bytes=8 << 10)
    for i in range(2000):
        spool.append(result(i))
    assert spool.size_bytes <= 64 << 10
    assert spool.dropped > 0
    assert spool.pending + spool.dropped == 2000
    kept, _ = spool.read(5000)
    assert len(kept) == spool.pending
    assert ids(kept)[-1] == "r1999"  # the newest stay
    assert ids(kept) == sorted(ids(kept), key=lambda s: int(s[1:]))


def test_age_bound_skips_old_results_and_counts(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=60, segment_bytes=2000)
    old = time.time() - 120
    for i in range(30):
        spool.append(result(i, at=old))
    for i in range(30, 35):
        spool.append(result(i))
    kept, pos = spool.read(100)
    assert ids(kept) == [f"r{i}" for i in range(30, 35)]
    spool.commit(pos)
    assert spool.expired == 30
    assert spool.pending == 0


def test_a_torn_last_write_is_rolled_back(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path / "live", max_bytes=1 << 20, max_age=3600)
    for i in range(5):
        spool.append(result(i))
    db = tmp_path / "live" / DB_FILE
    wal = db.with_name(DB_FILE + "-wal")
    before = wal.read_bytes()
    spool.append(result(99))  # the next write, which a crash will tear
    after = wal.read_bytes()
    assert len(after) > len(before)
    # The disk as a crash in the middle of that write leaves it: the database
    # file and the write-ahead log cut short inside the new transaction.
    crashed = tmp_path / "crashed"
    crashed.mkdir()
    shutil.copy(db, crashed / DB_FILE)
    (crashed / (DB_FILE + "-wal")).write_bytes(
        after[: len(before) + (len(after) - len(before)) // 2]
    )
    reopened = DiskSpool(crashed, max_bytes=1 << 20, max_age=3600)
    assert reopened.pending == 5
    reopened.append(result(5))
    assert ids(reopened.read(100)[0]) == [f"r{i}" for i in range(6)]
    spool.close()


def test_a_corrupt_record_is_skipped_and_counted(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600)
    for i in range(5):
        spool.append(result(i))
    spool.close()
    # A bit flipped inside one payload: SQLite's structure is intact, the record's CRC is not.
    with contextlib.closing(sqlite3.connect(tmp_path / DB_FILE)) as db, db:
        (seq, payload) = db.execute("SELECT seq, payload FROM results LIMIT 1 OFFSET 2").fetchone()
        flipped = bytes([payload[0]]) + bytes([payload[1] ^ 0x01]) + payload[2:]
        db.execute("UPDATE results SET payload = ? WHERE seq = ?", (flipped, seq))
    reopened = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600)
    kept, pos = reopened.read(100)
    assert ids(kept) == ["r0", "r1", "r3", "r4"]
    reopened.commit(pos)
    assert reopened.pending == 0
    assert reopened.dropped == 1


def test_a_store_sqlite_cannot_read_is_moved_aside(tmp_path: Path) -> None:
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600)
    for i in range(5):
        spool.append(result(i))
    spool.close()
    (tmp_path / DB_FILE).write_bytes(b"not a database" * 500)
    reopened = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600)
    assert reopened.pending == 0
    assert (tmp_path / (DB_FILE + ".corrupt")).exists()
    reopened.append(result(5))
    assert ids(reopened.read(100)[0]) == ["r5"]


def test_results_left_in_the_former_format_are_taken_over(tmp_path: Path) -> None:
    """Record files of the spool before SQLite (an upgrade during a cut): unread ones replayed."""
    header = struct.Struct(">IId")

    records = []
    for i in range(7):
        payload = result(i).SerializeToString()
        records.append(header.pack(len(payload), zlib.crc32(payload), time.time()) + payload)
    (tmp_path / "seg-000000000001.log").write_bytes(b"".join(records[:4]))
    torn = records[6][:20]  # a crash in the middle of the last write
    (tmp_path / "seg-000000000002.log").write_bytes(b"".join(records[4:]) + torn)
    (tmp_path / "cursor").write_text(f"2 {len(records[4])} 1\n")  # r0..r4 were replayed
    spool = DiskSpool(tmp_path, max_bytes=1 << 20, max_age=3600)
    assert spool.pending == 2
    assert ids(spool.read(100)[0]) == ["r5", "r6"]
    assert not list(tmp_path.glob("seg-*.log")) and not (tmp_path / "cursor").exists()
