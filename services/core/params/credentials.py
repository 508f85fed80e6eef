"""Credentials by reference: a service's ``credential: <name>`` names an entry
of the minion's own ``minion.credentials``, resolved on the minion when it
polls (:mod:`minion.monitors.credentials`).

The central configuration then holds only the name; the secret stays at the
site. Inline secrets in a service's parameters remain allowed (they are
:class:`pydantic.SecretStr` fields and shown as ``***`` everywhere, see
:mod:`services.core.params.secrets`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from services.core.params.fields import CredentialName, check_credential_name
from services.core.params.snmp import AuthProtocol, PrivProtocol

__all__ = ["Credential", "CredentialName", "check_credential_name", "unknown_credential"]


class Credential(BaseModel):
    """One named set of secrets a minion keeps; each monitor takes the fields it uses.

    HTTP: ``username`` + ``password`` (basic) or ``token`` (bearer). SNMP:
    ``community`` (v1/v2c) or ``user``, ``auth_key``/``priv_key`` and their
    protocols (v3). Nagios: ``{username}`` and ``{password}`` in ``args``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    username: str | None = Field(default=None, min_length=1, max_length=256)
    password: SecretStr | None = None
    #: HTTP bearer token.
    token: SecretStr | None = None
    #: SNMP v1/v2c community.
    community: SecretStr | None = None
    #: SNMPv3 USM user (``username`` is used when unset).
    user: str | None = Field(default=None, min_length=1, max_length=32)
    auth_protocol: AuthProtocol | None = None
    auth_key: SecretStr | None = None
    priv_protocol: PrivProtocol | None = None
    priv_key: SecretStr | None = None

    @field_validator("auth_key", "priv_key")
    @classmethod
    def _key_length(cls, v: SecretStr | None) -> SecretStr | None:
        if v is not None and len(v.get_secret_value()) < 8:
            raise ValueError("must be at least 8 characters (RFC 3414)")
        return v

    def secrets(self) -> list[str]:
        """Every secret value of this credential (to mask them in monitor output)."""
        return [
            s.get_secret_value()
            for s in (self.password, self.token, self.community, self.auth_key, self.priv_key)
            if s is not None and s.get_secret_value()
        ]


def unknown_credential(name: str) -> str:
    """The UNKNOWN reason for a reference the minion cannot resolve."""
    return f"unknown credential {name}"
