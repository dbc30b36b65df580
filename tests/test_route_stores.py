"""The route store on a real redis-server, held to the same contract as on SQLite.

The contract tests run on both stores; the rest check what only Redis has: the
key layout (one cluster slot), the optimistic check that keeps each change and
its audit record together, one GET per lookup, and a real three-node cluster.
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from rlinks.errors import ConfigError, InvalidRouteError, RlinksError, RouteNotFoundError
from rlinks.routes import (
    Meta,
    Route,
    Rules,
    SqliteRouteStore,
    decode_route,
    encode_route,
    redis_store,
)
from rlinks.routes.model import route_to_dict, stamp
from rlinks.routes.redis_store import (
    AUDIT,
    AUDIT_ID,
    INDEX,
    RedisRouteStore,
    audit_key,
    route_key,
)
from rlinks.routes.store import AuditRecord, RouteStore
from tests.conftest import shared_redis
from tests.redis_helpers import RedisClusterServers

STORES = ("sqlite", "redis")
# The database of the shared server these tests use (conftest's backends rotate
# through all 16, but never while one of these tests runs).
DB = 15


def route(code: str = "promo", target: str = "https://example.com/a", **kw: Any) -> Route:
    """A draft route (the store stamps it on put)."""
    return Route.new(code, target, **kw)


def actions(store: RouteStore, code: str | None = None) -> list[tuple[str, str, str]]:
    """(action, code, actor) of the audit log, oldest first."""
    return [(r.action, r.code, r.actor) for r in reversed(store.audit_log(code, limit=10_000))]


class Place:
    """Where routes live for one test: a fresh data folder or a flushed Redis
    database. Each `open` is a new store object, as another process would have."""

    def __init__(self, kind: str, root: Path) -> None:
        self.kind = kind
        self.root = root
        self.url = ""
        if kind == "redis":
            server = shared_redis()
            self.url = server.url.rpartition("/")[0] + f"/{DB}"
            with contextlib.closing(redis.Redis(port=server.port, db=DB)) as client:
                client.flushdb()
        self._opened: list[RouteStore | redis.Redis] = []

    def open(self) -> RouteStore:
        store: RouteStore
        store = SqliteRouteStore(self.root) if self.kind == "sqlite" else RedisRouteStore(self.url)
        self._opened.append(store)
        return store

    def client(self) -> redis.Redis:
        """A plain client on the Redis database (to look at or tamper with keys)."""
        client = redis.Redis.from_url(self.url)
        self._opened.append(client)
        return client

    def close(self) -> None:
        for s in reversed(self._opened):
            with contextlib.suppress(Exception):
                s.close()


@pytest.fixture(params=STORES)
def place(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Place]:
    """A fresh place for routes, for each store."""
    p = Place(request.param, tmp_path / "data")
    yield p
    p.close()


@pytest.fixture
def store(place: Place) -> RouteStore:
    """A route store on a fresh place, closed at the end."""
    return place.open()


@pytest.fixture
def redis_place(tmp_path: Path) -> Iterator[Place]:
    """A flushed Redis database only."""
    p = Place("redis", tmp_path)
    yield p
    p.close()


@pytest.fixture
def rstore(redis_place: Place) -> RedisRouteStore:
    store = redis_place.open()
    assert isinstance(store, RedisRouteStore)
    return store


# -- create, read, update, delete (both stores) ----------------------------------------


def test_put_creates_a_route_stamped_by_the_store(store: RouteStore) -> None:
    """put on a new code stores it with created_at = updated_at = now and created_by = actor."""
    saved = store.put(route(actor="someone-else", at_ms=0), "ann")
    assert saved.created_by == "ann"
    assert saved.created_at == saved.updated_at != "1970-01-01T00:00:00.000Z"
    assert store.get("promo") == saved


def test_get_of_a_missing_code_is_none(store: RouteStore) -> None:
    """get returns None for a code that was never set."""
    assert store.get("nothing") is None


def test_put_updates_and_keeps_the_creation_stamps(store: RouteStore) -> None:
    """An update replaces target/rules/meta, keeps created_at/created_by, moves updated_at."""
    first = store.put(route(), "ann")
    second = store.put(route(target="https://example.com/b", meta=Meta(notes="n")), "bob")
    assert second.target == "https://example.com/b" and second.meta.notes == "n"
    assert (second.created_at, second.created_by) == (first.created_at, "ann")
    assert second.updated_at >= first.updated_at
    assert store.get("promo") == second


def test_put_of_identical_values_changes_nothing(store: RouteStore) -> None:
    """Putting what is stored again writes nothing and logs nothing."""
    first = store.put(route(), "ann")
    assert store.put(route(), "bob") == first
    assert store.get("promo") == first
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
def test_put_refuses_an_invalid_route(store: RouteStore, draft: Route, field: str) -> None:
    """put validates: an invalid route raises InvalidRouteError and nothing is written."""
    with pytest.raises(InvalidRouteError) as info:
        store.put(draft, "ann")
    assert info.value.field == field
    assert store.list(include_disabled=True) == [] and store.audit_log() == []


def test_put_normalizes_expiry_and_tags(store: RouteStore) -> None:
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
    assert store.get("promo") == saved


def test_put_keeps_the_status_it_is_given(store: RouteStore) -> None:
    """put writes the route's status as given (the CLI passes the stored one on)."""
    store.put(route(), "ann")
    assert store.put(route(status="disabled"), "ann").status == "disabled"
    assert actions(store)[-1][0] == "update"


