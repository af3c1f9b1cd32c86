"""Stripe parameters that let Dub's (or PIMMS') Stripe app credit a payment to the click.

No Stripe dependency: these functions return plain dicts to merge into your own calls of the
``stripe`` package. The provider's Stripe app (installed from its dashboard) reads them:

- a Checkout Session carrying ``metadata.dubCustomerExternalId`` is credited to the customer
  your ``track_lead`` created (PIMMS: ``metadata.pimmsCustomerId``);
- without a tracked lead, ``client_reference_id="dub_id_<click id>"`` (PIMMS:
  ``pimms_id_<click id>``) credits the checkout to the click itself (a one-time payment then
  needs ``customer_creation="always"``, so that later payments find the customer);
- a Stripe Customer carrying ``metadata.dubClickId`` and ``dubCustomerExternalId`` (PIMMS:
  ``pimmsClickId``, ``pimmsCustomerId``) is tied to the click when it is created.

Double counting: with the provider's Stripe app installed, the app records the sale. Do not also
call ``track_sale`` for the same payment, or the partner is paid twice.

Example:
    >>> from starlette.requests import Request
    >>> from asgi_attribution import Attribution
    >>> request = Request({"type": "http", "asgi_attribution": Attribution(DUB, click_id="c1")})
    >>> checkout_session_params(request, mode="payment")
    {'mode': 'payment', 'client_reference_id': 'dub_id_c1', 'customer_creation': 'always'}
"""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from starlette.requests import HTTPConnection

from ._attribution import get_attribution

__all__ = [
    "CheckoutMode",
    "checkout_session_params",
    "client_reference_id",
    "customer_metadata",
    "payment_link_url",
]


CheckoutMode = Literal["payment", "subscription", "setup"]

# (client_reference_id prefix, checkout/customer metadata key of the external id, customer
# metadata key of the click id), by provider name: read from the providers' Stripe apps.
_NAMES = {
    "dub": ("dub_id_", "dubCustomerExternalId", "dubClickId"),
    "pimms": ("pimms_id_", "pimmsCustomerId", "pimmsClickId"),
}


def _names(request: HTTPConnection) -> tuple[tuple[str, str, str], str | None]:
    attribution = get_attribution(request)
    name = attribution.provider.name
    if name not in _NAMES:
        raise ValueError(f"no Stripe app is known for provider {name!r} (only dub and pimms)")
    return _NAMES[name], attribution.click_id


def client_reference_id(request: HTTPConnection) -> str | None:
    """``"dub_id_<click id>"`` (PIMMS: ``"pimms_id_<click id>"``), or ``None`` when organic.

    Example:
        >>> from starlette.requests import Request
        >>> from asgi_attribution import Attribution
        >>> client_reference_id(Request({"type": "http",
        ...                              "asgi_attribution": Attribution(PIMMS, click_id="c1")}))
        'pimms_id_c1'
    """
    (prefix, _, _), click_id = _names(request)
    return prefix + click_id if click_id else None


def _external_id(value: str | None) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError("customer_external_id: your user's id (a non-empty string) is required")
    if len(value) > 500:  # Stripe's limit for a metadata value
        raise ValueError("customer_external_id: at most 500 characters (Stripe metadata limit)")
    return value


