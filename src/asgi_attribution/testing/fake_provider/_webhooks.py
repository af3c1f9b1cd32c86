"""Signed webhooks, as Dub (``Dub-Signature``) and PIMMS (``Pimms-Signature``) send them.

The body is ``{"id": "evt_...", "event", "createdAt", "data"}``; the signature header is the hex
HMAC-SHA256 of the raw body, keyed with the endpoint's secret exactly as shown to the user
(``whsec_...``, not decoded).

Example:
    >>> body = webhook_body("lead.created", {"eventName": "Sign up"}, now=0.0)
    >>> sign_webhook("whsec_test", body) == sign_webhook("whsec_test", body)
    True
    >>> SIGNATURE_HEADERS["pimms"]
    'Pimms-Signature'
"""

from __future__ import annotations

import datetime
import hashlib
import hmac
import json
from dataclasses import dataclass
from typing import Any

from ._bodies import ProviderName
from ._clicks import random_id

__all__ = [
    "SIGNATURE_HEADERS",
    "SentWebhook",
    "deliver_webhook",
    "iso_timestamp",
    "sign_webhook",
    "webhook_body",
]


#: The header each provider puts its signature in.
SIGNATURE_HEADERS: dict[ProviderName, str] = {"dub": "Dub-Signature", "pimms": "Pimms-Signature"}


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

    Compact JSON with non-ASCII kept, as ``JSON.stringify`` writes it.

    Example:
        >>> json.loads(webhook_body("sale.created", {}, now=0.0))["createdAt"]
        '1970-01-01T00:00:00.000Z'
    """
    payload = {
        "id": random_id(prefix="evt_"),
        "event": event,
        "createdAt": iso_timestamp(now),
        "data": data,
    }
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


def sign_webhook(secret: str, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``body`` keyed with ``secret`` as given.

    Example:
        >>> sign_webhook("whsec_x", b"{}")[:12]
        '3b099d0eddf3'
    """
    return hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


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
        >>> sent.status, sent.headers["Dub-Signature"] == sign_webhook("whsec_x", sent.body)
        (None, True)
    """
    import httpx  # lazily: only a fake that sends webhooks needs a client

    body = webhook_body(event, data, now=now)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADERS[provider]: sign_webhook(secret, body),
    }
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            response = await client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return SentWebhook(url, event, body, headers, None, f"{type(exc).__name__}: {exc}")
    return SentWebhook(url, event, body, headers, response.status_code)
