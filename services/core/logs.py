"""Logging set-up shared by every Vigil process."""

from __future__ import annotations

import logging
import sys


def setup_logging(level: str = "INFO", component: str = "vigil") -> None:
    """One line per record on stderr, tagged with the component name."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)-7s {component} %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S"
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Libraries that are chatty at INFO.
    for noisy in ("nats", "aiohttp.access", "alembic.runtime.migration"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Below WARNING these print SQL statements and their parameters, which hold
    # node configurations with inline secrets: never, whatever --log-level says.
    for leaky in ("aiosqlite", "sqlalchemy.engine", "sqlalchemy.pool", "asyncpg"):
        logging.getLogger(leaky).setLevel(logging.WARNING)