def test_an_empty_or_unprintable_actor_is_refused(store: RouteStore) -> None:
    """Every change needs a printable actor name; a refused one writes nothing."""
    for actor in ("", "a\nb", "x" * 129):
        with pytest.raises(ConfigError, match="actor"):
            store.put(route(), actor)
        with pytest.raises(ConfigError, match="actor"):
            store.put_many([route()], actor)
    assert store.get("promo") is None and store.audit_log() == []


def test_disable_and_enable_flip_the_status(store: RouteStore) -> None:
    """disable makes a route disabled and enable active again; both stamp updated_at."""
    created = store.put(route(), "ann")
    disabled = store.disable("promo", "bob")
    assert disabled.status == "disabled" and store.get("promo") == disabled
    assert disabled.updated_at >= created.updated_at
    assert (disabled.created_at, disabled.created_by) == (created.created_at, "ann")
    assert store.enable("promo", "cy").status == "active"
    assert store.get("promo") == store.enable("promo", "cy")


def test_disable_twice_logs_once(store: RouteStore) -> None:
    """Disabling a disabled route (or enabling an active one) changes and logs nothing."""
    store.put(route(), "ann")
    first = store.disable("promo", "bob")
    assert store.disable("promo", "bob") == first
    store.enable("promo", "bob")
    store.enable("promo", "bob")
    assert [a for a, _, _ in actions(store)] == ["create", "disable", "enable"]


def test_disable_or_enable_of_a_missing_code_raises(store: RouteStore) -> None:
    """disable/enable on a code with no route raise RouteNotFoundError (exit code 4)."""
    for change in (store.disable, store.enable):
        with pytest.raises(RouteNotFoundError) as info:
            change("ghost", "ann")
        assert info.value.code == "ghost" and info.value.exit_code == 4
    assert store.audit_log() == []


def test_delete_removes_the_route(store: RouteStore) -> None:
    """delete returns True and the route is gone (from list too); again returns False."""
    store.put(route(), "ann")
    assert store.delete("promo", "bob") is True
    assert store.get("promo") is None and store.list(include_disabled=True) == []
    assert store.delete("promo", "bob") is False
    assert actions(store) == [("create", "promo", "ann"), ("delete", "promo", "bob")]


def test_a_deleted_code_can_be_created_again(store: RouteStore) -> None:
    """After delete, put creates a fresh route (a new created_by)."""
    store.put(route(), "ann")
    store.delete("promo", "ann")
    assert store.put(route(), "bob").created_by == "bob"
    assert [a for a, _, _ in actions(store)] == ["create", "delete", "create"]


