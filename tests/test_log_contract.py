"""The HitLog contract, over every backend."""

from __future__ import annotations

import threading
from collections.abc import Callable

import numpy as np
import pytest

from rlinks.hits import Hit, Quarantined
from rlinks.log.base import EncodedHits, HitLog, Position, partition_of
from tests.conftest import BASE_MS, MS_PER_DAY, Backend, encoded_group, hit, make_hits

BLOCK = 4096  # hits per SQLite block row; appends larger than this span rows


def read_pairs(log: HitLog, partition: int, after: int, limit: int) -> list[tuple[str, int]]:
    """(code, ts_ms) of each hit a read returns, resolved through the code table."""
    s = log.read(partition, after, limit)
    return [(s.names[int(c)], int(t)) for c, t in zip(s.code_ids, s.ts_ms, strict=True)]


def pairs(hits: list[Hit]) -> list[tuple[str, int]]:
    return [(h.code, h.ts_ms) for h in hits]


def test_offsets_start_at_one_and_strictly_increase(backend: Backend) -> None:
    """Offsets are 1, 2, 3, ... across appends, in input order."""
    log = backend.log()
    hits = make_hits(25)
    got = log.append(hits[:10]) + log.append(hits[10:11]) + log.append(hits[11:])
    assert [p.offset for p in got] == list(range(1, 26))
    assert all(p.partition == 0 and not p.duplicate for p in got)


def test_empty_append_returns_nothing_and_changes_nothing(backend: Backend) -> None:
    """Appending no hits returns [] and leaves the end at 0."""
    log = backend.log()
    assert log.append([]) == []
    assert log.end(0).offset == 0
    assert log.end(0).max_ts_ms is None


def test_reappending_an_id_is_a_duplicate_at_its_original_position(backend: Backend) -> None:
    """A logged id appended again is flagged duplicate at its first position; nothing is added."""
    log = backend.log()
    hits = make_hits(5)
    log.append(hits)
    again = log.append([hits[3], hit("new-1", BASE_MS, "zz"), hits[0]])
    assert again[0] == (0, 4, True)
    assert again[1] == (0, 6, False)
    assert again[2] == (0, 1, True)
    assert log.end(0).offset == 6
    assert [h.id for _, h in log.records(0)] == [h.id for h in hits] + ["new-1"]


def test_duplicate_keeps_the_original_record(backend: Backend) -> None:
    """A resent id with different content does not replace the logged record."""
    log = backend.log()
    log.append([hit("x", BASE_MS, "first")])
    pos = log.append([hit("x", BASE_MS + 5, "second")])
    assert pos == [(0, 1, True)]
    assert [h for _, h in log.records(0)] == [hit("x", BASE_MS, "first")]
    assert read_pairs(log, 0, 0, 10) == [("first", BASE_MS)]


def test_an_id_repeated_inside_one_call_is_appended_once(backend: Backend) -> None:
    """Within one append, a repeated id is logged once; its repeats point at it."""
    log = backend.log()
    a, b = hit("a", BASE_MS, "x"), hit("b", BASE_MS + 1, "y")
    got = log.append([a, b, a, a, b])
    assert got == [(0, 1, False), (0, 2, False), (0, 1, True), (0, 1, True), (0, 2, True)]
    assert log.end(0).offset == 2
    assert [h for _, h in log.records(0)] == [a, b]


def test_read_returns_exactly_the_hits_after_the_offset(backend: Backend) -> None:
    """read(p, after, limit) gives the hits at offsets after+1.., at most `limit`."""
    log = backend.log()
    hits = make_hits(40)
    for k in range(0, 40, 7):  # blocks of 7 (the last one shorter)
        log.append(hits[k : k + 7])
    for after in (0, 1, 6, 7, 8, 20, 39, 40, 55):
        for limit in (1, 3, 7, 13, 100):
            s = log.read(0, after, limit)
            want = hits[after : after + limit]
            assert read_pairs(log, 0, after, limit) == pairs(want), (after, limit)
            assert s.start == after
            assert s.end == (after + len(want) if want else after)
            assert len(s) == len(want)
            assert s.partition == 0


