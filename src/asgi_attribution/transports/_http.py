"""HTTP delivery to the provider's API: one attempt, made with httpx, and what its answer means.

**One attempt, one request** (a refund's attempt is two, see below), made with an
:class:`httpx.AsyncClient`. Each event loop that sends gets a client of its own (a thread
with ``asyncio.run`` too), closed by :meth:`HTTPTransport.aclose` on that loop or, failing
that, when the loop shuts down; a client whose loop has ended is dropped, never reused. Its
connections are kept alive for the next attempts, and closed once idle for
``keepalive_expiry`` seconds (5 by default), so a connection that a NAT or a load balancer
dropped silently while it sat idle is never written to. A client given by the caller
(``client=``) is used as it is, on every loop, and never closed here. Proxies and the CA
bundle come from the environment as httpx reads them (``HTTP_PROXY``, ``HTTPS_PROXY``,
``ALL_PROXY``, ``NO_PROXY``, ``SSL_CERT_FILE``, ``SSL_CERT_DIR``).

**Bounds.** ``timeout`` bounds each phase (connect, write, each read) and the whole attempt,
so an answer that drips a byte at a time cannot hold an attempt longer. An answer's head is
bounded by httpx (h11 refuses a head over 100 KiB) and its body is read up to
:data:`MAX_ANSWER_BYTES`; a longer answer fails the attempt retryably (``ResponseTooLarge``)
without being kept, with or without a proxy. Bodies go out as orjson bytes and answers are
read with orjson (:mod:`.._json`).

**What an answer means** (:func:`delivered`, :func:`error_from`): a 2xx is delivered, with the
``outcome`` the provider's answer gives (:mod:`.._providers`). An attempt fails retryably for
what can succeed later (network errors, timeouts, 408, 425, 429 and 5xx, with the server's
``Retry-After``). A 4xx with the provider's JSON error envelope is about the event
(:meth:`Provider.refusal`): final with the reason it names, retried when it may pass (a sale
whose lead Dub does not show yet, a route that alone refuses the key), or the outcome of a
refund. Faults of the whole integration (401, a 403 on the track routes, 3xx, a 404 or 405
without the envelope) raise :class:`IntegrationError` (final for the event; the background
queue and the outbox pause on them); an unsupported scheme or an invalid URL is final. Whoever
schedules the attempts retries them (:meth:`Transport.send` inline, or the background and
outbox layers), and every attempt of an event carries the same ``Idempotency-Key``.

**A refund's attempt is two requests**: find the sale's commission, then change it. Dub
creates a sale's commission after it answers the sale, so a refund may look before the
commission exists. Such a lookup fails the attempt retryably (``commission_pending``, with a
short ``retry_after``), and the one retry step repeats it. Once a refund has looked for
``window`` seconds (10 minutes by default, counted from its first attempt in this process), or
is at its last attempt, it finishes as delivered, ``not_recorded`` with ``no_commission``: the
sale earned no partner commission (an organic sale), and there is nothing to refund. The window
is cut to end before the retry budget does, so the verdict always comes before the retry step
would give up. A partial refund is not idempotent on Dub's side (the commissions API ignores
``Idempotency-Key``): a ``PATCH`` whose answer was lost (a timeout) and is retried lowers the
amount twice. A full refund is: a retried one finds the commission refunded (``duplicate``).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import sys
import threading
import time
from collections.abc import AsyncGenerator, Coroutine
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from .._events import RefundEvent
from .._exceptions import DeliveryError, IntegrationError
from .._json import loads
from .._options import share
from .._providers import Outcome, ProviderRequest, Refusal, redact
from ._base import Delivery, DeliveryStats, RetryPolicy, TrackResult, Transport, parse_retry_after
from ._pace import pace_for, read_limit

__all__ = [
    "KEEPALIVE_EXPIRY",
    "MAX_ANSWER_BYTES",
    "PENDING_RETRY_AFTER",
    "RATE_LIMIT_SHARE",
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


@dataclass(frozen=True, slots=True)
class Answer:
    """One HTTP answer, as much of it as deciding what it means needs.

    ``unread`` says why the body of a 2xx was not read (``answer_too_large``,
    ``answer_unreadable``): the provider answered, so it counts as delivered all the same.

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
    unread: str | None = None
    headers: httpx.Headers | None = None  # the rate limit's, read by the pace


