"""The ``redfish`` monitor against a real Redfish service: sushy-tools' emulator
(fake driver) over HTTPS with a self-signed certificate and basic
authentication, its power state and resources changed while the test runs."""

from __future__ import annotations

import asyncio
import json
import ssl
import time
from collections.abc import Iterator

import pytest
import yaml
from aiohttp import web

from minion.monitors.base import Status
from minion.monitors.credentials import set_credentials
from minion.monitors.redfish import (
    power_readings,
    resolve_pointer,
    sensor_reading,
    thermal_readings,
)
from services.core.params import ParamsError, validate_params
from services.core.params.redfish import RedfishParams
from services.core.params.secrets import mask_params
from tests.monitors.conftest import REPO, free_port, serve_app
from tests.monitors.redfish_sim import (
    PASSWORD,
    SYSTEM_NAME,
    SYSTEM_UUID,
    USER,
    RedfishSim,
    self_signed,
    start_redfish_sim,
    stop,
    sushy_available,
)

pytestmark = pytest.mark.timeout(60)

SYSTEM = f"/redfish/v1/Systems/{SYSTEM_UUID}"
CHASSIS = "/redfish/v1/Chassis/15693887-7984-9484-3272-842188918912"


@pytest.fixture(scope="module")
def service() -> Iterator[RedfishSim]:
    if not sushy_available():
        pytest.skip("sushy-tools is not installed (pip install sushy-tools)")
    sim = start_redfish_sim()
    try:
        yield sim
    finally:
        stop(sim)


@pytest.fixture
def bmc(service: RedfishSim) -> Iterator[RedfishSim]:
    """The module's emulator, back to its starting state after each test."""
    yield service
    service.set_power("On")
    service.set_system_health("OK")
    service.set_thermal({})


@pytest.fixture(autouse=True)
def credentials() -> Iterator[None]:
    set_credentials(
        {
            "bmc": {"username": USER, "password": PASSWORD},
            "bmc-wrong": {"username": USER, "password": "wrong-pass"},
            "token-only": {"token": "t"},
        }
    )
    yield
    set_credentials(None)


def _params(bmc: RedfishSim, **extra: object) -> dict[str, object]:
    return {"port": bmc.port, "credential": "bmc", "ca_file": str(bmc.cert), **extra}


async def test_up_with_power_health_and_readings(poll, bmc):
    out = await poll("redfish", "127.0.0.1", _params(bmc))
    assert out.status is Status.UP, out.reason
    assert out.reason == ""
    assert out.values == {
        "power_on": 1.0,
        "health": 0.0,
        "cpu_temp_celsius": 41.0,
        "chassis_intake_temp_celsius": 25.0,
        "baseboard_system_fan_rpm": 2100.0,
        "baseboard_system_fan_backup_rpm": 2050.0,
        "sensors": 4.0,
        "sensors_warning": 0.0,
        "sensors_critical": 0.0,
    }
    assert out.response_time_ms > 0


async def test_power_state(poll, bmc):
    bmc.set_power("Off")
    out = await poll("redfish", "127.0.0.1", _params(bmc))
    assert (out.status, out.reason) == (Status.DOWN, f"system {SYSTEM_NAME!r} PowerState is Off")
    assert out.values["power_on"] == 0.0
    out = await poll("redfish", "127.0.0.1", _params(bmc, expect_power="off"))
    assert out.status is Status.UP, out.reason
    out = await poll("redfish", "127.0.0.1", _params(bmc, expect_power="any"))
    assert out.status is Status.UP, out.reason


async def test_health_in_the_services_words(poll, bmc):
    bmc.set_system_health("Critical", "Fan 2 failed: no rotation detected")
    out = await poll("redfish", "127.0.0.1", _params(bmc))
    assert out.status is Status.DOWN
    assert out.reason == (
        f"system {SYSTEM_NAME!r} health Critical: Fan 2 failed: no rotation detected"
    )
    assert out.values["health"] == 2.0

    bmc.set_system_health("Warning")
    out = await poll("redfish", "127.0.0.1", _params(bmc))
    assert (out.status, out.reason) == (Status.UP, f"system {SYSTEM_NAME!r} health Warning")
    assert out.values["warning"] == 1.0
    assert out.values["health"] == 1.0