def test_read_across_large_appends_with_odd_limits(backend: Backend) -> None:
    """An append of more than one block is read back exactly from any offset and limit."""
    log = backend.log()
    n = 2 * BLOCK + 777
    hits = make_hits(n, codes=[f"c{i}" for i in range(300)], seed=3)
    positions = log.append(hits)
    assert [p.offset for p in positions] == list(range(1, n + 1))
    more = make_hits(10, prefix="m", seed=4)
    log.append(more)
    everything = hits + more
    for after, limit in [
        (0, n + 10),
        (0, BLOCK),
        (BLOCK - 1, 3),
        (BLOCK - 5, 4097),
        (BLOCK, 1),
        (BLOCK + 1, 999),
        (2 * BLOCK - 2, BLOCK + 3),
        (n - 1, 5),
        (n, 10),
        (n + 9, 7),
        (1, 3 * BLOCK),
    ]:
        assert read_pairs(log, 0, after, limit) == pairs(everything[after : after + limit])


def test_reading_in_odd_steps_walks_the_whole_log_once(backend: Backend) -> None:
    """Consecutive reads with odd limits, each from the previous end, cover every hit once."""
    log = backend.log()
    hits = make_hits(BLOCK + 1500, seed=9)
    log.append(hits[: BLOCK + 3])
    log.append(hits[BLOCK + 3 :])
    got: list[tuple[str, int]] = []
    after, step = 0, 1
    while True:
        s = log.read(0, after, step)
        if not len(s):
            assert s.end == after
            break
        assert s.start == after and s.end == after + len(s)
        got += [(s.names[int(c)], int(t)) for c, t in zip(s.code_ids, s.ts_ms, strict=True)]
        after = s.end
        step = step * 3 + 2 if step < 2000 else 1
    assert got == pairs(hits)
    assert after == len(hits)


def test_read_columns_have_the_documented_types(backend: Backend) -> None:
    """A slice holds int32 code ids and int64 timestamps; max_ts_ms is the newest."""
    log = backend.log()
    hits = make_hits(20)
    log.append(hits)
    s = log.read(0, 0, 100)
    assert s.code_ids.dtype == np.int32
    assert s.ts_ms.dtype == np.int64
    assert s.max_ts_ms == max(h.ts_ms for h in hits)
    assert log.read(0, 20, 5).max_ts_ms is None


def test_end_tracks_the_newest_offset_and_event_time(backend: Backend) -> None:
    """end() is the newest offset and the max event time ever appended."""
    log = backend.log()
    assert log.end(0).offset == 0
    log.append([hit("1", BASE_MS + 500, "a"), hit("2", BASE_MS + 100, "b")])
    assert (log.end(0).offset, log.end(0).max_ts_ms) == (2, BASE_MS + 500)
    log.append([hit("3", BASE_MS + 200, "a")])  # older than the newest: max stays
    assert (log.end(0).offset, log.end(0).max_ts_ms) == (3, BASE_MS + 500)
    log.append([hit("1", BASE_MS + 9_999_999, "a")])  # a duplicate changes nothing
    assert (log.end(0).offset, log.end(0).max_ts_ms) == (3, BASE_MS + 500)
    assert log.end(0).partition == 0


def test_records_equal_what_was_appended(backend: Backend) -> None:
    """records() returns the full hit records, every optional field intact, with offsets."""
    log = backend.log()
    hits = [
        Hit("r1", BASE_MS, "a", "DE", "uah", "https://ref.example/x", "10.0.0.0/24"),
        Hit("r2", BASE_MS + MS_PER_DAY, "b"),
        *make_hits(BLOCK + 10, seed=5),
    ]
    log.append(hits[:2])
    log.append(hits[2:])
    assert list(log.records(0)) == list(enumerate(hits, start=1))
    assert list(log.records(0, after_offset=BLOCK)) == list(
        enumerate(hits[BLOCK:], start=BLOCK + 1)
    )
    assert list(log.records(0, after_offset=len(hits))) == []


