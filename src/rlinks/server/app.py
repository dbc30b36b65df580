"""The ASGI application: redirects, health, metrics and the admin API.

A plain ASGI callable rather than a framework: the redirect path is one dict
lookup, one route read (usually held in memory), one hit hand-off and one
response, and nothing else runs per request. A redirect that needs no waiting
is answered by `redirect_now`, which the server's protocol
(`rlinks.server.protocol`) calls before any ASGI machinery; everything else
comes through `__call__`.
"""

from __future__ import annotations

import asyncio
import collections
import gc
import logging
import os
import re
import socket
import sqlite3

from rlinks.backends import open_call_ledger, open_key_value, open_routes
from rlinks.errors import KvUnavailableError
from rlinks.hits import CODE_PATTERN
from rlinks.redisdb import store_errors
from rlinks.routes.resolve import resolve
from rlinks.server.admin import AdminApi
from rlinks.server.capture import CaptureConfig, build_hit
from rlinks.server.config import ServeConfig, hit_salt
from rlinks.server.hitwriter import HitWriter
from rlinks.server.metrics import CONTENT_TYPE, ServerMetrics, render
from rlinks.server.offloop import SerialCalls
from rlinks.server.responses import (
    Receive,
    Scope,
    Send,
    accepts_json,
    error_body,
    error_head,
    redirect_head,
    send_error,
    send_json,
    send_redirect,
    send_response,
)
from rlinks.server.routecache import RouteCache, Unknown
from rlinks.server.sinks import HitSink, KvSink
from rlinks.store.kvmodel import RemoteKV
from rlinks.timefmt import now_ms

log = logging.getLogger(__name__)
_LOG_DOWN_MESSAGE = "the hit log is unavailable; try again shortly"
_CODE_RE = re.compile(CODE_PATTERN)
_STORE_DOWN = (sqlite3.Error, KvUnavailableError, OSError)


def _store_down() -> tuple[type[Exception], ...]:
    """What a store that cannot answer raises (Redis errors once redis-py is loaded)."""
    return (*_STORE_DOWN, *store_errors())


