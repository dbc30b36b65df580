"""`rlinks-bh2 aggregate`: an NDJSON hits file in, a stats JSON file out.

The out file carries its own watermark (bytes and lines consumed, and hashes of
the consumed input's head and tail), so a rerun on the same input changes
nothing and a rerun on a grown input folds only the new complete lines. A
truncated or replaced input is refused unless the caller starts from scratch.
Every complete valid line counts: no id dedup here, that is the log's job.
"""

from __future__ import annotations

import hashlib
import os
import sys
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import msgspec
import numpy as np

from rlinks.batch import DayCounts
from rlinks.errors import ConfigError, InputChangedError
from rlinks.hits import (
    LENIENT_CODE_TS_DECODER,
    WIRE_CODE_TS_DECODER,
    CodeTsColumns,
    LenientCodeTs,
    WireCodeTs,
    code_ts_columns,
    ts_reason,
)
from rlinks.ndjson import Decoded, decode_chunk, read_chunks
from rlinks.timefmt import days_to_iso_many, format_ms, format_ms_many, now_ms, rfc3339_to_ms

# The consumed input's first and last bytes are hashed to spot a replaced file.
HEAD_BYTES = 64 * 1024
TAIL_BYTES = 4 * 1024


class _Watermark(msgspec.Struct):
    source: str
    byte_offset: int = 0
    lines: int = 0
    head_sha256: str = ""
    tail_sha256: str = ""
    code: str | None = None
    as_of: str | None = None
    updated_at: str | None = None


class _CodeStats(msgspec.Struct):
    hits: int
    first_hit: str
    last_hit: str
    daily: dict[str, int]


class _OutFile(msgspec.Struct):
    stats: dict[str, _CodeStats]
    watermark: _Watermark
    quarantined: int = 0


@dataclass
class _Acc:
    """Per-code running totals in milliseconds, merged chunk by chunk."""

    hits: int = 0
    first_ms: int = 0
    last_ms: int = 0
    daily: Counter[str] = field(default_factory=Counter)


@dataclass(frozen=True)
class AggregateResult:
    lines: int  # complete lines read this run
    counted: int
    quarantined: int
    codes: int


class _Fingerprint:
    """The first HEAD_BYTES and last TAIL_BYTES of the input consumed so far."""

    def __init__(self, head: bytes = b"", tail: bytes = b"") -> None:
        self.head = bytearray(head)
        self.tail = tail

    def feed(self, data: bytes) -> None:
        if len(self.head) < HEAD_BYTES:
            self.head += data[: HEAD_BYTES - len(self.head)]
        self.tail = (self.tail + data[-TAIL_BYTES:])[-TAIL_BYTES:]

    def digests(self) -> tuple[str, str]:
        return hashlib.sha256(self.head).hexdigest(), hashlib.sha256(self.tail).hexdigest()


def aggregate_file(
    src: str,
    out: Path,
    *,
    code: str | None = None,
    from_start: bool = False,
    progress: Callable[[int], None] | None = None,
) -> AggregateResult:
    """Fold the complete lines of `src` (a path or "-") past the watermark in `out`."""
    prev = None if from_start else _load(out)
    if prev is not None and prev.watermark.code != code:
        raise InputChangedError(
            f"{out} was made with --code {prev.watermark.code or '(none)'}, not "
            f"--code {code or '(none)'}: pass --from-start to recount with this filter"
        )
    wm = prev.watermark if prev else _Watermark(source=src, code=code)
    acc = {c: _parse(s) for c, s in prev.stats.items()} if prev else {}
    counted = quarantined = lines = 0
    folder = _Folder(code)
    stream = _open(src)
    try:
        seen = _skip_consumed(stream, wm, src)
        offset = wm.byte_offset
        for chunk in read_chunks(stream, byte_offset=offset, first_line=wm.lines + 1):
            got: Decoded[Any] = decode_chunk(chunk, LENIENT_CODE_TS_DECODER)
            cols = folder.columns(got.items)
            if cols is None:  # a rule the lenient decoder skips: find the bad lines
                got = decode_chunk(chunk, WIRE_CODE_TS_DECODER, by_line=True, accept=ts_reason)
                cols = folder.columns(got.items)
            if cols is not None:
                folder.add(cols)
            counted += len(got.items)
            quarantined += len(got.quarantined)
            lines += chunk.lines
            for part in chunk.edges if chunk.too_long else (chunk.data,):
                seen.feed(part)  # stdin only: a file is fingerprinted from disk
            offset = chunk.end_offset
            if progress is not None:
                progress(offset)
        if stream.seekable():
            seen = _read_fingerprint(stream, offset)
    finally:
        if stream is not sys.stdin.buffer:
            stream.close()
    max_ts = folder.merge_into(acc)
    wm.byte_offset, wm.lines = offset, wm.lines + lines
    wm.head_sha256, wm.tail_sha256 = seen.digests()
    if max_ts is not None:
        wm.as_of = format_ms(max(max_ts, rfc3339_to_ms(wm.as_of) if wm.as_of else max_ts))
    wm.source, wm.updated_at = src, format_ms(now_ms())
    result = _OutFile(
        stats=_render(acc),
        watermark=wm,
        quarantined=(prev.quarantined if prev else 0) + quarantined,
    )
    _write_atomically(out, msgspec.json.format(msgspec.json.encode(result), indent=2) + b"\n")
    return AggregateResult(lines, counted, quarantined, len(acc))


