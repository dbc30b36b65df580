"""The cost model (`rlinks.cost`) and `rlinks-bh2 cost`."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rlinks.cli.cost import parse_count
from rlinks.cost import (
    PRICES,
    SECONDS_PER_MONTH,
    KvOps,
    Price,
    Traffic,
    bh2_ops,
    code_shares,
    cost_report,
    expected_distinct,
    key_limits,
    monthly_cost,
    per_hit_ops,
    read_summary,
    simulate_distinct,
)
from rlinks.errors import ConfigError
from tests.conftest import run_cli

DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks" / "cost-model.md"
WORKERS_KV, DYNAMODB, UPSTASH = "Cloudflare Workers KV", "DynamoDB on-demand", "Upstash Redis"


def zipf_busiest_share(codes: int, s: float) -> float:
    """p_max of Zipf(s) over `codes` codes, summed in plain Python (not numpy)."""
    return 1 / math.fsum(k**-s for k in range(1, codes + 1))


def cost_json(*args: str) -> dict[str, Any]:
    got = run_cli("cost", "--json", *args)
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)  # type: ignore[no-any-return]


# -- distinct codes per window ---------------------------------------------------------


@pytest.mark.parametrize(
    ("distribution", "codes", "hits_per_window"),
    [
        ("zipf", 10_000, 116),
        ("zipf", 10_000, 5_000),
        ("zipf", 1_000, 20_000),
        ("uniform", 1_000, 1_000),
        ("uniform", 100_000, 500),
        ("hot", 1, 50),
    ],
)
def test_closed_form_matches_monte_carlo(
    distribution: Any, codes: int, hits_per_window: int
) -> None:
    """Σ 1 - (1 - p_i)^λ agrees with counting distinct codes in simulated windows (2%)."""
    shares = code_shares(distribution, codes, 1.1)
    simulated = simulate_distinct(shares, hits_per_window, windows=400, seed=7)
    assert expected_distinct(shares, hits_per_window) == pytest.approx(simulated, rel=0.02)


def test_simulation_counts_distinct_codes() -> None:
    """The Monte Carlo check itself counts distinct codes: two equally likely codes,
    one hit per window -> 1; many hits -> 2."""
    shares = np.array([0.5, 0.5])
    assert simulate_distinct(shares, 1, windows=50) == 1.0
    assert simulate_distinct(shares, 200, windows=50) == 2.0


def test_hot_writes_one_code_per_window() -> None:
    """Every hit on one code: one distinct code per window, whatever the hits."""
    shares = code_shares("hot", 10_000)
    assert shares.tolist() == [1.0]
    for hits in (1, 2.5, 116, 1e9):
        assert expected_distinct(shares, hits) == 1.0


def test_uniform_few_hits_are_nearly_all_distinct() -> None:
    """Uniform with λ ≪ N: nearly every hit is a different code (E ≈ λ)."""
    shares = code_shares("uniform", 100_000)
    assert expected_distinct(shares, 100) == pytest.approx(100, rel=1e-3)
    assert expected_distinct(shares, 100) < 100


def test_uniform_many_hits_touch_every_code() -> None:
    """Uniform with λ ≫ N: every code is written once per window (E ≈ N)."""
    shares = code_shares("uniform", 100)
    assert expected_distinct(shares, 10_000) == pytest.approx(100, rel=1e-9)
    assert expected_distinct(shares, 10_000) <= 100


def test_fewer_hits_than_windows_never_write_more_than_hits() -> None:
    """Below one hit per window, BH2 writes each hit once: writes = hits, not more."""
    traffic = Traffic(1_000_000, distribution="hot")  # 0.39 hits per 1 s window
    assert bh2_ops(traffic).writes_per_month == pytest.approx(1_000_000)
    assert expected_distinct(code_shares("zipf", 10_000), 0.25) == pytest.approx(0.25)
    assert expected_distinct(code_shares("zipf", 10_000), 0) == 0.0


def test_tiny_shares_keep_their_precision() -> None:
    """-expm1(λ·log1p(-p)) keeps shares below float epsilon, where 1 - (1 - p)^λ is 0."""
    shares = np.full(1_000, 1e-18)
    assert 1 - (1 - 1e-18) ** 1e6 == 0.0  # the naive formula loses them
    assert expected_distinct(shares, 1e6) == pytest.approx(1_000 * 1e-12, rel=1e-9)


# -- prices and free units -------------------------------------------------------------


def test_free_units_are_subtracted_once_a_month() -> None:
    """Workers KV's 1 M free writes and 10 M free reads cost nothing; beyond them, per M."""
    within = KvOps("x", 1_000_000, 10_000_000)
    assert monthly_cost(within, WORKERS_KV) == 0.0
    beyond = KvOps("x", 3_000_000, 12_000_000)
    assert monthly_cost(beyond, WORKERS_KV) == pytest.approx(2 * 5.00 + 2 * 0.50)


