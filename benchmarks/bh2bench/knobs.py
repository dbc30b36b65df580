"""What a pipeline run measures: scenarios, modes and the knobs, in one place."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final, Literal

Scenario = Literal["hot", "zipf", "uniform"]
SCENARIOS: Final[tuple[Scenario, ...]] = ("hot", "zipf", "uniform")

NGINX: Final = "nginx-302"
# mode -> extra `rlinks serve` flags; nginx answering `return 302` is the HTTP floor.
MODES: Final[dict[str, tuple[str, ...]]] = {
    "off": ("--hits", "off"),
    "append-commit": ("--hits", "append", "--durability", "commit"),
    "append-async": ("--hits", "append", "--durability", "async"),
    "kv-0ms": ("--hits", "kv", "--kv-latency-ms", "0"),
    "kv-5ms": ("--hits", "kv", "--kv-latency-ms", "5"),
    NGINX: (),
}
ALL_MODES: Final = tuple(MODES)

DEFAULT_REQUESTS: Final = 5000
QUICK_REQUESTS: Final = 300
DEFAULT_CONCURRENCIES: Final = (1, 10, 50, 100)
DEFAULT_REPEATS: Final = 3
DEFAULT_WINDOW_S: Final = 1.0  # `rlinks serve --window` in the scenario × mode runs
SWEEP_WINDOWS: Final = (0.1, 1.0, 10.0)
SWEEP_SCENARIO: Final[Scenario] = "zipf"
SWEEP_MODE: Final = "append-commit"
SWEEP_CONCURRENCY: Final = 10
DEFAULT_SWEEP_S: Final = 20.0
QUICK_SWEEP_S: Final = 2.0
DEFAULT_AGG_HITS: Final = 2_000_000
QUICK_AGG_HITS: Final = 20_000
# The original methodology's abort rule: errors above 1% at c <= 10 stop the run.
ABORT_ERROR_RATE: Final = 0.01
ABORT_MAX_CONCURRENCY: Final = 10


def kind_of(mode: str) -> Literal["nginx", "off", "append", "kv"]:
    """What records hits in `mode`: nothing (nginx, off), the HITS log, or the KV."""
    if mode == NGINX:
        return "nginx"
    hits = MODES[mode][1]
    if hits not in ("off", "append", "kv"):
        raise ValueError(f"mode {mode} has no --hits kind")
    return hits  # type: ignore[return-value]


@dataclass(frozen=True)
class Knobs:
    requests: int
    concurrencies: tuple[int, ...]
    repeats: int
    scenarios: tuple[Scenario, ...]
    modes: tuple[str, ...]
    quick: bool
    window_s: float
    sweep_windows: tuple[float, ...]
    sweep_s: float
    agg_hits: int  # 0: skip the aggregator throughput benchmark
    seed: int
    out: Path
    missing_paths: float = 0.0  # test-only: this share of requests names no route

    def __post_init__(self) -> None:
        if self.requests < 1:
            raise ValueError("REQUESTS must be at least 1")
        if self.repeats < 1:
            raise ValueError("REPEATS must be at least 1")
        if not self.concurrencies or min(self.concurrencies) < 1:
            raise ValueError("CONCURRENCIES must list positive numbers")
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown MODES {unknown}: choose from {' '.join(ALL_MODES)}")
        if not 0 <= self.missing_paths <= 1:
            raise ValueError("the share of missing paths must be between 0 and 1")
        bad = [s for s in self.scenarios if s not in SCENARIOS]
        if bad:
            raise ValueError(f"unknown SCENARIOS {bad}: choose from {' '.join(SCENARIOS)}")

    def as_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["out"] = str(self.out)
        return doc
