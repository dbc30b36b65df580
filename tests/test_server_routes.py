"""The redirect server's route rules, over real HTTP against `rlinks serve`."""

from __future__ import annotations

import datetime as dt
import re
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import wait_until
from tests.server_helpers import (
    Response,
    Server,
    assert_no_traceback,
    links_cli,
    put_route,
    running_server,
)

TARGET = "https://example.com/landing?utm=spring&x=%20y#top"
LOOP_TARGET = "https://localhost/back-to-us"
ENVELOPE_KEYS = {"code", "status", "message", "details", "ts"}
JSON = {"Accept": "application/json"}


def cli_ok(data: Path, *args: str) -> None:
    r = links_cli(data, *args)
    assert r.returncode == 0, r.stderr


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One server (default flags) over a data folder holding one route per rule."""
    data = tmp_path_factory.mktemp("routes") / "data"
    put_route(data, "active", TARGET)
    put_route(data, "later", "https://example.com/later", expires_at="2999-01-01T00:00:00Z")
    put_route(data, "plain", "http://example.com/plain", https_only=False)
    cli_ok(data, "set", "off", "https://example.com/off")
    cli_ok(data, "disable", "off")
    cli_ok(data, "set", "gone", "https://example.com/gone", "--expires", "2020-01-01T00:00:00Z")
    # The CLI believes it is served elsewhere, so it stores a target on localhost with
    # the no_loop rule still on; the server (default public hosts) sees the loop.
    cli_ok(data, "set", "loop", LOOP_TARGET, "--public-host", "short.example")
    # The owner lifted the rule for this one: it must redirect, loop or not.
    cli_ok(data, "set", "allowed-loop", LOOP_TARGET, "--allow-loop")
    # A route written by "a newer version" (schema v2) that this server cannot decode.
    conn = sqlite3.connect(data / "kv.db")
    with conn:
        conn.execute(
            "INSERT INTO routes (code, route, updated_ms) VALUES (?, ?, 0)",
            ("broken", '{"code": "broken", "target": "https://example.com/", "v": 2}'),
        )
    conn.close()
    with running_server(data) as s:
        yield s


def envelope(r: Response, status: int, code: str) -> dict[str, object]:
    """Check `r` is the JSON error envelope for `status`/`code`; return its inside."""
    assert r.status == status, (r.status, r.body)
    assert r.header("content-type") == "application/json", r.headers
    assert r.header("cache-control") == "no-store"
    body = r.json()
    assert set(body) == {"error"}, body
    err = body["error"]
    assert set(err) == ENVELOPE_KEYS, err
    assert err["code"] == code and err["status"] == status, err
    assert isinstance(err["message"], str) and err["message"], err
    assert isinstance(err["details"], dict), err
    ts = dt.datetime.fromisoformat(err["ts"])
    assert ts.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - ts).total_seconds()) < 60, err["ts"]
    assert_no_traceback(r.body)
    return dict(err)


def html_page(r: Response, status: int) -> str:
    """Check `r` is the small HTML error page for `status`; return its text."""
    assert r.status == status, (r.status, r.body)
    assert r.header("content-type") == "text/html; charset=utf-8", r.headers
    assert r.header("cache-control") == "no-store"
    text = r.body.decode()
    assert text.startswith("<!doctype html>") and f"<h1>{status}</h1>" in text, text
    assert len(r.body) < 2048, "the error page should be small"
    assert_no_traceback(r.body)
    return text


# -- redirects ------------------------------------------------------------------------


def test_active_code_redirects_with_no_store(server: Server) -> None:
    """An active code answers 302 with Location equal to the target and no-store."""
    r = server.get("/active")
    assert r.status == 302
    assert r.header("location") == TARGET
    assert r.header("cache-control") == "no-store"
    assert r.body == b""


def test_head_redirects_like_get(server: Server) -> None:
    """HEAD on an active code gets the same 302 and Location as GET."""
    r = server.request("HEAD", "/active")
    assert (r.status, r.header("location")) == (302, TARGET)


def test_query_string_is_not_part_of_the_code(server: Server) -> None:
    """A query string on the short link neither breaks the lookup nor changes Location."""
    r = server.get("/active?utm_source=mail&x=1")
    assert (r.status, r.header("location")) == (302, TARGET)


def test_future_expiry_and_plain_http_redirect(server: Server) -> None:
    """A code expiring in the future, and an http target allowed by its rules, redirect."""
    assert server.get("/later").header("location") == "https://example.com/later"
    r = server.get("/plain")
    assert (r.status, r.header("location")) == (302, "http://example.com/plain")


def test_redirect_status_301(tmp_path: Path) -> None:
    """`--redirect-status 301` makes an active code answer 301 to the same target."""
    data = tmp_path / "data"
    put_route(data, "perm", TARGET)
    with running_server(data, "--redirect-status", "301", "--hits", "off") as s:
        r = s.get("/perm")
        assert (r.status, r.header("location")) == (301, TARGET)
        assert r.header("cache-control") == "no-store"
        assert s.get("/missing").status == 404


# -- errors ---------------------------------------------------------------------------


def test_missing_code_is_404(server: Server) -> None:
    """A code with no route answers 404 not_found naming the code."""
    err = envelope(server.get("/nope", **JSON), 404, "not_found")
    assert err["details"] == {"code": "nope"}


def test_disabled_code_is_indistinguishable_from_missing(server: Server) -> None:
    """A disabled code answers exactly like a missing one: 404, same message."""
    off = envelope(server.get("/off", **JSON), 404, "not_found")
    missing = envelope(server.get("/never-was", **JSON), 404, "not_found")
    assert off["message"] == missing["message"]
    assert off["details"] == {"code": "off"}


def test_expired_code_is_410(server: Server) -> None:
    """A code past its expires_at answers 410 expired."""
    err = envelope(server.get("/gone", **JSON), 410, "expired")
    assert "2020-01-01" in str(err["message"])


def test_loop_to_our_own_host_is_500(server: Server) -> None:
    """A target on one of the server's public hosts, with no_loop on, answers 500."""
    err = envelope(server.get("/loop", **JSON), 500, "loop_detected")
    assert err["details"] == {"code": "loop"}


