"""Verified webhooks from Dub and PIMMS: the signature, the payload models, the dedupe of
redeliveries, and an ASGI endpoint that runs your handlers once.

Why one module of about 800 lines: it is one concept, receiving a provider's webhooks; each part
exists only for the endpoint, and a reader follows one webhook through them top to bottom.

- **Payloads**: an envelope (:class:`WebhookEvent`) and a typed ``data`` for every trigger Dub
  sends (:data:`WEBHOOK_TRIGGERS`), with the providers' own field names (camelCase, as in
  :class:`~asgi_attribution.PartnerData`); they live in a module of their own (what Dub sends)
  and are imported from here. Every model keeps unknown fields (``extra="allow"``): the
  providers add fields without notice, and a webhook must never be refused because of one. An
  unknown trigger parses, untyped (:class:`WebhookData`).
- **Dedupe**: providers deliver at least once and retry for days, so the endpoint answers 2xx
  to an id it already handled without running the handler again. Before the handler runs, the
  id is claimed atomically in the store (memory, a SQLite file or Redis), so of concurrent
  deliveries to processes sharing a store one runs it; the claim is kept for ``ttl`` seconds
  (30 days by default, longer than any provider retries) once the handler succeeded, and
  dropped when it failed, so the provider's retry runs it again.
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
    ...     first = await store.claim("evt_1")
    ...     await store.mark("evt_1")
    ...     return first, await store.claim("evt_1")
    >>> asyncio.run(demo())
    ('claimed', 'handled')
"""

from __future__ import annotations

import asyncio
import collections
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
from typing import Any, Literal, Protocol, TypeVar, runtime_checkable

import anyio.to_thread
from pydantic import ValidationError
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

from ._exceptions import AttributionError, InvalidSignatureError, InvalidWebhookError
from ._providers import Provider, get_provider
from ._webhook_payloads import (
    WEBHOOK_TRIGGERS,
    BountyData,
    CommissionCreatedData,
    DiscountCodeData,
    LeadCreatedData,
    LinkClickedData,
    LinkData,
    PartnerApplicationData,
    PartnerEnrolledData,
    PartnerMergedData,
    PayoutConfirmedData,
    SaleCreatedData,
    WebhookApplicationAnswer,
    WebhookClick,
    WebhookCustomer,
    WebhookData,
    WebhookDiscount,
    WebhookEvent,
    WebhookLink,
    WebhookPartner,
    WebhookPartnerLink,
    WebhookSale,
    data_model_for,
    parse_event,
)

__all__ = [
    "CLAIM_LEASE",
    "MAX_BODY",
    "SIGNATURE_HEADERS",
    "THIRTY_DAYS",
    "WEBHOOK_TRIGGERS",
    "BountyData",
    "Claim",
    "CommissionCreatedData",
    "DedupeStore",
    "DiscountCodeData",
    "InvalidSignatureError",
    "InvalidWebhookError",
    "LeadCreatedData",
    "LinkClickedData",
    "LinkData",
    "MemoryDedupe",
    "PartnerApplicationData",
    "PartnerEnrolledData",
    "PartnerMergedData",
    "PayoutConfirmedData",
    "RedisDedupe",
    "SQLiteDedupe",
    "SaleCreatedData",
    "WebhookApplicationAnswer",
    "WebhookClick",
    "WebhookCustomer",
    "WebhookData",
    "WebhookDiscount",
    "WebhookEndpoint",
    "WebhookEvent",
    "WebhookHandler",
    "WebhookLink",
    "WebhookPartner",
    "WebhookPartnerLink",
    "WebhookSale",
    "WebhookVerifier",
    "compute_signature",
    "data_model_for",
    "open_dedupe",
    "parse_event",
    "webhook_endpoint",
]


logger = logging.getLogger("asgi_attribution")

_T = TypeVar("_T")


THIRTY_DAYS = 30 * 24 * 60 * 60

#: Seconds a claim holds an id while its handler runs (10 minutes). A process that died
#: holding one frees it when it ends; a handler still running then could run a second time.
CLAIM_LEASE = 600.0

#: What :meth:`DedupeStore.claim` found: ``"claimed"`` (yours: run the handler, then
#: ``mark`` or ``release``), ``"running"`` (another caller holds a live claim) or
#: ``"handled"`` (marked within ``ttl``).
Claim = Literal["claimed", "running", "handled"]


