"""The log writer's loop (`rlinks.server.logwriter.serve`) on a real SQLite log:
groups of captures in, their hits logged, one answer per group out, and a bad
group refused without stopping the writer or touching the log."""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import msgspec

from rlinks.backends import Target
from rlinks.hits import Hit
from rlinks.log.sqlite import SqliteHitLog
from rlinks.server.capture import Capture
from rlinks.server.config import hit_salt
from rlinks.server.hitwriter import _Group
from rlinks.server.logwriter import FRAME_HEADER, frame, read_frame, serve
from tests.conftest import make_hits


def captures_of(hits: list[Hit]) -> list[Capture]:
    """Captures with the hits' codes and times, from two clients."""
    return [
        Capture(h.code, h.ts_ms, f"198.51.100.{i % 2}", b"agent/1.0", b"https://r.example/")
        for i, h in enumerate(hits)
    ]


def group_frame(captures: list[Capture]) -> bytes:
    """A request frame, as the server's hit writer sends a group."""
    group = _Group()
    group.captures.extend(captures)
    return frame(group.payload())


def answers_of(stream: bytes) -> list[str | None]:
    out = io.BytesIO(stream)
    answers: list[str | None] = []
    while (payload := read_frame(out)) is not None:
        answers.append(msgspec.msgpack.decode(payload))
    return answers


def test_each_group_is_answered_and_a_bad_one_is_refused_alone(tmp_path: Path) -> None:
    """Two good groups are logged as hits made of their captures; an
    undecodable frame and a group with a malformed capture get an error
    answer each and leave the log as it was; a frame cut short ends the loop."""
    first = captures_of(make_hits(30, prefix="a"))
    last = captures_of(make_hits(20, prefix="b"))
    malformed = msgspec.msgpack.encode([["ok", 1], ["BAD CODE?", "not a time"]])
    requests = io.BytesIO(
        group_frame(first)
        + frame(b"\xc1 not msgpack")  # undecodable
        + frame(malformed)
        + group_frame(last)
        + FRAME_HEADER.pack(100)  # a frame cut short: the worker went away
    )
    answers = io.BytesIO()
    serve(Target(data_dir=tmp_path), requests, answers)

    got = answers_of(answers.getvalue())
    # the first answer says the log is open; then one per group, in order
    assert got[:2] == [None, None] and got[4] is None and len(got) == 5
    assert got[2] is not None and "DecodeError" in got[2]
    assert got[3] is not None and "ValidationError" in got[3]
    log = SqliteHitLog(tmp_path, readonly=True)
    try:
        logged = [h for _, h in log.records(0)]
    finally:
        log.close()
    sent = first + last
    assert [(h.code, h.ts_ms) for h in logged] == [(c.code, c.ts_ms) for c in sent]
    # made by the writer: fresh time-ordered ids, nothing raw kept
    assert len({h.id for h in logged}) == len(sent)
    assert all(uuid.UUID(h.id).version == 7 for h in logged)
    assert {h.ip_prefix for h in logged} == {"198.51.100.0/24"}
    assert {h.referrer for h in logged} == {"https://r.example/"}
    hashes = {h.ua_hash for h in logged}
    assert len(hashes) == 1 and None not in hashes and "agent" not in str(hashes)


def test_the_writer_keys_agent_hashes_with_the_folders_salt(tmp_path: Path) -> None:
    """Two data folders, two salts: one agent hashes differently in each, and
    alike across groups of one folder (countable, not readable)."""
    hashes = []
    for name in ("one", "two"):
        data = tmp_path / name
        hit_salt(Target(data_dir=data))  # as `rlinks serve` makes it before its workers
        group = captures_of(make_hits(3, prefix=name))
        serve(Target(data_dir=data), io.BytesIO(group_frame(group) * 2), io.BytesIO())
        log = SqliteHitLog(data, readonly=True)
        try:
            hashes.append({h.ua_hash for _, h in log.records(0)})
        finally:
            log.close()
    assert len(hashes[0]) == len(hashes[1]) == 1
    assert hashes[0] != hashes[1]
