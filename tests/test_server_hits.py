"""Hits recorded by the real `rlinks serve`: privacy, exact counts end to end, the
hit modes, and no redirected hit lost to a SIGKILL."""

from __future__ import annotations

import http.client
import json
import os
import signal
import sqlite3
import threading
import time
from collections import Counter
from pathlib import Path

import msgspec
import pytest

from rlinks.hits import Hit
from rlinks.log.sqlite import SqliteHitLog
from rlinks.routes.model import Route
from rlinks.routes.store import SqliteRouteStore
from tests.conftest import BH2, RLINKS, run_cli
from tests.server_helpers import (
    Server,
    bh2_json,
    kv_value,
    log_counts,
    log_end,
    put_route,
    running_server,
    wait_for,
    wait_for_lag_zero,
)

TOKEN = "hits-admin-token"
UA = "Mozilla/5.0 (X11; Linux) UA-SECRET-12345"
CLIENT_V4 = "203.0.113.77"
FORGED_V4 = "198.51.100.9"
CLIENT_V6 = "2001:db8:abcd:1234::77"
N_HITS = 2000
N_CODES = 50
THREADS = 8


def put_routes(data: Path, codes: list[str]) -> None:
    """Store one route per code in a single store connection."""
    store = SqliteRouteStore(data)
    try:
        for code in codes:
            store.put(Route.new(code, f"https://example.com/{code}"), "tester")
    finally:
        store.close()


def records(data: Path) -> list[Hit]:
    """Every hit in the log, in log order (read through a new read-only connection)."""
    log = SqliteHitLog(data, readonly=True)
    try:
        return [h for p in range(log.partitions) for _, h in log.records(p)]
    finally:
        log.close()


def hammer(
    server: Server, paths: list[str], threads: int, headers: dict[str, str] | None = None
) -> Counter[tuple[int, str]]:
    """GET every path once over `threads` keep-alive connections; (status, code) counts."""
    results: list[Counter[tuple[int, str]]] = [Counter() for _ in range(threads)]
    errors: list[BaseException] = []

    def work(k: int) -> None:
        conn = server.connection(timeout=15)
        try:
            for path in paths[k::threads]:
                conn.request("GET", path, headers=headers or {})
                resp = conn.getresponse()
                resp.read()
                results[k][resp.status, path[1:]] += 1
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)
        finally:
            conn.close()

    workers = [threading.Thread(target=work, args=(k,)) for k in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=60)
    assert not any(w.is_alive() for w in workers), "a client thread hung"
    assert not errors, errors
    return sum(results, Counter())


def scan(data: Path, needles: list[bytes]) -> dict[bytes, list[str]]:
    """Which files under `data` contain each needle (raw bytes, any file)."""
    found: dict[bytes, list[str]] = {n: [] for n in needles}
    files = [p for p in data.rglob("*") if p.is_file()]
    assert files, f"nothing to scan under {data}"
    for path in files:
        blob = path.read_bytes()
        for n in needles:
            if n in blob or n.lower() in blob.lower():
                found[n].append(path.name)
    return found


# -- privacy --------------------------------------------------------------------------


