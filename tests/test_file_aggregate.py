"""`rlinks-bh2 aggregate --in FILE --out FILE [--code CODE] [--from-start]`.

Each behaviour is checked through `aggregate_file` and through the installed
CLI in a subprocess, and the stats are compared with an independent recount
done here with `json.loads` and plain dicts.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Protocol

import pytest

from rlinks.errors import RlinksError
from rlinks.file_aggregate import aggregate_file

UTC = dt.UTC
EPOCH = dt.datetime(1970, 1, 1, tzinfo=UTC)
T0 = 1_795_903_200  # 2026-11-28T22:00:00Z
MAX_TS = 253_402_300_799
BH2 = shutil.which("rlinks-bh2", path=str(Path(sys.executable).parent)) or "rlinks-bh2"
CLI_ENV = {**os.environ, "COLUMNS": "1000"}


# -- an independent recount ---------------------------------------------------------


def _ts_ms(ts: object) -> int | None:
    """Unix ms for a `ts` value as json.loads (floats as Decimal) gives it, None if invalid."""
    if isinstance(ts, bool):
        return None
    if isinstance(ts, int | Decimal):
        if not 0 <= ts <= MAX_TS:
            return None
        return math.floor(ts * 1000)
    if isinstance(ts, str):
        try:
            when = dt.datetime.fromisoformat(ts)
        except ValueError:
            return None
        if when.tzinfo is None:
            return None
        return (when - EPOCH) // dt.timedelta(milliseconds=1)
    return None


def _valid(raw: bytes) -> tuple[str, int] | None:
    """(code, ms) of a valid hit line, by the README's rules; None if it is quarantined."""
    if len(raw) > 64 * 1024:
        return None
    try:
        obj = json.loads(raw, parse_float=Decimal)
    except ValueError:
        return None
    if not isinstance(obj, dict):
        return None
    code = obj.get("code")
    if not isinstance(code, str) or not re.fullmatch(r"[a-z0-9-]{1,64}", code):
        return None
    ms = _ts_ms(obj.get("ts"))
    if ms is None:
        return None
    hit_id = obj.get("id")
    if hit_id is not None and (
        not isinstance(hit_id, str)
        or not 1 <= len(hit_id) <= 128
        or re.search(r"[\x00-\x1f\x7f]", hit_id)
    ):
        return None
    return code, ms


def _fmt(ms: int) -> str:
    t = EPOCH + dt.timedelta(milliseconds=ms)
    return f"{t:%Y-%m-%dT%H:%M:%S}.{t.microsecond // 1000:03d}Z"


@dataclass
class Recount:
    stats: dict[str, dict[str, Any]]
    quarantined: int
    lines: int
    consumed: int  # bytes of complete lines


def recount(data: bytes, code: str | None = None) -> Recount:
    """What `aggregate` should report for `data`, computed without rlinks."""
    consumed = data.rfind(b"\n") + 1
    lines = data[:consumed].split(b"\n")[:-1]
    hits: Counter[str] = Counter()
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    daily: dict[str, Counter[str]] = {}
    bad = 0
    for raw in lines:
        got = _valid(raw)
        if got is None:
            bad += 1
            continue
        c, ms = got
        if code is not None and c != code:
            continue
        hits[c] += 1
        first[c] = min(first.get(c, ms), ms)
        last[c] = max(last.get(c, ms), ms)
        day = (EPOCH + dt.timedelta(milliseconds=ms)).date().isoformat()
        daily.setdefault(c, Counter())[day] += 1
    stats = {
        c: {
            "hits": hits[c],
            "first_hit": _fmt(first[c]),
            "last_hit": _fmt(last[c]),
            "daily": dict(daily[c]),
        }
        for c in hits
    }
    return Recount(stats, bad, len(lines), consumed)


# -- generated input ----------------------------------------------------------------

