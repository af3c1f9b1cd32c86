"""Verified webhooks from Dub and PIMMS, and an ASGI endpoint that runs your handlers once.

Dub signs each webhook with ``Dub-Signature: hex(HMAC-SHA256(secret, raw body))`` (PIMMS:
``Pimms-Signature``), keyed with the secret exactly as the dashboard shows it (``whsec_...``).
It delivers at least once, unordered, retries non-2xx answers for days and disables an endpoint
after 20 failures in a row. So: verify the raw bytes in constant time, answer 2xx to
redeliveries and to events you don't handle, and 5xx only when a retry could help.

Example:
    >>> from asgi_attribution.testing import sign_webhook
    >>> verifier = WebhookVerifier(secrets=["whsec_new", "whsec_old"])
    >>> body, headers = sign_webhook({"event": "lead.created", "data": {}}, "whsec_old")
    >>> verifier.verify_body(body, headers).event
    'lead.created'
"""

from __future__ import annotations

import hashlib
import hmac
import inspect
import json
import logging
import os
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import anyio.to_thread
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ._exceptions import AttributionError
from .providers import Provider, get_provider
from .webhook_dedupe import DedupeStore, open_dedupe
from .webhook_models import WebhookEvent, parse_event

__all__ = [
    "MAX_BODY",
    "SIGNATURE_HEADERS",
    "InvalidSignatureError",
    "InvalidWebhookError",
    "WebhookEndpoint",
    "WebhookHandler",
    "WebhookVerifier",
    "compute_signature",
    "webhook_endpoint",
]

logger = logging.getLogger("asgi_attribution")

#: The header each provider signs its webhooks in.
SIGNATURE_HEADERS = {"dub": "Dub-Signature", "pimms": "Pimms-Signature"}

#: The largest webhook body the endpoint reads (1 MiB); larger ones get 413 unread.
MAX_BODY = 1024 * 1024

WebhookHandler = Callable[[WebhookEvent], "Awaitable[object] | object"]
"""A handler: ``handler(event)``, a plain or an ``async`` function; raising means "retry"."""


class InvalidSignatureError(AttributionError):
    """A webhook's signature header is missing or matches none of the secrets.

    Example:
        >>> verifier = WebhookVerifier(secrets="whsec_x")
        >>> verifier.verify_body(b"{}", {"Dub-Signature": "00"})
        Traceback (most recent call last):
        ...
        asgi_attribution.webhooks.InvalidSignatureError: Dub-Signature does not match any secret
    """


class InvalidWebhookError(AttributionError, ValueError):
    """A correctly signed webhook whose body is not a webhook (not JSON, no id or event).

    Example:
        >>> from asgi_attribution.testing import sign_webhook
        >>> body, headers = sign_webhook(b"[1]", "whsec_x")
        >>> WebhookVerifier(secrets="whsec_x").verify_body(body, headers)
        Traceback (most recent call last):
        ...
        asgi_attribution.webhooks.InvalidWebhookError: webhook body is not a JSON object
    """


def compute_signature(body: bytes, secret: str) -> str:
    """The signature Dub and PIMMS send: hex HMAC-SHA256 of the raw ``body``, keyed with
    ``secret`` as given (its ``whsec_`` prefix included).

    Example:
        >>> compute_signature(b"{}", "whsec_x")[:12]
        '3b099d0eddf3'
    """
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, item in headers.items():
        if key.lower() == lowered:
            return item
    return None