def test_hits_keep_no_raw_address_or_user_agent(tmp_path: Path) -> None:
    """Hits keep only IP prefixes, a UA hash, country and a capped referrer; no raw UA or IP."""
    data = tmp_path / "data"
    put_route(data, "priv", "https://example.com/private")
    referrer = "https://ref.example/" + "r" * 1000
    with running_server(data, "--trust-proxy", "--window", "0.2") as s:
        r1 = s.get(
            "/priv",
            **{
                "User-Agent": UA,
                "X-Forwarded-For": CLIENT_V4,
                "CF-IPCountry": "de",
                "Referer": referrer,
            },
        )
        r2 = s.get("/priv", **{"User-Agent": UA, "X-Forwarded-For": f"{FORGED_V4}, {CLIENT_V6}"})
        r3 = s.get("/priv")
        assert [r.status for r in (r1, r2, r3)] == [302, 302, 302]
        wait_for_lag_zero(data, 3)  # the stats are in kv.db too now

        h1, h2, h3 = records(data)
        assert h1.code == h2.code == h3.code == "priv"
        assert h1.ip_prefix == "203.0.113.0/24"
        assert h1.country == "DE"
        assert h1.referrer == referrer[:512] and len(h1.referrer) == 512
        assert h1.ua_hash is not None and len(h1.ua_hash) == 16
        assert UA not in h1.ua_hash
        # The proxy we trust appends last: the client-supplied left part is ignored.
        assert h2.ip_prefix == "2001:db8:abcd::/48"
        assert h2.ua_hash == h1.ua_hash  # same agent, same hash: countable, not readable
        assert (h2.country, h2.referrer) == (None, None)
        assert h3.ip_prefix == "127.0.0.0/24"
        assert (h3.ua_hash, h3.country, h3.referrer) == (None, None, None)

        secrets = [
            b"UA-SECRET-12345",
            CLIENT_V4.encode(),
            FORGED_V4.encode(),
            b"2001:db8:abcd:1234",
        ]
        found = scan(data, [*secrets, b"203.0.113.0/24"])
        assert found[b"203.0.113.0/24"], "the scan must see the logged prefix"
        assert all(not found[n] for n in secrets), found
        assert not any(n.decode() in s.stderr() for n in secrets), s.stderr()
    found = scan(data, secrets)  # stopped: WAL checkpointed into the main files
    assert all(not found[n] for n in secrets), found


def test_forwarded_for_is_ignored_without_trust_proxy(tmp_path: Path) -> None:
    """Without --trust-proxy a client's X-Forwarded-For does not choose its recorded prefix."""
    data = tmp_path / "data"
    put_route(data, "nofwd", "https://example.com/")
    with running_server(data, "--no-aggregate") as s:
        assert s.get("/nofwd", **{"X-Forwarded-For": CLIENT_V4}).status == 302
        [hit] = records(data)
        assert hit.ip_prefix == "127.0.0.0/24"


# -- exact counts end to end ------------------------------------------------------------


def codes_and_paths(prefix: str) -> tuple[list[str], list[str]]:
    codes = [f"{prefix}-{i:02d}" for i in range(N_CODES)]
    return codes, [f"/{codes[i % N_CODES]}" for i in range(N_HITS)]


def test_commit_mode_counts_every_redirect_exactly(tmp_path: Path) -> None:
    """2,000 concurrent redirects over 50 codes (commit): stats equal them exactly, verify OK."""
    data = tmp_path / "data"
    codes, paths = codes_and_paths("e2e")
    put_routes(data, codes)
    per_code = N_HITS // N_CODES
    flags = ("--durability", "commit", "--window", "0.2")
    with running_server(data, *flags, env={"RLINKS_ADMIN_TOKEN": TOKEN}) as s:
        got = hammer(s, paths, THREADS)
        assert got == Counter({(302, c): per_code for c in codes})
        # commit mode: every answered redirect is already in the log
        assert log_end(data) == N_HITS
        m = s.metrics()
        assert m["rlinks_hits_appended_total"] == N_HITS
        assert m["rlinks_hits_dropped_total"] == 0 and m["rlinks_hits_failed_total"] == 0
        assert m['rlinks_requests_total{status="302"}'] == N_HITS

        wait_for_lag_zero(data, N_HITS)
        auth = {"Authorization": f"Bearer {TOKEN}"}
        for code in codes:
            r = s.get(f"/api/links/{code}/stats", **auth)
            assert r.status == 200, r.body
            stats = r.json()
            assert stats["hits"] == per_code, stats
            assert sum(stats["daily"].values()) == per_code
            assert stats["lag_hits"] == 0
        assert s.metrics()['rlinks_aggregator_lag_hits{partition="0"}'] == 0

        everything = bh2_json("stats", "--data", data)
        assert {c: v["hits"] for c, v in everything["stats"].items()} == dict.fromkeys(
            codes, per_code
        )
        assert everything["lag_hits"] == 0
        one = run_cli("links", "stats", codes[7], "--data", data, "--json", exe=RLINKS)
        assert one.returncode == 0, one.stderr
        assert json.loads(one.stdout)["hits"] == per_code
        verify = run_cli("verify", "--data", data, exe=BH2)
        assert verify.returncode == 0, verify.stdout + verify.stderr


