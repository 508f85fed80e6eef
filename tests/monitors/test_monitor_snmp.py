"""SNMP monitor against snmpsim serving recorded devices (v1, v2c, v3)."""

from __future__ import annotations

import logging

import pytest

from minion.monitors.base import Status
from minion.monitors.snmp_config import set_snmp_profiles
from tests.monitors.conftest import (
    SNMP_V3_AUTH_KEY,
    SNMP_V3_AUTH_ONLY_USER,
    SNMP_V3_PRIV_KEY,
    SNMP_V3_USER,
)

SYS_NAME = "1.3.6.1.2.1.1.5.0"
SYS_SERVICES = "1.3.6.1.2.1.1.7.0"  # 72 on the recorded PDU
SYS_UPTIME = "1.3.6.1.2.1.1.3.0"
IF_DESCR = "1.3.6.1.2.1.2.2.1.2"  # LOOPBACK, vmac0
IF_OPER_STATUS = "1.3.6.1.2.1.2.2.1.8"  # both up (1)
IF_TABLE = "1.3.6.1.2.1.2.2.1"


@pytest.fixture
def agent(snmpsim):
    return {"host": snmpsim["host"], "port": snmpsim["port"], "host6": snmpsim["host6"]}


@pytest.fixture(autouse=True)
def _no_profiles():
    set_snmp_profiles(None)
    yield
    set_snmp_profiles(None)


async def test_v2c_get_default_oid(poll, agent):
    # default: sysObjectID.0 must exist; community defaults to "public"
    out = await poll("snmp", agent["host"], {"port": agent["port"]})
    assert out.status is Status.UP, out.reason
    assert out.response_time_ms > 0


async def test_get_with_operators(poll, agent):
    base = {"port": agent["port"], "community": "public"}
    cases = [
        (SYS_SERVICES, ">", "70", Status.UP),
        (SYS_SERVICES, "<=", "72", Status.UP),
        (SYS_SERVICES, "=", "72.0", Status.UP),
        (SYS_SERVICES, "!=", "72", Status.DOWN),
        (SYS_NAME, "~", r"^pwr-dc01-pdu", Status.UP),
        (SYS_NAME, "=", "pwr-dc01-pdu-rack1-01", Status.UP),
        (SYS_NAME, ">", "1", Status.DOWN),  # not a number
    ]
    for oid, op, operand, want in cases:
        out = await poll(
            "snmp", agent["host"], {**base, "oid": oid, "operator": op, "operand": operand}
        )
        assert out.status is want, (oid, op, operand, out.reason)


async def test_get_value_is_measured(poll, agent):
    out = await poll("snmp", agent["host"], {"port": agent["port"], "oid": SYS_SERVICES})
    assert out.values == {"value": 72.0}


async def test_operator_mismatch_reason(poll, agent):
    out = await poll(
        "snmp",
        agent["host"],
        {"port": agent["port"], "oid": SYS_SERVICES, "operator": ">", "operand": "100"},
    )
    assert out.status is Status.DOWN
    assert out.reason == "1.3.6.1.2.1.1.7.0 = 72, expected > 100"


async def test_missing_object(poll, agent):
    out = await poll("snmp", agent["host"], {"port": agent["port"], "oid": "1.3.6.1.2.1.1.99.0"})
    assert out.status is Status.DOWN
    assert out.reason.startswith("no such ")
    assert "1.3.6.1.2.1.1.99.0" in out.reason


async def test_walk_all_any_count(poll, agent):
    base = {"port": agent["port"], "walk": True}
    up = await poll(
        "snmp", agent["host"], {**base, "oid": IF_OPER_STATUS, "operator": "=", "operand": "1"}
    )
    assert up.status is Status.UP, up.reason
    assert up.values == {"rows": 2.0, "matched": 2.0}

    some = await poll(
        "snmp",
        agent["host"],
        {**base, "oid": IF_DESCR, "operator": "~", "operand": "^vmac", "match": "any"},
    )
    assert some.status is Status.UP, some.reason
    assert some.values == {"rows": 2.0, "matched": 1.0}

    not_all = await poll(
        "snmp", agent["host"], {**base, "oid": IF_DESCR, "operator": "~", "operand": "^vmac"}
    )
    assert not_all.status is Status.DOWN
    assert not_all.reason == (
        "1 of 2 rows under 1.3.6.1.2.1.2.2.1.2 fail ~ ^vmac "
        "(first: 1.3.6.1.2.1.2.2.1.2.1 = LOOPBACK)"
    )


