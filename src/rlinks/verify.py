"""An independent recount of the log, compared with the stats store.

It decodes the full hit records (not the columns the aggregator folds) and
counts them with plain dictionaries, so a bug in the fast path cannot hide
itself. Only hits at or below each partition's watermark are compared: the
contract says exactly those are counted, once.

Hits that `compact` trimmed are gone from the log; what stands in for them is
the partition's compacted summary, written in the same atomic step as the
trim. The recount starts from that summary and counts the records after the
compacted offset, so it stays exact after any number of compactions.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from rlinks.batch import DeltaRow
from rlinks.log.base import HitLog
from rlinks.store.base import Snapshot, StatsStore
from rlinks.timefmt import MS_PER_DAY, day_to_iso


@dataclass
class Recount:
    hits: Counter[str] = field(default_factory=Counter)
    daily: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    first: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # why an exact recount is impossible

    def add(self, code: str, day: int, hits: int, first_ms: int, last_ms: int) -> None:
        """Count `hits` hits of `code` on UTC `day`, the first and last at these times."""
        self.hits[code] += hits
        self.daily[code][day_to_iso(day)] += hits
        self.first[code] = min(self.first.get(code, first_ms), first_ms)
        self.last[code] = max(self.last.get(code, last_ms), last_ms)

    def add_rows(self, rows: Iterable[DeltaRow]) -> None:
        for row in rows:
            self.add(*row)


def recount(log: HitLog, upto: dict[int, int]) -> Recount:
    """Count every hit at an offset <= `upto[partition]`: the compacted summary
    of the trimmed ones, then the records the log still holds."""
    rc = Recount()
    for partition, limit in upto.items():
        compacted, rows = log.compacted(partition)
        if compacted > limit:
            rc.problems.append(
                f"partition {partition}: the log is compacted up to offset {compacted}, above "
                f"the watermark {limit}: hits were trimmed before they were counted; "
                "`rlinks-bh2 rebuild` recounts them from the compaction summary"
            )
        rc.add_rows(rows)
        for offset, hit in log.records(partition, compacted):
            if offset > limit:
                break
            rc.add(hit.code, hit.ts_ms // MS_PER_DAY, 1, hit.ts_ms, hit.ts_ms)
    return rc


def differences(log: HitLog, store: StatsStore) -> list[str]:
    """Every way the stats differ from a recount of the log (empty: identical)."""
    upto = {p: store.watermark(p).offset for p in range(log.partitions)}
    rc = recount(log, upto)
    found: dict[str, Snapshot] = {s.code: s for s in store.snapshots()}
    out = list(rc.problems)
    for code in sorted(set(rc.hits) | set(found)):
        snap = found.get(code)
        if snap is None:
            out.append(f"{code}: log has {rc.hits[code]} hits, stats have none")
            continue
        if code not in rc.hits:
            out.append(f"{code}: stats have {snap.hits} hits, the log has none")
            continue
        if snap.hits != rc.hits[code]:
            out.append(f"{code}: stats say {snap.hits} hits, the log has {rc.hits[code]}")
        if snap.first_ms != rc.first[code] or snap.last_ms != rc.last[code]:
            out.append(f"{code}: first/last hit differ from the log's")
        days = dict(rc.daily[code])
        if snap.daily != days:
            out.append(f"{code}: per-day counts {snap.daily} differ from the log's {days}")
    return out
