"""The results BH2 is expected to show, checked against a run's figures.

They are reported (held, did not hold, or no data), never enforced: a run that
contradicts them is a finding, not a failure of the pipeline.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final

from bh2bench.knobs import NGINX, kind_of
from bh2bench.runs import RunResult

STALENESS_SLACK_S: Final = 0.5
WRITE_CUT: Final = {"hot": 1000.0, "zipf": 5.0}


@dataclass(frozen=True)
class Check:
    claim: str
    held: bool | None  # None: the run measured nothing that bears on it
    detail: str

    @property
    def verdict(self) -> str:
        return {True: "held", False: "did NOT hold", None: "no data"}[self.held]


def _of(results: Sequence[RunResult], kind: str, scenario: str | None = None) -> list[RunResult]:
    return [
        r
        for r in results
        if r.mode != NGINX
        and kind_of(r.mode) == kind
        and (scenario is None or r.scenario == scenario)
    ]


def write_cut(
    results: Sequence[RunResult], sweep: Sequence[RunResult], scenario: str, factor: float
) -> Check:
    claim = f"{scenario}: append cuts KV writes per hit by >= {factor:g}x against kv"
    kv = [r.kv_writes_per_hit for r in _of(results, "kv", scenario) if r.kv_writes_per_hit]
    append = [r for r in _of(results, "append", scenario) if r.kv_writes_per_hit is not None]
    if not kv or not append:
        return Check(claim, None, "needs kv and append runs of this scenario")
    baseline = statistics.fmean(kv)
    cuts = sorted(
        (baseline / r.kv_writes_per_hit if r.kv_writes_per_hit else float("inf"), r.name)
        for r in append
    )
    worst, where = cuts[0]
    median = statistics.median(c for c, _ in cuts)
    per_batch = [
        r.kv_status["bh2_hits"] / max(1, r.kv_status["bh2_batches"])
        for r in append
        if r.kv_status is not None
    ]
    detail = (
        f"kv {baseline:.3g} writes/hit; append cut: worst {worst:,.1f}x ({where}), "
        f"median {median:,.1f}x over {len(cuts)} runs of {min(per_batch):,.0f} to "
        f"{max(per_batch):,.0f} hits per batch"
    )
    steady = [
        r for r in sweep if r.scenario == scenario and r.window_s == 1.0 and r.kv_writes_per_hit
    ]
    if steady:
        r = steady[0]
        hits, batches = (
            (r.kv_status or {}).get("bh2_hits", 0),
            (r.kv_status or {}).get("bh2_batches", 1),
        )
        detail += (
            f"; under {r.seconds_asked:g} s of steady load (window sweep, "
            f"{hits / max(1, batches):,.0f} hits per batch) the cut is "
            f"{baseline / (r.kv_writes_per_hit or 1):,.1f}x"
        )
    return Check(claim, worst >= factor, detail)


def append_within_key_rate(results: Sequence[RunResult]) -> Check:
    claim = "append (1 s window): 0 stats keys written twice within a second"
    runs = [r for r in _of(results, "append") if r.key_rate_violations is not None]
    if not runs:
        return Check(claim, None, "no append runs")
    bad = [f"{r.name}: {r.key_rate_violations}" for r in runs if r.key_rate_violations]
    return Check(claim, not bad, "; ".join(bad) or f"0 in all {len(runs)} append runs")


def kv_violates_key_rate(results: Sequence[RunResult]) -> Check:
    claim = "kv (per-hit writes) violates the one-write-per-second-per-key limit"
    runs = [r for r in _of(results, "kv") if r.key_rate_violations is not None]
    if not runs:
        return Check(claim, None, "no kv runs")
    per_scenario = {
        s: sum(r.key_rate_violations or 0 for r in runs if r.scenario == s)
        for s in dict.fromkeys(r.scenario for r in runs)
    }
    shown = ", ".join(f"{s} {n:,}" for s, n in per_scenario.items())
    return Check(claim, any(per_scenario.values()), f"violations by scenario: {shown}")


def staleness_bound(results: Sequence[RunResult]) -> Check:
    claim = f"append: staleness p99 <= window + {STALENESS_SLACK_S:g} s"
    runs = [r for r in _of(results, "append") if r.staleness_p99_ms is not None]
    if not runs:
        return Check(claim, None, "no append runs with probes")
    over = [
        f"{r.name}: {r.staleness_p99_ms:.0f} ms"
        for r in runs
        if (r.staleness_p99_ms or 0) > ((r.window_s or 0) + STALENESS_SLACK_S) * 1000
    ]
    worst = max(r.staleness_p99_ms or 0 for r in runs)
    return Check(
        claim,
        not over,
        "; ".join(over) if over else f"worst p99 {worst:.0f} ms over {len(runs)} runs",
    )


def sweep_key_rate(sweep: Sequence[RunResult]) -> Check:
    claim = "window sweep: violations at --window 0.1, none at --window >= 1"
    if not sweep:
        return Check(claim, None, "no window sweep")
    by_window = {r.window_s: r.key_rate_violations for r in sweep}
    short = [v for w, v in by_window.items() if w is not None and w < 1]
    long = [v for w, v in by_window.items() if w is not None and w >= 1]
    held = all(v for v in short) and not any(long)
    shown = ", ".join(f"{w:g} s: {v}" for w, v in by_window.items() if w is not None)
    return Check(claim, held, f"violations by window: {shown}")


def check_all(results: Sequence[RunResult], sweep: Sequence[RunResult]) -> list[Check]:
    return [
        *(write_cut(results, sweep, s, f) for s, f in WRITE_CUT.items()),
        append_within_key_rate(results),
        kv_violates_key_rate(results),
        staleness_bound(results),
        sweep_key_rate(sweep),
    ]
