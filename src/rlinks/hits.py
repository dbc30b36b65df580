"""Hit records and the exact rules that accept or quarantine an NDJSON line.

A line is valid when it is a JSON object whose `code` matches `[a-z0-9-]{1,64}`
and whose `ts` is an RFC 3339 string (with an offset) or Unix epoch seconds
(int or float). Anything else is quarantined with its position and one reason;
nothing is ever fatal. Optional text fields are capped, never stored raw.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from typing import Annotated, Any, Final

import msgspec
import uuid_utils

from rlinks.timefmt import datetime_to_ms

MAX_LINE_BYTES: Final = 64 * 1024
# \Z, not $: `$` would also accept a code followed by a newline.
CODE_PATTERN: Final = r"^[a-z0-9-]{1,64}\Z"
MAX_ID_CHARS: Final = 128
REFERRER_CAP: Final = 512
FIELD_CAP: Final = 128
# Unix seconds from 1970-01-01 to 9999-12-31: a millisecond value or garbage is out.
MAX_TS_SECONDS: Final = 253_402_300_799

_CODE_RE = re.compile(CODE_PATTERN)
Code = Annotated[str, msgspec.Meta(pattern=CODE_PATTERN)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


class Reason:
    """Why a line was quarantined (the strings are part of the interface)."""

    NOT_JSON: Final = "not json"
    NOT_OBJECT: Final = "not an object"
    BAD_CODE: Final = "bad code"
    BAD_TS: Final = "bad ts"
    BAD_ID: Final = "bad id"
    TOO_LONG: Final = "line too long"


class Hit(msgspec.Struct, frozen=True, array_like=True):
    """One redirect, as the log keeps it. `ts_ms` is Unix time in milliseconds."""

    id: str
    ts_ms: int
    code: str
    country: str | None = None
    ua_hash: str | None = None
    referrer: str | None = None
    ip_prefix: str | None = None


class Quarantined(msgspec.Struct, frozen=True):
    """A line that was not accepted: where it was, why, and a capped excerpt."""

    line: int
    byte_offset: int
    reason: str
    excerpt: str


_TS = (
    Annotated[dt.datetime, msgspec.Meta(tz=True)]
    | Annotated[int, msgspec.Meta(ge=0, le=MAX_TS_SECONDS)]
    | Annotated[float, msgspec.Meta(ge=0, le=MAX_TS_SECONDS)]
)
_HitId = Annotated[
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f]+\Z")
]


class WireHit(msgspec.Struct):
    """A valid NDJSON hit line. msgspec enforces every rule while decoding (in
    C), so a decoded WireHit is valid by construction."""

    code: Code
    ts: _TS
    id: _HitId | None = None
    country: Any = None
    ua_hash: Any = None
    referrer: Any = None
    ip_prefix: Any = None


class WireCodeTs(msgspec.Struct):
    """Only what a stats fold needs; the same rules, other fields skipped unparsed."""

    code: Code
    ts: _TS
    id: _HitId | None = None


def _cap(value: Any, limit: int) -> str | None:
    if not isinstance(value, str):
        return None
    return _CONTROL.sub("", value[:limit]) or None


def ts_to_ms(ts: dt.datetime | int | float) -> int:
    """Unix ms (floored) for a validated `ts`."""
    if isinstance(ts, dt.datetime):
        return datetime_to_ms(ts)
    if isinstance(ts, int):
        return ts * 1000
    return math.floor(ts * 1000)


def new_hit_id() -> str:
    """A time-ordered unique id (UUIDv7)."""
    return str(uuid_utils.uuid7())


def excerpt(line: bytes, limit: int = 200) -> str:
    """A printable, capped view of a bad line for quarantine records."""
    text = line[:limit].decode("utf-8", "replace")
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text)


_ANY_TS = msgspec.json.Decoder(_TS)
_ANY_ID = msgspec.json.Decoder(_HitId)


def classify(line: bytes) -> str:
    """The reason a complete line (without its newline) is rejected, or ""."""
    if len(line) > MAX_LINE_BYTES:
        return Reason.TOO_LONG
    try:
        obj = msgspec.json.decode(line)
    except msgspec.DecodeError:
        return Reason.NOT_JSON
    if not isinstance(obj, dict):
        return Reason.NOT_OBJECT
    code = obj.get("code")
    if not isinstance(code, str) or not _CODE_RE.fullmatch(code):
        return Reason.BAD_CODE
    for decoder, key, reason in ((_ANY_TS, "ts", Reason.BAD_TS), (_ANY_ID, "id", Reason.BAD_ID)):
        value = obj.get(key)
        if key == "id" and value is None:
            continue
        try:
            decoder.decode(msgspec.json.encode(value))
        except msgspec.ValidationError:
            return reason
    return ""


def to_hit(wire: WireHit) -> Hit:
    """The log record for a decoded line: an id if it had none, text capped."""
    return Hit(
        id=wire.id or new_hit_id(),
        ts_ms=ts_to_ms(wire.ts),
        code=wire.code,
        country=_cap(wire.country, 8),
        ua_hash=_cap(wire.ua_hash, FIELD_CAP),
        referrer=_cap(wire.referrer, REFERRER_CAP),
        ip_prefix=_cap(wire.ip_prefix, 64),
    )


WIRE_HIT_DECODER: Final = msgspec.json.Decoder(WireHit)
WIRE_CODE_TS_DECODER: Final = msgspec.json.Decoder(WireCodeTs)
