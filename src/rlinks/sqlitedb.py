"""Opening the embedded SQLite files the same way everywhere."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Literal

from rlinks.errors import ConfigError

BUSY_TIMEOUT_MS = 10_000
CACHE_KIB = 16 * 1024  # per connection; the default 2 MiB makes stats upserts miss


def connect(
    path: Path, *, synchronous: Literal["FULL", "NORMAL"] = "NORMAL", readonly: bool = False
) -> sqlite3.Connection:
    """A connection in WAL mode with explicit transactions (autocommit off).

    `isolation_level=None` leaves BEGIN/COMMIT to us, so every multi-statement
    write is one `BEGIN IMMEDIATE ... COMMIT` and nothing commits implicitly.
    """
    if readonly and not path.exists():
        raise ConfigError(f"{path} does not exist: is --data the right folder?")
    uri = f"file:{path}{'?mode=ro' if readonly else ''}"
    try:
        conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
    except sqlite3.OperationalError as e:
        raise ConfigError(f"cannot open {path}: {e}") from e
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")
    if not readonly:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute(f"PRAGMA synchronous = {synchronous}")
    return conn


class Transaction:
    """`with Transaction(conn):` runs BEGIN IMMEDIATE, then COMMIT or ROLLBACK."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.conn = conn

    def __enter__(self) -> sqlite3.Connection:
        self.conn.execute("BEGIN IMMEDIATE")
        return self.conn

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.conn.execute("COMMIT")
        else:
            self.conn.execute("ROLLBACK")