def test_code_table_maps_ids_back_to_codes(backend: Backend) -> None:
    """Each code gets one id; the slice's names resolve every id to its code."""
    log = backend.log()
    codes = ["alpha", "b-2", "c3", "0", "x" * 64]
    hits = [hit(str(i), BASE_MS + i, codes[i % 5]) for i in range(50)]
    log.append(hits[:23])
    log.append(hits[23:])
    s = log.read(0, 0, 100)
    ids_of: dict[str, set[int]] = {}
    for h, cid in zip(hits, s.code_ids.tolist(), strict=True):
        assert s.names[cid] == h.code
        ids_of.setdefault(h.code, set()).add(cid)
    assert all(len(ids) == 1 for ids in ids_of.values())
    assert len({next(iter(ids)) for ids in ids_of.values()}) == len(codes)


def test_two_log_objects_see_each_others_appends(backend: Backend) -> None:
    """Two connections on one folder share offsets, dedup and the code table."""
    one, two = backend.log(), backend.log()
    one.append([hit("1", BASE_MS, "from-one")])
    assert two.append([hit("2", BASE_MS + 1, "from-two")]) == [(0, 2, False)]
    assert one.append([hit("2", BASE_MS + 1, "from-two")]) == [(0, 2, True)]
    one.append([hit("3", BASE_MS + 2, "from-two"), hit("4", BASE_MS + 3, "new")])
    two.append([hit("5", BASE_MS + 4, "from-one")])
    want = [
        ("from-one", BASE_MS),
        ("from-two", BASE_MS + 1),
        ("from-two", BASE_MS + 2),
        ("new", BASE_MS + 3),
        ("from-one", BASE_MS + 4),
    ]
    assert read_pairs(one, 0, 0, 10) == want
    assert read_pairs(two, 0, 0, 10) == want
    assert one.end(0).offset == two.end(0).offset == 5


def test_hits_of_a_code_stay_in_its_partition(backend: Backend) -> None:
    """With several partitions, a code's hits go to partition_of(code), offsets from 1 each."""
    log = backend.log(partitions=3)
    assert log.partitions == 3
    codes = [f"code-{i}" for i in range(12)]
    hits = make_hits(300, codes=codes, seed=11)
    positions = log.append(hits[:150]) + log.append(hits[150:])
    by_partition: dict[int, list[Hit]] = {0: [], 1: [], 2: []}
    for h, pos in zip(hits, positions, strict=True):
        assert pos.partition == partition_of(h.code, 3)
        by_partition[pos.partition].append(h)
    assert all(by_partition.values())  # every partition got some codes
    for p, mine in by_partition.items():
        offsets = [pos.offset for pos in positions if pos.partition == p]
        assert offsets == list(range(1, len(mine) + 1))
        assert log.end(p).offset == len(mine)
        assert [h for _, h in log.records(p)] == mine
        assert read_pairs(log, p, 0, 1000) == pairs(mine)


def test_partition_count_is_fixed_by_the_first_opener(backend: Backend) -> None:
    """A second opener asking for another partition count gets the log's own."""
    assert backend.log(partitions=2).partitions == 2
    assert backend.log(partitions=5).partitions == 2


def test_quarantine_records_are_counted(backend: Backend) -> None:
    """quarantine() keeps every record; quarantined() counts them all, across calls."""
    log = backend.log()
    assert log.quarantined() == 0
    log.quarantine("f.ndjson", [])
    assert log.quarantined() == 0
    log.quarantine(
        "f.ndjson", [Quarantined(1, 0, "not json", "x{"), Quarantined(3, 9, "bad code", "")]
    )
    log.quarantine("-", [Quarantined(7, 100, "bad ts", "{}")])
    assert log.quarantined() == 3
    assert backend.log().quarantined() == 3


def test_a_failed_append_does_not_poison_later_appends(backend: Backend) -> None:
    """After an append fails and rolls back, a later hit of the same code reads back as it."""
    log, other = backend.log(), backend.log()
    with pytest.raises(OverflowError):
        log.append([hit("bad", 2**63, "new")])  # ts out of int64: the append fails
    assert log.end(0).offset == 0 and list(log.records(0)) == []
    other.append([hit("o1", BASE_MS, "other")])
    log.append([hit("n1", BASE_MS + 1, "new")])
    assert [h.code for _, h in log.records(0)] == ["other", "new"]
    assert read_pairs(log, 0, 0, 10) == [("other", BASE_MS), ("new", BASE_MS + 1)]


