"""Shared fixtures and helpers: backends, hit records, an independent recount, the CLI."""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import os
import random
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
import pytest
import redis

from rlinks.errors import ConfigError
from rlinks.hits import Hit
from rlinks.log.base import EncodedHits, HitLog
from rlinks.log.redis import RedisHitLog
from rlinks.log.sqlite import SqliteHitLog
from rlinks.store.base import Snapshot, StatsStore, Watermark
from rlinks.store.redis import RedisStatsStore
from rlinks.store.sqlite import KV_FILE, SqliteStatsStore
from tests.redis_helpers import RedisServer

# -- backends ------------------------------------------------------------------------

BACKENDS: tuple[str, ...] = ("sqlite", "redis")

_redis: RedisServer | None = None
_redis_db = 0


def shared_redis() -> RedisServer:
    """One redis-server for the whole test session (started on first use);
    each Backend on it starts from an empty database (FLUSHALL)."""
    global _redis
    if _redis is None:
        _redis = RedisServer(Path(tempfile.mkdtemp(prefix="rlinks-redis-"))).start()
        atexit.register(_redis.stop)
    return _redis


class Backend:
    """A fresh data folder of one backend; hands out log and store objects on it.

    Every call opens a new object (a new connection for SQLite), so two calls
    model two processes sharing one folder. Everything opened is closed at exit.
    """

    def __init__(self, name: str, root: Path) -> None:
        self.name = name
        self.root = root
        self.url = ""
        if name == "redis":
            # Database n of 16, in turn: two backends open at once (a test
            # comparing two stores) never share keys.
            global _redis_db
            _redis_db = (_redis_db + 1) % 16
            server = shared_redis()
            self.url = server.url.rpartition("/")[0] + f"/{_redis_db}"
            client = redis.Redis(host="127.0.0.1", port=server.port, db=_redis_db)
            client.flushdb()
            client.close()
        self._opened: list[HitLog | StatsStore] = []

    def log(self, *, partitions: int = 1) -> HitLog:
        log: HitLog
        if self.name == "sqlite":
            log = SqliteHitLog(self.root, partitions=partitions)
        elif self.name == "redis":
            log = RedisHitLog(self.url, partitions=partitions)
        else:  # pragma: no cover - a backend listed in BACKENDS without a branch here
            raise AssertionError(f"unknown backend {self.name}")
        self._opened.append(log)
        return log

    def store(self) -> StatsStore:
        store: StatsStore
        if self.name == "sqlite":
            store = SqliteStatsStore(self.root)
        elif self.name == "redis":
            store = RedisStatsStore(self.url)
        else:  # pragma: no cover
            raise AssertionError(f"unknown backend {self.name}")
        self._opened.append(store)
        return store

    def close(self) -> None:
        for obj in reversed(self._opened):
            with contextlib.suppress(Exception):
                obj.close()
        self._opened.clear()


@contextlib.contextmanager
def open_backend(name: str, root: Path) -> Iterator[Backend]:
    """A Backend on `root` (created), closed on exit. Usable outside fixtures
    (Hypothesis examples need a fresh folder each)."""
    root.mkdir(parents=True, exist_ok=True)
    backend = Backend(name, root)
    try:
        yield backend
    finally:
        backend.close()


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    """A fresh HitLog/StatsStore provider on a real data folder for each backend."""
    with open_backend(request.param, tmp_path / f"data-{request.param}") as b:
        yield b


# -- clocks ---------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FrozenClock:
    """A clock that never moves: an aggregator's window never closes by itself."""

    def __call__(self) -> float:
        return 0.0


# -- hits ----------------------------------------------------------------------------

MS_PER_DAY = 86_400_000
# A midnight (UTC) to build timestamps around: 2025-11-24T00:00:00Z.
BASE_MS = 1_763_942_400_000
assert BASE_MS % MS_PER_DAY == 0
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def hit(id: str, ts_ms: int, code: str, **fields: str) -> Hit:
    """One Hit record."""
    return Hit(id, ts_ms, code, **fields)


def make_hits(
    n: int,
    *,
    codes: Sequence[str] = ("a", "b", "c", "d", "e", "f-1", "g2"),
    days: int = 4,
    seed: int = 0,
    prefix: str = "h",
    start: int = 0,
) -> list[Hit]:
    """`n` hits with unique ids `{prefix}-{i}` over `codes`, spread over `days`
    UTC days from BASE_MS, with some exactly at midnight and at 1 ms before it."""
    rng = random.Random(seed)
    out = []
    for i in range(start, start + n):
        r = rng.random()
        day = rng.randrange(days)
        if r < 0.1:
            ts = BASE_MS + day * MS_PER_DAY  # exactly midnight
        elif r < 0.15:
            ts = BASE_MS + (day + 1) * MS_PER_DAY - 1  # the last ms of a day
        else:
            ts = BASE_MS + day * MS_PER_DAY + rng.randrange(MS_PER_DAY)
        out.append(Hit(f"{prefix}-{i:08d}", ts, rng.choice(codes), country="US"))
    return out


