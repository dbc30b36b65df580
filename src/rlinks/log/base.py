"""The HITS log contract: an append-only, partitioned log of hits with offsets."""

from __future__ import annotations

import zlib
from collections.abc import Container, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import msgspec
import numpy as np
import numpy.typing as npt

from rlinks.batch import DeltaRow
from rlinks.errors import LogGapError
from rlinks.hits import Hit, Quarantined


class Position(NamedTuple):
    """Where a hit is in the log; `duplicate` when its id was already there."""

    partition: int
    offset: int
    duplicate: bool = False


class EncodedHits(msgspec.Struct, array_like=True, frozen=True):
    """New hits, encoded as a log block keeps them: `records` is the msgpack
    array of the Hits, `codes` and `ts_ms` (int64, native byte order) their
    codes and times, in the same order. Their ids are fresh, as with
    `HitLog.append(..., fresh_ids=True)`.

    The server's hit writer builds its groups this way as hits arrive, so the
    SQLite log stores a group without decoding each hit and encoding it again:
    that halved the log writer's CPU per hit on the hot routes (see
    docs/design.md)."""

    records: bytes
    codes: list[str]
    ts_ms: bytes

    def __len__(self) -> int:
        return len(self.codes)

    def hits(self) -> list[Hit]:
        """The hits themselves, checked against `codes` and `ts_ms`."""
        try:
            hits = _HITS.decode(self.records)
        except msgspec.DecodeError as e:
            raise ValueError(f"an encoded group's records do not decode: {e}") from e
        times = np.frombuffer(self.ts_ms, np.int64).tolist() if len(self.ts_ms) % 8 == 0 else None
        if times != [h.ts_ms for h in hits] or self.codes != [h.code for h in hits]:
            raise ValueError("an encoded group's codes and times differ from its records")
        return hits

    def times(self) -> npt.NDArray[np.int64]:
        """The times as a column, once the parts are seen to hold as many hits
        (the records by their array header: checking each hit would cost what
        the encoding saves)."""
        if len(self.ts_ms) != 8 * len(self.codes) or _array_len(self.records) != len(self.codes):
            raise ValueError("an encoded group's parts hold different numbers of hits")
        return np.frombuffer(self.ts_ms, np.int64)


_HITS = msgspec.msgpack.Decoder(list[Hit])


def _array_len(records: bytes) -> int | None:
    """The length in a msgpack array header (fixarray, array 16 or array 32)."""
    if not records:
        return None
    tag = records[0]
    if 0x90 <= tag <= 0x9F:
        return tag & 0x0F
    if tag == 0xDC and len(records) >= 3:
        return int.from_bytes(records[1:3], "big")
    if tag == 0xDD and len(records) >= 5:
        return int.from_bytes(records[1:5], "big")
    return None


@dataclass(frozen=True)
class LogEnd:
    """The newest offset of a partition and the event time of its newest hit."""

    partition: int
    offset: int
    max_ts_ms: int | None


@dataclass(frozen=True)
class LogSlice:
    """Hits at offsets (start, end] of one partition, as two columns.

    `code_ids[i]` indexes `names`; `ts_ms[i]` is the hit's time. Columns keep
    the fold vectorised: no per-hit Python object is made to aggregate.
    """

    partition: int
    start: int
    end: int
    code_ids: npt.NDArray[np.int32]
    ts_ms: npt.NDArray[np.int64]
    names: Sequence[str]

    def __len__(self) -> int:
        return int(self.code_ids.size)

    @property
    def max_ts_ms(self) -> int | None:
        return int(self.ts_ms.max()) if self.ts_ms.size else None


def with_repeats(
    positions: Sequence[Position | None], repeats: Sequence[tuple[int, int]]
) -> list[Position]:
    """Positions of one append in input order, with each (index, index of the
    first hit with that id) of `repeats` given its first's position, flagged
    as a duplicate (an id sent twice in one call is logged once)."""
    out = list(positions)
    for i, first in repeats:
        original = out[first]
        if original is not None:
            out[i] = original._replace(duplicate=True)
    return [p for p in out if p is not None]


def split_by_partition(
    hits: Sequence[Hit],
    partitions: int,
    *,
    fresh_ids: bool,
    logged: Container[str] = (),
) -> tuple[dict[int, list[int]], list[tuple[int, int]]]:
    """What one append writes: the input indexes of its hits per partition, in
    order, and the (index, index of the first with that id) of each id repeated
    within the call, which is written once. Hits whose id is in `logged` are
    left out (the caller flags them as duplicates). With `fresh_ids` each id is
    new and comes once (see `HitLog.append`), so no id is looked at."""
    groups: dict[int, list[int]] = {}
    if fresh_ids:
        if partitions == 1:
            return {0: list(range(len(hits)))}, []
        for i, h in enumerate(hits):
            groups.setdefault(partition_of(h.code, partitions), []).append(i)
        return groups, []
    repeats: list[tuple[int, int]] = []
    first_seen: dict[str, int] = {}
    for i, h in enumerate(hits):
        if h.id in logged:
            continue
        if h.id in first_seen:
            repeats.append((i, first_seen[h.id]))
            continue
        first_seen[h.id] = i
        groups.setdefault(partition_of(h.code, partitions), []).append(i)
    return groups, repeats


