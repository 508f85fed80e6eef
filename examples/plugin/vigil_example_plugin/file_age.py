"""``file_age``: is a file on the minion fresh (and big) enough?

The classic use: a batch job or a backup writes a file; the service is DOWN
when the file is missing, older than ``max_age_s`` or smaller than
``min_size_bytes``. (Monitoring Plugins' ``check_file_age``, as a Vigil
monitor.)

Response time: the time the ``stat`` took. Measured values: ``age_s`` and
``size_bytes``.
"""

from __future__ import annotations

import asyncio
import os
import time
from typing import ClassVar

from pydantic import Field, field_validator

from minion.plugin import (
    Monitor,
    MonitorParams,
    PollContext,
    PollOutcome,
    Target,
    elapsed_ms,
)


class FileAgeParams(MonitorParams):
    """Parameters: validated when the service is configured (unknown keys are errors)."""

    #: Absolute path of the file on the minion; ``{address}`` is replaced by the target.
    path: str = Field(min_length=2, max_length=4096)
    #: DOWN when the file was last modified longer ago than this (seconds).
    max_age_s: float = Field(default=86400.0, gt=0)
    #: DOWN when the file is smaller than this (bytes).
    min_size_bytes: int = Field(default=0, ge=0)

    @field_validator("path")
    @classmethod
    def _absolute(cls, v: str) -> str:
        if not v.startswith("/"):
            raise ValueError("must be an absolute path")
        if "/../" in v or v.endswith("/.."):
            raise ValueError("must not contain '..'")
        return v


class FileAgeMonitor(Monitor[FileAgeParams]):
    """Stats one file; never blocks the event loop (the stat runs in a thread,
    since it may hang on a network file system: the runner's deadline still
    applies to the poll)."""

    name: ClassVar[str] = "file_age"
    params_model = FileAgeParams
    description = "age and size of a file on the minion"

    async def poll(self, target: Target, params: FileAgeParams, ctx: PollContext) -> PollOutcome:
        path = params.path.replace("{address}", target.address)
        start = time.perf_counter()
        try:
            st = await asyncio.to_thread(os.stat, path)
        except FileNotFoundError:
            return PollOutcome.down(f"{path} does not exist", elapsed_ms(start))
        except OSError as exc:
            return PollOutcome.down(f"cannot stat {path}: {exc.strerror or exc}", elapsed_ms(start))
        rt = elapsed_ms(start)
        age = max(0.0, time.time() - st.st_mtime)
        values = {"age_s": round(age, 3), "size_bytes": float(st.st_size)}
        if age > params.max_age_s:
            return PollOutcome.down(
                f"{path} is {age:.0f}s old, older than {params.max_age_s:g}s", rt, **values
            )
        if st.st_size < params.min_size_bytes:
            return PollOutcome.down(
                f"{path} has {st.st_size} bytes, fewer than {params.min_size_bytes}", rt, **values
            )
        return PollOutcome.up(rt, **values)
