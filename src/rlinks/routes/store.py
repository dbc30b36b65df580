"""Where routes live, and the audit trail of every change to them.

`RouteStore` is the contract; `SqliteRouteStore` keeps routes in `kv.db` next to
the stats (tables `routes` and `audit`). Each change and its audit record commit
in one `BEGIN IMMEDIATE` transaction, so the trail cannot miss or invent a change,
and writers in several processes queue up instead of overwriting each other. A
bulk import (`put_many`) commits a few thousand routes per transaction, still
with one audit record per route, so a code's history starts with its creation.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Protocol

import msgspec

from rlinks.errors import ConfigError, RouteNotFoundError
from rlinks.routes.model import Route, Status, decode_route, encode_route, route_to_dict, stamp
from rlinks.routes.validate import validate_code, validate_route
from rlinks.sqlitedb import Transaction, connect
from rlinks.store.sqlite import KV_FILE
from rlinks.timefmt import now_ms

Action = Literal["create", "update", "disable", "enable", "delete"]
MAX_ACTOR_CHARS = 128
# Routes per transaction in `put_many`: big enough to amortize the commit,
# small enough that other writers (the admin API) wait for the lock only briefly.
IMPORT_CHUNK = 2000
# The fields an update can change; the rest are stamps the store owns.
_EDITABLE = ("target", "status", "rules", "meta")


class AuditRecord(msgspec.Struct, frozen=True, kw_only=True):
    """One change: who did what to which code, when.

    `detail` holds `{"route": ...}` for create and delete (the whole route, so a
    deleted one can be restored by hand) and `{"changes": {field: {"from", "to"}}}`
    for update, disable and enable.
    """

    id: int
    at_ms: int
    actor: str
    action: Action
    code: str
    detail: dict[str, Any]


@dataclass
class ImportCounts:
    """What `put_many` did: routes created, updated, and left as they were."""

    created: int = 0
    updated: int = 0
    unchanged: int = 0

    def add(self, action: Action | None) -> None:
        if action == "create":
            self.created += 1
        elif action == "update":
            self.updated += 1
        else:
            self.unchanged += 1


class RouteStore(Protocol):
    """Routes by code, with an append-only audit log of every change."""

    def get(self, code: str) -> Route | None: ...

    def put(self, route: Route, actor: str) -> Route:
        """Create or update (validated); keeps created_at/created_by, stamps updated_at.

        Writing a route identical to the stored one changes nothing and logs nothing.
        """
        ...

    def put_many(self, routes: Iterable[Route], actor: str) -> ImportCounts:
        """`put` for many routes (bulk import), each with its own audit record;
        an existing route keeps its status. All are validated before any write."""
        ...

    def list(
        self, prefix: str | None = None, limit: int = 50, include_disabled: bool = False
    ) -> builtins.list[Route]:
        """Routes ordered by code, active ones only unless `include_disabled`."""
        ...

    def disable(self, code: str, actor: str) -> Route:
        """Make a route answer 404; raises RouteNotFoundError. Idempotent."""
        ...

    def enable(self, code: str, actor: str) -> Route:
        """Make a disabled route redirect again; raises RouteNotFoundError. Idempotent."""
        ...

    def delete(self, code: str, actor: str) -> bool:
        """Remove a route; False if there was none (nothing is logged then)."""
        ...

    def audit_log(self, code: str | None = None, limit: int = 100) -> builtins.list[AuditRecord]:
        """The newest `limit` audit records (of `code`, or all), newest first."""
        ...

    def feed_position(self) -> str:
        """Where the change feed (the audit trail, in commit order) ends now: an
        opaque position for `changed_since`."""
        ...

    def changed_since(self, position: str, limit: int = 1000) -> tuple[str, builtins.list[str]]:
        """The codes of up to `limit` changes after `position`, oldest first, and
        the position after them. A server caches routes until this names them."""
        ...

    def close(self) -> None: ...


_SCHEMA = """
CREATE TABLE IF NOT EXISTS routes (
    code TEXT PRIMARY KEY,
    route TEXT NOT NULL,          -- the Route as JSON (schema v1)
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS audit (
    id INTEGER PRIMARY KEY,       -- append-only: rows are never updated or deleted
    at_ms INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    code TEXT NOT NULL,
    detail TEXT NOT NULL          -- JSON
);
CREATE INDEX IF NOT EXISTS audit_code ON audit (code, id);
"""

_JSON = msgspec.json.Encoder()
_DETAIL = msgspec.json.Decoder(dict[str, Any])


class SqliteRouteStore:
    """`RouteStore` on `kv.db` in a data folder; safe to share between processes (WAL)."""

    def __init__(self, data_dir: Path) -> None:
        Path(data_dir).mkdir(parents=True, exist_ok=True)
        self._conn = connect(Path(data_dir) / KV_FILE, synchronous="FULL")
        self._conn.executescript(_SCHEMA)

    # -- reading ---------------------------------------------------------------------

    def get(self, code: str) -> Route | None:
        return self._get(self._conn, code)

    def list(
        self, prefix: str | None = None, limit: int = 50, include_disabled: bool = False
    ) -> builtins.list[Route]:
        _check_limit(limit)
        sql = "SELECT code, route FROM routes WHERE code >= ? AND code < ?"
        if not include_disabled:
            sql += " AND json_extract(route, '$.status') = 'active'"
        # Codes are ASCII, so every code starting with `prefix` sorts below
        # prefix + U+10FFFF: a range scan on the primary key.
        low = prefix or ""
        rows = self._conn.execute(
            sql + " ORDER BY code LIMIT ?", (low, low + "\U0010ffff", limit)
        ).fetchall()
        return [_decode(code, data) for code, data in rows]

    def audit_log(self, code: str | None = None, limit: int = 100) -> builtins.list[AuditRecord]:
        _check_limit(limit)
        where, args = ("WHERE code = ?", (code,)) if code is not None else ("", ())
        rows = self._conn.execute(
            f"SELECT id, at_ms, actor, action, code, detail FROM audit {where}"
            " ORDER BY id DESC LIMIT ?",
            (*args, limit),
        ).fetchall()
        return [
            AuditRecord(
                id=r[0], at_ms=r[1], actor=r[2], action=r[3], code=r[4], detail=_DETAIL.decode(r[5])
            )
            for r in rows
        ]

    def feed_position(self) -> str:
        # Audit ids grow in commit order: writers take the write lock first.
        (last,) = self._conn.execute("SELECT coalesce(max(id), 0) FROM audit").fetchone()
        return str(last)

    def changed_since(self, position: str, limit: int = 1000) -> tuple[str, builtins.list[str]]:
        _check_limit(limit)
        rows = self._conn.execute(
            "SELECT id, code FROM audit WHERE id > ? ORDER BY id LIMIT ?",
            (_feed_id(position), limit),
        ).fetchall()
        return (str(rows[-1][0]) if rows else position), [code for _, code in rows]

    # -- changing --------------------------------------------------------------------

    def put(self, route: Route, actor: str) -> Route:
        route = validate_route(route)
        _check_actor(actor)
        at = now_ms()
        with Transaction(self._conn) as c:
            # Step 1. Read what is there, inside the write lock; then write.
            new, _ = self._put_in(c, route, self._get(c, route.code), actor, at)
        return new

    def put_many(
        self, routes: Iterable[Route], actor: str, *, chunk: int = IMPORT_CHUNK
    ) -> ImportCounts:
        """Create or update many routes, `chunk` per transaction, each audited.

        Every route is validated before the first write, so a bad one changes
        nothing. An existing route keeps its status (as `rlinks links set` does)
        and its creation stamps; an identical one is not written; of two with
        one code the later wins. A failure mid-way keeps the chunks already
        committed (running the import again is harmless).
        """
        _check_actor(actor)
        if chunk < 1:
            raise ConfigError(f"the chunk must be at least 1 route, got {chunk}")
        checked = [validate_route(r) for r in routes]
        counts = ImportCounts()
        for lo in range(0, len(checked), chunk):
            at = now_ms()
            with Transaction(self._conn) as c:
                for draft in checked[lo : lo + chunk]:
                    old = self._get(c, draft.code)
                    kept = draft if old is None else draft.replace(status=old.status)
                    counts.add(self._put_in(c, kept, old, actor, at)[1])
        return counts

    def disable(self, code: str, actor: str) -> Route:
        return self._set_status(code, actor, "disabled")

    def enable(self, code: str, actor: str) -> Route:
        return self._set_status(code, actor, "active")

    def delete(self, code: str, actor: str) -> bool:
        _check_actor(actor)
        at = now_ms()
        with Transaction(self._conn) as c:
            old = self._get(c, code)
            if old is None:
                return False
            c.execute("DELETE FROM routes WHERE code = ?", (code,))
            self._audit(c, at, actor, "delete", code, {"route": route_to_dict(old)})
        return True

    def close(self) -> None:
        self._conn.close()

    # -- inside ----------------------------------------------------------------------

    def _put_in(
        self, c: sqlite3.Connection, route: Route, old: Route | None, actor: str, at: int
    ) -> tuple[Route, Action | None]:
        """Write a validated route over `old` (read by the caller inside this
        transaction); the stored route and what was done (None: identical, so
        nothing was written)."""
        if old is None:
            # Step 2a. A new route: the store stamps who and when.
            new = route.replace(created_at=stamp(at), updated_at=stamp(at), created_by=actor)
            action: Action = "create"
            detail: dict[str, Any] = {"route": route_to_dict(new)}
        else:
            # Step 2b. An update keeps the creation stamps; no change, no write.
            changes = _changes(old, route)
            if not changes:
                return old, None
            new = route.replace(
                created_at=old.created_at, created_by=old.created_by, updated_at=stamp(at)
            )
            action, detail = "update", {"changes": changes}
        # Step 3. Write the route and its audit record; both commit or neither.
        self._write(c, new, at)
        self._audit(c, at, actor, action, new.code, detail)
        return new, action

    def _set_status(self, code: str, actor: str, status: Status) -> Route:
        validate_code(code, allow_reserved=True)
        _check_actor(actor)
        at = now_ms()
        with Transaction(self._conn) as c:
            old = self._get(c, code)
            if old is None:
                raise RouteNotFoundError(code)
            if old.status == status:
                return old
            new = old.replace(status=status, updated_at=stamp(at))
            self._write(c, new, at)
            action: Action = "disable" if status == "disabled" else "enable"
            self._audit(
                c,
                at,
                actor,
                action,
                code,
                {"changes": {"status": {"from": old.status, "to": status}}},
            )
        return new

    @staticmethod
    def _get(c: sqlite3.Connection, code: str) -> Route | None:
        row = c.execute("SELECT route FROM routes WHERE code = ?", (code,)).fetchone()
        return _decode(code, row[0]) if row else None

    @staticmethod
    def _write(c: sqlite3.Connection, route: Route, at: int) -> None:
        c.execute(
            "INSERT INTO routes (code, route, updated_ms) VALUES (?, ?, ?)"
            " ON CONFLICT (code) DO UPDATE SET route = excluded.route,"
            " updated_ms = excluded.updated_ms",
            (route.code, encode_route(route).decode(), at),
        )

    @staticmethod
    def _audit(
        c: sqlite3.Connection, at: int, actor: str, action: Action, code: str, detail: Any
    ) -> None:
        c.execute(
            "INSERT INTO audit (at_ms, actor, action, code, detail) VALUES (?, ?, ?, ?, ?)",
            (at, actor, action, code, _JSON.encode(detail).decode()),
        )


def _changes(old: Route, new: Route) -> dict[str, Any]:
    """`{field: {"from": old, "to": new}}` for each editable field that differs."""
    before, after = route_to_dict(old), route_to_dict(new)
    return {f: {"from": before[f], "to": after[f]} for f in _EDITABLE if before[f] != after[f]}


def _decode(code: str, data: str | bytes) -> Route:
    try:
        return decode_route(data)
    except msgspec.DecodeError as e:
        raise ConfigError(
            f"{KV_FILE} holds a route {code!r} this rlinks cannot read ({e}): "
            "was it written by a newer version?"
        ) from e


def _check_actor(actor: str) -> None:
    if not actor or len(actor) > MAX_ACTOR_CHARS or not actor.isprintable():
        raise ConfigError(
            f"the actor {actor!r} is not usable: give a printable name of 1 to "
            f"{MAX_ACTOR_CHARS} characters (--actor NAME or RLINKS_ACTOR)"
        )


def _feed_id(position: str) -> int:
    try:
        return int(position)
    except ValueError:
        raise ConfigError(f"{position!r} is not a change-feed position of this store") from None


def _check_limit(limit: int) -> None:
    if limit < 1:
        raise ConfigError(f"the limit must be at least 1, got {limit}")
