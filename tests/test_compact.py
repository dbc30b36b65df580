"""Compaction: trimming counted, old hits from the log keeps every count exact.

Each test runs on both backends (real SQLite files, a real redis-server). The
properties: a trim never reaches above the watermark or into blocks younger
than the retention; verify and rebuild stay exact through the compacted
summary; a consumer behind the trimmed offsets stops loudly.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest
import redis

from rlinks.aggregator import Aggregator
from rlinks.batch import Batch, DayCounts
from rlinks.compact import compact, parse_age, seed_from_summaries
from rlinks.errors import ConfigError, LogGapError
from rlinks.hits import Hit
from rlinks.log.base import HitLog
from rlinks.log.redis import RedisHitLog
from rlinks.log.sqlite import HITS_FILE, SqliteHitLog
from rlinks.redisdb import Keys
from rlinks.settings import Settings
from rlinks.store.base import StatsStore
from rlinks.timefmt import now_ms
from rlinks.verify import differences
from tests.conftest import (
    BASE_MS,
    MS_PER_DAY,
    Backend,
    hit,
    make_hits,
    open_backend,
    recount,
    run_cli,
    snapshots,
)
from tests.redis_helpers import RedisClusterServers

NEVER = 2**62  # an `older_than_ms` every hit is older than: keep nothing


def aggregate(backend: Backend, log: HitLog, store: StatsStore) -> None:
    """Count everything in the log now (`run --once`)."""
    Aggregator(log, store, Settings(data_dir=backend.root)).run(once=True)


def append_blocks(log: HitLog, hits: list[Hit], size: int) -> None:
    """Append `hits` in calls of `size`: one block (or more) per call and partition."""
    for k in range(0, len(hits), size):
        log.append(hits[k : k + size])


def held(log: HitLog, partition: int = 0) -> list[str]:
    """Ids of the records the log still holds."""
    return [h.id for _, h in log.records(partition)]


def summary_hits(log: HitLog, partition: int) -> int:
    return sum(row[2] for row in log.compacted(partition)[1])


def test_compact_after_aggregation_keeps_stats_and_verify(backend: Backend) -> None:
    """Everything counted is trimmed; stats are untouched, verify still passes,
    and each partition's summary holds exactly its trimmed hits."""
    log, store = backend.log(partitions=2), backend.store()
    hits = make_hits(3000, seed=3)
    append_blocks(log, hits, 400)
    aggregate(backend, log, store)
    before = snapshots(store)

    done = compact(log, store, older_than_ms=NEVER)

    assert sum(c.dropped for c in done) == 3000
    for c in done:
        watermark = store.watermark(c.partition).offset
        assert c.compacted_upto == c.watermark == watermark
        assert summary_hits(log, c.partition) == c.dropped == watermark
        assert held(log, c.partition) == []
    assert snapshots(store) == before == recount(hits)
    assert differences(log, store) == []


def test_nothing_above_the_watermark_is_trimmed(backend: Backend) -> None:
    """Hits appended but not aggregated survive a compaction; aggregating them
    afterwards gives exact counts."""
    log, store = backend.log(), backend.store()
    counted, pending = make_hits(900, seed=4), make_hits(700, seed=5, prefix="late")
    append_blocks(log, counted, 300)
    aggregate(backend, log, store)
    append_blocks(log, pending, 350)

    (done,) = compact(log, store, older_than_ms=NEVER)

    assert (done.dropped, done.compacted_upto, done.watermark) == (900, 900, 900)
    assert held(log) == [h.id for h in pending]
    aggregate(backend, log, store)
    assert snapshots(store) == recount(counted + pending)
    assert differences(log, store) == []


def test_a_block_straddling_the_watermark_stays(backend: Backend) -> None:
    """With the watermark inside a block, that block and all after it stay."""
    log, store = backend.log(), backend.store()
    hits = make_hits(300, seed=6)
    append_blocks(log, hits, 100)  # blocks 1..100, 101..200, 201..300
    piece = log.read(0, 0, 150)
    store.apply(
        Batch(
            partition=0,
            epoch=store.acquire(0),
            start=0,
            end=150,
            deltas=DayCounts.of_hits(piece.code_ids, piece.ts_ms).rows(piece.names),
            max_ts_ms=piece.max_ts_ms,
            hits=150,
        )
    )

    (done,) = compact(log, store, older_than_ms=NEVER)

    assert (done.dropped, done.compacted_upto) == (100, 100)
    assert held(log) == [h.id for h in hits[100:]]
    assert differences(log, store) == []
    aggregate(backend, log, store)
    assert snapshots(store) == recount(hits)


