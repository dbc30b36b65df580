"""Group commit for hits on the redirect path.

Requests put hits on a bounded queue; one task takes everything queued (up to
`max_group`) and appends it in one log transaction on a worker thread, while
new hits queue up behind it. Under load one commit carries many hits; at low
load a hit waits for nobody. In `commit` durability the redirect waits for its
hit's transaction; in `async` it does not, and a full queue drops the hit and
counts it (never silently).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from rlinks.hits import Hit
from rlinks.log.base import HitLog

log = logging.getLogger(__name__)


@dataclass
class WriterStats:
    appended: int = 0
    dropped: int = 0  # async mode, queue full
    failed: int = 0  # the append raised; the requests were answered 503 (commit) or counted
    commits: int = 0
    last_commit_s: float = 0.0


class HitWriter:
    def __init__(
        self,
        open_log: Callable[[], HitLog],
        *,
        durable: bool,
        max_group: int = 1024,
        queue_max: int = 100_000,
        linger_s: float | None = None,
        on_commit: Callable[[int, float, int], None] | None = None,
        on_failure: Callable[[int], None] | None = None,
    ) -> None:
        """`on_commit(hits, seconds, queue depth)` after each group commit;
        `on_failure(hits)` when an append raised."""
        self._open_log = open_log
        self.durable = durable
        self._max_group = max_group
        # Async redirects do not wait for the commit, so the writer can wait a
        # few ms to gather a bigger group: fewer commits, less CPU per hit.
        self._linger_s = (0.0 if durable else 0.005) if linger_s is None else linger_s
        self._queue: asyncio.Queue[tuple[Hit, asyncio.Future[None] | None]] = asyncio.Queue(
            queue_max
        )
        # One thread owns the log's SQLite connection for its whole life.
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hit-writer")
        self._log: HitLog | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_commit = on_commit
        self._on_failure = on_failure
        self.stats = WriterStats()

    @property
    def depth(self) -> int:
        return self._queue.qsize()

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self._log = await loop.run_in_executor(self._thread, self._open_log)
        self._task = asyncio.create_task(self._run(), name="hit-writer")

    async def stop(self) -> None:
        """Write what is queued, then stop."""
        if self._task is None:
            return
        await self._queue.join()
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._log is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, self._log.close)
        self._thread.shutdown(wait=True)

    async def record(self, hit: Hit) -> bool:
        """Log `hit`. Durable: returns once committed (False if the append
        failed). Async: returns at once (False if the queue was full)."""
        if not self.durable:
            try:
                self._queue.put_nowait((hit, None))
            except asyncio.QueueFull:
                self.stats.dropped += 1
                return False
            return True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self._queue.put((hit, done))
        try:
            await done
        except Exception:
            return False
        return True

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            group = [await self._queue.get()]
            if self._linger_s:
                await asyncio.sleep(self._linger_s)
            while len(group) < self._max_group and not self._queue.empty():
                group.append(self._queue.get_nowait())
            hits = [h for h, _ in group]
            started = time.perf_counter()
            error: BaseException | None = None
            try:
                await loop.run_in_executor(self._thread, self._append, hits)
            except Exception as e:  # the store is down or full: answer, count, go on
                error = e
                self.stats.failed += len(hits)
                log.error("appending %d hits failed: %s", len(hits), e)
                if self._on_failure is not None:
                    self._on_failure(len(hits))
            elapsed = time.perf_counter() - started
            if error is None:
                self.stats.appended += len(hits)
                self.stats.commits += 1
                self.stats.last_commit_s = elapsed
                if self._on_commit is not None:
                    self._on_commit(len(hits), elapsed, self._queue.qsize())
            for _, done in group:
                if done is not None and not done.done():
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
                self._queue.task_done()

    def _append(self, hits: list[Hit]) -> None:
        if self._log is None:
            raise RuntimeError("HitWriter.start() was not awaited")
        self._log.append(hits, fresh_ids=True)
