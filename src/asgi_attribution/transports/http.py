"""HTTP delivery to the provider's API over one shared, keep-alive ``httpx.AsyncClient``.

One attempt is one request. It fails retryably for what can succeed later (network errors,
timeouts, 408, 425, 429, 5xx, with the server's ``Retry-After``); other 4xx answers are final.
Faults of the whole integration (401, 403, 3xx, a 404 or 405 that names no event) are raised as
:class:`IntegrationError` (final for the event; the background queue pauses on them); an
unsupported scheme or an invalid URL is final. A 2xx carries the provider's ``outcome``.
Whoever schedules the attempts retries them (:meth:`Transport.send` inline, or the background
and outbox layers), and every attempt of an event carries the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
from typing import Any

import httpx
from pydantic import SecretStr

from .._deprecation import renamed
from .._exceptions import DeliveryError, IntegrationError
from .base import Delivery, DeliveryStats, TrackResult, Transport
from .faults import per_event_not_found
from .retry import RetryPolicy, parse_retry_after

__all__ = ["RETRYABLE_STATUS", "USER_AGENT", "HTTPTransport"]

# Retryable below 500; every 5xx is retryable too.
RETRYABLE_STATUS = frozenset({408, 425, 429})
logger = logging.getLogger("asgi_attribution")
USER_AGENT = "asgi-attribution/0.1 (+https://pypi.org/project/asgi-attribution/)"


class HTTPTransport(Transport):
    """Send each event to the provider's API, retrying transient failures.

    ``api_key`` defaults to the provider's environment variable (``DUB_API_KEY`` or
    ``PIMMS_API_KEY``) and is kept as a secret: never in ``repr``, logs or errors.
    ``base_url`` defaults to the provider's. ``timeout`` bounds one attempt, ``retry`` says
    when a failed one is tried again, ``concurrency`` bounds requests in flight (and keep-alive
    connections; ``max_connections`` is its deprecated name).

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
        self._client = client
        # Bounds requests in flight to the pool size, so callers waiting for a slot queue here
        # (cheap) rather than inside httpcore's pool (costly bookkeeping per waiter), and events
        # sleeping between retries hold no slot at all.
        self._slots: asyncio.Semaphore | None = None
        self._owns_client = client is None
        self._loop: asyncio.AbstractEventLoop | None = None  # the home loop of our client
        self._lock = threading.Lock()  # loops on several threads may ask for the client
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
        """Create the shared client (in the running loop, which becomes its home)."""
        self._shared_client()

    async def aclose(self) -> None:
        """Close the shared client (if this transport created it)."""
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
        # Looked up per event, never cached: one transport (e.g. an outbox worker) may carry
        # events of several providers, and each must get its own provider's key.
        env = delivery.provider.api_key_env
        if not os.environ.get(env):
            raise IntegrationError(
                delivery.event.event_id,
                "missing_api_key",
                f"no API key: pass api_key= or set {env}",
            )
        return SecretStr(os.environ[env])

    async def attempt(self, delivery: Delivery) -> TrackResult:
        """One request; a failure raises :class:`DeliveryError` with ``retry_after``.

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
        started = time.monotonic()
        status: int | None = None
        try:
            response = await self._request(request.method, url, request.json, headers)
            status = response.status_code
        except httpx.TransportError as exc:
            # A timeout after sending is ambiguous; the retry reuses the idempotency key.
            # An unsupported scheme can never work: final, not retried.
            final = isinstance(exc, httpx.UnsupportedProtocol)
            code = "unsupported_protocol" if final else type(exc).__name__
            raise DeliveryError(
                event_id, code, str(exc) or "network error", retryable=not final
            ) from None
        except httpx.InvalidURL as exc:
            raise DeliveryError(event_id, "invalid_url", str(exc)) from None
        finally:
            self.stats.count(
                "attempt", delivery, duration=time.monotonic() - started, status_code=status
            )
        if response.is_success:
            return _delivered(delivery, response)
        raise _error_from(event_id, response)

    async def _request(
        self, method: str, url: str, body: Any, headers: httpx.Headers
    ) -> httpx.Response:
        client = self._shared_client()
        if client is None:  # another loop owns the shared client: one of our own, closed after
            async with self._new_client() as own:
                return await own.request(method, url, json=body, headers=headers)
        slots = self._slots
        if slots is None:  # a client given by the caller
            slots = self._slots = asyncio.Semaphore(self.concurrency)
        async with slots:
            return await client.request(method, url, json=body, headers=headers)


def _delivered(delivery: Delivery, response: httpx.Response) -> TrackResult:
    """The result of a 2xx, with what the answer says the provider did (and warnings)."""
    event = delivery.event
    body = _json(response)
    outcome, reason = delivery.provider.outcome(event, body)
    if reason == "not_json":
        logger.warning(
            "event %s: %s answered HTTP %d with a body that is not JSON (a proxy?): "
            "counted as sent, but whether it was recorded is unknown",
            event.event_id,
            delivery.provider.name,
            response.status_code,
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
    return TrackResult(
        "sent",
        event,
        status_code=response.status_code,
        response=body,
        outcome=outcome,
        outcome_reason=reason,
    )


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
    integration = _integration_code(status, body, response)
    if integration is not None:
        code, hint = integration
        return IntegrationError(event_id, code, f"{message} ({hint})", status_code=status)
    if status == 404:
        code = per_event_not_found(body) or code
    retryable = status in RETRYABLE_STATUS or status >= 500
    retry_after = parse_retry_after(response.headers.get("retry-after")) if retryable else None
    return DeliveryError(
        event_id, code, message, status_code=status, retryable=retryable, retry_after=retry_after
    )


def _integration_code(status: int, body: Any, response: httpx.Response) -> tuple[str, str] | None:
    """(code, hint) for an answer that is a fault of the whole integration, else None."""
    if status == 401:
        return "unauthorized", "check the API key"
    if status == 403:
        return "forbidden", "the API key lacks the permission for this call"
    if 300 <= status < 400:
        where = response.headers.get("location", "?")
        return "redirect", f"redirected to {where}: check base_url"
    if status == 405 or (status == 404 and per_event_not_found(body) is None):
        return "wrong_path", f"{response.request.method} {response.request.url}: check base_url"
    return None
