"""Reading NDJSON in chunks of complete lines (rlinks.ndjson.read_chunks).

Positions are checked against the input each test builds: line numbers are
1-based, byte offsets are where a line starts in the source.
"""

from __future__ import annotations

import datetime as dt
import io
import json
from dataclasses import dataclass

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlinks.hits import MAX_LINE_BYTES, MAX_TS_SECONDS, WIRE_HIT_DECODER, Reason, WireHit
from rlinks.ndjson import CHUNK_BYTES, LineChunk, decode_chunk, read_chunks


def enc(obj: object) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def hit(code: str, ts: object = 1_795_903_200) -> bytes:
    return enc({"code": code, "ts": ts})


def padded(size: int, code: str = "pad") -> bytes:
    """A valid hit line of exactly `size` bytes."""
    head, tail = hit(code)[:-1] + b',"referrer":"', b'"}'
    line = head + b"r" * (size - len(head) - len(tail)) + tail
    assert len(line) == size
    return line


@dataclass
class Read:
    """Everything read_chunks and decode_chunk made of one input."""

    chunks: list[LineChunk]
    codes: list[str]  # codes of the counted lines, in order
    quarantined: list[tuple[int, int, str]]  # (line, byte offset, reason)

    @property
    def lines(self) -> int:
        return sum(c.lines for c in self.chunks)


def read_all(
    data: bytes, chunk_bytes: int = CHUNK_BYTES, *, byte_offset: int = 0, first_line: int = 1
) -> Read:
    stream = io.BytesIO(data)
    stream.seek(byte_offset)
    out = Read([], [], [])
    for chunk in read_chunks(
        stream, byte_offset=byte_offset, first_line=first_line, chunk_bytes=chunk_bytes
    ):
        out.chunks.append(chunk)
        got = decode_chunk(chunk, WIRE_HIT_DECODER)
        out.codes += [w.code for w in got.items]
        out.quarantined += [(q.line, q.byte_offset, q.reason) for q in got.quarantined]
    return out


def positions(lines: list[bytes]) -> list[tuple[int, int]]:
    """(line number, byte offset) of each line of b"\\n".join(lines)."""
    out, offset = [], 0
    for i, line in enumerate(lines):
        out.append((i + 1, offset))
        offset += len(line) + 1
    return out


CHUNK_SIZES = [1, 2, 3, 7, 64, 1000, CHUNK_BYTES]


@pytest.mark.parametrize("chunk_bytes", CHUNK_SIZES)
def test_chunks_hold_only_complete_lines(chunk_bytes: int) -> None:
    """Chunks cover exactly the complete lines, end on a newline and are contiguous."""
    complete = b"".join(hit(f"c{i}") + b"\n" for i in range(20))
    data = complete + b'{"code":"tail","ts":1}'
    got = read_all(data, chunk_bytes)
    assert b"".join(c.data for c in got.chunks) == complete
    offset, line = 0, 1
    for c in got.chunks:
        assert c.data.endswith(b"\n")
        assert c.lines == c.data.count(b"\n") >= 1
        assert (c.byte_offset, c.first_line) == (offset, line)
        assert not c.too_long
        offset, line = c.end_offset, line + c.lines
    assert (offset, line) == (len(complete), 21)
    assert got.codes == [f"c{i}" for i in range(20)]


@pytest.mark.parametrize("chunk_bytes", CHUNK_SIZES)
@pytest.mark.parametrize(
    "tail",
    [
        pytest.param(b'{"code":"late","ts":1}', id="valid"),
        pytest.param(b'{"code":', id="cut json"),
        pytest.param(b"not json at all", id="garbage"),
        pytest.param(b"x" * (MAX_LINE_BYTES + 10), id="over 64 KiB"),
    ],
)
def test_final_line_without_newline_is_left_alone(chunk_bytes: int, tail: bytes) -> None:
    """A final line without a newline is neither counted nor quarantined."""
    if len(tail) > MAX_LINE_BYTES and chunk_bytes < 64:
        chunk_bytes *= 1024  # same shapes, without 64 KiB of single-byte reads
    data = hit("a") + b"\n" + hit("b") + b"\n" + tail
    got = read_all(data, chunk_bytes)
    assert got.lines == 2
    assert got.codes == ["a", "b"]
    assert got.quarantined == []
    assert got.chunks[-1].end_offset == len(data) - len(tail)


def test_empty_and_newline_free_inputs_yield_nothing() -> None:
    """An empty input, or one without any newline, yields no chunk at all."""
    assert read_all(b"").chunks == []
    assert read_all(hit("a"), 5).chunks == []


