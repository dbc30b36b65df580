"""Opening the log and the stats store a command works on."""

from __future__ import annotations

from pathlib import Path

from rlinks.errors import ConfigError
from rlinks.log.base import HitLog
from rlinks.log.sqlite import HITS_FILE, SqliteHitLog
from rlinks.store.base import StatsStore
from rlinks.store.sqlite import SqliteStatsStore


def open_log(data_dir: Path, *, create: bool = True) -> HitLog:
    """The log, made if missing (`create`), else opened read-only: readers
    (the aggregator, stats, status, verify, /metrics) never take a write lock."""
    if not create:
        _require(data_dir / HITS_FILE)
    return SqliteHitLog(data_dir, readonly=not create)


def open_store(data_dir: Path) -> StatsStore:
    return SqliteStatsStore(data_dir)


def _require(path: Path) -> None:
    if not path.exists():
        raise ConfigError(
            f"{path} does not exist: --data must be a folder that `rlinks-bh2 ingest` "
            "(or `rlinks serve`) has written to"
        )
