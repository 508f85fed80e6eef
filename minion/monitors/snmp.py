"""``snmp``: GET or WALK an OID and compare values (OpenNMS SnmpMonitor semantics).

GET (default): UP when the object exists and, with ``operator``/``operand``,
its value meets the criterion. WALK (``walk: true``): the rows under ``oid``
are compared one by one and ``match`` decides: ``all`` rows must meet the
criterion, ``any`` one must, or ``count`` the rows that do must lie within
``minimum``..``maximum``. Without an operator every row counts as meeting it.

Operators: ``<`` ``>`` ``<=`` ``>=`` compare numbers; ``=`` and ``!=`` compare
numbers when both sides are numbers, text otherwise; ``~`` searches the
operand as a regular expression in the value's text. Octet strings compare
as text when printable, else as ``0x…`` hex; OIDs as dotted text.

Credentials come from the minion's SNMP profiles (:mod:`snmp_config`),
overridden by the service's parameters; they never appear in reasons or logs.
Versions v1, v2c and v3 (USM auth/priv). One SNMP engine serves all v1/v2c
polls; each distinct v3 user/key set gets its own engine, so two agents with
the same user name and different keys never disturb each other. Requests go
out once per attempt (the runner owns retries); an unanswered request is
DOWN when ``timeout`` (90% of the attempt's time) passes.

Response time: from the first request to the last response (a walk makes
several). Measured values: GET: ``value`` when the value is numeric; WALK:
``rows`` and ``matched``.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import time
from typing import Any, ClassVar

from pysnmp.hlapi.v3arch.asyncio import (  # type: ignore[import-untyped]
    CommunityData,
    ContextData,
    ObjectIdentity,
    ObjectType,
    SnmpEngine,
    Udp6TransportTarget,
    UdpTransportTarget,
    UsmUserData,
    bulk_cmd,
    get_cmd,
    next_cmd,
    usm3DESEDEPrivProtocol,
    usmAesBlumenthalCfb192Protocol,
    usmAesBlumenthalCfb256Protocol,
    usmAesCfb128Protocol,
    usmAesCfb192Protocol,
    usmAesCfb256Protocol,
    usmDESPrivProtocol,
    usmHMAC128SHA224AuthProtocol,
    usmHMAC192SHA256AuthProtocol,
    usmHMAC256SHA384AuthProtocol,
    usmHMAC384SHA512AuthProtocol,
    usmHMACMD5AuthProtocol,
    usmHMACSHAAuthProtocol,
)
from pysnmp.hlapi.varbinds import CommandGeneratorVarBinds  # type: ignore[import-untyped]
from pysnmp.proto import rfc1902, rfc1905  # type: ignore[import-untyped]
from pysnmp.proto.rfc1902 import ObjectName  # type: ignore[import-untyped]

from minion.monitors._common import Plan, is_ipv6, plan
from minion.monitors.base import (
    Monitor,
    PollContext,
    PollOutcome,
    Target,
    elapsed_ms,
)
from minion.monitors.snmp_config import EffectiveCredentials, resolve_credentials
from services.core.params.snmp import Operator, SnmpParams

_AUTH = {
    "MD5": usmHMACMD5AuthProtocol,
    "SHA": usmHMACSHAAuthProtocol,
    "SHA224": usmHMAC128SHA224AuthProtocol,
    "SHA256": usmHMAC192SHA256AuthProtocol,
    "SHA384": usmHMAC256SHA384AuthProtocol,
    "SHA512": usmHMAC384SHA512AuthProtocol,
}
_PRIV = {
    "DES": usmDESPrivProtocol,
    "3DES": usm3DESEDEPrivProtocol,
    "AES": usmAesCfb128Protocol,
    "AES128": usmAesCfb128Protocol,
    "AES192": usmAesCfb192Protocol,
    "AES256": usmAesCfb256Protocol,
    "AES192BLMT": usmAesBlumenthalCfb192Protocol,
    "AES256BLMT": usmAesBlumenthalCfb256Protocol,
}
#: Repetitions per GETBULK request while walking (v2c/v3).
_BULK = 25


# --------------------------------------------------------------------------- values


def value_text(val: Any) -> str:
    """An SNMP value as operators and reasons see it."""
    if isinstance(val, rfc1902.OctetString) and not isinstance(val, rfc1902.IpAddress):
        raw = bytes(val)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            return "0x" + raw.hex()
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return text
        return "0x" + raw.hex()
    if isinstance(val, rfc1902.IpAddress):
        return ".".join(str(b) for b in bytes(val))
    if isinstance(val, rfc1902.ObjectIdentifier):
        return str(val)
    if isinstance(
        val,
        rfc1902.Integer
        | rfc1902.Integer32
        | rfc1902.Unsigned32
        | rfc1902.Counter32
        | rfc1902.Counter64
        | rfc1902.Gauge32
        | rfc1902.TimeTicks,
    ):
        return str(int(val))
    return val.prettyPrint()  # type: ignore[no-any-return]


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def meets(value: str, operator: Operator | None, operand: str | None) -> bool:
    """OpenNMS ``meetsCriteria``: does ``value`` satisfy ``operator operand``?"""
    if operator is None or operand is None:
        return True
    if operator == "~":
        return re.search(operand, value) is not None
    a, b = _number(value), _number(operand)
    if operator in ("=", "!="):
        same = a == b if a is not None and b is not None else value == operand
        return same if operator == "=" else not same
    if a is None or b is None:
        return False
    return {
        "<": a < b,
        ">": a > b,
        "<=": a <= b,
        ">=": a >= b,
    }[operator]


def _criterion(params: SnmpParams) -> str:
    return f"{params.operator} {params.operand}"


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------- monitor


def _new_engine() -> SnmpEngine:
    """A fresh engine, warmed up: the first OID resolution attaches pysnmp's MIB
    machinery (a parser built at run time), which must not happen on the loop."""
    eng = SnmpEngine()
    CommandGeneratorVarBinds().make_varbinds(
        eng.cache, (ObjectType(ObjectIdentity("1.3.6.1.2.1.1.1.0")),)
    )
    return eng


def _request_timeout(ctx: PollContext, when: Plan) -> float:
    """pysnmp's per-request timeout: a little under the attempt's time.

    pysnmp keeps one configuration entry per (agent, timeout) for ever, so the
    value must not change from poll to poll: normally it is 90% of the
    configured timeout; only when setting up took long (the first poll
    builds the engine) is it cut down, in 0.25 s steps.
    """
    stable = max(0.2, round(ctx.timeout * 0.9, 1))
    left = when.until_report()
    if left >= stable:
        return stable
    return max(0.1, math.floor(left * 4) / 4)


class SnmpError(Exception):
    """A request failed; the message is the DOWN reason."""


#: pysnmp's v3 (USM) error indications, by class, as an operator reads them.
_USM_ERRORS: dict[str, str] = {
    "DecryptionError": (
        "wrong privacy key (priv_key) or privacy protocol (priv_protocol): "
        "the agent's reply cannot be decrypted"
    ),
    "EncryptionError": "the request cannot be encrypted (privacy protocol not available)",
    "WrongDigest": (
        "wrong authentication key (auth_key) or protocol (auth_protocol): "
        "the reply's digest does not match"
    ),
    "UnknownUserName": "unknown user (the agent has no such USM user)",
    "UnsupportedSecurityLevel": (
        "security level not supported for this user (check auth_key and priv_key)"
    ),
}


class SnmpMonitor(Monitor[SnmpParams]):
    """GET or WALK with pysnmp's asyncio API."""

    name: ClassVar[str] = "snmp"
    params_model = SnmpParams
    description = "SNMP v1/v2c/v3 GET or WALK with value criteria (OpenNMS SnmpMonitor)"

    def __init__(self) -> None:
        self._engines: dict[tuple[Any, ...], SnmpEngine] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._lock: asyncio.Lock | None = None

    async def _engine(self, creds: EffectiveCredentials) -> SnmpEngine:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # engines are tied to the loop their sockets live on
            self._close_engines()
            self._loop, self._lock = loop, asyncio.Lock()
        assert self._lock is not None
        if creds.version == "v3":
            key: tuple[Any, ...] = (
                "v3",
                creds.user,
                creds.auth_protocol,
                creds.auth_key.get_secret_value() if creds.auth_key else None,
                creds.priv_protocol,
                creds.priv_key.get_secret_value() if creds.priv_key else None,
            )
        else:
            key = ("community",)
        eng = self._engines.get(key)
        if eng is None:
            async with self._lock:
                eng = self._engines.get(key)
                if eng is None:
                    # building an engine and its MIB view takes ~0.4 s of CPU:
                    # keep it off the loop
                    eng = await asyncio.to_thread(_new_engine)
                    self._engines[key] = eng
        return eng

    @staticmethod
    def _auth(creds: EffectiveCredentials) -> CommunityData | UsmUserData:
        if creds.version == "v3":
            return UsmUserData(
                creds.user,
                authKey=creds.auth_key.get_secret_value() if creds.auth_key else None,
                privKey=creds.priv_key.get_secret_value() if creds.priv_key else None,
                authProtocol=_AUTH[creds.auth_protocol] if creds.auth_protocol else None,
                privProtocol=_PRIV[creds.priv_protocol] if creds.priv_protocol else None,
            )
        return CommunityData(
            creds.community.get_secret_value(), mpModel=0 if creds.version == "v1" else 1
        )

    async def poll(self, target: Target, params: SnmpParams, ctx: PollContext) -> PollOutcome:
        """GET or WALK ``params.oid`` on ``target.address``."""
        when = plan(ctx)
        try:
            creds = resolve_credentials(target.address, target.location, params, params.credential)
        except ValueError as exc:
            return PollOutcome.unknown(str(exc))
        engine = await self._engine(creds)
        transport_cls = Udp6TransportTarget if is_ipv6(target.address) else UdpTransportTarget
        transport = await transport_cls.create(
            (target.address, creds.port), timeout=_request_timeout(ctx, when), retries=0
        )
        session = _Session(
            engine,
            self._auth(creds),
            transport,
            ContextData(contextName=creds.context),
            creds,
            f"{target.address}:{creds.port}",
        )
        start = time.perf_counter()
        try:
            # pysnmp's own timeout counts timer ticks, which run late on a busy
            # loop: the attempt's deadline is kept here too, so an agent that does
            # not answer is still reported as such, not as a bare "timed out".
            async with asyncio.timeout_at(when.deadline):
                if params.walk:
                    rows = await session.walk(params.oid, params.max_rows)
                    return self._judge_walk(params, rows, elapsed_ms(start))
                value = await session.get(params.oid)
                return self._judge_get(params, value, elapsed_ms(start))
        except SnmpError as exc:
            return PollOutcome.down(str(exc), elapsed_ms(start))
        except TimeoutError:
            return PollOutcome.down(str(session.no_response()), elapsed_ms(start))

    @staticmethod
    def _judge_get(params: SnmpParams, value: Any, rt: float) -> PollOutcome:
        text = value_text(value)
        values: dict[str, float] = {}
        num = _number(text) if not isinstance(value, rfc1902.OctetString) else None
        if num is not None:
            values["value"] = num
        if not meets(text, params.operator, params.operand):
            return PollOutcome.down(
                f"{params.oid} = {_short(text)!s}, expected {_criterion(params)}", rt, **values
            )
        return PollOutcome.up(rt, **values)

    @staticmethod
    def _judge_walk(params: SnmpParams, rows: list[tuple[str, str]], rt: float) -> PollOutcome:
        matched: list[tuple[str, str]] = []
        failed: list[tuple[str, str]] = []
        for row in rows:
            (matched if meets(row[1], params.operator, params.operand) else failed).append(row)
        values = {"rows": float(len(rows)), "matched": float(len(matched))}
        crit = _criterion(params) if params.operator else "present"
        if not rows:
            if params.match == "count" and (params.minimum or 0) == 0:
                return PollOutcome.up(rt, **values)
            return PollOutcome.down(f"walk of {params.oid} returned no rows", rt, **values)
        if params.match == "all" and failed:
            oid, val = failed[0]
            return PollOutcome.down(
                f"{len(failed)} of {len(rows)} rows under {params.oid} fail {crit} "
                f"(first: {oid} = {_short(val)})",
                rt,
                **values,
            )
        if params.match == "any" and not matched:
            oid, val = rows[0]
            return PollOutcome.down(
                f"none of {len(rows)} rows under {params.oid} meets {crit} "
                f"(first: {oid} = {_short(val)})",
                rt,
                **values,
            )
        if params.match == "count":
            n = len(matched)
            lo, hi = params.minimum, params.maximum
            if (lo is not None and n < lo) or (hi is not None and n > hi):
                bounds = (
                    f"{lo}..{hi}"
                    if lo is not None and hi is not None
                    else (f"at least {lo}" if lo is not None else f"at most {hi}")
                )
                return PollOutcome.down(
                    f"{n} of {len(rows)} rows under {params.oid} meet {crit}, expected {bounds}",
                    rt,
                    **values,
                )
        return PollOutcome.up(rt, **values)

    def _close_engines(self) -> None:
        for eng in self._engines.values():
            # closing an engine whose loop is gone may fail; nothing is left to do then
            with contextlib.suppress(Exception):
                eng.close_dispatcher()
        self._engines.clear()

    async def close(self) -> None:
        """Close every SNMP engine's sockets."""
        self._close_engines()
        self._loop = None


