"""Logging: a process's log never carries what the database drivers would print."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from services.core.logs import setup_logging

DRIVERS = ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg")


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in DRIVERS}
    try:
        yield
    finally:
        root.handlers[:], root.level = handlers, level
        for name, lvl in levels.items():
            logging.getLogger(name).setLevel(lvl)


@pytest.mark.parametrize("level", ["DEBUG", "INFO", "WARNING"])
@pytest.mark.usefixtures("restore_logging")
def test_sql_statements_and_parameters_are_never_logged(level: str) -> None:
    # SQLAlchemy logs each statement with its parameters at INFO, aiosqlite at
    # DEBUG; the parameters hold node configurations with inline secrets.
    setup_logging(level, "test")
    assert logging.getLogger("services").isEnabledFor(getattr(logging, level))
    for name in DRIVERS:
        assert not logging.getLogger(name).isEnabledFor(logging.INFO), name