class WebhookVerifier:
    """Checks a webhook's signature against one or more secrets and parses it.

    ``secrets`` is a list during a rotation (any one may have signed), or a single string.
    ``provider`` (``"dub"`` or ``"pimms"``) picks the header; ``header`` overrides it for a
    compatible provider of your own.

    Example:
        >>> WebhookVerifier("pimms", secrets="whsec_x").header
        'Pimms-Signature'
    """

    def __init__(
        self,
        provider: str | Provider = "dub",
        *,
        secrets: str | Sequence[str],
        header: str | None = None,
    ) -> None:
        name = get_provider(provider).name
        if header is None:
            if name not in SIGNATURE_HEADERS:
                raise ValueError(f"no known signature header for provider {name!r}: pass header=")
            header = SIGNATURE_HEADERS[name]
        listed = [secrets] if isinstance(secrets, str) else list(secrets)
        if not listed or not all(isinstance(s, str) and s for s in listed):
            raise ValueError("WebhookVerifier needs secrets: one non-empty string or a list")
        self.provider = name
        self.header = header
        self._keys = [s.encode() for s in listed]

    def check(self, body: bytes, headers: Mapping[str, str]) -> None:
        """Raise :class:`InvalidSignatureError` unless ``body`` is signed by one of the secrets.

        Example:
            >>> WebhookVerifier(secrets="whsec_x").check(b"{}", {})
            Traceback (most recent call last):
            ...
            asgi_attribution.webhooks.InvalidSignatureError: no Dub-Signature header
        """
        given = _header(headers, self.header)
        if not given:
            raise InvalidSignatureError(f"no {self.header} header")
        try:
            given_bytes = given.strip().lower().encode("ascii")
        except UnicodeEncodeError:
            raise InvalidSignatureError(f"{self.header} is not hex") from None
        matched = False
        for key in self._keys:  # every secret is tried: the time does not tell which matched
            expected = hmac.new(key, body, hashlib.sha256).hexdigest().encode()
            matched |= hmac.compare_digest(expected, given_bytes)
        if not matched:
            raise InvalidSignatureError(f"{self.header} does not match any secret")

    def verify_body(self, body: bytes, headers: Mapping[str, str]) -> WebhookEvent:
        """Check the signature of the raw ``body`` and return the parsed :class:`WebhookEvent`.

        Raises :class:`InvalidSignatureError` (signature) or :class:`InvalidWebhookError`
        (signed, but not a webhook). ``headers`` may be any mapping; names are matched
        case-insensitively.

        Example:
            >>> from asgi_attribution.testing import sign_webhook
            >>> body, headers = sign_webhook(
            ...     {"id": "evt_1", "event": "sale.created", "data": {"sale": {"amount": 900}}},
            ...     "whsec_x")
            >>> WebhookVerifier(secrets="whsec_x").verify_body(body, headers).data.sale.amount
            900
        """
        self.check(body, headers)
        try:
            payload = json.loads(body)
        except ValueError:
            raise InvalidWebhookError("webhook body is not JSON") from None
        if not isinstance(payload, dict):
            raise InvalidWebhookError("webhook body is not a JSON object")
        try:
            return parse_event(payload)
        except ValidationError as exc:
            fields = ", ".join(".".join(map(str, e["loc"])) for e in exc.errors())
            raise InvalidWebhookError(f"webhook envelope is invalid: {fields}") from None

    async def verify(self, request: Request) -> WebhookEvent:
        """Read the request's raw body and :meth:`verify_body` it (any Starlette/FastAPI app).

        Example:
            >>> import asyncio
            >>> from starlette.requests import Request
            >>> from asgi_attribution.testing import sign_webhook
            >>> body, headers = sign_webhook({"event": "x"}, "whsec_x")
            >>> async def receive():
            ...     return {"type": "http.request", "body": body}
            >>> scope = {"type": "http", "method": "POST", "headers":
            ...          [(k.lower().encode(), v.encode()) for k, v in headers.items()]}
            >>> verifier = WebhookVerifier(secrets="whsec_x")
            >>> asyncio.run(verifier.verify(Request(scope, receive))).event
            'x'
        """
        return self.verify_body(await request.body(), request.headers)


