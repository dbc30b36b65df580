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
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator, Sequence
from typing import Any

import msgspec
import numpy as np

from rlinks.errors import ConfigError, LogGapError
from rlinks.hits import Hit, Quarantined
from rlinks.log.base import LogEnd, LogSlice, Position, partition_of
from rlinks.log.sqlite import BLOCK_HITS
from rlinks.redisdb import Client, Keys, as_int, connect, register
from rlinks.timefmt import now_ms

DEFAULT_DEDUP_HORIZON_S = 24 * 3600
_BUCKET_S = 3600  # one id hash per hour of append time
_READ_ENTRIES = 16  # stream entries (blocks) fetched per XRANGE

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
        repeats: list[tuple[int, int]] = []
        first_seen: dict[str, int] = {}
        groups: dict[int, list[int]] = {}
        for i, h in enumerate(hits):
            if h.id in first_seen:
                repeats.append((i, first_seen[h.id]))
                continue
            first_seen[h.id] = i
            groups.setdefault(partition_of(h.code, self._partitions), []).append(i)
        pending = groups
        while pending:
            # One round trip for every partition's script (a pipeline; on a
            # cluster, one per node). A partition whose ids were partly
            # logged writes nothing and goes round again without them.
            pipe = self._r.pipeline(transaction=False)
            order = list(pending.items())
            for partition, indexes in order:
                self._append_call(pipe, partition, [hits[i] for i in indexes], fresh_ids)
            retry: dict[int, list[int]] = {}
            for (partition, indexes), reply in zip(order, pipe.execute(), strict=True):
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
        for i, first in repeats:
            original = positions[first]
            if original is not None:
                positions[i] = original._replace(duplicate=True)
        return [p for p in positions if p is not None]

    def _append_call(self, pipe: Any, partition: int, hits: list[Hit], fresh_ids: bool) -> None:
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
        self._append(keys=keys, args=args, client=pipe)

    # -- reading ---------------------------------------------------------------

    def _entries(
        self, partition: int, after_offset: int, *, check_gap: bool = True
    ) -> Iterator[tuple[int, dict[bytes, Any]]]:
        """Stream entries (blocks) whose last offset is above `after_offset`.

        Raises LogGapError when the partition's end is above `after_offset` but
        no entry is: the first page and the end are read in one MULTI (same
        slot), so an append landing between them cannot look like a gap."""
        start = f"{after_offset + 1}-0"
        key = Keys.p(partition, "hits")
        pipe = self._r.pipeline(transaction=True)
        pipe.hget(Keys.p(partition, "end"), "end")
        pipe.xrange(key, min=start, max="+", count=_READ_ENTRIES)
        end, page = pipe.execute()
        if check_gap and not page and as_int(end) > after_offset:
            raise self._gap(partition, after_offset + 1, as_int(end))
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
                raise self._gap(partition, end + 1, first - 1)
            skip = end + 1 - first
            take = min(last - first + 1 - skip, limit - taken)
            global_ids = np.fromiter(
                (self._intern(name) for name in _NAMES_DECODER.decode(fields[b"c"])), np.int32
            )
            local = np.frombuffer(fields[b"i"], np.int32)[skip : skip + take]
            code_parts.append(global_ids[local])
            ts_parts.append(np.frombuffer(fields[b"t"], np.int64)[skip : skip + take])
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

    @staticmethod
    def _gap(partition: int, lo: int, hi: int) -> LogGapError:
        return LogGapError(
            f"partition {partition}: the log holds no hits at offsets {lo}..{hi} "
            "(trimmed below the watermark?); counts after this point would be wrong, "
            "so nothing is read"
        )

    def _intern(self, code: str) -> int:
        code_id = self._code_ids.get(code)
        if code_id is None:
            code_id = self._code_ids[code] = len(self._names)
            self._names.append(code)
        return code_id

    def records(self, partition: int, after_offset: int = 0) -> Iterator[tuple[int, Hit]]:
        for _last, fields in self._entries(partition, after_offset):
            first = int(fields[b"f"])
            for offset, hit in zip(itertools.count(first), _RECORDS_DECODER.decode(fields[b"r"])):
                if offset > after_offset:
                    yield offset, hit

    def end(self, partition: int) -> LogEnd:
        if not 0 <= partition < self._partitions:
            raise ConfigError(f"the log has no partition {partition} (it has {self._partitions})")
        end, max_ts = self._r.hmget(Keys.p(partition, "end"), "end", "max_ts")
        return LogEnd(partition, as_int(end), None if max_ts is None else int(max_ts))

    # -- trimming --------------------------------------------------------------

    def trim(self, partition: int, upto_offset: int, older_than_ms: int) -> int:
        """Drop whole blocks whose last offset is <= `upto_offset` and whose
        newest hit is older than `older_than_ms`; the hits dropped."""
        cut = 0
        dropped = 0
        for last, fields in self._entries(partition, 0, check_gap=False):
            if last > upto_offset or int(fields[b"m"]) >= older_than_ms:
                break
            cut = last
            dropped += last - int(fields[b"f"]) + 1
        if cut:
            self._r.xtrim(Keys.p(partition, "hits"), minid=f"{cut + 1}-0", approximate=False)
        return dropped

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
