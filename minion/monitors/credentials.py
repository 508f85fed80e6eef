"""The minion's own credentials (``minion.credentials``), looked up by the name
a service's ``credential:`` parameter gives.

Installed once at start (:func:`set_credentials`); a poll naming a credential
this minion does not have is UNKNOWN ``unknown credential <name>``, never
DOWN: the device was not asked anything.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from services.core.params.credentials import Credential

_credentials: dict[str, Credential] = {}


def set_credentials(creds: Mapping[str, Credential | Mapping[str, Any]] | None) -> None:
    """Install the minion's credentials by name; ``None`` clears them.

    Raises ``pydantic.ValidationError`` for a malformed entry; nothing is
    installed then.
    """
    global _credentials
    _credentials = {
        name: c if isinstance(c, Credential) else Credential.model_validate(c)
        for name, c in (creds or {}).items()
    }


def credential(name: str) -> Credential | None:
    """The credential called ``name``, or ``None`` when this minion has none by that name."""
    return _credentials.get(name)


def mask(text: str, secrets: list[str]) -> str:
    """``text`` with every occurrence of each secret replaced by ``***``."""
    for s in sorted(secrets, key=len, reverse=True):
        if s:
            text = text.replace(s, "***")
    return text
