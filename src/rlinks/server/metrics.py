"""Prometheus metrics of the server, summed over its worker processes.

`rlinks serve` points PROMETHEUS_MULTIPROC_DIR at a fresh folder before any
worker starts, so every worker's counters land in shared files and /metrics,
whichever worker answers it, reports the whole server. Aggregator figures are
read from the stats store at scrape time, so they are right whoever runs BH2.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from rlinks.backends import Target, open_log, open_store
from rlinks.status import read_status

CONTENT_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class ServerMetrics:
    def __init__(self) -> None:
        # registry=None: values live in the multiprocess files, collected per scrape.
        self.requests = Counter(
            "rlinks_requests", "HTTP requests answered, by status", ["status"], registry=None
        )
        self.hits_appended = Counter(
            "rlinks_hits_appended", "Hits committed to the HITS log", registry=None
        )
        self.hits_dropped = Counter(
            "rlinks_hits_dropped", "Hits dropped: async queue full", registry=None
        )
        self.hits_failed = Counter("rlinks_hits_failed", "Hits whose append failed", registry=None)
        self.queue_depth = Gauge(
            "rlinks_hit_queue_depth",
            "Hits waiting for the group commit",
            registry=None,
            multiprocess_mode="livesum",
        )
        self.commit_seconds = Histogram(
            "rlinks_hit_commit_seconds",
            "Duration of one group commit of hits",
            registry=None,
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0),
        )
        self.kv_reads = Counter("rlinks_kv_reads", "Calls that read the KV", registry=None)
        self.kv_writes = Counter("rlinks_kv_writes", "Calls that wrote the KV", registry=None)
        self.kv_key_rate_violations = Counter(
            "rlinks_kv_key_rate_violations",
            "KV writes to a key written less than a second before (hosted-KV limit)",
            registry=None,
        )


class _AggregatorCollector(Collector):
    """BH2's lag and KV writes, read from the store when scraped."""

    def __init__(self, target: Target) -> None:
        self._target = target

    def collect(self) -> Iterator[Metric]:
        log = open_log(self._target, create=False)
        store = open_store(self._target)
        try:
            parts = read_status(log, store)
        finally:
            log.close()
            store.close()
        lag_hits = GaugeMetricFamily(
            "rlinks_aggregator_lag_hits", "Hits logged but not yet in stats", labels=["partition"]
        )
        lag_s = GaugeMetricFamily(
            "rlinks_aggregator_lag_seconds",
            "Event time of the newest logged hit minus that of the newest counted",
            labels=["partition"],
        )
        writes = CounterMetricFamily(
            "rlinks_aggregator_kv_writes", "Stats keys written by BH2", labels=["partition"]
        )
        for p in parts:
            lag_hits.add_metric([str(p.partition)], p.lag_hits)
            lag_s.add_metric([str(p.partition)], p.lag_s)
            writes.add_metric([str(p.partition)], p.kv_writes)
        yield from (lag_hits, lag_s, writes)


def render(multiproc_dir: str, target: Target) -> bytes:
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=multiproc_dir)  # type: ignore[no-untyped-call]
    registry.register(_AggregatorCollector(target))
    return generate_latest(registry)
