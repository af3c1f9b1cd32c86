"""One HTTP/1.1 connection: an ``asyncio.Protocol`` that writes a request and parses the answer.

The response is parsed by ``httptools`` (llhttp, the C parser uvicorn uses): status line,
headers, content-length, chunked and read-until-close bodies; 1xx answers are skipped. Every
byte of a response is bounded by :class:`Limits`, so a huge or endless answer is an error,
never unbounded memory. One request at a time per connection (no pipelining).

Example:
    >>> r = Response(200, [(b"Content-Type", b"application/json")], b'{"ok": true}')
    >>> r.header(b"content-type"), r.json()
    ('application/json', {'ok': True})
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, cast

import httptools

from ..._json import loads
from .errors import AttemptTimeout, ConnectionClosed, EngineError, ProtocolError, ResponseTooLarge
from .heads import header_pairs

__all__ = ["Connection", "Limits", "Response"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on one response: header bytes (status line included), header count, body bytes.

    All the bytes of one response (1xx answers, chunk framing and trailers included) are bounded
    by :attr:`max_response_bytes`.

    Example:
        >>> Limits().max_body_bytes, Limits(max_header_bytes=1, max_body_bytes=1).max_response_bytes
        (1048576, 5)
    """

    max_header_bytes: int = 64 * 1024
    max_headers: int = 100
    max_body_bytes: int = 1024 * 1024

    @property
    def max_response_bytes(self) -> int:
        """Every byte received for one request: headers plus four times the body limit."""
        return self.max_header_bytes + 4 * self.max_body_bytes


class Response:
    """A complete response: status, header pairs (as the server sent them), body.

    The engine's responses keep the raw bytes of their head and parse the pairs only when
    :attr:`headers` or :meth:`header` is first read (see :mod:`.heads`).

    Example:
        >>> Response(204, [], b"").header(b"retry-after") is None
        True
    """

    __slots__ = ("_head", "_headers", "_index", "body", "status")

    def __init__(
        self,
        status: int,
        headers: list[tuple[bytes, bytes]] | None,
        body: bytes,
        head: bytes = b"",
    ) -> None:
        self.status = status
        self.body = body
        self._headers = headers
        self._head = head  # the bytes received up to the end of the head, when headers is None
        # Lowercase name -> first value, built by the first header() call (callers ask for two
        # or three names per response: one pass over the headers instead of one per name).
        self._index: dict[bytes, bytes] | None = None

    def __repr__(self) -> str:
        return f"<Response {self.status}, {len(self.body)} bytes of body>"

    @property
    def headers(self) -> list[tuple[bytes, bytes]]:
        """The header pairs, names and values as received (names in their own case)."""
        if self._headers is None:
            self._headers = header_pairs(self._head)[0]
        return self._headers

    def header(self, name: bytes) -> str | None:
        """The first value of header ``name`` (lowercase bytes), decoded as Latin-1, or None.

        Example:
            >>> r = Response(429, [(b"Retry-After", b"3"), (b"retry-after", b"4")], b"")
            >>> r.header(b"retry-after"), r.header(b"location")
            ('3', None)
        """
        index = self._index
        if index is None:
            index = self._index = {}
            for key, value in reversed(self.headers):  # the first value wins
                index[key.lower()] = value
        found = index.get(name)
        return None if found is None else found.decode("latin-1")

    def json(self) -> Any:
        """The body decoded as JSON, or None when it is empty or not JSON.

        Example:
            >>> Response(200, [], b"not json").json() is None
            True
        """
        try:
            return loads(self.body)
        except ValueError:
            return None


def _body_until_close(head: bytes, status: int) -> bool:
    """True when the body of the response with this head ends when the server closes."""
    if status in (204, 304):
        return False
    framing = (b"content-length", b"transfer-encoding")
    return not any(k.lower() in framing for k, _ in header_pairs(head)[0])


