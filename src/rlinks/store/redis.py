"""The stats store on Redis (or Redis Cluster).

Per partition, all under the hash tag `{pN}` (one cluster slot):
  `wm`             hash: offset, epoch, gen, as_of_ms, flushed_at_ms and counters
  `codes:<gen>`    sorted set (all scores 0, so ordered by code) of codes with stats
  `s:<gen>:<code>` hash: `h` hits, `f` first, `l` last, `d<day>` hits that UTC day
  `lease`          the owning worker's id, expiring (see rlinks.leases)

`apply` is one Lua script: it checks the epoch and that the batch starts at the
stored watermark before its first write, then adds every delta and moves the
watermark. `gen` names the current set of stats keys: `reset` (rebuild) moves to
a new generation, offset 0 and a new epoch in one script, then deletes the old
generation's keys, so a rebuild is atomic too.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from rlinks.batch import Batch, DeltaRow
from rlinks.errors import StaleEpochError, WatermarkMismatchError
from rlinks.log.base import partition_of
from rlinks.redisdb import Client, Keys, as_int, connect, register
from rlinks.store.base import KeyRateTracker, Snapshot, Watermark
from rlinks.timefmt import day_to_iso, now_ms

_PAGE = 1000  # codes per ZRANGE / pipeline when listing snapshots

# KEYS: wm, codes zset, one stats hash per code of the batch.
# ARGV: epoch, start, end, max_ts ('' if none), now, violations, hits, codes,
#       then per code: name, hits, first, last, days, (day, hits) * days.
_APPLY = """
local wm = KEYS[1]
local epoch = redis.call('HGET', wm, 'epoch')
if not epoch then return {2, 0, 0} end
if epoch ~= ARGV[1] then return {1, tonumber(epoch), 0} end
local offset = redis.call('HGET', wm, 'offset') or '0'
if offset ~= ARGV[2] then return {3, tonumber(epoch), tonumber(offset)} end
local ncodes = tonumber(ARGV[8])
local at = 9
for c = 1, ncodes do
  local key = KEYS[2 + c]
  redis.call('ZADD', KEYS[2], 0, ARGV[at])
  redis.call('HINCRBY', key, 'h', ARGV[at + 1])
  local first = redis.call('HGET', key, 'f')
  if (not first) or tonumber(first) > tonumber(ARGV[at + 2]) then
    redis.call('HSET', key, 'f', ARGV[at + 2])
  end
  local last = redis.call('HGET', key, 'l')
  if (not last) or tonumber(last) < tonumber(ARGV[at + 3]) then
    redis.call('HSET', key, 'l', ARGV[at + 3])
  end
  local days = tonumber(ARGV[at + 4])
  at = at + 5
  for d = 1, days do
    redis.call('HINCRBY', key, 'd' .. ARGV[at], ARGV[at + 1])
    at = at + 2
  end
end
redis.call('HSET', wm, 'offset', ARGV[3], 'flushed_at_ms', ARGV[5])
if ARGV[4] ~= '' then
  local as_of = redis.call('HGET', wm, 'as_of_ms')
  if (not as_of) or tonumber(as_of) < tonumber(ARGV[4]) then
    redis.call('HSET', wm, 'as_of_ms', ARGV[4])
  end
end
redis.call('HINCRBY', wm, 'batches', 1)
redis.call('HINCRBY', wm, 'hits', ARGV[7])
redis.call('HINCRBY', wm, 'kv_writes', ncodes)
redis.call('HINCRBY', wm, 'key_rate_violations', ARGV[6])
return {0, 0, 0}
"""

# KEYS: wm. A new epoch; returns {epoch, gen}.
_ACQUIRE = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
redis.call('HSETNX', KEYS[1], 'offset', 0)
redis.call('HSETNX', KEYS[1], 'gen', 0)
return {epoch, tonumber(redis.call('HGET', KEYS[1], 'gen'))}
"""

# KEYS: wm. Offset 0, a new epoch and a new generation of stats keys, at once.
_RESET = """
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch', 1)
local old = tonumber(redis.call('HGET', KEYS[1], 'gen') or '0')
redis.call('HDEL', KEYS[1], 'as_of_ms', 'flushed_at_ms')
redis.call('HSET', KEYS[1], 'offset', 0, 'gen', old + 1, 'batches', 0, 'hits', 0,
  'kv_writes', 0, 'key_rate_violations', 0)
return {epoch, old}
"""

# KEYS: lease, wm. ARGV: owner, ttl ms. Take the lease if free or ours, with a
# new epoch: {epoch, gen}; {0, 0} when another live worker holds it.
_TRY_LEASE = """
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return {0, 0} end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
local epoch = redis.call('HINCRBY', KEYS[2], 'epoch', 1)
redis.call('HSETNX', KEYS[2], 'offset', 0)
redis.call('HSETNX', KEYS[2], 'gen', 0)
return {epoch, tonumber(redis.call('HGET', KEYS[2], 'gen'))}
"""

