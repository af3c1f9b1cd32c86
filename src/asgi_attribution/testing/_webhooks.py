"""Signed webhook bodies for your tests, exactly as Dub or PIMMS would post them."""

from __future__ import annotations

import datetime
import json
import secrets
from collections.abc import Mapping
from typing import Any

from ..webhooks import SIGNATURE_HEADERS, compute_signature

__all__ = ["sign_webhook"]


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
        >>> sorted(headers), body.startswith(b'{"event":"sale.created"')
        (['Content-Type', 'Dub-Signature'], True)
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
        document = dict(payload)
        document.setdefault("id", "evt_" + secrets.token_hex(12))
        if "createdAt" not in document:
            now = datetime.datetime.now(datetime.timezone.utc)
            document["createdAt"] = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        document.setdefault("data", {})
        body = json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json", header: compute_signature(body, secret)}
    return body, headers
