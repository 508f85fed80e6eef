"""SNMP profiles: which credentials a target gets, and secrets kept secret."""

from __future__ import annotations

import pydantic
import pytest

from minion.monitors.snmp_config import resolve_credentials, set_snmp_profiles, snmp_profiles
from services.core.params.snmp import SnmpCredentials, SnmpParams


@pytest.fixture(autouse=True)
def _reset():
    set_snmp_profiles(None)
    yield
    set_snmp_profiles(None)


PROFILES = [
    {
        "label": "paris core",
        "match": {"addresses": ["10.1.0.0/16"], "locations": ["paris"]},
        "community": "paris-ro",
    },
    {
        "label": "range",
        "match": {"addresses": ["192.0.2.10-192.0.2.20", "2001:db8::/64"]},
        "version": "v3",
        "user": "ops",
        "auth_key": "auth-secret-1",
        "priv_key": "priv-secret-1",
        "priv_protocol": "AES256BLMT",
        "context": "ctx",
    },
    {"label": "lyon", "match": {"locations": ["lyon"]}, "community": "lyon-ro", "port": 1161},
    {"label": "default", "community": "fallback"},
]


def test_defaults_without_profiles():
    creds = resolve_credentials("10.0.0.1", "Default", SnmpCredentials())
    assert (creds.version, creds.port, creds.community.get_secret_value()) == ("v2c", 161, "public")


def test_first_matching_profile_wins():
    set_snmp_profiles(PROFILES)
    assert len(snmp_profiles()) == 4
    paris = resolve_credentials("10.1.2.3", "paris", SnmpCredentials())
    assert paris.community.get_secret_value() == "paris-ro"
    assert paris.profile == "paris core"
    # same address, other location: the location filter excludes "paris core"
    other = resolve_credentials("10.1.2.3", "Default", SnmpCredentials())
    assert other.profile == "default"
    lyon = resolve_credentials("10.1.2.3", "lyon", SnmpCredentials())
    assert (lyon.community.get_secret_value(), lyon.port) == ("lyon-ro", 1161)


def test_ranges_and_v3():
    set_snmp_profiles(PROFILES)
    for addr in ("192.0.2.10", "192.0.2.15", "192.0.2.20", "2001:db8::5"):
        creds = resolve_credentials(addr, "Default", SnmpCredentials())
        assert creds.profile == "range", addr
        assert creds.version == "v3"
        assert creds.user == "ops"
        assert creds.auth_protocol == "SHA"  # default when a key is given
        assert creds.priv_protocol == "AES256BLMT"
        assert creds.security_level == "authPriv"
    assert resolve_credentials("192.0.2.21", "Default", SnmpCredentials()).profile == "default"


def test_params_override_profile_fields():
    set_snmp_profiles(PROFILES)
    params = SnmpParams(community="from-params", port=10161)
    creds = resolve_credentials("10.1.2.3", "paris", params)
    assert creds.community.get_secret_value() == "from-params"
    assert creds.port == 10161
    assert creds.profile == "paris core"


def test_v3_without_user_is_refused():
    with pytest.raises(ValueError, match="SNMPv3 needs a user"):
        resolve_credentials("10.0.0.1", "Default", SnmpCredentials(version="v3"))


def test_bad_profiles_are_rejected_whole():
    set_snmp_profiles(PROFILES[:1])
    with pytest.raises(pydantic.ValidationError) as err:
        set_snmp_profiles([{"match": {"addresses": ["10.0.0.0/33"]}, "community": "x"}])
    assert "addresses" in str(err.value)
    with pytest.raises(pydantic.ValidationError):
        set_snmp_profiles([{"match": {"locations": ["bad location"]}}])
    with pytest.raises(pydantic.ValidationError):
        set_snmp_profiles([{"match": {"addresses": ["10.0.0.9-10.0.0.1"]}}])
    assert len(snmp_profiles()) == 1  # the profiles in force stay


def test_secrets_hidden_in_reprs():
    set_snmp_profiles(PROFILES)
    text = repr(snmp_profiles()) + str(snmp_profiles())
    for secret in ("paris-ro", "auth-secret-1", "priv-secret-1", "fallback"):
        assert secret not in text
    creds = resolve_credentials("192.0.2.10", "Default", SnmpCredentials())
    assert "auth-secret-1" not in repr(creds)
