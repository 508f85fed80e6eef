"""``ipmi``: a BMC over IPMI 2.0 LAN (RMCP+): chassis power, the SDR's threshold
sensors with the BMC's own threshold states, and optionally new SEL entries.

One poll opens one RMCP+ session (python-ipmi's native ``rmcpplus``
interface: RAKP-HMAC-SHA256 or -SHA1, AES-CBC-128 when the BMC offers it),
reads, and closes the session. python-ipmi is blocking, so the session runs
in a worker thread of this monitor's own bounded pool; every datagram it
sends is given only the time left before the attempt's end (the socket
timeout is set from that deadline before each send, retries included), so a
poll never works past its deadline, even in its thread.

Judgement, in this order:

- the BMC does not answer: DOWN ``BMC unreachable: …``; wrong user,
  password or privilege: DOWN ``authentication failed: …``;
- chassis power not as ``expect_power`` says: DOWN ``chassis power is off``;
- a sensor the BMC reports beyond a critical or non-recoverable threshold:
  DOWN ``sensor 'CPU Temp' critical: 97 °C ≥ 95``;
- a sensor beyond a non-critical threshold: UP, value ``warning`` = 1 and the
  reason ``sensor 'CPU Temp' warning (non-critical): 87 °C ≥ 85``;
- new SEL entries (``sel: true``): UP with them in the reason.

The states are the BMC's (the threshold comparison bits of Get Sensor
Reading): the BMC's own thresholds need no configuration here. Only
threshold-based sensors of full SDR records owned by the BMC itself are
read; discrete sensors and those of satellite controllers are left out.

Measured values: ``power_on`` (1/0); one value per sensor read, named after
the sensor with its unit as suffix (``cpu_temp_celsius``, ``fan1_rpm``,
``p12v_volts``… see :func:`value_name`); ``sensors``, ``sensors_warning``,
``sensors_critical``; with ``sel``: ``sel_entries`` and ``sel_new``. The SDR
is cached per BMC and read again when the repository's record count or
timestamps change (at least hourly).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar

import pyipmi  # type: ignore[import-untyped]
from pyipmi.errors import (  # type: ignore[import-untyped]
    AuthenticationError,
    CompletionCodeError,
    DecodingError,
    IpmiConnectionError,
    IpmiLongPasswordError,
    MessageStatusCodeError,
    NotSupportedError,
    RetryError,
)
from pyipmi.interfaces.rmcpplus import RmcpPlus  # type: ignore[import-untyped]
from pyipmi.sdr import SdrFullSensorRecord  # type: ignore[import-untyped]
from pyipmi.sel import SelEntry, SelInfo  # type: ignore[import-untyped]

from minion.monitors.base import Monitor, PollContext, PollOutcome, Target, elapsed_ms
from minion.monitors.credentials import credential
from services.core.params.credentials import unknown_credential
from services.core.params.ipmi import IpmiParams

#: Worker threads per minion process for IPMI sessions (each poll holds one).
MAX_THREADS = 32
#: BMCs whose SDR (and SEL position) this process remembers.
MAX_BMCS = 4096
#: An SDR cached longer than this is read again even if it looks unchanged.
SDR_TTL_S = 3600.0
#: Most SEL entries read per poll.
MAX_SEL_ENTRIES = 1024
#: Most items named in one reason.
MAX_NAMED = 3

#: IPMI 2.0 table 43-15, sensor unit type codes → (symbol for reasons, value-name suffix).
UNITS: dict[int, tuple[str, str]] = {
    1: ("°C", "celsius"),
    2: ("°F", "fahrenheit"),
    3: ("K", "kelvin"),
    4: ("V", "volts"),
    5: ("A", "amps"),
    6: ("W", "watts"),
    7: ("J", "joules"),
    8: ("C", "coulombs"),
    9: ("VA", "va"),
    10: ("nits", "nits"),
    11: ("lm", "lumens"),
    12: ("lx", "lux"),
    13: ("cd", "candela"),
    14: ("kPa", "kpa"),
    15: ("PSI", "psi"),
    16: ("N", "newtons"),
    17: ("CFM", "cfm"),
    18: ("RPM", "rpm"),
    19: ("Hz", "hertz"),
    20: ("µs", "microseconds"),
    21: ("ms", "milliseconds"),
    22: ("s", "seconds"),
    23: ("min", "minutes"),
    24: ("h", "hours"),
    25: ("d", "days"),
    26: ("weeks", "weeks"),
    27: ("mil", "mils"),
    28: ("in", "inches"),
    29: ("ft", "feet"),
    30: ("in³", "cubic_inches"),
    31: ("ft³", "cubic_feet"),
    32: ("mm", "millimeters"),
    33: ("cm", "centimeters"),
    34: ("m", "meters"),
    35: ("cm³", "cubic_centimeters"),
    36: ("m³", "cubic_meters"),
    37: ("l", "liters"),
    38: ("fl oz", "fluid_ounces"),
    39: ("rad", "radians"),
    40: ("sr", "steradians"),
    41: ("rev", "revolutions"),
    42: ("cycles", "cycles"),
    43: ("g", "gravities"),
    44: ("oz", "ounces"),
    45: ("lb", "pounds"),
    46: ("ft·lb", "foot_pounds"),
    47: ("oz·in", "ounce_inches"),
    48: ("G", "gauss"),
    49: ("Gb", "gilberts"),
    50: ("H", "henries"),
    51: ("mH", "millihenries"),
    52: ("F", "farads"),
    53: ("µF", "microfarads"),
    54: ("Ω", "ohms"),
    55: ("S", "siemens"),
    56: ("mol", "moles"),
    57: ("Bq", "becquerels"),
    58: ("ppm", "ppm"),
    60: ("dB", "decibels"),
    61: ("dBA", "dba"),
    62: ("dBC", "dbc"),
    63: ("Gy", "grays"),
    64: ("Sv", "sieverts"),
    65: ("K", "color_kelvin"),
    66: ("bit", "bits"),
    67: ("kbit", "kilobits"),
    68: ("Mbit", "megabits"),
    69: ("Gbit", "gigabits"),
    70: ("B", "bytes"),
    71: ("kB", "kilobytes"),
    72: ("MB", "megabytes"),
    73: ("GB", "gigabytes"),
    74: ("words", "words"),
    75: ("dwords", "dwords"),
    76: ("qwords", "qwords"),
    77: ("lines", "lines"),
    78: ("hits", "hits"),
    79: ("misses", "misses"),
    80: ("retries", "retries"),
    81: ("resets", "resets"),
    82: ("overruns", "overruns"),
    83: ("underruns", "underruns"),
    84: ("collisions", "collisions"),
    85: ("packets", "packets"),
    86: ("messages", "messages"),
    87: ("characters", "characters"),
    88: ("errors", "errors"),
    89: ("correctable errors", "correctable_errors"),
    90: ("uncorrectable errors", "uncorrectable_errors"),
    91: ("fatal errors", "fatal_errors"),
    92: ("g", "grams"),
}
_RATES = {1: "µs", 2: "ms", 3: "s", 4: "min", 5: "h", 6: "d"}
_RATE_NAMES = {
    1: "microsecond",
    2: "millisecond",
    3: "second",
    4: "minute",
    5: "hour",
    6: "day",
}

#: Threshold comparison bits of Get Sensor Reading (IPMI 2.0, table 35-15):
#: bit → (threshold key, level, direction, words).
_THRESHOLDS: tuple[tuple[int, str, str, str, str], ...] = (
    (5, "unr", "non-recoverable", "upper", "upper non-recoverable"),
    (2, "lnr", "non-recoverable", "lower", "lower non-recoverable"),
    (4, "ucr", "critical", "upper", "upper critical"),
    (1, "lcr", "critical", "lower", "lower critical"),
    (3, "unc", "warning", "upper", "upper non-critical"),
    (0, "lnc", "warning", "lower", "lower non-critical"),
)
#: SEL threshold event offsets (IPMI 2.0, table 42-2, reading type 01h).
_SEL_THRESHOLD_EVENTS = (
    "lower non-critical going low",
    "lower non-critical going high",
    "lower critical going low",
    "lower critical going high",
    "lower non-recoverable going low",
    "lower non-recoverable going high",
    "upper non-critical going low",
    "upper non-critical going high",
    "upper critical going low",
    "upper critical going high",
    "upper non-recoverable going low",
    "upper non-recoverable going high",
)
#: RMCP+ status codes of a refused login (IPMI 2.0, table 13-15) → what to fix.
_MSC_AUTH = {
    0x09: "invalid role",
    0x0A: "privilege level {privilege} not allowed for user {user!r}",
    0x0B: "no session free for user {user!r} at privilege level {privilege}",
    0x0C: "user name {user!r} too long",
    0x0D: "unknown user {user!r}",
    0x0E: "BMC refuses this console's GUID",
    0x0F: "wrong password for user {user!r}",
}
#: Completion codes of Set Session Privilege Level (IPMI 2.0, 22.18).
_CC_PRIVILEGE = {0x80, 0x81, 0xD4}

_NAME_BAD = re.compile(r"[^0-9a-z]+")


def fmt(value: float) -> str:
    """A reading as a reason shows it: ``97``, ``12.06``, ``0.5``."""
    return f"{round(value, 3):g}"


def unit_of(record: Any) -> tuple[str, str]:
    """(symbol, value-name suffix) of a full sensor record's unit, ``("", "")`` if none."""
    if getattr(record, "percentage", 0):
        return "%", "percent"
    base = UNITS.get(int(getattr(record, "units_2", 0) or 0))
    if base is None:
        return "", ""
    symbol, suffix = base
    modifier = int(getattr(record, "modifier_unit", 0) or 0)
    other = UNITS.get(int(getattr(record, "units_3", 0) or 0))
    if modifier == 1 and other is not None:
        symbol, suffix = f"{symbol}/{other[0]}", f"{suffix}_per_{other[1]}"
    elif modifier == 2 and other is not None:
        symbol, suffix = f"{symbol}·{other[0]}", f"{suffix}_{other[1]}"
    rate = int(getattr(record, "rate_unit", 0) or 0)
    if rate in _RATES:
        symbol, suffix = f"{symbol}/{_RATES[rate]}", f"{suffix}_per_{_RATE_NAMES[rate]}"
    return symbol, suffix