@runtime_checkable
class DedupeStore(Protocol):
    """What :func:`~asgi_attribution.webhooks.webhook_endpoint` needs to run a handler once
    per event id: an atomic claim before the handler, kept (``mark``) when it succeeded and
    dropped (``release``) when it failed, so that the provider's retry runs it again.

    ``claim`` must be atomic across every process sharing the store: of any number of
    concurrent calls for one id, one gets ``"claimed"``.

    Example:
        >>> isinstance(MemoryDedupe(), DedupeStore)
        True
    """

    async def claim(self, event_id: str) -> Claim:
        """Take ``event_id`` for its handler, atomically; or say who has it (:data:`Claim`)."""

    async def mark(self, event_id: str) -> None:
        """The handler of ``event_id`` succeeded: remember it for the store's ``ttl``."""

    async def release(self, event_id: str) -> None:
        """The handler of ``event_id`` failed: drop its claim, so a retry can run it."""

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was handled (marked) within the store's ``ttl``."""

    async def aclose(self) -> None:
        """Release connections; the store may be used again after (it reconnects)."""


def _check_times(owner: str, ttl: float, lease: float) -> None:
    if ttl <= 0 or lease <= 0:
        raise ValueError(f"{owner} needs ttl > 0 and lease > 0 seconds, got {ttl!r}, {lease!r}")