def test_upstash_bills_reads_and_writes_as_commands() -> None:
    """Upstash: every read and every write is a command at $0.20 per 100 k."""
    assert monthly_cost(KvOps("x", 300_000, 200_000), UPSTASH) == pytest.approx(1.00)


def test_price_cost_never_goes_negative() -> None:
    """A price row with included units bills nothing below them and linearly above."""
    row = Price("p", "writes", ("write",), 2.0, 1_000, 500, None, "https://x", "2026-12-04")
    assert row.cost(0) == 0.0
    assert row.cost(500) == 0.0
    assert row.cost(2_500) == pytest.approx(4.0)


def test_prices_are_sourced_and_dated() -> None:
    """Every price row names an https source and the ISO date it was read."""
    for p in PRICES:
        assert p.source.startswith("https://"), p
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.read_on), p
        assert p.usd > 0 and p.unit_size > 0 and p.included_per_month >= 0, p


def test_docs_price_table_matches_the_code() -> None:
    """docs/benchmarks/cost-model.md has one price row per row of the code, same
    price, unit, free units, source and date."""
    units = {1_000_000: "1 M", 100_000: "100 k", 10_000_000: "10 M", 0: "0"}
    rows = [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in DOCS.read_text().splitlines()
        if line.startswith("| ") and any(line.startswith(f"| {p.provider} |") for p in PRICES)
    ]
    assert len(rows) == len(PRICES)
    for p, cells in zip(PRICES, rows, strict=True):
        provider, billed, price, per, free, _limit, source, read_on = cells
        assert (provider, billed) == (p.provider, p.billed)
        assert float(price.removeprefix("$")) == p.usd
        assert (per, free) == (units[p.unit_size], units[p.included_per_month])
        assert (source, read_on) == (p.source, p.read_on)


# -- the worked example ----------------------------------------------------------------


def test_worked_example_per_hit_costs() -> None:
    """300 M hits a month, per hit: 300 M writes and reads -> Workers KV (300 M - 1 M)
    × $5/M + (300 M - 10 M) × $0.50/M = $1,640; DynamoDB $225; Upstash $1,200."""
    ops = per_hit_ops(Traffic(300_000_000))
    assert (ops.writes_per_month, ops.reads_per_month) == (300_000_000, 300_000_000)
    writes_only = KvOps("writes", 300_000_000, 0)
    assert monthly_cost(writes_only, WORKERS_KV) == pytest.approx(1_495.00)
    assert monthly_cost(ops, WORKERS_KV) == pytest.approx(1_495.00 + 145.00)
    assert monthly_cost(ops, DYNAMODB) == pytest.approx(187.50 + 37.50)
    assert monthly_cost(ops, UPSTASH) == pytest.approx(1_200.00)