class Connection(asyncio.Protocol):
    """A keep-alive connection. :meth:`send` writes one request; the waiter gets the answer.

    The waiter (a future) receives a :class:`Response` or an :class:`EngineError`. After an
    error, a timeout or a ``Connection: close`` the connection is closed and not reused.

    Example:
        >>> Connection(Limits()).reusable
        False
    """

    def __init__(self, limits: Limits, timeout: float | None = None) -> None:
        self.limits = limits
        # The limits as plain attributes: read for every response.
        self.max_headers = limits.max_headers
        self.max_head = limits.max_header_bytes
        self.max_body = limits.max_body_bytes
        self.max_response = limits.max_response_bytes
        self.timeout = timeout  # for the message of the AttemptTimeout the timer raises
        self.transport: asyncio.Transport | None = None
        # The transport's write, bound once connected: send() makes no other lookup.
        self.write: Callable[[bytes], object] = self.unconnected
        self.parser = httptools.HttpResponseParser(self)
        self.waiter: asyncio.Future[Response] | None = None
        self.lost: asyncio.Future[None] | None = None
        self.closed = False
        self.keep_alive = True
        self.requests = 0  # requests written on this connection, this one included
        self.received = 0  # bytes received for the current request
        self.error: EngineError | None = None
        # The attempt's deadline, watched by one timer per connection (see send()).
        self.deadline = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.timer_at = 0.0
        # The bytes of this response up to the end of its head (1xx answers included, so not
        # forgotten by reset): its headers are parsed from them only when asked for (.heads).
        self.head: list[bytes] = []
        self.raw_head = b""
        self.reset()

    def reset(self) -> None:
        """Forget the message being parsed (before a request, and after a 1xx answer)."""
        self.body: list[bytes] = []
        self.body_size = 0
        self.head_size = 0
        self.status = 0
        self.headers_done = False
        self.informational = False

    @property
    def reusable(self) -> bool:
        """True when idle, open and kept alive: the next request may be written on it."""
        return (
            self.transport is not None
            and not self.closed
            and self.keep_alive
            and (self.waiter is None)
        )

    def send(
        self, data: bytes, waiter: asyncio.Future[Response], deadline: float | None = None
    ) -> None:
        """Write one complete request (a single ``transport.write``); ``waiter`` gets the answer.

        By ``deadline`` (loop time) the waiter has the response, or fails with
        :class:`AttemptTimeout` and the connection is dropped.
        """
        self.head = []
        self.body = []
        self.body_size = self.head_size = self.received = 0
        self.headers_done = self.informational = False
        self.error = None
        self.requests += 1
        self.waiter = waiter
        if deadline is not None:
            self.deadline = deadline
            # One timer per connection, not per request: it is left armed when a response
            # arrives in time, and on firing moves to the deadline of the request then in
            # flight (if any). Most requests thus neither arm nor cancel a timer.
            if self.timer is None or deadline < self.timer_at:
                self.arm(deadline)
        self.write(data)

    @staticmethod
    def unconnected(data: bytes) -> None:
        raise ConnectionClosed("not connected")

    def arm(self, when: float) -> None:
        """(Re)arm the connection's timer at ``when`` (loop time)."""
        if self.timer is not None:
            self.timer.cancel()
        self.timer_at = when
        self.timer = asyncio.get_running_loop().call_at(when, self.on_timer)

    def on_timer(self) -> None:
        self.timer = None
        if self.waiter is None:
            return  # idle: armed again by the next send()
        if self.deadline > self.timer_at:
            self.arm(self.deadline)  # set for an earlier request; this one has time left
            return
        self.fail(AttemptTimeout(f"no complete response within {self.timeout} s"))

    def close(self) -> None:
        """Close the connection (gracefully: TLS sends its close_notify)."""
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.close()

    def abort(self) -> None:
        """Drop the connection at once (after a timeout, a cancel or an error)."""
        self.keep_alive = False
        if self.transport is not None and not self.closed:
            self.transport.abort()

    def wait_lost(self) -> asyncio.Future[None]:
        """A future done once the connection is lost (for a clean shutdown)."""
        if self.lost is None:
            self.lost = asyncio.get_running_loop().create_future()
            if self.closed:
                self.lost.set_result(None)
        return self.lost

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.write = self.transport.write

    def data_received(self, data: bytes) -> None:
        waiter = self.waiter
        if waiter is None or waiter.done():
            # Bytes nobody asked for (or after a timeout): this connection cannot be trusted.
            self.abort()
            return
        self.received += len(data)
        if self.received > self.max_response:
            self.fail(ResponseTooLarge(f"response over {self.max_response} bytes"))
            return
        if not self.headers_done:
            self.head.append(data)
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self.fail(ProtocolError("the server asked for a protocol upgrade"))
            return
        except Exception as exc:  # HttpParserError, or an error raised by a callback below
            self.fail(self.error or ProtocolError(f"invalid HTTP response: {exc}"))
            return
        if not self.headers_done and self.waiter is waiter:
            self.head_size += len(data)
            if self.head_size > self.max_head:
                self.fail(ResponseTooLarge(f"headers over {self.max_head} bytes"))

    def eof_received(self) -> bool | None:
        return None  # close our side too: connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.keep_alive = False
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            if self.headers_done and _body_until_close(self.raw_head, self.status):
                self.complete()
            else:
                reason = f": {exc}" if exc else ""
                error = ConnectionClosed(
                    f"the server closed the connection after {self.received} bytes of the "
                    f"response{reason}"
                )
                self.waiter = None
                waiter.set_exception(error)
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(None)

    def fail(self, error: EngineError) -> None:
        """End the current request with ``error`` and drop the connection."""
        waiter, self.waiter = self.waiter, None
        self.abort()
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    def complete(self) -> None:
        """Hand the parsed response to the waiter."""
        waiter, self.waiter = self.waiter, None
        body = b"".join(self.body) if len(self.body) != 1 else self.body[0]
        if waiter is not None and not waiter.done():
            waiter.set_result(Response(self.status, None, body, self.raw_head))

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self.waiter is None:  # a second response to one request
            self.error = ProtocolError("the server sent more than one response")
            raise self.error

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        if status < 200:
            self.informational = True  # 100 Continue, 103 Early Hints: the answer follows
            return
        self.status = status
        self.headers_done = True
        head = self.raw_head = self.head[0] if len(self.head) == 1 else b"".join(self.head)
        # A head of N headers has N + 2 line ends: only one with more can break the limit.
        if head.count(b"\n") > self.max_headers + 2 and header_pairs(head)[1] > self.max_headers:
            self.error = ResponseTooLarge(f"more than {self.max_headers} headers")
            raise self.error

    def on_body(self, body: bytes) -> None:
        self.body_size += len(body)
        if self.body_size > self.max_body:
            self.error = ResponseTooLarge(f"body over {self.max_body} bytes")
            raise self.error
        self.body.append(body)

    def on_message_complete(self) -> None:
        if self.informational:
            self.reset()
            return
        if not self.parser.should_keep_alive():
            self.close()
        # complete(), inline: this runs for every response.
        waiter, self.waiter = self.waiter, None
        body = self.body
        if waiter is not None and not waiter.done():
            body_bytes = body[0] if len(body) == 1 else b"".join(body)
            waiter.set_result(Response(self.status, None, body_bytes, self.raw_head))
