"""Kill the real `rlinks-bh2 run` anywhere; a restart always ends with exact counts."""

from __future__ import annotations

import random
import signal
import threading
from pathlib import Path
from typing import Any

import pytest

from rlinks.crash import POINTS
from rlinks.hits import Hit
from rlinks.log.sqlite import SqliteHitLog
from tests.conftest import (
    append_all,
    copy_folder,
    folder_snapshots,
    folder_watermark,
    make_hits,
    recount,
    run_cli,
    start_cli,
    wait_until,
)

pytestmark = pytest.mark.slow

N_HITS = 20_000
MAX_BATCH = 1000
CODES = [f"k{i:03d}" for i in range(150)]


@pytest.fixture(scope="session")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[Hit]]:
    """A data folder whose log holds N_HITS hits (appended in several blocks); copy it to use."""
    root = tmp_path_factory.mktemp("crash-template") / "data"
    hits = make_hits(N_HITS, codes=CODES, days=5, seed=42)
    append_all(root, hits, chunk=4500)
    return root, hits


def watermark_offset(data: Path) -> int:
    w = folder_watermark(data)
    return w.offset if w else 0


def expected_watermark(point: str, n: int) -> int:
    """Where the watermark is when the run dies at the n-th `point` (batches of MAX_BATCH)."""
    return n * MAX_BATCH if point == "after_commit" else (n - 1) * MAX_BATCH


@pytest.mark.parametrize("nth", [1, 3])
@pytest.mark.parametrize("point", POINTS)
def test_kill_at_each_crash_point_then_restart_is_exact(
    point: str, nth: int, ingested: tuple[Path, list[Hit]], tmp_path: Path
) -> None:
    """SIGKILL at point:n leaves a consistent watermark; a rerun ends with the exact recount."""
    template, hits = ingested
    data = copy_folder(template, tmp_path / "data")
    args = ("run", "--data", data, "--once", "--max-batch", MAX_BATCH)
    crashed = run_cli(*args, env={"RLINKS_CRASH_AT": f"{point}:{nth}"})
    assert crashed.returncode == -signal.SIGKILL, crashed.stderr
    w = folder_watermark(data)
    assert w is not None and w.epoch == 1
    assert w.offset == expected_watermark(point, nth)
    # what was committed is exactly the hits up to the watermark
    assert folder_snapshots(data) == recount(hits[: w.offset])
    assert run_cli("verify", "--data", data).returncode == 0

    rerun = run_cli(*args)
    assert rerun.returncode == 0, rerun.stderr
    w = folder_watermark(data)
    assert w is not None and (w.offset, w.epoch) == (N_HITS, 2)
    assert folder_snapshots(data) == recount(hits)
    verified = run_cli("verify", "--data", data)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert "OK" in verified.stdout


def test_an_unknown_crash_point_is_a_clear_error(
    ingested: tuple[Path, list[Hit]], tmp_path: Path
) -> None:
    """RLINKS_CRASH_AT naming no known point is refused before anything is counted."""
    data = copy_folder(ingested[0], tmp_path / "data")
    got = run_cli("run", "--data", data, "--once", env={"RLINKS_CRASH_AT": "nowhere"})
    assert got.returncode == 2
    assert "unknown crash point" in got.stderr
    w = folder_watermark(data)
    assert w is None or (w.offset, w.epoch) == (0, 0)


class Appender(threading.Thread):
    """Keeps appending hits to the log through its own SqliteHitLog until stopped."""

    def __init__(self, data: Path, *, limit: int = 60_000) -> None:
        super().__init__(daemon=True)
        self.data = data
        self.limit = limit
        self.appended: list[Hit] = []
        self.halt = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            log = SqliteHitLog(self.data)
            k = 0
            while not self.halt.is_set() and len(self.appended) < self.limit:
                chunk = make_hits(100, codes=CODES, seed=k, prefix="live", start=k * 100)
                log.append(chunk)
                self.appended += chunk
                k += 1
                self.halt.wait(0.01)
            log.close()
        except BaseException as e:  # reported by the test
            self.error = e


