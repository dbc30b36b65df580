"""The BH2 benchmark pipeline: redirect latency and KV cost per hit mode and
scenario, staleness, KV writes against the window, aggregator throughput.

Usually started by `benchmarks/run_bh2.sh`, which turns its environment knobs
into these flags. For each scenario × mode × concurrency × repeat, a fresh
server on a fresh data folder and a free loopback port is driven by wrk; see
`benchmarks/README.md` for the method and `bh2bench/` for the parts.

    .venv/bin/python benchmarks/bh2_bench.py --requests 5000 --repeats 3
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from bh2bench import expectations, plots, report, results, workload
from bh2bench.errors import AbortRun, BenchError
from bh2bench.knobs import (
    ABORT_ERROR_RATE,
    ABORT_MAX_CONCURRENCY,
    ALL_MODES,
    DEFAULT_AGG_HITS,
    DEFAULT_CONCURRENCIES,
    DEFAULT_REPEATS,
    DEFAULT_REQUESTS,
    DEFAULT_SWEEP_S,
    DEFAULT_WINDOW_S,
    NGINX,
    QUICK_AGG_HITS,
    QUICK_REQUESTS,
    QUICK_SWEEP_S,
    SCENARIOS,
    SWEEP_CONCURRENCY,
    SWEEP_MODE,
    SWEEP_SCENARIO,
    SWEEP_WINDOWS,
    Knobs,
    Scenario,
)
from bh2bench.machine import environment
from bh2bench.runs import RunResult, RunSpec, run
from bh2bench.servers import BIN, child_env
from bh2bench.wrk import require_wrk
from rlinks.store.sqlite import KV_FILE

HERE = Path(__file__).resolve().parent
MIN_PATHS = 50_000  # paths drawn per scenario (wrk cycles through them)

err = Console(stderr=True, highlight=False)


def _numbers(text: str, kind: Callable[[str], Any]) -> tuple[Any, ...]:
    return tuple(kind(x) for x in text.replace(",", " ").split())


def parse_knobs(argv: list[str] | None) -> Knobs:
    parser = argparse.ArgumentParser(
        prog="bh2_bench.py",
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--requests", type=int, help=f"per run (default {DEFAULT_REQUESTS:,})")
    parser.add_argument(
        "--concurrencies",
        default=" ".join(map(str, DEFAULT_CONCURRENCIES)),
        help="space-separated wrk connection counts",
    )
    parser.add_argument("--repeats", type=int, help=f"per cell (default {DEFAULT_REPEATS})")
    parser.add_argument("--scenarios", default=" ".join(SCENARIOS))
    parser.add_argument("--modes", default=" ".join(ALL_MODES))
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_REQUESTS} requests, 1 repeat, a short window sweep and a "
        "small aggregator benchmark (explicit flags win)",
    )
    parser.add_argument("--window", type=float, default=DEFAULT_WINDOW_S, help="BH2 --window")
    parser.add_argument(
        "--sweep-windows",
        default=None,
        help="windows (s) for the KV-writes-per-hit sweep ('' skips it; default "
        f'"{" ".join(f"{w:g}" for w in SWEEP_WINDOWS)}"; quick: "0.1 1")',
    )
    parser.add_argument("--sweep-seconds", type=float, help="load per sweep run (default 20 s)")
    parser.add_argument(
        "--agg-hits",
        type=int,
        help=f"hits for the aggregator throughput benchmark (0 skips; default "
        f"{DEFAULT_AGG_HITS:,}, quick {QUICK_AGG_HITS:,})",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of the request paths")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results folder")
    parser.add_argument(
        "--missing-paths",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="test only: send this share of requests to a code with no route (404s, "
        "to exercise the abort rule)",
    )
    a = parser.parse_args(argv)
    quick = bool(a.quick)
    sweep_text = a.sweep_windows if a.sweep_windows is not None else ("0.1 1" if quick else None)
    try:
        return Knobs(
            requests=a.requests or (QUICK_REQUESTS if quick else DEFAULT_REQUESTS),
            concurrencies=_numbers(a.concurrencies, int),
            repeats=a.repeats or (1 if quick else DEFAULT_REPEATS),
            scenarios=_numbers(a.scenarios, str),
            modes=_numbers(a.modes, str),
            quick=quick,
            window_s=a.window,
            sweep_windows=SWEEP_WINDOWS if sweep_text is None else _numbers(sweep_text, float),
            sweep_s=a.sweep_seconds or (QUICK_SWEEP_S if quick else DEFAULT_SWEEP_S),
            agg_hits=a.agg_hits
            if a.agg_hits is not None
            else (QUICK_AGG_HITS if quick else DEFAULT_AGG_HITS),
            seed=a.seed,
            out=a.out,
            missing_paths=a.missing_paths,
        )
    except ValueError as e:
        parser.error(str(e))


class Pipeline:
    def __init__(self, knobs: Knobs, scratch: Path) -> None:
        self.knobs = knobs
        self.scratch = scratch
        self.results: list[RunResult] = []
        self.sweep: list[RunResult] = []
        self.aggregate: dict[str, Any] | None = None
        self._templates: dict[Scenario, Path] = {}
        self._paths: dict[Scenario, Path] = {}
        self._runs = 0
        self._started = time.monotonic()

    def say(self, message: str) -> None:
        err.print(f"[dim]{time.monotonic() - self._started:7.1f}s[/] {message}", soft_wrap=True)

    # -- inputs, made once per scenario ----------------------------------------------

    def template(self, scenario: Scenario) -> Path:
        """A kv.db holding the scenario's routes only (imported with `rlinks links
        import`); each run starts from a copy."""
        if scenario not in self._templates:
            folder = self.scratch / f"template-{scenario}"
            folder.mkdir()
            lines = folder / "routes.ndjson"
            n = workload.write_routes(lines, scenario)
            started = time.monotonic()
            done = subprocess.run(
                [BIN / "rlinks", "links", "import", "--data", folder / "data", lines],
                env={**child_env(), "RLINKS_ACTOR": "bh2-bench"},
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
            if done.returncode != 0:
                raise BenchError(f"rlinks links import failed: {done.stderr.strip()}")
            kv = folder / "data" / KV_FILE
            conn = sqlite3.connect(kv)
            try:
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                conn.close()
            self.say(f"{scenario}: imported {n:,} routes in {time.monotonic() - started:.1f} s")
            self._templates[scenario] = kv
        return self._templates[scenario]

    def paths(self, scenario: Scenario) -> Path:
        if scenario not in self._paths:
            path = self.scratch / f"paths-{scenario}.txt"
            n = max(self.knobs.requests, MIN_PATHS)
            paths = workload.sample_paths(scenario, n, self.knobs.seed)
            if self.knobs.missing_paths:
                paths = workload.with_missing(paths, n, self.knobs.missing_paths, self.knobs.seed)
            workload.write_paths(path, paths)
            self._paths[scenario] = path
        return self._paths[scenario]

    # -- runs ------------------------------------------------------------------------

    def measure(self, spec: RunSpec) -> RunResult:
        self._runs += 1
        workdir = self.scratch / f"run-{self._runs:04d}"
        workdir.mkdir()
        template = self.template(spec.scenario)
        result = run(spec, template, self.paths(spec.scenario), workdir)
        extra = ""
        if result.kv_writes_per_hit is not None:
            extra += f", {result.kv_writes_per_hit:.3g} KV writes/hit"
            extra += f", {result.key_rate_violations} key-rate violations"
        if result.staleness_p99_ms is not None:
            extra += f", staleness p99 {result.staleness_p99_ms:.0f} ms"
        self.say(
            f"{result.name}: {result.requests:,} requests, {result.rps:,.0f} rps, "
            f"p95 {result.p95_ms:.2f} ms, {result.errors} errors{extra}"
        )
        if (
            spec.concurrency <= ABORT_MAX_CONCURRENCY
            and result.error_rate > ABORT_ERROR_RATE
            and spec.requests is not None
        ):
            self.results.append(result)
            results.write_raw(self.knobs.out, result)
            kept = self.knobs.out / f"server-{result.name}.log"
            log = workdir / ("server.log" if spec.mode != NGINX else "nginx-error.log")
            if log.exists():
                shutil.copyfile(log, kept)
            raise AbortRun(
                f"{result.name}: {result.errors:,} errors in {result.requests:,} requests "
                f"({result.error_rate:.1%}) at c={spec.concurrency} (the abort rule: over "
                f"{ABORT_ERROR_RATE:.0%} at c <= {ABORT_MAX_CONCURRENCY}); server log kept "
                f"as {kept}"
            )
        shutil.rmtree(workdir, ignore_errors=True)
        return result

    def run_matrix(self) -> None:
        k = self.knobs
        for scenario in k.scenarios:
            for mode in k.modes:
                for c in k.concurrencies:
                    for repeat in range(1, k.repeats + 1):
                        spec = RunSpec(scenario, mode, c, repeat, k.window_s, k.requests, None)
                        result = self.measure(spec)
                        self.results.append(result)
                        results.write_raw(k.out, result)

    def run_sweep(self) -> None:
        for window in self.knobs.sweep_windows:
            spec = RunSpec(
                SWEEP_SCENARIO,
                SWEEP_MODE,
                SWEEP_CONCURRENCY,
                1,
                window,
                None,
                self.knobs.sweep_s,
            )
            result = self.measure(spec)
            self.sweep.append(result)
            results.write_raw(self.knobs.out, result, prefix="sweep-")

    def run_aggregate_throughput(self) -> None:
        if self.knobs.agg_hits < 1:
            return
        out = self.knobs.out / "aggregate_throughput.json"
        self.say(f"aggregator throughput on {self.knobs.agg_hits:,} ingested hits")
        done = subprocess.run(
            [
                sys.executable,
                HERE / "aggregate_throughput.py",
                "--hits",
                str(self.knobs.agg_hits),
                "--repeat",
                "1",
                "--workdir",
                self.scratch / "aggregate",
                "--json",
                out,
            ],
            env=child_env(),
            capture_output=True,
            text=True,
            timeout=1800,
            check=False,
        )
        if done.returncode != 0:
            raise BenchError(f"aggregate_throughput.py failed:\n{done.stderr[-3000:]}")
        self.aggregate = json.loads(out.read_text())
        self.say(report.aggregate_line(self.aggregate))

    # -- outputs ---------------------------------------------------------------------

    def write_outputs(self, status: str, started_at: str) -> list[expectations.Check]:
        k = self.knobs
        results.write_all(k.out, self.results, self.sweep)
        if self.results:
            plots.p95_vs_concurrency(k.out / "p95_vs_concurrency.png", self.results)
            plots.kv_writes_per_hit(k.out / "kv_writes_per_hit.png", self.results)
        if self.results or self.sweep:
            plots.staleness_cdf(k.out / "staleness_cdf.png", self.results, self.sweep)
        if self.sweep:
            plots.kv_writes_vs_window(k.out / "kv_writes_vs_window.png", self.sweep)
        checks = expectations.check_all(self.results, self.sweep)
        env = {
            "status": status,
            "started_at": started_at,
            "finished_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "seconds": round(time.monotonic() - self._started, 1),
            "knobs": k.as_json(),
            **environment(),
        }
        (k.out / "env.json").write_text(json.dumps(env, indent=2) + "\n")
        (k.out / "summary.md").write_text(
            report.summary_markdown(
                self.results, self.sweep, self.aggregate, checks, status, k.as_json()
            )
        )
        return checks


def print_tables(pipeline: Pipeline, checks: list[expectations.Check]) -> None:
    console = Console(highlight=False, width=200)
    table = Table(title="BH2 benchmark: mean of repeats (errors summed)")
    for i, col in enumerate(report.MEAN_HEADER):
        table.add_column(col, justify="left" if i < 2 else "right")
    for row in report.mean_table(pipeline.results):
        table.add_row(*row)
    console.print(table)
    bh2 = report.bh2_table(pipeline.results)
    if bh2:
        table = Table(title="BH2 in the append runs (hits and batches include the probes)")
        for i, col in enumerate(report.BH2_HEADER):
            table.add_column(col, justify="left" if i < 2 else "right")
        for row in bh2:
            table.add_row(*row)
        console.print(table)
    for c in checks:
        console.print(f"{c.verdict}: {c.claim}. {c.detail}")


def main(argv: list[str] | None = None) -> int:
    knobs = parse_knobs(argv)
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    try:
        require_wrk()
        has_nginx = shutil.which("nginx") or Path("/usr/sbin/nginx").exists()
        if NGINX in knobs.modes and not has_nginx:
            raise BenchError("nginx is not installed: apt-get install nginx-light")
    except BenchError as e:
        err.print(f"[bold red]cannot run:[/] {e}")
        return 2
    knobs.out.mkdir(parents=True, exist_ok=True)
    results.clear(knobs.out)
    status = "complete"
    code = 0
    with tempfile.TemporaryDirectory(prefix="rlinks-bh2-bench-") as tmp:
        pipeline = Pipeline(knobs, Path(tmp))
        try:
            pipeline.run_matrix()
            pipeline.run_sweep()
            pipeline.run_aggregate_throughput()
        except AbortRun as e:
            status, code = f"aborted: {e}", 3
            err.print(f"[bold red]run aborted:[/] {e}", soft_wrap=True)
        except BenchError as e:
            status, code = f"failed: {e}", 1
            err.print(f"[bold red]benchmark failed:[/] {e}", soft_wrap=True)
        except KeyboardInterrupt:
            status, code = "interrupted", 130
        checks = pipeline.write_outputs(status, started_at)
    print_tables(pipeline, checks)
    pipeline.say(f"results in {knobs.out} ({status})")
    return code


if __name__ == "__main__":
    sys.exit(main())