def test_keep_keeps_blocks_with_young_hits(backend: Backend) -> None:
    """A block holding a hit younger than the retention stays, and so does
    every block after it (only a prefix is trimmed)."""
    log, store = backend.log(), backend.store()
    now = now_ms()
    old = [hit(f"old-{i}", BASE_MS - 400 * MS_PER_DAY + i, "a") for i in range(200)]
    young = [hit(f"young-{i}", now - 3_600_000 + i, "b") for i in range(50)]
    older_again = [hit(f"again-{i}", BASE_MS - 300 * MS_PER_DAY + i, "c") for i in range(50)]
    append_blocks(log, old, 100)
    log.append(young)
    log.append(older_again)
    aggregate(backend, log, store)

    (done,) = compact(log, store, older_than_ms=now - parse_age("30d"))

    assert (done.dropped, done.compacted_upto, done.watermark) == (200, 200, 300)
    assert held(log) == [h.id for h in young + older_again]
    assert differences(log, store) == []


def test_a_second_compact_is_a_no_op(backend: Backend) -> None:
    """Compacting again with nothing new to trim drops nothing and changes no summary."""
    log, store = backend.log(partitions=3), backend.store()
    append_blocks(log, make_hits(1200, seed=7), 200)
    aggregate(backend, log, store)
    compact(log, store, older_than_ms=NEVER)
    summaries = [log.compacted(p) for p in range(3)]

    again = compact(log, store, older_than_ms=NEVER)

    assert [c.dropped for c in again] == [0, 0, 0]
    assert [log.compacted(p) for p in range(3)] == summaries
    assert differences(log, store) == []


def test_repeated_compactions_fold_into_one_summary(backend: Backend) -> None:
    """Compacting after each round of ingest and aggregation keeps one exact
    summary (rows of the same code and day merge) across many trims, including
    trims of more blocks than one atomic step takes."""
    log, store = backend.log(partitions=2), backend.store()
    everything: list[Hit] = []
    for round_ in range(3):
        hits = make_hits(400, seed=10 + round_, prefix=f"r{round_}")
        append_blocks(log, hits, 5)  # 80 appends: more blocks than one step trims
        everything += hits
        aggregate(backend, log, store)
        compact(log, store, older_than_ms=NEVER)
        assert differences(log, store) == []
    assert snapshots(store) == recount(everything)
    assert sum(summary_hits(log, p) for p in range(2)) == 1200
    for p in range(2):
        upto, rows = log.compacted(p)
        assert upto == store.watermark(p).offset
        assert len({(code, day) for code, day, *_ in rows}) == len(rows)


