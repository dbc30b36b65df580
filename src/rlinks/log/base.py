"""The HITS log contract: an append-only, partitioned log of hits with offsets."""

from __future__ import annotations

import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

import numpy as np
import numpy.typing as npt

from rlinks.hits import Hit, Quarantined


class Position(NamedTuple):
    """Where a hit is in the log; `duplicate` when its id was already there."""

    partition: int
    offset: int
    duplicate: bool = False


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


def partition_of(code: str, partitions: int) -> int:
    """`hash(code) mod P` with a hash that is the same in every process."""
    if partitions == 1:
        return 0
    return zlib.crc32(code.encode()) % partitions


class HitLog(Protocol):
    """Append-only log of hits. Offsets strictly increase within a partition and
    are never reused; appending a hit whose id is already logged does nothing."""

    @property
    def partitions(self) -> int: ...

    def append(self, hits: Sequence[Hit], *, fresh_ids: bool = False) -> list[Position]:
        """Log `hits` atomically; positions in input order, duplicates flagged.

        `fresh_ids`: the caller has just made every id (UUIDv7, as the server
        does), so none can be logged already and no producer can send one
        again: the lookup is skipped and the ids are not indexed for dedup.
        """
        ...

    def read(self, partition: int, after_offset: int, limit: int) -> LogSlice:
        """Up to `limit` hits after `after_offset` (raises LogGapError if trimmed)."""
        ...

    def records(self, partition: int, after_offset: int = 0) -> Iterator[tuple[int, Hit]]:
        """Every full hit record after `after_offset`, with its offset."""
        ...

    def end(self, partition: int) -> LogEnd: ...

    def quarantine(self, source: str, records: Sequence[Quarantined]) -> None:
        """Keep rejected input beside the log, so nothing vanishes silently."""
        ...

    def quarantined(self) -> int:
        """How many records were quarantined in all."""
        ...

    def close(self) -> None: ...
