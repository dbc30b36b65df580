"""The remote-KV model: a hosted key-value store's costs, around a real store.

Every call can be given latency (as a network round trip would), is counted
(reads, writes), and writes are checked against the hosted-KV limit of one
write per second per key: a second write to a key within a second is a
violation, counted and reported (not refused, so benchmarks can show how often
per-hit writing would break the limit). Chosen calls can be made to fail.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

import msgspec

from rlinks.errors import KvUnavailableError
from rlinks.redisdb import NS
from rlinks.redisdb import connect as connect_redis
from rlinks.sqlitedb import Transaction, connect
from rlinks.store.sqlite import KV_FILE
from rlinks.timefmt import now_ms

T = TypeVar("T")
KEY_RATE_WINDOW_MS = 1000


@dataclass
class KvCalls:
    reads: int = 0
    writes: int = 0
    key_rate_violations: int = 0
    failures: int = 0


_CALLS = msgspec.json.Encoder()
_CALLS_DECODER = msgspec.json.Decoder(KvCalls)


class RemoteKV:
    def __init__(
        self,
        *,
        latency_ms: float = 0.0,
        fail: Callable[[str, str], bool] | None = None,
        on_call: Callable[[str, bool], None] | None = None,
    ) -> None:
        """`fail(kind, key)` true makes that call fail; `on_call(kind, violation)`
        observes each call that went through (for metrics)."""
        self._latency_s = latency_ms / 1000
        self._fail = fail
        self._on_call = on_call
        self._last_write_ms: dict[str, int] = {}
        self.calls = KvCalls()

    async def read(self, key: str, fn: Callable[[], T]) -> T:
        await self._round_trip("read", key)
        self.calls.reads += 1
        if self._on_call is not None:
            self._on_call("read", False)
        return fn()

    async def write(self, key: str, fn: Callable[[], T]) -> T:
        await self._round_trip("write", key)
        self.calls.writes += 1
        now = now_ms()
        last = self._last_write_ms.get(key)
        violation = last is not None and now - last < KEY_RATE_WINDOW_MS
        self.calls.key_rate_violations += violation
        self._last_write_ms[key] = now
        if self._on_call is not None:
            self._on_call("write", violation)
        if len(self._last_write_ms) > 100_000:  # bounded: forget keys idle for a window
            cutoff = now - KEY_RATE_WINDOW_MS
            self._last_write_ms = {k: t for k, t in self._last_write_ms.items() if t >= cutoff}
        return fn()

    async def _round_trip(self, kind: str, key: str) -> None:
        if self._latency_s:
            await asyncio.sleep(self._latency_s)
        if self._fail is not None and self._fail(kind, key):
            self.calls.failures += 1
            raise KvUnavailableError(f"KV {kind} of {key!r} failed (injected fault)")


class KeyValue(Protocol):
    """Plain keys and values, for the per-hit baseline (`--hits kv`)."""

    def get(self, key: str) -> bytes | None: ...

    def put(self, key: str, value: bytes) -> None: ...

    def close(self) -> None: ...


class SqliteKeyValue:
    """Plain keys and values in kv.db, for the per-hit baseline (`--hits kv`)."""

    def __init__(self, data_dir: Path) -> None:
        self._conn = connect(Path(data_dir) / KV_FILE)
        self._conn.execute("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB)")

    def get(self, key: str) -> bytes | None:
        row = self._conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])

    def put(self, key: str, value: bytes) -> None:
        with Transaction(self._conn) as c:
            c.execute("INSERT OR REPLACE INTO kv VALUES (?, ?)", (key, value))

    def close(self) -> None:
        self._conn.close()


class RedisKeyValue:
    """Plain keys and values on Redis (`rlinks:kv:<key>`), for `--hits kv` there."""

    def __init__(self, url: str) -> None:
        self._r: Any = connect_redis(url)

    def get(self, key: str) -> bytes | None:
        value = self._r.get(f"{NS}:kv:{key}")
        return None if value is None else bytes(value)

    def put(self, key: str, value: bytes) -> None:
        self._r.set(f"{NS}:kv:{key}", value)

    def close(self) -> None:
        self._r.close()


class CallLedger(Protocol):
    """Each server process's KV call counts, kept in the store so `rlinks-bh2
    status` (another process) can report them; cumulative per process run."""

    def record(self, process: str, calls: KvCalls) -> None: ...

    def totals(self) -> KvCalls: ...

    def close(self) -> None: ...


class RedisKvCallLedger:
    """`CallLedger` on Redis: one hash field per process run."""

    _KEY = f"{NS}:kv_calls"

    def __init__(self, url: str) -> None:
        self._r: Any = connect_redis(url)

    def record(self, process: str, calls: KvCalls) -> None:
        self._r.hset(self._KEY, process, _CALLS.encode(calls))

    def totals(self) -> KvCalls:
        total = KvCalls()
        for raw in self._r.hvals(self._KEY):
            calls = _CALLS_DECODER.decode(raw)
            total.reads += calls.reads
            total.writes += calls.writes
            total.key_rate_violations += calls.key_rate_violations
            total.failures += calls.failures
        return total

    def close(self) -> None:
        self._r.close()


class KvCallLedger:
    """`CallLedger` in kv.db: one row per process run."""

    def __init__(self, data_dir: Path) -> None:
        self._conn = connect(Path(data_dir) / KV_FILE)
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS kv_calls (process TEXT PRIMARY KEY, reads INTEGER,"
            " writes INTEGER, key_rate_violations INTEGER, failures INTEGER, updated_ms INTEGER)"
        )

    def record(self, process: str, calls: KvCalls) -> None:
        with Transaction(self._conn) as c:
            c.execute(
                "INSERT OR REPLACE INTO kv_calls VALUES (?, ?, ?, ?, ?, ?)",
                (
                    process,
                    calls.reads,
                    calls.writes,
                    calls.key_rate_violations,
                    calls.failures,
                    now_ms(),
                ),
            )

    def totals(self) -> KvCalls:
        row = self._conn.execute(
            "SELECT coalesce(sum(reads), 0), coalesce(sum(writes), 0),"
            " coalesce(sum(key_rate_violations), 0), coalesce(sum(failures), 0) FROM kv_calls"
        ).fetchone()
        return KvCalls(*row)

    def close(self) -> None:
        self._conn.close()
