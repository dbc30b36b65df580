"""`env.json`: the machine, the versions of everything measured, and the knobs."""

from __future__ import annotations

import os
import platform
import shutil
import sqlite3
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent.parent


def _first_line(cmd: list[str]) -> str | None:
    if shutil.which(cmd[0]) is None:
        return None
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except OSError:
        return None
    text = (done.stdout + done.stderr).strip()
    return text.splitlines()[0] if text else None


def package_version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _memory_gib() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return None


def git_state() -> str | None:
    """`HEAD` commit, plus `+dirty` when the work tree differs from it."""
    head = _first_line(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"])
    if head is None or "fatal" in head:
        return None
    try:
        dirty = subprocess.run(
            ["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        ).stdout.strip()
    except OSError:
        dirty = ""
    return head + ("+dirty" if dirty else "")


def environment() -> dict[str, Any]:
    return {
        "machine": {
            "cpu": cpu_model(),
            "cpus": os.cpu_count(),
            "memory_gib": _memory_gib(),
            "platform": platform.platform(),
            "load_avg": list(os.getloadavg()),
        },
        "versions": {
            "python": sys.version.split()[0],
            "rlinks": package_version("rlinks"),
            "rlinks_git": git_state(),
            "wrk": _first_line(["wrk", "-v"]),
            "nginx": _first_line(["nginx", "-v"]),
            "sqlite": sqlite3.sqlite_version,
            **{
                name: package_version(name)
                for name in ("uvicorn", "uvloop", "httptools", "numpy", "msgspec", "matplotlib")
            },
        },
    }
