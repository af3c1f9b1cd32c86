"""HTTP delivery to the provider's API over one shared, keep-alive ``httpx.AsyncClient``.

Retries what can succeed later (network errors, timeouts, 408, 429, 5xx) with capped exponential
backoff and full jitter, within a budget of attempts and of time; other 4xx answers are final.
Every attempt of an event carries the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import os
import random
import time
from dataclasses import dataclass
from typing import Any

import httpx
from pydantic import SecretStr

from ..events import DeliveryError
from .base import Delivery, DeliveryStats, TrackResult, Transport

__all__ = ["HTTPTransport", "RetryPolicy", "log_retry", "parse_retry_after"]

logger = logging.getLogger("asgi_attribution")

# Retryable below 500; every 5xx is retryable too.
RETRYABLE_STATUS = frozenset({408, 425, 429})
USER_AGENT = "asgi-attribution/0.1 (+https://pypi.org/project/asgi-attribution/)"


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """How long and how often to retry an event before reporting it as failed.

    The defaults carry an event through a bad spell of about ten minutes: backoff doubles from
    ``initial_backoff`` up to ``max_backoff``, a server's ``Retry-After`` is honoured as a minimum
    but clamped to ``max_retry_after``, and the event is given up after ``max_attempts`` tries or
    ``max_elapsed`` seconds, whichever comes first.

    Example:
        >>> RetryPolicy(max_elapsed=60).max_attempts
        40
    """

    max_attempts: int = 40
    max_elapsed: float = 600.0
    initial_backoff: float = 0.5
    max_backoff: float = 30.0
    max_retry_after: float = 60.0

    def __post_init__(self) -> None:
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be at least 1, got {self.max_attempts}")
        for name in ("max_elapsed", "initial_backoff", "max_backoff", "max_retry_after"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0 seconds, got {getattr(self, name)}")

    def backoff(self, retry: int) -> float:
        """Jittered delay before retry number ``retry`` (1-based): half to all of the cap."""
        cap = min(self.max_backoff, self.initial_backoff * 2 ** min(retry - 1, 30))
        return random.uniform(cap / 2, cap)

    def next_wait(self, attempts: int, elapsed: float, retry_after: float | None) -> float | None:
        """Seconds to wait before the next attempt, or ``None`` when the budget is spent.

        ``retry_after`` (the server's hint) is a minimum, clamped to ``max_retry_after``.

        Example:
            >>> RetryPolicy(max_attempts=3).next_wait(3, elapsed=1.0, retry_after=None) is None
            True
        """
        wait = self.backoff(attempts)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_retry_after))
        if attempts >= self.max_attempts or elapsed + wait > self.max_elapsed:
            return None
        return wait


def log_retry(error: DeliveryError, attempt: int, wait: float) -> None:
    """Log one retry with structured fields (``event_id``, ``attempt``, ``retry_in``)."""
    logger.info(
        "event %s: attempt %d failed (%s), retrying in %.2fs",
        error.event_id,
        attempt,
        error.code if error.status_code is None else error.status_code,
        wait,
        extra={"event_id": error.event_id, "attempt": attempt, "retry_in": wait},
    )


def parse_retry_after(value: str | None, *, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header, or ``None`` if absent or unreadable.

    Understands delay-seconds, an HTTP date, and a Unix timestamp in milliseconds (Dub's rate
    limiter sends that one); a Unix timestamp in seconds is accepted too. Never negative.

    Example:
        >>> parse_retry_after("3")
        3.0
        >>> parse_retry_after(str(int((1_000 + 5) * 1000)), now=1_000)
        5.0
    """
    if not value:
        return None
    value = value.strip()
    now = time.time() if now is None else now
    try:
        number = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:  # an HTTP date is GMT by definition
            return None
        return max(0.0, when.timestamp() - now)
    if number != number or number < 0:  # NaN or negative
        return None
    if number >= 1e11:  # milliseconds since the epoch (year 1973 onwards)
        return max(0.0, number / 1000 - now)
    if number >= 1e9:  # seconds since the epoch
        return max(0.0, number - now)
    return number


class HTTPTransport(Transport):
    """Send each event to the provider's API, retrying transient failures.

    ``api_key`` defaults to the provider's environment variable (``DUB_API_KEY`` or
    ``PIMMS_API_KEY``) and is kept as a secret: never in ``repr``, logs or errors.
    ``base_url`` defaults to the provider's. ``timeout`` is per attempt.

    Example:
        >>> transport = HTTPTransport(api_key="dub_xxx", retry=RetryPolicy(max_elapsed=60))
        >>> "dub_xxx" in repr(transport)
        False
    """

    def __init__(
        self,
        api_key: str | SecretStr | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 10.0,
        retry: RetryPolicy | None = None,
        max_connections: int = 20,
        client: httpx.AsyncClient | None = None,
        stats: DeliveryStats | None = None,
    ) -> None:
        self.api_key = SecretStr(api_key) if isinstance(api_key, str) else api_key
        self.base_url = base_url.rstrip("/") if base_url else None
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.max_connections = max_connections
        self._client = client
        # Bounds requests in flight to the pool size, so callers waiting for a slot queue here
        # (cheap) rather than inside httpcore's pool (costly bookkeeping per waiter), and events
        # sleeping between retries hold no slot at all.
        self._slots: asyncio.Semaphore | None = None
        self._owns_client = client is None
        #: Counts ``retried``: attempts after the first (shared with the tracker's stats).
        self.stats = stats if stats is not None else DeliveryStats()

    def __repr__(self) -> str:
        return f"HTTPTransport(base_url={self.base_url!r}, api_key={self.api_key!r})"

    def _get_client(self) -> httpx.AsyncClient:
        if self._client is None:
            # Created on first use, inside the running loop, never at import or fork.
            self._client = httpx.AsyncClient(
                # No pool timeout: callers (the background workers) bound how many wait.
                timeout=httpx.Timeout(self.timeout, pool=None),
                limits=httpx.Limits(
                    max_connections=self.max_connections,
                    max_keepalive_connections=self.max_connections,
                ),
                headers={"User-Agent": USER_AGENT},
            )
        return self._client

    async def start(self) -> None:
        """Create the shared client."""
        self._get_client()

    async def aclose(self) -> None:
        """Close the shared client (if this transport created it)."""
        client = self._client
        if client is not None and self._owns_client:
            # Detach first: a send during the close gets a fresh client, not a closed one.
            self._client = self._slots = None
            await client.aclose()

    async def send(self, delivery: Delivery) -> TrackResult:
        """Deliver one event, retrying within the policy; raise :class:`DeliveryError` if not."""
        started = time.monotonic()
        attempts = 0
        while True:
            attempts += 1
            try:
                return await self.attempt(delivery)
            except DeliveryError as error:
                if not error.retryable:
                    raise
                elapsed = time.monotonic() - started
                wait = self.retry.next_wait(attempts, elapsed, error.retry_after)
                if wait is None:
                    raise error.gave_up(attempts, elapsed) from None
                self.stats.retried += 1
                log_retry(error, attempts, wait)
                await asyncio.sleep(wait)

    def _key(self, delivery: Delivery) -> SecretStr:
        if self.api_key is not None:
            return self.api_key
        # Looked up per event, never cached: one transport (e.g. an outbox worker) may carry
        # events of several providers, and each must get its own provider's key.
        env = delivery.provider.api_key_env
        if not os.environ.get(env):
            raise DeliveryError(
                delivery.event.event_id,
                "missing_api_key",
                f"no API key: pass api_key= or set {env}",
            )
        return SecretStr(os.environ[env])

    async def attempt(self, delivery: Delivery) -> TrackResult:
        """Make one attempt; a failure raises :class:`DeliveryError` with ``retry_after``.

        The background and outbox transports call this and schedule retries themselves, so an
        event waiting to retry holds no worker.
        """
        event_id = delivery.event.event_id
        request = delivery.request()
        url = (self.base_url or delivery.provider.base_url.rstrip("/")) + request.path
        # httpx.Headers masks Authorization in its repr, and no local holds the raw key, so
        # error reporters that capture frame locals (Sentry does) never see it.
        headers = httpx.Headers(
            {
                "Authorization": "Bearer " + self._key(delivery).get_secret_value(),
                "Idempotency-Key": event_id,
                **delivery.provider.extra_headers,
            }
        )
        client = self._get_client()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.max_connections)
        try:
            async with self._slots:
                response = await client.request(
                    request.method, url, json=request.json, headers=headers
                )
        except httpx.TransportError as exc:
            # A timeout after sending is ambiguous; the retry reuses the idempotency key.
            raise DeliveryError(
                event_id, type(exc).__name__, str(exc) or "network error", retryable=True
            ) from None
        if response.is_success:
            return TrackResult(
                "sent", delivery.event, status_code=response.status_code, response=_json(response)
            )
        raise _error_from(event_id, response)


def _json(response: httpx.Response) -> Any:
    try:
        return response.json()
    except ValueError:
        return None


def _error_from(event_id: str, response: httpx.Response) -> DeliveryError:
    status = response.status_code
    body = _json(response)
    code, message = f"http_{status}", response.reason_phrase or "error"
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        code = str(body["error"].get("code", code))[:100]
        message = str(body["error"].get("message", message))[:500]
    retryable = status in RETRYABLE_STATUS or status >= 500
    retry_after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
    return DeliveryError(
        event_id, code, message, status_code=status, retryable=retryable, retry_after=retry_after
    )
