"""The admin API under /api/links, over real HTTP against `rlinks serve`."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.server_helpers import (
    Response,
    Server,
    assert_no_traceback,
    links_cli,
    running_server,
    wait_for_lag_zero,
)

TOKEN = "s3cret-admin-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENVELOPE_KEYS = {"code", "status", "message", "details", "ts"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server with the admin API on, a long route cache and a fast BH2 window."""
    data = tmp_path_factory.mktemp("admin") / "data"
    flags = ("--route-cache-s", "60", "--window", "0.2")
    with running_server(data, *flags, env={"RLINKS_ADMIN_TOKEN": TOKEN}) as s:
        yield s


def api(
    server: Server,
    method: str,
    path: str,
    body: Any = None,
    *,
    raw: bytes | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """One authorized admin call; `body` is sent as JSON (or `raw` as is)."""
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    h = {**AUTH, **({"Content-Type": "application/json"} if data is not None else {})}
    return server.request(method, path, headers={**h, **(headers or {})}, body=data)


def error(r: Response, status: int, code: str) -> dict[str, Any]:
    """Check `r` is the JSON error envelope (APIs always answer JSON); its inside."""
    assert r.status == status, (r.status, r.body)
    assert r.header("content-type") == "application/json", r.headers
    body = r.json()
    assert set(body) == {"error"} and set(body["error"]) == ENVELOPE_KEYS, body
    err: dict[str, Any] = body["error"]
    assert err["status"] == status and err["code"] == code, err
    assert_no_traceback(r.body)
    return err


def put(server: Server, code: str, target: str, **fields: Any) -> Response:
    return api(server, "PUT", f"/api/links/{code}", {"target": target, **fields})


# -- switched off, and authorization -------------------------------------------------------

API_CALLS = [
    ("GET", "/api/links"),
    ("GET", "/api/links/"),
    ("GET", "/api/links/promo"),
    ("PUT", "/api/links/promo"),
    ("DELETE", "/api/links/promo"),
    ("GET", "/api/links/promo/stats"),
    ("GET", "/api/other"),
    ("POST", "/api/links"),
]


def test_without_a_token_every_api_path_is_404(tmp_path: Path) -> None:
    """Without RLINKS_ADMIN_TOKEN the API does not exist: every /api path is 404."""
    with running_server(tmp_path / "data", "--no-aggregate") as s:
        for method, path in API_CALLS:
            body = json.dumps({"target": "https://example.com/"}).encode()
            for headers in ({}, AUTH, {"Authorization": "Bearer "}):
                r = s.request(method, path, headers=headers, body=body)
                error(r, 404, "not_found")
        assert s.get("/promo").status == 404  # and nothing was created


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "",
        f"Bearer {TOKEN}x",
        f"Bearer {TOKEN[:-1]}",
        f"bearer {TOKEN}",
        TOKEN,
        f"Basic {TOKEN}",
        f"Bearer  {TOKEN}",
        f"Bearer {TOKEN} ",
        "Bearer",
    ],
)
@pytest.mark.parametrize(("method", "path"), API_CALLS)
def test_missing_or_wrong_token_is_401(
    server: Server, method: str, path: str, authorization: str | None
) -> None:
    """Every API call without exactly `Bearer <token>` is refused with 401."""
    headers = {} if authorization is None else {"Authorization": authorization}
    body = json.dumps({"target": "https://example.com/unauthorized"}).encode()
    error(server.request(method, path, headers=headers, body=body), 401, "unauthorized")


def test_unauthorized_put_changes_nothing(server: Server) -> None:
    """A PUT with a wrong token neither creates a route nor redirects."""
    body = json.dumps({"target": "https://example.com/sneaky"}).encode()
    r = server.request(
        "PUT", "/api/links/sneaky", headers={"Authorization": "Bearer no"}, body=body
    )
    error(r, 401, "unauthorized")
    assert server.get("/sneaky").status == 404
    error(api(server, "GET", "/api/links/sneaky"), 404, "not_found")


# -- create, read, replace, list, delete -----------------------------------------------------