CODES = ["a", "abc", "x-1", "0", "-", "promo-2026", "z" * 64]
BAD_LINES = [
    b"",
    b"not json",
    b'{"code":"a","ts":1',
    b"[1, 2]",
    b'"abc"',
    b'{"code":"UPPER","ts":1795903200}',
    b'{"code":"abc\\n","ts":1795903200}',
    b'{"code":"' + b"a" * 65 + b'","ts":1795903200}',
    b'{"ts":1795903200}',
    b'{"code":"a","ts":-5}',
    b'{"code":"a","ts":1.7e12}',
    b'{"code":"a","ts":1795903200000}',
    b'{"code":"a","ts":"2026-11-28T22:00:00"}',
    b'{"code":"a","ts":true}',
    b'{"code":"a","ts":"1795903200"}',
    b'{"code":"a","ts":1795903200,"referrer":"' + b"r" * 70_000 + b'"}',
]


def _rfc3339(rng: random.Random, secs: int) -> str:
    minutes = rng.choice([0, 0, 60, -60, 330, -570, 840, -720, 45, -1])
    when = dt.datetime.fromtimestamp(secs, dt.timezone(dt.timedelta(minutes=minutes)))
    when += dt.timedelta(microseconds=rng.choice([0, 500_000, 123_000, 123_456, 999_999]))
    text = when.isoformat(timespec=rng.choice(["auto", "milliseconds", "seconds"]))
    return text.replace("+00:00", "Z") if rng.random() < 0.5 else text


def hit_line(rng: random.Random, i: int, kind: str) -> bytes:
    """One valid hit line with a `ts` of the given kind, near 2026-11-28 (and midnights)."""
    secs = T0 + rng.randrange(-3 * 86_400, 3 * 86_400)
    if rng.random() < 0.2:
        secs = secs - secs % 86_400 + rng.choice([-2, -1, 0, 1])
    obj: dict[str, Any] = {"code": rng.choice(CODES)}
    if kind == "int":
        obj["ts"] = secs
    elif kind == "float":
        # three decimals (in 2026 a double keeps them exactly), or binary fractions
        obj["ts"] = rng.choice(
            [float(f"{secs}.{rng.randrange(1000):03d}"), secs + 0.125, secs + 0.0]
        )
    else:
        obj["ts"] = _rfc3339(rng, secs)
    roll = rng.random()
    if roll < 0.2:
        obj["id"] = f"dup-{i % 7}"  # aggregate does not dedup ids
    elif roll < 0.4:
        obj["id"] = f"evt-{i}"
    if rng.random() < 0.2:
        obj |= {"country": "FR", "referrer": "https://example.com/", "extra": [1, {"x": None}]}
    return json.dumps(obj).encode()


def sample(seed: int, n: int = 1500, *, kinds: str = "mixed", bad: float = 0.0) -> bytes:
    """`n` complete lines: valid hits with ts of `kinds` ("int" or "mixed"), `bad` of them bad."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        if rng.random() < bad:
            out.append(rng.choice(BAD_LINES))
        else:
            kind = "int" if kinds == "int" else rng.choice(["int", "float", "rfc3339"])
            out.append(hit_line(rng, i, kind))
    return b"".join(line + b"\n" for line in out)


# -- running it ---------------------------------------------------------------------


@dataclass
class Outcome:
    ok: bool
    message: str = ""  # the error, when refused
    new_lines: int | None = None  # complete lines read by this run


class Runner(Protocol):
    def __call__(
        self, src: str | Path, out: Path, *, code: str | None = None, from_start: bool = False
    ) -> Outcome: ...


def run_api(
    src: str | Path, out: Path, *, code: str | None = None, from_start: bool = False
) -> Outcome:
    try:
        result = aggregate_file(str(src), out, code=code, from_start=from_start)
    except RlinksError as e:
        return Outcome(False, str(e))
    assert result.lines == result.counted + result.quarantined
    return Outcome(True, "", result.lines)


def cli(*args: str, stdin: bytes | io.BufferedReader | None = None) -> Outcome:
    """`rlinks-bh2 aggregate ARGS` in a subprocess; a refusal must exit 2, never crash."""
    kw: dict[str, Any] = {"input": stdin} if isinstance(stdin, bytes) else {}
    if not isinstance(stdin, bytes):
        kw["stdin"] = subprocess.DEVNULL if stdin is None else stdin
    proc = subprocess.run(
        [BH2, "aggregate", *args], capture_output=True, env=CLI_ENV, timeout=120, check=False, **kw
    )
    stderr = proc.stderr.decode()
    assert "Traceback" not in stderr, stderr
    if proc.returncode:
        assert proc.returncode == 2, stderr
        assert "error:" in stderr
        return Outcome(False, stderr)
    m = re.search(r"read ([\d,]+) new lines", stderr)
    assert m, stderr
    return Outcome(True, "", int(m.group(1).replace(",", "")))


def run_cli(
    src: str | Path, out: Path, *, code: str | None = None, from_start: bool = False
) -> Outcome:
    args = ["--in", str(src), "--out", str(out)]
    args += ["--code", code] if code is not None else []
    args += ["--from-start"] if from_start else []
    return cli(*args)


@pytest.fixture(params=["api", "cli"])
def agg(request: pytest.FixtureRequest) -> Runner:
    """Runs `aggregate` through the Python API or the installed CLI."""
    return run_api if request.param == "api" else run_cli


def load(out: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(out.read_bytes())
    return doc


def stable(out: Path) -> bytes:
    """The out file's bytes, except the time of the run."""
    return re.sub(rb'"updated_at": "[^"]*"', b'"updated_at": "-"', out.read_bytes())


