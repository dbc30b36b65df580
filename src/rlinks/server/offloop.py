"""Blocking store calls made from a server worker, run off its event loop.

A write to kv.db waits for the store's write lock, which the aggregator holds
while it applies a batch (up to the busy timeout when another process holds
it). Made on the event loop, that wait held every redirect: over the uniform
routes at c=10, async redirects stalled for 35-105 ms in 3 of 10 runs of 4 s
(`benchmarks/redirect_latency.py --tree`); with the calls on a thread, the
slowest took 8 ms.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
T = TypeVar("T")


class SerialCalls:
    """Calls on one store connection, each on a worker thread, one at a time.

    The lock is held by the thread, not by the awaiting task, so a request
    cancelled while its call runs cannot let the next call onto the same
    connection at once."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        def locked() -> T:
            with self._lock:
                return fn(*args, **kwargs)

        return await asyncio.to_thread(locked)
