"""One measured run: a fresh server on a fresh data folder, driven by wrk.

For `rlinks serve` the steps are:

1. copy the scenario's routes-only kv.db into a new data folder;
2. start `rlinks serve` (mode flags; `--window` for append) on a free port;
3. warm up with one redirect of the probe's code; (append) start the
   staleness prober, wait until BH2 has counted its first probe (the log
   writer and the aggregator have started), note the aggregator's CPU time;
4. run wrk: `requests` responses, or `duration_s` seconds;
5. (append) stop probing and wait for the probes to show, then for BH2 to
   catch up (lag 0) on its own, so no flush is forced by the shutdown;
6. read the server's request counts from /metrics, stop it (SIGTERM);
7. read `rlinks-bh2 status --json` for the KV figures.

nginx runs are steps 2, 4 and 6 only.
"""

from __future__ import annotations

import datetime as dt
import http.client
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

from bh2bench.errors import BenchError
from bh2bench.knobs import MODES, NGINX, Scenario, kind_of
from bh2bench.kvcost import per_hit, read_status, redirects_answered
from bh2bench.probes import Prober, ProbeResult
from bh2bench.servers import HOST, cpu_seconds, nginx_server, rlinks_server
from bh2bench.workload import PROBE_CODE
from bh2bench.wrk import WrkFigures, run_wrk
from rlinks.log.sqlite import SqliteHitLog
from rlinks.status import read_status as lag_status
from rlinks.store.sqlite import KV_FILE, SqliteStatsStore

CATCH_UP_GRACE_S: Final = 5.0  # beyond one window, for the probes and the lag
WARM_UP_TIMEOUT_S: Final = 10.0


@dataclass
class RunResult:
    """Everything measured in one run (written as its raw JSON)."""

    scenario: Scenario
    mode: str
    concurrency: int
    repeat: int
    window_s: float | None
    requests_asked: int | None
    seconds_asked: float | None
    started_at: str
    # wrk
    requests: int = 0
    rps: float = 0.0
    p50_ms: float = 0.0
    p95_ms: float = 0.0
    p99_ms: float = 0.0
    max_ms: float = 0.0
    errors: int = 0
    errors_status: int = 0
    errors_timeout: int = 0
    wrk_duration_s: float = 0.0
    span_s: float = 0.0
    reached_count: bool = True
    # the server (None for nginx)
    statuses: dict[str, int] = field(default_factory=dict)
    load_hits: int | None = None
    kv_writes_per_hit: float | None = None
    kv_reads_per_hit: float | None = None
    key_rate_violations: int | None = None
    kv_status: dict[str, int] | None = None
    # append only
    staleness_p50_ms: float | None = None
    staleness_p99_ms: float | None = None
    probes: dict[str, Any] | None = None
    agg_cpu_s: float | None = None  # the aggregator's CPU time over the run
    agg_hits_per_cpu_s: float | None = None  # hits per aggregator CPU-second (idle polls included)
    agg_hits_per_s: float | None = None  # hits/s BH2 sustained (None: it did not catch up)
    caught_up_s: float | None = None  # after the probes showed, until lag 0

    @property
    def error_rate(self) -> float:
        return self.errors / max(1, self.requests)

    @property
    def name(self) -> str:
        window = f"-w{self.window_s:g}" if self.requests_asked is None else ""
        return f"{self.scenario}-{self.mode}{window}-c{self.concurrency}-r{self.repeat}"

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "error_rate": self.error_rate}

    def take_wrk(self, f: WrkFigures) -> None:
        self.requests, self.rps, self.errors = f.requests, f.rps, f.errors
        self.p50_ms, self.p95_ms, self.p99_ms, self.max_ms = f.p50_ms, f.p95_ms, f.p99_ms, f.max_ms
        self.errors_status, self.errors_timeout = f.errors_status, f.errors_timeout
        self.wrk_duration_s, self.span_s, self.reached_count = f.duration_s, f.span_s, f.hit_limit


@dataclass(frozen=True)
class RunSpec:
    scenario: Scenario
    mode: str
    concurrency: int
    repeat: int
    window_s: float
    requests: int | None  # a count of requests, or:
    seconds: float | None  # a duration (the window sweep)


