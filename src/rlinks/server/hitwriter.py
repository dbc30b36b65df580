"""Group commit for hits on the redirect path.

Requests put hits on a bounded queue of groups; one task sends the oldest group
(up to `max_group` hits) to the worker's log-writer process
(`rlinks.server.logwriter`), which appends it in one transaction, while new
hits queue up behind it. Under load one commit carries many hits; at low load
a hit waits for nobody. In `commit` durability the redirect waits for its
hit's transaction; in `async` it does not, and a full queue drops the hit and
counts it (never silently).

A hit is encoded into its group's buffer as it arrives (msgpack, as the log's
blocks keep records), its code and time kept beside it, so a queued hit is
~100 bytes in three buffers rather than a Hit and a tuple kept alive until its
group goes, and the group goes to the writer as `EncodedHits`, which the
SQLite log stores without decoding it. With the encoded queue, async
redirects went from 0.74x to 0.82x of `--hits off`'s rps (the old and new
servers side by side, `wrk -t1 -c10 -d3s` over the uniform routes of
`benchmarks/redirect_latency.py`, medians of 6 interleaved rounds).
"""

from __future__ import annotations

import array
import asyncio
import logging
import sys
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from rlinks.backends import Target
from rlinks.hits import Hit
from rlinks.log.base import EncodedHits
from rlinks.server.logwriter import FRAME_HEADER, frame

log = logging.getLogger(__name__)

_HIT_ENCODER = msgspec.msgpack.Encoder()
_GROUP_ENCODER = msgspec.msgpack.Encoder()
_ANSWER_DECODER = msgspec.msgpack.Decoder(str | None)
ASYNC_LINGER_S = 0.05
WRITER_START_TIMEOUT_S = 60.0  # imports and opening the log, on a loaded machine


class WriterDownError(Exception):
    """The log-writer process is gone or refused the group."""


@dataclass
class WriterStats:
    """What was lost, for tests and logs (what was written goes to `on_commit`)."""

    dropped: int = 0  # async mode, queue full
    failed: int = 0  # the append failed; answered 503 (commit) or counted (async)


class _Group:
    """Hits queued for one append: their msgpack encodings back to back, their
    codes and times, and the commits waiting on them (`commit` durability)."""

    __slots__ = ("body", "codes", "ts_ms", "waiting")

    def __init__(self) -> None:
        self.body = bytearray()
        self.codes: list[str] = []
        self.ts_ms = array.array("q")
        self.waiting: list[asyncio.Future[None]] = []

    @property
    def count(self) -> int:
        return len(self.codes)

    def payload(self) -> bytes:
        """The group as the writer reads it: `EncodedHits`, in msgpack."""
        records = _array_header(self.count) + self.body
        return _GROUP_ENCODER.encode(EncodedHits(records, self.codes, self.ts_ms.tobytes()))


def _array_header(count: int) -> bytes:
    """A msgpack array-32 header: 0xdd, then the length (big-endian)."""
    return b"\xdd" + count.to_bytes(4, "big")