class MemoryDedupe:
    """Ids in this process's memory: one process only, and forgotten at a restart.

    At most ``max_entries`` ids are kept (the oldest are forgotten first): an event redelivered
    after a restart, or after ``max_entries`` other events, runs its handler again. Use a
    SQLite file or Redis for more than one process.

    Example:
        >>> import asyncio
        >>> store = MemoryDedupe(ttl=60, max_entries=1000)
        >>> async def twice():
        ...     return await store.claim("evt_1"), await store.claim("evt_1")
        >>> asyncio.run(twice())
        ('claimed', 'running')
    """

    def __init__(
        self, *, ttl: float = THIRTY_DAYS, max_entries: int = 100_000, lease: float = CLAIM_LEASE
    ) -> None:
        _check_times("MemoryDedupe", ttl, lease)
        if max_entries < 1:
            raise ValueError(f"MemoryDedupe needs max_entries >= 1, got {max_entries!r}")
        self.ttl = ttl
        self.lease = lease
        self.max_entries = max_entries
        # id -> (handled, since): a claim while False, a handled id once True.
        self._ids: collections.OrderedDict[str, tuple[bool, float]] = collections.OrderedDict()
        self._lock = threading.Lock()  # endpoints on several threads may share the store

    def _state(self, event_id: str, now: float) -> Claim | None:
        entry = self._ids.get(event_id)
        if entry is None:
            return None
        handled, since = entry
        if handled:
            return "handled" if now - since < self.ttl else None
        return "running" if now - since < self.lease else None

    def _put(self, event_id: str, handled: bool) -> None:
        self._ids[event_id] = (handled, time.monotonic())
        self._ids.move_to_end(event_id)
        while len(self._ids) > self.max_entries:
            self._ids.popitem(last=False)

    async def claim(self, event_id: str) -> Claim:
        """Take ``event_id``, unless it is running or was handled."""
        with self._lock:
            state = self._state(event_id, time.monotonic())
            if state is None:
                self._put(event_id, False)
            return state or "claimed"

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` as handled, now."""
        with self._lock:
            self._put(event_id, True)

    async def release(self, event_id: str) -> None:
        """Drop the claim on ``event_id`` (a handled id stays)."""
        with self._lock:
            entry = self._ids.get(event_id)
            if entry is not None and not entry[0]:
                del self._ids[event_id]

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was marked less than ``ttl`` seconds ago."""
        with self._lock:
            return self._state(event_id, time.monotonic()) == "handled"

    async def aclose(self) -> None:
        """Nothing to release."""


class SQLiteDedupe:
    """Ids in a SQLite file, shared by the processes of one host; survives restarts.

    A claim is a row written inside ``BEGIN IMMEDIATE``, which one process at a time holds: of
    concurrent deliveries of one id, across processes, one claims it. The file and its table
    are created on first use; calls run in a worker thread.

    Example:
        >>> import asyncio, os, tempfile
        >>> path = os.path.join(tempfile.mkdtemp(), "webhooks.db")
        >>> store = SQLiteDedupe(path)
        >>> asyncio.run(store.claim("evt_1")); asyncio.run(store.mark("evt_1"))
        'claimed'
        >>> asyncio.run(store.claim("evt_1")), asyncio.run(store.seen("evt_1"))
        ('handled', True)
        >>> asyncio.run(store.aclose())
    """

    def __init__(
        self, path: str | os.PathLike[str], *, ttl: float = THIRTY_DAYS, lease: float = CLAIM_LEASE
    ) -> None:
        _check_times("SQLiteDedupe", ttl, lease)
        self.path = Path(path)
        self.ttl = ttl
        self.lease = lease
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._db is None:
            # Autocommit: the claim opens its own BEGIN IMMEDIATE.
            db = sqlite3.connect(
                self.path, check_same_thread=False, timeout=10.0, isolation_level=None
            )
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(
                "CREATE TABLE IF NOT EXISTS webhook_events (id TEXT PRIMARY KEY, "
                "seen_at REAL NOT NULL, handled INTEGER NOT NULL DEFAULT 1)"
            )
            columns = {row[1] for row in db.execute("PRAGMA table_info(webhook_events)")}
            if "handled" not in columns:  # a file of an earlier version: its ids were handled
                try:
                    db.execute(
                        "ALTER TABLE webhook_events ADD COLUMN handled INTEGER NOT NULL DEFAULT 1"
                    )
                except sqlite3.OperationalError as exc:  # another process added it first
                    if "duplicate column" not in str(exc):
                        raise
            db.execute("CREATE INDEX IF NOT EXISTS webhook_seen_at ON webhook_events(seen_at)")
            self._db = db
        return self._db

    def _run(self, work: Callable[[sqlite3.Connection, float], _T]) -> _T:
        with self._lock:
            try:
                return work(self._connect(), time.time())  # wall clock: shared by processes
            except sqlite3.Error as exc:
                raise AttributionError(f"webhook dedupe store {self.path}: {exc}") from exc

    def _claim(self, db: sqlite3.Connection, now: float, event_id: str) -> Claim:
        db.execute("BEGIN IMMEDIATE")
        try:
            row = db.execute(
                "SELECT handled, seen_at FROM webhook_events WHERE id = ?", (event_id,)
            ).fetchone()
            if row is not None and row[0] and row[1] > now - self.ttl:
                state: Claim = "handled"
            elif row is not None and not row[0] and row[1] > now - self.lease:
                state = "running"
            else:
                state = "claimed"
                db.execute(
                    "INSERT OR REPLACE INTO webhook_events (id, seen_at, handled) VALUES (?, ?, 0)",
                    (event_id, now),
                )
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return state

    def _mark(self, db: sqlite3.Connection, now: float, event_id: str) -> None:
        db.execute(
            "INSERT OR REPLACE INTO webhook_events (id, seen_at, handled) VALUES (?, ?, 1)",
            (event_id, now),
        )
        db.execute(
            "DELETE FROM webhook_events WHERE seen_at <= ? OR (handled = 0 AND seen_at <= ?)",
            (now - self.ttl, now - self.lease),
        )

    async def claim(self, event_id: str) -> Claim:
        """Take ``event_id`` in one ``BEGIN IMMEDIATE`` transaction, unless it is running or
        was handled."""
        return await anyio.to_thread.run_sync(
            self._run, lambda db, now: self._claim(db, now, event_id)
        )

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` as handled (and forget ids older than ``ttl``)."""
        await anyio.to_thread.run_sync(self._run, lambda db, now: self._mark(db, now, event_id))

    async def release(self, event_id: str) -> None:
        """Drop the claim on ``event_id`` (a handled id stays)."""
        sql = "DELETE FROM webhook_events WHERE id = ? AND handled = 0"
        await anyio.to_thread.run_sync(self._run, lambda db, now: db.execute(sql, (event_id,)))

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` was marked less than ``ttl`` seconds ago."""
        sql = "SELECT 1 FROM webhook_events WHERE id = ? AND handled = 1 AND seen_at > ?"
        row = await anyio.to_thread.run_sync(
            self._run, lambda db, now: db.execute(sql, (event_id, now - self.ttl)).fetchone()
        )
        return row is not None

    async def aclose(self) -> None:
        """Close the connection."""
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None


# Deletes a claim only while it is one (a handled id stays).
_RELEASE = "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end"
_RUNNING = b"running"