def delivered(
    delivery: Delivery, answer: Answer, *, unanswered_before: bool = False
) -> TrackResult:
    """The result of a 2xx, with what the answer says the provider did (and warnings).

    A 2xx whose body could not be read (too large, cut off) is delivered with outcome
    ``unknown``: the provider accepted the event, and a retry could record it twice.
    ``unanswered_before``: an earlier attempt of the event got no answer.

    Example:
        >>> lead = LeadEvent(click_id="c", event_name="Sign up", customer_external_id="u")
        >>> delivered(Delivery(lead, DUB), Answer(200, {"link": None}, "OK", "POST /")).outcome
        'duplicate'
        >>> cut = Answer(200, None, "OK", "POST /", unread="answer_unreadable")
        >>> result = delivered(Delivery(lead, DUB), cut)
        >>> result.status, result.outcome, result.outcome_reason
        ('sent', 'unknown', 'answer_unreadable')
    """
    event = delivery.event
    if answer.unread is not None:
        outcome: Outcome = "unknown"
        reason: str | None = answer.unread
        logger.warning(
            "event %s: %s answered HTTP %d, but its body could not be read (%s): counted as "
            "sent, not retried; whether it was recorded is unknown",
            event.event_id,
            delivery.provider.name,
            answer.status,
            reason,
            extra={"event_id": event.event_id, "outcome": outcome, "outcome_reason": reason},
        )
        return sent(delivery, answer, outcome, reason)
    outcome, reason = delivery.provider.outcome(
        event, answer.body, unanswered_before=unanswered_before
    )
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


def error_from(event_id: str, answer: Answer, refusal: Refusal | None = None) -> DeliveryError:
    """The error a non-2xx ``answer`` is for ``event_id`` (``refusal``: what the provider
    says the answer means for the event, :meth:`Provider.refusal`).

    Example:
        >>> error_from("evt_1", Answer(401, None, "Unauthorized", "POST /track/lead")).code
        'unauthorized'
        >>> gone = Refusal("link_disabled", "Link l for clickId c is disabled, lead not tracked")
        >>> error_from("evt_1", Answer(404, {}, "Not Found", "POST /track/lead"), gone).code
        'link_disabled'
    """
    status, body = answer.status, answer.body
    code, message = f"http_{status}", answer.reason or "error"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))[:100]
        message = str(body["error"].get("message", message))[:500]
    if refusal is not None:
        return DeliveryError(
            event_id,
            refusal.reason,
            refusal.message,
            status_code=status,
            retryable=not refusal.final,
            retry_after=refusal.retry_after,
        )
    integration = _integration_code(answer)
    if integration is not None:
        code, hint = integration
        return IntegrationError(event_id, code, f"{message} ({hint})", status_code=status)
    retryable = status in RETRYABLE_STATUS or status >= 500
    retry_after = parse_retry_after(answer.retry_after) if retryable else None
    return DeliveryError(
        event_id, code, message, status_code=status, retryable=retryable, retry_after=retry_after
    )


def _integration_code(answer: Answer) -> tuple[str, str] | None:
    """(code, hint) for an answer that is a fault of the whole integration, else None (asked
    only of an answer that is no refusal of the event)."""
    status = answer.status
    if status == 401:
        return "unauthorized", "check the API key"
    if status == 403:
        return "forbidden", "the API key lacks the permission for this call"
    if 300 <= status < 400:
        return "redirect", f"redirected to {answer.location or '?'}: check base_url"
    if status in (404, 405):
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


