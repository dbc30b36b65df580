"""`benchmarks/run_bh2.sh` in its quick mode, end to end with real servers and
wrk: the results are well formed (figures themselves are judged from full
runs, never here), and the abort rule stops a run that errors."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "run_bh2.sh"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SUMMARY_COLUMNS = [
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
]
SCENARIOS = ["hot", "zipf"]
MODES = ["append-commit", "kv-0ms", "nginx-302"]
CONCURRENCIES = [1, 10]

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()),
    reason="needs wrk and nginx (apt-get install wrk nginx-light; .ci/run installs them)",
)


@dataclass(frozen=True)
class Pipeline:
    out: Path
    returncode: int
    stderr: str
    seconds: float


def run_pipeline(out: Path, **knobs: str) -> Pipeline:
    """`benchmarks/run_bh2.sh` with QUICK=1 and `knobs` as its environment."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RLINKS_")}
    env.update(QUICK="1", OUT=str(out), PYTHON=sys.executable, **knobs)
    started = time.monotonic()
    done = subprocess.run(
        ["bash", str(SCRIPT)], env=env, capture_output=True, text=True, timeout=240, check=False
    )
    return Pipeline(out, done.returncode, done.stderr, time.monotonic() - started)


@pytest.fixture(scope="module")
def quick(tmp_path_factory: pytest.TempPathFactory) -> Pipeline:
    """One quick pipeline run: two scenarios, two modes plus nginx, c = 1 and 10."""
    return run_pipeline(
        tmp_path_factory.mktemp("bench") / "results",
        REQUESTS="200",
        CONCURRENCIES=" ".join(map(str, CONCURRENCIES)),
        SCENARIOS=" ".join(SCENARIOS),
        MODES=" ".join(MODES),
        SWEEP_WINDOWS="0.1 1",
        SWEEP_SECONDS="1.5",
    )


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
        return list(reader.fieldnames or []), rows


def test_quick_mode_finishes_cleanly_and_fast(quick: Pipeline) -> None:
    """The quick pipeline exits 0 well within a minute and keeps no server log."""
    assert quick.returncode == 0, quick.stderr[-3000:]
    assert quick.seconds < 60, f"quick mode took {quick.seconds:.0f} s"
    assert not list(quick.out.glob("server-*.log"))


def test_summary_csv_has_one_well_formed_row_per_run(quick: Pipeline) -> None:
    """summary.csv has the agreed columns, a row per scenario × mode × concurrency, and
    every figure parses as a number (blank only where it does not apply to the mode)."""
    columns, rows = read_csv(quick.out / "summary.csv")
    assert columns == SUMMARY_COLUMNS
    cells = {(r["scenario"], r["mode"], int(r["concurrency"]), int(r["repeat"])) for r in rows}
    assert cells == {(s, m, c, 1) for s in SCENARIOS for m in MODES for c in CONCURRENCIES}
    for row in rows:
        for column in ("p50_ms", "p95_ms", "p99_ms", "rps"):
            assert float(row[column]) > 0, (row, column)
        assert int(row["errors"]) == 0
        kv_blank = row["mode"] == "nginx-302"
        for column in ("kv_writes_per_hit", "kv_reads_per_hit", "key_rate_violations"):
            assert (row[column] == "") == kv_blank, (row, column)
        if row["mode"] == "append-commit":
            assert float(row["staleness_p99_ms"]) > 0
            assert int(row["key_rate_violations"]) == 0
        else:
            assert row["staleness_p99_ms"] == ""
        if row["mode"] == "kv-0ms":
            assert float(row["kv_writes_per_hit"]) == pytest.approx(1.0, abs=0.02)


def test_mean_csv_and_raw_json_cover_every_run(quick: Pipeline) -> None:
    """summary_mean.csv has a row per cell with its repeats; raw/ has a JSON per run."""
    columns, rows = read_csv(quick.out / "summary_mean.csv")
    assert columns[:4] == ["scenario", "mode", "concurrency", "repeats"]
    assert columns[4:] == SUMMARY_COLUMNS[4:]
    assert len(rows) == len(SCENARIOS) * len(MODES) * len(CONCURRENCIES)
    assert all(r["repeats"] == "1" and float(r["p95_ms"]) > 0 for r in rows)
    raw = sorted((quick.out / "raw").glob("*.json"))
    assert len(raw) == len(rows) + 2  # and the two sweep runs
    doc = json.loads((quick.out / "raw" / "hot-append-commit-c10-r1.json").read_text())
    assert doc["requests"] >= 200 and doc["probes"]["sent"] >= 1
    assert doc["kv_status"]["lag_hits"] == 0


def test_window_sweep_reports_writes_per_hit_per_window(quick: Pipeline) -> None:
    """window_sweep.csv has a row per --window with numeric writes per hit."""
    _, rows = read_csv(quick.out / "window_sweep.csv")
    assert [float(r["window_s"]) for r in rows] == [0.1, 1.0]
    for row in rows:
        assert 0 < float(row["kv_writes_per_hit"]) <= 1
        assert int(row["requests"]) > 0 and int(row["batches"]) >= 1


def test_plots_are_png_files(quick: Pipeline) -> None:
    """Every plot exists and is a PNG image."""
    names = [
        "p95_vs_concurrency.png",
        "kv_writes_per_hit.png",
        "staleness_cdf.png",
        "kv_writes_vs_window.png",
    ]
    for name in names:
        data = (quick.out / name).read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 5000, name


def test_env_json_records_the_knobs_machine_and_versions(quick: Pipeline) -> None:
    """env.json holds the knobs as given, the machine and the tool versions."""
    env = json.loads((quick.out / "env.json").read_text())
    knobs = env["knobs"]
    assert knobs["requests"] == 200 and knobs["repeats"] == 1 and knobs["quick"] is True
    assert knobs["concurrencies"] == CONCURRENCIES
    assert knobs["scenarios"] == SCENARIOS and knobs["modes"] == MODES
    assert env["status"] == "complete"
    assert env["machine"]["cpus"] >= 1
    assert env["versions"]["wrk"].startswith("wrk") and env["versions"]["python"]
    assert "aggregate_throughput.json" in {p.name for p in quick.out.iterdir()}


def test_errors_at_low_concurrency_abort_the_run_and_keep_the_log(tmp_path: Path) -> None:
    """Over 1% errors at c <= 10 stops the pipeline (exit 3), keeps server-*.log and says so."""
    out = tmp_path / "results"
    done = subprocess.run(
        [
            sys.executable,
            ROOT / "benchmarks" / "bh2_bench.py",
            "--quick",
            "--requests",
            "200",
            "--concurrencies",
            "1 10",
            "--scenarios",
            "hot",
            "--modes",
            "off",
            "--missing-paths",
            "0.2",
            "--out",
            out,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 3, done.stderr[-3000:]
    assert "run aborted" in done.stderr and "server-hot-off-c1-r1.log" in done.stderr
    assert (out / "server-hot-off-c1-r1.log").read_text().startswith("rlinks serving")
    _, rows = read_csv(out / "summary.csv")
    assert [(r["mode"], r["concurrency"]) for r in rows] == [("off", "1")]  # c=10 never ran
    assert int(rows[0]["errors"]) > 2
    assert json.loads((out / "env.json").read_text())["status"].startswith("aborted")
