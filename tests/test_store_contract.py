"""The StatsStore contract, over every backend."""

from __future__ import annotations

import pytest

from rlinks.batch import Batch, DayDelta, fold
from rlinks.errors import StaleEpochError, WatermarkMismatchError
from rlinks.hits import Hit
from rlinks.store.base import StatsStore
from rlinks.timefmt import MS_PER_DAY
from tests.conftest import BASE_MS, Backend, hit, make_hits, recount, snapshots

DAY0 = BASE_MS // MS_PER_DAY


def batch_of(hits: list[Hit], *, epoch: int, start: int, partition: int = 0) -> Batch:
    """The Batch covering `hits` at offsets (start, start + len(hits)]."""
    names = sorted({h.code for h in hits})
    ids = [names.index(h.code) for h in hits]
    return Batch(
        partition=partition,
        epoch=epoch,
        start=start,
        end=start + len(hits),
        deltas=fold(ids, [h.ts_ms for h in hits], names),
        max_ts_ms=max((h.ts_ms for h in hits), default=None),
        hits=len(hits),
    )


def state(store: StatsStore) -> tuple[object, ...]:
    """Everything a failed apply must leave alone: snapshots and watermarks."""
    return (snapshots(store), store.watermarks())


def test_acquire_returns_increasing_epochs(backend: Backend) -> None:
    """Each acquire of a partition returns a higher epoch; partitions are independent."""
    store = backend.store()
    e1, e2 = store.acquire(0), store.acquire(0)
    assert 0 < e1 < e2
    assert backend.store().acquire(0) > e2  # another connection continues the sequence
    assert store.acquire(1) >= 1
    assert store.watermark(0).epoch == e2 + 1
    assert [w.partition for w in store.watermarks()] == [0, 1]


def test_a_fresh_partition_has_watermark_zero(backend: Backend) -> None:
    """Before any apply a partition's watermark is offset 0 with no event time."""
    store = backend.store()
    w = store.watermark(0)
    assert (w.partition, w.offset, w.as_of_ms, w.hits, w.batches) == (0, 0, None, 0, 0)
    store.acquire(0)
    assert store.watermark(0).offset == 0


def test_apply_commits_deltas_and_watermark_together(backend: Backend) -> None:
    """After apply, the stats hold the batch's hits and the watermark is its end."""
    store = backend.store()
    epoch = store.acquire(0)
    hits = make_hits(50)
    b = batch_of(hits, epoch=epoch, start=0)
    store.apply(b)
    assert snapshots(store) == recount(hits)
    w = store.watermark(0)
    assert (w.offset, w.epoch, w.as_of_ms) == (50, epoch, max(h.ts_ms for h in hits))
    assert (w.batches, w.hits, w.kv_writes) == (1, 50, b.codes)
    assert w.flushed_at_ms is not None
    more = make_hits(30, start=50, seed=1)
    b2 = batch_of(more, epoch=epoch, start=50)
    store.apply(b2)
    assert snapshots(store) == recount(hits + more)
    w = store.watermark(0)
    assert (w.offset, w.batches, w.hits, w.kv_writes) == (80, 2, 80, b.codes + b2.codes)


def test_a_second_connection_sees_the_applied_stats(backend: Backend) -> None:
    """What one store object applied is what another one reads."""
    writer, reader = backend.store(), backend.store()
    hits = make_hits(20)
    writer.apply(batch_of(hits, epoch=writer.acquire(0), start=0))
    assert snapshots(reader) == recount(hits)
    assert reader.watermark(0).offset == 20


def test_a_stale_epoch_is_refused_and_changes_nothing(backend: Backend) -> None:
    """An apply under an old epoch raises StaleEpochError; stats and watermark are untouched."""
    store = backend.store()
    old = store.acquire(0)
    store.apply(batch_of(make_hits(10), epoch=old, start=0))
    new = backend.store().acquire(0)
    before = state(store)
    with pytest.raises(StaleEpochError) as e:
        store.apply(batch_of(make_hits(5, start=10, seed=2), epoch=old, start=10))
    assert (e.value.partition, e.value.epoch, e.value.current) == (0, old, new)
    assert f"epoch {old}" in str(e.value)
    assert state(store) == before