class RedisDedupe:
    """Ids in Redis, shared by every process; needs redis-py.

    A claim is ``SET key running NX PX lease`` (one caller wins it); a handled id is
    ``SET key handled EX ttl``.

    Example:
        >>> RedisDedupe("redis://127.0.0.1:6379/0", prefix="myapp:webhooks").prefix
        'myapp:webhooks'
    """

    def __init__(
        self,
        url: str,
        *,
        ttl: float = THIRTY_DAYS,
        prefix: str = "asgi_attribution:webhooks",
        lease: float = CLAIM_LEASE,
    ) -> None:
        if ttl < 1 or lease < 0.001:
            raise ValueError(f"RedisDedupe needs ttl >= 1 second and lease > 0, got {ttl!r}")
        self.url = url
        self.ttl = int(ttl)
        self.lease = lease
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

    async def claim(self, event_id: str) -> Claim:
        """Take ``event_id`` with ``SET NX``, unless it is running or was handled."""
        client, key = self._redis(), f"{self.prefix}:{event_id}"
        if await client.set(key, _RUNNING, nx=True, px=max(1, int(self.lease * 1000))):
            return "claimed"
        value = await client.get(key)
        # Gone since the SET (released, expired): the provider's retry will claim it.
        return "running" if value in (None, _RUNNING) else "handled"

    async def mark(self, event_id: str) -> None:
        """Remember ``event_id`` as handled for ``ttl`` seconds."""
        await self._redis().set(f"{self.prefix}:{event_id}", b"handled", ex=self.ttl)

    async def release(self, event_id: str) -> None:
        """Drop the claim on ``event_id`` (a handled id stays)."""
        await self._redis().eval(_RELEASE, 1, f"{self.prefix}:{event_id}", _RUNNING)

    async def seen(self, event_id: str) -> bool:
        """Whether ``event_id`` is marked handled in Redis (keys expire after ``ttl``)."""
        value = await self._redis().get(f"{self.prefix}:{event_id}")
        return value not in (None, _RUNNING)

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
    methods = ("claim", "mark", "release", "seen", "aclose")
    missing = [name for name in methods if not callable(getattr(spec, name, None))]
    if len(missing) < len(methods):  # a store of an earlier contract (seen and mark only)
        raise TypeError(f"dedupe store {spec!r} lacks {', '.join(missing)} (see DedupeStore)")
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
    provider's retry runs it again); 409 while the same id is being handled, here or in another
    process sharing the dedupe store (retry later); 500 when the dedupe store fails (nothing
    runs: the provider retries).

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
        name = f"webhook {event.id[:64]} ({event.event[:64]})"
        try:
            claim = await self.dedupe.claim(event.id)
        except Exception:
            logger.exception("%s not handled: the dedupe store failed (the provider retries)", name)
            return 500, {**base, "error": "dedupe store unavailable"}
        if claim == "handled":
            return 200, {**base, "duplicate": True}
        if claim == "running":
            return 409, {**base, "error": "already being handled"}
        try:
            if handler is not None:
                await _run(handler, event)
        except Exception:
            logger.exception("%s: its handler failed", name)
            await self._release(event, name)
            return 500, {**base, "error": "handler failed"}
        except BaseException:  # cancelled: the retry must find the id free
            with anyio.CancelScope(shield=True):
                await self._release(event, name)
            raise
        try:
            await self.dedupe.mark(event.id)
        except Exception:  # the claim stays until its lease ends: no rerun before that
            logger.exception("%s handled, but the dedupe store did not keep it", name)
        return 200, {**base, "handled": handler is not None}

    async def _release(self, event: WebhookEvent, name: str) -> None:
        try:
            await self.dedupe.release(event.id)
        except Exception:
            logger.exception("%s: claim not released; a retry runs once its lease ends", name)

    async def aclose(self) -> None:
        """Close the dedupe store's connections (SQLite, Redis); called on lifespan shutdown."""
        await self.dedupe.aclose()


async def _run(handler: WebhookHandler, event: WebhookEvent) -> None:
    if inspect.iscoroutinefunction(handler):
        await handler(event)
        return
    result = await anyio.to_thread.run_sync(handler, event)
    if inspect.isawaitable(result):
        await result


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
    ids for 30 days: ``None`` (this process's memory: one process, forgotten at a restart), a
    SQLite file path (the processes of one host), a ``redis://`` URL (every process), or a
    :class:`~asgi_attribution.webhooks.DedupeStore`. Route to it in Starlette or
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
