"""The fake's ASGI plumbing: which route a request takes, whether its key is good, how it is
recorded, and reading requests and answering JSON.

Example:
    >>> find_route("dub", "PATCH", "/customers/ext_u1"), find_route("pimms", "GET", "/commissions")
    ('customer', None)
    >>> error_body("not_found", "Program not found")["error"]["doc_url"]
    'https://dub.co/docs/api-reference/errors#not-found'
"""

from __future__ import annotations

import dataclasses
import hmac
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import parse_qsl

from starlette.types import Message, Receive, Scope, Send

from ._bodies import ProviderName

__all__ = [
    "INVALID_JSON",
    "Received",
    "Request",
    "Route",
    "bearer_problem",
    "error_body",
    "find_route",
    "lifespan",
    "parse_json",
    "public_record",
    "read_body",
    "request_headers",
    "send_empty",
    "send_json",
    "send_not_found_page",
]


def error_body(code: str, message: str) -> dict[str, Any]:
    """An error answer shaped like the providers' envelope (``{"error": {"code", "message",
    "doc_url"}}``): every error of a route handler has it, on Dub and on PIMMS (whose errors
    link to Dub's page too). As in Dub's JavaScript, only the code's first ``_`` becomes ``-``.

    Example:
        >>> error_body("rate_limit_exceeded", "Too many requests.")["error"]["doc_url"]
        'https://dub.co/docs/api-reference/errors#rate-limit_exceeded'
    """
    doc_url = f"{_DOC_URL}#{code.replace('_', '-', 1)}"
    return {"error": {"code": code, "message": message, "doc_url": doc_url}}


_DOC_URL = "https://dub.co/docs/api-reference/errors"

# What Next.js answers for a path no route handles: a page, not the API's envelope.
_NOT_FOUND_PAGE = (
    b"<!DOCTYPE html><html><head><title>404: This page could not be found.</title></head>"
    b"<body><h1>404</h1><h2>This page could not be found.</h2></body></html>"
)


async def send_not_found_page(send: Send) -> None:
    """Answer 404 with an HTML page, as Next.js does for a path with no route.

    Example:
        >>> import asyncio
        >>> sent = []
        >>> async def send(message): sent.append(message)
        >>> asyncio.run(send_not_found_page(send)); sent[0]["status"], sent[1]["body"][:15]
        (404, b'<!DOCTYPE html>')
    """
    headers = [
        (b"content-type", b"text/html; charset=utf-8"),
        (b"content-length", str(len(_NOT_FOUND_PAGE)).encode()),
    ]
    await send({"type": "http.response.start", "status": 404, "headers": headers})
    await send({"type": "http.response.body", "body": _NOT_FOUND_PAGE})


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


#: The fake's routes: ``legacy_customer`` is Dub's removed ``POST /track/customer``.
Route = Literal["lead", "sale", "customer", "legacy_customer", "click", "commissions", "commission"]


@dataclass(frozen=True)
class Received:
    """One request the fake handled, as recorded in ``FakeProvider.requests`` / ``.accepted``.

    ``body`` is the decoded JSON object (``None`` if the body was not a JSON object), ``headers``
    have lower-case names, ``idempotency_key`` comes from the ``Idempotency-Key`` header.

    Example:
        >>> from asgi_attribution.testing import Received
        >>> r = Received("POST", "/track/lead", {"eventName": "Sign up"}, {}, None, 200)
        >>> r.status
        200
    """

    method: str
    path: str
    body: dict[str, Any] | None
    headers: dict[str, str]
    idempotency_key: str | None
    status: int