def refusal_of(delivery: Delivery, answer: Answer) -> Refusal | None:
    """What the provider says a non-2xx ``answer`` means for the event (None: nothing).

    Example:
        >>> sale = Delivery(SaleEvent(customer_external_id="u", amount=100), DUB)
        >>> envelope = {"error": {"code": "not_found", "message": "Customer not found."}}
        >>> refusal_of(sale, Answer(404, envelope, "Not Found", "POST /track/sale")).reason
        'customer_not_found'
    """
    # The event's route (a refund's lookup and update are both /commissions routes).
    path = delivery.request().path
    return delivery.provider.refusal(delivery.event, path, answer.status, answer.body)


def _final(delivery: Delivery, answer: Answer) -> DeliveryError:
    return error_from(delivery.event.event_id, answer, refusal_of(delivery, answer))


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
    refusal = refusal_of(delivery, answer)
    if refusal is not None and refusal.outcome is not None:
        # Locked by its payout, or refunded already: an outcome, nothing left to retry.
        return _finished(delivery, answer, refusal.outcome, refusal.reason)
    raise error_from(delivery.event.event_id, answer, refusal)


def _user_agent() -> str:
    try:
        version = importlib.metadata.version("asgi-attribution")
    except importlib.metadata.PackageNotFoundError:  # imported from a source tree, not installed
        version = "unknown"
    return f"asgi-attribution/{version} (+https://pypi.org/project/asgi-attribution/)"


#: The ``User-Agent`` of every request, with the installed version of the package.
USER_AGENT = _user_agent()

#: Bytes of an answer's body read at most; a longer answer fails its attempt (retryably),
#: unless it is a 2xx (delivered, outcome unknown). The providers answer a tracked event in
#: well under a kilobyte.
MAX_ANSWER_BYTES = 1024 * 1024

# Failures that leave no doubt the request never reached the provider.
_NEVER_SENT = frozenset({"ConnectError", "ConnectTimeout", "unsupported_protocol", "invalid_url"})

# Events remembered as unanswered at most (the oldest forgotten first).
_UNANSWERED_KEPT = 10_000

#: Seconds a kept-alive connection may sit idle before it is closed rather than reused.
KEEPALIVE_EXPIRY = 5.0

#: The fraction of the API key's rate budget delivery uses by default; the rest is left to
#: the app's own calls with the key (creating links, reading analytics).
RATE_LIMIT_SHARE = 0.8

# A 429 that states the rate limit is sent again this many times within one attempt, once the
# pace allows: waiting for the provider's budget is not a failure of the event.
_RATE_LIMITED_ROUNDS = 3


class _TooLarge(Exception):
    """An answer's body went past :data:`MAX_ANSWER_BYTES` (turned into a DeliveryError)."""


@dataclass(slots=True)
class _LoopClient:
    """The client of one event loop, its slots and what closes it with the loop."""

    client: httpx.AsyncClient
    # Requests in flight, bounded to the pool size: callers wait here (cheap) rather than in
    # httpcore's pool, and events sleeping between retries hold no slot at all.
    slots: asyncio.Semaphore
    closer: AsyncGenerator[None, None] | None