def test_put_creates_then_replaces(server: Server) -> None:
    """PUT answers 201 for a new code, then 200 for a replacement that keeps created_*."""
    r = put(server, "crud-a", "https://example.com/one", meta={"notes": "n", "tags": ["x"]})
    assert r.status == 201, r.body
    created = r.json()
    assert created["code"] == "crud-a" and created["target"] == "https://example.com/one"
    assert created["status"] == "active" and created["created_by"] == "api" and created["v"] == 1
    assert created["meta"] == {"notes": "n", "tags": ["x"]}
    assert created["rules"] == {"https_only": True, "no_loop": True, "expires_at": None}

    r = put(server, "crud-a", "https://example.com/two")
    assert r.status == 200, r.body
    replaced = r.json()
    assert replaced["target"] == "https://example.com/two"
    assert replaced["meta"] == {"notes": None, "tags": []}
    assert replaced["created_at"] == created["created_at"]
    assert replaced["created_by"] == "api"

    got = api(server, "GET", "/api/links/crud-a")
    assert got.status == 200 and got.json() == replaced
    assert got.header("cache-control") == "no-store"

    again = put(server, "crud-a", "https://example.com/two")  # identical: no change
    assert again.status == 200 and again.json() == replaced


def test_put_with_rules_and_http_target(server: Server) -> None:
    """PUT honors rules: https_only false allows http, expires_at is stored in UTC."""
    rules = {"https_only": False, "expires_at": "2999-06-01T12:00:00+02:00"}
    r = put(server, "crud-rules", "http://example.com/plain", rules=rules)
    assert r.status == 201, r.body
    assert r.json()["rules"] == {
        "https_only": False,
        "no_loop": True,
        "expires_at": "2999-06-01T10:00:00.000Z",
    }
    redirect = server.get("/crud-rules")
    assert (redirect.status, redirect.header("location")) == (302, "http://example.com/plain")


def test_get_missing_is_404(server: Server) -> None:
    """GET of a code with no route is 404 not_found."""
    error(api(server, "GET", "/api/links/crud-none"), 404, "not_found")


def test_list_with_prefix_and_limit(server: Server) -> None:
    """GET /api/links lists routes in code order, filtered by prefix, cut at limit."""
    for code in ("lst-c", "lst-a", "lst-b", "lsx-a"):
        assert put(server, code, f"https://example.com/{code}").status == 201
    assert put(server, "lst-d", "https://example.com/d", status="disabled").status == 201

    def codes(query: str) -> list[str]:
        r = api(server, "GET", f"/api/links?{query}")
        assert r.status == 200, r.body
        return [link["code"] for link in r.json()["links"]]

    assert codes("prefix=lst-") == ["lst-a", "lst-b", "lst-c"]
    assert codes("prefix=lst-&limit=2") == ["lst-a", "lst-b"]
    assert codes("prefix=lst-&limit=1") == ["lst-a"]
    assert codes("prefix=lst-&show_disabled=1") == ["lst-a", "lst-b", "lst-c", "lst-d"]
    assert codes("prefix=ls") == ["lst-a", "lst-b", "lst-c", "lsx-a"]
    assert codes("prefix=zzz-none") == []
    listed = api(server, "GET", "/api/links/?prefix=lst-a").json()["links"]
    assert listed == [api(server, "GET", "/api/links/lst-a").json()]


@pytest.mark.parametrize("limit", ["0", "-1", "1001", "abc", "1.5"])
def test_list_with_a_bad_limit_is_400(server: Server, limit: str) -> None:
    """A limit outside 1..1000 is refused with 400."""
    error(api(server, "GET", f"/api/links?limit={limit}"), 400, "bad_request")


def test_delete_then_404(server: Server) -> None:
    """DELETE answers 204 with no body; then GET, DELETE and the redirect are 404."""
    assert put(server, "crud-del", "https://example.com/del").status == 201
    assert server.get("/crud-del").status == 302  # cached by the worker now
    r = api(server, "DELETE", "/api/links/crud-del")
    assert r.status == 204 and r.body == b""
    error(api(server, "GET", "/api/links/crud-del"), 404, "not_found")
    error(api(server, "DELETE", "/api/links/crud-del"), 404, "not_found")
    assert server.get("/crud-del").status == 404


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/api/links/crud-x"),
        ("PATCH", "/api/links/crud-x"),
        ("PUT", "/api/links"),
        ("DELETE", "/api/links"),
    ],
)
def test_other_methods_are_405(server: Server, method: str, path: str) -> None:
    """Methods the API does not offer on a path answer 405."""
    r = api(server, method, path, {"target": "https://example.com/x"})
    error(r, 405, "method_not_allowed")


