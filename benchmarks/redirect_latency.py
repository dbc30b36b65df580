"""Redirect latency and throughput per hit mode, interleaved, in steady state.

One `rlinks serve` per mode (each on its own data folder holding the
scenario's routes) and nginx answering `return 302` (the HTTP floor) all run
at once on free loopback ports. Each round drives every server with wrk for
`--seconds` at each concurrency, one after the other, in an order that turns
around every round; the figures are medians over rounds, and each ratio to
`off` is taken within a round and then its median. It also reads the CPU time
each of a server's processes used over each run (from /proc), per request:
worker (w), log writer (lw), aggregator (agg). With the client on the same
cores, a mode's rps follows its CPU per request. Drift of a shared machine
(other tenants, frequency) then falls on all modes alike, where one mode
after another would each see their own stretch of it.

`--tree NAME=SRC` runs every chosen rlinks mode a second time from another
source tree (SRC is put first on PYTHONPATH: the `src` folder of a
`git worktree`, say), as `MODE@NAME`, in the same rounds: a change and the
code it replaces, side by side on the same machine at the same moments.

    git worktree add /tmp/before HEAD~1
    .venv/bin/python benchmarks/redirect_latency.py --scenario uniform \
        --modes off append-async --tree before=/tmp/before/src

The BH2 pipeline (`run_bh2.sh`) starts a fresh server for each short run
and also counts KV writes and staleness; this script measures servers that
have been answering for a while, for the redirect path's speed targets.

    .venv/bin/python benchmarks/redirect_latency.py --scenario zipf --rounds 5 --json out.json

Needs wrk and nginx on PATH (`apt-get install wrk nginx-light`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import get_args

from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bh2bench.knobs import Scenario
from bh2bench.servers import (
    BIN,
    ROLES,
    Server,
    cpu_by_role,
    hits_dropped,
    nginx_server,
    rlinks_server,
)
from bh2bench.workload import sample_paths, write_paths, write_routes
from bh2bench.wrk import WrkFigures, require_wrk, run_wrk

NGINX = "nginx-302"
# mode name -> `rlinks serve` flags (nginx: the HTTP floor)
MODES: dict[str, list[str]] = {
    NGINX: [],
    "off": ["--hits", "off"],
    "append-async": ["--hits", "append", "--durability", "async"],
    "append-commit": ["--hits", "append", "--durability", "commit"],
    "kv-5ms": ["--hits", "kv", "--kv-latency-ms", "5"],
    # Not run by default: async without the aggregator beside it, to see what
    # the aggregator costs the redirects.
    "append-async-noagg": ["--hits", "append", "--durability", "async", "--no-aggregate"],
}
DEFAULT_MODES = [NGINX, "off", "append-async", "append-commit", "kv-5ms"]
RECORDS_HITS = {m for m, flags in MODES.items() if "append" in flags}
PATHS = 200_000  # drawn request paths (wrk cycles through them)

console = Console(stderr=True)


@dataclass
class Cell:
    """One mode at one concurrency: medians over rounds, and ratios to `off`
    (taken within each round, then the median)."""

    mode: str
    concurrency: int
    rounds: int
    rps: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    errors: int
    p95_over_off: float | None
    rps_over_off: float | None
    p95_minus_off_ms: float | None
    # CPU time per answered request, all of the server's processes, and by
    # process (worker, log writer, aggregator): medians over rounds. On a
    # machine whose cores the client shares, rps follows it.
    cpu_us_per_request: float
    cpu_us_by_process: dict[str, float]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scenario", choices=get_args(Scenario), default="hot")
    parser.add_argument("--modes", nargs="+", default=DEFAULT_MODES, choices=list(MODES))
    parser.add_argument("--concurrency", nargs="+", type=int, default=[1, 10, 50, 100])
    parser.add_argument("--seconds", type=int, default=2, help="whole seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=5, help="runs per mode and concurrency")
    parser.add_argument("--json", type=Path, help="also write every run and cell here")
    parser.add_argument(
        "--tree",
        action="append",
        default=[],
        metavar="NAME=SRC",
        help="also run each chosen rlinks mode from the source folder SRC (put first on "
        "PYTHONPATH, e.g. a git worktree's src), reported as MODE@NAME; repeatable",
    )
    args = parser.parse_args()
    require_wrk()
    if args.rounds < 1 or args.seconds < 1:
        parser.error("--rounds and --seconds must be at least 1")
    trees = _trees(parser, args.tree)
    modes: list[str] = list(dict.fromkeys(args.modes))
    modes += [f"{m}@{name}" for name in trees for m in modes if m != NGINX]
    with tempfile.TemporaryDirectory(prefix="rlinks-latency-") as tmp:
        work = Path(tmp)
        paths = work / "paths.txt"
        write_paths(paths, sample_paths(args.scenario, PATHS, seed=1))
        with contextlib.ExitStack() as stack:
            servers = {
                m: stack.enter_context(_server(m, args.scenario, work, trees)) for m in modes
            }
            for server in servers.values():  # connections, caches, the writers started
                run_wrk(server.url("/"), paths, concurrency=10, duration_s=1)
            runs, cpu = _rounds(servers, paths, args)
            # Async redirects do not wait for their hits: one that cannot keep
            # up drops hits (counted) and would look faster than it is.
            dropped = {m: hits_dropped(s) for m, s in servers.items() if _base(m) in RECORDS_HITS}
    cells = _cells(runs, cpu, modes, args.concurrency)
    _print(cells, args)
    for mode, n in dropped.items():
        if n:
            console.print(f"[red]{mode} dropped {n:,} hits (its async queue was full)[/]")
    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "scenario": args.scenario,
                    "trees": {name: str(src) for name, src in trees.items()},
                    "seconds": args.seconds,
                    "rounds": args.rounds,
                    "hits_dropped": dropped,
                    "cells": [asdict(c) for c in cells],
                    "runs": [
                        {
                            "round": r,
                            "mode": m,
                            "concurrency": c,
                            **asdict(f),
                            "rps": f.rps,
                            "cpu_us_by_process": cpu[r, m, c],
                        }
                        for (r, m, c), f in runs.items()
                    ],
                },
                indent=2,
            )
        )


def _trees(parser: argparse.ArgumentParser, given: list[str]) -> dict[str, Path]:
    """`--tree NAME=SRC` values as {NAME: SRC}, each SRC holding the rlinks package."""
    trees: dict[str, Path] = {}
    for value in given:
        name, sep, src = value.partition("=")
        if not sep or not name or "@" in name or not src:
            parser.error(f"--tree takes NAME=SRC (a name without @, then a folder): {value!r}")
        if name in trees:
            parser.error(f"--tree {name} is given twice")
        folder = Path(src).expanduser().resolve()
        if not (folder / "rlinks" / "__init__.py").is_file():
            parser.error(f"--tree {name}: {folder} does not hold the rlinks package (rlinks/)")
        trees[name] = folder
    return trees


def _base(mode: str) -> str:
    """The mode a label names: `append-async@before` -> `append-async`."""
    return mode.partition("@")[0]


@contextlib.contextmanager
def _server(mode: str, scenario: Scenario, work: Path, trees: dict[str, Path]) -> Iterator[Server]:
    """The server for `mode` (`MODE@TREE`: MODE run from that tree's source)."""
    base, _, tree = mode.partition("@")
    folder = work / mode
    folder.mkdir()
    if mode == NGINX:
        with nginx_server(folder) as server:
            yield server
        return
    routes = folder / "routes.ndjson"
    write_routes(routes, scenario)
    data = folder / "data"
    subprocess.run(
        [BIN / "rlinks", "links", "import", "--data", data, routes],
        check=True,
        capture_output=True,
    )
    src = trees[tree] if tree else None
    with rlinks_server(data, MODES[base], folder / "server.log", pythonpath=src) as server:
        yield server


Key = tuple[int, str, int]  # (round, mode, concurrency)


def _rounds(
    servers: dict[str, Server], paths: Path, args: argparse.Namespace
) -> tuple[dict[Key, WrkFigures], dict[Key, dict[str, float]]]:
    """Every run's wrk figures, and the CPU time per request each of the
    server's processes used in it (microseconds, by role)."""
    runs: dict[Key, WrkFigures] = {}
    cpu: dict[Key, dict[str, float]] = {}
    order = list(servers)
    total = args.rounds * len(args.concurrency) * len(order)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"{args.scenario}: {total} wrk runs", total=total)
        for r in range(args.rounds):
            for c in args.concurrency:
                for mode in order if r % 2 == 0 else order[::-1]:
                    before = cpu_by_role(servers[mode])
                    f = run_wrk(
                        servers[mode].url("/"), paths, concurrency=c, duration_s=args.seconds
                    )
                    after = cpu_by_role(servers[mode])
                    runs[r, mode, c] = f
                    cpu[r, mode, c] = {
                        role: (used - before.get(role, 0.0)) / max(f.requests, 1) * 1e6
                        for role, used in after.items()
                    }
                    progress.advance(task)
                    time.sleep(0.2)  # let the last run's connections close
    return runs, cpu


