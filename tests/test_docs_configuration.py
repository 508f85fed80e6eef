"""docs/configuration.md stays in step with services/core/config.py.

Every key of every section is documented (and nothing else), the
environment-variable table is exactly ENV_OVERRIDES, and the "complete file"
example loads and equals the defaults.
"""

from __future__ import annotations

import re
from pathlib import Path

from pydantic import BaseModel

from services.core.config import (
    ENV_OVERRIDES,
    Defaults,
    EventsSettings,
    InterfaceConfig,
    LocationSettings,
    MinionSettings,
    NatsSettings,
    NodeConfig,
    PkiSettings,
    SchedulerSettings,
    ServiceConfig,
    VigilConfig,
    parse_config,
)
from services.core.config.access import AccessSettings
from services.core.config.packages import (
    DowntimeStep,
    Flapping,
    MaintenanceWindow,
    Package,
    PackageFilter,
    PackageService,
)

DOC = Path(__file__).resolve().parent.parent / "docs" / "configuration.md"

#: Heading (``## `x` `` or ``**X**``) → the model its table documents.
TABLES: dict[str, type[BaseModel]] = {
    "pki": PkiSettings,
    "nats": NatsSettings,
    "access": AccessSettings,
    "scheduler": SchedulerSettings,
    "events": EventsSettings,
    "minion": MinionSettings,
    "defaults": Defaults,
    "locations": LocationSettings,
    "Node": NodeConfig,
    "Interface": InterfaceConfig,
    "Service": ServiceConfig,
    "Package": Package,
    "Filter": PackageFilter,
    "Definition": PackageService,
    "Downtime": DowntimeStep,
    "Flapping": Flapping,
    "Maintenance": MaintenanceWindow,
}


def documented_keys() -> dict[str, list[str]]:
    """First-column keys of the table rows under each heading (``## `x` `` or ``**X**``)."""
    found: dict[str, list[str]] = {}
    current: str | None = None
    for line in DOC.read_text().splitlines():
        heading = re.fullmatch(r"## `(\w+)`|\*\*(\w+)\*\*", line.strip())
        if heading:
            current = heading.group(1) or heading.group(2)
        elif line.startswith("#"):
            current = None
        elif current is not None and (m := re.match(r"\| `(\w+)` \|", line)):
            found.setdefault(current, []).append(m.group(1))
    return found


def test_every_key_is_documented() -> None:
    found = documented_keys()
    for heading, model in TABLES.items():
        assert heading in found, f"no table for {heading}"
        assert sorted(found[heading]) == sorted(model.model_fields), heading
    sections = {h for h in TABLES if h.islower()} | {"nodes", "packages"}
    assert sections == set(VigilConfig.model_fields)


def test_environment_table_is_env_overrides() -> None:
    rows = re.findall(r"^\| `(VIGIL_\w+)` \| `([\w.]+)` \|", DOC.read_text(), re.M)
    assert dict(rows) == ENV_OVERRIDES
    assert len(rows) == len(ENV_OVERRIDES)


def test_the_complete_file_is_the_defaults() -> None:
    import yaml

    text = DOC.read_text().split("## A complete file", 1)[1]
    block = re.search(r"```yaml\n(.*?)```", text, re.S)
    assert block is not None
    cfg = parse_config(yaml.safe_load(block.group(1)), "configuration.md", env={})
    assert cfg.model_dump(exclude={"nodes"}) == VigilConfig().model_dump(exclude={"nodes"})
    documented = set(yaml.safe_load(block.group(1)))
    assert documented == set(VigilConfig.model_fields)
