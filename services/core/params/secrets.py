"""Which parameters are secrets, and their masked form for every API and log.

The one definition is the schema: a field typed :class:`pydantic.SecretStr`
(directly, optional, or as the values of a ``dict``/``list``) is a secret, in
a built-in monitor's model and in a plugin's alike. :func:`mask_params` walks
a monitor's model and replaces the value of each such field with ``***``;
nothing here lists key names.
"""

from __future__ import annotations

import types
import typing
from typing import Any

from pydantic import BaseModel, SecretStr

from services.core.params.registry import UnknownMonitorError, params_model

MASK = "***"


def _contains(annotation: Any, wanted: type) -> bool:
    if annotation is wanted:
        return True
    return any(_contains(a, wanted) for a in typing.get_args(annotation))


def _models(annotation: Any) -> list[type[BaseModel]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    found: list[type[BaseModel]] = []
    for a in typing.get_args(annotation):
        found += _models(a)
    return found


def _mask_all(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _mask_all(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_mask_all(v) for v in value]
    return MASK if value is not None else None


def _mask_value(annotation: Any, value: Any) -> Any:
    if value is None:
        return None
    if _contains(annotation, SecretStr):
        origin = typing.get_origin(annotation)
        if isinstance(value, dict) and origin not in (types.UnionType, typing.Union, None):
            # dict[str, SecretStr]: the keys (header names) are not secret
            return {k: MASK for k in value}
        return _mask_all(value)
    for model in _models(annotation):
        if isinstance(value, dict):
            return mask_document(model, value)
        if isinstance(value, list):
            return [mask_document(model, v) if isinstance(v, dict) else v for v in value]
    return value


def mask_document(model: type[BaseModel], doc: dict[str, Any]) -> dict[str, Any]:
    """``doc`` (the input or dump of ``model``) with every secret field's value ``***``.

    A key the model does not know is masked too: an unknown key cannot be
    told to be harmless, and it may be a misspelt secret.
    """
    fields = model.model_fields
    by_alias = {f.alias: name for name, f in fields.items() if f.alias}
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = by_alias.get(key, key)
        info = fields.get(name)
        out[key] = _mask_all(value) if info is None else _mask_value(info.annotation, value)
    return out


def mask_params(monitor: str, params: dict[str, Any]) -> dict[str, Any]:
    """A service's ``params`` for ``monitor`` as every API and log shows them.

    For a monitor whose schema this process cannot load, every value is
    masked: showing less beats showing a secret.
    """
    try:
        model = params_model(monitor)
    except UnknownMonitorError:
        return _mask_all(dict(params))  # type: ignore[no-any-return]
    return mask_document(model, params)


def _keep(annotation: Any, new: Any, old: Any, where: str) -> Any:
    if _contains(annotation, SecretStr):
        if new == MASK:
            if old is None:
                raise ValueError(
                    f"{where}: {MASK} is how a secret is shown; send the secret itself"
                )
            return old
        if isinstance(new, dict):
            prev = old if isinstance(old, dict) else {}
            return {k: _keep(SecretStr, v, prev.get(k), f"{where}.{k}") for k, v in new.items()}
        return new
    for model in _models(annotation):
        if isinstance(new, dict):
            return restore_document(model, new, old if isinstance(old, dict) else {}, where)
    return new


def restore_document(
    model: type[BaseModel], new: dict[str, Any], old: dict[str, Any], where: str = "params"
) -> dict[str, Any]:
    """``new`` with each secret given as ``***`` taken from ``old`` (the stored
    document): a client that read a node and writes it back keeps its secrets.

    Raises ``ValueError`` naming the field when there is no stored secret to keep.
    """
    fields = model.model_fields
    out: dict[str, Any] = {}
    for key, value in new.items():
        info = fields.get(key)
        out[key] = (
            value if info is None else _keep(info.annotation, value, old.get(key), f"{where}.{key}")
        )
    return out


def restore_params(
    monitor: str, new: dict[str, Any], old: dict[str, Any] | None, where: str = "params"
) -> dict[str, Any]:
    """:func:`restore_document` for ``monitor``'s schema (unknown monitor: unchanged;
    its validation fails anyway)."""
    try:
        model = params_model(monitor)
    except UnknownMonitorError:
        return new
    return restore_document(model, new, old or {}, where)