class HitWriter:
    def __init__(
        self,
        target: Target,
        *,
        durable: bool,
        max_group: int = 2048,
        queue_max: int = 100_000,
        linger_s: float | None = None,
        on_commit: Callable[[int, float, int], None] | None = None,
        on_failure: Callable[[int], None] | None = None,
    ) -> None:
        """`on_commit(hits, seconds, queue depth)` after each group commit;
        `on_failure(hits)` when a group could not be appended."""
        self._target = target
        self.durable = durable
        self._max_group = max_group
        # Async redirects do not wait for the commit, so the writer can wait
        # to gather a bigger group: each group wakes the writer process and
        # commits once, and under load 5 ms groups cost the worker about a
        # third of its redirects a second, 50 ms groups under a fifth (wrk
        # against one worker; see docs/design.md). 50 ms is far below BH2's
        # window, so stats are no staler for it.
        self._linger_s = (0.0 if durable else ASYNC_LINGER_S) if linger_s is None else linger_s
        # A deque and an event rather than asyncio.Queue: this is on every
        # redirect, and a deque append costs a tenth of Queue.put_nowait.
        # Hits join the last group until it holds `max_group`.
        self._groups: deque[_Group] = deque()
        self._queued = 0  # hits in `_groups`
        self._queue_max = queue_max
        self._wakeup = asyncio.Event()
        self._busy = False
        self._proc: asyncio.subprocess.Process | None = None
        self._task: asyncio.Task[None] | None = None
        self._on_commit = on_commit
        self._on_failure = on_failure
        self.stats = WriterStats()

    async def start(self) -> None:
        await self._spawn()
        self._task = asyncio.create_task(self._run(), name="hit-writer")

    async def _spawn(self) -> None:
        """Start a writer process and wait for its first answer (its log is
        open). The server's start-up waits for it, so the writer's own
        start-up (imports, opening the log) never lands on the first
        redirects, and a writer that cannot start is an error at once."""
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "rlinks.server.logwriter",
            self._target.url or str(self._target.data_dir),
            *(() if self.durable else ("--idle",)),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        try:
            failure = await asyncio.wait_for(_answer(self._proc), WRITER_START_TIMEOUT_S)
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as e:
            raise WriterDownError(f"the log writer did not start: {e!r}") from e
        if failure is not None:
            raise WriterDownError(failure)

    async def stop(self) -> None:
        """Write what is queued, then stop the writer process."""
        if self._task is None:
            return
        while self._groups or self._busy:
            await asyncio.sleep(0.005)
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self._proc is not None and self._proc.stdin is not None:
            self._proc.stdin.close()
            await self._proc.wait()

    async def record(self, hit: Hit) -> bool:
        """Log `hit`. Durable: returns once committed (False if the append
        failed). Async: returns at once (False if the queue was full)."""
        if not self.durable:
            return self.record_nowait(hit)
        try:
            await self.record_committed(hit)
        except WriterDownError:
            return False
        return True

    def record_committed(self, hit: Hit) -> asyncio.Future[None]:
        """Queue `hit` (durable mode); the future is done once its group is
        committed, or fails with `WriterDownError`. Each waiting request holds
        one entry, so the connections bound the queue."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue(hit).waiting.append(done)
        return done

    def record_nowait(self, hit: Hit) -> bool:
        """Queue `hit` for the next group without waiting for its commit (async
        durability); False, and counted, if the queue is full."""
        if self._queued >= self._queue_max:
            self.stats.dropped += 1
            return False
        self._queue(hit)
        return True

    def _queue(self, hit: Hit) -> _Group:
        """Encode `hit` into the open group (a new one once the last is full)
        and wake the sender; that group."""
        groups = self._groups
        # Inline, not a _Group method: this runs on every redirect.
        if not groups or len(groups[-1].codes) >= self._max_group:
            groups.append(_Group())
        group = groups[-1]
        _HIT_ENCODER.encode_into(hit, group.body, -1)
        group.codes.append(hit.code)
        group.ts_ms.append(hit.ts_ms)
        self._queued += 1
        self._wakeup.set()
        return group

    async def _run(self) -> None:
        while True:
            if not self._groups:
                self._wakeup.clear()
                await self._wakeup.wait()
            self._busy = True
            # Linger only for a group that is not full yet: a full one goes at
            # once, or hits arriving faster than `max_group` per linger would
            # pile up until the queue is full and then be dropped.
            if self._linger_s and self._groups[0].count < self._max_group:
                await asyncio.sleep(self._linger_s)
            group = self._groups.popleft()
            self._queued -= group.count
            started = time.perf_counter()
            error: WriterDownError | None = None
            try:
                await self._append(group.payload())
            except WriterDownError as e:
                error = e
                self.stats.failed += group.count
                log.error("appending %d hits failed: %s", group.count, e)
                if self._on_failure is not None:
                    self._on_failure(group.count)
            else:
                elapsed = time.perf_counter() - started
                if self._on_commit is not None:
                    self._on_commit(group.count, elapsed, self._queued)
            for done in group.waiting:
                if not done.done():
                    if error is None:
                        done.set_result(None)
                    else:
                        done.set_exception(error)
            self._busy = False

    async def _append(self, payload: bytes) -> None:
        """One group to the writer process and its answer. A writer found dead
        fails the group at hand and is started again for the next one."""
        proc = self._proc
        if proc is None or proc.returncode is not None or proc.stdin is None or proc.stdout is None:
            await self._spawn()
            raise WriterDownError("the log writer had stopped; it was started again")
        try:
            proc.stdin.write(frame(payload))
            await proc.stdin.drain()
            failure = await _answer(proc)
        except (OSError, asyncio.IncompleteReadError) as e:
            # Whether it committed this group is unknown: fail it (503 in
            # commit mode, never an uncounted 302) and start a new writer.
            await self._spawn()
            raise WriterDownError(f"the log writer died; it was started again: {e}") from e
        if failure is not None:
            raise WriterDownError(failure)


async def _answer(proc: asyncio.subprocess.Process) -> str | None:
    """The writer's next answer frame: None, or what went wrong."""
    assert proc.stdout is not None
    header = await proc.stdout.readexactly(FRAME_HEADER.size)
    (size,) = FRAME_HEADER.unpack(header)
    answer: str | None = _ANSWER_DECODER.decode(await proc.stdout.readexactly(size))
    return answer
