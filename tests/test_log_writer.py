"""The log writer's loop (`rlinks.server.logwriter.serve`) on a real SQLite log:
groups in, one answer per group out, and a bad group refused without
stopping the writer or touching the log."""

from __future__ import annotations

import io
from pathlib import Path

import msgspec

from rlinks.backends import Target
from rlinks.hits import Hit
from rlinks.log.base import EncodedHits
from rlinks.log.sqlite import SqliteHitLog
from rlinks.server.logwriter import FRAME_HEADER, frame, read_frame, serve
from tests.conftest import encoded_group, make_hits


def group_frame(hits: list[Hit]) -> bytes:
    """A request frame, as the server's hit writer sends a group."""
    return frame(msgspec.msgpack.encode(encoded_group(hits)))


def answers_of(stream: bytes) -> list[str | None]:
    out = io.BytesIO(stream)
    answers: list[str | None] = []
    while (payload := read_frame(out)) is not None:
        answers.append(msgspec.msgpack.decode(payload))
    return answers


def test_each_group_is_answered_and_a_bad_one_is_refused_alone(tmp_path: Path) -> None:
    """Two good groups are logged; an undecodable frame and a group whose parts
    disagree get an error answer each and leave the log as it was; a frame cut
    short ends the loop."""
    first, last = make_hits(30, prefix="a"), make_hits(20, prefix="b")
    bad_parts = EncodedHits(msgspec.msgpack.encode(last), [h.code for h in last][:-1], b"")
    requests = io.BytesIO(
        group_frame(first)
        + frame(b"\xc1 not msgpack")  # undecodable
        + frame(msgspec.msgpack.encode(bad_parts))  # parts that disagree
        + group_frame(last)
        + FRAME_HEADER.pack(100)  # a frame cut short: the worker went away
    )
    answers = io.BytesIO()
    serve(Target(data_dir=tmp_path), requests, answers)

    got = answers_of(answers.getvalue())
    # the first answer says the log is open; then one per group, in order
    assert got[:2] == [None, None] and got[4] is None and len(got) == 5
    assert got[2] is not None and "DecodeError" in got[2]
    assert got[3] is not None and "ValueError" in got[3]
    log = SqliteHitLog(tmp_path, readonly=True)
    try:
        assert [h for _, h in log.records(0)] == first + last
    finally:
        log.close()
