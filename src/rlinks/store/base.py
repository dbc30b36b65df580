"""The stats store contract: snapshots, watermarks and epochs, applied atomically."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from rlinks.batch import Batch, DeltaRow
from rlinks.leases import LeaseStore

# A hosted KV (Cloudflare Workers KV) allows one write per second per key.
KEY_RATE_WINDOW_S = 1.0


@dataclass(frozen=True)
class Watermark:
    """Every hit of `partition` at an offset <= `offset` is counted exactly once.

    `as_of_ms` is the event time of the newest hit counted; `flushed_at_ms` the
    wall time of the last apply; `epoch` the fencing token of the owner;
    `key_rate_violations` the stats keys written again less than a second after
    the previous batch of the partition wrote them (see `KeyRateTracker`).
    """

    partition: int
    offset: int
    epoch: int
    as_of_ms: int | None = None
    flushed_at_ms: int | None = None
    batches: int = 0
    hits: int = 0
    kv_writes: int = 0
    key_rate_violations: int = 0


@dataclass(frozen=True)
class Snapshot:
    """A code's stats: total hits, first and last hit, hits per UTC day."""

    code: str
    hits: int
    first_ms: int
    last_ms: int
    daily: dict[str, int] = field(default_factory=dict)


class StatsStore(LeaseStore, Protocol):
    """Where BH2 writes. `apply` is the only write of stats and is atomic with the
    watermark and fenced by the epoch. Partitions are taken with `acquire` (one
    aggregator takes all) or with the lease primitives (workers share them)."""

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


class KeyRateTracker:
    """Counts stats keys written twice within `KEY_RATE_WINDOW_S` (the hosted-KV
    limit of one write per second per key), for a store to persist with each apply.

    Per partition it remembers the previous batch's rows and when they were
    written; a batch written less than the window after it costs one violation
    per code written by both. Cheap (a set intersection only when two batches
    are that close) and a lower bound: a code written by batches n and n+2 of
    one second is missed. With the aggregator's window >= 1 s, batches are never
    that close under steady traffic (catch-up and max_batch flushes can be).
    """

    def __init__(
        self, *, window_s: float = KEY_RATE_WINDOW_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._window_s = window_s
        self._clock = clock
        self._last: dict[int, tuple[float, Sequence[DeltaRow]]] = {}

    def now(self) -> float:
        return self._clock()

    def violations(self, partition: int, deltas: Sequence[DeltaRow], at: float) -> int:
        """Codes of `deltas` that the partition's previous batch wrote less than
        the window before `at`."""
        previous = self._last.get(partition)
        if previous is None or not deltas or at - previous[0] >= self._window_s:
            return 0
        before = {d[0] for d in previous[1]}
        return len(before & {d[0] for d in deltas})

    def record(self, partition: int, deltas: Sequence[DeltaRow], at: float) -> None:
        """Remember a committed batch (one that wrote no key changes nothing)."""
        if deltas:
            self._last[partition] = (at, deltas)