def checkout_session_params(
    request: HTTPConnection,
    *,
    customer_external_id: str | None = None,
    lead_tracked: bool = False,
    mode: CheckoutMode = "subscription",
    client_reference_id: str | None = None,
) -> dict[str, Any]:
    """Keyword arguments to merge into ``stripe.checkout.Session.create(...)``, ``mode`` included.

    Give the Checkout ``mode`` here, once (default ``"subscription"``): it is among the
    arguments returned, and what else is returned depends on it. Passing ``mode=`` to Stripe
    as well as ``**params`` is a ``TypeError`` (the same keyword twice), never a silent mismatch.

    - ``lead_tracked=True`` (you called ``track_lead`` for ``customer_external_id``):
      ``metadata`` naming the customer. This works even when this request carries no click
      (another device, an expired cookie): the lead already tied the customer to the click.
    - otherwise, on an attributed request: ``client_reference_id`` naming the click, and for
      ``mode="payment"`` also ``customer_creation="always"`` (don't merge it if you pass
      ``customer=``: Stripe refuses both).
    - an organic visitor: only ``mode``.

    A ``client_reference_id`` you pass is never replaced: it is returned as is (merge it) and
    the click then goes into nothing Dub reads, so track the lead first in that case. Merge
    ``metadata`` with yours: ``{**params, "metadata": {**mine, **params.get("metadata", {})}}``.

    Example:
        >>> from starlette.requests import Request
        >>> from asgi_attribution import Attribution
        >>> request = Request({"type": "http", "asgi_attribution": Attribution(DUB, click_id="c1")})
        >>> checkout_session_params(request, customer_external_id="user_42", lead_tracked=True)
        {'mode': 'subscription', 'metadata': {'dubCustomerExternalId': 'user_42'}}
        >>> checkout_session_params(request)
        {'mode': 'subscription', 'client_reference_id': 'dub_id_c1'}
        >>> organic = Request({"type": "http", "asgi_attribution": Attribution(DUB)})
        >>> checkout_session_params(organic, mode="payment")
        {'mode': 'payment'}
    """
    if mode not in ("payment", "subscription", "setup"):
        raise ValueError(f"mode must be 'payment', 'subscription' or 'setup', got {mode!r}")
    (prefix, external_key, _), click_id = _names(request)
    params: dict[str, Any] = {"mode": mode}
    if client_reference_id is not None:
        params["client_reference_id"] = client_reference_id
    if lead_tracked:
        params["metadata"] = {external_key: _external_id(customer_external_id)}
        return params
    if customer_external_id is not None:
        _external_id(customer_external_id)
    if not click_id:
        return params
    if client_reference_id is None:
        params["client_reference_id"] = prefix + click_id
    if mode == "payment":
        params["customer_creation"] = "always"
    return params


def customer_metadata(request: HTTPConnection, customer_external_id: str) -> dict[str, Any]:
    """Keyword arguments for ``stripe.Customer.create(...)`` / ``stripe.Customer.modify(...)``.

    ``metadata`` names your user and, on an attributed request, the click; the provider's
    Stripe app ties a customer created with them to the click (no ``track_lead`` needed).

    Example:
        >>> from starlette.requests import Request
        >>> from asgi_attribution import Attribution
        >>> request = Request({"type": "http", "asgi_attribution": Attribution(DUB, click_id="c1")})
        >>> customer_metadata(request, "user_42")
        {'metadata': {'dubCustomerExternalId': 'user_42', 'dubClickId': 'c1'}}
    """
    (_, external_key, click_key), click_id = _names(request)
    metadata = {external_key: _external_id(customer_external_id)}
    if click_id:
        metadata[click_key] = click_id
    return {"metadata": metadata}


def payment_link_url(url: str, request: HTTPConnection) -> str:
    """A Stripe Payment Link (``https://buy.stripe.com/...``) with ``client_reference_id``.

    Organic visitors get ``url`` unchanged, and so does a link that already carries a
    ``client_reference_id``. Other query parameters (``prefilled_email``...) are kept.

    Example:
        >>> from starlette.requests import Request
        >>> from asgi_attribution import Attribution
        >>> request = Request({"type": "http", "asgi_attribution": Attribution(DUB, click_id="c1")})
        >>> payment_link_url("https://buy.stripe.com/test_123?prefilled_email=a%40b.co", request)
        'https://buy.stripe.com/test_123?prefilled_email=a%40b.co&client_reference_id=dub_id_c1'
    """
    reference = client_reference_id(request)
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ValueError(f"payment link must be an absolute URL, got {url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    if reference is None or any(key == "client_reference_id" for key, _ in query):
        return url
    extra = urlencode({"client_reference_id": reference})
    new_query = f"{parts.query}&{extra}" if parts.query else extra
    return urlunsplit(parts._replace(query=new_query))