async def test_readings_beyond_the_services_thresholds(poll, bmc):
    # CPU Temp: UpperThresholdNonCritical 42, Critical 45, Fatal 48
    bmc.set_thermal({'"ReadingCelsius": 41': '"ReadingCelsius": 46'})
    out = await poll("redfish", "127.0.0.1", _params(bmc))
    assert (out.status, out.reason) == (Status.DOWN, "sensor 'CPU Temp' critical: 46 °C ≥ 45")
    assert out.values["cpu_temp_celsius"] == 46.0
    assert out.values["sensors_critical"] == 1.0

    bmc.set_thermal({'"ReadingCelsius": 41': '"ReadingCelsius": 43'})
    out = await poll("redfish", "127.0.0.1", _params(bmc))
    assert out.status is Status.UP
    assert out.reason == "sensor 'CPU Temp' warning (non-critical): 43 °C ≥ 42"
    assert out.values["warning"] == 1.0

    bmc.set_thermal(
        {
            '"ReadingCelsius": 41': '"ReadingCelsius": 49',
            '"Reading": 2100': '"Reading": 0',
        }
    )
    out = await poll("redfish", "127.0.0.1", _params(bmc))
    assert out.status is Status.DOWN
    assert out.reason == (
        "sensor 'CPU Temp' fatal: 49 °C ≥ 48; fan 'BaseBoard System Fan' fatal: 0 RPM ≤ 0"
    )

    # a sensor left out is not judged
    out = await poll("redfish", "127.0.0.1", _params(bmc, sensors_exclude=["CPU", "Fan$"]))
    assert out.status is Status.UP, out.reason
    assert "cpu_temp_celsius" not in out.values


async def test_a_sensors_own_health(poll, bmc):
    bmc.set_thermal({'"Health": "OK"': '"Health": "Critical"'})  # the first: CPU Temp
    out = await poll("redfish", "127.0.0.1", _params(bmc))
    assert (out.status, out.reason) == (Status.DOWN, "sensor 'CPU Temp' health Critical: 41 °C")


async def test_resource_checks_by_json_pointer(poll, bmc):
    ok = {"path": SYSTEM, "pointer": "/Status/State", "equals": "Enabled"}
    inlet = {
        "path": f"{CHASSIS}/Thermal",
        "pointer": "/Temperatures/1/ReadingCelsius",
        "maximum": 30,
        "value": "inlet_celsius",
    }
    out = await poll("redfish", "127.0.0.1", _params(bmc, checks=[ok, inlet]))
    assert out.status is Status.UP, out.reason
    assert out.values["inlet_celsius"] == 25.0

    wrong = {"path": SYSTEM, "pointer": "/Status/State", "equals": "Disabled"}
    missing = {"path": SYSTEM, "pointer": "/Oem/Nothing"}
    power = {"path": SYSTEM, "pointer": "/PowerState", "one_of": ["Off", "PoweringOff"]}
    out = await poll(
        "redfish",
        "127.0.0.1",
        _params(bmc, check_system=False, sensors=False, checks=[wrong, missing, power]),
    )
    assert out.status is Status.DOWN
    assert out.reason == (
        f"{SYSTEM} /Status/State is 'Enabled', expected 'Disabled'; "
        f"{SYSTEM} /Oem/Nothing not found; "
        f"{SYSTEM} /PowerState is 'On', expected one of 'Off', 'PoweringOff'"
    )

    bmc.set_thermal({'"ReadingCelsius": 25': '"ReadingCelsius": 35'})
    out = await poll("redfish", "127.0.0.1", _params(bmc, sensors=False, checks=[inlet]))
    assert out.status is Status.DOWN
    assert out.reason == f"{CHASSIS}/Thermal /Temperatures/1/ReadingCelsius is 35, above 30"
    assert out.values["inlet_celsius"] == 35.0


