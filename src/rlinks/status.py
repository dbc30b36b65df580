"""How fresh the stats are: per partition, the watermark against the log's end."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from rlinks.log.base import HitLog, partition_of
from rlinks.store.base import Snapshot, StatsStore
from rlinks.timefmt import format_ms


@dataclass(frozen=True)
class PartitionStatus:
    partition: int
    watermark: int
    log_end: int
    epoch: int
    as_of_ms: int | None  # event time of the newest hit counted
    last_flush_ms: int | None
    lag_hits: int
    lag_s: float  # event time of the newest logged hit minus `as_of_ms`
    batches: int
    hits: int
    kv_writes: int
    key_rate_violations: int  # stats keys written twice within a second (hosted-KV limit)


def read_status(log: HitLog, store: StatsStore) -> list[PartitionStatus]:
    out = []
    for p in range(log.partitions):
        w = store.watermark(p)
        end = log.end(p)
        lag_hits = end.offset - w.offset
        lag_s = 0.0
        if lag_hits and end.max_ts_ms is not None and w.as_of_ms is not None:
            lag_s = max(0.0, (end.max_ts_ms - w.as_of_ms) / 1000)
        out.append(
            PartitionStatus(
                partition=p,
                watermark=w.offset,
                log_end=end.offset,
                epoch=w.epoch,
                as_of_ms=w.as_of_ms,
                last_flush_ms=w.flushed_at_ms,
                lag_hits=lag_hits,
                lag_s=lag_s,
                batches=w.batches,
                hits=w.hits,
                kv_writes=w.kv_writes,
                key_rate_violations=w.key_rate_violations,
            )
        )
    return out


def freshness(parts: list[PartitionStatus]) -> dict[str, Any]:
    """How fresh stats reads are: "as of" (event time), lag in hits and seconds."""
    as_of = [p.as_of_ms for p in parts if p.as_of_ms is not None]
    return {
        "as_of": format_ms(min(as_of)) if as_of else None,
        "lag_hits": sum(p.lag_hits for p in parts),
        "lag_s": round(max((p.lag_s for p in parts), default=0.0), 3),
    }


def snapshot_json(s: Snapshot) -> dict[str, Any]:
    return {
        "hits": s.hits,
        "first_hit": format_ms(s.first_ms),
        "last_hit": format_ms(s.last_ms),
        "daily": s.daily,
    }


def code_stats(log: HitLog, store: StatsStore, code: str) -> dict[str, Any]:
    """One code's snapshot (zero if never hit) with the freshness of its partition."""
    snap = store.snapshot(code)
    part = read_status(log, store)[partition_of(code, log.partitions)]
    return {
        "code": code,
        **(
            snapshot_json(snap)
            if snap
            else {"hits": 0, "first_hit": None, "last_hit": None, "daily": {}}
        ),
        **freshness([part]),
    }
