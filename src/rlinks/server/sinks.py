"""Where a redirect's hit goes: the HITS log (BH2: `HitWriter`), the KV per hit
(`KvSink`, the baseline), or nowhere (no sink)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import msgspec

from rlinks.hits import Hit
from rlinks.store.kvmodel import KeyValue, RemoteKV
from rlinks.timefmt import MS_PER_DAY, day_to_iso


class HitSink(Protocol):
    async def start(self) -> None: ...
    async def record(self, hit: Hit) -> bool:
        """Keep the hit; False if it could not be kept."""
        ...

    async def stop(self) -> None: ...


class _KvStats(msgspec.Struct):
    hits: int
    first_ms: int
    last_ms: int
    daily: dict[str, int]


class KvSink:
    """The pre-BH2 baseline: a read-modify-write of the code's stats key per hit.

    Like the hosted KV it models, the read and the write are separate calls, so
    concurrent hits of one code can overwrite each other (lost updates): one
    more reason for BH2. Kept for benchmarks.
    """

    def __init__(self, kv: RemoteKV, open_kv: Callable[[], KeyValue]) -> None:
        self._kv = kv
        self._open_kv = open_kv
        self._store: KeyValue | None = None
        self._decoder = msgspec.json.Decoder(_KvStats)
        self._encoder = msgspec.json.Encoder()

    async def start(self) -> None:
        self._store = self._open_kv()

    async def record(self, hit: Hit) -> bool:
        store = self._store
        if store is None:
            raise RuntimeError("KvSink.start() was not awaited")
        key = f"stats:{hit.code}"
        raw = await self._kv.read(key, lambda: store.get(key))
        day = day_to_iso(hit.ts_ms // MS_PER_DAY)
        if raw is None:
            stats = _KvStats(0, hit.ts_ms, hit.ts_ms, {})
        else:
            stats = self._decoder.decode(raw)
        stats.hits += 1
        stats.first_ms = min(stats.first_ms, hit.ts_ms)
        stats.last_ms = max(stats.last_ms, hit.ts_ms)
        stats.daily[day] = stats.daily.get(day, 0) + 1
        value = self._encoder.encode(stats)
        await self._kv.write(key, lambda: store.put(key, value))
        return True

    async def stop(self) -> None:
        if self._store is not None:
            self._store.close()