def value_name(sensor: str, suffix: str) -> str:
    """``("CPU Temp", "celsius")`` → ``cpu_temp_celsius``; ``("12V", "volts")`` → ``p12v_volts``.

    Lower case, runs of other characters as one ``_``; a name that would
    start with a digit gets a ``p`` (for "plus", as BMCs name rails ``+12V``).
    """
    base = _NAME_BAD.sub("_", sensor.lower()).strip("_") or "sensor"
    if base[0].isdigit():
        base = "p" + base
    return f"{base}_{suffix}" if suffix else base


def _matches(name: str, params: IpmiParams) -> bool:
    if params.sensors_include and not any(re.search(p, name) for p in params.sensors_include):
        return False
    return not any(re.search(p, name) for p in params.sensors_exclude)


# --------------------------------------------------------------------------- the session


class _Timeout(Exception):
    """The attempt's time ran out inside python-ipmi."""


class _Interface(RmcpPlus):  # type: ignore[misc]
    """python-ipmi's RMCP+ interface, bounded by a deadline and IPv6-capable.

    Every datagram sent gets ``min(per_try, time left)`` to be answered; a
    send after the deadline raises :class:`TimeoutError` at once (which
    python-ipmi's retry loops count as a lost try), so the session ends by
    the deadline whatever it was doing.
    """

    def __init__(self, family: int, end: float, per_try: float) -> None:
        super().__init__(keep_alive_interval=0, max_retries=3)
        self._family = family
        self._end = end
        self._per_try = per_try

    def left(self) -> float:
        return self._end - time.monotonic()

    def _arm(self) -> None:
        left = self.left()
        if left <= 0.005:
            raise TimeoutError("deadline")
        self.set_timeout(min(self._per_try, left))

    def open(self) -> None:
        self._sock = socket.socket(self._family, socket.SOCK_DGRAM)
        self._arm()

    def _send_rmcp_msg(self, sdu: bytes | None, class_of_msg: int) -> None:
        self._arm()
        super()._send_rmcp_msg(sdu, class_of_msg)

    def ping(self) -> None:
        # an RMCP ping is tried again while time is left (a lost datagram is not
        # an unreachable BMC); a refused port is final
        while True:
            try:
                super().ping()
                return
            except IpmiConnectionError as exc:
                if "refused" in str(exc) or self.left() <= 0.005:
                    raise


