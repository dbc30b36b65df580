"""Sharing partitions between aggregator workers: leases, epochs, balancing.

A worker owns a partition while it holds the partition's *lease* (an expiring
record naming it) and acts under the epoch it took with the lease. It renews
its leases every third of the lease period; a worker that stops renewing (dead,
paused, cut off) loses them when they expire and another takes the partition
under a higher epoch. Correctness never rests on the lease clock: the store
refuses an apply with an old epoch (a zombie's), the lease only decides who
should be working.

Balancing: workers announce themselves with a heartbeat; each aims at
ceil(P / live workers) partitions, takes free ones up to that and hands back
extras (after flushing them) so a new worker gets its share.
"""

from __future__ import annotations

import math
import os
import socket
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

DEFAULT_LEASE_S = 10.0


def worker_id() -> str:
    """A name unique to this process run: host, pid and a random suffix."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class LeaseStore(Protocol):
    """The lease primitives a store provides (atomic with the epoch)."""

    def try_lease(self, partition: int, owner: str, ttl_ms: int) -> int | None:
        """Take the partition if its lease is free, expired or ours: the new
        epoch; None when another live worker holds it."""
        ...

    def renew_lease(self, partition: int, owner: str, ttl_ms: int) -> bool:
        """Extend our live lease; False once it expired (even if nobody took
        it since: the worker takes it again with `try_lease`, a new epoch)."""
        ...

    def release_lease(self, partition: int, owner: str) -> None:
        """Give the partition up now (only if we still hold it)."""
        ...

    def heartbeat(self, worker: str, ttl_ms: int) -> list[str]:
        """Say we are alive for `ttl_ms`; every live worker, sorted."""
        ...


@dataclass
class Changes:
    """What one tick decided: partitions gained (with their epoch), lost (the
    lease went to someone else: drop pending hits) and to hand back (flush
    first, then `release`)."""

    gained: dict[int, int] = field(default_factory=dict)
    lost: list[int] = field(default_factory=list)
    surplus: list[int] = field(default_factory=list)


class Ownership:
    """The partitions one worker should own, kept up to date by `tick`."""

    def __init__(
        self,
        store: LeaseStore,
        partitions: int,
        *,
        wanted: Sequence[int] | None = None,
        worker: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
    ) -> None:
        """`wanted`: only these partitions (all of them held if possible);
        None: `auto`, a fair share of all `partitions`."""
        self._store = store
        self._partitions = partitions
        self._wanted = list(wanted) if wanted is not None else None
        self.worker = worker or worker_id()
        self.lease_s = lease_s
        self._ttl_ms = max(1, int(lease_s * 1000))
        self.owned: set[int] = set()

    @property
    def renew_every_s(self) -> float:
        return self.lease_s / 3

    def tick(self) -> Changes:
        """Renew, then rebalance: take free partitions up to our share and
        name the extras to hand back."""
        changes = Changes()
        live = self._store.heartbeat(self.worker, self._ttl_ms)
        for p in sorted(self.owned):
            if not self._store.renew_lease(p, self.worker, self._ttl_ms):
                self.owned.discard(p)
                changes.lost.append(p)
        if self._wanted is not None:
            candidates, share = self._wanted, len(self._wanted)
        else:
            candidates = list(range(self._partitions))
            share = math.ceil(self._partitions / max(1, len(live)))
            # Start looking at a different place per worker, so workers
            # starting together do not all race for partition 0 first.
            at = live.index(self.worker) if self.worker in live else 0
            shift = (at * share) % max(1, self._partitions)
            candidates = candidates[shift:] + candidates[:shift]
        for p in candidates:
            if len(self.owned) >= share:
                break
            if p in self.owned:
                continue
            epoch = self._store.try_lease(p, self.worker, self._ttl_ms)
            if epoch is not None:
                self.owned.add(p)
                changes.gained[p] = epoch
        if len(self.owned) > share:
            changes.surplus = sorted(self.owned)[share:]
        return changes

    def release(self, partition: int) -> None:
        self._store.release_lease(partition, self.worker)
        self.owned.discard(partition)

    def release_all(self) -> None:
        for p in sorted(self.owned):
            self.release(p)


def parse_partitions(text: str, partitions: int) -> list[int] | None:
    """`auto` -> None; `0,2,5` or `0-3` -> that list, each < `partitions`."""
    from rlinks.errors import ConfigError

    if text == "auto":
        return None
    out: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            out.extend(range(int(lo), int(hi if dash else lo) + 1))
    except ValueError:
        raise ConfigError(
            f"--partitions must be all, auto or a list like 0,2,4-5, not {text!r}"
        ) from None
    bad = [p for p in out if not 0 <= p < partitions]
    if bad or not out:
        raise ConfigError(
            f"--partitions {text}: the log has partitions 0..{partitions - 1}"
            + (f", not {bad}" if bad else "")
        )
    return sorted(set(out))