def test_random_sigkills_during_a_continuous_run(tmp_path: Path, procs: list[Any]) -> None:
    """kill -9 a running aggregator at random moments while hits arrive; the end is exact."""
    data = tmp_path / "data"
    append_all(data, make_hits(3000, codes=CODES, seed=1, prefix="pre"))
    appender = Appender(data)
    appender.start()
    rng = random.Random()
    kills = rng.randint(5, 8)
    try:
        for _ in range(kills):
            before = watermark_offset(data)
            p = start_cli("run", "--data", data, "--window", "0.05", "--max-batch", "500")
            procs.append(p)
            # let it apply at least once, then kill it at a random moment
            assert wait_until(lambda b=before: watermark_offset(data) > b, timeout=30)  # type: ignore[misc]
            threading.Event().wait(rng.uniform(0.0, 0.25))
            p.send_signal(signal.SIGKILL)
            p.wait(timeout=30)
            assert p.returncode == -signal.SIGKILL, p.stderr.read() if p.stderr else ""
    finally:
        appender.halt.set()
        appender.join(timeout=30)
    assert appender.error is None
    everything = make_hits(3000, codes=CODES, seed=1, prefix="pre") + appender.appended
    final = run_cli("run", "--data", data, "--once", "--max-batch", "500")
    assert final.returncode == 0, final.stderr
    w = folder_watermark(data)
    assert w is not None and w.offset == len(everything)
    assert w.epoch == kills + 1
    assert folder_snapshots(data) == recount(everything)
    assert run_cli("verify", "--data", data).returncode == 0


def test_sigterm_flushes_and_exits_zero(
    ingested: tuple[Path, list[Hit]], tmp_path: Path, procs: list[Any]
) -> None:
    """SIGTERM makes a running aggregator apply its pending hits and exit 0, counts exact."""
    data = tmp_path / "data"
    hits = make_hits(5500, codes=CODES, seed=7)
    append_all(data, hits)
    # full batches are applied at once; the last 500 wait for the 30 s window (or SIGTERM)
    p = start_cli("run", "--data", data, "--window", "30", "--max-batch", "1000")
    procs.append(p)
    assert wait_until(lambda: watermark_offset(data) == 5000, timeout=30)
    threading.Event().wait(0.3)  # let it read the remaining 500
    assert watermark_offset(data) == 5000
    p.send_signal(signal.SIGTERM)
    _, stderr = p.communicate(timeout=30)
    assert p.returncode == 0, stderr
    assert watermark_offset(data) == 5500
    assert folder_snapshots(data) == recount(hits)
    assert run_cli("verify", "--data", data).returncode == 0


def test_sigterm_while_idle_exits_zero(tmp_path: Path, procs: list[Any]) -> None:
    """SIGTERM of an aggregator with nothing pending exits 0 and changes no counts."""
    data = tmp_path / "data"
    hits = make_hits(800, codes=CODES, seed=8)
    append_all(data, hits)
    p = start_cli("run", "--data", data, "--window", "0.05")
    procs.append(p)
    assert wait_until(lambda: watermark_offset(data) == 800, timeout=30)
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=30)
    assert p.returncode == 0
    assert folder_snapshots(data) == recount(hits)


def test_crash_template_is_intact(ingested: tuple[Path, list[Hit]]) -> None:
    """The shared template folder holds every hit and was never aggregated in place."""
    template, hits = ingested
    assert not (template / "kv.db").exists()
    log = SqliteHitLog(template, readonly=True)
    try:
        assert log.end(0).offset == len(hits)
    finally:
        log.close()


@pytest.mark.parametrize("point", ["after_fold:1", "before_commit:1"])
def test_a_rebuild_killed_midway_recovers_on_the_next_run(
    point: str, ingested: tuple[Path, list[Hit]], tmp_path: Path
) -> None:
    """A rebuild SIGKILLed after the reset, before its recount commits, is finished by a run."""
    template, hits = ingested
    data = copy_folder(template, tmp_path / "data")
    assert run_cli("run", "--data", data, "--once").returncode == 0
    rebuild = run_cli("rebuild", "--data", data, env={"RLINKS_CRASH_AT": point})
    assert rebuild.returncode == -signal.SIGKILL, rebuild.stderr
    w = folder_watermark(data)
    assert w is not None and w.offset == 0 and w.epoch == 3  # run, reset, rebuild's acquire
    assert folder_snapshots(data) == {}
    assert run_cli("verify", "--data", data).returncode == 0
    assert run_cli("run", "--data", data, "--once").returncode == 0
    assert folder_snapshots(data) == recount(hits)
    assert run_cli("verify", "--data", data).returncode == 0
