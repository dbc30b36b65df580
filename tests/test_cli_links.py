"""`rlinks links` run as a real program: every command, with and without --json."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import BASE_MS, MS_PER_DAY, RLINKS, append_all, hit, run_cli

URL = "https://example.com/spring-sale"


def links(
    data: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`rlinks links ARGS --data DATA` with the actor fixed to "tester" unless env says."""
    return run_cli(
        "links", *args, "--data", data, exe=RLINKS, env={"RLINKS_ACTOR": "tester", **(env or {})}
    )


def ok(data: Path, *args: str, env: dict[str, str] | None = None) -> str:
    """Run `rlinks links ARGS`, require exit 0, return stdout."""
    r = links(data, *args, env=env)
    assert r.returncode == 0, r.stderr
    return r.stdout


def as_json(data: Path, *args: str) -> Any:
    """Run `rlinks links ARGS --json` and parse its stdout."""
    return json.loads(ok(data, *args, "--json"))


def fails(data: Path, *args: str, code: int = 2, env: dict[str, str] | None = None) -> str:
    """Run `rlinks links ARGS`, require exit `code` and one `error:` line; return it."""
    r = links(data, *args, env=env)
    assert r.returncode == code, (r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    return lines[0]


@pytest.fixture
def data(tmp_path: Path) -> Path:
    """A fresh data folder for the CLI."""
    return tmp_path / "data"


# -- set / get ------------------------------------------------------------------------


def test_set_then_get(data: Path) -> None:
    """set creates a link; get shows it as text and as schema v1 JSON."""
    r = links(data, "set", "promo", URL, "--note", "spring", "--tag", "a", "--tag", "b")
    assert r.returncode == 0 and "created promo -> " + URL in r.stderr
    text = ok(data, "get", "promo")
    assert URL in text and "active" in text and "a, b" in text and "by tester" in text
    route = as_json(data, "get", "promo")
    assert route["code"] == "promo" and route["target"] == URL and route["v"] == 1
    assert route["rules"] == {"https_only": True, "no_loop": True, "expires_at": None}
    assert route["meta"] == {"notes": "spring", "tags": ["a", "b"]}
    assert route["created_by"] == "tester" and route["created_at"].endswith("Z")


def test_set_with_json_prints_the_stored_route(data: Path) -> None:
    """set --json prints the route as stored (normalized expiry, rules from the flags)."""
    route = as_json(
        data,
        "set",
        "old",
        "http://example.com/",
        "--no-https",
        "--allow-loop",
        "--expires",
        "2030-01-01T02:00:00+02:00",
    )
    assert route["rules"] == {
        "https_only": False,
        "no_loop": False,
        "expires_at": "2030-01-01T00:00:00.000Z",
    }


def test_set_again_updates_and_says_what_changed(data: Path) -> None:
    """Setting an existing code updates it, keeps its creation stamps, names the changes."""
    first = as_json(data, "set", "promo", URL)
    r = links(data, "set", "promo", URL + "-2", "--actor", "ann")
    assert r.returncode == 0 and "updated promo: target" in r.stderr
    second = as_json(data, "get", "promo")
    assert second["target"] == URL + "-2"
    assert (second["created_at"], second["created_by"]) == (first["created_at"], "tester")
    r = links(data, "set", "promo", URL + "-2")
    assert "promo unchanged" in r.stderr


def test_get_of_a_missing_code_exits_4(data: Path) -> None:
    """get on a code that has no link prints one error line and exits 4."""
    assert "no route has the code 'ghost'" in fails(data, "get", "ghost", code=4)


# -- list -----------------------------------------------------------------------------


def test_list_with_prefix_limit_and_disabled(data: Path) -> None:
    """list is in code order; --prefix filters, --limit caps, --show-disabled adds disabled."""
    for code in ("b", "a", "promo-1", "promo-2", "promo-3"):
        ok(data, "set", code, f"https://example.com/{code}")
    ok(data, "disable", "promo-2")
    assert [r["code"] for r in as_json(data, "list")] == ["a", "b", "promo-1", "promo-3"]
    assert [r["code"] for r in as_json(data, "list", "--prefix", "promo")] == ["promo-1", "promo-3"]
    assert [r["code"] for r in as_json(data, "list", "--limit", "2")] == ["a", "b"]
    every = as_json(data, "list", "--show-disabled")
    assert [(r["code"], r["status"]) for r in every][2:4] == [
        ("promo-1", "active"),
        ("promo-2", "disabled"),
    ]
    text = ok(data, "list", "--limit", "2")
    assert "https://example.com/a" in text and "promo-1" not in text
    assert "more links after b" in text
    assert "disabled" in ok(data, "list", "--show-disabled")


def test_list_of_nothing(data: Path) -> None:
    """An empty list says so, and is [] in JSON."""
    assert "no links" in ok(data, "list")
    assert as_json(data, "list", "--prefix", "x") == []


# -- disable / enable / delete --------------------------------------------------------


def test_disable_enable_delete(data: Path) -> None:
    """disable hides a link, enable brings it back, delete removes it (then get exits 4)."""
    ok(data, "set", "promo", URL)
    assert as_json(data, "disable", "promo")["status"] == "disabled"
    assert "disabled" in ok(data, "get", "promo")
    assert "promo was already disabled" in links(data, "disable", "promo").stderr
    assert as_json(data, "enable", "promo")["status"] == "active"
    assert as_json(data, "delete", "promo") == {"code": "promo", "deleted": True}
    fails(data, "get", "promo", code=4)


def test_changing_a_missing_code_exits_4(data: Path) -> None:
    """disable, enable and delete of a code with no link exit 4 with one error line."""
    for command in ("disable", "enable", "delete"):
        assert "'ghost'" in fails(data, command, "ghost", code=4)


def test_set_keeps_a_disabled_link_disabled(data: Path) -> None:
    """Updating a disabled link's target leaves it disabled, and says how to enable it."""
    ok(data, "set", "promo", URL)
    ok(data, "disable", "promo")
    r = links(data, "set", "promo", URL + "-2")
    assert "links enable promo" in r.stderr
    assert as_json(data, "get", "promo")["status"] == "disabled"


# -- audit ----------------------------------------------------------------------------


def test_audit_records_every_change_with_its_actor(data: Path) -> None:
    """Each change is in the audit log, newest first, with --actor, RLINKS_ACTOR or the user."""
    ok(data, "set", "promo", URL, "--actor", "ann")
    ok(data, "set", "promo", URL + "-2", env={"RLINKS_ACTOR": "bob"})
    ok(data, "disable", "promo")
    ok(data, "enable", "promo")
    ok(data, "set", "other", URL)
    ok(data, "delete", "promo")
    records = as_json(data, "audit", "promo")
    assert [(r["action"], r["actor"]) for r in records] == [
        ("delete", "tester"),
        ("enable", "tester"),
        ("disable", "tester"),
        ("update", "bob"),
        ("create", "ann"),
    ]
    assert records[3]["detail"]["changes"]["target"] == {"from": URL, "to": URL + "-2"}
    assert records[0]["detail"]["route"]["target"] == URL + "-2"
    assert all(r["at"].endswith("Z") for r in records)
    assert len(as_json(data, "audit")) == 6
    assert len(as_json(data, "audit", "--limit", "2")) == 2
    text = ok(data, "audit", "promo")
    assert "delete" in text and "ann" in text and "bob" in text and "other" not in text


def test_audit_actor_defaults_to_the_os_user(data: Path) -> None:
    """Without --actor or RLINKS_ACTOR the OS user name is recorded."""
    r = run_cli(
        "links",
        "set",
        "promo",
        URL,
        "--data",
        data,
        exe=RLINKS,
        env={"USER": "osuser", "LOGNAME": "osuser"},
    )
    assert r.returncode == 0, r.stderr
    assert as_json(data, "audit")[0]["actor"] == "osuser"


def test_audit_of_nothing(data: Path) -> None:
    """An empty audit log says so."""
    assert "no changes recorded" in ok(data, "audit")


# -- stats ----------------------------------------------------------------------------


def test_stats_show_counts_days_and_freshness(data: Path) -> None:
    """stats reads the BH2 snapshot: hits, first/last, per day, as of, and the lag."""
    ok(data, "set", "promo", URL)
    hits = [
        hit("h1", BASE_MS + 1000, "promo"),
        hit("h2", BASE_MS + 2000, "promo"),
        hit("h3", BASE_MS + MS_PER_DAY + 5, "promo"),
        hit("h4", BASE_MS + 3000, "other"),
    ]
    append_all(data, hits)
    assert run_cli("run", "--data", data, "--once").returncode == 0
    stats = as_json(data, "stats", "promo")
    assert stats["code"] == "promo" and stats["hits"] == 3
    assert stats["first_hit"] == "2025-11-24T00:00:01.000Z"
    assert stats["last_hit"] == "2025-11-25T00:00:00.005Z"
    assert stats["daily"] == {"2025-11-24": 2, "2025-11-25": 1}
    assert stats["as_of"] == "2025-11-25T00:00:00.005Z"
    assert (stats["lag_hits"], stats["lag_s"]) == (0, 0.0)
    text = ok(data, "stats", "promo")
    assert "promo: 3 hits" in text and "2025-11-24" in text and "lag 0 hits" in text

    append_all(data, [hit("h5", BASE_MS + 2 * MS_PER_DAY, "promo")])  # logged, not yet counted
    stats = as_json(data, "stats", "promo")
    assert stats["hits"] == 3 and stats["lag_hits"] == 1 and stats["lag_s"] > 0


def test_stats_of_a_code_without_hits(data: Path) -> None:
    """A link with no hits (and no log yet) has 0 hits, as of never."""
    ok(data, "set", "promo", URL)
    stats = as_json(data, "stats", "promo")
    assert stats == {
        "code": "promo",
        "hits": 0,
        "first_hit": None,
        "last_hit": None,
        "daily": {},
        "as_of": None,
        "lag_hits": 0,
        "lag_s": 0.0,
    }
    assert "promo: 0 hits" in ok(data, "stats", "promo")


def test_stats_of_a_code_without_a_link_notes_it(data: Path) -> None:
    """Stats outlive a deleted link; stats says the code has no link."""
    r = links(data, "stats", "ghost")
    assert r.returncode == 0 and "no link has the code ghost" in r.stderr


# -- errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("set", "promo", "javascript:alert(1)"), "scheme javascript:"),
        (("set", "promo", " https://example.com/"), "starts with whitespace"),
        (("set", "promo", "https://example.com/a\tb"), "a tab"),
        (("set", "promo", "https://u:p@example.com/"), "user info"),
        (("set", "promo", "http://example.com/"), "--no-https"),
        (("set", "promo", "https://localhost:8000/"), "loop"),
        (("set", "promo", "https://LOCALHOST./"), "loop"),
        (("set", "promo", "https://127.1/"), "loop"),
        (("set", "api", URL), "reserved"),
        (("set", "Promo", URL), "use 'promo'"),
        (("set", "promo", URL, "--expires", "2030-01-01"), "no UTC offset"),
        (("set", "promo", URL, "--tag", "a b"), "tag"),
        (("get", "a_b"), "contains '_'"),
    ],
)
def test_bad_input_prints_one_error_line_and_exits_2(
    data: Path, args: tuple[str, ...], expected: str
) -> None:
    """Invalid codes, targets and options: one clear `error:` line, exit 2, nothing stored."""
    assert expected in fails(data, *args)
    assert as_json(data, "audit") == []


