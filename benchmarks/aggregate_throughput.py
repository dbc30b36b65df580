"""Throughput and peak memory of BH2 aggregation, against a naive json.loads loop.

Generates N sample hits (Zipf s=1.1 over 10,000 codes, integer `ts`) as NDJSON,
ingests them with `rlinks-bh2 ingest`, then, K times each (round robin):

* `rlinks-bh2 run --once` on a fresh copy of the ingested log (watermark 0, new
  kv.db): subprocess wall clock, and in a worker process the in-process time of
  `Aggregator(...).run(once=True)` alone;
* `rlinks-bh2 aggregate --in FILE --out OUT` to a new OUT: subprocess wall clock,
  and in a worker process the in-process time of `aggregate_file`;
* a naive baseline: `json.loads` per line, a dict counting (code, UTC day) and
  first/last per code.

Peak RSS is measured per process: every measured process is started by a small
spawner (GNU `/usr/bin/time -f %M`, or else a `python -S` fork/wait4 wrapper) and
its own `ru_maxrss` is read from wait4(). Calling wait4() directly from this
script would be wrong: on Linux a child's ru_maxrss includes the peak RSS of the
process it was vfork'ed from, i.e. this script's own peak.

Correctness is checked, not assumed: `rlinks-bh2 verify` exits 0 on the first
`run` result, every `run` result (subprocess and in-process) has watermark N and
the same per-code stats, the aggregate outputs total N hits, and the run stats,
the aggregate output and the naive counts agree code by code and day by day.

Run from the repository root, e.g.:

    .venv/bin/python benchmarks/aggregate_throughput.py --hits 2000000 --repeat 3
    .venv/bin/python benchmarks/aggregate_throughput.py --quick
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shlex
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from bh2bench.machine import cpu_model, git_state, package_version
from rlinks.settings import DEFAULT_MAX_BATCH  # light: no numpy (the naive worker imports it)

DEFAULT_HITS: Final = 2_000_000
QUICK_HITS: Final = 50_000
DEFAULT_REPEAT: Final = 3
CODES: Final = 10_000
ZIPF_S: Final = 1.1
SECONDS_PER_DAY: Final = 86_400

HITS_FILE: Final = "hits.db"
KV_FILE: Final = "kv.db"

DESCRIPTION: Final = f"""\
Benchmark BH2 aggregation end to end, with a correctness check.

1. Generates N sample hits as NDJSON (Zipf s={ZIPF_S} over {CODES:,} codes,
   integer ts) with rlinks.sample.write_sample.
2. Ingests them with `rlinks-bh2 ingest` (timed and reported, not the target).
3. Times, --repeat times each, round robin:
   - `rlinks-bh2 run --once` on a fresh copy of the ingested log (watermark 0,
     new kv.db): subprocess wall clock, and in-process Aggregator.run(once=True)
     alone (in a worker process);
   - `rlinks-bh2 aggregate --in FILE --out NEW`: subprocess wall clock, and
     in-process aggregate_file alone (in a worker process);
   - a naive baseline: json.loads per line, a dict counting (code, UTC day),
     first/last per code.
