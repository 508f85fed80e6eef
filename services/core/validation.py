"""Turn pydantic validation errors into one line an operator can act on."""

from __future__ import annotations

from pydantic import ValidationError


def describe(exc: ValidationError, prefix: str = "") -> str:
    """``"params.port: Input should be less than or equal to 65535; ..."``.

    Each problem names the dotted path of the offending key, prefixed with
    ``prefix`` (e.g. ``"nodes[0].interfaces[1]"``) so that the message points
    at the place in the file or request that is wrong.
    """
    parts = []
    for err in exc.errors(include_url=False):
        path = ""
        for loc in err["loc"]:
            path += f"[{loc}]" if isinstance(loc, int) else (f".{loc}" if path else str(loc))
        where = ".".join(p for p in (prefix, path) if p) or "(root)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif err["type"] == "value_error":
            # Our own validators' messages; pydantic's "Value error, " prefix is noise.
            msg = msg.removeprefix("Value error, ")
        parts.append(f"{where}: {msg}")
    return "; ".join(parts)