@pytest.mark.parametrize(
    "path",
    ["/api/nope", "/api/links/crud-x/other", "/api/links/crud-x/stats/more", "/api/links/a/b/c"],
)
def test_unknown_api_paths_are_404(server: Server, path: str) -> None:
    """Paths outside the API's shape answer 404 (when authorized)."""
    error(api(server, "GET", path), 404, "not_found")


# -- stats --------------------------------------------------------------------------------


def test_stats_of_a_code(server: Server) -> None:
    """GET .../stats gives hits, first/last hit, daily counts, as_of and lag once BH2 ran."""
    assert put(server, "stats-a", "https://example.com/s").status == 201
    empty = api(server, "GET", "/api/links/stats-a/stats")
    assert empty.status == 200
    assert empty.json()["hits"] == 0 and empty.json()["daily"] == {}
    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    for _ in range(7):
        assert server.get("/stats-a").status == 302
    after = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    appended = int(server.metrics()["rlinks_hits_appended_total"])  # every hit so far
    wait_for_lag_zero(server.data, appended)
    r = api(server, "GET", "/api/links/stats-a/stats")
    assert r.status == 200 and r.header("cache-control") == "no-store"
    stats = r.json()
    assert set(stats) >= {
        "code",
        "hits",
        "first_hit",
        "last_hit",
        "daily",
        "as_of",
        "lag_hits",
        "lag_s",
    }, stats
    assert stats["code"] == "stats-a" and stats["hits"] == 7
    first = dt.datetime.fromisoformat(stats["first_hit"])
    last = dt.datetime.fromisoformat(stats["last_hit"])
    assert before <= first <= last <= after, stats
    assert sum(stats["daily"].values()) == 7
    assert set(stats["daily"]) <= {first.date().isoformat(), last.date().isoformat()}
    assert stats["lag_hits"] == 0 and stats["lag_s"] == 0
    assert dt.datetime.fromisoformat(stats["as_of"]) >= last


def test_stats_of_an_unknown_code_is_zero(server: Server) -> None:
    """Stats of a code that was never hit are zero, not an error."""
    r = api(server, "GET", "/api/links/stats-never/stats")
    assert r.status == 200
    body = r.json()
    assert (body["hits"], body["first_hit"], body["last_hit"], body["daily"]) == (0, None, None, {})


# -- validation ----------------------------------------------------------------------------

BAD_TARGETS = {
    "javascript": "javascript:alert(1)",
    "javascript-slashes": "javascript://example.com/%0Aalert(1)",
    "data": "data:text/html;base64,PHNjcmlwdD5hbGVydCgxKTwvc2NyaXB0Pg==",
    "file": "file:///etc/passwd",
    "ftp": "ftp://example.com/file",
    "leading-space": " https://example.com/",
    "trailing-space": "https://example.com/ ",
    "inner-space": "https://example.com/a b",
    "nul": "https://example.com/\x00",
    "bell-in-host": "https://exa\x07mple.com/",
    "del": "https://example.com/\x7f",
    "tab-inside": "https://exam\tple.com/",
    "newline-inside": "https://example.com/\nSet-Cookie: x=1",
    "crlf-inside": "https://example.com/\r\nLocation: https://evil.example/",
    "nbsp": "https://example.com/\u00a0",
    "zero-width": "https://exa\u200bmple.com/",
    "user-pass": "https://user:pass@example.com/",
    "user-only": "https://evil.example@example.com/",
    "loop-localhost": "https://localhost/x",
    "loop-127": "https://127.0.0.1:8080/x",
    "loop-upper-dot": "https://LOCALHOST./x",
    "loop-decimal-ip": "https://2130706433/",
    "loop-hex-ip": "https://0x7f.1/",
    "loop-v4-mapped": "https://[::ffff:127.0.0.1]/",
    "loop-fullwidth": "https://ｌｏｃａｌｈｏｓｔ/",
    "too-long": "https://example.com/" + "a" * 2030,
    "http-without-rule": "http://example.com/",
    "empty": "",
    "no-scheme": "example.com/path",
    "no-slashes": "https:example.com",
    "backslash": "https:\\\\evil.example/",
    "no-host": "https:///path",
    "bad-port": "https://example.com:99999/",
}


