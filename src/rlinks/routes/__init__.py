"""Routes: which short code redirects where, the rules that guard it, and who changed it.

`model` is the record (schema v1), `validate` the rules a route must follow,
`store` where routes and their audit trail live, `resolve` the redirect decision.
"""

from rlinks.routes.model import Meta, Route, Rules, decode_route, encode_route
from rlinks.routes.resolve import Resolution, resolve
from rlinks.routes.store import AuditRecord, RouteStore, SqliteRouteStore
from rlinks.routes.validate import validate_code, validate_route, validate_target

__all__ = [
    "AuditRecord",
    "Meta",
    "Resolution",
    "Route",
    "RouteStore",
    "Rules",
    "SqliteRouteStore",
    "decode_route",
    "encode_route",
    "resolve",
    "validate_code",
    "validate_route",
    "validate_target",
]