def test_stale_epoch_wins_over_a_watermark_mismatch(backend: Backend) -> None:
    """A batch wrong in both epoch and start is refused as stale (fencing first)."""
    store = backend.store()
    old = store.acquire(0)
    store.acquire(0)
    before = state(store)
    with pytest.raises(StaleEpochError):
        store.apply(batch_of(make_hits(3), epoch=old, start=7))
    assert state(store) == before


def test_a_replay_is_refused_as_already_applied(backend: Backend) -> None:
    """Applying a batch again raises WatermarkMismatchError(already_applied) and changes nothing."""
    store = backend.store()
    epoch = store.acquire(0)
    first = batch_of(make_hits(10), epoch=epoch, start=0)
    second = batch_of(make_hits(10, start=10, seed=1), epoch=epoch, start=10)
    store.apply(first)
    store.apply(second)
    before = state(store)
    for replay in (first, second):
        with pytest.raises(WatermarkMismatchError) as e:
            store.apply(replay)
        assert e.value.already_applied
        assert (e.value.start, e.value.end, e.value.watermark) == (replay.start, replay.end, 20)
        assert state(store) == before


def test_a_batch_past_the_watermark_is_refused(backend: Backend) -> None:
    """A batch that would skip or overlap hits is refused, not applied."""
    store = backend.store()
    epoch = store.acquire(0)
    store.apply(batch_of(make_hits(10), epoch=epoch, start=0))
    before = state(store)
    for start, n in ((11, 5), (5, 10), (9, 2)):
        with pytest.raises(WatermarkMismatchError) as e:
            store.apply(batch_of(make_hits(n, start=start, seed=start), epoch=epoch, start=start))
        assert not e.value.already_applied
        assert state(store) == before


def test_snapshots_fold_per_day_rows(backend: Backend) -> None:
    """A snapshot sums hits over days, takes min first / max last, and counts per UTC day."""
    store = backend.store()
    epoch = store.acquire(0)
    midnight = BASE_MS + MS_PER_DAY
    store.apply(
        Batch(
            0,
            epoch,
            0,
            6,
            [
                DayDelta("k", DAY0, 2, BASE_MS + 10, midnight - 1),
                DayDelta("k", DAY0 + 1, 3, midnight, midnight + 500),
                DayDelta("j", DAY0 + 2, 1, midnight + MS_PER_DAY, midnight + MS_PER_DAY),
            ],
            midnight + MS_PER_DAY,
            6,
        )
    )
    store.apply(
        Batch(
            0,
            epoch,
            6,
            8,
            [DayDelta("k", DAY0, 2, BASE_MS + 5, BASE_MS + 20)],
            BASE_MS + 20,
            2,
        )
    )
    k = store.snapshot("k")
    assert k is not None
    assert (k.hits, k.first_ms, k.last_ms) == (7, BASE_MS + 5, midnight + 500)
    assert k.daily == {"2025-11-24": 4, "2025-11-25": 3}
    j = store.snapshot("j")
    assert j is not None and j.daily == {"2025-11-26": 1}
    assert store.snapshot("nope") is None
    assert [s.code for s in store.snapshots()] == ["j", "k"]
    # as_of is the newest event time ever counted, not the last batch's
    assert store.watermark(0).as_of_ms == midnight + MS_PER_DAY


def test_hits_at_midnight_count_on_the_new_day(backend: Backend) -> None:
    """A hit exactly at 00:00:00.000 UTC belongs to that day; 1 ms before to the previous."""
    store = backend.store()
    midnight = BASE_MS + 2 * MS_PER_DAY
    hits = [hit("1", midnight, "m"), hit("2", midnight - 1, "m"), hit("3", midnight, "m")]
    store.apply(batch_of(hits, epoch=store.acquire(0), start=0))
    snap = store.snapshot("m")
    assert snap is not None
    assert snap.daily == {"2025-11-25": 1, "2025-11-26": 2}
    assert (snap.first_ms, snap.last_ms) == (midnight - 1, midnight)


