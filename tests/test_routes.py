"""The route store on real SQLite files: CRUD, the audit trail, listing, sharing."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from rlinks.errors import ConfigError, InvalidRouteError, RouteNotFoundError
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


def test_put_creates_a_route_stamped_by_the_store(store: SqliteRouteStore) -> None:
    """put on a new code stores it with created_at = updated_at = now and created_by = actor."""
    saved = store.put(route(actor="someone-else", at_ms=0), "ann")
    assert saved.created_by == "ann"
    assert saved.created_at == saved.updated_at != "1970-01-01T00:00:00.000Z"
    assert store.get("promo") == saved


def test_get_of_a_missing_code_is_none(store: SqliteRouteStore) -> None:
    """get returns None for a code that was never set."""
    assert store.get("nothing") is None


def test_put_updates_and_keeps_the_creation_stamps(store: SqliteRouteStore) -> None:
    """An update replaces target/rules/meta, keeps created_at/created_by, moves updated_at."""
    first = store.put(route(), "ann")
    second = store.put(route(target="https://example.com/b", meta=Meta(notes="n")), "bob")
    assert second.target == "https://example.com/b" and second.meta.notes == "n"
    assert (second.created_at, second.created_by) == (first.created_at, "ann")
    assert second.updated_at >= first.updated_at
    assert store.get("promo") == second


def test_put_of_identical_values_changes_nothing(store: SqliteRouteStore) -> None:
    """Putting what is stored again writes nothing and logs nothing."""
    first = store.put(route(), "ann")
    assert store.put(route(), "bob") == first
    assert actions(store) == [("create", "promo", "ann")]


@pytest.mark.parametrize(
    ("draft", "field"),
    [
        (route(code="api"), "code"),
        (route(code="Promo"), "code"),
        (route(target="http://example.com/"), "target"),
        (route(target="javascript:alert(1)"), "target"),
        (route(rules=Rules(expires_at="tomorrow")), "expires_at"),
        (route(meta=Meta(tags=["has space"])), "tags"),
    ],
)
def test_put_refuses_an_invalid_route(store: SqliteRouteStore, draft: Route, field: str) -> None:
    """put validates: an invalid route raises InvalidRouteError and nothing is written."""
    with pytest.raises(InvalidRouteError) as info:
        store.put(draft, "ann")
    assert info.value.field == field
    assert store.list(include_disabled=True) == [] and store.audit_log() == []


def test_put_normalizes_expiry_and_tags(store: SqliteRouteStore) -> None:
    """The expiry is stored in UTC with ms; duplicate tags are dropped, order kept."""
    saved = store.put(
        route(
            rules=Rules(expires_at="2030-06-01T02:00:00+02:00"),
            meta=Meta(tags=["b", "a", "b"], notes=""),
        ),
        "ann",
    )
    assert saved.rules.expires_at == "2030-06-01T00:00:00.000Z"
    assert saved.meta == Meta(notes=None, tags=["b", "a"])


def test_put_keeps_the_status_it_is_given(store: SqliteRouteStore) -> None:
    """put writes the route's status as given (the CLI passes the stored one on)."""
    store.put(route(), "ann")
    assert store.put(route(status="disabled"), "ann").status == "disabled"


def test_an_empty_or_unprintable_actor_is_refused(store: SqliteRouteStore) -> None:
    """Every change needs a printable actor name."""
    for actor in ("", "a\nb", "x" * 129):
        with pytest.raises(ConfigError, match="actor"):
            store.put(route(), actor)
    assert store.get("promo") is None


def test_disable_and_enable_flip_the_status(store: SqliteRouteStore) -> None:
    """disable makes a route disabled and enable active again; both stamp updated_at."""
    created = store.put(route(), "ann")
    disabled = store.disable("promo", "bob")
    assert disabled.status == "disabled" and store.get("promo") == disabled
    assert disabled.updated_at >= created.updated_at
    assert store.enable("promo", "cy").status == "active"
    assert store.get("promo") == store.enable("promo", "cy")


