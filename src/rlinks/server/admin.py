"""The admin API under /api/links, on only when RLINKS_ADMIN_TOKEN is set.

    PUT    /api/links/{code}        create or replace (body: {"target", "rules", "meta", "status"})
    GET    /api/links/{code}        the route
    DELETE /api/links/{code}        remove it
    GET    /api/links               list (?prefix=&limit=&show_disabled=1)
    GET    /api/links/{code}/stats  the stats snapshot with "as of" and lag

Every call needs `Authorization: Bearer <token>` (compared in constant time).
"""

from __future__ import annotations

import hmac
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs

import msgspec

from rlinks.backends import open_log, open_routes, open_store
from rlinks.errors import InvalidRouteError, RouteNotFoundError
from rlinks.routes.model import Meta, Route, Rules, route_to_dict
from rlinks.routes.validate import validate_code, validate_route
from rlinks.server.offloop import SerialCalls
from rlinks.server.responses import Receive, Scope, Send, send_error, send_json, send_response
from rlinks.status import code_stats

if TYPE_CHECKING:
    from rlinks.server.app import RlinksApp

MAX_BODY = 64 * 1024
ACTOR = "api"


class RouteBody(msgspec.Struct, forbid_unknown_fields=True):
    """What a PUT may say; anything else is refused, not silently dropped."""

    target: str
    rules: Rules = msgspec.field(default_factory=Rules)
    meta: Meta = msgspec.field(default_factory=Meta)
    status: str = "active"


class AdminApi:
    def __init__(self, app: RlinksApp) -> None:
        self._app = app
        token = app.config.admin_token or ""
        self._expected = f"Bearer {token}".encode()
        # Edits write the store: off the event loop (see `server.offloop`), on
        # a connection of their own, as the app's serves route reads meanwhile.
        self._edits = open_routes(app.target)
        self._editing = SerialCalls()

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> int:
        if not self._authorized(scope):
            await send_error(
                scope,
                send,
                401,
                "unauthorized",
                "a valid `Authorization: Bearer <token>` header is required",
            )
            return 401
        parts = scope["path"].split("/")  # "", "api", "links", code?, "stats"?
        if parts[:3] != ["", "api", "links"] or len(parts) > 5:
            await send_error(scope, send, 404, "not_found", "no such API path")
            return 404
        method = scope["method"]
        try:
            if len(parts) == 3 or parts[3] == "":
                if method != "GET":
                    return await _not_allowed(scope, send)
                return await self._list(scope, send)
            code = parts[3]
            validate_code(code, allow_reserved=method != "PUT")
            if len(parts) == 5:
                if parts[4] != "stats" or method != "GET":
                    await send_error(scope, send, 404, "not_found", "no such API path")
                    return 404
                return await self._stats(send, code)
            if method == "GET":
                return await self._get(scope, send, code)
            if method == "PUT":
                return await self._put(scope, receive, send, code)
            if method == "DELETE":
                return await self._delete(scope, send, code)
            return await _not_allowed(scope, send)
        except InvalidRouteError as e:
            await send_error(scope, send, 422, "invalid_route", str(e), {"field": e.field})
            return 422
        except RouteNotFoundError as e:
            await send_error(scope, send, 404, "not_found", str(e))
            return 404

    def _authorized(self, scope: Scope) -> bool:
        for name, value in scope["headers"]:
            if name == b"authorization":
                return hmac.compare_digest(value, self._expected)
        return False

    async def _list(self, scope: Scope, send: Send) -> int:
        query = parse_qs(scope.get("query_string", b"").decode("latin-1"))
        try:
            limit = int(query.get("limit", ["50"])[0])
        except ValueError:
            limit = -1
        if not 1 <= limit <= 1000:
            await send_error(scope, send, 400, "bad_request", "limit must be 1..1000")
            return 400
        routes = self._app.routes.list(
            prefix=query.get("prefix", [None])[0],
            limit=limit,
            include_disabled=query.get("show_disabled", ["0"])[0] in ("1", "true", "yes"),
        )
        await send_json(send, 200, {"links": [route_to_dict(r) for r in routes]})
        return 200

    async def _get(self, scope: Scope, send: Send, code: str) -> int:
        route = self._app.routes.get(code)
        if route is None:
            raise RouteNotFoundError(code)
        await send_json(send, 200, route_to_dict(route))
        return 200

    async def _put(self, scope: Scope, receive: Receive, send: Send, code: str) -> int:
        raw = await _read_body(receive)
        if raw is None:
            await send_error(scope, send, 413, "too_large", f"the body is over {MAX_BODY} bytes")
            return 413
        try:
            body = msgspec.json.decode(raw, type=RouteBody)
        except msgspec.DecodeError as e:
            await send_error(scope, send, 400, "bad_request", f"the body is not a route: {e}")
            return 400
        if body.status not in ("active", "disabled"):
            raise InvalidRouteError("status", 'status must be "active" or "disabled"')
        draft = validate_route(
            Route.new(code, body.target, rules=body.rules, meta=body.meta, status=body.status),  # type: ignore[arg-type]
            public_hosts=self._app.config.public_hosts,
        )
        existed, route = await self._editing.run(self._replace, draft)
        self._app.route_cache.forget(code)
        await send_json(send, 200 if existed else 201, route_to_dict(route))
        return 200 if existed else 201

    def _replace(self, draft: Route) -> tuple[bool, Route]:
        """Whether `draft.code` had a route, and the route as stored: both on
        the edit connection, one call after the other (see `__init__`)."""
        existed = self._edits.get(draft.code) is not None
        return existed, self._edits.put(draft, ACTOR)

    async def _delete(self, scope: Scope, send: Send, code: str) -> int:
        if not await self._editing.run(self._edits.delete, code, ACTOR):
            raise RouteNotFoundError(code)
        self._app.route_cache.forget(code)
        await send_response(send, 204, b"", b"application/json")
        return 204

    async def _stats(self, send: Send, code: str) -> int:
        log = open_log(self._app.target, create=False)
        store = open_store(self._app.target)
        try:
            body: dict[str, Any] = code_stats(log, store, code)
        finally:
            log.close()
            store.close()
        await send_json(send, 200, body)
        return 200


async def _not_allowed(scope: Scope, send: Send) -> int:
    await send_error(scope, send, 405, "method_not_allowed", "that method is not allowed here")
    return 405


async def _read_body(receive: Receive) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > MAX_BODY:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