async def test_tls_is_verified_unless_told_otherwise(poll, bmc):
    base = {"port": bmc.port, "credential": "bmc"}
    out = await poll("redfish", "127.0.0.1", base)
    assert out.status is Status.DOWN
    assert out.reason.startswith("TLS certificate not accepted: "), out.reason
    assert "self-signed" in out.reason or "self signed" in out.reason

    out = await poll("redfish", "127.0.0.1", {**base, "insecure_skip_verify": True})
    assert out.status is Status.UP, out.reason

    named = _params(bmc, tls_server_name="bmc.example.test")
    out = await poll("redfish", "127.0.0.1", named)
    assert out.status is Status.UP, out.reason
    out = await poll("redfish", "127.0.0.1", _params(bmc, tls_server_name="other.example.test"))
    assert out.status is Status.DOWN
    assert out.reason.startswith("TLS certificate not accepted: "), out.reason


async def test_authentication(poll, bmc):
    out = await poll("redfish", "127.0.0.1", _params(bmc, credential="bmc-wrong"))
    assert (out.status, out.reason) == (
        Status.DOWN,
        f"authentication failed: HTTP 401 for user {USER!r}",
    )
    assert "wrong-pass" not in out.reason
    out = await poll("redfish", "127.0.0.1", {"port": bmc.port, "ca_file": str(bmc.cert)})
    assert (out.status, out.reason) == (
        Status.DOWN,
        "authentication failed: HTTP 401 (no credential given)",
    )
    out = await poll("redfish", "127.0.0.1", _params(bmc, credential="nope"))
    assert (out.status, out.reason) == (Status.UNKNOWN, "unknown credential nope")
    out = await poll("redfish", "127.0.0.1", _params(bmc, credential="token-only"))
    assert out.status is Status.UNKNOWN


async def test_unreachable_and_silent_services(poll):
    port = free_port()
    out = await poll("redfish", "127.0.0.1", {"port": port, "insecure_skip_verify": True})
    assert (out.status, out.reason) == (
        Status.DOWN,
        f"connect failed: connection refused on port {port}",
    )

    # accepts the connection, never says anything (no TLS handshake)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        start = time.monotonic()
        out = await poll(
            "redfish", "127.0.0.1", {"port": port, "insecure_skip_verify": True}, timeout=1
        )
        took = time.monotonic() - start
    finally:
        server.close()
        await server.wait_closed()
    assert (out.status, out.reason) == (Status.DOWN, "no answer to GET /redfish/v1/ within 1s")
    assert took < 1.2


def test_parameters_are_checked_and_name_the_field():
    validate_params("redfish", {"credential": "bmc", "system": "1", "chassis": CHASSIS})
    cases = {
        "params.port: Input should be less than": {"port": 0x10000},
        "params: ca_file: not used with insecure_skip_verify": {
            "insecure_skip_verify": True,
            "ca_file": "/etc/ca.pem",
        },
        "params.ca_file: must be an absolute path": {"ca_file": "ca.pem"},
        "params: auth: session needs a credential": {"auth": "session"},
        "params.system: 'a b' is neither a member id nor a path": {"system": "a b"},
        "params.checks[0].path: '/etc/passwd' is not a Redfish resource path": {
            "checks": [{"path": "/etc/passwd", "pointer": "/a"}]
        },
        "params.checks[0].pointer: 'Status' is not a JSON pointer": {
            "checks": [{"path": SYSTEM, "pointer": "Status"}]
        },
        "params.checks[0]: equals and matches: choose one": {
            "checks": [{"path": SYSTEM, "pointer": "/Id", "equals": "1", "matches": "1"}]
        },
        "params.checks[0].value: 'Inlet' is not a value name": {
            "checks": [{"path": SYSTEM, "pointer": "/Id", "value": "Inlet"}]
        },
        "params.password: unknown key": {"password": "inline"},
    }
    for message, params in cases.items():
        with pytest.raises(ParamsError) as err:
            validate_params("redfish", params)
        assert message in str(err.value), (message, str(err.value))
    assert mask_params("redfish", {"credential": "bmc", "port": 443}) == {
        "credential": "bmc",
        "port": 443,
    }


# --------------------------------------------------------------------------- documents
# sushy-tools serves Thermal only: the Power resource and the Sensors collection
# (the newer ThermalSubsystem/PowerSubsystem model) are read from DMTF-shaped
# documents here.