def test_disable_twice_logs_once(store: SqliteRouteStore) -> None:
    """Disabling a disabled route (or enabling an active one) changes and logs nothing."""
    store.put(route(), "ann")
    store.disable("promo", "bob")
    store.disable("promo", "bob")
    store.enable("promo", "bob")
    store.enable("promo", "bob")
    assert [a for a, _, _ in actions(store)] == ["create", "disable", "enable"]


def test_disable_or_enable_of_a_missing_code_raises(store: SqliteRouteStore) -> None:
    """disable/enable on a code with no route raise RouteNotFoundError (exit code 4)."""
    for change in (store.disable, store.enable):
        with pytest.raises(RouteNotFoundError) as info:
            change("ghost", "ann")
        assert info.value.code == "ghost" and info.value.exit_code == 4
    assert store.audit_log() == []


def test_delete_removes_the_route(store: SqliteRouteStore) -> None:
    """delete returns True and the route is gone; deleting again returns False."""
    store.put(route(), "ann")
    assert store.delete("promo", "bob") is True
    assert store.get("promo") is None
    assert store.delete("promo", "bob") is False
    assert actions(store) == [("create", "promo", "ann"), ("delete", "promo", "bob")]


def test_a_deleted_code_can_be_created_again(store: SqliteRouteStore) -> None:
    """After delete, put creates a fresh route (a new created_by)."""
    store.put(route(), "ann")
    store.delete("promo", "ann")
    assert store.put(route(), "bob").created_by == "bob"
    assert [a for a, _, _ in actions(store)] == ["create", "delete", "create"]


# -- the audit trail -------------------------------------------------------------------


def test_every_mutation_appends_an_audit_record(store: SqliteRouteStore) -> None:
    """create, update, disable, enable and delete each log one record with actor and detail."""
    store.put(route(), "ann")
    store.put(route(target="https://example.com/b"), "bob")
    store.disable("promo", "cy")
    store.enable("promo", "dee")
    store.delete("promo", "eve")
    log = list(reversed(store.audit_log("promo")))
    assert [(r.action, r.actor) for r in log] == [
        ("create", "ann"),
        ("update", "bob"),
        ("disable", "cy"),
        ("enable", "dee"),
        ("delete", "eve"),
    ]
    assert log[0].detail["route"]["target"] == "https://example.com/a"
    assert log[1].detail == {
        "changes": {"target": {"from": "https://example.com/a", "to": "https://example.com/b"}}
    }
    assert log[2].detail == {"changes": {"status": {"from": "active", "to": "disabled"}}}
    assert log[3].detail == {"changes": {"status": {"from": "disabled", "to": "active"}}}
    assert decode_route(encode_route(Route(**log[4].detail["route"]))).target.endswith("/b")
    assert [r.id for r in log] == sorted(r.id for r in log)
    assert all(r.at_ms > 0 for r in log)


def test_an_update_logs_only_the_fields_that_changed(store: SqliteRouteStore) -> None:
    """The update detail names rules and meta when only they changed."""
    store.put(route(), "ann")
    store.put(route(rules=Rules(no_loop=False), meta=Meta(tags=["t"])), "ann")
    (update,) = store.audit_log("promo", limit=1)
    assert set(update.detail["changes"]) == {"rules", "meta"}
    assert update.detail["changes"]["meta"]["to"] == {"notes": None, "tags": ["t"]}


def test_audit_log_filters_by_code_newest_first_with_a_limit(store: SqliteRouteStore) -> None:
    """audit_log(code) holds only that code; limit keeps the newest records."""
    for code in ("a", "b", "c"):
        store.put(route(code), "ann")
    store.disable("b", "ann")
    assert [(r.action, r.code) for r in store.audit_log("b")] == [
        ("disable", "b"),
        ("create", "b"),
    ]
    assert [r.code for r in store.audit_log(limit=2)] == ["b", "c"]
    assert len(store.audit_log()) == 4
    assert store.audit_log("zzz") == []


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


