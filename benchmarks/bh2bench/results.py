"""The pipeline's files in the results folder.

- `raw/<scenario>-<mode>-c<c>-r<repeat>.json`: everything measured in one run;
  `raw/sweep-...json` for the window sweep;
- `summary.csv`: one row per run (the columns below); a figure that does not
  apply to a mode (KV figures for nginx, staleness outside `append`) is blank;
- `summary_mean.csv`: per scenario, mode and concurrency, the mean of the
  repeats (errors summed);
- `window_sweep.csv`: BH2's KV writes per hit against `--window`;
- `env.json`, `aggregate_throughput.json`, `summary.md` and the plots.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Final

from bh2bench.runs import RunResult

SUMMARY_COLUMNS: Final = (
    "scenario",
    "mode",
    "concurrency",
    "repeat",
    "p50_ms",
    "p95_ms",
    "p99_ms",
    "rps",
    "errors",
    "kv_writes_per_hit",
    "kv_reads_per_hit",
    "key_rate_violations",
    "staleness_p99_ms",
)
FIGURES: Final = SUMMARY_COLUMNS[4:]
MEAN_COLUMNS: Final = ("scenario", "mode", "concurrency", "repeats", *FIGURES)
SWEEP_COLUMNS: Final = (
    "window_s",
    "seconds",
    "requests",
    "rps",
    "kv_writes_per_hit",
    "key_rate_violations",
    "batches",
    "staleness_p50_ms",
    "staleness_p99_ms",
    "probes",
    "agg_hits_per_s",
    "agg_cpu_s",
    "agg_hits_per_cpu_s",
)
# What the pipeline writes: cleared at the start of a run so results never mix.
OWNED_GLOBS: Final = (
    "raw/*.json",
    "*.csv",
    "*.png",
    "server-*.log",
    "env.json",
    "summary.md",
    "aggregate_throughput.json",
)


def clear(out: Path) -> None:
    for pattern in OWNED_GLOBS:
        for path in out.glob(pattern):
            path.unlink()
    (out / "raw").mkdir(parents=True, exist_ok=True)


def fmt(value: Any) -> str:
    """A CSV cell: blank for None, integers as is, floats to 6 significant digits."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(int(value))
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def write_raw(out: Path, result: RunResult, prefix: str = "") -> Path:
    path = out / "raw" / f"{prefix}{result.name}.json"
    path.write_text(json.dumps(result.as_json(), indent=1) + "\n")
    return path


def summary_row(r: RunResult) -> dict[str, Any]:
    return {c: getattr(r, c) for c in SUMMARY_COLUMNS}


def mean_rows(results: Sequence[RunResult]) -> list[dict[str, Any]]:
    """Per (scenario, mode, concurrency) in run order: repeats averaged, errors summed."""
    groups: dict[tuple[str, str, int], list[RunResult]] = {}
    for r in results:
        groups.setdefault((r.scenario, r.mode, r.concurrency), []).append(r)
    rows = []
    for (scenario, mode, c), runs in groups.items():
        row: dict[str, Any] = {
            "scenario": scenario,
            "mode": mode,
            "concurrency": c,
            "repeats": len(runs),
        }
        for column in FIGURES:
            values = [getattr(r, column) for r in runs if getattr(r, column) is not None]
            if column == "errors":
                row[column] = sum(values)
            else:
                row[column] = statistics.fmean(values) if values else None
        rows.append(row)
    return rows


def write_csv(path: Path, columns: Sequence[str], rows: Iterable[dict[str, Any]]) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([fmt(row.get(c)) for c in columns])


def sweep_row(r: RunResult) -> dict[str, Any]:
    return {
        "window_s": r.window_s,
        "seconds": r.seconds_asked,
        "requests": r.requests,
        "rps": r.rps,
        "kv_writes_per_hit": r.kv_writes_per_hit,
        "key_rate_violations": r.key_rate_violations,
        "batches": (r.kv_status or {}).get("bh2_batches"),
        "staleness_p50_ms": r.staleness_p50_ms,
        "staleness_p99_ms": r.staleness_p99_ms,
        "probes": (r.probes or {}).get("sent"),
        "agg_hits_per_s": r.agg_hits_per_s,
        "agg_cpu_s": r.agg_cpu_s,
        "agg_hits_per_cpu_s": r.agg_hits_per_cpu_s,
    }


def write_all(
    out: Path,
    results: Sequence[RunResult],
    sweep: Sequence[RunResult],
) -> None:
    write_csv(out / "summary.csv", SUMMARY_COLUMNS, (summary_row(r) for r in results))
    write_csv(out / "summary_mean.csv", MEAN_COLUMNS, mean_rows(results))
    if sweep:
        write_csv(out / "window_sweep.csv", SWEEP_COLUMNS, (sweep_row(r) for r in sweep))