# -- the audit trail (both stores) -----------------------------------------------------


def test_every_mutation_appends_an_audit_record(store: RouteStore) -> None:
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
    assert [r.id for r in log] == sorted(r.id for r in log) and len({r.id for r in log}) == 5
    assert all(r.at_ms > 0 for r in log)
    assert store.audit_log() == store.audit_log("promo")


def test_an_update_logs_only_the_fields_that_changed(store: RouteStore) -> None:
    """The update detail names rules and meta when only they changed."""
    store.put(route(), "ann")
    store.put(route(rules=Rules(no_loop=False), meta=Meta(tags=["t"])), "ann")
    (update,) = store.audit_log("promo", limit=1)
    assert set(update.detail["changes"]) == {"rules", "meta"}
    assert update.detail["changes"]["meta"]["to"] == {"notes": None, "tags": ["t"]}


def test_audit_log_filters_by_code_newest_first_with_a_limit(store: RouteStore) -> None:
    """audit_log(code) holds only that code; limit keeps the newest records."""
    for code in ("a", "b", "c"):
        store.put(route(code), "ann")
    store.disable("b", "ann")
    assert [(r.action, r.code) for r in store.audit_log("b")] == [
        ("disable", "b"),
        ("create", "b"),
    ]
    assert [r.action for r in store.audit_log("b", limit=1)] == ["disable"]
    assert [r.code for r in store.audit_log(limit=2)] == ["b", "c"]
    assert len(store.audit_log()) == 4
    assert store.audit_log("zzz") == []
    with pytest.raises(ConfigError, match="limit"):
        store.audit_log(limit=0)


# -- listing (both stores) -------------------------------------------------------------


def test_list_is_ordered_by_code(store: RouteStore) -> None:
    """list returns routes in code order whatever order they were created in."""
    for code in ("m", "a", "z", "a-1", "0"):
        store.put(route(code), "ann")
    assert [r.code for r in store.list()] == ["0", "a", "a-1", "m", "z"]


def test_list_by_prefix(store: RouteStore) -> None:
    """prefix keeps exactly the codes that start with it."""
    for code in ("promo", "promo-1", "promp", "pro", "x-promo", "prn"):
        store.put(route(code), "ann")
    assert [r.code for r in store.list(prefix="promo")] == ["promo", "promo-1"]
    assert [r.code for r in store.list(prefix="pro")] == ["pro", "promo", "promo-1", "promp"]
    assert store.list(prefix="q") == []
    assert [r.code for r in store.list(prefix="")] == [r.code for r in store.list()]


def test_list_limit(store: RouteStore) -> None:
    """limit caps the number of routes, keeping the first codes."""
    for i in range(10):
        store.put(route(f"c{i}"), "ann")
    assert [r.code for r in store.list(limit=3)] == ["c0", "c1", "c2"]
    assert len(store.list()) == 10
    with pytest.raises(ConfigError, match="limit"):
        store.list(limit=0)


def test_list_hides_disabled_routes_unless_asked(store: RouteStore) -> None:
    """Disabled routes are listed only with include_disabled (and still count for limit then)."""
    for code in ("a", "b", "c"):
        store.put(route(code), "ann")
    store.disable("b", "ann")
    assert [r.code for r in store.list()] == ["a", "c"]
    assert [r.code for r in store.list(include_disabled=True)] == ["a", "b", "c"]
    assert [r.code for r in store.list(limit=2)] == ["a", "c"]
    assert [r.code for r in store.list(limit=2, include_disabled=True)] == ["a", "b"]


# -- bulk import (both stores) ---------------------------------------------------------


def test_put_many_creates_updates_and_skips(store: RouteStore) -> None:
    """put_many counts created, updated and unchanged routes, one audit record per change."""
    store.put(route("same"), "ann")
    store.put(route("old"), "ann")
    counts = store.put_many(
        [route("same"), route("old", "https://example.com/new"), route("new")], "bob"
    )
    assert (counts.created, counts.updated, counts.unchanged) == (1, 1, 1)
    assert actions(store) == [
        ("create", "same", "ann"),
        ("create", "old", "ann"),
        ("update", "old", "bob"),
        ("create", "new", "bob"),
    ]
    old = store.get("old")
    assert old is not None and old.target == "https://example.com/new"
    assert old.created_by == "ann"


