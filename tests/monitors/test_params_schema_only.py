"""The monitor parameter schemas live in the core and need no protocol library;
the plugin API is one pinned module."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from typing import Any

import dns.exception
import dns.name
import dns.rcode
import dns.rdatatype
import pytest

import minion.plugin
from services.core.params import ParamsError, available, params_model, validate_params
from services.core.params.dns import check_dns_name, record_type_value
from services.core.params.registry import BUILTIN
from tests.monitors.conftest import REPO

#: One valid parameter set per built-in monitor.
GOOD: dict[str, dict[str, Any]] = {
    "dns": {"name": "example.com", "record_type": "mx", "fatal_rcodes": ["servfail"]},
    "http": {"scheme": "https", "host": "www.example.com:8443", "status": "200-299"},
    "icmp": {"count": 2, "max_packet_loss": 50},
    "nagios": {"plugin": "check_tcp", "args": ["-H", "{address}"]},
    "noop": {},
    "snmp": {"version": "v3", "user": "ops", "auth_key": "12345678", "oid": "1.3.6.1.2.1.1.3.0"},
    "ssh": {"port": 2222, "software": "^OpenSSH_"},
    "tcp": {"port": 443, "tls": True, "verify_tls": True, "server_name": "example.com"},
    "tls_cert": {"port": 8443, "server_name": "example.com"},
    "ipmi": {"credential": "paris-bmc", "privilege": "operator", "sel": True},
    "redfish": {
        "credential": "paris-bmc",
        "ca_file": "/etc/vigil/bmc-ca.pem",
        "checks": [
            {"path": "/redfish/v1/Systems/1", "pointer": "/Status/State", "equals": "Enabled"}
        ],
    },
}

PROTOCOL_LIBRARIES = [
    "pysnmp",
    "aiohttp",
    "yarl",
    "dns",
    "asyncssh",
    "icmplib",
    "cryptography",
    "pyipmi",
]


def _loaded_after(code: str) -> list[str]:
    """Top-level packages of PROTOCOL_LIBRARIES loaded after running ``code`` in a
    fresh interpreter."""
    probe = (
        f"{code}\nimport json, sys\n"
        f"print(json.dumps([m for m in {PROTOCOL_LIBRARIES!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=str(REPO),
    )
    assert out.returncode == 0, out.stderr
    loaded: list[str] = json.loads(out.stdout.strip().splitlines()[-1])
    return loaded


def test_every_builtin_has_a_good_example() -> None:
    assert set(GOOD) == set(BUILTIN)
    assert set(BUILTIN) <= set(available())
    for name, params in GOOD.items():
        validate_params(name, params)


def test_validating_every_builtin_imports_no_protocol_library() -> None:
    code = (
        "from services.core.params import validate_params\n"
        f"for name, params in {GOOD!r}.items():\n"
        "    validate_params(name, params)\n"
    )
    assert _loaded_after(code) == []


def test_importing_the_scheduler_imports_no_protocol_library() -> None:
    loaded = _loaded_after("import services.scheduler.app")
    # aiohttp (and yarl with it) is the scheduler's metrics server; cryptography its PKI
    assert [m for m in loaded if m in ("pysnmp", "dns", "asyncssh", "icmplib")] == []


def test_schemas_are_the_monitors_models() -> None:
    from minion.monitors.registry import monitor_class

    for name in GOOD:
        assert monitor_class(name).params_model is params_model(name)


def test_a_module_without_a_schema_is_reported(monkeypatch: pytest.MonkeyPatch) -> None:
    from services.core.params import registry

    registry.params_model.cache_clear()
    monkeypatch.setitem(registry.BUILTIN, "odd", "services.core.params.base:BaseModel")
    try:
        with pytest.raises(registry.UnknownMonitorError, match="is not a vigil Monitor subclass"):
            validate_params("odd", {})
    finally:
        registry.params_model.cache_clear()


# --------------------------------------------------------------------------- DNS checks

NAMES = [
    "example.com",
    "example.com.",
    ".",
    "@",
    "a..b",
    ".a",
    "a.",
    "a" * 63 + ".com",
    "a" * 64 + ".com",
    ".".join(["a" * 63] * 4),
    ".".join(["a" * 62] * 4),
    "ex\\.ample.com",
    "ex\\065mple.com",
    "ex\\256.com",
    "ex\\12x.com",
    "trailing\\",
    "under_score.example",
    "*.example.com",
    "bücher.example",
    "xn--bcher-kva.example",
    "例え.テスト",
    "例え。テスト",
    "a b.example",
]


def _dnspython_name(text: str) -> str | None:
    try:
        dns.name.from_text(text)
    except dns.exception.DNSException as exc:
        return str(exc)
    return None


def _ours_name(text: str) -> str | None:
    try:
        check_dns_name(text)
    except ValueError as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("text", NAMES)
def test_dns_names_as_dnspython_takes_them(text: str) -> None:
    theirs, ours = _dnspython_name(text), _ours_name(text)
    assert (theirs is None) == (ours is None), (theirs, ours)
    if theirs is not None and not text.isascii():
        return  # IDNA error texts come from different codecs
    assert theirs == ours


RTYPES = [
    *dns.rdatatype.RdataType.__members__,
    "nsap-ptr",
    "mx",
    "TYPE65",
    "type65535",
    "TYPE65536",
    "TYPE",
    "TYPE-1",
    "TYPE\u0661",  # a non-ASCII digit
    "AXFR",
    "TYPE200",
    "OPT",
    "BOGUS",
    "",
]


@pytest.mark.parametrize("text", RTYPES)
def test_record_types_as_dnspython_takes_them(text: str) -> None:
    theirs: int | None = None
    meta, out_of_range = False, ""
    try:
        theirs = int(dns.rdatatype.from_text(text))
        meta = dns.rdatatype.is_metatype(dns.rdatatype.RdataType.make(theirs))
    except dns.rdatatype.UnknownRdatatype:
        pass
    except ValueError as exc:
        out_of_range = str(exc)
    if out_of_range:
        with pytest.raises(ParamsError, match=out_of_range):
            validate_params("dns", {"name": "x", "record_type": text})
        return
    assert record_type_value(text) == theirs
    if theirs is None:
        with pytest.raises(ParamsError, match="unknown record type"):
            validate_params("dns", {"name": "x", "record_type": text})
    elif meta:
        with pytest.raises(ParamsError, match="is a query meta-type"):
            validate_params("dns", {"name": "x", "record_type": text})
    else:
        validate_params("dns", {"name": "x", "record_type": text})


@pytest.mark.parametrize(
    "code", [*dns.rcode.Rcode.__members__, "servfail", "0", "4095", "4096", "", "OOPS", "-1"]
)
def test_response_codes_as_dnspython_takes_them(code: str) -> None:
    try:
        dns.rcode.from_text(code.upper())
        accepted: str | None = ""
    except dns.exception.DNSException:
        accepted = None
    except ValueError as exc:
        accepted = str(exc)
    if accepted == "":
        validate_params("dns", {"name": "x", "fatal_rcodes": [code]})
    else:
        with pytest.raises(ParamsError) as err:
            validate_params("dns", {"name": "x", "fatal_rcodes": [code]})
        assert (accepted or f"unknown response code {code!r}") in str(err.value)


# --------------------------------------------------------------------------- plugin API


def test_plugin_api_exports_are_pinned() -> None:
    assert sorted(minion.plugin.__all__) == [
        "AbsPath",
        "HostName",
        "IpAddress",
        "Monitor",
        "MonitorParams",
        "PollContext",
        "PollOutcome",
        "Port",
        "Regex",
        "Status",
        "Target",
        "elapsed_ms",
    ]
    for name in minion.plugin.__all__:
        assert getattr(minion.plugin, name) is not None


def test_the_example_plugin_imports_only_the_plugin_api() -> None:
    source = REPO / "examples" / "plugin" / "vigil_example_plugin" / "file_age.py"
    tree = ast.parse(source.read_text())
    vigil = {"minion", "services"}
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            imported.add(node.module)
        elif isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
    assert {m for m in imported if m.split(".")[0] in vigil} == {"minion.plugin"}
