"""The link between a minion's parent process and its workers: frames on a socket pair.

Each frame is a 4-byte big-endian payload length, a 1-byte kind, the payload.
The socket pair is created by the parent and inherited by the worker it
starts (nothing else can reach it), so the first frame may carry the
worker's settings as a pickle (they hold secrets, which a JSON dump of the
settings would mask). Everything after it is JSON (rare control and
statistics frames) or packed records (results, many per frame).

Results travel as serialized ``vigil.v1.PollResult`` bytes: the worker
serializes each once, and the parent forwards the bytes into its
``ResultBatch`` to the scheduler without parsing them
(:func:`minion.sink_client.encode_results`).
"""

from __future__ import annotations

import asyncio
import enum
import json
import struct
from collections.abc import Iterable, Iterator
from typing import Any

#: Frame header: payload length, kind.
HEADER = struct.Struct(">IB")
#: A frame larger than this is a broken peer (results frames stay far below it).
MAX_FRAME = 64 << 20
#: One result record: the request's ``expires_at`` (wall clock; 0: none), its length.
_RESULT = struct.Struct(">dI")
#: One tagged record (a store-and-forward poll or its result): the tag, its length.
_TAGGED = struct.Struct(">QI")


class Kind(enum.IntEnum):
    """What a frame carries."""

    #: Parent → worker, first: the worker's configuration (a pickled dict).
    CONFIG = 1
    #: Parent → worker: JSON ``{"autonomous": bool}``, ``{"stop": true}``.
    CONTROL = 2
    #: Parent → worker: store-and-forward polls, tagged ``PollRequest`` records.
    POLLS = 3
    #: Worker → parent: JSON ``{"pid": int, "monitors": [...]}``, once, at start.
    HELLO = 10
    #: Worker → parent: JSON counters and link state (periodic, and on every change).
    STATS = 11
    #: Worker → parent: result records of requests taken from NATS.
    RESULTS = 12
    #: Worker → parent: tagged results of the store-and-forward polls.
    SITE_RESULTS = 13


class FrameError(Exception):
    """The peer sent something that is not a frame of this protocol."""


def frame(kind: Kind, payload: bytes) -> bytes:
    """One frame, ready to write."""
    return HEADER.pack(len(payload), kind) + payload


def json_frame(kind: Kind, obj: Any) -> bytes:
    """A frame of JSON."""
    return frame(kind, json.dumps(obj, separators=(",", ":")).encode())


async def read_frame(reader: asyncio.StreamReader) -> tuple[Kind, bytes] | None:
    """The next frame; ``None`` at the end of the stream (the peer is gone)."""
    try:
        head = await reader.readexactly(HEADER.size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    size, kind = HEADER.unpack(head)
    if size > MAX_FRAME:
        raise FrameError(f"a frame of {size} bytes (at most {MAX_FRAME})")
    try:
        payload = await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None
    try:
        return Kind(kind), payload
    except ValueError:
        raise FrameError(f"unknown frame kind {kind}") from None


def pack_results(records: Iterable[tuple[float, bytes]]) -> bytes:
    """Result records: ``(expires_at, serialized PollResult)``."""
    return b"".join(_RESULT.pack(expires, len(data)) + data for expires, data in records)


def unpack_results(payload: bytes) -> Iterator[tuple[float, bytes]]:
    """The records of :func:`pack_results`."""
    for expires, data in _unpack(payload, _RESULT):
        yield float(expires), data


def pack_tagged(records: Iterable[tuple[int, bytes]]) -> bytes:
    """Tagged records: ``(tag, serialized message)``."""
    return b"".join(_TAGGED.pack(tag, len(data)) + data for tag, data in records)


def unpack_tagged(payload: bytes) -> Iterator[tuple[int, bytes]]:
    """The records of :func:`pack_tagged`."""
    for tag, data in _unpack(payload, _TAGGED):
        yield int(tag), data


def _unpack(payload: bytes, head: struct.Struct) -> Iterator[tuple[float | int, bytes]]:
    view = memoryview(payload)
    at, end = 0, len(payload)
    while at < end:
        if at + head.size > end:
            raise FrameError("a truncated record")
        key, size = head.unpack_from(view, at)
        at += head.size
        if at + size > end:
            raise FrameError("a truncated record")
        yield key, bytes(view[at : at + size])
        at += size