def partition_of(code: str, partitions: int) -> int:
    """`hash(code) mod P` with a hash that is the same in every process."""
    if partitions == 1:
        return 0
    return zlib.crc32(code.encode()) % partitions


def gap_error(partition: int, lo: int, hi: int) -> LogGapError:
    """The error for offsets `lo..hi` missing where a reader needs them."""
    return LogGapError(
        f"partition {partition}: the log holds no hits at offsets {lo}..{hi} "
        "(trimmed below the watermark?); counts after this point would be wrong, "
        "so nothing is read. If `rlinks-bh2 compact` trimmed them, `rlinks-bh2 rebuild` "
        "recounts from its summary"
    )


def blocks_to_trim(
    partition: int,
    compacted_upto: int,
    blocks: Iterable[tuple[int, int, int]],
    upto_offset: int,
    older_than_ms: int,
) -> int:
    """How many of the leading `blocks` ((first offset, last offset, newest ts),
    in offset order, starting just after `compacted_upto`) a trim drops.

    Only a prefix goes, so "compacted up to" stays one offset: the first block
    that ends above `upto_offset` or holds a hit at or after `older_than_ms`
    stops the trim, even if older blocks follow it. A hole before a block to
    drop raises LogGapError: folding past it would hide hits the summary
    never saw.
    """
    expected = compacted_upto + 1
    n = 0
    for first, last, newest_ms in blocks:
        if last > upto_offset or newest_ms >= older_than_ms:
            break
        if first != expected:
            raise gap_error(partition, expected, first - 1)
        expected = last + 1
        n += 1
    return n


class HitLog(Protocol):
    """Append-only log of hits. Offsets strictly increase within a partition and
    are never reused; appending a hit whose id is already logged does nothing."""

    @property
    def partitions(self) -> int: ...

    def append(self, hits: Sequence[Hit], *, fresh_ids: bool = False) -> list[Position]:
        """Log `hits` atomically; positions in input order, duplicates flagged.

        `fresh_ids`: the caller has just made every id, each once (UUIDv7, as
        the server does), so none can be logged already or come twice in the
        call, and no producer can send one again: the lookups are skipped and
        the ids are not indexed for dedup.
        """
        ...

    def append_encoded(self, group: EncodedHits) -> None:
        """Log `group` atomically, as `append(group.hits(), fresh_ids=True)`
        would. Raises ValueError, and logs nothing, if its parts disagree."""
        ...

    def read(self, partition: int, after_offset: int, limit: int) -> LogSlice:
        """Up to `limit` hits after `after_offset` (raises LogGapError if trimmed)."""
        ...

    def records(self, partition: int, after_offset: int = 0) -> Iterator[tuple[int, Hit]]:
        """Every full hit record the log still holds after `after_offset`, with
        its offset (trimmed hits are gone; `compacted` summarises them)."""
        ...

    def end(self, partition: int) -> LogEnd: ...

    def quarantine(self, source: str, records: Sequence[Quarantined]) -> None:
        """Keep rejected input beside the log, so nothing vanishes silently."""
        ...

    def quarantined(self) -> int:
        """How many records were quarantined in all."""
        ...

    def trim(self, partition: int, upto_offset: int, older_than_ms: int) -> int:
        """Drop whole blocks from the start of `partition` that end at or below
        `upto_offset` and whose newest hit is older than `older_than_ms`; the
        hits dropped.

        Redis holds every entry in memory and SQLite grows without end, so
        counted hits must go; but `verify` and `rebuild` still need their
        counts. So the dropped hits are first folded into the partition's
        compacted summary (per code and UTC day), and the summary, the
        compacted offset and the deletion commit as one atomic step: a crash
        leaves either the blocks or their summary, never both or neither.
        Callers pass at most the stats watermark as `upto_offset`.
        """
        ...

    def compacted(self, partition: int) -> tuple[int, list[DeltaRow]]:
        """The offset `partition` is compacted up to (0: never trimmed) and the
        summary of every hit trimmed at or below it, as (code, day, hits,
        first_ms, last_ms) rows ordered by code and day; read atomically."""
        ...

    def close(self) -> None: ...
