"""The servers under test: `rlinks serve` and nginx, each started fresh on a free
loopback port in its own process group, and stopped with SIGTERM (SIGKILL if
it has not exited in time)."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from bh2bench.errors import BenchError

HOST: Final = "127.0.0.1"
BIN: Final = Path(sys.executable).parent
READY_TIMEOUT_S: Final = 30.0
STOP_TIMEOUT_S: Final = 15.0


def child_env() -> dict[str, str]:
    """This environment minus the RLINKS_* settings that would change a child."""
    return {k: v for k, v in os.environ.items() if not k.startswith("RLINKS_")}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Server:
    """A running server process (the leader of its own process group)."""

    name: str
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"

    def stop(self) -> None:
        if self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=STOP_TIMEOUT_S)
        # Anything left in the group (a child that ignored SIGTERM) goes too.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)

    def processes(self) -> dict[int, str]:
        """The live processes of this server's process group: pid -> role
        (one of `ROLES`)."""
        found: dict[int, str] = {}
        for entry in Path("/proc").iterdir():
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            try:
                if os.getpgid(pid) != self.proc.pid:
                    continue
                argv = (entry / "cmdline").read_bytes().split(b"\0")
            except (OSError, ProcessLookupError):
                continue
            found[pid] = _role(argv)
        return found

    def aggregator_pid(self) -> int | None:
        """The BH2 aggregator that `rlinks serve` runs as a child, if any."""
        return next((p for p, role in self.processes().items() if role == "aggregator"), None)


# The processes of a server, in the order reports list them.
ROLES: Final = ("worker", "log writer", "aggregator", "nginx")


def _role(argv: list[bytes]) -> str:
    """What a process of a server is, from its command line."""
    if b"rlinks.server.logwriter" in argv:
        return "log writer"
    if b"rlinks.cli.bh2" in argv:
        return "aggregator"
    if argv and argv[0].startswith(b"nginx"):  # nginx names its processes so
        return "nginx"
    return "worker"


_DROPPED_RE: Final = re.compile(r"^rlinks_hits_dropped_total\s+([0-9.e+]+)$", re.M)


def metrics_text(server: Server) -> str:
    """The server's /metrics page."""
    try:
        with urllib.request.urlopen(server.url("/metrics"), timeout=10) as r:
            text: str = r.read().decode()
    except OSError as e:
        raise BenchError(f"cannot read {server.url('/metrics')}: {e}") from e
    return text


def hits_dropped(server: Server) -> int:
    """Hits the server's async queue refused so far (`rlinks_hits_dropped_total`)."""
    found = _DROPPED_RE.search(metrics_text(server))
    return int(float(found.group(1))) if found else 0


def cpu_by_role(server: Server) -> dict[str, float]:
    """CPU seconds used so far by the live processes of the server's process
    group, summed per role: server worker(s), log writer(s), aggregator."""
    out: dict[str, float] = {}
    for pid, role in server.processes().items():
        used = cpu_seconds(pid)
        if used is not None:
            out[role] = out.get(role, 0.0) + used
    return out


def cpu_seconds(pid: int | None) -> float | None:
    """User + system CPU time of a live process (None if it is gone)."""
    if pid is None:
        return None
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / ticks  # utime, stime


def _wait_ready(server: Server) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if server.proc.poll() is not None:
            raise BenchError(
                f"{server.name} exited with {server.proc.returncode} before answering; "
                f"see {server.log}:\n{_tail(server.log)}"
            )
        try:
            with urllib.request.urlopen(server.url("/healthz"), timeout=1):
                return
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise BenchError(f"{server.name} did not answer within {READY_TIMEOUT_S:g} s; see {server.log}")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        kept = path.read_text(errors="replace").strip().splitlines()[-lines:]
    except OSError:
        return "    (no log)"
    return "\n".join(f"    {line}" for line in kept) or "    (empty log)"


@contextlib.contextmanager
def rlinks_server(
    data: Path,
    flags: Sequence[str],
    log: Path,
    *,
    backend: str | None = None,
    pythonpath: Path | None = None,
) -> Iterator[Server]:
    """`rlinks serve --data DATA FLAGS` (or `--backend URL`) on a free port, ready,
    stopped on exit. With `pythonpath`, the server (and the processes it
    starts) import rlinks from that folder instead of the installed one."""
    port = free_port()
    where = ("--backend", backend) if backend else ("--data", str(data))
    env = child_env()
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(pythonpath), env.get("PYTHONPATH", "")) if p
        )
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [BIN / "rlinks", "serve", *where, "--host", HOST, "--port", str(port), *flags],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    yield from _ready_until_exit(Server("rlinks serve", proc, port, log))


@contextlib.contextmanager
def nginx_server(workdir: Path) -> Iterator[Server]:
    """nginx answering every path with `return 302` (the HTTP floor)."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise BenchError("nginx is not installed: apt-get install nginx-light")
    port = free_port()
    conf = workdir / "nginx.conf"
    conf.write_text(
        f"daemon off; worker_processes 1; pid {workdir}/nginx.pid;\n"
        f"error_log {workdir}/nginx-error.log;\n"
        "events { worker_connections 1024; }\n"
        "http { access_log off;\n"
        f"  client_body_temp_path {workdir}; proxy_temp_path {workdir};\n"
        f"  fastcgi_temp_path {workdir}; uwsgi_temp_path {workdir}; scgi_temp_path {workdir};\n"
        f"  server {{ listen {HOST}:{port};\n"
        "    location = /healthz { return 200 'ok'; }\n"
        "    location / { return 302 https://example.com/landing; } } }\n"
    )
    log = workdir / "nginx-error.log"
    proc = subprocess.Popen(
        [nginx, "-c", str(conf), "-p", str(workdir)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    yield from _ready_until_exit(Server("nginx", proc, port, log))


def _ready_until_exit(server: Server) -> Iterator[Server]:
    """Wait until `server` answers, hand it out, stop it however the block ends."""
    try:
        _wait_ready(server)
        yield server
    finally:
        server.stop()
