"""Fencing: a second aggregator or a rebuild takes a partition; the old owner can't count."""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from rlinks.aggregator import Aggregator
from rlinks.errors import StaleEpochError
from rlinks.log.sqlite import SqliteHitLog
from rlinks.settings import Settings
from rlinks.verify import differences
from tests.conftest import (
    Backend,
    FrozenClock,
    append_all,
    folder_snapshots,
    folder_watermark,
    make_hits,
    recount,
    run_cli,
    snapshots,
    start_cli,
    wait_until,
)


def test_a_stale_aggregator_is_refused_in_process(backend: Backend) -> None:
    """After B acquires the partition, A's apply raises StaleEpochError and changes nothing."""
    log = backend.log()
    first = make_hits(300, seed=1)
    log.append(first)
    conf = Settings(data_dir=backend.root)
    a = Aggregator(backend.log(), backend.store(), conf)
    a.run(once=True)
    b = Aggregator(backend.log(), backend.store(), conf)
    b.start()
    more = make_hits(200, seed=2, start=300)
    log.append(more)
    store = backend.store()
    before = (snapshots(store), store.watermarks())
    with pytest.raises(StaleEpochError) as e:
        a.run(once=True)
    assert (e.value.epoch, e.value.current) == (1, 2)
    assert "epoch 1" in str(e.value) and "epoch 2" in str(e.value)
    assert (snapshots(store), store.watermarks()) == before
    b.run(once=True)
    assert snapshots(store) == recount(first + more)
    assert differences(log, store) == []


def test_a_zombie_holding_pending_hits_cannot_double_count(backend: Backend) -> None:
    """A paused owner with hits read but not applied is fenced when it finally flushes."""
    log = backend.log()
    hits = make_hits(400, seed=3)
    conf = Settings(data_dir=backend.root, window_s=1e9, poll_s=0.005)
    zombie = Aggregator(backend.log(), backend.store(), conf, clock=FrozenClock())
    errors: list[BaseException] = []

    def run_zombie() -> None:
        try:
            zombie.run()
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=run_zombie, daemon=True)
    thread.start()
    try:
        assert wait_until(lambda: backend.store().watermark(0).epoch == 1)
        log.append(hits)
        assert wait_until(lambda: zombie.counters.hits_read == 400), errors  # read, not applied
        Aggregator(backend.log(), backend.store(), Settings(data_dir=backend.root)).run(once=True)
    finally:
        zombie.stop()  # its final flush carries epoch 1
        thread.join(timeout=20)
    assert len(errors) == 1 and isinstance(errors[0], StaleEpochError)
    store = backend.store()
    assert snapshots(store) == recount(hits)
    assert store.watermark(0).offset == 400
    assert differences(log, store) == []


def test_a_stale_cli_aggregator_exits_3_with_a_clear_message(
    tmp_path: Path, procs: list[Any]
) -> None:
    """`run` fenced out by a newer `run` exits 3, says which epochs, and counts stay exact."""
    data = tmp_path / "data"
    first = make_hits(3000, seed=4)
    append_all(data, first)
    a = start_cli("run", "--data", data, "--window", "0.05", "--max-batch", "1000")
    procs.append(a)
    assert wait_until(lambda: (w := folder_watermark(data)) is not None and w.offset == 3000)
    b = run_cli("run", "--data", data, "--once")
    assert b.returncode == 0, b.stderr
    w = folder_watermark(data)
    assert w is not None and w.epoch == 2
    more = make_hits(500, seed=5, start=3000)
    append_all(data, more)  # A reads these and tries to apply them under epoch 1
    _, stderr = a.communicate(timeout=30)
    assert a.returncode == 3, stderr
    assert "epoch 1" in stderr and "epoch 2" in stderr
    assert "another aggregator" in stderr
    assert folder_snapshots(data) == recount(first)
    verified = run_cli("verify", "--data", data)
    assert verified.returncode == 0 and "500 hits not aggregated" in verified.stdout
    assert run_cli("run", "--data", data, "--once").returncode == 0
    assert folder_snapshots(data) == recount(first + more)
    assert run_cli("verify", "--data", data).returncode == 0


def test_rebuild_fences_out_a_running_aggregator(tmp_path: Path, procs: list[Any]) -> None:
    """`rebuild` recomputes identical stats under a new epoch; the old `run` then exits 3."""
    data = tmp_path / "data"
    first = make_hits(4000, seed=6)
    append_all(data, first)
    a = start_cli("run", "--data", data, "--window", "0.05")
    procs.append(a)
    assert wait_until(lambda: (w := folder_watermark(data)) is not None and w.offset == 4000)
    counted = folder_snapshots(data)
    assert counted == recount(first)
    rebuilt = run_cli("rebuild", "--data", data)
    assert rebuilt.returncode == 0, rebuilt.stderr
    assert "stats cleared" in rebuilt.stderr
    w = folder_watermark(data)
    assert w is not None and w.offset == 4000 and w.epoch > 1
    assert folder_snapshots(data) == counted
    more = make_hits(100, seed=7, start=4000)
    append_all(data, more)
    _, stderr = a.communicate(timeout=30)
    assert a.returncode == 3, stderr
    assert "epoch" in stderr
    assert folder_snapshots(data) == counted
    assert run_cli("verify", "--data", data).returncode == 0


def test_rebuild_recounts_after_tampering(tmp_path: Path) -> None:
    """`rebuild` recomputes the stats from the log, repairing tampered stats."""
    data = tmp_path / "data"
    hits = make_hits(1500, seed=8)
    append_all(data, hits)
    assert run_cli("run", "--data", data, "--once").returncode == 0
    with contextlib.closing(sqlite3.connect(data / "kv.db")) as conn, conn:
        conn.execute("UPDATE stats_daily SET hits = hits + 5")
    assert run_cli("verify", "--data", data).returncode == 1
    assert run_cli("rebuild", "--data", data).returncode == 0
    assert folder_snapshots(data) == recount(hits)
    assert run_cli("verify", "--data", data).returncode == 0
    log = SqliteHitLog(data)
    try:
        assert log.end(0).offset == 1500
    finally:
        log.close()
