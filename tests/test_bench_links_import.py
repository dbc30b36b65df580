"""Bulk route import: `rlinks links import FILE` (checked like `links set`, all
or nothing on a bad line) and `SqliteRouteStore.put_many` under it."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rlinks.errors import InvalidRouteError
from rlinks.routes.model import Route
from rlinks.routes.store import SqliteRouteStore
from tests.conftest import RLINKS, run_cli


def links(
    data: Path, *args: str | Path, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    """`rlinks links ARGS --data DATA` as the actor "importer"."""
    return run_cli(
        "links",
        *args,
        "--data",
        data,
        exe=RLINKS,
        env={"RLINKS_ACTOR": "importer"},
        input=stdin.encode() if stdin is not None else None,
    )


def lines_file(path: Path, records: list[dict[str, Any]]) -> Path:
    """An NDJSON import file of `records`."""
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def stored(data: Path) -> dict[str, Route]:
    """Every route in the data folder, disabled ones too, by code."""
    store = SqliteRouteStore(data)
    try:
        return {r.code: r for r in store.list(limit=100_000, include_disabled=True)}
    finally:
        store.close()


def audit(data: Path) -> list[tuple[str, str, str]]:
    """(action, code, actor) of every audit record, oldest first."""
    store = SqliteRouteStore(data)
    try:
        return [(r.action, r.code, r.actor) for r in reversed(store.audit_log(limit=100_000))]
    finally:
        store.close()


def test_import_creates_every_route_with_its_own_audit_record(tmp_path: Path) -> None:
    """Each line becomes a route stamped with the actor, and one `create` record each."""
    data = tmp_path / "data"
    src = lines_file(
        tmp_path / "in.ndjson",
        [{"code": f"c{i:04d}", "target": f"https://example.com/{i}"} for i in range(2500)],
    )
    done = links(data, "import", src, "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {
        "routes": 2500,
        "created": 2500,
        "updated": 0,
        "unchanged": 0,
    }
    assert "imported 2,500 links" in done.stderr and "2,500 created" in done.stderr
    routes = stored(data)
    assert len(routes) == 2500
    assert routes["c0042"].target == "https://example.com/42"
    assert routes["c0042"].created_by == "importer" and routes["c0042"].status == "active"
    records = audit(data)
    assert len(records) == 2500
    assert set(records) == {("create", f"c{i:04d}", "importer") for i in range(2500)}


def test_rules_and_meta_are_checked_and_normalized_like_set(tmp_path: Path) -> None:
    """Optional rules and meta are taken as `links set` takes its flags: expiry to UTC."""
    data = tmp_path / "data"
    src = lines_file(
        tmp_path / "in.ndjson",
        [
            {
                "code": "old",
                "target": "http://example.com/",
                "rules": {"https_only": False, "expires_at": "2030-01-01T02:00:00+02:00"},
                "meta": {"notes": "spring", "tags": ["a", "b"]},
            }
        ],
    )
    assert links(data, "import", src).returncode == 0
    route = json.loads(links(data, "get", "old", "--json").stdout)
    assert route["rules"] == {
        "https_only": False,
        "no_loop": True,
        "expires_at": "2030-01-01T00:00:00.000Z",
    }
    assert route["meta"] == {"notes": "spring", "tags": ["a", "b"]}


def test_reimport_updates_changed_routes_and_keeps_status_and_creation(tmp_path: Path) -> None:
    """Importing again leaves identical routes alone, updates changed ones (audited as
    updates) and keeps a disabled route disabled, with its creation stamps."""
    data = tmp_path / "data"
    first = [{"code": c, "target": f"https://example.com/{c}"} for c in ("a", "b", "c")]
    assert links(data, "import", lines_file(tmp_path / "1.ndjson", first)).returncode == 0
    assert links(data, "disable", "b").returncode == 0
    created = stored(data)["b"].created_at
    second = [*first[:1], {"code": "b", "target": "https://example.com/new"}, first[2]]
    done = links(data, "import", lines_file(tmp_path / "2.ndjson", second), "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"routes": 3, "created": 0, "updated": 1, "unchanged": 2}
    b = stored(data)["b"]
    assert (b.target, b.status, b.created_at) == ("https://example.com/new", "disabled", created)
    assert audit(data)[-1] == ("update", "b", "importer")
    assert len(audit(data)) == 5  # 3 creates, 1 disable, 1 update


@pytest.mark.parametrize(
    ("bad_line", "message"),
    [
        ('{"code": "API", "target": "https://example.com/"}', "line 3 of "),
        ('{"code": "ok3", "target": "http://example.com/"}', "uses http://"),
        ('{"code": "ok3", "target": "https://127.0.0.1/x"}', "redirect in a loop"),
        ('{"code": "ok3", "target": "https://example.com/", "status": "x"}', "unknown field"),
        ("not json", "is not a link"),
        ('{"code": "ok1", "target": "https://example.com/again"}', "already on line 1"),
    ],
)
def test_a_bad_line_stops_the_import_before_any_write(
    tmp_path: Path, bad_line: str, message: str
) -> None:
    """A line `links set` would refuse, an unknown field, bad JSON or a repeated code
    is an error naming the line, and no route at all is written."""
    data = tmp_path / "data"
    src = tmp_path / "in.ndjson"
    good = [{"code": f"ok{i}", "target": "https://example.com/"} for i in (1, 2)]
    src.write_text("".join(json.dumps(r) + "\n" for r in good) + bad_line + "\n")
    done = links(data, "import", src)
    assert done.returncode == 2, done.stderr
    assert done.stderr.startswith("error: line 3 of ")
    assert message in " ".join(done.stderr.split())
    assert stored(data) == {}


def test_import_reads_stdin_and_skips_blank_lines(tmp_path: Path) -> None:
    """`-` reads the lines from stdin; blank lines are not links."""
    data = tmp_path / "data"
    text = '\n{"code": "s1", "target": "https://example.com/1"}\n\n'
    done = links(data, "import", "-", stdin=text)
    assert done.returncode == 0, done.stderr
    assert set(stored(data)) == {"s1"}


def test_put_many_commits_in_chunks_and_counts(tmp_path: Path) -> None:
    """put_many writes every route whatever the chunk size and reports what it did."""
    store = SqliteRouteStore(tmp_path)
    routes = [Route.new(f"p{i}", f"https://example.com/{i}") for i in range(10)]
    counts = store.put_many(routes, "bulk", chunk=3)
    assert (counts.created, counts.updated, counts.unchanged) == (10, 0, 0)
    again = store.put_many([*routes[:9], routes[9].replace(target="https://example.com/x")], "bulk")
    assert (again.created, again.updated, again.unchanged) == (0, 1, 9)
    assert len(store.list(limit=100)) == 10
    assert len(store.audit_log(limit=100)) == 11
    store.close()


def test_put_many_validates_everything_before_writing(tmp_path: Path) -> None:
    """One invalid route among many makes put_many write none of them."""
    store = SqliteRouteStore(tmp_path)
    routes = [Route.new(f"v{i}", "https://example.com/") for i in range(5)]
    routes.insert(3, Route.new("bad code", "https://example.com/"))
    with pytest.raises(InvalidRouteError):
        store.put_many(routes, "bulk", chunk=2)
    assert store.list(limit=100) == [] and store.audit_log() == []
    store.close()
