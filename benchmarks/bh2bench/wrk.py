"""Driving a server with wrk (`wrk/paths.lua`) and reading its figures.

wrk is duration-based; to send a number of requests the Lua script stops its
thread after its share of responses and prints `wrk-thread-done`, and we send
wrk SIGINT so it reports at once instead of sleeping out `-d`. The rate is the
responses over the script's own span (first request sent to last response
read); wrk's duration is kept beside it.
"""

from __future__ import annotations

import json
import math
import os
import selectors
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bh2bench.errors import BenchError

SCRIPT: Final = Path(__file__).resolve().parent.parent / "wrk" / "paths.lua"
DONE_LINE: Final = "wrk-thread-done"
THREADS: Final = 1  # as the original methodology: the 2-core box is shared with the server
MIN_RATE: Final = 50.0  # requests/s below which a limited run ends at -d, short of its count
GRACE_S: Final = 30.0


@dataclass(frozen=True)
class WrkFigures:
    requests: int  # completed requests, as wrk counts them
    duration_s: float  # wrk's own duration
    span_s: float  # first request sent to last response read
    errors: int  # connect + read + write + timeout + non-2xx/3xx status
    errors_status: int
    errors_timeout: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    hit_limit: bool  # stopped at the requested count (False: ran out of -d)

    @property
    def rps(self) -> float:
        span = self.span_s if self.span_s > 0 else self.duration_s
        return self.requests / span if span > 0 else 0.0


def require_wrk() -> str:
    found = shutil.which("wrk")
    if found is None:
        raise BenchError("wrk is not on PATH: apt-get install wrk")
    return found


def duration_for(requests: int) -> int:
    """A -d long enough for `requests` at MIN_RATE (a bound, not the run's length)."""
    return max(10, math.ceil(requests / MIN_RATE))


WRK_ATTEMPTS = 3


def run_wrk(
    url: str,
    paths_file: Path,
    *,
    concurrency: int,
    requests: int | None = None,
    duration_s: float | None = None,
) -> WrkFigures:
    """`requests` responses (per the whole run), or run for `duration_s` seconds."""
    if (requests is None) == (duration_s is None):
        raise ValueError("give requests or duration_s")
    per_thread = 0 if requests is None else math.ceil(requests / THREADS)
    seconds = duration_for(requests) if requests is not None else math.ceil(duration_s or 1)
    cmd = [
        require_wrk(),
        f"-t{THREADS}",
        f"-c{max(concurrency, THREADS)}",
        f"-d{seconds}s",
        "-s",
        str(SCRIPT),
        url,
        "--",
        str(paths_file),
        str(per_thread),
    ]
    for _attempt in range(WRK_ATTEMPTS):
        out = _run_until_done(cmd, seconds + GRACE_S)
        lines = [x for x in out.splitlines() if x.startswith("{")]
        if not lines:
            raise BenchError(f"wrk printed no figures: {' '.join(cmd)}\n{out[-2000:]}")
        f = json.loads(lines[-1])
        # Now and then (a few hundred requests against nginx) wrk reports
        # responses with a p95 of 0 us (an empty latency histogram):
        # a failed measurement, not a latency. Run it again.
        if not (f["requests"] > 0 and f["p95_us"] == 0):
            break
    else:
        raise BenchError(f"wrk recorded no latencies in {WRK_ATTEMPTS} tries: {' '.join(cmd)}")
    return WrkFigures(
        requests=int(f["requests"]),
        duration_s=f["duration_us"] / 1e6,
        span_s=f["span_us"] / 1e6,
        errors=int(f["errors"]),
        errors_status=int(f["errors_status"]),
        errors_timeout=int(f["errors_timeout"]),
        p50_ms=f["p50_us"] / 1000,
        p95_ms=f["p95_us"] / 1000,
        p99_ms=f["p99_us"] / 1000,
        max_ms=f["max_us"] / 1000,
        hit_limit=out.count(DONE_LINE) >= THREADS if per_thread else True,
    )


def _run_until_done(cmd: list[str], timeout_s: float) -> str:
    """Run wrk, SIGINT it once every thread is done; its stdout. Bounded in time."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    if proc.stdout is None:  # pragma: no cover - stdout=PIPE always gives one
        raise BenchError("wrk started without a stdout pipe")
    chunks: list[bytes] = []
    done_seen = 0
    interrupted = False
    deadline = time.monotonic() + timeout_s
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                proc.kill()
                proc.wait()
                raise BenchError(f"wrk did not finish within {timeout_s:g} s: {' '.join(cmd)}")
            if not sel.select(timeout=min(left, 1.0)):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break
            chunks.append(chunk)
            done_seen = b"".join(chunks).count(DONE_LINE.encode())
            if done_seen >= THREADS and not interrupted:
                proc.send_signal(signal.SIGINT)
                interrupted = True
    proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    out = b"".join(chunks).decode(errors="replace")
    if proc.returncode != 0:
        raise BenchError(f"wrk exited with {proc.returncode}: {' '.join(cmd)}\n{out[-2000:]}")
    return out