def assert_counts(out: Path, expected: Recount, *, quarantined: int | None = None) -> None:
    doc = load(out)
    assert doc["stats"] == expected.stats
    assert doc["quarantined"] == (expected.quarantined if quarantined is None else quarantined)
    assert doc["watermark"]["byte_offset"] == expected.consumed
    assert doc["watermark"]["lines"] == expected.lines


@pytest.fixture
def paths(tmp_path: Path) -> tuple[Path, Path]:
    return tmp_path / "hits.ndjson", tmp_path / "stats.json"


# -- output -------------------------------------------------------------------------


def test_output_shape_and_values(agg: Runner, paths: tuple[Path, Path]) -> None:
    """Out file: {stats: {CODE: {hits, first_hit, last_hit, daily}}, watermark, quarantined}."""
    src, out = paths
    data = (
        b'{"code":"abc","ts":1795903200}\n'
        b'{"code":"abc","ts":"2026-11-28T23:30:00-01:00"}\n'
        b'{"code":"abc","ts":1795903200.25}\n'
        b'{"code":"xyz","ts":"2026-11-28T22:00:00.123456+00:00","id":"e1"}\n'
        b"oops\n"
        b'{"code":"BAD","ts":1}\n'
    )
    src.write_bytes(data)
    before = dt.datetime.now(UTC) - dt.timedelta(seconds=1)
    assert agg(src, out) == Outcome(True, "", 6)
    doc = load(out)
    assert set(doc) == {"stats", "watermark", "quarantined"}
    assert doc["stats"] == {
        "abc": {
            "hits": 3,
            "first_hit": "2026-11-28T22:00:00.000Z",
            "last_hit": "2026-11-29T00:30:00.000Z",
            "daily": {"2026-11-28": 2, "2026-11-29": 1},
        },
        "xyz": {
            "hits": 1,
            "first_hit": "2026-11-28T22:00:00.123Z",
            "last_hit": "2026-11-28T22:00:00.123Z",
            "daily": {"2026-11-28": 1},
        },
    }
    assert list(doc["stats"]) == ["abc", "xyz"]
    assert doc["quarantined"] == 2
    wm = doc["watermark"]
    assert (wm["byte_offset"], wm["lines"], wm["code"]) == (len(data), 6, None)
    assert wm["source"] == str(src)
    assert wm["as_of"] == "2026-11-29T00:30:00.000Z"
    updated = dt.datetime.fromisoformat(wm["updated_at"])
    assert before <= updated <= dt.datetime.now(UTC) + dt.timedelta(seconds=1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", wm["updated_at"])


@pytest.mark.parametrize(
    ("agg", "kinds", "bad"),
    [
        pytest.param(run_api, "int", 0.0, id="api-int ts, all valid"),
        pytest.param(run_api, "mixed", 0.0, id="api-mixed ts, all valid"),
        pytest.param(run_api, "mixed", 0.08, id="api-mixed ts, some bad"),
        pytest.param(run_cli, "mixed", 0.08, id="cli-mixed ts, some bad"),
    ],
)
def test_matches_an_independent_recount(
    agg: Runner, paths: tuple[Path, Path], kinds: str, bad: float
) -> None:
    """hits, first_hit, last_hit and daily equal a plain json.loads recount of a sample."""
    src, out = paths
    data = sample(7, 3000, kinds=kinds, bad=bad)
    src.write_bytes(data)
    expected = recount(data)
    assert (expected.quarantined > 0) == (bad > 0)
    assert agg(src, out).ok
    assert_counts(out, expected)
    last = max(s["last_hit"] for s in expected.stats.values())
    assert load(out)["watermark"]["as_of"] == last


@pytest.mark.parametrize("bad_line", BAD_LINES, ids=[str(i) for i in range(len(BAD_LINES))])
@pytest.mark.parametrize("kinds", ["int", "mixed"])
def test_each_kind_of_bad_line_alone_is_quarantined(
    paths: tuple[Path, Path], bad_line: bytes, kinds: str
) -> None:
    """One bad line of each kind amid valid ones is quarantined (not counted), once."""
    src, out = paths
    valid = sample(30, 40, kinds=kinds)
    data = valid + bad_line + b"\n" + sample(31, 10, kinds=kinds)
    src.write_bytes(data)
    assert run_api(src, out) == Outcome(True, "", 51)
    expected = recount(data)
    assert expected.quarantined == 1
    assert_counts(out, expected)


@pytest.mark.parametrize("agg", [run_api], ids=["api"])
def test_empty_input(agg: Runner, paths: tuple[Path, Path]) -> None:
    """An empty input gives empty stats at offset 0; lines appended later are counted."""
    src, out = paths
    src.write_bytes(b"")
    assert agg(src, out) == Outcome(True, "", 0)
    assert_counts(out, recount(b""))
    data = sample(1, 50)
    src.write_bytes(data)
    assert agg(src, out) == Outcome(True, "", 50)
    assert_counts(out, recount(data))


# -- reruns -------------------------------------------------------------------------


def test_rerun_on_same_input_changes_nothing(agg: Runner, paths: tuple[Path, Path]) -> None:
    """Running twice on the same input gives a byte-identical out file (but updated_at)."""
    src, out = paths
    data = sample(2, 800, bad=0.1)
    src.write_bytes(data)
    assert agg(src, out).ok
    first = stable(out)
    assert agg(src, out) == Outcome(True, "", 0)
    assert stable(out) == first
    assert_counts(out, recount(data))


def test_grown_input_adds_only_new_lines(
    agg: Runner, paths: tuple[Path, Path], tmp_path: Path
) -> None:
    """An input grown by appending folds only the new complete lines, exactly once."""
    src, out = paths
    part1, part2, part3 = sample(3, 700, bad=0.05), sample(4, 900, bad=0.05), sample(5, 5)
    src.write_bytes(part1)
    assert agg(src, out) == Outcome(True, "", 700)
    with src.open("ab") as f:
        f.write(part2)
    assert agg(src, out) == Outcome(True, "", 900)
    with src.open("ab") as f:
        f.write(part3)
    assert agg(src, out) == Outcome(True, "", 5)
    assert_counts(out, recount(part1 + part2 + part3))
    # the same as counting the whole input in one go
    once = tmp_path / "once.json"
    assert agg(src, once).ok
    grown, whole = load(out), load(once)
    assert grown["stats"] == whole["stats"]
    assert grown["quarantined"] == whole["quarantined"]
    for key in ("byte_offset", "lines", "head_sha256", "tail_sha256", "as_of"):
        assert grown["watermark"][key] == whole["watermark"][key], key


def test_torn_tail_is_counted_once_completed(agg: Runner, paths: tuple[Path, Path]) -> None:
    """A last line without newline is not counted; once completed it counts exactly once."""
    src, out = paths
    body = sample(6, 300)
    line = b'{"code":"torn","ts":"2026-11-28T22:00:00.5+01:00"}\n'
    src.write_bytes(body + line[:20])
    assert agg(src, out) == Outcome(True, "", 300)
    assert_counts(out, recount(body))
    assert "torn" not in load(out)["stats"]
    with src.open("ab") as f:
        f.write(line[20:])
    assert agg(src, out) == Outcome(True, "", 1)
    assert_counts(out, recount(body + line))
    assert load(out)["stats"]["torn"]["hits"] == 1
    assert load(out)["stats"]["torn"]["first_hit"] == "2026-11-28T21:00:00.500Z"
    assert agg(src, out) == Outcome(True, "", 0)
    assert load(out)["stats"]["torn"]["hits"] == 1


@pytest.mark.parametrize("agg", [run_api], ids=["api"])
def test_torn_bad_line_is_quarantined_only_once_completed(
    agg: Runner, paths: tuple[Path, Path]
) -> None:
    """An incomplete bad line is not quarantined until its newline arrives, then once."""
    src, out = paths
    body = sample(8, 100)
    src.write_bytes(body + b'{"code":"Bad')
    assert agg(src, out).ok
    assert load(out)["quarantined"] == 0
    with src.open("ab") as f:
        f.write(b'","ts":1}\n')
    assert agg(src, out) == Outcome(True, "", 1)
    assert agg(src, out) == Outcome(True, "", 0)
    assert load(out)["quarantined"] == 1
    assert_counts(out, recount(body + b'{"code":"Bad","ts":1}\n'))


def test_quarantined_count_accumulates(agg: Runner, paths: tuple[Path, Path]) -> None:
    """`quarantined` adds up over runs on a growing input and is not recounted on reruns."""
    src, out = paths
    src.write_bytes(b'{"code":"a","ts":1}\nnope\n[]\n')
    assert agg(src, out).ok
    assert load(out)["quarantined"] == 2
    with src.open("ab") as f:
        f.write(b'\n{"code":"A","ts":1}\n{"code":"a","ts":-1}\n{"code":"a","ts":2}\n')
    assert agg(src, out) == Outcome(True, "", 4)
    assert load(out)["quarantined"] == 5
    assert agg(src, out).ok
    assert load(out)["quarantined"] == 5
    assert load(out)["stats"]["a"]["hits"] == 2


# -- changed input --------------------------------------------------------------------


def test_truncated_input_is_refused(agg: Runner, paths: tuple[Path, Path]) -> None:
    """A shorter input than what was counted is refused with a clear error; out is untouched."""
    src, out = paths
    data = sample(9, 400)
    src.write_bytes(data)
    assert agg(src, out).ok
    before = out.read_bytes()
    sizes = (len(data) - 1, len(data) // 2, 0) if agg is run_api else (len(data) // 2,)
    for size in sizes:
        src.write_bytes(data[:size])
        got = agg(src, out)
        assert not got.ok
        assert "truncated" in got.message
        assert "--from-start" in got.message
        assert out.read_bytes() == before


REPLACEMENTS = {
    "same size, first line": lambda d: d.replace(b'"code"', b'"CODE"', 1),
    "same size, last line": lambda d: d[:-3] + b"7}\n",
    "other content, larger": lambda d: sample(99, 500),
    "shifted by one byte": lambda d: b" " + d,
    "last line edited, then grown": lambda d: d[:-1] + b" \n",
}


@pytest.mark.parametrize(
    ("agg", "replace"),
    [pytest.param(run_api, f, id=f"api-{name}") for name, f in REPLACEMENTS.items()]
    + [
        pytest.param(run_cli, REPLACEMENTS[name], id=f"cli-{name}")
        for name in ("same size, first line", "other content, larger")
    ],
)
def test_replaced_input_is_refused(agg: Runner, paths: tuple[Path, Path], replace: Any) -> None:
    """An input replaced by other content of the same or larger size is refused; out untouched."""
    src, out = paths
    data = sample(10, 400)
    assert data.endswith(b"}\n")
    src.write_bytes(data)
    assert agg(src, out).ok
    before = out.read_bytes()
    changed = replace(data)
    assert changed != data
    assert len(changed) >= len(data)
    src.write_bytes(changed)
    got = agg(src, out)
    assert not got.ok
    assert "replaced" in got.message
    assert "--from-start" in got.message
    assert out.read_bytes() == before


def test_from_start_recounts(agg: Runner, paths: tuple[Path, Path]) -> None:
    """--from-start ignores the watermark: the new input is counted from scratch, once."""
    src, out = paths
    src.write_bytes(sample(11, 500, bad=0.1))
    assert agg(src, out).ok
    data = sample(12, 300, bad=0.1)
    src.write_bytes(data)
    assert not agg(src, out).ok
    assert agg(src, out, from_start=True) == Outcome(True, "", 300)
    assert_counts(out, recount(data))
    assert agg(src, out, from_start=True) == Outcome(True, "", 300)
    assert_counts(out, recount(data))
    assert agg(src, out) == Outcome(True, "", 0)
    assert_counts(out, recount(data))


@pytest.mark.parametrize("agg", [run_api], ids=["api"])
def test_out_file_that_is_not_an_aggregate_is_refused(
    agg: Runner, paths: tuple[Path, Path]
) -> None:
    """An existing out file of another kind is refused, not overwritten, unless --from-start."""
    src, out = paths
    data = sample(13, 20)
    src.write_bytes(data)
    out.write_bytes(b'{"something": "else"}\n')
    got = agg(src, out)
    assert not got.ok
    assert "not an aggregate output" in got.message
    assert out.read_bytes() == b'{"something": "else"}\n'
    assert agg(src, out, from_start=True).ok
    assert_counts(out, recount(data))


# -- --code ---------------------------------------------------------------------------


def test_code_keeps_only_that_code(agg: Runner, paths: tuple[Path, Path]) -> None:
    """--code CODE keeps only CODE's stats; bad lines are still counted as quarantined."""
    src, out = paths
    data = sample(14, 1200, bad=0.05)
    src.write_bytes(data)
    assert agg(src, out, code="abc") == Outcome(True, "", 1200)
    expected = recount(data, code="abc")
    assert list(expected.stats) == ["abc"]
    assert_counts(out, expected)
    assert load(out)["watermark"]["code"] == "abc"
    with src.open("ab") as f:
        f.write(b'{"code":"abc","ts":1795903200}\n{"code":"a","ts":1795903200}\n')
    assert agg(src, out, code="abc") == Outcome(True, "", 2)
    grown = src.read_bytes()
    assert_counts(out, recount(grown, code="abc"))
    assert load(out)["stats"]["abc"]["hits"] == expected.stats["abc"]["hits"] + 1


def test_code_that_never_occurs_gives_empty_stats(agg: Runner, paths: tuple[Path, Path]) -> None:
    """--code for a code absent from the input gives empty stats but a full watermark."""
    src, out = paths
    data = sample(15, 200)
    src.write_bytes(data)
    assert agg(src, out, code="nowhere") == Outcome(True, "", 200)
    assert_counts(out, recount(data, code="nowhere"))
    assert load(out)["stats"] == {}


def test_other_code_on_rerun_is_refused(agg: Runner, paths: tuple[Path, Path]) -> None:
    """A rerun with another --code (or none, or one after none) is refused unless --from-start."""
    src, out = paths
    data = sample(16, 300)
    src.write_bytes(data)
    assert agg(src, out, code="abc").ok
    before = out.read_bytes()
    for other in ("a", None):
        got = agg(src, out, code=other)
        assert not got.ok
        assert "--code abc" in got.message
        assert "--from-start" in got.message
        assert out.read_bytes() == before
    assert agg(src, out, code="a", from_start=True).ok
    assert_counts(out, recount(data, code="a"))


@pytest.mark.parametrize("agg", [run_api], ids=["api"])
def test_code_after_a_run_without_code_is_refused(agg: Runner, paths: tuple[Path, Path]) -> None:
    """A --code run after a run without --code is refused until --from-start."""
    src, out = paths
    data = sample(29, 100)
    src.write_bytes(data)
    assert agg(src, out).ok
    got = agg(src, out, code="a")
    assert not got.ok
    assert "--code (none)" in got.message
    assert "--from-start" in got.message
    assert_counts(out, recount(data))


# -- stdin ----------------------------------------------------------------------------


def test_stdin_through_the_cli(tmp_path: Path) -> None:
    """`--in -` from a pipe counts like a file, reruns on the same stdin change nothing."""
    out = tmp_path / "stats.json"
    part1, part2 = sample(17, 600, bad=0.05), sample(18, 400, bad=0.05)
    assert cli("--in", "-", "--out", str(out), stdin=part1 + b'{"code":"torn"') == Outcome(
        True, "", 600
    )
    assert_counts(out, recount(part1))
    assert load(out)["watermark"]["source"] == "-"
    first = stable(out)
    assert cli("--in", "-", "--out", str(out), stdin=part1) == Outcome(True, "", 0)
    assert stable(out) == first
    assert cli("--in", "-", "--out", str(out), stdin=part1 + part2) == Outcome(True, "", 400)
    assert_counts(out, recount(part1 + part2))


def test_stdin_changed_is_refused_through_the_cli(tmp_path: Path) -> None:
    """A shorter or different stdin than what was counted is refused; out is untouched."""
    out = tmp_path / "stats.json"
    data = sample(19, 300)
    assert cli("--in", "-", "--out", str(out), stdin=data).ok
    before = out.read_bytes()
    got = cli("--in", "-", "--out", str(out), stdin=data[:-10])
    assert not got.ok
    assert "--from-start" in got.message
    got = cli("--in", "-", "--out", str(out), stdin=sample(20, 300))
    assert not got.ok
    assert "replaced" in got.message
    assert out.read_bytes() == before
    assert cli("--in", "-", "--out", str(out), "--from-start", stdin=data[:-10]).ok


def test_stdin_redirected_from_a_file(tmp_path: Path) -> None:
    """`--in -` with stdin redirected from a (seekable) file also counts and reruns cleanly."""
    src, out = tmp_path / "hits.ndjson", tmp_path / "stats.json"
    data = sample(21, 500, bad=0.05)
    src.write_bytes(data)
    for expected_new in (500, 0):
        with src.open("rb") as f:
            assert cli("--in", "-", "--out", str(out), stdin=f) == Outcome(True, "", expected_new)
        assert_counts(out, recount(data))
    with src.open("ab") as f:
        f.write(b'{"code":"late","ts":1795903200}\n')
    with src.open("rb") as f:
        assert cli("--in", "-", "--out", str(out), stdin=f) == Outcome(True, "", 1)
    assert_counts(out, recount(src.read_bytes()))


class _Pipe(io.RawIOBase):
    """A non-seekable byte stream, like a pipe."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        return self._data.readinto(buffer)


def use_stdin(monkeypatch: pytest.MonkeyPatch, data: bytes) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BufferedReader(_Pipe(data))))


def test_stdin_through_the_api(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """aggregate_file("-") reads a piped stdin; the same stdin again adds nothing, more adds."""
    out = tmp_path / "stats.json"
    part1, part2 = sample(22, 500, bad=0.05), sample(23, 200)
    use_stdin(monkeypatch, part1)
    assert run_api("-", out) == Outcome(True, "", 500)
    first = stable(out)
    use_stdin(monkeypatch, part1)
    assert run_api("-", out) == Outcome(True, "", 0)
    assert stable(out) == first
    use_stdin(monkeypatch, part1 + part2)
    assert run_api("-", out) == Outcome(True, "", 200)
    assert_counts(out, recount(part1 + part2))
    use_stdin(monkeypatch, part1)
    got = run_api("-", out)
    assert not got.ok
    assert "--from-start" in got.message


# -- atomic output ----------------------------------------------------------------------


def test_no_temp_files_left_behind(agg: Runner, paths: tuple[Path, Path], tmp_path: Path) -> None:
    """After successful and refused runs the folder holds only the input and the out file."""
    src, out = paths
    data = sample(24, 200)
    src.write_bytes(data)
    assert agg(src, out).ok
    assert agg(src, out).ok
    src.write_bytes(data[:10])
    assert not agg(src, out).ok
    assert agg(src, out, from_start=True).ok
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])


def test_failed_write_keeps_the_previous_output(
    monkeypatch: pytest.MonkeyPatch, paths: tuple[Path, Path], tmp_path: Path
) -> None:
    """If writing the out file fails, the previous one is intact and nothing is half-counted."""
    src, out = paths
    part1, part2 = sample(25, 300), sample(26, 100)
    src.write_bytes(part1)
    assert run_api(src, out).ok
    before = out.read_bytes()
    with src.open("ab") as f:
        f.write(part2)

    def fail(fd: int) -> None:
        raise OSError(28, "No space left on device")

    with monkeypatch.context() as m:
        m.setattr(os, "fsync", fail)
        with pytest.raises(OSError, match="No space left"):
            aggregate_file(str(src), out)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([src.name, out.name])
    assert run_api(src, out) == Outcome(True, "", 100)
    assert_counts(out, recount(part1 + part2))


def test_missing_input_is_a_clear_error(tmp_path: Path) -> None:
    """A missing --in file exits 2 with "cannot read" and creates no out file."""
    out = tmp_path / "stats.json"
    got = cli("--in", str(tmp_path / "nope.ndjson"), "--out", str(out))
    assert not got.ok
    assert "cannot read" in got.message
    assert not out.exists()


def test_rerun_with_a_line_longer_than_a_read_chunk(paths: tuple[Path, Path]) -> None:
    """A file holding a line over the 4 MiB read size is quarantined once and reruns cleanly."""
    src, out = paths
    data = b"x" * (4 * 1024 * 1024 + 100) + b"\n" + sample(27, 50)
    src.write_bytes(data)
    assert run_api(src, out) == Outcome(True, "", 51)
    assert_counts(out, recount(data))
    assert run_api(src, out) == Outcome(True, "", 0)
    with src.open("ab") as f:
        f.write(b'{"code":"a","ts":1}\n')
    assert run_api(src, out) == Outcome(True, "", 1)
    assert_counts(out, recount(src.read_bytes()))


# -- found while writing these tests --------------------------------------------------


def test_stdin_rerun_with_a_line_longer_than_a_read_chunk(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The same piped stdin holding a line over 4 MiB reruns without being refused."""
    out = tmp_path / "stats.json"
    data = b"x" * (4 * 1024 * 1024 + 100) + b"\n" + sample(28, 50)
    use_stdin(monkeypatch, data)
    assert run_api("-", out) == Outcome(True, "", 51)
    use_stdin(monkeypatch, data)
    assert run_api("-", out) == Outcome(True, "", 0)


def test_bad_id_lines_are_quarantined(agg: Runner, paths: tuple[Path, Path]) -> None:
    """Lines whose id breaks the id rule are quarantined by aggregate, not counted."""
    src, out = paths
    data = (
        b'{"code":"a","ts":1,"id":""}\n'
        b'{"code":"a","ts":1,"id":5}\n'
        b'{"code":"a","ts":1,"id":"a\\nb"}\n'
        b'{"code":"a","ts":1,"id":"' + b"i" * 129 + b'"}\n'
        b'{"code":"a","ts":1,"id":"ok"}\n'
    )
    src.write_bytes(data)
    assert agg(src, out).ok
    assert_counts(out, recount(data))
    assert load(out)["quarantined"] == 4


@pytest.mark.parametrize("ts", ["9999-12-31T23:59:59-01:00", "0001-01-01T00:30:00+01:00"])
def test_ts_beyond_year_9999_in_utc_does_not_crash(paths: tuple[Path, Path], ts: str) -> None:
    """A ts string whose UTC time is outside years 1..9999 never crashes the job."""
    src, out = paths
    src.write_bytes(json.dumps({"code": "a", "ts": ts}).encode() + b'\n{"code":"b","ts":1}\n')
    result = aggregate_file(str(src), out)
    assert result.lines == 2
    assert result.counted + result.quarantined == 2
    assert load(out)["stats"]["b"]["hits"] == 1


def test_invalid_utf8_line_is_quarantined(paths: tuple[Path, Path]) -> None:
    """A line with invalid UTF-8 in its code is quarantined; the job goes on."""
    src, out = paths
    src.write_bytes(b'{"code":"a","ts":1}\n{"code":"\xff","ts":1}\n{"code":"a","ts":2}\n')
    result = aggregate_file(str(src), out)
    assert (result.lines, result.counted, result.quarantined) == (3, 2, 1)