async def test_walk_count_bounds(poll, agent):
    base = {"port": agent["port"], "walk": True, "oid": IF_DESCR, "match": "count"}
    inside = await poll("snmp", agent["host"], {**base, "minimum": 1, "maximum": 2})
    assert inside.status is Status.UP, inside.reason
    above = await poll("snmp", agent["host"], {**base, "maximum": 1})
    assert above.status is Status.DOWN
    assert above.reason == "2 of 2 rows under 1.3.6.1.2.1.2.2.1.2 meet present, expected at most 1"
    below = await poll(
        "snmp",
        agent["host"],
        {**base, "operator": "=", "operand": "LOOPBACK", "minimum": 2},
    )
    assert below.status is Status.DOWN
    assert below.reason == (
        "1 of 2 rows under 1.3.6.1.2.1.2.2.1.2 meet = LOOPBACK, expected at least 2"
    )


async def test_walk_bigger_than_max_rows(poll, agent):
    out = await poll(
        "snmp",
        agent["host"],
        {"port": agent["port"], "walk": True, "oid": IF_TABLE, "max_rows": 10},
    )
    assert out.status is Status.DOWN
    assert out.reason == "walk of 1.3.6.1.2.1.2.2.1 has more than max_rows=10 rows"


async def test_walk_empty_subtree(poll, agent):
    out = await poll(
        "snmp", agent["host"], {"port": agent["port"], "walk": True, "oid": "1.3.6.1.2.1.99"}
    )
    assert out.status is Status.DOWN
    assert out.reason == "walk of 1.3.6.1.2.1.99 returned no rows"


async def test_v1_get_and_walk(poll, agent):
    get = await poll(
        "snmp", agent["host"], {"port": agent["port"], "version": "v1", "oid": SYS_NAME}
    )
    assert get.status is Status.UP, get.reason
    walk = await poll(
        "snmp",
        agent["host"],
        {"port": agent["port"], "version": "v1", "walk": True, "oid": IF_DESCR},
    )
    assert walk.status is Status.UP, walk.reason
    assert walk.values["rows"] == 2.0


async def test_other_recording_by_community(poll, agent):
    out = await poll(
        "snmp",
        agent["host"],
        {
            "port": agent["port"],
            "community": "geist",
            "oid": SYS_NAME,
            "operator": "~",
            "operand": "temp",
        },
    )
    assert out.status is Status.UP, out.reason


async def test_ipv6_agent(poll, agent):
    out = await poll("snmp", agent["host6"], {"port": agent["port"], "oid": SYS_UPTIME})
    assert out.status is Status.UP, out.reason
    assert out.values["value"] > 0


async def test_wrong_community_is_down(poll, agent, caplog):
    caplog.set_level(logging.DEBUG)
    out = await poll(
        "snmp",
        agent["host"],
        {"port": agent["port"], "community": "not-the-community"},
        timeout=1.0,
    )
    assert out.status is Status.DOWN
    assert out.reason.startswith(f"no SNMP response from 127.0.0.1:{agent['port']} (v2c;")
    assert "wrong community" in out.reason
    # the community never shows, neither in the reason nor in any log record
    assert "not-the-community" not in out.reason
    assert "not-the-community" not in caplog.text


async def test_v3_auth_priv(poll, agent):
    out = await poll(
        "snmp",
        agent["host"],
        {
            "port": agent["port"],
            "version": "v3",
            "user": SNMP_V3_USER,
            "auth_protocol": "SHA",
            "auth_key": SNMP_V3_AUTH_KEY,
            "priv_protocol": "AES",
            "priv_key": SNMP_V3_PRIV_KEY,
            "context": "geist",
            "oid": SYS_NAME,
            "operator": "~",
            "operand": "temp-rack1",
        },
    )
    assert out.status is Status.UP, out.reason


