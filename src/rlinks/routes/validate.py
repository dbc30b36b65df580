"""The rules a route must follow before it is stored.

A target ends up in a `Location` header, and browsers read it with the WHATWG URL
standard, which forgives a lot: tabs and newlines are dropped, `\\` counts as `/`,
host names are percent-decoded and IDNA-mapped (full-width letters, `。` as a
dot), and `2130706433` or `0x7f.1` mean 127.0.0.1. Anything a browser would read
differently from us could slip a redirect loop or a disguised host past these
checks, so such targets are refused outright, and host names are compared in the
form a browser would connect to.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from typing import NamedTuple
from urllib.parse import quote, urlsplit

import msgspec

from rlinks.errors import InvalidRouteError
from rlinks.hits import CODE_PATTERN
from rlinks.routes.hosts import (
    HostKey,
    authority_key,
    loops_to,
    public_host_keys,
)
from rlinks.routes.model import Meta, Route, stamp
from rlinks.timefmt import rfc3339_to_ms

MAX_CODE_CHARS = 64
MAX_TARGET_CHARS = 2048
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_NOTES_CHARS = 2000
# The server answers these paths itself, so no code may shadow them.
RESERVED_CODES = frozenset({"api", "admin", "www", "healthz", "metrics"})
DEFAULT_PUBLIC_HOSTS = ("localhost", "127.0.0.1")
DEFAULT_PORTS = {"http": 80, "https": 443}

_CODE_RE = re.compile(CODE_PATTERN)
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.-]*):")


# -- codes ----------------------------------------------------------------------------


def validate_code(code: str, *, allow_reserved: bool = False) -> str:
    """`code` if it is a valid short code: `[a-z0-9-]{1,64}` and not reserved.

    `allow_reserved` is for lookups: a reserved code is well formed, it just
    never names a route.
    """
    if not isinstance(code, str) or not code:
        raise _code_error("the code is empty: use 1 to 64 characters from a-z, 0-9 and '-'")
    if len(code) > MAX_CODE_CHARS:
        raise _code_error(
            f"the code {_show(code)} is {len(code)} characters long: "
            f"the limit is {MAX_CODE_CHARS}; choose a shorter one"
        )
    if not _CODE_RE.match(code):
        lowered = code.lower()
        if _CODE_RE.match(lowered):
            raise _code_error(f"codes are lowercase: use {lowered!r} instead of {code!r}")
        bad = next(ch for ch in code if not _CODE_RE.match(ch))
        raise _code_error(f"the code {_show(code)} contains {bad!r}: use only a-z, 0-9 and '-'")
    if not allow_reserved and code in RESERVED_CODES:
        raise _code_error(
            f"the code {code!r} is reserved (the server answers /{code} itself): "
            "choose another code"
        )
    return code


def _code_error(message: str) -> InvalidRouteError:
    return InvalidRouteError("code", message)


# -- targets --------------------------------------------------------------------------


class Target(NamedTuple):
    """A parsed, well-formed target: its scheme and where it connects."""

    scheme: str
    key: HostKey


def validate_target(
    url: str, *, https_only: bool, allow_loop: bool, public_hosts: Sequence[str]
) -> str:
    """`url` if it is a safe redirect target; raises InvalidRouteError (field "target").

    Absolute http(s) URL with a host, no user info, no whitespace or control
    characters, at most 2048 characters; https unless `https_only` is false; not
    one of `public_hosts` (host, or host:port) unless `allow_loop`.
    """
    target = parse_target(url)
    if https_only and target.scheme != "https":
        raise _target_error(
            f"the target {_show(url)} uses {target.scheme}://: use https://, or allow plain "
            "http for this route (rules.https_only = false; `--no-https` on the command line)"
        )
    if not allow_loop and loops_to(target.key, public_host_keys(public_hosts)):
        raise _target_error(
            f"the target {_show(url)} points back at our own host {target.key.host!r} "
            f"(public hosts: {', '.join(public_hosts)}), so it would redirect in a loop: "
            "point it elsewhere, or allow it (rules.no_loop = false; `--allow-loop`)"
        )
    return url


def parse_target(url: str) -> Target:
    """The scheme and host of a well-formed target; raises InvalidRouteError."""
    if not isinstance(url, str) or not url:
        raise _target_error(
            "the target is empty: give an absolute URL such as https://example.com/"
        )
    if len(url) > MAX_TARGET_CHARS:
        raise _target_error(
            f"the target is {len(url)} characters long: the limit is {MAX_TARGET_CHARS}; "
            "shorten it (or host the long URL behind a shorter one)"
        )
    if url != url.strip():
        where = "starts" if url[0].isspace() else "ends"
        raise _target_error(f"the target {_show(url)} {where} with whitespace: remove it")
    _check_characters(url)
    scheme_match = _SCHEME_RE.match(url)
    if scheme_match is None:
        raise _target_error(
            f"the target {_show(url)} is not an absolute URL: start it with https://"
        )
    scheme = scheme_match[1].lower()
    if scheme not in DEFAULT_PORTS:
        hint = ""
        if url[scheme_match.end() : scheme_match.end() + 1].isdigit():
            hint = f" (if {scheme_match[1]!r} is a host name, write https://{url})"
        raise _target_error(
            f"the target {_show(url)} uses the scheme {scheme}:, which is not allowed: "
            f"a target must be an http:// or https:// URL{hint}"
        )
    rest = url[scheme_match.end() :]
    if not rest.startswith("//"):
        hint = " (with '/', not '\\')" if rest.startswith("\\") else ""
        raise _target_error(
            f"the target {_show(url)} has no host: write it as {scheme}://host/path{hint}"
        )
    try:
        netloc = urlsplit(url).netloc
    except ValueError as e:
        raise _target_error(f"the target {_show(url)} cannot be parsed: {e}") from e
    if "@" in netloc:
        raise _target_error(
            "the target has user info ('user:password@') before its host: remove it; "
            "credentials do not belong in a public link, and 'name@' can disguise the real host"
        )
    if "\\" in netloc:
        raise _target_error(
            f"the target {_show(url)} has a backslash in its host part, which browsers read "
            "as '/': the host is not what it seems; use '/'"
        )
    try:
        key = authority_key(netloc, default_port=DEFAULT_PORTS[scheme])
    except ValueError as e:
        raise _target_error(f"the target {_show(url)} has {e}") from e
    return Target(scheme, key)


def _check_characters(url: str) -> None:
    """Refuse control, whitespace and invisible formatting characters anywhere."""
    if url.isascii() and url.isprintable() and " " not in url:
        return  # the common case, checked without a Python-level loop
    for i, ch in enumerate(url):
        category = unicodedata.category(ch)
        what = None
        if ch == "\t":
            what = "a tab"
        elif ch in "\r\n":
            what = "a line break"
        elif category == "Cc":
            what = f"a control character (U+{ord(ch):04X})"
        elif ch.isspace() or category in ("Zs", "Zl", "Zp"):
            what = f"a space character (U+{ord(ch):04X})"
        elif category in ("Cf", "Cs"):
            what = f"an invisible formatting character (U+{ord(ch):04X})"
        if what is not None:
            raise _target_error(
                f"the target {_show(url)} contains {what} at position {i}: remove it, "
                f"or percent-encode it as {quote(ch, safe='')}"
            )


def _target_error(message: str) -> InvalidRouteError:
    return InvalidRouteError("target", message)


# -- the rest of a route --------------------------------------------------------------


def validate_expires(value: str) -> str:
    """`value` (RFC 3339 with an offset) in canonical UTC form; raises InvalidRouteError."""
    try:
        ms = rfc3339_to_ms(value)
    except ValueError as e:
        why = (
            "has no UTC offset: add Z (UTC) or an offset such as +02:00"
            if "offset" in str(e)
            else "is not an RFC 3339 time"
        )
        raise InvalidRouteError(
            "expires_at", f"the expiry {_show(value)} {why} (e.g. 2026-12-31T23:59:59Z)"
        ) from None
    return stamp(ms)


def validate_meta(meta: Meta) -> Meta:
    """`meta` with empty notes as None and duplicate tags dropped (order kept)."""
    notes = meta.notes or None
    if notes is not None:
        if len(notes) > MAX_NOTES_CHARS:
            raise InvalidRouteError(
                "notes", f"the note is {len(notes)} characters long: the limit is {MAX_NOTES_CHARS}"
            )
        if any(unicodedata.category(ch) == "Cc" and ch not in "\n\t" for ch in notes):
            raise InvalidRouteError("notes", "the note contains control characters: remove them")
    tags = list(dict.fromkeys(meta.tags))
    if len(tags) > MAX_TAGS:
        raise InvalidRouteError("tags", f"{len(tags)} tags: a route has at most {MAX_TAGS}")
    for tag in tags:
        if not tag or len(tag) > MAX_TAG_CHARS or not tag.isprintable() or " " in tag:
            raise InvalidRouteError(
                "tags",
                f"the tag {_show(tag)} is not valid: use 1 to {MAX_TAG_CHARS} printable "
                "characters without spaces",
            )
    return Meta(notes=notes, tags=tags)


def validate_route(route: Route, *, public_hosts: Sequence[str] = ()) -> Route:
    """`route` checked field by field and normalized (expiry in UTC, tags deduplicated).

    Loops are checked against `public_hosts` (none given: not checked, as a store
    that does not know where it is served cannot tell).
    """
    validate_code(route.code)
    validate_target(
        route.target,
        https_only=route.rules.https_only,
        allow_loop=not route.rules.no_loop,
        public_hosts=public_hosts,
    )
    expires = route.rules.expires_at
    rules = msgspec.structs.replace(
        route.rules, expires_at=None if expires is None else validate_expires(expires)
    )
    return route.replace(rules=rules, meta=validate_meta(route.meta))


def _show(value: str, limit: int = 80) -> str:
    """`value` quoted for a message, cut short if long."""
    return repr(value if len(value) <= limit else value[: limit - 3] + "...")
