"""HTTP/1.1 on the wire against the real `rlinks serve`, over raw loopback sockets.

Keep-alive, pipelining, requests split at odd byte boundaries, closing, bad
requests, other methods, odd paths and exact hit counts, as a client sees them:
bytes in, bytes out. Whatever protocol layer sits in front of the app (uvicorn's
httptools protocol, or a faster one answering held redirects in place) must keep
all of it. Every test runs against a server in each durability: `async`
(a redirect need not wait for anything, so it can be answered in place) and
`commit` (a redirect waits for its hit's commit).

Only behaviour is pinned: header order, the reason phrase and the exact text of
uvicorn's 400 page are left free.
"""

from __future__ import annotations

import contextlib
import email.utils
import socket
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.server_helpers import HOST, Server, log_counts, put_route, running_server, wait_for

TARGET = "https://example.com/landing?utm=spring&x=%20y#top"
REDIRECT_HEADERS = {"date", "location", "content-length", "cache-control"}
RECV_TIMEOUT_S = 5.0
# Long enough to see bytes a server would still send, short enough to run often.
QUIET_S = 0.2
# Codes whose hits a test counts, each requested by that test only.
COUNTED = ("count-code", "enc-code", "close-code", "garbage-code")


# -- a raw HTTP/1.1 client -------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    """One HTTP response as read off the wire (header names lower-cased, in order)."""

    version: str
    status: int
    headers: list[tuple[str, str]]
    body: bytes

    def header(self, name: str) -> str | None:
        """The one value of header `name` (None if absent; fails if sent twice)."""
        values = [v for n, v in self.headers if n == name]
        assert len(values) <= 1, f"{name} sent {len(values)} times: {self.headers}"
        return values[0] if values else None

    def names(self) -> set[str]:
        return {n for n, _ in self.headers}


