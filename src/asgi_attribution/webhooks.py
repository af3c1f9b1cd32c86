"""Verified webhooks from Dub and PIMMS: the signature, the payload models, the dedupe of
redeliveries, and an ASGI endpoint that runs your handlers once.

Why one module of about 800 lines: it is one concept, receiving a provider's webhooks; each part
exists only for the endpoint, and a reader follows one webhook through them top to bottom.

- **Payloads**: an envelope (:class:`WebhookEvent`) and typed ``data`` for the common events,
  with the providers' own field names (camelCase, as in
  :class:`~asgi_attribution.PartnerData`). Every model keeps unknown fields
  (``extra="allow"``): the providers add fields without notice, and a webhook must never be
  refused because of one.
- **Dedupe**: providers deliver at least once and retry for days, so the endpoint answers 2xx
  to an id it already handled without running the handler again. An id is remembered (in
  memory, a SQLite file or Redis) only after its handler succeeded, since a failed one must run
  again on the retry, for ``ttl`` seconds (30 days by default, longer than any provider
  retries).
- **Signature**: Dub signs each webhook with ``Dub-Signature: hex(HMAC-SHA256(secret, raw
  body))`` (PIMMS: ``Pimms-Signature``), keyed with the secret exactly as the dashboard shows it
  (``whsec_...``). :class:`WebhookVerifier` checks the raw bytes in constant time against every
  secret (rotation) and raises :class:`~asgi_attribution.InvalidSignatureError` or
  :class:`~asgi_attribution.InvalidWebhookError`.
- **Endpoint**: :func:`webhook_endpoint` answers 2xx to redeliveries and to events you don't
  handle, and 5xx only when a retry could help (Dub disables an endpoint after 20 failures in a
  row).

Example:
    >>> from asgi_attribution.testing import sign_webhook
    >>> verifier = WebhookVerifier(secrets=["whsec_new", "whsec_old"])
    >>> body, headers = sign_webhook({"event": "lead.created", "data": {}}, "whsec_old")
    >>> verifier.verify_body(body, headers).event
    'lead.created'
    >>> event = parse_event({"id": "evt_1", "event": "sale.created",
    ...                      "createdAt": "2025-01-14T04:49:30.459Z",
    ...                      "data": {"sale": {"amount": 100, "currency": "usd"}}})
    >>> type(event.data).__name__, event.data.sale.amount
    ('SaleCreatedData', 100)
    >>> import asyncio
    >>> store = open_dedupe(None)
    >>> async def demo():
    ...     before = await store.seen("evt_1")
    ...     await store.mark("evt_1")
    ...     return before, await store.seen("evt_1")
    >>> asyncio.run(demo())
    (False, True)
"""

from __future__ import annotations

import asyncio
import collections
import datetime
import hashlib
import hmac
import inspect
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio.to_thread
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ._exceptions import AttributionError, InvalidSignatureError, InvalidWebhookError
from ._providers import Provider, get_provider

__all__ = [
    "MAX_BODY",
    "SIGNATURE_HEADERS",
    "THIRTY_DAYS",
    "CommissionCreatedData",
    "DedupeStore",
    "InvalidSignatureError",
    "InvalidWebhookError",
    "LeadCreatedData",
    "MemoryDedupe",
    "RedisDedupe",
    "SQLiteDedupe",
    "SaleCreatedData",
    "WebhookClick",
    "WebhookCustomer",
    "WebhookData",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookHandler",
    "WebhookLink",
    "WebhookPartner",
    "WebhookSale",
    "WebhookVerifier",
    "compute_signature",
    "data_model_for",
    "open_dedupe",
    "parse_event",
    "webhook_endpoint",
]


logger = logging.getLogger("asgi_attribution")

_ALLOW = ConfigDict(extra="allow", frozen=True, populate_by_name=True)


class WebhookData(BaseModel):
    """The ``data`` of an event without a typed model here (``partner.enrolled``, ``link.*``...).

    Every field the provider sent is kept: read them with ``data.model_extra`` or attributes.

    Example:
        >>> WebhookData.model_validate({"id": "pn_1", "name": "Ada"}).model_extra
        {'id': 'pn_1', 'name': 'Ada'}
    """

    model_config = _ALLOW


