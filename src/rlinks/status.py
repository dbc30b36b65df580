"""How fresh the stats are: per partition, the watermark against the log's end."""

from __future__ import annotations

from dataclasses import dataclass

from rlinks.log.base import HitLog
from rlinks.store.base import StatsStore


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
            )
        )
    return out
