"""The HITS log in SQLite (`hits.db`): blocks of hits, one row per append.

Each row is a block of consecutive offsets `[first_offset, last_offset]` of one
partition, holding the full records (msgpack) and two derived columns, code ids
(int32) and timestamps (int64), so the aggregator reads a block as arrays. This
is Kafka's record batch: one row and one index entry per append, not per hit.
Hit ids live in `hit_ids` (one row per hit), which makes appends idempotent.

`trim` (compaction) deletes a prefix of a partition's blocks and, in the same
transaction, folds their hits into `compacted_days` (per code id and UTC day)
and moves `compaction.upto`. It also deletes the trimmed hits' `hit_ids` rows,
so the dedup horizon of a compacted log is its retention: an id resent after
its hit was trimmed is logged again. `partitions.end_offset` never moves back:
offsets are never reused.
"""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import cast

import msgspec
import numpy as np
import numpy.typing as npt

from rlinks.batch import DayCounts, DeltaRow
from rlinks.errors import ConfigError
from rlinks.hits import Hit, Quarantined
from rlinks.log.base import (
    EncodedHits,
    LogEnd,
    LogSlice,
    Position,
    blocks_to_trim,
    gap_error,
    split_by_partition,
    with_repeats,
)
from rlinks.sqlitedb import Transaction, connect
from rlinks.timefmt import now_ms