@pytest.mark.parametrize("name", sorted(BAD_TARGETS))
def test_invalid_targets_are_422_with_the_field(server: Server, name: str) -> None:
    """A target that is unsafe or malformed is refused with 422, field "target", nothing stored."""
    target = BAD_TARGETS[name]
    if name == "too-long":
        assert len(target) > 2048
    code = f"bad-{name}"
    err = error(put(server, code, target), 422, "invalid_route")
    assert err["details"] == {"field": "target"}, err
    error(api(server, "GET", f"/api/links/{code}"), 404, "not_found")
    assert server.get(f"/{code}").status == 404


def test_the_same_targets_pass_when_the_rules_allow_them(server: Server) -> None:
    """Controls: http with https_only false, a loop with no_loop false, 2048 chars exactly."""
    r = put(server, "ok-http", "http://example.com/", rules={"https_only": False})
    assert r.status == 201, r.body
    r = put(server, "ok-loop", "https://localhost/x", rules={"no_loop": False})
    assert r.status == 201, r.body
    longest = "https://example.com/" + "a" * (2048 - len("https://example.com/"))
    r = put(server, "ok-long", longest)
    assert r.status == 201, r.body
    assert server.get("/ok-long").header("location") == longest


def test_loop_to_the_port_we_serve_on_is_refused(server: Server) -> None:
    """A target on our own host and port is a loop (422), whatever the scheme."""
    for target in (f"http://127.0.0.1:{server.port}/x", f"https://localhost:{server.port}/"):
        err = error(
            put(server, "loop-port", target, rules={"https_only": False}), 422, "invalid_route"
        )
        assert err["details"] == {"field": "target"}


@pytest.mark.parametrize(
    "raw",
    [
        b'{"target": "https://example.com/", "extra": 1}',
        b'{"target": "https://example.com/", "code": "other"}',
        b'{"target": "https://example.com/", "created_by": "mallory"}',
        b'{"url": "https://example.com/"}',
        b'{"target": 42}',
        b'{"target": "https://example.com/", "rules": "strict"}',
        b"[]",
        b"not json",
        b"",
        b'{"target": "https://example.com/"',
    ],
)
def test_bodies_that_are_not_a_route_are_400(server: Server, raw: bytes) -> None:
    """A body with unknown or missing fields, wrong types or bad JSON is 400, nothing stored."""
    error(api(server, "PUT", "/api/links/body-bad", raw=raw), 400, "bad_request")
    error(api(server, "GET", "/api/links/body-bad"), 404, "not_found")


@pytest.mark.parametrize(
    ("where", "body"),
    [
        (
            "rules",
            {"target": "https://example.com/", "rules": {"expire_at": "2000-01-01T00:00:00Z"}},
        ),
        ("meta", {"target": "https://example.com/", "meta": {"note": "typo of notes"}}),
    ],
)
def test_unknown_nested_fields_are_400(server: Server, where: str, body: dict[str, Any]) -> None:
    """An unknown field inside rules or meta is refused too, not silently dropped."""
    error(api(server, "PUT", f"/api/links/nested-{where}", body), 400, "bad_request")


def test_bad_status_and_expiry_are_422(server: Server) -> None:
    """status must be active|disabled and expires_at RFC 3339 with an offset (422 + field)."""
    err = error(put(server, "field-x", "https://example.com/", status="gone"), 422, "invalid_route")
    assert err["details"] == {"field": "status"}
    rules = {"expires_at": "2030-01-01T00:00:00"}
    err = error(put(server, "field-x", "https://example.com/", rules=rules), 422, "invalid_route")
    assert err["details"] == {"field": "expires_at"}


def test_body_over_64_kib_is_413(server: Server) -> None:
    """A PUT body over 64 KiB is refused with 413."""
    raw = json.dumps({"target": "https://example.com/", "meta": {"notes": "x" * 70_000}}).encode()
    error(api(server, "PUT", "/api/links/big-body", raw=raw), 413, "too_large")