class _Folder:
    """Collects decoded chunks as columns and folds them 250,000 hits at a
    time into per-(code, day) columns; Python sees each code only at the end."""

    FOLD_EVERY = 250_000  # bounds the fold's temporary arrays (memory stays flat)

    def __init__(self, code: str | None) -> None:
        self.code = code
        self.table: dict[str, int] = {}
        self.pending: list[CodeTsColumns] = []
        self.pending_hits = 0
        self.counts = DayCounts.empty()

    def columns(self, items: list[LenientCodeTs] | list[WireCodeTs]) -> CodeTsColumns | None:
        """Every item checked; then only the --code hits kept, if one was given."""
        cols = code_ts_columns(items, self.table)
        if cols is None or self.code is None:
            return cols
        keep = cols.code_ids == self.table.get(self.code, -1)
        return CodeTsColumns(cols.code_ids[keep], cols.ts_ms[keep])

    def add(self, cols: CodeTsColumns) -> None:
        self.pending.append(cols)
        self.pending_hits += cols.ts_ms.size
        if self.pending_hits >= self.FOLD_EVERY:
            self.fold()

    def fold(self) -> None:
        if self.pending:
            ids = np.concatenate([c.code_ids for c in self.pending])
            ts = np.concatenate([c.ts_ms for c in self.pending])
            self.counts = self.counts.merge(DayCounts.of_hits(ids, ts))
            self.pending, self.pending_hits = [], 0

    def merge_into(self, acc: dict[str, _Acc]) -> int | None:
        """Add everything folded to `acc`; the newest hit's time, if any."""
        self.fold()
        counts = self.counts
        if not counts.hits.size:
            return None
        names = list(self.table)
        days = days_to_iso_many(counts.days)
        day_hits = counts.hits.tolist()
        runs = counts.by_code()
        for code_id, start, end, hits, first, last in zip(
            runs.code_ids.tolist(),
            runs.starts.tolist(),
            runs.ends.tolist(),
            runs.hits.tolist(),
            runs.firsts.tolist(),
            runs.lasts.tolist(),
            strict=True,
        ):
            daily = Counter(dict(zip(days[start:end], day_hits[start:end], strict=True)))
            a = acc.get(names[code_id])
            if a is None:
                acc[names[code_id]] = _Acc(hits, first, last, daily)
            else:
                a.hits += hits
                a.first_ms = min(a.first_ms, first)
                a.last_ms = max(a.last_ms, last)
                a.daily.update(daily)
        return int(counts.lasts.max())


def _skip_consumed(stream: BinaryIO, wm: _Watermark, src: str) -> _Fingerprint:
    """Position `stream` after what the watermark covers, checking it is unchanged."""
    off = wm.byte_offset
    if off == 0:
        return _Fingerprint()
    if stream.seekable():
        size = os.fstat(stream.fileno()).st_size
        if size < off:
            raise InputChangedError(
                f"{src} is shorter ({size} bytes) than what was already counted ({off} bytes): "
                "it was truncated or replaced; pass --from-start to recount it"
            )
        seen = _read_fingerprint(stream, off)
        stream.seek(off)
    else:
        seen = _Fingerprint()
        left = off
        while left:
            block = stream.read(min(left, 1 << 20))
            if not block:
                raise InputChangedError(
                    f"{src} ended after {off - left} bytes, before the {off} already counted: "
                    "pass --from-start to recount it"
                )
            seen.feed(block)
            left -= len(block)
    if seen.digests() != (wm.head_sha256, wm.tail_sha256):
        raise InputChangedError(
            f"{src} is not the input counted before: its first or last counted bytes "
            "changed (replaced or rewritten); pass --from-start to recount it"
        )
    return seen


def _read_fingerprint(stream: BinaryIO, offset: int) -> _Fingerprint:
    """The fingerprint of the first `offset` bytes of a seekable stream."""
    stream.seek(0)
    head = stream.read(min(offset, HEAD_BYTES))
    stream.seek(max(0, offset - TAIL_BYTES))
    return _Fingerprint(head, stream.read(min(offset, TAIL_BYTES)))


def _open(src: str) -> BinaryIO:
    if src == "-":
        return sys.stdin.buffer
    try:
        return open(src, "rb")
    except OSError as e:
        raise ConfigError(f"cannot read {src}: {e.strerror}") from e


def _load(out: Path) -> _OutFile | None:
    try:
        data = out.read_bytes()
    except FileNotFoundError:
        return None
    try:
        return msgspec.json.decode(data, type=_OutFile)
    except msgspec.MsgspecError as e:
        raise InputChangedError(
            f"{out} exists but is not an aggregate output ({e}); "
            "move it away or pass --from-start to overwrite it"
        ) from e


def _parse(s: _CodeStats) -> _Acc:
    return _Acc(s.hits, rfc3339_to_ms(s.first_hit), rfc3339_to_ms(s.last_hit), Counter(s.daily))


def _render(acc: dict[str, _Acc]) -> dict[str, _CodeStats]:
    codes = sorted(acc)
    firsts = format_ms_many([acc[c].first_ms for c in codes])
    lasts = format_ms_many([acc[c].last_ms for c in codes])
    return {
        c: _CodeStats(acc[c].hits, f, la, dict(sorted(acc[c].daily.items())))
        for c, f, la in zip(codes, firsts, lasts, strict=True)
    }


def _write_atomically(path: Path, data: bytes) -> None:
    """Write to a temp file beside `path`, fsync, then rename over it."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
