"""KV calls per hit: what each mode costs a hosted KV.

Read from the data folder once the server has stopped, with
`rlinks-bh2 status --json`, and from the server's /metrics just before:

- `kv` (the per-hit baseline): the server's remote-KV model counts every call
  (`kv_calls`): per hit one read and one write of the code's stats key, plus
  route reads. Key-rate violations are its writes to a key written less than
  a second before.
- `append` (BH2): stats writes are BH2's (`partitions[].kv_writes`, one per code
  per batch) over the hits BH2 counted, the staleness probe's own writes and
  hits taken out; violations are BH2's (`partitions[].key_rate_violations`:
  codes written by two batches of a partition less than a second apart).
- every mode: route reads are the server's `kv_calls.reads`; routes are cached
  per worker for `--route-cache-s` (default 1 s), so a code costs at most one
  route read a second per worker, whatever its traffic.

The denominators are the redirects the server answered (its own count, from
/metrics), not wrk's count, which leaves out requests still in flight when wrk
stopped.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bh2bench.errors import BenchError
from bh2bench.probes import ProbeResult
from bh2bench.servers import BIN, Server, child_env, metrics_text

_REQUESTS_RE: Final = re.compile(r'^rlinks_requests_total\{status="(\d+)"\}\s+([0-9.e+]+)$', re.M)


@dataclass(frozen=True)
class StatusFigures:
    """`rlinks-bh2 status --json`, summed over partitions."""

    bh2_hits: int
    bh2_batches: int
    bh2_writes: int
    bh2_key_rate_violations: int
    lag_hits: int
    server_reads: int
    server_writes: int
    server_key_rate_violations: int


@dataclass(frozen=True)
class KvPerHit:
    hits: int  # the denominator: hits of the load (probes taken out)
    writes_per_hit: float
    reads_per_hit: float
    key_rate_violations: int


def redirects_answered(
    server: Server, *, settle_s: float = 0.2, timeout_s: float = 10.0
) -> dict[int, int]:
    """The server's requests by status (from /metrics), once the count has
    stopped moving: requests in flight when wrk stopped still finish (and
    write the KV) after it, and must be counted with the writes."""
    deadline = time.monotonic() + timeout_s
    last = _scrape(server)
    while time.monotonic() < deadline:
        time.sleep(settle_s)
        now = _scrape(server)
        if now == last:
            break
        last = now
    return last


def _scrape(server: Server) -> dict[int, int]:
    text = metrics_text(server)
    # The scrapes (and /healthz) are requests too, answered 200: left out.
    counts = {int(s): int(float(n)) for s, n in _REQUESTS_RE.findall(text)}
    return {status: n for status, n in counts.items() if status != 200}


def read_status(data: Path) -> StatusFigures:
    done = subprocess.run(
        [BIN / "rlinks-bh2", "status", "--data", data, "--json"],
        capture_output=True,
        text=True,
        env=child_env(),
        timeout=60,
        check=False,
    )
    if done.returncode != 0:
        raise BenchError(f"rlinks-bh2 status --data {data} failed: {done.stderr.strip()}")
    doc = json.loads(done.stdout)
    parts = doc["partitions"]
    calls = doc["kv_calls"]
    return StatusFigures(
        bh2_hits=sum(p["hits"] for p in parts),
        bh2_batches=sum(p["batches"] for p in parts),
        bh2_writes=sum(p["kv_writes"] for p in parts),
        bh2_key_rate_violations=sum(p.get("key_rate_violations", 0) for p in parts),
        lag_hits=sum(p["lag_hits"] for p in parts),
        server_reads=int(calls["reads"]),
        server_writes=int(calls["writes"]),
        server_key_rate_violations=int(calls["key_rate_violations"]),
    )


def per_hit(
    kind: str, status: StatusFigures, redirects: int, probes: ProbeResult | None
) -> KvPerHit:
    """The mode's KV cost per hit of the load."""
    probe_hits = probes.sent if probes is not None else 0
    probe_writes = probes.writes if probes is not None else 0
    load_hits = max(1, redirects - probe_hits)
    reads = status.server_reads / load_hits
    if kind == "append":
        bh2_hits = max(1, status.bh2_hits - probe_hits)
        writes = max(0, status.bh2_writes - probe_writes) + status.server_writes
        return KvPerHit(bh2_hits, writes / bh2_hits, reads, status.bh2_key_rate_violations)
    return KvPerHit(
        load_hits,
        status.server_writes / load_hits,
        reads,
        status.server_key_rate_violations + status.bh2_key_rate_violations,
    )