@pytest.mark.parametrize("chunk_bytes", CHUNK_SIZES)
def test_quarantined_positions_are_exact(chunk_bytes: int) -> None:
    """Each bad line is reported with its own line number, byte offset and reason."""
    lines = [
        hit("a"),
        b"",
        hit("BAD"),
        hit("b", "2026-11-28T22:00:00Z"),
        b"[1, 2]",
        enc({"code": "c", "ts": True}),
        enc({"code": "c", "ts": 1, "id": None, "referrer": ["x"]}),
        "{\N{SNOWMAN}".encode(),
        hit("c"),
        b"{}",
    ]
    bad = {1: Reason.NOT_JSON, 2: Reason.BAD_CODE, 4: Reason.NOT_OBJECT, 5: Reason.BAD_TS}
    bad |= {7: Reason.NOT_JSON, 9: Reason.BAD_CODE}
    pos = positions(lines)
    got = read_all(b"\n".join(lines) + b"\n", chunk_bytes)
    assert got.quarantined == [(*pos[i], reason) for i, reason in sorted(bad.items())]
    assert got.codes == ["a", "b", "c", "c"]
    assert got.lines == len(lines)


@pytest.mark.parametrize("chunk_bytes", [5, CHUNK_BYTES])
def test_bad_id_lines_are_quarantined_as_bad_id(chunk_bytes: int) -> None:
    """A line whose only fault is its id is quarantined as `bad id` at its position."""
    lines = [hit("a"), enc({"code": "c", "ts": 1, "id": ""}), enc({"code": "c", "ts": 1, "id": 7})]
    pos = positions(lines)
    got = read_all(b"\n".join(lines) + b"\n", chunk_bytes)
    assert got.codes == ["a"]
    assert got.quarantined == [(*pos[1], Reason.BAD_ID), (*pos[2], Reason.BAD_ID)]


def test_positions_continue_from_the_given_start() -> None:
    """Reading from a byte offset and line number reports positions in the whole source."""
    head = hit("a") + b"\n" + hit("b") + b"\n"
    data = head + hit("c") + b"\n" + b"oops\n" + hit("d") + b"\n"
    got = read_all(data, 4, byte_offset=len(head), first_line=3)
    assert got.codes == ["c", "d"]
    assert got.quarantined == [(4, len(head) + len(hit("c")) + 1, Reason.NOT_JSON)]
    assert got.chunks[0].byte_offset == len(head)
    assert got.chunks[-1].end_offset == len(data)


LONG_CHUNK_SIZES = [1000, 4096, MAX_LINE_BYTES - 1, MAX_LINE_BYTES, MAX_LINE_BYTES + 1, 100_000]


@pytest.mark.parametrize("chunk_bytes", [*LONG_CHUNK_SIZES, CHUNK_BYTES])
@pytest.mark.parametrize(
    "long_line",
    [
        pytest.param(padded(MAX_LINE_BYTES + 1), id="valid json 1 byte over"),
        pytest.param(b"x" * 70_000, id="garbage 70000"),
        pytest.param(b"y" * 300_000, id="garbage 300000"),
    ],
)
def test_over_long_line_is_quarantined_once(chunk_bytes: int, long_line: bytes) -> None:
    """A line over 64 KiB is quarantined once at its position; the lines after it still count."""
    lines = [hit("a"), hit("b"), long_line, hit("c"), b"bad", hit("d")]
    pos = positions(lines)
    got = read_all(b"\n".join(lines) + b"\n", chunk_bytes)
    assert got.quarantined == [(*pos[2], Reason.TOO_LONG), (*pos[4], Reason.NOT_JSON)]
    assert got.codes == ["a", "b", "c", "d"]
    assert got.lines == len(lines)
    assert sum(len(c.data) + (c.skipped if c.too_long else 0) for c in got.chunks) == sum(
        len(line) + 1 for line in lines
    )


@pytest.mark.parametrize("chunk_bytes", LONG_CHUNK_SIZES)
def test_over_long_line_skipped_without_holding_it(chunk_bytes: int) -> None:
    """A line longer than the chunk size comes as one `too_long` chunk with its exact size."""
    long_line = b"z" * 200_000
    data = hit("a") + b"\n" + long_line + b"\n" + hit("b") + b"\n"
    chunks = list(read_chunks(io.BytesIO(data), chunk_bytes=chunk_bytes))
    too_long = [c for c in chunks if c.too_long]
    assert len(too_long) == 1
    (c,) = too_long
    assert (c.data, c.lines, c.first_line, c.byte_offset) == (b"", 1, 2, len(hit("a")) + 1)
    assert c.skipped == len(long_line) + 1
    assert c.end_offset == len(hit("a")) + 1 + len(long_line) + 1


@pytest.mark.parametrize("chunk_bytes", [1000, 4096, MAX_LINE_BYTES, 100_000])
def test_consecutive_and_leading_over_long_lines(chunk_bytes: int) -> None:
    """Over-long lines first in the input and back to back are each quarantined once."""
    lines = [b"q" * 80_000, b"w" * 66_000, hit("a"), b"e" * 70_000, b"r" * 70_000]
    pos = positions(lines)
    got = read_all(b"\n".join(lines) + b"\n", chunk_bytes)
    assert got.quarantined == [(*pos[i], Reason.TOO_LONG) for i in (0, 1, 3, 4)]
    assert got.codes == ["a"]


