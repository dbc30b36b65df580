"""Redirect latency and throughput of `rlinks serve` per hit mode, with wrk.

For each mode a fresh server (fresh data folder, one link `ok-code`) is started
on a free loopback port and driven by wrk at each concurrency; nginx answering
`return 302` is the HTTP floor. Everything runs in one invocation, so the
figures compare with each other. Needs `wrk` (and `nginx` for the floor) on
PATH: `apt-get install wrk nginx-light`.

    python benchmarks/redirect_latency.py --duration 10 --json out.json
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bh2bench.servers import nginx_server, rlinks_server

HERE = Path(__file__).resolve().parent
# No paths file: the URL's own path for the whole -d duration (see the script).
REPORT_LUA = HERE / "wrk" / "paths.lua"
BIN = Path(sys.executable).parent

# mode name -> extra `rlinks serve` flags (None: nginx, the HTTP floor)
MODES: dict[str, list[str] | None] = {
    "nginx-302": None,
    "off": ["--hits", "off"],
    "append-commit": ["--hits", "append", "--durability", "commit"],
    "append-async": ["--hits", "append", "--durability", "async"],
    "append-async-noagg": ["--hits", "append", "--durability", "async", "--no-aggregate"],
    "kv-0ms": ["--hits", "kv", "--kv-latency-ms", "0"],
    "kv-5ms": ["--hits", "kv", "--kv-latency-ms", "5"],
    "append-commit-5ms": ["--hits", "append", "--durability", "commit", "--kv-latency-ms", "5"],
}

console = Console(stderr=True)


@dataclass
class Result:
    mode: str
    concurrency: int
    requests: int
    rps: float
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float


def create_link(data: Path) -> None:
    subprocess.run(
        [BIN / "rlinks", "links", "set", "ok-code", "https://example.com/landing", "--data", data],
        check=True,
        capture_output=True,
    )


def wrk(url: str, concurrency: int, duration_s: int) -> dict[str, int]:
    out = subprocess.run(
        ["wrk", "-t1", f"-c{concurrency}", f"-d{duration_s}s", "-s", str(REPORT_LUA), url],
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    line = [x for x in out.splitlines() if x.startswith("{")][-1]
    figures: dict[str, int] = json.loads(line)
    return figures


def measure(mode: str, concurrencies: list[int], duration_s: int) -> list[Result]:
    flags = MODES[mode]
    with tempfile.TemporaryDirectory(prefix=f"rlinks-bench-{mode}-") as tmp:
        workdir = Path(tmp)
        if flags is None:
            server_cm = nginx_server(workdir)
        else:
            create_link(workdir / "data")
            server_cm = rlinks_server(workdir / "data", flags, workdir / "server.log")
        with server_cm as server:
            url = server.url("/ok-code")
            wrk(url, 10, 1)  # warm-up: connections, caches, the log writer started
            results = []
            for c in concurrencies:
                f = wrk(url, c, duration_s)
                results.append(
                    Result(
                        mode=mode,
                        concurrency=c,
                        requests=f["requests"],
                        rps=f["requests"] / (f["duration_us"] / 1e6),
                        errors=f["errors"],
                        p50_ms=f["p50_us"] / 1000,
                        p95_ms=f["p95_us"] / 1000,
                        p99_ms=f["p99_us"] / 1000,
                    )
                )
                console.print(
                    f"{mode} c={c}: {results[-1].rps:,.0f} rps, p95 {results[-1].p95_ms:.2f} ms"
                )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 10, 50, 100])
    parser.add_argument("--duration", type=int, default=5, help="whole seconds per wrk run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is not on PATH: apt-get install wrk")
    results = [r for m in args.modes for r in measure(m, args.concurrency, args.duration)]
    table = Table(title=f"redirects, wrk -t1, {args.duration:g} s per run")
    for col in (
        "mode",
        "c",
        "rps",
        "p50 ms",
        "p95 ms",
        "p99 ms",
        "errors",
        "p95 / off",
        "rps / off",
    ):
        table.add_column(col, justify="left" if col == "mode" else "right")
    off = {r.concurrency: r for r in results if r.mode == "off"}
    for r in results:
        base = off.get(r.concurrency)
        table.add_row(
            r.mode,
            str(r.concurrency),
            f"{r.rps:,.0f}",
            f"{r.p50_ms:.2f}",
            f"{r.p95_ms:.2f}",
            f"{r.p99_ms:.2f}",
            str(r.errors),
            f"{r.p95_ms / base.p95_ms:.2f}" if base else "-",
            f"{r.rps / base.rps:.2f}" if base else "-",
        )
    Console(width=160).print(table)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in results], indent=2))


if __name__ == "__main__":
    main()
