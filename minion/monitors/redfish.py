"""``redfish``: a BMC's Redfish service over HTTPS: the system's PowerState and
Status.Health, the chassis' sensors with the service's own thresholds, and
conditions on chosen resources (JSON pointers).

One poll reads the service root, the system, its chassis' ``Thermal`` and
``Power`` resources (or, on services that dropped those, the chassis'
``Sensors`` collection, which is where the newer ThermalSubsystem and
PowerSubsystem models keep their readings) and the resources ``checks``
name. Every request shares the attempt's deadline; a service that stops
answering is DOWN naming the request.

Judgement, in this order:

- unreachable, TLS refused, authentication refused, not Redfish: DOWN with
  what happened (``connect failed: connection refused on port 443``,
  ``TLS certificate not accepted: self-signed certificate``,
  ``authentication failed: HTTP 401 for user 'ops'``);
- PowerState not as ``expect_power`` says: DOWN ``system 'web-1' PowerState is Off``;
- Status.Health ``Critical`` (system, a sensor, a fan, a power supply): DOWN
  with the service's words (``system 'web-1' health Critical: <Conditions>``);
- a reading at or beyond a critical or fatal threshold of the service:
  DOWN ``sensor 'CPU Temp' critical: 97 °C ≥ 95``;
- a ``checks`` condition that fails: DOWN naming path, pointer and value;
- Health ``Warning`` or a non-critical threshold crossed: UP, value
  ``warning`` = 1, the reason says which.

Authentication: ``session`` logs in once (``POST`` to the SessionService's
Sessions collection) and keeps the ``X-Auth-Token`` for the next polls of
the same service and credential; a 401 logs in again once. The monitor's
``close()`` deletes its sessions. ``basic`` sends the credential with every
request. TLS is verified against ``ca_file`` (or the system store);
``insecure_skip_verify`` accepts any certificate.

Measured values: ``power_on`` (1/0), ``health`` (0 OK, 1 Warning, 2
Critical), one value per reading named after the sensor with its unit as
suffix (``cpu_temp_celsius``, ``fan1_rpm``, ``ps1_input_volts``,
``system_power_watts``), ``sensors``, ``sensors_warning``, ``sensors_critical``,
and each check's ``value`` when it names one.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import re
import ssl
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, ClassVar

import aiohttp

from minion.monitors._common import connect_failure, host_literal, plan, tls_context
from minion.monitors.base import Monitor, PollContext, PollOutcome, Target, elapsed_ms
from minion.monitors.credentials import credential
from services.core.params.credentials import unknown_credential
from services.core.params.redfish import RedfishCheck, RedfishParams

#: Sessions kept (one per service and credential).
MAX_SESSIONS = 1024
#: Most items named in one reason.
MAX_NAMED = 3
_HEALTH = {"OK": 0, "Warning": 1, "Critical": 2}

#: Redfish ``ReadingUnits`` (UCUM) → (symbol, value-name suffix).
UCUM: dict[str, tuple[str, str]] = {
    "Cel": ("°C", "celsius"),
    "V": ("V", "volts"),
    "mV": ("mV", "millivolts"),
    "A": ("A", "amps"),
    "mA": ("mA", "milliamps"),
    "W": ("W", "watts"),
    "kW": ("kW", "kilowatts"),
    "W.h": ("Wh", "watt_hours"),
    "kW.h": ("kWh", "kilowatt_hours"),
    "J": ("J", "joules"),
    "RPM": ("RPM", "rpm"),
    "{rev}/min": ("RPM", "rpm"),
    "%": ("%", "percent"),
    "Percent": ("%", "percent"),
    "Pa": ("Pa", "pascals"),
    "kPa": ("kPa", "kilopascals"),
    "Hz": ("Hz", "hertz"),
    "L/min": ("L/min", "liters_per_minute"),
    "[ft_i]3/min": ("CFM", "cfm"),
    "lx": ("lx", "lux"),
    "V.A": ("VA", "va"),
}

#: (threshold property suffix, level) from the most severe down.
_LEVELS = (("Fatal", "fatal"), ("Critical", "critical"), ("NonCritical", "warning"))
#: Sensor.Thresholds keys (Redfish Sensor v1.x) by level.
_SENSOR_THRESHOLDS = (("Fatal", "fatal"), ("Critical", "critical"), ("Caution", "warning"))

_NAME_BAD = re.compile(r"[^0-9a-z]+")


def fmt(value: float) -> str:
    """A reading as a reason shows it: ``97``, ``12.06``."""
    return f"{round(value, 3):g}"


def value_name(sensor: str, suffix: str) -> str:
    """``("CPU Temp", "celsius")`` → ``cpu_temp_celsius`` (see the ipmi monitor)."""
    base = _NAME_BAD.sub("_", sensor.lower()).strip("_") or "sensor"
    if base[0].isdigit():
        base = "p" + base
    return f"{base}_{suffix}" if suffix else base


def resolve_pointer(doc: Any, pointer: str) -> tuple[bool, Any]:
    """RFC 6901: ``(True, value)`` at ``pointer`` in ``doc``, ``(False, None)`` if absent."""
    if pointer == "":
        return True, doc
    cur = doc
    for raw in pointer[1:].split("/"):
        token = raw.replace("~1", "/").replace("~0", "~")
        if isinstance(cur, dict):
            if token not in cur:
                return False, None
            cur = cur[token]
        elif isinstance(cur, list):
            if not re.fullmatch(r"0|[1-9][0-9]*", token) or int(token) >= len(cur):
                return False, None
            cur = cur[int(token)]
        else:
            return False, None
    return True, cur


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 80 else text[:79] + "…"


def judge_check(check: RedfishCheck, found: bool, value: Any) -> str | None:
    """Why ``check`` fails for ``value`` (``None``: it holds)."""
    where = f"{check.path} {check.pointer or '(document)'}"
    if not found:
        return f"{where} not found"
    if check.equals is not None:
        same = value == check.equals and isinstance(value, bool) == isinstance(check.equals, bool)
        if not same:
            return f"{where} is {_show(value)}, expected {_show(check.equals)}"
    if check.one_of is not None and not any(
        value == v and isinstance(value, bool) == isinstance(v, bool) for v in check.one_of
    ):
        return f"{where} is {_show(value)}, expected one of {', '.join(map(_show, check.one_of))}"
    if check.matches is not None and not (
        isinstance(value, str) and re.search(check.matches, value)
    ):
        return f"{where} is {_show(value)}, does not match /{check.matches}/"
    if check.minimum is not None or check.maximum is not None:
        num = _number(value)
        if num is None:
            return f"{where} is {_show(value)}, not a number"
        if check.minimum is not None and num < check.minimum:
            return f"{where} is {fmt(num)}, below {fmt(check.minimum)}"
        if check.maximum is not None and num > check.maximum:
            return f"{where} is {fmt(num)}, above {fmt(check.maximum)}"
    return None


@dataclass(slots=True)
class Reading:
    """One sensor as the service reports it."""

    kind: str
    name: str
    value: float | None
    symbol: str
    suffix: str
    health: str | None = None
    level: str = ""
    problem: str = ""


def _status_health(item: dict[str, Any]) -> tuple[str | None, str | None]:
    status = item.get("Status")
    if not isinstance(status, dict):
        return None, None
    health = status.get("Health")
    state = status.get("State")
    return (health if isinstance(health, str) else None), (
        state if isinstance(state, str) else None
    )


def _conditions(item: dict[str, Any]) -> str:
    """The service's own words for a status: ``Status.Conditions[].Message``."""
    status = item.get("Status")
    conds = status.get("Conditions") if isinstance(status, dict) else None
    if not isinstance(conds, list):
        return ""
    msgs = [str(c.get("Message")) for c in conds if isinstance(c, dict) and c.get("Message")]
    return "; ".join(msgs[:MAX_NAMED])


