"""Connecting to Redis or Redis Cluster, and the names of rlinks' keys there.

`connect(url)` takes `redis://host:port/db` or `rediss://...` and finds out by
itself whether the server is a cluster node (`INFO cluster`), so the same URL
form works for both. Every key of one partition carries the partition as a hash
tag (`rlinks:{p3}:...`), so the Lua scripts that touch several of them run on
one cluster slot.

redis-py is imported on first use, not with this module: the embedded default
(every command on a data folder, each server worker and log writer) never pays
its start-up (about 90 ms here).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any, TypeAlias

from rlinks.errors import ConfigError

if TYPE_CHECKING:
    import redis
    import redis.cluster
    from redis.commands.core import Script

Client: TypeAlias = "redis.Redis | redis.cluster.RedisCluster"

SCHEMES = ("redis://", "rediss://")
NS = "rlinks"


def transient_errors() -> tuple[type[Exception], ...]:
    """Errors after which the same call may work again (a restart, a failover);
    none while redis-py is not loaded, since then no Redis call was made."""
    loaded = sys.modules.get("redis")
    return () if loaded is None else (loaded.ConnectionError, loaded.TimeoutError)


def store_errors() -> tuple[type[Exception], ...]:
    """Any Redis error (a store that cannot answer); none while redis-py is not loaded."""
    loaded = sys.modules.get("redis")
    return () if loaded is None else (loaded.RedisError,)


def is_redis_url(text: str) -> bool:
    return text.startswith(SCHEMES)


def connect(url: str) -> Client:
    """A client for `url` (Redis Cluster when the server is a cluster node).

    Raises ConfigError with the URL (password hidden) when nobody answers."""
    if not is_redis_url(url):
        raise ConfigError(f"--backend must be a redis:// or rediss:// URL, got {url!r}")
    import redis
    import redis.cluster

    shown = hide_password(url)
    try:
        single: redis.Redis = redis.Redis.from_url(url, socket_timeout=30)
        info = single.info("cluster")
    except redis.RedisError as e:
        raise ConfigError(f"cannot reach Redis at {shown}: {e}") from e
    if not info.get("cluster_enabled"):
        return single
    single.close()
    try:
        return redis.cluster.RedisCluster.from_url(url, socket_timeout=30)
    except redis.RedisError as e:
        raise ConfigError(f"cannot reach Redis Cluster at {shown}: {e}") from e


def hide_password(url: str) -> str:
    scheme, _, rest = url.partition("://")
    auth, at, host = rest.rpartition("@")
    if not at:
        return url
    user = auth.partition(":")[0]
    return f"{scheme}://{user}:***@{host}"


def is_cluster(client: Client) -> bool:
    import redis.cluster

    return isinstance(client, redis.cluster.RedisCluster)


def register(client: Client, lua: str) -> Script:
    """A Lua script run by EVALSHA (loaded on first use, on each node)."""
    return client.register_script(lua)


class Keys:
    """rlinks' key names. `p(n, name)` is a key of partition n (hash-tagged)."""

    meta = f"{NS}:meta"  # hash: partitions
    watermarks = f"{NS}:watermarks"  # set: partitions that have a watermark
    quarantine = f"{NS}:quarantine"  # stream of rejected input
    workers = f"{NS}:workers"  # zset: aggregator worker -> heartbeat expiry (ms)

    @staticmethod
    def p(partition: int, name: str) -> str:
        return f"{NS}:{{p{partition}}}:{name}"


def as_int(value: Any, default: int = 0) -> int:
    """A Redis reply (bytes, str, int or None) as an int."""
    return default if value is None else int(value)
