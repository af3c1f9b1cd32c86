"""HTTP delivery to the provider's API: one request per attempt, over keep-alive connections.

The requests go through the lean engine (:mod:`.engine`: asyncio.Protocol + httptools, measured
in bench/ at a fraction of httpx's client CPU per event); httpx carries them when the caller
gives a client (custom transports, respx) or proxy variables are set. :mod:`.answers` reads
the answers for both.

One attempt is one request. It fails retryably for what can succeed later (network errors,
timeouts, 408, 425, 429, 5xx, with the server's ``Retry-After``); other 4xx answers are final.
Faults of the whole integration (401, 403, 3xx, a 404 or 405 that names no event) are raised as
:class:`IntegrationError` (final for the event; the background queue pauses on them); an
unsupported scheme or an invalid URL is final. A 2xx carries the provider's ``outcome``.
Whoever schedules the attempts retries them (:meth:`Transport.send` inline, or the background
and outbox layers), and every attempt of an event carries the same ``Idempotency-Key``.

What a provider's HTTP answer means: a delivery (with its outcome) or an error of the right kind.

One place reads answers for every HTTP engine (httpx, or the lean engine), from a neutral
:class:`Answer`: 2xx is delivered, with what the body says the provider did; 408, 425, 429 and
5xx are retryable with the server's ``Retry-After``; 401, 403, 3xx and a 404 or 405 naming no
event are faults of the whole integration; other 4xx are final for the event.

A refund's one attempt in two requests: find the sale's commission, then change it.

Dub creates a sale's commission after it answers the sale, so a refund may look before the
commission exists. Such a lookup fails the attempt retryably (``commission_pending``, with a
short ``retry_after``), and the one retry step repeats it. Once a refund has looked for
``window`` seconds (10 minutes by default, counted from its first attempt in this process), or
is at its last attempt, it finishes as delivered, ``not_recorded`` with ``no_commission``: the
sale earned no partner commission (an organic sale), and there is nothing to refund. The window
is cut to end before the retry budget does, so the verdict always comes before the retry step
would give up.

A partial refund is not idempotent on Dub's side (the commissions API ignores
``Idempotency-Key``): a ``PATCH`` whose answer was lost (a timeout) and is retried lowers the
amount twice. A full refund is: a retried one finds the commission refunded (``duplicate``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from .._deprecation import renamed
from .._events import RefundEvent
from .._exceptions import DeliveryError, IntegrationError
from .._json import loads
from .._providers import Outcome, ProviderRequest
from ._base import Delivery, DeliveryStats, RetryPolicy, TrackResult, Transport, parse_retry_after
from ._pause import per_event_not_found
from .engine import Engine, EngineError, Response, proxies_configured

__all__ = [
    "PENDING_RETRY_AFTER",
    "REFUND_WINDOW",
    "RETRYABLE_STATUS",
    "USER_AGENT",
    "Answer",
    "CommissionWaits",
    "HTTPTransport",
    "after_lookup",
    "after_update",
    "delivered",
    "error_from",
    "parse_json",
    "sent",
]


# Retryable below 500; every 5xx is retryable too.
RETRYABLE_STATUS = frozenset({408, 425, 429})

logger = logging.getLogger("asgi_attribution")


def parse_json(body: bytes) -> Any:
    """The body as JSON, or ``None`` when it is empty or not JSON.

    Example:
        >>> parse_json(b'{"ok": true}'), parse_json(b"<html>")
        ({'ok': True}, None)
    """
    try:
        return loads(body) if body else None
    except ValueError:  # not UTF-8 either
        return None


# Not frozen: a frozen dataclass's __init__ costs an object.__setattr__ per field (bench/README.md).
@dataclass(slots=True)
class Answer:
    """One HTTP answer, as much of it as deciding what it means needs.

    Example:
        >>> Answer(503, None, "Service Unavailable", "POST /track/lead", retry_after="2").status
        503
    """

    status: int
    body: Any
    reason: str
    target: str
    location: str | None = None
    retry_after: str | None = None


def delivered(delivery: Delivery, answer: Answer) -> TrackResult:
    """The result of a 2xx, with what the answer says the provider did (and warnings).

    Example:
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> delivered(Delivery(lead, DUB), Answer(200, {"link": None}, "OK", "POST /")).outcome
        'duplicate'
    """
    event = delivery.event
    outcome, reason = delivery.provider.outcome(event, answer.body)
    if reason == "not_json":
        logger.warning(
            "event %s: %s answered HTTP %d with a body that is not JSON (a proxy?): "
            "counted as sent, but whether it was recorded is unknown",
            event.event_id,
            delivery.provider.name,
            answer.status,
            extra={"event_id": event.event_id, "outcome": outcome, "outcome_reason": reason},
        )
    elif outcome == "not_recorded" and event.kind == "sale":
        logger.warning(
            "sale %s not recorded by %s: %s",
            event.event_id,
            delivery.provider.name,
            reason,
            extra={"event_id": event.event_id, "outcome": outcome, "outcome_reason": reason},
        )
    return sent(delivery, answer, outcome, reason)


def sent(delivery: Delivery, answer: Answer, outcome: Outcome, reason: str | None) -> TrackResult:
    """The result of a delivery the provider answered, with what it says it did.

    Example:
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> sent(Delivery(lead, DUB), Answer(200, {}, "OK", "POST /"), "recorded", None).status
        'sent'
    """
    return TrackResult(
        "sent",
        delivery.event,
        status_code=answer.status,
        response=answer.body,
        outcome=outcome,
        outcome_reason=reason,
    )


def error_from(event_id: str, answer: Answer) -> DeliveryError:
    """The error a non-2xx ``answer`` is for ``event_id``.

    Example:
        >>> error_from("evt_1", Answer(401, None, "Unauthorized", "POST /track/lead")).code
        'unauthorized'
    """
    status, body = answer.status, answer.body
    code, message = f"http_{status}", answer.reason or "error"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))[:100]
        message = str(body["error"].get("message", message))[:500]
    integration = _integration_code(answer)
    if integration is not None:
        code, hint = integration
        return IntegrationError(event_id, code, f"{message} ({hint})", status_code=status)
    if status == 404:
        code = per_event_not_found(body) or code
    retryable = status in RETRYABLE_STATUS or status >= 500
    retry_after = parse_retry_after(answer.retry_after) if retryable else None
    return DeliveryError(
        event_id, code, message, status_code=status, retryable=retryable, retry_after=retry_after
    )


def _integration_code(answer: Answer) -> tuple[str, str] | None:
    """(code, hint) for an answer that is a fault of the whole integration, else None."""
    status = answer.status
    if status == 401:
        return "unauthorized", "check the API key"
    if status == 403:
        return "forbidden", "the API key lacks the permission for this call"
    if 300 <= status < 400:
        return "redirect", f"redirected to {answer.location or '?'}: check base_url"
    if status == 405 or (status == 404 and per_event_not_found(answer.body) is None):
        return "wrong_path", f"{answer.target}: check base_url"
    return None


#: Seconds between lookups of a commission still being created (the retry step's minimum).
PENDING_RETRY_AFTER = 2.0

#: Seconds a refund looks for its sale's commission before finishing as ``no_commission``.
REFUND_WINDOW = 600.0

# The verdict comes this long before the retry budget would end.
_MARGIN = 1.0


class CommissionWaits:
    """Since when, and in how many attempts, each refund of this process has been looking.

    Kept in memory (a restart starts the window again), for at most ``limit`` refunds at once.

    Example:
        >>> waits = CommissionWaits(window=600.0)
        >>> waits.begin("evt_1")
        >>> one = RetryPolicy(max_attempts=1)
        >>> waits.exhausted("evt_1", RetryPolicy()), waits.exhausted("evt_1", one)
        (False, True)
        >>> waits.end("evt_1"); len(waits)
        0
    """

    def __init__(self, window: float = REFUND_WINDOW, *, limit: int = 10_000) -> None:
        if window < 0:
            raise ValueError(f"refund_window must be >= 0 seconds, got {window}")
        self.window = float(window)
        self.limit = limit
        self._since: dict[str, tuple[float, int]] = {}
        self._lock = threading.Lock()  # one transport may serve loops on several threads

    def __len__(self) -> int:
        return len(self._since)

    def begin(self, event_id: str) -> None:
        """Note one more attempt of the refund ``event_id`` (the first one starts its window)."""
        with self._lock:
            first, attempts = self._since.pop(event_id, (time.monotonic(), 0))
            self._since[event_id] = (first, attempts + 1)
            while len(self._since) > self.limit:  # refunds given up by a layer: forget the oldest
                del self._since[next(iter(self._since))]

    def end(self, event_id: str) -> None:
        """Forget the refund ``event_id``: it finished."""
        with self._lock:
            self._since.pop(event_id, None)

    def exhausted(self, event_id: str, policy: RetryPolicy) -> bool:
        """True when ``event_id`` has looked long enough, or ``policy`` allows no next attempt."""
        with self._lock:
            first, attempts = self._since.get(event_id, (time.monotonic(), 1))
        wait = max(policy.max_backoff, min(PENDING_RETRY_AFTER, policy.max_retry_after))
        window = min(self.window, policy.max_elapsed - wait - _MARGIN)
        return attempts >= policy.max_attempts or time.monotonic() - first >= window


def _final(delivery: Delivery, answer: Answer) -> DeliveryError:
    error = error_from(delivery.event.event_id, answer)
    if isinstance(error, IntegrationError) and error.code == "forbidden":
        # A key made for tracking may lack the commissions scopes: that fails the refunds,
        # and must not pause the delivery of every other event.
        return DeliveryError(error.event_id, error.code, error.message, status_code=403)
    return error


def _finished(delivery: Delivery, answer: Answer, outcome: Outcome, reason: str) -> TrackResult:
    event = delivery.event
    logger.info(
        "refund %s not applied by %s: %s",
        event.event_id,
        delivery.provider.name,
        reason,
        extra={"event_id": event.event_id, "outcome": outcome, "outcome_reason": reason},
    )
    return sent(delivery, answer, outcome, reason)


def after_lookup(
    delivery: Delivery, answer: Answer, waits: CommissionWaits, policy: RetryPolicy
) -> ProviderRequest | TrackResult:
    """The update to send after the lookup ``answer``, or the refund's result without one.

    Raises :class:`DeliveryError` ``commission_pending`` (retryable) while the commission may
    still be on its way, and the lookup's own error for a non-2xx answer.

    Example:
        >>> refund = Delivery(RefundEvent(invoice_id="in_1"), DUB)
        >>> found = Answer(200, [{"id": "cm_1", "invoiceId": "in_1", "status": "pending"}],
        ...                "OK", "GET /commissions")
        >>> after_lookup(refund, found, CommissionWaits(), RetryPolicy()).path
        '/commissions/cm_1'
        >>> none = Answer(200, [], "OK", "GET /commissions")
        >>> after_lookup(refund, none, CommissionWaits(window=0), RetryPolicy()).outcome_reason
        'no_commission'
    """
    event = delivery.event
    assert isinstance(event, RefundEvent)
    if not 200 <= answer.status < 300:
        raise _final(delivery, answer)
    if not isinstance(answer.body, list):
        message = f"{answer.target} answered HTTP {answer.status} without a list (a proxy?)"
        raise DeliveryError(event.event_id, "unexpected_answer", message, retryable=True)
    step = delivery.provider.refund_update(event, answer.body)
    if step is None:
        if waits.exhausted(event.event_id, policy):
            return _finished(delivery, answer, "not_recorded", "no_commission")
        raise DeliveryError(
            event.event_id,
            "commission_pending",
            f"no commission for invoice {event.invoice_id!r} yet",
            retryable=True,
            retry_after=PENDING_RETRY_AFTER,
        )
    if isinstance(step, tuple):
        return _finished(delivery, answer, *step)
    return step


def after_update(delivery: Delivery, answer: Answer) -> TrackResult:
    """The refund's result from the answer of its ``PATCH``.

    Example:
        >>> refund = Delivery(RefundEvent(invoice_id="in_1"), DUB)
        >>> done = Answer(200, {"id": "cm_1", "status": "refunded"}, "OK", "PATCH /x")
        >>> after_update(refund, done).outcome
        'recorded'
    """
    if 200 <= answer.status < 300:
        return delivered(delivery, answer)
    raise _final(delivery, answer)


USER_AGENT = "asgi-attribution/0.1 (+https://pypi.org/project/asgi-attribution/)"


class HTTPTransport(Transport):
    """Send each event to the provider's API, retrying transient failures.

    ``api_key`` defaults to the provider's environment variable (``DUB_API_KEY`` or
    ``PIMMS_API_KEY``) and is kept as a secret: never in ``repr``, logs or errors.
    ``base_url`` defaults to the provider's. ``timeout`` bounds one attempt, ``retry`` says
    when a failed one is tried again, ``concurrency`` bounds requests in flight (and keep-alive
    connections; ``max_connections`` is its deprecated name). A refund looks for its sale's
    commission for at most ``refund_window`` seconds (see :mod:`.refunds`).

    Example:
        >>> transport = HTTPTransport(api_key="dub_xxx", retry=RetryPolicy(max_elapsed=60))
        >>> "dub_xxx" in repr(transport), transport.concurrency
        (False, 10)
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        concurrency: int | None = None,
        client: httpx.AsyncClient | None = None,
        stats: DeliveryStats | None = None,
        max_connections: int | None = None,
        refund_window: float = REFUND_WINDOW,
    ) -> None:
        concurrency = renamed(
            "HTTPTransport", "max_connections", max_connections, "concurrency", concurrency, 10
        )
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        self.api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self._commission_waits = CommissionWaits(refund_window)
        self.refund_window = self._commission_waits.window
        self._client = client
        # Bounds requests in flight to the pool size, so callers waiting for a slot queue here
        # (cheap) rather than inside httpcore's pool (costly bookkeeping per waiter), and events
        # sleeping between retries hold no slot at all.
        self._slots: asyncio.Semaphore | None = None
        self._owns_client = client is None
        self._loop: asyncio.AbstractEventLoop | None = None  # the home loop of our client
        self._lock = threading.Lock()  # loops on several threads may ask for the client
        # The lean engine (one per base URL) belongs to one loop too; None: not decided yet.
        self._engines: dict[tuple[str, SecretStr], Engine] = {}
        self._engine_loop: asyncio.AbstractEventLoop | None = None
        self._use_engine: bool | None = None
        self._last_engine: tuple[object, object, object, str, Engine | None] = (
            None, None, None, "", None)  # fmt: skip
        # The key read from the environment, as a SecretStr kept while the variable holds it.
        self._env_keys: dict[str, SecretStr] = {}
        if stats is not None:  # counts ``retried`` (shared with the tracker's stats)
            self.stats = stats

    def __repr__(self) -> str:
        return f"HTTPTransport(base_url={self.base_url!r}, api_key={self.api_key!r})"

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            # No pool timeout: callers (the background workers) bound how many wait.
            timeout=httpx.Timeout(self.timeout, pool=None),
            limits=httpx.Limits(
                max_connections=self.concurrency,
                max_keepalive_connections=self.concurrency,
            ),
            headers={"User-Agent": USER_AGENT},
        )

    def _shared_client(self) -> httpx.AsyncClient | None:
        """The shared client for the running loop, or None: use a client of your own.

        The shared client belongs to one loop (its home). Another loop gets None while the home
        loop runs (a thread handing an event inline, say), and adopts the client slot once the
        home loop has ended (``asyncio.run`` per job): the old connections go with their loop.
        """
        if not self._owns_client:
            return self._client
        loop = asyncio.get_running_loop()
        with self._lock:
            home = self._loop
            if home is not loop:
                if home is not None and home.is_running() and not home.is_closed():
                    return None
                self._client = self._slots = None
                self._loop = loop
            if self._client is None:
                # Created on first use, inside the running loop, never at import or fork.
                self._client = self._new_client()
                self._slots = asyncio.Semaphore(self.concurrency)
            return self._client

    async def start(self) -> None:
        """Create the shared client (in the running loop, which becomes its home and the
        engine's: another loop sending meanwhile uses a client of its own)."""
        self._shared_client()
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._engine_loop is not loop:
                self._engines, self._engine_loop = {}, loop

    async def aclose(self) -> None:
        """Close the shared client and engines (if this transport created them)."""
        with self._lock:
            mine = self._engine_loop is asyncio.get_running_loop()
            engines = list(self._engines.values()) if mine else []
            if mine:
                self._engines, self._engine_loop = {}, None
        for engine in engines:
            await engine.aclose()
        client = self._client
        if client is not None and self._owns_client:
            # Detach first: a send during the close gets a fresh client, not a closed one.
            with self._lock:
                if self._loop is not asyncio.get_running_loop():
                    return  # the home loop's client: it cannot be closed from here
                self._client = self._slots = None
                self._loop = None
            await client.aclose()

    def _key(self, delivery: Delivery) -> SecretStr:
        if self.api_key is not None:
            return self.api_key
        # Read per event: one transport (e.g. an outbox worker) may carry events of several
        # providers, each with its own provider's key, and a key rotated in the environment
        # holds from the next event. The SecretStr is kept while the value stays (so is the
        # engine made for it), and no local ever holds the raw key (frame locals, again).
        env = delivery.provider.api_key_env
        known = self._env_keys.get(env)
        if known is not None and known.get_secret_value() == os.environ.get(env):
            return known
        if not os.environ.get(env):
            raise IntegrationError(
                delivery.event.event_id,
                "missing_api_key",
                f"no API key: pass api_key= or set {env}",
            )
        known = self._env_keys[env] = SecretStr(os.environ[env])
        return known

    async def attempt(self, delivery: Delivery) -> TrackResult:
        """One request (a refund: its lookup, then its update); failures raise
        :class:`DeliveryError` with ``retry_after``.

        Example:
            >>> import asyncio
            >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
            >>> offline = HTTPTransport("dub_xxx", base_url="http://127.0.0.1:9", timeout=1)
            >>> try:
            ...     asyncio.run(offline.attempt(Delivery(lead, DUB)))
            ... except DeliveryError as error:
            ...     print(error.retryable)
            True
        """
        request = delivery.request()
        base = self.base_url or delivery.provider.base_url.rstrip("/")
        # A SecretStr: no local holds the raw key, so error reporters that capture frame
        # locals (Sentry does) never see it.
        key = self._key(delivery)
        # By kind, not isinstance: pydantic's metaclass answers a negative isinstance in Python.
        if delivery.event.kind == "refund":
            return await self._refund(delivery, request, base, key)
        answer = await self._exchange(delivery, request, base, key)
        if 200 <= answer.status < 300:
            return delivered(delivery, answer)
        raise error_from(delivery.event.event_id, answer)

    async def _refund(
        self, delivery: Delivery, lookup: ProviderRequest, base: str, key: SecretStr
    ) -> TrackResult:
        """Find the commission, then change it: both requests in this one attempt."""
        event_id = delivery.event.event_id
        waits = self._commission_waits
        waits.begin(event_id)
        try:
            answer = await self._exchange(delivery, lookup, base, key)
            step = after_lookup(delivery, answer, waits, self.retry)
            if isinstance(step, ProviderRequest):
                step = after_update(delivery, await self._exchange(delivery, step, base, key))
        except DeliveryError as error:
            if not error.retryable:
                waits.end(event_id)
            raise
        waits.end(event_id)
        return step

    async def _exchange(
        self, delivery: Delivery, request: ProviderRequest, base: str, key: SecretStr
    ) -> Answer:
        """Send ``request``, counted as an attempt; a network failure raises DeliveryError."""
        event_id = delivery.event.event_id
        stats = self.stats
        # An attempt moves no counter: it is timed only for an observer.
        started = time.monotonic() if stats.observers.any else None
        status: int | None = None
        try:
            engine = self._shared_engine(base, key, delivery.provider.extra_headers)
            if engine is not None:
                method, target = request.method, request.target
                response = await engine.request(
                    method, target, request.body(), idempotency_key=event_id
                )
                answer = _engine_answer(response, f"{method} {base}{target}")
            else:
                # httpx.Headers masks Authorization in its repr (frame locals, again).
                headers = httpx.Headers(
                    {
                        "Authorization": "Bearer " + key.get_secret_value(),
                        "Idempotency-Key": event_id,
                        **delivery.provider.extra_headers,
                    }
                )
                # A loop other than the engine's home (a thread sending inline) gets a client
                # of its own, closed after: a shared one would outlive that loop.
                own = bool(self._use_engine) and self._owns_client
                answer = await self._httpx_request(request, base + request.target, headers, own)
            status = answer.status
        except EngineError as exc:
            # A timeout after sending is ambiguous; the retry reuses the idempotency key.
            raise DeliveryError(
                event_id, type(exc).__name__, str(exc), retryable=exc.retryable
            ) from None
        except httpx.TransportError as exc:
            # An unsupported scheme can never work: final, not retried.
            final = isinstance(exc, httpx.UnsupportedProtocol)
            code = "unsupported_protocol" if final else type(exc).__name__
            raise DeliveryError(
                event_id, code, str(exc) or "network error", retryable=not final
            ) from None
        except httpx.InvalidURL as exc:
            raise DeliveryError(event_id, "invalid_url", str(exc)) from None
        finally:
            if started is not None:
                duration = time.monotonic() - started
                stats.count("attempt", delivery, duration=duration, status_code=status)
        return answer

    def _shared_engine(self, base: str, key: SecretStr, extra: Mapping[str, str]) -> Engine | None:
        """The lean engine for ``base`` and ``key`` on the running loop, or None: use httpx.

        httpx serves a client the caller gave (custom transports, respx), proxies from the
        environment, and a loop other than the engine's home (a thread sending inline). The
        engine sends the key with its other fixed headers, encoded once; a new key (rotated in
        the environment) gets an engine of its own.
        """
        if not self._owns_client or not base.startswith(("http://", "https://")):
            return None  # httpx says why such a URL cannot work (a final error)
        if self._use_engine is None:
            self._use_engine = not proxies_configured()  # read once, as httpx does
        if not self._use_engine:
            return None
        loop = asyncio.get_running_loop()
        # The engine of the previous call, while its table, loop, key and base still hold.
        last = self._last_engine
        if last[0] is self._engines and last[1] is loop and last[2] is key and last[3] == base:
            return last[4]
        with self._lock:
            if self._engine_loop is not loop:
                home = self._engine_loop
                if home is not None and home.is_running() and not home.is_closed():
                    return None
                self._engines = {}  # the old loop's connections went with it
                self._engine_loop = loop
            # SecretStr hashes and compares by value, and shows no value in a repr.
            engine = self._engines.get((base, key))
            if engine is None:
                headers = {
                    "User-Agent": USER_AGENT,
                    "Content-Type": "application/json",
                    "Authorization": "Bearer " + key.get_secret_value(),
                    **extra,
                }
                engine = Engine(
                    base, concurrency=self.concurrency, timeout=self.timeout, headers=headers
                )
                self._engines[(base, key)] = engine
            self._last_engine = (self._engines, loop, key, base, engine)
            return engine

    async def _httpx_request(
        self, request: ProviderRequest, url: str, headers: httpx.Headers, alone: bool = False
    ) -> Answer:
        client = None if alone else self._shared_client()
        body = None if request.method == "GET" else request.json
        if client is None:  # another loop owns the shared client: one of our own, closed after
            async with self._new_client() as own:
                response = await own.request(request.method, url, json=body, headers=headers)
        else:
            slots = self._slots
            if slots is None:  # a client given by the caller
                slots = self._slots = asyncio.Semaphore(self.concurrency)
            async with slots:
                response = await client.request(request.method, url, json=body, headers=headers)
        return Answer(
            response.status_code,
            parse_json(response.content),
            response.reason_phrase,
            f"{request.method} {url}",
            location=response.headers.get("location"),
            retry_after=response.headers.get("retry-after"),
        )


def _engine_answer(response: Response, target: str) -> Answer:
    """The engine's ``response`` as an :class:`Answer` (a 2xx: from its body alone)."""
    status = response.status
    if 200 <= status < 300:  # the answer's meaning is in its body: no header to look up
        return Answer(status, parse_json(response.body), "", target)
    return Answer(
        status,
        parse_json(response.body),
        "",
        target,
        location=response.header(b"location"),
        retry_after=response.header(b"retry-after"),
    )
