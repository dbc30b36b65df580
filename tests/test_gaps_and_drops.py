"""Two failure modes that must be loud: a log trimmed below the watermark, and
hits dropped by a full async queue."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest

from rlinks.backends import Target
from rlinks.errors import LogGapError
from rlinks.log.sqlite import HITS_FILE, SqliteHitLog
from rlinks.server.hitwriter import HitWriter
from tests.conftest import hit, run_cli


def _three_blocks(data: Path) -> None:
    log = SqliteHitLog(data)
    for n in range(3):  # one append, one block: offsets 1-2, 3-4, 5-6
        log.append([hit(f"b{n}-{k}", 1_764_000_000_000 + n, "gap") for k in range(2)])
    log.close()


def _drop_block(data: Path, last_offset: int) -> None:
    with sqlite3.connect(data / HITS_FILE) as conn:
        conn.execute("DELETE FROM blocks WHERE last_offset = ?", (last_offset,))


def test_a_hole_after_the_watermark_stops_the_read_loudly(tmp_path: Path) -> None:
    """Reading across missing offsets raises LogGapError naming them; never skips."""
    _three_blocks(tmp_path)
    _drop_block(tmp_path, 4)
    log = SqliteHitLog(tmp_path, readonly=True)
    assert len(log.read(0, 0, 2)) == 2  # before the hole all is well
    with pytest.raises(LogGapError, match=r"3\.\.4"):
        log.read(0, 2, 10)
    log.close()


def test_run_exits_with_the_gap_error_and_counts_nothing_past_it(tmp_path: Path) -> None:
    """`rlinks-bh2 run --once` on a log with a hole exits 2 and stops at the hole."""
    _three_blocks(tmp_path)
    _drop_block(tmp_path, 4)
    done = run_cli("run", "--data", str(tmp_path), "--once", "--max-batch", "2")
    assert done.returncode == 2
    assert "no hits at offsets 3..4" in done.stderr
    status = run_cli("status", "--data", str(tmp_path), "--json")
    assert '"watermark": 2' in status.stdout


def test_a_full_async_group_goes_without_waiting_out_the_linger(tmp_path: Path) -> None:
    """Hits arriving faster than a group per linger are sent as full groups at
    once. (Once, every group lingered: above `max_group` hits per linger the
    queue grew until it was full, and async redirects dropped hits.)"""
    linger_s = 5.0  # longer than the test waits for them: only full groups may go

    async def scenario() -> tuple[list[int], int, int]:
        groups: list[int] = []
        writer = HitWriter(
            Target(data_dir=tmp_path),
            durable=False,
            max_group=100,
            queue_max=1_000,
            linger_s=linger_s,
            on_commit=lambda n, _s, _depth: groups.append(n),
        )
        await writer.start()
        for k in range(250):
            assert writer.record_nowait(hit(f"g{k}", 1_764_000_000_000 + k, f"c{k % 7}"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + linger_s * 0.8
        while sum(groups) < 200 and loop.time() < deadline:
            await asyncio.sleep(0.01)
        sent = list(groups)
        await writer.stop()  # the last 50 go once their linger ends
        return sent, writer.stats.dropped, sum(groups)

    sent, dropped, written = asyncio.run(scenario())
    assert sent[:2] == [100, 100]  # both full groups, long before the linger ends
    assert dropped == 0
    assert written == 250
    log = SqliteHitLog(tmp_path, readonly=True)
    assert log.end(0).offset == 250
    ids = [h.id for _offset, h in log.records(0)]
    assert ids == [f"g{k}" for k in range(250)]  # in order, each once


def test_a_full_async_queue_drops_and_counts_what_it_drops(tmp_path: Path) -> None:
    """In async mode a full queue refuses hits (counted), and the accepted ones
    are all written when the writer stops."""

    async def scenario() -> tuple[list[bool], int]:
        writer = HitWriter(Target(data_dir=tmp_path), durable=False, queue_max=2, linger_s=0.05)
        await writer.start()
        # record() does not yield in async mode, so the writer cannot drain
        # between these calls: the queue holds two, the rest are dropped.
        kept = [await writer.record(hit(f"q{k}", 1_764_000_000_000, "full")) for k in range(5)]
        await writer.stop()
        return kept, writer.stats.dropped

    kept, dropped = asyncio.run(scenario())
    assert kept == [True, True, False, False, False]
    assert dropped == 3
    log = SqliteHitLog(tmp_path, readonly=True)
    assert log.end(0).offset == 2
    log.close()