def test_async_mode_appends_every_redirect(tmp_path: Path) -> None:
    """2,000 concurrent redirects (async): all are appended, none dropped, counts exact."""
    data = tmp_path / "data"
    codes, paths = codes_and_paths("asy")
    put_routes(data, codes)
    per_code = N_HITS // N_CODES
    with running_server(data, "--durability", "async", "--window", "0.2") as s:
        got = hammer(s, paths, THREADS)
        assert got == Counter({(302, c): per_code for c in codes})
        assert wait_for(lambda: log_end(data) >= N_HITS, timeout=15), log_end(data)
        time.sleep(0.2)  # nothing more may arrive after the last one
        assert log_end(data) == N_HITS
        m = s.metrics()
        assert m["rlinks_hits_dropped_total"] == 0
        assert m["rlinks_hits_appended_total"] == N_HITS
        assert log_counts(data) == dict.fromkeys(codes, per_code)
        wait_for_lag_zero(data, N_HITS)
        verify = run_cli("verify", "--data", data, exe=BH2)
        assert verify.returncode == 0, verify.stdout + verify.stderr


@pytest.mark.parametrize("workers", [1, 2])
def test_sigterm_writes_queued_hits_and_leaves_nothing_behind(tmp_path: Path, workers: int) -> None:
    """SIGTERM right after async redirects: every hit is appended, the server
    exits 0, and neither a process nor its metrics folder is left."""
    data = tmp_path / "data"
    codes, paths = codes_and_paths("term")
    put_routes(data, codes)
    flags = ("--durability", "async", "--workers", str(workers))
    with running_server(data, *flags) as s:
        got = hammer(s, paths, THREADS)
        assert sum(got.values()) == N_HITS
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(timeout=15) == 0, s.stderr()

        def group_gone() -> bool:
            try:
                os.killpg(s.proc.pid, 0)
            except ProcessLookupError:
                return True
            return False

        assert wait_for(group_gone, timeout=10), "a process of the server outlived it"
        assert log_end(data) == N_HITS
        # running_server points TMPDIR here; the metrics folder lives in it.
        assert list((tmp_path / "data-server-tmp").iterdir()) == []


def test_redirects_do_not_wait_while_another_process_writes_the_store(tmp_path: Path) -> None:
    """Each second the worker saves its KV call counts to kv.db. While another
    process holds kv.db's write lock (as the aggregator does while it applies
    a batch), redirects are still answered at once, and the counts are saved
    once the lock is free."""
    data = tmp_path / "data"
    put_routes(data, ["lk"])
    with running_server(data, "--durability", "async", "--no-aggregate") as s:
        assert s.get("/lk").status == 302
        writer = sqlite3.connect(data / "kv.db", isolation_level=None)
        writer.execute("BEGIN IMMEDIATE")  # the store's write lock, for 3 s
        slowest = 0.0
        try:
            until = time.monotonic() + 3.0  # three of the worker's saves
            while time.monotonic() < until:
                started = time.monotonic()
                assert s.get("/lk").status == 302
                slowest = max(slowest, time.monotonic() - started)
                time.sleep(0.02)
        finally:
            writer.rollback()
            released = time.time() * 1000
            writer.close()
        # A save on the event loop would hold redirects until the lock is free.
        assert slowest < 1.5, f"a redirect waited {slowest:.2f} s for kv.db's write lock"

        def saved_since_release() -> bool:
            conn = sqlite3.connect(f"file:{data / 'kv.db'}?mode=ro", uri=True)
            try:
                (newest,) = conn.execute("SELECT max(updated_ms) FROM kv_calls").fetchone()
            finally:
                conn.close()
            return newest is not None and newest >= released

        assert wait_for(saved_since_release, timeout=10)


# -- the other hit modes ----------------------------------------------------------------