class WebhookEndpoint:
    """The ASGI app :func:`webhook_endpoint` returns; mount it in any framework.

    Answers: 405 for anything but ``POST``; 413 for a body over ``max_body`` bytes (not read
    past the limit); 401 for a missing or wrong signature; 400 for a signed non-webhook; 200
    for a redelivery (the handler does not run again) and for an event type without a handler;
    200 when the handler returned; 500 when it raised (logged; the id is not remembered, so the
    provider's retry runs it again); 409 while the same id is being handled (retry later).

    Example:
        >>> endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"))
        >>> endpoint.max_body
        1048576
    """

    def __init__(
        self,
        verifier: WebhookVerifier,
        handlers: Mapping[str, WebhookHandler],
        dedupe: DedupeStore,
        max_body: int,
    ) -> None:
        self.verifier = verifier
        self.handlers = dict(handlers)
        self.dedupe = dedupe
        self.max_body = max_body
        self._running: set[str] = set()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":  # served alone: nothing to start
            message = await receive()
            while message["type"] != "lifespan.shutdown":
                await send({"type": "lifespan.startup.complete"})
                message = await receive()
            await self.dedupe.aclose()
            await send({"type": "lifespan.shutdown.complete"})
            return
        if scope["type"] != "http":
            return
        if scope["method"] != "POST":
            await _answer(send, 405, {"error": "use POST"}, [(b"allow", b"POST")])
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        body = await self._read(headers, receive)
        if body is None:
            await _answer(send, 413, {"error": f"body over {self.max_body} bytes"})
            return
        try:
            event = self.verifier.verify_body(body, headers)
        except InvalidSignatureError as exc:
            logger.warning("webhook refused: %s", exc)
            await _answer(send, 401, {"error": "invalid signature"})
            return
        except InvalidWebhookError as exc:
            logger.warning("webhook refused: %s", exc)
            await _answer(send, 400, {"error": str(exc)})
            return
        status, answer = await self._handle(event)
        await _answer(send, status, answer)

    async def _read(self, headers: Mapping[str, str], receive: Receive) -> bytes | None:
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body:
            return None
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks)

    async def _handle(self, event: WebhookEvent) -> tuple[int, dict[str, Any]]:
        handler = self.handlers.get(event.event)
        base = {"id": event.id, "event": event.event}
        if event.id in self._running:
            return 409, {**base, "error": "already being handled"}
        self._running.add(event.id)
        try:
            if await self.dedupe.seen(event.id):
                return 200, {**base, "duplicate": True}
            if handler is None:
                await self.dedupe.mark(event.id)
                return 200, {**base, "handled": False}
            try:
                if inspect.iscoroutinefunction(handler):
                    await handler(event)
                else:
                    result = await anyio.to_thread.run_sync(handler, event)
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                logger.exception("webhook handler for %s (%s) failed", event.event, event.id)
                return 500, {**base, "error": "handler failed"}
            await self.dedupe.mark(event.id)
            return 200, {**base, "handled": True}
        finally:
            self._running.discard(event.id)

    async def aclose(self) -> None:
        """Close the dedupe store's connections (SQLite, Redis); called on lifespan shutdown."""
        await self.dedupe.aclose()


async def _answer(
    send: Send, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]] | None = None
) -> None:
    content = json.dumps(body).encode()
    headers = [
        (b"content-type", b"application/json"),
        (b"content-length", str(len(content)).encode()),
        *(extra or []),
    ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def webhook_endpoint(
    verifier: WebhookVerifier,
    handlers: Mapping[str, WebhookHandler] | None = None,
    *,
    dedupe: DedupeStore | str | os.PathLike[str] | None = None,
    max_body: int = MAX_BODY,
) -> WebhookEndpoint:
    """An ASGI app receiving the provider's webhooks: verifies, deduplicates, runs a handler.

    ``handlers`` maps event types (``"sale.created"``) to functions taking the
    :class:`WebhookEvent`, sync (run in a worker thread) or async. ``dedupe`` remembers handled
    ids for 30 days: ``None`` (this process's memory), a SQLite file path, a ``redis://`` URL,
    or a :class:`~asgi_attribution.webhook_dedupe.DedupeStore`. Route to it in Starlette or
    FastAPI with ``Route("/webhooks/dub", endpoint)`` (a ``Route`` takes an ASGI app; a
    ``Mount`` answers at ``/webhooks/dub/``), mount it in any ASGI framework, or serve it alone.

    Example:
        >>> from starlette.applications import Starlette
        >>> from starlette.routing import Route
        >>> async def on_sale(event):
        ...     print(event.data.sale.amount)
        >>> endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_x"),
        ...                             {"sale.created": on_sale}, dedupe=None)
        >>> app = Starlette(routes=[Route("/webhooks/dub", endpoint, methods=["POST"])])
    """
    if not isinstance(verifier, WebhookVerifier):
        raise TypeError(f"webhook_endpoint needs a WebhookVerifier, got {verifier!r}")
    handlers = dict(handlers or {})
    for name, handler in handlers.items():
        if not callable(handler):
            raise TypeError(f"handler for {name!r} is not callable: {handler!r}")
    if not isinstance(max_body, int) or max_body < 1:
        raise ValueError(f"max_body must be a positive number of bytes, got {max_body!r}")
    return WebhookEndpoint(verifier, handlers, open_dedupe(dedupe), max_body)
