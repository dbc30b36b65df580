"""The Aggregator in process: draining, batching, write counts, lag, re-reading."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence

import pytest

from rlinks.aggregator import Aggregator, Counters
from rlinks.batch import Batch, fold
from rlinks.hits import Hit
from rlinks.settings import Settings
from rlinks.store.base import Snapshot, StatsStore, Watermark
from rlinks.verify import differences
from tests.conftest import (
    BASE_MS,
    Backend,
    FakeClock,
    hit,
    make_hits,
    recount,
    snapshots,
    wait_until,
)


class RecordingStore:
    """The real store, with every batch passed to `apply` recorded (no behaviour changed)."""

    def __init__(self, inner: StatsStore) -> None:
        self.inner = inner
        self.applied: list[Batch] = []

    def acquire(self, partition: int) -> int:
        return self.inner.acquire(partition)

    def watermark(self, partition: int) -> Watermark:
        return self.inner.watermark(partition)

    def watermarks(self) -> list[Watermark]:
        return self.inner.watermarks()

    def apply(self, batch: Batch, *, before_commit: Callable[[], None] | None = None) -> None:
        self.inner.apply(batch, before_commit=before_commit)
        self.applied.append(batch)

    def snapshot(self, code: str) -> Snapshot | None:
        return self.inner.snapshot(code)

    def snapshots(self) -> Iterator[Snapshot]:
        return self.inner.snapshots()

    def reset(self, partitions: int) -> dict[int, int]:
        return self.inner.reset(partitions)

    def try_lease(self, partition: int, owner: str, ttl_ms: int) -> int | None:
        return self.inner.try_lease(partition, owner, ttl_ms)

    def renew_lease(self, partition: int, owner: str, ttl_ms: int) -> bool:
        return self.inner.renew_lease(partition, owner, ttl_ms)

    def release_lease(self, partition: int, owner: str) -> None:
        self.inner.release_lease(partition, owner)

    def heartbeat(self, worker: str, ttl_ms: int) -> list[str]:
        return self.inner.heartbeat(worker, ttl_ms)

    def close(self) -> None:
        self.inner.close()


def settings_for(backend: Backend, **kw: float) -> Settings:
    return Settings(data_dir=backend.root, **kw)  # type: ignore[arg-type]


def spans(batches: Sequence[Batch]) -> list[tuple[int, int]]:
    return [(b.start, b.end) for b in batches]


def test_run_once_drains_the_log(backend: Backend) -> None:
    """run(once=True) counts every logged hit exactly and leaves no lag."""
    log, store = backend.log(), backend.store()
    hits = make_hits(3000, seed=1)
    log.append(hits[:1000])
    log.append(hits[1000:])
    counters = Aggregator(backend.log(), store, settings_for(backend)).run(once=True)
    assert counters.hits_read == 3000
    assert counters.lag_hits == 0 and counters.lag_s == 0.0
    assert snapshots(store) == recount(hits)
    assert store.watermark(0).offset == 3000
    assert differences(log, store) == []


def test_run_once_on_an_empty_log_applies_nothing(backend: Backend) -> None:
    """With nothing logged, a run takes the epoch but writes no stats and no batch."""
    backend.log()
    store = RecordingStore(backend.store())
    counters = Aggregator(backend.log(), store, settings_for(backend)).run(once=True)
    assert (counters.hits_read, counters.batches, counters.kv_writes) == (0, 0, 0)
    assert store.applied == []
    assert store.watermark(0).offset == 0 and store.watermark(0).epoch == 1


def test_a_second_run_counts_only_new_hits(backend: Backend) -> None:
    """Hits appended after a run are counted by the next run, the old ones not again."""
    log, store = backend.log(), backend.store()
    first, second = make_hits(500, seed=1), make_hits(300, seed=2, start=500)
    log.append(first)
    Aggregator(backend.log(), store, settings_for(backend)).run(once=True)
    log.append(second)
    counters = Aggregator(backend.log(), store, settings_for(backend)).run(once=True)
    assert counters.hits_read == 300
    assert snapshots(store) == recount(first + second)


def test_max_batch_cuts_full_batches(backend: Backend) -> None:
    """With a frozen clock, batches are exactly max_batch hits, then the remainder."""
    log = backend.log()
    hits = make_hits(2500, seed=4)
    log.append(hits[:700])
    log.append(hits[700:])
    store = RecordingStore(backend.store())
    agg = Aggregator(backend.log(), store, settings_for(backend, max_batch=1000), clock=FakeClock())
    counters = agg.run(once=True)
    assert spans(store.applied) == [(0, 1000), (1000, 2000), (2000, 2500)]
    assert [b.hits for b in store.applied] == [1000, 1000, 500]
    assert counters.batches == 3
    assert snapshots(store) == recount(hits)


def test_window_zero_flushes_every_read(backend: Backend) -> None:
    """With window 0 each read is flushed at once; the stats are still exact."""
    log = backend.log()
    hits = make_hits(90, seed=5)
    log.append(hits)
    store = RecordingStore(backend.store())
    agg = Aggregator(backend.log(), store, settings_for(backend, window_s=0.0, max_batch=40))
    agg.run(once=True)
    assert spans(store.applied) == [(0, 40), (40, 80), (80, 90)]
    assert snapshots(store) == recount(hits)


def test_kv_writes_equal_distinct_codes_per_batch(backend: Backend) -> None:
    """Each batch writes only the codes it has hits for, once each, whatever the days."""
    log = backend.log()
    # Codes change between stretches of the log, so later batches miss some codes.
    hits = (
        make_hits(400, codes=["a", "b"], seed=1)
        + make_hits(400, codes=["c"], seed=2, start=400)
        + make_hits(400, codes=["a", "d", "e"], seed=3, start=800)
    )
    log.append(hits)
    store = RecordingStore(backend.store())
    agg = Aggregator(backend.log(), store, settings_for(backend, max_batch=300), clock=FakeClock())
    counters = agg.run(once=True)
    assert len(store.applied) == 4
    total = 0
    for b in store.applied:
        in_batch = hits[b.start : b.end]
        written = {d[0] for d in b.deltas}
        assert written == {h.code for h in in_batch}
        assert b.codes == len(written)
        # one delta per (code, UTC day) that changed, no more
        assert len(b.deltas) == len({(h.code, h.ts_ms // 86_400_000) for h in in_batch})
        total += b.codes
    assert [b.codes for b in store.applied] == [2, 3, 4, 3]  # ab | ab+c | c+ade | ade
    assert counters.kv_writes == total
    assert store.watermark(0).kv_writes == total
    assert snapshots(store) == recount(hits)


def test_codes_without_new_hits_are_not_written(backend: Backend) -> None:
    """A batch of one code's hits leaves every other code's snapshot untouched."""
    log, store = backend.log(), backend.store()
    old = make_hits(200, seed=1)
    log.append(old)
    Aggregator(backend.log(), store, settings_for(backend)).run(once=True)
    before = snapshots(store)
    log.append([hit(f"new-{i}", BASE_MS + i, "a") for i in range(5)])
    recording = RecordingStore(store)
    counters = Aggregator(backend.log(), recording, settings_for(backend)).run(once=True)
    assert [b.codes for b in recording.applied] == [1]
    assert counters.kv_writes == 1
    after = snapshots(store)
    assert {c for c in after if after[c] != before.get(c)} == {"a"}


def test_lag_counters_follow_the_log(backend: Backend) -> None:
    """lag_hits and lag_s measure the log's end against the watermark."""
    log, store = backend.log(), backend.store()
    log.append([hit(str(i), BASE_MS + i * 1000, "a") for i in range(100)])
    agg = Aggregator(backend.log(), store, settings_for(backend))
    agg.start()
    assert agg.counters.lag_hits == 100
    agg.run(once=True)
    assert (agg.counters.lag_hits, agg.counters.lag_s) == (0, 0.0)
    # 10 newer hits, the newest 60 s of event time after the last counted one
    log.append([hit(f"n{i}", BASE_MS + 99_000 + (i + 1) * 6000, "b") for i in range(10)])
    agg.refresh_lag()
    assert agg.counters.lag_hits == 10
    assert agg.counters.lag_s == pytest.approx(60.0)
    agg.run(once=True)
    assert (agg.counters.lag_hits, agg.counters.lag_s) == (0, 0.0)