def _judge_thresholds(r: Reading, thresholds: list[tuple[str, str, float]]) -> None:
    """Set ``r.level``/``r.problem`` from ``(level, direction, limit)`` crossed, most severe first."""
    if r.value is None:
        return
    unit = f" {r.symbol}" if r.symbol else ""
    for level in ("fatal", "critical", "warning"):
        for lvl, direction, limit in thresholds:
            if lvl != level:
                continue
            crossed = r.value >= limit if direction == "upper" else r.value <= limit
            if crossed:
                cmp_ = "≥" if direction == "upper" else "≤"
                label = "warning (non-critical)" if level == "warning" else level
                r.level = level
                r.problem = f"{r.kind} {r.name!r} {label}: {fmt(r.value)}{unit} {cmp_} {fmt(limit)}"
                return


def _legacy(item: dict[str, Any], kind: str, key: str, symbol: str, suffix: str) -> Reading | None:
    """A Thermal/Power array member (``Temperatures``, ``Fans``, ``Voltages``…)."""
    health, state = _status_health(item)
    if state in ("Absent", "Disabled", "UnavailableOffline"):
        return None
    name = str(item.get("Name") or item.get("FanName") or item.get("MemberId") or kind)
    raw = item.get(key)
    if kind == "fan":
        if raw is None and "ReadingRPM" in item:
            raw = item.get("ReadingRPM")
        else:
            units = item.get("ReadingUnits")
            if units == "Percent":
                symbol, suffix = "%", "percent"
    r = Reading(kind, name, _number(raw), symbol, suffix, health)
    thresholds: list[tuple[str, str, float]] = []
    for prop, level in _LEVELS:
        for direction in ("Upper", "Lower"):
            limit = _number(item.get(f"{direction}Threshold{prop}"))
            if limit is not None:
                thresholds.append((level, direction.lower(), limit))
    _judge_thresholds(r, thresholds)
    return r


