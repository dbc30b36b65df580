"""The hit-log writer process: appends groups of hits for one server worker.

It runs beside each server worker (`python -m rlinks.server.logwriter DATA`,
DATA a data folder or a redis:// URL)
so that the Python work of an append (encoding blocks, binding rows) never
holds the worker's GIL: the event loop keeps answering redirects while a group
commits. The two talk over the child's stdin and stdout in frames: a 4-byte
big-endian length, then msgpack. Requests are groups of hits (`EncodedHits`,
which the SQLite log stores as they come); each answer is
the error (None when all is well) for the group just received, sent once it is
committed; one None answer comes first, as soon as the log is open.
"""

from __future__ import annotations

import gc
import os
import struct
import sys
from pathlib import Path
from typing import BinaryIO

import msgspec

from rlinks.backends import Target, open_log
from rlinks.log.base import EncodedHits
from rlinks.redisdb import is_redis_url

FRAME_HEADER = struct.Struct(">I")
GROUP_DECODER = msgspec.msgpack.Decoder(EncodedHits)
ANSWER_ENCODER = msgspec.msgpack.Encoder()


def read_frame(stream: BinaryIO) -> bytes | None:
    header = stream.read(FRAME_HEADER.size)
    if len(header) < FRAME_HEADER.size:
        return None  # the worker closed the pipe: it is stopping
    (size,) = FRAME_HEADER.unpack(header)
    payload = stream.read(size)
    return payload if len(payload) == size else None


def frame(payload: bytes) -> bytes:
    return FRAME_HEADER.pack(len(payload)) + payload


def serve(target: Target, requests: BinaryIO, answers: BinaryIO) -> None:
    log = open_log(target)
    # Everything made so far (modules, the open log) lives as long as the
    # process: keep the collector's full passes off it.
    gc.freeze()
    # A first answer before any group: the log is open, groups can come.
    answers.write(frame(ANSWER_ENCODER.encode(None)))
    answers.flush()
    try:
        while (payload := read_frame(requests)) is not None:
            error: str | None = None
            try:
                log.append_encoded(GROUP_DECODER.decode(payload))
            except Exception as e:  # the worker answers 503 (commit) or counts it (async)
                error = f"{type(e).__name__}: {e}"
            answers.write(frame(ANSWER_ENCODER.encode(error)))
            answers.flush()
    finally:
        log.close()


def main() -> None:
    where = sys.argv[1]
    if "--idle" in sys.argv[2:]:
        # Async redirects never wait for this process, so it may run only
        # when a core is otherwise idle: the server worker (and the client on
        # a shared machine) then preempt it at once instead of waiting out
        # its time slice, which is what made async's latency tail.
        os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    target = Target(url=where) if is_redis_url(where) else Target(data_dir=Path(where))
    serve(target, sys.stdin.buffer, sys.stdout.buffer)


if __name__ == "__main__":
    main()