def test_power_resource_readings():
    doc = {
        "Voltages": [
            {
                "Name": "VRM1 Voltage",
                "ReadingVolts": 11.1,
                "LowerThresholdCritical": 11.4,
                "UpperThresholdCritical": 12.6,
                "Status": {"State": "Enabled", "Health": "OK"},
            },
            {"Name": "Absent rail", "ReadingVolts": 0, "Status": {"State": "Absent"}},
        ],
        "PowerControl": [{"Name": "System Power Control", "PowerConsumedWatts": 344}],
        "PowerSupplies": [
            {
                "Name": "Power Supply Bay 1",
                "LastPowerOutputWatts": 170,
                "Status": {"Health": "Critical"},
            }
        ],
    }
    readings = power_readings(doc)
    assert [(r.name, r.value, r.suffix) for r in readings] == [
        ("VRM1 Voltage", 11.1, "volts"),
        ("System Power Control", 344.0, "watts"),
        ("Power Supply Bay 1", 170.0, "watts"),
    ]
    assert readings[0].problem == "sensor 'VRM1 Voltage' critical: 11.1 V ≤ 11.4"
    assert readings[2].health == "Critical"
    thermal = thermal_readings(
        {"Fans": [{"FanName": "Fan 3", "Reading": 40, "ReadingUnits": "Percent"}]}
    )
    assert [(r.name, r.value, r.symbol) for r in thermal] == [("Fan 3", 40.0, "%")]


def test_sensor_collection_member():
    r = sensor_reading(
        {
            "Name": "CPU1 Temp",
            "Reading": 97,
            "ReadingUnits": "Cel",
            "Thresholds": {
                "UpperCaution": {"Reading": 85},
                "UpperCritical": {"Reading": 95},
            },
            "Status": {"State": "Enabled", "Health": "Critical"},
        }
    )
    assert r is not None
    assert (r.value, r.suffix, r.level) == (97.0, "celsius", "critical")
    assert r.problem == "sensor 'CPU1 Temp' critical: 97 °C ≥ 95"


def test_json_pointer():
    doc = {"a": [{"b/c": 1, "m~n": 2}], "": 3}
    assert resolve_pointer(doc, "") == (True, doc)
    assert resolve_pointer(doc, "/a/0/b~1c") == (True, 1)
    assert resolve_pointer(doc, "/a/0/m~0n") == (True, 2)
    assert resolve_pointer(doc, "/") == (True, 3)
    assert resolve_pointer(doc, "/a/1") == (False, None)
    assert resolve_pointer(doc, "/a/01") == (False, None)
    assert resolve_pointer(doc, "/a/0/b~1c/x") == (False, None)


def test_every_parameter_is_documented_and_the_examples_are_valid():
    text = (REPO / "docs" / "monitors.md").read_text()
    section = text.split("\n## redfish\n", 1)[1].split("\n## ", 1)[0]
    for name in RedfishParams.model_fields:
        assert f"`{name}`" in section, name
    example = yaml.safe_load(section.split("```yaml\n", 1)[1].split("```", 1)[0])
    assert [s["name"] for s in example] == ["Redfish", "Redfish-lab"]
    for service in example:
        validate_params("redfish", service["params"])


# --------------------------------------------------------------------------- sessions
# sushy-tools has no SessionService: a small aiohttp server over TLS speaks the
# session part of the Redfish protocol (login, X-Auth-Token, expiry, logout).


