"""The cost model: KV operations and $/month of per-hit writes against BH2.

The per-hit baseline reads and writes a code's stats key on every hit (a
read-modify-write). BH2 writes each code at most once per window, and only if
the code had hits in it, so its writes are the expected number of distinct
codes per window times the windows in a month. Traffic is taken as spread
evenly over a 30-day month. docs/benchmarks/cost-model.md explains the model
and works an example.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import numpy as np

from rlinks.errors import ConfigError
from rlinks.settings import DEFAULT_MAX_BATCH

SECONDS_PER_MONTH = 30 * 86_400
MAX_CODES = 10_000_000  # the model holds one float per code

Distribution = Literal["hot", "zipf", "uniform"]
DISTRIBUTIONS: tuple[Distribution, ...] = get_args(Distribution)
Op = Literal["read", "write"]

# Benchmark modes (summary.csv `mode`) by the way they count hits.
PER_HIT_MODE_PREFIX = "kv-"
BH2_MODE_PREFIX = "append-"


@dataclass(frozen=True)
class Price:
    """One billed item of one provider, as its pricing page states it."""

    provider: str
    billed: str  # what the provider counts, in its own words
    ops: tuple[Op, ...]  # the KV operations that count toward it
    usd: float  # price of `unit_size` units
    unit_size: int
    included_per_month: int  # free units each month before billing starts
    per_key_writes_per_s: float | None  # most writes one key takes per second, if limited
    source: str
    read_on: str  # the date the price was read (ISO 8601)
    note: str = ""

    def cost(self, units: float) -> float:
        """$ for `units` in one month, after the included free units."""
        return max(0.0, units - self.included_per_month) / self.unit_size * self.usd


# Checked on 2026-12-04 against copies of these pages (and third-party transcriptions
# of them) in a search index, not against the live pages; see the docs page.
# Rows: provider, billed, ops, $ per unit_size units, unit_size, free units a month,
# per-key writes/s, source, read on, note.
PRICES: tuple[Price, ...] = (
    Price(
        "Cloudflare Workers KV", "key writes", ("write",), 5.00, 1_000_000, 1_000_000, 1.0,
        "https://developers.cloudflare.com/kv/platform/pricing/", "2026-12-04",
        "Workers Paid plan ($5/month base fee, not counted); 1 write/s to the same key: "
        "https://developers.cloudflare.com/kv/platform/limits/",
    ),
    Price(
        "Cloudflare Workers KV", "key reads", ("read",), 0.50, 1_000_000, 10_000_000, None,
        "https://developers.cloudflare.com/kv/platform/pricing/", "2026-12-04",
        "Workers Paid plan",
    ),
    Price(
        "DynamoDB on-demand", "write request units (a write of up to 1 KB)",
        ("write",), 0.625, 1_000_000, 0, 1000.0,
        "https://aws.amazon.com/dynamodb/pricing/on-demand/", "2026-12-04",
        "us-east-1; an item lives in one partition, which takes at most 1,000 write units/s: "
        "https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/warm-throughput-scenarios.html",
    ),
    Price(
        "DynamoDB on-demand", "read request units (a strongly consistent read of up to 4 KB)",
        ("read",), 0.125, 1_000_000, 0, None,
        "https://aws.amazon.com/dynamodb/pricing/on-demand/", "2026-12-04",
        "us-east-1",
    ),
    Price(
        "Upstash Redis", "commands (a read or a write is one)", ("read", "write"),
        0.20, 100_000, 0, None,
        "https://upstash.com/pricing/redis", "2026-12-04",
        "pay as you go; the Free plan's 500 K commands/month is a separate plan",
    ),
)  # fmt: skip


def providers(prices: Sequence[Price] = PRICES) -> tuple[str, ...]:
    """The providers of a price table, in table order."""
    return tuple(dict.fromkeys(p.provider for p in prices))


# -- which codes the hits go to ------------------------------------------------------


def code_shares(distribution: Distribution, codes: int, zipf_s: float = 1.1) -> np.ndarray:
    """P(a hit is for code i), codes by rank: hot = every hit on one code; zipf =
    proportional to rank^-s over `codes` codes (as `rlinks-bh2 sample`); uniform."""
    if distribution == "hot":
        return np.ones(1)
    s = zipf_s if distribution == "zipf" else 0.0
    weights = np.arange(1, codes + 1, dtype=np.float64) ** -s
    return weights / weights.sum()  # type: ignore[no-any-return]


def write_chance(shares: np.ndarray, hits_per_window: float) -> np.ndarray:
    """P(code i has a hit in a window of `hits_per_window` independent hits).

    1 - (1 - p)^λ, computed as -expm1(λ·log1p(-p)) so tiny shares keep their
    precision. Below one hit per window (hits spread evenly, so a window holds
    at most one) it is λ·p, which 1 - (1 - p)^λ would overstate.
    """
    if hits_per_window <= 0:
        return np.zeros_like(shares)
    with np.errstate(divide="ignore"):  # log1p(-1) = -inf for a code with every hit
        chance = -np.expm1(hits_per_window * np.log1p(-shares))
    return np.minimum(chance, hits_per_window * shares)  # type: ignore[no-any-return]


def expected_distinct(shares: np.ndarray, hits_per_window: float) -> float:
    """E[distinct codes in a window] = Σ_i 1 - (1 - p_i)^λ: BH2's writes per window."""
    return float(write_chance(shares, hits_per_window).sum())


