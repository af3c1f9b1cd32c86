"""Signed webhooks, as Dub (``Dub-Signature``) and PIMMS (``Pimms-Signature``) send them.

The body is ``{"id": "evt_...", "event", "createdAt", "data"}``; the signature header is the hex
HMAC-SHA256 of the raw body, keyed with the endpoint's secret exactly as shown to the user
(``whsec_...``, not decoded): :func:`asgi_attribution.webhooks.compute_signature`, the very
function the receiving side checks with. The fake provider sends them (:func:`deliver_webhook`)
and your tests make them (:func:`sign_webhook`) the same way.

Example:
    >>> body, headers = sign_webhook({"event": "lead.created"}, "whsec_test", "pimms")
    >>> sorted(headers)
    ['Content-Type', 'Pimms-Signature']
"""

from __future__ import annotations

import datetime
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ...webhooks import SIGNATURE_HEADERS, compute_signature
from ._bodies import ProviderName
from ._clicks import random_id

__all__ = [
    "SentWebhook",
    "deliver_webhook",
    "iso_timestamp",
    "sign_webhook",
    "webhook_body",
]


def iso_timestamp(at: float) -> str:
    """Unix time as JavaScript's ``Date.toISOString()`` writes it (milliseconds, ``Z``).

    Example:
        >>> iso_timestamp(0.25)
        '1970-01-01T00:00:00.250Z'
    """
    moment = datetime.datetime.fromtimestamp(at, tz=datetime.timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def webhook_body(event: str, data: Any, *, now: float) -> bytes:
    """The raw JSON body of one webhook: a fresh ``evt_`` id, ``event``, ``createdAt``, ``data``.

    Example:
        >>> json.loads(webhook_body("sale.created", {}, now=0.0))["createdAt"]
        '1970-01-01T00:00:00.000Z'
    """
    return _body({"event": event, "createdAt": iso_timestamp(now), "data": data}, now=now)


def _body(payload: Mapping[str, Any], *, now: float) -> bytes:
    # Compact JSON with non-ASCII kept, as JSON.stringify writes it; the given keys win, and
    # the keys come in the providers' order: id, event, createdAt, data.
    document: dict[str, Any] = {"id": random_id(prefix="evt_")}
    document.update(payload)
    document.setdefault("createdAt", iso_timestamp(now))
    document.setdefault("data", {})
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def sign_webhook(
    payload: Mapping[str, Any] | bytes | str, secret: str, provider: str = "dub"
) -> tuple[bytes, dict[str, str]]:
    """The raw body and headers of a webhook signed with ``secret``: post them to your endpoint.

    A mapping ``payload`` is written as compact JSON (as ``JSON.stringify`` does), with a fresh
    ``id`` (``evt_...``) and ``createdAt`` (now) when it has none, and ``data`` defaulting to
    ``{}``; ``bytes`` or ``str`` are signed as they are. ``provider`` picks the header
    (``Dub-Signature`` or ``Pimms-Signature``).

    Example:
        >>> body, headers = sign_webhook({"event": "sale.created", "data": {}}, "whsec_test")
        >>> sorted(headers), json.loads(body)["event"]
        (['Content-Type', 'Dub-Signature'], 'sale.created')
        >>> import httpx
        >>> from asgi_attribution.webhooks import WebhookVerifier, webhook_endpoint
        >>> endpoint = webhook_endpoint(WebhookVerifier(secrets="whsec_test"))
        >>> async def post():
        ...     transport = httpx.ASGITransport(app=endpoint)
        ...     async with httpx.AsyncClient(transport=transport, base_url="http://app") as c:
        ...         return (await c.post("/", content=body, headers=headers)).status_code
        >>> import asyncio; asyncio.run(post())
        200
    """
    header = SIGNATURE_HEADERS.get(provider.lower())
    if header is None:
        raise ValueError(f"unknown provider {provider!r}: use 'dub' or 'pimms'")
    if isinstance(payload, bytes):
        body = payload
    elif isinstance(payload, str):
        body = payload.encode()
    else:
        body = _body(payload, now=time.time())
    return body, {"Content-Type": "application/json", header: compute_signature(body, secret)}


@dataclass(frozen=True)
class SentWebhook:
    """One webhook the fake sent: where, the exact body and headers, and the answer's status.

    ``status`` is ``None`` when the receiver could not be reached (``error`` says why).

    Example:
        >>> SentWebhook("http://app.test/hook", "lead.created", b"{}", {}, 200).status
        200
    """

    url: str
    event: str
    body: bytes
    headers: dict[str, str]
    status: int | None
    error: str | None = None

    @property
    def payload(self) -> dict[str, Any]:
        """The body, decoded.

        Example:
            >>> SentWebhook("u", "e", b'{"id": "evt_1"}', {}, 200).payload
            {'id': 'evt_1'}
        """
        decoded: dict[str, Any] = json.loads(self.body)
        return decoded


async def deliver_webhook(
    provider: ProviderName,
    url: str,
    event: str,
    data: Any,
    *,
    secret: str,
    now: float,
    timeout: float = 10.0,
) -> SentWebhook:
    """POST one signed webhook to ``url``, once (the caller decides about retries).

    A receiver that cannot be reached gives ``status=None``; nothing is raised.

    Example:
        >>> import asyncio
        >>> sent = asyncio.run(deliver_webhook("dub", "http://127.0.0.1:9/hook", "lead.created",
        ...                                    {}, secret="whsec_x", now=0.0, timeout=0.5))
        >>> sent.status, sorted(sent.headers)
        (None, ['Content-Type', 'Dub-Signature'])
    """
    import httpx  # lazily: only a fake that sends webhooks needs a client

    body, headers = sign_webhook(webhook_body(event, data, now=now), secret, provider)
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return SentWebhook(url, event, body, headers, None, f"{type(exc).__name__}: {exc}")
    return SentWebhook(url, event, body, headers, response.status_code)
