"""Routes and request paths per scenario.

- `hot`: every request to one code, `ok-code` (the original benchmark).
- `zipf`: codes drawn Zipf s=1.1 over 10,000 codes (as `rlinks-bh2 sample`).
- `uniform`: codes drawn uniformly over 100,000 codes.

Paths are drawn here, in Python, into a file that `wrk/paths.lua` sends in order;
every path is a route that exists, so a non-3xx answer is an error. Each
scenario also has `probe-0001`, the staleness probe's own code, which wrk
never requests.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Final

import numpy as np

from bh2bench.knobs import Scenario
from rlinks.sample import zipf_codes

HOT_CODE: Final = "ok-code"
PROBE_CODE: Final = "probe-0001"
ZIPF_CODES: Final = 10_000
ZIPF_S: Final = 1.1
UNIFORM_CODES: Final = 100_000
TARGET: Final = "https://example.com/landing"
MISSING_PATH: Final = "/no-such-route"


def codes(scenario: Scenario) -> list[str]:
    """Every code the scenario's requests can name, most popular first."""
    if scenario == "hot":
        return [HOT_CODE]
    if scenario == "zipf":
        return [f"z{rank:05d}" for rank in range(1, ZIPF_CODES + 1)]
    return [f"u{rank:06d}" for rank in range(1, UNIFORM_CODES + 1)]


def write_routes(path: Path, scenario: Scenario) -> int:
    """The scenario's routes, and the probe's, as `rlinks links import` lines."""
    all_codes = [*codes(scenario), PROBE_CODE]
    with open(path, "w") as f:
        for code in all_codes:
            f.write(json.dumps({"code": code, "target": f"{TARGET}/{code}"}) + "\n")
    return len(all_codes)


def sample_paths(scenario: Scenario, n: int, seed: int) -> list[str]:
    """`n` request paths drawn for the scenario (deterministic by seed); for
    `hot`, its one path (wrk cycles through the file)."""
    if scenario == "hot":
        return [f"/{HOT_CODE}"]
    names = codes(scenario)
    rng = np.random.default_rng(seed)
    if scenario == "zipf":
        ranks = zipf_codes(n, ZIPF_CODES, ZIPF_S, rng)  # 1-based
        return [f"/{names[r - 1]}" for r in ranks.tolist()]
    picks = rng.integers(0, UNIFORM_CODES, size=n)
    return [f"/{names[i]}" for i in picks.tolist()]


def with_missing(paths: list[str], n: int, fraction: float, seed: int) -> list[str]:
    """`n` paths from `paths` (cycled) with about `fraction` of them replaced by
    a code no route has (404s: how the abort rule is tested)."""
    rng = np.random.default_rng(seed + 1)
    missing = rng.random(n) < fraction
    return [MISSING_PATH if gone else paths[i % len(paths)] for i, gone in enumerate(missing)]


def write_paths(path: Path, paths: list[str]) -> None:
    path.write_text("\n".join(paths) + "\n")
