"""`rlinks serve --backend redis://...`: many server processes on one real Redis.

Each test starts its own redis-server (loopback, free port, temp dir, AOF on),
sets routes with the `rlinks links` CLI on it and drives real HTTP.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from rlinks.log.redis import RedisHitLog
from tests.conftest import BH2, RLINKS, run_cli
from tests.redis_helpers import RedisServer
from tests.server_helpers import running_server, wait_for
from tests.test_server_hits import hammer

N_CODES = 20
PER_CODE = 40


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path / "redis").start()
    yield server
    server.stop()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


def set_links(url: str, codes: list[str]) -> None:
    for code in codes:
        got = run_cli(
            "links", "set", code, f"https://example.com/{code}", "--backend", url, exe=RLINKS
        )
        assert got.returncode == 0, got.stderr


def bh2_json(*args: str) -> Any:
    got = run_cli(*args, "--json")
    assert got.returncode == 0, got.stderr
    return json.loads(got.stdout)


def hits_counted(url: str) -> int:
    stats = bh2_json("stats", "--backend", url)
    return sum(int(v["hits"]) for v in stats["stats"].values())


def test_two_server_processes_on_redis_count_every_redirect(tmp_path: Path, redis_url: str) -> None:
    """Two server workers append to Redis Streams (4 partitions, commit mode);
    the aggregator beside them makes the stats equal to the redirects exactly."""
    codes = [f"r{i}" for i in range(N_CODES)]
    set_links(redis_url, codes)
    paths = [f"/{c}" for c in codes for _ in range(PER_CODE)]
    flags = ("--workers", "2", "--partitions", "4", "--window", "0.2")
    with running_server(tmp_path / "srv", *flags, backend=redis_url) as s:
        got = hammer(s, paths, 8)
        assert got == Counter({(302, c): PER_CODE for c in codes})
        assert s.get("/missing").status == 404
        total = len(paths)
        assert wait_for(lambda: hits_counted(redis_url) == total, timeout=30), s.stderr()
        status = bh2_json("status", "--backend", redis_url)
        parts = status["partitions"]
        assert len(parts) == 4
        assert sum(p["log_end"] for p in parts) == total
        one = run_cli("links", "stats", codes[3], "--backend", redis_url, "--json", exe=RLINKS)
        assert json.loads(one.stdout)["hits"] == PER_CODE
    verify = run_cli("verify", "--backend", redis_url, exe=BH2)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    # Nothing was written to the folder the server was started from.
    assert not (tmp_path / "srv" / "hits.db").exists()


def test_kv_and_off_modes_work_on_redis(tmp_path: Path, redis_url: str) -> None:
    """--hits kv keeps a per-hit stats key in Redis; --hits off logs nothing."""
    set_links(redis_url, ["kv-a", "kv-b"])
    with running_server(tmp_path / "kv", "--hits", "kv", backend=redis_url) as s:
        got = hammer(s, ["/kv-a"] * 12 + ["/kv-b"] * 5, 1)
        assert got == Counter({(302, "kv-a"): 12, (302, "kv-b"): 5})
        m = s.metrics()
        assert m["rlinks_kv_writes_total"] == 17

    client = redis.Redis.from_url(redis_url)
    try:
        raw = client.get("rlinks:kv:stats:kv-a")
        assert raw is not None and json.loads(raw)["hits"] == 12
    finally:
        client.close()
    with running_server(tmp_path / "off", "--hits", "off", backend=redis_url) as s:
        assert hammer(s, ["/kv-a"] * 10, 2) == Counter({(302, "kv-a"): 10})
    log = RedisHitLog(redis_url, create=False)
    try:
        assert log.end(0).offset == 0
    finally:
        log.close()


def test_redis_keeps_no_raw_address_or_user_agent(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    """After traffic on Redis, neither the raw client address nor the user agent
    is anywhere in Redis's files: the AOF holds every write as sent (not
    compressed, unlike a snapshot), and it has the prefix but not them."""
    url = redis_server.url
    set_links(url, ["priv"])
    agent, address = "UA-SECRET-REDIS-987", "198.51.100.77"
    with running_server(tmp_path / "srv", "--trust-proxy", "--window", "0.1", backend=url) as s:
        for _ in range(3):
            r = s.get("/priv", **{"User-Agent": agent, "X-Forwarded-For": address})
            assert r.status == 302
        assert wait_for(lambda: hits_counted(url) == 3, timeout=30), s.stderr()
        assert agent not in s.stderr() and address not in s.stderr()
    time.sleep(1.5)  # appendfsync everysec: every write is in the AOF now, as sent
    files = [p for p in redis_server.directory.rglob("*") if p.is_file()]
    blob = b"".join(p.read_bytes() for p in files)
    assert b"198.51.100.0/24" in blob, "the scan must see the logged prefix"
    assert agent.encode() not in blob and address.encode() not in blob


def test_two_serve_commands_on_one_redis_share_the_aggregation(
    tmp_path: Path, redis_url: str
) -> None:
    """Two `rlinks serve` (two "machines") on one Redis, each with its aggregator:
    the aggregators share the partitions through leases instead of fencing each
    other out, and every redirect of both is counted once."""
    codes = [f"m{i}" for i in range(N_CODES)]
    set_links(redis_url, codes)
    paths = [f"/{c}" for c in codes for _ in range(10)]
    flags = ("--partitions", "4", "--window", "0.2")
    with (
        running_server(tmp_path / "a", *flags, backend=redis_url) as a,
        running_server(tmp_path / "b", *flags, backend=redis_url) as b,
    ):
        assert hammer(a, paths, 4) == Counter({(302, c): 10 for c in codes})
        assert hammer(b, paths, 4) == Counter({(302, c): 10 for c in codes})
        total = 2 * len(paths)
        assert wait_for(lambda: hits_counted(redis_url) == total, timeout=30), a.stderr()
        for s in (a, b):
            assert "another aggregator took over" not in s.stderr(), s.stderr()
    verify = run_cli("verify", "--backend", redis_url, exe=BH2)
    assert verify.returncode == 0, verify.stdout + verify.stderr