def run(spec: RunSpec, template_kv: Path, paths_file: Path, workdir: Path) -> RunResult:
    """One run in `workdir` (its server log is `workdir/server.log`)."""
    kind = kind_of(spec.mode)
    result = RunResult(
        scenario=spec.scenario,
        mode=spec.mode,
        concurrency=spec.concurrency,
        repeat=spec.repeat,
        window_s=spec.window_s if kind == "append" else None,
        requests_asked=spec.requests,
        seconds_asked=spec.seconds,
        started_at=dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    )
    if spec.mode == NGINX:
        with nginx_server(workdir) as server:
            result.take_wrk(_load(spec, server.url("/"), paths_file))
        return result

    data = workdir / "data"
    data.mkdir()
    shutil.copyfile(template_kv, data / KV_FILE)
    flags = list(MODES[spec.mode])
    if kind == "append":
        flags += ["--window", str(spec.window_s)]
    probes: ProbeResult | None = None
    with rlinks_server(data, flags, workdir / "server.log") as server:
        agg_pid = server.aggregator_pid() if kind == "append" else None
        # Warm up with one redirect of the probe's code (the server answers
        # once its log writer has started): the prober's first probe in
        # append, else a plain request, counted like any hit.
        prober = Prober(server.port, data) if kind == "append" else None
        if prober is not None:
            prober.start()
            if not prober.wait_first(WARM_UP_TIMEOUT_S):
                raise BenchError(f"{server.url()}: the first probe got no answer")
            # Load starts once BH2 has counted that probe: the aggregator's
            # start-up (imports, first read) must not compete with the load.
            if not prober.wait_counted(WARM_UP_TIMEOUT_S):
                raise BenchError(f"{server.url()}: the first probe never reached the stats")
        else:
            _warm_up(server.port)
        cpu_before = cpu_seconds(agg_pid)  # the load's share, not the start-up's
        result.take_wrk(_load(spec, server.url("/"), paths_file))
        if prober is not None:
            probes = prober.finish(timeout_s=spec.window_s + CATCH_UP_GRACE_S)
            result.caught_up_s = _wait_caught_up(data, spec.window_s + CATCH_UP_GRACE_S)
            cpu_after = cpu_seconds(agg_pid)
            if cpu_before is not None and cpu_after is not None:
                result.agg_cpu_s = cpu_after - cpu_before
        statuses = redirects_answered(server)
    status = read_status(data)
    result.statuses = {str(k): v for k, v in sorted(statuses.items())}
    cost = per_hit(kind, status, statuses.get(302, 0), probes)
    result.load_hits = cost.hits
    result.kv_writes_per_hit = cost.writes_per_hit
    result.kv_reads_per_hit = cost.reads_per_hit
    result.key_rate_violations = cost.key_rate_violations
    result.kv_status = asdict(status)
    if probes is not None:
        result.staleness_p50_ms = probes.percentile(50)
        result.staleness_p99_ms = probes.percentile(99)
        result.probes = asdict(probes)
        if result.agg_cpu_s:
            result.agg_hits_per_cpu_s = status.bh2_hits / result.agg_cpu_s
        if result.caught_up_s is not None and result.span_s > 0:
            # BH2 kept up (lag 0 within a window of the load's end): it
            # sustained the load's hit rate.
            result.agg_hits_per_s = status.bh2_hits / result.span_s
    return result


def _warm_up(port: int) -> None:
    conn = http.client.HTTPConnection(HOST, port, timeout=WARM_UP_TIMEOUT_S)
    try:
        conn.request("GET", f"/{PROBE_CODE}")
        status = conn.getresponse().status
    except (OSError, http.client.HTTPException) as e:
        raise BenchError(f"the warm-up redirect failed: {e}") from e
    finally:
        conn.close()
    if status != 302:
        raise BenchError(f"the warm-up redirect answered {status}, not 302")


def _load(spec: RunSpec, url: str, paths_file: Path) -> WrkFigures:
    if spec.requests is not None:
        return run_wrk(url, paths_file, concurrency=spec.concurrency, requests=spec.requests)
    return run_wrk(url, paths_file, concurrency=spec.concurrency, duration_s=spec.seconds)


def _wait_caught_up(data: Path, timeout_s: float) -> float | None:
    """Seconds until BH2's watermark reached the log's end (None: not in time)."""
    started = time.monotonic()
    log = SqliteHitLog(data, readonly=True)
    store = SqliteStatsStore(data, readonly=True)
    try:
        while time.monotonic() - started < timeout_s:
            if sum(p.lag_hits for p in lag_status(log, store)) == 0:
                return time.monotonic() - started
            time.sleep(0.02)
    finally:
        log.close()
        store.close()
    return None