def test_on_flush_reports_each_batch_with_counters(backend: Backend) -> None:
    """on_flush is called once per applied batch, with counters already updated."""
    log = backend.log()
    log.append(make_hits(250, seed=7))
    seen: list[tuple[int, int, int]] = []

    def on_flush(batch: Batch, counters: Counters) -> None:
        seen.append((batch.end, counters.batches, counters.hits_read))

    agg = Aggregator(
        backend.log(),
        backend.store(),
        settings_for(backend, max_batch=100),
        on_flush=on_flush,
        clock=FakeClock(),
    )
    agg.run(once=True)
    assert [(end, n) for end, n, _ in seen] == [(100, 1), (200, 2), (250, 3)]
    assert all(read >= end for end, _, read in seen)


def test_window_flushes_in_a_continuous_run(backend: Backend) -> None:
    """A running aggregator holds hits until the window passes or max_batch fills."""
    log, store = backend.log(), backend.store()
    clock = FakeClock()
    agg = Aggregator(
        backend.log(),
        backend.store(),
        settings_for(backend, window_s=10.0, max_batch=60, poll_s=0.005),
        clock=clock,
    )
    done: list[Counters] = []
    thread = threading.Thread(target=lambda: done.append(agg.run()), daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: store.watermark(0).epoch == 1)
        hits = make_hits(130, seed=8)
        log.append(hits[:30])
        assert wait_until(lambda: agg.counters.hits_read == 30)
        assert store.watermark(0).offset == 0  # held: the window has not passed
        clock.advance(10.0)
        assert wait_until(lambda: store.watermark(0).offset == 30)
        log.append(hits[30:])  # 100 more with the clock frozen: one full batch of 60
        assert wait_until(lambda: agg.counters.hits_read == 130)
        assert wait_until(lambda: store.watermark(0).offset == 90)
        assert store.watermark(0).offset == 90  # 40 pending, under max_batch
        clock.advance(10.0)
        assert wait_until(lambda: store.watermark(0).offset == 130)
        assert agg.counters.batches == 3
    finally:
        agg.stop()
        thread.join(timeout=20)
    assert not thread.is_alive()
    assert snapshots(store) == recount(hits)


