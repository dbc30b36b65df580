"""`summary.md` and the console tables: the figures a reader looks at first."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from bh2bench.expectations import Check
from bh2bench.results import SWEEP_COLUMNS, fmt, mean_rows, sweep_row
from bh2bench.runs import RunResult

MEAN_HEADER = (
    "scenario",
    "mode",
    "c",
    "p50 ms",
    "p95 ms",
    "p99 ms",
    "rps",
    "errors",
    "KV writes/hit",
    "KV reads/hit",
    "key-rate violations",
    "staleness p99 ms",
)


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "ms":
        return f"{value:,.2f}"
    if kind == "rps":
        return f"{value:,.0f}"
    if kind == "int":
        return f"{value:,.0f}"
    if kind == "staleness":
        return f"{value:,.0f}"
    return f"{value:.3g}"


def mean_table(results: Sequence[RunResult]) -> list[list[str]]:
    rows = []
    for r in mean_rows(results):
        rows.append(
            [
                r["scenario"],
                r["mode"],
                str(r["concurrency"]),
                _cell(r["p50_ms"], "ms"),
                _cell(r["p95_ms"], "ms"),
                _cell(r["p99_ms"], "ms"),
                _cell(r["rps"], "rps"),
                _cell(r["errors"], "int"),
                _cell(r["kv_writes_per_hit"], "g"),
                _cell(r["kv_reads_per_hit"], "g"),
                _cell(r["key_rate_violations"], "int"),
                _cell(r["staleness_p99_ms"], "staleness"),
            ]
        )
    return rows


BH2_HEADER = (
    "scenario",
    "mode",
    "c",
    "hits",
    "batches",
    "hits/batch",
    "KV writes/hit",
    "violations",
    "staleness p50 ms",
    "staleness p99 ms",
    "probes",
    "BH2 hits/s",
    "hits per BH2 CPU-s",
)


def bh2_table(results: Sequence[RunResult]) -> list[list[str]]:
    """Per append run: what BH2 did (repeats listed, not averaged)."""
    rows = []
    for r in results:
        if r.probes is None or r.kv_status is None:
            continue
        hits, batches = r.kv_status["bh2_hits"], r.kv_status["bh2_batches"]
        rows.append(
            [
                r.scenario,
                r.mode + (f" r{r.repeat}" if r.repeat > 1 else ""),
                str(r.concurrency),
                f"{hits:,}",
                f"{batches:,}",
                f"{hits / max(1, batches):,.0f}",
                _cell(r.kv_writes_per_hit, "g"),
                _cell(r.key_rate_violations, "int"),
                _cell(r.staleness_p50_ms, "staleness"),
                _cell(r.staleness_p99_ms, "staleness"),
                str(r.probes["sent"]),
                _cell(r.agg_hits_per_s, "rps"),
                _cell(r.agg_hits_per_cpu_s, "rps"),
            ]
        )
    return rows


def _markdown(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def summary_markdown(
    results: Sequence[RunResult],
    sweep: Sequence[RunResult],
    aggregate: dict[str, Any] | None,
    checks: Sequence[Check],
    status: str,
    knobs: dict[str, Any],
) -> str:
    parts = [
        "# BH2 benchmark results",
        "",
        f"Status: {status}. Knobs: REQUESTS={knobs['requests']}, "
        f'CONCURRENCIES="{" ".join(map(str, knobs["concurrencies"]))}", '
        f"REPEATS={knobs['repeats']}, window {knobs['window_s']:g} s, QUICK={int(knobs['quick'])}. "
        "Machine and versions: `env.json`. Method: `benchmarks/README.md`.",
        "",
        "## Redirects (mean of repeats, errors summed)",
        "",
        _markdown(MEAN_HEADER, mean_table(results)),
    ]
    bh2 = bh2_table(results)
    if bh2:
        parts += [
            "",
            "## BH2 in the append runs (hits and batches include the probes)",
            "",
            _markdown(BH2_HEADER, bh2),
        ]
    if sweep:
        parts += [
            "",
            f"## KV writes per hit against `--window` ({sweep[0].scenario}, {sweep[0].mode}, "
            f"c={sweep[0].concurrency}, {sweep[0].seconds_asked:g} s of load each)",
            "",
            _markdown(
                SWEEP_COLUMNS, [[fmt(sweep_row(r)[c]) or "-" for c in SWEEP_COLUMNS] for r in sweep]
            ),
        ]
    if aggregate:
        parts += ["", "## Aggregator throughput on an ingested log", "", aggregate_line(aggregate)]
    if checks:
        parts += ["", "## Expected results", ""]
        parts += [f"- **{c.verdict}**: {c.claim}. {c.detail}" for c in checks]
    return "\n".join(parts) + "\n"


def aggregate_line(doc: dict[str, Any]) -> str:
    r = doc["results"]
    return (
        f"{doc['n']:,} hits (Zipf s={doc['zipf_s']} over {doc['codes']:,} codes): "
        f"`rlinks-bh2 run --once` {r['run']['hits_per_s']:,.0f} hits/s (CLI wall), "
        f"`Aggregator.run` {r['run_inproc']['hits_per_s']:,.0f} hits/s in process, "
        f"naive json.loads loop {r['naive']['hits_per_s']:,.0f} hits/s "
        f"(see `aggregate_throughput.json`)."
    )
