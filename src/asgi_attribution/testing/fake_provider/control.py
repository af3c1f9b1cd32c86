"""The fake's control endpoints (``/_fake/*``): another process reads and steers it over HTTP.

- ``GET /_fake/events``: the requests handled and the ones recorded;
- ``GET``/``PUT /_fake/faults``: the :class:`~.faults.Faults` in force;
- ``POST /_fake/reset``: forget events and state (faults stay);
- ``GET /_fake/clicks``, ``GET /_fake/customers``: what ``/track/click`` and leads created;
- ``POST /_fake/clock`` ``{"advance": seconds}``: step the clock of the dedup windows;
- ``POST /_fake/webhooks`` ``{"url", "event", "data"}``: send one signed webhook.

They need no API key and are never faulted.

Example:
    >>> import asyncio
    >>> from asgi_attribution.testing import FakeProvider
    >>> asyncio.run(control(FakeProvider(), "POST", "/_fake/reset", b""))
    (200, {'ok': True})
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Protocol

from pydantic import ValidationError

from .bodies import validation_message
from .clicks import Click
from .faults import Faults, parse_faults
from .webhooks import SentWebhook
from .wire import error_body

__all__ = ["Controlled", "control"]


class Controlled(Protocol):
    """What the control endpoints need of the fake (``FakeProvider`` has it all).

    Example:
        >>> from asgi_attribution.testing import FakeProvider
        >>> provider: Controlled = FakeProvider()
    """

    faults: Faults

    def events(self) -> dict[str, Any]: ...
    def reset(self) -> None: ...
    def clicks(self) -> list[Click]: ...
    def customers(self) -> list[dict[str, Any]]: ...
    def advance(self, seconds: float) -> None: ...
    def now(self) -> float: ...
    async def send_webhook(self, url: str, event: str = ..., data: Any = ...) -> SentWebhook: ...


def _unprocessable(message: str) -> tuple[int, dict[str, Any]]:
    return 422, error_body("unprocessable_entity", message)


def _object(raw: bytes) -> dict[str, Any] | tuple[int, dict[str, Any]]:
    try:
        data = json.loads(raw or b"{}")
    except ValueError:
        return 400, error_body("bad_request", "Request body is not valid JSON.")
    if not isinstance(data, dict):
        return _unprocessable("body: must be a JSON object")
    return data


async def control(
    fake: Controlled, method: str, path: str, raw: bytes
) -> tuple[int, dict[str, Any]]:
    """Answer one ``/_fake/*`` request: (status, JSON body).

    Example:
        >>> import asyncio
        >>> from asgi_attribution.testing import FakeProvider
        >>> asyncio.run(control(FakeProvider(), "GET", "/_fake/nothing", b""))[0]
        404
    """
    if method == "GET" and path == "/_fake/events":
        return 200, fake.events()
    if method == "GET" and path == "/_fake/faults":
        return 200, dataclasses.asdict(fake.faults)
    if method == "GET" and path == "/_fake/clicks":
        return 200, {"clicks": [dataclasses.asdict(c) for c in fake.clicks()]}
    if method == "GET" and path == "/_fake/customers":
        return 200, {"customers": fake.customers()}
    if method == "POST" and path == "/_fake/reset":
        fake.reset()
        return 200, {"ok": True}
    if method not in ("PUT", "POST") or path not in (
        "/_fake/faults",
        "/_fake/clock",
        "/_fake/webhooks",
    ):
        return 404, error_body("not_found", f"{method} {path} not found")
    data = _object(raw)
    if isinstance(data, tuple):
        return data
    if method == "PUT" and path == "/_fake/faults":
        try:
            faults = parse_faults(data)
        except ValidationError as exc:
            return _unprocessable(validation_message(exc))
        except ValueError as exc:
            return _unprocessable(str(exc))
        fake.faults = faults
        return 200, dataclasses.asdict(faults)
    if method == "POST" and path == "/_fake/clock":
        seconds = data.get("advance", 0)
        if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds < 0:
            return _unprocessable("advance: must be a number of seconds >= 0")
        fake.advance(seconds)
        return 200, {"now": fake.now()}
    if method == "POST" and path == "/_fake/webhooks":
        url, event = data.get("url"), data.get("event", "sale.created")
        if not isinstance(url, str) or not isinstance(event, str):
            return _unprocessable("url: must be a string; event: must be a string")
        try:
            sent = await fake.send_webhook(url, event, data.get("data", {}))
        except ValueError as exc:
            return _unprocessable(str(exc))
        return 200, {"status": sent.status, "error": sent.error, "payload": sent.payload}
    return 404, error_body("not_found", f"{method} {path} not found")
