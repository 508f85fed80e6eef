"""Hypothesis strategies built from protobuf descriptors: any message of any service, with odd values."""

from __future__ import annotations

from typing import Any

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from hypothesis import strategies as st

F = FieldDescriptor

#: Strings that tend to break things: empty, huge, NATS wildcards, control and odd unicode.
ODD_STRINGS = st.sampled_from(
    [
        "",
        " ",
        ">",
        "*",
        "a b",
        "a.b",
        "..",
        "\x00",
        "\u202e\u200b\ufeff",
        "\U0001f4a9" * 50,
        "not-a-uuid",
        "[unclosed",
        "300.1.2.3",
        "::1",
        "127.0.0.1",
        "Default",
        "1970-01-01T00:00:00Z",
        "x" * 70_000,
        "é" * 300_000,
    ]
)
TEXT = st.one_of(st.text(max_size=30), ODD_STRINGS)

_INT_RANGES = {
    F.TYPE_INT32: (-(2**31), 2**31 - 1),
    F.TYPE_SINT32: (-(2**31), 2**31 - 1),
    F.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    F.TYPE_INT64: (-(2**63), 2**63 - 1),
    F.TYPE_SINT64: (-(2**63), 2**63 - 1),
    F.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    F.TYPE_UINT32: (0, 2**32 - 1),
    F.TYPE_FIXED32: (0, 2**32 - 1),
    F.TYPE_UINT64: (0, 2**64 - 1),
    F.TYPE_FIXED64: (0, 2**64 - 1),
}


def _extreme_ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (lo, hi, 0, -1, 1, 2**31 - 1, 2**53, 10**12) if lo <= v <= hi]
    return st.one_of(st.integers(lo, hi), st.sampled_from(edges))


def _scalar(field: FieldDescriptor) -> st.SearchStrategy[Any]:
    t = field.type
    if t in _INT_RANGES:
        return _extreme_ints(*_INT_RANGES[t])
    if t in (F.TYPE_DOUBLE, F.TYPE_FLOAT):
        floats = st.floats(width=32 if t == F.TYPE_FLOAT else 64)
        return st.one_of(floats, st.sampled_from([0.0, -0.0, 1e308, -1e308]))
    if t == F.TYPE_BOOL:
        return st.booleans()
    if t == F.TYPE_STRING:
        return TEXT
    if t == F.TYPE_BYTES:
        return st.binary(max_size=64)
    if t == F.TYPE_ENUM:
        # proto3 enums are open: unknown numbers reach the server too.
        assert field.enum_type is not None
        known = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(known), st.integers(-(2**31), 2**31 - 1))
    raise AssertionError(f"unhandled field type {t} of {field.full_name}")


def _value(field: FieldDescriptor, depth: int) -> st.SearchStrategy[Any]:
    if field.type == F.TYPE_MESSAGE:
        assert field.message_type is not None
        return messages(field.message_type, depth + 1)
    return _scalar(field)


def messages(desc: Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """A message of type ``desc``: each field present or missing, with random or extreme values."""
    from google.protobuf import message_factory

    cls = message_factory.GetMessageClass(desc)
    fields = list(desc.fields)
    if depth > 3:
        return st.just(cls())

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        msg = cls()
        for field in fields:
            if not draw(st.booleans()):
                continue  # missing field
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_f = field.message_type.fields_by_name["key"]
                val_f = field.message_type.fields_by_name["value"]
                entries = draw(st.dictionaries(_scalar(key_f), _value(val_f, depth), max_size=3))
                target = getattr(msg, field.name)
                for k, v in entries.items():
                    if val_f.type == F.TYPE_MESSAGE:
                        target[k].CopyFrom(v)
                    else:
                        target[k] = v
            elif field.is_repeated:
                values = draw(st.lists(_value(field, depth), max_size=3))
                if field.type == F.TYPE_MESSAGE:
                    getattr(msg, field.name).extend(values)
                else:
                    getattr(msg, field.name).extend(values)
            elif field.type == F.TYPE_MESSAGE:
                getattr(msg, field.name).CopyFrom(draw(_value(field, depth)))
            else:
                setattr(msg, field.name, draw(_value(field, depth)))
        return msg

    return build()