@pytest.mark.parametrize("code", ["api", "admin", "www", "healthz", "metrics"])
def test_reserved_codes_are_refused(server: Server, code: str) -> None:
    """PUT of a reserved code is 422 (field "code"); a lookup of it is just 404."""
    err = error(put(server, code, "https://example.com/"), 422, "invalid_route")
    assert err["details"] == {"field": "code"}
    error(api(server, "GET", f"/api/links/{code}"), 404, "not_found")


@pytest.mark.parametrize("code", ["UPPER", "a_b", "a.b", "a" * 65, "%C3%A9"])
def test_invalid_codes_are_refused(server: Server, code: str) -> None:
    """PUT (and GET) with a code outside [a-z0-9-]{1,64} is 422 with field "code"."""
    for method in ("PUT", "GET"):
        r = api(server, method, f"/api/links/{code}", {"target": "https://example.com/"})
        assert error(r, 422, "invalid_route")["details"] == {"field": "code"}


# -- edits reach the redirect path at once ------------------------------------------------


def test_edit_is_visible_to_the_next_redirect(server: Server) -> None:
    """An API edit (target, disable, delete) is seen by the very next redirect, cache or not."""
    assert put(server, "edit-me", "https://example.com/v1").status == 201
    assert server.get("/edit-me").header("location") == "https://example.com/v1"
    assert put(server, "edit-me", "https://example.com/v2").status == 200
    assert server.get("/edit-me").header("location") == "https://example.com/v2"
    assert put(server, "edit-me", "https://example.com/v2", status="disabled").status == 200
    assert server.get("/edit-me").status == 404
    assert put(server, "edit-me", "https://example.com/v3").status == 200
    assert server.get("/edit-me").header("location") == "https://example.com/v3"
    past = {"expires_at": "2020-01-01T00:00:00Z"}
    assert put(server, "edit-me", "https://example.com/v3", rules=past).status == 200
    assert server.get("/edit-me").status == 410
    assert api(server, "DELETE", "/api/links/edit-me").status == 204
    assert server.get("/edit-me").status == 404
    # A code that was looked up while missing (the miss is cached) works once created.
    assert server.get("/edit-new").status == 404
    assert put(server, "edit-new", "https://example.com/new").status == 201
    assert server.get("/edit-new").header("location") == "https://example.com/new"


def test_edit_outside_the_api_waits_for_the_route_cache(server: Server) -> None:
    """Control for the test above: an edit by the CLI is seen only at the worker's
    next read of the change feed (every 60 s here)."""
    assert put(server, "edit-cli", "https://example.com/v1").status == 201
    assert server.get("/edit-cli").header("location") == "https://example.com/v1"
    r = links_cli(server.data, "set", "edit-cli", "https://example.com/v2")
    assert r.returncode == 0, r.stderr
    assert api(server, "GET", "/api/links/edit-cli").json()["target"] == "https://example.com/v2"
    # The worker still holds v1: only its own edits are dropped at once.
    assert server.get("/edit-cli").header("location") == "https://example.com/v1"


def test_an_edit_waiting_for_the_store_holds_no_redirect(tmp_path: Path) -> None:
    """An edit waits for kv.db's write lock (held here by another connection,
    as the aggregator holds it while it applies a batch). Redirects are
    answered meanwhile, and the edit lands once the lock is free."""
    data = tmp_path / "data"
    with running_server(data, "--no-aggregate", env={"RLINKS_ADMIN_TOKEN": TOKEN}) as s:
        assert api(s, "PUT", "/api/links/held", {"target": "https://example.com/a"}).status == 201
        assert s.get("/held").status == 302
        writer = sqlite3.connect(data / "kv.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # the store's write lock
        edits: list[Response] = []
        edit = threading.Thread(
            target=lambda: edits.append(
                api(s, "PUT", "/api/links/new", {"target": "https://example.com/b"})
            )
        )
        slowest = 0.0
        try:
            edit.start()
            time.sleep(0.3)  # the edit is waiting for the lock by now
            until = time.monotonic() + 2.0
            while time.monotonic() < until:
                started = time.monotonic()
                assert s.get("/held").status == 302
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.02)
            assert not edits, "the edit went through while the store was locked"
        finally:
            writer.rollback()
            writer.close()
        edit.join(timeout=15)
        assert [r.status for r in edits] == [201]
        assert slowest < 1.0, f"a redirect waited {slowest:.2f} s behind the edit"
        assert s.get("/new").status == 302