class _Session:
    """One poll's requests against one agent."""

    def __init__(
        self,
        engine: SnmpEngine,
        auth: CommunityData | UsmUserData,
        transport: UdpTransportTarget | Udp6TransportTarget,
        context: ContextData,
        creds: EffectiveCredentials,
        where: str,
    ) -> None:
        self.engine, self.auth, self.transport, self.context = engine, auth, transport, context
        self.creds, self.where = creds, where

    def no_response(self) -> SnmpError:
        """The agent did not answer in time."""
        hint = (
            "wrong community, or the agent is down"
            if self.creds.version != "v3"
            else "wrong credentials or context, or the agent is down"
        )
        return SnmpError(f"no SNMP response from {self.where} ({self.creds.version}; {hint})")

    def _fail(self, indication: Any) -> SnmpError:
        text = str(indication)
        if "timed out" in text.lower() or "timeout" in text.lower():
            return self.no_response()
        # pysnmp's texts name its internals ("Ciphering services not available
        # or ciphertext is broken" for a wrong privacy key): say what to fix.
        meaning = _USM_ERRORS.get(type(indication).__name__)
        if meaning is not None:
            return SnmpError(f"SNMP v3 request to {self.where} failed: {meaning}")
        return SnmpError(f"SNMP {self.creds.version} request to {self.where} failed: {text}")

    def _status(self, status: Any, index: Any, oid: str) -> SnmpError:
        return SnmpError(f"agent {self.where} answered {status.prettyPrint()} for {oid}")

    async def get(self, oid: str) -> Any:
        """The value of ``oid`` (raises :class:`SnmpError`)."""
        ind, status, index, vbs = await get_cmd(
            self.engine,
            self.auth,
            self.transport,
            self.context,
            ObjectType(ObjectIdentity(oid)),
            lookupMib=False,
        )
        if ind:
            raise self._fail(ind)
        if status:
            if int(status) == 2:  # v1 noSuchName
                raise SnmpError(f"no such object {oid} on {self.where}")
            raise self._status(status, index, oid)
        if not vbs:
            raise SnmpError(f"empty response for {oid} from {self.where}")
        value = vbs[0][1]
        if isinstance(value, rfc1905.NoSuchObject):
            raise SnmpError(f"no such object {oid} on {self.where}")
        if isinstance(value, rfc1905.NoSuchInstance):
            raise SnmpError(f"no such instance {oid} on {self.where}")
        if isinstance(value, rfc1905.EndOfMibView):
            raise SnmpError(f"end of MIB view at {oid} on {self.where}")
        return value

    async def walk(self, oid: str, max_rows: int) -> list[tuple[str, str]]:
        """Rows ``(oid, value text)`` under ``oid`` (GETNEXT for v1, GETBULK otherwise)."""
        base = ObjectName(oid)
        current = base
        rows: list[tuple[str, str]] = []
        while True:
            start_vb = ObjectType(ObjectIdentity(current))
            if self.creds.version == "v1":
                ind, status, index, vbs = await next_cmd(
                    self.engine,
                    self.auth,
                    self.transport,
                    self.context,
                    start_vb,
                    lookupMib=False,
                )
            else:
                ind, status, index, vbs = await bulk_cmd(
                    self.engine,
                    self.auth,
                    self.transport,
                    self.context,
                    0,
                    min(_BULK, max_rows + 1 - len(rows)),
                    start_vb,
                    lookupMib=False,
                )
            if ind:
                raise self._fail(ind)
            if status:
                if int(status) == 2:  # v1 noSuchName: walked past the end of the MIB
                    return rows
                raise self._status(status, index, str(current))
            if not vbs:
                return rows
            for name, value in vbs:
                if isinstance(value, rfc1905.EndOfMibView) or not base.isPrefixOf(name):
                    return rows
                if name <= current:
                    raise SnmpError(
                        f"agent {self.where} returned non-increasing OID {name} after {current}"
                    )
                if len(rows) >= max_rows:
                    raise SnmpError(f"walk of {oid} has more than max_rows={max_rows} rows")
                rows.append((str(name), value_text(value)))
                current = name
