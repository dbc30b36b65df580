"""Sample hits for demos and benchmarks: Zipf-distributed codes over a time span."""

from __future__ import annotations

from collections.abc import Iterator
from typing import BinaryIO

import numpy as np

DEFAULT_START = 1_764_000_000  # 2025-11-24T16:00:00Z
COUNTRIES = ("US", "DE", "FR", "GB", "IN", "BR", "JP")


def code_name(rank: int) -> str:
    return f"c{rank:05d}"


def zipf_codes(n: int, codes: int, s: float, rng: np.random.Generator) -> np.ndarray:
    """`n` code ranks in [1, codes], P(rank k) proportional to k^-s (s=0: uniform)."""
    weights = np.arange(1, codes + 1, dtype=np.float64) ** -s
    return rng.choice(codes, size=n, p=weights / weights.sum()) + 1


def sample_lines(
    n: int,
    *,
    codes: int = 10_000,
    s: float = 1.1,
    seed: int = 1,
    start: int = DEFAULT_START,
    span_s: int = 3 * 86_400,
    chunk: int = 100_000,
) -> Iterator[bytes]:
    """NDJSON hit lines (integer-second `ts`, as the original worker wrote), in
    time order, yielded in chunks of `chunk` lines."""
    rng = np.random.default_rng(seed)
    ts_all = np.sort(rng.integers(start, start + span_s, size=n))
    for lo in range(0, n, chunk):
        hi = min(n, lo + chunk)
        ranks = zipf_codes(hi - lo, codes, s, rng).tolist()
        countries = rng.integers(0, len(COUNTRIES), size=hi - lo).tolist()
        yield "".join(
            f'{{"code":"{code_name(r)}","ts":{t},"country":"{COUNTRIES[c]}"}}\n'
            for r, t, c in zip(ranks, ts_all[lo:hi].tolist(), countries, strict=True)
        ).encode()


def write_sample(out: BinaryIO, n: int, **kw: int | float) -> None:
    for block in sample_lines(n, **kw):  # type: ignore[arg-type]
        out.write(block)