def test_worked_example_bh2_writes_come_from_the_simulated_distribution() -> None:
    """BH2 at 300 M/month, zipf 1.1 over 10,000 codes, 1 s window: distinct codes per
    window × 2,592,000 windows, no reads; the Monte Carlo count agrees."""
    traffic = Traffic(300_000_000)
    report = cost_report(traffic)
    assert traffic.hits_per_window == pytest.approx(300e6 / SECONDS_PER_MONTH)
    assert report.bh2.reads_per_month == 0
    assert report.bh2.writes_per_month == pytest.approx(report.distinct_per_window * 2_592_000)
    simulated = simulate_distinct(traffic.shares(), 116, windows=2_000, seed=3)
    assert report.distinct_per_window == pytest.approx(simulated, rel=0.02)
    assert 60 < report.distinct_per_window < 80  # far fewer writes than 116 hits
    kv = next(c for c in report.costs if c.provider == WORKERS_KV)
    assert kv.bh2_usd == pytest.approx((report.bh2.writes_per_month - 1e6) / 1e6 * 5.00)
    assert kv.saving_factor == pytest.approx(kv.per_hit_usd / kv.bh2_usd)


def test_bh2_saving_grows_with_the_window() -> None:
    """A longer window writes each code fewer times a month: BH2 writes fall."""
    writes = [bh2_ops(Traffic(300_000_000, window_s=w)).writes_per_month for w in (1, 10, 60)]
    assert writes[0] > writes[1] > writes[2]


# -- the per-key write limit -----------------------------------------------------------


def test_per_key_threshold_for_zipf() -> None:
    """Zipf 1.1 over 10,000 codes: p_max = 1/H ≈ 0.1514, so per-hit writes break
    1 write/s/key above 1/p_max ≈ 6.60 hits/s; 300 M/month (115.7 hits/s) breaks it,
    BH2 with a 1 s window does not."""
    p_max = zipf_busiest_share(10_000, 1.1)
    assert p_max == pytest.approx(0.15144, abs=1e-5)
    limit = next(k for k in key_limits(Traffic(300_000_000)) if k.provider == WORKERS_KV)
    assert limit.busiest_share == pytest.approx(p_max, rel=1e-12)
    assert limit.per_hit_breaks_above_hits_per_s == pytest.approx(1 / p_max, rel=1e-12)
    assert limit.per_hit_breaks_above_hits_per_month == pytest.approx(SECONDS_PER_MONTH / p_max)
    assert limit.per_hit_busiest_writes_per_s == pytest.approx(p_max * 300e6 / SECONDS_PER_MONTH)
    assert limit.per_hit_breaks and not limit.bh2_breaks
    assert limit.bh2_busiest_writes_per_s <= 1.0


def test_per_key_threshold_under_and_over() -> None:
    """Just under 1/p_max hits/s the per-hit baseline is within the limit; just over, not."""
    p_max = zipf_busiest_share(10_000, 1.1)
    for factor, breaks in ((0.99, False), (1.01, True)):
        traffic = Traffic(factor / p_max * SECONDS_PER_MONTH)
        (limit,) = (k for k in key_limits(traffic) if k.provider == WORKERS_KV)
        assert limit.per_hit_breaks is breaks


@pytest.mark.parametrize(
    ("distribution", "codes", "hits_per_s"), [("hot", 10_000, 1.0), ("uniform", 5_000, 5_000.0)]
)
def test_per_key_threshold_for_hot_and_uniform(
    distribution: Any, codes: int, hits_per_s: float
) -> None:
    """hot breaks 1 write/s/key above 1 hit/s; uniform over N codes above N hits/s."""
    traffic = Traffic(1e6, codes=codes, distribution=distribution)
    (limit,) = (k for k in key_limits(traffic) if k.provider == WORKERS_KV)
    assert limit.per_hit_breaks_above_hits_per_s == pytest.approx(hits_per_s)


