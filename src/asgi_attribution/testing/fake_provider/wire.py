"""The ASGI plumbing of the fake: lifespan, reading a request, answering JSON.

Example:
    >>> error_body("not_found", "GET /x not found")
    {'error': {'code': 'not_found', 'message': 'GET /x not found'}}
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import Message, Receive, Scope, Send

__all__ = ["error_body", "lifespan", "read_body", "request_headers", "send_empty", "send_json"]


def error_body(code: str, message: str) -> dict[str, Any]:
    """An error answer shaped like the providers' (``{"error": {"code", "message"}}``).

    Example:
        >>> error_body("bad_request", "nope")["error"]["code"]
        'bad_request'
    """
    return {"error": {"code": code, "message": message}}


async def lifespan(receive: Receive, send: Send) -> None:
    """Answer a server's lifespan messages (the fake needs no start-up work).

    Example:
        >>> import asyncio
        >>> inbox = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
        >>> sent = []
        >>> async def receive(): return inbox.pop(0)
        >>> async def send(message): sent.append(message["type"])
        >>> asyncio.run(lifespan(receive, send)); sent
        ['lifespan.startup.complete', 'lifespan.shutdown.complete']
    """
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or ``None`` if the client went away while sending it.

    Example:
        >>> import asyncio
        >>> inbox = [{"type": "http.request", "body": b"{}", "more_body": False}]
        >>> async def receive(): return inbox.pop(0)
        >>> asyncio.run(read_body(receive))
        b'{}'
    """
    chunks = []
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return b"".join(chunks)


def request_headers(scope: Scope) -> dict[str, str]:
    """The request's headers with lower-case names; repeated ones joined with ``", "``.

    Example:
        >>> request_headers({"headers": [(b"X-A", b"1"), (b"x-a", b"2")]})
        {'x-a': '1, 2'}
    """
    headers: dict[str, str] = {}
    for raw_name, raw_value in scope["headers"]:
        name, value = raw_name.decode("latin-1").lower(), raw_value.decode("latin-1")
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    return headers


async def send_json(
    send: Send, status: int, payload: Any, headers: list[tuple[str, str]] | None = None
) -> None:
    """Answer ``status`` with ``payload`` as JSON, plus any extra ``headers``.

    Example:
        >>> import asyncio
        >>> sent = []
        >>> async def send(message): sent.append(message)
        >>> asyncio.run(send_json(send, 200, {"ok": True})); sent[1]["body"]
        b'{"ok": true}'
    """
    body = json.dumps(payload).encode()
    raw_headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(body)).encode()),
    ]
    raw_headers += [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers or []]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


async def send_empty(send: Send, status: int, headers: list[tuple[str, str]]) -> None:
    """Answer ``status`` with no body (a CORS preflight's 204).

    Example:
        >>> import asyncio
        >>> sent = []
        >>> async def send(message): sent.append(message)
        >>> asyncio.run(send_empty(send, 204, [("x-a", "1")])); sent[0]["headers"]
        [(b'x-a', b'1')]
    """
    raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers]
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": b""})
