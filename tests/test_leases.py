"""Leases: workers share partitions; the lease decides who works, the epoch keeps counts exact."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence

import pytest

from rlinks.aggregator import Aggregator
from rlinks.batch import Batch, fold
from rlinks.errors import ConfigError, StaleEpochError
from rlinks.hits import Hit
from rlinks.leases import Ownership, parse_partitions
from rlinks.log.base import HitLog, partition_of
from rlinks.settings import Settings
from rlinks.store.base import StatsStore
from rlinks.verify import differences
from tests.conftest import (
    Backend,
    FakeClock,
    FrozenClock,
    make_hits,
    recount,
    snapshots,
    wait_until,
)

LONG_MS = 60_000  # a lease that cannot expire during a test
SHORT_MS = 200  # a lease a test waits out
LEASE_S = 1.0  # Ownership leases in the balancing and aggregator tests


def take_when_free(store: StatsStore, partition: int, owner: str, ttl_ms: int) -> int:
    """Poll try_lease until the partition is free (a refused try changes nothing): the epoch."""
    got: list[int] = []

    def attempt() -> bool:
        epoch = store.try_lease(partition, owner, ttl_ms)
        if epoch is not None:
            got.append(epoch)
        return epoch is not None

    assert wait_until(attempt, timeout=10.0), f"partition {partition} never became free"
    return got[0]


def batch_of(log: HitLog, partition: int, epoch: int, after: int, limit: int) -> Batch:
    """The batch of the log's hits after offset `after` (at most `limit`), under `epoch`."""
    piece = log.read(partition, after, limit)
    assert len(piece) > 0
    return Batch(
        partition=partition,
        epoch=epoch,
        start=piece.start,
        end=piece.end,
        deltas=fold(piece.code_ids, piece.ts_ms, piece.names),
        max_ts_ms=piece.max_ts_ms,
        hits=len(piece),
    )


def settings_for(backend: Backend, **kw: float) -> Settings:
    return Settings(data_dir=backend.root, **kw)  # type: ignore[arg-type]


def in_thread(agg: Aggregator, errors: list[BaseException]) -> threading.Thread:
    """Run `agg` until stopped in a daemon thread; whatever it raises goes to `errors`."""

    def run() -> None:
        try:
            agg.run()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def caught_up(log: HitLog, store: StatsStore) -> Callable[[], bool]:
    """True once every partition's watermark is at the end of the log."""
    return lambda: all(
        store.watermark(p).offset == log.end(p).offset for p in range(log.partitions)
    )


def spread_codes(n: int = 40) -> list[str]:
    return [f"c{i:02d}" for i in range(n)]


# -- the lease primitives ------------------------------------------------------------


def test_try_lease_takes_a_free_partition_under_a_higher_epoch(backend: Backend) -> None:
    """try_lease on a free partition bumps the epoch past acquire()'s, and sets a watermark
    an apply under that epoch is accepted at (also on a partition never touched before)."""
    log = backend.log(partitions=2)
    hits = make_hits(50, codes=spread_codes(), seed=1)
    log.append(hits)
    store = backend.store()
    acquired = store.acquire(0)
    leased = store.try_lease(0, "a", LONG_MS)
    assert leased is not None and leased > acquired
    assert store.watermark(0).epoch == leased
    fresh = store.try_lease(1, "a", LONG_MS)  # nobody ever acquired partition 1
    assert fresh is not None and fresh >= 1
    assert store.watermark(1).epoch == fresh and store.watermark(1).offset == 0
    for p, epoch in ((0, leased), (1, fresh)):
        store.apply(batch_of(log, p, epoch, 0, 1000))
    assert snapshots(store) == recount(hits)
    assert differences(log, store) == []


def test_a_live_lease_refuses_other_owners_and_the_owner_may_retake_it(backend: Backend) -> None:
    """While A's lease is live B gets None (changing nothing); A may take it again under a
    new epoch; renew is True for A and False for B."""
    a, b = backend.store(), backend.store()
    first = a.try_lease(0, "A", LONG_MS)
    assert first is not None
    assert b.try_lease(0, "B", LONG_MS) is None
    assert b.watermark(0).epoch == first  # a refused try does not bump the epoch
    again = a.try_lease(0, "A", LONG_MS)
    assert again is not None and again > first
    assert a.renew_lease(0, "A", LONG_MS) is True
    assert b.renew_lease(0, "B", LONG_MS) is False
    assert b.try_lease(0, "B", LONG_MS) is None  # B's failed renew took nothing either
    assert a.watermark(0).epoch == again