class WebhookCustomer(BaseModel):
    """The customer of a lead, sale or commission (``externalId`` is your own user id).

    Example:
        >>> WebhookCustomer(externalId="user_42").externalId
        'user_42'
    """

    model_config = _ALLOW
    id: str | None = None
    externalId: str | None = None
    name: str | None = None
    email: str | None = None
    avatar: str | None = None
    country: str | None = None


class WebhookClick(BaseModel):
    """The click behind a lead or sale.

    Example:
        >>> WebhookClick(id="GWGrkftJdYlZD2mq", country="US").id
        'GWGrkftJdYlZD2mq'
    """

    model_config = _ALLOW
    id: str | None = None
    url: str | None = None
    country: str | None = None
    referer: str | None = None


class WebhookLink(BaseModel):
    """The short link a lead, sale or commission came through (partner links name the partner).

    Example:
        >>> WebhookLink(domain="go.acme.com", key="john", partnerId="pn_1").partnerId
        'pn_1'
    """

    model_config = _ALLOW
    id: str | None = None
    domain: str | None = None
    key: str | None = None
    url: str | None = None
    shortLink: str | None = None
    partnerId: str | None = None
    programId: str | None = None
    tenantId: str | None = None


class WebhookSale(BaseModel):
    """The sale of a ``sale.created`` event (``amount`` in cents of ``currency``).

    Example:
        >>> WebhookSale(amount=4900, currency="usd", invoiceId="in_1").invoiceId
        'in_1'
    """

    model_config = _ALLOW
    amount: int | None = None
    currency: str | None = None
    paymentProcessor: str | None = None
    invoiceId: str | None = None


class WebhookPartner(BaseModel):
    """The partner a commission is for.

    Example:
        >>> WebhookPartner(id="pn_1", name="Ada").name
        'Ada'
    """

    model_config = _ALLOW
    id: str | None = None
    name: str | None = None
    email: str | None = None
    image: str | None = None
    country: str | None = None


class LeadCreatedData(WebhookData):
    """The ``data`` of ``lead.created``: event name, customer, click and link.

    Example:
        >>> LeadCreatedData(eventName="Sign up", customer={"externalId": "u_1"}).customer.externalId
        'u_1'
    """

    eventName: str | None = None
    customer: WebhookCustomer | None = None
    click: WebhookClick | None = None
    link: WebhookLink | None = None
    metadata: dict[str, Any] | None = None


class SaleCreatedData(WebhookData):
    """The ``data`` of ``sale.created``: as a lead, plus the ``sale`` (amount, invoice id).

    Example:
        >>> SaleCreatedData(sale={"amount": 100, "currency": "usd"}).sale.currency
        'usd'
    """

    eventName: str | None = None
    customer: WebhookCustomer | None = None
    click: WebhookClick | None = None
    link: WebhookLink | None = None
    sale: WebhookSale | None = None
    metadata: dict[str, Any] | None = None


class CommissionCreatedData(WebhookData):
    """The ``data`` of ``commission.created``: what a partner earned (``earnings``, in cents).

    ``status`` is ``pending`` at first (then ``processed``, ``paid``, ``refunded``...);
    ``invoiceId`` ties it to the sale, which is how a refund finds it.

    Example:
        >>> CommissionCreatedData(id="cm_1", type="sale", amount=5000, earnings=1000).earnings
        1000
    """

    id: str | None = None
    type: str | None = None
    amount: int | None = None
    earnings: int | None = None
    currency: str | None = None
    status: str | None = None
    invoiceId: str | None = None
    description: str | None = None
    quantity: int | None = None
    partner: WebhookPartner | None = None
    customer: WebhookCustomer | None = None
    link: WebhookLink | None = None


_DATA_MODELS: dict[str, type[WebhookData]] = {
    "lead.created": LeadCreatedData,
    "sale.created": SaleCreatedData,
    "commission.created": CommissionCreatedData,
}


def data_model_for(event: str) -> type[WebhookData]:
    """The model of ``data`` for an event type: a typed one, or :class:`WebhookData`.

    Example:
        >>> data_model_for("lead.created").__name__, data_model_for("link.clicked").__name__
        ('LeadCreatedData', 'WebhookData')
    """
    return _DATA_MODELS.get(event, WebhookData)


