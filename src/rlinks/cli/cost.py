"""`rlinks-bh2 cost`: KV writes, reads and $/month of per-hit counting against BH2."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from rlinks.cli.common import json_option, out, print_json, reports_errors
from rlinks.cost import (
    DISTRIBUTIONS,
    MAX_CODES,
    SECONDS_PER_MONTH,
    CostReport,
    Distribution,
    KeyLimit,
    KvOps,
    Traffic,
    assumptions,
    cost_report,
    read_summary,
)

SUFFIXES = {"k": 1e3, "m": 1e6, "g": 1e9, "t": 1e12}


def parse_count(text: str) -> float:
    """A count written as 300000000, 300_000_000, 300,000,000, 3e8, 300M or 1.5G."""
    digits = text.strip().replace("_", "").replace(",", "")
    scale = 1.0
    if digits and digits[-1].lower() in SUFFIXES:
        scale, digits = SUFFIXES[digits[-1].lower()], digits[:-1]
    try:
        value = float(digits) * scale
    except ValueError:
        raise ValueError(f"{text!r} is not a count: write 300000000, 300M or 1.5G") from None
    if not (math.isfinite(value) and value >= 0):
        raise ValueError(f"must be a number >= 0, got {text!r}")
    return value


def _count_option(ctx: click.Context, param: click.Parameter, value: str) -> float:
    try:
        return parse_count(value)
    except ValueError as e:
        raise click.BadParameter(str(e), ctx, param) from e


@click.command()
@click.option(
    "--hits-per-month",
    callback=_count_option,
    metavar="COUNT",
    default="300M",
    show_default=True,
    help="Hits (redirects) a month; suffixes k, M, G, T are accepted (300M, 1.5G).",
)
@click.option(
    "--codes",
    type=click.IntRange(1, MAX_CODES),
    default=10_000,
    show_default=True,
    help="Codes the hits go to (zipf and uniform; hot puts every hit on one code).",
)
@click.option(
    "--distribution",
    type=click.Choice(DISTRIBUTIONS),
    default="zipf",
    show_default=True,
    help="hot: one code; zipf: P(rank k) proportional to k^-s; uniform: every code alike.",
)
@click.option(
    "--zipf-s",
    type=click.FloatRange(min=0),
    default=1.1,
    show_default=True,
    help="Zipf exponent s (zipf only; `rlinks-bh2 sample` uses 1.1).",
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(min=0, min_open=True, max=SECONDS_PER_MONTH),
    default=1.0,
    show_default=True,
    help="Seconds between BH2 flushes (`run --window`).",
)
@click.option(
    "--summary",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A benchmark summary.csv: use its measured mean KV writes per hit of the "
    "scenario named like --distribution (kv-* modes for per-hit, append-* for BH2). "
    "Reads stay the model's: the benchmark's also count route lookups.",
)
@json_option
@reports_errors
def cost(
    hits_per_month: float,
    codes: int,
    distribution: Distribution,
    zipf_s: float,
    window_s: float,
    summary: Path | None,
    as_json: bool,
) -> None:
    """KV writes, reads and $/month: per-hit writes against BH2.

    The per-hit baseline reads and writes a code's stats key on every hit. BH2
    writes each code once per window in which it had hits: the expected number
    of distinct codes per window, sum_i 1 - (1 - p_i)^hits_per_window, times the
    windows in a 30-day month over which the traffic is spread evenly. Prices:
    Cloudflare Workers KV, DynamoDB on-demand, Upstash Redis (see
    docs/benchmarks/cost-model.md for their sources and dates). Also shows at
    which hit rate per-hit writes break the hosted KV's 1 write/s per key.

    \b
    Examples:
      rlinks-bh2 cost
      rlinks-bh2 cost --hits-per-month 1.5G --distribution uniform --codes 100000
      rlinks-bh2 cost --summary results/summary.csv --json
    """
    traffic = Traffic(hits_per_month, codes, distribution, zipf_s, window_s)
    measured = read_summary(summary, distribution) if summary is not None else None
    report = cost_report(traffic, measured)
    if as_json:
        print_json(report_json(report))
    else:
        print_report(report)


# -- JSON ------------------------------------------------------------------------------


def report_json(report: CostReport) -> dict[str, Any]:
    t = report.traffic
    return {
        "traffic": {
            "hits_per_month": t.hits_per_month,
            "hits_per_s": t.hits_per_s,
            "distribution": t.distribution,
            "codes": 1 if t.distribution == "hot" else t.codes,
            "zipf_s": t.zipf_s if t.distribution == "zipf" else None,
            "window_s": t.window_s,
            "hits_per_window": t.hits_per_window,
            "windows_per_month": t.windows_per_month,
            "distinct_codes_per_window": report.distinct_per_window,
        },
        "per_hit": _ops_json(report.per_hit, t),
        "bh2": _ops_json(report.bh2, t),
        "costs": [
            {
                "provider": c.provider,
                "per_hit_usd": c.per_hit_usd,
                "bh2_usd": c.bh2_usd,
                "saving_factor": c.saving_factor,
            }
            for c in report.costs
        ],
        "per_key_limits": [
            {
                "provider": k.provider,
                "writes_per_s_per_key": k.writes_per_s,
                "busiest_code_share": k.busiest_share,
                "per_hit_breaks_above_hits_per_s": k.per_hit_breaks_above_hits_per_s,
                "per_hit_breaks_above_hits_per_month": k.per_hit_breaks_above_hits_per_month,
                "per_hit_busiest_writes_per_s": k.per_hit_busiest_writes_per_s,
                "per_hit_breaks": k.per_hit_breaks,
                "bh2_busiest_writes_per_s": k.bh2_busiest_writes_per_s,
                "bh2_breaks": k.bh2_breaks,
            }
            for k in report.limits
        ],
        "assumptions": assumptions(report),
        "prices": [dataclasses.asdict(p) for p in report.prices],
    }


def _ops_json(ops: KvOps, traffic: Traffic) -> dict[str, Any]:
    hits = traffic.hits_per_month
    return {
        "writes_per_month": ops.writes_per_month,
        "reads_per_month": ops.reads_per_month,
        "writes_per_hit": ops.writes_per_month / hits if hits else 0.0,
        "reads_per_hit": ops.reads_per_month / hits if hits else 0.0,
        "figures": "model" if ops.measured is None else "measured",
        "measured": None if ops.measured is None else dataclasses.asdict(ops.measured),
    }


# -- tables ----------------------------------------------------------------------------


def print_report(report: CostReport) -> None:
    t = report.traffic
    spread = {
        "hot": "every hit on one code",
        "zipf": f"Zipf s={t.zipf_s:g} over {t.codes:,} codes",
        "uniform": f"uniform over {t.codes:,} codes",
    }[t.distribution]
    _say(
        f"{t.hits_per_month:,.0f} hits a month ({t.hits_per_s:,.1f} hits/s), {spread}; "
        f"BH2 window {t.window_s:g} s: {report.distinct_per_window:,.2f} distinct codes "
        f"written per window of {t.hits_per_window:,.1f} hits"
    )
    for c in report.costs:
        table = Table(title=c.provider, title_justify="left", caption_justify="left")
        for col in ("", "writes/month", "reads/month", "$/month", "figures"):
            table.add_column(col, justify="left" if col in ("", "figures") else "right")
        for ops, usd in ((report.per_hit, c.per_hit_usd), (report.bh2, c.bh2_usd)):
            table.add_row(
                ops.mode,
                f"{ops.writes_per_month:,.0f}",
                f"{ops.reads_per_month:,.0f}",
                f"{usd:,.2f}",
                "model" if ops.measured is None else "measured (--summary)",
            )
        if c.saving_factor is not None:
            table.caption = (
                f"BH2 costs {c.saving_factor:,.2f}x less: "
                f"${c.per_hit_usd - c.bh2_usd:,.2f}/month saved"
            )
        else:
            table.caption = "BH2 stays within the free units"
        out.print(table)
    for k in report.limits:
        _say(_limit_line(k, report.traffic))
    _say("\nAssumptions:")
    for said in assumptions(report):
        _say(f"  - {said}")
    _say("\nPrices:")
    for p in report.prices:
        limit = (
            ""
            if p.per_key_writes_per_s is None
            else f"; at most {_writes_per_s(p.per_key_writes_per_s)} per key"
        )
        _say(
            f"  - {p.provider}, {p.billed}: {_usd(p.usd)} per {_units(p.unit_size)}, "
            f"{_units(p.included_per_month)} free a month{limit} ({p.source}, read {p.read_on})"
        )


def _say(text: str) -> None:
    out.print(text, markup=False)  # brackets such as E[distinct] are text, not markup


def _writes_per_s(n: float) -> str:
    return f"{n:,g} write/s" if n == 1 else f"{n:,g} writes/s"


def _usd(usd: float) -> str:
    return f"${usd:,.2f}" if round(usd, 2) == usd else f"${usd:,.3f}"


def _units(n: int) -> str:
    for size, suffix in ((1_000_000, "M"), (1_000, "k")):
        if n >= size and n % size == 0:
            return f"{n // size:,} {suffix}"
    return f"{n:,}"


def _limit_line(k: KeyLimit, t: Traffic) -> str:
    per_hit = "over the limit" if k.per_hit_breaks else "within it"
    bh2 = "over the limit" if k.bh2_breaks else "within it"
    return (
        f"Per-key limit, {k.provider} ({_writes_per_s(k.writes_per_s)} per key): per-hit writes "
        f"break it above {_num(k.per_hit_breaks_above_hits_per_s)} hits/s "
        f"({k.per_hit_breaks_above_hits_per_month:,.0f} hits/month), since the busiest code "
        f"gets {_num(100 * k.busiest_share)}% of the hits; here it takes "
        f"{_num(k.per_hit_busiest_writes_per_s)} writes/s: {per_hit}. BH2 writes it "
        f"{_num(k.bh2_busiest_writes_per_s)} times/s (at most once per {t.window_s:g} s "
        f"window): {bh2}."
    )


def _num(x: float) -> str:
    """1 decimal from 1 up, 3 significant digits below (rates can be tiny)."""
    return f"{x:,.1f}" if x >= 0.9995 else f"{x:.3g}"