class SessionService:
    """Service root, Sessions collection and one system behind X-Auth-Token."""

    def __init__(self) -> None:
        self.logins = 0
        self.tokens: dict[str, str] = {}  # token → session path
        self.deleted: list[str] = []

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/redfish/v1/", self.root)
        app.router.add_post("/redfish/v1/SessionService/Sessions", self.login)
        app.router.add_delete("/redfish/v1/SessionService/Sessions/{n}", self.logout)
        app.router.add_get("/redfish/v1/Systems", self.systems)
        app.router.add_get("/redfish/v1/Systems/1", self.system)
        app.router.add_get("/redfish/v1/Systems/1/Big", self.big)
        return app

    async def big(self, request: web.Request) -> web.StreamResponse:
        """A 600 kB document, sent in small chunks."""
        if not self._authorized(request):
            return web.Response(status=401)
        body = json.dumps({"Id": "Big", "Oem": {"Pad": "x" * 600_000}}).encode()
        resp = web.StreamResponse(headers={"Content-Type": "application/json"})
        resp.enable_chunked_encoding()
        await resp.prepare(request)
        for i in range(0, len(body), 16384):
            await resp.write(body[i : i + 16384])
        await resp.write_eof()
        return resp

    async def root(self, request: web.Request) -> web.Response:
        return web.json_response(
            {
                "RedfishVersion": "1.15.0",
                "Systems": {"@odata.id": "/redfish/v1/Systems"},
                "Links": {"Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}},
            }
        )

    async def login(self, request: web.Request) -> web.Response:
        body = await request.json()
        if (body.get("UserName"), body.get("Password")) != (USER, PASSWORD):
            return web.json_response(
                {"error": {"@Message.ExtendedInfo": [{"Message": "Invalid username or password"}]}},
                status=401,
            )
        self.logins += 1
        token, path = f"tok-{self.logins}", f"/redfish/v1/SessionService/Sessions/{self.logins}"
        self.tokens[token] = path
        return web.json_response(
            {"Id": str(self.logins)},
            status=201,
            headers={"X-Auth-Token": token, "Location": path},
        )

    async def logout(self, request: web.Request) -> web.Response:
        token = request.headers.get("X-Auth-Token", "")
        if self.tokens.get(token) != request.path:
            return web.Response(status=401)
        del self.tokens[token]
        self.deleted.append(request.path)
        return web.Response(status=204)

    def _authorized(self, request: web.Request) -> bool:
        return request.headers.get("X-Auth-Token") in self.tokens and (
            "Authorization" not in request.headers
        )

    async def systems(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        return web.json_response({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})

    async def system(self, request: web.Request) -> web.Response:
        if not self._authorized(request):
            return web.Response(status=401)
        return web.json_response(
            {"Id": "1", "Name": "web-1", "PowerState": "On", "Status": {"Health": "OK"}}
        )


async def test_session_login_is_kept_renewed_and_closed(poll, monitors, tmp_path):
    cert, key = self_signed(tmp_path)
    tls = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    tls.load_cert_chain(cert, key)
    service = SessionService()
    params = {"credential": "bmc", "ca_file": str(cert), "sensors": False}
    async with serve_app(service.app(), ssl_context=tls) as port:
        for _ in range(3):
            out = await poll("redfish", "127.0.0.1", {**params, "port": port})
            assert out.status is Status.UP, out.reason
            assert out.values == {"power_on": 1.0, "health": 0.0}
        assert service.logins == 1  # one session, kept

        service.tokens.clear()  # the BMC forgot it (expiry, restart)
        out = await poll("redfish", "127.0.0.1", {**params, "port": port})
        assert out.status is Status.UP, out.reason
        assert service.logins == 2

        out = await poll(
            "redfish", "127.0.0.1", {**params, "port": port, "credential": "bmc-wrong"}
        )
        assert (out.status, out.reason) == (
            Status.DOWN,
            f"authentication failed: HTTP 401: Invalid username or password for user {USER!r}",
        )

        out = await poll("redfish", "127.0.0.1", {**params, "port": port, "auth": "basic"})
        assert out.status is Status.DOWN  # this service takes sessions only
        assert out.reason.startswith("authentication failed: HTTP 401"), out.reason

        # a large answer, chunked, is read whole; one above max_body_bytes is refused
        big = {"path": "/redfish/v1/Systems/1/Big", "pointer": "/Id", "equals": "Big"}
        out = await poll("redfish", "127.0.0.1", {**params, "port": port, "checks": [big]})
        assert out.status is Status.UP, out.reason
        out = await poll(
            "redfish",
            "127.0.0.1",
            {**params, "port": port, "checks": [big], "max_body_bytes": 100_000},
        )
        assert (out.status, out.reason) == (
            Status.DOWN,
            "GET /redfish/v1/Systems/1/Big: response larger than 100000 bytes",
        )

        await monitors.close()  # the minion stops: its session is deleted
        assert service.deleted == ["/redfish/v1/SessionService/Sessions/2"]
