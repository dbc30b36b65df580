"""The exact rules that accept or quarantine one NDJSON hit line (rlinks.hits).

Every rule is checked through `classify` and through `decode_chunk`, on both of
its paths: the fast one (a chunk of only valid lines, decoded in one call) and
the slow one (a chunk holding a bad line, walked line by line).
"""

from __future__ import annotations

import datetime as dt
import json
import time
import uuid
from typing import Any, cast

import msgspec
import pytest

from rlinks.batch import fold
from rlinks.hits import (
    MAX_LINE_BYTES,
    MAX_TS_SECONDS,
    WIRE_CODE_TS_DECODER,
    WIRE_HIT_DECODER,
    Hit,
    Quarantined,
    Reason,
    WireHit,
    classify,
    excerpt,
    new_hit_id,
    to_hit,
    ts_to_ms,
)
from rlinks.ndjson import Decoded, LineChunk, decode_chunk
from rlinks.timefmt import day_to_iso, format_ms

UTC = dt.UTC
T0 = 1_795_903_200  # 2026-11-28T22:00:00Z


def enc(obj: object) -> bytes:
    """Compact JSON, non-ASCII kept as UTF-8, control characters escaped."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def padded(size: int) -> bytes:
    """A valid hit line of exactly `size` bytes (padding in `referrer`)."""
    head, tail = b'{"code":"pad","ts":1,"referrer":"', b'"}'
    line = head + b"r" * (size - len(head) - len(tail)) + tail
    assert len(line) == size
    return line


def chunk_of(lines: list[bytes], *, first_line: int = 1, byte_offset: int = 0) -> LineChunk:
    data = b"".join(line + b"\n" for line in lines)
    return LineChunk(data, len(lines), first_line, byte_offset)


class SpyDecoder:
    """Wraps a msgspec decoder and counts which of decode_chunk's paths ran."""

    def __init__(self, inner: msgspec.json.Decoder[Any]) -> None:
        self.inner = inner
        self.bulk_calls = 0
        self.line_calls = 0

    def decode_lines(self, data: bytes) -> list[Any]:
        self.bulk_calls += 1
        return self.inner.decode_lines(data)

    def decode(self, data: bytes) -> Any:
        self.line_calls += 1
        return self.inner.decode(data)


def spy_decode(chunk: LineChunk, decoder: msgspec.json.Decoder[Any]) -> tuple[Decoded[Any], bool]:
    """decode_chunk's result and whether it took the fast path."""
    spy = SpyDecoder(decoder)
    got = decode_chunk(chunk, cast(Any, spy))
    return got, spy.line_calls == 0


DECODERS = [
    pytest.param(WIRE_CODE_TS_DECODER, id="code_ts"),
    pytest.param(WIRE_HIT_DECODER, id="hit"),
]

VALID_LINE = enc({"code": "ok", "ts": T0})

VALID = {
    "int ts": enc({"code": "abc", "ts": T0}),
    "ts zero": enc({"code": "a", "ts": 0}),
    "ts max int": enc({"code": "a", "ts": MAX_TS_SECONDS}),
    "ts max as float": enc({"code": "a", "ts": float(MAX_TS_SECONDS)}),
    "ts float": enc({"code": "a", "ts": T0 + 0.25}),
    "ts negative zero float": b'{"code":"a","ts":-0.0}',
    "ts rfc3339 Z": enc({"code": "a", "ts": "2026-11-28T22:00:00Z"}),
    "ts rfc3339 +00:00": enc({"code": "a", "ts": "2026-11-28T22:00:00+00:00"}),
    "ts rfc3339 negative offset": enc({"code": "a", "ts": "2026-11-28T23:30:00-01:00"}),
    "ts rfc3339 fraction": enc({"code": "a", "ts": "2026-11-28T22:00:00.123456+05:30"}),
    "code one char": enc({"code": "z", "ts": 1}),
    "code only digit": enc({"code": "0", "ts": 1}),
    "code only dash": enc({"code": "-", "ts": 1}),
    "code 64 chars": enc({"code": "a" * 64, "ts": 1}),
    "code all classes": enc({"code": "a-z-0-9", "ts": 1}),
    "id one char": enc({"code": "a", "ts": 1, "id": "x"}),
    "id 128 chars": enc({"code": "a", "ts": 1, "id": "i" * 128}),
    "id 128 non-ascii chars": enc({"code": "a", "ts": 1, "id": "\N{GRINNING FACE}" * 128}),
    "id with spaces": enc({"code": "a", "ts": 1, "id": " a b "}),
    "id null": enc({"code": "a", "ts": 1, "id": None}),
    "key order ts first": b'{"ts":1,"code":"a"}',
    "whitespace inside": b'{ "code" : "a" , "ts" : 1 }',
    "optional fields": enc(
        {
            "code": "a",
            "ts": 1,
            "country": "FR",
            "ua_hash": "h" * 500,
            "referrer": "https://example.com/" + "p" * 1000,
            "ip_prefix": "10.0.0.0/8",
        }
    ),
    "optional fields of other types": enc(
        {"code": "a", "ts": 1, "country": 5, "ua_hash": None, "referrer": ["x"], "ip_prefix": {}}
    ),
    "unknown field": enc({"code": "a", "ts": 1, "extra": {"nested": [1, 2]}}),
    "exactly 64 KiB": padded(MAX_LINE_BYTES),
}