def request(
    method: str,
    target: str,
    *,
    version: str = "HTTP/1.1",
    headers: tuple[str, ...] = ("Host: short.example",),
    body: bytes = b"",
) -> bytes:
    """The bytes of one request (`headers` as `Name: value` lines)."""
    lines = [f"{method} {target} {version}", *headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def get(target: str, *headers: str) -> bytes:
    """A GET of `target` with a Host header and `headers`."""
    return request("GET", target, headers=("Host: short.example", *headers))


class Wire:
    """One client connection and the bytes received on it that are not parsed yet."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((HOST, port), timeout=RECV_TIMEOUT_S)
        self._buf = b""

    def __enter__(self) -> Wire:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_in_chunks(self, data: bytes, size: int) -> None:
        """Send `data` `size` bytes at a time, each its own TCP segment."""
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for k in range(0, len(data), size):
            self.sock.sendall(data[k : k + size])
            time.sleep(0.001)  # let the server read each piece on its own

    def _fill(self) -> None:
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            raise AssertionError(
                f"no complete answer within {RECV_TIMEOUT_S} s; got {self._buf[:300]!r}"
            ) from None
        assert data, f"the server closed the connection mid-answer: {self._buf[:300]!r}"
        self._buf += data

    def answer(self, *, head: bool = False) -> Answer:
        """Read the next response; `head`: it answers a HEAD, so it has no body."""
        while (end := self._buf.find(b"\r\n\r\n")) < 0:
            self._fill()
        head_bytes, self._buf = self._buf[:end], self._buf[end + 4 :]
        status_line, *lines = head_bytes.decode("latin-1").split("\r\n")
        version, status, _reason = (status_line + " ").split(" ", 2)
        headers = []
        for line in lines:
            name, sep, value = line.partition(":")
            assert sep and name == name.strip(), f"bad header line {line!r}"
            headers.append((name.lower(), value.strip()))
        answer = Answer(version, int(status), headers, b"")
        length = answer.header("content-length")
        assert length is not None, f"an answer without content-length: {headers}"
        if head:
            return answer
        while len(self._buf) < int(length):
            self._fill()
        body, self._buf = self._buf[: int(length)], self._buf[int(length) :]
        return Answer(version, int(status), headers, body)

    def closed_by_server(self, timeout: float = RECV_TIMEOUT_S) -> bool:
        """True once the server closes the connection (with nothing more sent);
        False if it is still open after `timeout` seconds."""
        assert not self._buf, f"unread bytes before the close: {self._buf[:300]!r}"
        self.sock.settimeout(timeout)
        try:
            data = self.sock.recv(65536)
        except TimeoutError:
            return False
        except ConnectionResetError:
            return True
        finally:
            self.sock.settimeout(RECV_TIMEOUT_S)
        assert not data, f"bytes instead of a close: {data[:300]!r}"
        return True

    def assert_quiet(self) -> None:
        """Nothing more arrives and the connection stays open: no extra answer."""
        assert not self.closed_by_server(QUIET_S), "the server closed a keep-alive connection"


def assert_redirect(a: Answer, *, closing: bool = False) -> None:
    """`a` is the redirect to TARGET: no body, never cached, dated, nothing else."""
    assert (a.version, a.status) == ("HTTP/1.1", 302), a
    assert a.header("location") == TARGET
    assert a.header("content-length") == "0" and a.body == b""
    assert a.header("cache-control") == "no-store"
    date = a.header("date")
    assert date is not None
    sent = email.utils.parsedate_to_datetime(date).timestamp()
    assert abs(sent - time.time()) < 10, date
    expected = (REDIRECT_HEADERS | {"connection"}) if closing else REDIRECT_HEADERS
    assert a.names() == expected, a.headers
    if closing:
        assert a.header("connection") == "close"


# -- servers ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Serving:
    """A running server over its own data folder, and the durability it runs in."""

    server: Server
    durability: str

    @property
    def port(self) -> int:
        return self.server.port

    def wire(self) -> Wire:
        return Wire(self.port)

    def hits(self, code: str) -> int:
        return log_counts(self.server.data).get(code, 0)

    def assert_hits(self, code: str, n: int) -> None:
        """The log holds exactly `n` hits for `code`: at once under `commit` (a
        redirect waits for its hit), once the queue has drained under `async`."""
        if self.durability == "async":
            wait_for(lambda: self.hits(code) >= n, timeout=10)
            time.sleep(QUIET_S)  # nothing more may arrive after the last one
        assert self.hits(code) == n

    def assert_alive(self) -> None:
        """The process runs and a new connection gets a redirect."""
        assert self.server.proc.poll() is None, self.server.stderr()
        with self.wire() as w:
            w.send(get("/ok-code"))
            assert_redirect(w.answer())


@pytest.fixture(scope="module", params=["async", "commit"])
def serving(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Serving]:
    """One server per durability (module-wide), with every test's routes stored before
    it starts, so each is held from the first request."""
    durability: str = request.param
    data = tmp_path_factory.mktemp(f"wire-{durability}") / "data"
    for code in ("ok-code", *COUNTED):
        put_route(data, code, TARGET)
    flags = ("--hits", "append", "--durability", durability, "--no-aggregate")
    with running_server(data, *flags) as s:
        yield Serving(s, durability)


# -- keep-alive and pipelining -----------------------------------------------------------


def test_keep_alive_serves_200_redirects_on_one_connection(serving: Serving) -> None:
    """200 sequential GETs on one connection each get the full redirect, and it stays open."""
    with serving.wire() as w:
        for _ in range(200):
            w.send(get("/ok-code"))
            assert_redirect(w.answer())
        w.assert_quiet()


PIPELINE = [
    (get("/ok-code"), 302, False),
    (get("/missing-code"), 404, False),
    (request("HEAD", "/ok-code"), 302, True),
    (get("/healthz"), 200, False),
    (request("HEAD", "/healthz"), 200, True),
    (request("HEAD", "/missing-code"), 404, True),
    (request("POST", "/ok-code", body=b"hello"), 405, False),
    (get("/ok-code"), 302, False),
]


def check_pipeline_answers(w: Wire) -> None:
    """The answers to PIPELINE, in its order, then nothing more."""
    for _, status, head in PIPELINE:
        a = w.answer(head=head)
        assert a.status == status, (status, a)
        if status == 302:
            assert_redirect(a)
        elif head:
            assert int(a.header("content-length") or "0") > 0, a  # a body exists, unsent
        else:
            assert len(a.body) == int(a.header("content-length") or "-1") > 0, a
    w.assert_quiet()


def test_pipelined_requests_are_answered_in_order(serving: Serving) -> None:
    """Requests written in one send get one answer each, in order; HEAD answers carry no body."""
    with serving.wire() as w:
        w.send(b"".join(req for req, _, _ in PIPELINE))
        check_pipeline_answers(w)
        w.send(get("/ok-code"))
        assert_redirect(w.answer())


@pytest.mark.parametrize("size", [7, 1])
def test_pipelined_requests_split_at_odd_boundaries(serving: Serving, size: int) -> None:
    """The same burst sent `size` bytes per segment still gets one answer per request, in order."""
    with serving.wire() as w:
        w.send_in_chunks(b"".join(req for req, _, _ in PIPELINE), size)
        check_pipeline_answers(w)


def test_a_deep_pipeline_of_redirects(serving: Serving) -> None:
    """300 redirects and 404s interleaved in one send come back complete and in order."""
    paths = ["/ok-code" if k % 3 else "/missing-code" for k in range(300)]
    with serving.wire() as w:
        w.send(b"".join(get(p) for p in paths))
        for p in paths:
            a = w.answer()
            if p == "/ok-code":
                assert_redirect(a)
            else:
                assert a.status == 404, a
        w.assert_quiet()


# -- closing -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        request("GET", "/ok-code", version="HTTP/1.0", headers=()),
        # uvicorn never keeps an HTTP/1.0 connection alive, even when asked to.
        request("GET", "/ok-code", version="HTTP/1.0", headers=("Connection: keep-alive",)),
        get("/ok-code", "Connection: close"),
        get("/ok-code", "Connection: Close"),
        get("/ok-code", "Connection: keep-alive, close"),
    ],
    ids=["http10", "http10-keep-alive", "close", "close-capitalised", "keep-alive-close"],
)
def test_a_closing_request_is_answered_then_closed(serving: Serving, req: bytes) -> None:
    """HTTP/1.0, or `Connection: close` on 1.1: the redirect says `connection: close`,
    then the server closes."""
    with serving.wire() as w:
        w.send(req)
        assert_redirect(w.answer(), closing=True)
        assert w.closed_by_server()


def test_requests_pipelined_after_a_close_are_neither_answered_nor_counted(
    serving: Serving,
) -> None:
    """Requests behind a `Connection: close` one in the same send get no answer and no hit."""
    with serving.wire() as w:
        w.send(get("/close-code", "Connection: close") + get("/close-code") * 3)
        assert_redirect(w.answer(), closing=True)
        assert w.closed_by_server()
    serving.assert_hits("close-code", 1)


# -- bad requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        b"GARBAGE\r\n\r\n",
        b"get /ok-code HTTP/1.1\r\nHost: short.example\r\n\r\n",
        b"GET ok-code HTTP/1.1\r\nHost: short.example\r\n\r\n",
        b"GET /ok-code HTTP/1.1\n\n",
        b"GET /ok-code HTTP/1.1\r\nHost: short.example\r\nContent-Length: abc\r\n\r\n",
    ],
    ids=["garbage", "lower-case-method", "no-slash", "bare-lf", "bad-content-length"],
)
def test_a_malformed_request_gets_400_and_a_close(serving: Serving, req: bytes) -> None:
    """A request that does not parse gets a 400, the connection closes, the server lives on."""
    with serving.wire() as w:
        w.send(req)
        a = w.answer()
        assert (a.status, a.header("connection")) == (400, "close"), a
        assert w.closed_by_server()
    serving.assert_alive()


def test_garbage_after_a_redirect_on_a_keep_alive_connection(serving: Serving) -> None:
    """Garbage sent after an answered redirect on the same connection: 400, then closed."""
    with serving.wire() as w:
        w.send(get("/ok-code"))
        assert_redirect(w.answer())
        w.send(b"GARBAGE\r\n\r\n")
        assert w.answer().status == 400
        assert w.closed_by_server()


def test_garbage_pipelined_behind_a_redirect(serving: Serving) -> None:
    """A redirect and garbage in one send: the stream ends in a 400 and a close, and the
    redirect's hit is never counted twice nor left out once its 302 went out.

    uvicorn drops the redirect's answer here (the 400 closes the connection before
    the app's answer is written); answering it first is as good, so either is allowed.
    """
    with serving.wire() as w:
        w.send(get("/garbage-code") + b"GARBAGE\r\n\r\n" + get("/garbage-code"))
        a = w.answer()
        redirected = a.status == 302
        if redirected:
            assert_redirect(a)
            a = w.answer()
        assert (a.status, a.header("connection")) == (400, "close"), a
        assert w.closed_by_server()
    if redirected:
        serving.assert_hits("garbage-code", 1)
    else:
        wait_for(lambda: serving.hits("garbage-code") >= 1, timeout=1.0)
        time.sleep(QUIET_S)
        assert serving.hits("garbage-code") <= 1


def test_a_huge_path_is_refused_without_harm(serving: Serving) -> None:
    """A 70 KB path (past httptools' 64 KiB URL limit) gets a 4xx; the server lives on."""
    with serving.wire() as w:
        w.send(get("/" + "a" * 70_000))
        assert w.answer().status in (400, 404)
    serving.assert_alive()


# -- methods and bodies ------------------------------------------------------------------


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "PATCH", "OPTIONS"])
def test_other_methods_get_405_and_keep_the_connection(serving: Serving, method: str) -> None:
    """Only GET and HEAD redirect: any other method gets 405, and the connection
    (its body read past) still serves the next request."""
    with serving.wire() as w:
        w.send(request(method, "/ok-code", body=b"hello"))
        a = w.answer()
        assert a.status == 405, a
        assert a.header("cache-control") == "no-store" and a.header("location") is None
        w.send(get("/ok-code"))
        assert_redirect(w.answer())
        w.assert_quiet()