def test_bh2_window_below_one_second_can_break_the_limit() -> None:
    """A 0.1 s window writes a hot key up to 10 times a second: over 1 write/s/key."""
    traffic = Traffic(100 * SECONDS_PER_MONTH, distribution="hot", window_s=0.1)
    (limit,) = (k for k in key_limits(traffic) if k.provider == WORKERS_KV)
    assert limit.bh2_busiest_writes_per_s == pytest.approx(10.0)
    assert limit.bh2_breaks


# -- measured figures (--summary) ------------------------------------------------------

SUMMARY = """\
scenario,mode,concurrency,repeat,rps,kv_writes_per_hit,kv_reads_per_hit
zipf,kv-0ms,10,1,900,1.0,1.1
zipf,kv-5ms,10,1,300,1.0,1.3
zipf,append-commit,10,1,5000,0.02,0.0
zipf,append-async,10,2,8000,0.04,0.0
zipf,off,10,1,9000,,
hot,kv-0ms,10,1,100,1.0,1.0
"""


@pytest.fixture
def summary_csv(tmp_path: Path) -> Path:
    path = tmp_path / "summary.csv"
    path.write_text(SUMMARY)
    return path


def test_summary_means_replace_the_model(summary_csv: Path) -> None:
    """The scenario's mean writes/reads per hit replace the model: kv-* for per-hit,
    append-* for BH2; `off` and other scenarios are ignored."""
    measured = read_summary(summary_csv, "zipf")
    assert measured["per-hit"].writes_per_hit == pytest.approx(1.0)
    assert measured["per-hit"].reads_per_hit == pytest.approx(1.2)
    assert measured["per-hit"].modes == ("kv-0ms", "kv-5ms")
    assert measured["BH2"].writes_per_hit == pytest.approx(0.03)
    assert measured["BH2"].rows == 2
    report = cost_report(Traffic(300_000_000), measured)
    # Reads stay the model's: the measured ones include the server's route lookups.
    assert report.per_hit.reads_per_month == pytest.approx(300_000_000)
    assert report.bh2.reads_per_month == 0
    assert report.bh2.writes_per_month == pytest.approx(9_000_000)
    assert report.bh2.measured is not None and report.per_hit.measured is not None


def test_summary_without_a_mode_keeps_the_model(summary_csv: Path) -> None:
    """A scenario with only kv-* rows measures per-hit; BH2 stays the model."""
    measured = read_summary(summary_csv, "hot")
    assert set(measured) == {"per-hit"}
    report = cost_report(Traffic(300_000_000, distribution="hot"), measured)
    assert report.bh2.measured is None
    assert report.bh2.writes_per_month == pytest.approx(2_592_000)


def test_summary_errors_say_what_is_wrong(tmp_path: Path, summary_csv: Path) -> None:
    """A missing scenario names the ones present; missing columns are named."""
    with pytest.raises(ConfigError, match=r"no rows for the scenario 'uniform'.*hot, zipf"):
        read_summary(summary_csv, "uniform")
    bad = tmp_path / "bad.csv"
    bad.write_text("scenario,mode\nzipf,kv-0ms\n")
    with pytest.raises(ConfigError, match="kv_reads_per_hit, kv_writes_per_hit"):
        read_summary(bad, "zipf")
    with pytest.raises(ConfigError, match="cannot read"):
        read_summary(tmp_path / "absent.csv", "zipf")


def test_cli_summary_says_which_figures_are_measured(summary_csv: Path) -> None:
    """`cost --summary` marks the measured rows in JSON and in the table."""
    got = cost_json("--summary", str(summary_csv))
    assert got["per_hit"]["figures"] == "measured"
    assert got["bh2"]["figures"] == "measured"
    assert got["bh2"]["writes_per_hit"] == pytest.approx(0.03)
    assert any("measured" in a for a in got["assumptions"])
    table = run_cli("cost", "--summary", summary_csv)
    assert table.returncode == 0, table.stderr
    assert "measured (--summary)" in table.stdout


# -- the command -----------------------------------------------------------------------