def test_hits_off_records_nothing(tmp_path: Path) -> None:
    """--hits off redirects but appends no hit and writes no stats."""
    data = tmp_path / "data"
    put_routes(data, ["off-a", "off-b"])
    with running_server(data, "--hits", "off") as s:
        assert s.get("/healthz").json()["hits"] == "off"
        got = hammer(s, ["/off-a", "/off-b"] * 15, 2)
        assert got == Counter({(302, "off-a"): 15, (302, "off-b"): 15})
        m = s.metrics()
        assert m["rlinks_hits_appended_total"] == 0
        assert m["rlinks_kv_writes_total"] == 0
        assert m['rlinks_requests_total{status="302"}'] == 30
        assert log_end(data) == 0
    assert log_end(data) == 0 and log_counts(data) == {}


def test_a_held_route_and_a_read_route_answer_and_count_alike(tmp_path: Path) -> None:
    """A route the worker holds is answered by the protocol's fast path, one read
    from the store (--route-cache-s 0) by the ASGI path: same status, same headers,
    same hit fields (but its id and time)."""
    headers = {"User-Agent": "Probe/1.0", "Referer": "https://ref.example/x", "CF-IPCountry": "de"}
    seen: dict[str, tuple[list[tuple[int, dict[str, str]]], list[dict[str, object]]]] = {}
    for name, extra in (("held", ()), ("read", ("--route-cache-s", "0"))):
        data = tmp_path / name / "data"
        put_routes(data, ["same"])
        flags = ("--hits", "append", "--durability", "async", "--redirect-status", "307")
        with running_server(data, *flags, "--no-aggregate", *extra) as s:
            answers = []
            for method in ("GET", "HEAD"):
                r = s.request(method, "/same", headers=headers)
                assert r.body == b""
                answers.append((r.status, {k: v for k, v in r.headers.items() if k != "date"}))
                assert r.header("date")
        hits = [
            # (ua_hash is keyed by each folder's own salt: compared as present)
            {k: v if k != "ua_hash" else bool(v) for k, v in msgspec.structs.asdict(h).items()}
            for h in records(data)
        ]
        for h in hits:
            del h["id"], h["ts_ms"]
        seen[name] = (answers, hits)
    assert seen["held"] == seen["read"]
    answers, hits = seen["held"]
    assert answers[0] == (
        307,
        {
            "location": "https://example.com/same",
            "content-length": "0",
            "cache-control": "no-store",
        },
    )
    assert len(hits) == 2 and hits[0]["country"] == "DE" and hits[0]["ip_prefix"] == "127.0.0.0/24"


def test_hits_kv_writes_stats_per_hit(tmp_path: Path) -> None:
    """--hits kv does a read and a write of the code's stats key per redirect, no log."""
    data = tmp_path / "data"
    want = {"kv-a": 10, "kv-b": 15, "kv-c": 5}
    put_routes(data, list(want))
    paths = [f"/{c}" for c, n in want.items() for _ in range(n)]
    with running_server(data, "--hits", "kv") as s:
        got = hammer(s, paths, 1)  # one client: the baseline's read-modify-write races
        assert got == Counter({(302, c): n for c, n in want.items()})
        m = s.metrics()
        total = sum(want.values())
        assert m["rlinks_kv_writes_total"] == total
        # A stats read per hit, plus the start-up load of the routes (the feed
        # position and every route: two reads) and a feed read a second.
        assert m["rlinks_kv_reads_total"] >= total + 2
        assert m["rlinks_hits_appended_total"] == 0
        for code, n in want.items():
            raw = kv_value(data, f"stats:{code}")
            assert raw is not None, code
            stats = json.loads(raw)
            assert stats["hits"] == n and sum(stats["daily"].values()) == n, stats
            assert stats["first_ms"] <= stats["last_ms"]
        assert log_end(data) == 0


# -- SIGKILL under load ----------------------------------------------------------------