@pytest.mark.parametrize(
    "req",
    [
        request("GET", "/ok-code", body=b"hello"),
        get("/ok-code", "Transfer-Encoding: chunked") + b"5\r\nhello\r\n0\r\n\r\n",
    ],
    ids=["content-length", "chunked"],
)
def test_a_get_with_a_body_then_another_request(serving: Serving, req: bytes) -> None:
    """A GET carrying a body redirects, and the body is not read as the next request."""
    with serving.wire() as w:
        w.send(req + get("/missing-code") + get("/ok-code"))
        assert_redirect(w.answer())
        assert w.answer().status == 404
        assert_redirect(w.answer())
        w.assert_quiet()


# -- paths -------------------------------------------------------------------------------

ODD_PATHS = {
    # Percent-escapes are decoded before the code is looked up.
    "/ok%2Dcode": 302,
    "/ok%2dcode": 302,
    "/%6F%6B%2D%63%6F%64%65": 302,
    "/%68ealthz": 200,
    # The query and the fragment are not part of the code.
    "/ok-code?x=1": 302,
    "/ok-code?": 302,
    "/ok-code#frag": 302,
    "/healthz?x=1": 200,
    # The absolute form (what a proxy sends) redirects on its path.
    "http://short.example/ok-code": 302,
    "/": 404,
    "//ok-code": 404,
    "/ok-code/": 404,
    "/OK-CODE": 404,
    "/ok-code;p=1": 404,
    "/ok%ZZcode": 404,
    "/ok-code%00": 404,
    "/ok-code%20": 404,
    "/healthz/": 404,
    "*": 404,
    "/" + "a" * 1500: 404,
    "/" + "ok-code" * 1200: 404,
}