class HTTPTransport(Transport):
    """Send each event to the provider's API, retrying transient failures.

    ``api_key`` defaults to the provider's environment variable (``DUB_API_KEY`` or
    ``PIMMS_API_KEY``, read per event) and is kept as a secret: never in ``repr``, logs or
    errors. ``base_url`` defaults to the provider's. ``timeout`` bounds one attempt, ``retry``
    says when a failed one is tried again, ``concurrency`` bounds requests in flight and
    keep-alive connections (10 when None), and ``keepalive_expiry`` is how long an idle
    connection is kept. ``client`` replaces the clients this transport makes (it is used as
    is, never closed here). A refund looks for its sale's commission for at most
    ``refund_window`` seconds. Requests keep to the API key's rate limit as the provider's
    answers state it, using at most ``rate_limit_share`` of it (0.8 when None; :mod:`._pace`).

    Example:
        >>> transport = HTTPTransport(api_key="dub_xxx", retry=RetryPolicy(max_elapsed=60))
        >>> "dub_xxx" in repr(transport), transport.concurrency, transport.keepalive_expiry
        (False, 10, 5.0)
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        concurrency: int | None = None,
        keepalive_expiry: float = KEEPALIVE_EXPIRY,
        client: httpx.AsyncClient | None = None,
        stats: DeliveryStats | None = None,
        refund_window: float = REFUND_WINDOW,
        rate_limit_share: float | None = None,
    ) -> None:
        rate_limit_share = RATE_LIMIT_SHARE if rate_limit_share is None else rate_limit_share
        share("HTTPTransport", "rate_limit_share", rate_limit_share)
        self.rate_limit_share = float(rate_limit_share)
        concurrency = 10 if concurrency is None else concurrency
        if concurrency < 1:
            raise ValueError(f"concurrency must be at least 1, got {concurrency}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0 seconds, got {timeout}")
        if keepalive_expiry < 0:
            raise ValueError(f"keepalive_expiry must be >= 0 seconds, got {keepalive_expiry}")
        self.api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.concurrency = concurrency
        self.keepalive_expiry = float(keepalive_expiry)
        self._commission_waits = CommissionWaits(refund_window)
        # Events whose last attempt got no verdict (a timeout, a dropped answer, a 5xx): the
        # next answer of a provider that claims invoices first cannot say "not recorded".
        self._unanswered: dict[str, None] = {}
        self.refund_window = self._commission_waits.window
        self._given = client
        # The client of each event loop that sends (the given one, or one made for it).
        self._clients: dict[asyncio.AbstractEventLoop, _LoopClient] = {}
        self._lock = threading.Lock()  # loops on several threads may ask for their client
        # The key read from the environment, as a SecretStr kept while the variable holds it.
        self._env_keys: dict[str, SecretStr] = {}
        if stats is not None:  # counts ``retried`` (shared with the tracker's stats)
            self.stats = stats

    def __repr__(self) -> str:
        return f"HTTPTransport(base_url={self.base_url!r}, api_key={self.api_key!r})"

    def _new_client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            # No pool timeout: the slots bound how many wait; the attempt's deadline, how long.
            timeout=httpx.Timeout(self.timeout, pool=None),
            limits=httpx.Limits(
                max_connections=self.concurrency,
                max_keepalive_connections=self.concurrency,
                keepalive_expiry=self.keepalive_expiry,
            ),
            headers={"User-Agent": USER_AGENT},
            trust_env=True,  # proxies, NO_PROXY and the CA bundle from the environment
        )

    async def _loop_client(self) -> _LoopClient:
        """The client of the running loop, made on first use (never at import or fork)."""
        loop = asyncio.get_running_loop()
        mine = self._clients.get(loop)
        if mine is not None:
            return mine
        client = self._given or self._new_client()
        mine = _LoopClient(client, asyncio.Semaphore(self.concurrency), None)
        with self._lock:
            for ended in [other for other in self._clients if other.is_closed()]:
                del self._clients[ended]  # dropped with its loop, never reused
            self._clients[loop] = mine
        if client is not self._given:
            mine.closer = self._closed_with(loop, mine)
            await mine.closer.asend(None)
        return mine

    async def _closed_with(
        self, loop: asyncio.AbstractEventLoop, mine: _LoopClient
    ) -> AsyncGenerator[None, None]:
        """Started once, it closes the client of ``loop`` when it is closed itself: by
        :meth:`aclose`, or else by the loop's ``shutdown_asyncgens()``, which ``asyncio.run``
        calls before it closes the loop: the sockets never outlive their loop."""
        try:
            yield
        finally:
            with self._lock:
                if self._clients.get(loop) is mine:
                    del self._clients[loop]
            await mine.client.aclose()

    async def start(self) -> None:
        """Make the client of the running loop."""
        await self._loop_client()

    async def aclose(self) -> None:
        """Close the client of the running loop (unless it was given); a later send makes
        a new one. Another loop's client is closed with that loop."""
        with self._lock:
            mine = self._clients.pop(asyncio.get_running_loop(), None)
        if mine is not None and mine.closer is not None:
            await mine.closer.aclose()  # closes the client

    def _key(self, delivery: Delivery) -> SecretStr:
        if self.api_key is not None:
            return self.api_key
        # Read per event: one transport (e.g. an outbox worker) may carry events of several
        # providers, each with its own provider's key, and a key rotated in the environment
        # holds from the next event. No local ever holds the raw key: error reporters that
        # capture frame locals (Sentry does) would show it.
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
        key = self._key(delivery)  # a SecretStr (frame locals, again)
        if isinstance(delivery.event, RefundEvent):
            return await self._refund(delivery, request, base, key)
        event_id = delivery.event.event_id
        try:
            answer = await self._exchange(delivery, request, base, key)
        except DeliveryError as error:
            if error.retryable and error.code not in _NEVER_SENT:
                self._unanswered_note(event_id)
            raise
        if 200 <= answer.status < 300:
            before = self._unanswered.pop(event_id, False) is None
            return delivered(delivery, answer, unanswered_before=before)
        if answer.status >= 500:  # the provider may have acted before it failed
            self._unanswered_note(event_id)
        raise error_from(event_id, answer, refusal_of(delivery, answer))

    def _unanswered_note(self, event_id: str) -> None:
        """Remember that an attempt of ``event_id`` ended without a verdict (this process)."""
        self._unanswered[event_id] = None
        while len(self._unanswered) > _UNANSWERED_KEPT:
            self._unanswered.pop(next(iter(self._unanswered)), None)

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
        """Send ``request`` at the pace of the key's rate limit; a 429 that states the limit
        is sent again after its reset, in this same attempt (a few times at most)."""
        pace = pace_for(key.get_secret_value(), base)
        for _ in range(_RATE_LIMITED_ROUNDS + 1):
            waited = await pace.acquire(self.rate_limit_share)
            if waited > 0:
                self.stats.count("paced", delivery, duration=waited)
            answer: Answer | None = None
            try:
                answer = await self._request(delivery, request, base, key)
            finally:
                pace.settle(*((answer.headers, answer.status) if answer else (None, None)))
            if answer.status != 429:
                return answer
            self.stats.count("rate_limited", delivery, status_code=429)
            if answer.headers is None or read_limit(answer.headers) is None:
                break  # no stated limit: a failed attempt, retried as any 429
        assert answer is not None  # the last round's answer, a 429
        return answer

    async def _request(
        self, delivery: Delivery, request: ProviderRequest, base: str, key: SecretStr
    ) -> Answer:
        """Send ``request``, counted as an attempt; a failure to get its answer raises
        DeliveryError (retryable but for a URL that can never work)."""
        event_id = delivery.event.event_id
        stats = self.stats
        # An attempt moves no counter: it is timed only for an observer.
        started = time.monotonic() if stats.observers.any else None
        status: int | None = None
        url = base + request.target
        body = request.body() or None  # a GET has none
        # httpx.Headers masks Authorization in its repr (frame locals, again).
        headers = httpx.Headers(
            {
                "Authorization": "Bearer " + key.get_secret_value(),
                "Idempotency-Key": event_id,
                # Not compressed: the body is bounded as it arrives, byte for byte.
                "Accept-Encoding": "identity",
                **delivery.provider.extra_headers,
            }
        )
        if body is not None:
            headers["Content-Type"] = "application/json"
        head: list[httpx.Response] = []  # the answer's head, once it came
        try:
            mine = await self._loop_client()
            async with mine.slots:
                answer = await _within(
                    self.timeout, _read(mine.client, request.method, url, body, headers, key, head)
                )
            status = answer.status
        except asyncio.TimeoutError:
            if head and head[0].is_success:  # the provider accepted it: never sent twice
                answer = _answer(head[0], None, key, unread="answer_unreadable")
                status = answer.status
                return answer
            # Ambiguous once sent: the retry reuses the idempotency key.
            message = f"no complete answer from {url} within {self.timeout:g} s"
            raise DeliveryError(event_id, "AttemptTimeout", message, retryable=True) from None
        except _TooLarge:
            message = f"{url} answered with more than {MAX_ANSWER_BYTES} bytes of body (a proxy?)"
            raise DeliveryError(event_id, "ResponseTooLarge", message, retryable=True) from None
        except httpx.TransportError as exc:
            # An unsupported scheme can never work: final, not retried.
            final = isinstance(exc, httpx.UnsupportedProtocol)
            code = "unsupported_protocol" if final else type(exc).__name__
            message = redact(str(exc), key.get_secret_value()) or "network error"
            raise DeliveryError(event_id, code, message, retryable=not final) from None
        except httpx.InvalidURL as exc:
            message = redact(str(exc), key.get_secret_value())
            raise DeliveryError(event_id, "invalid_url", message) from None
        finally:
            if started is not None:
                duration = time.monotonic() - started
                stats.count("attempt", delivery, duration=duration, status_code=status)
        return answer