def test_concurrent_appends_with_overlapping_ids_log_each_id_once(backend: Backend) -> None:
    """Two connections appending overlapping ids at once log every id once, offsets gapless."""
    hits = make_hits(3000, seed=21)
    one, two = backend.log(), backend.log()
    results: dict[str, list[Position]] = {"one": [], "two": []}
    errors: list[BaseException] = []

    def writer(name: str, log: HitLog, part: list[Hit], step: int) -> None:
        try:
            for k in range(0, len(part), step):
                results[name] += log.append(part[k : k + step])
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=writer, args=("one", one, hits[:2000], 100)),
        threading.Thread(target=writer, args=("two", two, hits[1000:], 150)),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    logged = list(one.records(0))
    assert [offset for offset, _ in logged] == list(range(1, 3001))
    assert sorted(h.id for _, h in logged) == sorted(h.id for h in hits)
    fresh = [p for p in results["one"] + results["two"] if not p.duplicate]
    assert sorted(p.offset for p in fresh) == list(range(1, 3001))
    by_id = {h.id: offset for offset, h in logged}
    for h, p in zip(hits[1000:2000], results["one"][1000:2000], strict=True):
        assert p.offset == by_id[h.id]  # the overlap: both writers got the same position
    for h, p in zip(hits[1000:2000], results["two"][:1000], strict=True):
        assert p.offset == by_id[h.id]


@pytest.mark.parametrize("partitions", [1, 3])
def test_an_encoded_group_is_logged_as_its_hits_would_be(backend: Backend, partitions: int) -> None:
    """append_encoded logs each hit once, in order, in its code's partition:
    full records, columns and ends as `append` gives them, across a group
    larger than a block and codes both new and known."""
    hits = [
        Hit("r1", BASE_MS, "a", "DE", "uah", "https://ref.example/x", "10.0.0.0/24"),
        *make_hits(BLOCK + 10, seed=7, codes=("a", "b", "new-1", "new-2")),
        *make_hits(300, seed=8, prefix="late", codes=("b", "later")),
    ]
    log = backend.log(partitions=partitions)
    for group in (hits[:1], hits[1 : BLOCK + 11], hits[BLOCK + 11 :], []):
        log.append_encoded(encoded_group(group))
    for p in range(partitions):
        mine = [h for h in hits if partition_of(h.code, partitions) == p]
        assert list(log.records(p)) == list(enumerate(mine, start=1))
        assert read_pairs(log, p, 0, len(hits)) == pairs(mine)
        end = log.end(p)
        assert (end.offset, end.max_ts_ms) == (
            len(mine),
            max((h.ts_ms for h in mine), default=None),
        )
    other = backend.log()  # a new connection reads the code table the group filled
    assert read_pairs(other, 0, 0, 5) == read_pairs(log, 0, 0, 5)


@pytest.mark.parametrize("partitions", [1, 2])
@pytest.mark.parametrize(
    "broken",
    [
        lambda g: EncodedHits(g.records, g.codes[:-1], g.ts_ms),  # a code missing
        lambda g: EncodedHits(g.records, g.codes, g.ts_ms[:-8]),  # a time missing
        lambda g: EncodedHits(g.records, g.codes, g.ts_ms[:-3]),  # a time cut short
        lambda g: EncodedHits(b"", g.codes, g.ts_ms),  # no records
    ],
    ids=["code", "time", "cut time", "records"],
)
def test_an_encoded_group_whose_parts_disagree_logs_nothing(
    backend: Backend, broken: Callable[[EncodedHits], EncodedHits], partitions: int
) -> None:
    """A group whose records, codes and times hold different numbers of hits is
    refused whole (one partition: the block path; more: the decoding path)."""
    log = backend.log(partitions=partitions)
    with pytest.raises(ValueError, match="encoded group"):
        log.append_encoded(broken(encoded_group(make_hits(20))))
    assert all(log.end(p).offset == 0 for p in range(partitions))
    log.append_encoded(encoded_group(make_hits(20)))  # and the next group goes in
    assert sum(log.end(p).offset for p in range(partitions)) == 20