@dataclass(slots=True)
class _Sensor:
    name: str
    value: float | None
    symbol: str
    suffix: str
    #: "", "warning", "critical" or "non-recoverable"
    level: str = ""
    problem: str = ""


@dataclass(frozen=True, slots=True)
class _SdrCache:
    key: tuple[int, int, int]
    read_at: float
    records: tuple[Any, ...]


@dataclass(frozen=True, slots=True)
class _SelMark:
    key: tuple[int, int, int]
    seen: frozenset[tuple[int, int]]


@dataclass(slots=True)
class _Found:
    """What one session read (or why it could not)."""

    failure: str = ""
    unknown: str = ""
    power_on: bool | None = None
    sensors: list[_Sensor] = field(default_factory=list)
    sensors_matching: int = 0
    sdr: _SdrCache | None = None
    sel_count: int | None = None
    sel_mark: _SelMark | None = None
    sel_new: list[str] = field(default_factory=list)
    timed_out: bool = False


def _where(address: str, port: int) -> str:
    return f"[{address}]:{port}" if ":" in address else f"{address}:{port}"


class _Session:
    """One RMCP+ session's reads, in the worker thread."""

    def __init__(
        self,
        address: str,
        params: IpmiParams,
        user: str,
        password: str,
        end: float,
        per_try: float,
    ) -> None:
        self.address, self.params, self.user = address, params, user
        self.where = _where(address, params.port)
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self.intf = _Interface(family, end, per_try)
        self.ipmi = pyipmi.create_connection(self.intf)
        self.ipmi.session.set_session_type_rmcp(address, port=params.port)
        self.ipmi.session.set_auth_type_user(user, password)
        self.ipmi.session.set_priv_level(params.privilege)
        self.ipmi.target = pyipmi.Target(ipmb_address=0x20)
        self.opened = False

    def run(self, sdr: _SdrCache | None, sel: _SelMark | None) -> _Found:
        found = _Found()
        try:
            self._open(found)
            if found.failure or found.unknown:
                return found
            self.opened = True
            found.power_on = bool(self.ipmi.get_chassis_status().power_on)
            if self.params.sensors:
                self._sensors(found, sdr)
            if self.params.sel:
                self._sel(found, sel, found.sdr or sdr)
        except (TimeoutError, RetryError, _Timeout):
            found.timed_out = True
            step = "reading" if self.opened else "opening a session"
            found.failure = (
                f"BMC {self.where} stopped answering ({step}; no reply within the poll's time)"
                if self.opened
                else f"BMC unreachable: no answer from {self.where}"
            )
        except ConnectionRefusedError:
            found.failure = f"BMC unreachable: {self.where} refused (nothing listens on UDP port)"
        except CompletionCodeError as exc:
            found.failure = f"BMC {self.where} refused a request: {exc.cc_desc} (cc 0x{exc.cc:02x})"
        except DecodingError as exc:
            found.failure = f"BMC {self.where} sent a malformed reply: {exc}"
        except OSError as exc:
            found.failure = f"BMC unreachable: {self.where}: {exc.strerror or exc}"
        finally:
            self._close()
        return found

    def _open(self, found: _Found) -> None:
        p, user = self.params.privilege, self.user
        try:
            self.ipmi.open()
        except IpmiConnectionError as exc:
            text = str(exc)
            if "refused" in text:
                found.failure = (
                    f"BMC unreachable: {self.where} refused (nothing listens on UDP port)"
                )
            else:
                found.timed_out = True
                found.failure = f"BMC unreachable: no answer to RMCP ping from {self.where}"
        except AuthenticationError as exc:
            text = str(exc)
            if "wrong password" in text or "RAKP message 2" in text:
                found.failure = f"authentication failed: wrong password for user {user!r}"
            else:
                found.failure = f"authentication failed for user {user!r}: {text}"
        except IpmiLongPasswordError:
            found.unknown = f"credential {self.params.credential}: password longer than 20 bytes"
        except MessageStatusCodeError as exc:
            why = _MSC_AUTH.get(exc.msc)
            if why is not None:
                found.failure = "authentication failed: " + why.format(user=user, privilege=p)
            else:
                found.failure = f"BMC {self.where} refused the session: {exc.msc_desc}"
        except CompletionCodeError as exc:
            if exc.cc in _CC_PRIVILEGE:
                found.failure = (
                    f"authentication failed: privilege level {p} not allowed for user {user!r}"
                )
            else:
                found.failure = (
                    f"BMC {self.where} refused the session: {exc.cc_desc} (cc 0x{exc.cc:02x})"
                )
        except NotSupportedError as exc:
            found.failure = f"BMC {self.where}: {exc}"

    def _close(self) -> None:
        if self.opened and self.intf.left() > 0.01:
            # a session left open holds one of the BMC's few session slots until
            # it times out; closing it costs one round trip
            with contextlib.suppress(Exception):
                self.ipmi.session.close()
        with contextlib.suppress(Exception):
            self.intf.close()

    # ----------------------------------------------------------------- SDR + sensors

    def _records(self, cached: _SdrCache | None) -> _SdrCache:
        info = self.ipmi.get_sdr_repository_info()
        key = (
            int(info.record_count),
            int(info.most_recent_addition or 0),
            int(getattr(info, "most_recent_erase", 0) or 0),
        )
        now = time.monotonic()
        if cached is not None and cached.key == key and now - cached.read_at < SDR_TTL_S:
            return cached
        records = []
        for rec in self.ipmi.sdr_repository_entries():
            if isinstance(rec, SdrFullSensorRecord):
                records.append(rec)
        return _SdrCache(key, now, tuple(records))

    def _sensors(self, found: _Found, cached: _SdrCache | None) -> None:
        sdr = self._records(cached)
        found.sdr = sdr
        for rec in sdr.records:
            # threshold-based sensors of the BMC itself (satellite MCs need bridging)
            if rec.event_reading_type_code != 0x01 or rec.owner_id != 0x20:
                continue
            if "ignore_sensor" in (rec.capabilities or []):
                continue
            name = str(rec.device_id_string or f"sensor {rec.number}").strip()
            if not _matches(name, self.params):
                continue
            found.sensors_matching += 1
            if len(found.sensors) >= self.params.max_sensors:
                continue
            sensor = self._read(rec, name)
            if sensor is not None:
                found.sensors.append(sensor)

    def _read(self, rec: Any, name: str) -> _Sensor | None:
        rsp = self.ipmi.send_message_by_name(
            "GetSensorReading", sensor_number=rec.number, lun=rec.owner_lun
        )
        if rsp.completion_code != 0:
            # a sensor that is not present (cc 0xcb "requested data not present")
            return None
        cfg = rsp.config
        # bit 6 clear: scanning disabled; bit 5 set: reading unavailable
        if not cfg.sensor_scanning_disabled or cfg.initial_update_in_progress:
            return None
        symbol, suffix = unit_of(rec)
        try:
            value = rec.convert_sensor_raw_to_value(rsp.sensor_reading)
        except (DecodingError, ArithmeticError, ValueError):
            value = None
        sensor = _Sensor(name, value, symbol, suffix)
        states = rsp.states1
        if states is None or value is None:
            return sensor
        for bit, key, level, direction, words in _THRESHOLDS:
            if not states & (1 << bit):
                continue
            sensor.level = level
            limit = self._threshold(rec, key)
            unit = f" {symbol}" if symbol else ""
            cmp_ = "≥" if direction == "upper" else "≤"
            label = "warning (non-critical)" if level == "warning" else level
            text = f"sensor {name!r} {label}: {fmt(value)}{unit}"
            if limit is not None:
                text += f" {cmp_} {fmt(limit)}"
            else:
                text += f" ({words} threshold)"
            sensor.problem = text
            break
        return sensor

    def _threshold(self, rec: Any, key: str) -> float | None:
        caps = rec.capabilities or []
        raw: int | None = None
        if "threshold_readable" in caps or "threshold_read_and_setable" in caps:
            try:
                raw = self.ipmi.get_sensor_thresholds(rec.number, rec.owner_lun).get(key)
            except CompletionCodeError:
                raw = None
        if raw is None:
            raw = (getattr(rec, "threshold", None) or {}).get(key)
        if raw is None:
            return None
        try:
            value = rec.convert_sensor_raw_to_value(raw)
        except (DecodingError, ArithmeticError, ValueError):
            return None
        return float(value) if value is not None else None

    # ----------------------------------------------------------------- SEL

    def _sel(self, found: _Found, mark: _SelMark | None, sdr: _SdrCache | None) -> None:
        info = SelInfo(self.ipmi.send_message_by_name("GetSelInfo"))
        found.sel_count = int(info.entries)
        key = (
            int(info.entries),
            int(info.most_recent_addition or 0),
            int(info.most_recent_erase or 0),
        )
        if mark is not None and mark.key == key:
            found.sel_mark = mark
            return
        entries: list[Any] = []
        if info.entries:
            for entry in self.ipmi.sel_entries():
                entries.append(entry)
                if len(entries) >= MAX_SEL_ENTRIES:
                    break
        seen = frozenset((int(e.record_id), int(e.timestamp)) for e in entries)
        found.sel_mark = _SelMark(key, seen)
        if mark is None:
            return  # the first poll only learns where the log stands
        records = {int(r.number): r for r in (sdr.records if sdr else ()) if r.owner_id == 0x20}
        found.sel_new = [
            _sel_text(e, records)
            for e in entries
            if (int(e.record_id), int(e.timestamp)) not in mark.seen
        ]