def test_list_is_ordered_by_code(store: SqliteRouteStore) -> None:
    """list returns routes in code order whatever order they were created in."""
    for code in ("m", "a", "z", "a-1", "0"):
        store.put(route(code), "ann")
    assert [r.code for r in store.list()] == ["0", "a", "a-1", "m", "z"]


def test_list_by_prefix(store: SqliteRouteStore) -> None:
    """prefix keeps exactly the codes that start with it."""
    for code in ("promo", "promo-1", "promp", "pro", "x-promo"):
        store.put(route(code), "ann")
    assert [r.code for r in store.list(prefix="promo")] == ["promo", "promo-1"]
    assert [r.code for r in store.list(prefix="pro")] == ["pro", "promo", "promo-1", "promp"]
    assert store.list(prefix="q") == []


def test_list_limit(store: SqliteRouteStore) -> None:
    """limit caps the number of routes, keeping the first codes."""
    for i in range(10):
        store.put(route(f"c{i}"), "ann")
    assert [r.code for r in store.list(limit=3)] == ["c0", "c1", "c2"]
    assert len(store.list()) == 10
    with pytest.raises(ConfigError, match="limit"):
        store.list(limit=0)


def test_list_hides_disabled_routes_unless_asked(store: SqliteRouteStore) -> None:
    """Disabled routes are listed only with include_disabled (and still count for limit then)."""
    for code in ("a", "b", "c"):
        store.put(route(code), "ann")
    store.disable("b", "ann")
    assert [r.code for r in store.list()] == ["a", "c"]
    assert [r.code for r in store.list(include_disabled=True)] == ["a", "b", "c"]
    assert [r.code for r in store.list(limit=2)] == ["a", "c"]


# -- sharing a folder ------------------------------------------------------------------


def test_two_stores_on_one_folder_see_each_others_writes(data_dir: Path) -> None:
    """Two store objects (two connections, as two processes would) share one kv.db."""
    one, two = SqliteRouteStore(data_dir), SqliteRouteStore(data_dir)
    try:
        one.put(route(), "ann")
        assert two.get("promo") == one.get("promo")
        two.disable("promo", "bob")
        seen = one.get("promo")
        assert seen is not None and seen.status == "disabled"
        assert [r.action for r in one.audit_log()] == ["disable", "create"]
        assert one.delete("promo", "ann") and two.get("promo") is None
    finally:
        one.close()
        two.close()


def test_routes_persist_across_reopening(data_dir: Path) -> None:
    """Routes and audit records are still there after the store is closed and reopened."""
    store = SqliteRouteStore(data_dir)
    store.put(route(), "ann")
    saved = store.disable("promo", "ann")
    store.close()
    store = SqliteRouteStore(data_dir)
    try:
        assert store.get("promo") == saved
        assert [r.action for r in store.audit_log()] == ["disable", "create"]
    finally:
        store.close()


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


def test_writers_in_several_processes_lose_nothing(data_dir: Path) -> None:
    """Four processes creating and updating routes at once: every change and record lands."""
    SqliteRouteStore(data_dir).close()
    script = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from rlinks.routes import Route, SqliteRouteStore
        store = SqliteRouteStore(Path(sys.argv[1]))
        w = sys.argv[2]
        for i in range(25):
            store.put(Route.new(f"w{w}-{i}", "https://example.com/"), f"writer-{w}")
            store.put(Route.new("shared", f"https://example.com/{w}/{i}"), f"writer-{w}")
        store.close()
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(data_dir), str(w)]) for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    store = SqliteRouteStore(data_dir)
    try:
        assert len(store.list(limit=1000)) == 101
        log = store.audit_log(limit=1000)
        assert sum(r.action == "create" for r in log) == 101
        assert sum(1 for r in log if r.code == "shared") == 100  # 1 create + 99 updates
    finally:
        store.close()


def test_an_unreadable_stored_route_is_a_clear_error(
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
