"""SNMP credentials from the minion's site profiles, through the whole pipeline."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from minion.monitors.base import Status
from minion.monitors.snmp_config import set_snmp_profiles
from services.core.natsserver import NatsServer
from services.scheduler.model import ServiceKey
from tests.helpers import Stack, make_config, wait_for


async def test_minion_profiles_supply_the_community(
    tmp_path: Path, nats_server: NatsServer, snmpsim: dict[str, Any], caplog: Any
) -> None:
    # The service names no community: only the minion's profile knows it is "geist".
    node = {
        "id": "sensor-1",
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [
                    {
                        "name": "SNMP",
                        "monitor": "snmp",
                        # Only the "geist" recording describes itself as a temperature sensor.
                        "params": {
                            "port": snmpsim["port"],
                            "oid": "1.3.6.1.2.1.1.1.0",
                            "operator": "~",
                            "operand": "Temp Sensor",
                        },
                        "timeout": "2s",
                    },
                ],
            }
        ],
    }
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [node],
        defaults={"interval": "1s", "timeout": "2s", "retries": 0},
    )
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        await stack.start_minion(
            snmp_profiles=[
                {"match": {"addresses": ["192.0.2.0/24"]}, "community": "public"},
                {"match": {"addresses": ["127.0.0.0/8"]}, "community": "geist"},
            ]
        )
        rt = stack.scheduler.services[ServiceKey("sensor-1", "127.0.0.1", "SNMP")]  # type: ignore[union-attr]
        await wait_for(
            lambda: rt.status is Status.UP, timeout=20, what="SNMP UP with the profile's community"
        )
        assert "geist" not in caplog.text  # credentials are never logged
    finally:
        await stack.stop()
        set_snmp_profiles(None)


async def test_wrong_profile_community_is_down(
    tmp_path: Path, nats_server: NatsServer, snmpsim: dict[str, Any]
) -> None:
    node = {
        "id": "sensor-2",
        "interfaces": [
            {
                "ip": "127.0.0.1",
                "services": [
                    {"name": "SNMP", "monitor": "snmp", "params": {"port": snmpsim["port"]}}
                ],
            }
        ],
    }
    cfg = make_config(
        tmp_path,
        nats_server.url,
        [node],
        defaults={"interval": "1s", "timeout": "1s", "retries": 0},
    )
    stack = await Stack(cfg, nats_server.url).start(events=False, minion_locations=())
    try:
        await stack.start_minion(snmp_profiles=[{"community": "nobody-knows-this"}])
        rt = stack.scheduler.services[ServiceKey("sensor-2", "127.0.0.1", "SNMP")]  # type: ignore[union-attr]
        await wait_for(
            lambda: rt.status is Status.DOWN, timeout=20, what="DOWN with a wrong community"
        )
        assert "nobody-knows-this" not in rt.last_reason
    finally:
        await stack.stop()
        set_snmp_profiles(None)
