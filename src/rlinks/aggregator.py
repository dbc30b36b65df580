"""BH2: read the HITS log after the watermark, fold, apply, repeat.

Each partition is owned under an epoch taken at start. Hits read since the last
apply are pending; a batch closes when `window` seconds have passed since the
last flush or `max_batch` hits are pending, whichever comes first. A lagging
aggregator therefore catches up with back-to-back full batches. The watermark
only moves inside `StatsStore.apply`, so a crash anywhere redoes the hits after
it and ends with exact counts.

Ownership: by default one aggregator takes every partition under a new epoch
(an older one still running is fenced out). With an `Ownership` (leases,
`run --partitions auto|LIST`) many workers share the partitions: each tick
renews leases, takes free partitions up to a fair share and hands back extras;
a partition whose apply is refused as stale was taken over, and is dropped
rather than fatal.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from rlinks.batch import Batch, DayCounts
from rlinks.crash import CrashPoints
from rlinks.errors import StaleEpochError, WatermarkMismatchError
from rlinks.leases import Ownership
from rlinks.log.base import HitLog, LogSlice
from rlinks.redisdb import transient_errors
from rlinks.settings import Settings
from rlinks.status import read_status
from rlinks.store.base import StatsStore

log = logging.getLogger(__name__)
RETRY_S = 1.0
ONCE_RETRIES = 10


@dataclass
class Counters:
    """What the aggregator has done since it started, and how far behind it is."""

    hits_read: int = 0
    batches: int = 0
    kv_writes: int = 0
    quarantined: int = 0  # records the log holds in quarantine (bad input never counted)
    lag_hits: int = 0
    lag_s: float = 0.0
    partitions_owned: int = 0
    store_outages: int = 0  # times the store could not be reached (then retried)
    partitions_lost: int = 0  # taken over by another worker (lease expired, stale epoch)


@dataclass
class _Partition:
    """One owned partition: its epoch, watermark and the hits read past it."""

    partition: int
    epoch: int
    watermark: int
    read_to: int
    flushed_at: float  # clock time of the last flush: the window counts from here
    pending: list[LogSlice] = field(default_factory=list)

    @property
    def pending_hits(self) -> int:
        return self.read_to - self.watermark

    def take_batch(self) -> Batch:
        codes = np.concatenate([s.code_ids for s in self.pending])
        ts = np.concatenate([s.ts_ms for s in self.pending])
        names = self.pending[-1].names  # the newest view of the code table covers all ids
        return Batch(
            partition=self.partition,
            epoch=self.epoch,
            start=self.watermark,
            end=self.read_to,
            deltas=DayCounts.of_hits(codes, ts).rows(names),
            max_ts_ms=int(ts.max()),
            hits=int(ts.size),
        )


class Aggregator:
    def __init__(
        self,
        log: HitLog,
        store: StatsStore,
        settings: Settings,
        *,
        on_flush: Callable[[Batch, Counters], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        ownership: Ownership | None = None,
    ) -> None:
        self._log = log
        self._store = store
        self._settings = settings
        self._crash = CrashPoints(settings.crash_at)
        self._on_flush = on_flush
        self._clock = clock
        self._stop = threading.Event()
        self._owned: list[_Partition] = []
        self._ownership = ownership
        self._next_tick = 0.0
        self.counters = Counters()

    def start(self) -> None:
        """Take every partition of the log under a new epoch (or, with an
        Ownership, the share the leases give)."""
        self._owned = []
        if self._ownership is not None:
            self._tick()
        else:
            for p in range(self._log.partitions):
                self._take(p, self._store.acquire(p))
        self.refresh_lag()

    def _take(self, partition: int, epoch: int) -> None:
        w = self._store.watermark(partition).offset
        self._owned.append(_Partition(partition, epoch, w, w, self._clock()))
        self.counters.partitions_owned = len(self._owned)
        log.info("partition %d: epoch %d, watermark %d", partition, epoch, w)

    def _drop(self, partition: int, why: str, *, level: int = logging.WARNING) -> None:
        """Forget a partition (its pending hits were never applied)."""
        self._owned = [p for p in self._owned if p.partition != partition]
        self.counters.partitions_owned = len(self._owned)
        log.log(level, "partition %d: %s", partition, why)

    def _tick(self) -> None:
        """Renew leases and rebalance (every third of the lease period)."""
        assert self._ownership is not None
        changes = self._ownership.tick()
        for p in changes.lost:
            self.counters.partitions_lost += 1
            self._drop(p, "lease lost to another worker; its pending hits are theirs now")
        for p, epoch in sorted(changes.gained.items()):
            self._take(p, epoch)
        for p in changes.surplus:
            part = next(x for x in self._owned if x.partition == p)
            if part.pending:
                self._flush_partition(part)
            self._ownership.release(p)
            self._drop(p, "handed back for another worker (rebalancing)", level=logging.INFO)
        self._next_tick = self._clock() + self._ownership.renew_every_s

    def stop(self) -> None:
        """Ask `run` to flush what it holds and return (safe from a signal handler)."""
        self._stop.set()

    def run(self, *, once: bool = False) -> Counters:
        """Aggregate until stopped; with `once`, until the log is drained.

        When the store cannot be reached (Redis restarting, a network cut) it
        waits and starts again from the stored watermarks: what it held but
        had not applied is simply read again. `once` gives up after a few tries.
        """
        outages = 0
        try:
            while True:
                try:
                    if not self._owned:
                        self.start()
                    return self._loop(once=once)
                except transient_errors() as e:
                    outages += 1
                    self.counters.store_outages += 1
                    if once and outages > ONCE_RETRIES:
                        raise
                    log.warning("store unavailable (%s); retrying in %.0f s", e, RETRY_S)
                    if self._stop.wait(RETRY_S):
                        return self.counters
                    self._owned = []
                    if self._ownership is not None:
                        self._ownership.owned.clear()
        finally:
            if self._ownership is not None:
                with contextlib.suppress(*transient_errors()):
                    self._ownership.release_all()

    def _loop(self, *, once: bool) -> Counters:
        while not self._stop.is_set():
            if self._ownership is not None and self._clock() >= self._next_tick:
                self._tick()
            progressed = self._read_all()
            if once and not progressed:
                self.flush()
                # A flush refused as out of place rewinds to the stored
                # watermark; whatever that left unread is read again.
                if self._read_all():
                    continue
                break
            now = self._clock()
            due = [
                p
                for p in self._owned
                if p.pending and now - p.flushed_at >= self._settings.window_s
            ]
            for part in due:
                self._flush_partition(part)
            if due:
                self.refresh_lag()
            if not progressed:
                self._stop.wait(self._settings.poll_s)
        self.flush()
        return self.counters

    def _read_all(self) -> bool:
        """Read each partition up to max_batch pending; flush full ones."""
        progressed = False
        for part in list(self._owned):
            room = self._settings.max_batch - part.pending_hits
            if room > 0:
                piece = self._log.read(part.partition, part.read_to, room)
                self._crash.reach("after_read")
                if len(piece):
                    part.pending.append(piece)
                    part.read_to = piece.end
                    self.counters.hits_read += len(piece)
                    progressed = True
            if part.pending_hits >= self._settings.max_batch:
                self._flush_partition(part)
        return progressed

    def flush(self) -> None:
        """Apply every partition's pending hits."""
        for part in list(self._owned):
            if part.pending:
                self._flush_partition(part)
        self.refresh_lag()

    def _flush_partition(self, part: _Partition) -> None:
        batch = part.take_batch()
        self._crash.reach("after_fold")
        try:
            self._store.apply(batch, before_commit=lambda: self._crash.reach("before_commit"))
        except StaleEpochError as e:
            if self._ownership is None:
                raise
            # A lease-holding worker that was paused past its lease: someone
            # else owns the partition now. Nothing was written; let it go.
            self.counters.partitions_lost += 1
            self._ownership.owned.discard(part.partition)
            self._drop(part.partition, f"{e}")
            return
        except WatermarkMismatchError as e:
            # Someone else moved the watermark under our epoch: never guess, re-read.
            log.warning("%s", e)
            part.watermark = part.read_to = self._store.watermark(part.partition).offset
            part.pending.clear()
            return
        self._crash.reach("after_commit")
        part.watermark = batch.end
        part.flushed_at = self._clock()
        part.pending.clear()
        self.counters.batches += 1
        self.counters.kv_writes += batch.codes
        if self._on_flush is not None:
            self._on_flush(batch, self.counters)

    def refresh_lag(self) -> None:
        parts = read_status(self._log, self._store)
        self.counters.lag_hits = sum(p.lag_hits for p in parts)
        self.counters.lag_s = max((p.lag_s for p in parts), default=0.0)
        self.counters.quarantined = self._log.quarantined()