# KEYS: lease. ARGV: owner, ttl ms (0: release). An expired lease is lost, as
# in the SQLite store: the worker takes the partition again with a new epoch.
_RENEW_LEASE = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == '0' then
  redis.call('DEL', KEYS[1])
else
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 1
"""

_WM_FIELDS = (
    "offset",
    "epoch",
    "as_of_ms",
    "flushed_at_ms",
    "batches",
    "hits",
    "kv_writes",
    "key_rate_violations",
    "gen",
)


class RedisStatsStore:
    """`StatsStore` on Redis; any number of processes may share it."""

    def __init__(
        self, url_or_client: str | Client, *, key_rate: KeyRateTracker | None = None
    ) -> None:
        r = connect(url_or_client) if isinstance(url_or_client, str) else url_or_client
        self._r: Any = r
        self._key_rate = key_rate or KeyRateTracker()
        self._apply = register(r, _APPLY)
        self._acquire = register(r, _ACQUIRE)
        self._reset = register(r, _RESET)
        self._try_lease = register(r, _TRY_LEASE)
        self._renew_lease = register(r, _RENEW_LEASE)
        self._gens: dict[int, int] = {}
        self._partitions: int | None = None

    @property
    def redis(self) -> Any:
        """The client (leases and compaction share the connection)."""
        return self._r

    def partitions(self) -> int:
        """How many partitions the log was set up with (before any log exists,
        1: the default, which is what the stats of a lone store are under)."""
        if self._partitions is None:
            stored = self._r.hget(Keys.meta, "partitions")
            if stored is None:
                return 1
            self._partitions = int(stored)
        return self._partitions

    def acquire(self, partition: int) -> int:
        self._r.sadd(Keys.watermarks, partition)
        epoch, gen = self._acquire(keys=[Keys.p(partition, "wm")])
        self._gens[partition] = int(gen)
        return int(epoch)

    # -- leases (rlinks.leases.LeaseStore) ----------------------------------------

    def try_lease(self, partition: int, owner: str, ttl_ms: int) -> int | None:
        self._r.sadd(Keys.watermarks, partition)
        epoch, gen = self._try_lease(
            keys=[Keys.p(partition, "lease"), Keys.p(partition, "wm")], args=[owner, ttl_ms]
        )
        if not epoch:
            return None
        self._gens[partition] = int(gen)
        return int(epoch)

    def renew_lease(self, partition: int, owner: str, ttl_ms: int) -> bool:
        return bool(self._renew_lease(keys=[Keys.p(partition, "lease")], args=[owner, ttl_ms]))

    def release_lease(self, partition: int, owner: str) -> None:
        self._renew_lease(keys=[Keys.p(partition, "lease")], args=[owner, 0])

    def heartbeat(self, worker: str, ttl_ms: int) -> list[str]:
        now = now_ms()
        pipe = self._r.pipeline(transaction=True)
        pipe.zadd(Keys.workers, {worker: now + ttl_ms})
        pipe.zremrangebyscore(Keys.workers, "-inf", now)
        pipe.zrange(Keys.workers, 0, -1)
        return sorted(w.decode() for w in pipe.execute()[2])

    def watermark(self, partition: int) -> Watermark:
        values = self._r.hmget(Keys.p(partition, "wm"), *_WM_FIELDS)
        if values[1] is None:
            return Watermark(partition, 0, 0)
        return _watermark(partition, values)

    def watermarks(self) -> list[Watermark]:
        return [_watermark(p, values) for p, values in self._watermark_rows()]

    def _watermark_rows(self) -> list[tuple[int, list[Any]]]:
        """Each partition's watermark fields (`_WM_FIELDS`), in one pipeline."""
        known = sorted(int(p) for p in self._r.smembers(Keys.watermarks))
        pipe = self._r.pipeline(transaction=False)
        for p in known:
            pipe.hmget(Keys.p(p, "wm"), *_WM_FIELDS)
        rows = zip(known, pipe.execute(), strict=True)
        return [(p, values) for p, values in rows if values[1] is not None]

    def apply(self, batch: Batch, *, before_commit: Callable[[], None] | None = None) -> None:
        gen = self._gen(batch.partition)
        codes = _by_code(batch.deltas)
        at = self._key_rate.now()
        args: list[Any] = [
            batch.epoch,
            batch.start,
            batch.end,
            "" if batch.max_ts_ms is None else batch.max_ts_ms,
            now_ms(),
            self._key_rate.violations(batch.partition, batch.deltas, at),
            batch.hits,
            len(codes),
        ]
        keys = [Keys.p(batch.partition, "wm"), Keys.p(batch.partition, f"codes:{gen}")]
        for code, (hits, first, last, days) in codes.items():
            keys.append(Keys.p(batch.partition, f"s:{gen}:{code}"))
            args += [code, hits, first, last, len(days)]
            for day_hits in days:
                args += day_hits
        if before_commit is not None:
            # One script is one step: nothing is written before it runs, all
            # of it after. A crash here is a crash before the commit.
            before_commit()
        status, epoch, offset = self._apply(keys=keys, args=args)
        if status == 0:
            self._key_rate.record(batch.partition, batch.deltas, at)
            return
        self._gens.pop(batch.partition, None)
        if status == 2:
            raise StaleEpochError(batch.partition, batch.epoch, 0, acquired=False)
        if status == 1:
            raise StaleEpochError(batch.partition, batch.epoch, int(epoch))
        raise WatermarkMismatchError(batch.partition, batch.start, batch.end, int(offset))

    def _gen(self, partition: int) -> int:
        gen = self._gens.get(partition)
        if gen is None:
            gen = self._gens[partition] = self._stored_gen(partition)
        return gen

    def snapshot(self, code: str) -> Snapshot | None:
        p = partition_of(code, self.partitions())
        gen = self._stored_gen(p)
        return _snapshot(code, self._r.hgetall(Keys.p(p, f"s:{gen}:{code}")))

    def snapshots(self) -> Iterator[Snapshot]:
        # The generation is one of the watermark's fields: no read per partition.
        gens = {p: as_int(values[_WM_FIELDS.index("gen")]) for p, values in self._watermark_rows()}
        streams = [self._codes(p, gen) for p, gen in gens.items()]
        page: list[tuple[int, str]] = []
        for p, code in heapq.merge(*streams, key=lambda pc: pc[1]):
            page.append((p, code))
            if len(page) >= _PAGE:
                yield from self._snapshot_page(page, gens)
                page = []
        yield from self._snapshot_page(page, gens)

    def _stored_gen(self, partition: int) -> int:
        """The generation in Redis now (another process may have rebuilt)."""
        return as_int(self._r.hget(Keys.p(partition, "wm"), "gen"))

    def _codes(self, partition: int, gen: int) -> Iterator[tuple[int, str]]:
        key = Keys.p(partition, f"codes:{gen}")
        start = 0
        while True:
            names = self._r.zrange(key, start, start + _PAGE - 1)
            for name in names:
                yield partition, name.decode()
            if len(names) < _PAGE:
                return
            start += _PAGE

    def _snapshot_page(
        self, page: Sequence[tuple[int, str]], gens: dict[int, int]
    ) -> Iterator[Snapshot]:
        pipe = self._r.pipeline(transaction=False)
        for p, code in page:
            pipe.hgetall(Keys.p(p, f"s:{gens[p]}:{code}"))
        for (_p, code), fields in zip(page, pipe.execute(), strict=True):
            snap = _snapshot(code, fields)
            if snap is not None:
                yield snap

    def reset(self, partitions: int) -> dict[int, int]:
        epochs: dict[int, int] = {}
        if partitions:
            self._r.sadd(Keys.watermarks, *range(partitions))
        for p in range(partitions):
            epoch, old = self._reset(keys=[Keys.p(p, "wm")])
            epochs[p] = int(epoch)
            self._gens.pop(p, None)
            self._drop_generation(p, int(old))
        return epochs

    def _drop_generation(self, partition: int, gen: int) -> None:
        """Delete a retired generation's stats keys (nobody reads them any more)."""
        for page in _chunks(list(self._codes(partition, gen)), _PAGE):
            self._r.delete(*(Keys.p(partition, f"s:{gen}:{code}") for _p, code in page))
        self._r.delete(Keys.p(partition, f"codes:{gen}"))

    def close(self) -> None:
        self._r.close()


