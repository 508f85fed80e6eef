"""Names and identifiers: what a location, node id, system id and service name may be.

A location and an id each travel as one NATS subject token, so they are
restricted to letters, digits, ``-`` and ``_``.
"""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator

LOCATION_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: Node ids and minion system ids.
NODE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,127}$")
SERVICE_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
DEFAULT_LOCATION = "Default"


def _check(pattern: re.Pattern[str], what: str) -> Any:
    def check(v: str) -> str:
        if not pattern.fullmatch(v):
            raise ValueError(f"{v!r} is not a valid {what}")
        return v

    return AfterValidator(check)


Location = Annotated[str, _check(LOCATION_RE, "location (letters, digits, '-', '_')")]
NodeId = Annotated[str, _check(NODE_ID_RE, "node id (letters, digits, '-', '_')")]
ServiceName = Annotated[
    str, _check(SERVICE_NAME_RE, "service name (letters, digits, '-', '_', '.')")
]
