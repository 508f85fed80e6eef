"""The ``vigil minion`` process: one process, or a parent and its workers (``minion.workers``)."""

from __future__ import annotations

from minion.app import Minion
from minion.loop import LoopFactory
from minion.loop import loop_factory as loop_factory
from minion.workers import MinionParent, worker_count
from services.core.config import MinionSettings, PkiSettings

__all__ = ["LoopFactory", "loop_factory", "make_minion"]


def make_minion(
    settings: MinionSettings, *, nats_url: str, pki: PkiSettings
) -> Minion | MinionParent:
    """The minion ``settings`` describe: :class:`Minion` for one worker, else the parent."""
    workers = worker_count(settings)
    if workers == 1:
        return Minion(settings, nats_url=nats_url, pki=pki)
    return MinionParent(settings, nats_url=nats_url, pki=pki, workers=workers)
