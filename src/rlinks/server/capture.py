"""Building a hit from a request, keeping nothing that identifies a person.

The raw IP address and user agent never leave this module: the address is cut
to its network prefix (IPv4 /24, IPv6 /48) and the user agent becomes a keyed
hash (BLAKE2b with a secret salt), so it can be told apart but not read back.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Final

from rlinks.hits import REFERRER_CAP, Hit, cap_text, new_hit_id

# What is read of each header value, in bytes: enough for what a hit keeps of
# it (a referrer is capped at 512 characters, of up to 4 bytes each). The cuts
# also bound what the caches below hold per entry.
UA_BYTES: Final = 1024
REFERRER_BYTES: Final = 4 * REFERRER_CAP
COUNTRY_BYTES: Final = 16
ADDRESS_CHARS: Final = 64


@dataclass(frozen=True)
class CaptureConfig:
    salt: bytes
    country_header: bytes | None = None  # lower-case header name, e.g. b"cf-ipcountry"
    trust_proxy: bool = False  # take the client address from X-Forwarded-For


@functools.lru_cache(maxsize=65536)  # clients come back: parse each address once
def ip_prefix(address: str | None) -> str | None:
    """`203.0.113.0/24` for an IPv4 address, `2001:db8:1::/48` for IPv6."""
    if not address:
        return None
    try:
        ip = ipaddress.ip_address(address.strip())
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    bits = 24 if ip.version == 4 else 48
    return str(ipaddress.ip_network(f"{ip}/{bits}", strict=False))


@functools.lru_cache(maxsize=4096)  # few distinct user agents make most traffic
def ua_hash(user_agent: bytes, salt: bytes) -> str | None:
    """A keyed hash of `user_agent`, already cut to `UA_BYTES` (`build_hit`
    cuts it: the cache keeps it as a key)."""
    if not user_agent:
        return None
    return hashlib.blake2b(user_agent, key=salt[:64], digest_size=8).hexdigest()


def build_hit(
    code: str,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    cfg: CaptureConfig,
    now_ms: int,
) -> Hit:
    ua = referer = forwarded = country = b""
    for name, value in headers:
        if name == b"user-agent":
            ua = value[:UA_BYTES]
        elif name == b"referer":
            referer = value[:REFERRER_BYTES]
        elif name == b"x-forwarded-for":
            forwarded = value
        elif name == cfg.country_header:
            country = value[:COUNTRY_BYTES]
    address = client[0] if client else None
    if cfg.trust_proxy and forwarded:
        # The proxy we trust appends the address it saw last; anything left of
        # it came from the client and could be forged.
        last = forwarded.rsplit(b",", 1)[-1].strip()
        address = last.decode("latin-1") if len(last) <= ADDRESS_CHARS else None
    return Hit(
        id=new_hit_id(),
        ts_ms=now_ms,
        code=code,
        country=cap_text(country.decode("latin-1").upper(), 8) if country else None,
        ua_hash=ua_hash(ua, cfg.salt),
        referrer=cap_text(referer.decode("utf-8", "replace"), REFERRER_CAP) if referer else None,
        ip_prefix=ip_prefix(address),
    )