def _chunks(items: list[Any], size: int) -> Iterator[list[Any]]:
    for k in range(0, len(items), size):
        yield items[k : k + size]


def _by_code(
    deltas: Sequence[DeltaRow],
) -> dict[str, tuple[int, int, int, list[tuple[int, int]]]]:
    """Per code: hits, first, last and (day, hits) pairs, from the (code, day) rows."""
    out: dict[str, tuple[int, int, int, list[tuple[int, int]]]] = {}
    for code, day, hits, first, last in deltas:
        seen = out.get(code)
        if seen is None:
            out[code] = (hits, first, last, [(day, hits)])
        else:
            seen[3].append((day, hits))
            out[code] = (seen[0] + hits, min(seen[1], first), max(seen[2], last), seen[3])
    return out


def _watermark(partition: int, values: Sequence[Any]) -> Watermark:
    offset, epoch, as_of, flushed, batches, hits, writes, violations, _gen = values
    return Watermark(
        partition=partition,
        offset=as_int(offset),
        epoch=as_int(epoch),
        as_of_ms=None if as_of is None else int(as_of),
        flushed_at_ms=None if flushed is None else int(flushed),
        batches=as_int(batches),
        hits=as_int(hits),
        kv_writes=as_int(writes),
        key_rate_violations=as_int(violations),
    )


def _snapshot(code: str, fields: dict[bytes, bytes]) -> Snapshot | None:
    if not fields:
        return None
    daily = {
        day_to_iso(int(k[1:])): int(v) for k, v in sorted(fields.items()) if k.startswith(b"d")
    }
    return Snapshot(
        code=code,
        hits=int(fields[b"h"]),
        first_ms=int(fields[b"f"]),
        last_ms=int(fields[b"l"]),
        daily=dict(sorted(daily.items())),
    )