def test_racing_compactors_fold_each_block_once(backend: Backend) -> None:
    """Two compactors (two connections) trimming the same partition at once
    never fold a block twice or drop one unfolded."""
    log, store = backend.log(), backend.store()
    hits = make_hits(2000, seed=8)
    append_blocks(log, hits, 10)
    aggregate(backend, log, store)
    logs = [backend.log(), backend.log()]
    dropped: list[int] = []

    def trim(one: HitLog) -> None:
        dropped.append(one.trim(0, 2000, NEVER))

    threads = [threading.Thread(target=trim, args=(one,)) for one in logs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()

    assert sum(dropped) == 2000
    assert log.compacted(0)[0] == 2000 and summary_hits(log, 0) == 2000
    assert differences(log, store) == []


def test_rebuild_after_compact_gives_the_same_stats(backend: Backend) -> None:
    """reset + seeding from the summary + aggregating the rest gives back
    exactly the stats from before, and verify passes."""
    log, store = backend.log(partitions=2), backend.store()
    counted, later = make_hits(1500, seed=9), make_hits(500, seed=10, prefix="later")
    append_blocks(log, counted, 250)
    aggregate(backend, log, store)
    compact(log, store, older_than_ms=NEVER)
    append_blocks(log, later, 250)
    aggregate(backend, log, store)
    before = snapshots(store)

    epochs = store.reset(log.partitions)
    seeded = seed_from_summaries(log, store, epochs)
    aggregate(backend, log, store)

    assert seeded == {p: log.compacted(p)[0] for p in range(2)}
    assert snapshots(store) == before == recount(counted + later)
    assert differences(log, store) == []


def test_a_watermark_below_the_trimmed_offsets_stops_the_aggregator(backend: Backend) -> None:
    """After a reset without seeding, the aggregator raises LogGapError instead of
    counting only what is left, and verify names the problem."""
    log, store = backend.log(), backend.store()
    append_blocks(log, make_hits(600, seed=11), 200)
    aggregate(backend, log, store)
    compact(log, store, older_than_ms=NEVER)
    store.reset(log.partitions)

    with pytest.raises(LogGapError, match=r"no hits at offsets 1\.\.600"):
        aggregate(backend, log, store)
    assert store.watermark(0).offset == 0 and snapshots(store) == {}
    assert "compacted up to offset 600, above the watermark 0" in differences(log, store)[0]


def test_a_partly_trimmed_log_stops_a_fresh_aggregator_too(backend: Backend) -> None:
    """With blocks left after the trimmed ones, a consumer from offset 0 still
    stops at the hole rather than counting the blocks that remain."""
    log, store = backend.log(), backend.store()
    hits = make_hits(600, seed=12)
    append_blocks(log, hits[:400], 200)
    aggregate(backend, log, store)
    append_blocks(log, hits[400:], 200)
    compact(log, store, older_than_ms=NEVER)
    store.reset(log.partitions)

    with pytest.raises(LogGapError, match=r"no hits at offsets 1\.\.400"):
        aggregate(backend, log, store)
    assert store.watermark(0).offset == 0


def test_a_hole_before_the_blocks_to_trim_is_refused(backend: Backend) -> None:
    """A block missing for reasons other than compaction stops the trim loudly:
    folding past it would hide hits the summary never saw."""
    log, store = backend.log(), backend.store()
    append_blocks(log, make_hits(300, seed=13), 100)
    aggregate(backend, log, store)
    if backend.name == "sqlite":
        with sqlite3.connect(backend.root / HITS_FILE) as conn:
            conn.execute("DELETE FROM blocks WHERE last_offset = 100")
    else:
        client = redis.Redis.from_url(backend.url)
        client.xdel(Keys.p(0, "hits"), "100-0")
        client.close()

    with pytest.raises(LogGapError, match=r"1\.\.100"):
        compact(log, store, older_than_ms=NEVER)
    assert log.compacted(0) == (0, [])


def test_resending_trimmed_ids(backend: Backend) -> None:
    """Documented dedup after compaction. SQLite forgets the ids of trimmed
    hits (the dedup horizon is the retention): a resend is logged again at new
    offsets. Redis keeps ids for its dedup horizon whether or not their hits
    were trimmed: a resend is a duplicate at the original offsets."""
    log, store = backend.log(), backend.store()
    hits = make_hits(50, seed=14)
    log.append(hits)
    aggregate(backend, log, store)
    compact(log, store, older_than_ms=NEVER)

    again = log.append(hits)

    if backend.name == "sqlite":
        assert [(p.offset, p.duplicate) for p in again] == [(51 + k, False) for k in range(50)]
        assert held(log) == [h.id for h in hits]
    else:
        assert [(p.offset, p.duplicate) for p in again] == [(1 + k, True) for k in range(50)]
        assert held(log) == []
    assert log.end(0).offset == (100 if backend.name == "sqlite" else 50)


def test_offsets_are_never_reused_after_a_trim(backend: Backend) -> None:
    """Trimming everything leaves the log's end where it was; new hits go after it."""
    log, store = backend.log(), backend.store()
    append_blocks(log, make_hits(120, seed=15), 40)
    aggregate(backend, log, store)
    compact(log, store, older_than_ms=NEVER)
    assert log.end(0).offset == 120
    (pos,) = log.append([hit("new", BASE_MS, "a")])
    assert pos.offset == 121
    assert [offset for offset, _ in log.records(0)] == [121]
    assert len(log.read(0, 120, 10)) == 1


def test_a_log_from_before_compaction_reads_as_never_compacted(tmp_path: Path) -> None:
    """A hits.db without the compaction tables, opened read-only (as verify and
    rebuild open it), reports nothing compacted instead of failing."""
    log = SqliteHitLog(tmp_path)
    log.append(make_hits(10, seed=22))
    log.close()
    with sqlite3.connect(tmp_path / HITS_FILE) as conn:
        conn.execute("DROP TABLE compaction")
        conn.execute("DROP TABLE compacted_days")
    reader = SqliteHitLog(tmp_path, readonly=True)
    assert reader.compacted(0) == (0, [])
    assert len(list(reader.records(0))) == 10
    reader.close()


@pytest.mark.parametrize(
    ("text", "ms"), [("30d", 30 * MS_PER_DAY), ("12h", 43_200_000), ("90m", 5_400_000), ("0", 0)]
)
def test_parse_age(text: str, ms: int) -> None:
    """--keep ages: days, hours, minutes, or 0."""
    assert parse_age(text) == ms


@pytest.mark.parametrize("text", ["", "30", "1w", "-1d", "d", "1.5h"])
def test_parse_age_refuses_other_text(text: str) -> None:
    """Anything but a whole number with a unit (or 0) is a ConfigError."""
    with pytest.raises(ConfigError, match="--keep"):
        parse_age(text)


# -- the CLI -------------------------------------------------------------------------


def where(backend: Backend) -> list[str]:
    """The CLI flag naming the backend's data."""
    return ["--backend", backend.url] if backend.name == "redis" else ["--data", str(backend.root)]


def cli_ok(*args: str | Path) -> str:
    got = run_cli(*args)
    assert got.returncode == 0, f"{args}: {got.stdout}\n{got.stderr}"
    return got.stdout


def write_lines(path: Path, hits: list[Hit]) -> Path:
    path.write_text(
        "".join(json.dumps({"id": h.id, "code": h.code, "ts": h.ts_ms / 1000}) + "\n" for h in hits)
    )
    return path


def test_cli_compact_verify_rebuild(backend: Backend, tmp_path: Path) -> None:
    """ingest, run, compact --keep 30d, verify, rebuild: old counted hits go,
    young ones stay, and stats stay exactly the same throughout."""
    data = where(backend)
    old = [  # a year before the November 2025 of make_hits: older than any --keep 30d
        hit(h.id, h.ts_ms - 365 * MS_PER_DAY, h.code) for h in make_hits(800, seed=16, prefix="o")
    ]
    young = [hit(f"young-{i}", now_ms() - 60_000 - i, "a") for i in range(40)]
    cli_ok("ingest", *data, write_lines(tmp_path / "old.ndjson", old))
    cli_ok("ingest", *data, write_lines(tmp_path / "young.ndjson", young))
    cli_ok("run", *data, "--once")
    stats = cli_ok("stats", *data, "--json")

    report = json.loads(cli_ok("compact", *data, "--json"))

    assert report["keep_ms"] == 30 * MS_PER_DAY and report["dropped"] == 800
    assert report["partitions"] == [
        {"partition": 0, "dropped": 800, "compacted_upto": 800, "watermark": 840}
    ]
    assert "OK" in cli_ok("verify", *data)
    assert cli_ok("stats", *data, "--json") == stats
    again = cli_ok("compact", *data)
    assert "partition 0: dropped 0 hits; compacted up to offset 800 (watermark 840)" in again
    rebuilt = run_cli("rebuild", *data)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "offsets 1..800 were compacted" in rebuilt.stderr
    assert cli_ok("stats", *data, "--json") == stats
    assert "OK" in cli_ok("verify", *data)


def test_cli_compact_keep_0_then_more_hits(backend: Backend, tmp_path: Path) -> None:
    """--keep 0 trims everything counted and nothing pending; the pending hits
    are counted exactly afterwards."""
    data = where(backend)
    first = make_hits(500, seed=17, prefix="a")
    second = make_hits(300, seed=18, prefix="b")
    cli_ok("ingest", *data, write_lines(tmp_path / "first.ndjson", first))
    cli_ok("run", *data, "--once")
    cli_ok("ingest", *data, write_lines(tmp_path / "second.ndjson", second))

    out = cli_ok("compact", *data, "--keep", "0")

    assert "partition 0: dropped 500 hits; compacted up to offset 500 (watermark 500)" in out
    cli_ok("run", *data, "--once")
    got = json.loads(cli_ok("stats", *data, "--json"))["stats"]
    assert {c: s["hits"] for c, s in got.items()} == {
        c: s.hits for c, s in recount(first + second).items()
    }
    assert "OK" in cli_ok("verify", *data)


@pytest.mark.parametrize("keep", ["1w", "abc", "-3d"])
def test_cli_compact_refuses_a_bad_keep(keep: str, tmp_path: Path) -> None:
    """A --keep that is not an age is a usage error (exit 2), not a traceback."""
    got = run_cli("compact", "--data", tmp_path, "--keep", keep)
    assert got.returncode == 2
    assert "--keep" in got.stderr and "Traceback" not in got.stderr


def test_cli_compact_without_a_log_is_a_clear_error(tmp_path: Path) -> None:
    """compact on a folder without hits.db exits 2 and makes no log."""
    got = run_cli("compact", "--data", tmp_path / "empty")
    assert got.returncode == 2
    assert "hits.db does not exist" in got.stderr
    assert not (tmp_path / "empty" / HITS_FILE).exists()


def test_cli_compact_warns_when_the_watermark_is_below_the_trimmed_offsets(
    backend: Backend, tmp_path: Path
) -> None:
    """When stats were reset after a trim, compact says that the aggregator
    will stop and that rebuild is the way out; run then fails loudly."""
    data = where(backend)
    cli_ok("ingest", *data, write_lines(tmp_path / "hits.ndjson", make_hits(100, seed=19)))
    cli_ok("run", *data, "--once")
    cli_ok("compact", *data, "--keep", "0")
    backend.store().reset(1)

    got = run_cli("compact", *data)
    assert got.returncode == 0
    assert "watermark 0 is below the compacted offset 100" in got.stderr
    assert "rebuild" in got.stderr
    ran = run_cli("run", *data, "--once")
    assert ran.returncode == 2 and "no hits at offsets 1..100" in ran.stderr
    cli_ok("rebuild", *data)
    assert "OK" in cli_ok("verify", *data)


def test_a_redis_compactor_that_lost_the_race_reads_again(tmp_path: Path) -> None:
    """On Redis the client folds what it read and the script checks that the
    compacted offset has not moved since: when another compactor moved it,
    the script writes nothing and the loser reads again (no block folded twice).
    (SQLite compactors serialise on the write lock: no such window.)"""
    with open_backend("redis", tmp_path / "data") as backend:
        log, store = backend.log(), backend.store()
        append_blocks(log, make_hits(300, seed=20), 100)
        aggregate(backend, log, store)
        loser, winner = RedisHitLog(backend.url), RedisHitLog(backend.url)
        script = loser._trim
        calls: list[int] = []

        def late(**kw: Any) -> Any:
            if not calls:
                winner.trim(0, 200, NEVER)  # lands between the loser's read and its script
            calls.append(1)
            return script(**kw)

        loser._trim = late  # type: ignore[assignment]
        assert loser.trim(0, 300, NEVER) == 100
        assert len(calls) == 2  # refused once, then the rest
        assert log.compacted(0)[0] == 300 and summary_hits(log, 0) == 300
        assert differences(log, store) == []
        loser.close()
        winner.close()


@pytest.mark.slow
def test_cli_compact_on_a_redis_cluster(tmp_path: Path) -> None:
    """On a three-master Redis Cluster (partitions on different nodes), compact
    trims every partition in one slot each; verify and rebuild stay exact."""
    cluster = RedisClusterServers(tmp_path / "cluster").start()
    try:
        url = cluster.url
        hits = make_hits(3000, seed=21, codes=tuple(f"c{i}" for i in range(30)))
        log = RedisHitLog(url, partitions=6)
        append_blocks(log, hits, 250)
        log.close()
        cli_ok("run", "--backend", url, "--once")
        stats = cli_ok("stats", "--backend", url, "--json")

        report = json.loads(cli_ok("compact", "--backend", url, "--keep", "0", "--json"))

        assert report["dropped"] == 3000
        assert all(p["compacted_upto"] == p["watermark"] for p in report["partitions"])
        assert "OK" in cli_ok("verify", "--backend", url)
        cli_ok("rebuild", "--backend", url)
        assert cli_ok("stats", "--backend", url, "--json") == stats
        assert "OK" in cli_ok("verify", "--backend", url)
    finally:
        cluster.stop()
