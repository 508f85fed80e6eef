"""Parameters of the ``dns`` monitor (see :mod:`minion.monitors.dns`).

The name, record type and response code checks accept what dnspython's
``dns.name.from_text``, ``dns.rdatatype.from_text`` and
``dns.rcode.from_text`` (dnspython 2.9) accept, with the same messages, so
that the scheduler can check them without importing dnspython.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from services.core.params.base import MonitorParams
from services.core.params.fields import IpAddress, Port

_DEFAULT_FATAL = ["SERVFAIL", "NXDOMAIN", "REFUSED", "NOTIMP", "FORMERR"]

#: dnspython's ``RdataType`` mnemonics → type values.
_RDATATYPES: dict[str, int] = {
    "TYPE0": 0, "NONE": 0, "A": 1, "NS": 2, "MD": 3, "MF": 4, "CNAME": 5, "SOA": 6,
    "MB": 7, "MG": 8, "MR": 9, "NULL": 10, "WKS": 11, "PTR": 12, "HINFO": 13, "MINFO": 14,
    "MX": 15, "TXT": 16, "RP": 17, "AFSDB": 18, "X25": 19, "ISDN": 20, "RT": 21,
    "NSAP": 22, "NSAP_PTR": 23, "SIG": 24, "KEY": 25, "PX": 26, "GPOS": 27, "AAAA": 28,
    "LOC": 29, "NXT": 30, "SRV": 33, "NAPTR": 35, "KX": 36, "CERT": 37, "A6": 38,
    "DNAME": 39, "OPT": 41, "APL": 42, "DS": 43, "SSHFP": 44, "IPSECKEY": 45, "RRSIG": 46,
    "NSEC": 47, "DNSKEY": 48, "DHCID": 49, "NSEC3": 50, "NSEC3PARAM": 51, "TLSA": 52,
    "SMIMEA": 53, "HIP": 55, "NINFO": 56, "CDS": 59, "CDNSKEY": 60, "OPENPGPKEY": 61,
    "CSYNC": 62, "ZONEMD": 63, "SVCB": 64, "HTTPS": 65, "DSYNC": 66, "HHIT": 67,
    "BRID": 68, "SPF": 99, "UNSPEC": 103, "NID": 104, "L32": 105, "L64": 106, "LP": 107,
    "EUI48": 108, "EUI64": 109, "NXNAME": 128, "TKEY": 249, "TSIG": 250, "IXFR": 251,
    "AXFR": 252, "MAILB": 253, "MAILA": 254, "ANY": 255, "URI": 256, "CAA": 257,
    "AVC": 258, "AMTRELAY": 260, "RESINFO": 261, "WALLET": 262, "TA": 32768, "DLV": 32769,
}  # fmt: skip
_OPT = 41

#: dnspython's ``Rcode`` mnemonics.
_RCODES = frozenset(
    {
        "NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
        "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE", "DSOTYPENI", "BADVERS", "BADSIG",
        "BADKEY", "BADTIME", "BADMODE", "BADNAME", "BADALG", "BADTRUNC", "BADCOOKIE",
    }
)  # fmt: skip

# dnspython's exception texts, kept so that the messages stay as they were
_EMPTY_LABEL = "A DNS label is empty."
_BAD_ESCAPE = "An escaped code in a text format of DNS name is invalid."
_LABEL_TOO_LONG = "A DNS label is > 63 octets long."
_NAME_TOO_LONG = "A DNS name is > 255 octets long."


class _NameError(ValueError):
    pass


def _ascii_digits(text: str) -> bool:
    return text.isascii() and text.isdecimal()


_IDNA_DOTS = (".", "\u3002", "\uff0e", "\uff61")


def _encode_label(label: str, idna: bool) -> bytes:
    if not idna:
        return label.encode("latin-1")  # escapes give code points up to 255
    if label.isascii():
        return label.encode("ascii")
    # dnspython encodes non-ASCII labels with IDNA 2008 (the idna package);
    # the stdlib has IDNA 2003, which agrees on the names people write
    try:
        return label.encode("idna")
    except UnicodeError as exc:
        raise _NameError(f"IDNA processing exception: {exc}") from None


def _labels(text: str) -> list[bytes]:
    """The labels of a name in zone-file text (``\\X`` and ``\\DDD`` escapes)."""
    idna = not text.isascii()
    dots = _IDNA_DOTS if idna else (".",)
    if text == "@":
        return []
    if text in dots:
        return [b""]
    labels: list[bytes] = []
    label = ""
    escaping, edigits, total = False, 0, 0
    for c in text:
        if escaping:
            if edigits == 0:
                if c in "0123456789":
                    total, edigits = int(c), 1
                else:
                    label += c
                    escaping = False
            else:
                if c not in "0123456789":
                    raise _NameError(_BAD_ESCAPE)
                total = total * 10 + int(c)
                edigits += 1
                if edigits == 3:
                    if total > 255:
                        raise _NameError(_BAD_ESCAPE)
                    escaping = False
                    label += chr(total)
        elif c in dots:
            if not label:
                raise _NameError(_EMPTY_LABEL)
            labels.append(_encode_label(label, idna))
            label = ""
        elif c == "\\":
            escaping, edigits, total = True, 0, 0
        else:
            label += c
    if escaping:
        raise _NameError(_BAD_ESCAPE)
    if text:
        labels.append(_encode_label(label, idna) if label else b"")
    return labels


def check_dns_name(text: str) -> None:
    """Raise ``ValueError`` (dnspython's text) unless ``text`` is a valid DNS name."""
    labels = _labels(text)
    if not labels or labels[-1] != b"":
        labels.append(b"")  # relative names are taken relative to the root
    seen_empty = -1
    total = 0
    for i, label in enumerate(labels):
        total += len(label) + 1
        if len(label) > 63:
            raise _NameError(_LABEL_TOO_LONG)
        if seen_empty < 0 and label == b"":
            seen_empty = i
    if total > 255:
        raise _NameError(_NAME_TOO_LONG)
    if seen_empty != len(labels) - 1:
        raise _NameError(_EMPTY_LABEL)


def _enum_value(text: str, known: dict[str, int], prefix: str, short: str, top: int) -> int | None:
    """dnspython's ``IntEnum.from_text``: a mnemonic or ``<prefix><number>``; ``None``
    when unknown; ``ValueError`` (its text) when the number is out of range."""
    if text in known:
        return known[text]
    if "-" in text and text.replace("-", "_") in known:
        return known[text.replace("-", "_")]
    if text.startswith(prefix) and _ascii_digits(text[len(prefix) :]):
        value = int(text[len(prefix) :])
        if value > top:
            raise ValueError(f"{short} must be an int between >= 0 and <= {top}")
        return value
    return None


def record_type_value(text: str) -> int | None:
    """The type value of a record type name (``MX``, ``TYPE65``), or ``None``."""
    return _enum_value(text.upper(), _RDATATYPES, "TYPE", "type", 65535)


def _rcode_known(text: str) -> bool:
    names = dict.fromkeys(_RCODES, 0)
    return _enum_value(text.upper(), names, "", "rcode", 4095) is not None


class DnsParams(MonitorParams):
    """Parameters of the DNS monitor."""

    #: The name to look up, e.g. ``www.example.com``.
    name: str = Field(min_length=1, max_length=255)
    #: Record type: A, AAAA, MX, NS, SOA, TXT, CNAME, PTR, SRV, CAA, …
    record_type: str = "A"
    #: DNS server to ask; default: the target address.
    server: IpAddress | None = None
    port: Port = 53
    #: ``udp`` (with TCP fallback on truncation) or ``tcp``.
    transport: Literal["udp", "tcp"] = "udp"
    #: Answers that must all be present (e.g. ``["192.0.2.10"]``,
    #: ``["10 mail.example.com"]``); empty: any answer will do.
    expect: list[str] = Field(default_factory=list, max_length=100)
    #: Fewest records of ``record_type`` the answer must hold (0: a reply is enough).
    min_answers: int = Field(default=1, ge=0, le=10000)
    #: Most records allowed.
    max_answers: int | None = Field(default=None, ge=0, le=10000)
    #: Response codes that mean DOWN.
    fatal_rcodes: list[str] = Field(default_factory=lambda: list(_DEFAULT_FATAL))
    #: Ask the server to recurse (RD flag).
    recursion: bool = True

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            check_dns_name(v)
        except _NameError as exc:
            raise ValueError(f"not a valid DNS name: {exc}") from None
        return v

    @field_validator("record_type")
    @classmethod
    def _rtype(cls, v: str) -> str:
        rtype = record_type_value(v)
        if rtype is None:
            raise ValueError(f"unknown record type {v!r}")
        if 128 <= rtype < 256 or rtype == _OPT:
            raise ValueError(f"{v} is a query meta-type, not a record type")
        return v.upper()

    @field_validator("fatal_rcodes")
    @classmethod
    def _rcodes(cls, v: list[str]) -> list[str]:
        out = []
        for code in v:
            if not _rcode_known(code):
                raise ValueError(f"unknown response code {code!r}")
            out.append(code.upper())
        return out

    @field_validator("expect")
    @classmethod
    def _expect(cls, v: list[str]) -> list[str]:
        if any(not e.strip() for e in v):
            raise ValueError("answers must not be empty")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> DnsParams:
        if self.max_answers is not None and self.max_answers < self.min_answers:
            raise ValueError("max_answers: smaller than min_answers")
        if self.expect and self.max_answers is not None and len(self.expect) > self.max_answers:
            raise ValueError("expect: lists more answers than max_answers allows")
        return self