def _converted(record: Any, raw: int) -> str:
    """A raw reading of ``record``'s sensor in its unit (``97 °C``), or ``raw 97``."""
    if record is not None:
        with contextlib.suppress(DecodingError, ArithmeticError, ValueError, TypeError):
            value = record.convert_sensor_raw_to_value(raw)
            if value is not None:
                symbol = unit_of(record)[0]
                return f"{fmt(value)} {symbol}".rstrip()
    return f"raw {raw}"


def _sel_text(entry: Any, records: dict[int, Any]) -> str:
    """``SEL #3: sensor 'CPU Temp' upper critical going high asserted (reading 97 °C, threshold 95 °C)``."""
    head = f"SEL #{int(entry.record_id)}"
    if entry.type != SelEntry.TYPE_SYSTEM_EVENT:
        return f"{head}: OEM record type 0x{int(entry.type):02x}"
    number = int(entry.sensor_number)
    record = records.get(number)
    sensor = (
        f"sensor {str(record.device_id_string).strip()!r}"
        if record is not None
        else f"sensor #{number}"
    )
    direction = "deasserted" if entry.event_direction else "asserted"
    data = list(entry.event_data)
    if entry.event_type == 0x01:
        offset = data[0] & 0x0F
        what = (
            _SEL_THRESHOLD_EVENTS[offset]
            if offset < len(_SEL_THRESHOLD_EVENTS)
            else f"threshold event {offset}"
        )
        extra = []
        if (data[0] >> 6) == 1:
            extra.append(f"reading {_converted(record, data[1])}")
        if ((data[0] >> 4) & 3) == 1:
            extra.append(f"threshold {_converted(record, data[2])}")
        tail = f" ({', '.join(extra)})" if extra else ""
        return f"{head}: {sensor} {what} {direction}{tail}"
    return (
        f"{head}: {sensor} (type 0x{int(entry.sensor_type):02x}) event type "
        f"0x{int(entry.event_type):02x} offset {data[0] & 0x0F} {direction}"
    )


