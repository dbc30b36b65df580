"""The `rlinks-bh2` and `rlinks` commands end to end, each in a real subprocess."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from rlinks.hits import Hit
from tests.conftest import (
    MS_PER_DAY,
    RLINKS,
    Backend,
    copy_folder,
    open_backend,
    recount,
    run_cli,
    utc_day,
)

BH2_COMMANDS = [
    "ingest",
    "aggregate",
    "run",
    "rebuild",
    "stats",
    "status",
    "verify",
    "compact",
    "sample",
    "cost",
]
DATA_COMMANDS = [
    ["ingest", "x.ndjson"],
    ["run", "--once"],
    ["rebuild"],
    ["stats"],
    ["status"],
    ["verify"],
    ["compact"],
]


def iso_ms(ts_ms: int) -> str:
    t = dt.datetime.fromtimestamp(ts_ms / 1000, dt.UTC)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ts_ms % 1000:03d}Z"


def hits_of_lines(path: Path) -> list[Hit]:
    """Hits of an NDJSON file of valid lines with integer-second `ts` (ids by line)."""
    out = []
    for i, line in enumerate(path.read_text().splitlines()):
        obj = json.loads(line)
        out.append(Hit(obj.get("id", f"line-{i}"), obj["ts"] * 1000, obj["code"]))
    return out


def expected_json(hits: list[Hit]) -> dict[str, Any]:
    """The `stats` part of `stats --json`, from an independent recount."""
    return {
        c: {
            "hits": s.hits,
            "first_hit": iso_ms(s.first_ms),
            "last_hit": iso_ms(s.last_ms),
            "daily": s.daily,
        }
        for c, s in recount(hits).items()
    }


def ok(*args: str | Path, **kw: Any) -> str:
    """Run a command that must succeed; its stdout."""
    got = run_cli(*args, **kw)
    assert got.returncode == 0, f"{args}: {got.stdout}\n{got.stderr}"
    return got.stdout


def stats_json(data: Path, *extra: str) -> dict[str, Any]:
    return json.loads(ok("stats", "--data", data, "--json", *extra))  # type: ignore[no-any-return]


@pytest.fixture(scope="session")
def sampled_template(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """sample -> ingest -> run --once, done once: (data folder, sample file). Never modified."""
    root = tmp_path_factory.mktemp("cli-template")
    sample, data = root / "sample.ndjson", root / "data"
    ok("sample", "--hits", "3000", "--codes", "60", "--seed", "5", "--out", sample)
    ingest = run_cli("ingest", "--data", data, sample)
    assert ingest.returncode == 0, ingest.stderr
    assert "appended 3,000 hits, dropped 0 duplicates, quarantined 0 lines" in ingest.stderr
    assert "had no id" in ingest.stderr  # sample lines have no ids: a re-ingest would recount
    ran = run_cli("run", "--data", data, "--once")
    assert ran.returncode == 0 and "read 3,000 hits in 1 batches" in ran.stderr
    return data, sample


@pytest.fixture
def sampled(sampled_template: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path, list[Hit]]:
    """A private copy of the sampled folder: (data, sample file, hits)."""
    template, sample = sampled_template
    data = copy_folder(template, tmp_path / "data")
    return data, sample, hits_of_lines(sample)


def test_sample_writes_valid_hit_lines(tmp_path: Path) -> None:
    """`sample` writes N NDJSON lines, each with a valid code and integer ts."""
    out = tmp_path / "s.ndjson"
    ok("sample", "--hits", "250", "--codes", "10", "--out", out)
    lines = out.read_text().splitlines()
    assert len(lines) == 250
    for line in lines:
        obj = json.loads(line)
        assert obj["code"].startswith("c") and isinstance(obj["ts"], int)


def test_sample_is_deterministic_by_seed(tmp_path: Path) -> None:
    """The same seed gives the same file; another seed a different one."""
    a, b, c = tmp_path / "a", tmp_path / "b", tmp_path / "c"
    ok("sample", "--hits", "100", "--seed", "3", "--out", a)
    ok("sample", "--hits", "100", "--seed", "3", "--out", b)
    ok("sample", "--hits", "100", "--seed", "4", "--out", c)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_stats_json_matches_an_independent_recount(sampled: tuple[Path, Path, list[Hit]]) -> None:
    """After sample, ingest and run --once, `stats --json` equals the recount (as of newest)."""
    data, _, hits = sampled
    got = stats_json(data)
    assert set(got) == {"as_of", "lag_hits", "lag_s", "stats"}
    assert got["lag_hits"] == 0 and got["lag_s"] == 0
    assert got["as_of"] == iso_ms(max(h.ts_ms for h in hits))
    assert got["stats"] == expected_json(hits)


def test_stats_for_one_code(sampled: tuple[Path, Path, list[Hit]]) -> None:
    """`stats --code` shows that code only; an unknown code shows no stats."""
    data, _, hits = sampled
    code = hits[0].code
    got = stats_json(data, "--code", code)
    assert got["stats"] == {code: expected_json(hits)[code]}
    assert stats_json(data, "--code", "no-such-code")["stats"] == {}
    table = ok("stats", "--data", data, "--code", "no-such-code")
    assert "no hits counted for 'no-such-code'" in table
    assert code in ok("stats", "--data", data, "--code", code)


def test_stats_table_lists_top_codes(sampled: tuple[Path, Path, list[Hit]]) -> None:
    """`stats` without --json prints a table with the most hit code first."""
    data, _, hits = sampled
    top = max(recount(hits).values(), key=lambda s: (s.hits, [-ord(ch) for ch in s.code]))
    text = ok("stats", "--data", data, "--limit", "3")
    assert top.code in text and f"{top.hits:,}" in text
    assert "more codes" in text


def test_status_json_reports_watermark_and_lag(sampled: tuple[Path, Path, list[Hit]]) -> None:
    """`status --json` shows the partition at the log end, no lag, epoch 1, no quarantine."""
    data, _, hits = sampled
    got = json.loads(ok("status", "--data", data, "--json"))
    assert got["quarantined"] == 0
    (p,) = got["partitions"]
    assert (p["partition"], p["watermark"], p["log_end"], p["lag_hits"]) == (0, 3000, 3000, 0)
    assert (p["epoch"], p["hits"], p["batches"]) == (1, 3000, 1)
    assert p["kv_writes"] == len(recount(hits))
    assert p["as_of"] == iso_ms(max(h.ts_ms for h in hits))
    assert "partition 0" in ok("status", "--data", data)


def test_lag_shows_until_the_next_run(sampled: tuple[Path, Path, list[Hit]]) -> None:
    """Hits ingested but not aggregated show as lag in stats, status and verify."""
    data, sample, hits = sampled
    ok("ingest", "--data", data, sample)  # no ids: the same lines count again
    assert stats_json(data)["lag_hits"] == 3000
    assert json.loads(ok("status", "--data", data, "--json"))["partitions"][0]["lag_hits"] == 3000
    assert "3,000 hits not aggregated yet" in ok("verify", "--data", data)
    ok("run", "--data", data, "--once")
    relabelled = [Hit(f"again-{i}", h.ts_ms, h.code) for i, h in enumerate(hits)]
    assert stats_json(data)["stats"] == expected_json(hits + relabelled)
    assert stats_json(data)["lag_hits"] == 0


def test_verify_passes_then_fails_after_tampering(sampled: tuple[Path, Path, list[Hit]]) -> None:
    """`verify` exits 0 on exact stats and 1, listing the code, after one row is changed."""
    data, _, hits = sampled
    assert "OK" in ok("verify", "--data", data)
    h = hits[0]
    day = h.ts_ms // MS_PER_DAY
    n = recount(hits)[h.code].daily[utc_day(h.ts_ms)]
    with contextlib.closing(sqlite3.connect(data / "kv.db")) as conn, conn:
        changed = conn.execute(
            "UPDATE stats_daily SET hits = hits + 1 WHERE code = ? AND day = ?", (h.code, day)
        ).rowcount
    assert changed == 1
    got = run_cli("verify", "--data", data)
    assert got.returncode == 1
    total = recount(hits)[h.code].hits
    assert f"{h.code}: stats say {total + 1} hits, the log has {total}" in got.stdout
    assert f"'{utc_day(h.ts_ms)}': {n + 1}" in got.stdout  # the per-day line, too
    assert "verify failed" in got.stderr and "2 differences" in got.stderr


def test_ingest_quarantines_bad_lines_and_drops_duplicate_ids(tmp_path: Path) -> None:
    """Bad lines are quarantined with a count, repeated ids dropped, a partial last line left."""
    data, src = tmp_path / "data", tmp_path / "in.ndjson"
    lines = [
        '{"id":"i1","code":"good","ts":1764000000}',
        "not json",
        "[1,2]",
        '{"code":"BAD","ts":1764000000}',
        '{"code":"good","ts":"yesterday"}',
        '{"id":"","code":"good","ts":1764000000}',
        '{"id":"i2","code":"good","ts":"2025-11-25T00:00:00Z"}',
        '{"id":"i1","code":"good","ts":1764000001}',
    ]
    partial = '{"id":"i3","code":"good","ts":1764000000}'
    src.write_text("\n".join(lines) + "\n" + partial)
    first = run_cli("ingest", "--data", data, src)
    assert first.returncode == 0, first.stderr
    assert "appended 2 hits, dropped 1 duplicates, quarantined 5 lines" in first.stderr
    again = run_cli("ingest", "--data", data, src)
    assert "appended 0 hits, dropped 3 duplicates, quarantined 5 lines" in again.stderr
    src.write_text(src.read_text() + "\n")  # the partial line is now complete
    third = run_cli("ingest", "--data", data, src)
    assert "appended 1 hits, dropped 3 duplicates, quarantined 5 lines" in third.stderr
    status = json.loads(ok("status", "--data", data, "--json"))
    assert status["quarantined"] == 15
    assert status["partitions"][0]["log_end"] == 3
    ok("run", "--data", data, "--once")
    assert stats_json(data)["stats"] == {
        "good": {
            "hits": 3,
            "first_hit": "2025-11-24T16:00:00.000Z",
            "last_hit": "2025-11-25T00:00:00.000Z",
            "daily": {"2025-11-24": 2, "2025-11-25": 1},
        }
    }
    assert run_cli("verify", "--data", data).returncode == 0


def test_ingest_reads_stdin(tmp_path: Path) -> None:
    """`ingest -` appends the hits piped to it."""
    data = tmp_path / "data"
    lines = "".join(f'{{"id":"s{i}","code":"pipe","ts":{1764000000 + i}}}\n' for i in range(40))
    got = run_cli("ingest", "--data", data, "-", input=lines.encode())
    assert got.returncode == 0 and "appended 40 hits" in got.stderr
    ok("run", "--data", data, "--once")
    assert stats_json(data)["stats"]["pipe"]["hits"] == 40


def test_ingest_of_a_missing_file_is_a_clear_error(tmp_path: Path) -> None:
    """A file that cannot be read gives a one-line error and exit 2."""
    got = run_cli("ingest", "--data", tmp_path / "data", tmp_path / "nope.ndjson")
    assert got.returncode == 2
    assert "cannot read" in got.stderr and "Traceback" not in got.stderr


def test_rlinks_data_env_stands_in_for_the_flag(sampled: tuple[Path, Path, list[Hit]]) -> None:
    """RLINKS_DATA names the data folder when --data is not given."""
    data, _, hits = sampled
    got = run_cli("stats", "--json", env={"RLINKS_DATA": str(data)})
    assert got.returncode == 0
    assert json.loads(got.stdout)["stats"] == expected_json(hits)


@pytest.mark.parametrize("args", DATA_COMMANDS, ids=lambda a: a[0])
def test_missing_data_is_a_clear_error(args: list[str], tmp_path: Path) -> None:
    """Without --data or RLINKS_DATA, each command says so and exits non-zero."""
    got = run_cli(*args)
    assert got.returncode != 0
    assert "--data" in got.stderr and "RLINKS_DATA" in got.stderr
    assert "Traceback" not in got.stderr


@pytest.mark.parametrize("command", ["run", "rebuild", "stats", "status", "verify"])
def test_a_folder_without_a_log_is_a_clear_error(command: str, tmp_path: Path) -> None:
    """A --data folder with no hits.db is refused with exit 2 and a hint, not a traceback."""
    got = run_cli(command, "--data", tmp_path / "empty")
    assert got.returncode == 2
    assert "hits.db does not exist" in got.stderr
    assert "Traceback" not in got.stderr


@pytest.mark.parametrize("command", [None, *BH2_COMMANDS])
def test_every_bh2_command_has_help(command: str | None) -> None:
    """`rlinks-bh2 [COMMAND] --help` exits 0 and prints usage."""
    got = run_cli(*([command] if command else []), "--help")
    assert got.returncode == 0
    assert "Usage:" in got.stdout


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"], ["--version"]])
def test_rlinks_help(args: list[str]) -> None:
    """`rlinks --help`, `rlinks demo --help` and `--version` exit 0."""
    got = run_cli(*args, exe=RLINKS)
    assert got.returncode == 0
    assert got.stdout.strip()


def test_bh2_version() -> None:
    """`rlinks-bh2 --version` prints the version."""
    got = run_cli("--version")
    assert got.returncode == 0 and "0.1.0" in got.stdout


def test_run_rejects_bad_settings(sampled: tuple[Path, Path, list[Hit]]) -> None:
    """`run` refuses a negative window or a max-batch below 1 with exit 2."""
    data, _, _ = sampled
    for flags in (["--window", "-1"], ["--max-batch", "0"]):
        got = run_cli("run", "--data", data, "--once", *flags)
        assert got.returncode == 2, flags
        assert "error:" in got.stderr and "Traceback" not in got.stderr


def test_demo_ingests_aggregates_and_grows_by_exactly_hits(tmp_path: Path) -> None:
    """`rlinks demo --hits 5000` counts 5000 hits; running it again adds exactly 5000."""
    data = tmp_path / "data"
    first = run_cli("demo", "--data", data, "--hits", "5000", "--codes", "300", exe=RLINKS)
    assert first.returncode == 0, first.stderr
    assert "stats as of" in first.stdout
    got = stats_json(data)
    assert got["lag_hits"] == 0
    assert sum(s["hits"] for s in got["stats"].values()) == 5000
    assert run_cli("verify", "--data", data).returncode == 0
    again = run_cli("demo", "--data", data, "--hits", "5000", "--codes", "300", exe=RLINKS)
    assert again.returncode == 0, again.stderr
    assert sum(s["hits"] for s in stats_json(data)["stats"].values()) == 10_000
    assert run_cli("verify", "--data", data).returncode == 0


@pytest.mark.parametrize("args", DATA_COMMANDS, ids=lambda a: a[0])
def test_every_store_command_offers_the_redis_backend(args: list[str]) -> None:
    """Each command that touches a store documents --backend and RLINKS_BACKEND."""
    got = run_cli(args[0], "--help")
    assert got.returncode == 0
    assert "--backend" in got.stdout and "RLINKS_BACKEND" in got.stdout


def test_data_and_backend_together_are_refused(tmp_path: Path) -> None:
    """--data and --backend on one command line is an error; a setting inherited
    from the environment gives way to the other flag given explicitly."""
    both = run_cli("status", "--data", tmp_path, "--backend", "redis://127.0.0.1:1/0")
    assert both.returncode == 2 and "not both" in both.stderr
    env = {"RLINKS_DATA": str(tmp_path)}
    inherited = run_cli("status", "--backend", "redis://127.0.0.1:1/0", env=env)
    assert inherited.returncode == 2 and "cannot reach Redis" in inherited.stderr
    flag_data = run_cli("status", "--data", tmp_path / "none", env={"RLINKS_BACKEND": "x"})
    assert flag_data.returncode == 2 and "hits.db does not exist" in flag_data.stderr
    bad = run_cli("status", "--backend", "http://127.0.0.1/")
    assert bad.returncode == 2 and "redis://" in bad.stderr and "Traceback" not in bad.stderr


def test_ingest_on_redis_drops_resent_ids(tmp_path: Path) -> None:
    """The same lines ingested twice into Redis: the second time every hit is a
    duplicate (inside the dedup horizon), and counts stay those of one pass."""
    with open_backend("redis", tmp_path / "r") as backend:
        resend_to(backend, tmp_path)


def resend_to(backend: Backend, tmp_path: Path) -> None:
    lines = [json.dumps({"id": f"r{i}", "code": "dup", "ts": 1_764_000_000 + i}) for i in range(50)]
    src = tmp_path / "hits.ndjson"
    src.write_text("\n".join(lines) + "\n")
    first = run_cli("ingest", "--backend", backend.url, src)
    again = run_cli("ingest", "--backend", backend.url, "--dedup-horizon", "2h", src)
    assert "appended 50 hits" in first.stderr, first.stderr
    assert "appended 0 hits, dropped 50 duplicates" in again.stderr, again.stderr
    bad = run_cli("ingest", "--backend", backend.url, "--dedup-horizon", "soon", src)
    assert bad.returncode == 2 and "--dedup-horizon" in bad.stderr
    assert run_cli("run", "--backend", backend.url, "--once").returncode == 0
    stats = json.loads(run_cli("stats", "--backend", backend.url, "--json").stdout)
    assert stats["stats"]["dup"]["hits"] == 50


def test_a_store_lost_mid_command_is_one_clear_line(capsys: pytest.CaptureFixture[str]) -> None:
    """A Redis connection lost during a command exits 2 with a sentence, no traceback."""
    import redis

    from rlinks.cli.common import reports_errors

    @reports_errors
    def command() -> None:
        raise redis.ConnectionError("Connection closed by server.")

    with pytest.raises(SystemExit) as exited:
        command()
    assert exited.value.code == 2
    said = capsys.readouterr().err
    assert "the store stopped answering" in said and "Connection closed by server" in said