BAD: dict[str, tuple[bytes, str]] = {
    # not json
    "blank line": (b"", Reason.NOT_JSON),
    "spaces only": (b"   ", Reason.NOT_JSON),
    "open brace": (b"{", Reason.NOT_JSON),
    "bare word": (b"hello", Reason.NOT_JSON),
    "trailing comma": (b'{"code":"a","ts":1,}', Reason.NOT_JSON),
    "trailing garbage": (b'{"code":"a","ts":1} x', Reason.NOT_JSON),
    "two objects": (b'{"code":"a","ts":1}{"code":"b","ts":2}', Reason.NOT_JSON),
    "single quotes": (b"{'code':'a','ts':1}", Reason.NOT_JSON),
    "NaN": (b'{"code":"a","ts":NaN}', Reason.NOT_JSON),
    "invalid utf-8 outside strings": (b"\xff\xfe", Reason.NOT_JSON),
    "lone surrogate escape": (b'{"code":"a","ts":1,"id":"\\ud800"}', Reason.NOT_JSON),
    # not an object
    "array": (b"[]", Reason.NOT_OBJECT),
    "array of a hit": (b'[{"code":"a","ts":1}]', Reason.NOT_OBJECT),
    "string": (b'"abc"', Reason.NOT_OBJECT),
    "number": (b"1", Reason.NOT_OBJECT),
    "null": (b"null", Reason.NOT_OBJECT),
    "true": (b"true", Reason.NOT_OBJECT),
    # bad code
    "code missing": (enc({"ts": 1}), Reason.BAD_CODE),
    "code null": (enc({"code": None, "ts": 1}), Reason.BAD_CODE),
    "code number": (enc({"code": 5, "ts": 1}), Reason.BAD_CODE),
    "code list": (enc({"code": ["abc"], "ts": 1}), Reason.BAD_CODE),
    "code empty": (enc({"code": "", "ts": 1}), Reason.BAD_CODE),
    "code uppercase": (enc({"code": "ABC", "ts": 1}), Reason.BAD_CODE),
    "code mixed case": (enc({"code": "aBc", "ts": 1}), Reason.BAD_CODE),
    "code 65 chars": (enc({"code": "a" * 65, "ts": 1}), Reason.BAD_CODE),
    "code trailing escaped newline": (b'{"code":"abc\\n","ts":1}', Reason.BAD_CODE),
    "code leading escaped newline": (b'{"code":"\\nabc","ts":1}', Reason.BAD_CODE),
    "code trailing space": (enc({"code": "abc ", "ts": 1}), Reason.BAD_CODE),
    "code underscore": (enc({"code": "a_b", "ts": 1}), Reason.BAD_CODE),
    "code non-ascii letter": (
        enc({"code": "caf\N{LATIN SMALL LETTER E WITH ACUTE}", "ts": 1}),
        Reason.BAD_CODE,
    ),
    "code fullwidth digit": (enc({"code": "\N{FULLWIDTH DIGIT ONE}", "ts": 1}), Reason.BAD_CODE),
    # bad ts
    "ts missing": (enc({"code": "a"}), Reason.BAD_TS),
    "ts null": (enc({"code": "a", "ts": None}), Reason.BAD_TS),
    "ts true": (enc({"code": "a", "ts": True}), Reason.BAD_TS),
    "ts false": (enc({"code": "a", "ts": False}), Reason.BAD_TS),
    "ts negative int": (enc({"code": "a", "ts": -1}), Reason.BAD_TS),
    "ts negative float": (enc({"code": "a", "ts": -0.5}), Reason.BAD_TS),
    "ts past max int": (enc({"code": "a", "ts": MAX_TS_SECONDS + 1}), Reason.BAD_TS),
    "ts past max float": (enc({"code": "a", "ts": MAX_TS_SECONDS + 0.5}), Reason.BAD_TS),
    "ts ms by mistake float": (b'{"code":"a","ts":1.7e12}', Reason.BAD_TS),
    "ts ms by mistake int": (enc({"code": "a", "ts": 1_700_000_000_000}), Reason.BAD_TS),
    "ts huge int": (b'{"code":"a","ts":99999999999999999999999}', Reason.BAD_TS),
    "ts naive datetime": (enc({"code": "a", "ts": "2026-11-28T22:00:00"}), Reason.BAD_TS),
    "ts date only": (enc({"code": "a", "ts": "2026-11-28"}), Reason.BAD_TS),
    "ts seconds as string": (enc({"code": "a", "ts": str(T0)}), Reason.BAD_TS),
    "ts empty string": (enc({"code": "a", "ts": ""}), Reason.BAD_TS),
    "ts words": (enc({"code": "a", "ts": "yesterday"}), Reason.BAD_TS),
    "ts list": (enc({"code": "a", "ts": [T0]}), Reason.BAD_TS),
    "ts object": (enc({"code": "a", "ts": {"s": T0}}), Reason.BAD_TS),
    # bad id
    "id empty": (enc({"code": "a", "ts": 1, "id": ""}), Reason.BAD_ID),
    "id 129 chars": (enc({"code": "a", "ts": 1, "id": "i" * 129}), Reason.BAD_ID),
    "id escaped newline": (enc({"code": "a", "ts": 1, "id": "a\nb"}), Reason.BAD_ID),
    "id NUL": (enc({"code": "a", "ts": 1, "id": "\x00"}), Reason.BAD_ID),
    "id tab": (enc({"code": "a", "ts": 1, "id": "\t"}), Reason.BAD_ID),
    "id DEL": (enc({"code": "a", "ts": 1, "id": "a\x7f"}), Reason.BAD_ID),
    "id number": (enc({"code": "a", "ts": 1, "id": 5}), Reason.BAD_ID),
    "id bool": (enc({"code": "a", "ts": 1, "id": True}), Reason.BAD_ID),
    "id list": (enc({"code": "a", "ts": 1, "id": ["a"]}), Reason.BAD_ID),
    # line too long
    "valid hit one byte over 64 KiB": (padded(MAX_LINE_BYTES + 1), Reason.TOO_LONG),
    "garbage over 64 KiB": (b"x" * 70_000, Reason.TOO_LONG),
}