def test_renew_extends_the_lease_from_now(backend: Backend) -> None:
    """A short lease renewed with a long ttl outlives its first ttl."""
    a, b = backend.store(), backend.store()
    assert a.try_lease(0, "A", SHORT_MS) is not None
    assert a.renew_lease(0, "A", LONG_MS) is True
    time.sleep(SHORT_MS / 1000 * 2)
    assert b.try_lease(0, "B", LONG_MS) is None
    assert a.renew_lease(0, "A", LONG_MS) is True


def test_an_expired_lease_goes_to_the_next_owner_and_the_old_one_cannot_renew(
    backend: Backend,
) -> None:
    """After the ttl another owner takes the partition under a higher epoch; then the first
    owner's renew is False and its release leaves the new owner's lease in place."""
    a, b, c = backend.store(), backend.store(), backend.store()
    first = a.try_lease(0, "A", SHORT_MS)
    assert first is not None
    second = take_when_free(b, 0, "B", LONG_MS)
    assert second > first
    assert a.renew_lease(0, "A", LONG_MS) is False
    a.release_lease(0, "A")  # not A's any more: nothing happens
    assert c.try_lease(0, "C", LONG_MS) is None
    assert b.renew_lease(0, "B", LONG_MS) is True
    assert c.watermark(0).epoch == second


def test_release_by_the_owner_frees_the_partition_at_once(backend: Backend) -> None:
    """A non-owner's release does nothing; the owner's lets another take it without waiting."""
    a, b = backend.store(), backend.store()
    first = a.try_lease(0, "A", LONG_MS)
    assert first is not None
    b.release_lease(0, "B")
    assert b.try_lease(0, "B", LONG_MS) is None
    assert a.renew_lease(0, "A", LONG_MS) is True
    a.release_lease(0, "A")
    taken = b.try_lease(0, "B", LONG_MS)
    assert taken is not None and taken > first
    assert a.renew_lease(0, "A", LONG_MS) is False
    a.release_lease(0, "A")  # releasing twice is harmless
    assert b.renew_lease(0, "B", LONG_MS) is True


