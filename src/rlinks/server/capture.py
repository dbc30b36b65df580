"""Hit capture, in two steps: what a redirect leaves, and the hit made of it.

On the redirect path a worker keeps only what a hit is made from (`capture`:
the code, the time, the client address and three header values, as they
came), which costs it a few hundred nanoseconds. Its log writer process makes
the hits (`HitMaker`) just before it appends them, so the id, the hashing and
the address parsing never take the worker's event loop (see docs/design.md).

A `Capture` is raw: it goes only from a worker to its own log writer, over a
pipe, and is never stored. The hit made of it keeps nothing that identifies a
person: the address is cut to its network prefix (IPv4 /24, IPv6 /48) and the
user agent becomes a keyed hash (BLAKE2b with a secret salt), so it can be
told apart but not read back.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from dataclasses import dataclass
from typing import Final

import msgspec

from rlinks.hits import REFERRER_CAP, Hit, cap_text, new_hit_id

# What a capture keeps of each header value, in bytes: enough for what the hit
# keeps of it (a referrer is capped at 512 characters, of up to 4 bytes each).
UA_BYTES: Final = 1024
REFERRER_BYTES: Final = 4 * REFERRER_CAP
COUNTRY_BYTES: Final = 16


@dataclass(frozen=True)
class CaptureConfig:
    country_header: bytes | None = None  # lower-case header name, e.g. b"cf-ipcountry"
    trust_proxy: bool = False  # take the client address from X-Forwarded-For


class Capture(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What one redirect leaves for its hit, header values as the request gave
    them (cut to what the hit can keep). Not tracked by the garbage collector:
    it holds only strings, bytes and numbers."""

    code: str
    ts_ms: int
    address: str | None = None
    user_agent: bytes = b""
    referrer: bytes = b""
    country: bytes = b""


def capture(
    code: str,
    headers: list[tuple[bytes, bytes]],
    client: tuple[str, int] | None,
    cfg: CaptureConfig,
    now_ms: int,
) -> Capture:
    """What the hit of a redirect to `code` at `now_ms` is made from."""
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
        # (Cut: an address is short, and parsing one is cached per address.)
        address = forwarded.rsplit(b",", 1)[-1].strip()[:64].decode("latin-1")
    return Capture(code, now_ms, address, ua, referer, country)


class HitMaker:
    """Makes hits of captures, with the salt that keys user-agent hashes."""

    def __init__(self, salt: bytes) -> None:
        self._salt = salt[:64]  # BLAKE2b's longest key

    def hit(self, c: Capture) -> Hit:
        return Hit(
            id=new_hit_id(),
            ts_ms=c.ts_ms,
            code=c.code,
            country=cap_text(c.country.decode("latin-1").upper(), 8) if c.country else None,
            ua_hash=ua_hash(c.user_agent, self._salt),
            referrer=cap_text(c.referrer.decode("utf-8", "replace"), REFERRER_CAP)
            if c.referrer
            else None,
            ip_prefix=ip_prefix(c.address),
        )

    def hits(self, captures: list[Capture]) -> list[Hit]:
        hit = self.hit
        return [hit(c) for c in captures]


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
    if not user_agent:
        return None
    return hashlib.blake2b(user_agent[:UA_BYTES], key=salt[:64], digest_size=8).hexdigest()