BAD_CASES = [pytest.param(line, reason, id=name) for name, (line, reason) in BAD.items()]
BAD_WITH_DECODERS = [
    pytest.param(line, reason, decoder, id=f"{name}-{decoder_id}")
    for name, (line, reason) in BAD.items()
    for decoder, decoder_id in ((WIRE_HIT_DECODER, "hit"), (WIRE_CODE_TS_DECODER, "code_ts"))
]


def test_reason_strings_are_the_documented_ones() -> None:
    """The quarantine reasons are exactly the strings the README documents."""
    assert [
        Reason.NOT_JSON,
        Reason.NOT_OBJECT,
        Reason.BAD_CODE,
        Reason.BAD_TS,
        Reason.BAD_ID,
        Reason.TOO_LONG,
    ] == ["not json", "not an object", "bad code", "bad ts", "bad id", "line too long"]
    assert MAX_LINE_BYTES == 64 * 1024


@pytest.mark.parametrize("line", VALID.values(), ids=VALID.keys())
def test_classify_accepts_valid_line(line: bytes) -> None:
    """classify returns "" (no reason) for every valid line."""
    assert classify(line) == ""


@pytest.mark.parametrize(("line", "reason"), BAD_CASES)
def test_classify_gives_the_reason(line: bytes, reason: str) -> None:
    """classify names the one documented reason for every bad line."""
    assert classify(line) == reason


