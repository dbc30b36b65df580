"""The stats store contract: snapshots, watermarks and epochs, applied atomically."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Protocol

from rlinks.batch import Batch


@dataclass(frozen=True)
class Watermark:
    """Every hit of `partition` at an offset <= `offset` is counted exactly once.

    `as_of_ms` is the event time of the newest hit counted; `flushed_at_ms` the
    wall time of the last apply; `epoch` the fencing token of the owner.
    """

    partition: int
    offset: int
    epoch: int
    as_of_ms: int | None = None
    flushed_at_ms: int | None = None
    batches: int = 0
    hits: int = 0
    kv_writes: int = 0


@dataclass(frozen=True)
class Snapshot:
    """A code's stats: total hits, first and last hit, hits per UTC day."""

    code: str
    hits: int
    first_ms: int
    last_ms: int
    daily: dict[str, int] = field(default_factory=dict)


class StatsStore(Protocol):
    """Where BH2 writes. `apply` is the only write of stats and is atomic with the
    watermark and fenced by the epoch."""

    def acquire(self, partition: int) -> int:
        """Take `partition` under a new, higher epoch; older epochs are refused."""
        ...

    def watermark(self, partition: int) -> Watermark: ...

    def watermarks(self) -> list[Watermark]: ...

    def apply(self, batch: Batch, *, before_commit: Callable[[], None] | None = None) -> None:
        """Commit the batch's deltas and watermark `batch.end` in one step.

        Raises StaleEpochError or WatermarkMismatchError, changing nothing, when
        the epoch is not the current one or the batch does not start at the
        watermark. `before_commit` runs inside the transaction (crash tests).
        """
        ...

    def snapshot(self, code: str) -> Snapshot | None: ...

    def snapshots(self) -> Iterator[Snapshot]:
        """Every code's snapshot, ordered by code."""
        ...

    def reset(self, partitions: int) -> dict[int, int]:
        """Drop all stats, set every watermark to 0 under a new epoch (rebuild)."""
        ...

    def close(self) -> None: ...