def sensor_reading(item: dict[str, Any]) -> Reading | None:
    """A member of a chassis' ``Sensors`` collection (Redfish Sensor v1.x)."""
    health, state = _status_health(item)
    if state in ("Absent", "Disabled", "UnavailableOffline"):
        return None
    name = str(item.get("Name") or item.get("Id") or "sensor")
    units = item.get("ReadingUnits")
    symbol, suffix = (
        UCUM.get(units, (str(units), value_name(str(units), ""))) if units else ("", "")
    )
    kind = "sensor"
    r = Reading(kind, name, _number(item.get("Reading")), symbol, suffix, health)
    thresholds: list[tuple[str, str, float]] = []
    th = item.get("Thresholds")
    if isinstance(th, dict):
        for prop, level in _SENSOR_THRESHOLDS:
            for direction in ("Upper", "Lower"):
                t = th.get(f"{direction}{prop}")
                limit = _number(t.get("Reading")) if isinstance(t, dict) else None
                if limit is not None:
                    thresholds.append((level, direction.lower(), limit))
    _judge_thresholds(r, thresholds)
    return r


def thermal_readings(doc: dict[str, Any]) -> list[Reading]:
    """Readings of a ``Thermal`` resource: temperatures (°C) and fans."""
    out: list[Reading] = []
    for item in doc.get("Temperatures") or []:
        if isinstance(item, dict) and (
            r := _legacy(item, "sensor", "ReadingCelsius", "°C", "celsius")
        ):
            out.append(r)
    for item in doc.get("Fans") or []:
        if isinstance(item, dict) and (r := _legacy(item, "fan", "Reading", "RPM", "rpm")):
            out.append(r)
    return out


def power_readings(doc: dict[str, Any]) -> list[Reading]:
    """Readings of a ``Power`` resource: voltages, power consumed, power supplies."""
    out: list[Reading] = []
    for item in doc.get("Voltages") or []:
        if isinstance(item, dict) and (r := _legacy(item, "sensor", "ReadingVolts", "V", "volts")):
            out.append(r)
    for item in doc.get("PowerControl") or []:
        if isinstance(item, dict) and (
            r := _legacy(item, "power control", "PowerConsumedWatts", "W", "watts")
        ):
            out.append(r)
    for item in doc.get("PowerSupplies") or []:
        if isinstance(item, dict) and (
            r := _legacy(item, "power supply", "LastPowerOutputWatts", "W", "watts")
        ):
            out.append(r)
    return out


# --------------------------------------------------------------------------- HTTP


