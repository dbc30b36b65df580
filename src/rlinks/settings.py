"""Settings, built once from flags and then the environment, and passed down."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from rlinks.backends import ENV_BACKEND, ENV_DATA, Target
from rlinks.errors import ConfigError

DEFAULT_WINDOW_S = 1.0
DEFAULT_MAX_BATCH = 100_000
DEFAULT_POLL_S = 0.05
# Test-only: `point` or `point:n` kills the aggregator (SIGKILL) the n-th time it
# reaches that point. See rlinks.crash for the points.
ENV_CRASH_AT = "RLINKS_CRASH_AT"


@dataclass(frozen=True)
class Settings:
    data_dir: Path | None = None
    backend_url: str | None = None
    window_s: float = DEFAULT_WINDOW_S
    max_batch: int = DEFAULT_MAX_BATCH
    poll_s: float = DEFAULT_POLL_S
    crash_at: str | None = None

    def __post_init__(self) -> None:
        if self.window_s < 0:
            raise ConfigError(f"--window must be >= 0 seconds, got {self.window_s}")
        if self.max_batch < 1:
            raise ConfigError(f"--max-batch must be >= 1, got {self.max_batch}")
        self.target  # noqa: B018 - raises ConfigError unless exactly one is given

    @property
    def target(self) -> Target:
        return Target.of(self.data_dir, self.backend_url)

    @classmethod
    def build(
        cls,
        data_dir: Path | None,
        env: Mapping[str, str] | None = None,
        *,
        backend: str | None = None,
        **flags: object,
    ) -> Settings:
        """Flags win; then the environment; then the defaults."""
        env = os.environ if env is None else env
        backend = backend or env.get(ENV_BACKEND) or None
        if data_dir is None and backend is None:
            if ENV_DATA not in env:
                raise ConfigError(
                    f"no data: pass --data DIR (or set {ENV_DATA}) for the embedded store, "
                    f"or --backend redis://... (or set {ENV_BACKEND})"
                )
            data_dir = Path(env[ENV_DATA])
        given = {k: v for k, v in flags.items() if v is not None}
        return cls(
            data_dir=Path(data_dir) if data_dir is not None else None,
            backend_url=backend,
            crash_at=env.get(ENV_CRASH_AT) or None,
            **given,  # type: ignore[arg-type]
        )