def test_put_many_keeps_the_stored_status(store: RouteStore) -> None:
    """An import does not re-enable a disabled route (nor disable an active one)."""
    store.put(route("off"), "ann")
    store.disable("off", "ann")
    counts = store.put_many([route("off", "https://example.com/b")], "bob")
    assert counts.updated == 1
    stored = store.get("off")
    assert stored is not None and stored.status == "disabled"
    assert stored.target == "https://example.com/b"


def test_put_many_validates_everything_before_writing(store: RouteStore) -> None:
    """One invalid route among many: InvalidRouteError, and nothing at all is written."""
    drafts = [route(f"ok-{i}") for i in range(5)] + [route("Bad")]
    with pytest.raises(InvalidRouteError):
        store.put_many(drafts, "ann", chunk=2)  # type: ignore[call-arg]
    assert store.list(include_disabled=True) == [] and store.audit_log() == []


def test_put_many_later_duplicate_wins(store: RouteStore) -> None:
    """Two routes with one code in one import: created, then updated to the later one."""
    counts = store.put_many(
        [
            route("dup"),
            route("dup", "https://example.com/2"),
            route("dup", "https://example.com/2"),
        ],
        "ann",
    )
    assert (counts.created, counts.updated, counts.unchanged) == (1, 1, 1)
    dup = store.get("dup")
    assert dup is not None and dup.target == "https://example.com/2"
    assert [a for a, _, _ in actions(store)] == ["create", "update"]


def test_put_many_in_chunks_writes_and_audits_everything(store: RouteStore) -> None:
    """A chunked import stores every route in code order with one create record each."""
    drafts = [route(f"c{i:03d}") for i in range(23)]
    counts = store.put_many(reversed(drafts), "ann", chunk=5)  # type: ignore[call-arg]
    assert counts.created == 23
    assert [r.code for r in store.list(limit=100)] == [d.code for d in drafts]
    assert len(store.audit_log(limit=100)) == 23
    with pytest.raises(ConfigError, match="chunk"):
        store.put_many([route()], "ann", chunk=0)  # type: ignore[call-arg]
    assert store.put_many([], "ann").created == 0


# -- the change feed (both stores) -------------------------------------------------------


def test_the_change_feed_names_every_change_in_commit_order(place: Place) -> None:
    """What a server follows to keep its routes fresh: each create, update, disable,
    enable, delete and imported route after a position, oldest first, from
    another store object (as another process sees them); unchanged puts are not
    changes."""
    writer, reader = place.open(), place.open()
    writer.put(route("before"), "ann")
    start = reader.feed_position()
    assert reader.changed_since(start) == (start, [])
    writer.put(route("a"), "ann")
    writer.put(route("a", "https://example.com/b"), "ann")
    writer.put(route("a", "https://example.com/b"), "ann")  # identical: no change
    writer.disable("a", "ann")
    writer.enable("a", "ann")
    writer.put_many([route("m1"), route("m2")], "ann")
    writer.delete("before", "ann")
    end, codes = reader.changed_since(start)
    assert codes == ["a", "a", "a", "a", "m1", "m2", "before"]
    assert end == reader.feed_position()
    assert reader.changed_since(end) == (end, [])
    # Paged: the position after each page picks up exactly where it stopped.
    seen, pos = [], start
    while True:
        pos, page = reader.changed_since(pos, limit=3)
        seen += page
        if not page:
            break
    assert seen == codes


def test_the_feed_position_of_an_empty_store_sees_the_first_change(place: Place) -> None:
    store = place.open()
    start = store.feed_position()
    store.put(route("first"), "ann")
    assert store.changed_since(start)[1] == ["first"]


# -- sharing (both stores) -------------------------------------------------------------