@pytest.mark.parametrize(("path", "status"), ODD_PATHS.items(), ids=lambda v: str(v)[:30])
def test_odd_paths(serving: Serving, path: str, status: int) -> None:
    """What an unusual request target answers, on a connection that then stays usable."""
    with serving.wire() as w:
        w.send(get(path))
        a = w.answer()
        assert a.status == status, a
        if status == 302:
            assert_redirect(a)
        w.send(get("/ok-code"))
        assert_redirect(w.answer())


def test_an_escaped_code_counts_under_the_decoded_code(serving: Serving) -> None:
    """GET /enc%2Dcode redirects and its hit counts for `enc-code`."""
    with serving.wire() as w:
        w.send(get("/enc%2Dcode") + get("/enc-code?via=query"))
        assert_redirect(w.answer())
        assert_redirect(w.answer())
    serving.assert_hits("enc-code", 2)


# -- counting ----------------------------------------------------------------------------


def test_every_redirect_on_keep_alive_and_pipelined_connections_is_counted(
    serving: Serving,
) -> None:
    """300 redirects over 3 connections at once (one by one, one send of 100,
    bursts split every 7 bytes) are all answered and each counted exactly once."""
    burst = get("/count-code") * 10
    with serving.wire() as one, serving.wire() as piped, serving.wire() as split:
        piped.send(burst * 10)
        for _ in range(100):
            one.send(get("/count-code"))
            assert_redirect(one.answer())
        for _ in range(10):
            split.send_in_chunks(burst, 7)
        for w in (piped, split):
            for _ in range(100):
                assert_redirect(w.answer())
            w.assert_quiet()
    serving.assert_hits("count-code", 300)


# -- clients that go away, and many that stay ----------------------------------------------


def test_clients_that_disconnect_at_once_do_not_harm_the_server(serving: Serving) -> None:
    """Clients that close (or reset) right after sending, or mid-request, leave the
    server answering."""
    for _ in range(10):
        with serving.wire() as w:
            w.send(get("/ok-code") * 3)
        with serving.wire() as w:
            w.send(get("/ok-code"))
            # SO_LINGER 0: the close is a reset, not a FIN.
            w.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with serving.wire() as w:
            w.send(get("/ok-code")[:20])
    serving.assert_alive()
    with serving.wire() as w:
        w.send(get("/healthz"))
        assert w.answer().status == 200


def test_many_idle_keep_alive_connections(serving: Serving) -> None:
    """50 connections, each answered once and left open: new connections are still
    answered, and so is a second request on each of the 50."""
    with contextlib.ExitStack() as stack:
        wires = [stack.enter_context(serving.wire()) for _ in range(50)]
        for w in wires:
            w.send(get("/ok-code"))
        for w in wires:
            assert_redirect(w.answer())
        serving.assert_alive()
        for w in wires:
            w.send(get("/ok-code"))
        for w in wires:
            assert_redirect(w.answer())
