"""Properties: however hits are split into batches, replayed or resent, counts are exact."""

from __future__ import annotations

import itertools
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rlinks.aggregator import Aggregator
from rlinks.batch import Batch, fold
from rlinks.errors import StaleEpochError, WatermarkMismatchError
from rlinks.hits import Hit
from rlinks.settings import Settings
from rlinks.verify import differences
from tests.conftest import (
    BACKENDS,
    BASE_MS,
    MS_PER_DAY,
    open_backend,
    recount,
    snapshots,
    unique_hits,
)

PROPS = settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
DAYS = 4
CODES = ["a", "b", "c-1", "d2", "e"]

# Timestamps over DAYS UTC days, with midnights and the ms before them drawn often.
_midnights = [BASE_MS + d * MS_PER_DAY for d in range(DAYS + 1)]
timestamps = st.one_of(
    st.sampled_from(_midnights),
    st.sampled_from([m - 1 for m in _midnights]),
    st.integers(BASE_MS, BASE_MS + DAYS * MS_PER_DAY - 1),
)


@st.composite
def hit_lists(draw: st.DrawFn, max_size: int = 120) -> list[Hit]:
    """Hits with unique ids, codes from a small set and timestamps over several days."""
    rows = draw(
        st.lists(st.tuples(st.sampled_from(CODES), timestamps), min_size=1, max_size=max_size)
    )
    return [Hit(f"id-{i}", ts, code) for i, (code, ts) in enumerate(rows)]


def cut(n: int, points: list[int]) -> list[tuple[int, int]]:
    """Non-empty (start, end] ranges covering 0..n, cut at `points`."""
    edges = sorted({0, n, *(p for p in points if 0 < p < n)})
    return list(itertools.pairwise(edges))


def tmp_root() -> tempfile.TemporaryDirectory[str]:
    return tempfile.TemporaryDirectory(prefix="rlinks-prop-")


@pytest.mark.parametrize("kind", BACKENDS)
@PROPS
@given(hits=hit_lists(), points=st.lists(st.integers(0, 120), max_size=12))
def test_any_split_into_batches_counts_like_one_pass(
    kind: str, hits: list[Hit], points: list[int]
) -> None:
    """Batches folded over any cut points give the one-pass snapshots and the recount."""
    with tmp_root() as tmp, open_backend(kind, Path(tmp) / "split") as b:
        log, split_store = b.log(), b.store()
        log.append(hits)
        epoch = split_store.acquire(0)
        for start, end in cut(len(hits), points):
            s = log.read(0, start, end - start)
            assert (s.start, s.end) == (start, end)
            split_store.apply(
                Batch(0, epoch, start, end, fold(s.code_ids, s.ts_ms, s.names), s.max_ts_ms, len(s))
            )
        with open_backend(kind, Path(tmp) / "one") as one:
            one_store = one.store()
            whole = log.read(0, 0, len(hits) + 1)
            one_store.apply(
                Batch(
                    0,
                    one_store.acquire(0),
                    0,
                    whole.end,
                    fold(whole.code_ids, whole.ts_ms, whole.names),
                    whole.max_ts_ms,
                    len(whole),
                )
            )
            assert snapshots(split_store) == snapshots(one_store) == recount(hits)
        w = split_store.watermark(0)
        assert (w.offset, w.hits) == (len(hits), len(hits))
        assert w.as_of_ms == max(h.ts_ms for h in hits)
        assert differences(log, split_store) == []


class _Frozen:
    """A clock that never moves: only max_batch and the end of a run flush."""

    def __call__(self) -> float:
        return 0.0


@pytest.mark.parametrize("kind", BACKENDS)
@PROPS
@given(
    hits=hit_lists(max_size=150),
    points=st.lists(st.integers(0, 150), max_size=6),
    max_batch=st.integers(1, 60),
    window=st.sampled_from([0.0, 1e9]),
    restarts=st.lists(st.booleans(), min_size=7, max_size=7),
    resends=st.lists(st.booleans(), min_size=7, max_size=7),
    partitions=st.sampled_from([1, 3]),
)
def test_aggregator_runs_over_growing_log_count_exactly(
    kind: str,
    hits: list[Hit],
    points: list[int],
    max_batch: int,
    window: float,
    restarts: list[bool],
    resends: list[bool],
    partitions: int,
) -> None:
    """Appends between runs, any max_batch, restarts, resent hits, 1 or 3 partitions: exact."""
    with tmp_root() as tmp, open_backend(kind, Path(tmp) / "agg") as b:
        log = b.log(partitions=partitions)
        conf = Settings(data_dir=b.root, window_s=window, max_batch=max_batch, poll_s=0.0)
        agg = Aggregator(b.log(), b.store(), conf, clock=_Frozen())
        sent: list[Hit] = []
        for k, (start, end) in enumerate(cut(len(hits), points)):
            chunk = hits[start:end]
            if resends[k % 7] and sent:
                chunk = sent[-3:] + chunk + chunk[:2]  # producer retries: duplicates
            log.append(chunk)
            sent += chunk
            if restarts[k % 7]:
                agg = Aggregator(b.log(), b.store(), conf, clock=_Frozen())
            counters = agg.run(once=True)
            assert counters.lag_hits == 0
        store = b.store()
        assert unique_hits(sent) == hits
        assert snapshots(store) == recount(hits)
        for p in range(partitions):
            assert store.watermark(p).offset == store.watermark(p).hits == log.end(p).offset
        assert sum(log.end(p).offset for p in range(partitions)) == len(hits)
        assert differences(log, store) == []


@pytest.mark.parametrize("kind", BACKENDS)
@PROPS
@given(
    hits=hit_lists(),
    points=st.lists(st.integers(0, 120), max_size=8),
    replays=st.lists(st.integers(0, 100), min_size=1, max_size=6),
    reacquire=st.booleans(),
)
def test_any_replay_is_refused_and_changes_nothing(
    kind: str, hits: list[Hit], points: list[int], replays: list[int], reacquire: bool
) -> None:
    """Replaying applied batches (same or older epoch) is refused; stats stay exact."""
    with tmp_root() as tmp, open_backend(kind, Path(tmp) / "replay") as b:
        log, store = b.log(), b.store()
        log.append(hits)
        epoch = store.acquire(0)
        applied: list[Batch] = []
        for start, end in cut(len(hits), points):
            s = log.read(0, start, end - start)
            batch = Batch(
                0, epoch, start, end, fold(s.code_ids, s.ts_ms, s.names), s.max_ts_ms, len(s)
            )
            store.apply(batch)
            applied.append(batch)
        if reacquire:
            store.acquire(0)  # a new owner: the old batches are also stale now
        before = (snapshots(store), store.watermarks())
        for r in replays:
            replay = applied[r % len(applied)]
            with pytest.raises((WatermarkMismatchError, StaleEpochError)) as e:
                store.apply(replay)
            if isinstance(e.value, WatermarkMismatchError):
                assert not reacquire and e.value.already_applied
            else:
                assert reacquire
            assert (snapshots(store), store.watermarks()) == before
        assert snapshots(store) == recount(hits)
        assert differences(log, store) == []
