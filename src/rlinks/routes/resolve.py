"""The redirect decision for one request: pure, and cheap enough for every hit.

The store validated the target when it was written, but which hosts are "ours"
is the server's setting, so the loop rule is checked here, against the hosts the
server was started with. Parsed hosts are cached per target string, so a hot code
costs a dict lookup, not a URL parse.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

from rlinks.errors import InvalidRouteError
from rlinks.routes.hosts import HostKey, loops_to, public_host_keys
from rlinks.routes.model import Route
from rlinks.routes.validate import parse_target

# 302, not 301: browsers cache a 301 forever, so later hits would never reach us
# (uncounted) and an edited or disabled route would keep redirecting.
REDIRECT_STATUS = 302


@dataclass(frozen=True, slots=True)
class Resolution:
    """What to answer: a redirect to `location`, or an error (`error` is its code)."""

    status: int
    location: str | None
    error: str | None
    message: str

    @property
    def redirects(self) -> bool:
        return self.location is not None


NOT_FOUND = Resolution(404, None, "not_found", "This short link does not exist.")


def resolve(route: Route | None, *, now_ms: int, public_hosts: Sequence[str]) -> Resolution:
    """Redirect, or 404 (missing or disabled), 410 (expired), 500 (loop or bad target)."""
    # A disabled route answers exactly like a missing one: no hint that it exists.
    if route is None or route.status != "active":
        return NOT_FOUND
    expires_ms = _expires_ms(route)
    if expires_ms is not None and expires_ms <= now_ms:
        return Resolution(
            410, None, "expired", f"This short link expired at {route.rules.expires_at}."
        )
    if route.rules.no_loop:
        key = _target_key(route.target)
        if key is None:
            return Resolution(
                500, None, "invalid_target", "This short link's target is not a valid URL."
            )
        if loops_to(key, _public_keys(tuple(public_hosts))):
            return Resolution(
                500,
                None,
                "loop_detected",
                "This short link points back at this site, which would loop forever.",
            )
    return Resolution(REDIRECT_STATUS, route.target, None, f"Redirecting to {route.target}")


def _expires_ms(route: Route) -> int | None:
    try:
        return route.expires_ms
    except ValueError:
        return 0  # an unreadable expiry fails closed: the link counts as expired


# As many targets as a server worker holds routes (`server.routecache`): a
# miss parses the URL (about 3 us, a fifth of a held redirect's cost).
@lru_cache(maxsize=131_072)
def _target_key(target: str) -> HostKey | None:
    try:
        return parse_target(target).key
    except InvalidRouteError:
        return None


@lru_cache(maxsize=64)
def _public_keys(hosts: tuple[str, ...]) -> tuple[HostKey, ...]:
    return public_host_keys(hosts)