@pytest.mark.parametrize("chunk_bytes", [1000, 4096, MAX_LINE_BYTES, MAX_LINE_BYTES + 1])
def test_line_of_exactly_64_kib_is_not_too_long(chunk_bytes: int) -> None:
    """A valid line of exactly 64 KiB counts, even when it spans many chunks."""
    lines = [hit("a"), padded(MAX_LINE_BYTES, "edge"), hit("b")]
    got = read_all(b"\n".join(lines) + b"\n", chunk_bytes)
    assert got.quarantined == []
    assert got.codes == ["a", "edge", "b"]


# -- property ---------------------------------------------------------------------

codes = st.from_regex(r"[a-z0-9-]{1,64}", fullmatch=True)


def rfc3339(secs: int, minutes: int) -> str:
    """The instant `secs` written in local time at a UTC offset of `minutes`."""
    tz = dt.timezone(dt.timedelta(minutes=minutes))
    return dt.datetime.fromtimestamp(secs, tz).isoformat()


stamps = st.one_of(
    st.integers(0, MAX_TS_SECONDS),
    st.floats(0, MAX_TS_SECONDS, allow_nan=False),
    st.builds(rfc3339, st.integers(86_400, MAX_TS_SECONDS - 86_400), st.integers(-1439, 1439)),
)
valid_lines = st.builds(lambda c, t: (hit(c, t), "", c), codes, stamps)
BAD_POOL: list[tuple[bytes, str, str]] = [
    (b"", Reason.NOT_JSON, ""),
    (b"  ", Reason.NOT_JSON, ""),
    (b'{"code":"a","ts":1', Reason.NOT_JSON, ""),
    (b'{"code":"a","ts":1} {"code":"b","ts":2} x', Reason.NOT_JSON, ""),
    (b"[]", Reason.NOT_OBJECT, ""),
    (b"42", Reason.NOT_OBJECT, ""),
    (hit("Nope"), Reason.BAD_CODE, ""),
    (hit("abc\n"), Reason.BAD_CODE, ""),
    (hit("a" * 65), Reason.BAD_CODE, ""),
    (enc({"ts": 1}), Reason.BAD_CODE, ""),
    (hit("a", -1), Reason.BAD_TS, ""),
    (hit("a", 1.7e12), Reason.BAD_TS, ""),
    (hit("a", "2026-11-28T22:00:00"), Reason.BAD_TS, ""),
    (hit("a", False), Reason.BAD_TS, ""),
    (enc({"code": "a", "ts": 1, "id": ""}), Reason.BAD_ID, ""),
    (enc({"code": "a", "ts": 1, "id": 7}), Reason.BAD_ID, ""),
    (padded(MAX_LINE_BYTES + 1), Reason.TOO_LONG, ""),
    (b"x" * 150_000, Reason.TOO_LONG, ""),
    (padded(MAX_LINE_BYTES, "edge"), "", "edge"),
]
any_line = st.one_of(valid_lines, st.sampled_from(BAD_POOL))
tails = st.one_of(
    st.just(b""),
    st.binary(min_size=1, max_size=40).filter(lambda b: b"\n" not in b),
    st.just(hit("late")),
    st.just(b"t" * 70_000),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(any_line, max_size=25), tails, st.data())
def test_every_complete_line_is_counted_or_quarantined(
    lines: list[tuple[bytes, str, str]], tail: bytes, data: st.DataObject
) -> None:
    """counted + quarantined == complete lines read, each bad line at its exact position."""
    big = any(len(line) > 1000 for line, _, _ in lines) or len(tail) > 1000
    chunk_bytes = data.draw(st.integers(2048, 200_000) if big else st.integers(1, 300))
    raw = [line for line, _, _ in lines]
    source = b"".join(line + b"\n" for line in raw) + tail
    got = read_all(source, chunk_bytes)
    pos = positions(raw)
    assert got.lines == len(lines)
    assert len(got.codes) + len(got.quarantined) == len(lines)
    assert got.quarantined == [
        (*pos[i], reason) for i, (_, reason, _) in enumerate(lines) if reason
    ]
    assert got.codes == [code for _, reason, code in lines if not reason]


# -- found while writing these tests ---------------------------------------------


@pytest.mark.parametrize("blank", [b"", b" ", b"\t"], ids=["empty", "space", "tab"])
def test_two_objects_on_one_line_are_not_json_even_beside_a_blank_line(blank: bytes) -> None:
    """A line holding two JSON objects is `not json`, even when a blank line evens the count."""
    for two in (
        b'{"code":"a","ts":1}{"code":"b","ts":2}',
        b'{"code":"a","ts":1} {"code":"b","ts":2}',
    ):
        got = read_all(two + b"\n" + blank + b"\n")
        assert got.codes == []
        assert got.quarantined == [(1, 0, Reason.NOT_JSON), (2, len(two) + 1, Reason.NOT_JSON)]


def test_decoded_items_are_wire_hits() -> None:
    """decode_chunk with the ingest decoder yields WireHit values with the line's fields."""
    chunk = next(read_chunks(io.BytesIO(enc({"code": "a", "ts": 5, "id": "i-1"}) + b"\n")))
    assert decode_chunk(chunk, WIRE_HIT_DECODER).items == [WireHit(code="a", ts=5, id="i-1")]