@dataclass(frozen=True)
class Request:
    """One HTTP request as the fake reads it: the raw path (an escaped ``/`` in a customer id
    stays one segment, as on Dub), lower-case headers, the caller's IP and the query.

    Example:
        >>> scope = {"method": "GET", "path": "/commissions", "query_string": b"invoiceId=in_1",
        ...          "headers": [(b"X-Forwarded-For", b"1.2.3.4, 10.0.0.1")], "client": None}
        >>> request = Request.from_scope(scope, b"")
        >>> request.ip, request.query
        ('1.2.3.4', {'invoiceId': 'in_1'})
    """

    method: str
    path: str
    raw: bytes
    headers: dict[str, str]
    ip: str
    query: dict[str, str]

    @classmethod
    def from_scope(cls, scope: Scope, raw: bytes) -> Request:
        """Read ``scope`` (an ASGI HTTP scope) and the already-read body.

        Example:
            >>> Request.from_scope({"method": "GET", "path": "/x", "headers": []}, b"").ip
            '127.0.0.1'
        """
        raw_path = scope.get("raw_path")
        path: str = raw_path.decode("latin-1") if raw_path else scope["path"]
        headers = request_headers(scope)
        client = scope.get("client")
        ip = headers.get("x-forwarded-for", "").split(",")[0].strip()
        ip = ip or (client[0] if client else "127.0.0.1")
        query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
        return cls(scope["method"], path, raw, headers, ip, query)


def find_route(
    provider: ProviderName, method: str, path: str, *, legacy_routes: bool = False
) -> Route | None:
    """The route of ``method path``, or ``None`` (the provider answers 404).

    Example:
        >>> find_route("dub", "POST", "/track/customer"), find_route("dub", "POST", "/track/click")
        (None, 'click')
        >>> find_route("dub", "POST", "/track/customer", legacy_routes=True)
        'legacy_customer'
    """
    if method == "POST" and path in ("/track/lead", "/track/sale", "/track/click"):
        tracked: dict[str, Route] = {"lead": "lead", "sale": "sale", "click": "click"}
        return tracked[path.removeprefix("/track/")]
    if legacy_routes and provider == "dub" and method == "POST" and path == "/track/customer":
        return "legacy_customer"
    if provider == "dub" and method == "GET" and path == "/commissions":
        return "commissions"
    customer = path.removeprefix("/customers/")
    if method == "PATCH" and customer != path and customer and "/" not in customer:
        return "customer"
    commission = path.removeprefix("/commissions/")
    if provider == "dub" and method == "PATCH" and commission != path and commission:
        return "commission" if "/" not in commission else None
    return None


def bearer_problem(api_key: str | None, headers: Mapping[str, str]) -> str | None:
    """Why the request's ``Authorization`` is refused (401), or ``None`` if it is fine.

    Example:
        >>> bearer_problem(None, {"authorization": "Bearer k"}) is None
        True
        >>> bearer_problem("secret", {"authorization": "Bearer k"})
        'Invalid API key.'
    """
    scheme, _, credential = headers.get("authorization", "").partition(" ")
    credential = credential.strip()
    if scheme.lower() != "bearer" or not credential:
        return "Missing Authorization: Bearer <api key>."
    if api_key is not None and not hmac.compare_digest(credential.encode(), api_key.encode()):
        return "Invalid API key."
    return None


class _Invalid:
    """Marks a body that is not JSON (``None`` is valid JSON)."""

    def __repr__(self) -> str:
        return "INVALID_JSON"


#: What :func:`parse_json` gives for a body that is not JSON.
INVALID_JSON: Any = _Invalid()


def parse_json(raw: bytes, *, empty: Any = INVALID_JSON) -> Any:
    """The decoded body; ``empty`` for no body; :data:`INVALID_JSON` if it is not JSON.

    Example:
        >>> parse_json(b'{"a": 1}'), parse_json(b"{"), parse_json(b"", empty=None)
        ({'a': 1}, INVALID_JSON, None)
    """
    if not raw:
        return empty
    try:
        return json.loads(raw)
    except ValueError:
        return INVALID_JSON


def public_record(received: Received) -> dict[str, Any]:
    """``received`` as JSON for ``GET /_fake/events``, with the API key masked.

    Example:
        >>> r = Received("POST", "/track/lead", None, {"authorization": "Bearer k"}, None, 401)
        >>> public_record(r)["headers"]
        {'authorization': 'Bearer ***'}
    """
    item = dataclasses.asdict(received)
    # The control endpoint is unauthenticated; don't hand out the caller's API key.
    if "authorization" in item["headers"]:
        item["headers"]["authorization"] = "Bearer ***"
    return item
