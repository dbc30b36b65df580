"""Reading NDJSON hit files in large chunks of complete lines.

Only complete lines (ending in a newline) are read: a final line without one is
incomplete and neither counted nor quarantined until it is completed. Chunks
are decoded in C by msgspec; only a chunk that holds a bad line is walked line
by line to find each bad line's position and reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import BinaryIO, Generic, TypeVar

import msgspec
import numpy as np

from rlinks.hits import MAX_LINE_BYTES, Quarantined, Reason, classify, excerpt

CHUNK_BYTES = 4 * 1024 * 1024
LONG_LINE_EDGE = 64 * 1024
_NEWLINE = ord("\n")
_BRACE = ord("{")

W = TypeVar("W")


@dataclass(frozen=True)
class LineChunk:
    """Complete lines from a source, with where they start in it.

    `data` holds `lines` lines, each ending in a newline, except for a line too
    long to hold: then `data` is empty, `lines` is 1 and `too_long` is set.
    """

    data: bytes
    lines: int
    first_line: int
    byte_offset: int
    too_long: bool = False
    skipped: int = 0  # bytes of the over-long line, newline included
    # Its first and last LONG_LINE_EDGE bytes, for callers that fingerprint input.
    edges: tuple[bytes, bytes] = (b"", b"")

    @property
    def end_offset(self) -> int:
        return self.byte_offset + (self.skipped if self.too_long else len(self.data))


def read_chunks(
    stream: BinaryIO,
    *,
    byte_offset: int = 0,
    first_line: int = 1,
    chunk_bytes: int = CHUNK_BYTES,
) -> Iterator[LineChunk]:
    """Yield chunks of complete lines from `stream`, positioned at `byte_offset`.

    A line longer than MAX_LINE_BYTES is skipped without being held in memory
    and yielded as a `too_long` chunk once its newline is seen.
    """
    buf = b""
    line = first_line
    offset = byte_offset
    long_line: _LongLine | None = None  # an over-long line being skipped
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            return  # whatever is left in buf (or being skipped) is an incomplete tail
        if long_line is not None:
            nl = block.find(b"\n")
            long_line.skip(block if nl < 0 else block[: nl + 1])
            if nl < 0:
                continue
            yield long_line.chunk(line, offset)
            line += 1
            offset += long_line.size
            long_line = None
            block = block[nl + 1 :]
        buf += block
        cut = buf.rfind(b"\n")
        if cut >= 0:
            data, buf = buf[: cut + 1], buf[cut + 1 :]
            n = data.count(b"\n")
            yield LineChunk(data, n, line, offset)
            line += n
            offset += len(data)
        if len(buf) > MAX_LINE_BYTES:
            long_line, buf = _LongLine(buf), b""


class _LongLine:
    """An over-long line: its size and its first and last bytes, not the rest."""

    def __init__(self, start: bytes) -> None:
        self.size = len(start)
        self.head = start[:LONG_LINE_EDGE]
        self.tail = start[-LONG_LINE_EDGE:]

    def skip(self, data: bytes) -> None:
        self.size += len(data)
        self.tail = (self.tail + data[-LONG_LINE_EDGE:])[-LONG_LINE_EDGE:]

    def chunk(self, line: int, offset: int) -> LineChunk:
        return LineChunk(
            b"", 1, line, offset, too_long=True, skipped=self.size, edges=(self.head, self.tail)
        )


def _fast_path_fits(data: bytes) -> bool:
    """True if every line starts with `{` and none is over MAX_LINE_BYTES.

    Starting with `{`, no line is blank (decode_lines would skip a blank line,
    which must be quarantined), so as many values as lines means exactly one
    per line. One vectorised pass over the newlines answers both questions.
    """
    raw = np.frombuffer(data, np.uint8)
    ends = np.flatnonzero(raw == _NEWLINE)
    starts = np.concatenate(([0], ends[:-1] + 1))
    return bool((raw[starts] == _BRACE).all() and (ends - starts).max() <= MAX_LINE_BYTES)


@dataclass
class Decoded(Generic[W]):
    """The valid lines of a chunk, decoded, and the quarantined ones."""

    items: list[W]
    quarantined: list[Quarantined]


def decode_chunk(
    chunk: LineChunk,
    decoder: msgspec.json.Decoder[W],
    *,
    by_line: bool = False,
    accept: Callable[[W], str] | None = None,
) -> Decoded[W]:
    """Decode a chunk in one call; only a chunk with a bad line (or `by_line`)
    goes line by line. `accept(item)` returns a quarantine reason for a rule
    the decoder cannot express, or ""."""
    if chunk.too_long:
        q = Quarantined(chunk.first_line, chunk.byte_offset, Reason.TOO_LONG, "")
        return Decoded([], [q])
    if not by_line and _fast_path_fits(chunk.data):
        try:
            items = decoder.decode_lines(chunk.data)
        except (msgspec.DecodeError, UnicodeDecodeError):
            pass
        else:
            # Every line holds at least one value (none is blank), so as many
            # values as lines means exactly one per line: `{..}{..}` on a line
            # cannot pass as two hits.
            if len(items) == chunk.lines and (accept is None or not any(map(accept, items))):
                return Decoded(items, [])
    lines = chunk.data.split(b"\n")
    lines.pop()  # the empty string after the final newline
    out = Decoded[W]([], [])
    offset = chunk.byte_offset
    for i, raw in enumerate(lines):
        try:
            if len(raw) > MAX_LINE_BYTES:
                raise msgspec.ValidationError
            item = decoder.decode(raw)
            reason = accept(item) if accept is not None else ""
        except (msgspec.DecodeError, UnicodeDecodeError):
            reason = classify(raw) or Reason.NOT_JSON  # defensive: never unlabelled
        if reason:
            out.quarantined.append(Quarantined(chunk.first_line + i, offset, reason, excerpt(raw)))
        else:
            out.items.append(item)
        offset += len(raw) + 1
    return out