def simulate_distinct(
    shares: np.ndarray, hits_per_window: int, windows: int, *, seed: int = 1
) -> float:
    """Mean distinct codes over `windows` windows of `hits_per_window` random hits:
    the Monte Carlo check of `expected_distinct`."""
    if hits_per_window <= 0 or windows <= 0:
        return 0.0
    rng = np.random.default_rng(seed)
    rows_per_draw = max(1, 4_000_000 // hits_per_window)  # bounded memory per draw
    distinct = done = 0
    while done < windows:
        rows = min(rows_per_draw, windows - done)
        drawn = np.sort(rng.choice(len(shares), size=(rows, hits_per_window), p=shares), axis=1)
        distinct += rows + int(np.count_nonzero(np.diff(drawn, axis=1)))
        done += rows
    return distinct / windows


# -- traffic and KV operations -------------------------------------------------------


@dataclass(frozen=True)
class Traffic:
    """A month of hits, spread evenly over 30 days, and BH2's flush window."""

    hits_per_month: float
    codes: int = 10_000
    distribution: Distribution = "zipf"
    zipf_s: float = 1.1
    window_s: float = 1.0

    def __post_init__(self) -> None:
        if not (math.isfinite(self.hits_per_month) and self.hits_per_month >= 0):
            raise ConfigError(f"hits per month must be a number >= 0, got {self.hits_per_month}")
        if self.distribution not in DISTRIBUTIONS:
            raise ConfigError(
                f"unknown distribution {self.distribution!r}: use one of {', '.join(DISTRIBUTIONS)}"
            )
        if not 1 <= self.codes <= MAX_CODES:
            raise ConfigError(f"codes must be between 1 and {MAX_CODES:,}, got {self.codes}")
        if not (math.isfinite(self.zipf_s) and self.zipf_s >= 0):
            raise ConfigError(f"the Zipf exponent must be >= 0, got {self.zipf_s}")
        if not (math.isfinite(self.window_s) and 0 < self.window_s <= SECONDS_PER_MONTH):
            raise ConfigError(
                f"the window must be > 0 and at most a month ({SECONDS_PER_MONTH:,} s), "
                f"got {self.window_s}"
            )

    @property
    def hits_per_s(self) -> float:
        return self.hits_per_month / SECONDS_PER_MONTH

    @property
    def hits_per_window(self) -> float:
        return self.hits_per_s * self.window_s

    @property
    def windows_per_month(self) -> float:
        return SECONDS_PER_MONTH / self.window_s

    def shares(self) -> np.ndarray:
        return code_shares(self.distribution, self.codes, self.zipf_s)


@dataclass(frozen=True)
class Measured:
    """Mean KV writes and reads per hit of one group of benchmark modes."""

    writes_per_hit: float
    reads_per_hit: float
    rows: int
    modes: tuple[str, ...]


@dataclass(frozen=True)
class KvOps:
    """KV operations in a month for one way of counting hits."""

    mode: str  # "per-hit" or "BH2"
    writes_per_month: float
    reads_per_month: float
    measured: Measured | None = None  # None: the model's figures

    def count(self, op: Op) -> float:
        return self.writes_per_month if op == "write" else self.reads_per_month


def per_hit_ops(traffic: Traffic) -> KvOps:
    """The pre-BH2 baseline: a read and a write of the code's stats key per hit."""
    return KvOps("per-hit", traffic.hits_per_month, traffic.hits_per_month)


def bh2_ops(traffic: Traffic, shares: np.ndarray | None = None) -> KvOps:
    """BH2: one write per distinct code per window; no KV reads on the stats path
    (the one aggregator that owns a code's partition folds deltas from the log)."""
    shares = traffic.shares() if shares is None else shares
    per_window = expected_distinct(shares, traffic.hits_per_window)
    return KvOps("BH2", per_window * traffic.windows_per_month, 0.0)


def monthly_cost(ops: KvOps, provider: str, prices: Sequence[Price] = PRICES) -> float:
    """$/month of `ops` at one provider, free units applied once a month per billed item."""
    rows = [p for p in prices if p.provider == provider]
    if not rows:
        raise ConfigError(f"no prices for {provider!r}: known are {', '.join(providers(prices))}")
    return sum(p.cost(sum(ops.count(op) for op in p.ops)) for p in rows)


# -- measured figures (a benchmark's summary.csv) ---------------------------------------


def read_summary(path: Path, scenario: str) -> dict[str, Measured]:
    """Measured per-hit figures of `scenario` in a summary.csv, by mode ("per-hit"
    for `kv-*` modes, "BH2" for `append-*`); a group without rows is left out."""
    try:
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise ConfigError(f"cannot read the summary {path}: {e.strerror}") from e
    needed = {"scenario", "mode", "kv_writes_per_hit", "kv_reads_per_hit"}
    missing = needed - set(rows[0] if rows else ())
    if missing:
        raise ConfigError(f"{path} lacks the columns {', '.join(sorted(missing))}")
    ours = [r for r in rows if r["scenario"] == scenario]
    if not ours:
        found = ", ".join(sorted({r["scenario"] for r in rows})) or "none"
        raise ConfigError(f"{path} has no rows for the scenario {scenario!r} (it has: {found})")
    groups = {"per-hit": PER_HIT_MODE_PREFIX, "BH2": BH2_MODE_PREFIX}
    measured = {}
    for mode, prefix in groups.items():
        picked = [r for r in ours if r["mode"].startswith(prefix)]
        figures = [f for f in (_figures(r, path) for r in picked) if f is not None]
        if figures:
            measured[mode] = Measured(
                writes_per_hit=math.fsum(w for w, _ in figures) / len(figures),
                reads_per_hit=math.fsum(r for _, r in figures) / len(figures),
                rows=len(figures),
                modes=tuple(sorted({r["mode"] for r in picked})),
            )
    return measured


def _figures(row: Mapping[str, str], path: Path) -> tuple[float, float] | None:
    """(writes, reads) per hit of one summary row; None when the run left them blank."""
    texts = (row["kv_writes_per_hit"].strip(), row["kv_reads_per_hit"].strip())
    if not all(texts):
        return None
    try:
        writes, reads = (float(t) for t in texts)
    except ValueError as e:
        raise ConfigError(f"{path}: {row['mode']} has a per-hit figure that is not a number") from e
    if not (writes >= 0 and reads >= 0 and math.isfinite(writes + reads)):
        raise ConfigError(f"{path}: {row['mode']} has a per-hit figure below 0 or not finite")
    return writes, reads


def with_measured(ops: KvOps, measured: Measured, hits_per_month: float) -> KvOps:
    """`ops` with its writes taken from a benchmark's figures per hit.

    Reads stay the model's (one stats read per hit for per-hit, none for BH2):
    a benchmark's reads also count the server's route lookups, which both
    modes pay alike and the model leaves out; BH2 itself reads nothing."""
    return KvOps(ops.mode, measured.writes_per_hit * hits_per_month, ops.reads_per_month, measured)


# -- the per-key write limit -----------------------------------------------------------


@dataclass(frozen=True)
class KeyLimit:
    """A provider's per-key write limit against the busiest code's write rate."""

    provider: str
    writes_per_s: float  # the limit
    busiest_share: float  # p_max: the busiest code's share of the hits
    hits_per_s: float  # the traffic
    bh2_busiest_writes_per_s: float

    @property
    def per_hit_breaks_above_hits_per_s(self) -> float:
        """Per-hit writes give the busiest code p_max × hits/s writes/s: over the
        limit once the total hit rate exceeds limit / p_max."""
        return self.writes_per_s / self.busiest_share

    @property
    def per_hit_breaks_above_hits_per_month(self) -> float:
        return self.per_hit_breaks_above_hits_per_s * SECONDS_PER_MONTH

    @property
    def per_hit_busiest_writes_per_s(self) -> float:
        return self.busiest_share * self.hits_per_s

    @property
    def per_hit_breaks(self) -> bool:
        return self.per_hit_busiest_writes_per_s > self.writes_per_s

    @property
    def bh2_breaks(self) -> bool:
        return self.bh2_busiest_writes_per_s > self.writes_per_s


def key_limits(
    traffic: Traffic, shares: np.ndarray | None = None, prices: Sequence[Price] = PRICES
) -> tuple[KeyLimit, ...]:
    """Each per-key write limit in `prices` against the busiest code of `traffic`.

    BH2 writes a key at most once per window, when it had a hit in it, so with
    a window of at least 1/limit seconds it never breaks the limit."""
    shares = traffic.shares() if shares is None else shares
    busiest = float(shares.max())
    chance = float(write_chance(np.array([busiest]), traffic.hits_per_window)[0])
    return tuple(
        KeyLimit(
            p.provider,
            p.per_key_writes_per_s,
            busiest,
            traffic.hits_per_s,
            chance / traffic.window_s,
        )
        for p in prices
        if p.per_key_writes_per_s is not None
    )


# -- the report --------------------------------------------------------------------------


@dataclass(frozen=True)
class ProviderCost:
    provider: str
    per_hit_usd: float
    bh2_usd: float

    @property
    def saving_factor(self) -> float | None:
        """per-hit $ / BH2 $; None when BH2 costs nothing (all within the free units)."""
        return self.per_hit_usd / self.bh2_usd if self.bh2_usd > 0 else None


@dataclass(frozen=True)
class CostReport:
    traffic: Traffic
    distinct_per_window: float  # the model's, even when writes are measured
    per_hit: KvOps
    bh2: KvOps
    costs: tuple[ProviderCost, ...]
    limits: tuple[KeyLimit, ...]
    prices: tuple[Price, ...]


def cost_report(
    traffic: Traffic,
    measured: Mapping[str, Measured] | None = None,
    prices: Sequence[Price] = PRICES,
) -> CostReport:
    """KV operations, $/month per provider and per-key limits, per-hit against BH2;
    `measured` ("per-hit", "BH2": see `read_summary`) replaces the model's figures."""
    shares = traffic.shares()
    per_hit, bh2 = per_hit_ops(traffic), bh2_ops(traffic, shares)
    measured = measured or {}
    if "per-hit" in measured:
        per_hit = with_measured(per_hit, measured["per-hit"], traffic.hits_per_month)
    if "BH2" in measured:
        bh2 = with_measured(bh2, measured["BH2"], traffic.hits_per_month)
    costs = tuple(
        ProviderCost(name, monthly_cost(per_hit, name, prices), monthly_cost(bh2, name, prices))
        for name in providers(prices)
    )
    return CostReport(
        traffic=traffic,
        distinct_per_window=expected_distinct(shares, traffic.hits_per_window),
        per_hit=per_hit,
        bh2=bh2,
        costs=costs,
        limits=key_limits(traffic, shares, prices),
        prices=tuple(prices),
    )


def assumptions(report: CostReport) -> list[str]:
    """What the figures rest on, in words, for the table and the JSON alike."""
    t = report.traffic
    said = [
        f"Traffic is spread evenly over a 30-day month: {t.hits_per_s:,.1f} hits/s, "
        f"{t.hits_per_window:,.1f} hits per {t.window_s:g} s window, "
        f"{t.windows_per_month:,.0f} windows a month.",
        "Per-hit baseline (model): each hit reads and writes its code's stats key "
        "(read-modify-write): 1 read + 1 write per hit.",
        "BH2 (model): one write per distinct code per window, E[distinct] = Σ_i 1 - (1 - p_i)^λ "
        f"with λ = {t.hits_per_window:,.1f} independent hits per window "
        f"({report.distinct_per_window:,.2f} codes). No KV reads on the stats path: the one "
        "aggregator that owns a code's partition folds deltas from the HITS log.",
        "Route lookups are the same in both modes and are left out. Free units are per "
        "month, applied once per billed item; plan base fees are not counted.",
        "Upstash bills every command: a read or a write is one (an atomic HINCRBY would "
        "make the per-hit baseline 1 command instead of 2).",
    ]
    if t.hits_per_window > DEFAULT_MAX_BATCH:
        said.append(
            f"{t.hits_per_window:,.0f} hits per window exceed `run --max-batch` "
            f"({DEFAULT_MAX_BATCH:,}): batches would close early, so BH2 writes more than shown."
        )
    for ops in (report.per_hit, report.bh2):
        m = ops.measured
        if m is not None:
            said.append(
                f"{ops.mode} writes are measured: {m.writes_per_hit:.4f} per hit, the mean of "
                f"{m.rows} summary rows ({', '.join(m.modes)}), at the benchmark's own rate "
                f"and codes. Its {m.reads_per_hit:.4f} reads per hit are the server's route "
                "lookups (plus, per-hit, the stats read): reads here stay the model's."
            )
    return said
