"""Scale-out figures on Redis beside the embedded default, in one run.

1. Aggregation: N sample hits (Zipf s=1.1 over 10,000 codes) ingested into
   P partitions, then `rlinks-bh2 run --once` by one worker and by two workers
   splitting the partitions (`--partitions` lists), on Redis and on SQLite.
2. The server's hit writer: `HitLog.append(fresh_ids=True)` in groups of 1,
   64 and 512 hits (what one group commit of the writer costs), hits/s.
3. Redirects: `rlinks serve --workers 2` on Redis and on a data folder, wrk
   at each concurrency, p50/p95/p99 and rps, append with commit and async.

Starts its own redis-server (Debian package) on a free loopback port with AOF
(appendfsync everysec), so nothing else must run. Needs wrk for part 3.

    python benchmarks/scale_out.py --hits 1000000 --json out.json
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

from bh2bench.servers import rlinks_server
from bh2bench.wrk import run_wrk
from rlinks.backends import Target, open_log, open_store
from rlinks.hits import Hit
from rlinks.sample import write_sample

BIN = Path(sys.executable).parent
console = Console(stderr=True)


@dataclass
class Row:
    part: str
    backend: str
    what: str
    hits: int
    seconds: float
    extra: str = ""

    @property
    def rate(self) -> float:
        return self.hits / self.seconds if self.seconds else 0.0


@contextmanager
def redis_server(workdir: Path) -> Iterator[str]:
    """A redis-server with AOF on a free loopback port; its URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = shutil.which("redis-server") or "/usr/bin/redis-server"
    proc = subprocess.Popen(
        [exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", str(workdir),
         "--appendonly", "yes", "--appendfsync", "everysec", "--save", ""],
        stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT,
    )  # fmt: skip
    url = f"redis://127.0.0.1:{port}/0"
    import redis

    for _ in range(200):
        try:
            if redis.Redis.from_url(url).ping():
                break
        except redis.ConnectionError:
            time.sleep(0.05)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


def bh2(*args: str | Path | int) -> None:
    subprocess.run([BIN / "rlinks-bh2", *map(str, args)], check=True, capture_output=True)


def where(target: Target) -> list[str]:
    return ["--backend", target.url] if target.url else ["--data", str(target.data_dir)]


def aggregation(target: Target, name: str, sample: Path, hits: int, parts: int) -> list[Row]:
    t0 = time.perf_counter()
    bh2("ingest", *where(target), "--partitions", parts, sample)
    rows = [Row("aggregate", name, "ingest (CLI)", hits, time.perf_counter() - t0)]
    split = [",".join(map(str, range(k, parts, 2))) for k in range(2)]
    for workers, lists in ((1, ["all"]), (2, split)):
        store = open_store(target)
        store.reset(parts)
        store.close()
        t0 = time.perf_counter()
        procs = [
            subprocess.Popen(
                [BIN / "rlinks-bh2", "run", *where(target), "--once", "--partitions", which],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            for which in lists
        ]
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - t0
        if any(codes):
            raise SystemExit(f"run --once failed on {name}: exit codes {codes}")
        label = f"run --once, {workers} worker{'s' if workers > 1 else ''}"
        rows.append(Row("aggregate", name, label, hits, seconds, f"{parts} partitions"))
        console.print(f"{name}: {label}: {hits / seconds:,.0f} hits/s")
    return rows


def writer(target: Target, name: str, total: int) -> list[Row]:
    rows = []
    for group in (1, 64, 512):
        log = open_log(target, partitions=1)
        n = min(total, group * 2000)
        now = 1_764_000_000_000
        hits = [Hit(f"w{group}-{i}", now + i, f"code-{i % 500}") for i in range(n)]
        t0 = time.perf_counter()
        for k in range(0, n, group):
            log.append(hits[k : k + group], fresh_ids=True)
        rows.append(
            Row("hit writer", name, f"append, groups of {group}", n, time.perf_counter() - t0)
        )
        log.close()
        console.print(f"{name}: groups of {group}: {rows[-1].rate:,.0f} hits/s")
    return rows


def redirects(
    target: Target, name: str, workdir: Path, concurrencies: list[int], seconds: float
) -> list[Row]:
    subprocess.run(
        [BIN / "rlinks", "links", "set", "ok-code", "https://example.com/x", *where(target)],
        check=True,
        capture_output=True,
    )
    paths = workdir / f"paths-{name}.txt"
    paths.write_text("/ok-code\n")
    rows = []
    for durability in ("commit", "async"):
        flags = ["--workers", "2", "--hits", "append", "--durability", durability]
        data = target.data_dir or workdir / "unused"
        log = workdir / f"server-{name}-{durability}.log"
        with rlinks_server(data, flags, log, backend=target.url) as server:
            url = server.url("/ok-code")
            run_wrk(url, paths, concurrency=10, duration_s=1)  # warm-up
            for c in concurrencies:
                f = run_wrk(url, paths, concurrency=c, duration_s=seconds)
                extra = (
                    f"c={c} p50 {f.p50_ms:.2f} p95 {f.p95_ms:.2f} p99 {f.p99_ms:.2f} ms, "
                    f"{f.errors} errors"
                )
                rows.append(
                    Row("redirects", name, f"2 workers, {durability}", f.requests,
                        f.duration_s, extra)
                )  # fmt: skip
                console.print(f"{name} {durability} c={c}: {f.rps:,.0f} rps, p95 {f.p95_ms:.2f}")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=1_000_000)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--concurrency", nargs="+", type=int, default=[10, 50])
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run")
    parser.add_argument("--skip-redirects", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="rlinks-scale-") as tmp:
        work = Path(tmp)
        sample = work / "sample.ndjson"
        buf = io.BytesIO()
        write_sample(buf, args.hits, codes=10_000)
        sample.write_bytes(buf.getvalue())
        (work / "redis").mkdir()
        with redis_server(work / "redis") as url:
            targets = {"redis": Target(url=url), "sqlite": Target(data_dir=work / "data")}
            for name, target in targets.items():
                rows += aggregation(target, name, sample, args.hits, args.partitions)
            redis_w = Target(url=url.rpartition("/")[0] + "/1")
            rows += writer(redis_w, "redis", 200_000)
            rows += writer(Target(data_dir=work / "writer"), "sqlite", 200_000)
            if not args.skip_redirects:
                for name, target in (
                    ("redis", Target(url=url.rpartition("/")[0] + "/2")),
                    ("sqlite", Target(data_dir=work / "serve")),
                ):
                    rows += redirects(target, name, work, args.concurrency, args.duration)
    table = Table(title=f"scale-out: {args.hits:,} hits, {args.partitions} partitions")
    for col in ("part", "backend", "what", "hits", "s", "hits/s or rps", ""):
        table.add_column(col, justify="right" if col in ("hits", "s", "hits/s or rps") else "left")
    for r in rows:
        table.add_row(
            r.part, r.backend, r.what, f"{r.hits:,}", f"{r.seconds:.2f}", f"{r.rate:,.0f}", r.extra
        )
    Console(width=180).print(table)
    if args.json:
        args.json.write_text(json.dumps([asdict(r) | {"rate": r.rate} for r in rows], indent=2))


if __name__ == "__main__":
    main()