def _cells(
    runs: dict[Key, WrkFigures],
    cpu: dict[Key, dict[str, float]],
    modes: list[str],
    concurrencies: list[int],
) -> list[Cell]:
    rounds = sorted({r for r, _, _ in runs})

    def against_off(
        mode: str, c: int, f: Callable[[WrkFigures, WrkFigures], float]
    ) -> float | None:
        """The median over rounds of f(this mode's run, off's run in the same round)."""
        if "off" not in modes:
            return None
        return statistics.median(f(runs[r, mode, c], runs[r, "off", c]) for r in rounds)

    cells = []
    for c in concurrencies:
        for mode in modes:
            fs = [runs[r, mode, c] for r in rounds]
            used = [cpu[r, mode, c] for r in rounds]
            roles = sorted({role for u in used for role in u}, key=ROLES.index)
            cells.append(
                Cell(
                    mode=mode,
                    concurrency=c,
                    rounds=len(fs),
                    rps=statistics.median(f.rps for f in fs),
                    p50_ms=statistics.median(f.p50_ms for f in fs),
                    p95_ms=statistics.median(f.p95_ms for f in fs),
                    p99_ms=statistics.median(f.p99_ms for f in fs),
                    errors=sum(f.errors for f in fs),
                    p95_over_off=against_off(mode, c, lambda m, o: m.p95_ms / o.p95_ms),
                    rps_over_off=against_off(mode, c, lambda m, o: m.rps / o.rps),
                    p95_minus_off_ms=against_off(mode, c, lambda m, o: m.p95_ms - o.p95_ms),
                    cpu_us_per_request=statistics.median(sum(u.values()) for u in used),
                    cpu_us_by_process={
                        role: statistics.median(u.get(role, 0.0) for u in used) for role in roles
                    },
                )
            )
    return cells


