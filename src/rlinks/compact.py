"""Compaction: trim counted, old hits from the HITS log without losing a count.

The log only grows (Redis holds every stream entry in memory), yet hits at or
below the watermark are counted already. `compact` lets each log drop whole
blocks that are both counted and older than the retention; the log folds their
hits into its compacted summary in the same atomic step (`HitLog.trim`), so
`verify` and `rebuild` stay exact. The watermark is read before trimming and
only grows, so nothing above it can go.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from rlinks.backends import Target, open_log
from rlinks.batch import Batch
from rlinks.errors import ConfigError
from rlinks.log.base import HitLog
from rlinks.store.base import StatsStore

DEFAULT_KEEP = "30d"
_UNIT_MS = {"d": 86_400_000, "h": 3_600_000, "m": 60_000, "s": 1000}
_AGE = re.compile(r"(\d+)([dhms]?)")


@dataclass(frozen=True)
class Compaction:
    """What `compact` did to one partition."""

    partition: int
    dropped: int  # hits trimmed by this run
    compacted_upto: int  # every hit at or below this offset is now in the summary
    watermark: int  # the stats watermark the trim stayed under


def parse_age(text: str, *, option: str = "--keep") -> int:
    """Milliseconds in an age such as `30d`, `12h`, `90m`, `45s` or `0`."""
    m = _AGE.fullmatch(text.strip())
    if m is None or (not m[2] and m[1] != "0"):
        raise ConfigError(f"{option} takes an age such as 30d, 12h, 90m or 0, not {text!r}")
    return int(m[1]) * _UNIT_MS.get(m[2], 0)


def open_log_to_trim(target: Target) -> HitLog:
    """The log, writable; ConfigError when the target holds none (never makes one)."""
    log = open_log(target, create=False)
    if target.is_redis:
        return log
    partitions = log.partitions
    log.close()  # SQLite readers open hits.db read-only; trimming writes
    return open_log(target, partitions=partitions)


def compact(log: HitLog, store: StatsStore, *, older_than_ms: int) -> list[Compaction]:
    """Trim each partition up to its watermark, keeping blocks with a hit at
    or after `older_than_ms`."""
    done = []
    for p in range(log.partitions):
        watermark = store.watermark(p).offset
        dropped = log.trim(p, watermark, older_than_ms)
        upto, _rows = log.compacted(p)
        done.append(Compaction(p, dropped, upto, watermark))
    return done


def seed_from_summaries(log: HitLog, store: StatsStore, epochs: dict[int, int]) -> dict[int, int]:
    """After `store.reset`, apply each compacted partition's summary as its
    first batch, covering offsets (0, compacted offset] under the reset epoch;
    the offsets seeded to, by partition. The aggregator then counts the rest
    from there, so a rebuild never reads into the trimmed gap."""
    seeded = {}
    for p in range(log.partitions):
        upto, rows = log.compacted(p)
        if not upto:
            continue
        store.apply(
            Batch(
                partition=p,
                epoch=epochs[p],
                start=0,
                end=upto,
                deltas=rows,
                max_ts_ms=max((r[4] for r in rows), default=None),
                hits=sum(r[2] for r in rows),
            )
        )
        seeded[p] = upto
    return seeded
