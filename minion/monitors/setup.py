"""Install the minion's monitor settings (process-wide, once at start)."""

from __future__ import annotations

import logging

from minion.monitors.credentials import set_credentials
from minion.monitors.nagios import set_plugin_dirs
from minion.monitors.registry import available, set_monitors_allow
from minion.monitors.snmp_config import set_snmp_profiles
from services.core.config.settings import MinionSettings

log = logging.getLogger(__name__)


def configure_monitors(settings: MinionSettings) -> None:
    """SNMP profiles, credentials, plugin directories and the monitor allow-list."""
    set_snmp_profiles(settings.snmp_profiles)
    set_credentials(settings.credentials)
    set_plugin_dirs(settings.plugin_dirs)
    allow = settings.monitors_allow
    if allow is not None:
        missing = sorted(set(allow) - set(available()))
        if missing:
            # not fatal: a plugin may be installed later; until then its polls are UNKNOWN
            log.warning(
                "minion.monitors_allow names monitors not installed: %s", ", ".join(missing)
            )
    set_monitors_allow(allow)
    # names only: never the secrets
    log.info(
        "monitors: %s; credentials: %s",
        "all" if allow is None else ", ".join(sorted(allow)) or "none",
        ", ".join(sorted(settings.credentials)) or "none",
    )
