"""The engine: keep-alive connections to one origin, at most ``concurrency`` of them.

A request takes the most recently used idle connection (or opens one while fewer than
``concurrency`` exist, or waits for one to come back): constant work whatever the pool size.
It makes one ``transport.write`` of precomputed bytes; the attempt's timeout covers
connecting, sending and the whole response. While the request is on a connection, the
connection's own timer watches it: one timer per connection, moved to the deadline of the
request in flight when it fires, so that most requests arm and cancel none. When a reused connection
turns out to have been closed by the server before it read anything of ours, the request is
written again at once on another connection: safe, as every attempt of an event carries the
same ``Idempotency-Key``.

Example:
    >>> engine = Engine("https://api.dub.co", headers={"Authorization": "Bearer k"})
    >>> engine.host, engine.port, engine.concurrency
    ('api.dub.co', 443, 10)
"""

from __future__ import annotations

import asyncio
import ssl as ssl_module
from collections import deque
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from .connection import Connection, Limits, Response
from .errors import AttemptTimeout, ConnectError, ConnectionClosed, EngineError
from .tls import default_ssl_context

__all__ = ["Engine"]

#: How many times a request is written again after a reused connection closed unread.
RESENDS = 2


class _Sealed(tuple[bytes]):
    """Request bytes (item 0) with a repr that shows nothing of them (they hold credentials).

    A tuple: made in C, without the Python ``__init__`` a plain class would run per request.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        return f"<request of {len(self[0])} bytes, not shown>"


def _expire(future: asyncio.Future[Any], error: EngineError) -> None:
    if not future.done():
        future.set_exception(error)


def _check(text: str, what: str) -> str:
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"{what} must not contain CR, LF or NUL: {text!r}")
    return text


# Bytes that never appear in a well-formed header line except CR LF at its end (tab may).
_NOT_IN_LINES = bytes(range(32)).replace(b"\t", b"") + bytes(range(127, 256))


def _checked_lines(headers: Mapping[str, str]) -> bytes:
    return "".join(
        f"{_check(k, 'header name')}: {_check(v, 'header value')}\r\n" for k, v in headers.items()
    ).encode("ascii")


def _header_lines(headers: Mapping[str, str]) -> bytes:
    """``Name: value`` lines; CR, LF or NUL in a name or value (header injection) is refused.

    Cheap checks first; anything they do not pass (a tab, say) goes through
    :func:`_checked_lines`, which accepts it or raises the error it always raised.

    Example:
        >>> _header_lines({"A": "1", "B": "2"})
        b'A: 1\\r\\nB: 2\\r\\n'
    """
    raw = getattr(headers, "raw", None)  # httpx.Headers: its pairs, already bytes
    if type(raw) is list:
        # Names lowercased as its items() gives them (the bytes sent before this fast path).
        data = b"".join([k.lower() + b": " + v + b"\r\n" for k, v in raw])
        if len(data.translate(None, _NOT_IN_LINES)) == len(data) - 2 * len(raw):
            return data
        return _checked_lines(headers)
    lines = []
    for k, v in headers.items():
        if not (k.isprintable() and v.isprintable()):  # CR, LF, NUL are not printable
            return _checked_lines(headers)
        lines.append(f"{k}: {v}\r\n")
    try:
        return "".join(lines).encode("ascii")
    except UnicodeEncodeError:
        return _checked_lines(headers)  # the same error, for the same header, as ever


class Engine:
    """A small HTTP/1.1 client for one origin, made for one JSON request per call.

    ``headers`` are sent with every request (encoded once); ``timeout`` bounds each call of
    :meth:`request`; ``ssl`` replaces the default verifying context for ``https://`` URLs
    (a test's own CA, for instance). Nothing touches the event loop until the first request:
    create it anywhere, use it from one loop.

    Example:
        >>> import asyncio
        >>> async def main():
        ...     engine = Engine("http://127.0.0.1:9", timeout=1)
        ...     try:
        ...         await engine.request("POST", "/track/lead", b"{}")
        ...     except ConnectError as error:
        ...         print("retryable:", error.retryable)
        ...     finally:
        ...         await engine.aclose()
        >>> asyncio.run(main())
        retryable: True
    """

    def __init__(
        self,
        base_url: str,
        *,
        concurrency: int = 10,
        timeout: float = 10.0,
        ssl: ssl_module.SSLContext | None = None,
        headers: Mapping[str, str] | None = None,
        limits: Limits | None = None,
    ) -> None:
        url = urlsplit(base_url)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"base_url must be an http:// or https:// URL, got {base_url!r}")
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.host = url.hostname
        self.tls = url.scheme == "https"
        self.port = url.port or (443 if self.tls else 80)
        self.prefix = url.path.rstrip("/")
        self.concurrency = concurrency
        self.timeout = timeout
        self.limits = limits or Limits()
        self.ssl = ssl
        default_port = self.port == (443 if self.tls else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        netloc = host if default_port else f"{host}:{self.port}"
        self.common = b"Host: " + netloc.encode("idna") + b"\r\n" + _checked_lines(headers or {})
        self.heads: dict[tuple[str, str], bytes] = {}  # request line, Host, engine headers
        self.idle: list[Connection] = []
        self.waiters: deque[asyncio.Future[Connection | None]] = deque()
        self.open = 0  # connections open or being opened
        self.connections: set[Connection] = set()
        self.closed = False

    def __repr__(self) -> str:  # headers may hold credentials: never shown
        scheme = "https" if self.tls else "http"
        return f"Engine('{scheme}://{self.host}:{self.port}{self.prefix}')"

    def encode(
        self,
        method: str,
        path: str,
        body: bytes,
        headers: Mapping[str, str] | None,
        idempotency_key: str | None = None,
    ) -> bytes:
        """The whole request as bytes: request line, headers, ``Content-Length``, body.

        Example:
            >>> Engine("http://h:8000", headers={"A": "1"}).encode("POST", "/x", b"{}", {})
            b'POST /x HTTP/1.1\\r\\nHost: h:8000\\r\\nA: 1\\r\\nContent-Length: 2\\r\\n\\r\\n{}'
        """
        head = self.heads.get((method, path))
        if head is None:
            if not method.isalpha() or " " in path or not path.startswith("/"):
                raise ValueError(f"invalid request line: {method!r} {path!r}")
            line = f"{method} {_check(self.prefix + path, 'path')} HTTP/1.1\r\n".encode()
            head = line + self.common
            if len(self.heads) < 64:  # a few routes; per-customer PATCH paths are not kept
                self.heads[(method, path)] = head
        extra = _header_lines(headers) if headers else b""
        if idempotency_key is not None:
            # Every attempt's one header of its own, without the general path (a third of the
            # request's encoding). Anything but printable ASCII takes it, to pass or to raise.
            if idempotency_key.isascii() and idempotency_key.isprintable():
                extra += b"Idempotency-Key: " + idempotency_key.encode() + b"\r\n"
            else:
                extra += _header_lines({"Idempotency-Key": idempotency_key})
        return b"".join((head, extra, b"Content-Length: %d\r\n\r\n" % len(body), body))

    async def request(
        self,
        method: str,
        path: str,
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
        *,
        idempotency_key: str | None = None,
    ) -> Response:
        """Send one request and return the complete response, or raise an :class:`EngineError`.

        ``path`` is appended to the base URL's path; ``headers`` (and an ``Idempotency-Key``
        header, when given) are added to the engine's.
        """
        if self.closed:
            raise RuntimeError("the engine is closed")
        # Sealed: the bytes carry the Authorization header, and error reporters that capture
        # frame locals (Sentry) must not see it while this frame awaits the answer.
        sealed = _Sealed((self.encode(method, path, body, headers, idempotency_key),))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout
        resends = 0
        idle = self.idle
        while True:
            # The last connection released, when still good (idle ones have no waiter, so
            # keep_alive says it all); anything else takes the slow path.
            if idle and idle[-1].keep_alive:
                conn = idle.pop()
            else:
                conn = await self.acquire(loop, deadline)
            waiter: asyncio.Future[Response] = loop.create_future()
            try:
                conn.send(sealed[0], waiter, deadline)  # the connection's timer: the deadline
                return await waiter
            except ConnectionClosed:
                # Closed by the server before it read our request (a keep-alive race): again.
                if conn.requests > 1 and conn.received == 0 and resends < RESENDS:
                    resends += 1
                    continue
                raise
            finally:
                if conn.waiter is None and conn.keep_alive and not self.waiters and not self.closed:
                    idle.append(conn)  # release()'s common case, inline
                else:
                    self.release(conn)

    def expire(self, future: asyncio.Future[Any]) -> None:
        """The timer of a request waiting for a connection: it fails with AttemptTimeout."""
        if not future.done():
            future.set_exception(AttemptTimeout(f"no complete response within {self.timeout} s"))

    async def acquire(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection:
        """An idle connection, a new one (below ``concurrency``), or the next one released."""
        idle = self.idle
        while idle:
            conn = idle.pop()
            if conn.reusable:
                return conn
            self.forget(conn)
        if self.open >= self.concurrency:
            waiter: asyncio.Future[Connection | None] = loop.create_future()
            self.waiters.append(waiter)
            timer = loop.call_at(deadline, self.expire, waiter)
            try:
                given = await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                    self.hand_back(waiter.result())  # cancelled after being given a slot
                raise
            finally:
                timer.cancel()
            if given is not None:
                return given
        else:
            self.open += 1  # a slot of our own, given back by release() or below
        try:
            return await self.connect(loop, deadline)
        except BaseException:
            self.hand_back(None)
            raise

    async def connect(self, loop: asyncio.AbstractEventLoop, deadline: float) -> Connection:
        """Open a connection (TCP, then TLS with SNI and verification for https)."""
        context: ssl_module.SSLContext | None = None
        if self.tls:
            if self.ssl is None:
                self.ssl = default_ssl_context()
            context = self.ssl
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(self.limits, self.timeout),
                    self.host,
                    self.port,
                    ssl=context,
                    server_hostname=self.host if context else None,
                ),
                max(deadline - loop.time(), 0.0),
            )
        except asyncio.TimeoutError:
            raise AttemptTimeout(
                f"could not connect to {self.host}:{self.port} within {self.timeout} s"
            ) from None
        except (OSError, ssl_module.SSLError) as exc:
            raise ConnectError(f"could not connect to {self.host}:{self.port}: {exc}") from None
        if self.closed:
            conn.abort()
            raise RuntimeError("the engine is closed")
        self.connections.add(conn)
        return conn

    def release(self, conn: Connection) -> None:
        """Return a connection after a request: kept for the next one, or closed."""
        if conn.waiter is not None:  # timed out or cancelled mid-response
            conn.waiter = None
            conn.abort()
        if conn.reusable and not self.closed:
            self.hand_back(conn)
        else:
            conn.abort()
            self.forget(conn)

    def forget(self, conn: Connection) -> None:
        """A connection is gone: its slot goes to a waiter (who opens a new one) or is freed."""
        self.connections.discard(conn)
        self.hand_back(None)

    def hand_back(self, conn: Connection | None) -> None:
        """Give a connection (or a free slot, ``None``) to the first live waiter, or keep it."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():
                waiter.set_result(conn)
                return
        if conn is None:
            self.open -= 1
        else:
            self.idle.append(conn)

    async def aclose(self) -> None:
        """Close every connection (waiting up to a second for TLS shutdowns); idempotent."""
        self.closed = True
        conns, self.idle = list(self.connections), []
        self.connections.clear()
        for conn in conns:
            conn.close()
        for waiter in self.waiters:
            _expire(waiter, ConnectionClosed("the engine was closed"))
        lost = [conn.wait_lost() for conn in conns]
        if lost:
            _, pending = await asyncio.wait(lost, timeout=1.0)
            for conn in conns:
                if conn.lost in pending:
                    conn.abort()
            if pending:
                await asyncio.wait(pending, timeout=0.1)
