"""The stats store in SQLite (`kv.db`): one row per code and UTC day.

A code's snapshot is its day rows folded together (hits summed, first/last by
min/max), so one apply writes one row per (code, day) that changed and nothing
else: the fewest writes that keep per-day counts.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

from rlinks.batch import Batch
from rlinks.errors import StaleEpochError, WatermarkMismatchError
from rlinks.sqlitedb import Transaction, connect
from rlinks.store.base import KeyRateTracker, Snapshot, Watermark
from rlinks.timefmt import day_to_iso, now_ms

KV_FILE = "kv.db"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS stats_daily (
    code TEXT NOT NULL,
    day INTEGER NOT NULL,          -- days since 1970-01-01 UTC
    hits INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (code, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS watermarks (
    partition INTEGER PRIMARY KEY,
    offset INTEGER NOT NULL DEFAULT 0,
    epoch INTEGER NOT NULL DEFAULT 0,
    as_of_ms INTEGER,
    flushed_at_ms INTEGER,
    batches INTEGER NOT NULL DEFAULT 0,
    hits INTEGER NOT NULL DEFAULT 0,
    kv_writes INTEGER NOT NULL DEFAULT 0,
    key_rate_violations INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS leases (
    partition INTEGER PRIMARY KEY, owner TEXT NOT NULL, expires_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (worker TEXT PRIMARY KEY, expires_ms INTEGER NOT NULL);
"""
# Columns added after the first release: (name, definition), added to an older
# kv.db when it is opened for writing, so old data folders keep working.
_ADDED_COLUMNS = (("key_rate_violations", "INTEGER NOT NULL DEFAULT 0"),)

_UPSERT = (
    "INSERT INTO stats_daily VALUES (?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
    " hits = hits + excluded.hits,"
    " first_ms = min(first_ms, excluded.first_ms),"
    " last_ms = max(last_ms, excluded.last_ms)"
)