def test_two_stores_on_one_place_see_each_others_writes(place: Place) -> None:
    """Two store objects (two connections, as two processes would) share the routes."""
    one, two = place.open(), place.open()
    one.put(route(), "ann")
    assert two.get("promo") == one.get("promo")
    two.disable("promo", "bob")
    seen = one.get("promo")
    assert seen is not None and seen.status == "disabled"
    assert [r.action for r in one.audit_log()] == ["disable", "create"]
    two.put_many([route("other")], "cy")
    assert [r.code for r in one.list(include_disabled=True)] == ["other", "promo"]
    assert one.delete("promo", "ann") and two.get("promo") is None


def test_routes_persist_across_reopening(place: Place) -> None:
    """Routes and audit records are still there after the store is closed and reopened."""
    store = place.open()
    store.put(route(), "ann")
    saved = store.disable("promo", "ann")
    store.close()
    again = place.open()
    assert again.get("promo") == saved
    assert [r.action for r in again.audit_log()] == ["disable", "create"]


_WRITER = """
import sys
from pathlib import Path
from rlinks.routes import Route, SqliteRouteStore
from rlinks.routes.redis_store import RedisRouteStore
where, w = sys.argv[1], sys.argv[2]
store = RedisRouteStore(where) if where.startswith("redis") else SqliteRouteStore(Path(where))
for i in range(25):
    store.put(Route.new(f"w{w}-{i}", "https://example.com/"), f"writer-{w}")
    store.put(Route.new("shared", f"https://example.com/{w}/{i}"), f"writer-{w}")
    if i % 5 == 0:
        store.disable("shared", f"writer-{w}")
        store.enable("shared", f"writer-{w}")
store.close()
"""


def test_writers_in_several_processes_lose_nothing(place: Place) -> None:
    """Four processes changing one route at once: every change lands with exactly one record.

    Each put on `shared` has a new target, so it is a change; disable/enable
    may find another writer's change already there (idempotent, not logged).
    The audit records must match the changes the routes show, one for one.
    """
    place.open().close()  # the schema exists before the writers race
    where = place.url or str(place.root)
    procs = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(_WRITER), where, str(w)])
        for w in range(4)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0, 0]
    store = place.open()
    assert len(store.list(limit=1000, include_disabled=True)) == 101
    log = store.audit_log(limit=1000)
    assert sum(r.action == "create" for r in log) == 101
    shared = [r for r in reversed(log) if r.code == "shared"]
    assert sum(r.action in ("create", "update") for r in shared) == 100  # 1 create + 99 updates
    assert len({r.id for r in log}) == len(log)
    # Replaying the records rebuilds the stored route, each starting where the last ended.
    final = store.get("shared")
    assert final is not None and replay(shared) == route_to_dict(final)


def replay(records: list[AuditRecord]) -> dict[str, Any]:
    """A route rebuilt from its audit records, oldest first; each change must start
    from the value the previous records left (or a change was lost or doubled)."""
    assert records[0].action == "create"
    state = dict(records[0].detail["route"])
    for r in records[1:]:
        for field, change in r.detail["changes"].items():
            assert state[field] == change["from"], (r.id, field)
            state[field] = change["to"]
        if r.action in ("update", "disable", "enable"):
            state["updated_at"] = stamp(r.at_ms)
    return state


# -- Redis only ------------------------------------------------------------------------


