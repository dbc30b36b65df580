"""Route reads on the redirect path, through a short-lived per-process cache.

A hosted KV is read over the network; caching a route for `ttl_s` keeps that
round trip off most redirects. The price: an edit (disable, new target) takes
up to `ttl_s` to reach every worker. `--route-cache-s 0` turns it off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from rlinks.routes.model import Route
from rlinks.store.kvmodel import RemoteKV

MAX_ENTRIES = 100_000


class RouteCache:
    def __init__(
        self,
        get: Callable[[str], Route | None],
        kv: RemoteKV,
        *,
        ttl_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._get = get
        self._kv = kv
        self._ttl_s = ttl_s
        self._clock = clock
        self._entries: dict[str, tuple[float, Route | None]] = {}

    async def get(self, code: str) -> Route | None:
        now = self._clock()
        entry = self._entries.get(code)
        if entry is not None and entry[0] > now:
            return entry[1]
        route = await self._kv.read(f"route:{code}", lambda: self._get(code))
        if self._ttl_s:
            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            self._entries[code] = (now + self._ttl_s, route)
        return route

    def forget(self, code: str) -> None:
        """Drop a code this process just changed, so it sees its own edit at once."""
        self._entries.pop(code, None)