# --------------------------------------------------------------------------- monitor


def _judge(params: IpmiParams, found: _Found, rt: float) -> PollOutcome:
    values: dict[str, float] = {}
    if found.power_on is not None:
        values["power_on"] = 1.0 if found.power_on else 0.0
    bad: list[str] = []
    warn: list[str] = []
    for s in found.sensors:
        if s.value is not None:
            name = value_name(s.name, s.suffix)
            n = 2
            while name in values:
                name = f"{value_name(s.name, s.suffix)}_{n}"
                n += 1
            values[name] = round(float(s.value), 6)
        if s.level in ("critical", "non-recoverable"):
            bad.append(s.problem)
        elif s.level == "warning":
            warn.append(s.problem)
    if params.sensors:
        values["sensors"] = float(len(found.sensors))
        values["sensors_warning"] = float(len(warn))
        values["sensors_critical"] = float(len(bad))
    if found.sel_count is not None:
        values["sel_entries"] = float(found.sel_count)
        values["sel_new"] = float(len(found.sel_new))
    problems: list[str] = []
    if found.power_on is not None:
        state = "on" if found.power_on else "off"
        if params.expect_power != "any" and state != params.expect_power:
            problems.append(
                f"chassis power is {state}"
                + (f", expected {params.expect_power}" if params.expect_power == "off" else "")
            )
    problems += _named(bad)
    notes = _named(warn)
    if found.sensors_matching > len(found.sensors) and len(found.sensors) >= params.max_sensors:
        notes.append(f"first {params.max_sensors} of {found.sensors_matching} sensors read")
    if found.sel_new:
        notes.append(f"{len(found.sel_new)} new SEL entries: " + "; ".join(_named(found.sel_new)))
    if problems:
        return PollOutcome.down("; ".join(problems + notes), rt, **values)
    outcome = PollOutcome.up(rt, **values)
    if warn:
        outcome.values["warning"] = 1.0
    outcome.reason = "; ".join(notes)
    return outcome


