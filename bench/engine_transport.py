"""HTTPTransport with its attempt sent through the delivery engine (until the lead wires it in).

The same answer handling as ``HTTPTransport.attempt``: 2xx is sent; 408, 425, 429 and 5xx are
retryable with the server's ``Retry-After``; other answers are final; every engine error is a
retryable ``DeliveryError`` (``error.retryable``).
"""

from __future__ import annotations

import asyncio
import json
import ssl
from typing import Any

from asgi_attribution import DeliveryError
from asgi_attribution.transports.base import Delivery, TrackResult
from asgi_attribution.transports.engine import Engine, EngineError
from asgi_attribution.transports.http import RETRYABLE_STATUS, USER_AGENT, HTTPTransport
from asgi_attribution.transports.retry import parse_retry_after


class EngineTransport(HTTPTransport):
    def __init__(self, *args: Any, ssl_context: ssl.SSLContext | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.ssl_context = ssl_context
        self.engine: Engine | None = None
        self.engine_loop: asyncio.AbstractEventLoop | None = None

    def get_engine(self, delivery: Delivery) -> Engine:
        loop = asyncio.get_running_loop()
        if self.engine is None or self.engine_loop is not loop:
            headers = {
                "User-Agent": USER_AGENT,
                "Content-Type": "application/json",
                **delivery.provider.extra_headers,
            }
            if self.api_key is not None:
                headers["Authorization"] = "Bearer " + self.api_key.get_secret_value()
            self.engine = Engine(
                self.base_url or delivery.provider.base_url,
                concurrency=self.concurrency,
                timeout=self.timeout,
                ssl=self.ssl_context,
                headers=headers,
            )
            self.engine_loop = loop
        return self.engine

    async def attempt(self, delivery: Delivery) -> TrackResult:
        event_id = delivery.event.event_id
        request = delivery.request()
        body = json.dumps(request.json, ensure_ascii=False, separators=(",", ":")).encode()
        engine = self.get_engine(delivery)
        try:
            response = await engine.request(
                request.method, request.path, body, {"Idempotency-Key": event_id}
            )
        except EngineError as exc:
            raise DeliveryError(
                event_id, type(exc).__name__, str(exc), retryable=exc.retryable
            ) from None
        status = response.status
        if 200 <= status < 300:
            return TrackResult("sent", delivery.event, status_code=status, response=response.json())
        retryable = status in RETRYABLE_STATUS or status >= 500
        retry_after = parse_retry_after(response.header(b"retry-after")) if retryable else None
        raise DeliveryError(
            event_id,
            f"http_{status}",
            "error",
            status_code=status,
            retryable=retryable,
            retry_after=retry_after,
        )

    async def aclose(self) -> None:
        engine, self.engine = self.engine, None
        if engine is not None:
            await engine.aclose()
        await super().aclose()
