"""The key-rate counter: stats keys BH2 writes twice within a second (the
hosted-KV limit), counted per partition, persisted with each apply, shown by
`rlinks-bh2 status --json`, and kept working on kv.db files made before it."""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from pathlib import Path

import pytest

from rlinks.aggregator import Aggregator
from rlinks.batch import Batch, DeltaRow
from rlinks.errors import WatermarkMismatchError
from rlinks.log.sqlite import SqliteHitLog
from rlinks.settings import Settings
from rlinks.store.base import KeyRateTracker
from rlinks.store.sqlite import KV_FILE, SqliteStatsStore
from tests.conftest import BASE_MS, BH2, hit, run_cli, wait_until


class ManualClock:
    """A monotonic clock moved by hand."""

    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def rows(*codes: str) -> list[DeltaRow]:
    """One delta row (one hit today) per code."""
    return [(c, BASE_MS // 86_400_000, 1, BASE_MS, BASE_MS) for c in codes]


def batch(start: int, codes: list[str], *, epoch: int = 1, partition: int = 0) -> Batch:
    """A batch of one hit per code, covering (start, start + len(codes)]."""
    return Batch(
        partition=partition,
        epoch=epoch,
        start=start,
        end=start + len(codes),
        deltas=rows(*codes),
        max_ts_ms=BASE_MS,
        hits=len(codes),
    )


def test_tracker_counts_codes_written_by_two_batches_within_a_second() -> None:
    """Codes in both of two batches under 1 s apart are violations; 1 s or more apart, none."""
    tracker = KeyRateTracker()
    tracker.record(0, rows("a", "b", "c"), 10.0)
    assert tracker.violations(0, rows("b", "c", "d"), 10.4) == 2
    assert tracker.violations(0, rows("b", "c", "d"), 11.0) == 0
    assert tracker.violations(1, rows("a"), 10.1) == 0  # another partition: nothing before
    tracker.record(0, rows("b", "c", "d"), 10.4)
    assert tracker.violations(0, rows("a"), 10.5) == 0  # only the previous batch counts


def test_tracker_ignores_a_batch_that_wrote_nothing() -> None:
    """A batch without rows writes no key, so the one before it stays the reference."""
    tracker = KeyRateTracker()
    tracker.record(0, rows("a"), 1.0)
    tracker.record(0, [], 1.5)
    assert tracker.violations(0, rows("a"), 1.6) == 1


def test_apply_persists_violations_with_the_watermark(tmp_path: Path) -> None:
    """The store adds each batch's violations to its partition in the same apply,
    readable from another connection; `reset` clears them."""
    clock = ManualClock()
    store = SqliteStatsStore(tmp_path, key_rate=KeyRateTracker(clock=clock))
    epoch = store.acquire(0)
    store.apply(batch(0, ["a", "b", "c"], epoch=epoch))
    clock.now += 0.5
    store.apply(batch(3, ["b", "c", "d"], epoch=epoch))  # b, c again within 1 s
    clock.now += 1.0
    store.apply(batch(6, ["b", "c", "d"], epoch=epoch))  # a full second later: fine
    other = SqliteStatsStore(tmp_path, readonly=True)
    w = other.watermark(0)
    assert (w.offset, w.batches, w.kv_writes, w.key_rate_violations) == (9, 3, 9, 2)
    other.close()
    store.reset(1)
    assert store.watermark(0).key_rate_violations == 0
    store.close()


def test_a_refused_batch_is_not_remembered(tmp_path: Path) -> None:
    """A batch the store refuses wrote nothing, so it cannot make the next one a violation."""
    clock = ManualClock()
    store = SqliteStatsStore(tmp_path, key_rate=KeyRateTracker(clock=clock))
    epoch = store.acquire(0)
    store.apply(batch(0, ["a"], epoch=epoch))
    clock.now += 5.0
    with pytest.raises(WatermarkMismatchError):
        store.apply(batch(7, ["a"], epoch=epoch))  # not at the watermark: refused
    clock.now += 0.2
    store.apply(batch(1, ["a"], epoch=epoch))  # 5.2 s after the last committed one
    assert store.watermark(0).key_rate_violations == 0
    store.close()


def test_an_old_kv_db_gains_the_column_and_keeps_its_watermarks(tmp_path: Path) -> None:
    """A kv.db made before the counter opens read-only as it is, gets the column
    when opened for writing, and keeps its watermark and counts."""
    conn = sqlite3.connect(tmp_path / KV_FILE)
    conn.executescript(
        "CREATE TABLE watermarks (partition INTEGER PRIMARY KEY,"
        " offset INTEGER NOT NULL DEFAULT 0, epoch INTEGER NOT NULL DEFAULT 0,"
        " as_of_ms INTEGER, flushed_at_ms INTEGER, batches INTEGER NOT NULL DEFAULT 0,"
        " hits INTEGER NOT NULL DEFAULT 0, kv_writes INTEGER NOT NULL DEFAULT 0);"
        "INSERT INTO watermarks VALUES (0, 40, 3, NULL, NULL, 2, 40, 12);"
    )
    conn.commit()
    conn.close()
    old = SqliteStatsStore(tmp_path, readonly=True)
    assert old.watermark(0).key_rate_violations == 0 and old.watermark(0).offset == 40
    old.close()
    store = SqliteStatsStore(tmp_path)
    again = SqliteStatsStore(tmp_path)  # a second opener finds the column there
    w = store.watermark(0)
    assert (w.offset, w.epoch, w.kv_writes, w.key_rate_violations) == (40, 3, 12, 0)
    store.apply(batch(40, ["x"], epoch=3))
    assert again.watermark(0).offset == 41
    store.close()
    again.close()


def steady_traffic(data: Path, window_s: float, seconds: float) -> int:
    """Run an aggregator with `window_s` on a real clock while hits of the same
    three codes arrive every 20 ms for `seconds`; once it has caught up on its
    own, stop it and return the partition's key-rate violations."""
    log = SqliteHitLog(data)
    store = SqliteStatsStore(data)
    agg = Aggregator(
        SqliteHitLog(data), store, Settings(data_dir=data, window_s=window_s, poll_s=0.01)
    )
    thread = threading.Thread(target=agg.run, daemon=True)
    thread.start()
    sent = 0
    try:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            log.append([hit(f"h{sent + i}", BASE_MS + sent + i, c) for i, c in enumerate("abc")])
            sent += 3
            time.sleep(0.02)
        assert wait_until(lambda: store.watermark(0).offset == sent, timeout=window_s + 10)
    finally:
        agg.stop()
        thread.join(timeout=20)
    violations = store.watermark(0).key_rate_violations
    log.close()
    store.close()
    return violations


def test_a_one_second_window_never_writes_a_key_twice_within_a_second(tmp_path: Path) -> None:
    """Under steady traffic an aggregator with --window 1 keeps every key within the limit."""
    assert steady_traffic(tmp_path / "w1", 1.0, 2.5) == 0


def test_a_tenth_of_a_second_window_breaks_the_limit(tmp_path: Path) -> None:
    """With --window 0.1 consecutive batches rewrite the same keys: violations are counted."""
    assert steady_traffic(tmp_path / "w01", 0.1, 1.5) >= 3


def test_status_json_shows_violations_per_partition(tmp_path: Path) -> None:
    """`rlinks-bh2 status --json` reports each partition's key_rate_violations."""
    data = tmp_path / "data"
    log = SqliteHitLog(data)
    log.append([hit("1", BASE_MS, "a"), hit("2", BASE_MS + 1, "a")])
    log.close()
    clock = ManualClock()
    store = SqliteStatsStore(data, key_rate=KeyRateTracker(clock=clock))
    epoch = store.acquire(0)
    store.apply(batch(0, ["a"], epoch=epoch))
    clock.now += 0.3
    store.apply(batch(1, ["a"], epoch=epoch))
    store.close()
    done = run_cli("status", "--data", data, "--json", exe=BH2)
    assert done.returncode == 0, done.stderr
    (part,) = json.loads(done.stdout)["partitions"]
    assert part["key_rate_violations"] == 1 and part["kv_writes"] == 2
