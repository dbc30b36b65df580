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
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from rich.console import Console
from rich.table import Table

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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(url: str, proc: subprocess.Popen[bytes], timeout_s: float = 20) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited with {proc.returncode} before answering {url}")
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"no answer from {url} after {timeout_s} s")


def start_rlinks(flags: list[str], workdir: Path, port: int) -> subprocess.Popen[bytes]:
    data = workdir / "data"
    env = {**os.environ, "RLINKS_DATA": str(data)}
    subprocess.run(
        [BIN / "rlinks", "links", "set", "ok-code", "https://example.com/landing"],
        env=env,
        check=True,
        capture_output=True,
    )
    log = open(workdir / "server.log", "wb")  # noqa: SIM115  (lives as long as the server)
    proc = subprocess.Popen(
        [BIN / "rlinks", "serve", "--port", str(port), *flags],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def start_nginx(workdir: Path, port: int) -> subprocess.Popen[bytes]:
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/nginx-error.log;\n"
        "events { worker_connections 1024; }\n"
        "http { access_log off;\n"
        f"  client_body_temp_path {workdir}; proxy_temp_path {workdir};\n"
        f"  fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};\n"
        f"  server {{ listen 127.0.0.1:{port};\n"
        "    location /healthz { return 200 'ok'; }\n"
        "    location / { return 302 https://example.com/landing; } } }\n"
    )
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(workdir)],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    wait_ready(f"http://127.0.0.1:{port}/healthz", proc)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=15)
    except (ProcessLookupError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


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
        port = free_port()
        proc = start_nginx(workdir, port) if flags is None else start_rlinks(flags, workdir, port)
        url = f"http://127.0.0.1:{port}/ok-code"
        try:
            wrk(url, 10, 1)  # warm-up: connections, caches, JIT-free but page cache warm
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
        finally:
            stop(proc)
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
