"""Staleness: how long after its redirect a hit shows in the stats.

During an `append` run a sender thread asks for `/probe-0001` (a code of its
own, which the load never names) every 250 ms and notes when each 302 arrived;
a poller thread reads the probe code's snapshot from the stats store (a
read-only connection) every 10 ms. When the count reaches k, the k-th probe
hit shows, and its staleness is that moment minus its redirect. Every rise of
the count is one apply that wrote the probe's stats key: those writes are the
probe's, and are taken out of the run's KV writes per hit.
"""

from __future__ import annotations

import http.client
import math
import statistics
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from bh2bench.servers import HOST
from bh2bench.workload import PROBE_CODE
from rlinks.store.sqlite import SqliteStatsStore

PROBE_EVERY_S: Final = 0.25
POLL_S: Final = 0.01
MIN_PROBES: Final = 4  # keep probing after the load ends until this many were sent


@dataclass
class ProbeResult:
    sent: int = 0  # probes answered with a redirect
    failed: int = 0  # probes answered otherwise, or not at all
    delays_ms: list[float] = field(default_factory=list)
    unseen: int = 0  # redirected but not in the stats before the deadline
    writes: int = 0  # applies that wrote the probe's stats key

    def percentile(self, q: float) -> float | None:
        """The q-th percentile (0-100, nearest rank) of the delays; None without any."""
        if not self.delays_ms:
            return None
        ordered = sorted(self.delays_ms)
        return ordered[max(1, math.ceil(q / 100 * len(ordered))) - 1]

    @property
    def mean_ms(self) -> float | None:
        return statistics.fmean(self.delays_ms) if self.delays_ms else None


class Prober:
    def __init__(self, port: int, data_dir: Path) -> None:
        self._port = port
        self._data_dir = data_dir
        self._lock = threading.Lock()
        self._redirected_at: list[float] = []  # monotonic time of each probe's 302
        self._sending = threading.Event()
        self._stop = threading.Event()
        self._result = ProbeResult()
        self._sender = threading.Thread(target=self._send_loop, name="probe-send", daemon=True)
        self._poller = threading.Thread(target=self._poll_loop, name="probe-poll", daemon=True)

    def start(self) -> None:
        self._sending.set()
        self._sender.start()
        self._poller.start()

    def wait_first(self, timeout_s: float) -> bool:
        """Wait until the first probe is answered (it also warms the server's
        hit path up: its first redirect starts the log writer)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._sender.is_alive():
            with self._lock:
                if self._result.sent + self._result.failed:
                    return True
            time.sleep(POLL_S)
        return False

    def wait_counted(self, timeout_s: float) -> bool:
        """Wait until the first probe shows in the stats: the log writer and
        the aggregator are both running, their start-up is over."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and self._poller.is_alive():
            with self._lock:
                if self._result.delays_ms:
                    return True
            time.sleep(POLL_S)
        return False

    def finish(self, timeout_s: float) -> ProbeResult:
        """Stop sending (after at least MIN_PROBES), wait up to `timeout_s` for
        the probes sent to show, and return the figures."""
        deadline = time.monotonic() + timeout_s
        while self._result.sent + self._result.failed < MIN_PROBES:
            if time.monotonic() > deadline or not self._sender.is_alive():
                break
            time.sleep(PROBE_EVERY_S / 5)
        self._sending.clear()
        self._sender.join(timeout=10)
        while time.monotonic() < deadline and self._poller.is_alive():
            with self._lock:
                if len(self._result.delays_ms) >= len(self._redirected_at):
                    break
            time.sleep(POLL_S)
        self._stop.set()
        self._poller.join(timeout=10)
        with self._lock:
            self._result.unseen = len(self._redirected_at) - len(self._result.delays_ms)
            return self._result

    def _send_loop(self) -> None:
        conn = http.client.HTTPConnection(HOST, self._port, timeout=10)
        next_at = time.monotonic()
        try:
            while self._sending.is_set():
                try:
                    conn.request("GET", f"/{PROBE_CODE}")
                    response = conn.getresponse()
                    response.read()
                    at = time.monotonic()
                    with self._lock:
                        if response.status == 302:
                            self._result.sent += 1
                            self._redirected_at.append(at)
                        else:
                            self._result.failed += 1
                except (OSError, http.client.HTTPException):
                    with self._lock:
                        self._result.failed += 1
                    conn.close()
                    conn = http.client.HTTPConnection(HOST, self._port, timeout=10)
                next_at = max(next_at + PROBE_EVERY_S, time.monotonic())
                while self._sending.is_set() and time.monotonic() < next_at:
                    time.sleep(min(POLL_S, max(0.0, next_at - time.monotonic())))
        finally:
            conn.close()

    def _poll_loop(self) -> None:
        store = SqliteStatsStore(self._data_dir, readonly=True)
        seen_hits = 0
        try:
            while not self._stop.is_set():
                snap = store.snapshot(PROBE_CODE)
                hits = snap.hits if snap is not None else 0
                now = time.monotonic()
                with self._lock:
                    if hits > seen_hits:
                        self._result.writes += 1
                        seen_hits = hits
                    shown = len(self._result.delays_ms)
                    for k in range(shown, min(hits, len(self._redirected_at))):
                        self._result.delays_ms.append((now - self._redirected_at[k]) * 1000)
                self._stop.wait(POLL_S)
        finally:
            store.close()