class RedfishError(Exception):
    """The poll cannot go on; the message is the DOWN reason."""


class AuthRefused(RedfishError):
    """The service refused the credential (401/403)."""


@dataclass(slots=True)
class _Login:
    token: str
    location: str | None


@dataclass(slots=True)
class _Client:
    """One poll's requests against one service."""

    http: aiohttp.ClientSession
    base: str
    ssl: ssl.SSLContext
    server_hostname: str | None
    max_body: int
    headers: dict[str, str] = field(default_factory=dict)
    requests: int = 0
    current: str = ""

    async def request(
        self, method: str, path: str, body: Any = None, *, expect_json: bool = True
    ) -> tuple[int, dict[str, str], Any]:
        self.current = f"{method} {path}"
        self.requests += 1
        try:
            async with self.http.request(
                method,
                self.base + path,
                headers={"Accept": "application/json", "OData-Version": "4.0", **self.headers},
                json=body,
                ssl=self.ssl,
                server_hostname=self.server_hostname,
                allow_redirects=False,
            ) as resp:
                buf = bytearray()
                # StreamReader.read(n) returns what is buffered: loop to the bound
                while len(buf) <= self.max_body:
                    chunk = await resp.content.read(self.max_body + 1 - len(buf))
                    if not chunk:
                        break
                    buf += chunk
                data = bytes(buf)
                status, headers = resp.status, dict(resp.headers)
        except aiohttp.ClientConnectorCertificateError as exc:
            err = exc.certificate_error
            why = (
                err.verify_message or err.reason
                if isinstance(err, ssl.SSLCertVerificationError)
                else err
            )
            raise RedfishError(f"TLS certificate not accepted: {why}") from None
        except aiohttp.ClientConnectorSSLError as exc:
            raise RedfishError(f"TLS handshake failed: {exc}") from None
        except aiohttp.ClientConnectorError as exc:
            raise RedfishError(
                f"connect failed: {connect_failure(exc.os_error, exc.port)}"
            ) from None
        except (aiohttp.ClientError, OSError) as exc:
            raise RedfishError(f"{self.current} failed: {exc.__class__.__name__}: {exc}") from None
        if len(data) > self.max_body:
            raise RedfishError(f"{self.current}: response larger than {self.max_body} bytes")
        if not expect_json or not data:
            return status, headers, None
        try:
            doc = json.loads(data)
        except ValueError:
            if status >= 400:
                return status, headers, None
            raise RedfishError(f"{self.current}: HTTP {status}, not JSON") from None
        return status, headers, doc

    async def get(self, path: str) -> dict[str, Any]:
        status, _, doc = await self.request("GET", path)
        if status in (401, 403):
            raise AuthRefused(f"HTTP {status}")
        if status != 200:
            raise RedfishError(f"GET {path}: HTTP {status}{_error_message(doc)}")
        if not isinstance(doc, dict):
            raise RedfishError(f"GET {path}: not a Redfish resource (no JSON object)")
        return doc


def _error_message(doc: Any) -> str:
    """The service's own words in a Redfish error body, if any."""
    if isinstance(doc, dict) and isinstance(doc.get("error"), dict):
        err = doc["error"]
        info = err.get("@Message.ExtendedInfo")
        if isinstance(info, list) and info and isinstance(info[0], dict) and info[0].get("Message"):
            return f": {str(info[0]['Message'])[:200]}"
        if err.get("message"):
            return f": {str(err['message'])[:200]}"
    return ""


def _link(doc: dict[str, Any], *keys: str) -> str | None:
    cur: Any = doc
    for key in keys:
        if isinstance(cur, list):
            cur = cur[0] if cur else None
        if not isinstance(cur, dict):
            return None
        cur = cur.get(key)
    if isinstance(cur, list):
        cur = cur[0] if cur else None
    if isinstance(cur, dict):
        cur = cur.get("@odata.id")
    return cur if isinstance(cur, str) and cur.startswith("/redfish/") else None


