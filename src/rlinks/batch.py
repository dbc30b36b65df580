"""Folding hits into a Batch of per-code, per-UTC-day deltas.

The fold is vectorised (numpy): hits arrive as two columns, code ids and
timestamps, and leave as one row per (code, day) that changed. Keeping per-hit
Python work out of this loop is what makes the aggregator fast.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from rlinks.timefmt import MS_PER_DAY

IntArray = npt.NDArray[np.int64]


class DayDelta(NamedTuple):
    """Hits of one code on one UTC day, with the first and last hit's time."""

    code: str
    day: int  # days since 1970-01-01 UTC
    hits: int
    first_ms: int
    last_ms: int


@dataclass(frozen=True)
class Batch:
    """Everything one apply commits for a partition: the deltas of the hits at
    offsets (start, end] and the new watermark `end`, under `epoch`."""

    partition: int
    epoch: int
    start: int
    end: int
    deltas: Sequence[DayDelta]
    max_ts_ms: int | None  # event time of the newest hit in the batch
    hits: int

    @property
    def codes(self) -> int:
        """Distinct codes written: the KV writes this batch costs."""
        return len({d.code for d in self.deltas})


def fold(code_ids: npt.ArrayLike, ts_ms: npt.ArrayLike, names: Sequence[str]) -> list[DayDelta]:
    """Per (code, day) count, first and last hit; `names[id]` is a code's text."""
    ids = np.asarray(code_ids, dtype=np.int64)
    ts = np.asarray(ts_ms, dtype=np.int64)
    if ids.size == 0:
        return []
    day = ts // MS_PER_DAY
    day0 = int(day.min())
    span = int(day.max()) - day0 + 1
    key = ids * span + (day - day0)
    order = np.argsort(key, kind="stable")
    key_sorted = key[order]
    ts_sorted = ts[order]
    starts = np.flatnonzero(np.concatenate(([True], key_sorted[1:] != key_sorted[:-1])))
    counts = np.diff(np.append(starts, key_sorted.size))
    firsts = np.minimum.reduceat(ts_sorted, starts)
    lasts = np.maximum.reduceat(ts_sorted, starts)
    keys = key_sorted[starts]
    group_ids = (keys // span).tolist()
    group_days = (keys % span + day0).tolist()
    return [
        DayDelta(names[c], d, n, f, la)
        for c, d, n, f, la in zip(
            group_ids, group_days, counts.tolist(), firsts.tolist(), lasts.tolist(), strict=False
        )
    ]
