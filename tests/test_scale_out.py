"""Scale-out on real Redis servers: many workers, zombies, crashes, a cluster.

Every test starts its own `redis-server` (loopback, a free port, a temp dir,
AOF on) or a three-master Redis Cluster, and drives the real CLI processes.
"""

from __future__ import annotations

import contextlib
import json
import random
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlinks.errors import ConfigError
from rlinks.hits import Hit
from rlinks.log.redis import RedisHitLog
from rlinks.store.redis import RedisStatsStore
from rlinks.verify import differences
from tests.conftest import make_hits, recount, run_cli, snapshots, start_cli, wait_until
from tests.redis_helpers import RedisClusterServers, RedisServer

pytestmark = pytest.mark.slow

CODES = tuple(f"c{i}" for i in range(40))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[RedisServer]:
    s = RedisServer(tmp_path / "redis").start()
    yield s
    s.stop()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterServers]:
    c = RedisClusterServers(tmp_path_factory.mktemp("cluster")).start()
    yield c
    c.stop()


def flush_cluster(c: RedisClusterServers) -> None:
    for node in c.nodes:
        client = node.client()
        client.flushall()
        client.close()


def append(url: str, hits: list[Hit], *, partitions: int, chunk: int = 500) -> None:
    log = RedisHitLog(url, partitions=partitions)
    try:
        for k in range(0, len(hits), chunk):
            log.append(hits[k : k + chunk])
    finally:
        log.close()


def worker(url: str, *extra: str, lease: float = 1.0) -> subprocess.Popen[str]:
    return start_cli(
        "run", "--backend", url, "--partitions", "auto", "--lease", str(lease),
        "--window", "0.1", *extra,
    )  # fmt: skip