def test_keys_follow_the_documented_layout(rstore: RedisRouteStore, redis_place: Place) -> None:
    """Route JSON per code, a zero-score index, a stream of records; all in one slot."""
    saved = rstore.put(route(), "ann")
    rstore.put(route("b"), "ann")
    rstore.disable("b", "bob")
    r: Any = redis_place.client()
    assert r.get("rlinks:{routes}:r:promo") == encode_route(saved)
    assert route_key("promo") == "rlinks:{routes}:r:promo"
    assert r.zrange(INDEX, 0, -1, withscores=True) == [(b"b", 0.0), (b"promo", 0.0)]
    entries = r.xrange(AUDIT)
    assert [e[1][b"action"] for e in entries] == [b"create", b"create", b"disable"]
    assert set(entries[0][1]) == {b"id", b"at_ms", b"actor", b"action", b"code", b"detail"}
    assert r.zrange(audit_key("b"), 0, -1) == [entries[1][0], entries[2][0]]
    assert int(r.get(AUDIT_ID) or 0) == 3
    keys = {k.decode() for k in r.keys("*")}
    assert all(k.startswith("rlinks:{routes}:") for k in keys)
    assert len({key_slot(k.encode()) for k in keys}) == 1
    rstore.delete("b", "cy")
    assert r.get(route_key("b")) is None and r.zrange(INDEX, 0, -1) == [b"promo"]


class CountingRedis(redis.Redis):
    """A client that records the name of every command it sends."""

    sent: list[str]

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]))
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


def test_get_is_one_get(redis_place: Place) -> None:
    """The redirect path's lookup is a single GET round trip, hit or miss."""
    client = CountingRedis(connection_pool=redis.ConnectionPool.from_url(redis_place.url))
    client.sent = []
    store = RedisRouteStore(client)
    try:
        store.put(route(), "ann")
        client.sent.clear()
        assert store.get("promo") is not None and store.get("missing") is None
        assert client.sent == ["GET", "GET"]
    finally:
        store.close()


