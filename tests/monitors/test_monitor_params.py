"""Parameter schemas: what the scheduler checks when a service is configured.

Each bad parameter is rejected with a message naming it; good ones pass.
"""

from __future__ import annotations

import pytest

from minion.monitors import registry
from services.core.params import ParamsError, validate_params

BUILTINS = ["dns", "http", "icmp", "nagios", "noop", "snmp", "ssh", "tcp", "tls_cert"]


def test_every_builtin_is_registered_and_loads():
    assert set(BUILTINS) <= set(registry.available())
    for name in BUILTINS:
        cls = registry.monitor_class(name)
        assert cls.name == name
        assert cls.description


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("icmp", {}),
        (
            "icmp",
            {
                "count": 5,
                "interval": 0.5,
                "packet_size": 1200,
                "max_packet_loss": 20,
                "max_rtt_ms": 50,
                "max_peak_rtt_ms": 200,
                "reply_timeout": 1,
            },
        ),
        ("tcp", {"port": 25, "banner": "^220", "send": "QUIT\r\n", "expect": "^221"}),
        (
            "tcp",
            {
                "port": 993,
                "tls": True,
                "verify_tls": True,
                "server_name": "imap.example.com",
                "ca_file": "/etc/ssl/certs/ca-certificates.crt",
            },
        ),
        ("http", {}),
        (
            "http",
            {
                "scheme": "https",
                "port": 8443,
                "path": "/health?x=1",
                "method": "POST",
                "headers": {"X-Token": "abc"},
                "request_body": "{}",
                "status": "200-299,418",
                "body": "ok",
                "host": "www.example.com:8443",
                "max_response_time_ms": 500,
                "follow_redirects": True,
                "max_redirects": 3,
                "verify_tls": True,
                "ca_file": "/etc/vigil/ca.pem",
                "min_days_to_expiry": 14,
                "username": "u",
                "password": "p",
            },
        ),
        (
            "dns",
            {
                "name": "example.com",
                "record_type": "mx",
                "expect": ["10 mx.example.com"],
                "transport": "tcp",
                "server": "::1",
                "min_answers": 1,
                "max_answers": 4,
            },
        ),
        ("snmp", {}),
        (
            "snmp",
            {
                "oid": ".1.3.6.1.2.1.2.2.1.8",
                "walk": True,
                "operator": "=",
                "operand": "1",
                "match": "count",
                "minimum": 1,
                "maximum": 48,
            },
        ),
        (
            "snmp",
            {
                "version": "v3",
                "user": "ops",
                "auth_protocol": "SHA256",
                "auth_key": "12345678",
                "priv_protocol": "AES256BLMT",
                "priv_key": "abcdefgh",
                "context": "vlan-1",
            },
        ),
        ("ssh", {"port": 2222, "software": "^OpenSSH_9"}),
        ("tls_cert", {"port": 8443, "server_name": "example.com", "min_days_to_expiry": 30}),
        (
            "nagios",
            {"plugin": "check_http", "args": ["-H", "{address}", "-t", "{timeout}"], "timeout": 10},
        ),
        ("nagios", {"plugin": "check_thing", "credential": "paris-web"}),
    ],
)
def test_good_params(name, params):
    validate_params(name, params)


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("icmp", {"count": 0}, "params.count: Input should be greater than or equal to 1"),
        ("icmp", {"cout": 3}, "params.cout: unknown key"),
        ("icmp", {"max_packet_loss": 100}, "params.max_packet_loss: Input should be less than 100"),
        ("icmp", {"count": 1, "max_packet_loss": 10}, "max_packet_loss: needs count > 1"),
        ("tcp", {}, "params.port: Field required"),
        ("tcp", {"port": 70000}, "params.port: Input should be less than or equal to 65535"),
        (
            "tcp",
            {"port": 1, "banner": "(unclosed"},
            "params.banner: not a valid regular expression",
        ),
        ("tcp", {"port": 1, "expect": "x"}, "expect needs send"),
        (
            "tcp",
            {"port": 1, "verify_tls": True},
            "verify_tls, server_name and ca_file need tls: true",
        ),
        (
            "tcp",
            {"port": 1, "tls": True, "verify_tls": True, "ca_file": "ca.pem"},
            "params.ca_file: must be an absolute path",
        ),
        ("http", {"status": "2xx"}, "params.status: '2xx' is not a status code"),
        ("http", {"path": "health"}, "params.path: must start with '/'"),
        ("http", {"method": "FETCH"}, "params.method: Input should be"),
        (
            "http",
            {"headers": {"Bad Header": "x"}},
            "params.headers: 'Bad Header' is not a valid header name",
        ),
        ("http", {"headers": {"X": "a\r\nInjected: 1"}}, "must not contain line breaks"),
        ("http", {"headers": {"Host": "x"}}, "set the Host header with the 'host' parameter"),
        (
            "http",
            {"host": "bad host"},
            "params.host: 'bad host' is not a valid host name",
        ),
        ("http", {"method": "HEAD", "body": "x"}, "body: a HEAD response has no body to match"),
        ("http", {"request_body": "x"}, "request_body: not sent with GET"),
        ("http", {"min_days_to_expiry": 10}, "min_days_to_expiry: only for scheme https"),
        ("http", {"username": "u"}, "username and password go together"),
        (
            "http",
            {"scheme": "https", "verify_tls": False, "ca_file": "/x.pem"},
            "ca_file: needs verify_tls: true",
        ),
        ("dns", {}, "params.name: Field required"),
        ("dns", {"name": "a..b"}, "params.name: not a valid DNS name"),
        ("dns", {"name": "x", "record_type": "AXFR"}, "AXFR is a query meta-type"),
        (
            "dns",
            {"name": "x", "server": "ns1.example.com"},
            "params.server: 'ns1.example.com' is not an IP address",
        ),
        (
            "dns",
            {"name": "x", "fatal_rcodes": ["OOPS"]},
            "params.fatal_rcodes: unknown response code 'OOPS'",
        ),
        (
            "dns",
            {"name": "x", "min_answers": 3, "max_answers": 2},
            "max_answers: smaller than min_answers",
        ),
        (
            "dns",
            {"name": "x", "transport": "quic"},
            "params.transport: Input should be 'udp' or 'tcp'",
        ),
        (
            "snmp",
            {"oid": "sysDescr.0"},
            "params.oid: 'sysDescr.0' is not a numeric OID",
        ),
        ("snmp", {"operator": "=="}, "params.operator: Input should be"),
        ("snmp", {"operator": ">"}, "operator and operand go together"),
        (
            "snmp",
            {"operator": ">", "operand": "ten"},
            "operand: > compares numbers, 'ten' is not one",
        ),
        ("snmp", {"operator": "~", "operand": "("}, "operand: not a valid regular expression"),
        ("snmp", {"match": "any"}, "match, minimum and maximum: only with walk: true"),
        ("snmp", {"walk": True, "match": "count"}, "match count: set minimum and/or maximum"),
        (
            "snmp",
            {"walk": True, "match": "count", "minimum": 5, "maximum": 1},
            "minimum is larger than maximum",
        ),
        ("snmp", {"walk": True, "minimum": 1}, "minimum and maximum: only with match: count"),
        ("snmp", {"version": "v4"}, "params.version: Input should be 'v1', 'v2c' or 'v3'"),
        ("snmp", {"version": "v2c", "user": "ops"}, "user: only for version v3"),
        ("snmp", {"version": "v3", "community": "public"}, "community: not used by version v3"),
        (
            "snmp",
            {"auth_key": "short"},
            "params.auth_key: must be at least 8 characters",
        ),
        (
            "snmp",
            {"version": "v3", "user": "u", "priv_key": "12345678"},
            "priv_key: SNMPv3 privacy needs auth_key",
        ),
        ("snmp", {"priv_protocol": "ROT13"}, "params.priv_protocol: Input should be"),
        ("ssh", {"protocol": "("}, "params.protocol: not a valid regular expression"),
        ("ssh", {"client_ident": "hello"}, "params.client_ident: String should match pattern"),
        (
            "tls_cert",
            {"min_days_to_expiry": -1},
            "params.min_days_to_expiry: Input should be greater than or equal to 0",
        ),
        (
            "tls_cert",
            {"verify_chain": False, "ca_file": "/ca.pem"},
            "ca_file: needs verify_chain: true",
        ),
        ("nagios", {}, "params.plugin: Field required"),
        ("nagios", {"plugin": "../../bin/sh"}, "params.plugin: plugin not allowed: ../../bin/sh"),
        ("nagios", {"plugin": "./check_x"}, "params.plugin: plugin not allowed: ./check_x"),
        ("nagios", {"plugin": "/bin/sh"}, "params.plugin: plugin not allowed: /bin/sh"),
        (
            "nagios",
            {"plugin": "check_dummy", "env": {"LD_PRELOAD": "/tmp/x.so"}},
            "params.env: LD_PRELOAD: may not be set",
        ),
        (
            "http",
            {"headers": {"Authorization": "Basic eDp5"}},
            "params.headers: Authorization: use username/password",
        ),
        (
            "nagios",
            {"plugin": "check_x", "args": "-H host"},
            "params.args: Input should be a valid list",
        ),
        (
            "nagios",
            {"plugin": "check_x", "env": {"1BAD": "x"}},
            "params.env: '1BAD' is not a valid environment variable name",
        ),
        (
            "nagios",
            {"plugin": "check_x", "timeout": 0},
            "params.timeout: Input should be greater than 0",
        ),
        ("noop", {"anything": 1}, "params.anything: unknown key"),
    ],
)
def test_bad_params_name_the_parameter(name, params, message):
    with pytest.raises(ParamsError) as err:
        validate_params(name, params)
    assert message in str(err.value)


def test_errors_never_show_secrets():
    secret = "hunter2-not-so-secret"
    for name, params in [
        ("snmp", {"community": secret, "version": "v3"}),
        ("snmp", {"auth_key": secret, "version": "v2c"}),
        ("snmp", {"community": secret, "oid": "x"}),
        ("http", {"username": "u", "password": secret, "status": "999"}),
    ]:
        with pytest.raises(ParamsError) as err:
            validate_params(name, params)
        assert secret not in str(err.value)
        assert err.value.__cause__ is None
        assert err.value.__suppress_context__
    parsed = validate_params("snmp", {"community": secret})
    assert secret not in repr(parsed)
    assert secret not in str(parsed)
    assert secret not in parsed.model_dump_json()


def test_unknown_monitor():
    with pytest.raises(registry.UnknownMonitorError, match="unknown monitor 'htp'"):
        validate_params("htp", {})