def stop(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in procs:
        with contextlib.suppress(subprocess.TimeoutExpired):
            p.communicate(timeout=20)
        if p.poll() is None:
            p.kill()
            p.communicate()


def drained(url: str) -> bool:
    """Every partition's watermark is at its log end (and the log is not empty)."""
    got = run_cli("status", "--backend", url, "--json")
    if got.returncode != 0:
        return False
    parts = json.loads(got.stdout)["partitions"]
    return sum(p["log_end"] for p in parts) > 0 and all(p["lag_hits"] == 0 for p in parts)


def assert_exact(url: str, expected: list[Hit]) -> None:
    """Stats equal an independent recount of what was sent, and `verify` agrees."""
    log, store = RedisHitLog(url, create=False), RedisStatsStore(url)
    try:
        assert snapshots(store) == recount(expected)
        assert differences(log, store) == []
    finally:
        log.close()
        store.close()
    got = run_cli("verify", "--backend", url)
    assert got.returncode == 0, got.stdout + got.stderr


def churn(url: str, hits: list[Hit], procs: list[Any], *, partitions: int, seed: int) -> None:
    """Append `hits` in chunks while killing (-9) and restarting workers at random."""
    rng = random.Random(seed)
    workers = [worker(url) for _ in range(3)]
    procs.extend(workers)
    for k in range(0, len(hits), 600):
        append(url, hits[k : k + 600], partitions=partitions)
        if rng.random() < 0.5:
            i = rng.randrange(len(workers))
            workers[i].kill()
            workers[i].communicate()
            workers[i] = worker(url)
            procs.append(workers[i])
        time.sleep(rng.uniform(0.05, 0.3))
    assert wait_until(lambda: drained(url), timeout=60)
    stop(workers)


def test_three_workers_on_six_partitions_survive_random_kills(
    server: RedisServer, procs: list[Any]
) -> None:
    """Ingest while three `run --partitions auto` workers are killed and restarted
    at random: a killed worker's partitions move to the others and the stats end
    equal to an independent recount."""
    hits = make_hits(9000, codes=CODES, seed=11)
    append(server.url, hits[:1], partitions=6)  # set the log up with six partitions
    churn(server.url, hits[1:], procs, partitions=6, seed=1)
    assert_exact(server.url, hits)
    status = run_cli("status", "--backend", server.url, "--json")
    assert status.stdout.count('"partition":') == 6


def test_workers_share_partitions_and_take_over_a_dead_ones(
    server: RedisServer, procs: list[Any]
) -> None:
    """Two workers split six partitions 3/3; after one is killed, the other holds
    all six within about a lease period and keeps counting."""
    url = server.url
    append(url, make_hits(600, codes=CODES, seed=2), partitions=6)
    a, b = worker(url, "--worker-id", "a"), worker(url, "--worker-id", "b")
    procs += [a, b]
    client = server.client()

    def holders() -> list[Any]:
        return [client.get(f"rlinks:{{p{p}}}:lease") for p in range(6)]

    assert wait_until(lambda: sorted(map(str, holders())) == ["b'a'"] * 3 + ["b'b'"] * 3)
    a.kill()
    a.communicate()
    assert wait_until(lambda: holders() == [b"b"] * 6, timeout=15)
    more = make_hits(600, codes=CODES, seed=3, start=600)
    append(url, more, partitions=6)
    assert wait_until(lambda: drained(url), timeout=30)
    stop([b])
    client.close()
    assert_exact(url, make_hits(600, codes=CODES, seed=2) + more)


def test_a_paused_worker_is_fenced_when_it_wakes(server: RedisServer, procs: list[Any]) -> None:
    """SIGSTOP a worker holding read-but-unapplied hits past its lease; another
    worker takes the partition (higher epoch) and applies them; the first one,
    resumed, gives the partition up without counting anything twice."""
    url = server.url
    first = make_hits(500, codes=CODES, seed=4)
    append(url, first[:1], partitions=1)
    zombie = start_cli(
        "-v", "run", "--backend", url, "--partitions", "auto", "--lease", "1",
        "--window", "5", "--worker-id", "zombie",
    )  # fmt: skip
    procs.append(zombie)
    client = server.client()
    assert wait_until(lambda: client.get("rlinks:{p0}:lease") == b"zombie")
    epoch_before = int(client.hget("rlinks:{p0}:wm", "epoch") or 0)
    append(url, first[1:], partitions=1)
    time.sleep(0.5)  # it reads them, and holds them for its 5 s window
    zombie.send_signal(signal.SIGSTOP)
    try:
        assert wait_until(lambda: client.get("rlinks:{p0}:lease") is None, timeout=10)
        taker = worker(url, "--worker-id", "taker")
        procs.append(taker)
        assert wait_until(lambda: drained(url), timeout=30)
        assert int(client.hget("rlinks:{p0}:wm", "epoch") or 0) > epoch_before
    finally:
        zombie.send_signal(signal.SIGCONT)
    time.sleep(1.5)  # its next tick finds the lease gone; its epoch would be refused
    more = make_hits(200, codes=CODES, seed=5, start=500)
    append(url, more, partitions=1)
    assert wait_until(lambda: drained(url), timeout=30)
    stop([zombie, taker])
    _, err = zombie.communicate()
    assert "partition 0" in err and ("lease lost" in err or "another aggregator" in err), err
    assert "1 partitions lost" in err
    client.close()
    assert_exact(url, first + more)


def test_redis_killed_and_restarted_from_its_aof(server: RedisServer, procs: list[Any]) -> None:
    """kill -9 of redis-server while a worker aggregates and hits are appended;
    after a restart from the AOF the worker resumes by itself and the stats
    equal a recount of exactly what the log kept."""
    url = server.url
    hits = make_hits(6000, codes=CODES, seed=6)
    append(url, hits[:1000], partitions=2)
    w = worker(url)
    procs.append(w)
    assert wait_until(lambda: drained(url), timeout=30)
    sent = 1000
    for k in range(1000, 4000, 300):
        append(url, hits[k : k + 300], partitions=2)
        sent = k + 300
    server.kill()  # whatever the AOF had not fsynced (up to ~1 s) is gone
    time.sleep(1.0)
    server.start()
    for k in range(sent, len(hits), 300):
        append(url, hits[k : k + 300], partitions=2)
    assert wait_until(lambda: drained(url), timeout=60)
    stop([w])
    _, err = w.communicate()
    assert w.returncode == 0, err
    log, store = RedisHitLog(url, create=False), RedisStatsStore(url)
    try:
        kept = [hit for p in range(log.partitions) for _, hit in log.records(p)]
        assert len(kept) <= len(hits)
        assert snapshots(store) == recount(kept)
        assert differences(log, store) == []
    finally:
        log.close()
        store.close()


def test_the_same_end_to_end_run_on_a_three_master_cluster(
    cluster: RedisClusterServers, procs: list[Any]
) -> None:
    """On a real three-master Redis Cluster: ingest through the CLI, three
    workers killed and restarted at random, stats equal a recount, verify OK."""
    flush_cluster(cluster)
    url = cluster.url
    hits = make_hits(6000, codes=CODES, seed=7)
    client = redis.cluster.RedisCluster.from_url(url)
    try:
        slots = {client.keyslot(f"rlinks:{{p{p}}}:hits") for p in range(6)}  # type: ignore[no-untyped-call]
        assert len(slots) == 6
    finally:
        client.close()
    append(url, hits[:1], partitions=6)
    churn(url, hits[1:], procs, partitions=6, seed=2)
    assert_exact(url, hits)
    got = run_cli("stats", "--backend", url, "--code", CODES[0], "--json")
    assert got.returncode == 0 and f'"{CODES[0]}"' in got.stdout


def test_a_backend_nobody_answers_is_a_clear_error() -> None:
    """A URL with no server behind it fails at once, naming the URL (no traceback)."""
    got = run_cli("status", "--backend", "redis://127.0.0.1:1/0")
    assert got.returncode == 2
    assert "cannot reach Redis at redis://127.0.0.1:1/0" in got.stderr
    assert "Traceback" not in got.stderr
    with pytest.raises(ConfigError):
        RedisHitLog("http://example.com")