@pytest.mark.parametrize("decoder", DECODERS)
@pytest.mark.parametrize("line", VALID.values(), ids=VALID.keys())
def test_valid_line_decodes_the_same_on_both_paths(
    line: bytes, decoder: msgspec.json.Decoder[Any]
) -> None:
    """A valid line gives the same decoded hit on the fast path and on the slow path."""
    fast, took_fast = spy_decode(chunk_of([line, line]), decoder)
    assert took_fast
    assert fast.quarantined == []
    assert len(fast.items) == 2
    slow, took_fast = spy_decode(chunk_of([b"oops", line]), decoder)
    assert not took_fast
    assert slow.items == fast.items[:1]
    assert [(q.line, q.reason) for q in slow.quarantined] == [(1, Reason.NOT_JSON)]


@pytest.mark.parametrize(("line", "reason", "decoder"), BAD_WITH_DECODERS)
def test_bad_line_is_quarantined_by_decode_chunk(
    line: bytes, reason: str, decoder: msgspec.json.Decoder[Any]
) -> None:
    """decode_chunk quarantines a bad line amid valid ones with classify's reason and position."""
    lines = [VALID_LINE, line, VALID_LINE]
    got, took_fast = spy_decode(chunk_of(lines, first_line=41, byte_offset=1000), decoder)
    assert not took_fast
    assert len(got.items) == 2
    assert [i.code for i in got.items] == ["ok", "ok"]
    assert got.quarantined == [
        Quarantined(42, 1000 + len(VALID_LINE) + 1, reason, excerpt(line)),
    ]


@pytest.mark.parametrize(("line", "reason", "decoder"), BAD_WITH_DECODERS)
def test_bad_line_alone_in_a_chunk(
    line: bytes, reason: str, decoder: msgspec.json.Decoder[Any]
) -> None:
    """A chunk holding only one bad line quarantines it with the same reason (no item)."""
    got = decode_chunk(chunk_of([line], first_line=7, byte_offset=70), decoder)
    assert got.items == []
    assert [(q.line, q.byte_offset, q.reason) for q in got.quarantined] == [(7, 70, reason)]


def test_every_reason_in_one_chunk() -> None:
    """A chunk mixing the bad cases (but bad ids) with valid lines reports each one exactly."""
    lines: list[bytes] = []
    expected: list[tuple[int, int, str]] = []
    offset = 0
    bad = [(line, reason) for line, reason in BAD.values() if reason != Reason.BAD_ID]
    for i, (line, reason) in enumerate(bad):
        lines += [VALID_LINE, line]
        offset += len(VALID_LINE) + 1
        expected.append((2 * i + 2, offset, reason))
        offset += len(line) + 1
    got = decode_chunk(chunk_of(lines), WIRE_HIT_DECODER)
    assert len(got.items) == len(bad)
    assert [(q.line, q.byte_offset, q.reason) for q in got.quarantined] == expected


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (enc({"code": "A", "ts": True, "id": ""}), Reason.BAD_CODE),
        (enc({"code": "a", "ts": True, "id": ""}), Reason.BAD_TS),
        (enc({"ts": "x", "id": 5}), Reason.BAD_CODE),
        (b"{" + b" " * MAX_LINE_BYTES, Reason.TOO_LONG),
    ],
)
def test_one_reason_per_line_in_a_fixed_order(line: bytes, reason: str) -> None:
    """A line breaking several rules gets one reason: too long, json, object, code, ts, id."""
    assert classify(line) == reason
    got = decode_chunk(chunk_of([line]), WIRE_HIT_DECODER)
    assert [q.reason for q in got.quarantined] == [reason]


