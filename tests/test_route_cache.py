"""The server's route copy: loaded at start, kept until the change feed names a
code, read on demand otherwise; on a real SQLite route store, edited through a
second store object as another process would."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from rlinks.routes import Route, SqliteRouteStore
from rlinks.server import routecache
from rlinks.server.routecache import UNKNOWN, RouteCache
from rlinks.store.kvmodel import RemoteKV

ERRORS = (sqlite3.Error,)


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[tuple[SqliteRouteStore, SqliteRouteStore]]:
    """(the server's store, another process's store) on one data folder."""
    mine, theirs = SqliteRouteStore(tmp_path), SqliteRouteStore(tmp_path)
    yield mine, theirs
    mine.close()
    theirs.close()


def put(store: SqliteRouteStore, code: str, target: str = "https://example.com/a") -> None:
    store.put(Route.new(code, target), "ann")


def cache_of(store: SqliteRouteStore, kv: RemoteKV, refresh_s: float = 60.0) -> RouteCache:
    return RouteCache(store, kv, refresh_s=refresh_s, store_errors=lambda: ERRORS)


def target(held: object) -> str:
    assert isinstance(held, Route), held
    return held.target


def test_start_loads_every_route_so_redirects_read_nothing(
    stores: tuple[SqliteRouteStore, ...],
) -> None:
    mine, theirs = stores
    for i in range(50):
        put(theirs, f"c{i}")
    theirs.disable("c7", "ann")
    kv = RemoteKV()

    async def go() -> None:
        cache = cache_of(mine, kv)
        await cache.start()
        reads = kv.calls.reads
        for i in range(50):
            assert (await cache.get(f"c{i}")) is not None
        held = cache.cached("c7")
        assert isinstance(held, Route) and held.status == "disabled"
        assert kv.calls.reads == reads  # all held: no read per redirect
        assert cache.cached("nope") is UNKNOWN
        await cache.stop()

    asyncio.run(go())


def test_an_edit_elsewhere_is_seen_after_the_next_refresh(
    stores: tuple[SqliteRouteStore, ...],
) -> None:
    mine, theirs = stores
    put(theirs, "a", "https://example.com/v1")
    put(theirs, "b")

    async def go() -> None:
        cache = cache_of(mine, RemoteKV())
        await cache.start()
        put(theirs, "a", "https://example.com/v2")
        theirs.delete("b", "ann")
        assert target(cache.cached("a")) == "https://example.com/v1"  # not yet
        assert await cache.refresh() == 2
        assert cache.cached("a") is UNKNOWN  # dropped, read again on its next click
        assert (await cache.get("a")) == theirs.get("a")
        assert target(cache.cached("a")) == "https://example.com/v2"
        assert await cache.get("b") is None
        assert await cache.refresh() == 0
        await cache.stop()

    asyncio.run(go())


def test_a_missing_code_is_held_missing_until_it_is_created(
    stores: tuple[SqliteRouteStore, ...],
) -> None:
    mine, theirs = stores
    kv = RemoteKV()

    async def go() -> None:
        cache = cache_of(mine, kv)
        await cache.start()
        assert await cache.get("new") is None
        reads = kv.calls.reads
        assert await cache.get("new") is None
        assert cache.cached("new") is None
        assert kv.calls.reads == reads  # a scan of one missing code reads it once
        put(theirs, "new")
        await cache.refresh()
        assert target(await cache.get("new")) == "https://example.com/a"
        await cache.stop()

    asyncio.run(go())


def test_a_change_during_the_load_is_named_by_the_first_refresh(
    stores: tuple[SqliteRouteStore, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feed position is read before the routes: an edit between the two is
    not lost, it is read again."""
    mine, theirs = stores
    put(theirs, "a", "https://example.com/v1")
    real_list = mine.list

    def list_after_an_edit(*args: object, **kw: object) -> list[Route]:
        put(theirs, "a", "https://example.com/v2")
        return real_list(*args, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(mine, "list", list_after_an_edit)

    async def go() -> None:
        cache = cache_of(mine, RemoteKV())
        await cache.load()
        assert await cache.refresh() == 1
        assert target(await cache.get("a")) == "https://example.com/v2"

    asyncio.run(go())


def test_a_long_feed_is_read_page_by_page(
    stores: tuple[SqliteRouteStore, ...], monkeypatch: pytest.MonkeyPatch
) -> None:
    mine, theirs = stores
    monkeypatch.setattr(routecache, "FEED_PAGE", 4)
    codes = [f"c{i}" for i in range(10)]
    for code in codes:
        put(theirs, code)

    async def go() -> None:
        cache = cache_of(mine, RemoteKV())
        await cache.start()
        for code in codes:
            put(theirs, code, "https://example.com/b")
        assert await cache.refresh() == 10
        assert all(cache.cached(c) is UNKNOWN for c in codes)
        await cache.stop()

    asyncio.run(go())


def test_refresh_zero_reads_the_store_on_every_redirect(
    stores: tuple[SqliteRouteStore, ...],
) -> None:
    mine, theirs = stores
    put(theirs, "a")
    kv = RemoteKV()

    async def go() -> None:
        cache = cache_of(mine, kv, refresh_s=0)
        await cache.start()
        for _ in range(3):
            assert await cache.get("a") is not None
            assert cache.cached("a") is UNKNOWN
        assert kv.calls.reads == 3
        await cache.stop()

    asyncio.run(go())


def test_the_copy_is_bounded(stores: tuple[SqliteRouteStore, ...]) -> None:
    """At most `max_entries` routes are held (the loaded ones stay) and at most
    `max_entries` missing codes (a scan of random codes starts the set over)."""
    mine, theirs = stores
    for i in range(6):
        put(theirs, f"c{i}")

    async def go() -> None:
        cache = RouteCache(
            mine, RemoteKV(), refresh_s=60, max_entries=4, store_errors=lambda: ERRORS
        )
        await cache.start()
        assert [c for c in (f"c{i}" for i in range(6)) if cache.cached(c) is not UNKNOWN] == [
            "c0",
            "c1",
            "c2",
            "c3",
        ]
        assert await cache.get("c5") is not None  # read, answered, not kept
        assert cache.cached("c5") is UNKNOWN
        for i in range(5):
            await cache.get(f"missing{i}")
        assert cache.cached("missing4") is None and cache.cached("missing0") is UNKNOWN
        assert len(cache) <= 8

    asyncio.run(go())


def test_a_store_down_at_start_is_not_fatal(tmp_path: Path) -> None:
    """The load fails (the store is unreadable): redirects read on demand, and the
    next refresh loads everything."""
    store = SqliteRouteStore(tmp_path)
    put(store, "a")
    broken = True
    real_position = store.feed_position

    def position() -> str:
        if broken:
            raise sqlite3.OperationalError("database is locked")
        return real_position()

    store.feed_position = position  # type: ignore[method-assign]

    async def go() -> None:
        nonlocal broken
        cache = cache_of(store, RemoteKV())
        await cache.start()
        assert len(cache) == 0
        broken = False
        await cache.refresh()
        assert target(cache.cached("a")) == "https://example.com/a"
        await cache.stop()

    asyncio.run(go())
    store.close()


def test_the_follower_keeps_serving_through_a_failing_feed(
    stores: tuple[SqliteRouteStore, ...], caplog: pytest.LogCaptureFixture
) -> None:
    """Every `refresh_s` the follower reads the feed on its own; a read that fails
    is logged once, the held routes keep answering, and it catches up after."""
    mine, theirs = stores
    put(theirs, "a", "https://example.com/v1")
    failing = False
    real = mine.changed_since

    def changed_since(position: str, limit: int = 1000) -> tuple[str, list[str]]:
        if failing:
            raise sqlite3.OperationalError("disk I/O error")
        return real(position, limit)

    mine.changed_since = changed_since  # type: ignore[method-assign]

    async def go() -> None:
        nonlocal failing
        cache = cache_of(mine, RemoteKV(), refresh_s=0.02)
        await cache.start()
        failing = True
        put(theirs, "a", "https://example.com/v2")
        await asyncio.sleep(0.2)
        assert target(cache.cached("a")) == "https://example.com/v1"
        failing = False
        for _ in range(100):
            await asyncio.sleep(0.02)
            if cache.cached("a") is UNKNOWN:
                break
        assert target(await cache.get("a")) == "https://example.com/v2"
        await cache.stop()

    asyncio.run(go())
    warnings = [r.getMessage() for r in caplog.records if "route changes" in r.getMessage()]
    assert warnings[0].startswith("could not read route changes")
    assert warnings.count(warnings[0]) == 1
    assert warnings[-1] == "route changes readable again"