def test_cli_json_worked_example() -> None:
    """`rlinks-bh2 cost --json` at the defaults: 300 M hits, zipf 1.1, 10,000 codes, 1 s."""
    got = cost_json()
    assert got["traffic"]["hits_per_month"] == 300_000_000
    assert got["traffic"]["distribution"] == "zipf"
    assert got["per_hit"]["writes_per_month"] == 300_000_000
    costs = {c["provider"]: c for c in got["costs"]}
    assert costs[WORKERS_KV]["per_hit_usd"] == pytest.approx(1_640.00)
    assert costs[DYNAMODB]["per_hit_usd"] == pytest.approx(225.00)
    assert costs[UPSTASH]["per_hit_usd"] == pytest.approx(1_200.00)
    assert all(c["bh2_usd"] < c["per_hit_usd"] for c in costs.values())
    kv_limit = next(k for k in got["per_key_limits"] if k["provider"] == WORKERS_KV)
    assert kv_limit["per_hit_breaks"] is True and kv_limit["bh2_breaks"] is False
    assert kv_limit["per_hit_breaks_above_hits_per_s"] == pytest.approx(6.6034, rel=1e-4)
    assert len(got["prices"]) == len(PRICES)
    assert any("30-day month" in a for a in got["assumptions"])


def test_cli_table_shows_providers_limit_and_assumptions() -> None:
    """The table output has a table per provider, the per-key line and the assumptions."""
    got = run_cli("cost", "--hits-per-month", "1.5G", "--distribution", "uniform")
    assert got.returncode == 0, got.stderr
    for text in (WORKERS_KV, DYNAMODB, UPSTASH, "Per-key limit", "30-day month", "saved"):
        assert text in got.stdout
    assert "1,500,000,000 hits a month" in got.stdout


def test_cli_help_explains_itself() -> None:
    """`cost --help` names every option and the model."""
    got = run_cli("cost", "--help")
    assert got.returncode == 0
    for option in ("--hits-per-month", "--codes", "--distribution", "--zipf-s", "--window"):
        assert option in got.stdout
    assert "--summary" in got.stdout and "distinct" in got.stdout


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("300000000", 3e8),
        ("300M", 3e8),
        ("300m", 3e8),
        ("1.5G", 1.5e9),
        ("2k", 2e3),
        ("300_000_000", 3e8),
        ("300,000,000", 3e8),
        ("3e8", 3e8),
        ("0", 0.0),
    ],
)
def test_parse_count_accepts_suffixes(text: str, value: float) -> None:
    """Counts take plain digits, separators, exponents and k/M/G/T suffixes."""
    assert parse_count(text) == value


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--hits-per-month=-5"], "must be a number >= 0"),
        (["--hits-per-month", "lots"], "is not a count"),
        (["--hits-per-month", "inf"], "must be a number >= 0"),
        (["--distribution", "pareto"], "'pareto' is not one of"),
        (["--window", "0"], "--window"),
        (["--codes", "0"], "--codes"),
        (["--zipf-s", "-1"], "--zipf-s"),
        (["--zipf-s", "nan"], "Zipf exponent must be >= 0"),
        (["--summary", "/nonexistent/summary.csv"], "does not exist"),
    ],
)
def test_cli_bad_inputs_fail_clearly(args: list[str], message: str) -> None:
    """A bad flag exits non-zero with a message naming the problem, and prints no report."""
    got = run_cli("cost", *args)
    assert got.returncode != 0
    assert message in got.stderr
    assert got.stdout == ""


def test_traffic_rejects_bad_values() -> None:
    """The model refuses negative hits, unknown distributions and empty windows itself."""
    with pytest.raises(ConfigError, match="hits per month"):
        Traffic(-1)
    with pytest.raises(ConfigError, match="unknown distribution"):
        Traffic(1e6, distribution="pareto")  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="window"):
        Traffic(1e6, window_s=0)
    with pytest.raises(ConfigError, match="codes"):
        Traffic(1e6, codes=0)