4. Reports the medians (wall and CPU), hits/s, the ratio to the naive loop
   and the peak RSS of each measured process (its own wait4() ru_maxrss, via
   GNU time or a tiny fork/wait4 wrapper, never this script's children total).
   Warns when the rlinks sources change mid-run or the machine is busy.
5. Checks: `rlinks-bh2 verify` exits 0 and the watermark is N after `run`, the
   aggregate output totals N hits, and run, aggregate and the naive loop agree
   code by code (hits, first/last hit, per-day counts).
"""

# code -> (hits, first hit ms, last hit ms, {YYYY-MM-DD: hits})
Canon = dict[str, tuple[int, int, int, dict[str, int]]]

# The fallback spawner: fork, exec the command, wait4() it, write its ru_maxrss (KiB).
_WAIT4_WRAPPER: Final = """\
import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    except OSError as e:
        print(f"cannot run {sys.argv[2]}: {e}", file=sys.stderr)
    os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(f"{usage.ru_maxrss} {usage.ru_utime + usage.ru_stime}\\n")
code = os.waitstatus_to_exitcode(status)
sys.exit(code if code >= 0 else 128 - code)
"""


class BenchError(Exception):
    """A step failed; the message says which and why."""


# -- running and measuring processes -------------------------------------------------


@dataclass(frozen=True)
class Measured:
    seconds: float  # wall clock, from start to exit
    peak_rss_kib: int  # the process's own ru_maxrss
    cpu_s: float  # its user + system CPU time
    stdout: str


def _child_env() -> dict[str, str]:
    """This environment minus what would change what rlinks does."""
    env = dict(os.environ)
    for key in ("RLINKS_CRASH_AT", "RLINKS_DATA"):
        env.pop(key, None)
    return env


def _tail(text: str, lines: int = 15) -> str:
    kept = text.strip().splitlines()[-lines:]
    return "\n".join(f"    {line}" for line in kept) or "    (no output)"


def run_checked(
    cmd: list[str], what: str, *, shown: list[str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a command; a non-zero exit is a BenchError with its output. `shown`
    is the command named in that error (default: `cmd`)."""
    try:
        return subprocess.run(
            cmd,
            check=True,
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=_child_env(),
        )
    except FileNotFoundError as e:
        raise BenchError(f"{what}: cannot start {cmd[0]!r}: {e.strerror}") from e
    except subprocess.CalledProcessError as e:
        raise BenchError(
            f"{what} failed: `{shlex.join(shown or cmd)}` exited with {e.returncode}\n"
            f"  stdout:\n{_tail(e.stdout or '')}\n  stderr:\n{_tail(e.stderr or '')}"
        ) from e


class Spawner:
    """Runs a command, timing it and reading its own peak RSS from wait4()."""

    def __init__(self, scratch: Path) -> None:
        self._scratch = scratch
        self._count = 0
        true = shutil.which("true") or "/bin/true"
        gnu_time = Path("/usr/bin/time")
        self._prefix: Callable[[Path], list[str]]
        if gnu_time.exists() and self._gnu_time_works(str(gnu_time), true):
            self._prefix = lambda rss: [str(gnu_time), "-f", "%M %U %S", "-o", str(rss)]
            self.method = "GNU /usr/bin/time -f %M (wait4 ru_maxrss of the command itself)"
        else:
            self._prefix = lambda rss: [sys.executable, "-S", "-c", _WAIT4_WRAPPER, str(rss)]
            self.method = "python -S fork/exec/wait4 wrapper (ru_maxrss of the command itself)"
        # A child's ru_maxrss is at least what it was forked from: report that floor.
        self.floor_kib = self.run([true], "measure the spawner's RSS floor").peak_rss_kib

    def _gnu_time_works(self, gnu_time: str, true: str) -> bool:
        probe = self._scratch / "time-probe.txt"
        try:
            subprocess.run(
                [gnu_time, "-f", "%M", "-o", str(probe), true], check=True, capture_output=True
            )
            int(probe.read_text().split()[-1])
        except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
            return False
        return True

    def run(self, cmd: list[str], what: str) -> Measured:
        self._count += 1
        rss_file = self._scratch / f"rss-{self._count}.txt"
        full = [*self._prefix(rss_file), *cmd]
        start = time.perf_counter()
        proc = run_checked(full, what, shown=cmd)
        seconds = time.perf_counter() - start
        try:
            # GNU time may put "Command exited with ..." first; the figures are last.
            figures = rss_file.read_text().strip().splitlines()[-1].split()
            peak, cpu = int(figures[0]), sum(float(f) for f in figures[1:])
        except (OSError, ValueError, IndexError) as e:
            raise BenchError(f"{what}: could not read the peak RSS from {rss_file}: {e}") from e
        finally:
            rss_file.unlink(missing_ok=True)
        return Measured(seconds, peak, cpu, proc.stdout)


# -- the in-process workers (run in their own process: `--worker SPEC`) --------------


def _worker_run(data_dir: str, max_batch: int) -> dict[str, Any]:
    from rlinks.aggregator import Aggregator
    from rlinks.backends import open_log, open_store
    from rlinks.settings import Settings

    settings = Settings.build(Path(data_dir), env={}, max_batch=max_batch)
    log = open_log(settings.target, create=False)
    store = open_store(settings.target)
    start, cpu = time.perf_counter(), time.process_time()
    counters = Aggregator(log, store, settings).run(once=True)
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "hits_read": counters.hits_read,
        "batches": counters.batches,
        "kv_writes": counters.kv_writes,
        "lag_hits": counters.lag_hits,
    }


