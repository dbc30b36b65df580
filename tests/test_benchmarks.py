"""The benchmarks run end to end in their quick mode and report well-formed,
verified figures (speed itself is judged from full runs, never here)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def run_benchmark(script: str, out: Path, *args: str | Path) -> Any:
    """Run `benchmarks/SCRIPT ARGS --json OUT` (failing on a non-zero exit);
    the report it wrote."""
    subprocess.run(
        [sys.executable, ROOT / "benchmarks" / script, *args, "--json", out],
        check=True,
        capture_output=True,
        timeout=240,
    )
    return json.loads(out.read_text())


def test_aggregate_throughput_quick_mode_reports_verified_figures(tmp_path: Path) -> None:
    """`aggregate_throughput.py --quick` checks its own results and writes every figure."""
    out, work = tmp_path / "quick.json", tmp_path / "work"
    report = run_benchmark("aggregate_throughput.py", out, "--quick", "--workdir", work)
    assert report["n"] == 50_000
    assert {"ingest", "run", "run_inproc", "aggregate", "aggregate_inproc", "naive"} <= set(
        report["results"]
    )
    for figures in report["results"].values():
        assert figures["hits_per_s"] > 0
        assert figures["median_s"] > 0
    # A failed check exits non-zero (check=True above); these are the passed ones.
    checked = {line.split(":")[0] for line in report["checks"]}
    assert checked == {"ingest", "run --once", "aggregate", "naive loop"}


def test_redirect_latency_interleaves_modes_and_reports_ratios_to_off(tmp_path: Path) -> None:
    """`redirect_latency.py` runs every mode in each round and reports medians and
    per-round ratios to `off` (off against itself is exactly 1)."""
    report = run_benchmark(
        "redirect_latency.py",
        tmp_path / "latency.json",
        *("--scenario", "zipf", "--modes", "off", "append-async"),
        *("--concurrency", "1", "4", "--seconds", "1", "--rounds", "2"),
    )
    assert report["scenario"] == "zipf" and report["rounds"] == 2
    runs = {(r["round"], r["mode"], r["concurrency"]) for r in report["runs"]}
    assert runs == {(r, m, c) for r in (0, 1) for m in ("off", "append-async") for c in (1, 4)}
    assert all(r["requests"] > 0 and r["errors"] == 0 for r in report["runs"])
    # read from the async server's /metrics (off records no hits, so is not listed)
    assert report["hits_dropped"] == {"append-async": 0}
    cells = {(c["mode"], c["concurrency"]): c for c in report["cells"]}
    assert set(cells) == {(m, c) for m in ("off", "append-async") for c in (1, 4)}
    for (mode, _c), cell in cells.items():
        assert cell["rounds"] == 2 and cell["rps"] > 0 and 0 < cell["p50_ms"] <= cell["p99_ms"]
        if mode == "off":
            assert cell["p95_over_off"] == 1.0 and cell["rps_over_off"] == 1.0
        assert cell["p95_over_off"] > 0 and cell["rps_over_off"] > 0
        # CPU per request, from /proc: the worker always; async also has a writer
        assert cell["cpu_us_by_process"]["worker"] > 0
        assert cell["cpu_us_per_request"] > 0
    assert "log writer" in cells["append-async", 4]["cpu_us_by_process"]
    assert "log writer" not in cells["off", 4]["cpu_us_by_process"]


def test_redirect_latency_runs_modes_from_another_tree_side_by_side(tmp_path: Path) -> None:
    """`--tree NAME=SRC` adds each rlinks mode run from SRC as `MODE@NAME`. The
    tree here is this one with hit capture broken, so only its hit-recording
    server answers errors: proof that its servers run the tree's code."""
    src = tmp_path / "marked"
    shutil.copytree(ROOT / "src" / "rlinks", src / "rlinks")
    capture = src / "rlinks" / "server" / "capture.py"
    capture.write_text(
        capture.read_text()
        + "\n\ndef build_hit(*args, **kwargs):\n    raise RuntimeError('the marked tree')\n"
    )
    report = run_benchmark(
        "redirect_latency.py",
        tmp_path / "latency.json",
        *("--scenario", "hot", "--modes", "nginx-302", "off", "append-async"),
        *("--tree", f"marked={src}", "--concurrency", "2", "--seconds", "1", "--rounds", "1"),
    )
    assert report["trees"] == {"marked": str(src)}
    errors = {c["mode"]: c["errors"] for c in report["cells"]}
    # nginx is the floor, not an rlinks mode: it runs once
    assert set(errors) == {"nginx-302", "off", "append-async", "off@marked", "append-async@marked"}
    assert errors["append-async@marked"] > 0
    assert errors["off@marked"] == errors["append-async"] == errors["off"] == 0
    assert set(report["hits_dropped"]) == {"append-async", "append-async@marked"}