def test_stop_flushes_pending_hits(backend: Backend) -> None:
    """stop() makes a running aggregator apply what it holds before returning."""
    log, store = backend.log(), backend.store()
    agg = Aggregator(
        backend.log(),
        backend.store(),
        settings_for(backend, window_s=1e9, poll_s=0.005),
        clock=FakeClock(),
    )
    thread = threading.Thread(target=agg.run, daemon=True)
    thread.start()
    hits = make_hits(77, seed=9)
    log.append(hits)
    try:
        assert wait_until(lambda: agg.counters.hits_read == 77)
        assert store.watermark(0).offset == 0
    finally:
        agg.stop()
        thread.join(timeout=20)
    assert store.watermark(0).offset == 77
    assert snapshots(store) == recount(hits)


def _move_watermark_underneath(backend: Backend, hits: list[Hit], upto: int) -> None:
    """Apply hits (0, upto] from another connection under the current epoch."""
    other = backend.store()
    epoch = other.watermark(0).epoch
    names = sorted({h.code for h in hits[:upto]})
    other.apply(
        Batch(
            0,
            epoch,
            0,
            upto,
            fold([names.index(h.code) for h in hits[:upto]], [h.ts_ms for h in hits[:upto]], names),
            max(h.ts_ms for h in hits[:upto]),
            upto,
        )
    )


def test_a_watermark_moved_underneath_is_reread_not_double_counted(backend: Backend) -> None:
    """After a WatermarkMismatchError the aggregator re-reads from the store's watermark."""
    log, store = backend.log(), backend.store()
    hits = make_hits(100, seed=10)
    agg = Aggregator(backend.log(), store, settings_for(backend, max_batch=30), clock=FakeClock())
    agg.start()
    log.append(hits)
    _move_watermark_underneath(backend, hits, 40)
    agg.run(once=True)
    assert snapshots(store) == recount(hits)
    assert store.watermark(0).offset == 100
    assert differences(log, store) == []