def test_snapshots_are_ordered_by_code(backend: Backend) -> None:
    """snapshots() yields every code once, sorted by code."""
    store = backend.store()
    codes = ["zz", "a", "m-1", "0", "b"]
    hits = [hit(str(i), BASE_MS + i * 3_600_000, codes[i % 5]) for i in range(60)]
    store.apply(batch_of(hits, epoch=store.acquire(0), start=0))
    assert [s.code for s in store.snapshots()] == sorted(codes)
    assert snapshots(store) == recount(hits)


def test_reset_clears_stats_and_bumps_epochs(backend: Backend) -> None:
    """reset() drops every stat, zeroes each watermark and returns new, higher epochs."""
    store = backend.store()
    e0 = store.acquire(0)
    e1 = store.acquire(1)
    store.apply(batch_of(make_hits(10), epoch=e0, start=0))
    store.apply(batch_of(make_hits(5, codes=["p1"], prefix="q"), epoch=e1, start=0, partition=1))
    epochs = store.reset(3)
    assert epochs[0] > e0 and epochs[1] > e1 and epochs[2] >= 1
    assert list(store.snapshots()) == []
    for p in range(3):
        w = store.watermark(p)
        assert (w.offset, w.epoch, w.as_of_ms, w.batches, w.hits, w.kv_writes) == (
            0,
            epochs[p],
            None,
            0,
            0,
            0,
        )
    with pytest.raises(StaleEpochError):  # the owner before the reset is fenced out
        store.apply(batch_of(make_hits(3, start=10), epoch=e0, start=0))
    store.apply(batch_of(make_hits(4), epoch=epochs[0], start=0))
    assert sum(s.hits for s in store.snapshots()) == 4


def test_an_error_before_commit_rolls_everything_back(backend: Backend) -> None:
    """An exception from before_commit leaves stats and watermark as they were."""
    store = backend.store()
    epoch = store.acquire(0)
    hits = make_hits(10)
    store.apply(batch_of(hits, epoch=epoch, start=0))
    before = state(store)
    more = make_hits(10, start=10, seed=3)
    called = []

    def boom() -> None:
        called.append(True)
        raise RuntimeError("crash inside the transaction")

    with pytest.raises(RuntimeError):
        store.apply(batch_of(more, epoch=epoch, start=10), before_commit=boom)
    assert called == [True]
    assert state(store) == before
    assert state(backend.store()) == before
    store.apply(batch_of(more, epoch=epoch, start=10))  # the store is still usable
    assert snapshots(store) == recount(hits + more)


def test_before_commit_runs_inside_the_transaction(backend: Backend) -> None:
    """While before_commit runs, other connections still see the old stats."""
    store, other = backend.store(), backend.store()
    epoch = store.acquire(0)
    seen = []
    store.apply(
        batch_of(make_hits(5), epoch=epoch, start=0),
        before_commit=lambda: seen.append((other.watermark(0).offset, snapshots(other))),
    )
    assert seen == [(0, {})]
    assert other.watermark(0).offset == 5


def test_an_empty_batch_keeps_the_watermark_event_time(backend: Backend) -> None:
    """Applying a batch with no hits leaves as_of_ms at the newest hit counted."""
    store = backend.store()
    epoch = store.acquire(0)
    hits = make_hits(5)
    store.apply(batch_of(hits, epoch=epoch, start=0))
    store.apply(Batch(0, epoch, 5, 5, [], None, 0))
    assert store.watermark(0).offset == 5
    assert store.watermark(0).as_of_ms == max(h.ts_ms for h in hits)


def test_apply_never_commits_deltas_without_the_watermark(backend: Backend) -> None:
    """Without acquire, an apply either is refused or moves the watermark with the deltas."""
    store = backend.store()
    hits = make_hits(4)
    b = batch_of(hits, epoch=0, start=0)
    try:
        store.apply(b)
    except StaleEpochError:
        assert list(store.snapshots()) == []
        return
    assert store.watermark(0).offset == 4
    with pytest.raises(WatermarkMismatchError):
        store.apply(b)
    assert snapshots(store) == recount(hits)
