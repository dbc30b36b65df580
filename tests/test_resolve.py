"""The redirect decision: every branch of `resolve`, and its order of precedence."""

from __future__ import annotations

import pytest

from rlinks.routes import Resolution, Route, Rules, resolve
from rlinks.routes.model import Status
from rlinks.routes.resolve import NOT_FOUND, REDIRECT_STATUS

NOW = 1_800_000_000_000  # 2027-01-15T08:00:00Z
PUBLIC = ["short.example", "127.0.0.1"]


def make(
    target: str = "https://example.com/landing",
    *,
    status: Status = "active",
    rules: Rules | None = None,
) -> Route:
    """A stored-looking route (resolve never re-validates, so no store is needed)."""
    return Route.new("promo", target, status=status, rules=rules)


def decide(route: Route | None, *, now_ms: int = NOW, hosts: list[str] = PUBLIC) -> Resolution:
    """resolve with the test clock and public hosts."""
    return resolve(route, now_ms=now_ms, public_hosts=hosts)


def test_an_active_route_redirects_to_its_target() -> None:
    """An active, unexpired, non-looping route answers 302 with the target as Location."""
    res = decide(make())
    assert res == Resolution(302, "https://example.com/landing", None, res.message)
    assert res.redirects and REDIRECT_STATUS == 302
    assert "https://example.com/landing" in res.message


def test_a_missing_route_is_404() -> None:
    """No route: 404 not_found, no Location."""
    res = decide(None)
    assert (res.status, res.location, res.error) == (404, None, "not_found")
    assert not res.redirects and res.message


def test_a_disabled_route_is_404_like_a_missing_one() -> None:
    """A disabled route answers exactly as a missing one (nothing tells it exists)."""
    assert decide(make(status="disabled")) == decide(None) == NOT_FOUND


def test_an_expired_route_is_410() -> None:
    """expires_at before now: 410 expired, with the expiry in the message."""
    res = decide(make(rules=Rules(expires_at="2027-01-01T00:00:00.000Z")))
    assert (res.status, res.location, res.error) == (410, None, "expired")
    assert "2027-01-01T00:00:00.000Z" in res.message


def test_expiry_boundary_is_inclusive() -> None:
    """At exactly expires_at the route is expired; 1 ms before it still redirects."""
    route = make(rules=Rules(expires_at="2027-01-15T08:00:00.000Z"))
    assert decide(route, now_ms=NOW).status == 410
    assert decide(route, now_ms=NOW - 1).status == 302


def test_a_future_expiry_redirects() -> None:
    """A route expiring later redirects now."""
    assert decide(make(rules=Rules(expires_at="2030-01-01T00:00:00+02:00"))).status == 302


def test_an_unreadable_expiry_fails_closed() -> None:
    """An expiry that does not parse counts as expired (never redirect on doubt)."""
    assert decide(make(rules=Rules(expires_at="someday"))).error == "expired"


@pytest.mark.parametrize(
    "target",
    [
        "https://short.example/x",
        "HTTPS://SHORT.EXAMPLE./x",
        "https://short.example:443/x",
        "https://ｓｈｏｒｔ.example/",
        "http://2130706433/",
        "https://[::ffff:127.0.0.1]/",
    ],
)
def test_a_loop_to_our_own_host_is_500(target: str) -> None:
    """With no_loop, a target on one of our public hosts (any spelling) is 500 loop_detected."""
    res = decide(make(target))
    assert (res.status, res.location, res.error) == (500, None, "loop_detected")


def test_a_loop_redirects_when_the_rule_allows_it() -> None:
    """With no_loop false, a target on our own host redirects."""
    res = decide(make("https://short.example/x", rules=Rules(no_loop=False)))
    assert (res.status, res.location) == (302, "https://short.example/x")


def test_loops_follow_the_servers_public_hosts() -> None:
    """Which hosts are ours is the caller's setting: the same route loops on one server only."""
    route = make("https://other.example/x")
    assert decide(route).status == 302
    assert decide(route, hosts=["other.example"]).error == "loop_detected"
    assert decide(route, hosts=["other.example:8443"]).status == 302
    assert decide(route, hosts=[]).status == 302


def test_a_stored_target_that_does_not_parse_is_500() -> None:
    """A target that is not a valid URL (written around the store) never redirects."""
    res = decide(make("javascript:alert(1)"))
    assert (res.status, res.location, res.error) == (500, None, "invalid_target")


def test_precedence_disabled_then_expired_then_loop() -> None:
    """Disabled beats expired, expired beats loop."""
    expired_loop = make("https://short.example/", rules=Rules(expires_at="2020-01-01T00:00:00Z"))
    assert decide(expired_loop.replace(status="disabled")).status == 404
    assert decide(expired_loop).status == 410


def test_resolve_is_pure() -> None:
    """The same inputs give the same answer, and public hosts may be any sequence."""
    route = make()
    assert decide(route) == decide(route) == resolve(route, now_ms=NOW, public_hosts=tuple(PUBLIC))
