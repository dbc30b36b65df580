"""The benchmarks run end to end in their quick mode and report well-formed,
verified figures (speed itself is judged from full runs, never here)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_aggregate_throughput_quick_mode_reports_verified_figures(tmp_path: Path) -> None:
    """`aggregate_throughput.py --quick` checks its own results and writes every figure."""
    out = tmp_path / "quick.json"
    subprocess.run(
        [
            sys.executable,
            ROOT / "benchmarks" / "aggregate_throughput.py",
            "--quick",
            "--workdir",
            tmp_path / "work",
            "--json",
            out,
        ],
        check=True,
        capture_output=True,
        timeout=240,
    )
    report = json.loads(out.read_text())
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