def test_loop_allowed_by_its_rule_redirects(server: Server) -> None:
    """A route whose owner lifted no_loop (`--allow-loop`) redirects to our host."""
    r = server.get("/allowed-loop")
    assert (r.status, r.header("location")) == (302, LOOP_TARGET)


def test_undecodable_route_is_500_without_traceback(server: Server) -> None:
    """A route the server cannot read answers a plain 500; the trace goes only to the log."""
    envelope(server.get("/broken", **JSON), 500, "internal_error")
    html_page(server.get("/broken"), 500)
    assert "Traceback" in server.stderr()  # logged for the operator, not shown


@pytest.mark.parametrize(
    "path",
    [
        "/UPPER",
        "/a_b",
        "/a.b",
        "/" + "a" * 65,
        "/",
        "/active/",
        "/active/more",
        "/a%20b",
        "/active%0A",
        "/%C3%A9",
        "/..%2Fetc",
    ],
)
def test_path_that_is_not_a_code_is_404(server: Server, path: str) -> None:
    """A path that is not a valid short code answers 404 and never redirects."""
    r = server.get(path, **JSON)
    envelope(r, 404, "not_found")
    assert r.header("location") is None


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH"])
@pytest.mark.parametrize("path", ["/active", "/nope"])
def test_other_methods_are_405(server: Server, method: str, path: str) -> None:
    """Only GET and HEAD redirect: any other method answers 405, for any code."""
    r = server.request(method, path, headers=JSON, body=b"x=1")
    envelope(r, 405, "method_not_allowed")
    assert r.header("location") is None


@pytest.mark.parametrize(
    ("path", "method", "status"),
    [
        ("/nope", "GET", 404),
        ("/off", "GET", 404),
        ("/gone", "GET", 410),
        ("/loop", "GET", 500),
        ("/a_b", "GET", 404),
        ("/active", "POST", 405),
    ],
)
@pytest.mark.parametrize(
    "accept",
    [None, "text/html", "text/html,application/json;q=0.9", "*/*"],
)
def test_errors_are_html_unless_json_is_preferred(
    server: Server, path: str, method: str, status: int, accept: str | None
) -> None:
    """Without a JSON preference every error is a small HTML page, never a trace."""
    headers = {} if accept is None else {"Accept": accept}
    text = html_page(server.request(method, path, headers=headers), status)
    assert '{"error"' not in text


# -- health and metrics ----------------------------------------------------------------