def encoded_group(hits: list[Hit]) -> EncodedHits:
    """`hits` as the server's hit writer sends a group to its log writer."""
    return EncodedHits(
        msgspec.msgpack.encode(hits),
        [h.code for h in hits],
        np.array([h.ts_ms for h in hits], np.int64).tobytes(),
    )


def utc_day(ts_ms: int) -> str:
    """`YYYY-MM-DD` of a Unix ms time, by exact datetime arithmetic."""
    return (_EPOCH + dt.timedelta(milliseconds=ts_ms)).date().isoformat()


def recount(hits: Iterable[Hit]) -> dict[str, Snapshot]:
    """Expected snapshots of `hits`, counted with plain dicts (ids are assumed
    unique: dedupe first with `unique_hits` when a test resends)."""
    count: dict[str, int] = {}
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    daily: dict[str, dict[str, int]] = {}
    for h in hits:
        count[h.code] = count.get(h.code, 0) + 1
        first[h.code] = min(first.get(h.code, h.ts_ms), h.ts_ms)
        last[h.code] = max(last.get(h.code, h.ts_ms), h.ts_ms)
        days = daily.setdefault(h.code, {})
        days[utc_day(h.ts_ms)] = days.get(utc_day(h.ts_ms), 0) + 1
    return {c: Snapshot(c, count[c], first[c], last[c], daily[c]) for c in count}


def unique_hits(hits: Iterable[Hit]) -> list[Hit]:
    """The first hit of each id, in order (what an idempotent log keeps)."""
    seen: set[str] = set()
    out = []
    for h in hits:
        if h.id not in seen:
            seen.add(h.id)
            out.append(h)
    return out


def snapshots(store: StatsStore) -> dict[str, Snapshot]:
    """Every snapshot in `store`, by code."""
    return {s.code: s for s in store.snapshots()}


def folder_snapshots(data_dir: Path) -> dict[str, Snapshot]:
    """The snapshots in a data folder's stats store, read through a new connection."""
    store = SqliteStatsStore(data_dir, readonly=True)
    try:
        return snapshots(store)
    finally:
        store.close()


def folder_watermark(data_dir: Path, partition: int = 0) -> Watermark | None:
    """The watermark in a data folder (None while kv.db does not exist yet)."""
    if not (data_dir / KV_FILE).exists():
        return None
    try:
        store = SqliteStatsStore(data_dir, readonly=True)
    except ConfigError:
        return None
    try:
        return store.watermark(partition)
    except sqlite3.OperationalError:  # the schema is not there yet
        return None
    finally:
        store.close()


def append_all(data_dir: Path, hits: Sequence[Hit], *, chunk: int = 5000) -> None:
    """Append `hits` to the data folder's log in calls of `chunk` hits."""
    log = SqliteHitLog(data_dir)
    try:
        for k in range(0, len(hits), chunk):
            log.append(hits[k : k + chunk])
    finally:
        log.close()


def copy_folder(src: Path, dst: Path) -> Path:
    """A copy of a data folder (its connections must be closed)."""
    shutil.copytree(src, dst)
    return dst


def wait_until(pred: Callable[[], bool], *, timeout: float = 20.0, every: float = 0.02) -> bool:
    """Poll `pred` until true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(every)


# -- the CLI -------------------------------------------------------------------------

BIN = Path(sys.executable).parent
BH2 = BIN / "rlinks-bh2"
RLINKS = BIN / "rlinks"


def cli_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: no inherited RLINKS_* settings,
    a wide console so messages are not wrapped."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLINKS_")}
    env["COLUMNS"] = "300"
    env["NO_COLOR"] = "1"
    env.update(extra or {})
    return env


def run_cli(
    *args: str | Path | int,
    exe: Path = BH2,
    env: dict[str, str] | None = None,
    timeout: float = 60,
    input: bytes | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `rlinks-bh2 ARGS` (or `exe`) to completion; output as text."""
    return subprocess.run(
        [str(exe), *map(str, args)],
        env=cli_env(env),
        capture_output=True,
        timeout=timeout,
        input=input.decode() if input is not None else None,
        text=True,
        check=False,
    )


def start_cli(*args: str | Path | int, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start `rlinks-bh2 ARGS` in the background (stdout/stderr captured)."""
    return subprocess.Popen(
        [str(BH2), *map(str, args)],
        env=cli_env(env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.fixture
def procs() -> Iterator[list[subprocess.Popen[Any]]]:
    """Background processes a test starts; any still running are killed at teardown."""
    started: list[subprocess.Popen[Any]] = []
    yield started
    for p in started:
        if p.poll() is None:
            p.kill()
        with contextlib.suppress(Exception):
            p.communicate(timeout=10)
