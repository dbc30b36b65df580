"""uvicorn's httptools protocol, with redirects for held routes answered in
place.

Through ASGI, a redirect costs a task, two message dicts and two socket writes
(head, then an empty body); under load that is most of a worker's time. Here,
once a request's headers are parsed, the app is asked for a redirect it can
answer itself (`RlinksApp.redirect_now`: the route is held in memory). The
whole response then goes out in one write: at once (`--hits off`, `async`
durability), or from a callback when the hit's group commit is done (`commit`
durability; `RlinksApp.answer_committed` gives the redirect, or 503 if the
commit failed). Everything else (errors, the admin API, /metrics, `--hits kv`,
a route to read from the store) takes uvicorn's ASGI path unchanged.

Order is kept: a request is answered in place only when no earlier request on
the connection is still being answered, and one waiting for its commit holds
later pipelined requests back as an ASGI request would. Keep-alive, HTTP/1.0
and `Connection: close` follow uvicorn's own rules.

This leans on uvicorn's protocol internals (`cycle`, `pipeline`, `headers`,
`server_state`, `on_response_complete`), so pyproject.toml pins uvicorn to the
versions tested; tests/test_http_protocol.py pins the wire behaviour.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import httptools
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

Headers = list[tuple[bytes, bytes]]
Client = tuple[str, int] | None
# (raw path, lower-cased headers, client address) -> the response head without
# its blank line and the commit to wait for before it, or None when the request
# must take the ASGI path.
RedirectNow = Callable[[bytes, Headers, Client], tuple[bytes, "asyncio.Future[None] | None"] | None]
# (head, headers, the commit) -> the answer to send: (head, body).
AnswerCommitted = Callable[[bytes, Headers, "asyncio.Future[None]"], tuple[bytes, bytes]]

_CLOSE = b"connection: close\r\n"


class _Waiting:
    """Stands in for uvicorn's request cycle while a redirect waits for its
    hit's commit: later requests on the connection queue behind it (uvicorn's
    pipeline), and a server shutdown marks it to close the connection."""

    __slots__ = ("disconnected", "keep_alive", "response_complete")

    message_event = asyncio.Event()  # set by uvicorn when the connection is lost: unused

    def __init__(self, keep_alive: bool) -> None:
        self.response_complete = False
        self.disconnected = False
        self.keep_alive = keep_alive


class RedirectProtocol(HttpToolsProtocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._redirect_now: RedirectNow | None = getattr(self.app, "redirect_now", None)
        self._answer_committed: AnswerCommitted | None = getattr(self.app, "answer_committed", None)
        self._answered = False

    def on_headers_complete(self) -> None:
        answer = self._answer_now()
        if answer is None:
            self._answered = False
            super().on_headers_complete()
            return
        self._answered = True
        head, committed = answer
        parser = self.parser
        keep_alive = parser.get_http_version() != "1.0" and parser.should_keep_alive()
        if committed is None:
            self._send(head, b"", keep_alive)
            return
        waiting = _Waiting(keep_alive)
        self.cycle = waiting  # type: ignore[assignment]
        headers = self.headers
        bodyless = parser.get_method() == b"HEAD"
        committed.add_done_callback(
            lambda done: self._send_committed(waiting, head, headers, bodyless, done)
        )

    def _answer_now(self) -> tuple[bytes, asyncio.Future[None] | None] | None:
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

    def _send_committed(
        self,
        waiting: _Waiting,
        head: bytes,
        headers: Headers,
        bodyless: bool,
        done: asyncio.Future[None],
    ) -> None:
        assert self._answer_committed is not None
        head, body = self._answer_committed(head, headers, done)
        waiting.response_complete = True
        if self.transport.is_closing():
            return  # the client left while the hit committed
        self._send(head, b"" if bodyless else body, waiting.keep_alive)

    def _send(self, head: bytes, body: bytes, keep_alive: bool) -> None:
        head += _default_headers(self.server_state.default_headers)
        if keep_alive:
            self.transport.write(head + b"\r\n" + body)
        else:
            self.transport.write(head + _CLOSE + b"\r\n" + body)
            self.transport.close()
        self.on_response_complete()  # counts it; re-arms keep-alive or the pipeline

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