async def test_v3_auth_no_priv_walk(poll, agent):
    out = await poll(
        "snmp",
        agent["host"],
        {
            "port": agent["port"],
            "user": SNMP_V3_AUTH_ONLY_USER,
            "auth_key": SNMP_V3_AUTH_KEY,
            "context": "public",
            "walk": True,
            "oid": IF_DESCR,
        },
    )
    assert out.status is Status.UP, out.reason
    assert out.values["rows"] == 2.0


async def test_v3_wrong_keys_are_down(poll, agent):
    wrong_auth = await poll(
        "snmp",
        agent["host"],
        {
            "port": agent["port"],
            "version": "v3",
            "user": SNMP_V3_USER,
            "auth_key": "not-the-auth-key",
            "priv_key": SNMP_V3_PRIV_KEY,
            "context": "geist",
        },
        timeout=1.5,
    )
    assert wrong_auth.status is Status.DOWN
    assert "not-the-auth-key" not in wrong_auth.reason
    assert "digest" in wrong_auth.reason.lower() or "no SNMP response" in wrong_auth.reason
    unknown_user = await poll(
        "snmp",
        agent["host"],
        {
            "port": agent["port"],
            "version": "v3",
            "user": "nobody",
            "auth_key": SNMP_V3_AUTH_KEY,
            "context": "geist",
        },
        timeout=1.5,
    )
    assert unknown_user.status is Status.DOWN
    assert "unknown" in unknown_user.reason.lower() or "no SNMP response" in unknown_user.reason


async def test_credentials_from_profiles(poll, agent):
    set_snmp_profiles(
        [
            {"label": "elsewhere", "match": {"addresses": ["10.0.0.0/8"]}, "community": "nope"},
            {
                "label": "lab v3",
                "match": {"addresses": ["127.0.0.1"], "locations": ["lab"]},
                "version": "v3",
                "user": SNMP_V3_USER,
                "auth_key": SNMP_V3_AUTH_KEY,
                "priv_key": SNMP_V3_PRIV_KEY,
                "context": "geist",
            },
            {"label": "default", "community": "geist"},
        ]
    )
    # at location "lab": the v3 profile (geist recording via its context)
    lab = await poll(
        "snmp",
        agent["host"],
        {"port": agent["port"], "oid": SYS_NAME, "operator": "~", "operand": "temp"},
        location="lab",
    )
    assert lab.status is Status.UP, lab.reason
    # elsewhere: the catch-all profile's community "geist"
    other = await poll(
        "snmp",
        agent["host"],
        {"port": agent["port"], "oid": SYS_NAME, "operator": "~", "operand": "temp"},
    )
    assert other.status is Status.UP, other.reason
    # parameters override the profile: community public → the PDU recording
    override = await poll(
        "snmp",
        agent["host"],
        {
            "port": agent["port"],
            "community": "public",
            "oid": SYS_NAME,
            "operator": "~",
            "operand": "pdu",
        },
    )
    assert override.status is Status.UP, override.reason


async def test_garbage_from_the_agent_is_down(poll, udp_peer):
    # a "agent" answering every request with junk bytes: ignored by the SNMP
    # engine (it cannot be a reply), so the poll ends as "no SNMP response"
    async with udp_peer(lambda data: b"\x30\x03\x02\x01" + data[:40][::-1]) as port:
        out = await poll("snmp", "127.0.0.1", {"port": port}, timeout=1.0)
    assert out.status is Status.DOWN
    assert out.reason.startswith(f"no SNMP response from 127.0.0.1:{port}")


async def test_v3_wrong_priv_key_reads_as_a_wrong_privacy_key(poll, agent):
    """Issue 10, defect 16: not pysnmp's "Ciphering services not available or
    ciphertext is broken", but what an operator can act on."""
    out = await poll(
        "snmp",
        agent["host"],
        {
            "port": agent["port"],
            "version": "v3",
            "user": SNMP_V3_USER,
            "auth_protocol": "SHA",
            "auth_key": SNMP_V3_AUTH_KEY,
            "priv_protocol": "AES",
            "priv_key": "not-the-priv-key",
            "context": "geist",
            "oid": SYS_NAME,
        },
        timeout=1.5,
    )
    assert out.status is Status.DOWN
    assert "not-the-priv-key" not in out.reason
    assert "Ciphering services" not in out.reason
    assert "wrong privacy key" in out.reason
