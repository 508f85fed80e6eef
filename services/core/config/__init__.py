"""The YAML configuration, validated at load: schema, sections and loader.

One file can serve every process (``vigil up`` hands the same file to the
scheduler, the event service and the minions); each reads only its own
sections (see :mod:`services.core.config.documents`). Unknown keys, wrong
types and bad addresses fail start-up with a message that names the file and
the key. What the scheduler checks on top (packages, monitor parameters)
lives with the scheduler.
"""

from services.core.config.documents import (
    SECTIONS,
    DeploymentConfig,
    EventsConfig,
    MinionConfig,
    VigilConfig,
)
from services.core.config.fields import (
    DatabaseUrl,
    HostPort,
    NatsUrl,
    PositiveDuration,
    Strict,
)
from services.core.config.inventory import (
    Defaults,
    InterfaceConfig,
    LocationSettings,
    NodeConfig,
    ServiceConfig,
)
from services.core.config.loader import (
    ENV_OVERRIDES,
    ConfigError,
    load_config,
    load_document,
    parse_config,
    parse_document,
    read_yaml,
)
from services.core.config.settings import (
    EventsSettings,
    MinionSettings,
    NatsSettings,
    PkiSettings,
    SchedulerSettings,
)
from services.core.params.nagios import DEFAULT_PLUGIN_DIRS

__all__ = [
    "DEFAULT_PLUGIN_DIRS",
    "ENV_OVERRIDES",
    "SECTIONS",
    "ConfigError",
    "DatabaseUrl",
    "Defaults",
    "DeploymentConfig",
    "EventsConfig",
    "EventsSettings",
    "HostPort",
    "InterfaceConfig",
    "LocationSettings",
    "MinionConfig",
    "MinionSettings",
    "NatsSettings",
    "NatsUrl",
    "NodeConfig",
    "PkiSettings",
    "PositiveDuration",
    "SchedulerSettings",
    "ServiceConfig",
    "Strict",
    "VigilConfig",
    "load_config",
    "load_document",
    "parse_config",
    "parse_document",
    "read_yaml",
]