def test_a_stale_read_writes_nothing_and_the_change_is_retried(
    rstore: RedisRouteStore, redis_place: Place, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A route changed between read and write: the script writes nothing, and the
    change is decided again on the new route (no lost update, no stray record)."""
    rstore.put(route(), "ann")
    other = RedisRouteStore(redis_place.url)
    real_read = rstore._read
    raced: list[Route] = []

    def read_then_race(code: str) -> Any:
        got = real_read(code)
        if not raced:  # another writer changes the route right after our first read
            raced.append(other.put(route(target="https://example.com/other"), "bob"))
        return got

    monkeypatch.setattr(rstore, "_read", read_then_race)
    saved = rstore.put(route(meta=Meta(notes="mine")), "cy")
    other.close()
    assert saved.target == "https://example.com/a" and saved.meta.notes == "mine"
    assert rstore.get("promo") == saved
    log = rstore.audit_log()
    assert [(r.action, r.actor) for r in log] == [
        ("update", "cy"),
        ("update", "bob"),
        ("create", "ann"),
    ]
    # Ours was decided again on bob's route, so its record changes bob's target back.
    assert log[0].detail["changes"]["target"] == {
        "from": "https://example.com/other",
        "to": "https://example.com/a",
    }


def test_a_stale_read_in_an_import_chunk_writes_nothing_of_it(
    rstore: RedisRouteStore, redis_place: Place
) -> None:
    """The script checks every route of a chunk before writing any: one stale, none written."""
    rstore.put(route("a"), "ann")
    stale: bytes | None = redis_place.client().get(route_key("a"))  # type: ignore[assignment]
    rstore.put(route("a", "https://example.com/moved"), "bob")
    new = route("b").replace(created_by="x")
    change_a = redis_store._Change("a", route("a"), "update", {"changes": {}})
    change_b = redis_store._Change("b", new, "create", {"route": {}})
    assert not rstore._commit({"a": stale, "b": None}, [change_a, change_b], "x", 1)
    assert rstore.get("b") is None
    assert len(rstore.audit_log()) == 2


def test_contention_without_end_is_a_clear_error(
    rstore: RedisRouteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """If every try loses the race, the call gives up with an error, having written nothing."""
    monkeypatch.setattr(rstore, "_commit", lambda *a, **k: False)
    with pytest.raises(RlinksError, match="kept changing"):
        rstore.put(route(), "ann")
    assert rstore.get("promo") is None and rstore.audit_log() == []


def test_audit_records_match_mutations_one_for_one(rstore: RedisRouteStore) -> None:
    """Every change adds exactly one record with the next id; no-ops add none."""
    calls: list[Callable[[], object]] = [
        lambda: rstore.put(route(), "ann"),
        lambda: rstore.put(route(), "ann"),  # identical: no change
        lambda: rstore.put(route(target="https://example.com/b"), "ann"),
        lambda: rstore.disable("promo", "ann"),
        lambda: rstore.disable("promo", "ann"),  # already disabled
        lambda: rstore.put_many([route("x"), route("y"), route("x")], "ann"),
        lambda: rstore.delete("x", "ann"),
        lambda: rstore.delete("x", "ann"),  # gone already
    ]
    expected = [1, 0, 1, 1, 0, 2, 1, 0]
    for call, adds in zip(calls, expected, strict=True):
        before = len(rstore.audit_log(limit=1000))
        call()
        assert len(rstore.audit_log(limit=1000)) == before + adds
    ids = [r.id for r in reversed(rstore.audit_log(limit=1000))]
    assert ids == list(range(1, sum(expected) + 1))


def test_list_pages_past_disabled_routes(
    rstore: RedisRouteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Active-only listing reads page after page until it has `limit` routes."""
    monkeypatch.setattr(redis_store, "_PAGE", 3)
    rstore.put_many([route(f"c{i:02d}") for i in range(30)], "ann")
    for i in range(25):
        rstore.disable(f"c{i:02d}", "ann")
    assert [r.code for r in rstore.list(limit=4)] == ["c25", "c26", "c27", "c28"]
    assert [r.code for r in rstore.list(limit=50)] == ["c25", "c26", "c27", "c28", "c29"]
    assert len(rstore.list(limit=50, include_disabled=True)) == 30
    assert [r.code for r in rstore.list(prefix="c1", limit=50, include_disabled=True)] == [
        f"c{i}" for i in range(10, 20)
    ]


def test_an_unreadable_stored_route_is_a_clear_error(
    rstore: RedisRouteStore, redis_place: Place
) -> None:
    """A route from a newer schema raises ConfigError naming the code, on get and list."""
    rstore.put(route(), "ann")
    r: Any = redis_place.client()
    r.set(route_key("promo"), r.get(route_key("promo")).replace(b'"v":1', b'"v":2'))
    with pytest.raises(ConfigError, match=r"'promo'.*newer version"):
        rstore.get("promo")
    with pytest.raises(ConfigError, match=r"'promo'"):
        rstore.list()


def test_an_unreachable_server_is_a_config_error() -> None:
    """A URL nobody answers at fails at once, naming the URL."""
    with pytest.raises(ConfigError, match="cannot reach Redis"):
        RedisRouteStore("redis://127.0.0.1:1/0")


@pytest.fixture(scope="module")
def cluster() -> Iterator[RedisClusterServers]:
    """Three masters joined into a cluster, for this module."""
    servers = RedisClusterServers(Path(tempfile.mkdtemp(prefix="rlinks-routes-cluster-")))
    servers.start()
    yield servers
    servers.stop()


def test_the_store_works_on_a_redis_cluster(cluster: RedisClusterServers) -> None:
    """On a three-node cluster every operation runs (one slot), and a second store sees it."""
    store = RedisRouteStore(cluster.url)
    other = RedisRouteStore(cluster.url)
    try:
        assert type(store._r).__name__ == "RedisCluster"
        store.put(route(), "ann")
        counts = store.put_many([route(f"p{i}") for i in range(20)] + [route()], "ann", chunk=7)
        assert (counts.created, counts.unchanged) == (20, 1)
        other.disable("p3", "bob")
        assert [r.code for r in store.list(prefix="p", limit=5)] == [
            "p0",
            "p1",
            "p10",
            "p11",
            "p12",
        ]
        assert len(store.list(limit=100, include_disabled=True)) == 21
        assert [r.action for r in store.audit_log("p3")] == ["disable", "create"]
        assert len(store.audit_log(limit=100)) == 22
        assert other.delete("promo", "cy") and store.get("promo") is None
        assert store.put(route("p1"), "ann") == other.get("p1")
    finally:
        store.close()
        other.close()
