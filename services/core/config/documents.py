"""The configuration file as each process sees it.

One file can serve every process, but each reads only its own sections: the
scheduler the whole document (:class:`VigilConfig`), a minion ``nats`` and
``minion`` (:class:`MinionConfig`), the event service ``nats`` and ``events``
(:class:`EventsConfig`). The loader does not even build the sections a
process skips, so a minion's memory does not grow with ``nodes:``.
"""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, model_validator

from services.core.config.access import AccessSettings
from services.core.config.fields import Strict
from services.core.config.inventory import Defaults, LocationSettings, NodeConfig
from services.core.config.packages import Package
from services.core.config.settings import (
    EventsSettings,
    MinionSettings,
    NatsSettings,
    PkiSettings,
    SchedulerSettings,
)
from services.core.ids import Location

#: Every top-level key a configuration file may have.
SECTIONS = frozenset(
    {
        "pki",
        "nats",
        "access",
        "scheduler",
        "events",
        "minion",
        "defaults",
        "locations",
        "packages",
        "nodes",
    }
)


class MinionConfig(Strict):
    """A minion's view: where NATS is and its own settings."""

    sections: ClassVar[frozenset[str]] = frozenset({"pki", "nats", "minion"})

    pki: PkiSettings = Field(default_factory=PkiSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    minion: MinionSettings = Field(default_factory=MinionSettings)


class EventsConfig(Strict):
    """The event service's view: where NATS is and its own settings."""

    sections: ClassVar[frozenset[str]] = frozenset({"pki", "nats", "access", "events"})

    pki: PkiSettings = Field(default_factory=PkiSettings)
    nats: NatsSettings = Field(default_factory=NatsSettings)
    access: AccessSettings = Field(default_factory=AccessSettings)
    events: EventsSettings = Field(default_factory=EventsSettings)


class DeploymentConfig(EventsConfig, MinionConfig):
    """The per-process sections together: what ``vigil up`` needs to start them."""

    sections: ClassVar[frozenset[str]] = frozenset(
        {"pki", "nats", "access", "scheduler", "events", "minion"}
    )

    scheduler: SchedulerSettings = Field(default_factory=SchedulerSettings)


class VigilConfig(DeploymentConfig):
    """The whole document, as the scheduler (and ``vigil check``) reads it.

    Being a :class:`DeploymentConfig`, it serves every process, which is how
    tests run them all from one document.
    """

    sections: ClassVar[frozenset[str]] = SECTIONS

    defaults: Defaults = Field(default_factory=Defaults)
    locations: dict[Location, LocationSettings] = Field(default_factory=dict)
    #: Poller packages; for a service several packages define, the last one wins.
    packages: list[Package] = Field(default_factory=list)
    nodes: list[NodeConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique_nodes(self) -> VigilConfig:
        seen: set[str] = set()
        for i, node in enumerate(self.nodes):
            if node.id in seen:
                raise ValueError(f"nodes[{i}].id: duplicate node id {node.id!r}")
            seen.add(node.id)
        names: set[str] = set()
        for i, pkg in enumerate(self.packages):
            if pkg.name in names:
                raise ValueError(f"packages[{i}].name: duplicate package {pkg.name!r}")
            names.add(pkg.name)
        return self