def _named(items: list[str]) -> list[str]:
    if len(items) <= MAX_NAMED:
        return list(items)
    return [*items[:MAX_NAMED], f"+{len(items) - MAX_NAMED} more"]


class IpmiMonitor(Monitor[IpmiParams]):
    """IPMI 2.0 over LAN with python-ipmi, one session per poll in a worker thread."""

    name: ClassVar[str] = "ipmi"
    params_model = IpmiParams
    description = "IPMI 2.0 (RMCP+) BMC: chassis power, SDR sensors and their thresholds, SEL"

    def __init__(self) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._sdr: OrderedDict[tuple[str, int], _SdrCache] = OrderedDict()
        self._sel: OrderedDict[tuple[str, int, str], _SelMark] = OrderedDict()

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:
            self._pool = ThreadPoolExecutor(MAX_THREADS, thread_name_prefix="vigil-ipmi")
        return self._pool

    @staticmethod
    def _remember(cache: OrderedDict[Any, Any], key: Any, value: Any) -> None:
        if value is None:
            return
        cache[key] = value
        cache.move_to_end(key)
        while len(cache) > MAX_BMCS:
            cache.popitem(last=False)

    async def poll(self, target: Target, params: IpmiParams, ctx: PollContext) -> PollOutcome:
        """Open a session with the BMC at ``target.address`` and judge what it reports."""
        cred = credential(params.credential)
        if cred is None:
            return PollOutcome.unknown(unknown_credential(params.credential))
        if cred.username is None or cred.password is None:
            return PollOutcome.unknown(
                f"credential {params.credential} has no username and password"
            )
        loop = asyncio.get_running_loop()
        now = loop.time()
        own_end = now + ctx.timeout
        # the attempt's own end, a little before it to report; never past the
        # request's deadline (its TTL may come sooner)
        report_by = own_end - min(0.2, 0.1 * ctx.timeout)
        ttl_bound = ctx.deadline < report_by
        end_loop = min(report_by, ctx.deadline)
        end = time.monotonic() + (end_loop - now)
        per_try = min(2.0, max(0.5, ctx.timeout / 4))
        sdr_key = (target.address, params.port)
        sel_key = (target.address, params.port, params.credential)
        session = _Session(
            target.address,
            params,
            cred.username,
            cred.password.get_secret_value(),
            end,
            per_try,
        )
        start = time.perf_counter()
        found = await loop.run_in_executor(
            self._executor(), session.run, self._sdr.get(sdr_key), self._sel.get(sel_key)
        )
        rt = elapsed_ms(start)
        self._remember(self._sdr, sdr_key, found.sdr)
        self._remember(self._sel, sel_key, found.sel_mark)
        if found.timed_out and ttl_bound:
            # the request's TTL, not the BMC, ended the poll: the runner abandons
            # it (UNKNOWN at the scheduler) rather than blame the BMC
            await asyncio.sleep(max(0.0, ctx.deadline - loop.time()) + 1.0)
        if found.unknown:
            return PollOutcome.unknown(found.unknown)
        if found.failure:
            return PollOutcome.down(found.failure, rt)
        return _judge(params, found, rt)

    async def close(self) -> None:
        """Stop the worker threads (each ends by its poll's deadline)."""
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None
        self._sdr.clear()
        self._sel.clear()