class WebhookEvent(BaseModel):
    """One verified webhook: ``id`` (``evt_...``, the same on every redelivery), ``event``,
    ``created_at`` (from ``createdAt``) and ``data`` (typed for the events this module knows).

    Example:
        >>> event = WebhookEvent(id="evt_1", event="link.clicked",
        ...                      created_at="2025-01-01T00:00:00Z", data={})
        >>> event.created_at.year, event.model_dump(by_alias=True)["createdAt"].year
        (2025, 2025)
    """

    model_config = ConfigDict(frozen=True, populate_by_name=True)
    id: str = Field(min_length=1)
    event: str = Field(min_length=1)
    created_at: datetime.datetime = Field(alias="createdAt")
    data: WebhookData


def parse_event(payload: Mapping[str, Any]) -> WebhookEvent:
    """Build a :class:`WebhookEvent` from a decoded body, typing ``data`` by ``event``.

    Raises ``pydantic.ValidationError`` when the envelope is wrong. A ``data`` that breaks its
    typed model (a provider changed a field) is kept untyped as :class:`WebhookData` and logged
    at warning: the event still reaches its handler.

    Example:
        >>> parse_event({"id": "evt_1", "event": "lead.created",
        ...              "createdAt": "2025-01-01T00:00:00Z",
        ...              "data": {"customer": "not an object"}}).data.model_extra
        {'customer': 'not an object'}
    """
    envelope = dict(payload)
    raw_data = envelope.get("data")
    if not isinstance(raw_data, Mapping):
        raw_data = {}
    envelope["data"] = WebhookData()
    event = WebhookEvent.model_validate(envelope)
    model = data_model_for(event.event)
    try:
        data = model.model_validate(raw_data)
    except ValidationError as exc:
        logger.warning(
            "webhook %s (%s): data does not match %s, kept untyped: %s",
            event.id[:64],
            event.event[:64],
            model.__name__,
            str(exc).splitlines()[0][:200],
        )
        data = WebhookData.model_validate(raw_data)
    return event.model_copy(update={"data": data})


THIRTY_DAYS = 30 * 24 * 60 * 60


@runtime_checkable
class DedupeStore(Protocol):
    """What :func:`~asgi_attribution.webhooks.webhook_endpoint` needs to skip redeliveries.

    Example:
        >>> isinstance(MemoryDedupe(), DedupeStore)
        True
    """

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was handled (and marked) within the store's ``ttl``."""

    async def mark(self, event_id: str) -> None:
        """Remember that ``event_id`` was handled."""

    async def aclose(self) -> None:
        """Release connections; the store may be used again after (it reconnects)."""


class MemoryDedupe:
    """Ids in this process's memory: fine for one process; lost on restart.

    At most ``max_entries`` ids are kept (the oldest are forgotten first).

    Example:
        >>> MemoryDedupe(ttl=60, max_entries=1000).ttl
        60
    """

    def __init__(self, *, ttl: float = THIRTY_DAYS, max_entries: int = 100_000) -> None:
        if ttl <= 0 or max_entries < 1:
            raise ValueError("MemoryDedupe needs ttl > 0 and max_entries >= 1")
        self.ttl = ttl
        self.max_entries = max_entries
        self._ids: collections.OrderedDict[str, float] = collections.OrderedDict()

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was marked less than ``ttl`` seconds ago."""
        at = self._ids.get(event_id)
        return at is not None and time.monotonic() - at < self.ttl

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` now."""
        self._ids[event_id] = time.monotonic()
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.max_entries:
            self._ids.popitem(last=False)

    async def aclose(self) -> None:
        """Nothing to release."""


