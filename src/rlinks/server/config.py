"""The server's settings, built once by `rlinks serve` and handed to each worker
process (uvicorn starts workers afresh, so they travel as JSON in one
environment variable)."""

from __future__ import annotations

import os
import secrets
from typing import Any, Literal

import msgspec

from rlinks.backends import Target
from rlinks.errors import ConfigError
from rlinks.redisdb import NS, connect

ENV_CONFIG = "RLINKS_SERVE_CONFIG"
ENV_ADMIN_TOKEN = "RLINKS_ADMIN_TOKEN"
SALT_FILE = "hit-salt.key"
SALT_KEY = f"{NS}:hit-salt"

HitsMode = Literal["append", "kv", "off"]
Durability = Literal["commit", "async"]


class ServeConfig(msgspec.Struct, frozen=True, kw_only=True):
    data_dir: str | None = None
    backend_url: str | None = None
    partitions: int = 1
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    hits: HitsMode = "append"
    durability: Durability = "commit"
    aggregate: bool = True
    redirect_status: int = 302
    public_hosts: tuple[str, ...] = ("localhost", "127.0.0.1")
    trust_proxy: bool = False
    country_header: str | None = "cf-ipcountry"
    kv_latency_ms: float = 0.0
    route_cache_s: float = 1.0
    queue_max: int = 100_000
    admin_token: str | None = None
    metrics_dir: str | None = None

    def __post_init__(self) -> None:
        if self.redirect_status not in (301, 302, 307, 308):
            raise ConfigError(
                f"--redirect-status must be 301, 302, 307 or 308, not {self.redirect_status}"
            )
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, not {self.workers}")
        if self.kv_latency_ms < 0 or self.route_cache_s < 0:
            raise ConfigError("--kv-latency-ms and --route-cache-s must not be negative")

    @property
    def target(self) -> Target:
        return Target.of(self.data_dir, self.backend_url)

    def to_env(self) -> str:
        return msgspec.json.encode(self).decode()

    @classmethod
    def from_env(cls) -> ServeConfig:
        raw = os.environ.get(ENV_CONFIG)
        if not raw:
            raise ConfigError(f"{ENV_CONFIG} is not set: start the server with `rlinks serve`")
        return msgspec.json.decode(raw, type=cls)


def hit_salt(target: Target) -> bytes:
    """The secret that keys user-agent hashes: made once, kept in the data folder
    (or in Redis, shared by every server process on every machine)."""
    if target.url is not None:
        client: Any = connect(target.url)
        try:
            client.set(SALT_KEY, secrets.token_bytes(32), nx=True)
            return bytes(client.get(SALT_KEY))
        finally:
            client.close()
    data_dir = target.folder
    path = data_dir / SALT_FILE
    try:
        return path.read_bytes()
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    salt = secrets.token_bytes(32)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another worker made it first
        return path.read_bytes()
    with os.fdopen(fd, "wb") as f:
        f.write(salt)
    return salt
