"""Real `redis-server` processes for tests: loopback, a free port, a temp dir, AOF on.

`RedisServer` is one server (kill -9 and restart from its AOF are part of the
API); `RedisClusterServers` is three masters joined with
`redis-cli --cluster create`. No fake Redis anywhere.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import redis


def free_port(*, bus: bool = False) -> int:
    """A free loopback port; with `bus`, one at or below 55535 whose port + 10000
    is free too (a cluster node listens there for its peers)."""
    rng = random.Random()
    while True:
        port = rng.randrange(20_000, 55_536)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            if not bus:
                return port
            with contextlib.suppress(OSError), socket.socket() as peer:
                peer.bind(("127.0.0.1", port + 10_000))
                return port


def redis_server_path() -> str:
    path = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if Path("/usr/bin/redis-server").exists() else None
    )
    if path is None:
        pytest.fail("redis-server is not installed (.ci/run installs the Debian package)")
    return path


class RedisServer:
    """One redis-server on 127.0.0.1 with AOF (appendfsync everysec) in `directory`."""

    def __init__(self, directory: Path, *, port: int | None = None, cluster: bool = False) -> None:
        self.directory = directory
        self.port = port or free_port(bus=cluster)
        self.cluster = cluster
        self.proc: subprocess.Popen[bytes] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        args = [
            redis_server_path(),
            "--bind", "127.0.0.1",
            "--port", str(self.port),
            "--dir", str(self.directory),
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--save", "",
            "--protected-mode", "no",
        ]  # fmt: skip
        if self.cluster:
            args += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        log = open(self.directory / "redis.log", "ab")  # noqa: SIM115 - owned by the process
        self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        self._wait_ready()
        return self

    def _wait_ready(self, timeout: float = 20.0) -> None:
        deadline = time.monotonic() + timeout
        client = redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=1)
        try:
            while time.monotonic() < deadline:
                assert self.proc is not None
                if self.proc.poll() is not None:
                    log = (self.directory / "redis.log").read_text(errors="replace")
                    pytest.fail(f"redis-server exited with {self.proc.returncode}:\n{log}")
                try:
                    if client.ping():
                        # Loading an AOF answers PING with an error until done.
                        return
                except redis.RedisError:
                    pass
                time.sleep(0.02)
        finally:
            client.close()
        pytest.fail(f"redis-server on port {self.port} did not answer within {timeout} s")

    def kill(self) -> None:
        """SIGKILL: whatever the AOF had not fsynced is lost, as in a crash."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port)


class RedisClusterServers:
    """Three cluster-enabled masters (no replicas), joined into one cluster."""

    def __init__(self, directory: Path) -> None:
        self.nodes = [RedisServer(directory / f"node{i}", cluster=True) for i in range(3)]

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.nodes[0].port}/0"

    def start(self) -> RedisClusterServers:
        for node in self.nodes:
            node.start()
        cli = shutil.which("redis-cli") or "/usr/bin/redis-cli"
        subprocess.run(
            [cli, "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        self._wait_ok()
        return self

    def _wait_ok(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            states = []
            for node in self.nodes:
                client = node.client()
                try:
                    states.append(client.cluster("info").get("cluster_state"))
                finally:
                    client.close()
            if all(s == "ok" for s in states):
                return
            time.sleep(0.1)
        pytest.fail("the Redis cluster did not reach cluster_state:ok")

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()
