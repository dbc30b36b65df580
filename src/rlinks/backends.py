"""Where a command's data lives, and opening the log, stats and routes there.

A `Target` is either a data folder (the embedded SQLite default: `--data DIR`)
or a Redis URL (`--backend redis://host:port/db`, Redis Cluster detected by
itself). Every command that touches a store takes one and opens what it needs
through this module, so no command knows which backend it runs on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rlinks.errors import ConfigError
from rlinks.log.base import HitLog
from rlinks.log.sqlite import HITS_FILE, SqliteHitLog
from rlinks.redisdb import hide_password, is_redis_url
from rlinks.routes.store import RouteStore, SqliteRouteStore
from rlinks.store.base import StatsStore
from rlinks.store.kvmodel import (
    CallLedger,
    KeyValue,
    KvCallLedger,
    RedisKeyValue,
    RedisKvCallLedger,
    SqliteKeyValue,
)
from rlinks.store.sqlite import SqliteStatsStore

ENV_BACKEND = "RLINKS_BACKEND"
ENV_DATA = "RLINKS_DATA"


@dataclass(frozen=True)
class Target:
    """A data folder or a Redis URL: exactly one of the two."""

    data_dir: Path | None = None
    url: str | None = None

    def __post_init__(self) -> None:
        if (self.data_dir is None) == (self.url is None):
            raise ConfigError(
                f"say where the data is: --data DIR (or {ENV_DATA}) for the embedded "
                f"store, or --backend redis://host:port/db (or {ENV_BACKEND}); one of the two"
            )
        if self.url is not None and not is_redis_url(self.url):
            raise ConfigError(
                f"--backend must be a redis:// or rediss:// URL, got {self.url!r} "
                "(the embedded store is chosen with --data DIR)"
            )

    @classmethod
    def of(cls, data_dir: Path | str | None, url: str | None) -> Target:
        return cls(Path(data_dir) if data_dir is not None else None, url or None)

    @property
    def is_redis(self) -> bool:
        return self.url is not None

    @property
    def folder(self) -> Path:
        """The data folder; ConfigError for a Redis target (for SQLite-only tools)."""
        if self.data_dir is None:
            raise ConfigError(f"this needs a data folder (--data DIR), not {self}")
        return self.data_dir

    def __str__(self) -> str:
        return hide_password(self.url) if self.url is not None else str(self.data_dir)


def open_log(
    target: Target,
    *,
    create: bool = True,
    partitions: int = 1,
    dedup_horizon_s: int | None = None,
) -> HitLog:
    """The log, made if missing (`create`, with `partitions` when new), else
    opened for reading: readers (aggregator, stats, status, verify, /metrics)
    never take a write lock and never make an empty log. `dedup_horizon_s`:
    how long Redis remembers hit ids (SQLite keeps them until `compact`)."""
    if target.url is not None:
        from rlinks.log.redis import DEFAULT_DEDUP_HORIZON_S, RedisHitLog

        return RedisHitLog(
            target.url,
            partitions=partitions,
            create=create,
            dedup_horizon_s=dedup_horizon_s or DEFAULT_DEDUP_HORIZON_S,
        )
    assert target.data_dir is not None
    if not create:
        _require(target.data_dir / HITS_FILE)
    return SqliteHitLog(target.data_dir, partitions=partitions, readonly=not create)


def open_store(target: Target) -> StatsStore:
    if target.url is not None:
        from rlinks.store.redis import RedisStatsStore

        return RedisStatsStore(target.url)
    assert target.data_dir is not None
    return SqliteStatsStore(target.data_dir)


def open_routes(target: Target) -> RouteStore:
    if target.url is not None:
        from rlinks.routes.redis_store import RedisRouteStore

        return RedisRouteStore(target.url)
    assert target.data_dir is not None
    return SqliteRouteStore(target.data_dir)


def open_key_value(target: Target) -> KeyValue:
    """Plain keys for the per-hit baseline (`--hits kv`)."""
    if target.url is not None:
        return RedisKeyValue(target.url)
    assert target.data_dir is not None
    return SqliteKeyValue(target.data_dir)


def open_call_ledger(target: Target) -> CallLedger:
    """Where server processes keep their KV call counts for `status`."""
    if target.url is not None:
        return RedisKvCallLedger(target.url)
    assert target.data_dir is not None
    return KvCallLedger(target.data_dir)


def _require(path: Path) -> None:
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist: --data must be a folder that `rlinks-bh2 ingest` "
            "(or `rlinks serve`) has written to"
        )
