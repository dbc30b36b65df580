"""Time as rlinks writes it: RFC 3339 UTC with milliseconds, and UTC days."""

from __future__ import annotations

import datetime as dt
import functools
import time

import numpy as np
import numpy.typing as npt

MS_PER_DAY = 86_400_000
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_ONE_MS = dt.timedelta(milliseconds=1)


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def format_ms(ms: int | None) -> str | None:
    """`2026-11-28T22:00:00.123Z` for a Unix time in milliseconds."""
    if ms is None:
        return None
    t = _EPOCH + dt.timedelta(milliseconds=ms)
    return t.strftime("%Y-%m-%dT%H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def datetime_to_ms(value: dt.datetime) -> int:
    """Milliseconds since the epoch, floored, for an aware datetime."""
    return (value - _EPOCH) // _ONE_MS


@functools.lru_cache(maxsize=4096)
def day_to_iso(day: int) -> str:
    """`YYYY-MM-DD` for a day number (days since 1970-01-01, UTC)."""
    return (_EPOCH + dt.timedelta(days=day)).strftime("%Y-%m-%d")


def format_lag(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def format_ms_many(values: npt.ArrayLike) -> list[str]:
    """`format_ms` for many values at once (vectorised; years 1970..9999)."""
    stamps = np.asarray(values, dtype=np.int64).astype("datetime64[ms]")
    return [f"{t}Z" for t in np.datetime_as_string(stamps, unit="ms").tolist()]


def days_to_iso_many(days: npt.ArrayLike) -> list[str]:
    """`day_to_iso` for many day numbers at once."""
    return list(np.datetime_as_string(np.asarray(days, dtype="datetime64[D]")).tolist())


@functools.lru_cache(maxsize=4096)
def rfc3339_to_ms(value: str) -> int:
    """Unix ms of an RFC 3339 time with an offset; raises ValueError otherwise.

    Cached: the redirect path checks the same few expiry strings over and over.
    """
    parsed = dt.datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        raise ValueError(f"{value!r} has no UTC offset")
    return datetime_to_ms(parsed)
