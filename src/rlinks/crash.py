"""Named crash points, so tests can SIGKILL the aggregator at each step.

`RLINKS_CRASH_AT=after_fold` kills the process the first time it reaches
`after_fold`; `after_fold:3` the third time. Unset, a point costs one compare.
"""

from __future__ import annotations

import os
import signal

from rlinks.errors import ConfigError

POINTS = ("after_read", "after_fold", "before_commit", "after_commit")


class CrashPoints:
    def __init__(self, spec: str | None) -> None:
        self._point: str | None = None
        self._left = 0
        if spec:
            point, _, nth = spec.partition(":")
            if point not in POINTS:
                raise ConfigError(f"unknown crash point {point!r}; known: {', '.join(POINTS)}")
            self._point, self._left = point, int(nth or 1)

    def reach(self, point: str) -> None:
        if point != self._point:
            return
        self._left -= 1
        if self._left <= 0:
            os.kill(os.getpid(), signal.SIGKILL)