def test_healthz(server: Server) -> None:
    """/healthz answers 200 JSON with the hit mode."""
    r = server.get("/healthz")
    assert r.status == 200
    assert r.header("content-type") == "application/json"
    assert r.json() == {"status": "ok", "hits": "append"}


def test_metrics_is_prometheus_text_and_counts(server: Server) -> None:
    """/metrics is Prometheus text with the request, append and lag series, and counts."""
    r = server.get("/metrics")
    assert r.status == 200
    assert r.header("content-type") == "text/plain; version=0.0.4; charset=utf-8"
    text = r.body.decode()
    for name in ("rlinks_requests", "rlinks_hits_appended"):
        assert re.search(rf"^# TYPE {name}(_total)? counter$", text, re.M), text
    assert re.search(r'^rlinks_requests_total\{status="200"\} \d', text, re.M), text
    assert re.search(r"^rlinks_hits_appended_total \d", text, re.M), text
    assert "# TYPE rlinks_aggregator_lag_hits gauge" in text
    assert re.search(r'^rlinks_aggregator_lag_hits\{partition="0"\} \d', text, re.M), text
    before = server.metrics()
    assert server.get("/active").status == 302
    assert server.get("/nope").status == 404
    after = server.metrics()

    def delta(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    assert delta('rlinks_requests_total{status="302"}') == 1
    assert delta('rlinks_requests_total{status="404"}') == 1
    assert delta("rlinks_hits_appended_total") == 1
    # The first scrape itself was answered (and counted) before the second one.
    assert delta('rlinks_requests_total{status="200"}') == 1


# -- the store is down -------------------------------------------------------------------


def _corrupt_kv_under_a_commit(data: Path) -> sqlite3.Connection:
    """Overwrite kv.db with garbage in place, then commit a WAL write on top of it.

    The server's connection keeps pages cached while the WAL is unchanged, so
    garbage alone would go unnoticed; the commit makes every reader drop its
    cache, and the route pages it reads next are garbage. Returns the writer
    connection, which the caller closes after the checks.
    """
    writer = sqlite3.connect(data / "kv.db", isolation_level=None)
    writer.execute("BEGIN IMMEDIATE")
    writer.execute("CREATE TABLE IF NOT EXISTS probe (x)")
    with (data / "kv.db").open("r+b") as f:
        size = f.seek(0, 2)
        f.seek(0)
        f.write(b"\xa5" * size)
        f.flush()
    writer.execute("COMMIT")
    return writer


def test_edits_by_another_process_reach_a_running_server(tmp_path: Path) -> None:
    """Workers hold routes in memory and follow the store's change feed, so edits
    by the CLI (another process) reach a running server within --route-cache-s:
    a new target, a code created after it answered 404, a disable."""
    data = tmp_path / "data"
    put_route(data, "moving", "https://example.com/v1")
    flags = ("--route-cache-s", "0.2", "--hits", "off", "--no-aggregate")
    with running_server(data, *flags) as s:
        assert s.get("/moving").header("location") == "https://example.com/v1"
        assert s.get("/made-later").status == 404  # now held as missing
        cli_ok(data, "set", "moving", "https://example.com/v2")
        cli_ok(data, "set", "made-later", "https://example.com/new")
        assert wait_until(
            lambda: s.get("/moving").header("location") == "https://example.com/v2", timeout=10
        )
        assert wait_until(lambda: s.get("/made-later").status == 302, timeout=10)
        cli_ok(data, "disable", "moving")
        assert wait_until(lambda: s.get("/moving").status == 404, timeout=10)


def test_store_unavailable_is_503(tmp_path: Path) -> None:
    """When the route store cannot be read, a redirect answers 503 store_unavailable."""
    data = tmp_path / "data"
    put_route(data, "up", TARGET)
    flags = ("--route-cache-s", "0", "--no-aggregate", "--hits", "off")
    with running_server(data, *flags) as s:
        assert s.get("/up").status == 302
        writer = _corrupt_kv_under_a_commit(data)
        try:
            err = envelope(s.get("/up", **JSON), 503, "store_unavailable")
            assert err["details"] == {}
            html_page(s.get("/up"), 503)
            envelope(s.get("/other", **JSON), 503, "store_unavailable")
            assert s.get("/healthz").status == 200  # the server itself is still up
            assert "store unavailable on /up" in s.stderr()
        finally:
            writer.close()
