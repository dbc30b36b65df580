"""The HITS log in SQLite (`hits.db`): blocks of hits, one row per append.

Each row is a block of consecutive offsets `[first_offset, last_offset]` of one
partition, holding the full records (msgpack) and two derived columns, code ids
(int32) and timestamps (int64), so the aggregator reads a block as arrays. This
is Kafka's record batch: one row and one index entry per append, not per hit.
Hit ids live in `hit_ids` (one row per hit), which makes appends idempotent.
"""

from __future__ import annotations

import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path

import msgspec
import numpy as np

from rlinks.errors import ConfigError, LogGapError
from rlinks.hits import Hit, Quarantined
from rlinks.log.base import LogEnd, LogSlice, Position, partition_of
from rlinks.sqlitedb import Transaction, connect
from rlinks.timefmt import now_ms

HITS_FILE = "hits.db"
BLOCK_HITS = 4096  # the most hits one row holds; larger appends span rows
_ID_LOOKUP_CHUNK = 500  # stays under SQLite's bound-parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS log_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions (
    partition INTEGER PRIMARY KEY,
    end_offset INTEGER NOT NULL,   -- newest offset ever assigned; never decreases
    max_ts_ms INTEGER
);
CREATE TABLE IF NOT EXISTS codes (code_id INTEGER PRIMARY KEY, code TEXT NOT NULL UNIQUE);
CREATE TABLE IF NOT EXISTS blocks (
    id INTEGER PRIMARY KEY,
    partition INTEGER NOT NULL,
    first_offset INTEGER NOT NULL,
    last_offset INTEGER NOT NULL,
    max_ts_ms INTEGER NOT NULL,
    code_ids BLOB NOT NULL,
    ts_ms BLOB NOT NULL,
    records BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS blocks_position ON blocks (partition, last_offset);
CREATE TABLE IF NOT EXISTS hit_ids (
    id TEXT PRIMARY KEY, partition INTEGER NOT NULL, offset INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS quarantine (
    id INTEGER PRIMARY KEY,
    source TEXT NOT NULL,
    line INTEGER NOT NULL,
    byte_offset INTEGER NOT NULL,
    reason TEXT NOT NULL,
    excerpt TEXT NOT NULL,
    at_ms INTEGER NOT NULL
);
"""

_RECORDS = msgspec.msgpack.Encoder()
_RECORDS_DECODER = msgspec.msgpack.Decoder(list[Hit])


class SqliteHitLog:
    """`HitLog` on a SQLite file. Safe to share between processes (WAL)."""

    def __init__(self, data_dir: Path, *, partitions: int = 1, readonly: bool = False) -> None:
        path = Path(data_dir) / HITS_FILE
        if not readonly:
            Path(data_dir).mkdir(parents=True, exist_ok=True)
        self._conn = connect(path, synchronous="NORMAL", readonly=readonly)
        if not readonly:
            self._conn.executescript(_SCHEMA)
            with Transaction(self._conn) as c:
                c.execute("INSERT OR IGNORE INTO log_meta VALUES ('partitions', ?)", (partitions,))
                c.executemany(
                    "INSERT OR IGNORE INTO partitions VALUES (?, 0, NULL)",
                    [(p,) for p in range(partitions)],
                )
        row = self._conn.execute("SELECT value FROM log_meta WHERE key = 'partitions'").fetchone()
        if row is None:
            raise ConfigError(f"{path} is not an rlinks hits log")
        self._partitions = int(row[0])
        self._code_ids: dict[str, int] = {}
        self._names: list[str] = [""]  # code ids start at 1

    @property
    def partitions(self) -> int:
        return self._partitions

    # -- appending -------------------------------------------------------------

    def append(self, hits: Sequence[Hit], *, fresh_ids: bool = False) -> list[Position]:
        if not hits:
            return []
        positions: list[Position | None] = [None] * len(hits)
        repeats: list[tuple[int, int]] = []  # (index, index of the first with that id)
        with Transaction(self._conn) as c:
            known = {} if fresh_ids else self._logged_ids(c, [h.id for h in hits])
            fresh: dict[int, list[int]] = {}  # partition -> input indexes, in order
            first_seen: dict[str, int] = {}
            for i, h in enumerate(hits):
                if h.id in known:
                    positions[i] = Position(*known[h.id], duplicate=True)
                elif h.id in first_seen:
                    repeats.append((i, first_seen[h.id]))
                else:
                    first_seen[h.id] = i
                    fresh.setdefault(partition_of(h.code, self._partitions), []).append(i)
            code_ids = self._intern(c, {hits[i].code for idx in fresh.values() for i in idx})
            for partition, indexes in fresh.items():
                block_hits = [hits[i] for i in indexes]
                logged = self._append_partition(
                    c, partition, block_hits, code_ids, index_ids=not fresh_ids
                )
                for i, logged_at in zip(indexes, logged, strict=True):
                    positions[i] = logged_at
        self._code_ids = code_ids  # committed: the new ids are real now
        for i, first in repeats:
            original = positions[first]
            if original is not None:
                positions[i] = original._replace(duplicate=True)
        return [p for p in positions if p is not None]

    def _append_partition(
        self,
        c: sqlite3.Connection,
        partition: int,
        hits: list[Hit],
        code_ids: dict[str, int],
        *,
        index_ids: bool,
    ) -> list[Position]:
        """Write `hits` as blocks at the partition's end; their positions."""
        (end,) = c.execute(
            "SELECT end_offset FROM partitions WHERE partition = ?", (partition,)
        ).fetchone()
        max_ts = max(h.ts_ms for h in hits)
        for start in range(0, len(hits), BLOCK_HITS):
            block = hits[start : start + BLOCK_HITS]
            first = end + 1
            end += len(block)
            c.execute(
                "INSERT INTO blocks (partition, first_offset, last_offset, max_ts_ms,"
                " code_ids, ts_ms, records) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    partition,
                    first,
                    end,
                    max(h.ts_ms for h in block),
                    np.fromiter((code_ids[h.code] for h in block), np.int32, len(block)).tobytes(),
                    np.fromiter((h.ts_ms for h in block), np.int64, len(block)).tobytes(),
                    _RECORDS.encode(block),
                ),
            )
            if index_ids:
                c.executemany(
                    "INSERT INTO hit_ids VALUES (?, ?, ?)",
                    [(h.id, partition, first + k) for k, h in enumerate(block)],
                )
        c.execute(
            "UPDATE partitions SET end_offset = ?, max_ts_ms = max(coalesce(max_ts_ms, ?), ?)"
            " WHERE partition = ?",
            (end, max_ts, max_ts, partition),
        )
        return [Position(partition, end - len(hits) + 1 + k) for k in range(len(hits))]

    def _logged_ids(self, c: sqlite3.Connection, ids: list[str]) -> dict[str, tuple[int, int]]:
        found: dict[str, tuple[int, int]] = {}
        unique = list(dict.fromkeys(ids))
        for k in range(0, len(unique), _ID_LOOKUP_CHUNK):
            part = unique[k : k + _ID_LOOKUP_CHUNK]
            marks = ",".join("?" * len(part))
            for hit_id, partition, offset in c.execute(
                f"SELECT id, partition, offset FROM hit_ids WHERE id IN ({marks})", part
            ):
                found[hit_id] = (partition, offset)
        return found

    def _intern(self, c: sqlite3.Connection, codes: set[str]) -> dict[str, int]:
        """Ids for `codes`, adding new ones to the code table in this transaction.

        New ids join the cache only once the transaction commits (see append):
        a rolled-back id may be given to another code later.
        """
        missing = [code for code in codes if code not in self._code_ids]
        if not missing:
            return self._code_ids
        c.executemany("INSERT OR IGNORE INTO codes (code) VALUES (?)", [(m,) for m in missing])
        ids = dict(self._code_ids)
        for k in range(0, len(missing), _ID_LOOKUP_CHUNK):
            part = missing[k : k + _ID_LOOKUP_CHUNK]
            marks = ",".join("?" * len(part))
            ids.update(c.execute(f"SELECT code, code_id FROM codes WHERE code IN ({marks})", part))
        return ids

    # -- reading ---------------------------------------------------------------

    def read(self, partition: int, after_offset: int, limit: int) -> LogSlice:
        code_parts: list[np.ndarray] = []
        ts_parts: list[np.ndarray] = []
        taken = 0
        end = after_offset
        rows = self._conn.execute(
            "SELECT first_offset, last_offset, code_ids, ts_ms FROM blocks"
            " WHERE partition = ? AND last_offset > ? ORDER BY last_offset",
            (partition, after_offset),
        )
        for first, last, code_blob, ts_blob in rows:
            if first > end + 1:
                raise LogGapError(
                    f"partition {partition}: the log holds no hits at offsets "
                    f"{end + 1}..{first - 1} (trimmed below the watermark?); "
                    "counts after this point would be wrong, so nothing is read"
                )
            skip = end + 1 - first  # a batch may have ended inside this block
            take = min(last - first + 1 - skip, limit - taken)
            code_parts.append(np.frombuffer(code_blob, np.int32)[skip : skip + take])
            ts_parts.append(np.frombuffer(ts_blob, np.int64)[skip : skip + take])
            taken += take
            end += take
            if taken >= limit:
                break
        rows.close()
        codes = np.concatenate(code_parts) if code_parts else np.empty(0, np.int32)
        if codes.size and int(codes.max()) >= len(self._names):
            self._load_names()
        return LogSlice(
            partition=partition,
            start=after_offset,
            end=end,
            code_ids=codes,
            ts_ms=np.concatenate(ts_parts) if ts_parts else np.empty(0, np.int64),
            names=self._names,
        )

    def _load_names(self) -> None:
        for code_id, code in self._conn.execute(
            "SELECT code_id, code FROM codes WHERE code_id >= ? ORDER BY code_id",
            (len(self._names),),
        ):
            self._names.extend([""] * (code_id - len(self._names)))
            self._names.append(code)

    def records(self, partition: int, after_offset: int = 0) -> Iterator[tuple[int, Hit]]:
        rows = self._conn.execute(
            "SELECT first_offset, records FROM blocks"
            " WHERE partition = ? AND last_offset > ? ORDER BY last_offset",
            (partition, after_offset),
        )
        for first, blob in rows:
            for offset, hit in zip(itertools.count(first), _RECORDS_DECODER.decode(blob)):
                if offset > after_offset:
                    yield offset, hit

    def end(self, partition: int) -> LogEnd:
        row = self._conn.execute(
            "SELECT end_offset, max_ts_ms FROM partitions WHERE partition = ?", (partition,)
        ).fetchone()
        if row is None:
            raise ConfigError(f"the log has no partition {partition} (it has {self._partitions})")
        return LogEnd(partition, row[0], row[1])

    # -- quarantine ------------------------------------------------------------

    def quarantine(self, source: str, records: Sequence[Quarantined]) -> None:
        if not records:
            return
        at = now_ms()
        with Transaction(self._conn) as c:
            c.executemany(
                "INSERT INTO quarantine (source, line, byte_offset, reason, excerpt, at_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                [(source[:512], q.line, q.byte_offset, q.reason, q.excerpt, at) for q in records],
            )

    def quarantined(self) -> int:
        (n,) = self._conn.execute("SELECT count(*) FROM quarantine").fetchone()
        return int(n)

    def close(self) -> None:
        self._conn.close()
