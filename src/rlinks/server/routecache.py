"""Route reads on the redirect path, from a per-process copy kept fresh by the
store's change feed.

A hosted KV is read over the network; a redirect that waits for that round
trip is slow, and a route cached for a fixed time is read again on the first
click after each expiry (with traffic over 100,000 codes, on most clicks). So a
worker starts by loading up to
`max_entries` routes, keeps each route it reads (and each code it found
missing), and every `refresh_s` reads the store's change feed (the audit
trail, in commit order) and drops the codes it names, to be read again on
their next click. An edit reaches every worker within `refresh_s`; a worker's
own edits (the admin API) are dropped at once. `refresh_s = 0` turns the copy
off: every redirect reads the store.

The position in the feed is read before the routes are loaded, so a change
that lands during the load is named by the first refresh.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Final

from rlinks.errors import RlinksError
from rlinks.routes.model import Route
from rlinks.routes.store import RouteStore
from rlinks.store.kvmodel import RemoteKV

log = logging.getLogger(__name__)

MAX_ENTRIES = 100_000
FEED_PAGE = 1000


class Unknown:
    """What `cached` answers for a code it holds nothing about."""


UNKNOWN: Final = Unknown()  # the one instance


class RouteCache:
    def __init__(
        self,
        routes: RouteStore,
        kv: RemoteKV,
        *,
        refresh_s: float,
        max_entries: int = MAX_ENTRIES,
        store_errors: Callable[[], tuple[type[Exception], ...]],
    ) -> None:
        """`store_errors()`: what the store raises when it cannot answer (the
        feed is then read again later; anything else is a bug and propagates)."""
        self._store = routes
        self._kv = kv
        self._refresh_s = refresh_s
        self._max = max_entries
        self._store_errors = store_errors
        self._routes: dict[str, Route] = {}
        self._missing: set[str] = set()
        self._position: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self._refresh_s > 0

    def __len__(self) -> int:
        return len(self._routes) + len(self._missing)

    async def start(self) -> None:
        """Load routes and start following the change feed. A store that cannot
        answer now is not fatal: routes are then read on their first click."""
        if not self.enabled:
            return
        try:
            await self.load()
        except self._store_errors() as e:
            log.warning("could not load routes at start-up (read on demand instead): %s", e)
        self._task = asyncio.create_task(self._follow(), name="route-feed")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def load(self) -> None:
        position = await self._kv.read("routes:feed", self._store.feed_position)
        try:
            routes = await self._kv.read(
                "routes:all", lambda: self._store.list(limit=self._max, include_disabled=True)
            )
        except RlinksError as e:
            # A route this version cannot read: each route is then read on its
            # first click, where only that one answers with the error.
            log.warning("could not load routes (read on demand instead): %s", e)
            routes = []
        self._routes = {r.code: r for r in routes}
        self._missing.clear()
        self._position = position

    def cached(self, code: str) -> Route | Unknown | None:
        """The route this worker holds for `code`, None if it knows the code is
        missing, `UNKNOWN` if it must read the store. Never waits."""
        route = self._routes.get(code)
        if route is not None:
            return route
        return None if code in self._missing else UNKNOWN

    async def get(self, code: str) -> Route | None:
        held = self.cached(code)
        if not isinstance(held, Unknown):
            return held
        route = await self._kv.read(f"route:{code}", lambda: self._store.get(code))
        if self.enabled:
            self._keep(code, route)
        return route

    def forget(self, code: str) -> None:
        """Drop a code this process just changed, so it sees its own edit at once."""
        self._routes.pop(code, None)
        self._missing.discard(code)

    async def refresh(self) -> int:
        """Read the change feed once; drop every code it names. How many changes."""
        if self._position is None:  # the load at start-up failed: try it again
            await self.load()
            return 0
        position: str = self._position
        seen = 0
        while True:
            page = functools.partial(self._store.changed_since, position, FEED_PAGE)
            position, codes = await self._kv.read("routes:feed", page)
            for code in codes:
                self.forget(code)
            self._position = position
            seen += len(codes)
            if len(codes) < FEED_PAGE:
                return seen

    def _keep(self, code: str, route: Route | None) -> None:
        if route is not None:
            if len(self._routes) < self._max:  # full: the loaded routes stay
                self._routes[code] = route
        else:
            if len(self._missing) >= self._max:  # a scan of random codes
                self._missing.clear()
            self._missing.add(code)

    async def _follow(self) -> None:
        failing = False
        while True:
            await asyncio.sleep(self._refresh_s)
            try:
                await self.refresh()
            except self._store_errors() as e:
                if not failing:
                    log.warning("could not read route changes (serving held routes): %s", e)
                failing = True
            else:
                if failing:
                    log.warning("route changes readable again")
                failing = False
