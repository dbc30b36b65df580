"""Route records (schema v1) and what only the SQLite route store has; the
RouteStore contract itself runs on both stores in test_route_stores.py."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlinks.errors import ConfigError
from rlinks.routes import Meta, Route, Rules, SqliteRouteStore, decode_route, encode_route
from rlinks.routes.store import RouteStore
from rlinks.store.sqlite import KV_FILE, SqliteStatsStore


def route(code: str = "promo", target: str = "https://example.com/a", **kw: Any) -> Route:
    """A draft route (the store stamps it on put)."""
    return Route.new(code, target, **kw)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A fresh data folder."""
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[SqliteRouteStore]:
    """A route store on a fresh data folder, closed at the end."""
    s = SqliteRouteStore(data_dir)
    yield s
    s.close()


def actions(store: RouteStore, code: str | None = None) -> list[tuple[str, str, str]]:
    """(action, code, actor) of the audit log, oldest first."""
    return [(r.action, r.code, r.actor) for r in reversed(store.audit_log(code))]


# -- the record ------------------------------------------------------------------------


def test_route_json_round_trips_with_every_field() -> None:
    """encode_route writes every schema v1 field in order; decode_route reads it back."""
    r = route(rules=Rules(expires_at="2030-01-01T00:00:00.000Z"), meta=Meta(tags=["x"]))
    data = encode_route(r)
    assert data.startswith(b'{"code":"promo","target":"https://example.com/a","status":"active"')
    assert b'"v":1' in data and b'"https_only":true' in data and b'"no_loop":true' in data
    assert decode_route(data) == r


def test_route_defaults_follow_the_schema() -> None:
    """A new route is active, https-only, loop-checked, never expires, v1."""
    r = route(actor="ann", at_ms=0)
    assert (r.status, r.v, r.created_by) == ("active", 1, "ann")
    assert r.rules == Rules(https_only=True, no_loop=True, expires_at=None)
    assert r.meta == Meta(notes=None, tags=[])
    assert r.created_at == r.updated_at == "1970-01-01T00:00:00.000Z"


def test_a_future_schema_version_does_not_decode() -> None:
    """A v2 record is refused instead of being half understood."""
    data = encode_route(route()).replace(b'"v":1', b'"v":2')
    with pytest.raises(Exception, match="v"):
        decode_route(data)


# -- create, read, update, delete ------------------------------------------------------


# -- the audit trail -------------------------------------------------------------------


def test_a_failed_change_leaves_no_audit_record(store: SqliteRouteStore, data_dir: Path) -> None:
    """The route write and its audit record are one transaction: a failure rolls both back."""
    store.put(route(), "ann")
    conn = sqlite3.connect(data_dir / KV_FILE)
    conn.execute(
        "CREATE TRIGGER no_disable BEFORE INSERT ON audit WHEN NEW.action = 'disable'"
        " BEGIN SELECT RAISE(ABORT, 'refused'); END"
    )
    conn.commit()
    conn.close()
    with pytest.raises(sqlite3.IntegrityError):
        store.disable("promo", "bob")
    current = store.get("promo")
    assert current is not None and current.status == "active"
    assert [a for a, _, _ in actions(store)] == ["create"]


# -- listing ---------------------------------------------------------------------------


# -- sharing a folder ------------------------------------------------------------------


def test_routes_and_stats_share_kv_db(data_dir: Path) -> None:
    """The route tables live beside the stats tables in kv.db without disturbing them."""
    stats = SqliteStatsStore(data_dir)
    routes = SqliteRouteStore(data_dir)
    try:
        routes.put(route(), "ann")
        assert stats.snapshot("promo") is None and stats.watermark(0).offset == 0
        assert (data_dir / KV_FILE).exists()
    finally:
        routes.close()
        stats.close()


def test_an_unreadable_stored_route_row_is_a_clear_error(
    store: SqliteRouteStore, data_dir: Path
) -> None:
    """A route row from a newer schema raises ConfigError naming the code."""
    store.put(route(), "ann")
    conn = sqlite3.connect(data_dir / KV_FILE)
    conn.execute("UPDATE routes SET route = replace(route, '\"v\":1', '\"v\":2')")
    conn.commit()
    conn.close()
    with pytest.raises(ConfigError, match=r"'promo'.*newer version"):
        store.get("promo")
