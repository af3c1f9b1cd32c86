"""HTTP delivery to the provider's API over one shared, keep-alive ``httpx.AsyncClient``.

One attempt is one request. It fails retryably for what can succeed later (network errors,
timeouts, 408, 425, 429, 5xx, with the server's ``Retry-After``); other 4xx answers are final.
Whoever schedules the attempts retries them (:meth:`Transport.send` inline, or the background
and outbox layers), and every attempt of an event carries the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

import httpx
from pydantic import SecretStr

from .._deprecation import renamed
from .._exceptions import DeliveryError
from .base import Delivery, DeliveryStats, TrackResult, Transport
from .retry import RetryPolicy, parse_retry_after

__all__ = ["RETRYABLE_STATUS", "USER_AGENT", "HTTPTransport"]

# Retryable below 500; every 5xx is retryable too.
RETRYABLE_STATUS = frozenset({408, 425, 429})
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
        self._loop: asyncio.AbstractEventLoop | None = None  # the loop of our client
        if stats is not None:  # counts ``retried`` (shared with the tracker's stats)
            self.stats = stats

    def __repr__(self) -> str:
        return f"HTTPTransport(base_url={self.base_url!r}, api_key={self.api_key!r})"

    def _get_client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        if self._owns_client and self._client is not None and self._loop is not loop:
            # Another event loop (asyncio.run per job): the old loop's connections cannot be
            # used, nor closed, from this one; they go with it.
            self._client = self._slots = None
        self._loop = loop
        if self._client is None:
            # Created on first use, inside the running loop, never at import or fork.
            self._client = httpx.AsyncClient(
                # No pool timeout: callers (the background workers) bound how many wait.
                timeout=httpx.Timeout(self.timeout, pool=None),
                limits=httpx.Limits(
                    max_connections=self.concurrency,
                    max_keepalive_connections=self.concurrency,
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
        client = self._get_client()
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
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
