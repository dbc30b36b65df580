"""uvicorn's httptools protocol, with redirects that need no waiting answered
in place.

Through ASGI, a redirect costs a task, two message dicts and two socket writes
(head, then an empty body); under load that is most of a worker's time. Here,
once a request's headers are parsed, the app is asked for an answer it can give
at once (`RlinksApp.redirect_now`: the route is held, and the hit is handed off
without a commit to wait for). If it has one, the whole response goes out in
one write; otherwise (errors, the admin API, /metrics, `commit` durability, a
route to read) the request takes uvicorn's ASGI path unchanged.

Order is kept: a request is answered in place only when no earlier request on
the connection is still being answered (pipelining), and keep-alive, HTTP/1.0
and `Connection: close` follow uvicorn's own rules.

This leans on uvicorn's protocol internals (`cycle`, `pipeline`, `headers`,
`server_state`, `on_response_complete`), so pyproject.toml pins uvicorn to the
versions tested; tests/test_http_protocol.py pins the wire behaviour.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

# (raw path, lower-cased headers, client address) -> the response head without
# its blank line, or None when the request must take the ASGI path.
RedirectNow = Callable[[bytes, list[tuple[bytes, bytes]], "tuple[str, int] | None"], bytes | None]

_CLOSE = b"connection: close\r\n"


class RedirectProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redirect_now: RedirectNow | None = getattr(self.app, "redirect_now", None)
        self._answered = False

    def on_headers_complete(self) -> None:
        answer = self._answer_now()
        if answer is None:
            self._answered = False
            super().on_headers_complete()
            return
        self._answered = True
        parser = self.parser
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        head = answer + _default_headers(self.server_state.default_headers)
        if not keep_alive:
            self.transport.write(head + _CLOSE + b"\r\n")
            self.transport.close()
        else:
            self.transport.write(head + b"\r\n")
        self.on_response_complete()  # counts it; re-arms keep-alive or the pipeline

    def _answer_now(self) -> bytes | None:
        if self._redirect_now is None:
            return None
        cycle = self.cycle
        if (cycle is not None and not cycle.response_complete) or self.pipeline:
            return None  # an earlier request is still being answered
        parser = self.parser
        if parser.get_method() not in (b"GET", b"HEAD") or parser.should_upgrade():
            return None
        try:
            path: bytes = httptools.parse_url(self.url).path
        except httptools.HttpParserInvalidURLError:
            return None
        return self._redirect_now(path, self.headers, self.client)

    def on_body(self, body: bytes) -> None:
        if not self._answered:  # a body sent with an answered GET is ignored
            super().on_body(body)

    def on_message_complete(self) -> None:
        if not self._answered:
            super().on_message_complete()


_headers_cache: tuple[list[tuple[bytes, bytes]] | None, bytes] = (None, b"")


def _default_headers(headers: list[tuple[bytes, bytes]]) -> bytes:
    """uvicorn's default headers (the date, renewed each second) as bytes,
    encoded once per list uvicorn makes."""
    global _headers_cache
    cached, encoded = _headers_cache
    if cached is not headers:
        encoded = b"".join(name + b": " + value + b"\r\n" for name, value in headers)
        _headers_cache = (headers, encoded)
    return encoded
