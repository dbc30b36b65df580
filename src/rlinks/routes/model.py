"""The Route record (schema v1): what a short code redirects to, and under which rules.

Routes are stored as JSON so any tool (the sqlite3 shell, a Redis client) can read
them; msgspec decodes them straight into typed Structs, which keeps the redirect
path's one read cheap. Times are RFC 3339 UTC strings with milliseconds, the form
`rlinks.timefmt.format_ms` writes.
"""

from __future__ import annotations

from typing import Any, Final, Literal, cast

import msgspec

from rlinks.timefmt import format_ms, now_ms, rfc3339_to_ms

SCHEMA_VERSION: Final = 1
Status = Literal["active", "disabled"]


class Rules(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """How a route may redirect.

    `https_only`: the target must be https. `no_loop`: the target must not point
    back at one of our own public hosts (a redirect loop). `expires_at`: after
    this instant the code answers 410 Gone instead of redirecting.
    """

    https_only: bool = True
    no_loop: bool = True
    expires_at: str | None = None


class Meta(msgspec.Struct, frozen=True, kw_only=True, forbid_unknown_fields=True):
    """Notes and tags for people; never read on the redirect path."""

    notes: str | None = None
    tags: list[str] = msgspec.field(default_factory=list)


class Route(msgspec.Struct, frozen=True, kw_only=True):
    """A short code and its target. Frozen: a change is a new Route (see `replace`)."""

    code: str
    target: str
    status: Status = "active"
    rules: Rules = msgspec.field(default_factory=Rules)
    meta: Meta = msgspec.field(default_factory=Meta)
    created_at: str
    updated_at: str
    created_by: str
    # A Literal, so a record from a future schema fails to decode instead of
    # being half-understood.
    v: Literal[1] = SCHEMA_VERSION

    @classmethod
    def new(
        cls,
        code: str,
        target: str,
        *,
        rules: Rules | None = None,
        meta: Meta | None = None,
        status: Status = "active",
        actor: str = "",
        at_ms: int | None = None,
    ) -> Route:
        """A route stamped as created now by `actor` (a store re-stamps it on `put`)."""
        at = stamp(now_ms() if at_ms is None else at_ms)
        return cls(
            code=code,
            target=target,
            status=status,
            rules=rules or Rules(),
            meta=meta or Meta(),
            created_at=at,
            updated_at=at,
            created_by=actor,
        )

    @property
    def active(self) -> bool:
        return self.status == "active"

    @property
    def expires_ms(self) -> int | None:
        """`rules.expires_at` in Unix ms (None if the route never expires)."""
        if self.rules.expires_at is None:
            return None
        return rfc3339_to_ms(self.rules.expires_at)

    def replace(self, **changes: Any) -> Route:
        return msgspec.structs.replace(self, **changes)


_ENCODER = msgspec.json.Encoder()
_DECODER = msgspec.json.Decoder(Route)


def encode_route(route: Route) -> bytes:
    """The route as compact JSON (every field present, in schema order)."""
    return _ENCODER.encode(route)


def decode_route(data: bytes | str) -> Route:
    """A Route from JSON; raises msgspec.DecodeError (or its ValidationError)."""
    return _DECODER.decode(data)


def route_to_dict(route: Route) -> dict[str, Any]:
    """Plain dicts and lists, ready for any JSON encoder or a diff."""
    out: dict[str, Any] = msgspec.to_builtins(route)
    return out


def stamp(ms: int) -> str:
    """`created_at`/`updated_at` for a Unix time in ms (RFC 3339 UTC, ms)."""
    return cast(str, format_ms(ms))
