"""The ``ipmi`` monitor against a real BMC simulator: OpenIPMI's ``ipmi_sim``
(RMCP+ on a free UDP port), with sensors changed through its console while
the test runs."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Iterator

import pytest
import yaml

from minion.monitors.base import Status
from minion.monitors.credentials import set_credentials
from minion.monitors.ipmi import value_name
from services.core.params import ParamsError, validate_params
from services.core.params.ipmi import IpmiParams
from services.core.params.secrets import mask_params
from tests.monitors.bmc_sim import (
    ADMIN_PASSWORD,
    ADMIN_USER,
    CPU_TEMP,
    FAN1,
    P12V,
    VIEWER_PASSWORD,
    VIEWER_USER,
    IpmiSim,
    ipmi_sim_path,
    start_ipmi_sim,
    stop,
)
from tests.monitors.conftest import ABANDONED, REPO, free_port

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
def bmc() -> Iterator[IpmiSim]:
    if ipmi_sim_path() is None:
        pytest.skip("ipmi_sim is not installed (Debian package openipmi)")
    sim = start_ipmi_sim()
    try:
        yield sim
    finally:
        stop(sim)


@pytest.fixture(autouse=True)
def credentials() -> Iterator[None]:
    set_credentials(
        {
            "bmc": {"username": ADMIN_USER, "password": ADMIN_PASSWORD},
            "bmc-wrong": {"username": ADMIN_USER, "password": "not-the-password"},
            "bmc-nobody": {"username": "nobody", "password": ADMIN_PASSWORD},
            "bmc-viewer": {"username": VIEWER_USER, "password": VIEWER_PASSWORD},
            "no-password": {"token": "t"},
        }
    )
    yield
    set_credentials(None)


def _params(bmc: IpmiSim, **extra: object) -> dict[str, object]:
    return {"port": bmc.port, "credential": "bmc", **extra}


async def test_up_with_power_and_sensor_values(poll, bmc):
    out = await poll("ipmi", "127.0.0.1", _params(bmc))
    assert out.status is Status.UP, out.reason
    assert out.reason == ""
    assert out.values == {
        "power_on": 1.0,
        "cpu_temp_celsius": 40.0,
        "fan1_rpm": 3000.0,
        "p12v_volts": 12.1,
        "sensors": 3.0,
        "sensors_warning": 0.0,
        "sensors_critical": 0.0,
    }
    assert out.response_time_ms > 0


async def test_a_sensor_beyond_its_thresholds_is_down_then_warning_then_up(poll, bmc):
    bmc.set_sensor(CPU_TEMP, 97)
    out = await poll("ipmi", "127.0.0.1", _params(bmc))
    assert out.status is Status.DOWN
    assert out.reason == "sensor 'CPU Temp' critical: 97 °C ≥ 95"
    assert out.values["cpu_temp_celsius"] == 97.0
    assert out.values["sensors_critical"] == 1.0

    bmc.set_sensor(CPU_TEMP, 87)
    out = await poll("ipmi", "127.0.0.1", _params(bmc))
    assert out.status is Status.UP
    assert out.reason == "sensor 'CPU Temp' warning (non-critical): 87 °C ≥ 85"
    assert out.values["warning"] == 1.0
    assert out.values["sensors_warning"] == 1.0

    bmc.set_sensor(CPU_TEMP, 110)
    out = await poll("ipmi", "127.0.0.1", _params(bmc))
    assert (out.status, out.reason) == (
        Status.DOWN,
        "sensor 'CPU Temp' non-recoverable: 110 °C ≥ 105",
    )

    bmc.set_sensor(CPU_TEMP, 41)
    out = await poll("ipmi", "127.0.0.1", _params(bmc))
    assert (out.status, out.reason) == (Status.UP, "")
    assert "warning" not in out.values


async def test_lower_thresholds_and_scaled_readings(poll, bmc):
    bmc.set_sensor(FAN1, 18)  # 900 RPM, below the lower critical 1000
    bmc.set_sensor(P12V, 106)  # 10.6 V, below 10.8
    out = await poll("ipmi", "127.0.0.1", _params(bmc))
    assert out.status is Status.DOWN
    assert out.reason == (
        "sensor 'FAN1' critical: 900 RPM ≤ 1000; sensor '12V' critical: 10.6 V ≤ 10.8"
    )
    assert out.values["fan1_rpm"] == 900.0
    assert out.values["p12v_volts"] == 10.6


async def test_chassis_power(poll, bmc):
    bmc.set_power(False)
    out = await poll("ipmi", "127.0.0.1", _params(bmc))
    assert (out.status, out.reason) == (Status.DOWN, "chassis power is off")
    assert out.values["power_on"] == 0.0
    # the sensors are still read and reported
    assert out.values["cpu_temp_celsius"] == 40.0

    out = await poll("ipmi", "127.0.0.1", _params(bmc, expect_power="off"))
    assert out.status is Status.UP, out.reason
    out = await poll("ipmi", "127.0.0.1", _params(bmc, expect_power="any"))
    assert out.status is Status.UP, out.reason

    bmc.set_power(True)
    out = await poll("ipmi", "127.0.0.1", _params(bmc, expect_power="off"))
    assert (out.status, out.reason) == (Status.DOWN, "chassis power is on, expected off")


async def test_sensor_selection(poll, bmc):
    out = await poll("ipmi", "127.0.0.1", _params(bmc, sensors_include=["^FAN", "12V"]))
    assert out.status is Status.UP, out.reason
    assert set(out.values) >= {"fan1_rpm", "p12v_volts"}
    assert "cpu_temp_celsius" not in out.values

    bmc.set_sensor(CPU_TEMP, 99)
    out = await poll("ipmi", "127.0.0.1", _params(bmc, sensors_exclude=["(?i)cpu"]))
    assert out.status is Status.UP, out.reason  # the hot CPU is not looked at
    assert "cpu_temp_celsius" not in out.values

    out = await poll("ipmi", "127.0.0.1", _params(bmc, max_sensors=1))
    assert out.status is Status.DOWN
    assert out.reason == "sensor 'CPU Temp' critical: 99 °C ≥ 95; first 1 of 3 sensors read"

    out = await poll("ipmi", "127.0.0.1", _params(bmc, sensors=False))
    assert out.status is Status.UP
    assert out.values == {"power_on": 1.0}


async def test_new_sel_entries_since_the_last_poll(poll, bmc):
    first = await poll("ipmi", "127.0.0.1", _params(bmc, sel=True))
    assert first.status is Status.UP, first.reason
    assert first.values["sel_new"] == 0.0
    base = first.values["sel_entries"]

    bmc.set_sensor(CPU_TEMP, 97, event=True)  # crosses UNC and UC: two events
    out = await poll("ipmi", "127.0.0.1", _params(bmc, sel=True))
    assert out.status is Status.DOWN
    assert out.values["sel_new"] == 2.0
    assert out.values["sel_entries"] == base + 2
    assert "2 new SEL entries: SEL #" in out.reason
    assert "sensor 'CPU Temp' upper non-critical going high asserted" in out.reason
    assert "sensor 'CPU Temp' upper critical going high asserted" in out.reason

    again = await poll("ipmi", "127.0.0.1", _params(bmc, sel=True))
    assert again.values["sel_new"] == 0.0
    assert "SEL" not in again.reason

    bmc.set_sensor(CPU_TEMP, 40, event=True)  # both deasserted
    out = await poll("ipmi", "127.0.0.1", _params(bmc, sel=True))
    assert out.status is Status.UP
    assert out.values["sel_new"] == 2.0
    assert out.reason.startswith("2 new SEL entries: ")
    assert "deasserted" in out.reason


async def test_authentication_failures_say_so(poll, bmc):
    out = await poll("ipmi", "127.0.0.1", _params(bmc, credential="bmc-wrong"))
    assert (out.status, out.reason) == (
        Status.DOWN,
        f"authentication failed: wrong password for user {ADMIN_USER!r}",
    )
    assert "not-the-password" not in out.reason

    out = await poll("ipmi", "127.0.0.1", _params(bmc, credential="bmc-nobody"))
    assert out.status is Status.DOWN
    assert out.reason.startswith("authentication failed: "), out.reason
    assert "nobody" in out.reason

    # (ipmi_sim grants any privilege level to any user, so a refused privilege
    # level cannot be shown against it.) A user-level account reads everything
    # the monitor needs:
    out = await poll("ipmi", "127.0.0.1", _params(bmc, credential="bmc-viewer"))
    assert out.status is Status.UP, out.reason


async def test_credentials_by_reference_only(poll, bmc):
    out = await poll("ipmi", "127.0.0.1", _params(bmc, credential="missing"))
    assert (out.status, out.reason) == (Status.UNKNOWN, "unknown credential missing")
    out = await poll("ipmi", "127.0.0.1", _params(bmc, credential="no-password"))
    assert (out.status, out.reason) == (
        Status.UNKNOWN,
        "credential no-password has no username and password",
    )


async def test_ipv6(poll, bmc):
    sim6 = start_ipmi_sim("::1")
    try:
        out = await poll("ipmi", "::1", _params(sim6))
    finally:
        stop(sim6)
    assert out.status is Status.UP, out.reason
    assert out.values["cpu_temp_celsius"] == 40.0


async def test_unreachable_bmc(poll):
    port = free_port(socket.SOCK_DGRAM)
    out = await poll("ipmi", "127.0.0.1", {"port": port, "credential": "bmc"}, timeout=2)
    assert out.status is Status.DOWN
    assert out.reason == f"BMC unreachable: 127.0.0.1:{port} refused (nothing listens on UDP port)"


async def test_a_silent_bmc_is_down_within_the_timeout(poll):
    # a UDP socket that reads and never answers
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        start = time.monotonic()
        out = await poll("ipmi", "127.0.0.1", {"port": port, "credential": "bmc"}, timeout=1.5)
        took = time.monotonic() - start
    assert out.status is Status.DOWN
    assert out.reason == f"BMC unreachable: no answer to RMCP ping from 127.0.0.1:{port}"
    assert took < 1.5


async def test_the_request_ttl_abandons_the_poll(poll, monitors):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as silent:
        silent.bind(("127.0.0.1", 0))
        port = silent.getsockname()[1]
        start = time.monotonic()
        out = await poll(
            "ipmi", "127.0.0.1", {"port": port, "credential": "bmc"}, timeout=5, ttl=0.6
        )
        took = time.monotonic() - start
        assert (out.status, out.reason) == (Status.UNKNOWN, ABANDONED)
        assert took < 1.5
        # the session's thread stopped at the TTL too: nothing more is sent
        await asyncio.sleep(0.3)
        silent.setblocking(False)
        drained = 0
        try:
            while True:
                silent.recv(4096)
                drained += 1
        except BlockingIOError:
            pass
        await asyncio.sleep(0.8)
        with pytest.raises(BlockingIOError):
            silent.recv(4096)
    assert drained >= 1  # the pings did arrive


def test_parameters_are_checked_and_name_the_field():
    validate_params("ipmi", {"credential": "bmc"})
    with pytest.raises(ParamsError, match=r"params\.credential: Field required"):
        validate_params("ipmi", {})
    with pytest.raises(ParamsError, match=r"params\.port: Input should be less than"):
        validate_params("ipmi", {"credential": "bmc", "port": 70000})
    with pytest.raises(ParamsError, match=r"params\.privilege: Input should be"):
        validate_params("ipmi", {"credential": "bmc", "privilege": "root"})
    with pytest.raises(ParamsError, match=r"params\.expect_power: Input should be"):
        validate_params("ipmi", {"credential": "bmc", "expect_power": "maybe"})
    with pytest.raises(ParamsError, match=r"params\.sensors_include\[0\]: .*regular expression"):
        validate_params("ipmi", {"credential": "bmc", "sensors_include": ["("]})
    with pytest.raises(ParamsError, match=r"params\.password: unknown key"):
        validate_params("ipmi", {"credential": "bmc", "password": "inline"})
    # nothing secret is stored in the parameters: they show as given
    assert mask_params("ipmi", {"credential": "bmc", "port": 623}) == {
        "credential": "bmc",
        "port": 623,
    }


def test_value_names():
    assert value_name("CPU Temp", "celsius") == "cpu_temp_celsius"
    assert value_name("+12V", "volts") == "p12v_volts"
    assert value_name("P1-DIMMA1 Temp", "celsius") == "p1_dimma1_temp_celsius"
    assert value_name("Watchdog", "") == "watchdog"


def _doc_section(name: str) -> str:
    text = (REPO / "docs" / "monitors.md").read_text()
    return text.split(f"\n## {name}\n", 1)[1].split("\n## ", 1)[0]


def test_every_parameter_is_documented_and_the_example_is_valid():
    section = _doc_section("ipmi")
    for name in IpmiParams.model_fields:
        assert f"`{name}`" in section, name
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    services = [s for s in example if isinstance(s, dict) and s.get("monitor") == "ipmi"]
    assert services
    for service in services:
        validate_params("ipmi", service["params"])
