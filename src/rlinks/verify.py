"""An independent recount of the log, compared with the stats store.

It decodes the full hit records (not the columns the aggregator folds) and
counts them with plain dictionaries, so a bug in the fast path cannot hide
itself. Only hits at or below each partition's watermark are compared: the
contract says exactly those are counted, once.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field

from rlinks.log.base import HitLog
from rlinks.store.base import Snapshot, StatsStore
from rlinks.timefmt import MS_PER_DAY, day_to_iso


@dataclass
class Recount:
    hits: Counter[str] = field(default_factory=Counter)
    daily: defaultdict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))
    first: dict[str, int] = field(default_factory=dict)
    last: dict[str, int] = field(default_factory=dict)


def recount(log: HitLog, upto: dict[int, int]) -> Recount:
    """Count every hit at an offset <= `upto[partition]`."""
    rc = Recount()
    for partition, limit in upto.items():
        for offset, hit in log.records(partition):
            if offset > limit:
                break
            rc.hits[hit.code] += 1
            rc.daily[hit.code][day_to_iso(hit.ts_ms // MS_PER_DAY)] += 1
            rc.first[hit.code] = min(rc.first.get(hit.code, hit.ts_ms), hit.ts_ms)
            rc.last[hit.code] = max(rc.last.get(hit.code, hit.ts_ms), hit.ts_ms)
    return rc


def differences(log: HitLog, store: StatsStore) -> list[str]:
    """Every way the stats differ from a recount of the log (empty: identical)."""
    upto = {p: store.watermark(p).offset for p in range(log.partitions)}
    rc = recount(log, upto)
    found: dict[str, Snapshot] = {s.code: s for s in store.snapshots()}
    out = []
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
