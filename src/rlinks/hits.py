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
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Final, Protocol

import msgspec
import numpy as np
import numpy.typing as npt
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
MAX_TS_MS: Final = MAX_TS_SECONDS * 1000 + 999

_CODE_RE = re.compile(CODE_PATTERN)
Code = Annotated[str, msgspec.Meta(pattern=CODE_PATTERN)]
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class Reason:
    """Why a line was quarantined (the strings are part of the interface)."""

    NOT_JSON: Final = "not json"
    NOT_OBJECT: Final = "not an object"
    BAD_CODE: Final = "bad code"
    BAD_TS: Final = "bad ts"
    BAD_ID: Final = "bad id"
    TOO_LONG: Final = "line too long"


class Hit(msgspec.Struct, frozen=True, array_like=True, gc=False):
    """One redirect, as the log keeps it. `ts_ms` is Unix time in milliseconds.

    Not tracked by Python's garbage collector (`gc=False`: it holds only strings
    and numbers, so it can never be part of a reference cycle): a server queues
    tens of thousands a second, and untracked ones add nothing to the
    collector's passes."""

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
    str, msgspec.Meta(min_length=1, max_length=MAX_ID_CHARS, pattern=r"^[^\x00-\x1f\x7f-\x9f]+\Z")
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
    """Only what a stats fold needs, under the same rules (a bad id is still a
    bad line); the other fields are skipped unparsed."""

    code: Code
    ts: _TS
    id: _HitId | None = None


class LenientCodeTs(msgspec.Struct):
    """Decodes six times faster than WireCodeTs: the code pattern and ts range
    are left to `code_ts_columns`, which checks them once per chunk."""

    code: str
    ts: Annotated[dt.datetime, msgspec.Meta(tz=True)] | int | float
    id: _HitId | None = None  # rare in bulk files, so its checks cost little here


class HasCodeTs(Protocol):
    @property
    def code(self) -> str: ...
    @property
    def ts(self) -> dt.datetime | int | float: ...


@dataclass(frozen=True)
class CodeTsColumns:
    """Decoded hits as columns: `code_ids[i]` indexes the caller's code table."""

    code_ids: npt.NDArray[np.int64]
    ts_ms: npt.NDArray[np.int64]


def code_ts_columns(items: Sequence[HasCodeTs], table: dict[str, int]) -> CodeTsColumns | None:
    """Columns for decoded hits, or None if any of them breaks a rule.

    New codes are added to `table` (code -> id) only when every hit is valid.
    """
    codes = [w.code for w in items]
    ids: npt.NDArray[np.int64] | None
    try:
        ids = np.fromiter(map(table.__getitem__, codes), np.int64, len(codes))
    except KeyError:  # codes not seen before: check each once, add them if all is well
        ids = None
        new = [c for c in dict.fromkeys(codes) if c not in table]
        if not all(map(_CODE_RE.fullmatch, new)):
            return None
    ts_ms = _ts_column([w.ts for w in items])
    if ts_ms is None:
        return None
    if ids is None:
        for c in new:
            table[c] = len(table)
        ids = np.fromiter(map(table.__getitem__, codes), np.int64, len(codes))
    return CodeTsColumns(ids, ts_ms)


def _ts_column(stamps: list[dt.datetime | int | float]) -> npt.NDArray[np.int64] | None:
    """Unix ms for each `ts`, or None if one is out of range."""
    if set(map(type, stamps)) <= {int}:  # the common case, integer seconds: vectorised
        try:
            secs = np.array(stamps, dtype=np.int64)
        except OverflowError:
            return None
        if secs.size and (secs.min() < 0 or secs.max() > MAX_TS_SECONDS):
            return None
        return secs * 1000
    if not all(map(_ts_in_range, stamps)):
        return None
    return np.fromiter(map(ts_to_ms, stamps), np.int64, len(stamps))


def _ts_in_range(ts: dt.datetime | int | float) -> bool:
    if isinstance(ts, dt.datetime):
        return 0 <= datetime_to_ms(ts) <= MAX_TS_MS
    return 0 <= ts <= MAX_TS_SECONDS


def ts_reason(item: HasCodeTs) -> str:
    """BAD_TS for a decoded `ts` outside 1970..9999 UTC (only an RFC 3339 time
    with an offset can get there past the decoder), else ""."""
    return "" if _ts_in_range(item.ts) else Reason.BAD_TS


def cap_text(value: Any, limit: int) -> str | None:
    """`value` if it is text, cut to `limit` characters, control characters removed."""
    if not isinstance(value, str):
        return None
    return _CONTROL.sub("", value)[:limit] or None


def ts_to_ms(ts: dt.datetime | int | float) -> int:
    """Unix ms (floored) for a validated `ts`."""
    if isinstance(ts, dt.datetime):
        return datetime_to_ms(ts)
    if isinstance(ts, int):
        return ts * 1000
    # In decimal, as written: in binary 1098023119.123 * 1000 is
    # 1098023119122.9999, which must still be millisecond ...123.
    return math.floor(Decimal(repr(ts)) * 1000)


def new_hit_id() -> str:
    """A time-ordered unique id (UUIDv7)."""
    return str(uuid_utils.uuid7())


def excerpt(line: bytes, limit: int = 200) -> str:
    """A printable, capped view of a bad line for quarantine records."""
    text = line[:limit].decode("utf-8", "replace")
    return _CONTROL.sub("\N{REPLACEMENT CHARACTER}", text)


class _CodeOnly(msgspec.Struct):
    code: Code


class _CodeTsOnly(msgspec.Struct):
    code: Code
    ts: _TS


def classify(line: bytes) -> str:
    """The reason a complete line (without its newline) is rejected, or "".

    The same msgspec decoders that accept lines decide, field by field in a
    fixed order (code, then ts, then id), so a reason can never disagree with
    the decoder, duplicate keys included.
    """
    if len(line) > MAX_LINE_BYTES:
        return Reason.TOO_LONG
    for decoder, reason in _STAGES:
        try:
            item = decoder.decode(line)
        except msgspec.ValidationError as e:
            return Reason.NOT_OBJECT if str(e).startswith("Expected `object`") else reason
        except (msgspec.DecodeError, UnicodeDecodeError):
            return Reason.NOT_JSON
        if reason == Reason.BAD_TS and ts_reason(item):
            return Reason.BAD_TS
    return ""


def to_hit(wire: WireHit) -> Hit:
    """The log record for a decoded line: an id if it had none, text capped."""
    return Hit(
        id=wire.id or new_hit_id(),
        ts_ms=ts_to_ms(wire.ts),
        code=wire.code,
        country=cap_text(wire.country, 8),
        ua_hash=cap_text(wire.ua_hash, FIELD_CAP),
        referrer=cap_text(wire.referrer, REFERRER_CAP),
        ip_prefix=cap_text(wire.ip_prefix, 64),
    )


WIRE_HIT_DECODER: Final = msgspec.json.Decoder(WireHit)
WIRE_CODE_TS_DECODER: Final = msgspec.json.Decoder(WireCodeTs)
_STAGES: Final[tuple[tuple[msgspec.json.Decoder[Any], str], ...]] = (
    (msgspec.json.Decoder(_CodeOnly), Reason.BAD_CODE),
    (msgspec.json.Decoder(_CodeTsOnly), Reason.BAD_TS),
    (WIRE_HIT_DECODER, Reason.BAD_ID),
)
LENIENT_CODE_TS_DECODER: Final = msgspec.json.Decoder(LenientCodeTs)