def test_sigkill_under_load_loses_no_redirected_hit(tmp_path: Path) -> None:
    """SIGKILL of the server group mid-load (commit): every 302 received is in the log."""
    data = tmp_path / "data"
    codes = [f"kill-{i:02d}" for i in range(20)]
    put_routes(data, codes)
    sent: Counter[str] = Counter()
    received: Counter[str] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    with running_server(data, "--durability", "commit", "--window", "0.2") as s:

        def client(k: int) -> None:
            conn = s.connection(timeout=5)
            try:
                for i in range(20_000):  # bounded; the kill ends it much sooner
                    if stop.is_set():
                        return
                    code = codes[(k * 7 + i) % len(codes)]
                    with lock:
                        sent[code] += 1
                    conn.request("GET", f"/{code}")
                    resp = conn.getresponse()
                    resp.read()
                    if resp.status == 302:
                        with lock:
                            received[code] += 1
            except (OSError, http.client.HTTPException):
                return  # the server is gone
            finally:
                conn.close()

        workers = [threading.Thread(target=client, args=(k,)) for k in range(6)]
        for w in workers:
            w.start()
        assert wait_for(lambda: sum(received.values()) >= 1000, timeout=20), received
        s.kill_group()  # SIGKILL the server and its aggregator mid-load
        s.proc.wait(timeout=10)
        time.sleep(0.2)
        stop.set()
        for w in workers:
            w.join(timeout=10)
        assert not any(w.is_alive() for w in workers)
        assert s.proc.returncode == -9

    logged = log_counts(data)
    assert sum(received.values()) >= 1000
    for code in codes:
        assert received[code] <= logged.get(code, 0) <= sent[code], (
            code,
            received[code],
            logged.get(code),
            sent[code],
        )
    assert set(logged) <= set(codes)
    # A fresh BH2 run after the crash counts exactly what the log holds.
    run = run_cli("run", "--data", data, "--once", exe=BH2)
    assert run.returncode == 0, run.stderr
    stats = bh2_json("stats", "--data", data)["stats"]
    assert {c: v["hits"] for c, v in stats.items()} == logged
    verify = run_cli("verify", "--data", data, exe=BH2)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def _log_writer_pids(server: Server) -> list[int]:
    """Pids of the server's log-writer processes (in its process group)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if b"rlinks.server.logwriter" not in cmdline:
            continue
        try:
            if os.getpgid(int(entry.name)) == server.proc.pid:
                pids.append(int(entry.name))
        except ProcessLookupError:
            continue
    return pids


def test_a_dead_log_writer_gives_503_then_recovers(tmp_path: Path) -> None:
    """In commit mode a redirect whose hit cannot be committed is a 503, never an
    uncounted 302; the worker starts a new log writer and redirects again."""
    data = tmp_path / "data"
    put_routes(data, ["wd"])
    with running_server(data, "--hits", "append", "--durability", "commit") as s:
        assert s.get("/wd").status == 302
        before = set(_log_writer_pids(s))
        assert before, "the server runs a log-writer process"
        for pid in before:
            os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: not set(_log_writer_pids(s)) & before, timeout=5)
        first = s.get("/wd", Accept="application/json")
        assert first.status == 503, first
        assert first.json()["error"]["code"] == "store_unavailable"
        assert first.header("cache-control") == "no-store" and first.header("location") is None
        statuses = [s.get("/wd").status for _ in range(2)]
        assert statuses == [302, 302]
        m = s.metrics()
        assert m["rlinks_hits_failed_total"] == 1
        assert m['rlinks_requests_total{status="503"}'] == 1
        assert m['rlinks_requests_total{status="302"}'] == 3
        end = log_end(data)
    assert end == 3  # the 302s, and not the hit answered with 503


@pytest.mark.parametrize(("durability", "policy"), [("async", "idle"), ("commit", "normal")])
def test_the_async_log_writer_runs_only_on_idle_cpu(
    tmp_path: Path, durability: str, policy: str
) -> None:
    """Async redirects never wait for the log writer, so it runs as SCHED_IDLE
    (the server preempts it at once); in commit mode redirects wait for its
    commits, so it keeps the normal policy."""
    data = tmp_path / "data"
    put_route(data, "idle", "https://example.com/idle")
    with running_server(data, "--durability", durability, "--no-aggregate") as s:
        assert s.get("/idle").status == 302
        want = os.SCHED_IDLE if policy == "idle" else os.SCHED_OTHER

        def policies() -> list[int]:
            return [os.sched_getscheduler(p) for p in _log_writer_pids(s)]

        # An async redirect does not wait for the writer, which may still be
        # starting (it sets its policy once running): poll, then check.
        wait_for(lambda: policies() == [want], timeout=10)
        assert policies() == [want]
