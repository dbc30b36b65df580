"""Reading NDJSON hit files in large chunks of complete lines.

Only complete lines (ending in a newline) are read: a final line without one is
incomplete and neither counted nor quarantined until it is completed. Chunks
are decoded in C by msgspec; only a chunk that holds a bad line is walked line
by line to find each bad line's position and reason.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import BinaryIO, Generic, TypeVar

import msgspec

from rlinks.hits import MAX_LINE_BYTES, Quarantined, Reason, classify, excerpt

CHUNK_BYTES = 4 * 1024 * 1024

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
    skipping = 0  # bytes of an over-long line skipped so far
    while True:
        block = stream.read(chunk_bytes)
        if not block:
            return  # whatever is left in buf (or being skipped) is an incomplete tail
        if skipping:
            nl = block.find(b"\n")
            if nl < 0:
                skipping += len(block)
                continue
            skipping += nl + 1
            yield LineChunk(b"", 1, line, offset, too_long=True, skipped=skipping)
            line += 1
            offset += skipping
            skipping = 0
            block = block[nl + 1 :]
        buf += block
        cut = buf.rfind(b"\n")
        if cut < 0:
            if len(buf) > MAX_LINE_BYTES:
                skipping = len(buf)
                buf = b""
            continue
        data, buf = buf[: cut + 1], buf[cut + 1 :]
        n = data.count(b"\n")
        yield LineChunk(data, n, line, offset)
        line += n
        offset += len(data)
        if len(buf) > MAX_LINE_BYTES:
            skipping, buf = len(buf), b""


@dataclass
class Decoded(Generic[W]):
    """The valid lines of a chunk, decoded, and the quarantined ones."""

    items: list[W]
    quarantined: list[Quarantined]


def decode_chunk(chunk: LineChunk, decoder: msgspec.json.Decoder[W]) -> Decoded[W]:
    """Decode a chunk in one call; only a chunk with a bad line goes line by line."""
    if chunk.too_long:
        q = Quarantined(chunk.first_line, chunk.byte_offset, Reason.TOO_LONG, "")
        return Decoded([], [q])
    lines = chunk.data.split(b"\n")
    lines.pop()  # the empty string after the final newline
    if max(map(len, lines)) <= MAX_LINE_BYTES:
        try:
            items = decoder.decode_lines(chunk.data)
        except (msgspec.DecodeError, msgspec.ValidationError):
            pass
        else:
            # decode_lines skips blank lines, which are quarantined ("not json"),
            # so a count mismatch sends the chunk down the line-by-line path.
            if len(items) == chunk.lines:
                return Decoded(items, [])
    out = Decoded[W]([], [])
    offset = chunk.byte_offset
    for i, raw in enumerate(lines):
        try:
            if len(raw) > MAX_LINE_BYTES:
                raise msgspec.ValidationError
            out.items.append(decoder.decode(raw))
        except (msgspec.DecodeError, msgspec.ValidationError):
            reason = classify(raw) or Reason.NOT_JSON  # defensive: never unlabelled
            out.quarantined.append(Quarantined(chunk.first_line + i, offset, reason, excerpt(raw)))
        offset += len(raw) + 1
    return out