def _worker_aggregate(src: str, out: str) -> dict[str, Any]:
    from rlinks.file_aggregate import aggregate_file

    start, cpu = time.perf_counter(), time.process_time()
    result = aggregate_file(src, Path(out))
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    return {
        "seconds": seconds,
        "cpu_s": cpu,
        "lines": result.lines,
        "counted": result.counted,
        "quarantined": result.quarantined,
        "codes": result.codes,
    }


def _worker_naive(src: str, result_file: str) -> dict[str, Any]:
    """The baseline: json.loads per line and plain dicts. No validation at all;
    `ts` must be numeric Unix seconds (as the sample writes it)."""
    daily: dict[tuple[str, int], int] = {}
    first: dict[str, int | float] = {}
    last: dict[str, int | float] = {}
    start, cpu = time.perf_counter(), time.process_time()
    with open(src, "rb") as f:
        for line in f:
            hit = json.loads(line)
            code = hit["code"]
            ts = hit["ts"]
            key = (code, int(ts // SECONDS_PER_DAY))
            daily[key] = daily.get(key, 0) + 1
            if code in first:
                if ts < first[code]:
                    first[code] = ts
                elif ts > last[code]:
                    last[code] = ts
            else:
                first[code] = last[code] = ts
    seconds, cpu = time.perf_counter() - start, time.process_time() - cpu
    # Outside the timed part: the counts in a comparable form, for the checks.
    epoch = dt.date(1970, 1, 1)
    canon: dict[str, list[Any]] = {}
    for (code, day), n in sorted(daily.items()):
        entry = canon.setdefault(
            code, [0, int(first[code] * 1000 // 1), int(last[code] * 1000 // 1), {}]
        )
        entry[0] += n
        entry[3][(epoch + dt.timedelta(days=day)).isoformat()] = n
    Path(result_file).write_text(json.dumps(canon))
    return {"seconds": seconds, "cpu_s": cpu, "hits": sum(daily.values()), "codes": len(first)}


def worker_main(spec_text: str) -> int:
    spec = json.loads(spec_text)
    kind = spec["kind"]
    if kind == "run":
        result = _worker_run(spec["data"], spec["max_batch"])
    elif kind == "aggregate":
        result = _worker_aggregate(spec["src"], spec["out"])
    elif kind == "naive":
        result = _worker_naive(spec["src"], spec["result"])
    else:
        print(f"unknown worker kind {kind!r}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


# -- reading results back, for the correctness checks --------------------------------


def _day_iso(day: int) -> str:
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def _iso_to_ms(text: str) -> int:
    value = dt.datetime.fromisoformat(text)
    return (value - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(milliseconds=1)


def _connect_ro(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise BenchError(f"{path} does not exist")
    return sqlite3.connect(f"file:{path}?mode=ro", uri=True)


def log_summary(data_dir: Path) -> tuple[int, int]:
    """(hits in the log, lines quarantined at ingest)."""
    conn = _connect_ro(data_dir / HITS_FILE)
    try:
        (end,) = conn.execute("SELECT coalesce(sum(end_offset), 0) FROM partitions").fetchone()
        (quarantined,) = conn.execute("SELECT count(*) FROM quarantine").fetchone()
    finally:
        conn.close()
    return int(end), int(quarantined)


def kv_canon(data_dir: Path) -> tuple[int, Canon]:
    """(sum of the watermarks, per-code stats) of a data folder's kv.db."""
    conn = _connect_ro(data_dir / KV_FILE)
    try:
        (watermark,) = conn.execute("SELECT coalesce(sum(offset), 0) FROM watermarks").fetchone()
        rows = conn.execute(
            "SELECT code, day, hits, first_ms, last_ms FROM stats_daily ORDER BY code, day"
        ).fetchall()
    finally:
        conn.close()
    canon: Canon = {}
    for code, day, hits, first_ms, last_ms in rows:
        total, lo, hi, days = canon.get(code, (0, first_ms, last_ms, {}))
        days[_day_iso(day)] = hits
        canon[code] = (total + hits, min(lo, first_ms), max(hi, last_ms), days)
    return int(watermark), canon


def aggregate_canon(out_file: Path) -> Canon:
    try:
        doc = json.loads(out_file.read_text())
        return {
            code: (
                int(s["hits"]),
                _iso_to_ms(s["first_hit"]),
                _iso_to_ms(s["last_hit"]),
                {day: int(n) for day, n in s["daily"].items()},
            )
            for code, s in doc["stats"].items()
        }
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchError(f"{out_file} is not a readable aggregate output: {e}") from e


def naive_canon(result_file: Path) -> Canon:
    doc: dict[str, list[Any]] = json.loads(result_file.read_text())
    return {c: (int(v[0]), int(v[1]), int(v[2]), dict(v[3])) for c, v in doc.items()}


def _total(canon: Canon) -> int:
    return sum(entry[0] for entry in canon.values())


def _first_difference(a: Canon, b: Canon) -> str:
    for code in sorted(set(a) | set(b)):
        if a.get(code) != b.get(code):
            return f"{code}: {a.get(code)} vs {b.get(code)}"
    return "none"


def require_same(what: str, a: Canon, b: Canon, a_name: str, b_name: str) -> None:
    if a != b:
        raise BenchError(
            f"{what}: {a_name} and {b_name} disagree ({len(a):,} vs {len(b):,} codes, "
            f"{_total(a):,} vs {_total(b):,} hits); first difference: {_first_difference(a, b)}"
        )


# -- the benchmark --------------------------------------------------------------------


@dataclass
class Row:
    name: str
    how: str
    seconds: list[float] = field(default_factory=list)
    cpu_s: list[float] = field(default_factory=list)
    rss_kib: list[int] = field(default_factory=list)

    @property
    def median_s(self) -> float:
        return statistics.median(self.seconds)

    def hits_per_s(self, n: int) -> float:
        return n / self.median_s


@dataclass
class Bench:
    n: int
    repeat: int
    max_batch: int
    seed: int
    root: Path
    spawner: Spawner
    bh2: str
    say: Callable[[str], None]
    rows: dict[str, Row] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    max_load: float = 0.0  # 1-minute load average, sampled after each measurement
    details: dict[str, Any] = field(default_factory=dict)

    def row(self, key: str, name: str, how: str) -> Row:
        return self.rows.setdefault(key, Row(name, how))

    def record(self, key: str, seconds: float, cpu_s: float, rss_kib: int) -> None:
        self.rows[key].seconds.append(seconds)
        self.rows[key].cpu_s.append(cpu_s)
        self.max_load = max(self.max_load, os.getloadavg()[0])
        self.rows[key].rss_kib.append(rss_kib)

    def worker(self, spec: dict[str, Any], what: str) -> tuple[Measured, dict[str, Any]]:
        script = str(Path(__file__).resolve())
        m = self.spawner.run([sys.executable, script, "--worker", json.dumps(spec)], what)
        try:
            result: dict[str, Any] = json.loads(m.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError) as e:
            raise BenchError(f"{what}: the worker printed no result: {m.stdout!r}") from e
        return m, result

    # 1. sample
    def generate(self) -> Path:
        from rlinks.sample import write_sample

        path = self.root / "hits.ndjson"
        start = time.perf_counter()
        with open(path, "wb") as f:
            write_sample(f, self.n, codes=CODES, s=ZIPF_S, seed=self.seed)
        seconds = time.perf_counter() - start
        size = path.stat().st_size
        self.details["sample"] = {"seconds": seconds, "bytes": size}
        self.say(f"generated {self.n:,} hits ({size / 2**20:,.1f} MiB) in {seconds:.2f} s")
        return path

    # 2. ingest
    def ingest(self, src: Path) -> Path:
        pristine = self.root / "ingested"
        self.row("ingest", "ingest", "CLI wall")
        m = self.spawner.run([self.bh2, "ingest", "--data", str(pristine), str(src)], "ingest")
        self.record("ingest", m.seconds, m.cpu_s, m.peak_rss_kib)
        logged, quarantined = log_summary(pristine)
        if logged != self.n or quarantined:
            raise BenchError(
                f"ingest: the log holds {logged:,} hits and {quarantined:,} quarantined lines; "
                f"expected {self.n:,} and 0"
            )
        # Fold any WAL into hits.db so that copying the file copies the whole log.
        conn = sqlite3.connect(pristine / HITS_FILE)
        try:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
        db_bytes = sum(p.stat().st_size for p in pristine.iterdir())
        self.details["ingest"] = {"log_bytes": db_bytes}
        self.checks.append(f"ingest: the log holds {logged:,} hits, 0 quarantined")
        self.say(f"ingested in {m.seconds:.2f} s ({db_bytes / 2**20:,.1f} MiB of log)")
        return pristine

    def _fresh_copy(self, pristine: Path, name: str) -> Path:
        """The ingested log alone, in a new folder: watermark 0, no kv.db yet."""
        dest = self.root / name
        if dest.exists():
            shutil.rmtree(dest)
        dest.mkdir()
        for p in pristine.iterdir():
            if p.name.startswith(HITS_FILE) and not p.name.endswith("-shm"):
                shutil.copyfile(p, dest / p.name)
        if (dest / KV_FILE).exists():  # ingest never writes it
            raise BenchError(f"{pristine} holds a {KV_FILE}: not a freshly ingested log")
        return dest

    def _check_run(self, data_dir: Path, what: str) -> Canon:
        watermark, canon = kv_canon(data_dir)
        if watermark != self.n or _total(canon) != self.n:
            raise BenchError(
                f"{what}: watermark {watermark:,} and {_total(canon):,} hits counted; "
                f"expected {self.n:,}"
            )
        return canon

    # 3a. run --once
    def run_once(self, pristine: Path, i: int, expected: Canon | None) -> Canon:
        self.row("run", "run --once", "CLI wall")
        self.row("run_inproc", "run --once", "Aggregator.run")
        data = self._fresh_copy(pristine, f"run-{i}")
        cmd = [self.bh2, "run", "--data", str(data), "--once", "--max-batch", str(self.max_batch)]
        m = self.spawner.run(cmd, "run --once")
        self.record("run", m.seconds, m.cpu_s, m.peak_rss_kib)
        canon = self._check_run(data, "run --once")
        if expected is None:
            self.say("verifying the run result with `rlinks-bh2 verify` (not timed)")
            start = time.perf_counter()
            out = run_checked([self.bh2, "verify", "--data", str(data)], "verify")
            self.details["verify_seconds"] = time.perf_counter() - start
            self.checks.append(
                f"run --once: `rlinks-bh2 verify` exited 0 ({' '.join(out.stdout.split())}); "
                f"watermark {self.n:,}"
            )
            expected = canon
        else:
            require_same("run --once", canon, expected, f"repeat {i + 1}", "repeat 1")
        shutil.rmtree(data)

        data = self._fresh_copy(pristine, f"run-inproc-{i}")
        spec = {"kind": "run", "data": str(data), "max_batch": self.max_batch}
        m, result = self.worker(spec, "in-process run --once")
        if result["hits_read"] != self.n or result["lag_hits"] != 0:
            raise BenchError(f"in-process run --once read {result['hits_read']:,} hits: {result}")
        self.record("run_inproc", float(result["seconds"]), float(result["cpu_s"]), m.peak_rss_kib)
        self.details["run"] = result
        require_same(
            "in-process run --once", self._check_run(data, "in-process run"), expected, "it", "CLI"
        )
        shutil.rmtree(data)
        return expected

    # 3b. aggregate
    def aggregate(self, src: Path, i: int, expected: Canon) -> None:
        self.row("aggregate", "aggregate", "CLI wall")
        self.row("aggregate_inproc", "aggregate", "aggregate_file")
        out = self.root / f"aggregate-{i}.json"
        out.unlink(missing_ok=True)
        m = self.spawner.run(
            [self.bh2, "aggregate", "--in", str(src), "--out", str(out)], "aggregate"
        )
        self.record("aggregate", m.seconds, m.cpu_s, m.peak_rss_kib)
        canon = aggregate_canon(out)
        if _total(canon) != self.n:
            raise BenchError(f"aggregate: {out} totals {_total(canon):,} hits, not {self.n:,}")
        require_same("aggregate", canon, expected, "aggregate output", "run --once stats")
        out.unlink()

        m, result = self.worker(
            {"kind": "aggregate", "src": str(src), "out": str(out)}, "in-process aggregate"
        )
        if result["counted"] != self.n or result["quarantined"]:
            raise BenchError(f"in-process aggregate_file counted {result}")
        self.record(
            "aggregate_inproc", float(result["seconds"]), float(result["cpu_s"]), m.peak_rss_kib
        )
        self.details["aggregate"] = result
        require_same(
            "in-process aggregate", aggregate_canon(out), expected, "its output", "run stats"
        )
        out.unlink()
        if i == 0:
            self.checks.append(
                f"aggregate: the output totals {self.n:,} hits and equals the run --once stats "
                "(hits, first/last, per-day) code by code"
            )

    # 4. naive
    def naive(self, src: Path, i: int, expected: Canon) -> None:
        self.row("naive", "naive baseline", "json.loads loop")
        result_file = self.root / f"naive-{i}.json"
        m, result = self.worker(
            {"kind": "naive", "src": str(src), "result": str(result_file)}, "naive baseline"
        )
        self.record("naive", float(result["seconds"]), float(result["cpu_s"]), m.peak_rss_kib)
        require_same("naive baseline", naive_canon(result_file), expected, "naive", "run stats")
        result_file.unlink()
        if i == 0:
            self.checks.append("naive loop: its counts equal the run --once stats")

    def run_all(self) -> None:
        src = self.generate()
        pristine = self.ingest(src)
        expected: Canon | None = None
        for i in range(self.repeat):
            self.say(f"repeat {i + 1}/{self.repeat}: run --once (CLI, in-process)")
            expected = self.run_once(pristine, i, expected)
            self.say(f"repeat {i + 1}/{self.repeat}: aggregate (CLI, in-process)")
            self.aggregate(src, i, expected)
            self.say(f"repeat {i + 1}/{self.repeat}: naive loop")
            self.naive(src, i, expected)


# -- reporting ---------------------------------------------------------------------------


def source_digests() -> dict[str, str]:
    """sha256 of each rlinks source file the subprocesses import (every process
    reads them again: an edit during the run changes what later repeats measure)."""
    import hashlib

    import rlinks

    root = Path(rlinks.__file__).parent
    return {
        str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(root.rglob("*.py"))
    }


def source_fingerprint(digests: dict[str, str]) -> str:
    """One short digest of all the rlinks sources."""
    import hashlib

    text = json.dumps(digests, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def environment(sources: dict[str, str]) -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu_model(),
        "cpus": os.cpu_count(),
        "numpy": package_version("numpy"),
        "msgspec": package_version("msgspec"),
        "rlinks": package_version("rlinks"),
        "sqlite": sqlite3.sqlite_version,
        "rlinks_git": git_state(),
        "rlinks_sources_sha256": source_fingerprint(sources),  # as the run started
    }


def _mib(kib: int) -> float:
    return kib / 1024


def figures(bench: Bench) -> dict[str, Any]:
    naive = bench.rows["naive"].hits_per_s(bench.n)
    return {
        key: {
            "name": row.name,
            "how": row.how,
            "seconds": row.seconds,
            "median_s": row.median_s,
            "cpu_s": row.cpu_s,
            "median_cpu_s": statistics.median(row.cpu_s),
            "hits_per_s": row.hits_per_s(bench.n),
            "vs_naive": row.hits_per_s(bench.n) / naive,
            "peak_rss_mib": _mib(max(row.rss_kib)),
            "peak_rss_mib_each": [_mib(k) for k in row.rss_kib],
        }
        for key, row in bench.rows.items()
    }


def print_table(bench: Bench, env: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    console = Console(highlight=False, width=None if sys.stdout.isatty() else 128)
    naive = bench.rows["naive"].hits_per_s(bench.n)
    table = Table(
        title=f"BH2 aggregation throughput: {bench.n:,} hits, median of {bench.repeat} "
        f"(max-batch {bench.max_batch:,})",
        caption="CLI wall: the subprocess from start to exit (interpreter start-up included). "
        "Aggregator.run, aggregate_file, json.loads loop: the call alone, timed in-process in "
        "a fresh worker process. CPU s: user + system time of the same span (CLI: the whole "
        f"process). Peak RSS: of the whole process, by {bench.spawner.method}; spawner "
        f"floor {_mib(bench.spawner.floor_kib):.1f} MiB.",
    )
    columns = (
        "measured",
        "timed",
        "hits",
        "median s",
        "min-max s",
        "CPU s",
        "hits/s",
        "vs naive",
        "peak RSS MiB",
    )
    for col in columns:
        table.add_column(col, justify="left" if col in ("measured", "timed") else "right")
    order = ["ingest", "run", "run_inproc", "aggregate", "aggregate_inproc", "naive"]
    for key in order:
        row = bench.rows[key]
        spread = f"{min(row.seconds):.3f}-{max(row.seconds):.3f}" if len(row.seconds) > 1 else "-"
        table.add_row(
            row.name,
            row.how,
            f"{bench.n:,}",
            f"{row.median_s:.3f}",
            spread,
            f"{statistics.median(row.cpu_s):.2f}",
            f"{row.hits_per_s(bench.n):,.0f}",
            f"{row.hits_per_s(bench.n) / naive:.2f}x",
            f"{_mib(max(row.rss_kib)):.1f}",
        )
    console.print(table)
    console.print(
        f"Python {env['python']}, numpy {env['numpy']}, msgspec {env['msgspec']}, "
        f"SQLite {env['sqlite']}, {env['cpu']} ({env['cpus']} CPUs); rlinks "
        f"{env['rlinks_git'] or '?'}, sources {env['rlinks_sources_sha256']}"
    )
    for warning in bench.warnings:
        console.print(f"[bold yellow]warning:[/] {warning}")
    for check in bench.checks:
        console.print(f"[green]ok[/] {check}")


# -- command line ------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="aggregate_throughput.py",
        description=DESCRIPTION,
        epilog=(
            "examples:\n"
            "  .venv/bin/python benchmarks/aggregate_throughput.py --quick\n"
            "  .venv/bin/python benchmarks/aggregate_throughput.py --hits 2000000 --repeat 3\n"
            "  .venv/bin/python benchmarks/aggregate_throughput.py --hits 10000000 --repeat 1 "
            "--json results.json"
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--hits",
        type=int,
        default=None,
        metavar="N",
        help=f"hits to generate (default {DEFAULT_HITS:,}; {QUICK_HITS:,} with --quick)",
    )
    parser.add_argument(
        "--repeat",
        type=int,
        default=None,
        metavar="K",
        help=f"measure each thing K times and report the median (default {DEFAULT_REPEAT}; "
        "1 with --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"CI smoke run: N={QUICK_HITS:,} and --repeat 1 (explicit --hits/--repeat win)",
    )
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        metavar="HITS",
        help="passed to `run --max-batch` and to the in-process run "
        f"(default {DEFAULT_MAX_BATCH:,})",
    )
    parser.add_argument("--seed", type=int, default=1, help="sample seed (default 1)")
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        metavar="DIR",
        help="make the scratch folder inside DIR instead of the system temp dir "
        "(needs about 200 bytes per hit)",
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the scratch folder (sample, ingested log)"
    )
    parser.add_argument(
        "--json",
        dest="json_path",
        type=Path,
        default=None,
        metavar="PATH",
        help="also write the figures, N and the environment (Python, CPU, numpy, "
        "msgspec) as JSON to PATH",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker is None:
        args.hits = (
            args.hits if args.hits is not None else QUICK_HITS if args.quick else DEFAULT_HITS
        )
        args.repeat = (
            args.repeat if args.repeat is not None else 1 if args.quick else DEFAULT_REPEAT
        )
        if args.hits < 1:
            parser.error("--hits must be at least 1")
        if args.repeat < 1:
            parser.error("--repeat must be at least 1")
        if args.max_batch < 1:
            parser.error("--max-batch must be at least 1")
    return args


def _find_bh2() -> str:
    beside = Path(sys.executable).parent / "rlinks-bh2"
    if beside.exists():
        return str(beside)
    found = shutil.which("rlinks-bh2")
    if found is None:
        raise BenchError(
            "rlinks-bh2 is not installed next to this Python nor on PATH: run this "
            "script with the project's .venv/bin/python"
        )
    return found


@contextmanager
def scratch_dir(parent: Path | None, keep: bool) -> Iterator[Path]:
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="rlinks-bench-", dir=parent))
    try:
        yield root
    finally:
        if keep:
            print(f"kept {root}", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.worker is not None:
        return worker_main(args.worker)
    from rich.console import Console

    err = Console(stderr=True, highlight=False)
    started = time.perf_counter()
    started_at = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")

    def say(message: str) -> None:
        err.print(f"[dim]{time.perf_counter() - started:7.1f}s[/] {message}", soft_wrap=True)

    try:
        bh2 = _find_bh2()
        with scratch_dir(args.workdir, args.keep) as root:
            spawner = Spawner(root)
            say(f"scratch folder {root}; peak RSS via {spawner.method}")
            bench = Bench(
                n=args.hits,
                repeat=args.repeat,
                max_batch=args.max_batch,
                seed=args.seed,
                root=root,
                spawner=spawner,
                bh2=bh2,
                say=say,
            )
            sources = source_digests()
            load = os.getloadavg()[0]
            bench.run_all()
            now = source_digests()
            changed = sorted(f for f in set(now) | set(sources) if now.get(f) != sources.get(f))
            if changed:
                bench.warnings.append(
                    f"rlinks sources changed during the run ({', '.join(changed)}): repeats "
                    "may have measured different code; run again on a quiet tree"
                )
            load = max(load, bench.max_load)
            if load > 0.5 * (os.cpu_count() or 1) + 1:
                bench.warnings.append(
                    f"1-minute load average reached {load:.1f} on {os.cpu_count()} CPUs "
                    "(includes this benchmark): other processes competed for the CPU, "
                    "wall-clock figures are noisy (compare CPU s)"
                )
            bench.details["load_avg_1m_max"] = load
    except BenchError as e:
        err.print(f"[bold red]benchmark failed:[/] {e}", soft_wrap=True)
        return 1
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]")
        return 130
    env = environment(sources)
    print_table(bench, env)
    if args.json_path is not None:
        doc = {
            "n": bench.n,
            "started_at": started_at,
            "repeat": bench.repeat,
            "max_batch": bench.max_batch,
            "seed": bench.seed,
            "codes": CODES,
            "zipf_s": ZIPF_S,
            "environment": env,
            "rss_method": spawner.method,
            "rss_floor_mib": _mib(spawner.floor_kib),
            "results": figures(bench),
            "details": bench.details,
            "checks": bench.checks,
            "warnings": bench.warnings,
            "total_seconds": time.perf_counter() - started,
        }
        args.json_path.parent.mkdir(parents=True, exist_ok=True)
        args.json_path.write_text(json.dumps(doc, indent=2) + "\n")
        say(f"wrote {args.json_path}")
    say("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
