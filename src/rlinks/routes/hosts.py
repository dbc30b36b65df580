"""Host names as a browser reads them, so we compare hosts the way it connects.

WHATWG URL parsing lowercases and IDNA-maps names (full-width letters, `。` as
a dot), drops one trailing dot, and reads `2130706433` or `0x7f.1` as IPv4
addresses. `canonical_host` does the same, so a loop to our own host cannot be
disguised.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass
from encodings import idna
from functools import lru_cache
from urllib.parse import urlsplit

from rlinks.errors import ConfigError

_LABEL_RE = re.compile(r"[a-z0-9_-]{1,63}\Z")
_PORT_RE = re.compile(r"[0-9]{1,5}\Z")
# Label separators IDNA maps to "." (full stop, ideographic, full-width, half-width).
_DOTS_RE = re.compile("[.\u3002\uff0e\uff61]")
_RADIX_DIGITS = {8: set("01234567"), 10: set("0123456789"), 16: set("0123456789abcdef")}


@dataclass(frozen=True, slots=True)
class HostKey:
    """A host as a browser connects to it: canonical name (lowercase ASCII, IDNA,
    no trailing dot; IP addresses in standard form) and port (None: any port)."""

    host: str
    port: int | None


def authority_key(netloc: str, *, default_port: int | None) -> HostKey:
    """HostKey of `host[:port]` (no user info); ValueError says what is wrong."""
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise ValueError("an IPv6 host without its closing ']'")
        host_text, rest, bracketed = netloc[1:end], netloc[end + 1 :], True
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected text {rest!r} after the IPv6 host")
        port_text = rest[1:] if rest else None
    else:
        host_text, colon, port_text_or_empty = netloc.partition(":")
        port_text, bracketed = (port_text_or_empty if colon else None), False
        if port_text is not None and ":" in port_text:
            raise ValueError("more than one ':' in its host part (put an IPv6 host in [ ])")
    if not host_text:
        raise ValueError("no host: write it as https://host/path")
    port = default_port
    if port_text:  # "host:" with nothing after means the default port, as in browsers
        if not _PORT_RE.match(port_text) or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"an invalid port {port_text!r}: use a number from 1 to 65535")
        port = int(port_text)
    try:
        host = canonical_host(host_text, ipv6=bracketed)
    except ValueError as e:
        raise ValueError(f"an invalid host {host_text!r}: {e}") from e
    return HostKey(host, port)


def canonical_host(text: str, *, ipv6: bool = False) -> str:
    """The host a browser would connect to for `text`; ValueError if it is not valid."""
    if "%" in text:
        raise ValueError("percent-encoding is not allowed in a host; write the name itself")
    if ipv6:
        try:
            address = ipaddress.IPv6Address(text)
        except ValueError:
            raise ValueError("not a valid IPv6 address") from None
        mapped = address.ipv4_mapped  # ::ffff:127.0.0.1 reaches 127.0.0.1
        return str(mapped) if mapped else address.compressed
    labels = _DOTS_RE.split(text)
    if len(labels) > 1 and labels[-1] == "":
        labels.pop()  # one trailing dot names the same host ("example.com.")
    ascii_labels = [_ascii_label(label) for label in labels]
    if _ends_in_number(ascii_labels):
        return _ipv4(ascii_labels)
    name = ".".join(ascii_labels)
    if len(name) > 253:
        raise ValueError("a host name is at most 253 characters")
    return name


def _ascii_label(label: str) -> str:
    """One label, lowercased and IDNA-encoded; xn-- labels re-encoded canonically."""
    if not label:
        raise ValueError("an empty label ('..'): remove the extra dot")
    try:
        if label.isascii():
            label = label.lower()
            if label.startswith("xn--"):
                # Decode and re-encode: "xn--short-" is just "short" in disguise.
                label = idna.ToASCII(label[4:].encode("ascii").decode("punycode")).decode()
        else:
            label = idna.ToASCII(label).decode("ascii").lower()
    except UnicodeError:
        raise ValueError(f"{label!r} is not a valid international domain name label") from None
    if len(label) > 63:
        raise ValueError(f"the label {label[:20]!r}... is longer than 63 characters")
    if not _LABEL_RE.match(label):
        raise ValueError(
            f"the label {label!r} has characters a host name cannot have "
            "(letters, digits, '-' only)"
        )
    return label


def _ends_in_number(labels: list[str]) -> bool:
    """WHATWG: a host whose last label is a number is an IPv4 address (or invalid)."""
    last = labels[-1]
    return last.isdigit() or (last.startswith("0x") and set(last[2:]) <= _RADIX_DIGITS[16])


def _ipv4(labels: list[str]) -> str:
    """Dotted-quad form of WHATWG IPv4 notations (2130706433, 0x7f.1, 0177.0.0.1)."""
    if len(labels) > 4:
        raise ValueError("not a valid IPv4 address (more than 4 parts)")
    numbers = [_ipv4_number(label) for label in labels]
    if any(n > 255 for n in numbers[:-1]) or numbers[-1] >= 256 ** (5 - len(numbers)):
        raise ValueError("not a valid IPv4 address (a part is out of range)")
    value = numbers[-1] + sum(n << (8 * (3 - i)) for i, n in enumerate(numbers[:-1]))
    return str(ipaddress.IPv4Address(value))


def _ipv4_number(part: str) -> int:
    if part.startswith("0x"):
        digits, radix = part[2:], 16
    elif len(part) > 1 and part.startswith("0"):
        digits, radix = part[1:], 8
    else:
        digits, radix = part, 10
    if not set(digits) <= _RADIX_DIGITS[radix]:
        raise ValueError(f"not a valid IPv4 address ({part!r} is not a number)")
    return int(digits, radix) if digits else 0


@lru_cache(maxsize=256)
def public_host_key(entry: str) -> HostKey:
    """HostKey of a configured public host: `host`, `host:port`, `[v6]:port` or a URL.

    Without a port every port of that host counts as ours. Raises ConfigError.
    """
    text = entry.strip()
    try:
        if not text:
            raise ValueError("it is empty")
        if "://" in text:
            netloc = urlsplit(text).netloc
        elif text.count(":") > 1 and not text.startswith("["):
            netloc = f"[{text}]"  # a bare IPv6 address
        else:
            netloc = text
        if "@" in netloc or "/" in netloc:
            raise ValueError("give only the host (and port)")
        return authority_key(netloc, default_port=None)
    except ValueError as e:
        raise ConfigError(
            f"the public host {entry!r} is not usable ({e}): give a host name such as "
            "short.example, optionally with a port (short.example:8080)"
        ) from e


def public_host_keys(hosts: Iterable[str]) -> tuple[HostKey, ...]:
    return tuple(public_host_key(h) for h in hosts)


def loops_to(key: HostKey, public: Iterable[HostKey]) -> bool:
    """Whether a target connecting to `key` reaches one of our public hosts."""
    return any(p.host == key.host and (p.port is None or p.port == key.port) for p in public)
