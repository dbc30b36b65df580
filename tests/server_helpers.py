"""The real `rlinks serve` as a subprocess, and a loopback HTTP client for it.

`running_server(data, *flags)` starts `rlinks serve --data DATA --port PORT FLAGS`
on 127.0.0.1 in its own process group (the server runs uvicorn in-process and
starts a BH2 aggregator child), waits until /healthz answers and, on exit,
stops it with SIGTERM (SIGKILL if it does not stop in time). Requests go
through `http.client`, which never follows a redirect by itself.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import socket
import sqlite3
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlinks.log.sqlite import SqliteHitLog
from rlinks.routes.model import Route, Rules
from rlinks.routes.store import SqliteRouteStore
from tests.conftest import BH2, RLINKS, cli_env, run_cli

HOST = "127.0.0.1"
STARTUP_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 10.0


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass(frozen=True)
class Response:
    """One fully read HTTP response (header names lower-cased)."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


class Server:
    """A running `rlinks serve` process and how to talk to it."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, data: Path, log: Path) -> None:
        self.proc = proc
        self.port = port
        self.data = data
        self.log = log

    def connection(self, timeout: float = 10.0) -> http.client.HTTPConnection:
        """A new keep-alive connection to the server (the caller closes it)."""
        return http.client.HTTPConnection(HOST, self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        *,
        headers: Mapping[str, str] | None = None,
        body: bytes | str | None = None,
        timeout: float = 10.0,
    ) -> Response:
        """Send one request on a fresh connection and read the whole answer."""
        conn = self.connection(timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            resp = conn.getresponse()
            data = resp.read()
            return Response(resp.status, {k.lower(): v for k, v in resp.getheaders()}, data)
        finally:
            conn.close()

    def get(self, path: str, **headers: str) -> Response:
        return self.request("GET", path, headers=headers)

    def metrics(self) -> dict[str, float]:
        """/metrics as {"name{labels}": value} (comments dropped)."""
        r = self.get("/metrics")
        assert r.status == 200, r
        out: dict[str, float] = {}
        for line in r.body.decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.rsplit(" ", 1)
                out[name] = float(value)
        return out

    def stderr(self) -> str:
        """What the server wrote to stdout and stderr so far."""
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def kill_group(self, sig: int = signal.SIGKILL) -> None:
        """Signal the server's whole process group (server and aggregator)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stop(self) -> int | None:
        """SIGTERM, wait, then SIGKILL the group if needed; the server's exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                self.kill_group(signal.SIGKILL)
                self.proc.wait(timeout=STOP_TIMEOUT_S)
        # Anything of ours left in the group (an aggregator that outlived it) goes too.
        self.kill_group(signal.SIGKILL)
        return self.proc.returncode


def _wait_healthy(server: Server, deadline: float) -> str | None:
    """None once /healthz answers 200; else why not (the process ended, or time ran out)."""
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            return f"the server exited with {server.proc.returncode}"
        try:
            r = server.request("GET", "/healthz", timeout=1.0)
            if r.status == 200:
                return None
        except OSError:
            pass
        time.sleep(0.05)
    return f"/healthz did not answer within {STARTUP_TIMEOUT_S:.0f} s"


@contextlib.contextmanager
def running_server(
    data: Path,
    *flags: str,
    env: Mapping[str, str] | None = None,
    timeout: float = STARTUP_TIMEOUT_S,
    backend: str | None = None,
) -> Iterator[Server]:
    """`rlinks serve --data DATA --port <free> FLAGS` on 127.0.0.1, healthy, stopped on exit.

    The environment has no inherited RLINKS_* variables (add them with `env`),
    and TMPDIR points next to the data folder, so the server's metrics folder
    is cleaned up with the test's files even after a SIGKILL. With `backend`
    (a redis:// URL) the server runs on it instead of on DATA (which then
    only holds the server's logs).
    """
    tmp = data.parent / f"{data.name}-server-tmp"
    tmp.mkdir(parents=True, exist_ok=True)
    for _attempt in range(3):  # a free port can be taken between picking and binding
        port = free_port()
        log = data.parent / f"{data.name}-serve-{port}.log"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [
                    str(RLINKS),
                    "serve",
                    *(("--backend", backend) if backend else ("--data", str(data))),
                    "--host",
                    HOST,
                    "--port",
                    str(port),
                    *flags,
                ],
                env=cli_env({"TMPDIR": str(tmp), **(env or {})}),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        server = Server(proc, port, data, log)
        why = _wait_healthy(server, time.monotonic() + timeout)
        if why is None:
            break
        server.stop()
        if "address already in use" in server.stderr().lower():
            continue
        raise AssertionError(
            f"rlinks serve did not start: {why}\n--- its output ---\n{server.stderr()}"
        )
    else:
        raise AssertionError(f"rlinks serve found no free port\n{server.stderr()}")
    try:
        yield server
    finally:
        server.stop()


# -- setting up data ------------------------------------------------------------------


def put_route(data: Path, code: str, target: str, **rules: Any) -> Route:
    """Store a route directly in the data folder's route store (as `rlinks links set` does)."""
    store = SqliteRouteStore(data)
    try:
        return store.put(Route.new(code, target, rules=Rules(**rules)), "tester")
    finally:
        store.close()


def links_cli(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """`rlinks links ARGS --data DATA` (actor "tester"), to completion."""
    return run_cli("links", *args, "--data", data, exe=RLINKS, env={"RLINKS_ACTOR": "tester"})


def bh2_json(*args: str | Path) -> Any:
    """`rlinks-bh2 ARGS --json`, required to succeed, its stdout parsed."""
    r = run_cli(*args, "--json", exe=BH2)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def wait_for_lag_zero(data: Path, expected_end: int, *, timeout: float = 30.0) -> dict[str, Any]:
    """Poll `rlinks-bh2 status --json` until the log holds `expected_end` hits and
    BH2 has counted all of them; the last status. Fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        status: dict[str, Any] = bh2_json("status", "--data", data)
        parts = status["partitions"]
        end = sum(p["log_end"] for p in parts)
        lag = sum(p["lag_hits"] for p in parts)
        if end == expected_end and lag == 0:
            return status
        assert time.monotonic() < deadline, f"BH2 did not catch up in {timeout} s: {status}"
        time.sleep(0.1)


def log_end(data: Path) -> int:
    """The log's end offset summed over its partitions (how many hits were appended)."""
    log = SqliteHitLog(data, readonly=True)
    try:
        return sum(log.end(p).offset for p in range(log.partitions))
    finally:
        log.close()


def log_counts(data: Path) -> dict[str, int]:
    """How many hits the log holds per code (read through a new connection)."""
    log = SqliteHitLog(data, readonly=True)
    try:
        counts: dict[str, int] = {}
        for p in range(log.partitions):
            for _, hit in log.records(p):
                counts[hit.code] = counts.get(hit.code, 0) + 1
        return counts
    finally:
        log.close()


def wait_for(pred: Callable[[], object], *, timeout: float, every: float = 0.05) -> bool:
    """Poll `pred()` until true or `timeout` seconds pass; its last value."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            return bool(pred())
        time.sleep(every)
    return True


def kv_value(data: Path, key: str) -> bytes | None:
    """A raw value of the plain `kv` table in kv.db (the `--hits kv` baseline)."""
    conn = sqlite3.connect(f"file:{data / 'kv.db'}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM kv WHERE key = ?", (key,)).fetchone()
        return None if row is None else bytes(row[0])
    finally:
        conn.close()


def assert_no_traceback(body: bytes) -> None:
    """An answer never shows a Python stack trace or source paths."""
    for marker in (b"Traceback", b'File "', b'.py"', b"site-packages"):
        assert marker not in body, body[:2000]
