"""The HITS log on Redis Streams: one stream per partition, one entry per block.

As in SQLite, an append writes *blocks* of up to 4,096 consecutive offsets; an
entry's id is `<last offset>-0`, so "everything after the watermark W" is
`XRANGE hits W+1 +`. An entry holds its first offset (`f`), the distinct codes
of the block (`c`, msgpack), each hit's index into them (`i`, int32) and time
(`t`, int64), the newest time (`m`) and the full records (`r`, msgpack). The
reader turns the columns into arrays without a per-hit Python object.

Appending is one Lua script per partition (keys `{pN}`-tagged, one slot): it
checks the hit ids against the id buckets of the dedup horizon, and only if
none is logged takes the next offsets (`HINCRBY end`), writes the blocks and
records the ids. When some id is already there it writes nothing and says
which, and the client resends the rest: exact within the horizon, even with two
producers racing. Ids sit in one hash per hour of append time that expires
after the horizon.

`trim` (compaction) drops a prefix of a partition's entries with `XTRIM MINID`
in a Lua script that, in the same step, folds their hits into the hash
`{pN}:compacted` (field `<day>:<code>` = `hits:first_ms:last_ms`, field `upto` =
the offset compacted up to). The client folds the entries it read; the script
first checks that `upto` is still what the client saw, so two compactors
racing never fold a block twice. The id buckets are left alone: dedup stays
horizon-based whether or not a hit was trimmed.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

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
from rlinks.log.sqlite import BLOCK_HITS
from rlinks.redisdb import Client, Keys, as_int, connect, is_cluster, register
from rlinks.timefmt import now_ms

DEFAULT_DEDUP_HORIZON_S = 24 * 3600
_BUCKET_S = 3600  # one id hash per hour of append time
_READ_ENTRIES = 16  # stream entries (blocks) fetched per XRANGE
# Entries (up to 131,072 hits) folded and dropped per trim script: Redis runs
# one script at a time, so each stays short.
_TRIM_ENTRIES = 32

_RECORDS = msgspec.msgpack.Encoder()
_RECORDS_DECODER = msgspec.msgpack.Decoder(list[Hit])
_NAMES_DECODER = msgspec.msgpack.Decoder(list[str])

# KEYS: end hash, stream, the current id bucket, older id buckets of the horizon.
# ARGV: hits, newest ts, bucket ttl s, k, k ids, blocks, then per block:
#       hits, codes, indexes, times, newest ts, records.
_APPEND = """
local n = tonumber(ARGV[1])
local k = tonumber(ARGV[4])
if k > 0 then
  local found = {}
  for b = 3, #KEYS do
    if redis.call('EXISTS', KEYS[b]) == 1 then
      for i = 5, 4 + k do
        local at = redis.call('HGET', KEYS[b], ARGV[i])
        if at then
          found[#found + 1] = ARGV[i]
          found[#found + 1] = at
        end
      end
    end
  end
  if #found > 0 then
    return {1, found}
  end
end
local last = redis.call('HINCRBY', KEYS[1], 'end', n)
local first = last - n + 1
local newest = tonumber(ARGV[2])
local max_ts = redis.call('HGET', KEYS[1], 'max_ts')
if (not max_ts) or tonumber(max_ts) < newest then
  redis.call('HSET', KEYS[1], 'max_ts', ARGV[2])
end
if k > 0 then
  for i = 0, k - 1 do
    redis.call('HSET', KEYS[3], ARGV[5 + i], first + i)
  end
  redis.call('EXPIRE', KEYS[3], ARGV[3])
end
local at = 5 + k
local blocks = tonumber(ARGV[at])
at = at + 1
local offset = first - 1
for b = 1, blocks do
  local count = tonumber(ARGV[at])
  offset = offset + count
  redis.call('XADD', KEYS[2], string.format('%d-0', offset),
    'f', string.format('%d', offset - count + 1), 'c', ARGV[at + 1], 'i', ARGV[at + 2],
    't', ARGV[at + 3], 'm', ARGV[at + 4], 'r', ARGV[at + 5])
  at = at + 6
end
return {0, last}
"""

# KEYS: compacted hash, stream. ARGV: upto the client read, new upto, rows, then
# per row: field '<day>:<code>', hits, first ms, last ms. Returns {0, entries
# dropped}, or {1, upto} without writing when another compactor moved `upto`.
_TRIM = """
local done = redis.call('HGET', KEYS[1], 'upto') or '0'
if done ~= ARGV[1] then return {1, tonumber(done)} end
local at = 4
for r = 1, tonumber(ARGV[3]) do
  local hits = tonumber(ARGV[at + 1])
  local first = tonumber(ARGV[at + 2])
  local last = tonumber(ARGV[at + 3])
  local old = redis.call('HGET', KEYS[1], ARGV[at])
  if old then
    local h, f, l = string.match(old, '^(%-?%d+):(%-?%d+):(%-?%d+)$')
    hits = hits + tonumber(h)
    first = math.min(first, tonumber(f))
    last = math.max(last, tonumber(l))
  end
  redis.call('HSET', KEYS[1], ARGV[at], string.format('%d:%d:%d', hits, first, last))
  at = at + 4
end
local minid = string.format('%d-0', tonumber(ARGV[2]) + 1)
local dropped = redis.call('XTRIM', KEYS[2], 'MINID', minid)
redis.call('HSET', KEYS[1], 'upto', ARGV[2])
return {0, dropped}
"""


def _pairs(flat: list[Any]) -> dict[bytes, Any]:
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _xrange_page(page: list[Any]) -> list[tuple[bytes, dict[bytes, Any]]]:
    """An XRANGE reply as (id, fields) pairs, also when it came through a
    cluster's MULTI, which hands it back unparsed: [id, [k, v, ...]]."""
    return [(i, f if isinstance(f, dict) else _pairs(f)) for i, f in page]


class RedisHitLog:
    """`HitLog` on Redis (or Redis Cluster). Shared by any number of processes."""

    def __init__(
        self,
        url_or_client: str | Client,
        *,
        partitions: int = 1,
        create: bool = True,
        dedup_horizon_s: int = DEFAULT_DEDUP_HORIZON_S,
    ) -> None:
        r = connect(url_or_client) if isinstance(url_or_client, str) else url_or_client
        self._r: Any = r
        if create:
            if partitions < 1:
                raise ConfigError(f"--partitions must be >= 1, got {partitions}")
            self._r.hsetnx(Keys.meta, "partitions", partitions)
        stored = self._r.hget(Keys.meta, "partitions")
        if stored is None:
            raise ConfigError(
                "this Redis holds no rlinks hits log yet: `rlinks-bh2 ingest` or "
                "`rlinks serve` with this --backend makes one"
            )
        self._partitions = int(stored)
        self._horizon_s = dedup_horizon_s
        self._append = register(r, _APPEND)
        self._trim = register(r, _TRIM)
        self._cluster = is_cluster(r)
        self._code_ids: dict[str, int] = {}
        self._names: list[str] = [""]  # reader-side ids, 1-based like SQLite's

    @property
    def partitions(self) -> int:
        return self._partitions

    # -- appending -------------------------------------------------------------

    def append(self, hits: Sequence[Hit], *, fresh_ids: bool = False) -> list[Position]:
        if not hits:
            return []
        positions: list[Position | None] = [None] * len(hits)
        pending, repeats = split_by_partition(hits, self._partitions, fresh_ids=fresh_ids)
        while pending:
            # One round trip for every partition's script (a pipeline; on a
            # cluster, one per node). A partition whose ids were partly
            # logged writes nothing and goes round again without them.
            order = list(pending.items())
            replies = self._append_calls(
                [(partition, [hits[i] for i in indexes]) for partition, indexes in order],
                fresh_ids,
            )
            retry: dict[int, list[int]] = {}
            for (partition, indexes), reply in zip(order, replies, strict=True):
                if int(reply[0]) == 0:
                    last = int(reply[1])
                    first = last - len(indexes) + 1
                    for k, i in enumerate(indexes):
                        positions[i] = Position(partition, first + k)
                    continue
                found = dict(zip(reply[1][::2], reply[1][1::2], strict=True))
                rest = []
                for i in indexes:
                    at = found.get(hits[i].id.encode())
                    if at is None:
                        rest.append(i)
                    else:
                        positions[i] = Position(partition, int(at), duplicate=True)
                if rest:
                    retry[partition] = rest
            pending = retry
        return with_repeats(positions, repeats)

    def append_encoded(self, group: EncodedHits) -> None:
        # Redis keeps its own entries (made by the append script), not blocks
        # as they came: the hits are decoded and appended like any others.
        self.append(group.hits(), fresh_ids=True)

    def _append_calls(self, calls: list[tuple[int, list[Hit]]], fresh_ids: bool) -> list[Any]:
        """Run the append script per partition: pipelined on one server; one
        by one on a cluster, where a pipeline cannot load a script a node
        lacks (and resending a half-run pipeline would log fresh hits twice)."""
        if self._cluster:
            return [self._append_call(self._r, p, hits, fresh_ids) for p, hits in calls]
        pipe = self._r.pipeline(transaction=False)
        for p, hits in calls:
            self._append_call(pipe, p, hits, fresh_ids)
        return list(pipe.execute())

    def _append_call(self, pipe: Any, partition: int, hits: list[Hit], fresh_ids: bool) -> Any:
        bucket = int(time.time()) // _BUCKET_S
        older = range(bucket - self._horizon_s // _BUCKET_S - 1, bucket)
        keys = [
            Keys.p(partition, "end"),
            Keys.p(partition, "hits"),
            Keys.p(partition, f"ids:{bucket}"),
            *(() if fresh_ids else (Keys.p(partition, f"ids:{b}") for b in older)),
        ]
        ids = [] if fresh_ids else [h.id for h in hits]
        args: list[Any] = [
            len(hits),
            max(h.ts_ms for h in hits),
            self._horizon_s + 2 * _BUCKET_S,
            len(ids),
            *ids,
        ]
        blocks = [hits[k : k + BLOCK_HITS] for k in range(0, len(hits), BLOCK_HITS)]
        args.append(len(blocks))
        for block in blocks:
            local: dict[str, int] = {}
            indexes = np.fromiter(
                (local.setdefault(h.code, len(local)) for h in block), np.int32, len(block)
            )
            times = np.fromiter((h.ts_ms for h in block), np.int64, len(block))
            args += [
                len(block),
                _RECORDS.encode(list(local)),
                indexes.tobytes(),
                times.tobytes(),
                int(times.max()),
                _RECORDS.encode(block),
            ]
        return self._append(keys=keys, args=args, client=pipe)

    # -- reading ---------------------------------------------------------------

    def _entries(
        self, partition: int, after_offset: int, *, check_gap: bool = True
    ) -> Iterator[tuple[int, dict[bytes, Any]]]:
        """Stream entries (blocks) whose last offset is above `after_offset`.

        Raises LogGapError when the partition's end is above `after_offset` but
        no entry is: the first page and the end are read in one MULTI (same
        slot), so an append landing between them cannot look like a gap."""
        start: str | bytes = f"{after_offset + 1}-0"
        key = Keys.p(partition, "hits")
        pipe = self._r.pipeline(transaction=True)
        pipe.hget(Keys.p(partition, "end"), "end")
        pipe.xrange(key, min=start, max="+", count=_READ_ENTRIES)
        end, page = pipe.execute()
        page = _xrange_page(page)
        if check_gap and not page and as_int(end) > after_offset:
            raise gap_error(partition, after_offset + 1, as_int(end))
        while True:
            for entry_id, fields in page:
                yield int(entry_id.split(b"-")[0]), fields
            if len(page) < _READ_ENTRIES:
                return
            start = b"(" + page[-1][0]
            page = self._r.xrange(key, min=start, max="+", count=_READ_ENTRIES)

    def read(self, partition: int, after_offset: int, limit: int) -> LogSlice:
        code_parts: list[np.ndarray] = []
        ts_parts: list[np.ndarray] = []
        taken = 0
        end = after_offset
        for last, fields in self._entries(partition, after_offset):
            first = int(fields[b"f"])
            if first > end + 1:
                raise gap_error(partition, end + 1, first - 1)
            skip = end + 1 - first
            take = min(last - first + 1 - skip, limit - taken)
            codes, ts = self._columns(fields, skip, take)
            code_parts.append(codes)
            ts_parts.append(ts)
            taken += take
            end += take
            if taken >= limit:
                break
        return LogSlice(
            partition=partition,
            start=after_offset,
            end=end,
            code_ids=np.concatenate(code_parts) if code_parts else np.empty(0, np.int32),
            ts_ms=np.concatenate(ts_parts) if ts_parts else np.empty(0, np.int64),
            names=self._names,
        )

    def _columns(
        self, fields: dict[bytes, Any], skip: int = 0, take: int | None = None
    ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int64]]:
        """Hits `skip..skip+take` of an entry as (code ids in this reader's
        table, times), without a per-hit Python object."""
        names = _NAMES_DECODER.decode(fields[b"c"])
        global_ids = np.fromiter((self._intern(n) for n in names), np.int32, len(names))
        end = None if take is None else skip + take
        local = np.frombuffer(fields[b"i"], np.int32)[skip:end]
        return global_ids[local], np.frombuffer(fields[b"t"], np.int64)[skip:end]

    def _intern(self, code: str) -> int:
        code_id = self._code_ids.get(code)
        if code_id is None:
            code_id = self._code_ids[code] = len(self._names)
            self._names.append(code)
        return code_id

    def records(self, partition: int, after_offset: int = 0) -> Iterator[tuple[int, Hit]]:
        for _last, fields in self._entries(partition, after_offset, check_gap=False):
            first = int(fields[b"f"])
            for offset, hit in zip(itertools.count(first), _RECORDS_DECODER.decode(fields[b"r"])):
                if offset > after_offset:
                    yield offset, hit

    def end(self, partition: int) -> LogEnd:
        if not 0 <= partition < self._partitions:
            raise ConfigError(f"the log has no partition {partition} (it has {self._partitions})")
        end, max_ts = self._r.hmget(Keys.p(partition, "end"), "end", "max_ts")
        return LogEnd(partition, as_int(end), None if max_ts is None else int(max_ts))

    # -- compaction ------------------------------------------------------------

    def trim(self, partition: int, upto_offset: int, older_than_ms: int) -> int:
        dropped = 0
        while True:
            hits, more = self._trim_some(partition, upto_offset, older_than_ms)
            dropped += hits
            if not more:
                return dropped

    def _trim_some(self, partition: int, upto_offset: int, older_than_ms: int) -> tuple[int, bool]:
        """Fold and drop up to `_TRIM_ENTRIES` entries in one script: (hits
        dropped, whether more entries may be trimmable)."""
        summary, stream = Keys.p(partition, "compacted"), Keys.p(partition, "hits")
        # Step 1. Where the partition is compacted up to, and the entries after
        # it, in one MULTI (one slot), so they agree.
        pipe = self._r.pipeline(transaction=True)
        pipe.hget(summary, "upto")
        pipe.xrange(stream, min="-", max="+", count=_TRIM_ENTRIES)
        upto, reply = pipe.execute()
        page = _xrange_page(reply)
        done = as_int(upto)
        blocks = [
            (int(fields[b"f"]), int(entry_id.split(b"-")[0]), int(fields[b"m"]))
            for entry_id, fields in page
        ]
        n = blocks_to_trim(partition, done, blocks, upto_offset, older_than_ms)
        if not n:
            return 0, False
        # Step 2. Fold their hits here (the script only merges rows).
        columns = [self._columns(fields) for _id, fields in page[:n]]
        counts = DayCounts.of_hits(
            np.concatenate([codes for codes, _ts in columns]),
            np.concatenate([ts for _codes, ts in columns]),
        )
        rows = counts.rows(self._names)
        args: list[Any] = [done, blocks[n - 1][1], len(rows)]
        for code, day, hits, first_ms, last_ms in rows:
            args += [f"{day}:{code}", hits, first_ms, last_ms]
        # Step 3. Merge, trim and move `upto` in one script, if `upto` is
        # still `done`; else another compactor got there first: read again.
        status, _ = self._trim(keys=[summary, stream], args=args)
        if int(status) != 0:
            return 0, True
        return int(counts.hits.sum()), n == len(page) == _TRIM_ENTRIES

    def compacted(self, partition: int) -> tuple[int, list[DeltaRow]]:
        fields = self._r.hgetall(Keys.p(partition, "compacted"))  # one command: consistent
        upto = as_int(fields.pop(b"upto", None))
        rows: list[DeltaRow] = []
        for name, value in fields.items():
            day, _, code = name.decode().partition(":")
            hits, first_ms, last_ms = map(int, value.split(b":"))
            rows.append((code, int(day), hits, first_ms, last_ms))
        rows.sort(key=lambda r: (r[0], r[1]))
        return upto, rows

    # -- quarantine ------------------------------------------------------------

    def quarantine(self, source: str, records: Sequence[Quarantined]) -> None:
        if not records:
            return
        at = now_ms()
        pipe = self._r.pipeline(transaction=False)
        for q in records:
            pipe.xadd(
                Keys.quarantine,
                {
                    "source": source[:512],
                    "line": q.line,
                    "byte_offset": q.byte_offset,
                    "reason": q.reason,
                    "excerpt": q.excerpt,
                    "at_ms": at,
                },
            )
        pipe.execute()

    def quarantined(self) -> int:
        return int(self._r.xlen(Keys.quarantine))

    def close(self) -> None:
        self._r.close()