class SQLiteDedupe:
    """Ids in a SQLite file, shared by the processes of one host; survives restarts.

    The file and its table are created on first use; calls run in a worker thread.

    Example:
        >>> import asyncio, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "webhooks.db")
        >>> store = SQLiteDedupe(path)
        >>> asyncio.run(store.mark("evt_1")); asyncio.run(store.seen("evt_1"))
        True
        >>> asyncio.run(store.aclose())
    """

    def __init__(self, path: str | os.PathLike[str], *, ttl: float = THIRTY_DAYS) -> None:
        if ttl <= 0:
            raise ValueError("SQLiteDedupe needs ttl > 0")
        self.path = Path(path)
        self.ttl = ttl
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            try:
                db = sqlite3.connect(self.path, check_same_thread=False, timeout=10.0)
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(
                    "CREATE TABLE IF NOT EXISTS webhook_events "
                    "(id TEXT PRIMARY KEY, seen_at REAL NOT NULL)"
                )
                db.execute("CREATE INDEX IF NOT EXISTS webhook_seen_at ON webhook_events(seen_at)")
                db.commit()
            except sqlite3.Error as exc:
                raise AttributionError(f"webhook dedupe store {self.path}: {exc}") from exc
            self._db = db
        return self._db

    def _seen(self, event_id: str) -> bool:
        with self._lock:
            row = (
                self._connect()
                .execute(
                    "SELECT 1 FROM webhook_events WHERE id = ? AND seen_at > ?",
                    (event_id, time.time() - self.ttl),
                )
                .fetchone()
            )
        return row is not None

    def _mark(self, event_id: str) -> None:
        now = time.time()
        with self._lock:
            db = self._connect()
            db.execute("INSERT OR REPLACE INTO webhook_events VALUES (?, ?)", (event_id, now))
            db.execute("DELETE FROM webhook_events WHERE seen_at <= ?", (now - self.ttl,))
            db.commit()

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was marked less than ``ttl`` seconds ago."""
        return await anyio.to_thread.run_sync(self._seen, event_id)

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` now (and forget ids older than ``ttl``)."""
        await anyio.to_thread.run_sync(self._mark, event_id)

    async def aclose(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


class RedisDedupe:
    """Ids in Redis (``SET ... EX ttl``), shared by every process; needs redis-py.

    Example:
        >>> RedisDedupe("redis://127.0.0.1:6379/0", prefix="myapp:webhooks").prefix
        'myapp:webhooks'
    """

    def __init__(
        self, url: str, *, ttl: float = THIRTY_DAYS, prefix: str = "asgi_attribution:webhooks"
    ) -> None:
        if ttl < 1:
            raise ValueError("RedisDedupe needs ttl >= 1 second")
        self.url = url
        self.ttl = int(ttl)
        self.prefix = prefix
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def _redis(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            try:
                import redis.asyncio as aioredis
            except ImportError:  # pragma: no cover - depends on the environment
                raise AttributionError(
                    "a Redis dedupe store needs redis-py: pip install 'asgi-attribution[redis]'"
                ) from None
            self._client = aioredis.Redis.from_url(self.url)
            self._loop = loop
        return self._client

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` is in Redis (keys expire after ``ttl``)."""
        return bool(await self._redis().exists(f"{self.prefix}:{event_id}"))

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` for ``ttl`` seconds."""
        await self._redis().set(f"{self.prefix}:{event_id}", b"1", ex=self.ttl)

    async def aclose(self) -> None:
        """Close the client of the current loop."""
        client, self._client, self._loop = self._client, None, None
        if client is not None:
            await client.aclose()


def open_dedupe(spec: DedupeStore | str | os.PathLike[str] | None) -> DedupeStore:
    """The store for ``dedupe=``: ``None`` (memory), a ``redis://`` / ``rediss://`` URL, a
    SQLite file path, or a store of your own.

    Example:
        >>> type(open_dedupe(None)).__name__, type(open_dedupe("redis://localhost/0")).__name__
        ('MemoryDedupe', 'RedisDedupe')
        >>> type(open_dedupe("/var/lib/acme/webhooks.db")).__name__
        'SQLiteDedupe'
    """
    if spec is None:
        return MemoryDedupe()
    if isinstance(spec, str) and spec.startswith(("redis://", "rediss://", "unix://")):
        return RedisDedupe(spec)
    if isinstance(spec, (str, os.PathLike)):
        if not str(spec):
            raise ValueError("dedupe path is empty: pass None (memory), a file path or a URL")
        return SQLiteDedupe(spec)
    if isinstance(spec, DedupeStore):
        return spec
    raise TypeError(f"dedupe must be None, a path, a redis:// URL or a DedupeStore, got {spec!r}")


#: The header each provider signs its webhooks in.
SIGNATURE_HEADERS = {"dub": "Dub-Signature", "pimms": "Pimms-Signature"}

#: The largest webhook body the endpoint reads (1 MiB); larger ones get 413 unread.
MAX_BODY = 1024 * 1024

WebhookHandler = Callable[[WebhookEvent], "Awaitable[object] | object"]

"""A handler: ``handler(event)``, a plain or an ``async`` function; raising means "retry"."""


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
            >>> try:
            ...     WebhookVerifier(secrets="whsec_x").check(b"{}", {})
            ... except InvalidSignatureError as exc:
            ...     print(exc)
            no Dub-Signature header
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
    or a :class:`~asgi_attribution.webhooks.DedupeStore`. Route to it in Starlette or
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
