"""Normalization, the catalogue, subjects and filters (no I/O)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from services.core.errors import InvalidArgumentError
from services.core.events import (
    CATALOGUE,
    FIT_EVENT_BYTES,
    KINDS,
    TRUNCATED,
    Event,
    event_subject,
    fit_document,
    make_event,
    subject_token,
)
from services.events import filters
from services.events.hooks.signing import sign, verify
from services.events.hooks.validation import validate_url
from services.events.normalize import MAX_RAW_BYTES, InvalidEvent, normalize

DOCS = Path(__file__).resolve().parents[2] / "docs" / "events.md"


def test_fills_in_id_time_severity_and_reduction_key() -> None:
    e = normalize(
        json.dumps(
            {
                "type": "service",
                "action": "lost",
                "typeId": "node-17/10.0.0.5/HTTP",
                "nodeId": "node-17",
            }
        ).encode(),
        default_source="scheduler",
    )
    assert e.severity == "major"  # catalogue default
    assert len(e.id) == 36
    assert e.created_at.endswith("Z")
    assert e.source == "scheduler"
    assert e.reduction_key == "service:lost:node-17:10.0.0.5:HTTP"
    assert e.subject == "vigil.events.service.lost.major.node-17"


def test_keeps_what_the_producer_set() -> None:
    raw = {
        "id": "evt-1",
        "type": "node",
        "action": "down",
        "severity": "warning",
        "createdAt": "2026-11-22T11:00:00.123+01:00",
        "source": "ext",
        "reductionKey": "mine",
        "data": {"reason": "x"},
    }
    e = normalize(raw, default_source="api")
    assert (e.id, e.severity, e.source, e.reduction_key) == ("evt-1", "warning", "ext", "mine")
    assert e.created_at == "2026-11-22T10:00:00.123Z"
    assert e.data == {"reason": "x"}


def test_default_id_is_used_when_none_given() -> None:
    assert normalize({"type": "node", "action": "up"}, default_id="stable").id == "stable"


def test_scheduler_events_pass_unchanged() -> None:
    made = make_event(
        "outage", "opened", source="scheduler", type_id="n/1.2.3.4/ICMP", node_id="n", reason="x"
    )
    again = normalize(made.to_json())
    assert again.id == made.id
    assert again.severity == "minor"
    assert again.reduction_key == "outage:opened:n:1.2.3.4:ICMP"


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"not json", "event"),
        (b"[1, 2]", "event"),
        (b"\xff\xfe", "event"),
        (b'{"action": "lost"}', "type"),
        (b'{"type": "service"}', "action"),
        (b'{"type": "servcie", "action": "lost"}', "type"),
        (b'{"type": "service", "action": "down"}', "action"),
        (b'{"type": "service", "action": "lost", "severity": "bad"}', "severity"),
        (b'{"type": "service", "action": "lost", "createdAt": "yesterday"}', "createdAt"),
        (b'{"type": "service", "action": "lost", "createdAt": "2026-01-01T00:00:00"}', "createdAt"),
        (b'{"type": "service", "action": "lost", "data": [1]}', "data"),
        (b'{"type": "service", "action": "lost", "nodeId": 17}', "nodeId"),
        (b'{"type": "service", "action": "lost", "id": "a\\nb"}', "id"),
        (b'{"type": "service", "action": "lost", "id": "has space"}', "id"),
        (b'{"type": "service", "action": "lost", "location": "par.is"}', "location"),
        (b'{"type": "service", "action": "lost", "version": "2"}', "version"),
        (b'{"type": "service", "action": "lost", "colour": "red"}', "colour"),
    ],
)
def test_invalid_raw_events_name_the_field(raw: bytes, field: str) -> None:
    with pytest.raises(InvalidEvent) as info:
        normalize(raw)
    assert info.value.field == field
    assert str(info.value).startswith(f"{field}: ")


def test_size_limits() -> None:
    huge = json.dumps(
        {"type": "node", "action": "up", "data": {"blob": "x" * MAX_RAW_BYTES}}
    ).encode()
    with pytest.raises(InvalidEvent, match="exceeds"):
        normalize(huge)
    with pytest.raises(InvalidEvent, match="exceeds"):
        normalize({"type": "node", "action": "up", "data": {"blob": "x" * MAX_RAW_BYTES}})
    with pytest.raises(InvalidEvent, match="typeId: longer than 256"):
        normalize({"type": "node", "action": "up", "typeId": "t" * 257})


def test_subject_tokens_are_sanitised() -> None:
    assert subject_token("a.b*c>d e") == "a_b_c_d_e"
    assert subject_token(None) == "_"
    assert event_subject("node", "down", "critical", "x.y") == "vigil.events.node.down.critical.x_y"


def test_catalogue_is_consistent_and_documented() -> None:
    assert len(CATALOGUE) == len(KINDS)
    text = DOCS.read_text()
    for k in KINDS:
        # Every (type, action) has a row in docs/events.md with its default severity.
        row = re.search(
            rf"^\|\s*`{k.type}`\s*\|\s*`{k.action}`\s*\|\s*`{k.severity}`\s*\|", text, re.M
        )
        assert row, f"docs/events.md lacks a catalogue row for {k.type} {k.action} ({k.severity})"


def test_event_json_is_camel_case() -> None:
    wire = json.loads(make_event("node", "up", source="s", node_id="n").to_json())
    assert {"typeId", "nodeId", "createdAt", "reductionKey"} <= set(wire)
    assert Event.model_validate(wire).node_id == "n"


def _ev(**kw: str) -> Event:
    base = {
        "type": "service",
        "action": "lost",
        "severity": "major",
        "nodeId": "web-1",
        "location": "paris",
    }
    base.update(kw)
    return Event.model_validate(base)


def test_filters_and_inside_or_across_glob_or_exact() -> None:
    f = filters.Interest
    assert filters.matches_any([], _ev())
    assert f(type="service", node_id="web-*").matches(_ev())
    assert not f(type="service", node_id="web-*", location="london").matches(_ev())  # AND
    assert filters.matches_any([f(location="london"), f(severity="maj*")], _ev())  # OR
    assert not f(node_id="web").matches(_ev())  # exact means exact
    assert f(node_id="web-[0-9]").matches(_ev())
    assert not f(node_id="web-?").matches(_ev(nodeId="web-10"))
    # An absent field is matched as "": "*" accepts it, "?*" asks for a value.
    assert f(node_id="*").matches(_ev(nodeId=None))  # type: ignore[arg-type]
    assert not f(node_id="?*").matches(_ev(nodeId=None))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("flt", "field"),
    [
        ({"type": "servcie"}, "filters[0].type"),
        ({"type": "node", "action": "lost"}, "filters[0].action"),
        ({"severity": "huge"}, "filters[0].severity"),
        ({"node_id": "x" * 200}, "filters[0].node_id"),
    ],
)
def test_filter_validation_names_the_field(flt: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        filters.validate([SimpleNamespace(**flt)])
    assert info.value.field == field


def test_glob_filters_are_not_checked_against_the_catalogue() -> None:
    got = filters.validate([SimpleNamespace(type="serv*", action="l?st")])
    assert got == [filters.Interest(type="serv*", action="l?st")]


@pytest.mark.parametrize(
    "url",
    [
        "",
        "ftp://example.com/x",
        "file:///etc/passwd",
        "javascript:alert(1)",
        "http://",
        "http://user:pw@example.com/",
        "http://example.com:99999/",
        "http://exa mple.com/",
        "example.com/hook",
        "http://x/" + "a" * 3000,
    ],
)
def test_bad_hook_urls(url: str) -> None:
    with pytest.raises(InvalidArgumentError) as info:
        validate_url(url)
    assert info.value.field == "url"


def test_good_hook_urls() -> None:
    for url in (
        "http://127.0.0.1:8080/hook",
        "https://hooks.example.com/a?b=c",
        "http://[::1]:9/x",
    ):
        assert validate_url(url) == url


def test_signature() -> None:
    sig = sign("s3cret-key", b'{"a":1}')
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", sig)
    assert verify("s3cret-key", b'{"a":1}', sig)
    assert not verify("other-key", b'{"a":1}', sig)


# --- issue 10 ---------------------------------------------------------------------------


def test_the_documented_catalogue_is_the_code_catalogue() -> None:
    # Every row of the documented catalogue is a kind of the code's catalogue, and back.
    assert ("heartbeat", "updated") in CATALOGUE
    text = DOCS.read_text()
    section = text[text.index("## Catalogue") : text.index("Examples:")]
    rows = re.findall(r"^\|\s*`(\w+)`\s*\|\s*`([\w-]+)`\s*\|", section, re.M)
    assert rows and set(rows) == set(CATALOGUE)


def test_ingest_path_cuts_oversized_data_with_the_marker() -> None:
    raw = json.dumps(
        {"type": "service", "action": "lost", "data": {"ip": "10.0.0.1", "reason": "é" * 100_000}}
    ).encode()
    assert len(raw) > MAX_RAW_BYTES
    with pytest.raises(InvalidEvent, match="exceeds"):
        normalize(raw)  # an API caller is answered with the error instead
    event = normalize(raw, truncate=True)
    assert event.data["ip"] == "10.0.0.1"
    assert event.data["reason"].endswith(TRUNCATED)
    assert event.data["reason"].startswith("é" * 1000)
    assert len(event.to_json()) <= MAX_RAW_BYTES


def test_fit_document_cuts_every_large_value_and_counts_fields_that_do_not_fit() -> None:
    doc = {"type": "node", "action": "up", "data": {"a": "a" * 50_000, "b": list(range(50_000))}}
    fitted = fit_document(doc)
    assert (
        len(json.dumps(fitted, separators=(",", ":"), ensure_ascii=False).encode())
        <= FIT_EVENT_BYTES
    )
    # Both large values share the cut (neither loses everything).
    assert fitted["data"]["a"].startswith("a" * 10_000) and fitted["data"]["a"].endswith(TRUNCATED)
    assert fitted["data"]["b"].startswith("[0,1,2,") and fitted["data"]["b"].endswith(TRUNCATED)
    many = {"type": "node", "action": "up", "data": {f"k{i}": "v" for i in range(30_000)}}
    fitted = fit_document(many)
    assert (
        len(json.dumps(fitted, separators=(",", ":"), ensure_ascii=False).encode())
        <= FIT_EVENT_BYTES
    )
    left = fitted["data"][TRUNCATED]
    assert left == f"{30_000 - len(fitted['data']) + 1} more field(s)"
    small = {"type": "node", "action": "up", "data": {"x": 1}}
    assert fit_document(small) is small


@pytest.mark.parametrize(
    "raw", [b'{"type": "node", "action": "up", "n": 1' + b"0" * 5000 + b"}", b"[" * 100_000]
)
def test_json_the_parser_refuses_is_an_invalid_event(raw: bytes) -> None:
    """A 5000-digit integer (ValueError) or deep nesting (RecursionError), not a crash."""
    with pytest.raises(InvalidEvent) as info:
        normalize(raw, truncate=True)
    assert info.value.field == "event"