class RlinksApp:
    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.target = config.target
        self.metrics = ServerMetrics()
        self.kv = RemoteKV(latency_ms=config.kv_latency_ms, on_call=self._count_kv)
        self.routes = open_routes(self.target)
        self.route_cache = RouteCache(
            self.routes, self.kv, refresh_s=config.route_cache_s, store_errors=_store_down
        )
        self.capture = CaptureConfig(
            salt=hit_salt(self.target),
            country_header=config.country_header.lower().encode()
            if config.country_header
            else None,
            trust_proxy=config.trust_proxy,
        )
        self.sink: HitSink | None = None
        self._durable = config.hits == "append" and config.durability == "commit"
        if config.hits == "append":
            self.sink = HitWriter(
                self.target,
                durable=config.durability == "commit",
                queue_max=config.queue_max,
                on_commit=self._count_commit,
                on_failure=self.metrics.hits_failed.inc,
            )
        elif config.hits == "kv":
            self.sink = KvSink(self.kv, lambda: open_key_value(self.target))
        self.admin = AdminApi(self) if config.admin_token else None
        self._ledger = open_call_ledger(self.target)
        self._ledger_saves = SerialCalls()  # a write to the store: off the event loop
        self._process = f"{socket.gethostname()}:{os.getpid()}:{now_ms()}"
        self._ledger_task: asyncio.Task[None] | None = None
        self._statuses: collections.Counter[int] = collections.Counter()
        self._published: dict[int, int] = {}
        self._public_hosts = tuple(h.lower() for h in config.public_hosts)
        # Redirects the protocol answers itself: no hit, or one for the log
        # writer (`kv` reads and writes a store per hit: the ASGI path).
        self._hit_writer = self.sink if isinstance(self.sink, HitWriter) else None
        self._answers_now = config.hits == "off" or self._hit_writer is not None

    # -- ASGI --------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            status = await self._http(scope, receive, send)
            # A dict increment here; the Prometheus counters (a locked mmap
            # write each) are brought up to date once a second and per scrape.
            self._statuses[status] += 1
        elif scope["type"] == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.route_cache.start()
                    if self.sink is not None:
                        await self.sink.start()
                    # What start-up made (modules, the routes just loaded) lives
                    # as long as the worker: keep the collector's full passes
                    # off it.
                    gc.freeze()
                    self._ledger_task = asyncio.create_task(self._keep_ledger())
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": str(e)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.sink is not None:
                    await self.sink.stop()
                await self.route_cache.stop()
                if self._ledger_task is not None:
                    self._ledger_task.cancel()
                self._publish_statuses()
                await self._ledger_saves.run(self._record_ledger)
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> int:
        path: str = scope["path"]
        try:
            if path.startswith("/api/"):
                if self.admin is None:
                    await send_error(scope, send, 404, "not_found", "no such page")
                    return 404
                return await self.admin.handle(scope, receive, send)
            if path == "/healthz":
                await send_json(send, 200, {"status": "ok", "hits": self.config.hits})
                return 200
            if path == "/metrics":
                self._publish_statuses()
                body = render(os.environ["PROMETHEUS_MULTIPROC_DIR"], self.target)
                await send_response(send, 200, body, CONTENT_TYPE)
                return 200
            return await self._redirect(scope, send)
        except _store_down() as e:  # evaluated only when something was raised
            log.error("store unavailable on %s: %s", path, e)
            await send_error(
                scope,
                send,
                503,
                "store_unavailable",
                "the link store is unavailable; try again shortly",
            )
            return 503
        except Exception:
            log.exception("error on %s", path)
            await send_error(scope, send, 500, "internal_error", "something went wrong")
            return 500

    # -- redirects ---------------------------------------------------------------

    def redirect_now(
        self,
        raw_path: bytes,
        headers: list[tuple[bytes, bytes]],
        client: tuple[str, int] | None,
    ) -> tuple[bytes, asyncio.Future[None] | None] | None:
        """A redirect the server's protocol can answer without ASGI: its head
        (no blank line yet), and the commit to wait for first (`commit`
        durability; then `answer_committed` gives the answer), or None: the
        request then comes through `__call__` as usual. Same answer and same
        hit as `_redirect`, for a route this worker holds."""
        if not self._answers_now or b"%" in raw_path:
            return None
        try:
            code = raw_path[1:].decode("ascii")
            if raw_path[:1] != b"/" or not _CODE_RE.fullmatch(code):
                return None
            route = self.route_cache.cached(code)
            if route is None or isinstance(route, Unknown):
                return None
            now = now_ms()
            res = resolve(route, now_ms=now, public_hosts=self._public_hosts)
            if res.location is None:
                return None
            location = res.location.encode()
            if b"\r" in location or b"\n" in location:
                return None  # never valid (the store refuses them); the ASGI path answers 500
            head = redirect_head(self.config.redirect_status, location)
            if self._hit_writer is None:
                self._statuses[self.config.redirect_status] += 1
                return head, None
            hit = build_hit(code, headers, client, self.capture, now)
            if self._hit_writer.durable:
                return head, self._hit_writer.record_committed(hit)
            if not self._hit_writer.record_nowait(hit):
                self.metrics.hits_dropped.inc()  # the async queue was full
        except Exception:
            return None  # the ASGI path answers, and logs what went wrong
        self._statuses[self.config.redirect_status] += 1
        return head, None

    def answer_committed(
        self, head: bytes, headers: list[tuple[bytes, bytes]], committed: asyncio.Future[None]
    ) -> tuple[bytes, bytes]:
        """The answer (head, body) to a redirect from `redirect_now` once its
        hit's commit is done: the redirect, or 503 if the hit could not be made
        durable (never an uncounted redirect)."""
        if not committed.cancelled() and committed.exception() is None:
            self._statuses[self.config.redirect_status] += 1
            return head, b""
        self._statuses[503] += 1
        body, content_type = error_body(
            accepts_json(headers), 503, "store_unavailable", _LOG_DOWN_MESSAGE
        )
        return error_head(503, content_type, len(body)), body

    async def _redirect(self, scope: Scope, send: Send) -> int:
        if scope["method"] not in ("GET", "HEAD"):
            await send_error(scope, send, 405, "method_not_allowed", "only GET redirects")
            return 405
        code = scope["path"][1:]
        if not _CODE_RE.fullmatch(code):
            await send_error(scope, send, 404, "not_found", "no such link")
            return 404
        route = await self.route_cache.get(code)
        now = now_ms()
        res = resolve(route, now_ms=now, public_hosts=self._public_hosts)
        if res.location is None:
            await send_error(
                scope, send, res.status, res.error or "error", res.message, {"code": code}
            )
            return res.status
        if self.sink is not None:
            hit = build_hit(code, scope["headers"], scope.get("client"), self.capture, now)
            if not await self.sink.record(hit):
                if not self._durable:
                    self.metrics.hits_dropped.inc()  # the async queue was full
                else:
                    # The hit could not be made durable: never redirect uncounted.
                    await send_error(scope, send, 503, "store_unavailable", _LOG_DOWN_MESSAGE)
                    return 503
        await send_redirect(send, self.config.redirect_status, res.location.encode())
        return self.config.redirect_status

    # -- metrics hooks -----------------------------------------------------------

    async def _keep_ledger(self) -> None:
        """Every second, publish request counts and save this process's KV call
        counts for `rlinks-bh2 status` (on a thread: see `server.offloop`)."""
        last = None
        while True:
            await asyncio.sleep(1.0)
            self._publish_statuses()
            now = (self.kv.calls.reads, self.kv.calls.writes)
            if now != last:
                await self._ledger_saves.run(self._record_ledger)
                last = now

    def _publish_statuses(self) -> None:
        for status, n in self._statuses.items():
            delta = n - self._published.get(status, 0)
            if delta:
                self.metrics.requests.labels(str(status)).inc(delta)
                self._published[status] = n

    def _record_ledger(self) -> None:
        try:
            self._ledger.record(self._process, self.kv.calls)
        except sqlite3.Error as e:  # figures only: never fail a request over them
            log.warning("could not save KV call counts: %s", e)

    def _count_kv(self, kind: str, violation: bool) -> None:
        if kind == "read":
            self.metrics.kv_reads.inc()
        else:
            self.metrics.kv_writes.inc()
            if violation:
                self.metrics.kv_key_rate_violations.inc()

    def _count_commit(self, hits: int, seconds: float, depth: int) -> None:
        self.metrics.hits_appended.inc(hits)
        self.metrics.commit_seconds.observe(seconds)
        self.metrics.queue_depth.set(depth)


def create_app() -> RlinksApp:
    """The uvicorn factory: each worker builds its app from RLINKS_SERVE_CONFIG."""
    return RlinksApp(ServeConfig.from_env())