def test_a_mismatch_refuses_the_batch_and_resets_to_the_watermark(backend: Backend) -> None:
    """The refused batch changes nothing; a later run counts exactly what is left."""
    log, store = backend.log(), backend.store()
    hits = make_hits(100, seed=11)
    agg = Aggregator(backend.log(), store, settings_for(backend), clock=FakeClock())
    agg.start()
    log.append(hits)
    _move_watermark_underneath(backend, hits, 40)
    agg.run(once=True)  # its one batch (0, 100] meets watermark 40 and is refused
    assert differences(log, store) == []
    assert sum(s.hits for s in store.snapshots()) == store.watermark(0).offset
    agg.run(once=True)
    assert snapshots(store) == recount(hits)
    assert store.watermark(0).offset == 100


def test_run_once_still_drains_after_a_mismatch_at_the_last_flush(backend: Backend) -> None:
    """run(once=True) drains the log even when its last flush meets a moved watermark."""
    log, store = backend.log(), backend.store()
    hits = make_hits(100, seed=12)
    agg = Aggregator(backend.log(), store, settings_for(backend), clock=FakeClock())
    agg.start()
    log.append(hits)
    _move_watermark_underneath(backend, hits, 40)
    counters = agg.run(once=True)
    assert store.watermark(0).offset == 100
    assert counters.lag_hits == 0
    assert snapshots(store) == recount(hits)


def test_every_partition_is_drained_exactly(backend: Backend) -> None:
    """With 3 partitions, each watermark reaches its partition's end and counts are exact."""
    log = backend.log(partitions=3)
    hits = make_hits(2000, codes=[f"p{i}" for i in range(30)], seed=13)
    log.append(hits[:1200])
    log.append(hits[1200:])
    store = RecordingStore(backend.store())
    counters = Aggregator(backend.log(), store, settings_for(backend, max_batch=250)).run(once=True)
    assert counters.hits_read == 2000 and counters.lag_hits == 0
    for p in range(3):
        assert store.watermark(p).offset == log.end(p).offset > 0
        assert store.watermark(p).epoch == 1
    assert {b.partition for b in store.applied} == {0, 1, 2}
    assert all(b.hits <= 250 for b in store.applied)
    assert snapshots(store) == recount(hits)
    assert differences(log, store) == []


def test_extreme_timestamps_and_many_codes_count_exactly(backend: Backend) -> None:
    """Hits at the Unix epoch, at 9999-12-31 and over thousands of codes fold exactly."""
    log = backend.log()
    top = 253_402_300_799_999  # 9999-12-31T23:59:59.999Z
    edges = [0, 1, 86_399_999, 86_400_000, BASE_MS, top - 86_400_000, top]
    hits = [hit(f"e{i}", edges[i % len(edges)], f"k{i % 5003}") for i in range(12_000)]
    log.append(hits)
    store = backend.store()
    Aggregator(backend.log(), store, settings_for(backend, max_batch=5000)).run(once=True)
    assert snapshots(store) == recount(hits)
    assert store.watermark(0).as_of_ms == top


def test_the_window_counts_from_the_last_flush_of_any_kind(backend: Backend) -> None:
    """After a max_batch flush, the next window flush waits a whole window from it."""
    log, store = backend.log(), backend.store()
    clock = FakeClock()
    agg = Aggregator(
        backend.log(),
        backend.store(),
        settings_for(backend, window_s=10.0, max_batch=60, poll_s=0.005),
        clock=clock,
    )
    thread = threading.Thread(target=agg.run, daemon=True)
    thread.start()
    hits = make_hits(70, seed=14)
    try:
        assert wait_until(lambda: store.watermark(0).epoch == 1)
        clock.advance(9.0)
        log.append(hits[:60])  # a full batch: flushed at t=9
        assert wait_until(lambda: store.watermark(0).offset == 60)
        log.append(hits[60:])
        assert wait_until(lambda: agg.counters.hits_read == 70)
        clock.advance(1.0)  # t=10: a window since the start, 1 s since the last flush
        assert not wait_until(lambda: store.watermark(0).offset == 70, timeout=0.3)
        clock.advance(9.0)  # t=19: a window since the last flush
        assert wait_until(lambda: store.watermark(0).offset == 70)
    finally:
        agg.stop()
        thread.join(timeout=20)
    assert snapshots(store) == recount(hits)