async def _within(seconds: float, exchange: Coroutine[Any, Any, Answer]) -> Answer:
    """``exchange``, ended by ``asyncio.TimeoutError`` after ``seconds`` in all."""
    if sys.version_info >= (3, 11):
        # In this task: wait_for runs each attempt in a task of its own, which about doubled
        # the CPU of a delivered event (bench/delivery.py, c=10: 2.8 ms against 1.3 ms).
        async with asyncio.timeout(seconds):
            return await exchange
    return await asyncio.wait_for(exchange, seconds)


async def _read(
    client: httpx.AsyncClient,
    method: str,
    url: str,
    body: bytes | None,
    headers: httpx.Headers,
    key: SecretStr,
    head: list[httpx.Response],
) -> Answer:
    """Send one request and read its answer, streamed: no more than MAX_ANSWER_BYTES kept.

    ``head`` gets the response as soon as its head arrived (the caller's deadline may end the
    body's reading). A 2xx whose body is too large or cut off is an :class:`Answer` with
    ``unread``: the provider accepted the event."""
    async with client.stream(method, url, content=body, headers=headers) as response:
        head.append(response)
        accepted = response.is_success
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > MAX_ANSWER_BYTES:
            if accepted:
                return _answer(response, None, key, unread="answer_too_large")
            raise _TooLarge
        chunks: list[bytes] = []
        size = 0
        try:
            async for chunk in response.aiter_raw():
                size += len(chunk)
                if size > MAX_ANSWER_BYTES:
                    # Leaving the block closes the connection: never reused.
                    if accepted:
                        return _answer(response, None, key, unread="answer_too_large")
                    raise _TooLarge
                chunks.append(chunk)
        except httpx.TransportError:
            if accepted:
                return _answer(response, None, key, unread="answer_unreadable")
            raise
    return _answer(response, b"".join(chunks), key)


def _answer(
    response: httpx.Response, body: bytes | None, key: SecretStr, unread: str | None = None
) -> Answer:
    """The :class:`Answer` of ``response``: where the provider's text enters the package, so
    the API key is redacted from all of it here (a provider may echo the header it got)."""
    request = response.request
    return Answer(
        response.status_code,
        redact(parse_json(body or b""), key.get_secret_value()),
        redact(response.reason_phrase, key.get_secret_value()),
        f"{request.method} {request.url}",
        location=redact(response.headers.get("location"), key.get_secret_value()),
        retry_after=response.headers.get("retry-after"),
        unread=unread,
        headers=response.headers,
    )