class SqliteStatsStore:
    """`StatsStore` on a SQLite file."""

    def __init__(
        self, data_dir: Path, *, readonly: bool = False, key_rate: KeyRateTracker | None = None
    ) -> None:
        path = Path(data_dir) / KV_FILE
        if not readonly:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        self._conn = connect(path, readonly=readonly)
        self._key_rate = key_rate or KeyRateTracker()
        if not readonly:
            self._conn.executescript(_SCHEMA)
            self._add_missing_columns()

    def _add_missing_columns(self) -> None:
        have = {row[1] for row in self._conn.execute("PRAGMA table_info(watermarks)")}
        for name, definition in _ADDED_COLUMNS:
            if name in have:
                continue
            try:
                self._conn.execute(f"ALTER TABLE watermarks ADD COLUMN {name} {definition}")
            except sqlite3.OperationalError as e:
                if "duplicate column" not in str(e):  # else another process just added it
                    raise

    def acquire(self, partition: int) -> int:
        with Transaction(self._conn) as c:
            return _next_epoch(c, partition)

    # -- leases (rlinks.leases.LeaseStore): wall-clock ms, one machine ---------------

    def try_lease(self, partition: int, owner: str, ttl_ms: int) -> int | None:
        now = now_ms()
        with Transaction(self._conn) as c:
            row = c.execute(
                "SELECT owner, expires_ms FROM leases WHERE partition = ?", (partition,)
            ).fetchone()
            if row is not None and row[0] != owner and row[1] > now:
                return None
            c.execute(
                "INSERT OR REPLACE INTO leases VALUES (?, ?, ?)", (partition, owner, now + ttl_ms)
            )
            return _next_epoch(c, partition)

    def renew_lease(self, partition: int, owner: str, ttl_ms: int) -> bool:
        with Transaction(self._conn) as c:
            now = now_ms()
            renewed = c.execute(
                "UPDATE leases SET expires_ms = ?"
                " WHERE partition = ? AND owner = ? AND expires_ms > ?",
                (now + ttl_ms, partition, owner, now),
            ).rowcount
        return renewed == 1

    def release_lease(self, partition: int, owner: str) -> None:
        with Transaction(self._conn) as c:
            c.execute("DELETE FROM leases WHERE partition = ? AND owner = ?", (partition, owner))

    def heartbeat(self, worker: str, ttl_ms: int) -> list[str]:
        now = now_ms()
        with Transaction(self._conn) as c:
            c.execute("INSERT OR REPLACE INTO workers VALUES (?, ?)", (worker, now + ttl_ms))
            c.execute("DELETE FROM workers WHERE expires_ms <= ?", (now,))
            return [w for (w,) in c.execute("SELECT worker FROM workers ORDER BY worker")]

    def watermark(self, partition: int) -> Watermark:
        row = self._conn.execute(
            "SELECT * FROM watermarks WHERE partition = ?", (partition,)
        ).fetchone()
        return Watermark(*row) if row else Watermark(partition, 0, 0)

    def watermarks(self) -> list[Watermark]:
        return [Watermark(*r) for r in self._conn.execute("SELECT * FROM watermarks ORDER BY 1")]

    def apply(self, batch: Batch, *, before_commit: Callable[[], None] | None = None) -> None:
        with Transaction(self._conn) as c:
            # Step 1. Check fencing and position before the first write.
            self._check(c, batch)
            # Step 2. Upsert one row per (code, day) that changed.
            c.executemany(_UPSERT, batch.deltas)
            # Step 3. Move the watermark in the same transaction, with the
            # write counts (keys written, keys written again within a second).
            at = self._key_rate.now()
            c.execute(
                "UPDATE watermarks SET offset = ?,"
                " as_of_ms = coalesce(max(coalesce(as_of_ms, ?), ?), as_of_ms),"
                " flushed_at_ms = ?, batches = batches + 1, hits = hits + ?,"
                " kv_writes = kv_writes + ?, key_rate_violations = key_rate_violations + ?"
                " WHERE partition = ?",
                (
                    batch.end,
                    batch.max_ts_ms,
                    batch.max_ts_ms,
                    now_ms(),
                    batch.hits,
                    batch.codes,
                    self._key_rate.violations(batch.partition, batch.deltas, at),
                    batch.partition,
                ),
            )
            if before_commit is not None:
                before_commit()
            # Step 4. COMMIT (on leaving the block): all of it, or none of it.
        self._key_rate.record(batch.partition, batch.deltas, at)

    def _check(self, c: sqlite3.Connection, batch: Batch) -> None:
        row = c.execute(
            "SELECT offset, epoch FROM watermarks WHERE partition = ?", (batch.partition,)
        ).fetchone()
        if row is None:
            raise StaleEpochError(batch.partition, batch.epoch, 0, acquired=False)
        offset, epoch = row
        if batch.epoch != epoch:
            raise StaleEpochError(batch.partition, batch.epoch, epoch)
        if batch.start != offset:
            raise WatermarkMismatchError(batch.partition, batch.start, batch.end, offset)

    def snapshot(self, code: str) -> Snapshot | None:
        rows = self._conn.execute(
            "SELECT code, day, hits, first_ms, last_ms FROM stats_daily"
            " WHERE code = ? ORDER BY day",
            (code,),
        ).fetchall()
        return _snapshot_of(rows) if rows else None

    def snapshots(self) -> Iterator[Snapshot]:
        cur = self._conn.execute(
            "SELECT code, day, hits, first_ms, last_ms FROM stats_daily ORDER BY code, day"
        )
        rows: list[tuple[str, int, int, int, int]] = []
        for row in cur:
            if rows and row[0] != rows[0][0]:
                yield _snapshot_of(rows)
                rows = []
            rows.append(row)
        if rows:
            yield _snapshot_of(rows)

    def reset(self, partitions: int) -> dict[int, int]:
        with Transaction(self._conn) as c:
            c.execute("DELETE FROM stats_daily")
            c.executemany(
                "INSERT OR IGNORE INTO watermarks (partition) VALUES (?)",
                [(p,) for p in range(partitions)],
            )
            epochs = c.execute(
                "UPDATE watermarks SET offset = 0, epoch = epoch + 1, as_of_ms = NULL,"
                " flushed_at_ms = NULL, batches = 0, hits = 0, kv_writes = 0,"
                " key_rate_violations = 0"
                " RETURNING partition, epoch"
            ).fetchall()
        return dict(epochs)

    def close(self) -> None:
        self._conn.close()


def _next_epoch(c: sqlite3.Connection, partition: int) -> int:
    """Take the partition's next epoch (inside the caller's transaction)."""
    c.execute("INSERT OR IGNORE INTO watermarks (partition) VALUES (?)", (partition,))
    (epoch,) = c.execute(
        "UPDATE watermarks SET epoch = epoch + 1 WHERE partition = ? RETURNING epoch",
        (partition,),
    ).fetchone()
    return int(epoch)


def _snapshot_of(rows: list[tuple[str, int, int, int, int]]) -> Snapshot:
    """One snapshot from the day rows of one code."""
    return Snapshot(
        code=rows[0][0],
        hits=sum(r[2] for r in rows),
        first_ms=min(r[3] for r in rows),
        last_ms=max(r[4] for r in rows),
        daily={day_to_iso(r[1]): r[2] for r in rows},
    )
