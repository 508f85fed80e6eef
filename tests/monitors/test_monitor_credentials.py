"""Credentials by reference: a service names ``credential: <name>`` and the
minion resolves it from its own ``minion.credentials`` (real HTTP server,
snmpsim, a real plugin process)."""

from __future__ import annotations

import stat
from collections.abc import Iterator

import pytest

from minion.monitors.base import Status
from minion.monitors.credentials import set_credentials
from minion.monitors.nagios import plugin_dirs, set_plugin_dirs
from minion.monitors.snmp_config import set_snmp_profiles
from tests.monitors.conftest import SNMP_V3_AUTH_KEY, SNMP_V3_PRIV_KEY, SNMP_V3_USER

SYS_NAME = "1.3.6.1.2.1.1.5.0"


@pytest.fixture(autouse=True)
def credentials() -> Iterator[None]:
    set_credentials(
        {
            "web": {"username": "ops", "password": "s3cret-pass"},
            "web-wrong": {"username": "ops", "password": "wrong-pass"},
            "token": {"token": "tok-123"},
            "geist": {"community": "geist"},
            "v3": {
                "user": SNMP_V3_USER,
                "auth_protocol": "SHA",
                "auth_key": SNMP_V3_AUTH_KEY,
                "priv_protocol": "AES",
                "priv_key": SNMP_V3_PRIV_KEY,
            },
            "plugin": {"username": "nagios", "password": "pl-ugin-pass"},
        }
    )
    set_snmp_profiles(None)
    yield
    set_credentials(None)


async def test_http_basic_auth_by_reference(poll, http_server):
    ok = await poll(
        "http", "127.0.0.1", {"port": http_server, "path": "/auth", "credential": "web"}
    )
    assert ok.status is Status.UP, ok.reason
    bad = await poll(
        "http", "127.0.0.1", {"port": http_server, "path": "/auth", "credential": "web-wrong"}
    )
    assert bad.status is Status.DOWN and "401" in bad.reason
    assert "wrong-pass" not in bad.reason


async def test_http_bearer_by_reference_and_inline(poll, http_server):
    # /echo shows the request headers: the token is sent as a bearer
    out = await poll(
        "http",
        "127.0.0.1",
        {"port": http_server, "path": "/echo", "credential": "token", "body": "Bearer tok-123"},
    )
    assert out.status is Status.UP, out.reason
    out = await poll(
        "http",
        "127.0.0.1",
        {
            "port": http_server,
            "path": "/echo",
            "bearer_token": "inline-tok",
            "secret_headers": {"X-Api-Key": "k-42"},
            "body": "(?s)Bearer inline-tok.*k-42|k-42.*Bearer inline-tok",
        },
    )
    assert out.status is Status.UP, out.reason


async def test_an_unknown_credential_is_unknown_not_down(poll, http_server, snmpsim):
    out = await poll("http", "127.0.0.1", {"port": http_server, "credential": "nope"})
    assert (out.status, out.reason) == (Status.UNKNOWN, "unknown credential nope")
    out = await poll("snmp", snmpsim["host"], {"port": snmpsim["port"], "credential": "nope"})
    assert (out.status, out.reason) == (Status.UNKNOWN, "unknown credential nope")
    out = await poll("nagios", "127.0.0.1", {"plugin": "check_dummy", "credential": "nope"})
    assert (out.status, out.reason) == (Status.UNKNOWN, "unknown credential nope")


async def test_snmp_community_and_v3_keys_by_reference(poll, snmpsim):
    agent = {"port": snmpsim["port"], "oid": SYS_NAME, "operator": "~", "operand": "temp-rack1"}
    out = await poll("snmp", snmpsim["host"], {**agent, "credential": "geist"})
    assert out.status is Status.UP, out.reason
    out = await poll(
        "snmp", snmpsim["host"], {**agent, "version": "v3", "context": "geist", "credential": "v3"}
    )
    assert out.status is Status.UP, out.reason


async def test_nagios_password_macro_is_masked_in_the_output(poll, tmp_path, nagios_plugins):
    script = tmp_path / "check_echo"
    script.write_text('#!/bin/sh\necho "OK user=$1 pass=$2"\n')
    script.chmod(stat.S_IRWXU)
    before = plugin_dirs()
    set_plugin_dirs([str(tmp_path)])
    try:
        out = await poll(
            "nagios",
            "127.0.0.1",
            {"plugin": "check_echo", "args": ["{username}", "{password}"], "credential": "plugin"},
        )
    finally:
        set_plugin_dirs(before)
    assert out.status is Status.UP
    assert out.reason == "OK user=nagios pass=***"
