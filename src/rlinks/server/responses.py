"""Answers the server sends: redirects, JSON, and errors as an envelope or a page.

Errors are `{"error": {"code", "status", "message", "details", "ts"}}` when the
client prefers JSON, a small HTML page otherwise; never a stack trace.
"""

from __future__ import annotations

import functools
import html
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Any

import msgspec

from rlinks.timefmt import format_ms, now_ms

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_JSON = msgspec.json.Encoder()
_NO_STORE = (b"cache-control", b"no-store")


async def send_response(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type), (b"content-length", str(len(body)).encode())]
    if extra:
        headers.extend(extra)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def send_redirect(send: Send, status: int, location: bytes) -> None:
    # no-store: a cached redirect would hide repeat clicks from the counts.
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"location", location), (b"content-length", b"0"), _NO_STORE],
        }
    )
    await send({"type": "http.response.body", "body": b""})


@functools.cache
def status_line(status: int) -> bytes:
    return f"HTTP/1.1 {status} {HTTPStatus(status).phrase}\r\n".encode()


def redirect_head(status: int, location: bytes) -> bytes:
    """`send_redirect`'s answer as the bytes of its status line and headers (no
    blank line yet), for the server's protocol to write itself."""
    return (
        status_line(status)
        + b"location: "
        + location
        + b"\r\ncontent-length: 0\r\ncache-control: no-store\r\n"
    )


def error_head(status: int, content_type: bytes, length: int) -> bytes:
    """The status line and headers of an error `send_error` would send, as bytes."""
    return (
        status_line(status)
        + b"content-type: "
        + content_type
        + b"\r\ncontent-length: "
        + str(length).encode()
        + b"\r\ncache-control: no-store\r\n"
    )


async def send_json(send: Send, status: int, value: Any) -> None:
    await send_response(send, status, _JSON.encode(value), b"application/json", [_NO_STORE])


def prefers_json(scope: Scope) -> bool:
    return scope["path"].startswith("/api/") or accepts_json(scope["headers"])


def accepts_json(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the client's Accept header asks for JSON rather than HTML."""
    for name, value in headers:
        if name == b"accept":
            accept = value.lower()
            return b"application/json" in accept and b"text/html" not in accept
    return False


async def send_error(
    scope: Scope,
    send: Send,
    status: int,
    code: str,
    message: str,
    details: dict[str, Any] | None = None,
) -> None:
    body, content_type = error_body(prefers_json(scope), status, code, message, details)
    await send_response(send, status, body, content_type, [_NO_STORE])


def error_body(
    as_json: bool, status: int, code: str, message: str, details: dict[str, Any] | None = None
) -> tuple[bytes, bytes]:
    """An error's body and content type: the JSON envelope, or a small HTML page."""
    if as_json:
        envelope = {
            "error": {
                "code": code,
                "status": status,
                "message": message,
                "details": details or {},
                "ts": format_ms(now_ms()),
            }
        }
        return _JSON.encode(envelope), b"application/json"
    page = (
        "<!doctype html><html><head><meta charset=utf-8>"
        f"<title>{status} {html.escape(code)}</title></head><body>"
        f"<h1>{status}</h1><p>{html.escape(message)}</p></body></html>"
    ).encode()
    return page, b"text/html; charset=utf-8"