def test_public_hosts_from_flags_and_environment(data: Path) -> None:
    """--public-host and RLINKS_PUBLIC_HOSTS (comma-separated) replace the default hosts."""
    target = "https://short.example/x"
    assert "loop" in fails(data, "set", "a", target, "--public-host", "short.example")
    env = {"RLINKS_PUBLIC_HOSTS": "other.example, SHORT.EXAMPLE."}
    assert "loop" in fails(data, "set", "a", target, env=env)
    ok(data, "set", "a", target)  # the default hosts are localhost and 127.0.0.1
    ok(data, "set", "b", "http://localhost:3000/", "--no-https", "--public-host", "localhost:8000")
    ok(data, "set", "c", target, "--allow-loop", "--public-host", "short.example")


def test_a_bad_public_host_is_a_usage_error(data: Path) -> None:
    """An unusable public host is refused by option parsing (exit 2) with the reason."""
    r = links(data, "set", "a", URL, "--public-host", "user@host")
    assert r.returncode == 2 and "public host 'user@host' is not usable" in r.stderr


def test_data_is_required(tmp_path: Path) -> None:
    """Without --data or RLINKS_DATA the command refuses to run."""
    r = run_cli("links", "list", exe=RLINKS)
    assert r.returncode == 2 and "--data" in r.stderr
    r = run_cli("links", "list", "--json", exe=RLINKS, env={"RLINKS_DATA": str(tmp_path / "d")})
    assert r.returncode == 0 and json.loads(r.stdout) == []


@pytest.mark.parametrize(
    "command", ["set", "get", "list", "disable", "enable", "delete", "stats", "audit"]
)
def test_every_command_explains_itself(command: str) -> None:
    """`rlinks links COMMAND --help` exits 0 and documents --data."""
    r = run_cli("links", command, "--help", exe=RLINKS)
    assert r.returncode == 0 and "--data" in r.stdout and "RLINKS_DATA" in r.stdout