def test_line_length_limit_counts_bytes_not_characters() -> None:
    """The 64 KiB limit is on UTF-8 bytes: 64 KiB of bytes passes, one byte more fails."""
    two_byte = "\N{LATIN SMALL LETTER E WITH ACUTE}"
    head = enc({"code": "a", "ts": 1, "referrer": ""})[:-2]
    fill = MAX_LINE_BYTES - len(head) - 2
    ok = head + (two_byte * (fill // 2)).encode() + b"r" * (fill % 2) + b'"}'
    assert len(ok) == MAX_LINE_BYTES
    assert len(ok.decode()) < MAX_LINE_BYTES
    assert classify(ok) == ""
    too_long = ok[:-2] + b'r"}'
    assert classify(too_long) == Reason.TOO_LONG


@pytest.mark.parametrize("decoder", DECODERS)
def test_whitespace_around_a_line_is_allowed(decoder: msgspec.json.Decoder[Any]) -> None:
    """JSON white space before or after a line's object does not make the line bad."""
    lines = [b' {"code":"a","ts":1}', b'{"code":"b","ts":2}  ', b'\t{"code":"c","ts":3}\t']
    got = decode_chunk(chunk_of(lines), decoder)
    assert [i.code for i in got.items] == ["a", "b", "c"]
    assert got.quarantined == []
    assert [classify(line) for line in lines] == ["", "", ""]


def test_blank_lines_in_a_valid_chunk_are_quarantined() -> None:
    """Blank lines (skipped by msgspec's decode_lines) are quarantined as `not json`."""
    lines = [VALID_LINE, b"", VALID_LINE, b"", b""]
    got = decode_chunk(chunk_of(lines), WIRE_CODE_TS_DECODER)
    assert len(got.items) == 2
    step = len(VALID_LINE) + 1
    assert [(q.line, q.byte_offset, q.reason) for q in got.quarantined] == [
        (2, step, Reason.NOT_JSON),
        (4, 2 * step + 1, Reason.NOT_JSON),
        (5, 2 * step + 2, Reason.NOT_JSON),
    ]


def test_quarantine_excerpt_is_capped_and_printable() -> None:
    """A quarantined line's excerpt is at most 200 characters, control characters replaced."""
    line = b"\tbad\x01line" + b"z" * 1000
    got = decode_chunk(chunk_of([line]), WIRE_HIT_DECODER)
    (q,) = got.quarantined
    assert q.excerpt == "\N{REPLACEMENT CHARACTER}bad\N{REPLACEMENT CHARACTER}line" + "z" * 191
    assert len(q.excerpt) == 200


# -- decoded values --------------------------------------------------------------


@pytest.mark.parametrize(
    ("ts", "ms"),
    [
        (0, 0),
        (T0, T0 * 1000),
        (MAX_TS_SECONDS, MAX_TS_SECONDS * 1000),
        (T0 + 0.5, T0 * 1000 + 500),
        (T0 + 0.125, T0 * 1000 + 125),
        (1.0009765625, 1000),  # exactly 1 + 2**-10 s: 1000.976... ms floors to 1000
        (0.9999, 999),
        (0.0005, 0),
        ("2026-11-28T22:00:00Z", T0 * 1000),
        ("2026-11-28T22:00:00.123999Z", T0 * 1000 + 123),
        ("2026-11-28T23:30:00-01:00", (T0 + 9000) * 1000),
        ("2026-11-29T03:30:00+05:30", T0 * 1000),
    ],
)
def test_ts_to_ms_floors_to_milliseconds(ts: object, ms: int) -> None:
    """`ts` in any accepted form becomes Unix milliseconds, floored."""
    wire = WIRE_CODE_TS_DECODER.decode(enc({"code": "a", "ts": ts}))
    assert ts_to_ms(wire.ts) == ms
    assert ts_to_ms(WIRE_HIT_DECODER.decode(enc({"code": "a", "ts": ts})).ts) == ms


def test_float_ts_with_millisecond_decimals_keeps_its_milliseconds() -> None:
    """A float ts written with three decimals keeps exactly those milliseconds."""
    for text, ms in [
        ("1098023119.123", 1_098_023_119_123),
        ("1074050690.702", 1_074_050_690_702),
        ("1099369847.120", 1_099_369_847_120),
    ]:
        wire = WIRE_CODE_TS_DECODER.decode(b'{"code":"a","ts":' + text.encode() + b"}")
        assert ts_to_ms(wire.ts) == ms, text


@pytest.mark.parametrize(
    ("text", "ms", "day"),
    [
        ("1795910399.9999995", 1_795_910_399_999, "2026-11-28"),
        ("1.9999995", 1_999, "1970-01-01"),
    ],
)
def test_float_ts_just_below_a_millisecond_floors(text: str, ms: int, day: str) -> None:
    """A float ts a fraction of a microsecond below a millisecond floors, staying in its day."""
    wire = WIRE_CODE_TS_DECODER.decode(b'{"code":"a","ts":' + text.encode() + b"}")
    assert ts_to_ms(wire.ts) == ms
    ((delta),) = fold([0], [ts_to_ms(wire.ts)], ["a"])
    assert day_to_iso(delta.day) == day


def test_decoded_ts_keeps_its_type() -> None:
    """Integers stay int, decimals stay float, RFC 3339 strings become aware datetimes."""
    assert WIRE_CODE_TS_DECODER.decode(enc({"code": "a", "ts": 5})).ts == 5
    assert type(WIRE_CODE_TS_DECODER.decode(enc({"code": "a", "ts": 5})).ts) is int
    assert type(WIRE_CODE_TS_DECODER.decode(enc({"code": "a", "ts": 5.0})).ts) is float
    ts = WIRE_CODE_TS_DECODER.decode(enc({"code": "a", "ts": "2026-11-28T23:30:00-01:00"})).ts
    assert ts == dt.datetime(2026, 11, 29, 0, 30, tzinfo=UTC)


@pytest.mark.parametrize(
    ("ts", "day"),
    [
        ("2026-11-28T23:30:00-01:00", "2026-11-29"),
        ("2026-11-29T00:30:00+01:00", "2026-11-28"),
        ("2026-11-28T23:59:59.999Z", "2026-11-28"),
        ("2026-11-29T00:00:00Z", "2026-11-29"),
        (T0 + 7199, "2026-11-28"),
        (T0 + 7200, "2026-11-29"),
        (T0 + 7199.999, "2026-11-28"),
    ],
)
def test_daily_bucket_is_the_utc_date(ts: object, day: str) -> None:
    """A hit's daily bucket is the UTC calendar date of its ts, whatever its offset."""
    wire = WIRE_CODE_TS_DECODER.decode(enc({"code": "a", "ts": ts}))
    ((delta),) = fold([0], [ts_to_ms(wire.ts)], ["a"])
    assert (delta.code, day_to_iso(delta.day), delta.hits) == ("a", day, 1)


@pytest.mark.parametrize(
    ("ms", "text"),
    [
        (0, "1970-01-01T00:00:00.000Z"),
        (T0 * 1000 + 123, "2026-11-28T22:00:00.123Z"),
        (T0 * 1000 + 5, "2026-11-28T22:00:00.005Z"),
        (MAX_TS_SECONDS * 1000 + 999, "9999-12-31T23:59:59.999Z"),
        (-1, "1969-12-31T23:59:59.999Z"),
    ],
)
def test_format_ms(ms: int, text: str) -> None:
    """format_ms writes RFC 3339 UTC with exactly three fraction digits and a Z."""
    assert format_ms(ms) == text


def test_format_ms_none() -> None:
    """format_ms(None) is None (no time known)."""
    assert format_ms(None) is None


# -- to_hit ---------------------------------------------------------------------


def decode_hit(obj: dict[str, object]) -> WireHit:
    return WIRE_HIT_DECODER.decode(enc(obj))


def test_to_hit_keeps_a_given_id_and_fields() -> None:
    """to_hit keeps the line's id, code and ms time and its short text fields as they are."""
    hit = to_hit(
        decode_hit(
            {
                "code": "abc",
                "ts": "2026-11-28T22:00:00.123Z",
                "id": "evt-1",
                "country": "FR",
                "ua_hash": "deadbeef",
                "referrer": "https://example.com/",
                "ip_prefix": "10.1.0.0/16",
            }
        )
    )
    assert hit == Hit(
        id="evt-1",
        ts_ms=T0 * 1000 + 123,
        code="abc",
        country="FR",
        ua_hash="deadbeef",
        referrer="https://example.com/",
        ip_prefix="10.1.0.0/16",
    )


def test_to_hit_assigns_a_uuid7_when_id_missing() -> None:
    """A hit without an id gets a new UUIDv7 whose timestamp is now; two hits get two ids."""
    before = time.time_ns() // 1_000_000
    a = to_hit(decode_hit({"code": "a", "ts": 1}))
    b = to_hit(decode_hit({"code": "a", "ts": 1, "id": None}))
    after = time.time_ns() // 1_000_000
    assert a.id != b.id
    for hit in (a, b):
        u = uuid.UUID(hit.id)
        assert str(u) == hit.id
        assert u.version == 7
        assert u.variant == uuid.RFC_4122
        assert before <= int(u.hex[:12], 16) <= after


def test_new_hit_ids_are_time_ordered() -> None:
    """Ids generated one after another sort in generation order and never repeat."""
    ids = [new_hit_id() for _ in range(2000)]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("field", "cap"), [("country", 8), ("ua_hash", 128), ("referrer", 512), ("ip_prefix", 64)]
)
def test_to_hit_caps_text_fields(field: str, cap: int) -> None:
    """Optional text fields are cut to their cap (referrer 512 characters)."""
    hit = to_hit(decode_hit({"code": "a", "ts": 1, field: "\N{GREEK SMALL LETTER ALPHA}" * 1000}))
    assert getattr(hit, field) == "\N{GREEK SMALL LETTER ALPHA}" * cap
    short = to_hit(decode_hit({"code": "a", "ts": 1, field: "v" * cap}))
    assert getattr(short, field) == "v" * cap


@pytest.mark.parametrize("field", ["country", "ua_hash", "referrer", "ip_prefix"])
def test_to_hit_strips_control_characters(field: str) -> None:
    """Control characters (C0 and DEL) are removed from optional text fields."""
    hit = to_hit(decode_hit({"code": "a", "ts": 1, field: "a\tb\x00c\x7f"}))
    assert getattr(hit, field) == "abc"


@pytest.mark.parametrize("value", [5, 1.5, True, None, ["x"], {"k": "v"}, "", "\x00\t\n"])
def test_to_hit_drops_non_text_and_empty_fields(value: object) -> None:
    """A non-string, empty or control-only optional field is stored as None."""
    hit = to_hit(
        decode_hit(
            {"code": "a", "ts": 1, "country": value, "ua_hash": value, "referrer": value}
            | {"ip_prefix": value}
        )
    )
    assert (hit.country, hit.ua_hash, hit.referrer, hit.ip_prefix) == (None, None, None, None)


# -- found while writing these tests --------------------------------------------------

BAD_UTF8_IN_STRINGS = [
    pytest.param(b'{"code":"\xff","ts":1}', {Reason.NOT_JSON, Reason.BAD_CODE}, id="in code"),
    pytest.param(b'{"code":"a","ts":"\xff"}', {Reason.NOT_JSON, Reason.BAD_TS}, id="in ts"),
    pytest.param(b'{"code":"a","ts":1,"id":"\xff"}', {Reason.NOT_JSON, Reason.BAD_ID}, id="in id"),
    pytest.param(b'{"code":"a","ts":1,"referrer":"\xff"}', {Reason.NOT_JSON}, id="in referrer"),
]


@pytest.mark.parametrize(("line", "reasons"), BAD_UTF8_IN_STRINGS)
def test_classify_invalid_utf8_in_a_string(line: bytes, reasons: set[str]) -> None:
    """Invalid UTF-8 in a JSON string gets a reason (`not json` or its field's), never a crash."""
    assert classify(line) in reasons


@pytest.mark.parametrize(
    ("line", "decoder"),
    [
        pytest.param(b'{"code":"\xff","ts":1}', WIRE_CODE_TS_DECODER, id="code, code_ts"),
        pytest.param(b'{"code":"a","ts":1,"id":"\xff"}', WIRE_HIT_DECODER, id="id, hit"),
        pytest.param(b'{"code":"a","ts":1,"referrer":"\xff"}', WIRE_HIT_DECODER, id="ref, hit"),
    ],
)
def test_decode_chunk_quarantines_invalid_utf8(
    line: bytes, decoder: msgspec.json.Decoder[Any]
) -> None:
    """A line with invalid UTF-8 in a decoded string is quarantined with classify's reason."""
    got = decode_chunk(chunk_of([VALID_LINE, line, VALID_LINE]), decoder)
    assert len(got.items) == 2
    assert [(q.line, q.byte_offset, q.reason) for q in got.quarantined] == [
        (2, len(VALID_LINE) + 1, classify(line))
    ]


@pytest.mark.parametrize(
    "line",
    [
        b'{"code":"BAD","ts":1,"code":"ok"}',
        b'{"code":"ok","ts":1,"code":"BAD"}',
        b'{"code":"ok","ts":-1,"ts":1}',
        b'{"code":"ok","ts":1,"ts":"2026-11-28T22:00:00"}',
    ],
)
@pytest.mark.parametrize("decoder", DECODERS)
def test_classify_agrees_with_decoder_on_duplicate_keys(
    line: bytes, decoder: msgspec.json.Decoder[Any]
) -> None:
    """classify says "" exactly when decode_chunk counts the line, even with duplicate keys."""
    got = decode_chunk(chunk_of([line]), decoder)
    assert (classify(line) == "") == bool(got.items)
    if not got.items:
        assert [q.reason for q in got.quarantined] == [classify(line)]
