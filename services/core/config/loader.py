"""Reading a configuration file: UTF-8 YAML, environment overrides, validation.

Errors name the file and the key. Environment variables override the
connection settings (see :data:`ENV_OVERRIDES`), which is how a container is
pointed at its NATS server and database without editing the file.

A process that reads only some sections gets them from a filtered event
stream of the YAML parser: the skipped sections (above all ``nodes:``, which
can hold a million services) are parsed but never built into objects.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml import events as ev

from services.core.config.documents import SECTIONS, VigilConfig
from services.core.validation import describe

#: libyaml's parser where PyYAML was built with it (about 4x faster on large files).
_BaseLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class SafeLoader(_BaseLoader):  # type: ignore[valid-type,misc]
    """The safe loader, refusing a key repeated in one mapping.

    YAML says keys are unique, but PyYAML keeps the last of repeated keys
    silently, so ``{interval: 10s, interval: 20s}`` would quietly mean 20 s.
    Keys brought in by a merge (``<<: *base``) may still be overridden.
    """

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Mark] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:
                continue  # an unhashable key: the base class reports it
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice (first on line {first.line + 1})",
                    key_node.start_mark,
                )
            seen[key] = key_node.start_mark
        return super().construct_mapping(node, deep)  # type: ignore[no-any-return]


Doc = TypeVar("Doc", bound=BaseModel)


class ConfigError(Exception):
    """The configuration is invalid; the message names the file and the key."""


#: Environment variable → dotted config key. Applied after the file is read.
ENV_OVERRIDES: dict[str, str] = {
    "VIGIL_PKI_DIR": "pki.dir",
    "VIGIL_TLS_CA": "pki.ca",
    "VIGIL_TLS_CERT": "pki.cert",
    "VIGIL_TLS_KEY": "pki.key",
    "VIGIL_NATS_URL": "nats.url",
    "VIGIL_STORE_URL": "scheduler.store_url",
    "VIGIL_SCHEDULER_LISTEN": "scheduler.listen",
    "VIGIL_SCHEDULER_METRICS_LISTEN": "scheduler.metrics_listen",
    "VIGIL_EVENTS_STORE_URL": "events.store_url",
    "VIGIL_EVENTS_LISTEN": "events.listen",
    "VIGIL_EVENTS_METRICS_LISTEN": "events.metrics_listen",
    "VIGIL_SCHEDULER_ADDRESS": "minion.scheduler",
    "VIGIL_LOCATION": "minion.location",
    "VIGIL_SYSTEM_ID": "minion.system_id",
    "VIGIL_BOOTSTRAP_TOKEN_FILE": "access.bootstrap_token_file",
}


def _apply_env(raw: dict[str, Any], env: Mapping[str, str], sections: frozenset[str]) -> None:
    for var, dotted in ENV_OVERRIDES.items():
        value = env.get(var)
        if value is None or value == "":
            continue
        section, key = dotted.split(".")
        if section not in sections:
            continue
        target = raw.setdefault(section, {})
        if not isinstance(target, dict):
            continue  # the file's own error is reported by validation
        target[key] = None if value.lower() in ("none", "off", "null") else value


def _without(events: Iterator[ev.Event], skip: frozenset[str]) -> Iterator[ev.Event]:
    """The parser's events minus the top-level keys in ``skip`` and their values.

    Only a top-level mapping is filtered; anything else passes through whole
    (validation then reports it).
    """
    depth = 0
    at_key = False  # the next depth-1 scalar of the top mapping is a key
    for e in events:
        if depth == 1 and at_key and isinstance(e, ev.ScalarEvent) and e.value in skip:
            _skip_value(events)
            continue
        if depth == 1 and at_key:
            at_key = False
            yield e
            if isinstance(e, ev.MappingStartEvent | ev.SequenceStartEvent):
                depth += 1
            continue
        if isinstance(e, ev.MappingStartEvent | ev.SequenceStartEvent):
            depth += 1
            if depth == 1:
                at_key = isinstance(e, ev.MappingStartEvent)
        elif isinstance(e, ev.MappingEndEvent | ev.SequenceEndEvent):
            depth -= 1
            if depth == 1:
                at_key = True
        elif depth == 1:
            at_key = True  # a scalar or alias value of the top mapping
        yield e


def _skip_value(events: Iterator[ev.Event]) -> None:
    nested = 0
    for e in events:
        if isinstance(e, ev.MappingStartEvent | ev.SequenceStartEvent):
            nested += 1
        elif isinstance(e, ev.MappingEndEvent | ev.SequenceEndEvent):
            nested -= 1
        if nested == 0:
            return


def read_yaml(path: str | Path, skip: frozenset[str] = frozenset()) -> Any:
    """The YAML document in ``path``, without the top-level sections in ``skip``.

    Raises :class:`ConfigError` naming the file when it cannot be read, is not
    UTF-8 text or is not valid YAML.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{p}: cannot read: {exc.strerror or exc}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"{p}: not UTF-8 text (byte {exc.start} is {raw[exc.start : exc.start + 1]!r}); "
            "save the file as UTF-8"
        ) from None
    try:
        if not skip:
            return yaml.load(text, Loader=SafeLoader)
        try:
            kept = list(_without(yaml.parse(text, Loader=SafeLoader), skip))
            return yaml.load(yaml.emit(kept), Loader=SafeLoader)
        except yaml.composer.ComposerError:
            # an alias to an anchor in a skipped section: read the whole document
            return yaml.load(text, Loader=SafeLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{p}: not valid YAML: {exc}") from None


def parse_document(
    model: type[Doc], data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> Doc:
    """Validate already-loaded YAML data as ``model`` (with environment overrides).

    Top-level keys of the file that ``model`` does not read are ignored when
    they are sections of Vigil's configuration, and errors otherwise.
    """
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections")
    sections: frozenset[str] = getattr(model, "sections", SECTIONS)
    unknown = [str(k) for k in data if k not in SECTIONS]
    if unknown:
        raise ConfigError(
            f"{source}: {', '.join(unknown)}: unknown section "
            f"(known: {', '.join(sorted(SECTIONS))})"
        )
    data = {k: v for k, v in data.items() if k in sections}
    _apply_env(data, os.environ if env is None else env, sections)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(f"{source}: {describe(exc)}") from None


def load_document(
    model: type[Doc], path: str | Path | None, env: Mapping[str, str] | None = None
) -> Doc:
    """Read ``path`` (``None``: defaults plus environment) and validate it as ``model``."""
    if path is None:
        return parse_document(model, {}, "<defaults>", env)
    sections: frozenset[str] = getattr(model, "sections", SECTIONS)
    data = read_yaml(path, skip=SECTIONS - sections)
    return parse_document(model, data, str(path), env)


def parse_config(
    data: Any, source: str = "<config>", env: Mapping[str, str] | None = None
) -> VigilConfig:
    """Validate the whole document (the schema only; the scheduler adds its own checks)."""
    return parse_document(VigilConfig, data, source, env)


def load_config(path: str | Path | None, env: Mapping[str, str] | None = None) -> VigilConfig:
    """Read and validate the whole document (``None``: defaults plus environment)."""
    return load_document(VigilConfig, path, env)