HITS_FILE = "hits.db"
BLOCK_HITS = 4096  # the most hits one row holds; larger appends span rows
_ID_LOOKUP_CHUNK = 500  # stays under SQLite's bound-parameter limit
# Blocks (up to 262,144 hits) folded and deleted per trim transaction: the
# write lock the server's appends wait for is held only that long.
_TRIM_BLOCKS = 64

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
CREATE TABLE IF NOT EXISTS compaction (
    partition INTEGER PRIMARY KEY,
    upto INTEGER NOT NULL          -- hits at offsets <= upto are trimmed, summarised below
);
CREATE TABLE IF NOT EXISTS compacted_days (
    partition INTEGER NOT NULL,
    code_id INTEGER NOT NULL,
    day INTEGER NOT NULL,          -- days since 1970-01-01 UTC
    hits INTEGER NOT NULL,
    first_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    PRIMARY KEY (partition, code_id, day)
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

_FOLD = (
    "INSERT INTO compacted_days VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO UPDATE SET"
    " hits = hits + excluded.hits,"
    " first_ms = min(first_ms, excluded.first_ms),"
    " last_ms = max(last_ms, excluded.last_ms)"
)


class _HitId(msgspec.Struct, array_like=True):
    """The first field of a logged Hit: decoding only it skips the rest."""

    id: str


_RECORDS = msgspec.msgpack.Encoder()
_RECORDS_DECODER = msgspec.msgpack.Decoder(list[Hit])
_IDS_DECODER = msgspec.msgpack.Decoder(list[_HitId])


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
        with self._interning() as interned, Transaction(self._conn) as c:
            known = {} if fresh_ids else self._logged_ids(c, [h.id for h in hits])
            if known:
                for i, h in enumerate(hits):
                    if h.id in known:
                        positions[i] = Position(*known[h.id], duplicate=True)
            fresh, repeats = split_by_partition(
                hits, self._partitions, fresh_ids=fresh_ids, logged=known
            )
            for partition, indexes in fresh.items():
                block_hits = [hits[i] for i in indexes]
                logged = self._append_partition(
                    c, partition, block_hits, index_ids=not fresh_ids, interned=interned
                )
                for i, logged_at in zip(indexes, logged, strict=True):
                    positions[i] = logged_at
        return with_repeats(positions, repeats)

    def append_encoded(self, group: EncodedHits) -> None:
        ts_ms = group.times()  # checks the parts agree
        if not len(group):
            return
        if self._partitions > 1 or len(group) > BLOCK_HITS:
            self.append(group.hits(), fresh_ids=True)  # split, as `append` does
            return
        with self._interning() as interned, Transaction(self._conn) as c:
            end = self._end(c, 0)
            code_ids = self._ids_of(c, group.codes, interned)
            newest = int(ts_ms.max())
            last = end + len(group)
            self._insert_block(
                c, 0, end + 1, last, newest, np.array(code_ids, np.int32), ts_ms, group.records
            )
            self._advance(c, 0, last, newest)

    @contextlib.contextmanager
    def _interning(self) -> Iterator[dict[str, int]]:
        """The codes given ids in an append's transaction (see `_ids_of`); if it
        fails, they leave the cache again, as a rolled-back id may yet be given
        to another code."""
        interned: dict[str, int] = {}
        try:
            yield interned
        except BaseException:
            for code in interned:
                del self._code_ids[code]
            raise

    def _append_partition(
        self,
        c: sqlite3.Connection,
        partition: int,
        hits: list[Hit],
        *,
        index_ids: bool,
        interned: dict[str, int],
    ) -> list[Position]:
        """Write `hits` as blocks at the partition's end; their positions. New
        codes get ids in this transaction and are added to `interned`."""
        end = self._end(c, partition)
        code_ids = self._ids_of(c, [h.code for h in hits], interned)
        ts_ms = [h.ts_ms for h in hits]
        for start in range(0, len(hits), BLOCK_HITS):
            block = hits[start : start + BLOCK_HITS]
            ts = ts_ms[start : start + BLOCK_HITS]
            first = end + 1
            end += len(block)
            self._insert_block(
                c,
                partition,
                first,
                end,
                max(ts),
                np.array(code_ids[start : start + BLOCK_HITS], np.int32),
                np.array(ts, np.int64),
                _RECORDS.encode(block),
            )
            if index_ids:
                c.executemany(
                    "INSERT INTO hit_ids VALUES (?, ?, ?)",
                    [(h.id, partition, first + k) for k, h in enumerate(block)],
                )
        self._advance(c, partition, end, max(ts_ms))
        offsets = range(end - len(hits) + 1, end + 1)
        at = zip(itertools.repeat(partition), offsets, itertools.repeat(False))
        return list(map(Position._make, at))

    @staticmethod
    def _insert_block(
        c: sqlite3.Connection,
        partition: int,
        first: int,
        last: int,
        max_ts_ms: int,
        code_ids: npt.NDArray[np.int32],
        ts_ms: npt.NDArray[np.int64],
        records: bytes,
    ) -> None:
        """One block row: the hits at offsets first..last of `partition`."""
        c.execute(
            "INSERT INTO blocks (partition, first_offset, last_offset, max_ts_ms,"
            " code_ids, ts_ms, records) VALUES (?, ?, ?, ?, ?, ?, ?)",
            (partition, first, last, max_ts_ms, code_ids.tobytes(), ts_ms.tobytes(), records),
        )

    @staticmethod
    def _end(c: sqlite3.Connection, partition: int) -> int:
        """The partition's newest offset ever given out."""
        (end,) = c.execute(
            "SELECT end_offset FROM partitions WHERE partition = ?", (partition,)
        ).fetchone()
        return int(end)

    @staticmethod
    def _advance(c: sqlite3.Connection, partition: int, end: int, max_ts_ms: int) -> None:
        """Move the partition's end to `end`, its newest event time to at least `max_ts_ms`."""
        c.execute(
            "UPDATE partitions SET end_offset = ?, max_ts_ms = max(coalesce(max_ts_ms, ?), ?)"
            " WHERE partition = ?",
            (end, max_ts_ms, max_ts_ms, partition),
        )

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

    def _ids_of(
        self, c: sqlite3.Connection, codes: list[str], interned: dict[str, int]
    ) -> list[int]:
        """The code id of each of `codes`. Codes not known yet are added to the
        code table in this transaction, to the cache at once and to `interned`
        (which `_interning` takes out of the cache again if the transaction
        rolls back).

        One cache lookup per hit, not a check and then a lookup: over 100,000
        codes that took a 2,048-hit append (with its decode) from 1.97 to 1.4
        us per hit."""
        known = self._code_ids
        ids = list(map(known.get, codes))
        if None not in ids:
            return cast(list[int], ids)
        missing = list({code for code, i in zip(codes, ids, strict=True) if i is None})
        c.executemany("INSERT OR IGNORE INTO codes (code) VALUES (?)", [(m,) for m in missing])
        added: dict[str, int] = {}
        for k in range(0, len(missing), _ID_LOOKUP_CHUNK):
            part = missing[k : k + _ID_LOOKUP_CHUNK]
            marks = ",".join("?" * len(part))
            added.update(
                c.execute(f"SELECT code, code_id FROM codes WHERE code IN ({marks})", part)
            )
        known.update(added)
        interned.update(added)
        return [known[code] for code in codes]

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
                raise gap_error(partition, end + 1, first - 1)
            skip = end + 1 - first  # a batch may have ended inside this block
            take = min(last - first + 1 - skip, limit - taken)
            code_parts.append(np.frombuffer(code_blob, np.int32)[skip : skip + take])
            ts_parts.append(np.frombuffer(ts_blob, np.int64)[skip : skip + take])
            taken += take
            end += take
            if taken >= limit:
                break
        rows.close()
        if not taken:
            self._check_nothing_missing(partition, after_offset)
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

    def _check_nothing_missing(self, partition: int, after_offset: int) -> None:
        """Raise LogGapError if offsets after `after_offset` were assigned but no
        block holds them (all trimmed). One statement, so one snapshot: an
        append landing meanwhile cannot look like a gap."""
        row = self._conn.execute(
            "SELECT end_offset, EXISTS (SELECT 1 FROM blocks"
            " WHERE partition = ?1 AND last_offset > ?2) FROM partitions WHERE partition = ?1",
            (partition, after_offset),
        ).fetchone()
        if row is not None and row[0] > after_offset and not row[1]:
            raise gap_error(partition, after_offset + 1, row[0])

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

    # -- compaction ------------------------------------------------------------

    def trim(self, partition: int, upto_offset: int, older_than_ms: int) -> int:
        dropped = 0
        while True:
            with Transaction(self._conn) as c:
                hits, more = self._trim_some(c, partition, upto_offset, older_than_ms)
            dropped += hits
            if not more:
                return dropped

    def _trim_some(
        self, c: sqlite3.Connection, partition: int, upto_offset: int, older_than_ms: int
    ) -> tuple[int, bool]:
        """Fold and delete up to `_TRIM_BLOCKS` blocks in the caller's
        transaction: (hits dropped, whether more blocks may be trimmable)."""
        # Step 1. Where the partition is compacted up to, and the blocks after it.
        done = self._compacted_upto(c, partition)
        blocks = c.execute(
            "SELECT first_offset, last_offset, max_ts_ms, code_ids, ts_ms, records FROM blocks"
            " WHERE partition = ? AND last_offset > ? ORDER BY last_offset LIMIT ?",
            (partition, done, _TRIM_BLOCKS),
        ).fetchall()
        n = blocks_to_trim(partition, done, (b[:3] for b in blocks), upto_offset, older_than_ms)
        if not n:
            return 0, False
        dropped = blocks[:n]
        cut = dropped[-1][1]
        # Step 2. Fold their hits into the summary (by code id, like the blocks).
        counts = DayCounts.of_hits(
            np.concatenate([np.frombuffer(b[3], np.int32) for b in dropped]),
            np.concatenate([np.frombuffer(b[4], np.int64) for b in dropped]),
        )
        c.executemany(
            _FOLD,
            zip(
                itertools.repeat(partition),
                counts.code_ids.tolist(),
                counts.days.tolist(),
                counts.hits.tolist(),
                counts.firsts.tolist(),
                counts.lasts.tolist(),
            ),
        )
        # Step 3. Delete the blocks and their ids (by primary key: an index on
        # offsets would cost every append a second index write).
        c.execute(
            "DELETE FROM blocks WHERE partition = ? AND last_offset > ? AND last_offset <= ?",
            (partition, done, cut),
        )
        c.executemany(
            "DELETE FROM hit_ids WHERE id = ? AND partition = ? AND offset = ?",
            (
                (h.id, partition, offset)
                for first, _last, _m, _c, _t, records in dropped
                for offset, h in zip(itertools.count(first), _IDS_DECODER.decode(records))
            ),
        )
        # Step 4. Move the compacted offset; COMMIT is the caller's.
        c.execute(
            "INSERT INTO compaction VALUES (?, ?) ON CONFLICT DO UPDATE SET upto = excluded.upto",
            (partition, cut),
        )
        return int(counts.hits.sum()), n == len(blocks) == _TRIM_BLOCKS

    @staticmethod
    def _compacted_upto(c: sqlite3.Connection, partition: int) -> int:
        row = c.execute("SELECT upto FROM compaction WHERE partition = ?", (partition,)).fetchone()
        return 0 if row is None else int(row[0])

    def compacted(self, partition: int) -> tuple[int, list[DeltaRow]]:
        if not self._has_compaction_tables():
            return 0, []  # a log written before compaction existed, opened read-only
        self._conn.execute("BEGIN")  # one snapshot: the offset and the rows agree
        try:
            upto = self._compacted_upto(self._conn, partition)
            rows = self._conn.execute(
                "SELECT code, day, hits, first_ms, last_ms FROM compacted_days"
                " JOIN codes USING (code_id) WHERE partition = ? ORDER BY code, day",
                (partition,),
            ).fetchall()
        finally:
            self._conn.execute("COMMIT")
        return upto, rows

    def _has_compaction_tables(self) -> bool:
        (n,) = self._conn.execute(
            "SELECT count(*) FROM sqlite_master WHERE name IN ('compaction', 'compacted_days')"
        ).fetchone()
        return bool(n == 2)

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