def _print(cells: list[Cell], args: argparse.Namespace) -> None:
    table = Table(
        title=f"{args.scenario}: wrk -t1, {args.seconds} s per run, medians of "
        f"{args.rounds} interleaved rounds"
    )
    for col in ("mode", "c", "rps", "p50 ms", "p95 ms", "p99 ms", "errors", "p95 / off",
                "p95 - off ms", "rps / off", "cpu us/req"):  # fmt: skip
        table.add_column(col, justify="left" if col == "mode" else "right")

    def fmt(v: float | None, spec: str) -> str:
        return "-" if v is None else format(v, spec)

    for cell in cells:
        table.add_row(
            cell.mode,
            str(cell.concurrency),
            f"{cell.rps:,.0f}",
            f"{cell.p50_ms:.2f}",
            f"{cell.p95_ms:.2f}",
            f"{cell.p99_ms:.2f}",
            str(cell.errors),
            fmt(cell.p95_over_off, ".2f"),
            fmt(cell.p95_minus_off_ms, "+.2f"),
            fmt(cell.rps_over_off, ".2f"),
            _cpu_text(cell),
        )
    Console(width=160).print(table)


def _cpu_text(cell: Cell) -> str:
    """The total, and its parts when more than one process used CPU."""
    parts = {role: us for role, us in cell.cpu_us_by_process.items() if us >= 0.05}
    if len(parts) <= 1:
        return f"{cell.cpu_us_per_request:.1f}"
    inner = " + ".join(f"{us:.1f} {_SHORT.get(role, role)}" for role, us in parts.items())
    return f"{cell.cpu_us_per_request:.1f} ({inner})"


_SHORT = {"worker": "w", "log writer": "lw", "aggregator": "agg"}


if __name__ == "__main__":
    main()
