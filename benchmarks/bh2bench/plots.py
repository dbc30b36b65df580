"""The pipeline's PNG plots (matplotlib, Agg backend: no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt

from bh2bench.knobs import NGINX, kind_of
from bh2bench.results import mean_rows
from bh2bench.runs import RunResult

DPI: Final = 110


def p95_vs_concurrency(path: Path, results: Sequence[RunResult]) -> None:
    """p95 latency against concurrency (log x, log y), one panel per scenario."""
    rows = mean_rows(results)
    scenarios = list(dict.fromkeys(r["scenario"] for r in rows))
    fig, axes = plt.subplots(
        1, len(scenarios), figsize=(5 * len(scenarios), 4), squeeze=False, sharey=True
    )
    for ax, scenario in zip(axes[0], scenarios, strict=True):
        ours = [r for r in rows if r["scenario"] == scenario]
        for mode in dict.fromkeys(r["mode"] for r in ours):
            points = sorted((r["concurrency"], r["p95_ms"]) for r in ours if r["mode"] == mode)
            style = "k--" if mode == NGINX else "-o"
            ax.plot([c for c, _ in points], [p for _, p in points], style, label=mode)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(f"{scenario}: p95 latency")
        ax.set_xlabel("concurrency (connections)")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][0].set_ylabel("p95 latency (ms)")
    axes[0][-1].legend(fontsize="small")
    _save(fig, path)


def kv_writes_per_hit(path: Path, results: Sequence[RunResult]) -> None:
    """KV writes per hit per mode and scenario (mean over concurrencies and repeats)."""
    measured = [r for r in results if r.mode != NGINX and kind_of(r.mode) in ("append", "kv")]
    scenarios = list(dict.fromkeys(r.scenario for r in measured))
    modes = list(dict.fromkeys(r.mode for r in measured))
    fig, ax = plt.subplots(figsize=(max(6, 2.2 * len(scenarios) + 2), 4.5))
    width = 0.8 / max(1, len(modes))
    for i, mode in enumerate(modes):
        xs: list[float] = []
        ys: list[float] = []
        for j, scenario in enumerate(scenarios):
            values = [
                r.kv_writes_per_hit
                for r in measured
                if r.mode == mode and r.scenario == scenario and r.kv_writes_per_hit is not None
            ]
            if values:
                xs.append(j + (i - (len(modes) - 1) / 2) * width)
                ys.append(max(sum(values) / len(values), 1e-7))
        bars = ax.bar(xs, ys, width, label=mode)
        ax.bar_label(bars, labels=[f"{y:.2g}" for y in ys], fontsize="x-small", rotation=90)
    ax.set_xticks(range(len(scenarios)), scenarios)
    ax.set_yscale("log")
    ax.set_ylabel("KV writes per hit")
    ax.set_title("KV writes per hit (mean over concurrencies; append: 1 s window)")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    ax.legend(fontsize="small")
    _save(fig, path)


def kv_writes_vs_window(path: Path, sweep: Sequence[RunResult]) -> None:
    """BH2's KV writes per hit against --window (log x, log y)."""
    points = sorted(
        (r.window_s, r.kv_writes_per_hit)
        for r in sweep
        if r.window_s is not None and r.kv_writes_per_hit is not None
    )
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot([w for w, _ in points], [max(k, 1e-7) for _, k in points], "-o")
    for w, k in points:
        ax.annotate(f"{k:.3g}", (w, max(k, 1e-7)), textcoords="offset points", xytext=(4, 4))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("--window (s)")
    ax.set_ylabel("KV writes per hit")
    scenario = sweep[0].scenario if sweep else "?"
    ax.set_title(f"BH2 writes per hit vs window ({scenario})")
    ax.grid(True, which="both", alpha=0.3)
    _save(fig, path)


def staleness_cdf(path: Path, results: Sequence[RunResult], sweep: Sequence[RunResult]) -> None:
    """CDF of the probes' staleness: per append mode (all scenarios and
    concurrencies pooled) and per window of the sweep."""
    curves: dict[str, list[float]] = {}
    for r in results:
        if r.probes:
            label = f"{r.mode} (window {r.window_s:g} s)"
            curves.setdefault(label, []).extend(r.probes["delays_ms"])
    for r in sweep:
        if r.probes:
            label = f"sweep {r.mode} (window {r.window_s:g} s)"
            curves.setdefault(label, []).extend(r.probes["delays_ms"])
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for label, delays in curves.items():
        if not delays:
            continue
        xs = sorted(d / 1000 for d in delays)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{label}, n={len(xs)}")
    ax.set_xscale("log")
    ax.set_xlabel("staleness: redirect until visible in stats (s)")
    ax.set_ylabel("fraction of probes")
    ax.set_ylim(0, 1.02)
    ax.set_title("Staleness CDF")
    ax.grid(True, which="both", alpha=0.3)
    if curves:
        ax.legend(fontsize="x-small", loc="lower right")
    _save(fig, path)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