def test_concurrent_try_lease_has_exactly_one_winner(backend: Backend) -> None:
    """Eight connections racing for one free partition: one epoch, seven Nones."""
    backend.store()  # create the schema before the race
    stores = [backend.store() for _ in range(8)]
    barrier = threading.Barrier(len(stores))
    results: list[int | None] = [None] * len(stores)

    def race(i: int) -> None:
        barrier.wait()
        results[i] = stores[i].try_lease(3, f"w{i}", LONG_MS)

    threads = [threading.Thread(target=race, args=(i,)) for i in range(len(stores))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    winners = [e for e in results if e is not None]
    assert len(winners) == 1
    assert stores[0].watermark(3).epoch == winners[0]


def test_heartbeat_lists_live_workers_sorted_and_forgets_expired_ones(backend: Backend) -> None:
    """Every heartbeat returns the live workers in name order; an expired one disappears."""
    a, b = backend.store(), backend.store()
    assert a.heartbeat("zeta", LONG_MS) == ["zeta"]
    assert b.heartbeat("alpha", SHORT_MS) == ["alpha", "zeta"]
    assert a.heartbeat("mid", LONG_MS) == ["alpha", "mid", "zeta"]
    assert a.heartbeat("zeta", LONG_MS) == ["alpha", "mid", "zeta"]  # again: listed once
    assert wait_until(lambda: b.heartbeat("mid", LONG_MS) == ["mid", "zeta"], timeout=10.0)


# -- fencing under leases ------------------------------------------------------------


def test_a_worker_whose_lease_expired_is_fenced_by_the_epoch(backend: Backend) -> None:
    """A applies under its lease; B takes the partition once A's lease expires; A's next
    apply with its old epoch raises StaleEpochError and changes nothing; B counts the rest."""
    log = backend.log()
    hits = make_hits(300, seed=2)
    log.append(hits)
    a, b, reader = backend.store(), backend.store(), backend.store()
    epoch_a = a.try_lease(0, "A", SHORT_MS)
    assert epoch_a is not None
    a.apply(batch_of(log, 0, epoch_a, 0, 100))
    epoch_b = take_when_free(b, 0, "B", LONG_MS)
    assert epoch_b > epoch_a
    before = (snapshots(reader), reader.watermarks())
    with pytest.raises(StaleEpochError) as e:
        a.apply(batch_of(log, 0, epoch_a, 100, 1000))
    assert (e.value.epoch, e.value.current) == (epoch_a, epoch_b)
    assert (snapshots(reader), reader.watermarks()) == before
    assert a.renew_lease(0, "A", LONG_MS) is False
    b.apply(batch_of(log, 0, epoch_b, reader.watermark(0).offset, 1000))
    assert reader.watermark(0).offset == 300
    assert snapshots(reader) == recount(hits)
    assert differences(log, reader) == []


# -- Ownership: balancing ------------------------------------------------------------


def tick(own: Ownership) -> None:
    """One tick of a bare Ownership, handing back surplus as the aggregator does."""
    for p in own.tick().surplus:
        own.release(p)


def held_by_someone(store: StatsStore, partitions: int) -> bool:
    """Every partition's lease is live in the store (a probe that never wins takes nothing)."""
    return all(store.try_lease(p, "probe", LONG_MS) is None for p in range(partitions))


def test_three_workers_share_six_partitions_and_survivors_take_over(backend: Backend) -> None:
    """Three Ownerships settle on 2 partitions each, all 6 held, no overlap; when one stops
    ticking, the other two take its partitions once its lease expires: 3 each."""
    owners = [Ownership(backend.store(), 6, worker=f"w{i}", lease_s=LEASE_S) for i in range(3)]
    probe = backend.store()

    def settled(group: Sequence[Ownership], each: int) -> bool:
        for own in group:
            tick(own)
        held = [own.owned for own in group]
        return (
            all(len(h) == each for h in held)
            and set().union(*held) == set(range(6))
            and sum(map(len, held)) == 6
        )

    assert wait_until(lambda: settled(owners, 2), timeout=20.0, every=0.05)
    assert held_by_someone(probe, 6)
    survivors = owners[:2]  # owners[2] stops ticking: a dead worker
    assert wait_until(lambda: settled(survivors, 3), timeout=20.0, every=0.05)
    assert held_by_someone(probe, 6)
    for own in survivors:
        own.release_all()
    assert all(own.owned == set() for own in survivors)


def test_a_later_worker_gets_its_share_handed_back(backend: Backend) -> None:
    """A lone worker takes every partition; when a second announces itself, the first names
    the extras as surplus and, once they are released, the second takes them."""
    first = Ownership(backend.store(), 4, worker="a", lease_s=LEASE_S)
    second = Ownership(backend.store(), 4, worker="b", lease_s=LEASE_S)
    gained = first.tick().gained
    assert sorted(gained) == [0, 1, 2, 3]
    assert second.tick().gained == {}  # share 2, but everything is held
    changes = first.tick()
    assert changes.gained == {} and changes.lost == [] and len(changes.surplus) == 2
    for p in changes.surplus:
        first.release(p)
    taken = second.tick().gained
    assert sorted(taken) == changes.surplus
    assert all(taken[p] > gained[p] for p in taken)
    assert first.owned.isdisjoint(second.owned) and first.owned | second.owned == {0, 1, 2, 3}


def test_wanted_partitions_are_exactly_the_ones_held(backend: Backend) -> None:
    """wanted=[1, 3] takes those two and no other, even with the rest free."""
    own = Ownership(backend.store(), 6, wanted=[1, 3], worker="w", lease_s=LEASE_S)
    changes = own.tick()
    assert sorted(changes.gained) == [1, 3] and changes.surplus == []
    assert own.owned == {1, 3}
    again = own.tick()
    assert again.gained == {} and again.lost == [] and again.surplus == []
    assert own.owned == {1, 3}
    other = backend.store()
    assert other.try_lease(1, "x", LONG_MS) is None
    assert other.try_lease(0, "x", LONG_MS) is not None


def test_a_lost_lease_is_reported_by_the_next_tick(backend: Backend) -> None:
    """An Ownership whose lease expired and went to another worker reports it as lost."""
    own = Ownership(backend.store(), 1, wanted=[0], worker="a", lease_s=SHORT_MS / 1000)
    assert sorted(own.tick().gained) == [0]
    take_when_free(backend.store(), 0, "b", LONG_MS)
    changes = own.tick()
    assert changes.lost == [0] and changes.gained == {}
    assert own.owned == set()


def test_parse_partitions() -> None:
    """`auto` is None; lists and ranges are sorted, deduplicated; anything else is a
    ConfigError."""
    assert parse_partitions("auto", 6) is None
    assert parse_partitions("0,2,4-5", 6) == [0, 2, 4, 5]
    assert parse_partitions("5, 1-2 ,1", 6) == [1, 2, 5]
    assert parse_partitions("0-5", 6) == [0, 1, 2, 3, 4, 5]
    for bad in ("6", "0,6", "4-6", "x", "", "1-x", "-1", "0,,1", "3-1", "all", "Auto"):
        with pytest.raises(ConfigError):
            parse_partitions(bad, 6)


# -- Aggregators with Ownership ------------------------------------------------------


def test_two_aggregators_share_the_log_and_count_exactly(backend: Backend) -> None:
    """Two lease-sharing aggregators settle on 2 of 4 partitions each while hits arrive;
    stopped, they release their leases; a plain run drains the rest; counts are exact."""
    log = backend.log(partitions=4)
    codes = spread_codes()
    hits = make_hits(6000, codes=codes, seed=3)
    conf = settings_for(backend, window_s=0.05, poll_s=0.01, max_batch=400)
    aggs = [
        Aggregator(
            backend.log(),
            backend.store(),
            conf,
            ownership=Ownership(backend.store(), 4, worker=f"agg{i}", lease_s=LEASE_S),
        )
        for i in range(2)
    ]
    errors: list[BaseException] = []
    threads = [in_thread(agg, errors) for agg in aggs]
    store = backend.store()
    try:
        for k in range(0, 2000, 250):  # arrives while the workers start and rebalance
            log.append(hits[k : k + 250])
            time.sleep(0.02)
        assert wait_until(lambda: all(a.counters.partitions_owned == 2 for a in aggs)), errors
        batches = [a.counters.batches for a in aggs]
        for k in range(2000, 5000, 500):  # arrives once both own their share
            log.append(hits[k : k + 500])
            time.sleep(0.02)
        assert wait_until(caught_up(log, store)), errors
        assert all(a.counters.batches > n for a, n in zip(aggs, batches, strict=True))
    finally:
        for agg in aggs:
            agg.stop()
        for t in threads:
            t.join(timeout=20)
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert all(log.end(p).offset > 0 for p in range(4))
    # Stopping released every lease: a new worker gets all four at once.
    probe = Ownership(backend.store(), 4, wanted=[0, 1, 2, 3], worker="probe", lease_s=LEASE_S)
    assert sorted(probe.tick().gained) == [0, 1, 2, 3]
    probe.release_all()
    log.append(hits[5000:])
    Aggregator(backend.log(), backend.store(), conf).run(once=True)
    assert snapshots(store) == recount(hits)
    assert differences(log, store) == []


def zombie_scenario(
    backend: Backend, clock: Callable[[], float], hits: list[Hit]
) -> tuple[Aggregator, Ownership, threading.Thread, list[BaseException]]:
    """A worker (stuck clock: it never ticks, never flushes by window) takes both partitions
    and reads `hits` without applying them; its leases expire; a second lease-holding worker
    takes over and applies everything, then stops. The first is still running."""
    log = backend.log(partitions=2)
    store = backend.store()
    ownership = Ownership(backend.store(), 2, worker="zombie", lease_s=LEASE_S)
    zombie = Aggregator(
        backend.log(),
        backend.store(),
        settings_for(backend, window_s=1e9, poll_s=0.01),
        clock=clock,
        ownership=ownership,
    )
    errors: list[BaseException] = []
    thread = in_thread(zombie, errors)
    assert wait_until(lambda: zombie.counters.partitions_owned == 2), errors
    log.append(hits)
    assert all(log.end(p).offset > 0 for p in range(2))
    assert wait_until(lambda: zombie.counters.hits_read == len(hits)), errors
    assert zombie.counters.batches == 0
    heir = Aggregator(
        backend.log(),
        backend.store(),
        settings_for(backend, window_s=0.05, poll_s=0.01),
        ownership=Ownership(backend.store(), 2, worker="heir", lease_s=LEASE_S),
    )
    heir_errors: list[BaseException] = []
    heir_thread = in_thread(heir, heir_errors)
    try:
        assert wait_until(lambda: heir.counters.partitions_owned == 2), heir_errors
        assert wait_until(caught_up(log, store)), heir_errors
    finally:
        heir.stop()
        heir_thread.join(timeout=20)
    assert heir_errors == [] and heir.counters.hits_read == len(hits)
    assert snapshots(store) == recount(hits)
    return zombie, ownership, thread, errors


def test_a_zombie_flush_drops_its_partitions_instead_of_raising(backend: Backend) -> None:
    """The zombie's final flush carries its old epochs: each is refused, the partition is
    dropped (counted as lost), nothing raises and nothing is counted twice."""
    hits = make_hits(500, codes=spread_codes(), seed=4)
    zombie, _, thread, errors = zombie_scenario(backend, FrozenClock(), hits)
    zombie.stop()
    thread.join(timeout=20)
    assert not thread.is_alive() and errors == []
    assert zombie.counters.partitions_lost == 2
    assert zombie.counters.partitions_owned == 0 and zombie.counters.batches == 0
    log, store = backend.log(), backend.store()
    assert snapshots(store) == recount(hits)
    assert [store.watermark(p).offset for p in range(2)] == [log.end(p).offset for p in range(2)]
    assert differences(log, store) == []


def test_a_zombie_that_ticks_again_drops_its_pending_hits(backend: Backend) -> None:
    """When the zombie's clock moves on, its tick finds the leases gone: both partitions are
    lost and their pending hits dropped; what it takes back (the heir released both) it takes
    under a new epoch from the watermark, so it reads only hits logged after that."""
    hits = make_hits(500, codes=spread_codes(), seed=5)
    clock = FakeClock()
    zombie, ownership, thread, errors = zombie_scenario(backend, clock, hits)
    log = backend.log()
    more = make_hits(100, codes=spread_codes(), seed=6, start=500)
    try:
        clock.advance(LEASE_S)  # its next tick is due
        assert wait_until(
            lambda: zombie.counters.partitions_lost == 2 and zombie.counters.partitions_owned >= 1
        ), errors
        retaken = sorted(ownership.owned)
        assert retaken and zombie.counters.hits_read == len(hits)
        log.append(more)
        mine = sum(partition_of(h.code, 2) in retaken for h in more)
        assert mine > 0
        assert wait_until(lambda: zombie.counters.hits_read == len(hits) + mine), errors
    finally:
        zombie.stop()  # its final flush applies those under the new epoch
        thread.join(timeout=20)
    assert not thread.is_alive() and errors == []
    assert zombie.counters.batches >= 1
    store = backend.store()
    Aggregator(backend.log(), backend.store(), settings_for(backend)).run(once=True)
    assert snapshots(store) == recount(hits + more)
    assert differences(log, store) == []


def test_an_expired_lease_is_lost_alike_on_both_backends(backend: Backend) -> None:
    """A lease that expired cannot be renewed, even if nobody took it since: the
    owner takes it again under a new epoch (and re-reads from the watermark)."""
    store = backend.store()
    epoch = store.try_lease(0, "A", 100)
    assert epoch is not None
    time.sleep(0.3)
    assert not store.renew_lease(0, "A", 60_000)
    again = store.try_lease(0, "A", 60_000)
    assert again is not None and again > epoch
    assert store.renew_lease(0, "A", 60_000)
    assert backend.store().try_lease(0, "B", 60_000) is None


@pytest.mark.parametrize("text", ["0-", "2-", "-1", "1-0-2"])
def test_open_ranges_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_partitions(text, 6)