class RedfishMonitor(Monitor[RedfishParams]):
    """Reads a Redfish service with a pooled aiohttp session."""

    name: ClassVar[str] = "redfish"
    params_model = RedfishParams
    description = "Redfish BMC over HTTPS: power, health, sensors and thresholds, resource checks"

    def __init__(self) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._logins: OrderedDict[tuple[str, ...], _Login] = OrderedDict()
        self._login_base: dict[tuple[str, ...], tuple[str, ssl.SSLContext, str | None]] = {}

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._loop is not loop:
            self._loop = loop
            self._logins.clear()  # their tokens belong to the old client's service
            self._login_base.clear()
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=256, limit_per_host=0, keepalive_timeout=15),
                timeout=aiohttp.ClientTimeout(total=None),  # the poll's deadline bounds it
                headers={"User-Agent": "vigil-minion"},
                cookie_jar=aiohttp.DummyCookieJar(),
                trust_env=False,
            )
        return self._session

    async def poll(self, target: Target, params: RedfishParams, ctx: PollContext) -> PollOutcome:
        """Read the Redfish service at ``target.address`` and judge what it reports."""
        when = plan(ctx)
        user = password = None
        if params.credential is not None:
            cred = credential(params.credential)
            if cred is None:
                return PollOutcome.unknown(unknown_credential(params.credential))
            if cred.username is None or cred.password is None:
                return PollOutcome.unknown(
                    f"credential {params.credential} has no username and password"
                )
            user, password = cred.username, cred.password.get_secret_value()
        try:
            ctx_ssl = await tls_context(
                "none" if params.insecure_skip_verify else "full", params.ca_file
            )
        except (OSError, ssl.SSLError) as exc:
            return PollOutcome.unknown(f"cannot load ca_file {params.ca_file}: {exc}")
        client = _Client(
            self._client(),
            f"https://{host_literal(target.address)}:{params.port}",
            ctx_ssl,
            params.tls_server_name,
            params.max_body_bytes,
        )
        start = time.perf_counter()
        ttl_bound = ctx.deadline < when.report_by
        try:
            if ttl_bound:
                # the TTL ends this poll first: the runner abandons it (UNKNOWN)
                outcome = await self._poll(client, target, params, user, password)
            else:
                async with asyncio.timeout_at(when.report_by):
                    outcome = await self._poll(client, target, params, user, password)
        except TimeoutError:
            return PollOutcome.down(
                f"no answer to {client.current} within {ctx.timeout:g}s", elapsed_ms(start)
            )
        except AuthRefused as exc:
            who = f" for user {user!r}" if user else " (no credential given)"
            return PollOutcome.down(f"authentication failed: {exc}{who}", elapsed_ms(start))
        except RedfishError as exc:
            return PollOutcome.down(str(exc), elapsed_ms(start))
        outcome.response_time_ms = elapsed_ms(start)
        return outcome

    # ----------------------------------------------------------------- auth

    async def _authenticate(
        self,
        client: _Client,
        root: dict[str, Any],
        params: RedfishParams,
        user: str | None,
        password: str | None,
        key: tuple[str, ...],
        fresh: bool,
    ) -> None:
        if user is None or password is None:
            return
        sessions = _link(root, "Links", "Sessions")
        mode = params.auth
        if mode == "auto":
            mode = "session" if sessions else "basic"
        if mode == "basic":
            token = base64.b64encode(f"{user}:{password}".encode()).decode("ascii")
            client.headers["Authorization"] = "Basic " + token
            return
        login = None if fresh else self._logins.get(key)
        if login is None:
            path = sessions or "/redfish/v1/SessionService/Sessions"
            status, headers, doc = await client.request(
                "POST", path, {"UserName": user, "Password": password}
            )
            if status in (400, 401, 403):
                raise AuthRefused(f"HTTP {status}{_error_message(doc)}")
            if status not in (200, 201):
                raise RedfishError(f"POST {path} (login): HTTP {status}{_error_message(doc)}")
            auth_token = headers.get("X-Auth-Token")
            if not auth_token:
                raise RedfishError(f"POST {path} (login): no X-Auth-Token in the answer")
            location = headers.get("Location")
            if location and location.startswith("http"):
                location = "/" + location.split("/", 3)[-1]
            login = _Login(auth_token, location)
            self._logins[key] = login
            self._login_base[key] = (client.base, client.ssl, client.server_hostname)
            self._logins.move_to_end(key)
            while len(self._logins) > MAX_SESSIONS:
                old, gone = self._logins.popitem(last=False)
                await self._logout(old, gone)
        client.headers["X-Auth-Token"] = login.token

    async def _logout(self, key: tuple[str, ...], login: _Login) -> None:
        base = self._login_base.pop(key, None)
        if base is None or not login.location or self._session is None:
            return
        with contextlib.suppress(Exception):
            async with asyncio.timeout(1.0):
                async with self._session.delete(
                    base[0] + login.location,
                    headers={"X-Auth-Token": login.token},
                    ssl=base[1],
                    server_hostname=base[2],
                ):
                    pass

    # ----------------------------------------------------------------- the poll

    async def _poll(
        self,
        client: _Client,
        target: Target,
        params: RedfishParams,
        user: str | None,
        password: str | None,
    ) -> PollOutcome:
        try:
            root = await client.get("/redfish/v1/")
        except AuthRefused:
            root = {}
        if root and "RedfishVersion" not in root and "Systems" not in root:
            raise RedfishError("GET /redfish/v1/: not a Redfish service root")
        key = (client.base, params.credential or "", params.tls_server_name or "")
        await self._authenticate(client, root, params, user, password, key, fresh=False)
        try:
            return await self._read(client, root, params)
        except AuthRefused:
            if "X-Auth-Token" not in client.headers:
                raise
            # the kept session expired (or the BMC restarted): log in again, once
            self._logins.pop(key, None)
            await self._authenticate(client, root, params, user, password, key, fresh=True)
            return await self._read(client, root, params)

    async def _member(self, client: _Client, collection: str | None, wanted: str | None) -> str:
        if wanted is not None and wanted.startswith("/"):
            return wanted
        if collection is None:
            raise RedfishError("the service root links no such collection")
        if wanted is not None:
            return collection.rstrip("/") + "/" + wanted
        doc = await client.get(collection)
        first = _link(doc, "Members")
        if first is None:
            raise RedfishError(f"GET {collection}: no members")
        return first

    async def _read(
        self, client: _Client, root: dict[str, Any], params: RedfishParams
    ) -> PollOutcome:
        values: dict[str, float] = {}
        problems: list[str] = []
        notes: list[str] = []  # warnings
        info: list[str] = []
        system: dict[str, Any] | None = None
        if params.check_system or (params.sensors and params.chassis is None):
            path = await self._member(client, _link(root, "Systems"), params.system)
            system = await client.get(path)
        if params.check_system and system is not None:
            self._judge_system(system, params, values, problems, notes)
        if params.sensors:
            readings, more = await self._readings(client, root, system, params)
            self._judge_readings(readings, more, values, problems, notes)
            if more > len(readings):
                info.append(f"first {len(readings)} of {more} sensors read")
        documents: dict[str, dict[str, Any]] = {}
        for check in params.checks:
            if check.path not in documents:
                documents[check.path] = await client.get(check.path)
            found, value = resolve_pointer(documents[check.path], check.pointer)
            if check.value is not None and (num := _number(value)) is not None:
                values[check.value] = num
            why = judge_check(check, found, value)
            if why is not None:
                problems.append(why)
        if problems:
            text = "; ".join(_named(problems) + _named(notes) + info)
            return PollOutcome.down(text, 0.0, **values)
        outcome = PollOutcome.up(0.0, **values)
        if notes:
            outcome.values["warning"] = 1.0
        outcome.reason = "; ".join(_named(notes) + info)
        return outcome

    @staticmethod
    def _judge_system(
        system: dict[str, Any],
        params: RedfishParams,
        values: dict[str, float],
        problems: list[str],
        notes: list[str],
    ) -> None:
        label = str(system.get("HostName") or system.get("Name") or system.get("Id") or "system")
        power = system.get("PowerState")
        if isinstance(power, str):
            values["power_on"] = 1.0 if power == "On" else 0.0
            wanted = {"on": "On", "off": "Off"}.get(params.expect_power)
            if wanted is not None and power != wanted:
                problems.append(
                    f"system {label!r} PowerState is {power}"
                    + (", expected Off" if wanted == "Off" else "")
                )
        health, _ = _status_health(system)
        if health in _HEALTH:
            values["health"] = float(_HEALTH[health])
        if health in ("Critical", "Warning"):
            words = _conditions(system)
            text = f"system {label!r} health {health}" + (f": {words}" if words else "")
            (problems if health == "Critical" else notes).append(text)

    async def _readings(
        self,
        client: _Client,
        root: dict[str, Any],
        system: dict[str, Any] | None,
        params: RedfishParams,
    ) -> tuple[list[Reading], int]:
        if params.chassis is not None:
            path = await self._member(client, _link(root, "Chassis"), params.chassis)
        else:
            found = _link(system, "Links", "Chassis") if system else None
            path = found or await self._member(client, _link(root, "Chassis"), None)
        chassis = await client.get(path)
        readings: list[Reading] = []
        thermal, power = _link(chassis, "Thermal"), _link(chassis, "Power")
        if thermal or power:
            if thermal:
                readings += thermal_readings(await client.get(thermal))
            if power:
                readings += power_readings(await client.get(power))
        elif (sensors := _link(chassis, "Sensors")) is not None:
            readings += await self._sensor_collection(client, root, sensors, params)
        selected = [r for r in readings if _matches(r.name, params)]
        return selected[: params.max_sensors], len(selected)

    async def _sensor_collection(
        self, client: _Client, root: dict[str, Any], path: str, params: RedfishParams
    ) -> list[Reading]:
        expand = root.get("ProtocolFeaturesSupported", {})
        can_expand = isinstance(expand, dict) and isinstance(expand.get("ExpandQuery"), dict)
        doc = await client.get(path + ("?$expand=.($levels=1)" if can_expand else ""))
        out: list[Reading] = []
        for member in doc.get("Members") or []:
            if not isinstance(member, dict):
                continue
            if "Reading" not in member and "Status" not in member:
                link = member.get("@odata.id")
                if not isinstance(link, str) or not link.startswith("/redfish/"):
                    continue
                if len(out) >= params.max_sensors:
                    break
                member = await client.get(link)
            r = sensor_reading(member)
            if r is not None:
                out.append(r)
        return out

    @staticmethod
    def _judge_readings(
        readings: list[Reading],
        matching: int,
        values: dict[str, float],
        problems: list[str],
        notes: list[str],
    ) -> None:
        warn = bad = 0
        for r in readings:
            if r.value is not None:
                name = base = value_name(r.name, r.suffix)
                n = 2
                while name in values:
                    name = f"{base}_{n}"
                    n += 1
                values[name] = r.value
            unit = f" {r.symbol}" if r.symbol else ""
            reading = f": {fmt(r.value)}{unit}" if r.value is not None else ""
            if r.level in ("critical", "fatal"):
                problems.append(r.problem)
                bad += 1
            elif r.health == "Critical":
                problems.append(f"{r.kind} {r.name!r} health Critical{reading}")
                bad += 1
            elif r.level == "warning":
                notes.append(r.problem)
                warn += 1
            elif r.health == "Warning":
                notes.append(f"{r.kind} {r.name!r} health Warning{reading}")
                warn += 1
        values["sensors"] = float(len(readings))
        values["sensors_warning"] = float(warn)
        values["sensors_critical"] = float(bad)

    async def close(self) -> None:
        """Log out of the kept sessions and close the HTTP client."""
        for key, login in list(self._logins.items()):
            await self._logout(key, login)
        self._logins.clear()
        self._login_base.clear()
        if self._session is not None:
            await self._session.close()
            self._session = None


def _matches(name: str, params: RedfishParams) -> bool:
    if params.sensors_include and not any(re.search(p, name) for p in params.sensors_include):
        return False
    return not any(re.search(p, name) for p in params.sensors_exclude)


def _named(items: list[str]) -> list[str]:
    if len(items) <= MAX_NAMED:
        return list(items)
    return [*items[:MAX_NAMED], f"+{len(items) - MAX_NAMED} more"]
